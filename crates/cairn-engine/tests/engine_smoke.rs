use cairn_engine::{Engine, EngineOptions};
use cairn_state::types::Kind;
use cairn_state::Labels;

#[test]
fn prepare_commit_reopen_remove_on_vfs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (engine, report) = Engine::open(&root, EngineOptions::default()).expect("open");
    assert_eq!(report.replayed_records, 0);
    let mounts = engine.prepare("a", None, Labels::new()).expect("prepare");
    assert_eq!(mounts.len(), 1);
    std::fs::write(mounts[0].source.join("hello"), b"world").expect("write");
    engine.commit("base", "a", Labels::new()).expect("commit");
    let child = engine
        .prepare("b", Some("base"), Labels::new())
        .expect("prepare child");
    assert_eq!(
        std::fs::read(child[0].source.join("hello")).expect("read"),
        b"world"
    );
    let info = engine.stat("base").expect("stat");
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(engine.usage("base").expect("usage").size_bytes, 5);
    engine.close().expect("close");

    let (engine, report) = Engine::open(&root, EngineOptions::default()).expect("reopen");
    assert!(report.dropped.is_empty(), "{report:?}");
    assert_eq!(engine.stat("b").expect("b").parent.as_deref(), Some("base"));
    assert!(engine.remove("base").is_err(), "base has a child");
    engine.remove("b").expect("rm b");
    engine.remove("base").expect("rm base");
    assert!(engine.walk(&[]).expect("walk").is_empty());
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
}
