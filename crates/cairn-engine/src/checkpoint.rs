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
/// 4: `Image` carries its kept config and manifest (issue 14); 3: `State` carries the counted
/// mounts and `Pending` its mount steps (issue 13), still read (its images keep nothing); 2:
/// `Snapshot` carries its tree digest (issue 8). Older checkpoints are refused.
const VERSION: u16 = 4;
/// The previous version, read as a state whose images have no kept config.
const VERSION_V3: u16 = 3;
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
    encode_state(store_id, checkpoint.lsn, &checkpoint.state)
}

/// [`encode`] of the state as of `lsn`, borrowed: the engine checkpoints its live state
/// without copying it (a copy of 100,000 snapshots, and its drop, cost more than the encoding).
pub fn encode_state(store_id: StoreId, lsn: Lsn, state: &State) -> Vec<u8> {
    let payload = postcard::to_stdvec(state).expect("State always encodes");
    let mut out = vec![0u8; HEADER_BYTES];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&VERSION.to_le_bytes());
    out[16..32].copy_from_slice(&store_id.0.to_le_bytes());
    out[32..40].copy_from_slice(&lsn.0.to_le_bytes());
    out[40..48].copy_from_slice(&state.last_txid.0.to_le_bytes());
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
    if version != VERSION && version != VERSION_V3 {
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
    let state: State = if version == VERSION_V3 {
        postcard::from_bytes::<v3::State>(payload)
            .map_err(CheckpointProblem::Decode)?
            .into()
    } else {
        postcard::from_bytes(payload).map_err(CheckpointProblem::Decode)?
    };
    if state.last_txid != TxId(u64_at(bytes, 40)) {
        return Err(CheckpointProblem::Checksum);
    }
    Ok(Checkpoint {
        lsn: Lsn(u64_at(bytes, 32)),
        state,
    })
}

/// Version 3's payload: today's `State` but for `Image`, which had no `kept` field.
mod v3 {
    use cairn_state::types::TxId;
    use cairn_state::{Container, Layer, MountRef, Pending, Snapshot};
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    pub struct State {
        last_txid: TxId,
        next_id: u64,
        snapshots: BTreeMap<String, Snapshot>,
        pending: BTreeMap<TxId, Pending>,
        layers: BTreeMap<String, Layer>,
        images: BTreeMap<String, Image>,
        containers: BTreeMap<String, Container>,
        mounts: BTreeMap<String, MountRef>,
    }

    #[derive(Debug, Deserialize)]
    struct Image {
        top: String,
        manifest_digest: String,
        config_digest: String,
        created_ns: i64,
    }

    impl From<State> for cairn_state::State {
        fn from(s: State) -> cairn_state::State {
            cairn_state::State {
                last_txid: s.last_txid,
                next_id: s.next_id,
                snapshots: s.snapshots.into(),
                pending: s.pending,
                layers: s.layers,
                images: s
                    .images
                    .into_iter()
                    .map(|(name, i)| {
                        let image = cairn_state::Image {
                            top: i.top,
                            manifest_digest: i.manifest_digest,
                            config_digest: i.config_digest,
                            created_ns: i.created_ns,
                            kept: None,
                        };
                        (name, image)
                    })
                    .collect(),
                containers: s.containers,
                mounts: s.mounts,
            }
        }
    }
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
    store_state(storage, root, store_id, checkpoint.lsn, &checkpoint.state)
}

/// [`store`] of the state as of `lsn`, borrowed (see [`encode_state`]).
pub fn store_state(
    storage: &dyn Storage,
    root: &Path,
    store_id: StoreId,
    lsn: Lsn,
    state: &State,
) -> Result<(), EngineError> {
    super::atomic::write_file(
        storage,
        root,
        CHECKPOINT_FILE,
        &encode_state(store_id, lsn, state),
    )
}
