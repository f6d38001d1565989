//! Loop devices and reflinks, through their ioctls: what the block driver needs from the kernel.
//!
//! A loop device is attached with `LO_FLAGS_AUTOCLEAR`: once the file system mounted on it is
//! unmounted (and our descriptor is closed), the kernel detaches it, so no path of ours has to
//! remember to. A crash therefore never leaves a loop device bound to an image either.

use super::error::DriverError;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// _IOW(0x94, 9, int)
const FICLONE: libc::c_ulong = 0x4004_9409;
/// Another process may take the free device between GET_FREE and CONFIGURE; try again.
const ATTACH_ATTEMPTS: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. Dropping it closes our descriptor; the device detaches itself
/// when nothing else (a mount) holds it.
#[derive(Debug)]
pub struct LoopDevice {
    _file: File,
    path: PathBuf,
}

impl LoopDevice {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn loop_error(image: &Path, source: io::Error) -> DriverError {
    DriverError::LoopAttach {
        image: image.to_path_buf(),
        source,
    }
}

/// Attaches `image` to a free loop device (read-only if asked), auto-clearing.
pub fn attach(image: &Path, read_only: bool) -> Result<LoopDevice, DriverError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(|e| loop_error(image, e))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(LOOP_CONTROL)
        .map_err(|e| loop_error(image, e))?;
    let mut last = io::Error::other("no attempt made");
    for _ in 0..ATTACH_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(loop_error(image, io::Error::last_os_error()));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(dev) => dev,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let mut flags = LO_FLAGS_AUTOCLEAR;
        if read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config` is, laid out
        // as the kernel's (repr(C), same field order and sizes).
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc == 0 {
            return Ok(LoopDevice { _file: dev, path });
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(loop_error(image, last));
        }
    }
    Err(loop_error(image, last))
}

/// Makes `dst` (created, must not exist) a reflink copy of `src`: constant time, no data
/// copied. EOPNOTSUPP, EXDEV, EINVAL and ENOTTY mean the file system cannot share extents.
pub fn reflink(src: &Path, dst: &Path) -> Result<File, DriverError> {
    let from = File::open(src).map_err(|e| DriverError::io("open", src, e))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(dst)
        .map_err(|e| DriverError::io("create", dst, e))?;
    // SAFETY: FICLONE takes the source descriptor as its integer argument.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) };
    if rc != 0 {
        let source = io::Error::last_os_error();
        let _ = fs::remove_file(dst);
        return Err(DriverError::Reflink {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            source,
        });
    }
    Ok(to)
}

/// True for the errors FICLONE returns when the file system cannot reflink at all.
pub fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY)
    )
}

/// How `image` is attached to loop devices right now: None if not at all, Some(true) if any
/// attachment is writable. Read from /sys/block/loop*/loop/backing_file.
pub fn attached(image: &Path) -> Result<Option<bool>, DriverError> {
    let want = fs::canonicalize(image).map_err(|e| DriverError::io("realpath", image, e))?;
    let sys = Path::new("/sys/block");
    let entries = match fs::read_dir(sys) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DriverError::io("readdir", sys, e)),
    };
    let mut found = None;
    for entry in entries {
        let entry = entry.map_err(|e| DriverError::io("readdir", sys, e))?;
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(dir.join("loop/backing_file")) else {
            continue; // not attached
        };
        if Path::new(backing.trim_end()) != want {
            continue;
        }
        let ro = fs::read_to_string(dir.join("ro")).unwrap_or_default();
        let writable = ro.trim() != "1";
        found = Some(found.unwrap_or(false) || writable);
    }
    Ok(found)
}
