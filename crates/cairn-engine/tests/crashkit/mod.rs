//! Shared by the crash tests: the operations a child runs, the acknowledgement log it writes,
//! the model the parent keeps, and the check run after every crash.
//!
//! Log lines: `B <thread> <json op>` before a command is sent, `A <thread> <json op>` once it
//! is acknowledged. Every line is written with one `write` call, so a killed child leaves
//! whole lines plus at most a torn last line, which the reader ignores.

#![allow(dead_code, clippy::unwrap_used)]

use cairn_engine::{Engine, EngineHandle, EngineOptions, Info};
use cairn_state::types::{DriverKind, Kind, Mount};
use cairn_state::Labels;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Prepare {
        key: String,
        parent: Option<String>,
        view: bool,
        labels: Labels,
    },
    /// Write a file into an Active snapshot's own tree (not an engine command).
    Write {
        key: String,
        file: String,
        data: Vec<u8>,
    },
    Commit {
        name: String,
        key: String,
        labels: Labels,
    },
    Remove {
        key: String,
    },
    Update {
        key: String,
        labels: Labels,
    },
    Checkpoint,
    Close,
    /// Import the tar `layer_tar(entries)` on the layer `parent_chain` (the layer named
    /// `parent`); `pin` as `layer import` does.
    ImportLayer {
        name: String,
        parent: Option<String>,
        parent_chain: Option<String>,
        entries: Vec<(String, Vec<u8>)>,
        pin: bool,
    },
    /// Import `layers` (each an `ImportLayer`, base first) as a parallel image load does on
    /// overlay: all staged at once as detached imports, then attached in chain order. A crash
    /// leaves a prefix of them, never a layer without its parent.
    ImportChain {
        layers: Vec<Op>,
    },
    RemoveLayer {
        chain: String,
    },
    PutImage {
        image: String,
        top: String,
    },
    RemoveImage {
        image: String,
    },
    CreateContainer {
        name: String,
        image: String,
    },
    RemoveContainer {
        name: String,
    },
}

