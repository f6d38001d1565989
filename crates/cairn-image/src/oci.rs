//! OCI image layouts (a directory) and OCI archives (the same in a tar): `index.json` lists
//! manifests by digest; each manifest names its config and its layer blobs, all under
//! `blobs/<algorithm>/<hex>` and all checked against their digests.

use super::error::ImageError;
use super::plan::{self, Plan, PlannedLayer};
use super::source::Source;
use cairn_layer::Digest;
use serde::Deserialize;
use std::collections::BTreeMap;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Nested indexes are followed this deep at most.
const MAX_INDEX_DEPTH: usize = 4;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn blob_path(digest: &Digest) -> String {
    format!(
        "blobs/sha256/{}",
        digest.to_string().trim_start_matches("sha256:")
    )
}

fn read_blob(source: &Source, digest: &Digest) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(digest);
    let bytes = source.read_small(&path)?;
    plan::check(&path, &bytes, digest)?;
    Ok(bytes)
}

const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

pub fn plans(source: &Source) -> Result<Vec<Plan>, ImageError> {
    let index: Index = plan::json("index.json", &source.read_small("index.json")?)?;
    let mut out = Vec::new();
    collect(source, index.manifests, None, 0, &mut out)?;
    Ok(out)
}

fn collect(
    source: &Source,
    manifests: Vec<Descriptor>,
    inherited_name: Option<String>,
    depth: usize,
    out: &mut Vec<Plan>,
) -> Result<(), ImageError> {
    for desc in manifests {
        let digest = plan::digest(&desc.digest, "index.json")?;
        let name = desc
            .annotations
            .get(CONTAINERD_NAME)
            .or_else(|| desc.annotations.get(REF_NAME))
            .cloned()
            .or_else(|| inherited_name.clone());
        let bytes = read_blob(source, &digest)?;
        if desc.media_type.contains("index") || desc.media_type.contains("manifest.list") {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::Format {
                    path: blob_path(&digest),
                    reason: "indexes nested too deep".into(),
                });
            }
            let nested: Index = plan::json(&blob_path(&digest), &bytes)?;
            collect(source, nested.manifests, name, depth + 1, out)?;
            continue;
        }
        let manifest: Manifest = plan::json(&blob_path(&digest), &bytes)?;
        let config_digest = plan::digest(&manifest.config.digest, &blob_path(&digest))?;
        let config = read_blob(source, &config_digest)?;
        let diff_ids = plan::diff_ids(&blob_path(&config_digest), &config)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::LayerCount {
                diff_ids: diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        let image = name.clone().unwrap_or_else(|| digest.to_string());
        let mut layers = Vec::new();
        for (index, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(ImageError::MediaType {
                    image: image.clone(),
                    index,
                    media_type: layer.media_type.clone(),
                });
            }
            let blob = plan::digest(&layer.digest, &blob_path(&digest))?;
            layers.push(PlannedLayer {
                path: blob_path(&blob),
                diff_id,
                blob: Some(blob),
            });
        }
        out.push(Plan {
            names: vec![image],
            manifest_digest: digest.to_string(),
            config_digest: config_digest.to_string(),
            layers,
            config,
            manifest: Some(bytes),
        });
    }
    Ok(())
}
