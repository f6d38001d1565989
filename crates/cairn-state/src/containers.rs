//! Containers, after Docker's layer store: a read-write snapshot `NAME` on top of a committed
//! `NAME-init` snapshot (placeholder hostname, hosts and resolv.conf files), on top of an
//! image layer the container holds.
//!
//! Creation is two staged steps with no window between them: `BeginContainer` stages the init
//! snapshot; the record completing it also begins the read-write snapshot (its transaction id
//! is that record's, its snapshot id the next one), and completing that makes the container
//! ready. Aborting either step removes everything the container had.

use super::{Draft, Effect, Kind, Pending, Precondition, Read, Snapshot, Stage, State, StateError};
use crate::types::{SnapshotId, TxId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// ChainID of the layer it runs on (held while the container exists).
    pub layer: String,
    pub init_key: String,
    pub key: String,
    pub created_ns: i64,
    /// Both snapshots exist.
    pub ready: bool,
}

/// What a container's init snapshot key adds to its name.
pub const INIT_SUFFIX: &str = "-init";

pub fn init_key(name: &str) -> String {
    format!("{name}{INIT_SUFFIX}")
}

impl State {
    /// The container owning snapshot `key`, if any.
    pub fn container_of(&self, key: &str) -> Option<&str> {
        Read::container_of(self, key)
    }

    /// Containers whose creation was interrupted with nothing pending (recovery drops them).
    pub fn stranded_containers(&self) -> Vec<String> {
        self.containers
            .iter()
            .filter(|(_, c)| !c.ready)
            .filter(|(_, c)| {
                !self.pending.values().any(|p| matches!(p, Pending::Create { key, .. } if *key == c.key || *key == c.init_key))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Draft<'_> {
    pub(super) fn begin_container(
        &mut self,
        txid: TxId,
        name: &str,
        layer: &str,
        init_id: SnapshotId,
        time_ns: i64,
    ) -> Result<Vec<Effect>, StateError> {
        super::validate_snapshot_key(name)?;
        let init = init_key(name);
        if self.containers.contains_key(name) {
            return Err(StateError::AlreadyExists {
                key: name.to_owned(),
            });
        }
        for key in [name, init.as_str()] {
            if self.is_taken(key) {
                return Err(StateError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
        }
        self.layer(layer)?;
        let parent_id = self.get(layer)?.id;
        self.take_id(init_id);
        let held = self.layers.get_mut(layer).expect("checked");
        held.holders = held
            .holders
            .checked_add(1)
            .unwrap_or_else(|| panic!("invariant: refcount of layer {layer} overflows"));
        let parent = Some(layer.to_owned());
        let snapshot = Snapshot::created(
            init_id,
            Kind::Committed,
            parent,
            Default::default(),
            time_ns,
            txid,
        );
        self.pending.insert(
            txid,
            Pending::Create {
                key: init.clone(),
                snapshot,
            },
        );
        self.containers.insert(
            name.to_owned(),
            Container {
                layer: layer.to_owned(),
                init_key: init,
                key: name.to_owned(),
                created_ns: time_ns,
                ready: false,
            },
        );
        Ok(vec![Effect::Stage {
            txid,
            stage: Stage::ContainerInit { parent: parent_id },
        }])
    }

    /// After snapshot `key` was created by `txid`: if it is a container's init snapshot, begin
    /// its read-write snapshot under `txid`; if it is its read-write snapshot, it is ready.
    pub(super) fn container_created(&mut self, txid: TxId, key: &str) -> Vec<Effect> {
        let Some(name) = self.container_of(key).map(str::to_owned) else {
            return Vec::new();
        };
        let container = self.containers.get_mut(&name).expect("found above");
        if container.key == key {
            container.ready = true;
            return Vec::new();
        }
        let (rw_key, created_ns) = (container.key.clone(), container.created_ns);
        let init = self.get(key).expect("just inserted").id;
        let id = SnapshotId(self.next_id);
        self.take_id(id);
        let parent = Some(key.to_owned());
        let snapshot = Snapshot::created(
            id,
            Kind::Active,
            parent,
            Default::default(),
            created_ns,
            txid,
        );
        self.pending.insert(
            txid,
            Pending::Create {
                key: rw_key,
                snapshot,
            },
        );
        vec![Effect::Stage {
            txid,
            stage: Stage::OnParent {
                kind: Kind::Active,
                parent: init,
            },
        }]
    }

    /// After the creation of snapshot `key` was aborted: a container it belonged to is gone,
    /// with whatever else it had.
    pub(super) fn container_aborted(&mut self, key: &str) -> Vec<Effect> {
        match self.container_of(key).map(str::to_owned) {
            Some(name) => self.drop_container(&name),
            None => Vec::new(),
        }
    }

    fn drop_container(&mut self, name: &str) -> Vec<Effect> {
        let container = self.containers.remove(name).expect("caller checked");
        let mut effects = Vec::new();
        for key in [&container.key, &container.init_key] {
            if let Some(snap) = self.snapshots.remove(key) {
                effects.push(Effect::Delete { id: snap.id });
            }
        }
        effects.extend(self.release_holder(&container.layer));
        effects
    }

    pub(super) fn remove_container(&mut self, name: &str) -> Result<Vec<Effect>, StateError> {
        let container = self
            .containers
            .get(name)
            .ok_or_else(|| StateError::NotFound {
                key: name.to_owned(),
            })?;
        let busy = self.pending.values().any(|p| match p {
            Pending::Create { key, .. } => *key == container.key || *key == container.init_key,
            Pending::Commit { key, .. } => *key == container.key,
            Pending::Import { .. } | Pending::DetachedImport { .. } | Pending::Unmount { .. } => {
                false
            }
            Pending::Mount { key, .. } => *key == container.key || *key == container.init_key,
        });
        if busy {
            return Err(StateError::FailedPrecondition {
                key: name.to_owned(),
                reason: Precondition::Busy,
            });
        }
        if self.has_children(&container.key) {
            return Err(StateError::FailedPrecondition {
                key: container.key.clone(),
                reason: Precondition::HasChildren,
            });
        }
        let (key, init_key) = (container.key.clone(), container.init_key.clone());
        self.check_unmounted(&key)?;
        self.check_unmounted(&init_key)?;
        Ok(self.drop_container(name))
    }
}
