//! Layers and images in the state: reference counting after Docker's layer store.
//!
//! A layer is a committed snapshot named by its ChainID. What holds it: the user who imported
//! it (`pinned`), each child layer (`children`), and each image or container on it (`holders`).
//! Releasing the last hold deletes it and releases its parent, up the chain, in the same
//! transaction.

use super::{
    Draft, Effect, Invalid, Kind, Pending, Precondition, Read, Snapshot, Stage, State, StateError,
};
use crate::types::{SnapshotId, TxId, Usage};
use serde::{Deserialize, Serialize};

/// Images may have at most this many layers (Docker's limit, from overlay's lowerdir bound).
pub const MAX_LAYER_DEPTH: usize = 125;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub diff_id: String,
    pub parent: Option<String>,
    /// Uncompressed tar length.
    pub size_bytes: u64,
    pub pinned: bool,
    pub children: u64,
    pub holders: u64,
}

/// What a finished import found: the layer's digests and sizes, as its completion names them.
#[derive(Clone, Copy, Debug)]
pub(super) struct ImportDone<'a> {
    pub diff_id: &'a str,
    pub chain_id: &'a str,
    pub size_bytes: u64,
    pub usage: Usage,
}

impl Layer {
    pub fn refcount(&self) -> u64 {
        u64::from(self.pinned) + self.children + self.holders
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub top: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub created_ns: i64,
    /// The original config (and manifest) as loaded or pulled, kept by `PutImageKept` (or
    /// `PutImageConfig`); `None` for an image recorded without them (`PutImage` alone, or a
    /// store from before kept configs).
    pub kept: Option<Kept>,
}

/// An image's original config and manifest bytes (docs/registry.md, "Push").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The config JSON exactly as loaded; its sha256 is the image's `config_digest`.
    pub config: Vec<u8>,
    /// The manifest exactly as loaded (OCI layout, OCI archive, registry); its sha256 is the
    /// image's `manifest_digest`. `None` for a `docker save` archive, which has none.
    pub manifest: Option<Vec<u8>>,
}

impl State {
    pub fn layer(&self, chain_id: &str) -> Result<&Layer, StateError> {
        Read::layer(self, chain_id)
    }

    /// ChainIDs from `chain_id` down to the base layer.
    pub fn layer_chain(&self, chain_id: &str) -> Result<Vec<String>, StateError> {
        Read::layer_chain(self, chain_id)
    }
}

/// One more hold on a layer.
fn hold(count: &mut u64, chain_id: &str) {
    *count = count
        .checked_add(1)
        .unwrap_or_else(|| panic!("invariant: refcount of layer {chain_id} overflows"));
}

/// One hold fewer; releasing a hold nobody has is a double free.
fn release(count: &mut u64, chain_id: &str) {
    *count = count
        .checked_sub(1)
        .unwrap_or_else(|| panic!("invariant: layer {chain_id} released more often than held"));
}