/// A deterministic layer tar: a directory per entry path, regular files with their data; an
/// entry whose base name starts with `.wh.` is a whiteout (empty).
pub fn layer_tar(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for (path, data) in entries {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for d in &parts[..parts.len() - 1] {
            acc.push_str(d);
            acc.push('/');
            if dirs.insert(acc.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(1_600_000_000);
                h.set_size(0);
                b.append_data(&mut h, &acc, std::io::empty()).unwrap();
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// DiffID and ChainID (text forms) of a layer's tar on the layer `parent_chain`.
pub fn layer_ids(tar: &[u8], parent_chain: Option<&str>) -> (String, String) {
    use cairn_layer::{chain_id, Digest};
    let diff = Digest::of(tar);
    let parent: Option<Digest> = parent_chain.map(|p| p.parse().expect("parent chain id"));
    (
        diff.to_string(),
        chain_id(parent.as_ref(), &diff).to_string(),
    )
}

fn fake_digest(what: &str) -> String {
    cairn_layer::Digest::of(what.as_bytes()).to_string()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The directory a snapshot's own files live in, from its mounts: a bind's source, an
/// overlay's upperdir; `None` for a read-only overlay (no single directory).
pub fn own_dir(mounts: &[Mount]) -> Option<PathBuf> {
    let m = mounts.first()?;
    if m.kind == "bind" {
        return Some(m.source.clone());
    }
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir=").map(PathBuf::from))
}

/// A snapshot's own files as a directory: a bind's source or an overlay's upperdir as they
/// are, or a block image loop-mounted at a private point for as long as this lives.
#[derive(Debug)]
pub enum OwnTree {
    Dir(PathBuf),
    Image(tempfile::TempDir),
}

impl OwnTree {
    pub fn path(&self) -> &Path {
        match self {
            OwnTree::Dir(d) => d,
            OwnTree::Image(t) => t.path(),
        }
    }
}

impl Drop for OwnTree {
    fn drop(&mut self) {
        if let OwnTree::Image(t) = self {
            // The unmount drops the loop device's last user: it detaches itself (autoclear).
            if let Err(e) = cairn_driver::mount::unmount(t.path()) {
                panic!("unmount image view {}: {e}", t.path().display());
            }
        }
    }
}

/// True when the mounts are one image attached through a loop device (block driver).
pub fn is_image(mounts: &[Mount]) -> bool {
    matches!(mounts, [m] if m.options.iter().any(|o| o == "loop"))
}

/// The snapshot's own tree from its mounts (see `own_dir`); a block image is mounted as its
/// mounts say (Active read-write, View read-only), as a user would, at a temporary point
/// outside the root.
pub fn own_tree(mounts: &[Mount]) -> Option<OwnTree> {
    try_own_tree(mounts).unwrap_or_else(|e| panic!("{e}"))
}

/// `own_tree`, with a failed mount of the image as an error.
pub fn try_own_tree(mounts: &[Mount]) -> Result<Option<OwnTree>, String> {
    if !is_image(mounts) {
        return Ok(own_dir(mounts).map(OwnTree::Dir));
    }
    let point = tempfile::Builder::new()
        .prefix("crashkit-image-")
        .tempdir()
        .map_err(|e| format!("mount point: {e}"))?;
    cairn_driver::mount::mount_all(mounts, point.path())
        .map_err(|e| format!("mount {mounts:?}: {e}"))?;
    Ok(Some(OwnTree::Image(point)))
}

/// No mount under `root` and no loop device backed by a file under it: recovery and the
/// engine's close left nothing attached (block's images, views and staged trees).
pub fn check_nothing_attached(root: &Path) {
    let root = std::fs::canonicalize(root).expect("canonical root");
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounted: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&root))
        .collect();
    assert!(
        mounted.is_empty(),
        "mounts left under the root: {mounted:?}"
    );
    // An auto-clearing loop device detaches when its last user goes; give it a moment.
    let mut bound = Vec::new();
    for _ in 0..50 {
        bound.clear();
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let backing = e.path().join("loop/backing_file");
                if let Ok(file) = std::fs::read_to_string(&backing) {
                    if Path::new(file.trim()).starts_with(&root) {
                        bound.push(format!(
                            "{}: {}",
                            e.file_name().to_string_lossy(),
                            file.trim()
                        ));
                    }
                }
            }
        }
        if bound.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("loop devices left bound to images under the root: {bound:?}");
}

/// Run one operation through the handle. `Close` consumes nothing here: the caller closes.
pub fn exec(h: &EngineHandle, op: &Op) -> Result<(), String> {
    match op {
        Op::Prepare {
            key,
            parent,
            view,
            labels,
        } => {
            let r = if *view {
                h.view(key, parent.as_deref(), labels.clone())
            } else {
                h.prepare(key, parent.as_deref(), labels.clone())
            };
            r.map(|_| ()).map_err(|e| e.to_string())
        }
        Op::Write { key, file, data } => {
            let mounts = h.mounts(key).map_err(|e| e.to_string())?;
            let dir = own_tree(&mounts).ok_or("no own dir")?;
            // One write call: a kill leaves the file absent, empty or a prefix.
            let mut f = std::fs::File::create(dir.path().join(file)).map_err(|e| e.to_string())?;
            f.write_all(data).map_err(|e| e.to_string())
        }
        Op::Commit { name, key, labels } => h
            .commit(name, key, labels.clone())
            .map_err(|e| e.to_string()),
        Op::Remove { key } => h.remove(key).map_err(|e| e.to_string()),
        Op::Update { key, labels } => {
            let mut info = h.stat(key).map_err(|e| e.to_string())?;
            info.labels = labels.clone();
            h.update(info, &[]).map(|_| ()).map_err(|e| e.to_string())
        }
        Op::Checkpoint => h.checkpoint().map_err(|e| e.to_string()),
        Op::Close => Ok(()),
        Op::ImportLayer {
            parent_chain,
            entries,
            pin,
            ..
        } => {
            let tar = layer_tar(entries);
            let (diff, chain) = layer_ids(&tar, parent_chain.as_deref());
            let options = cairn_engine::ImportOptions {
                parent: parent_chain.clone(),
                pin: *pin,
                expected_diff_id: None,
            };
            let got = h
                .import_layer(Box::new(std::io::Cursor::new(tar)), options)
                .map_err(|e| e.to_string())?;
            if got.chain_id != chain || got.diff_id != diff {
                return Err(format!("import answered {got:?}, expected {chain} {diff}"));
            }
            Ok(())
        }
        Op::ImportChain { layers } => import_chain(h, layers),
        Op::RemoveLayer { chain } => h.remove_layer(chain).map_err(|e| e.to_string()),
        Op::PutImage { image, top } => h
            .put_image(
                image,
                top,
                &fake_digest(&format!("manifest {image}")),
                &fake_digest(&format!("config {image}")),
            )
            .map_err(|e| e.to_string()),
        Op::RemoveImage { image } => h.remove_image(image).map_err(|e| e.to_string()),
        Op::CreateContainer { name, image } => h
            .create_container(name, None, Some(image))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Op::RemoveContainer { name } => h.remove_container(name).map_err(|e| e.to_string()),
    }
}

/// Stage every layer of `layers` at once (detached imports), then attach them in order.
fn import_chain(h: &EngineHandle, layers: &[Op]) -> Result<(), String> {
    let mut wanted = Vec::new();
    for layer in layers {
        let Op::ImportLayer {
            parent_chain,
            entries,
            pin,
            ..
        } = layer
        else {
            return Err(format!("not a layer: {layer:?}"));
        };
        let tar = layer_tar(entries);
        let (diff, chain) = layer_ids(&tar, parent_chain.as_deref());
        wanted.push((tar, *pin, parent_chain.clone(), diff, chain));
    }
    let staged: Vec<Result<cairn_engine::StagedLayer, String>> = std::thread::scope(|s| {
        let jobs: Vec<_> = wanted
            .iter()
            .map(|(tar, pin, ..)| {
                let h = h.clone();
                let options = cairn_engine::StageOptions {
                    pin: *pin,
                    expected_diff_id: None,
                };
                let input = Box::new(std::io::Cursor::new(tar.clone()));
                s.spawn(move || h.stage_layer(input, options).map_err(|e| e.to_string()))
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err("a stage thread panicked".into()))
            })
            .collect()
    });
    let staged: Vec<cairn_engine::StagedLayer> = staged.into_iter().collect::<Result<_, _>>()?;
    for (s, (_, _, parent, diff, chain)) in staged.into_iter().zip(&wanted) {
        let got = h
            .attach_layer(s, parent.as_deref())
            .map_err(|e| e.to_string())?;
        if &got.chain_id != chain || &got.diff_id != diff {
            return Err(format!("attach answered {got:?}, expected {chain} {diff}"));
        }
    }
    Ok(())
}

/// The child's acknowledgement log.
#[derive(Debug)]
pub struct AckLog {
    file: std::sync::Mutex<std::fs::File>,
}

impl AckLog {
    pub fn open(path: &Path) -> AckLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open ack log");
        AckLog {
            file: std::sync::Mutex::new(file),
        }
    }

    fn line(&self, tag: &str, thread: usize, op: &Op) {
        let line = format!(
            "{tag} {thread} {}\n",
            serde_json::to_string(op).expect("op encodes")
        );
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(line.as_bytes()).expect("write ack log");
    }

    pub fn begin(&self, thread: usize, op: &Op) {
        self.line("B", thread, op);
    }

    pub fn ack(&self, thread: usize, op: &Op) {
        self.line("A", thread, op);
    }
}

