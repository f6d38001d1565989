//! Sync errors (issue 8, items 2, 3 and 4), through the driver's sync hook: every fsync and
//! syncfs of the driver passes it, so a test sees their order and can fail one with EIO the way
//! a lost write-back does. Real EIO at the block layer is the test disk's job.
//!
//! - a tree whose sync failed is never reported durable later (fsyncgate): an active snapshot
//!   is marked and can no longer be committed, a staged tree is discarded and rebuilt;
//! - a write-back error reported to someone else's syncfs still fails the tree it belongs to;
//! - layer.meta's directory entry and a new root's own entry are fsynced.
#![cfg(feature = "failpoints")]

use cairn_driver::hook::{self, SyncCall};
use cairn_driver::{Driver, DriverError, DurableStep, VfsDriver};
use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::types::{Kind, TxId};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The hook is process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EIO)
}

/// The shared syncfs these tests fail is the batch's way whenever it needs more than two
/// fsyncs: pinned, so the measured choice never takes per-file fsyncs instead.
fn options() -> EngineOptions {
    EngineOptions {
        workers: 2,
        lock_timeout_ms: 0,
        durable_step: DurableStep::Syncfs,
        ..EngineOptions::default()
    }
}

/// A driver whose batches take the syncfs, as [`options`].
fn vfs_driver(root: &Path) -> VfsDriver {
    let driver = VfsDriver::open(root).expect("driver");
    driver.set_durable_step(DurableStep::Syncfs);
    driver
}

fn open(root: &Path) -> EngineHandle {
    Engine::open(root, options()).expect("open").0
}

fn tree_of(h: &EngineHandle, key: &str) -> PathBuf {
    h.mounts(key).expect("mounts")[0].source.clone()
}

fn write_files(dir: &Path, n: usize) {
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i:03}")), format!("file {i}\n")).expect("write");
    }
}

/// Which calls the hook saw, in order, under `root`.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(char, PathBuf)>>>);

