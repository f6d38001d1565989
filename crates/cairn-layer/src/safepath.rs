//! Names from the tar stream, and filesystem operations confined to the target root.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` from a descriptor of the target:
//! the kernel treats the target as `/` for `..` and for absolute symlinks, so a symlink from
//! this or a parent layer (`lib -> usr/lib`, `x -> /etc`) lands inside the target and never
//! outside. Only the parent directory is resolved that way; the last component is always
//! handled with `*at` calls that do not follow it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Deeper names are refused: no real image comes close, and removal recurses per level.
pub const MAX_DEPTH: usize = 512;

/// A tar name made relative and checked: components joined by `/`, no `.`, no `..`, no
/// empty components, no leading `/`. The empty name is the target root itself.
pub fn normalize(name: &[u8]) -> Result<Vec<u8>, &'static str> {
    if name.contains(&0) {
        return Err("NUL byte in name");
    }
    let mut out = Vec::with_capacity(name.len());
    let mut depth = 0;
    for comp in name.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("`..` component"),
            _ => {}
        }
        depth += 1;
        if depth > MAX_DEPTH {
            return Err("too many path components");
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
    }
    Ok(out)
}

/// `(parent, leaf)` of a normalized non-empty name.
pub fn split_leaf(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&c| c == b'/') {
        Some(p) => (&rel[..p], &rel[p + 1..]),
        None => (&b""[..], rel),
    }
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

pub fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A directory descriptor of the target root, and its real path (for canonical names).
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    real: Vec<u8>,
    /// Parent directories resolved lately: tar name of the parent -> (descriptor, canonical
    /// name). A layer names the same few directories over and over (tars are written a
    /// directory at a time), and resolving one costs an `openat2` and a `readlink` of
    /// `/proc/self/fd`: most of an entry's system time besides the write. Valid while nothing
    /// is removed: creating entries never changes what an existing directory path resolves
    /// to, so whoever removes or replaces anything calls [`Root::forget_dirs`].
    dirs: Mutex<DirCache>,
}

/// Tar name of a parent directory -> its descriptor and canonical name.
type DirCache = HashMap<Vec<u8>, (Arc<OwnedFd>, Vec<u8>)>;

/// Parent directories remembered at most; the cache starts over when full.
const DIR_CACHE_ENTRIES: usize = 256;

/// A resolved parent directory and the untouched last component.
#[derive(Debug)]
pub struct Leaf {
    pub dir: Arc<OwnedFd>,
    pub name: Vec<u8>,
    /// The name relative to the root after resolving the parent's symlinks: the identity
    /// of the file, whatever path the tar used to reach it.
    pub canonical: Vec<u8>,
}