/// What a log says: acknowledged operations in order, and per thread the operation begun but
/// not acknowledged.
#[derive(Debug, Default)]
pub struct LogView {
    pub acked: Vec<Op>,
    pub inflight: Vec<Op>,
}

pub fn read_log(path: &Path) -> LogView {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut view = LogView::default();
    let mut open: BTreeMap<usize, Op> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(tag), Some(t), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(thread) = t.parse::<usize>() else {
            continue;
        };
        let Ok(op) = serde_json::from_str::<Op>(json) else {
            continue;
        };
        match tag {
            "B" => {
                open.insert(thread, op);
            }
            "A" => {
                open.remove(&thread);
                view.acked.push(op);
            }
            _ => {}
        }
    }
    view.inflight = open.into_values().collect();
    view
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MSnap {
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: Labels,
    /// The snapshot's own tree (vfs: a full copy of its parent plus its writes; overlay: its
    /// writes only).
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MLayer {
    pub diff_id: String,
    pub parent: Option<String>,
    pub pinned: bool,
    pub tar: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub snaps: BTreeMap<String, MSnap>,
    /// Layers by ChainID.
    pub layers: BTreeMap<String, MLayer>,
    /// Image name -> top layer.
    pub images: BTreeMap<String, String>,
    /// Container name -> layer.
    pub containers: BTreeMap<String, String>,
    /// vfs, btrfs, block: a child's tree starts as a copy (clone) of its parent's.
    pub full_copy: bool,
}

impl Model {
    pub fn new(driver: DriverKind) -> Model {
        Model {
            snaps: BTreeMap::new(),
            layers: BTreeMap::new(),
            images: BTreeMap::new(),
            containers: BTreeMap::new(),
            full_copy: matches!(
                driver,
                DriverKind::Vfs | DriverKind::Btrfs | DriverKind::Block
            ),
        }
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Prepare {
                key,
                parent,
                view,
                labels,
            } => {
                let files = match (parent, *view, self.full_copy) {
                    (Some(p), false, true) => self.snaps[p].files.clone(),
                    _ => BTreeMap::new(),
                };
                let kind = if *view { Kind::View } else { Kind::Active };
                self.snaps.insert(
                    key.clone(),
                    MSnap {
                        kind,
                        parent: parent.clone(),
                        labels: labels.clone(),
                        files,
                    },
                );
            }
            Op::Write { key, file, data } => {
                self.snaps
                    .get_mut(key)
                    .expect("write to a known key")
                    .files
                    .insert(file.clone(), data.clone());
            }
            Op::Commit { name, key, labels } => {
                let mut s = self.snaps.remove(key).expect("commit of a known key");
                s.kind = Kind::Committed;
                s.labels = labels.clone();
                self.snaps.insert(name.clone(), s);
            }
            Op::Remove { key } => {
                self.snaps.remove(key);
            }
            Op::Update { key, labels } => {
                self.snaps
                    .get_mut(key)
                    .expect("update of a known key")
                    .labels = labels.clone();
            }
            Op::Checkpoint | Op::Close => {}
            Op::ImportLayer {
                parent_chain,
                entries,
                pin,
                ..
            } => {
                let tar = layer_tar(entries);
                let (diff_id, chain) = layer_ids(&tar, parent_chain.as_deref());
                if let Some(l) = self.layers.get_mut(&chain) {
                    // A dedupe: the existing layer is pinned if asked.
                    l.pinned |= *pin;
                    return;
                }
                self.layers.insert(
                    chain.clone(),
                    MLayer {
                        diff_id,
                        parent: parent_chain.clone(),
                        pinned: *pin,
                        tar,
                    },
                );
                self.snaps.insert(
                    chain,
                    MSnap {
                        kind: Kind::Committed,
                        parent: parent_chain.clone(),
                        labels: Labels::default(),
                        files: BTreeMap::new(),
                    },
                );
            }
            Op::ImportChain { layers } => {
                for layer in layers {
                    self.apply(layer);
                }
            }
            Op::RemoveLayer { chain } => {
                if self.children(chain) > 0 || self.holders(chain) > 0 {
                    return; // refused
                }
                if let Some(l) = self.layers.get_mut(chain) {
                    l.pinned = false;
                    self.release(chain);
                }
            }
            Op::PutImage { image, top } => {
                if !self.layers.contains_key(top) {
                    return;
                }
                if let Some(old) = self.images.insert(image.clone(), top.clone()) {
                    self.release(&old);
                }
            }
            Op::RemoveImage { image } => {
                if let Some(old) = self.images.remove(image) {
                    self.release(&old);
                }
            }
            Op::CreateContainer { name, image } => {
                let Some(top) = self.images.get(image).cloned() else {
                    return;
                };
                self.containers.insert(name.clone(), top.clone());
                let init = format!("{name}-init");
                self.snaps.insert(
                    init.clone(),
                    MSnap {
                        kind: Kind::Committed,
                        parent: Some(top),
                        labels: Labels::default(),
                        files: BTreeMap::new(),
                    },
                );
                self.snaps.insert(
                    name.clone(),
                    MSnap {
                        kind: Kind::Active,
                        parent: Some(init),
                        labels: Labels::default(),
                        files: BTreeMap::new(),
                    },
                );
            }
            Op::RemoveContainer { name } => {
                if let Some(layer) = self.containers.remove(name) {
                    self.snaps.remove(name);
                    self.snaps.remove(&format!("{name}-init"));
                    self.release(&layer);
                }
            }
        }
    }

    fn children(&self, chain: &str) -> usize {
        self.layers
            .values()
            .filter(|l| l.parent.as_deref() == Some(chain))
            .count()
    }

    fn holders(&self, chain: &str) -> usize {
        self.images.values().filter(|t| *t == chain).count()
            + self.containers.values().filter(|t| *t == chain).count()
    }

    fn count(&self, chain: &str) -> usize {
        usize::from(self.layers[chain].pinned) + self.children(chain) + self.holders(chain)
    }

    /// A reference to `chain` was dropped: delete it and each parent whose count is zero.
    fn release(&mut self, chain: &str) {
        let mut at = Some(chain.to_owned());
        while let Some(c) = at {
            if !self.layers.contains_key(&c) || self.count(&c) > 0 {
                break;
            }
            let l = self.layers.remove(&c).expect("layer");
            self.snaps.remove(&c);
            at = l.parent;
        }
    }

    /// Recovery collects every layer nothing holds (an import not yet recorded as held).
    pub fn collect_unheld(&mut self) {
        loop {
            let unheld: Vec<String> = self
                .layers
                .keys()
                .filter(|c| self.count(c) == 0)
                .cloned()
                .collect();
            if unheld.is_empty() {
                break;
            }
            for c in unheld {
                self.release(&c);
            }
        }
    }

    /// Snapshots whose files the model does not track (layers: checked by export; container
    /// snapshots: checked for their init files).
    pub fn opaque(&self, key: &str) -> bool {
        self.layers.contains_key(key)
            || self.containers.contains_key(key)
            || key
                .strip_suffix("-init")
                .is_some_and(|n| self.containers.contains_key(n))
    }

    #[allow(clippy::type_complexity)]
    pub fn store(
        &self,
    ) -> (
        BTreeMap<String, (String, Option<String>, u64, bool, usize, usize)>,
        BTreeMap<String, (String, Vec<String>)>,
        BTreeMap<String, (String, String, String, bool)>,
    ) {
        let layers = self
            .layers
            .iter()
            .map(|(c, l)| {
                (
                    c.clone(),
                    (
                        l.diff_id.clone(),
                        l.parent.clone(),
                        l.tar.len() as u64,
                        l.pinned,
                        self.children(c),
                        self.holders(c),
                    ),
                )
            })
            .collect();
        let images = self
            .images
            .iter()
            .map(|(n, top)| {
                let mut chain = vec![top.clone()];
                while let Some(p) = self.layers[chain.last().expect("top")].parent.clone() {
                    chain.push(p);
                }
                chain.reverse();
                (n.clone(), (top.clone(), chain))
            })
            .collect();
        let containers = self
            .containers
            .iter()
            .map(|(n, l)| (n.clone(), (l.clone(), format!("{n}-init"), n.clone(), true)))
            .collect();
        (layers, images, containers)
    }

    pub fn meta(&self) -> BTreeMap<String, (Kind, Option<String>, Labels)> {
        self.snaps
            .iter()
            .map(|(k, s)| (k.clone(), (s.kind, s.parent.clone(), s.labels.clone())))
            .collect()
    }
}

