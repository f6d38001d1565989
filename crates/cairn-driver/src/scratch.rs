//! A scratch xfs with reflinks on a loop device, made by tests and benchmarks of the block
//! driver (root only): `mkfs.xfs -m reflink=1` into a sparse file, loop-mounted, and
//! unmounted and deleted again on drop.

use super::error::DriverError;
use super::mount::{mount_all, unmount};
use cairn_state::types::Mount;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a scratch file system cannot be made here (the caller prints `skipped: <reason>`).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to attach loop devices and mount".to_string());
    }
    for tool in ["mkfs.xfs", "mkfs.ext4"] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".to_string());
    }
    None
}

#[derive(Debug)]
pub struct ReflinkFs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl ReflinkFs {
    /// Makes and mounts a `size_bytes` (sparse) xfs with reflink under a temporary directory
    /// whose name starts with `prefix`.
    pub fn make(prefix: &str, size_bytes: u64) -> Result<ReflinkFs, DriverError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .map_err(|e| DriverError::io("tempdir", "/var/tmp", e))?;
        let image = dir.path().join("xfs.img");
        let file =
            std::fs::File::create(&image).map_err(|e| DriverError::io("create", &image, e))?;
        file.set_len(size_bytes)
            .map_err(|e| DriverError::io("truncate", &image, e))?;
        let out = Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", "reflink=1"])
            .arg(&image)
            .output()
            .map_err(|e| DriverError::io("run mkfs.xfs", &image, e))?;
        if !out.status.success() {
            return Err(DriverError::Mkfs {
                image,
                program: "mkfs.xfs",
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| DriverError::io("mkdir", &mnt, e))?;
        let xfs = Mount {
            kind: "xfs".to_string(),
            source: image,
            options: vec!["loop".to_string(), "rw".to_string()],
        };
        mount_all(&[xfs], &mnt)?;
        Ok(ReflinkFs { dir, mnt })
    }

    /// The mounted file system's root.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for ReflinkFs {
    fn drop(&mut self) {
        // Views or user mounts a failed test left inside are unmounted first (lazily), so
        // the xfs itself can go; its loop device auto-clears.
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut inner: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(&self.mnt) && Path::new(m) != self.mnt)
                .collect();
            inner.reverse();
            for m in inner {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Err(e) = unmount(&self.mnt) {
            eprintln!("scratch xfs {}: {e}", self.mnt.display());
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = self.dir.path();
    }
}