impl Leaf {
    pub fn dirfd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// A path naming the leaf through the parent's descriptor, for calls without an `*at`
    /// form (xattrs). The kernel resolves `/proc/self/fd/N` to exactly that directory.
    pub fn proc_path(&self) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        p.push(os(&self.name));
        p
    }
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn real_path_of(fd: RawFd) -> io::Result<Vec<u8>> {
    Ok(std::fs::read_link(format!("/proc/self/fd/{fd}"))?
        .into_os_string()
        .into_encoded_bytes())
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_io)?;
        let fd = own(fd);
        let real = real_path_of(fd.as_raw_fd())?;
        Ok(Root {
            fd,
            real,
            dirs: Mutex::new(HashMap::new()),
        })
    }

    /// Drops every remembered parent directory: call after removing or replacing anything.
    pub fn forget_dirs(&self) {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Opens a directory of the tree, resolving every component inside the root.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let p = if rel.is_empty() { &b"."[..] } else { rel };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.fd(), os(p), how).map(own).map_err(errno_io)
    }

    /// The name of an open directory relative to the root.
    fn canonical_of(&self, dir: &OwnedFd) -> io::Result<Vec<u8>> {
        let real = real_path_of(dir.as_raw_fd())?;
        if real == self.real {
            return Ok(Vec::new());
        }
        match real.strip_prefix(self.real.as_slice()) {
            Some([b'/', rest @ ..]) => Ok(rest.to_vec()),
            // Only possible if the root was moved while we work; refuse rather than guess.
            _ => Err(io::Error::other("resolved directory is not below the root")),
        }
    }

    /// Resolves the parent of `rel` (creating missing directories with mode 0755 when
    /// `create`) and returns it with the last component.
    pub fn leaf(&self, rel: &[u8], create: bool) -> io::Result<Leaf> {
        let (parent, name) = split_leaf(rel);
        let (dir, mut canonical) = self.parent_dir(parent, create)?;
        if !canonical.is_empty() {
            canonical.push(b'/');
        }
        canonical.extend_from_slice(name);
        Ok(Leaf {
            dir,
            name: name.to_vec(),
            canonical,
        })
    }

    /// The parent directory `parent` (a normalized tar name) and its canonical name, from
    /// the cache or resolved inside the root.
    fn parent_dir(&self, parent: &[u8], create: bool) -> io::Result<(Arc<OwnedFd>, Vec<u8>)> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((fd, canonical)) = dirs.get(parent) {
            return Ok((Arc::clone(fd), canonical.clone()));
        }
        let dir = match self.open_dir(parent) {
            Ok(d) => d,
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                self.mkdir_all(parent)?;
                self.open_dir(parent)?
            }
            Err(e) => return Err(e),
        };
        let canonical = self.canonical_of(&dir)?;
        let dir = Arc::new(dir);
        if dirs.len() >= DIR_CACHE_ENTRIES {
            dirs.clear();
        }
        dirs.insert(parent.to_vec(), (Arc::clone(&dir), canonical.clone()));
        Ok((dir, canonical))
    }

    fn mkdir_all(&self, rel: &[u8]) -> io::Result<()> {
        self.mkdir_all_depth(rel, 0)
    }

    /// Creates the missing directories of `rel`. A dangling symlink on the way (a parent
    /// layer's `var/run -> /run` before `/run` exists) gets its target created inside the
    /// root, as containerd does; `depth` bounds symlink chains and loops.
    fn mkdir_all_depth(&self, rel: &[u8], depth: u32) -> io::Result<()> {
        if depth > MAX_SYMLINK_HOPS {
            return Err(errno_io(Errno::ELOOP));
        }
        let mut end = 0;
        let stops: Vec<usize> = rel
            .iter()
            .enumerate()
            .filter(|(_, &c)| c == b'/')
            .map(|(i, _)| i)
            .chain(std::iter::once(rel.len()))
            .collect();
        for stop in stops {
            let prefix = &rel[..stop];
            let comp = &rel[end..stop];
            end = stop + 1;
            match self.open_dir(prefix) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let (parent, _) = split_leaf(prefix);
            let pfd = self.open_dir(parent)?;
            match mkdirat(
                Some(pfd.as_raw_fd()),
                os(comp),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    let link = readlinkat(Some(pfd.as_raw_fd()), os(comp))
                        .map_err(|_| errno_io(Errno::ENOTDIR))?
                        .into_encoded_bytes();
                    let base = if link.starts_with(b"/") {
                        Vec::new()
                    } else {
                        self.canonical_of(&pfd)?
                    };
                    self.mkdir_all_depth(&join_in_root(&base, &link), depth + 1)?;
                    self.open_dir(prefix)?;
                }
                Err(e) => return Err(errno_io(e)),
            }
        }
        Ok(())
    }
}

/// Symlinks followed while creating one parent chain, as the kernel's own limit.
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// `base` joined with a symlink's text the way the kernel resolves it under
/// `RESOLVE_IN_ROOT`: `..` stops at the root, an absolute text starts from the root.
pub fn join_in_root(base: &[u8], link: &[u8]) -> Vec<u8> {
    let mut comps: Vec<&[u8]> = if link.starts_with(b"/") {
        Vec::new()
    } else {
        base.split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect()
    };
    for c in link.split(|&c| c == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    comps.join(&b'/')
}

/// `lstat` of a leaf; `None` if it does not exist.
pub fn lstat_at(dir: RawFd, name: &[u8]) -> io::Result<Option<nix::sys::stat::FileStat>> {
    match fstatat(
        Some(dir),
        os(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno_io(e)),
    }
}

pub fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Removes a leaf and, if it is a directory, everything below it, without following any
/// symlink. Returns whether something was removed.
pub fn remove_all_at(dir: RawFd, name: &[u8]) -> io::Result<bool> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(false);
    };
    if is_dir(&st) {
        let sub = openat(
            Some(dir),
            os(name),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(own)
        .map_err(errno_io)?;
        for child in list_dir(&sub)? {
            remove_all_at(sub.as_raw_fd(), &child)?;
        }
        unlinkat(Some(dir), os(name), UnlinkatFlags::RemoveDir).map_err(errno_io)?;
    } else {
        unlinkat(Some(dir), os(name), UnlinkatFlags::NoRemoveDir).map_err(errno_io)?;
    }
    Ok(true)
}

