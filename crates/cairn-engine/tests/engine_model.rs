//! Model-based test: random command sequences applied to the engine (vfs, a temp root) and to
//! a plain in-memory model of containerd's snapshotter semantics (written here from
//! containerd's core/snapshots/storage/bolt.go, not from the engine's state machine). Every
//! answer must agree: Ok versus the exact error class, stat, walk and usage. At random points
//! the engine is closed and reopened; at the end the walk and `fsck(false)` must be clean.
//!
//! Every Active snapshot gets a file named after its key holding "<key>#<step>"; the model
//! tracks which files each snapshot must show, and the trees are checked at creation, after
//! reopens and at the end, so children must see their parents' files.
//!
//! Seeds are printed; `CAIRN_SEED=<n>` replays one, `CAIRN_CASES=<n>` sets how many run.

mod common;

use cairn_engine::{EngineError, EngineHandle, EngineOptions, Info};
use cairn_state::types::{DriverKind, Kind};
use cairn_state::Labels;
use common::{class, labels, Class};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const KEYS: &[&str] = &["a", "b", "c", "d", "e", "f", "g"];

#[derive(Clone, Debug, PartialEq, Eq)]
struct MSnap {
    kind: Kind,
    parent: Option<String>,
    labels: Labels,
    /// File name -> content this snapshot's tree shows (vfs: its own full tree; a view shows
    /// its parent's).
    files: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Model {
    snaps: BTreeMap<String, MSnap>,
    /// btrfs: a view is its own (read-only) snapshot of the parent, so its usage is the
    /// parent's tree; vfs: a view's own tree is empty.
    views_are_snapshots: bool,
}

type MResult<T> = Result<T, Class>;

impl Model {
    fn get(&self, key: &str) -> MResult<&MSnap> {
        self.snaps.get(key).ok_or(Class::NotFound)
    }

    /// bolt.go CreateSnapshot: parent exists and is committed, then the key is new.
    fn create(
        &mut self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: &Labels,
        content: &str,
    ) -> MResult<()> {
        let files = match parent {
            None => BTreeMap::new(),
            Some(p) => {
                let ps = self.get(p)?;
                if ps.kind != Kind::Committed {
                    return Err(Class::InvalidArgument);
                }
                ps.files.clone()
            }
        };
        if self.snaps.contains_key(key) {
            return Err(Class::AlreadyExists);
        }
        let mut files = files;
        if kind == Kind::Active {
            files.insert(key.to_owned(), content.to_owned());
        }
        self.snaps.insert(
            key.to_owned(),
            MSnap {
                kind,
                parent: parent.map(str::to_owned),
                labels: labels.clone(),
                files,
            },
        );
        Ok(())
    }

    /// bolt.go CommitActive: the name is new, the key exists and is Active.
    fn commit(&mut self, name: &str, key: &str, labels: &Labels) -> MResult<()> {
        if self.snaps.contains_key(name) {
            return Err(Class::AlreadyExists);
        }
        if self.get(key)?.kind != Kind::Active {
            return Err(Class::FailedPrecondition);
        }
        let mut s = self.snaps.remove(key).expect("checked");
        s.kind = Kind::Committed;
        s.labels = labels.clone();
        self.snaps.insert(name.to_owned(), s);
        Ok(())
    }

    /// bolt.go Remove: the key exists and has no children.
    fn remove(&mut self, key: &str) -> MResult<()> {
        self.get(key)?;
        if self
            .snaps
            .values()
            .any(|s| s.parent.as_deref() == Some(key))
        {
            return Err(Class::FailedPrecondition);
        }
        self.snaps.remove(key);
        Ok(())
    }

    /// bolt.go UpdateInfo.
    fn update(&mut self, key: &str, new: &Labels, paths: &[&str]) -> MResult<Labels> {
        let mut labels = self.get(key)?.labels.clone();
        if paths.is_empty() {
            labels = new.clone();
        }
        for p in paths {
            if let Some(k) = p.strip_prefix("labels.") {
                match new.get(k) {
                    Some(v) => labels.insert(k.to_owned(), v.clone()),
                    None => labels.remove(k),
                };
            } else if *p == "labels" {
                labels = new.clone();
            } else {
                return Err(Class::InvalidArgument);
            }
        }
        self.snaps.get_mut(key).expect("checked").labels = labels.clone();
        Ok(labels)
    }

