//! `cairn migrate docker DIR`: move a Docker data root's layers and images into cairn.
//!
//! A client of the engine, like `cairn-image`. It reads the source without writing to it
//! ([`source`]), re-assembles each layer's original tar from `tar-split.json.gz` and the
//! driver's diff directory ([`assemble`], [`tarsplit`]), hashes it against the layer's DiffID
//! *before* importing it, then streams it again into `EngineHandle::import_layer` (journaled,
//! checked again against the DiffID), and records the images with `put_image`.
//!
//! Resumable: layers are imported pinned (held like Docker's layer store holds them, not only
//! through an image), so an interrupted run leaves every imported layer in place, and the next
//! run finds it by ChainID and reads nothing for it; image names already recorded on the same
//! layer and config are left as they are.

pub mod assemble;
mod error;
pub mod source;
pub mod tarsplit;

pub use error::MigrateError;
pub use source::{GraphDriver, Skipped};

use cairn_engine::{EngineError, EngineHandle, ImportOptions};
use cairn_layer::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How to migrate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The driver whose layer store to read (`image/<driver>/`); the only one present if unset.
    pub storage_driver: Option<GraphDriver>,
    /// Refuse the whole migration, importing nothing, when any layer or image cannot be moved.
    pub strict: bool,
}

/// Progress, reported on the caller's thread.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// The source was read: this many layers and images to consider.
    Planned { layers: usize, images: usize },
    /// A layer's re-assembled tar was hashed (`ok`: it matches its DiffID).
    Verified {
        chain_id: &'a str,
        size_bytes: u64,
        ok: bool,
    },
    /// A layer was imported (`existed`: the store had it already).
    Imported {
        chain_id: &'a str,
        size_bytes: u64,
        existed: bool,
    },
    /// An image name was recorded.
    Image { name: &'a str },
}

/// One layer moved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MovedLayer {
    pub chain_id: String,
    pub diff_id: String,
    /// The length of its tar.
    pub size_bytes: u64,
}

/// What a migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub source: String,
    pub driver: String,
    /// Layers imported by this run.
    pub layers_moved: usize,
    /// Layers the store already had (an earlier run, or an image load).
    pub layers_present: usize,
    /// Images with at least one name recorded by this run.
    pub images_moved: usize,
    /// Images whose names were all recorded already.
    pub images_present: usize,
    /// Bytes of layer tars imported by this run.
    pub bytes_moved: u64,
    pub layers: Vec<MovedLayer>,
    /// Image names recorded by this run.
    pub names: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

