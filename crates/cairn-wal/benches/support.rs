//! Helpers every cairn benchmark shares: where to run (on the project's disk, not tmpfs), what
//! file system that is, and the `name: value` output. Included by `#[path]` from
//! `wal/benches/wal.rs`, `benches/engine.rs` and `benches/layers.rs`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn figure(name: &str, value: f64, decimals: usize) {
    println!("{name}: {value:.decimals$}");
}

/// `$CAIRN_BENCH_DIR`, else `<target dir>/bench`: the target dir is on the disk the project is
/// built on, which is the disk we want, where `/tmp` may be tmpfs.
pub fn bench_base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAIRN_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("bench");
    }
    // The bench runs as `<target>/release/deps/<name>-<hash>`.
    let exe = std::env::current_exe().expect("path of the bench binary");
    exe.ancestors()
        .nth(3)
        .expect("the bench binary lives in <target>/<profile>/deps")
        .join("bench")
}

/// The file system type of the mount holding `path`, from `/proc/mounts` (longest mount point
/// that is a prefix), so the output says what kind of disk the numbers are about.
pub fn fs_type_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            Some((PathBuf::from(mount_point), fs_type.to_string()))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.components().count())
        .map(|(_, fs_type)| fs_type)
}

/// Where a benchmark that writes trees runs: a fresh file system (ext4, or xfs with
/// `CAIRN_BENCH_FS=xfs`) made for the run on a loop device (as root, with its `mkfs` present),
/// so the figures do not drift with the age of the machine's disk; otherwise a tempdir under
/// [`bench_base_dir`]. Unmounted and deleted on drop.
#[derive(Debug)]
pub struct BenchFs {
    path: PathBuf,
    /// The loop-mounted image and its mount point, when there is one.
    mounted: Option<(PathBuf, PathBuf)>,
    _temp: Option<tempfile::TempDir>,
}

/// Sparse size of the fresh file system's image: only what is written takes disk space.
const FRESH_FS_BYTES: u64 = 16 << 30;

/// The kind of a fresh bench file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreshFs {
    Ext4,
    Xfs,
}

impl FreshFs {
    pub fn name(self) -> &'static str {
        match self {
            FreshFs::Ext4 => "ext4",
            FreshFs::Xfs => "xfs",
        }
    }

    fn mkfs(self) -> std::process::Command {
        match self {
            FreshFs::Ext4 => {
                let mut c = std::process::Command::new("mkfs.ext4");
                // Inode tables and journal written now: otherwise ext4lazyinit zeroes them in
                // the background during the measurements.
                c.args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]);
                c
            }
            FreshFs::Xfs => {
                let mut c = std::process::Command::new("mkfs.xfs");
                c.args(["-q", "-f"]);
                c
            }
        }
    }
}

