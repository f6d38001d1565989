//! A test disk for power cuts and I/O errors at the block layer, after dm-log-writes and
//! CrashMonkey, built from what these machines have: FUSE and loop devices.
//!
//! ```text
//! test ── ext4/xfs on /dev/loopN ── loop (buffered) ── FUSE file `disk` ── cairn-testdisk-fuse
//!                                                                         ├─ WORKDIR/image (live)
//!                                                                         └─ WORKDIR/log (writes, flushes)
//! ```
//!
//! The loop driver turns every cache flush of the file system into an `fsync` of its backing
//! file, so the server sees each write and each flush in order. A **crash image** is the image
//! as of flush `k` plus a seeded choice of the writes that followed it before flush `k + 1`, each
//! kept, dropped or torn at 512-byte granularity ([`CrashImages`]). The server can also fail
//! writes or flushes with EIO from a chosen point, once or from then on ([`TestDisk::control`]).
//!
//! Everything here needs root (loop devices, mounts, FUSE); [`missing`] says what is absent.

pub mod log;

use rand::Rng;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use log::Log;

/// The atomic unit of a write: a torn write keeps some of its sectors and loses the others.
pub const SECTOR_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("the FUSE server did not serve {} in time: {why}", path.display())]
    ServerStart { path: PathBuf, why: String },
    #[error("write log {} damaged at byte {at_bytes}: {why}", path.display())]
    BadLog {
        path: PathBuf,
        at_bytes: u64,
        why: &'static str,
    },
    #[error("bad control status line {line:?}")]
    BadStatus { line: String },
}

/// The file systems the disk is formatted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Xfs,
    /// The btrfs driver's file system. Every crash image is a copy of one btrfs, so it carries
    /// the live file system's fsid: the kernel keeps a registry of btrfs devices by fsid and
    /// refuses a device of a lower generation than one it already knows ("already registered
    /// with a higher generation"). So each btrfs loop device is forgotten
    /// (`btrfs device scan --forget DEV`) as it is released, and the live disk is unmounted
    /// before any image is mounted: only one copy is ever known to the kernel.
    Btrfs,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
        }
    }

    /// The smallest image the file system is happy on (mkfs.xfs refuses below 300 MiB; a btrfs
    /// of 256 MiB has room for its DUP metadata and a few data chunks).
    pub fn image_bytes(self) -> u64 {
        match self {
            // Two block groups of 4 KiB blocks (128 MiB each), so the primary superblock has a
            // backup: ext4 writes the primary in place at mount, and e2fsck repairs a torn one
            // only from a backup (docs/testdisk.md). A 128 MiB ext4 has a single group and none.
            FsKind::Ext4 => 160 << 20,
            FsKind::Xfs => 320 << 20,
            FsKind::Btrfs => 256 << 20,
        }
    }
}

/// Why the test disk cannot run here (not root, a missing tool or /dev/fuse), or `None`.
pub fn missing(fs: FsKind) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the test disk needs root (loop devices, mounts, FUSE)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    let tools: &[&str] = match fs {
        FsKind::Ext4 => &["losetup", "mkfs.ext4", "e2fsck"],
        FsKind::Xfs => &["losetup", "mkfs.xfs", "xfs_repair"],
        FsKind::Btrfs => &["losetup", "mkfs.btrfs", "btrfs"],
    };
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(t).is_file()
            || Path::new("/sbin").join(t).is_file();
        if !found {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

/// Runs a command; its output on failure.
pub fn run(program: &str, args: &[&str]) -> Result<String, DiskError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DiskError::Io {
            op: "run",
            path: PathBuf::from(program),
            source: e,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(DiskError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            output: text,
        })
    }
}

