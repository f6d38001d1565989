//! A one-time check that overlayfs works on a root's filesystem, so a misconfigured host fails
//! at open with a clear error instead of at the first container start.

use super::remove::remove_tree;
use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const PROBE_PREFIX: &str = "overlay-probe.";

/// Mounts a one-file overlay in `<root>/overlay-probe.<pid>.<n>` and reads the file through it.
pub(crate) fn probe_overlay(root: &Path) -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "mounting overlayfs needs root (CAP_SYS_ADMIN)",
        ));
    }
    clear_stale_probes(root);
    // pid + a per-process sequence: two drivers opened at once on one root must not share it.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{PROBE_PREFIX}{}.{seq}", std::process::id()));
    let _ = remove_tree(&dir);
    let result = probe_in(&dir);
    let cleanup = remove_tree(&dir);
    result?;
    cleanup.map_err(|e| io::Error::other(e.to_string()))
}

/// Removes every probe directory in the root, first detaching a probe mount that may still be
/// there. The driver's caller owns the root (the engine holds its `LOCK` from before the driver
/// opens until after it closes), so no other probe can be running: one found here was left by
/// a crash or a power cut mid-probe. Its pid says nothing: after a reboot pids are reused, and
/// a crash image is often checked by the very process that wrote it. Best effort: a leftover
/// only costs space, so failures are logged, not returned.
fn clear_stale_probes(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(PROBE_PREFIX)) {
            continue;
        }
        let dir = entry.path();
        // EINVAL (not mounted) is the normal case.
        let _ = umount2(&dir.join("merged"), MntFlags::MNT_DETACH);
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove stale overlay probe");
        }
    }
}

fn probe_in(dir: &Path) -> io::Result<()> {
    let (lower, upper, work, merged) = (
        dir.join("lower"),
        dir.join("upper"),
        dir.join("work"),
        dir.join("merged"),
    );
    for d in [dir, &lower, &upper, &work, &merged] {
        fs::create_dir(d)?;
    }
    fs::write(lower.join("probe"), b"cairn")?;
    require_d_type(&lower)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )?;
    let read = fs::read(merged.join("probe"));
    umount2(&merged, MntFlags::MNT_DETACH)?;
    if read? != b"cairn" {
        return Err(io::Error::other(
            "overlay probe read back the wrong content",
        ));
    }
    Ok(())
}

/// overlayfs needs d_type in readdir to find whiteouts; xfs with ftype=0 lacks it.
fn require_d_type(dir: &Path) -> io::Result<()> {
    let mut d = Dir::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
    for entry in d.iter() {
        let entry = entry?;
        if entry.file_name().to_bytes() == b"probe" {
            return match entry.file_type() {
                Some(_) => Ok(()),
                None => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "filesystem does not report d_type, which overlayfs requires",
                )),
            };
        }
    }
    Err(io::Error::other("probe file missing from its directory"))
}