impl Recorder {
    fn note(&self, call: SyncCall<'_>) {
        let (kind, path) = match call {
            SyncCall::File(p) => ('f', p),
            SyncCall::Dir(p) => ('d', p),
            SyncCall::Fs(p) => ('s', p),
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((kind, path.to_path_buf()));
    }

    fn calls(&self) -> Vec<(char, PathBuf)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn is_failed_sync(e: &EngineError) -> bool {
    matches!(e, EngineError::Driver(d) if d.is_sync_failure())
}

fn is_tainted(e: &EngineError) -> bool {
    matches!(e, EngineError::Driver(DriverError::TreeSyncFailed { .. }))
}

/// fsyncgate, through the engine: the commit's shared syncfs (the batch's one sync of every
/// tree it seals) reports a lost write-back; the commit fails, a retry (whose sync the kernel
/// would answer 0) is refused, also after a reopen; the snapshot can still be removed, and
/// other snapshots commit.
#[test]
fn a_commit_whose_tree_sync_failed_is_never_acknowledged_later() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let h = open(&root);
    h.prepare("a", None, Default::default()).expect("prepare");
    let tree = tree_of(&h, "a");
    write_files(&tree, 3);
    let fired = Arc::new(AtomicBool::new(false));
    let guard = {
        let fired = Arc::clone(&fired);
        hook::install(move |call| {
            // The kernel reports the lost write-back once, then forgets it.
            (matches!(call, SyncCall::Fs(_)) && !fired.swap(true, Ordering::SeqCst)).then(eio)
        })
    };
    let first = h
        .commit("c", "a", Default::default())
        .expect_err("the sync failed");
    assert!(is_failed_sync(&first), "{first}");
    assert!(fired.load(Ordering::SeqCst));
    drop(guard);
    // The retry's sync would return 0: it must not get that far.
    let retry = h
        .commit("c", "a", Default::default())
        .expect_err("retry over lost pages");
    assert!(is_tainted(&retry), "{retry}");
    assert_eq!(h.stat("a").expect("stat").kind, Kind::Active);
    assert!(h.stat("c").is_err(), "no commit was made");
    // After the error, a small tree's commit is checked file by file and succeeds.
    h.prepare("e", None, Default::default()).expect("prepare");
    write_files(&tree_of(&h, "e"), 2);
    h.commit("E", "e", Default::default()).expect("commit e");
    h.close().expect("close");
    let h = open(&root);
    let again = h
        .commit("c", "a", Default::default())
        .expect_err("after a reopen");
    assert!(is_tainted(&again), "{again}");
    // Other snapshots are not affected; the marked one can be removed.
    h.prepare("b", None, Default::default()).expect("prepare");
    write_files(&tree_of(&h, "b"), 3);
    h.commit("d", "b", Default::default()).expect("commit b");
    let fsck = h.fsck(false).expect("fsck");
    assert!(
        fsck.findings.iter().any(|f| matches!(
            &f.problem,
            cairn_engine::Problem::SyncFailed { key, .. } if key == "a"
        )),
        "fsck names the snapshot whose sync failed: {fsck:?}"
    );
    h.remove("a").expect("remove a");
    assert!(h.fsck(false).expect("fsck").findings.is_empty());
    h.close().expect("close");
}

/// A prepare made durable the `durable_step` way, whose first sync call that `fails` picks
/// reports an error, fails, leaves nothing behind (no key, no tree), and the next prepare of
/// the same key succeeds.
fn a_failed_prepare_leaves_nothing(
    durable_step: DurableStep,
    fails: impl Fn(&SyncCall) -> bool + Send + Sync + 'static,
) {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let options = EngineOptions {
        durable_step,
        ..options()
    };
    let h = Engine::open(&root, options).expect("open").0;
    let fired = Arc::new(AtomicBool::new(false));
    let guard = {
        let fired = Arc::clone(&fired);
        hook::install(move |call| (fails(&call) && !fired.swap(true, Ordering::SeqCst)).then(eio))
    };
    let err = h
        .prepare("p", None, Default::default())
        .expect_err("the tree's sync failed");
    assert!(fired.load(Ordering::SeqCst), "the failing call was made");
    assert!(is_failed_sync(&err), "{err}");
    drop(guard);
    assert!(h.stat("p").is_err(), "the key does not exist");
    let snapshots: Vec<_> = std::fs::read_dir(root.join("snapshots"))
        .expect("readdir")
        .collect();
    assert!(snapshots.is_empty(), "the failed tree was removed");
    h.prepare("p", None, Default::default())
        .expect("prepare again");
    assert!(h.fsck(false).expect("fsck").findings.is_empty());
    h.close().expect("close");
}

/// The batch's shared syncfs fails.
#[test]
fn a_prepare_whose_shared_sync_failed_fails_and_leaves_nothing() {
    a_failed_prepare_leaves_nothing(DurableStep::Syncfs, |call| matches!(call, SyncCall::Fs(_)));
}

/// Made durable per file: the tree's own fsync fails.
#[test]
fn a_prepare_whose_per_file_fsync_failed_fails_and_leaves_nothing() {
    a_failed_prepare_leaves_nothing(
        DurableStep::PerFile,
        |call| matches!(call, SyncCall::Dir(p) if p.ends_with("fs")),
    );
}

/// fsyncgate, batched: one shared syncfs covers several seals; its failure fails and taints
/// every snapshot it covered, with no per-file retry over the same pages. An error reported
/// earlier in the driver's life makes a later batch check each tree file by file: a tree whose
/// own file fails is tainted, a tree whose files all fsync cleanly is sealed.
#[test]
fn a_failed_shared_sync_fails_every_snapshot_it_covered() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let driver = vfs_driver(&root);
    use cairn_state::types::SnapshotId;
    let trees: Vec<cairn_driver::NewTree> = (1..=4)
        .map(|n| cairn_driver::NewTree {
            txid: TxId(n),
            id: SnapshotId(n),
            kind: Kind::Active,
            parent: None,
        })
        .collect();
    for r in driver.create_many(&trees) {
        r.expect("create");
    }
    for t in &trees {
        write_files(&driver.tree(t.id), 100);
    }
    let (a, b, c, d) = (SnapshotId(1), SnapshotId(2), SnapshotId(3), SnapshotId(4));
    let lost = driver.tree(c).join("f042");
    let rec = Recorder::default();
    let fs_fired = Arc::new(AtomicBool::new(false));
    let _guard = {
        let (lost, fs_fired, rec) = (lost.clone(), Arc::clone(&fs_fired), rec.clone());
        hook::install(move |call| {
            rec.note(call);
            match call {
                SyncCall::Fs(_) => (!fs_fired.swap(true, Ordering::SeqCst)).then(eio),
                SyncCall::File(p) => (p == lost).then(eio),
                SyncCall::Dir(_) => None,
            }
        })
    };
    let first = driver.seal_many(&[(a, TxId(10)), (b, TxId(11))]);
    for r in &first {
        assert!(
            matches!(r, Err(DriverError::SyncFailed { .. })),
            "every seal the failed sync covered fails: {r:?}"
        );
    }
    assert!(
        !rec.calls()
            .iter()
            .any(|(k, p)| *k == 'f'
                && (p.starts_with(driver.tree(a)) || p.starts_with(driver.tree(b)))),
        "no per-file fsync after the shared sync failed (it would return 0 over lost pages)"
    );
    for id in [a, b] {
        assert!(
            driver
                .tree(id)
                .parent()
                .expect("dir")
                .join("sync-failed")
                .exists(),
            "{id} is tainted"
        );
    }
    let retry = driver.seal_many(&[(a, TxId(12))]);
    assert!(
        matches!(retry[0], Err(DriverError::TreeSyncFailed { .. })),
        "{retry:?}"
    );
    // Later batches after the error: checked file by file.
    let later = driver.seal_many(&[(c, TxId(13)), (d, TxId(14))]);
    match &later[0] {
        Err(DriverError::SyncFailed { path, .. }) => assert_eq!(path, &lost),
        other => panic!("tree c was called durable over a lost write-back: {other:?}"),
    }
    assert!(
        later[1].is_ok(),
        "tree d's files all fsync cleanly: {:?}",
        later[1]
    );
    assert_eq!(
        cairn_driver::marker::read(driver.tree(d).parent().expect("dir")).expect("marker"),
        Some(TxId(14))
    );
}

