//! `<root>/checkpoint`: the whole state as of an LSN, so the log before it can be dropped.
//!
//! Layout (little-endian; docs/engine-format.md): magic `CAIRNCKP` (8), u16 version (2),
//! 6 reserved bytes, u128 store id, u64 LSN covered, u64 txid, u64 payload length, u32 CRC-32 of
//! bytes 0..56 followed by the payload, 4 reserved bytes (zero, checked), then the payload: postcard of
//! [`State`].

use super::error::{CheckpointProblem, EngineError};
use cairn_state::types::TxId;
use cairn_state::State;
use cairn_wal::storage::Storage;
use cairn_wal::{Lsn, StoreId};
use std::path::Path;

/// The checkpoint's file name in the root.
pub const CHECKPOINT_FILE: &str = "checkpoint";
const MAGIC: [u8; 8] = *b"CAIRNCKP";
/// 3: `State` carries the counted mounts and `Pending` its mount steps (issue 13); 2:
/// `Snapshot` carries its tree digest (issue 8). Older checkpoints are refused.
const VERSION: u16 = 3;
const HEADER_BYTES: usize = 64;
/// A checkpoint is read whole; bound it.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
/// A checkpoint: the whole state as of an LSN (docs/engine-format.md).
pub struct Checkpoint {
    /// Every record up to and including this LSN is in `state`.
    pub lsn: Lsn,
    /// The state after every record up to `lsn`.
    pub state: State,
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..56]);
    h.update(payload);
    h.finalize()
}

/// The checkpoint file's bytes: header, then the postcard state, checksummed with the store id.
pub fn encode(store_id: StoreId, checkpoint: &Checkpoint) -> Vec<u8> {
    let payload = postcard::to_stdvec(&checkpoint.state).expect("State always encodes");
    let mut out = vec![0u8; HEADER_BYTES];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&VERSION.to_le_bytes());
    out[16..32].copy_from_slice(&store_id.0.to_le_bytes());
    out[32..40].copy_from_slice(&checkpoint.lsn.0.to_le_bytes());
    out[40..48].copy_from_slice(&checkpoint.state.last_txid.0.to_le_bytes());
    out[48..56].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let sum = crc(&out, &payload);
    out[56..60].copy_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decode and check a checkpoint file of store `store_id`.
pub fn decode(store_id: StoreId, bytes: &[u8]) -> Result<Checkpoint, CheckpointProblem> {
    if bytes.len() < HEADER_BYTES {
        return Err(CheckpointProblem::Truncated { len: bytes.len() });
    }
    if bytes[0..8] != MAGIC {
        return Err(CheckpointProblem::Magic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(CheckpointProblem::Version(version));
    }
    let len = u64_at(bytes, 48);
    if len != (bytes.len() - HEADER_BYTES) as u64 {
        return Err(CheckpointProblem::Truncated { len: bytes.len() });
    }
    // Not under the CRC: written as zeros, so anything else is damage.
    if bytes[60..64] != [0u8; 4] {
        return Err(CheckpointProblem::Reserved);
    }
    let payload = &bytes[HEADER_BYTES..];
    let stored = u32::from_le_bytes([bytes[56], bytes[57], bytes[58], bytes[59]]);
    if stored != crc(bytes, payload) {
        return Err(CheckpointProblem::Checksum);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[16..32]);
    let found = u128::from_le_bytes(id);
    if found != store_id.0 {
        return Err(CheckpointProblem::Store {
            expected: store_id.0,
            found,
        });
    }
    let state: State = postcard::from_bytes(payload).map_err(CheckpointProblem::Decode)?;
    if state.last_txid != TxId(u64_at(bytes, 40)) {
        return Err(CheckpointProblem::Checksum);
    }
    Ok(Checkpoint {
        lsn: Lsn(u64_at(bytes, 32)),
        state,
    })
}

/// Load the checkpoint, or `None` if the root has none yet.
pub fn load(
    storage: &dyn Storage,
    root: &Path,
    store_id: StoreId,
) -> Result<Option<Checkpoint>, EngineError> {
    let path = root.join(CHECKPOINT_FILE);
    let file = match storage.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io("open", &path)(e)),
    };
    let len = file.size_bytes().map_err(EngineError::io("stat", &path))?;
    if len > MAX_CHECKPOINT_BYTES {
        return Err(EngineError::BadCheckpoint {
            path,
            reason: CheckpointProblem::Truncated { len: usize::MAX },
        });
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(EngineError::io("read", &path))?;
    decode(store_id, &bytes)
        .map(Some)
        .map_err(|reason| EngineError::BadCheckpoint { path, reason })
}

/// Replace the checkpoint atomically.
pub fn store(
    storage: &dyn Storage,
    root: &Path,
    store_id: StoreId,
    checkpoint: &Checkpoint,
) -> Result<(), EngineError> {
    super::atomic::write_file(
        storage,
        root,
        CHECKPOINT_FILE,
        &encode(store_id, checkpoint),
    )
}
