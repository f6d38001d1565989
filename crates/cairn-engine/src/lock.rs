//! One process per root: an exclusive `flock` on `<root>/LOCK`, which holds the owner's pid.

use super::error::EngineError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Held while the engine runs; the kernel releases the lock when the process dies, so a crash
/// never leaves a root locked.
#[derive(Debug)]
pub struct RootLock {
    _file: Flock<File>,
}

impl RootLock {
    pub fn acquire(root: &Path) -> Result<RootLock, EngineError> {
        let path = root.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(EngineError::io("open lock file", &path))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, _)) => {
                let mut pid = String::new();
                // Best effort: the holder may be writing it right now.
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_owned();
                return Err(EngineError::Locked {
                    root: root.to_path_buf(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid
                    },
                });
            }
        };
        let pid = std::process::id().to_string();
        file.set_len(0)
            .map_err(EngineError::io("truncate lock file", &path))?;
        file.seek(SeekFrom::Start(0))
            .map_err(EngineError::io("seek lock file", &path))?;
        file.write_all(pid.as_bytes())
            .map_err(EngineError::io("write lock file", &path))?;
        Ok(RootLock { _file: file })
    }
}
