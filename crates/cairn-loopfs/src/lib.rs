//! Test support: a real btrfs on a loop device, made by the test process that first asks for
//! it and unmounted when that process exits.
//!
//! Tests call [`btrfs`] and get a directory on a freshly made btrfs, or the reason they cannot
//! have one (not root, no `mkfs.btrfs`, no loop devices), which they print as
//! `skipped: <reason>`. One file system per test process: every test of a binary makes its own
//! temporary directory on it. Child processes a test spawns (crash tests) are handed paths on
//! it and never mount anything themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Apparent size of the sparse image: big enough for the benchmarks' 200 MB layers and their
/// vfs copies; only what is written takes space on the host.
const IMAGE_BYTES: u64 = 4 << 30;

struct Mounted {
    dir: PathBuf,
    mnt: PathBuf,
}

static BTRFS: OnceLock<Result<Mounted, String>> = OnceLock::new();

/// A directory on a loop-mounted btrfs shared by this process, or why there is none.
pub fn btrfs() -> Result<&'static Path, String> {
    match BTRFS.get_or_init(make_btrfs) {
        Ok(m) => Ok(&m.mnt),
        Err(reason) => Err(reason.clone()),
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn make_btrfs() -> Result<Mounted, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("a loop-mounted btrfs needs root".to_string());
    }
    if !Path::new("/sys/fs/btrfs").exists()
        && !std::fs::read_to_string("/proc/filesystems")
            .map(|s| s.contains("btrfs"))
            .unwrap_or(false)
    {
        // The module may still load on mount; try anyway below.
    }
    let dir = std::env::temp_dir().join(format!("cairn-btrfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let image = dir.join("image");
    let mnt = dir.join("mnt");
    let made = (|| {
        std::fs::create_dir_all(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        let file = std::fs::File::create(&image)
            .map_err(|e| format!("create {}: {e}", image.display()))?;
        file.set_len(IMAGE_BYTES)
            .map_err(|e| format!("truncate {}: {e}", image.display()))?;
        drop(file);
        run(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&image))
            .map_err(|e| format!("mkfs.btrfs (install btrfs-progs): {e}"))?;
        // `-o loop` attaches a free loop device with autoclear: the unmount detaches it.
        run(Command::new("mount")
            .args(["-t", "btrfs", "-o", "loop"])
            .arg(&image)
            .arg(&mnt))?;
        // The image's blocks are only needed while mounted; unlinking it now means a test
        // process that dies without its exit handler still frees the space once unmounted.
        let _ = std::fs::remove_file(&image);
        Ok(())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    // SAFETY: `cleanup` is an `extern "C" fn()` that only reads the OnceLock.
    unsafe { libc::atexit(cleanup) };
    Ok(Mounted { dir, mnt })
}

extern "C" fn cleanup() {
    if let Some(Ok(m)) = BTRFS.get() {
        if let Ok(c) = std::ffi::CString::new(m.mnt.as_os_str().as_encoded_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path for the call. Lazy: a mount a test left
            // on a tree inside (a failed test) does not keep the file system alive.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&m.dir);
    }
}

/// A temporary directory on the shared loop btrfs, or why there is none.
pub fn btrfs_tempdir(prefix: &str) -> Result<TempDir, String> {
    // Names are never reused within a process (as tempfile's random ones): an engine thread
    // still closing after its handle dropped must not write into the next test's directory.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = btrfs()?;
    for _ in 0..1000u32 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("{prefix}{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(TempDir { path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("mkdir {}: {e}", path.display())),
        }
    }
    Err(format!("no free temporary name under {}", base.display()))
}

/// A directory on the loop btrfs, deleted (its subvolumes included) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove_all(&self.path);
    }
}

/// True when `path` is the root of a btrfs subvolume (inode 256 on btrfs).
pub fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_dir() || meta.ino() != 256 {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `st` is written by statfs; `c` is a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    rc == 0 && magic == 0x9123_683e
}

/// Test tooling (not the driver): snapshots subvolume `from` as `to` with the `btrfs` command,
/// read-only if `from` is, so a copied root keeps its trees as subvolumes.
pub fn snapshot_subvolume(from: &Path, to: &Path) -> Result<(), String> {
    let ro = Command::new("btrfs")
        .args(["property", "get", "-ts"])
        .arg(from)
        .arg("ro")
        .output()
        .map_err(|e| format!("btrfs property get: {e}"))?;
    let read_only = String::from_utf8_lossy(&ro.stdout).contains("ro=true");
    let mut cmd = Command::new("btrfs");
    cmd.args(["-q", "subvolume", "snapshot"]);
    if read_only {
        cmd.arg("-r");
    }
    run(cmd.arg(from).arg(to))
}

/// Deletes `path` and everything under it, subvolumes included, best effort.
pub fn remove_all(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_all(&e.path());
            }
        }
    }
    if is_subvolume(path) {
        let _ = run(Command::new("btrfs")
            .args(["-q", "property", "set", "-ts"])
            .arg(path)
            .args(["ro", "false"]));
        let _ = run(Command::new("btrfs")
            .args(["-q", "subvolume", "delete"])
            .arg(path));
    }
    let _ = std::fs::remove_dir_all(path);
}

/// A test's scratch directory: on the loop btrfs when the test's driver needs btrfs, else an
/// ordinary temporary directory.
#[derive(Debug)]
pub enum Scratch {
    Plain(tempfile::TempDir),
    Btrfs(TempDir),
}

impl Scratch {
    /// Err: why a btrfs scratch directory cannot be had (the caller prints it as a skip).
    pub fn new(on_btrfs: bool, prefix: &str) -> Result<Scratch, String> {
        if on_btrfs {
            return btrfs_tempdir(prefix).map(Scratch::Btrfs);
        }
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map(Scratch::Plain)
            .map_err(|e| format!("tempdir: {e}"))
    }

    pub fn path(&self) -> &Path {
        match self {
            Scratch::Plain(t) => t.path(),
            Scratch::Btrfs(t) => t.path(),
        }
    }
}
