//! The listening socket: one server per address, created 0660, removed on exit.
//!
//! A lock file beside the socket (`ADDRESS.lock`, flock) is held for the server's life: a
//! second cairn server on the address is refused at once, and a server that died (SIGKILL,
//! power cut) leaves a socket nobody holds the lock of, which is replaced. A socket that
//! accepts a connection belongs to some other live server (not ours) and is refused too.

use crate::error::ServerError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The mode of the socket: the owner and its group (containerd runs as root) may connect.
pub const SOCKET_MODE: u32 = 0o660;

#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    address: PathBuf,
    /// The socket file's inode: at exit it is removed only if it is still ours.
    ino: u64,
    _lock: Flock<File>,
}

fn lock_path(address: &Path) -> PathBuf {
    let mut name = address.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Take the address: refuse a live server, replace a stale socket, bind 0660.
pub fn bind(address: &Path) -> Result<BoundSocket, ServerError> {
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(ServerError::io("create socket directory", dir))?;
    }
    let lock_file = lock_path(address);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
        .map_err(ServerError::io("open", &lock_file))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        ServerError::AddressInUse {
            address: address.to_path_buf(),
        }
    })?;
    match std::fs::symlink_metadata(address) {
        Ok(md) if md.file_type().is_socket() => {
            if UnixStream::connect(address).is_ok() {
                return Err(ServerError::AddressInUse {
                    address: address.to_path_buf(),
                });
            }
            tracing::info!(address = %address.display(), "replacing a stale socket");
            std::fs::remove_file(address)
                .map_err(ServerError::io("remove stale socket", address))?;
        }
        Ok(_) => {
            return Err(ServerError::NotASocket {
                address: address.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::io("stat", address)(e)),
    }
    // Bound under a private name, given its mode, then renamed into place: the socket appears
    // at the address already 0660 and already listening (clients wait for it to appear).
    let mut tmp_name = address.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(ServerError::io("bind", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(ServerError::io("chmod", &tmp))?;
    std::fs::rename(&tmp, address).map_err(ServerError::io("rename socket", address))?;
    let ino = std::fs::symlink_metadata(address)
        .map_err(ServerError::io("stat", address))?
        .ino();
    Ok(BoundSocket {
        listener,
        address: address.to_path_buf(),
        ino,
        _lock: lock,
    })
}

impl BoundSocket {
    /// Remove the socket file if it is still the one this server bound.
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.address) {
            Ok(md) if md.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.address) {
                    tracing::warn!(address = %self.address.display(), error = %e, "could not remove the socket");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_server_is_refused_and_a_stale_socket_replaced() -> Result<(), ServerError> {
        let dir = tempfile::tempdir().map_err(ServerError::io("tempdir", "/tmp"))?;
        let address = dir.path().join("s.sock");
        let first = bind(&address)?;
        let mode = std::fs::metadata(&address)
            .map_err(ServerError::io("stat", &address))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        assert!(matches!(
            bind(&address),
            Err(ServerError::AddressInUse { .. })
        ));
        drop(first);
        // The lock is gone, the socket file stays: stale, so it is replaced.
        assert!(address.exists());
        let second = bind(&address)?;
        second.remove();
        assert!(!address.exists());
        Ok(())
    }

    #[test]
    fn a_socket_some_other_server_listens_on_is_refused() -> Result<(), ServerError> {
        let dir = tempfile::tempdir().map_err(ServerError::io("tempdir", "/tmp"))?;
        let address = dir.path().join("other.sock");
        let _other = UnixListener::bind(&address).map_err(ServerError::io("bind", &address))?;
        assert!(matches!(
            bind(&address),
            Err(ServerError::AddressInUse { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() -> Result<(), ServerError> {
        let dir = tempfile::tempdir().map_err(ServerError::io("tempdir", "/tmp"))?;
        let address = dir.path().join("plain");
        std::fs::write(&address, b"keep").map_err(ServerError::io("write", &address))?;
        assert!(matches!(
            bind(&address),
            Err(ServerError::NotASocket { .. })
        ));
        assert_eq!(
            std::fs::read(&address).map_err(ServerError::io("read", &address))?,
            b"keep"
        );
        Ok(())
    }
}
