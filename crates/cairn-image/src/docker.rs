//! `docker save` archives: `manifest.json` lists, per image, its config file, its tags and its
//! layer tars (uncompressed; the config's DiffIDs are their digests).

use super::error::ImageError;
use super::plan::{self, Plan, PlannedLayer};
use super::source::Source;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub fn plans(source: &Source) -> Result<Vec<Plan>, ImageError> {
    let entries: Vec<Entry> = plan::json("manifest.json", &source.read_small("manifest.json")?)?;
    entries
        .into_iter()
        .map(|entry| {
            let config = source.read_small(&entry.config)?;
            let config_digest = cairn_layer::Digest::of(&config);
            // The config's file name is its digest in every docker save format.
            let stem = entry
                .config
                .trim_end_matches(".json")
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let stem = stem.strip_prefix("sha256:").unwrap_or(stem);
            if stem.len() == 64 && stem != config_digest.to_string().trim_start_matches("sha256:") {
                return Err(ImageError::DigestMismatch {
                    what: entry.config.clone(),
                    expected: format!("sha256:{stem}"),
                    found: config_digest.to_string(),
                });
            }
            let diff_ids = plan::diff_ids(&entry.config, &config)?;
            if diff_ids.len() != entry.layers.len() {
                return Err(ImageError::LayerCount {
                    diff_ids: diff_ids.len(),
                    layers: entry.layers.len(),
                });
            }
            let layers = entry
                .layers
                .iter()
                .zip(diff_ids)
                .map(|(path, diff_id)| PlannedLayer {
                    path: path.clone(),
                    diff_id,
                    blob: None,
                })
                .collect();
            let names = entry.repo_tags.unwrap_or_default();
            let names = if names.is_empty() {
                vec![config_digest.to_string()]
            } else {
                names
            };
            Ok(Plan {
                names,
                manifest_digest: String::new(),
                config_digest: config_digest.to_string(),
                layers,
                config,
                manifest: None,
            })
        })
        .collect()
}
