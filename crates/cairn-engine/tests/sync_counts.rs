//! The driver's sync calls per operation (issue 11, part 1), seen through the driver's sync hook:
//! an empty prepare is one shared `syncfs`, an empty commit one `fsync` of its tree, sealed on
//! the engine thread without rewriting the marker; a commit over the inline limit is still a
//! worker's seal (two `syncfs`, marker rewritten); an inline seal whose fsync fails taints its
//! snapshot as any seal does.
#![cfg(feature = "failpoints")]

use cairn_driver::hook::{self, SyncCall};
use cairn_driver::{DriverError, DurableStep};
use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions};
use cairn_state::types::Kind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The hook is process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A root whose durable steps take one syncfs (above two fsyncs), as the counts below expect;
/// [`open_with`] chooses.
fn open(root: &Path) -> EngineHandle {
    open_with(root, DurableStep::Syncfs)
}

fn open_with(root: &Path, durable_step: DurableStep) -> EngineHandle {
    let options = EngineOptions {
        workers: 2,
        lock_timeout_ms: 0,
        durable_step,
        ..EngineOptions::default()
    };
    Engine::open(root, options).expect("open").0
}

fn tree_of(h: &EngineHandle, key: &str) -> PathBuf {
    h.mounts(key).expect("mounts")[0].source.clone()
}

fn marker_of(tree: &Path) -> Option<cairn_state::types::TxId> {
    cairn_driver::marker::read(tree.parent().expect("snapshot dir")).expect("marker")
}

/// Every driver sync call while it lives: ('s' syncfs, 'd' directory fsync, 'f' file fsync).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(char, PathBuf)>>>);

impl Recorder {
    fn install(&self) -> hook::Installed {
        let calls = Arc::clone(&self.0);
        hook::install(move |call| {
            let (kind, path) = match call {
                SyncCall::File(p) => ('f', p),
                SyncCall::Dir(p) => ('d', p),
                SyncCall::Fs(p) => ('s', p),
            };
            calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((kind, path.to_path_buf()));
            None
        })
    }

    fn take(&self) -> Vec<(char, PathBuf)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[test]
fn an_empty_prepare_and_commit_cost_one_driver_sync_each() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = open(&tmp.path().join("root"));
    let rec = Recorder::default();
    let _hook = rec.install();
    h.prepare("a", None, Default::default()).expect("prepare");
    let prepared = rec.take();
    assert_eq!(
        prepared.iter().map(|(k, _)| *k).collect::<String>(),
        "s",
        "an empty prepare is one shared syncfs: {prepared:?}"
    );
    let tree = tree_of(&h, "a");
    let created = marker_of(&tree);
    assert!(created.is_some());
    h.commit("A", "a", Default::default()).expect("commit");
    let committed = rec.take();
    assert_eq!(
        committed,
        vec![('d', tree.clone())],
        "an empty commit is one fsync of its tree"
    );
    assert_eq!(
        marker_of(&tree),
        created,
        "an inline seal keeps the creation's marker"
    );
    assert_eq!(h.stat("A").expect("stat").kind, Kind::Committed);
    assert!(h.fsck(false).expect("fsck").findings.is_empty());
    h.close().expect("close");
}

/// What one empty prepare's durable step fsyncs per file: the tree, the snapshot's directory
/// (its inode holds the marker), then `snapshots/`, which names it.
fn per_file_prepare(root: &Path, id: u64) -> Vec<(char, PathBuf)> {
    let dir = root.join("snapshots").join(id.to_string());
    vec![
        ('d', dir.join("fs")),
        ('d', dir),
        ('d', root.join("snapshots")),
    ]
}

