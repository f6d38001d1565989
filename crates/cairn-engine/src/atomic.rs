//! Replacing a small file atomically: write a temporary, sync it, rename it over, sync the
//! directory.

use super::error::EngineError;
use cairn_wal::storage::Storage;
use std::path::Path;

pub fn write_file(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), EngineError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = storage
        .create(&tmp)
        .map_err(EngineError::io("create", &tmp))?;
    file.write_all_at(bytes, 0)
        .map_err(EngineError::io("write", &tmp))?;
    // Invariant: the new contents are durable before the name points at them, so the file is
    // always either wholly old or wholly new.
    file.sync_data()
        .map_err(EngineError::io("fdatasync", &tmp))?;
    drop(file);
    fail::fail_point!("engine::atomic::before_rename");
    storage
        .rename(&tmp, &path)
        .map_err(EngineError::io("rename", &path))?;
    fail::fail_point!("engine::atomic::after_rename");
    // Invariant: the rename itself is durable before anyone relies on the new contents (the WAL
    // is truncated behind a checkpoint only after this).
    storage
        .sync_dir(dir)
        .map_err(EngineError::io("fsync directory", dir))
}
