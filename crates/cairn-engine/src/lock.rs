//! One process per root: an exclusive `flock` on `<root>/LOCK`, which holds the owner's pid.
//!
//! A process killed with SIGKILL keeps its lock until its last thread has left the kernel: a
//! command started right after the kill can find the root still locked by a zombie. So
//! `acquire` waits for the lock up to a timeout (saying once who holds it), and fails with the
//! same `Locked` error as before when the timeout passes.

use super::error::EngineError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a waiting `acquire` tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(20);

/// Held while the engine runs; the kernel releases the lock when the process dies, so a crash
/// never leaves a root locked.
#[derive(Debug)]
pub struct RootLock {
    _file: Flock<File>,
}

/// What a waiting `acquire` does to say who holds the lock (once, when the wait starts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockNotice {
    /// Log it (tracing, level info) only: for embedders.
    #[default]
    Log,
    /// Also one line on stderr: for the command line.
    Stderr,
}

fn holder(file: &mut File) -> String {
    let mut pid = String::new();
    // Best effort: the holder may be writing it right now.
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut pid);
    let pid = pid.trim().to_owned();
    if pid.is_empty() {
        "unknown".into()
    } else {
        pid
    }
}

impl RootLock {
    /// Take the root's lock, waiting up to `timeout` for a holder to let go.
    pub fn acquire(
        root: &Path,
        timeout: Duration,
        notice: LockNotice,
    ) -> Result<RootLock, EngineError> {
        let path = root.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(EngineError::io("open lock file", &path))?;
        let start = Instant::now();
        let mut told = false;
        let mut file = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => break locked,
                Err((mut unlocked, errno)) => {
                    if errno != nix::errno::Errno::EWOULDBLOCK && errno != nix::errno::Errno::EINTR
                    {
                        return Err(EngineError::io("lock", &path)(errno.into()));
                    }
                    let pid = holder(&mut unlocked);
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Err(EngineError::Locked {
                            root: root.to_path_buf(),
                            pid,
                        });
                    }
                    if !told {
                        told = true;
                        let secs = timeout.as_secs_f64();
                        tracing::info!(root = %root.display(), %pid, secs, "waiting for the root lock");
                        if notice == LockNotice::Stderr {
                            eprintln!(
                                "cairn: root {} is locked by pid {pid}; waiting up to {secs} s for it",
                                root.display()
                            );
                        }
                    }
                    std::thread::sleep(RETRY_EVERY.min(timeout - waited));
                    file = unlocked;
                }
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
