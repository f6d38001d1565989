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
        let file =
            std::fs::File::create(&image).map_err(|e| format!("create {}: {e}", image.display()))?;
        file.set_len(IMAGE_BYTES)
            .map_err(|e| format!("truncate {}: {e}", image.display()))?;
        drop(file);
        run(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&image))
            .map_err(|e| format!("mkfs.btrfs (install btrfs-progs): {e}"))?;
        // `-o loop` attaches a free loop device with autoclear: the unmount detaches it.
        run(Command::new("mount").args(["-t", "btrfs", "-o", "loop"]).arg(&image).arg(&mnt))?;
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
