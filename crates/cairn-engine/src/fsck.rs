//! fsck: check the journal, the checkpoint, the index and the driver's trees against each
//! other, report every difference by key, id and path, and with `repair` fix what the recovery
//! rules allow (never a lost tree: that data is gone).

use super::checkpoint;
use super::core::Core;
use super::error::EngineError;
use super::recovery::{replay, RecoveryReport};
use cairn_state::types::{SnapshotId, TxId};
use cairn_state::State;
use serde::Serialize;
use std::collections::BTreeMap;

/// One thing fsck found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Problem {
    /// Replaying checkpoint + journal does not give the state in memory.
    JournalDiverges {
        /// What differs.
        detail: String,
    },
    /// The index does not hold a snapshot the state has, or holds it differently.
    IndexMissing {
        /// The snapshot's key.
        key: String,
    },
    /// The index holds a snapshot differently from the state.
    IndexDiffers {
        /// The snapshot's key.
        key: String,
    },
    /// The index holds a key the state does not.
    IndexExtra {
        /// The key.
        key: String,
    },
    /// The index was last applied at another transaction than the journal's last.
    IndexTxId {
        /// The index's applied transaction id, if it has one.
        index: Option<u64>,
        /// The journal's last transaction id.
        journal: u64,
    },
    /// A snapshot's tree is missing.
    TreeMissing {
        /// The snapshot's key.
        key: String,
        /// Its id.
        id: SnapshotId,
        /// Where its tree should be.
        path: String,
    },
    /// A tree no snapshot names.
    OrphanTree {
        /// The tree's id (its directory name).
        id: SnapshotId,
        /// Its path.
        path: String,
    },
    /// The driver's marker names a transaction outside the snapshot's life.
    MarkerMismatch {
        /// The snapshot's key.
        key: String,
        /// Its id.
        id: SnapshotId,
        /// The transaction id the marker holds, if it is readable.
        marker: Option<u64>,
        /// The transaction that created the snapshot.
        created: u64,
        /// The last transaction in the journal.
        last: u64,
    },
    /// A staging area no pending transaction names.
    StrayStaging {
        /// The transaction it was made for.
        txid: TxId,
    },
    /// A tree left in `trash/` (a removal's deletion did not finish).
    Trash {
        /// The tree's id.
        id: SnapshotId,
    },
    /// A name in the driver's directories that nothing creates (left alone).
    Unexpected {
        /// Its path.
        path: String,
    },
    /// A sync of the snapshot's tree failed (`sync-failed` beside it): its contents on disk are
    /// unknown and it cannot be committed; remove it.
    SyncFailed {
        /// The snapshot's key.
        key: String,
        /// Its id (the directory under `snapshots/`).
        id: SnapshotId,
    },
    /// `--verify`: the layer does not re-export to its DiffID.
    LayerDiffers {
        /// The layer's ChainID.
        chain_id: String,
        /// What the re-export found.
        detail: String,
    },
    /// `--verify`: the committed tree's digest is not the one recorded at its commit.
    TreeDiffers {
        /// The committed snapshot's key.
        key: String,
        /// Its id.
        id: SnapshotId,
        /// The digest journaled with its commit.
        recorded: String,
        /// The digest of the tree on disk now (or why it could not be read).
        found: String,
    },
}

impl Problem {
    /// The row of the recovery table (docs/recovery.md) that leaves this to fsck, if any.
    pub fn recovery_row(&self) -> Option<super::Row> {
        use super::Row;
        match self {
            Problem::TreeMissing { .. } => Some(Row::R19),
            Problem::MarkerMismatch { marker: None, .. } => Some(Row::R32),
            Problem::Unexpected { .. } => Some(Row::R29),
            _ => None,
        }
    }
}

/// A problem and whether fsck repaired it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What is wrong.
    pub problem: Problem,
    /// Repaired (with `repair`, for problems that can be fixed safely).
    pub repaired: bool,
}

/// What fsck found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    /// Every problem found, in the order checked.
    pub findings: Vec<Finding>,
    /// How many snapshots were checked.
    pub snapshots_checked: usize,
    /// With `--verify`: layers re-hashed against their DiffIDs.
    pub layers_verified: usize,
    /// With `--verify`: committed trees re-hashed against their recorded digests.
    pub trees_verified: usize,
}