#[test]
fn an_empty_prepare_made_durable_per_file_fsyncs_its_tree_its_directory_and_snapshots() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let h = open_with(&root, DurableStep::PerFile);
    let rec = Recorder::default();
    let _hook = rec.install();
    h.prepare("a", None, Default::default()).expect("prepare");
    let tree = tree_of(&h, "a");
    let id: u64 = tree
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .expect("id");
    assert_eq!(rec.take(), per_file_prepare(&root, id));
    h.commit("A", "a", Default::default()).expect("commit");
    assert_eq!(
        rec.take(),
        vec![('d', tree)],
        "an empty commit is one fsync of its tree"
    );
    assert!(h.fsck(false).expect("fsck").findings.is_empty());
    h.close().expect("close");
}

#[test]
fn the_measured_choice_tries_both_ways_before_it_chooses() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let h = open_with(&root, DurableStep::Auto);
    let rec = Recorder::default();
    let _hook = rec.install();
    let mut steps = Vec::new();
    for i in 0..8 {
        h.prepare(&format!("k{i}"), None, Default::default())
            .expect("prepare");
        steps.push(rec.take().iter().map(|(k, _)| *k).collect::<String>());
    }
    // Neither way measured: per-file first, then the syncfs; after that the cheaper.
    assert_eq!(steps[0], "ddd", "{steps:?}");
    assert_eq!(steps[1], "s", "{steps:?}");
    assert!(
        steps[2..].iter().all(|s| s == "ddd" || s == "s"),
        "every later step is one way or the other, whole: {steps:?}"
    );
    assert!(h.fsck(false).expect("fsck").findings.is_empty());
    h.close().expect("close");
}

#[test]
fn a_commit_over_the_inline_limit_is_sealed_by_a_worker() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = open(&tmp.path().join("root"));
    h.prepare("b", None, Default::default()).expect("prepare");
    let tree = tree_of(&h, "b");
    let big = vec![7u8; cairn_driver::INLINE_SEAL_MAX_BYTES as usize + 1];
    std::fs::write(tree.join("big"), &big).expect("write");
    let created = marker_of(&tree);
    let rec = Recorder::default();
    let _hook = rec.install();
    h.commit("B", "b", Default::default()).expect("commit");
    let calls = rec.take();
    assert_eq!(
        calls.iter().filter(|(k, _)| *k == 's').count(),
        2,
        "a worker's seal: one syncfs for the tree, one for the marker's rename: {calls:?}"
    );
    assert_ne!(
        marker_of(&tree),
        created,
        "a worker's seal rewrites the marker"
    );
    let usage = h.usage("B").expect("usage");
    assert_eq!(usage.size_bytes, big.len() as u64);
    assert!(h.fsck(false).expect("fsck").findings.is_empty());
    h.close().expect("close");
}

#[test]
fn an_inline_seal_whose_fsync_failed_taints_the_snapshot() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let h = open(&root);
    h.prepare("c", None, Default::default()).expect("prepare");
    let tree = tree_of(&h, "c");
    let failing = tree.clone();
    let hook = hook::install(move |call| {
        matches!(call, SyncCall::Dir(p) if p == failing)
            .then(|| std::io::Error::from_raw_os_error(libc::EIO))
    });
    let first = h
        .commit("C", "c", Default::default())
        .expect_err("the tree's fsync failed");
    assert!(
        matches!(&first, EngineError::Driver(d) if d.is_sync_failure()),
        "{first}"
    );
    drop(hook);
    let retry = h
        .commit("C", "c", Default::default())
        .expect_err("a retry would fsync over lost pages");
    assert!(
        matches!(
            &retry,
            EngineError::Driver(DriverError::TreeSyncFailed { .. })
        ),
        "{retry}"
    );
    assert_eq!(h.stat("c").expect("stat").kind, Kind::Active);
    assert!(h.stat("C").is_err(), "no commit was made");
    h.close().expect("close");
    // The taint survives a reopen; the snapshot can still be removed.
    let h = open(&root);
    assert!(h.commit("C", "c", Default::default()).is_err());
    h.remove("c").expect("remove");
    assert!(h.fsck(false).expect("fsck").findings.is_empty());
    h.close().expect("close");
}
