//! The check half of [`State::apply`](super::State::apply): a record is planned against a
//! [`Draft`], a copy-on-write view that reads the state and keeps its own writes, so checking
//! can refuse at any point and the state has not been touched. A [`Plan`] is what the check
//! accepted; [`State::commit`](super::State::commit) writes it into the state and cannot fail.

use super::{
    Container, Effect, Image, Layer, Pending, Snapshot, Snapshots, State, StateError,
    MAX_CHAIN_DEPTH,
};
use super::{MountRef, Precondition, MAX_LAYER_DEPTH};
use crate::types::{SnapshotId, TxId};
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A map as a check sees it: the state's map underneath, the check's own writes on top
/// (`None`: removed).
#[derive(Debug)]
pub(super) struct Overlay<'a, K, V> {
    base: &'a BTreeMap<K, V>,
    changes: BTreeMap<K, Option<V>>,
}

impl<'a, K: Ord + Clone, V: Clone> Overlay<'a, K, V> {
    fn new(base: &'a BTreeMap<K, V>) -> Self {
        Overlay {
            base,
            changes: BTreeMap::new(),
        }
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.changes.get(k) {
            Some(v) => v.as_ref(),
            None => self.base.get(k),
        }
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(k).is_some()
    }

    /// Copies the entry into the overlay on first write.
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        if !self.changes.contains_key(k) {
            let v = self.base.get(k)?.clone();
            self.changes.insert(k.to_owned(), Some(v));
        }
        self.changes.get_mut(k)?.as_mut()
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let old = match self.changes.get_mut(&k) {
            Some(slot) => slot.take(),
            None => self.base.get(&k).cloned(),
        };
        self.changes.insert(k, Some(v));
        old
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        match self.changes.get_mut(k) {
            Some(slot) => slot.take(),
            None => {
                let v = self.base.get(k)?.clone();
                self.changes.insert(k.to_owned(), None);
                Some(v)
            }
        }
    }

    /// Entries in key order, as they would be after the writes so far.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let mut base = self.base.iter().peekable();
        let mut changes = self.changes.iter().peekable();
        std::iter::from_fn(move || loop {
            let order = match (base.peek(), changes.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((b, _)), Some((c, _))) => b.cmp(c),
            };
            if order == Ordering::Less {
                return base.next();
            }
            if order == Ordering::Equal {
                base.next();
            }
            if let Some((k, Some(v))) = changes.next() {
                return Some((k, v));
            }
        })
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

/// Reads shared by the state and a draft of it, so a check sees its own earlier writes (a
/// cascade that removed a child no longer counts it).
pub(super) trait Read {
    fn snapshot_entry(&self, key: &str) -> Option<&Snapshot>;
    fn pending_values(&self) -> Box<dyn Iterator<Item = &Pending> + '_>;
    fn layer_entry(&self, chain_id: &str) -> Option<&Layer>;
    fn container_entries(&self) -> Box<dyn Iterator<Item = (&String, &Container)> + '_>;
    fn mount_entries(&self) -> Box<dyn Iterator<Item = (&String, &MountRef)> + '_>;

    /// A target snapshot `key` is mounted on (counted, or a mount in flight), if any.
    fn mount_of(&self, key: &str) -> Option<&str> {
        self.mount_entries()
            .find(|(_, m)| m.key == key)
            .map(|(t, _)| t.as_str())
            .or_else(|| {
                self.pending_values().find_map(|p| match p {
                    Pending::Mount { key: k, target } if k == key => Some(target.as_str()),
                    _ => None,
                })
            })
    }

    fn get(&self, key: &str) -> Result<&Snapshot, StateError> {
        self.snapshot_entry(key)
            .ok_or_else(|| StateError::NotFound {
                key: key.to_owned(),
            })
    }

    /// The committed ancestors of `key`, nearest first, as snapshot ids.
    fn parent_ids(&self, key: &str) -> Result<Vec<SnapshotId>, StateError> {
        let mut ids = Vec::new();
        let mut next = self.get(key)?.parent.as_deref();
        while let Some(parent) = next {
            let snap = self.get(parent)?;
            ids.push(snap.id);
            assert!(
                ids.len() <= MAX_CHAIN_DEPTH + 1,
                "parent chain of {key} loops"
            );
            next = snap.parent.as_deref();
        }
        Ok(ids)
    }

    /// Whether a snapshot names `key` as its parent (not counting those being created).
    fn snapshot_has_children(&self, key: &str) -> bool;

    /// Keys whose parent is `key`, including snapshots still being created.
    fn has_children(&self, key: &str) -> bool {
        self.snapshot_has_children(key)
            || self.pending_values().any(|p| match p {
                Pending::Create { snapshot, .. } | Pending::Import { snapshot, .. } => {
                    snapshot.parent.as_deref() == Some(key)
                }
                Pending::Commit { .. }
                | Pending::Mount { .. }
                | Pending::Unmount { .. }
                | Pending::DetachedImport { .. } => false,
            })
    }

