//! The test disk's FUSE server: serves one disk image as the file `disk` (and a control file
//! `ctl`) at a mount point, logs every write and flush to `WORKDIR/log`, and fails writes or
//! flushes with EIO on command.
//!
//! Usage: `cairn-testdisk-fuse MOUNTPOINT WORKDIR` (`WORKDIR/image` must exist). It runs until
//! the mount point is unmounted. A loop device over `MOUNTPOINT/disk` (buffered, not direct IO)
//! turns each cache flush of the file system on it into an `fsync` of `disk`, which reaches
//! this server as FSYNC: the flush markers of the log.
//!
//! Control: write one line to `ctl`:
//! - `base`: copy the image to `WORKDIR/base`, empty the log, reset the counters;
//! - `fail write N once|always` / `fail flush N once|always`: the N-th next write (flush) fails
//!   with EIO, and with `always` every one after it;
//! - `heal`: no more failures.
//!
//! Reading `ctl` gives `writes N`, `flushes N`, `failed_writes N`, `failed_flushes N` lines
//! (counted since the last `base`; `flushes` counts completed ones).

use cairn_testdisk::log::{header, KIND_FLUSH, KIND_WRITE, KIND_ZERO};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request,
};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const ROOT_INO: u64 = 1;
const DISK_INO: u64 = 2;
const CTL_INO: u64 = 3;
const TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug)]
struct Fault {
    /// The counter value (1-based) of the first request that fails.
    at: u64,
    sticky: bool,
}

impl Fault {
    fn hits(&self, n: u64) -> bool {
        n == self.at || (self.sticky && n > self.at)
    }
}

#[derive(Debug)]
struct Disk {
    workdir: PathBuf,
    image: File,
    size_bytes: u64,
    log: File,
    writes: u64,
    flushes: u64,
    failed_writes: u64,
    failed_flushes: u64,
    fail_write: Option<Fault>,
    fail_flush: Option<Fault>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let now = SystemTime::UNIX_EPOCH;
    let (kind, perm) = match ino {
        ROOT_INO => (FileType::Directory, 0o755),
        _ => (FileType::RegularFile, 0o600),
    };
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if ino == ROOT_INO { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Disk {
    fn size_of(&self, ino: u64) -> u64 {
        match ino {
            DISK_INO => self.size_bytes,
            CTL_INO => 4096,
            _ => 0,
        }
    }

    fn status(&self) -> String {
        format!(
            "writes {}\nflushes {}\nfailed_writes {}\nfailed_flushes {}\n",
            self.writes, self.flushes, self.failed_writes, self.failed_flushes
        )
    }

    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.log.write_all(record)
    }

    fn control(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["base"] => {
                let base = self.workdir.join("base");
                cairn_testdisk::sparse_copy(&self.workdir.join("image"), &base)
                    .map_err(|e| e.to_string())?;
                self.log.set_len(0).map_err(|e| e.to_string())?;
                self.writes = 0;
                self.flushes = 0;
                self.failed_writes = 0;
                self.failed_flushes = 0;
                Ok(())
            }
            ["fail", what, n, mode] => {
                let n: u64 = n.parse().map_err(|_| format!("bad count {n}"))?;
                let sticky = match *mode {
                    "once" => false,
                    "always" => true,
                    _ => return Err(format!("bad mode {mode}")),
                };
                match *what {
                    "write" => {
                        self.fail_write = Some(Fault {
                            at: self.writes + n.max(1),
                            sticky,
                        })
                    }
                    "flush" => {
                        self.fail_flush = Some(Fault {
                            at: self.flushes + self.failed_flushes + n.max(1),
                            sticky,
                        })
                    }
                    _ => return Err(format!("bad target {what}")),
                }
                Ok(())
            }
            ["heal"] => {
                self.fail_write = None;
                self.fail_flush = None;
                Ok(())
            }
            _ => Err(format!("unknown command {line:?}")),
        }
    }
}

