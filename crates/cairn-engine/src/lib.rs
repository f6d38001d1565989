//! cairn's engine: a crash-safe, transactional store for container snapshots and image layers,
//! in containerd's model (prepare, view, commit, remove, labels, usage, walk, mounts) with a
//! layer store on top (import, export, images, containers).
//!
//! One thread owns the journal, the state, the index and the driver; every command is sent to
//! it over a channel by an [`EngineHandle`], checked by a pure state machine, journaled to a
//! write-ahead log (one sync per batch of commands), applied to the driver, and only then
//! answered. An answered command survives any crash; an unanswered one is wholly there or
//! wholly gone; a refused one ([`EngineError::State`]) changed nothing. See docs/engine.md.
//!
//! ```text
//! EngineHandle::prepare ──channel──► engine thread: apply (pure) → journal (one sync per batch)
//!                                        → effects (renames here, copies on workers) → reply
//! ```
//!
//! # Example
//!
//! Open a root (created on first use, recovered on every later open), prepare an Active
//! snapshot, write into it, commit it, and close:
//!
//! ```
//! use cairn_engine::{Engine, EngineOptions, Labels};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let root = dir.path().join("root");
//! let (engine, _recovery) = Engine::open(&root, EngineOptions::default())?;
//!
//! // An Active snapshot on no parent; on the default (vfs) driver its one mount is a bind
//! // of a directory the caller writes into.
//! let mounts = engine.prepare("build", None, Labels::new())?;
//! std::fs::write(mounts[0].source.join("hello"), "hi\n")?;
//!
//! // Commit it as a read-only layer others can build on.
//! engine.commit("base", "build", Labels::new())?;
//! assert_eq!(engine.stat("base")?.kind, cairn_engine::Kind::Committed);
//!
//! // Refusals are typed and change nothing.
//! let again = engine.commit("base", "build", Labels::new());
//! assert!(matches!(again, Err(cairn_engine::EngineError::State(_))));
//!
//! engine.close()?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/embed.rs` does more (a view, labels, a walk, usage, reopening the root).

#![warn(missing_docs)]

mod api;
mod atomic;
pub mod checkpoint;
mod core;
mod detached;
pub mod dump;
mod error;
mod filter;
pub mod fsck;
mod handle;
mod index;
pub mod journal;
mod layers;
mod lock;
pub mod mountref;
pub mod recovery;
mod rootmeta;
pub mod rows;
mod submit;
mod verify;
mod workers;

pub use api::{
    Change, CleanupReport, ContainerInfo, DiffUsage, ImageInfo, ImportOptions, Imported, Info,
    LayerInfo, MountRefInfo, Verified,
};
pub use detached::{DetachedRefusal, StageOptions, StagedLayer, MAX_DETACHED_IMPORTS};
pub use dump::{read_journal, JournalDump, JournalEntry, JournalTail};
pub use error::{CheckpointProblem, EngineError, RecordProblem, RootProblem, SequenceProblem};
pub use fsck::{Finding, FsckReport, Problem};
pub use handle::EngineHandle;
pub use lock::LockNotice;
pub use recovery::RecoveryReport;
pub use rootmeta::RootMeta;
pub use rows::Row;
pub use submit::{Command, QueueFull};

// What an embedder needs from the crates below, so it depends on this crate alone.
pub use cairn_state::types::{DriverKind, Kind, Mount, SnapshotId, TxId, Usage};
pub use cairn_state::{Invalid, Labels, Precondition, StateError};
pub use cairn_wal::{WalError, WalOptions};

use cairn_wal::storage::{FsStorage, Storage};
use cairn_wal::StoreId;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug)]
/// How to open a root. `EngineOptions::default()` suits most embedders.
pub struct EngineOptions {
    /// The driver for a new root; for an existing root, if set, it must be the recorded one.
    pub driver: Option<DriverKind>,
    /// Checkpoint the state and truncate the log after this many records.
    pub checkpoint_every_records: u64,
    /// Commands and completions taken into one journal batch (one sync), at most.
    pub max_batch: usize,
    /// Threads for heavy work.
    pub workers: usize,
    /// Commands waiting for the engine thread, at most; senders block beyond it.
    pub queue_capacity: usize,
    /// How long `open` waits for another process to release the root's lock (a process killed
    /// a moment ago holds it until it has fully exited), then fails with `Locked`.
    pub lock_timeout_ms: u64,
    /// How a waiting `open` says who holds the lock.
    pub lock_notice: LockNotice,
    /// Options of the root's write-ahead log (segment size, record limit).
    pub wal: WalOptions,
    /// The block driver's options (image file system and size) for a new root; `None`: the
    /// default (ext4, 10 GiB, or `CAIRN_BLOCK_SIZE_BYTES`). For an existing block root, if
    /// set, they must be the ones its base image records.
    pub block: Option<cairn_driver::BlockOptions>,
    /// How a batch's inline creations and small seals are made durable: per-file fsyncs or
    /// one syncfs, by default the cheaper as measured on the root's file system
    /// (docs/drivers.md, "Batched syncs").
    pub durable_step: cairn_driver::DurableStep,
}

