//! The recovery decision table as code: one row per situation recovery (or opening a root)
//! can find, what it does, and where that shows. `docs/recovery.md` carries the table generated
//! from [`Row::markdown_table`] (a test fails when they differ), [`RecoveryReport::rows`] names
//! the rows a recovery fired, [`EngineError::recovery_row`] the row of a refusal, and a test
//! fails when a row has no test that fires it (tests/recovery_table.rs).
//!
//! [`RecoveryReport::rows`]: super::RecoveryReport::rows
//! [`EngineError::recovery_row`]: super::EngineError::recovery_row

use serde::Serialize;

/// One row of the decision table. Ids are stable: a row is never renumbered or reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[allow(missing_docs)] // A row's documentation is its text: `on_disk`, `action`, `shows`.
pub enum Row {
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    R16,
    R17,
    R18,
    R19,
    R20,
    R21,
    R22,
    R23,
    R24,
    R25,
    R26,
    R27,
    R28,
    R29,
    R30,
    R31,
    R32,
    R33,
    R34,
    R35,
    R36,
    R37,
    R38,
    R39,
    R40,
    R41,
}

impl Row {
    /// Every row, in table order.
    pub const ALL: [Row; 41] = [
        Row::R1,
        Row::R2,
        Row::R3,
        Row::R4,
        Row::R5,
        Row::R6,
        Row::R7,
        Row::R8,
        Row::R9,
        Row::R10,
        Row::R11,
        Row::R12,
        Row::R13,
        Row::R14,
        Row::R15,
        Row::R16,
        Row::R17,
        Row::R18,
        Row::R19,
        Row::R20,
        Row::R21,
        Row::R22,
        Row::R23,
        Row::R24,
        Row::R25,
        Row::R26,
        Row::R27,
        Row::R28,
        Row::R29,
        Row::R30,
        Row::R31,
        Row::R32,
        Row::R33,
        Row::R34,
        Row::R35,
        Row::R36,
        Row::R37,
        Row::R38,
        Row::R39,
        Row::R40,
        Row::R41,
    ];