impl BenchFs {
    /// Makes the bench directory and says on stderr what it is. `tag` names the image and
    /// mount point (with this process id), so runs side by side never share one.
    pub fn new(tag: &str) -> BenchFs {
        let kind = match std::env::var("CAIRN_BENCH_FS").as_deref() {
            Ok("xfs") => FreshFs::Xfs,
            _ => FreshFs::Ext4,
        };
        let base = bench_base_dir();
        std::fs::create_dir_all(&base).expect("create the bench base directory");
        match Self::fresh(&base, tag, kind) {
            Ok(fs) => {
                eprintln!(
                    "bench dir: {} (a fresh {} on a loop device, made for this run)",
                    fs.path.display(),
                    kind.name()
                );
                fs
            }
            Err(why) => {
                let temp = tempfile::Builder::new()
                    .prefix(&format!("cairn-{tag}-bench-"))
                    .tempdir_in(&base)
                    .expect("create the bench tempdir");
                let path = temp.path().to_path_buf();
                let fs_type = fs_type_of(&path).unwrap_or_else(|| "unknown".to_string());
                eprintln!(
                    "bench dir: {} ({fs_type}, the current disk: no fresh file system because {why})",
                    path.display()
                );
                if fs_type == "tmpfs" || fs_type == "ramfs" {
                    eprintln!(
                        "warning: {fs_type} ignores syncs; set CAIRN_BENCH_DIR to a real disk"
                    );
                }
                BenchFs {
                    path,
                    mounted: None,
                    _temp: Some(temp),
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the figures come from a file system made for this run.
    pub fn is_fresh(&self) -> bool {
        self.mounted.is_some()
    }

    /// A fresh xfs for a second pass of a bench whose first pass ran on this fresh file
    /// system (its `syncfs` is a log force alone, where ext4's also writes back in place every
    /// metadata block the journal committed: docs/drivers.md, "Which file system holds the
    /// root"). `None` when this one is not fresh, or is xfs already (`CAIRN_BENCH_FS=xfs`), or
    /// no xfs can be made here; stderr says which.
    pub fn xfs_beside(&self, tag: &str) -> Option<BenchFs> {
        if !self.is_fresh() {
            return None;
        }
        if fs_type_of(&self.path).as_deref() == Some("xfs") {
            eprintln!("no second xfs pass: the figures above are xfs's");
            return None;
        }
        let base = bench_base_dir();
        match Self::fresh(&base, tag, FreshFs::Xfs) {
            Ok(xfs) => {
                eprintln!(
                    "xfs dir: {} (a fresh xfs on a loop device)",
                    xfs.path.display()
                );
                Some(xfs)
            }
            Err(why) => {
                eprintln!("no xfs figures: {why}");
                None
            }
        }
    }

    fn fresh(base: &Path, tag: &str, kind: FreshFs) -> Result<BenchFs, String> {
        if std::env::var_os("CAIRN_BENCH_NO_LOOP").is_some() {
            return Err("CAIRN_BENCH_NO_LOOP is set".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let id = format!("cairn-bench-{tag}-{}", std::process::id());
        let image = base.join(format!("{id}.{}", kind.name()));
        let mnt = base.join(format!("{id}.mnt"));
        let file = std::fs::File::create(&image).map_err(|e| format!("create image: {e}"))?;
        file.set_len(FRESH_FS_BYTES)
            .map_err(|e| format!("size image: {e}"))?;
        drop(file);
        let cleanup = |why: String| {
            let _ = std::fs::remove_file(&image);
            let _ = std::fs::remove_dir(&mnt);
            why
        };
        let mkfs = kind.mkfs().arg(&image).status();
        match mkfs {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(cleanup(format!("mkfs.{} failed: {s}", kind.name()))),
            Err(e) => return Err(cleanup(format!("mkfs.{} did not run: {e}", kind.name()))),
        }
        std::fs::create_dir_all(&mnt).map_err(|e| cleanup(format!("mkdir: {e}")))?;
        // `-o loop` attaches a loop device with autoclear: umount detaches it.
        let mounted = std::process::Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&image)
            .arg(&mnt)
            .status();
        match mounted {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(cleanup(format!("mount -o loop failed: {s}"))),
            Err(e) => return Err(cleanup(format!("mount did not run: {e}"))),
        }
        Ok(BenchFs {
            path: mnt.clone(),
            mounted: Some((image, mnt)),
            _temp: None,
        })
    }
}

impl Drop for BenchFs {
    fn drop(&mut self) {
        if let Some((image, mnt)) = self.mounted.take() {
            let ok = std::process::Command::new("umount")
                .arg(&mnt)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                let _ = std::fs::remove_dir(&mnt);
                let _ = std::fs::remove_file(&image);
            } else {
                eprintln!(
                    "warning: could not unmount {}; image {} left behind",
                    mnt.display(),
                    image.display()
                );
            }
        }
    }
}

/// `syncfs(2)` of the file system holding `path`, as `sync -f` does.
pub fn syncfs(path: &Path) {
    let f = std::fs::File::open(path).expect("open for syncfs");
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    assert_eq!(
        rc,
        0,
        "syncfs {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Peak resident memory of the children this process has waited for, in KiB
/// (`getrusage(RUSAGE_CHILDREN)`: the largest of them).
pub fn children_peak_rss_kb() -> u64 {
    // SAFETY: getrusage writes only into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ru.ru_maxrss).unwrap_or(0)
}