impl Draft<'_> {
    pub(super) fn begin_import(
        &mut self,
        txid: TxId,
        id: SnapshotId,
        parent: &Option<String>,
        pin: bool,
        time_ns: i64,
    ) -> Result<Vec<Effect>, StateError> {
        let parent_id = match parent {
            None => None,
            Some(p) => {
                let depth = self.layer_chain(p)?.len();
                if depth >= MAX_LAYER_DEPTH {
                    return Err(StateError::InvalidArgument {
                        reason: super::Invalid::LayerChainTooDeep {
                            max: MAX_LAYER_DEPTH,
                        },
                    });
                }
                Some(self.get(p)?.id)
            }
        };
        self.take_id(id);
        let snapshot = Snapshot::created(
            id,
            Kind::Committed,
            parent.clone(),
            Default::default(),
            time_ns,
            txid,
        );
        self.pending.insert(
            txid,
            Pending::Import {
                snapshot,
                parent: parent.clone(),
                pin,
            },
        );
        Ok(vec![Effect::Stage {
            txid,
            stage: Stage::Import { parent: parent_id },
        }])
    }

    pub(super) fn complete_import(
        &mut self,
        of: TxId,
        diff_id: &str,
        chain_id: &str,
        size_bytes: u64,
        usage: Usage,
    ) -> Result<Vec<Effect>, StateError> {
        let Some(Pending::Import {
            snapshot,
            parent,
            pin,
        }) = self.pending.remove(&of)
        else {
            return Err(StateError::NotPending { txid: of });
        };
        let done = ImportDone {
            diff_id,
            chain_id,
            size_bytes,
            usage,
        };
        self.record_layer(of, snapshot, parent, pin, done)
    }

    /// Record the layer an import `of` made (its pending entry already taken), or discard the
    /// copy when the layer exists. `parent` is a layer, held by the import until now or checked
    /// by the caller in this draft.
    pub(super) fn record_layer(
        &mut self,
        of: TxId,
        mut snapshot: Snapshot,
        parent: Option<String>,
        pin: bool,
        done: ImportDone<'_>,
    ) -> Result<Vec<Effect>, StateError> {
        let chain_id = done.chain_id;
        if let Some(layer) = self.layers.get_mut(chain_id) {
            // The same layer again: keep the one we have, drop the new copy.
            layer.pinned |= pin;
            return Ok(vec![Effect::Discard { txid: of }]);
        }
        if self.snapshots.contains_key(chain_id) {
            // Only a root made before keys of this form were reserved can get here. The draft
            // is dropped: the import stays pending and the engine aborts it.
            return Err(StateError::AlreadyExists {
                key: chain_id.to_owned(),
            });
        }
        if let Some(p) = &parent {
            let parent_layer = self
                .layers
                .get_mut(p)
                .expect("a parent with a pending child is never removed");
            hold(&mut parent_layer.children, p);
        }
        snapshot.usage = Some(done.usage);
        let id = snapshot.id;
        self.snapshots.insert(chain_id.to_owned(), snapshot);
        self.layers.insert(
            chain_id.to_owned(),
            Layer {
                diff_id: done.diff_id.to_owned(),
                parent,
                size_bytes: done.size_bytes,
                pinned: pin,
                children: 0,
                holders: 0,
            },
        );
        Ok(vec![Effect::Install { txid: of, id }])
    }

    pub(super) fn remove_layer(&mut self, chain_id: &str) -> Result<Vec<Effect>, StateError> {
        let layer = self.layer(chain_id)?;
        if layer.children > 0 || layer.holders > 0 {
            return Err(StateError::FailedPrecondition {
                key: chain_id.to_owned(),
                reason: Precondition::Referenced {
                    children: layer.children,
                    holders: layer.holders,
                },
            });
        }
        self.check_removable_snapshot(chain_id)?;
        if self.has_pending_import_on(chain_id) {
            return Err(StateError::FailedPrecondition {
                key: chain_id.to_owned(),
                reason: Precondition::Busy,
            });
        }
        let layer = self.layers.get_mut(chain_id).expect("checked above");
        layer.pinned = false;
        Ok(self.release_unreferenced(chain_id.to_owned()))
    }

    /// Delete `chain_id` if nothing holds it, then walk up releasing each parent.
    fn release_unreferenced(&mut self, start: String) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut next = Some(start);
        while let Some(chain_id) = next.take() {
            let Some(layer) = self.layers.get(&chain_id) else {
                break;
            };
            let blocked = layer.refcount() > 0
                || self.has_children(&chain_id)
                || self.has_pending_import_on(&chain_id);
            if blocked {
                break;
            }
            let layer = self.layers.remove(&chain_id).expect("present");
            if let Some(snap) = self.snapshots.remove(&chain_id) {
                effects.push(Effect::Delete { id: snap.id });
            }
            if let Some(p) = &layer.parent {
                let parent = self
                    .layers
                    .get_mut(p)
                    .expect("a layer's parent outlives it");
                release(&mut parent.children, p);
            }
            next = layer.parent;
        }
        effects
    }

    pub(super) fn put_image(
        &mut self,
        name: &str,
        top: &str,
        manifest_digest: &str,
        config_digest: &str,
        time_ns: i64,
    ) -> Result<Vec<Effect>, StateError> {
        super::validate_key(name)?;
        let layer = self
            .layers
            .get_mut(top)
            .ok_or_else(|| StateError::NotFound {
                key: top.to_owned(),
            })?;
        hold(&mut layer.holders, top);
        let previous = self.images.insert(
            name.to_owned(),
            Image {
                top: top.to_owned(),
                manifest_digest: manifest_digest.to_owned(),
                config_digest: config_digest.to_owned(),
                created_ns: time_ns,
                kept: None,
            },
        );
        Ok(match previous {
            Some(old) => self.release_holder(&old.top),
            None => Vec::new(),
        })
    }

    /// `PutImageConfig`: every refusal is decided before anything is written.
    pub(super) fn put_image_config(
        &mut self,
        name: &str,
        config: &[u8],
        manifest: &Option<Vec<u8>>,
    ) -> Result<Vec<Effect>, StateError> {
        let image = self.images.get(name).ok_or_else(|| StateError::NotFound {
            key: name.to_owned(),
        })?;
        check_kept_digest(name, "config", config, &image.config_digest)?;
        if let Some(m) = manifest {
            check_kept_digest(name, "manifest", m, &image.manifest_digest)?;
        }
        let diff_ids = crate::kept::config_diff_ids(config).map_err(|reason| {
            super::invalid(Invalid::BadConfig {
                image: name.to_owned(),
                reason,
            })
        })?;
        let mut layers = Vec::new();
        for chain_id in self.layer_chain(&image.top)?.iter().rev() {
            layers.push(self.layer(chain_id)?.diff_id.clone());
        }
        if diff_ids != layers {
            return Err(super::invalid(Invalid::ConfigLayers {
                image: name.to_owned(),
                config: diff_ids,
                layers,
            }));
        }
        let mut image = image.clone();
        image.kept = Some(Kept {
            config: config.to_vec(),
            manifest: manifest.clone(),
        });
        self.images.insert(name.to_owned(), image);
        Ok(Vec::new())
    }

    pub(super) fn remove_image(&mut self, name: &str) -> Result<Vec<Effect>, StateError> {
        let image = self
            .images
            .remove(name)
            .ok_or_else(|| StateError::NotFound {
                key: name.to_owned(),
            })?;
        Ok(self.release_holder(&image.top))
    }

    pub(super) fn release_holder(&mut self, chain_id: &str) -> Vec<Effect> {
        let layer = self
            .layers
            .get_mut(chain_id)
            .expect("an image's top layer outlives the image");
        release(&mut layer.holders, chain_id);
        self.release_unreferenced(chain_id.to_owned())
    }

    pub(super) fn collect_layers(&mut self) -> Vec<Effect> {
        // Leaves first: a chain is released from its top, so start from layers without children.
        let tops: Vec<String> = self
            .layers
            .iter()
            .filter(|(_, l)| l.refcount() == 0)
            .map(|(k, _)| k.clone())
            .collect();
        let mut effects = Vec::new();
        for chain_id in tops {
            effects.extend(self.release_unreferenced(chain_id));
        }
        effects
    }
}

/// `KeptDigest` unless `bytes` (image `image`'s `what` to keep) hash to `expected`.
fn check_kept_digest(
    image: &str,
    what: &'static str,
    bytes: &[u8],
    expected: &str,
) -> Result<(), StateError> {
    let found = crate::kept::sha256_digest(bytes);
    if found != expected {
        return Err(super::invalid(Invalid::KeptDigest {
            image: image.to_owned(),
            what,
            expected: expected.to_owned(),
            found,
        }));
    }
    Ok(())
}
