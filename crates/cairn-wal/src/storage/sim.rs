//! An in-memory file system that knows what is durable, for crash tests.
//!
//! Every file keeps two contents: what was written, and what the last `sync_data` made durable,
//! with the writes since then kept in order. Directory entry changes (create, rename, remove)
//! are pending until `sync_dir` on a directory they touch. [`SimStorage::power_cut`] builds the
//! state a real disk could show after losing power, choosing from a seed: each pending write is
//! kept, dropped, or torn (a prefix of it ending on a 512-byte sector boundary), and each pending
//! directory change is kept or lost (a rename is atomic: kept or lost whole). Directories
//! themselves, made by `create_dir_all`, are durable at once: the log creates its directory once,
//! before it has anything to protect.
//!
//! Faults can be injected: a failing `sync_data` or `sync_dir`, and a write budget after which a
//! write stores only a prefix and fails.

use super::{Storage, StorageFile};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The size of the unit a torn write is cut at.
pub const SECTOR_BYTES: u64 = 512;

/// Faults to inject. Counters count down on each operation of their kind; at zero, that operation
/// fails with an IO error (and the counter is cleared, so one fault fires once).
#[derive(Clone, Debug, Default)]
pub struct SimFaults {
    /// Successful `sync_data` calls left before one fails.
    pub fail_sync_after: Option<u64>,
    /// Successful `sync_dir` calls left before one fails.
    pub fail_dir_sync_after: Option<u64>,
    /// Bytes that writes may still store; the write that crosses it stores a prefix and fails.
    pub write_budget_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link { path: PathBuf, ino: u64 },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl DirOp {
    fn touches(&self, dir: &Path) -> bool {
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => in_dir(path),
            DirOp::Rename { from, to } => in_dir(from) || in_dir(to),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to } => {
                // A rename whose source did not survive has nothing to move.
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum ContentOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl ContentOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            ContentOp::Write { offset, data } => write_into(content, *offset, data),
            ContentOp::SetLen(len) => content.resize(to_usize(*len), 0),
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("simulated files fit in memory")
}

fn write_into(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(data);
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<ContentOp>,
}

#[derive(Debug, Default)]
struct SimFs {
    /// Bumped by every power cut; handles from an earlier generation are dead.
    generation: u64,
    dirs: BTreeSet<PathBuf>,
    current: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    faults: SimFaults,
}

/// A simulated file system; clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    fs: Arc<Mutex<SimFs>>,
}

#[derive(Debug)]
struct SimFile {
    fs: Arc<Mutex<SimFs>>,
    ino: u64,
    generation: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

impl SimStorage {
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimFs> {
        // A panic while holding the lock is already a failed test; keep its state readable.
        self.fs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the injected faults.
    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// Lose power: keep, drop or tear what was not durable, chosen from `seed`. Open handles die.
    /// The same state and seed always give the same result.
    pub fn power_cut(&self, seed: u64) {
        let mut fs = self.lock();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut names = fs.durable.clone();
        for op in &fs.pending {
            if rng.gen_bool(0.5) {
                op.apply(&mut names);
            }
        }
        let live: BTreeSet<u64> = names.values().copied().collect();
        let mut inodes = BTreeMap::new();
        for (&ino, inode) in &fs.inodes {
            let mut content = inode.durable.clone();
            for op in &inode.pending {
                match (rng.gen_range(0..3u8), op) {
                    (0, _) => op.apply(&mut content),
                    (2, ContentOp::Write { offset, data }) => {
                        let end = offset + data.len() as u64;
                        let first = offset.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
                        let boundaries: Vec<u64> = (first..end)
                            .step_by(to_usize(SECTOR_BYTES))
                            .filter(|b| b > offset)
                            .collect();
                        if !boundaries.is_empty() {
                            let cut = boundaries[rng.gen_range(0..boundaries.len())];
                            let kept = to_usize(cut - offset);
                            write_into(&mut content, *offset, &data[..kept]);
                        }
                    }
                    _ => {}
                }
            }
            if live.contains(&ino) {
                inodes.insert(
                    ino,
                    Inode {
                        durable: content.clone(),
                        current: content,
                        pending: Vec::new(),
                    },
                );
            }
        }
        fs.inodes = inodes;
        fs.current = names.clone();
        fs.durable = names;
        fs.pending.clear();
        fs.generation += 1;
        fs.faults = SimFaults::default();
    }

    /// The written (not necessarily durable) contents of a file, for tests that damage files.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let fs = self.lock();
        let ino = fs.current.get(path).ok_or_else(|| not_found(path))?;
        Ok(fs.inodes[ino].current.clone())
    }

    /// Overwrite a file's contents durably, as outside damage would: no pending state involved.
    pub fn write_file_durable(&self, path: &Path, content: &[u8]) -> io::Result<()> {
        let mut fs = self.lock();
        let ino = *fs.current.get(path).ok_or_else(|| not_found(path))?;
        let inode = fs.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        inode.current = content.to_vec();
        inode.durable = content.to_vec();
        inode.pending.clear();
        Ok(())
    }