#[allow(clippy::type_complexity)]
pub fn actual_store(
    h: &EngineHandle,
) -> (
    BTreeMap<String, (String, Option<String>, u64, bool, usize, usize)>,
    BTreeMap<String, (String, Vec<String>)>,
    BTreeMap<String, (String, String, String, bool)>,
) {
    let layers = h
        .layers()
        .expect("layers")
        .into_iter()
        .map(|l| {
            (
                l.chain_id,
                (
                    l.diff_id,
                    l.parent,
                    l.size_bytes,
                    l.pinned,
                    l.children as usize,
                    l.holders as usize,
                ),
            )
        })
        .collect();
    let images = h
        .images()
        .expect("images")
        .into_iter()
        .map(|i| (i.name, (i.top, i.layers)))
        .collect();
    let containers = h
        .containers()
        .expect("containers")
        .into_iter()
        .map(|c| (c.name, (c.layer, c.init_key, c.key, c.ready)))
        .collect();
    (layers, images, containers)
}

pub fn actual_meta(infos: &[Info]) -> BTreeMap<String, (Kind, Option<String>, Labels)> {
    infos
        .iter()
        .map(|i| (i.key.clone(), (i.kind, i.parent.clone(), i.labels.clone())))
        .collect()
}

/// Every regular file under `dir`, by relative path.
pub fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.expect("readdir");
            let p = e.path();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                go(base, &p, out);
            } else {
                let rel = p
                    .strip_prefix(base)
                    .expect("under base")
                    .display()
                    .to_string();
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

pub fn options(driver: DriverKind) -> EngineOptions {
    EngineOptions {
        driver: Some(driver),
        // Each way of a batch's durable step pinned, one per driver, so that a seed replays
        // the same sync calls (the measured choice depends on timing) and every suite that
        // runs both drivers cuts power under both ways.
        durable_step: match driver {
            DriverKind::Vfs => cairn_driver::DurableStep::PerFile,
            _ => cairn_driver::DurableStep::Syncfs,
        },
        workers: 2,
        wal: cairn_wal::WalOptions {
            segment_size_bytes: 16 << 10,
            max_record_bytes: 8 << 10,
            ..Default::default()
        },
        ..EngineOptions::default()
    }
}

/// Only the names a healthy root holds, and exactly `snapshots` snapshot directories.
pub fn check_root_names(root: &Path, snapshots: usize) {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(root).expect("read root") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        match name.as_str() {
            "LOCK" | "cairn.meta" | "checkpoint" | "index" => {}
            // The block driver's base image; its private views are all unmounted and gone.
            "block.base" if e.file_type().expect("type").is_file() => {}
            "block.views" => {
                for s in std::fs::read_dir(&p).expect("read views") {
                    bad.push(format!(
                        "block.views/{}",
                        s.expect("entry").file_name().to_string_lossy()
                    ));
                }
            }
            "wal" => {
                for w in std::fs::read_dir(&p).expect("read wal") {
                    let w = w.expect("entry").file_name().to_string_lossy().into_owned();
                    if !(w.ends_with(".wal")
                        && w.len() == 24
                        && w[..20].bytes().all(|b| b.is_ascii_digit()))
                    {
                        bad.push(format!("wal/{w}"));
                    }
                }
            }
            "staging" | "trash" => {
                for s in std::fs::read_dir(&p).expect("read dir") {
                    bad.push(format!(
                        "{name}/{}",
                        s.expect("entry").file_name().to_string_lossy()
                    ));
                }
            }
            "snapshots" => {
                let mut n = 0;
                for s in std::fs::read_dir(&p).expect("read snapshots") {
                    let s = s.expect("entry");
                    let sn = s.file_name().to_string_lossy().into_owned();
                    if !sn.bytes().all(|b| b.is_ascii_digit())
                        || !s.file_type().expect("type").is_dir()
                    {
                        bad.push(format!("snapshots/{sn}"));
                        continue;
                    }
                    n += 1;
                    for inner in std::fs::read_dir(s.path()).expect("read snapshot") {
                        let inner = inner
                            .expect("entry")
                            .file_name()
                            .to_string_lossy()
                            .into_owned();
                        if !matches!(
                            inner.as_str(),
                            "fs" | "txid" | "work" | "layer.meta" | "sync-failed" | "image"
                        ) {
                            bad.push(format!("snapshots/{sn}/{inner}"));
                        }
                    }
                }
                assert_eq!(
                    n, snapshots,
                    "snapshot directories on disk vs snapshots in the state"
                );
            }
            _ => bad.push(name),
        }
    }
    assert!(
        bad.is_empty(),
        "names under {} that the state does not account for: {bad:?}",
        root.display()
    );
}