    /// Mounts exist for Active and View (bolt.go GetSnapshot).
    fn mounts(&self, key: &str) -> MResult<()> {
        match self.get(key)?.kind {
            Kind::Committed => Err(Class::FailedPrecondition),
            _ => Ok(()),
        }
    }

    /// The vfs driver's usage of a snapshot's own tree: the root and one inode per file; bytes
    /// are the files' sizes (btrfs's too). A vfs view's own tree is empty (its mounts bind the
    /// parent).
    fn usage(&self, key: &str) -> MResult<(u64, u64)> {
        let s = self.get(key)?;
        Ok(match s.kind {
            Kind::View if !self.views_are_snapshots => (0, 1),
            _ => (
                s.files.values().map(|c| c.len() as u64).sum(),
                1 + s.files.len() as u64,
            ),
        })
    }

    fn walk(&self) -> Vec<(String, Kind, Option<String>, Labels)> {
        self.snaps
            .iter()
            .map(|(k, s)| (k.clone(), s.kind, s.parent.clone(), s.labels.clone()))
            .collect()
    }
}

fn summary(infos: &[Info]) -> Vec<(String, Kind, Option<String>, Labels)> {
    infos
        .iter()
        .map(|i| (i.key.clone(), i.kind, i.parent.clone(), i.labels.clone()))
        .collect()
}

fn result_class<T>(r: &Result<T, EngineError>) -> MResult<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(class(e)),
    }
}

/// The files (name -> content) of a directory holding only regular files.
/// The files a snapshot's mounts show: the bind source directly (vfs), or through a real mount
/// (block: a loop mount of its image), undone before returning.
fn files_of(mounts: &[cairn_state::types::Mount], work: &Path) -> BTreeMap<String, String> {
    match mounts {
        [m] if m.kind == "bind" => files_in(&m.source),
        _ => {
            let m = common::Mounted::must(mounts, work);
            let files = files_in(m.path());
            m.unmount();
            files
        }
    }
}

/// Writes one file into an Active snapshot through its mounts.
fn write_into(mounts: &[cairn_state::types::Mount], work: &Path, name: &str, content: &str) {
    match mounts {
        [m] if m.kind == "bind" => std::fs::write(m.source.join(name), content),
        _ => {
            let m = common::Mounted::must(mounts, work);
            let written = std::fs::write(m.path().join(name), content);
            m.unmount();
            written
        }
    }
    .expect("write own file");
}

fn files_in(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("dirent");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).expect("read"))
        })
        .collect()
}

fn random_labels(rng: &mut ChaCha8Rng) -> Labels {
    match rng.gen_range(0..4) {
        0 => Labels::new(),
        1 => labels(&[("l", "1")]),
        2 => labels(&[("l", "2"), ("m", "x")]),
        _ => labels(&[("m", "y")]),
    }
}

fn random_key(rng: &mut ChaCha8Rng) -> &'static str {
    KEYS.choose(rng).expect("keys")
}

/// Usually a key the model does not hold (so creations and commits succeed), else any key.
fn fresh_key(rng: &mut ChaCha8Rng, model: &Model) -> &'static str {
    let free: Vec<&'static str> = KEYS
        .iter()
        .copied()
        .filter(|k| !model.snaps.contains_key(*k))
        .collect();
    match free.choose(rng) {
        Some(k) if rng.gen_bool(0.7) => k,
        _ => random_key(rng),
    }
}

/// Usually a key the model holds, else any key.
fn held_key(rng: &mut ChaCha8Rng, model: &Model) -> String {
    let held: Vec<&String> = model.snaps.keys().collect();
    match held.choose(rng) {
        Some(k) if rng.gen_bool(0.7) => (*k).clone(),
        _ => random_key(rng).to_owned(),
    }
}

/// A parent: usually an existing key, sometimes any key (often missing), sometimes none.
fn random_parent(rng: &mut ChaCha8Rng, model: &Model) -> Option<String> {
    match rng.gen_range(0..20) {
        0..=6 => None,
        7..=9 => Some(random_key(rng).to_owned()),
        _ => {
            let committed: Vec<&String> = model
                .snaps
                .iter()
                .filter(|(_, s)| s.kind == Kind::Committed)
                .map(|(k, _)| k)
                .collect();
            committed.choose(rng).map(|k| (*k).clone())
        }
    }
}

