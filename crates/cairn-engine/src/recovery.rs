//! Opening a root: the checkpoint, the log replayed through the same pure `apply`, then the
//! decision table of docs/recovery.md run against the driver and the index. Every step is
//! idempotent, so a crash during recovery is recovered by running it again.

use super::error::{EngineError, SequenceProblem};
use super::index::{Applied, Index};
use super::rows::Row;
use super::{checkpoint, journal};
use cairn_driver::Driver;
use cairn_state::types::{SnapshotId, TxId};
use cairn_state::{Op, Record, State};
use cairn_wal::storage::Storage;
use cairn_wal::{Lsn, Records, StoreId, Wal};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;

/// What recovery found and did, row by row of the decision table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// The LSN the checkpoint recovery started from covers.
    pub checkpoint_lsn: u64,
    /// Journal records replayed onto the checkpoint's state.
    pub replayed_records: u64,
    /// Journal records the checkpoint already covered.
    pub skipped_records: u64,
    /// The log's torn tail, if one was cut: (segment, offset, first lost LSN).
    pub torn_tail: Option<(String, u64, u64)>,
    /// Transactions begun without a durable completion: dropped (row "pending").
    pub dropped: Vec<TxId>,
    /// Completed creations whose tree was still in staging: installed (row "replay").
    pub installed: Vec<SnapshotId>,
    /// Trees on disk that no snapshot names: removed.
    pub orphans_removed: Vec<SnapshotId>,
    /// Staging areas no pending transaction named: removed.
    pub staging_removed: Vec<TxId>,
    /// Trees left in `trash/` by an interrupted removal: deleted.
    pub trash_purged: Vec<SnapshotId>,
    /// Snapshots whose creation is durable but whose tree is gone: reported, not repaired.
    pub lost: Vec<SnapshotId>,
    /// The derived index disagreed with the journal and was rebuilt.
    pub index_rebuilt: bool,
    /// Layers nothing held were released.
    pub layers_collected: bool,
    /// Containers whose creation a crash interrupted: removed.
    pub containers_removed: Vec<String>,
    /// Names in the driver's directories that nothing creates: reported, left alone.
    pub unexpected: Vec<String>,
    /// Installed snapshots holding a marker temporary (`txid.tmp`) of an interrupted seal:
    /// the temporary was removed, the marker kept.
    pub marker_tmp_removed: Vec<SnapshotId>,
    /// Pending first mounts or last unmounts the kernel had done: completed.
    pub mount_steps_completed: Vec<TxId>,
    /// Pending first mounts or last unmounts the kernel had not done: aborted.
    pub mount_steps_aborted: Vec<TxId>,
    /// Counted mount targets with nothing mounted (a reboot, an unmount behind cairn's
    /// back): their references dropped.
    pub mounts_gone: Vec<String>,
    /// The rows of the decision table (docs/recovery.md) this recovery fired.
    pub rows: BTreeSet<Row>,
}

impl RecoveryReport {
    fn fire(&mut self, row: Row) {
        self.rows.insert(row);
    }
}

/// Check the sequence invariants `apply` asserts, so a damaged journal is a typed error.
fn check_sequence(state: &State, lsn: Lsn, record: &Record) -> Result<(), EngineError> {
    if record.txid <= state.last_txid {
        return Err(EngineError::Sequence {
            lsn,
            reason: SequenceProblem::TxId {
                last: state.last_txid,
                found: record.txid,
            },
        });
    }
    // Every record that takes a snapshot id must take the next one.
    let id = record.op.takes_id();
    if let Some(id) = id {
        if id.0 != state.next_id {
            return Err(EngineError::Sequence {
                lsn,
                reason: SequenceProblem::SnapshotId {
                    expected: state.next_id,
                    found: id.0,
                },
            });
        }
    }
    Ok(())
}

/// Replay records after `from` onto `state`. Used by recovery, fsck and the fuzz target.
pub fn replay(
    state: &mut State,
    from: Lsn,
    records: Records,
    report: &mut RecoveryReport,
) -> Result<(), EngineError> {
    replay_noting_seals(state, from, records, report, &mut BTreeSet::new())
}

