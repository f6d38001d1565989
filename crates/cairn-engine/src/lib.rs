//! The engine: one thread that owns the journal, the state, the index and the driver, driven
//! by commands over a channel. See docs/engine.md.
//!
//! ```text
//! EngineHandle::prepare ──channel──► engine thread: apply (pure) → journal (one sync per batch)
//!                                        → effects (renames here, copies on workers) → reply
//! ```

mod api;
mod atomic;
pub mod checkpoint;
mod core;
pub mod dump;
mod error;
mod filter;
pub mod fsck;
mod handle;
mod index;
pub mod journal;
mod layers;
mod lock;
pub mod recovery;
mod rootmeta;
mod workers;

pub use api::{
    CleanupReport, ContainerInfo, ImageInfo, ImportOptions, Imported, Info, LayerInfo, Verified,
};
pub use dump::{read_journal, JournalDump, JournalEntry, JournalTail};
pub use error::{CheckpointProblem, EngineError, RecordProblem, RootProblem, SequenceProblem};
pub use fsck::{Finding, FsckReport, Problem};
pub use handle::EngineHandle;
pub use recovery::RecoveryReport;
pub use rootmeta::RootMeta;

use cairn_state::types::DriverKind;
use cairn_wal::storage::{FsStorage, Storage};
use cairn_wal::{StoreId, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug)]
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
    pub wal: WalOptions,
}

/// The engine's default WAL segment size.
pub const ENGINE_SEGMENT_BYTES: u64 = 16 << 20;

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            driver: None,
            checkpoint_every_records: 10_000,
            max_batch: 256,
            workers: 8,
            queue_capacity: 1024,
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

    pub fn open_with_storage(
        root: &Path,
        options: EngineOptions,
        storage: Arc<dyn Storage>,
    ) -> Result<(EngineHandle, RecoveryReport), EngineError> {
        std::fs::create_dir_all(root).map_err(EngineError::io("create root", root))?;
        let root: PathBuf = root
            .canonicalize()
            .map_err(EngineError::io("resolve root", root))?;
        let lock = lock::RootLock::acquire(&root)?;
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
                    Some(id) => id,
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
        let driver: Arc<dyn cairn_driver::Driver> =
            Arc::from(cairn_driver::open_driver(meta.driver, &root)?);
        let index = index::Index::open(&root.join("index"))?;
        // Leftovers of an atomic replace interrupted before its rename.
        for name in ["checkpoint.tmp", "cairn.meta.tmp"] {
            let _ = std::fs::remove_file(root.join(name));
        }
        let recovered = recovery::recover(
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