    /// Whether `key` is taken: by a snapshot, a snapshot being created, or a commit's name.
    fn is_taken(&self, key: &str) -> bool {
        self.snapshot_entry(key).is_some()
            || self.container_of(key).is_some()
            || self.pending_values().any(|p| match p {
                Pending::Create { key: k, .. } => k == key,
                Pending::Commit { name, .. } => name == key,
                Pending::Import { .. }
                | Pending::DetachedImport { .. }
                | Pending::Mount { .. }
                | Pending::Unmount { .. } => false,
            })
    }

    fn is_busy(&self, key: &str) -> bool {
        self.pending_values()
            .any(|p| matches!(p, Pending::Commit { key: k, .. } if k == key))
    }

    fn depth(&self, parent: &str) -> Result<usize, StateError> {
        Ok(self.parent_ids(parent)?.len() + 1)
    }

    /// The container owning snapshot `key`, if any.
    fn container_of(&self, key: &str) -> Option<&str> {
        self.container_entries()
            .find(|(_, c)| c.key == key || c.init_key == key)
            .map(|(name, _)| name.as_str())
    }

    fn layer(&self, chain_id: &str) -> Result<&Layer, StateError> {
        self.layer_entry(chain_id)
            .ok_or_else(|| StateError::NotFound {
                key: chain_id.to_owned(),
            })
    }

    /// ChainIDs from `chain_id` down to the base layer.
    fn layer_chain(&self, chain_id: &str) -> Result<Vec<String>, StateError> {
        let mut chain = vec![chain_id.to_owned()];
        let mut next = self.layer(chain_id)?.parent.as_deref();
        while let Some(p) = next {
            next = self.layer(p)?.parent.as_deref();
            chain.push(p.to_owned());
            assert!(
                chain.len() <= MAX_LAYER_DEPTH + 1,
                "layer chain of {chain_id} loops"
            );
        }
        Ok(chain)
    }

    /// Whether an import onto `chain_id` is in flight.
    fn has_pending_import_on(&self, chain_id: &str) -> bool {
        self.pending_values()
            .any(|p| matches!(p, Pending::Import { parent: Some(q), .. } if q == chain_id))
    }

    fn check_removable_snapshot(&self, key: &str) -> Result<(), StateError> {
        if self.has_children(key) {
            return Err(StateError::FailedPrecondition {
                key: key.to_owned(),
                reason: Precondition::HasChildren,
            });
        }
        Ok(())
    }
}

impl Read for State {
    fn snapshot_entry(&self, key: &str) -> Option<&Snapshot> {
        self.snapshots.get(key)
    }
    fn snapshot_has_children(&self, key: &str) -> bool {
        self.snapshots.children_of(key) > 0
    }
    fn pending_values(&self) -> Box<dyn Iterator<Item = &Pending> + '_> {
        Box::new(self.pending.values())
    }
    fn layer_entry(&self, chain_id: &str) -> Option<&Layer> {
        self.layers.get(chain_id)
    }
    fn container_entries(&self) -> Box<dyn Iterator<Item = (&String, &Container)> + '_> {
        Box::new(self.containers.iter())
    }
    fn mount_entries(&self) -> Box<dyn Iterator<Item = (&String, &MountRef)> + '_> {
        Box::new(self.mounts.iter())
    }
}

/// The state as one record's check sees it. Writes land in the overlays only.
#[derive(Debug)]
pub(super) struct Draft<'a> {
    pub next_id: u64,
    pub snapshots: Overlay<'a, String, Snapshot>,
    /// The state's snapshots under `snapshots`, with their children counts.
    base_snapshots: &'a Snapshots,
    pub pending: Overlay<'a, TxId, Pending>,
    pub layers: Overlay<'a, String, Layer>,
    pub images: Overlay<'a, String, Image>,
    pub containers: Overlay<'a, String, Container>,
    pub mounts: Overlay<'a, String, MountRef>,
}

impl Read for Draft<'_> {
    fn snapshot_entry(&self, key: &str) -> Option<&Snapshot> {
        self.snapshots.get(key)
    }
    fn snapshot_has_children(&self, key: &str) -> bool {
        // The state's count, corrected by this check's own writes (few: the entries one
        // record touches).
        let names = |s: &Snapshot| s.parent.as_deref() == Some(key);
        let mut count = self.base_snapshots.children_of(key);
        for (k, change) in &self.snapshots.changes {
            if self.base_snapshots.get(k).is_some_and(names) {
                count -= 1;
            }
            if change.as_ref().is_some_and(names) {
                count += 1;
            }
        }
        debug_assert_eq!(
            count > 0,
            self.snapshots.values().any(names),
            "the draft's children of {key}"
        );
        count > 0
    }
    fn pending_values(&self) -> Box<dyn Iterator<Item = &Pending> + '_> {
        Box::new(self.pending.values())
    }
    fn layer_entry(&self, chain_id: &str) -> Option<&Layer> {
        self.layers.get(chain_id)
    }
    fn container_entries(&self) -> Box<dyn Iterator<Item = (&String, &Container)> + '_> {
        Box::new(self.containers.iter())
    }
    fn mount_entries(&self) -> Box<dyn Iterator<Item = (&String, &MountRef)> + '_> {
        Box::new(self.mounts.iter())
    }
}

