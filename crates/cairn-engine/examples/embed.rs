//! Embedding cairn's engine: open a root, build two snapshots on each other, look at them,
//! close, reopen (recovery), and see that everything acknowledged is still there.
//!
//! Run with `cargo run -p cairn-engine --example embed [ROOT]` (a fresh temporary root when
//! none is given). CI runs it.

use cairn_engine::{Engine, EngineError, EngineOptions, Kind, Labels, StateError};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("root"));

    let (engine, report) = Engine::open(&root, EngineOptions::default())?;
    println!("opened {}: {report:?}", root.display());

    // A base layer: prepare an Active snapshot, fill it, commit it.
    let labels = Labels::from([("example".to_owned(), "embed".to_owned())]);
    let mounts = engine.prepare("base-work", None, labels.clone())?;
    let base_dir = &mounts[0].source;
    std::fs::write(base_dir.join("greeting"), "hello from the base layer\n")?;
    engine.commit("base", "base-work", labels)?;

    // An Active snapshot on it (on vfs, a full copy of the parent) and a read-only view.
    let mounts = engine.prepare("app", Some("base"), Labels::new())?;
    let app_dir = &mounts[0].source;
    let greeting = std::fs::read_to_string(app_dir.join("greeting"))?;
    assert_eq!(greeting, "hello from the base layer\n");
    std::fs::write(app_dir.join("app.conf"), "port = 8080\n")?;
    let view = engine.view("peek", Some("base"), Labels::new())?;
    println!("view mounts: {view:?}");

    // Walk with a containerd filter, and ask for usage.
    for info in engine.walk(&["labels.example==embed"])? {
        println!("labelled: {} ({:?})", info.key, info.kind);
    }
    let usage = engine.usage("base")?;
    println!(
        "base uses {} bytes in {} inodes",
        usage.size_bytes, usage.inodes
    );

    // A refused command is a typed error and changes nothing.
    match engine.prepare("app", Some("base"), Labels::new()) {
        Err(EngineError::State(StateError::AlreadyExists { key })) => {
            println!("refused, as expected: {key} exists")
        }
        other => return Err(format!("expected AlreadyExists, got {other:?}").into()),
    }
    engine.close()?;

    // Reopen: recovery replays the journal; every acknowledged command is there.
    let (engine, report) = Engine::open(&root, EngineOptions::default())?;
    println!("reopened: {report:?}");
    assert_eq!(engine.stat("base")?.kind, Kind::Committed);
    assert_eq!(engine.stat("app")?.kind, Kind::Active);
    assert_eq!(engine.stat("peek")?.kind, Kind::View);
    let fsck = engine.fsck(false)?;
    assert!(fsck.is_clean(), "{fsck:?}");
    println!("fsck: {} snapshots, clean", fsck.snapshots_checked);

    // Clean up in containerd's order: children before parents.
    for key in ["peek", "app", "base"] {
        engine.remove(key)?;
    }
    engine.close()?;
    println!("done");
    Ok(())
}