/// Migrate the Docker data root at `root` into `engine`.
pub fn migrate(
    engine: &EngineHandle,
    root: &Path,
    options: &Options,
    progress: &dyn Fn(Event<'_>),
) -> Result<Summary, MigrateError> {
    let driver = source::driver_of(root, options.storage_driver)?;
    let inv = source::inventory(root, driver)?;
    progress(Event::Planned {
        layers: inv.layers.len(),
        images: inv.images.len(),
    });
    let mut summary = Summary {
        source: root.display().to_string(),
        driver: driver.name().to_owned(),
        skipped: inv.skipped.clone(),
        warnings: inv.warnings.clone(),
        ..Summary::default()
    };
    let present: BTreeSet<String> = engine.layers()?.into_iter().map(|l| l.chain_id).collect();
    // Why a layer cannot be moved, by ChainID (from the inventory, then from hashing).
    let mut failed: BTreeMap<Digest, String> = BTreeMap::new();
    for s in &inv.skipped {
        if let (true, Ok(id)) = (s.kind == "layer", s.id.parse::<Digest>()) {
            failed.insert(id, s.reason.clone());
        }
    }

    // 1. Hash every layer the store lacks, before importing any.
    let mut to_import = Vec::new();
    for layer in &inv.layers {
        let chain = layer.chain_id.to_string();
        if let Some(parent) = layer.parent.filter(|p| failed.contains_key(p)) {
            let reason = format!("its parent layer {parent} cannot be moved");
            skip_layer(&mut summary, &mut failed, layer.chain_id, reason);
            continue;
        }
        if present.contains(&chain) {
            continue;
        }
        match assemble::digest(&layer.tar_split, &layer.content) {
            Ok((found, size_bytes)) if found == layer.diff_id => {
                progress(Event::Verified {
                    chain_id: &chain,
                    size_bytes,
                    ok: true,
                });
                to_import.push((layer, size_bytes));
            }
            Ok((found, size_bytes)) => {
                progress(Event::Verified {
                    chain_id: &chain,
                    size_bytes,
                    ok: false,
                });
                let reason = format!(
                    "its re-assembled tar is {found}, not its DiffID {}",
                    layer.diff_id
                );
                skip_layer(&mut summary, &mut failed, layer.chain_id, reason);
            }
            Err(e) => {
                progress(Event::Verified {
                    chain_id: &chain,
                    size_bytes: 0,
                    ok: false,
                });
                skip_layer(&mut summary, &mut failed, layer.chain_id, e.to_string());
            }
        }
    }
    let images = plan_images(&inv, &failed, &mut summary);
    if options.strict && !summary.skipped.is_empty() {
        let first = &summary.skipped[0];
        return Err(MigrateError::Refused {
            count: summary.skipped.len(),
            first: format!("{} {}: {}", first.kind, first.id, first.reason),
        });
    }

    // 2. Import, parents first; the engine checks each tar against its DiffID again.
    summary.layers_present = inv
        .layers
        .iter()
        .filter(|l| present.contains(&l.chain_id.to_string()))
        .count();
    for (layer, size_bytes) in to_import {
        let chain = layer.chain_id.to_string();
        if let Some(parent) = layer.parent.filter(|p| failed.contains_key(p)) {
            let reason = format!("its parent layer {parent} cannot be moved");
            skip_layer(&mut summary, &mut failed, layer.chain_id, reason);
            continue;
        }
        let input = match assemble::Assembly::open(&layer.tar_split, &layer.content) {
            Ok(input) => input,
            Err(e) => {
                let reason = format!("changed while it was migrated: {e}");
                skip_layer(&mut summary, &mut failed, layer.chain_id, reason);
                continue;
            }
        };
        let options = ImportOptions {
            parent: layer.parent.map(|p| p.to_string()),
            pin: true,
            expected_diff_id: Some(layer.diff_id),
        };
        let imported = match engine.import_layer(Box::new(input), options) {
            Ok(imported) => imported,
            // The files changed between hashing and importing: nothing was imported.
            Err(e @ (EngineError::DiffIdMismatch { .. } | EngineError::Layer(_))) => {
                let reason = format!("changed while it was migrated: {e}");
                skip_layer(&mut summary, &mut failed, layer.chain_id, reason);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The engine names the layer by parent and DiffID, as Docker did.
        assert_eq!(
            imported.chain_id, chain,
            "ChainID of a DiffID-checked import"
        );
        progress(Event::Imported {
            chain_id: &chain,
            size_bytes,
            existed: imported.existed,
        });
        if imported.existed {
            summary.layers_present += 1;
        } else {
            summary.layers_moved += 1;
            summary.bytes_moved += size_bytes;
            summary.layers.push(MovedLayer {
                chain_id: chain,
                diff_id: layer.diff_id.to_string(),
                size_bytes,
            });
        }
    }

    // 3. Name the images whose layers are all in.
    let existing: BTreeMap<String, (String, String)> = engine
        .images()?
        .into_iter()
        .map(|i| (i.name, (i.top, i.config_digest)))
        .collect();
    for image in images {
        if let Some((bad, reason)) = image.chain.iter().find_map(|c| failed.get_key_value(c)) {
            summary.skipped.push(Skipped {
                kind: "image",
                id: image.record.id.to_string(),
                reason: format!("its layer {bad} cannot be moved: {reason}"),
            });
            continue;
        }
        let top = image
            .chain
            .last()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let config = image.record.id.to_string();
        let names = if image.record.names.is_empty() {
            vec![config.clone()]
        } else {
            image.record.names.clone()
        };
        let mut recorded = false;
        for name in &names {
            match existing.get(name) {
                Some((t, c)) if *t == top && *c == config => continue,
                Some((t, _)) => {
                    summary.skipped.push(Skipped {
                        kind: "image",
                        id: config.clone(),
                        reason: format!(
                            "the store has another image named {name} (on {t}); left as it is"
                        ),
                    });
                    continue;
                }
                None => {}
            }
            let manifest = image.record.manifest_digest.clone().unwrap_or_default();
            engine.put_image(name, &top, &manifest, &config)?;
            progress(Event::Image { name });
            summary.names.push(name.clone());
            recorded = true;
        }
        if recorded {
            summary.images_moved += 1;
        } else {
            summary.images_present += 1;
        }
    }
    Ok(summary)
}

fn skip_layer(
    summary: &mut Summary,
    failed: &mut BTreeMap<Digest, String>,
    id: Digest,
    reason: String,
) {
    summary.skipped.push(Skipped {
        kind: "layer",
        id: id.to_string(),
        reason: reason.clone(),
    });
    failed.insert(id, reason);
}

struct PlannedImage<'a> {
    record: &'a source::ImageRecord,
    chain: Vec<Digest>,
}

/// Images whose layers are all in the layer store; the rest are skipped with their reason.
fn plan_images<'a>(
    inv: &'a source::Inventory,
    failed: &BTreeMap<Digest, String>,
    summary: &mut Summary,
) -> Vec<PlannedImage<'a>> {
    let known: BTreeSet<Digest> = inv.layers.iter().map(|l| l.chain_id).collect();
    let mut out = Vec::new();
    for record in &inv.images {
        let mut chain = Vec::with_capacity(record.diff_ids.len());
        let mut parent: Option<Digest> = None;
        for diff_id in &record.diff_ids {
            let id = cairn_layer::chain_id(parent.as_ref(), diff_id);
            chain.push(id);
            parent = Some(id);
        }
        let reason = if chain.is_empty() {
            Some("it has no layers".to_owned())
        } else if let Some((bad, why)) = chain.iter().find_map(|c| failed.get_key_value(c)) {
            Some(format!("its layer {bad} cannot be moved: {why}"))
        } else {
            chain
                .iter()
                .find(|c| !known.contains(c))
                .map(|c| format!("its layer {c} is not in the layer store"))
        };
        match reason {
            Some(reason) => summary.skipped.push(Skipped {
                kind: "image",
                id: record.id.to_string(),
                reason,
            }),
            None => out.push(PlannedImage { record, chain }),
        }
    }
    out
}