/// [`replay`], also noting in `sealed` the snapshot of every commit the replayed records
/// abort: a seal that failed or was cut may have left its marker temporary (row R23).
fn replay_noting_seals(
    state: &mut State,
    from: Lsn,
    records: Records,
    report: &mut RecoveryReport,
    sealed: &mut BTreeSet<SnapshotId>,
) -> Result<(), EngineError> {
    for rec in records {
        let rec = rec?;
        if rec.lsn <= from {
            report.skipped_records += 1;
            continue;
        }
        let record = journal::decode(rec.lsn, &rec.payload)?;
        check_sequence(state, rec.lsn, &record)?;
        if let Op::Abort { of } = &record.op {
            if let Some(id) = commit_source(state, *of) {
                sealed.insert(id);
            }
        }
        state.apply(&record).map_err(|source| EngineError::Replay {
            lsn: rec.lsn,
            txid: record.txid,
            source,
        })?;
        report.replayed_records += 1;
    }
    Ok(())
}

/// Row "pending" of the decision table: abort every transaction begun without a durable
/// completion, applying the aborts to `state`; returns the `Abort` records to journal (at
/// `next_lsn` onward). Used by recovery and the fuzz target.
pub fn abort_pending(state: &mut State, next_lsn: Lsn) -> Result<Vec<Record>, EngineError> {
    let pending: Vec<TxId> = state.pending.keys().copied().collect();
    let mut aborts = Vec::with_capacity(pending.len());
    for (i, of) in pending.into_iter().enumerate() {
        let lsn = Lsn(next_lsn.0.saturating_add(i as u64));
        // A journal that ends at the largest txid leaves none for the abort: a typed error,
        // not an overflow.
        let Some(txid) = state.last_txid.0.checked_add(1).map(TxId) else {
            return Err(EngineError::Sequence {
                lsn,
                reason: SequenceProblem::TxId {
                    last: state.last_txid,
                    found: state.last_txid,
                },
            });
        };
        let record = Record {
            txid,
            op: Op::Abort { of },
        };
        state
            .apply(&record)
            .map_err(|source| EngineError::Replay { lsn, txid, source })?;
        aborts.push(record);
    }
    Ok(aborts)
}

/// The snapshot a pending commit `txid` seals, if `txid` is one.
fn commit_source(state: &State, txid: TxId) -> Option<SnapshotId> {
    match state.pending.get(&txid)? {
        cairn_state::Pending::Commit { key, .. } => state.snapshots.get(key).map(|s| s.id),
        _ => None,
    }
}

fn state_dropped(aborts: &[Record]) -> Vec<TxId> {
    aborts
        .iter()
        .filter_map(|r| match r.op {
            Op::Abort { of } => Some(of),
            _ => None,
        })
        .collect()
}

pub(crate) struct Recovered {
    pub wal: Wal,
    pub state: State,
    pub checkpoint_lsn: Lsn,
    pub report: RecoveryReport,
}

