//! `fsck --verify`: the content checks, run on a worker after fsck's state checks. Every layer
//! is re-exported and hashed against its DiffID; every committed snapshot with a recorded tree
//! digest (docs/engine-format.md, "Tree digest") is hashed again and compared.

use super::fsck::{Finding, FsckReport, Problem};
use cairn_driver::Driver;
use cairn_state::types::SnapshotId;

/// What the engine thread hands the worker: resolved from the state in memory.
#[derive(Debug, Default)]
pub(crate) struct Targets {
    /// (ChainID, snapshot id, DiffID)
    pub layers: Vec<(String, SnapshotId, cairn_layer::Digest)>,
    /// (key, snapshot id, recorded digest)
    pub trees: Vec<(String, SnapshotId, String)>,
}

impl Targets {
    pub(crate) fn of(state: &cairn_state::State) -> Targets {
        let mut targets = Targets::default();
        for (chain_id, layer) in &state.layers {
            let (Ok(snap), Ok(diff)) = (
                state.get(chain_id),
                super::layers::parse_digest(&layer.diff_id),
            ) else {
                continue;
            };
            targets.layers.push((chain_id.clone(), snap.id, diff));
        }
        for (key, snap) in &state.snapshots {
            if let Some(digest) = &snap.digest {
                targets.trees.push((key.clone(), snap.id, digest.clone()));
            }
        }
        targets
    }
}

/// A tree that is gone now was removed while the check ran (its removal renames it away
/// first): not a finding.
fn vanished(driver: &dyn Driver, id: SnapshotId) -> bool {
    std::fs::symlink_metadata(driver.tree(id)).is_err()
}

/// Hash everything in `targets` and add a finding for each mismatch to `report`.
pub(crate) fn run(driver: &dyn Driver, targets: &Targets, report: &mut FsckReport) {
    for (chain_id, id, diff) in &targets.layers {
        let verified = super::layers::verify(driver, chain_id, *id, diff);
        if let Some(detail) = verified.problem {
            if !vanished(driver, *id) {
                report.findings.push(Finding {
                    problem: Problem::LayerDiffers {
                        chain_id: chain_id.clone(),
                        detail,
                    },
                    repaired: false,
                });
            }
        }
        report.layers_verified += 1;
    }
    for (key, id, recorded) in &targets.trees {
        let found = match driver
            .open_tree(*id)
            .and_then(|tree| cairn_driver::tree_digest(tree.path()))
        {
            Ok(found) => found,
            Err(_) if vanished(driver, *id) => continue,
            Err(e) => format!("unreadable: {e}"),
        };
        if &found != recorded {
            report.findings.push(Finding {
                problem: Problem::TreeDiffers {
                    key: key.clone(),
                    id: *id,
                    recorded: recorded.clone(),
                    found,
                },
                repaired: false,
            });
        }
        report.trees_verified += 1;
    }
}