/// Reopen `root` after a crash and check it against the model and the operations in flight;
/// returns the model updated with whichever outcome each in-flight operation had.
pub fn check_after_crash(root: &Path, driver: DriverKind, model: &Model, inflight: &[Op]) -> Model {
    let (h, report) =
        Engine::open(root, options(driver)).unwrap_or_else(|e| panic!("reopen after crash: {e}"));
    assert!(report.lost.is_empty(), "lost trees: {report:?}");
    assert!(report.unexpected.is_empty(), "unexpected names: {report:?}");
    let infos = h.walk(&[]).expect("walk");
    let actual = actual_meta(&infos);
    let actual_layers = actual_store(&h);
    // Each in-flight operation happened wholly or not at all: find the combination that
    // matches (operations of different threads touch different keys, so order is free).
    // An interrupted chain import happened for a prefix of its layers.
    let outcomes: Vec<Vec<Vec<Op>>> = inflight
        .iter()
        .map(|op| match op {
            Op::Write { .. } => vec![vec![]],
            Op::ImportChain { layers } => {
                (0..=layers.len()).map(|k| layers[..k].to_vec()).collect()
            }
            op => vec![vec![], vec![op.clone()]],
        })
        .collect();
    let combinations: usize = outcomes.iter().map(Vec::len).product();
    let mut found = None;
    for combination in 0..combinations {
        let mut m = model.clone();
        let mut pick = combination;
        for choices in &outcomes {
            for op in &choices[pick % choices.len()] {
                m.apply(op);
            }
            pick /= choices.len();
        }
        m.collect_unheld();
        if m.meta() == actual && m.store() == actual_layers {
            found = Some(m);
            break;
        }
    }
    let Some(mut m) = found else {
        panic!(
            "state after recovery matches no outcome of the in-flight operations\n in flight: {:?}\n expected (acknowledged only): {:#?}\n {:#?}\n actual: {actual:#?}\n {actual_layers:#?}",
            inflight.iter().map(op_text).collect::<Vec<_>>(),
            model.meta(),
            model.store(),
        );
    };
    // An interrupted write leaves its file absent or a prefix of what was written.
    let writes: Vec<&Op> = inflight
        .iter()
        .filter(|o| matches!(o, Op::Write { .. }))
        .collect();
    for (n, (key, snap)) in m.snaps.clone().into_iter().enumerate() {
        // A Committed snapshot has no mounts of its own (containerd's FailedPrecondition): read
        // it through a View on it (vfs: a bind of the committed tree; overlay: a bind of the
        // parent's own dir when it is the only layer, else a read-only overlay, skipped), and
        // remove the View again before the state is compared with a second reopen.
        let (mounts, probe) = if snap.kind == Kind::Committed {
            let probe = format!("crashkit-probe-view-{n}");
            let mounts = h
                .view(&probe, Some(&key), Labels::default())
                .unwrap_or_else(|e| panic!("view of committed {key}: {e}"));
            (mounts, Some(probe))
        } else {
            let mounts = h
                .mounts(&key)
                .unwrap_or_else(|e| panic!("mounts of {key}: {e}"));
            (mounts, None)
        };
        let tree = own_tree(&mounts);
        let dir = tree.as_ref().map(|t| t.path().to_path_buf());
        let on_disk = dir.as_ref().map(|d| (d.is_dir(), read_tree(d)));
        drop(tree);
        if let Some(probe) = &probe {
            h.remove(probe)
                .unwrap_or_else(|e| panic!("remove probe view {probe}: {e}"));
        }
        let (Some(dir), Some((is_dir, on_disk))) = (dir, on_disk) else {
            continue;
        };
        assert!(is_dir, "{key}: mount source {} missing", dir.display());
        if m.opaque(&key) {
            // A container's read-write tree (vfs: a copy of its init snapshot) has its files.
            if m.containers.contains_key(&key) && m.full_copy {
                for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
                    assert!(on_disk.contains_key(f), "container {key}: no {f}");
                }
            }
            continue;
        }
        let expected = match (snap.kind, &snap.parent) {
            (Kind::View, Some(p)) => m.snaps[p].files.clone(),
            _ => snap.files.clone(),
        };
        // An interrupted write (File::create, then one write) leaves its file as it was, absent,
        // empty, or a prefix of the new data; the model takes whatever it left.
        let mut expected_left = expected.clone();
        let mut on_disk_left = on_disk.clone();
        for w in &writes {
            if let Op::Write { key: k, file, data } = w {
                if *k != key {
                    continue;
                }
                let old = expected_left.remove(file);
                let got = on_disk_left.remove(file);
                let ok = match &got {
                    None => old.is_none(),
                    Some(g) => Some(g) == old.as_ref() || data.starts_with(g),
                };
                assert!(ok, "{key}/{file}: an interrupted write left neither the old contents nor a prefix of the new");
                let files = &mut m.snaps.get_mut(&key).expect("key").files;
                match got {
                    Some(g) => files.insert(file.clone(), g),
                    None => files.remove(file),
                };
            }
        }
        if on_disk_left != expected_left {
            let sum = |m: &BTreeMap<String, Vec<u8>>| -> Vec<(String, usize, u32)> {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.len(), crc32fast::hash(v)))
                    .collect()
            };
            panic!(
                "{key} ({:?}, parent {:?}): files differ from the acknowledged writes\n on disk: {:?}\n expected: {:?}\n in flight: {:?}",
                snap.kind,
                snap.parent,
                sum(&on_disk_left),
                sum(&expected_left),
                inflight.iter().map(|o| match o { Op::Write { key, file, data } => format!("Write {key}/{file} {}", data.len()), o => format!("{o:?}") }).collect::<Vec<_>>()
            );
        }
    }
    // Every layer exports to exactly the tar imported.
    for (chain, l) in &m.layers {
        let out = SharedBuf::default();
        let diff = h
            .export_layer(chain, Box::new(out.clone()))
            .unwrap_or_else(|e| panic!("export {chain}: {e}"));
        assert_eq!(diff, l.diff_id, "export of {chain}");
        assert!(
            out.0.lock().unwrap().as_slice() == l.tar.as_slice(),
            "export of {chain} differs from the imported tar"
        );
    }
    let verified = h.verify(None).expect("verify");
    assert!(
        verified.iter().all(|v| v.problem.is_none()) && verified.len() == m.layers.len(),
        "verify after recovery: {verified:?}"
    );
    let fsck = h.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "fsck after recovery: {fsck:?}");
    h.close().expect("close");
    check_root_names(root, infos.len());
    check_nothing_attached(root);
    // Recovery is done: a second open finds the same state and nothing to do.
    let (h, report2) = Engine::open(root, options(driver)).expect("second reopen");
    assert!(
        report2.dropped.is_empty() && report2.installed.is_empty(),
        "second recovery did work: {report2:?}"
    );
    assert!(
        report2.orphans_removed.is_empty() && report2.staging_removed.is_empty(),
        "{report2:?}"
    );
    assert_eq!(
        h.walk(&[]).expect("walk"),
        infos,
        "second reopen gives another state"
    );
    let fsck = h.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "fsck after second reopen: {fsck:?}");
    h.close().expect("close");
    m
}

