//! Reference-counted mounts outside the engine thread: the target path a caller names, and
//! recovery's reconciliation of the journaled counts with what the kernel has mounted.

use super::error::{EngineError, SequenceProblem};
use super::rows::Row;
use cairn_state::types::TxId;
use cairn_state::{Invalid, Op, Pending, Record, State, StateError};
use cairn_wal::Lsn;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// The target as the journal records it: absolute, symlinks resolved (so `mnt` and
/// `/here/mnt` are one target). A mount's target must exist; an unmount's may be gone, and is
/// then made absolute and normalized without the file system.
pub(crate) fn resolve_target(target: &Path, must_exist: bool) -> Result<String, EngineError> {
    let resolved = match std::fs::canonicalize(target) {
        Ok(p) => p,
        Err(e) if must_exist => {
            return Err(EngineError::Io {
                op: "resolve mount target",
                path: target.to_path_buf(),
                source: e,
            })
        }
        Err(_) => lexical(target)?,
    };
    match resolved.to_str() {
        Some(s) => {
            cairn_state::validate_target(s)?;
            Ok(s.to_owned())
        }
        None => Err(StateError::InvalidArgument {
            reason: Invalid::BadTarget {
                target: resolved.display().to_string(),
            },
        }
        .into()),
    }
}

fn lexical(target: &Path) -> Result<PathBuf, EngineError> {
    let cwd = std::env::current_dir().map_err(EngineError::io("getcwd", target))?;
    let mut out = PathBuf::from("/");
    for c in cwd.join(target).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// What reconciling did: the records to journal, and which row each fired.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// `Complete`, `Abort` and `MountGone` records, applied to the state, to journal.
    pub records: Vec<Record>,
    /// Pending mount steps completed (the kernel did them).
    pub completed: Vec<TxId>,
    /// Pending mount steps aborted (the kernel did not).
    pub aborted: Vec<TxId>,
    /// Counted targets with nothing mounted: their references dropped.
    pub gone: Vec<String>,
    /// The recovery rows this fired.
    pub rows: BTreeSet<Row>,
}

/// Decide every pending mount step and every counted mount by what is mounted now, applying
/// the records to `state`: a pending mount completes if its target is a mount point and is
/// aborted if not; a pending unmount the other way round; a counted target that is not a mount
/// point is dropped (`MountGone`). Pure but for `mounted`, so the fuzz and unit tests run it.
pub fn reconcile_mounts(
    state: &mut State,
    mounted: &BTreeSet<PathBuf>,
    next_lsn: Lsn,
) -> Result<Reconciled, EngineError> {
    let mut out = Reconciled::default();
    let steps: Vec<(TxId, bool, Row)> = state
        .pending
        .iter()
        .filter_map(|(txid, p)| match p {
            Pending::Mount { target, .. } => {
                Some((*txid, mounted.contains(Path::new(target)), Row::R37))
            }
            Pending::Unmount { target } => {
                Some((*txid, !mounted.contains(Path::new(target)), Row::R38))
            }
            _ => None,
        })
        .collect();
    let apply = |state: &mut State, op: Op, out: &mut Reconciled| {
        let lsn = Lsn(next_lsn.0.saturating_add(out.records.len() as u64));
        let Some(txid) = state.last_txid.0.checked_add(1).map(TxId) else {
            return Err(EngineError::Sequence {
                lsn,
                reason: SequenceProblem::TxId {
                    last: state.last_txid,
                    found: state.last_txid,
                },
            });
        };
        let record = Record { txid, op };
        state
            .apply(&record)
            .map_err(|source| EngineError::Replay { lsn, txid, source })?;
        out.records.push(record);
        Ok(())
    };
    for (of, done, row) in steps {
        if done {
            let op = Op::Complete {
                of,
                usage: None,
                digest: None,
            };
            apply(state, op, &mut out)?;
            out.completed.push(of);
        } else {
            apply(state, Op::Abort { of }, &mut out)?;
            out.aborted.push(of);
        }
        out.rows.insert(row);
    }
    let gone: Vec<String> = state
        .mounts
        .keys()
        .filter(|t| !mounted.contains(Path::new(t.as_str())))
        .cloned()
        .collect();
    for target in gone {
        apply(
            state,
            Op::MountGone {
                target: target.clone(),
            },
            &mut out,
        )?;
        out.gone.push(target);
        out.rows.insert(Row::R39);
    }
    Ok(out)
}