/// The engine's default WAL segment size.
pub const ENGINE_SEGMENT_BYTES: u64 = 16 << 20;

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            driver: None,
            block: None,
            durable_step: cairn_driver::DurableStep::Auto,
            checkpoint_every_records: 10_000,
            max_batch: 256,
            workers: 8,
            queue_capacity: 1024,
            lock_timeout_ms: 30_000,
            lock_notice: LockNotice::Log,
            // Recovery reads the active segment whole, twice (scan, then replay), preallocated
            // zeros included: 64 MiB segments cost 128 MiB of fresh memory per open (most of
            // `recovery_ms_10k_records`). 16 MiB segments keep the record limit at 16 MiB less
            // the framing.
            wal: WalOptions {
                segment_size_bytes: ENGINE_SEGMENT_BYTES,
                max_record_bytes: (ENGINE_SEGMENT_BYTES as usize
                    - cairn_wal::format::HEADER_BYTES
                    - cairn_wal::format::RECORD_HEADER_BYTES)
                    as u32,
                ..WalOptions::default()
            },
        }
    }
}

/// The store id of a log left in `root/wal` by an interrupted creation, if there is one.
fn leftover_log_store(
    storage: &Arc<dyn Storage>,
    root: &Path,
    wal: &WalOptions,
) -> Result<Option<StoreId>, EngineError> {
    let dir = root.join("wal");
    let has_segment = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".wal")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(EngineError::io("read", &dir)(e)),
    };
    if !has_segment {
        return Ok(None);
    }
    let options = WalOptions {
        create_if_missing: false,
        store_id: None,
        ..wal.clone()
    };
    let (log, _, _) = cairn_wal::Wal::open(Arc::clone(storage), &dir, options)?;
    Ok(Some(log.store_id()))
}

/// Opens roots.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Open (recovering) or create the root and start its engine thread.
    pub fn open(
        root: &Path,
        options: EngineOptions,
    ) -> Result<(EngineHandle, RecoveryReport), EngineError> {
        Engine::open_with_storage(root, options, Arc::new(FsStorage))
    }

    /// [`Engine::open`] on a given storage (the simulated, power-cutting one in crash tests).
    pub fn open_with_storage(
        root: &Path,
        options: EngineOptions,
        storage: Arc<dyn Storage>,
    ) -> Result<(EngineHandle, RecoveryReport), EngineError> {
        // Invariant: a new root's own directory entry is durable in its parent before anything
        // in it is acknowledged.
        cairn_driver::create_dir_all_durable(root)?;
        let root: PathBuf = root
            .canonicalize()
            .map_err(EngineError::io("resolve root", root))?;
        let lock = lock::RootLock::acquire(
            &root,
            std::time::Duration::from_millis(options.lock_timeout_ms),
            options.lock_notice,
        )?;
        let mut adopted = false;
        let (meta, creating) = match rootmeta::RootMeta::load(storage.as_ref(), &root)? {
            Some(meta) => {
                if let Some(requested) = options.driver {
                    if requested != meta.driver {
                        return Err(EngineError::DriverMismatch {
                            root,
                            recorded: meta.driver.name(),
                            requested: requested.name(),
                        });
                    }
                }
                (meta, false)
            }
            None => {
                // A creation interrupted after the log was created and before the meta file
                // was written leaves a log but no meta (and nothing acknowledged: the engine
                // starts only after the meta file is durable). Adopt that log's store id, or
                // the root could never be opened again (docs/recovery.md, row R3).
                let store_id = match leftover_log_store(&storage, &root, &options.wal)? {
                    Some(id) => {
                        adopted = true;
                        id
                    }
                    None => StoreId::random().map_err(|e| EngineError::Io {
                        op: "draw a store id",
                        path: root.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })?,
                };
                let meta = rootmeta::RootMeta {
                    driver: options.driver.unwrap_or(DriverKind::Vfs),
                    store_id,
                };
                (meta, true)
            }
        };
        let driver: Arc<dyn cairn_driver::Driver> = Arc::from(cairn_driver::open_driver_with(
            meta.driver,
            &root,
            options.block,
        )?);
        driver.set_durable_step(options.durable_step);
        let index = index::Index::open(&root.join("index"))?;
        // Leftovers of an atomic replace interrupted before its rename.
        let mut temporaries = false;
        for name in ["checkpoint.tmp", "cairn.meta.tmp"] {
            temporaries |= std::fs::remove_file(root.join(name)).is_ok();
        }
        let mut recovered = recovery::recover(
            &root,
            Arc::clone(&storage),
            meta.store_id,
            creating,
            driver.as_ref(),
            &index,
            options.wal.clone(),
        )?;
        if creating {
            // Invariant: the meta file names the store only once its log exists, so a root with
            // a meta file always has a log to recover from.
            meta.store(storage.as_ref(), &root)?;
        }
        if adopted {
            recovered.report.rows.insert(Row::R3);
        }
        if temporaries {
            recovered.report.rows.insert(Row::R4);
        }
        let report = recovered.report.clone();
        let core = core::Core::new(
            root,
            storage,
            meta.store_id,
            recovered.wal,
            recovered.state,
            driver,
            index,
            options.clone(),
            recovered.checkpoint_lsn,
            lock,
        );
        Ok((
            handle::EngineHandle::start(core, options.queue_capacity),
            report,
        ))
    }
}
