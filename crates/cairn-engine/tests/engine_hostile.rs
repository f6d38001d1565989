//! Hostile and unlucky callers never stop the engine: a refused command changes nothing and
//! the engine keeps serving everyone else.
//! - a user snapshot, commit or container under a layer's ChainID is refused (the layer store
//!   owns those keys), so the layer's import later proceeds (it used to panic the engine; the
//!   CLI's side is in crates/cairn/tests/cli_hostile.rs);
//! - labels, keys and records over their bounds are `InvalidArgument`, never a journal append
//!   that fails and stops the engine;
//! - (with `--features failpoints`) a panic in a worker job is an error for its client, and a
//!   panic of the engine thread is reported by every call and by `close()`.

use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::{Invalid, Labels, StateError, MAX_LABELS};
use sha2::{Digest, Sha256};
use std::path::Path;

fn open(root: &Path) -> EngineHandle {
    Engine::open(root, EngineOptions::default())
        .expect("open")
        .0
}

fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = b"hello";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append_data(&mut h, "etc/hello", &data[..])
        .expect("append");
    b.into_inner().expect("finish")
}

/// A base layer's ChainID is its DiffID: the sha256 of the tar.
fn chain_id_of(tar: &[u8]) -> String {
    let hex: String = Sha256::digest(tar)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn import(engine: &EngineHandle, tar: &[u8]) -> Result<cairn_engine::Imported, EngineError> {
    engine.import_layer(
        Box::new(std::io::Cursor::new(tar.to_vec())),
        ImportOptions {
            parent: None,
            pin: true,
            expected_diff_id: None,
        },
    )
}

fn invalid(r: Result<impl std::fmt::Debug, EngineError>) -> Invalid {
    match r {
        Err(EngineError::State(StateError::InvalidArgument { reason })) => reason,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn a_layer_key_is_refused_for_snapshots_and_the_import_proceeds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let engine = open(&root);
    let tar = layer_tar();
    let chain = chain_id_of(&tar);
    assert!(matches!(
        invalid(engine.prepare(&chain, None, Labels::new())),
        Invalid::ReservedKey { .. }
    ));
    assert!(matches!(
        invalid(engine.view(&chain, None, Labels::new())),
        Invalid::ReservedKey { .. }
    ));
    engine.prepare("work", None, Labels::new()).expect("work");
    assert!(matches!(
        invalid(engine.commit(&chain, "work", Labels::new())),
        Invalid::ReservedKey { .. }
    ));
    assert!(engine
        .walk(&[])
        .expect("walk")
        .iter()
        .all(|i| i.key != chain));
    let imported = import(&engine, &tar).expect("the layer imports");
    assert_eq!(imported.chain_id, chain);
    assert!(matches!(
        invalid(engine.create_container(&chain, Some(&chain), None)),
        Invalid::ReservedKey { .. }
    ));
    // The engine still serves: a snapshot on the layer, and the layer's own snapshot.
    engine
        .prepare("on-layer", Some(&chain), Labels::new())
        .expect("a layer is a parent");
    assert_eq!(engine.stat(&chain).expect("layer snapshot").key, chain);
    engine.close().expect("close");
    let (engine, _) = Engine::open(&root, EngineOptions::default()).expect("reopen");
    assert!(engine.fsck(false).expect("fsck").is_clean());
    engine.close().expect("close");
}

#[test]
fn labels_over_their_bounds_are_refused_and_the_engine_serves_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let engine = open(&root);
    // 20 MB of labels: more than the journal takes in one record.
    let huge: Labels = (0..5000)
        .map(|i| (format!("k{i}"), "v".repeat(4000)))
        .collect();
    assert!(matches!(
        invalid(engine.prepare("huge", None, huge)),
        Invalid::TooManyLabels {
            max: MAX_LABELS,
            ..
        }
    ));
    let large: Labels = (0..100)
        .map(|i| (format!("k{i}"), "v".repeat(4000)))
        .collect();
    assert!(matches!(
        invalid(engine.prepare("large", None, large.clone())),
        Invalid::LabelsTooLarge { .. }
    ));
    engine
        .prepare("ok", None, Labels::new())
        .expect("still serving");
    let info = engine.stat("ok").expect("stat");
    let mut with = info.clone();
    with.labels = large;
    assert!(matches!(
        invalid(engine.update(with, &[])),
        Invalid::LabelsTooLarge { .. }
    ));
    assert!(matches!(
        invalid(engine.prepare(&"k".repeat(5000), None, Labels::new())),
        Invalid::KeyTooLong { .. }
    ));
    assert!(engine.stat("ok").expect("stat").labels.is_empty());
    engine.close().expect("close");
}

#[test]
fn a_record_over_the_journal_limit_is_refused_and_the_engine_serves_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let mut options = EngineOptions::default();
    options.wal.max_record_bytes = 2048;
    let (engine, _) = Engine::open(&root, options).expect("open");
    let key = "k".repeat(3000);
    assert!(matches!(
        invalid(engine.prepare(&key, None, Labels::new())),
        Invalid::RecordTooLarge { max: 2048, .. }
    ));
    engine
        .prepare("ok", None, Labels::new())
        .expect("still serving");
    engine.commit("done", "ok", Labels::new()).expect("commit");
    engine.close().expect("close");
}