/// Names in a directory, without `.` and `..`. Collected first so the caller may remove
/// entries while walking.
pub fn list_dir(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_io)?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(errno_io)?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(errno_io)?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Opens a regular file of the tree for reading, resolved inside the root, the last
/// component not followed.
pub fn open_file_in(root: &Root, rel: &[u8]) -> io::Result<File> {
    let leaf = root.leaf(rel, false)?;
    let fd = openat(
        Some(leaf.dirfd()),
        os(&leaf.name),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(errno_io)?;
    Ok(File::from(own(fd)))
}

/// Opens an unnamed scratch file in the target's filesystem: invisible in the tree and
/// gone when closed, so no spill ever outlives the extraction or leaves the target.
pub fn scratch_file(root: &Root) -> io::Result<File> {
    match openat(
        Some(root.fd()),
        ".",
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => return Ok(File::from(own(fd))),
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
        Err(e) => return Err(errno_io(e)),
    }
    // Filesystems without O_TMPFILE: a named file, unlinked at once.
    for n in 0..1000u32 {
        let name = format!(".cairn-scratch-{}-{n}", std::process::id());
        match openat(
            Some(root.fd()),
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => {
                let f = File::from(own(fd));
                unlinkat(Some(root.fd()), name.as_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(errno_io)?;
                return Ok(f);
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(errno_io(e)),
        }
    }
    Err(errno_io(Errno::EEXIST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rules() {
        assert_eq!(normalize(b"./a//b/./c/").as_deref(), Ok(&b"a/b/c"[..]));
        assert_eq!(normalize(b"/etc/passwd").as_deref(), Ok(&b"etc/passwd"[..]));
        assert_eq!(normalize(b"./").as_deref(), Ok(&b""[..]));
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"..").is_err());
        assert!(normalize(b"a/b/..").is_err());
        assert!(normalize(b"a\0b").is_err());
        assert_eq!(normalize(b"a/..b/c..").as_deref(), Ok(&b"a/..b/c.."[..]));
    }

    #[test]
    fn join_clamps_at_root() {
        assert_eq!(join_in_root(b"a/b", b"../../../x"), b"x".to_vec());
        assert_eq!(join_in_root(b"a/b", b"/etc/./y"), b"etc/y".to_vec());
        assert_eq!(join_in_root(b"a", b"c/d"), b"a/c/d".to_vec());
    }

    #[test]
    fn symlinked_parents_stay_inside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("t");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::create_dir(target.join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", target.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("../../../../etc", target.join("rel")).expect("symlink");
        let root = Root::open(&target).expect("root");
        for via in [&b"abs/x"[..], b"rel/x"] {
            let leaf = root.leaf(via, false).expect("leaf");
            assert_eq!(leaf.canonical, b"etc/x".to_vec());
        }
        // A dangling symlink as a parent gets its target created inside the root.
        std::os::unix::fs::symlink("/nowhere/deep", target.join("dangling")).expect("symlink");
        std::os::unix::fs::symlink("../../../up", target.join("etc/rel")).expect("symlink");
        let leaf = root.leaf(b"dangling/x", true).expect("leaf");
        assert_eq!(leaf.canonical, b"nowhere/deep/x".to_vec());
        let leaf = root.leaf(b"etc/rel/y", true).expect("leaf");
        assert_eq!(leaf.canonical, b"up/y".to_vec());
        assert!(!tmp.path().join("up").exists() && !Path::new("/nowhere").exists());
        // Loops end in an error, not a hang.
        std::os::unix::fs::symlink("loop2", target.join("loop1")).expect("symlink");
        std::os::unix::fs::symlink("loop1", target.join("loop2")).expect("symlink");
        assert!(root.leaf(b"loop1/z", true).is_err());
    }
}