struct Harness {
    root: PathBuf,
    /// Where mounts are made (block's images are only readable through one).
    work: PathBuf,
    options: EngineOptions,
    engine: Option<EngineHandle>,
    model: Model,
}

impl Harness {
    fn sn(&self) -> &EngineHandle {
        self.engine.as_ref().expect("engine open")
    }

    fn reopen(&mut self) {
        self.engine.take().expect("open").close().expect("close");
        let (engine, report) =
            cairn_engine::Engine::open(&self.root, self.options.clone()).expect("reopen");
        assert!(
            report.dropped.is_empty(),
            "a clean reopen dropped something: {report:?}"
        );
        self.engine = Some(engine);
        self.check_all("after reopen");
    }

    /// The whole state and every tree against the model.
    fn check_all(&self, when: &str) {
        let walk = self.sn().walk(&[]).expect("walk");
        assert_eq!(summary(&walk), self.model.walk(), "walk {when}");
        for (key, s) in &self.model.snaps {
            let got = match s.kind {
                Kind::Committed => {
                    assert_eq!(
                        class(&self.sn().mounts(key).expect_err("committed")),
                        Class::FailedPrecondition
                    );
                    continue;
                }
                _ => self.sn().mounts(key).expect("mounts"),
            };
            assert_eq!(
                files_of(&got, &self.work),
                s.files,
                "files of {key} ({:?}) {when}",
                s.kind
            );
        }
    }
}

fn run_case(seed: u64) {
    run_case_on(seed, DriverKind::Vfs, None)
}