impl Filesystem for Disk {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent, name.to_str()) {
            (ROOT_INO, Some("disk")) => DISK_INO,
            (ROOT_INO, Some("ctl")) => CTL_INO,
            _ => return reply.error(libc::ENOENT),
        };
        reply.entry(&TTL, &attr(ino, self.size_of(ino)), 0);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            ROOT_INO | DISK_INO | CTL_INO => reply.attr(&TTL, &attr(ino, self.size_of(ino))),
            _ => reply.error(libc::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // The disk has a fixed size; opening the control file with O_TRUNC lands here.
        reply.attr(&TTL, &attr(ino, self.size_of(ino)));
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match ino {
            DISK_INO => reply.opened(0, 0),
            // The control file bypasses the page cache: each read asks the server.
            CTL_INO => reply.opened(0, fuser::consts::FOPEN_DIRECT_IO),
            _ => reply.error(libc::EISDIR),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = offset.max(0) as u64;
        match ino {
            DISK_INO => {
                let end = (offset + u64::from(size)).min(self.size_bytes);
                let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
                match self.image.read_exact_at(&mut buf, offset) {
                    Ok(()) => reply.data(&buf),
                    Err(_) => reply.error(libc::EIO),
                }
            }
            CTL_INO => {
                let s = self.status().into_bytes();
                let from = (offset as usize).min(s.len());
                let to = (from + size as usize).min(s.len());
                reply.data(&s[from..to]);
            }
            _ => reply.error(libc::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let offset = offset.max(0) as u64;
        match ino {
            DISK_INO => {
                if offset + data.len() as u64 > self.size_bytes {
                    return reply.error(libc::ENOSPC);
                }
                self.writes += 1;
                if self.fail_write.is_some_and(|f| f.hits(self.writes)) {
                    self.failed_writes += 1;
                    return reply.error(libc::EIO);
                }
                let mut record = header(KIND_WRITE, offset, data.len() as u64).to_vec();
                record.extend_from_slice(data);
                let done = self
                    .append(&record)
                    .and_then(|()| self.image.write_all_at(data, offset));
                match done {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(_) => reply.error(libc::EIO),
                }
            }
            CTL_INO => {
                let line = String::from_utf8_lossy(data).trim().to_owned();
                match self.control(&line) {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => {
                        eprintln!("cairn-testdisk-fuse: {e}");
                        reply.error(libc::EINVAL)
                    }
                }
            }
            _ => reply.error(libc::EBADF),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        // close(), not a cache flush.
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino != DISK_INO {
            return reply.ok();
        }
        if self
            .fail_flush
            .is_some_and(|f| f.hits(self.flushes + self.failed_flushes + 1))
        {
            // A failed flush made nothing durable: its writes stay in the open epoch.
            self.failed_flushes += 1;
            return reply.error(libc::EIO);
        }
        match self.append(&header(KIND_FLUSH, 0, 0)) {
            Ok(()) => {
                self.flushes += 1;
                reply.ok()
            }
            Err(_) => reply.error(libc::EIO),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // The loop driver turns discards and write-zeroes into punch-hole / zero-range; both
        // read back as zeros, so the log records them as a zeroed range.
        let zeroing = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if ino != DISK_INO || mode & zeroing == 0 || offset < 0 || length <= 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let (offset, length) = (offset as u64, length as u64);
        if offset + length > self.size_bytes {
            return reply.error(libc::ENOSPC);
        }
        self.writes += 1;
        if self.fail_write.is_some_and(|f| f.hits(self.writes)) {
            self.failed_writes += 1;
            return reply.error(libc::EIO);
        }
        let zeros = vec![0u8; (length.min(1 << 20)) as usize];
        let mut done = self.append(&header(KIND_ZERO, offset, length));
        let mut at = offset;
        while done.is_ok() && at < offset + length {
            let n = (offset + length - at).min(zeros.len() as u64) as usize;
            done = self.image.write_all_at(&zeros[..n], at);
            at += n as u64;
        }
        match done {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(libc::EIO),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT_INO {
            return reply.error(libc::ENOTDIR);
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, "disk"),
            (CTL_INO, FileType::RegularFile, "ctl"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn run(mountpoint: &Path, workdir: &Path) -> Result<(), String> {
    let image_path = workdir.join("image");
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image_path)
        .map_err(|e| format!("open {}: {e}", image_path.display()))?;
    let size_bytes = image
        .metadata()
        .map_err(|e| format!("stat {}: {e}", image_path.display()))?
        .len();
    let log_path = workdir.join("log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let disk = Disk {
        workdir: workdir.to_path_buf(),
        image,
        size_bytes,
        log,
        writes: 0,
        flushes: 0,
        failed_writes: 0,
        failed_flushes: 0,
        fail_write: None,
        fail_flush: None,
    };
    let options = [
        MountOption::FSName("cairn-testdisk".into()),
        MountOption::RW,
    ];
    fuser::mount2(disk, mountpoint, &options)
        .map_err(|e| format!("serve {}: {e}", mountpoint.display()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mountpoint, workdir] = args.as_slice() else {
        eprintln!("usage: cairn-testdisk-fuse MOUNTPOINT WORKDIR");
        std::process::exit(2);
    };
    if let Err(e) = run(Path::new(mountpoint), Path::new(workdir)) {
        eprintln!("cairn-testdisk-fuse: {e}");
        std::process::exit(1);
    }
}