/// Copies a file, leaving its holes holes (the images are sparse).
pub fn sparse_copy(from: &Path, to: &Path) -> Result<(), DiskError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |e| DiskError::Io {
            op,
            path,
            source: e,
        }
    };
    let src = File::open(from).map_err(io("open", from))?;
    let len = src.metadata().map_err(io("stat", from))?.len();
    let dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .map_err(io("create", to))?;
    dst.set_len(len).map_err(io("size", to))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&src);
    let mut at: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while at < len {
        // SAFETY: lseek on an fd we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let (start, end) = (data as u64, if hole < 0 { len } else { hole as u64 });
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], pos)
                .map_err(io("read", from))?;
            dst.write_all_at(&buf[..n], pos).map_err(io("write", to))?;
            pos += n as u64;
        }
        at = end;
    }
    Ok(())
}

/// A file system on a loop device over `image`, mounted at `mountpoint`; unmounted and
/// detached on drop (also when a test panics).
#[derive(Debug)]
pub struct Attached {
    pub device: String,
    pub mountpoint: PathBuf,
    mounted: bool,
    /// A btrfs device: forgotten by the kernel's btrfs registry before it is detached (see
    /// [`FsKind::Btrfs`]).
    forget: bool,
}

impl Attached {
    /// Attaches `image` to a free loop device (buffered IO: flushes become fsyncs of `image`).
    pub fn loop_device(image: &Path) -> Result<String, DiskError> {
        let image = image.to_string_lossy();
        let out = run(
            "losetup",
            &["-f", "--show", "--direct-io=off", image.as_ref()],
        )?;
        Ok(out.trim().to_owned())
    }

    /// Attaches and mounts `image` (replaying the file system's journal, as a boot would).
    pub fn mount(image: &Path, fs: FsKind, mountpoint: &Path) -> Result<Attached, DiskError> {
        let device = Attached::loop_device(image)?;
        let mut a = Attached {
            device,
            mountpoint: mountpoint.to_path_buf(),
            mounted: false,
            forget: fs == FsKind::Btrfs,
        };
        std::fs::create_dir_all(mountpoint).map_err(|e| DiskError::Io {
            op: "create mount point",
            path: mountpoint.to_path_buf(),
            source: e,
        })?;
        let mp = mountpoint.to_string_lossy();
        run("mount", &["-t", fs.name(), a.device.as_str(), mp.as_ref()])?;
        a.mounted = true;
        Ok(a)
    }

    /// Unmounts and detaches, reporting failures (drop does the same, silently).
    pub fn release(mut self) -> Result<(), DiskError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), DiskError> {
        if self.mounted {
            let mp = self.mountpoint.to_string_lossy().into_owned();
            // A process that just closed its last file there may still be letting go (a
            // thread's descriptors close as it exits): busy for up to a second is not a leak.
            let mut tries = 0;
            let unmounted = loop {
                match run("umount", &[mp.as_str()]) {
                    Err(DiskError::Command { output, .. })
                        if output.contains("busy") && tries < 20 =>
                    {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => break other,
                }
            };
            if let Err(e) = unmounted {
                let _ = run("umount", &["-l", mp.as_str()]);
                self.mounted = false;
                forget_btrfs(self.forget, &self.device);
                let _ = run("losetup", &["-d", self.device.as_str()]);
                self.device.clear();
                return Err(e);
            }
            self.mounted = false;
        }
        if !self.device.is_empty() {
            let dev = std::mem::take(&mut self.device);
            forget_btrfs(self.forget, &dev);
            run("losetup", &["-d", dev.as_str()])?;
        }
        Ok(())
    }
}