/// One case on `driver`, its root under `under` (else a fast temp dir).
fn run_case_on(seed: u64, driver: DriverKind, under: Option<&Path>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tmp = match under {
        Some(dir) => tempfile::tempdir_in(dir).expect("tempdir"),
        None => common::fast_tempdir(),
    };
    let root = tmp.path().join("root");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let options = EngineOptions {
        driver: Some(driver),
        checkpoint_every_records: rng.gen_range(3..60),
        max_batch: rng.gen_range(1..16),
        workers: rng.gen_range(1..4),
        ..EngineOptions::default()
    };
    let (engine, _) = cairn_engine::Engine::open(&root, options.clone()).expect("open");
    let mut h = Harness {
        root,
        work,
        options,
        engine: Some(engine),
        model: Model {
            views_are_snapshots: driver == DriverKind::Btrfs,
            ..Model::default()
        },
    };
    let steps = rng.gen_range(60..140);
    let mut outcomes: BTreeMap<(&str, MResult<()>), u32> = BTreeMap::new();
    for step in 0..steps {
        let op = rng.gen_range(0..100);
        let ctx = format!("seed {seed} step {step}");
        match op {
            0..=21 => {
                let key = fresh_key(&mut rng, &h.model);
                let parent = random_parent(&mut rng, &h.model);
                let l = random_labels(&mut rng);
                let content = format!("{key}#{step}");
                let want = h
                    .model
                    .create(key, parent.as_deref(), Kind::Active, &l, &content);
                let got = h.sn().prepare(key, parent.as_deref(), l);
                *outcomes.entry(("prepare", want)).or_default() += 1;
                assert_eq!(
                    result_class(&got),
                    want,
                    "{ctx}: prepare {key} on {parent:?}: {got:?}"
                );
                if let Ok(mounts) = got {
                    let mut before = h.model.snaps[key].files.clone();
                    before.remove(key);
                    let parent_files = parent
                        .as_ref()
                        .map(|p| h.model.snaps[p].files.clone())
                        .unwrap_or_default();
                    assert_eq!(
                        files_of(&mounts, &h.work),
                        parent_files,
                        "{ctx}: a new active shows its parent's files"
                    );
                    write_into(&mounts, &h.work, key, &content);
                }
            }
            22..=29 => {
                let key = fresh_key(&mut rng, &h.model);
                let parent = random_parent(&mut rng, &h.model);
                let l = random_labels(&mut rng);
                let want = h.model.create(key, parent.as_deref(), Kind::View, &l, "");
                let got = h.sn().view(key, parent.as_deref(), l);
                *outcomes.entry(("view", want)).or_default() += 1;
                assert_eq!(
                    result_class(&got),
                    want,
                    "{ctx}: view {key} of {parent:?}: {got:?}"
                );
                if let Ok(mounts) = got {
                    assert_eq!(
                        files_of(&mounts, &h.work),
                        h.model.snaps[key].files,
                        "{ctx}: view shows its parent"
                    );
                    assert!(
                        mounts[0].options.iter().any(|o| o == "ro"),
                        "{ctx}: a view is read-only: {mounts:?}"
                    );
                }
            }
            30..=49 => {
                // Mostly commit an existing active, to grow chains.
                let actives: Vec<String> = h
                    .model
                    .snaps
                    .iter()
                    .filter(|(_, s)| s.kind == Kind::Active)
                    .map(|(k, _)| k.clone())
                    .collect();
                let key = match actives.choose(&mut rng) {
                    Some(k) if rng.gen_bool(0.8) => k.clone(),
                    _ => random_key(&mut rng).to_owned(),
                };
                let name = fresh_key(&mut rng, &h.model);
                let l = random_labels(&mut rng);
                let want = h.model.commit(name, &key, &l);
                let got = h.sn().commit(name, &key, l);
                *outcomes.entry(("commit", want)).or_default() += 1;
                assert_eq!(
                    result_class(&got),
                    want,
                    "{ctx}: commit {key} as {name}: {got:?}"
                );
            }
            50..=61 => {
                let key = held_key(&mut rng, &h.model);
                let key = key.as_str();
                let want = h.model.remove(key);
                let got = h.sn().remove(key);
                *outcomes.entry(("remove", want)).or_default() += 1;
                assert_eq!(result_class(&got), want, "{ctx}: remove {key}: {got:?}");
            }
            62..=71 => {
                let key = held_key(&mut rng, &h.model);
                let key = key.as_str();
                let l = random_labels(&mut rng);
                let all = ["labels", "labels.l", "labels.m", "parent", "kind"];
                let n = rng.gen_range(0..3);
                let paths: Vec<&str> = (0..n)
                    .map(|_| *all.choose(&mut rng).expect("paths"))
                    .collect();
                let want = h.model.update(key, &l, &paths);
                let info = Info {
                    key: key.to_owned(),
                    parent: Some("ignored".into()),
                    kind: Kind::Committed,
                    labels: l,
                    created_ns: 0,
                    updated_ns: 0,
                };
                let got = h.sn().update(info, &paths);
                *outcomes
                    .entry(("update", want.clone().map(|_| ())))
                    .or_default() += 1;
                match (&got, &want) {
                    (Ok(info), Ok(labels)) => {
                        assert_eq!(&info.labels, labels, "{ctx}: update {key} {paths:?}");
                        let m = &h.model.snaps[key];
                        assert_eq!(
                            (info.kind, &info.parent),
                            (m.kind, &m.parent),
                            "{ctx}: update changed an immutable field"
                        );
                        assert!(info.updated_ns >= info.created_ns);
                    }
                    _ => assert_eq!(
                        result_class(&got),
                        want.map(|_| ()),
                        "{ctx}: update {key} {paths:?}: {got:?}"
                    ),
                }
            }
            72..=79 => {
                let key = held_key(&mut rng, &h.model);
                let key = key.as_str();
                let got = h.sn().stat(key);
                match (&got, h.model.get(key)) {
                    (Ok(info), Ok(m)) => {
                        assert_eq!(
                            (&info.key[..], info.kind, &info.parent, &info.labels),
                            (key, m.kind, &m.parent, &m.labels),
                            "{ctx}: stat {key}"
                        );
                    }
                    (_, want) => assert_eq!(
                        result_class(&got),
                        want.map(|_| ()),
                        "{ctx}: stat {key}: {got:?}"
                    ),
                }
            }
            80..=85 => {
                let key = held_key(&mut rng, &h.model);
                let key = key.as_str();
                let got = h.sn().usage(key);
                match (&got, h.model.usage(key)) {
                    // block's usage is its image's allocated bytes (driver_block.rs checks it):
                    // only the answer's class is the model's.
                    (Ok(_), Ok(_)) if driver == DriverKind::Block => {}
                    (Ok(u), Ok(want)) => {
                        assert_eq!((u.size_bytes, u.inodes), want, "{ctx}: usage of {key}")
                    }
                    (_, want) => assert_eq!(
                        result_class(&got),
                        want.map(|_| ()),
                        "{ctx}: usage {key}: {got:?}"
                    ),
                }
            }
            86..=88 => {
                let key = random_key(&mut rng);
                let got = h.sn().mounts(key);
                assert_eq!(
                    result_class(&got),
                    h.model.mounts(key),
                    "{ctx}: mounts {key}: {got:?}"
                );
            }
            89..=93 => {
                let filter = [
                    "kind==committed",
                    "kind==active",
                    "labels.l",
                    "labels.l==2",
                    "parent!=\"\"",
                ]
                .choose(&mut rng)
                .expect("filters");
                let got = summary(&h.sn().walk(&[filter]).expect("walk"));
                let want: Vec<_> = h
                    .model
                    .walk()
                    .into_iter()
                    .filter(|(_, kind, parent, labels)| match *filter {
                        "kind==committed" => *kind == Kind::Committed,
                        "kind==active" => *kind == Kind::Active,
                        "labels.l" => labels.contains_key("l"),
                        "labels.l==2" => labels.get("l").map(String::as_str) == Some("2"),
                        _ => parent.is_some(),
                    })
                    .collect();
                assert_eq!(got, want, "{ctx}: walk {filter}");
            }
            94..=95 => h.sn().checkpoint().expect("checkpoint"),
            _ => h.reopen(),
        }
    }
    println!("seed {seed}: {steps} steps, outcomes {outcomes:?}");
    h.check_all("at the end");
    let report = h.sn().fsck(false).expect("fsck");
    assert!(report.is_clean(), "seed {seed}: fsck: {report:?}");
    h.reopen();
    let report = h.sn().fsck(false).expect("fsck");
    assert!(
        report.is_clean(),
        "seed {seed}: fsck after the final reopen: {report:?}"
    );
    h.engine.take().expect("open").close().expect("close");
}

