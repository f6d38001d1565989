//! Performing mounts described as data, and undoing them.
//!
//! Overlay option strings are limited to one page by mount(2). A chain of ~100+ snapshots
//! under a long root overflows it, so when it would, the lowerdirs are rewritten relative to
//! their common parent directory and the mount is done by a forked child that chdir()s there
//! first: the working directory is per process, so the parent's other threads never see it
//! change.

use super::error::DriverError;
use cairn_state::types::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// mount(2) copies at most one page of data, including the terminating NUL.
const MOUNT_DATA_LIMIT: usize = 4096 - 1;

/// Splits containerd-style options into mount flags and the data string.
fn parse_options(options: &[String]) -> (MsFlags, bool, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut read_only = false;
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            other => data.push(other.to_string()),
        }
    }
    (flags, read_only, data)
}

fn absolute(target: &Path) -> Result<PathBuf, DriverError> {
    if target.is_absolute() {
        return Ok(target.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| DriverError::io("getcwd", target, e))?;
    Ok(cwd.join(target))
}

fn mount_error(m: &Mount, target: &Path, source: io::Error) -> DriverError {
    DriverError::Mount {
        kind: m.kind.clone(),
        source_path: m.source.clone(),
        target: target.to_path_buf(),
        source,
    }
}

/// Mounts every entry of `mounts` on `target`, in order. On failure, the ones already mounted
/// are unmounted again so the target is left as it was.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), DriverError> {
    let target = absolute(target)?;
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, &target) {
            for _ in 0..done {
                // Best effort: the original error is the one worth reporting.
                let _ = umount2(&target, MntFlags::empty());
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), DriverError> {
    let (mut flags, read_only, data) = parse_options(&m.options);
    if m.kind == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    if flags.contains(MsFlags::MS_BIND) {
        mount(Some(&m.source), target, None::<&str>, flags, None::<&str>)
            .map_err(|e| mount_error(m, target, e.into()))?;
        // A bind mount ignores MS_RDONLY, MS_NOSUID and the like on creation; they only take
        // effect on a remount of the bind.
        let per_mount = flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if read_only || !per_mount.is_empty() {
            let mut remount = per_mount | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
            if read_only {
                remount |= MsFlags::MS_RDONLY;
            }
            if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
                // Never leave a bind without the restrictions asked for (e.g. writable).
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(mount_error(m, target, e.into()));
            }
        }
        return Ok(());
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if data.iter().any(|o| o == "loop") {
        return mount_loop(m, target, flags, read_only, &data);
    }
    let joined = data.join(",");
    if m.kind == "overlay" && joined.len() > MOUNT_DATA_LIMIT {
        return mount_overlay_relative(m, target, flags, &data);
    }
    mount(
        Some(&m.source),
        target,
        Some(m.kind.as_str()),
        flags,
        Some(joined.as_str()),
    )
    .map_err(|e| mount_error(m, target, e.into()))
}

/// A `loop` mount (the block driver's images): attach the image to an auto-clearing loop
/// device and mount that; the device detaches itself when the file system is unmounted.
fn mount_loop(
    m: &Mount,
    target: &Path,
    flags: MsFlags,
    read_only: bool,
    data: &[String],
) -> Result<(), DriverError> {
    let device = super::loopdev::attach(&m.source, read_only)?;
    let rest: Vec<&str> = data
        .iter()
        .filter(|o| o.as_str() != "loop")
        .map(String::as_str)
        .collect();
    mount(
        Some(device.path()),
        target,
        Some(m.kind.as_str()),
        flags,
        Some(rest.join(",").as_str()),
    )
    .map_err(|e| mount_error(m, target, e.into()))
}

/// The longest directory prefix shared by all `paths`, compared component by component.
fn common_dir(paths: &[PathBuf]) -> Option<PathBuf> {
    let first = paths.first()?;
    let mut common: Vec<_> = first.parent()?.components().collect();
    for p in &paths[1..] {
        let parent: Vec<_> = p.parent()?.components().collect();
        let same = common
            .iter()
            .zip(parent.iter())
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(same);
    }
    if common.is_empty() {
        return None;
    }
    Some(common.iter().collect())
}

fn cstring(bytes: &[u8], m: &Mount, target: &Path) -> Result<CString, DriverError> {
    CString::new(bytes).map_err(|_| {
        mount_error(
            m,
            target,
            io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in mount argument"),
        )
    })
}

fn mount_overlay_relative(
    m: &Mount,
    target: &Path,
    flags: MsFlags,
    data: &[String],
) -> Result<(), DriverError> {
    let too_long = |len| DriverError::MountDataTooLong {
        target: target.to_path_buf(),
        len,
        limit: MOUNT_DATA_LIMIT,
    };
    let lower: Vec<PathBuf> = data
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| l.split(':').map(PathBuf::from).collect())
        .unwrap_or_default();
    let Some(base) = common_dir(&lower) else {
        return Err(too_long(data.join(",").len()));
    };
    let mut relative = Vec::with_capacity(lower.len());
    for l in &lower {
        // common_dir is a prefix of every parent, so strip_prefix cannot fail; if it somehow
        // did, the unshortened string is the honest answer.
        let Ok(rel) = l.strip_prefix(&base) else {
            return Err(too_long(data.join(",").len()));
        };
        relative.push(rel.to_string_lossy().into_owned());
    }
    let rewritten: Vec<String> = data
        .iter()
        .map(|o| {
            if o.starts_with("lowerdir=") {
                format!("lowerdir={}", relative.join(":"))
            } else {
                o.clone()
            }
        })
        .collect();
    let joined = rewritten.join(",");
    if joined.len() > MOUNT_DATA_LIMIT {
        return Err(too_long(joined.len()));
    }
    // Everything the child needs is allocated before fork: after fork in a multithreaded
    // process only async-signal-safe calls are allowed (no malloc).
    let c_base = cstring(base.as_os_str().as_bytes(), m, target)?;
    let c_source = cstring(m.source.as_os_str().as_bytes(), m, target)?;
    let c_target = cstring(target.as_os_str().as_bytes(), m, target)?;
    let c_fstype = cstring(m.kind.as_bytes(), m, target)?;
    let c_data = cstring(joined.as_bytes(), m, target)?;
    // SAFETY: the child only calls chdir, mount and _exit (all async-signal-safe) on memory
    // prepared above, then exits without returning into Rust code.
    match unsafe { fork() } {
        Err(e) => Err(mount_error(m, target, e.into())),
        Ok(ForkResult::Child) => {
            // SAFETY: raw syscalls on valid NUL-terminated strings; _exit never returns.
            unsafe {
                if libc::chdir(c_base.as_ptr()) != 0 {
                    libc::_exit(*libc::__errno_location() & 0xff);
                }
                let rc = libc::mount(
                    c_source.as_ptr(),
                    c_target.as_ptr(),
                    c_fstype.as_ptr(),
                    flags.bits(),
                    c_data.as_ptr().cast(),
                );
                libc::_exit(if rc == 0 {
                    0
                } else {
                    *libc::__errno_location() & 0xff
                });
            }
        }
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, code)) => {
                    return Err(mount_error(m, target, io::Error::from_raw_os_error(code)))
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Err(mount_error(
                        m,
                        target,
                        io::Error::other(format!("mount helper killed by {sig}")),
                    ))
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(mount_error(m, target, e.into())),
            }
        },
    }
}

