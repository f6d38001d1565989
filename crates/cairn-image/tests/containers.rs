//! Containers through the engine: a read-write snapshot on a `NAME-init` snapshot on an image
//! layer, holding it; removal releases everything.

use cairn_engine::{Engine, EngineError, EngineOptions};
use cairn_state::{Precondition, StateError};
use std::path::Path;

#[test]
fn container_on_an_image_holds_its_layers_until_removed() {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-oci");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (engine, _) = Engine::open(&root, EngineOptions::default()).expect("open");
    let loaded = cairn_image::load(&engine, &image, &|_| {}).expect("load");
    let top = loaded[0].top.clone();

    let mounts = engine
        .create_container("web", None, Some("hello:1"))
        .expect("create");
    let rw = &mounts[0].source;
    assert!(rw.join("etc/hostname").exists() && rw.join("etc/resolv.conf").exists());
    assert!(rw.join("bin/hello").exists(), "the image's files are below");
    std::fs::write(rw.join("state"), b"container data").expect("write");
    let info = engine.stat("web").expect("rw");
    assert_eq!(info.parent.as_deref(), Some("web-init"));
    assert_eq!(
        engine.stat("web-init").expect("init").parent.as_deref(),
        Some(top.as_str())
    );
    assert!(matches!(
        engine.remove("web"),
        Err(EngineError::State(StateError::FailedPrecondition {
            reason: Precondition::OwnedByContainer { .. },
            ..
        }))
    ));
    let err = engine
        .create_container("web", None, Some("hello:1"))
        .expect_err("exists");
    assert!(
        matches!(err, EngineError::State(StateError::AlreadyExists { .. })),
        "{err}"
    );
    assert!(matches!(
        engine.create_container("x", None, Some("nope")),
        Err(EngineError::State(StateError::NotFound { .. }))
    ));

    // The image goes; the container still holds the layers.
    engine.remove_image("hello:1").expect("rm image");
    assert_eq!(engine.layers().expect("layers").len(), 2);
    engine.close().expect("close");

    let (engine, report) = Engine::open(&root, EngineOptions::default()).expect("reopen");
    assert!(
        report.containers_removed.is_empty() && !report.layers_collected,
        "{report:?}"
    );
    let containers = engine.containers().expect("containers");
    assert!(containers[0].ready);
    let rw = &engine.mounts("web").expect("mounts")[0].source;
    assert_eq!(
        std::fs::read(rw.join("state")).expect("read"),
        b"container data"
    );
    engine.remove_container("web").expect("rm container");
    assert!(
        engine.layers().expect("layers").is_empty(),
        "nothing holds the layers any more"
    );
    assert!(engine.walk(&[]).expect("walk").is_empty());
    let fsck = engine.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "{fsck:?}");
}