#[test]
fn engine_matches_containerd_model() {
    common::run_seeds("engine_model", 3, 0xC0FF_EE00_5EED, run_case);
}

/// The same model on the block driver, its root on a scratch xfs with reflink (root).
#[test]
fn engine_matches_containerd_model_block() {
    if let Some(reason) = cairn_driver::scratch::unavailable() {
        common::skip(&format!("the block driver {reason}"));
        return;
    }
    let xfs = cairn_driver::scratch::ReflinkFs::make("block-model-", 4 << 30).expect("scratch xfs");
    common::run_seeds("engine_model", 2, 0xB10C_0000_5EED, |seed| {
        run_case_on(seed, DriverKind::Block, Some(xfs.path()))
    });
}

#[test]
fn engine_matches_containerd_model_btrfs() {
    if let Err(reason) = cairn_loopfs::btrfs() {
        common::skip(&format!("the btrfs driver needs a btrfs: {reason}"));
        return;
    }
    let dir = cairn_loopfs::btrfs_tempdir("model-").expect("btrfs scratch");
    common::run_seeds("engine_model", 2, 0xB7F5_0000_5EED, |seed| {
        run_case_on(seed, DriverKind::Btrfs, Some(dir.path()))
    });
}

// ---- The state machine alone: a refusal leaves the state byte-identical. ----

use cairn_state::types::{SnapshotId, TxId, Usage};
use cairn_state::{Op, Pending, Record, State};

const CHAINS: &[&str] = &[
    "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
    "sha256:3333333333333333333333333333333333333333333333333333333333333333",
];

fn any_key(rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..20) {
        0 => CHAINS.choose(rng).expect("chains").to_string(),
        1 => String::new(),
        2 => "x".repeat(5000),
        3 => "c-init".into(),
        _ => KEYS.choose(rng).expect("keys").to_string(),
    }
}

fn any_labels(rng: &mut ChaCha8Rng) -> Labels {
    match rng.gen_range(0..10) {
        0 => (0..300).map(|i| (format!("k{i}"), String::new())).collect(),
        1 => (0..20)
            .map(|i| (format!("k{i}"), "v".repeat(4000)))
            .collect(),
        2 => [("k".to_owned(), "v".repeat(5000))].into(),
        _ => labels(&[("n", &rng.gen_range(0..3u8).to_string())]),
    }
}