/// A write-back error the file system reports to another worker's syncfs (the kernel reports
/// it once per descriptor, so a descriptor opened at the end would see nothing) still fails the
/// tree whose pages were lost; a tree whose files all fsync cleanly is not failed by it; and a
/// tree staged after the error goes back to one syncfs.
#[test]
fn a_writeback_error_seen_by_another_syncfs_still_fails_its_tree() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let driver = vfs_driver(&root);
    let (one, two) = (TxId(1), TxId(2));
    for txid in [one, two] {
        driver.stage(txid, Kind::Active, None).expect("stage");
        write_files(&driver.staged_tree(txid), 100);
    }
    let lost = driver.staged_tree(two).join("f007");
    let fs_fired = Arc::new(AtomicBool::new(false));
    let per_file = Arc::new(AtomicUsize::new(0));
    let _guard = {
        let (lost, fs_fired, per_file) =
            (lost.clone(), Arc::clone(&fs_fired), Arc::clone(&per_file));
        hook::install(move |call| match call {
            // Reported to the first syncfs only, as the kernel does per descriptor.
            SyncCall::Fs(_) => (!fs_fired.swap(true, Ordering::SeqCst)).then(eio),
            SyncCall::File(p) => {
                per_file.fetch_add(1, Ordering::SeqCst);
                (p == lost).then(eio)
            }
            SyncCall::Dir(_) => None,
        })
    };
    // Tree one's sync gets the report; its own files are fine, so it is durable.
    driver
        .sync_staged(one)
        .expect("tree one's files all fsync cleanly");
    assert!(fs_fired.load(Ordering::SeqCst));
    assert!(
        per_file.load(Ordering::SeqCst) >= 100,
        "tree one was checked file by file"
    );
    // Tree two's syncfs reports nothing now; its lost file must still fail it.
    match driver.sync_staged(two) {
        Err(DriverError::SyncFailed { path, .. }) => assert_eq!(path, lost),
        other => panic!("tree two was called durable over a lost write-back: {other:?}"),
    }
    // A tree begun after the error: one syncfs, no per-file check.
    let three = TxId(3);
    driver.stage(three, Kind::Active, None).expect("stage");
    write_files(&driver.staged_tree(three), 100);
    let before = per_file.load(Ordering::SeqCst);
    driver.sync_staged(three).expect("sync");
    assert_eq!(
        per_file.load(Ordering::SeqCst),
        before,
        "no per-file check after the error"
    );
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        b.append_data(&mut header, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// A staged tree whose sync failed is discarded with its transaction and rebuilt from scratch
/// by the next attempt, which reads the tar again: nothing is synced twice.
#[test]
fn an_import_whose_sync_failed_is_discarded_and_rebuilt() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let h = open(&root);
    let layer = tar_of(&[("etc/hosts", b"127.0.0.1 localhost\n"), ("bin/sh", b"#!\n")]);
    let staging = root.canonicalize().expect("root").join("staging");
    let fired = Arc::new(AtomicBool::new(false));
    let guard = {
        let (staging, fired) = (staging.clone(), Arc::clone(&fired));
        hook::install(move |call| match call {
            SyncCall::File(p) if p.starts_with(&staging) && p.ends_with("hosts") => {
                (!fired.swap(true, Ordering::SeqCst)).then(eio)
            }
            _ => None,
        })
    };
    let failed = h
        .import_layer(
            Box::new(std::io::Cursor::new(layer.clone())),
            ImportOptions::default(),
        )
        .expect_err("the import's sync failed");
    assert!(is_failed_sync(&failed), "{failed}");
    drop(guard);
    assert!(h.layers().expect("layers").is_empty());
    let left: Vec<_> = std::fs::read_dir(&staging).expect("staging").collect();
    assert!(
        left.is_empty(),
        "the failed staging was discarded: {left:?}"
    );
    let imported = h
        .import_layer(
            Box::new(std::io::Cursor::new(layer)),
            ImportOptions::default(),
        )
        .expect("the retry rebuilds the tree");
    let verified = h.verify(Some(&imported.chain_id)).expect("verify");
    assert_eq!(verified[0].problem, None);
    h.close().expect("close");
}

