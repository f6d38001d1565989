//! The pure state machine: snapshots by key, and the transactions still in flight.
//!
//! [`State::apply`] does no IO, reads no clock and iterates only ordered maps, so the same
//! records applied to the same state always give the same state and the same effects: that is
//! what makes replay after a crash reach exactly the state that was acknowledged.
//!
//! Applying is two steps. [`State::check`] only reads the state: it refuses the record, or
//! returns a [`Plan`] of the entries the record writes and the effects it asks for (planned on
//! a copy-on-write draft). [`State::commit`] writes a plan and cannot fail. So a refused record
//! changes nothing, by construction.

mod containers;
mod detached;
mod draft;
mod effect;
mod error;
mod kept;
mod layers;
pub mod limits;
mod mounts;
mod record;
mod snapshots;
pub mod types;

pub use containers::{init_key, Container, INIT_SUFFIX};
pub use draft::{Applied, Plan};
pub use effect::{Effect, Stage};
pub use error::{Invalid, Precondition, StateError};
pub use kept::{config_diff_ids, sha256_digest};
pub use layers::{Image, Kept, Layer, MAX_LAYER_DEPTH};
pub use limits::{
    validate_key, validate_labels, validate_snapshot_key, MAX_KEPT_CONFIG_BYTES,
    MAX_KEPT_MANIFEST_BYTES, MAX_KEY_BYTES, MAX_LABELS, MAX_LABELS_TOTAL_BYTES, MAX_LABEL_BYTES,
    MAX_RECORD_BYTES,
};
pub use mounts::{validate_target, MountRef, MAX_MOUNTS, MAX_TARGET_BYTES};
pub use record::{Labels, Op, Record};
pub use snapshots::Snapshots;

use draft::{Draft, Read};