fn any_txid(rng: &mut ChaCha8Rng, state: &State) -> TxId {
    let pending: Vec<TxId> = state.pending.keys().copied().collect();
    match pending.choose(rng) {
        Some(t) if rng.gen_bool(0.8) => *t,
        _ => TxId(rng.gen_range(0..=state.last_txid.0 + 1)),
    }
}

fn import_pending(state: &State) -> Option<TxId> {
    state
        .pending
        .iter()
        .find(|(_, p)| matches!(p, Pending::Import { .. }))
        .map(|(t, _)| *t)
}

/// A config naming `top`'s chain as its DiffIDs (the model's layers have DiffID = ChainID).
fn model_config(state: &State, top: &str) -> Vec<u8> {
    let mut diff_ids: Vec<String> = state
        .layer_chain(top)
        .unwrap_or_else(|_| vec![top.to_owned()])
        .iter()
        .map(|c| state.layers.get(c).map_or(c.clone(), |l| l.diff_id.clone()))
        .collect();
    diff_ids.reverse();
    serde_json::to_vec(&serde_json::json!({ "rootfs": { "type": "layers", "diff_ids": diff_ids } }))
        .expect("a config encodes")
}

fn random_op(rng: &mut ChaCha8Rng, state: &State) -> Op {
    let next = SnapshotId(state.next_id);
    let chain = || CHAINS.to_vec();
    match rng.gen_range(0..20) {
        0..=2 => Op::BeginCreate {
            key: any_key(rng),
            parent: rng.gen_bool(0.6).then(|| any_key(rng)),
            kind: *[Kind::Active, Kind::View, Kind::Committed]
                .choose(rng)
                .expect("kinds"),
            id: next,
            labels: any_labels(rng),
            time_ns: 1,
        },
        3 => Op::BeginCommit {
            key: any_key(rng),
            name: any_key(rng),
            labels: any_labels(rng),
            time_ns: 2,
        },
        4..=5 => Op::Complete {
            of: any_txid(rng, state),
            usage: rng.gen_bool(0.5).then_some(Usage {
                size_bytes: 1,
                inodes: 1,
            }),
            digest: rng.gen_bool(0.5).then(|| "sha256:00".to_owned()),
        },
        6 => Op::Abort {
            of: any_txid(rng, state),
        },
        7 => Op::Remove { key: any_key(rng) },
        8 => Op::Update {
            key: any_key(rng),
            labels: any_labels(rng),
            time_ns: 3,
        },
        9 => Op::BeginImport {
            id: next,
            parent: rng
                .gen_bool(0.5)
                .then(|| chain().choose(rng).expect("chain").to_string()),
            pin: rng.gen_bool(0.5),
            time_ns: 4,
        },
        10 => {
            let chain_id = if rng.gen_bool(0.8) {
                chain().choose(rng).expect("chain").to_string()
            } else {
                any_key(rng)
            };
            Op::CompleteImport {
                of: import_pending(state).unwrap_or_else(|| any_txid(rng, state)),
                diff_id: chain_id.clone(),
                chain_id,
                size_bytes: 1,
                usage: Usage {
                    size_bytes: 1,
                    inodes: 1,
                },
            }
        }
        11 => Op::RemoveLayer {
            chain_id: chain().choose(rng).expect("chain").to_string(),
        },
        12 => {
            let top = chain().choose(rng).expect("chain").to_string();
            Op::PutImage {
                name: ["img", "other"].choose(rng).expect("names").to_string(),
                config_digest: cairn_state::sha256_digest(&model_config(state, &top)),
                top,
                manifest_digest: "sha256:m".into(),
                time_ns: 5,
            }
        }
        // Keep an image's config: its own (accepted), or another chain's (ConfigLayers or a
        // digest refused), or for an image that is not there.
        18 => {
            let name = ["img", "other", "none"]
                .choose(rng)
                .expect("names")
                .to_string();
            let top = match state.images.get(&name) {
                Some(i) if rng.gen_bool(0.7) => i.top.clone(),
                _ => chain().choose(rng).expect("chain").to_string(),
            };
            Op::PutImageConfig {
                name,
                config: model_config(state, &top),
                manifest: None,
            }
        }
        // An image recorded with a config kept in the same record: its chain's (accepted), or
        // another chain's (refused whole: the image is not recorded either).
        19 => {
            let top = chain().choose(rng).expect("chain").to_string();
            let config_top = if rng.gen_bool(0.7) {
                top.clone()
            } else {
                chain().choose(rng).expect("chain").to_string()
            };
            let config = model_config(state, &config_top);
            Op::PutImageKept {
                name: ["img", "other"].choose(rng).expect("names").to_string(),
                config_digest: cairn_state::sha256_digest(&config),
                top,
                manifest_digest: "sha256:m".into(),
                time_ns: 8,
                config,
                manifest: None,
            }
        }
        13 => Op::RemoveImage {
            name: ["img", "other"].choose(rng).expect("names").to_string(),
        },
        14 => Op::BeginContainer {
            name: any_key(rng),
            layer: chain().choose(rng).expect("chain").to_string(),
            init_id: next,
            time_ns: 6,
        },
        // A parallel image load's layers: staged without a parent, completed naming one.
        16 => Op::BeginDetachedImport {
            id: next,
            pin: rng.gen_bool(0.5),
            time_ns: 7,
        },
        17 => {
            let detached = state
                .pending
                .iter()
                .find(|(_, p)| matches!(p, Pending::DetachedImport { .. }))
                .map(|(t, _)| *t);
            let chain_id = chain().choose(rng).expect("chain").to_string();
            Op::CompleteDetachedImport {
                of: detached.unwrap_or_else(|| any_txid(rng, state)),
                parent: rng
                    .gen_bool(0.6)
                    .then(|| chain().choose(rng).expect("chain").to_string()),
                diff_id: chain_id.clone(),
                chain_id,
                size_bytes: 1,
                usage: Usage {
                    size_bytes: 1,
                    inodes: 1,
                },
            }
        }
        _ => {
            if rng.gen_bool(0.2) {
                Op::CollectLayers
            } else {
                Op::RemoveContainer { name: any_key(rng) }
            }
        }
    }
}