impl<'a> Draft<'a> {
    pub fn new(state: &'a State) -> Draft<'a> {
        Draft {
            next_id: state.next_id,
            snapshots: Overlay::new(&state.snapshots),
            base_snapshots: &state.snapshots,
            pending: Overlay::new(&state.pending),
            layers: Overlay::new(&state.layers),
            images: Overlay::new(&state.images),
            containers: Overlay::new(&state.containers),
            mounts: Overlay::new(&state.mounts),
        }
    }

    /// Use up snapshot id `id`: the engine puts the next id in the record, so any other id is a
    /// bug (replay checks it first and reports a typed error).
    pub fn take_id(&mut self, id: SnapshotId) {
        assert_eq!(id.0, self.next_id, "snapshot ids are assigned in order");
        self.next_id += 1;
    }

    pub fn into_plan(self, base_txid: TxId, txid: TxId, effects: Vec<Effect>) -> Plan {
        Plan {
            base_txid,
            txid,
            next_id: self.next_id,
            snapshots: self.snapshots.changes,
            pending: self.pending.changes,
            layers: self.layers.changes,
            images: self.images.changes,
            containers: self.containers.changes,
            mounts: self.mounts.changes,
            effects,
        }
    }
}

/// A record the state accepted, not yet applied: the entries it writes and the effects it asks
/// for. Only [`State::commit`] consumes it, on the state it was checked against.
#[derive(Debug)]
#[must_use = "a plan does nothing until it is committed"]
pub struct Plan {
    base_txid: TxId,
    txid: TxId,
    next_id: u64,
    snapshots: BTreeMap<String, Option<Snapshot>>,
    pending: BTreeMap<TxId, Option<Pending>>,
    layers: BTreeMap<String, Option<Layer>>,
    images: BTreeMap<String, Option<Image>>,
    containers: BTreeMap<String, Option<Container>>,
    mounts: BTreeMap<String, Option<MountRef>>,
    effects: Vec<Effect>,
}

impl Plan {
    /// The transaction id of the planned record.
    pub fn txid(&self) -> TxId {
        self.txid
    }

    /// The effects the record asks for, in order.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }
}

/// What applying a record did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// What the engine must do on disk, in order.
    pub effects: Vec<Effect>,
    /// Snapshot keys whose entry was created, changed or removed (ordered, each once).
    pub snapshots: Vec<String>,
}

fn write<K: Ord, V>(map: &mut BTreeMap<K, V>, changes: BTreeMap<K, Option<V>>) {
    for (k, v) in changes {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
    }
}

impl State {
    /// Write an accepted plan into the state. Cannot fail: every refusal happened in the check.
    pub fn commit(&mut self, plan: Plan) -> Applied {
        assert_eq!(
            plan.base_txid, self.last_txid,
            "a plan is committed on the state it was checked against"
        );
        let refcounted =
            !(plan.layers.is_empty() && plan.images.is_empty() && plan.containers.is_empty());
        let changed: Vec<String> = plan.snapshots.keys().cloned().collect();
        for (key, snapshot) in plan.snapshots {
            match snapshot {
                Some(snapshot) => self.snapshots.insert(key, snapshot),
                None => self.snapshots.remove(&key),
            };
        }
        write(&mut self.pending, plan.pending);
        write(&mut self.layers, plan.layers);
        write(&mut self.images, plan.images);
        write(&mut self.containers, plan.containers);
        write(&mut self.mounts, plan.mounts);
        self.next_id = plan.next_id;
        self.last_txid = plan.txid;
        if cfg!(debug_assertions) && refcounted {
            self.assert_refcounts();
        }
        if cfg!(debug_assertions) && !self.mounts.is_empty() {
            self.assert_mounts();
        }
        Applied {
            effects: plan.effects,
            snapshots: changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Overlay;
    use std::collections::BTreeMap;

    #[test]
    fn an_overlay_reads_through_and_iterates_in_order() {
        let base: BTreeMap<u32, &str> = [(1, "a"), (3, "c"), (5, "e")].into();
        let mut o = Overlay::new(&base);
        assert_eq!(o.insert(2, "b"), None);
        assert_eq!(o.remove(&3), Some("c"));
        assert_eq!(o.remove(&3), None);
        *o.get_mut(&5).expect("5") = "E";
        assert_eq!(o.insert(6, "f"), None);
        assert_eq!(o.insert(1, "A"), Some("a"));
        let seen: Vec<(u32, &str)> = o.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(seen, vec![(1, "A"), (2, "b"), (5, "E"), (6, "f")]);
        assert!(!o.contains_key(&3) && o.contains_key(&2));
        assert_eq!(base.len(), 3, "the base is never written");
        assert_eq!(base[&5], "e");
    }
}
