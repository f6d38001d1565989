//! A subvolume's exclusive bytes from its btrfs qgroup (`BTRFS_IOC_TREE_SEARCH` of the quota
//! tree), where quotas are enabled and consistent.
//!
//! Exclusive bytes are the extents only this subvolume references: for a child snapshot, what
//! it wrote or changed since it was snapshotted, not the parent's data it shares. The figures
//! are those of the last committed transaction.

use crate::error::DriverError;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const IOCTL_MAGIC: u8 = 0x94;
const QUOTA_TREE_OBJECTID: u64 = 8;
const QGROUP_STATUS_KEY: u32 = 240;
const QGROUP_INFO_KEY: u32 = 242;
const STATUS_FLAG_ON: u64 = 1 << 0;
const STATUS_FLAG_RESCAN: u64 = 1 << 1;
const STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
const SUBVOL_ROOT_INO: u64 = 256;
const SEARCH_KEY_BYTES: usize = 104;
const SEARCH_HEADER_BYTES: usize = 32;

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
}

/// `struct btrfs_ioctl_search_args`.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - SEARCH_KEY_BYTES],
}

const _: () = assert!(std::mem::size_of::<SearchKey>() == SEARCH_KEY_BYTES);
const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

nix::ioctl_readwrite!(ioc_tree_search, IOCTL_MAGIC, 17, SearchArgs);
nix::ioctl_readwrite!(ioc_ino_lookup, IOCTL_MAGIC, 18, InoLookupArgs);

fn le64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The first item of the quota tree with key (0, `item_type`, `offset`), or None when there is
/// no such item or no quota tree (quotas never enabled).
fn search_one(
    fd: &File,
    path: &Path,
    item_type: u32,
    offset: u64,
) -> Result<Option<Vec<u8>>, DriverError> {
    let mut args = Box::new(SearchArgs {
        key: SearchKey {
            tree_id: QUOTA_TREE_OBJECTID,
            min_offset: offset,
            max_offset: offset,
            max_transid: u64::MAX,
            min_type: item_type,
            max_type: item_type,
            nr_items: 1,
            ..SearchKey::default()
        },
        buf: [0; 4096 - SEARCH_KEY_BYTES],
    });
    // SAFETY: `args` is a live search_args for the call; the kernel fills `buf` within its size.
    match unsafe { ioc_tree_search(fd.as_raw_fd(), &mut *args) } {
        Ok(_) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(DriverError::nix("btrfs tree search (quota tree)", path, e)),
    }
    if args.key.nr_items == 0 {
        return Ok(None);
    }
    let buf = &args.buf[..];
    let (Some(len), Some(ty)) = (
        buf.get(28..32)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes),
        buf.get(24..28)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes),
    ) else {
        return Ok(None);
    };
    if ty != item_type {
        return Ok(None);
    }
    // The length comes from the kernel, but is still bounded by the buffer it sits in.
    Ok(buf
        .get(SEARCH_HEADER_BYTES..SEARCH_HEADER_BYTES + len as usize)
        .map(<[u8]>::to_vec))
}

/// The exclusive bytes of the subvolume rooted at `path`, or None when quotas are off, being
/// rescanned or inconsistent (the caller then walks the tree).
pub(crate) fn exclusive_bytes(path: &Path) -> Result<Option<u64>, DriverError> {
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DriverError::io("open", path, e))?;
    let Some(status) = search_one(&fd, path, QGROUP_STATUS_KEY, 0)? else {
        return Ok(None);
    };
    let flags = le64(&status, 16).unwrap_or(0);
    if flags & STATUS_FLAG_ON == 0 || flags & (STATUS_FLAG_RESCAN | STATUS_FLAG_INCONSISTENT) != 0 {
        return Ok(None);
    }
    let mut lookup = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: SUBVOL_ROOT_INO,
        name: [0; 4080],
    });
    // SAFETY: `lookup` is a live ino_lookup_args; the kernel writes `treeid` and `name`.
    unsafe { ioc_ino_lookup(fd.as_raw_fd(), &mut *lookup) }
        .map_err(|e| DriverError::nix("btrfs subvolume id", path, e))?;
    // A level-0 qgroup's id is the subvolume id.
    let Some(info) = search_one(&fd, path, QGROUP_INFO_KEY, lookup.treeid)? else {
        return Ok(None);
    };
    Ok(le64(&info, 24))
}