    /// Every file path that exists now, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().current.keys().cloned().collect()
    }
}

impl SimFs {
    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(dir) if self.dirs.contains(dir) => Ok(()),
            _ => Err(not_found(path)),
        }
    }

    fn new_file(&mut self, path: &Path) -> u64 {
        self.next_ino += 1;
        let ino = self.next_ino;
        self.inodes.insert(ino, Inode::default());
        self.current.insert(path.to_path_buf(), ino);
        self.pending.push(DirOp::Link {
            path: path.to_path_buf(),
            ino,
        });
        ino
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        for ancestor in path.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                fs.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let fs = self.lock();
        if !fs.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = fs.current.keys().filter(|p| p.parent() == Some(path));
        let dirs = fs.dirs.iter().filter(|p| p.parent() == Some(path));
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let fs = self.lock();
        let ino = *fs.current.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile {
            fs: Arc::clone(&self.fs),
            ino,
            generation: fs.generation,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut fs = self.lock();
        fs.check_parent(path)?;
        let ino = match fs.current.get(path).copied() {
            Some(ino) => {
                let inode = fs.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
                inode.current.clear();
                inode.pending.push(ContentOp::SetLen(0));
                ino
            }
            None => fs.new_file(path),
        };
        Ok(Box::new(SimFile {
            fs: Arc::clone(&self.fs),
            ino,
            generation: fs.generation,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.check_parent(to)?;
        let ino = fs.current.remove(from).ok_or_else(|| not_found(from))?;
        fs.current.insert(to.to_path_buf(), ino);
        fs.pending.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.current.remove(path).ok_or_else(|| not_found(path))?;
        fs.pending.push(DirOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        if !fs.dirs.contains(path) {
            return Err(not_found(path));
        }
        if let Some(left) = fs.faults.fail_dir_sync_after.as_mut() {
            if *left == 0 {
                fs.faults.fail_dir_sync_after = None;
                return Err(injected("sync_dir"));
            }
            *left -= 1;
        }
        let pending = std::mem::take(&mut fs.pending);
        let (now, later): (Vec<DirOp>, Vec<DirOp>) =
            pending.into_iter().partition(|op| op.touches(path));
        for op in &now {
            op.apply(&mut fs.durable);
        }
        fs.pending = later;
        Ok(())
    }
}

impl SimFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut SimFs, u64) -> io::Result<T>) -> io::Result<T> {
        let mut fs = self.fs.lock().unwrap_or_else(|p| p.into_inner());
        if fs.generation != self.generation || !fs.inodes.contains_key(&self.ino) {
            return Err(io::Error::other("stale handle: the power was cut"));
        }
        f(&mut fs, self.ino)
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with_inode(|fs, ino| {
            let content = &fs.inodes[&ino].current;
            let start = to_usize(offset).min(content.len());
            let n = buf.len().min(content.len() - start);
            buf[..n].copy_from_slice(&content[start..start + n]);
            Ok(n)
        })
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with_inode(|fs, ino| {
            let (data, result) = match fs.faults.write_budget_bytes.as_mut() {
                Some(left) if (buf.len() as u64) > *left => {
                    let kept = to_usize(*left);
                    fs.faults.write_budget_bytes = None;
                    (&buf[..kept], Err(injected("write")))
                }
                Some(left) => {
                    *left -= buf.len() as u64;
                    (buf, Ok(()))
                }
                None => (buf, Ok(())),
            };
            let inode = fs.inodes.get_mut(&ino).ok_or_else(|| injected("inode"))?;
            write_into(&mut inode.current, offset, data);
            inode.pending.push(ContentOp::Write {
                offset,
                data: data.to_vec(),
            });
            result
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with_inode(|fs, ino| {
            if let Some(left) = fs.faults.fail_sync_after.as_mut() {
                if *left == 0 {
                    fs.faults.fail_sync_after = None;
                    return Err(injected("sync_data"));
                }
                *left -= 1;
            }
            let inode = fs.inodes.get_mut(&ino).ok_or_else(|| injected("inode"))?;
            for op in std::mem::take(&mut inode.pending) {
                op.apply(&mut inode.durable);
            }
            debug_assert_eq!(inode.durable, inode.current);
            Ok(())
        })
    }

    fn size_bytes(&self) -> io::Result<u64> {
        self.with_inode(|fs, ino| Ok(fs.inodes[&ino].current.len() as u64))
    }

    fn set_size_bytes(&mut self, len: u64) -> io::Result<()> {
        self.with_inode(|fs, ino| {
            let inode = fs.inodes.get_mut(&ino).ok_or_else(|| injected("inode"))?;
            inode.current.resize(to_usize(len), 0);
            inode.pending.push(ContentOp::SetLen(len));
            Ok(())
        })
    }
}