pub(crate) fn recover(
    root: &Path,
    storage: std::sync::Arc<dyn Storage>,
    store_id: StoreId,
    creating: bool,
    driver: &dyn Driver,
    index: &Index,
    wal_options: cairn_wal::WalOptions,
) -> Result<Recovered, EngineError> {
    let mut report = RecoveryReport::default();
    let cp = checkpoint::load(storage.as_ref(), root, store_id)?;
    let (mut state, checkpoint_lsn) = match cp {
        Some(cp) => (cp.state, cp.lsn),
        None => (State::new(), Lsn::NONE),
    };
    report.checkpoint_lsn = checkpoint_lsn.0;
    let wal_options = cairn_wal::WalOptions {
        store_id: Some(store_id),
        create_if_missing: creating,
        first_lsn: checkpoint_lsn.next(),
        ..wal_options
    };
    let (mut wal, records, wal_report) = Wal::open(storage, &root.join("wal"), wal_options)?;
    if let Some(t) = &wal_report.torn_tail {
        report.torn_tail = Some((t.path.display().to_string(), t.offset, t.lsn.0));
        report.fire(Row::R14);
    }
    if !wal_report.removed_temp_files.is_empty() {
        report.fire(Row::R30);
    }
    report.fire(if creating { Row::R1 } else { Row::R2 });
    if wal.first_lsn() > checkpoint_lsn.next() {
        return Err(EngineError::LogGap {
            checkpoint: checkpoint_lsn,
            wal_first: wal.first_lsn(),
        });
    }
    // Row "marker temporary" looks only where a seal can have been cut: the commits pending
    // now, and those the log tail aborts (a recovery cut after journaling its aborts, or a seal
    // that failed while the engine ran; a failed marker write removes its own temporary or
    // stops the engine, so none hides behind a checkpoint). One probe per such snapshot, not
    // one per snapshot in the root.
    let mut sealed = BTreeSet::new();
    replay_noting_seals(
        &mut state,
        checkpoint_lsn,
        records,
        &mut report,
        &mut sealed,
    )?;
    let pending_commits: Vec<TxId> = state.pending.keys().copied().collect();
    sealed.extend(
        pending_commits
            .into_iter()
            .filter_map(|txid| commit_source(&state, txid)),
    );
    if report.skipped_records > 0 {
        report.fire(Row::R8);
    }
    fail::fail_point!("engine::recovery::after_replay");
    // Rows "mount steps" and "mount gone": the journaled mount counts against what the kernel
    // has mounted, decided before any other pending transaction is dropped.
    let has_mounts = !state.mounts.is_empty()
        || state.pending.values().any(|p| {
            matches!(
                p,
                cairn_state::Pending::Mount { .. } | cairn_state::Pending::Unmount { .. }
            )
        });
    if has_mounts {
        let mounted = cairn_driver::mountinfo::mount_points()?;
        let r = super::mountref::reconcile_mounts(&mut state, &mounted, wal.next_lsn())?;
        if !r.records.is_empty() {
            let payloads: Vec<Vec<u8>> = r.records.iter().map(journal::encode).collect();
            wal.append_batch(&payloads)?;
            wal.sync()?;
        }
        report.mount_steps_completed = r.completed;
        report.mount_steps_aborted = r.aborted;
        report.mounts_gone = r.gone;
        report.rows.extend(r.rows);
    }
    // What each pending transaction was, for the rows below (the aborts remove them).
    let pending_kinds: Vec<(TxId, Row)> = state
        .pending
        .iter()
        .map(|(txid, p)| {
            let row = match p {
                cairn_state::Pending::Commit { .. } => Row::R17,
                cairn_state::Pending::Import { .. } => Row::R33,
                cairn_state::Pending::DetachedImport { .. } => Row::R41,
                // R15 or R16, told apart once the inventory is known.
                cairn_state::Pending::Create { .. } => Row::R16,
                // Decided above; none is left pending here.
                cairn_state::Pending::Mount { .. } => Row::R37,
                cairn_state::Pending::Unmount { .. } => Row::R38,
            };
            (*txid, row)
        })
        .collect();

    // Row "pending": a begun transaction without a durable completion is dropped. The abort
    // is journaled first, so a crash from here on finds nothing pending and removes the
    // staging area as a stray.
    // The snapshot ids of dropped creations: a tree under one is an inline creation's (R40).
    let dropped_ids: BTreeSet<SnapshotId> = state
        .pending
        .values()
        .filter_map(|p| match p {
            cairn_state::Pending::Create { snapshot, .. } => Some(snapshot.id),
            _ => None,
        })
        .collect();
    let aborts = abort_pending(&mut state, wal.next_lsn())?;
    if !aborts.is_empty() {
        let payloads: Vec<Vec<u8>> = aborts.iter().map(journal::encode).collect();
        wal.append_batch(&payloads)?;
        wal.sync()?;
        report.dropped = state_dropped(&aborts);
    }
    // Row "stranded container": a container whose creation stopped with nothing pending (its
    // read-write step never began) is removed whole.
    let stranded = state.stranded_containers();
    if !stranded.is_empty() {
        let mut payloads = Vec::new();
        for name in &stranded {
            let record = Record {
                txid: state.last_txid.next(),
                op: Op::RemoveContainer { name: name.clone() },
            };
            state
                .apply(&record)
                .expect("removing a stranded container always applies");
            payloads.push(journal::encode(&record));
        }
        wal.append_batch(&payloads)?;
        wal.sync()?;
        report.containers_removed = stranded;
        report.fire(Row::R34);
    }
    // Row "unheld layers": layers nothing holds (an image load a crash interrupted before it
    // recorded the image) are released in one journaled transaction; their trees become
    // orphans and are removed below.
    if state.layers.values().any(|l| l.refcount() == 0) {
        let record = Record {
            txid: state.last_txid.next(),
            op: Op::CollectLayers,
        };
        state
            .apply(&record)
            .expect("collecting layers always applies");
        wal.append_batch([journal::encode(&record)])?;
        wal.sync()?;
        report.layers_collected = true;
        report.fire(Row::R35);
    }
    fail::fail_point!("engine::recovery::after_abort");

    // Names only: the rows below never look at markers (fsck does).
    let inv = driver.inventory_names()?;
    let mut staging: BTreeSet<TxId> = inv.staging.iter().copied().collect();
    for (txid, row) in &pending_kinds {
        let row = match row {
            Row::R16 if staging.contains(txid) => Row::R15,
            row => *row,
        };
        report.fire(row);
    }
    // Row "replay": a completed creation whose tree is still staged is installed again.
    for snap in state.snapshots.values() {
        if inv.installed.contains_key(&snap.id) {
            continue;
        }
        if staging.remove(&snap.created_txid) {
            driver.install(snap.created_txid, snap.id)?;
            report.installed.push(snap.id);
            report.fire(Row::R18);
        } else {
            tracing::error!(id = %snap.id, "snapshot tree lost although its creation is durable");
            report.lost.push(snap.id);
            report.fire(Row::R19);
        }
    }
    fail::fail_point!("engine::recovery::after_install");
    // Rows "orphan" and "stray staging": what the state does not name is removed.
    let ids: BTreeSet<SnapshotId> = state.snapshots.values().map(|s| s.id).collect();
    for id in inv.installed.keys() {
        if !ids.contains(id) {
            // An inline creation's tree carries its marker (a foreign tree need not).
            let inline = (dropped_ids.contains(id) || id.0 >= state.next_id)
                && driver
                    .tree(*id)
                    .parent()
                    .is_some_and(|dir| matches!(cairn_driver::marker::read(dir), Ok(Some(_))));
            driver.remove(*id)?;
            report.orphans_removed.push(*id);
            report.fire(Row::R20);
            if inline {
                report.fire(Row::R40);
            }
        }
    }
    let created: BTreeSet<TxId> = state.snapshots.values().map(|s| s.created_txid).collect();
    for txid in staging {
        driver.discard(txid)?;
        report.staging_removed.push(txid);
        if created.contains(&txid) {
            report.fire(Row::R31);
        } else if !pending_kinds.iter().any(|(t, _)| *t == txid) {
            // A dropped transaction's staging is its row's (R15, R33), not a stray's.
            report.fire(Row::R21);
        }
    }
    // Row "marker temporary": a seal interrupted before its marker rename leaves txid.tmp.
    for id in sealed.iter().filter(|id| inv.installed.contains_key(id)) {
        if let Some(dir) = driver.tree(*id).parent() {
            if cairn_driver::marker::remove_leftover(dir)? {
                report.marker_tmp_removed.push(*id);
                report.fire(Row::R23);
            }
        }
    }
    driver.purge_trash()?;
    report.trash_purged = inv.trash.clone();
    if !inv.trash.is_empty() {
        report.fire(Row::R22);
    }
    report.unexpected = inv
        .unexpected
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if !inv.unexpected.is_empty() {
        report.fire(Row::R29);
    }
    fail::fail_point!("engine::recovery::after_reconcile");

    // Row "index": derived, so rebuilt whenever it does not reflect the journal exactly.
    let index_row = match index.applied() {
        _ if index.discarded() => Some(Row::R28),
        _ if index.created() && !creating => Some(Row::R26),
        Applied::At(txid) if txid == state.last_txid => None,
        Applied::At(txid) if txid < state.last_txid => Some(Row::R24),
        Applied::At(_) => Some(Row::R25),
        Applied::Unreadable => Some(Row::R27),
        // Never written: a new root's (R1) or one whose first write a crash cut (R24).
        Applied::Missing => Some(if creating { Row::R1 } else { Row::R24 }),
    };
    if let Some(row) = index_row {
        index.rebuild(&state)?;
        report.index_rebuilt = true;
        report.fire(row);
    }
    Ok(Recovered {
        wal,
        state,
        checkpoint_lsn,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_state::types::SnapshotId;

    #[test]
    fn every_op_that_takes_a_snapshot_id_must_take_the_next_one() {
        let state = State::new();
        let wrong = SnapshotId(state.next_id + 7);
        for op in [
            Op::BeginCreate {
                key: "k".into(),
                parent: None,
                kind: cairn_state::types::Kind::Active,
                id: wrong,
                labels: Default::default(),
                time_ns: 0,
            },
            Op::BeginImport {
                id: wrong,
                parent: None,
                pin: true,
                time_ns: 0,
            },
            Op::BeginContainer {
                name: "c".into(),
                layer: "l".into(),
                init_id: wrong,
                time_ns: 0,
            },
        ] {
            let record = Record { txid: TxId(1), op };
            let err = check_sequence(&state, Lsn(1), &record).expect_err("wrong id");
            assert!(
                matches!(
                    err,
                    EngineError::Sequence {
                        reason: SequenceProblem::SnapshotId { .. },
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