    /// What recovery finds on disk.
    pub fn on_disk(self) -> &'static str {
        match self {
            Row::R1 => "No `cairn.meta`, no log (new root)",
            Row::R2 => "Meta + checkpoint + log, nothing pending, trees match",
            Row::R3 => "A log but no `cairn.meta` (creation crashed between creating the log and writing the meta)",
            Row::R4 => "`checkpoint.tmp` or `cairn.meta.tmp` (atomic replace interrupted before its rename)",
            Row::R5 => "`LOCK` held by another process for longer than `lock_timeout_ms` (30 s by default; a process killed a moment ago holds it until it has fully exited)",
            Row::R6 => "Meta names another driver than `EngineOptions::driver`",
            Row::R7 => "`cairn.meta` damaged (size, magic, CRC, version)",
            Row::R8 => "Checkpoint at LSN L and log records ≤ L still present (crash between the checkpoint's rename and the log's truncation, or a segment that straddles L)",
            Row::R9 => "Log starting after L + 1 (records missing between checkpoint and log)",
            Row::R10 => "Checkpoint damaged (magic, version, length, CRC, store id, payload)",
            Row::R11 => "A (CRC-valid) record that does not decode (empty, unknown version, bad postcard)",
            Row::R12 => "A record whose txid does not follow the last one, or a `BeginCreate` with the wrong snapshot id",
            Row::R13 => "A record the state refuses (e.g. `Complete` of a transaction not pending)",
            Row::R14 => "Torn WAL tail (a write the crash cut: bad CRC / partial record at the end)",
            Row::R15 => "`BeginCreate` without `Complete`/`Abort`, `staging/<txid>` present (stage interrupted or done but not journaled)",
            Row::R16 => "`BeginCreate` pending, no staging (crash before the stage began)",
            Row::R17 => "`BeginCommit` pending (a worker's seal interrupted, or sealed but not journaled; or a torn append that kept an inline seal's `BeginCommit` but not its `Complete`)",
            Row::R18 => "`Complete` of a create, tree still in `staging/<txid>` (crash before or inside install)",
            Row::R19 => "Snapshot in the state, tree neither installed nor staged",
            Row::R20 => "`snapshots/<id>` that no snapshot names (a removal journaled but not yet moved to trash, or a foreign tree with a decimal name)",
            Row::R21 => "`staging/<txid>` with no pending transaction (aborted or dropped create; a leftover next to an installed tree, R31)",
            Row::R22 => "`trash/<id>` (removal interrupted during the delete)",
            Row::R23 => "`snapshots/<id>/txid.tmp` of a snapshot whose commit is pending or aborted in the log tail (a seal's marker write interrupted before its rename; looked for only there)",
            Row::R24 => "Index applied txid behind the journal (a crash after journal syncs the index had not caught up with: it is written every 1,024 changed keys and at checkpoints, not per batch)",
            Row::R25 => "Index applied txid ahead of the journal (index from a later life, journal restored)",
            Row::R26 => "Index directory missing",
            Row::R27 => "Index applied txid unreadable (not 8 bytes)",
            Row::R28 => "Index files damaged so sled cannot open them",
            Row::R29 => "Names in `snapshots/`, `staging/`, `trash/` no driver operation creates (non-decimal, leading zeros, non-directories)",
            Row::R30 => "`wal/<n>.wal.tmp` (segment creation interrupted)",
            Row::R31 => "`Complete`d create whose tree is installed **and** a `staging/<txid>` of the same txid (possible on filesystems that journal the two directories apart)",
            Row::R32 => "An installed tree whose marker (`snapshots/<id>/txid`, or that directory's `user.cairn.txid` xattr) is missing or damaged (cannot follow from a process crash: the marker is durable before the creation completes)",
            Row::R33 => "`BeginImport` without `CompleteImport`/`Abort` (a layer import interrupted while extracting or syncing, or done but not journaled), with or without `staging/<txid>`",
            Row::R34 => "A container whose creation stopped with nothing pending (its init step was dropped or aborted, so its read-write step never began)",
            Row::R35 => "Layers nothing holds (no pin, image, child layer or container: an image load a crash interrupted before it recorded the image)",
            Row::R36 => "A WAL segment damaged other than by a torn tail (damage in a sealed segment, a missing, misnamed or foreign segment, a segment over the segment size)",
            Row::R37 => "`Mount` of a first reference pending (crash between journaling it and its mount(2), or between the mount(2) and its `Complete`)",
            Row::R38 => "`Unmount` of a last reference pending (crash between journaling it and its umount(2), or between the umount(2) and its `Complete`)",
            Row::R39 => "A counted mount whose target is not a mount point in `/proc/self/mountinfo` (a reboot, or an unmount behind cairn's back)",
            Row::R40 => "`snapshots/<id>` of an inline creation whose `Complete` is not journaled (a crash between the batch's shared tree sync and its journal sync): its `BeginCreate` pending, or lost with it (the id is not yet allocated)",
            Row::R41 => "`BeginDetachedImport` without `CompleteDetachedImport`/`Abort` (a layer of a parallel image load, extracted or extracting in a staging area of its own, whose parent's completion, or its own, is not durable), with or without `staging/<txid>`",
        }
    }

    /// What recovery does about it.
    pub fn action(self) -> &'static str {
        match self {
            Row::R1 => "Draw a store id, create the log (first LSN 1), the driver dirs and the index, then write `cairn.meta`",
            Row::R2 => "Replay; nothing else",
            Row::R3 => "Adopt the log's store id, finish the creation (nothing was acknowledged: the engine starts only after the meta is durable)",
            Row::R4 => "Removed; the real file is the old, complete one",
            Row::R5 => "Wait for it, saying once who holds it; then refuse",
            Row::R6 => "Refuse, nothing changed",
            Row::R7 => "Refuse, nothing changed",
            Row::R8 => "Skip them",
            Row::R9 => "Refuse, nothing changed",
            Row::R10 => "Refuse, nothing changed",
            Row::R11 => "Refuse, nothing changed",
            Row::R12 => "Refuse, nothing changed",
            Row::R13 => "Refuse, nothing changed",
            Row::R14 => "Cut the tail (wal rule, docs/wal-format.md); the record was never acknowledged",
            Row::R15 => "Journal `Abort`, then discard `staging/<txid>` as a stray; the key does not exist",
            Row::R16 => "Journal `Abort`",
            Row::R17 => "Journal `Abort`; the snapshot stays Active with its tree; its marker may name the aborted txid (within the snapshot's life, fsck accepts it)",
            Row::R18 => "Install: rename to `snapshots/<id>`, fsync both dirs",
            Row::R19 => "Nothing can be repaired: reported; the snapshot stays (fsck reports `TreeMissing`)",
            Row::R20 => "Remove it (via trash)",
            Row::R21 => "Discard it",
            Row::R22 => "Purge",
            Row::R23 => "Remove the temporary; the marker is the old, complete one",
            Row::R24 => "Rebuild the index from the state",
            Row::R25 => "Rebuild",
            Row::R26 => "Create and rebuild",
            Row::R27 => "Rebuild",
            Row::R28 => "Discard the index directory, create and rebuild (the root's `LOCK` is held, so nothing else uses it)",
            Row::R29 => "Reported, left alone (recovery must not guess what they are); fsck reports `Unexpected`",
            Row::R30 => "Removed by the WAL's open",
            Row::R31 => "The installed tree wins; the staging area is a stray (R21)",
            Row::R32 => "Nothing: the tree is the snapshot's; fsck reports `MarkerMismatch { marker: None }`",
            Row::R33 => "Journal `Abort`, then discard `staging/<txid>` as a stray (R21); no layer is recorded",
            Row::R34 => "Journal `RemoveContainer`: the container is removed whole, with its init snapshot if it exists",
            Row::R35 => "Journal `CollectLayers`: the layers are released; their trees become orphans (R20) and are removed",
            Row::R36 => "Refuse, nothing changed",
            Row::R37 => "Target a mount point now: journal `Complete` (the mount is counted, once); else journal `Abort` (nothing is counted)",
            Row::R38 => "Target still a mount point: journal `Abort` (the mount and its reference stay); else journal `Complete` (the reference is gone)",
            Row::R39 => "Journal `MountGone`: its references are dropped, so the snapshot can be removed again",
            Row::R40 => "Remove it (via trash), as R20; a pending `BeginCreate` is aborted first (R16). Nothing was acknowledged: the client is answered after the journal sync",
            Row::R41 => "Journal `Abort`, then discard `staging/<txid>` as a stray (R21); no layer is recorded. A durable child completion always has its parent's before it in the log (the state refuses it otherwise), so no child survives without its parent",
        }
    }

    /// Where it shows: the report field, the error, or the disk.
    pub fn shows(self) -> &'static str {
        match self {
            Row::R1 => "`Ok`, empty report",
            Row::R2 => "`replayed_records`, `checkpoint_lsn`; `index_rebuilt = false`",
            Row::R3 => "`Ok` *(added: before, such a root could never be opened: \"segment belongs to store X, not Y\")*",
            Row::R4 => "disk",
            Row::R5 => "`EngineError::Locked { pid }` (the holder's pid)",
            Row::R6 => "`EngineError::DriverMismatch`",
            Row::R7 => "`EngineError::NotARoot`",
            Row::R8 => "`skipped_records`",
            Row::R9 => "`EngineError::LogGap`",
            Row::R10 => "`EngineError::BadCheckpoint`",
            Row::R11 => "`EngineError::BadRecord { lsn }`",
            Row::R12 => "`EngineError::Sequence { lsn }`",
            Row::R13 => "`EngineError::Replay { lsn, txid }`",
            Row::R14 => "`torn_tail = Some(segment, offset, first lost LSN)`",
            Row::R15 => "`dropped`, `staging_removed`",
            Row::R16 => "`dropped`",
            Row::R17 => "`dropped`",
            Row::R18 => "`installed`",
            Row::R19 => "`lost` (and an error log line)",
            Row::R20 => "`orphans_removed`",
            Row::R21 => "`staging_removed`",
            Row::R22 => "`trash_purged`",
            Row::R23 => "`marker_tmp_removed` *(added: before, it was left behind forever)*",
            Row::R24 => "`index_rebuilt`",
            Row::R25 => "`index_rebuilt`",
            Row::R26 => "`index_rebuilt`",
            Row::R27 => "`index_rebuilt`",
            Row::R28 => "`index_rebuilt` *(added: before, the root refused to open)*",
            Row::R29 => "`unexpected`",
            Row::R30 => "disk",
            Row::R31 => "`staging_removed`",
            Row::R32 => "fsck",
            Row::R33 => "`dropped`, `staging_removed`",
            Row::R34 => "`containers_removed`",
            Row::R35 => "`layers_collected`",
            Row::R36 => "`EngineError::Wal`",
            Row::R37 => "`mount_steps_completed` or `mount_steps_aborted`",
            Row::R38 => "`mount_steps_completed` or `mount_steps_aborted`",
            Row::R39 => "`mounts_gone`",
            Row::R40 => "`orphans_removed` (R20 fires too)",
            Row::R41 => "`dropped`, `staging_removed`",
        }
    }

    /// The row's id as the table writes it ("R15").
    pub fn id(self) -> String {
        format!("{self:?}")
    }

    /// The table of docs/recovery.md, generated.
    pub fn markdown_table() -> String {
        let mut table = String::from(
            "| Row | On disk | Recovery does | Report / result |\n| --- | --- | --- | --- |\n",
        );
        for row in Row::ALL {
            table.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                row.id(),
                row.on_disk(),
                row.action(),
                row.shows()
            ));
        }
        table
    }
}