/// A writer the test keeps a handle on.
#[derive(Clone, Default)]
pub struct SharedBuf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn op_text(o: &Op) -> String {
    match o {
        Op::Write { key, file, data } => format!("Write {key}/{file} {}", data.len()),
        Op::ImportLayer {
            name, parent, pin, ..
        } => format!("ImportLayer {name} on {parent:?} pin {pin}"),
        Op::ImportChain { layers } => {
            let names: Vec<String> = layers.iter().map(op_text).collect();
            format!("ImportChain [{}]", names.join(", "))
        }
        o => format!("{o:?}"),
    }
}

/// Copy a directory tree (a closed root) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        let ft = e.file_type().expect("type");
        if ft.is_dir() && cairn_loopfs::is_subvolume(&e.path()) {
            // A btrfs driver's tree: copied as a subvolume (a snapshot keeps every attribute
            // and the read-only flag), or the copy would not be a btrfs root.
            cairn_loopfs::snapshot_subvolume(&e.path(), &dst).expect("snapshot subvolume");
            continue;
        } else if ft.is_dir() {
            copy_dir(&e.path(), &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).expect("readlink"), &dst)
                .expect("symlink");
        } else if ft.is_file() {
            std::fs::copy(e.path(), &dst).expect("copy");
        } else {
            // Device nodes (overlay whiteouts are char 0/0) and fifos: make the same node.
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::symlink_metadata(e.path()).expect("stat");
            nix::sys::stat::mknod(
                &dst,
                nix::sys::stat::SFlag::from_bits_truncate(md.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777),
                md.rdev(),
            )
            .expect("mknod");
        }
        copy_meta(&e.path(), &dst, ft.is_symlink());
    }
    copy_meta(from, to, false);
}

/// Copy the permission bits and the extended attributes (overlay's opaque and redirect
/// markers, the layer store's own) of `from` to `to`.
fn copy_meta(from: &Path, to: &Path, symlink: bool) {
    if symlink {
        return;
    }
    let perms = std::fs::symlink_metadata(from).expect("stat").permissions();
    std::fs::set_permissions(to, perms).expect("chmod");
    for name in xattr::list(from).expect("list xattrs") {
        if let Some(v) = xattr::get(from, &name).expect("get xattr") {
            xattr::set(to, &name, &v).expect("set xattr");
        }
    }
}

/// Every failpoint compiled into the crate, found in its source.
pub fn all_failpoints() -> Vec<String> {
    let mut out = BTreeSet::new();
    fn scan(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                scan(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("read source");
                for part in text.split("fail_point!(\"").skip(1) {
                    if let Some(end) = part.find('"') {
                        out.insert(part[..end].to_owned());
                    }
                }
            }
        }
    }
    // The failpoints the engine can reach: its own and its drivers'.
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    scan(&crates.join("cairn-engine/src"), &mut out);
    scan(&crates.join("cairn-driver/src"), &mut out);
    out.into_iter().collect()
}