use crate::types::{Kind, SnapshotId, TxId, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The deepest parent chain a snapshot may have (overlay's lowerdir limit is about 500; the
/// layer store limits images to 125).
pub const MAX_CHAIN_DEPTH: usize = 500;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: Labels,
    pub created_ns: i64,
    pub updated_ns: i64,
    /// Recorded at commit; `None` for Active and View (computed on demand).
    pub usage: Option<Usage>,
    /// The transaction that created it: its tree was staged under this id.
    pub created_txid: TxId,
    /// The transaction that last changed this snapshot on disk (its creation, then its commit).
    pub txid: TxId,
    /// The tree digest recorded at commit (`fsck --verify` checks the tree against it); `None`
    /// for Active, View and layer snapshots (a layer is checked against its DiffID).
    pub digest: Option<String>,
}

/// A transaction begun and not yet completed or aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pending {
    Create {
        key: String,
        snapshot: Snapshot,
    },
    Commit {
        key: String,
        name: String,
        labels: Labels,
        time_ns: i64,
    },
    /// A layer import; its snapshot's key (the ChainID) is known only when it completes.
    Import {
        snapshot: Snapshot,
        parent: Option<String>,
        pin: bool,
    },
    /// The first reference on a mount of `key` at `target`: the mount(2) is in flight.
    Mount {
        key: String,
        target: String,
    },
    /// The last reference on `target` was released: the umount(2) is in flight.
    Unmount {
        target: String,
    },
    /// A layer import staged without a parent; the parent is named when it completes
    /// (`CompleteDetachedImport`). Until then it holds nothing and nothing depends on it.
    DetachedImport {
        snapshot: Snapshot,
        pin: bool,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last transaction applied.
    pub last_txid: TxId,
    /// The id the next created snapshot gets.
    pub next_id: u64,
    pub snapshots: Snapshots,
    pub pending: BTreeMap<TxId, Pending>,
    /// Layers by ChainID; each has a committed snapshot under the same key.
    pub layers: BTreeMap<String, Layer>,
    /// Images by name.
    pub images: BTreeMap<String, Image>,
    /// Containers by name.
    pub containers: BTreeMap<String, Container>,
    /// Counted mounts by target path.
    pub mounts: BTreeMap<String, MountRef>,
}

impl Snapshot {
    /// A snapshot created by transaction `txid` at `time_ns`, not yet committed.
    pub fn created(
        id: SnapshotId,
        kind: Kind,
        parent: Option<String>,
        labels: Labels,
        time_ns: i64,
        txid: TxId,
    ) -> Snapshot {
        Snapshot {
            id,
            kind,
            parent,
            labels,
            created_ns: time_ns,
            updated_ns: time_ns,
            usage: None,
            created_txid: txid,
            txid,
            digest: None,
        }
    }
}

impl State {
    pub fn new() -> State {
        State {
            next_id: 1,
            ..State::default()
        }
    }

    pub fn get(&self, key: &str) -> Result<&Snapshot, StateError> {
        Read::get(self, key)
    }

    /// The committed ancestors of `key`, nearest first, as snapshot ids.
    pub fn parent_ids(&self, key: &str) -> Result<Vec<SnapshotId>, StateError> {
        Read::parent_ids(self, key)
    }

    /// Keys whose parent is `key`, including snapshots still being created.
    pub fn has_children(&self, key: &str) -> bool {
        Read::has_children(self, key)
    }

    /// Apply one record: [`check`](State::check) it, then [`commit`](State::commit) the plan.
    /// On error the state is unchanged (the check only reads it); on success the state has
    /// moved to `record.txid` and [`Applied`] says what the engine must do on disk and which
    /// snapshots changed.
    pub fn apply(&mut self, record: &Record) -> Result<Applied, StateError> {
        let plan = self.check(record)?;
        Ok(self.commit(plan))
    }

    /// Decide whether `record` applies to this state, and if so what it writes: reads the state
    /// and nothing else. The plan is committed with [`commit`](State::commit).
    pub fn check(&self, record: &Record) -> Result<Plan, StateError> {
        let txid = record.txid;
        assert!(
            txid > self.last_txid,
            "transaction ids must increase: {txid} after {}",
            self.last_txid
        );
        limits::check_record(record)?;
        let mut draft = Draft::new(self);
        let effects = draft.plan(txid, &record.op)?;
        Ok(draft.into_plan(self.last_txid, txid, effects))
    }

    /// Panics unless every layer's counts are what the state holds: `children` the layers on
    /// it, `holders` the images and containers on it. A broken count is a leak or a double
    /// free; the state machine stops on it.
    pub fn assert_refcounts(&self) {
        let mut counted: BTreeMap<&str, (u64, u64)> =
            self.layers.keys().map(|k| (k.as_str(), (0, 0))).collect();
        let mut count = |key: &str, child: bool| {
            let entry = counted
                .get_mut(key)
                .unwrap_or_else(|| panic!("invariant: {key} is held but is not a layer"));
            if child {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        };
        for layer in self.layers.values() {
            if let Some(p) = &layer.parent {
                count(p, true);
            }
        }
        for image in self.images.values() {
            count(&image.top, false);
        }
        for container in self.containers.values() {
            count(&container.layer, false);
        }
        for (key, layer) in &self.layers {
            let (children, holders) = counted[key.as_str()];
            assert_eq!(
                (layer.children, layer.holders),
                (children, holders),
                "invariant: refcounts (children, holders) of layer {key}"
            );
        }
    }
}

impl Draft<'_> {
    fn plan(&mut self, txid: TxId, op: &Op) -> Result<Vec<Effect>, StateError> {
        match op {
            Op::BeginCreate {
                key,
                parent,
                kind,
                id,
                labels,
                time_ns,
            } => {
                validate_snapshot_key(key)?;
                if !matches!(kind, Kind::Active | Kind::View) {
                    return Err(invalid(Invalid::BadKind { kind: *kind }));
                }
                // containerd's order (storage.CreateSnapshot): the parent is checked before
                // the key, so an existing key on a bad parent is NotFound / InvalidArgument.
                let parent_id = match parent {
                    None => None,
                    Some(p) => {
                        let snap = self.get(p)?;
                        if snap.kind != Kind::Committed {
                            return Err(invalid(Invalid::ParentNotCommitted { parent: p.clone() }));
                        }
                        if self.depth(p)? > MAX_CHAIN_DEPTH {
                            return Err(invalid(Invalid::ChainTooDeep {
                                key: key.clone(),
                                max: MAX_CHAIN_DEPTH,
                            }));
                        }
                        Some(snap.id)
                    }
                };
                if self.is_taken(key) {
                    return Err(StateError::AlreadyExists { key: key.clone() });
                }
                self.take_id(*id);
                let snapshot =
                    Snapshot::created(*id, *kind, parent.clone(), labels.clone(), *time_ns, txid);
                self.pending.insert(
                    txid,
                    Pending::Create {
                        key: key.clone(),
                        snapshot,
                    },
                );
                let stage = match parent_id {
                    None => Stage::Empty { kind: *kind },
                    Some(parent) => Stage::OnParent {
                        kind: *kind,
                        parent,
                    },
                };
                Ok(vec![Effect::Stage { txid, stage }])
            }
            Op::BeginCommit {
                key,
                name,
                labels,
                time_ns,
            } => {
                validate_snapshot_key(name)?;
                if self.is_taken(name) {
                    return Err(StateError::AlreadyExists { key: name.clone() });
                }
                let snap = self.get(key)?;
                if let Some(owner) = self.container_of(key) {
                    let name = owner.to_owned();
                    return Err(precondition(key, Precondition::OwnedByContainer { name }));
                }
                if snap.kind != Kind::Active {
                    return Err(precondition(key, Precondition::NotActive));
                }
                if self.is_busy(key) {
                    return Err(precondition(key, Precondition::Busy));
                }
                self.check_unmounted(key)?;
                let id = snap.id;
                self.pending.insert(
                    txid,
                    Pending::Commit {
                        key: key.clone(),
                        name: name.clone(),
                        labels: labels.clone(),
                        time_ns: *time_ns,
                    },
                );
                Ok(vec![Effect::Seal { txid, id }])
            }
            Op::Complete { of, usage, digest } => match self.pending.remove(of) {
                // An import completes with CompleteImport, which names its layer.
                None | Some(Pending::Import { .. } | Pending::DetachedImport { .. }) => {
                    Err(StateError::NotPending { txid: *of })
                }
                Some(Pending::Create { key, snapshot }) => {
                    let id = snapshot.id;
                    self.snapshots.insert(key.clone(), snapshot);
                    let mut effects = vec![Effect::Install { txid: *of, id }];
                    effects.extend(self.container_created(txid, &key));
                    Ok(effects)
                }
                Some(Pending::Commit {
                    key,
                    name,
                    labels,
                    time_ns,
                }) => {
                    let mut snap = self
                        .snapshots
                        .remove(&key)
                        .expect("a pending commit's snapshot cannot be removed");
                    snap.kind = Kind::Committed;
                    snap.labels = labels;
                    snap.usage = *usage;
                    snap.digest = digest.clone();
                    // containerd (storage.CommitActive) gives the committed snapshot new
                    // times: created == updated == the commit's time.
                    snap.created_ns = time_ns;
                    snap.updated_ns = time_ns;
                    snap.txid = *of;
                    self.snapshots.insert(name, snap);
                    Ok(Vec::new())
                }
                Some(Pending::Mount { key, target }) => {
                    self.mounts.insert(target, MountRef { key, count: 1 });
                    Ok(Vec::new())
                }
                Some(Pending::Unmount { target }) => {
                    self.mounts.remove(&target);
                    Ok(Vec::new())
                }
            },
            Op::Abort { of } => {
                let pending = self
                    .pending
                    .remove(of)
                    .ok_or(StateError::NotPending { txid: *of })?;
                match pending {
                    Pending::Create { key, .. } => {
                        let mut effects = vec![Effect::Discard { txid: *of }];
                        effects.extend(self.container_aborted(&key));
                        Ok(effects)
                    }
                    Pending::Import { .. } | Pending::DetachedImport { .. } => {
                        Ok(vec![Effect::Discard { txid: *of }])
                    }
                    Pending::Commit { .. } | Pending::Mount { .. } | Pending::Unmount { .. } => {
                        Ok(Vec::new())
                    }
                }
            }
            Op::Remove { key } => {
                let id = self.get(key)?.id;
                if let Some(name) = self.container_of(key) {
                    let name = name.to_owned();
                    return Err(precondition(key, Precondition::OwnedByContainer { name }));
                }
                if self.layers.contains_key(key) {
                    return Err(precondition(
                        key,
                        Precondition::OwnedByLayer {
                            chain_id: key.clone(),
                        },
                    ));
                }
                if self.has_children(key) {
                    return Err(precondition(key, Precondition::HasChildren));
                }
                if self.is_busy(key) {
                    return Err(precondition(key, Precondition::Busy));
                }
                self.check_unmounted(key)?;
                self.snapshots.remove(key);
                Ok(vec![Effect::Delete { id }])
            }
            Op::BeginImport {
                id,
                parent,
                pin,
                time_ns,
            } => self.begin_import(txid, *id, parent, *pin, *time_ns),
            Op::CompleteImport {
                of,
                diff_id,
                chain_id,
                size_bytes,
                usage,
            } => self.complete_import(*of, diff_id, chain_id, *size_bytes, *usage),
            Op::BeginDetachedImport { id, pin, time_ns } => {
                self.begin_detached_import(txid, *id, *pin, *time_ns)
            }
            Op::CompleteDetachedImport {
                of,
                parent,
                diff_id,
                chain_id,
                size_bytes,
                usage,
            } => self.complete_detached_import(*of, parent, diff_id, chain_id, *size_bytes, *usage),
            Op::RemoveLayer { chain_id } => self.remove_layer(chain_id),
            Op::PutImage {
                name,
                top,
                manifest_digest,
                config_digest,
                time_ns,
            } => self.put_image(name, top, manifest_digest, config_digest, *time_ns),
            Op::RemoveImage { name } => self.remove_image(name),
            Op::PutImageConfig {
                name,
                config,
                manifest,
            } => self.put_image_config(name, config, manifest),
            Op::PutImageKept {
                name,
                top,
                manifest_digest,
                config_digest,
                time_ns,
                config,
                manifest,
            } => {
                // Both on one draft: a kept config that is refused drops the image with it.
                let mut effects =
                    self.put_image(name, top, manifest_digest, config_digest, *time_ns)?;
                effects.extend(self.put_image_config(name, config, manifest)?);
                Ok(effects)
            }
            Op::CollectLayers => Ok(self.collect_layers()),
            Op::BeginContainer {
                name,
                layer,
                init_id,
                time_ns,
            } => self.begin_container(txid, name, layer, *init_id, *time_ns),
            Op::RemoveContainer { name } => self.remove_container(name),
            Op::Mount { key, target } => self.mount(txid, key, target),
            Op::Unmount { target } => self.unmount(txid, target),
            Op::MountGone { target } => self.mount_gone(target),
            Op::CompleteImportHeld {
                of,
                diff_id,
                chain_id,
                size_bytes,
                usage,
                hold,
                time_ns,
            } => {
                // Both on one draft: a hold that is refused drops the completion with it.
                let mut effects =
                    self.complete_import(*of, diff_id, chain_id, *size_bytes, *usage)?;
                effects.extend(self.put_image(hold, chain_id, "", "", *time_ns)?);
                Ok(effects)
            }
            Op::Update {
                key,
                labels,
                time_ns,
            } => {
                let snap = self
                    .snapshots
                    .get_mut(key)
                    .ok_or_else(|| StateError::NotFound { key: key.clone() })?;
                snap.labels = labels.clone();
                snap.updated_ns = *time_ns;
                Ok(Vec::new())
            }
        }
    }
}

fn invalid(reason: Invalid) -> StateError {
    StateError::InvalidArgument { reason }
}

fn precondition(key: &str, reason: Precondition) -> StateError {
    StateError::FailedPrecondition {
        key: key.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests;
