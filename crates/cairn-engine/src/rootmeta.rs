//! `<root>/cairn.meta`: what a root is, written once when the root is created.
//!
//! 36 bytes: magic `CAIRNROT`, u16 version (1), u8 driver (0 vfs, 1 overlay), u8 reserved,
//! 4 reserved bytes, u128 store id, u32 CRC-32 of bytes 0..32. Little-endian. See
//! docs/engine-format.md.

use super::error::{EngineError, RootProblem};
use cairn_state::types::DriverKind;
use cairn_wal::storage::Storage;
use cairn_wal::StoreId;
use std::path::Path;

pub const META_FILE: &str = "cairn.meta";
const MAGIC: [u8; 8] = *b"CAIRNROT";
const VERSION: u16 = 1;
pub const META_BYTES: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// The root's meta file (`cairn.meta`): which driver and which store the root belongs to.
pub struct RootMeta {
    /// The driver the root was created with.
    pub driver: DriverKind,
    /// The store id of the root's log.
    pub store_id: StoreId,
}

impl RootMeta {
    /// The meta file's bytes.
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10] = match self.driver {
            DriverKind::Vfs => 0,
            DriverKind::Overlay => 1,
            DriverKind::Block => 2,
        };
        out[16..32].copy_from_slice(&self.store_id.0.to_le_bytes());
        let crc = crc32fast::hash(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decode and check a meta file.
    pub fn decode(bytes: &[u8]) -> Result<RootMeta, RootProblem> {
        if bytes.len() != META_BYTES || bytes[0..8] != MAGIC {
            return Err(RootProblem::BadMeta);
        }
        let crc = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]);
        if crc != crc32fast::hash(&bytes[..32]) {
            return Err(RootProblem::BadMeta);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(RootProblem::Version(version));
        }
        let driver = match bytes[10] {
            0 => DriverKind::Vfs,
            1 => DriverKind::Overlay,
            2 => DriverKind::Block,
            _ => return Err(RootProblem::BadMeta),
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[16..32]);
        Ok(RootMeta {
            driver,
            store_id: StoreId(u128::from_le_bytes(id)),
        })
    }

    /// Read the meta file; `Ok(None)` when the root has none yet.
    pub fn load(storage: &dyn Storage, root: &Path) -> Result<Option<RootMeta>, EngineError> {
        let path = root.join(META_FILE);
        let file = match storage.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::io("open", &path)(e)),
        };
        let len = file.size_bytes().map_err(EngineError::io("stat", &path))?;
        if len != META_BYTES as u64 {
            return Err(EngineError::NotARoot {
                path: root.to_path_buf(),
                reason: RootProblem::BadMeta,
            });
        }
        let mut buf = [0u8; META_BYTES];
        file.read_exact_at(&mut buf, 0)
            .map_err(EngineError::io("read", &path))?;
        RootMeta::decode(&buf)
            .map(Some)
            .map_err(|reason| EngineError::NotARoot {
                path: root.to_path_buf(),
                reason,
            })
    }

    /// Write the meta file of a new root atomically.
    pub fn store(&self, storage: &dyn Storage, root: &Path) -> Result<(), EngineError> {
        super::atomic::write_file(storage, root, META_FILE, &self.encode())
    }
}