/// Unmounts the topmost mount on `target`. Retries briefly while it is busy (a process that
/// just exited may still hold it). Fails if nothing is mounted there.
pub fn unmount(target: &Path) -> Result<(), DriverError> {
    let mut busy_retries = 0;
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if busy_retries < 20 => {
                busy_retries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                return Err(DriverError::Unmount {
                    target: target.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
}

/// Unmounts everything stacked on `target` (all of a multi-entry `mount_all`), like
/// containerd's UnmountAll. Fails if nothing was mounted there.
pub fn unmount_all(target: &Path) -> Result<(), DriverError> {
    unmount(target)?;
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => {}
            // EINVAL: target is no longer a mount point.
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(_) => unmount(target)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_dir_of_snapshot_trees() {
        let paths = vec![
            PathBuf::from("/r/snapshots/12/fs"),
            PathBuf::from("/r/snapshots/3/fs"),
            PathBuf::from("/r/snapshots/130/fs"),
        ];
        assert_eq!(common_dir(&paths), Some(PathBuf::from("/r/snapshots")));
        assert_eq!(
            common_dir(&[PathBuf::from("/a/x"), PathBuf::from("/b/y")]),
            Some(PathBuf::from("/"))
        );
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "nosuid", "lowerdir=/a:/b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, ro, data) = parse_options(&opts);
        assert!(ro);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID));
        assert_eq!(data, vec!["lowerdir=/a:/b".to_string()]);
    }
}