#[cfg(feature = "failpoints")]
mod panics {
    use super::*;

    fn panicked<T: std::fmt::Debug>(r: Result<T, EngineError>, want: &str) {
        match r {
            Err(EngineError::WorkerPanicked { job, .. }) => assert_eq!(job, want),
            other => panic!("expected a panicked {want} job, got {other:?}"),
        }
    }

    #[test]
    fn a_panicking_worker_job_is_an_error_for_its_client() {
        let scenario = fail::FailScenario::setup();
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let engine = open(&root);
        // An empty prepare needs no worker (it is made inline); a copy of a parent does.
        engine.prepare("b", None, Labels::new()).expect("b");
        engine.commit("base", "b", Labels::new()).expect("base");
        fail::cfg("engine::worker::job", "1*panic").expect("cfg");
        panicked(engine.prepare("p", Some("base"), Labels::new()), "stage");
        // The refused staging was aborted: the key is free again, the engine serves.
        engine
            .prepare("p", Some("base"), Labels::new())
            .expect("prepare again");
        // A tree over the inline seal's limit: its commit is sealed by a worker.
        let tree = engine.mounts("p").expect("mounts")[0].source.clone();
        let big = vec![7u8; cairn_driver::INLINE_SEAL_MAX_BYTES as usize + 1];
        std::fs::write(tree.join("big"), &big).expect("write");
        fail::cfg("engine::worker::job", "1*panic").expect("cfg");
        panicked(engine.commit("c", "p", Labels::new()), "seal");
        engine
            .commit("c", "p", Labels::new())
            .expect("commit again");
        engine.prepare("q", Some("c"), Labels::new()).expect("q");
        fail::cfg("engine::worker::job", "1*panic").expect("cfg");
        panicked(engine.usage("q"), "usage");
        fail::cfg("engine::worker::job", "1*panic").expect("cfg");
        panicked(import(&engine, &layer_tar()), "import");
        import(&engine, &layer_tar()).expect("import again");
        fail::cfg("engine::worker::job", "1*panic").expect("cfg");
        panicked(engine.remove("q"), "delete");
        assert!(
            matches!(
                engine.stat("q"),
                Err(EngineError::State(StateError::NotFound { .. }))
            ),
            "the removal itself was journaled"
        );
        fail::cfg("engine::worker::job", "off").expect("cfg");
        // Every worker is still there: a burst of jobs, more than there are workers, finishes.
        for i in 0..20 {
            engine
                .prepare(&format!("burst{i}"), Some("c"), Labels::new())
                .expect("burst");
        }
        engine.close().expect("close");
        let (engine, _) = Engine::open(&root, EngineOptions::default()).expect("reopen");
        engine.cleanup().expect("cleanup");
        assert!(engine.fsck(false).expect("fsck").is_clean());
        engine.close().expect("close");
        scenario.teardown();
    }

    #[test]
    fn close_reports_an_engine_thread_that_panicked() {
        let scenario = fail::FailScenario::setup();
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let engine = open(&root);
        let other = engine.clone();
        engine
            .prepare("before", None, Labels::new())
            .expect("before");
        fail::cfg("engine::batch::before_append", "1*panic").expect("cfg");
        assert!(matches!(
            engine.prepare("lost", None, Labels::new()),
            Err(EngineError::EnginePanicked { .. })
        ));
        fail::cfg("engine::batch::before_append", "off").expect("cfg");
        assert!(matches!(
            other.stat("before"),
            Err(EngineError::EnginePanicked { .. })
        ));
        assert!(matches!(
            engine.close(),
            Err(EngineError::EnginePanicked { .. })
        ));
        assert!(matches!(
            other.close(),
            Err(EngineError::EnginePanicked { .. })
        ));
        // The root recovers: the acknowledged snapshot is there, the unjournaled one is not.
        let (engine, _) = Engine::open(&root, EngineOptions::default()).expect("reopen");
        engine.stat("before").expect("acknowledged");
        assert!(engine.stat("lost").is_err());
        engine.close().expect("close");
        scenario.teardown();
    }
}