/// Per-file sync mode (a small layer): layer.meta's entry in staging/<txid> is fsynced after
/// layer.meta itself; a new root's directory is fsynced into its parent, and so is each
/// directory created on the way to it.
#[test]
fn layer_meta_and_a_new_roots_entries_are_fsynced() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("tmp");
    let root = base.join("new").join("root");
    let rec = Recorder::default();
    let _guard = {
        let rec = rec.clone();
        hook::install(move |call| {
            rec.note(call);
            None
        })
    };
    let h = open(&root);
    let calls = rec.calls();
    for dir in [base.clone(), base.join("new")] {
        assert!(
            calls.contains(&('d', dir.clone())),
            "{} (parent of a created directory) was not fsynced: {calls:?}",
            dir.display()
        );
    }
    let layer = tar_of(&[("a", b"a\n")]);
    h.import_layer(
        Box::new(std::io::Cursor::new(layer)),
        ImportOptions::default(),
    )
    .expect("import");
    let calls = rec.calls();
    let meta = calls
        .iter()
        .position(|(k, p)| *k == 'f' && p.ends_with("layer.meta"))
        .expect("layer.meta was fsynced");
    let staged_dir = calls[meta].1.parent().expect("parent").to_path_buf();
    let dir_sync = calls[meta..]
        .iter()
        .position(|(k, p)| *k == 'd' && *p == staged_dir);
    let install = calls[meta..]
        .iter()
        .position(|(k, p)| *k == 'd' && p.ends_with("snapshots"));
    match (dir_sync, install) {
        (Some(d), Some(i)) => assert!(d < i, "staging/<txid> fsynced only after the install"),
        _ => panic!("staging/<txid> was not fsynced after layer.meta: {calls:?}"),
    }
    h.close().expect("close");
}