/// The keys whose snapshot entry differs between two states.
fn changed_keys(before: &State, after: &State) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = before
        .snapshots
        .keys()
        .chain(after.snapshots.keys())
        .collect();
    keys.into_iter()
        .filter(|k| before.snapshots.get(*k) != after.snapshots.get(*k))
        .cloned()
        .collect()
}

fn run_state_case(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = State::new();
    let (mut accepted, mut refused) = (0u32, 0u32);
    for step in 0..3000 {
        let op = random_op(&mut rng, &state);
        let record = Record {
            txid: state.last_txid.next(),
            op,
        };
        let before = postcard::to_stdvec(&state).expect("encode");
        let copy = state.clone();
        match state.apply(&record) {
            Err(e) => {
                refused += 1;
                assert_eq!(
                    postcard::to_stdvec(&state).expect("encode"),
                    before,
                    "seed {seed} step {step}: refused {record:?} ({e}) changed the state"
                );
            }
            Ok(applied) => {
                accepted += 1;
                state.assert_refcounts();
                // No child without its parent: every layer's parent is a layer.
                for (chain, layer) in &state.layers {
                    if let Some(p) = &layer.parent {
                        assert!(
                            state.layers.contains_key(p),
                            "seed {seed} step {step}: layer {chain} on {p}, which is no layer"
                        );
                    }
                }
                let changed = changed_keys(&copy, &state);
                assert!(
                    changed.iter().all(|k| applied.snapshots.contains(k)),
                    "seed {seed} step {step}: {record:?} changed {changed:?}, reported {:?}",
                    applied.snapshots
                );
                assert!(
                    applied
                        .snapshots
                        .iter()
                        .all(|k| copy.snapshots.contains_key(k) || state.snapshots.contains_key(k)),
                    "seed {seed} step {step}: reported a key that never existed"
                );
            }
        }
    }
    println!("seed {seed}: {accepted} accepted, {refused} refused");
    assert!(
        accepted > 300,
        "seed {seed}: the generator must reach the state machine"
    );
}

#[test]
fn state_refusals_change_no_byte_of_the_state() {
    common::run_seeds("engine_model", 8, 0x5747_E000_5EED, run_state_case);
}
