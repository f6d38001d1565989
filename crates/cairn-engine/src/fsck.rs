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
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Problem {
    /// Replaying checkpoint + journal does not give the state in memory.
    JournalDiverges {
        detail: String,
    },
    /// The index does not hold a snapshot the state has, or holds it differently.
    IndexMissing {
        key: String,
    },
    IndexDiffers {
        key: String,
    },
    /// The index holds a key the state does not.
    IndexExtra {
        key: String,
    },
    IndexTxId {
        index: Option<u64>,
        journal: u64,
    },
    /// A snapshot's tree is missing.
    TreeMissing {
        key: String,
        id: SnapshotId,
        path: String,
    },
    /// A tree no snapshot names.
    OrphanTree {
        id: SnapshotId,
        path: String,
    },
    /// The driver's marker names a transaction outside the snapshot's life.
    MarkerMismatch {
        key: String,
        id: SnapshotId,
        marker: Option<u64>,
        created: u64,
        last: u64,
    },
    StrayStaging {
        txid: TxId,
    },
    Trash {
        id: SnapshotId,
    },
    Unexpected {
        path: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub problem: Problem,
    pub repaired: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    pub findings: Vec<Finding>,
    pub snapshots_checked: usize,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

pub(crate) fn run(core: &mut Core, repair: bool) -> Result<FsckReport, EngineError> {
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
    let in_index: BTreeSet<&str> = index_entries.iter().map(|(k, _)| k.as_str()).collect();
    for (key, snap) in &core.state.snapshots {
        match index_entries.iter().find(|(k, _)| k == key) {
            None => {
                index_bad = true;
                found(Problem::IndexMissing { key: key.clone() }, repair);
            }
            Some((_, Some(entry))) if entry == snap => {}
            Some(_) => {
                index_bad = true;
                found(Problem::IndexDiffers { key: key.clone() }, repair);
            }
        }
    }
    for key in in_index {
        if !core.state.snapshots.contains_key(key) {
            index_bad = true;
            found(
                Problem::IndexExtra {
                    key: key.to_owned(),
                },
                repair,
            );
        }
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