/// Drops `device` from the kernel's btrfs device registry (when `btrfs`): the next copy of the
/// same file system, of any generation, is then accepted. Only this device is forgotten, never
/// every unmounted one (others' btrfs tests share the kernel). Best effort: a device the kernel
/// never registered (kernels >= 6.7 forget a single-device btrfs at unmount) fails harmlessly.
pub fn forget_btrfs(btrfs: bool, device: &str) {
    if btrfs && !device.is_empty() {
        let _ = run("btrfs", &["device", "scan", "--forget", device]);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// Checks a crash image's file system strictly (read-only: `e2fsck -fn`, `xfs_repair -n`); the
/// image must have been mounted and unmounted first, so its journal is replayed.
pub fn fsck(fs: FsKind, image: &Path) -> Result<(), DiskError> {
    let img = image.to_string_lossy();
    match fs {
        FsKind::Ext4 => run("e2fsck", &["-fn", img.as_ref()]).map(|_| ()),
        FsKind::Xfs => run("xfs_repair", &["-f", "-n", img.as_ref()]).map(|_| ()),
        FsKind::Btrfs => run("btrfs", &["check", "--readonly", img.as_ref()]).map(|_| ()),
    }
}

/// Repairs a crash image the way an operator would after a power cut (`e2fsck -fy`,
/// `xfs_repair`); returns the tool's output.
pub fn repair(fs: FsKind, image: &Path) -> Result<String, DiskError> {
    let img = image.to_string_lossy();
    match fs {
        FsKind::Ext4 => match run("e2fsck", &["-fy", img.as_ref()]) {
            // 1 and 2 (and both): errors corrected; 4 and up: errors left, or fsck failed.
            Err(DiskError::Command { status, output, .. })
                if ["1", "2", "3"]
                    .iter()
                    .any(|c| status == format!("exit status: {c}")) =>
            {
                Ok(output)
            }
            other => other,
        },
        FsKind::Xfs => run("xfs_repair", &["-f", img.as_ref()]),
        // btrfs is copy-on-write: a mount finds the last committed transaction (and replays the
        // fsync log on it), and `btrfs check --repair` is documented as a last resort, not a
        // routine step after a power cut. Nothing to do before mounting.
        FsKind::Btrfs => Ok(String::new()),
    }
}

/// The counters the server reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    /// Completed flushes since the base.
    pub flushes: u64,
    pub failed_writes: u64,
    pub failed_flushes: u64,
}

/// A running test disk: the FUSE server, its loop device and the file system on it, mounted.
#[derive(Debug)]
pub struct TestDisk {
    pub fs: FsKind,
    work: PathBuf,
    server: Option<Child>,
    fuse_mounted: bool,
    attached: Option<Attached>,
    keep: bool,
}

impl TestDisk {
    /// Formats a fresh `fs` on a new disk of `size_bytes` and mounts it. `server` is the
    /// `cairn-testdisk-fuse` binary; `name` prefixes the work directory (mount points, images).
    pub fn format(
        server: &Path,
        fs: FsKind,
        size_bytes: u64,
        name: &str,
    ) -> Result<TestDisk, DiskError> {
        let mut disk = TestDisk::serve(server, fs, name, None, size_bytes)?;
        let dev = Attached::loop_device(&disk.work.join("fuse/disk"))?;
        let made = match fs {
            FsKind::Ext4 => run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-b",
                    "4096",
                    "-E",
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                    dev.as_str(),
                ],
            ),
            // reflink=1 (the default since xfsprogs 5.1, said here): the block driver needs it.
            FsKind::Xfs => run(
                "mkfs.xfs",
                &["-q", "-f", "-K", "-m", "reflink=1", dev.as_str()],
            ),
            // -K: no discard of the whole device (the log would hold it as one zeroed range).
            FsKind::Btrfs => run("mkfs.btrfs", &["-q", "-f", "-K", dev.as_str()]),
        };
        forget_btrfs(fs == FsKind::Btrfs, &dev);
        let detached = run("losetup", &["-d", dev.as_str()]);
        made?;
        detached?;
        disk.control("base")?;
        disk.attach()?;
        Ok(disk)
    }

    /// A disk over a copy of `image` (a file system made by an earlier disk), mounted; its base
    /// is that image.
    pub fn over_image(
        server: &Path,
        fs: FsKind,
        image: &Path,
        name: &str,
    ) -> Result<TestDisk, DiskError> {
        let mut disk = TestDisk::serve(server, fs, name, Some(image), 0)?;
        disk.control("base")?;
        disk.attach()?;
        Ok(disk)
    }

    fn serve(
        server: &Path,
        fs: FsKind,
        name: &str,
        image: Option<&Path>,
        size_bytes: u64,
    ) -> Result<TestDisk, DiskError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let work = std::env::temp_dir().join(format!(
            "cairn-testdisk-{name}-{}-{}-{n}",
            fs.name(),
            std::process::id()
        ));
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |e| DiskError::Io {
                op,
                path,
                source: e,
            }
        };
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("fuse")).map_err(io("create", &work))?;
        let img = work.join("image");
        match image {
            Some(from) => sparse_copy(from, &img)?,
            None => File::create(&img)
                .and_then(|f| f.set_len(size_bytes))
                .map_err(io("create", &img))?,
        }
        let mut disk = TestDisk {
            fs,
            work: work.clone(),
            server: None,
            fuse_mounted: false,
            attached: None,
            keep: std::env::var_os("CAIRN_TESTDISK_KEEP").is_some(),
        };
        let child = Command::new(server)
            .arg(work.join("fuse"))
            .arg(&work)
            .stdin(Stdio::null())
            .spawn()
            .map_err(io("spawn", server))?;
        disk.server = Some(child);
        disk.fuse_mounted = true;
        let disk_file = work.join("fuse/disk");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !disk_file.exists() {
            if let Some(child) = disk.server.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    disk.fuse_mounted = false;
                    return Err(DiskError::ServerStart {
                        path: disk_file,
                        why: format!("the server exited: {status}"),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(DiskError::ServerStart {
                    path: disk_file,
                    why: "timed out".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(disk)
    }

    fn attach(&mut self) -> Result<(), DiskError> {
        let a = Attached::mount(
            &self.work.join("fuse/disk"),
            self.fs,
            &self.work.join("mnt"),
        )?;
        self.attached = Some(a);
        Ok(())
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> PathBuf {
        self.work.join("mnt")
    }

    /// A directory of the test's own beside the disk (crash images, copies).
    pub fn scratch(&self) -> PathBuf {
        self.work.join("scratch")
    }

    /// The image as of the last `base` command (after mkfs, or the image the disk started on).
    pub fn base_image(&self) -> PathBuf {
        self.work.join("base")
    }

    /// The live image (every write so far).
    pub fn live_image(&self) -> PathBuf {
        self.work.join("image")
    }

    /// Sends a control line (see the server's documentation).
    pub fn control(&self, line: &str) -> Result<(), DiskError> {
        let ctl = self.work.join("fuse/ctl");
        std::fs::write(&ctl, format!("{line}\n")).map_err(|e| DiskError::Io {
            op: "write control",
            path: ctl,
            source: e,
        })
    }

    pub fn stats(&self) -> Result<Stats, DiskError> {
        let ctl = self.work.join("fuse/ctl");
        let text = std::fs::read_to_string(&ctl).map_err(|e| DiskError::Io {
            op: "read control",
            path: ctl,
            source: e,
        })?;
        let mut s = Stats::default();
        for line in text.lines() {
            let line = line.trim_matches(char::from(0)).trim();
            if line.is_empty() {
                continue;
            }
            let bad = || DiskError::BadStatus {
                line: line.to_owned(),
            };
            let (k, v) = line.split_once(' ').ok_or_else(bad)?;
            let v: u64 = v.parse().map_err(|_| bad())?;
            match k {
                "writes" => s.writes = v,
                "flushes" => s.flushes = v,
                "failed_writes" => s.failed_writes = v,
                "failed_flushes" => s.failed_flushes = v,
                _ => return Err(bad()),
            }
        }
        Ok(s)
    }

    /// Unmounts the file system (its last writes and flushes reach the log) and detaches the
    /// loop device; the server keeps serving, so the log can be read.
    pub fn unmount(&mut self) -> Result<(), DiskError> {
        match self.attached.take() {
            Some(a) => a.release(),
            None => Ok(()),
        }
    }

    pub fn log(&self) -> Result<Log, DiskError> {
        Log::read(&self.work.join("log"))
    }

    fn teardown(&mut self) {
        let _ = self.unmount();
        if self.fuse_mounted {
            let fuse = self.work.join("fuse").to_string_lossy().into_owned();
            if run("umount", &[fuse.as_str()]).is_err() {
                let _ = run("umount", &["-l", fuse.as_str()]);
            }
            self.fuse_mounted = false;
        }
        if let Some(mut child) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

impl Drop for TestDisk {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What became of one unflushed write in a crash image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    Kept,
    Dropped,
    /// Some of its sectors (of the images' tear unit, 512 bytes by default) reached the disk
    /// (those marked true).
    Torn(Vec<bool>),
}

/// Builds crash images from a disk's base and log, cut by cut in increasing order: keeps the
/// image as of flush `k` in `durable` and copies it for each crash state at `k`.
#[derive(Debug)]
pub struct CrashImages {
    log: Log,
    durable: PathBuf,
    durable_file: File,
    /// Flushes replayed into `durable`.
    at_flush: usize,
    /// The device's atomic write unit: a torn write keeps or loses whole units of this size.
    sector_bytes: usize,
}

impl CrashImages {
    pub fn new(base: &Path, log: Log, dir: &Path) -> Result<CrashImages, DiskError> {
        std::fs::create_dir_all(dir).map_err(|e| DiskError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source: e,
        })?;
        let durable = dir.join("durable.img");
        sparse_copy(base, &durable)?;
        let durable_file =
            OpenOptions::new()
                .write(true)
                .open(&durable)
                .map_err(|e| DiskError::Io {
                    op: "open",
                    path: durable.clone(),
                    source: e,
                })?;
        Ok(CrashImages {
            log,
            durable,
            durable_file,
            at_flush: 0,
            sector_bytes: SECTOR_BYTES,
        })
    }

    /// The same images from a device whose atomic write unit is `sector_bytes` (a multiple of
    /// 512: a disk with 4 KiB physical sectors tears a write only at 4 KiB boundaries).
    pub fn with_sector_bytes(mut self, sector_bytes: usize) -> CrashImages {
        assert!(
            sector_bytes >= SECTOR_BYTES && sector_bytes % SECTOR_BYTES == 0,
            "a tear unit of {sector_bytes} bytes is not a multiple of {SECTOR_BYTES}"
        );
        self.sector_bytes = sector_bytes;
        self
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Writes to `out` the image of a power cut after flush `k` and before flush `k + 1`
    /// completed, with the writes in between each kept, dropped or torn as `rng` draws (all
    /// dropped when `drop_all`). Returns the fate of each of those writes.
    pub fn image(
        &mut self,
        k: usize,
        rng: &mut impl Rng,
        drop_all: bool,
        out: &Path,
    ) -> Result<Vec<Fate>, DiskError> {
        assert!(k >= self.at_flush, "cuts are taken in increasing order");
        assert!(
            k <= self.log.flushes(),
            "cut after flush {k} of {}",
            self.log.flushes()
        );
        while self.at_flush < k {
            for w in &self.log.epochs[self.at_flush] {
                self.log
                    .apply(&self.durable_file, w, None, self.sector_bytes)?;
            }
            self.at_flush += 1;
        }
        sparse_copy(&self.durable, out)?;
        let img = OpenOptions::new()
            .write(true)
            .open(out)
            .map_err(|e| DiskError::Io {
                op: "open",
                path: out.to_path_buf(),
                source: e,
            })?;
        let mut fates = Vec::new();
        for w in &self.log.epochs[k] {
            let fate = if drop_all {
                Fate::Dropped
            } else {
                match rng.gen_range(0..10) {
                    0..=3 => Fate::Kept,
                    4..=7 => Fate::Dropped,
                    _ => {
                        let sectors = (w.len_bytes as usize).div_ceil(self.sector_bytes);
                        Fate::Torn((0..sectors).map(|_| rng.gen_bool(0.5)).collect())
                    }
                }
            };
            match &fate {
                Fate::Kept => self.log.apply(&img, w, None, self.sector_bytes)?,
                Fate::Torn(mask) => self.log.apply(&img, w, Some(mask), self.sector_bytes)?,
                Fate::Dropped => {}
            }
            fates.push(fate);
        }
        Ok(fates)
    }
}