impl FsckReport {
    /// Nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

pub(crate) fn run(core: &mut Core, repair: bool) -> Result<FsckReport, EngineError> {
    // The index lags the state between its writes (core/maintenance.rs): bring it up first, so
    // what fsck finds in it is what the disk holds, not what is merely not yet written.
    core.write_index();
    let mut report = FsckReport {
        snapshots_checked: core.state.snapshots.len(),
        ..Default::default()
    };
    let mut found =
        |problem: Problem, repaired: bool| report.findings.push(Finding { problem, repaired });

    // Journal and checkpoint: replaying them must give exactly the state in memory.
    let cp = checkpoint::load(core.storage.as_ref(), &core.root, core.store_id)?;
    let (mut replayed, from) = match cp {
        Some(cp) => (cp.state, cp.lsn),
        None => (State::new(), cairn_wal::Lsn::NONE),
    };
    let records = core.wal.read_from(core.wal.first_lsn())?;
    replay(&mut replayed, from, records, &mut RecoveryReport::default())?;
    if replayed != core.state {
        found(
            Problem::JournalDiverges {
                detail: format!(
                    "journal gives txid {}, memory has {}",
                    replayed.last_txid, core.state.last_txid
                ),
            },
            false,
        );
    }

    // Index.
    let index_entries = core.index.snapshots()?;
    let mut index_bad = false;
    for problem in index_problems(&core.state.snapshots, &index_entries) {
        index_bad = true;
        found(problem, repair);
    }
    let applied = core.index.applied_txid();
    if applied != Some(core.state.last_txid) {
        index_bad = true;
        found(
            Problem::IndexTxId {
                index: applied.map(|t| t.0),
                journal: core.state.last_txid.0,
            },
            repair,
        );
    }
    if index_bad && repair {
        core.index.rebuild(&core.state)?;
    }

    // Driver trees.
    let inv = core.driver.inventory()?;
    for (key, snap) in &core.state.snapshots {
        match inv.installed.get(&snap.id) {
            None => found(
                Problem::TreeMissing {
                    key: key.clone(),
                    id: snap.id,
                    path: core.driver.tree(snap.id).display().to_string(),
                },
                false,
            ),
            Some(marker) => {
                let noted = core
                    .driver
                    .tree(snap.id)
                    .with_file_name(cairn_driver::SYNC_FAILED);
                if std::fs::symlink_metadata(&noted).is_ok() {
                    found(
                        Problem::SyncFailed {
                            key: key.clone(),
                            id: snap.id,
                        },
                        false,
                    );
                }
                let ok = matches!(marker, Some(t) if *t >= snap.created_txid && *t <= core.state.last_txid);
                if !ok {
                    found(
                        Problem::MarkerMismatch {
                            key: key.clone(),
                            id: snap.id,
                            marker: marker.map(|t| t.0),
                            created: snap.created_txid.0,
                            last: core.state.last_txid.0,
                        },
                        false,
                    );
                }
            }
        }
    }
    // Trees a worker is deleting right now are not strays: their removal is journaled.
    let strays = core.strays()?;
    for id in &strays.trees {
        if repair {
            core.driver.remove(*id)?;
        }
        let path = core.driver.tree(*id).display().to_string();
        found(Problem::OrphanTree { id: *id, path }, repair);
    }
    for txid in &strays.staging {
        if repair {
            core.driver.discard(*txid)?;
        }
        found(Problem::StrayStaging { txid: *txid }, repair);
    }
    for id in &strays.trash {
        if repair {
            core.driver.remove(*id)?;
        }
        found(Problem::Trash { id: *id }, repair);
    }
    for path in &strays.unexpected {
        found(
            Problem::Unexpected {
                path: path.display().to_string(),
            },
            false,
        );
    }
    Ok(report)
}

/// The index's snapshot entries against the state's: each snapshot missing from the index or
/// different there, then each entry naming no snapshot, in key order.
fn index_problems(
    snapshots: &BTreeMap<String, cairn_state::Snapshot>,
    entries: &[(String, Option<cairn_state::Snapshot>)],
) -> Vec<Problem> {
    // Looked up by key for each snapshot: a scan of the entries per snapshot made fsck
    // quadratic on the engine thread (with some 50,000 snapshots it was 43 % of that thread's
    // time over the engine bench, every client waiting).
    let in_index: BTreeMap<&str, Option<&cairn_state::Snapshot>> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_ref()))
        .collect();
    let mut problems = Vec::new();
    for (key, snap) in snapshots {
        match in_index.get(key.as_str()) {
            None => problems.push(Problem::IndexMissing { key: key.clone() }),
            Some(Some(entry)) if *entry == snap => {}
            Some(_) => problems.push(Problem::IndexDiffers { key: key.clone() }),
        }
    }
    for &key in in_index.keys() {
        if !snapshots.contains_key(key) {
            problems.push(Problem::IndexExtra {
                key: key.to_owned(),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::{index_problems, Problem};
    use cairn_state::types::{Kind, SnapshotId, TxId};
    use cairn_state::Snapshot;
    use std::collections::BTreeMap;

    fn snapshot(id: u64) -> Snapshot {
        Snapshot::created(
            SnapshotId(id),
            Kind::Active,
            None,
            Default::default(),
            0,
            TxId(id),
        )
    }

    #[test]
    fn the_index_check_names_each_missing_different_and_extra_entry() {
        let snapshots: BTreeMap<String, Snapshot> =
            (1..=4).map(|n| (format!("k{n}"), snapshot(n))).collect();
        let entries = vec![
            ("k1".to_owned(), Some(snapshot(1))),
            // k2 missing; k3 another snapshot's value; k4 undecodable.
            ("k3".to_owned(), Some(snapshot(9))),
            ("k4".to_owned(), None),
            ("k5".to_owned(), Some(snapshot(5))),
        ];
        assert_eq!(
            index_problems(&snapshots, &entries),
            vec![
                Problem::IndexMissing { key: "k2".into() },
                Problem::IndexDiffers { key: "k3".into() },
                Problem::IndexDiffers { key: "k4".into() },
                Problem::IndexExtra { key: "k5".into() },
            ]
        );
        let whole: Vec<(String, Option<Snapshot>)> = snapshots
            .iter()
            .map(|(k, s)| (k.clone(), Some(s.clone())))
            .collect();
        assert!(index_problems(&snapshots, &whole).is_empty());
    }
}
