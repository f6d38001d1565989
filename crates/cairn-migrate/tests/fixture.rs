//! `migrate` on data roots written as Docker writes them: aufs (which no kernel here mounts)
//! and overlay2 (whiteouts as 0/0 devices, needs root), from the shared corpus's layers. The
//! encoder reproduces the tar-split files Docker 20.10 wrote for the same tars byte for byte
//! (committed under `tests/fixtures/`); layers come back byte for byte; the source is left
//! unchanged; a tampered file is caught and named; `--strict` imports nothing; a run
//! interrupted (the process aborted) after any layer or image finishes on the next run without
//! importing anything twice.

mod support;

use cairn_migrate::{migrate, GraphDriver, MigrateError, Options, Summary};
use std::path::Path;
use support::{corpus, is_root, listing, open_vfs, write_root, Driver, ImageSpec};

fn chain_tars(corpus: &Path) -> Vec<Vec<u8>> {
    ["0-base", "1-whiteouts", "2-top"]
        .iter()
        .map(|n| std::fs::read(corpus.join("chain").join(format!("{n}.tar"))).expect("chain tar"))
        .collect()
}

fn specs(corpus: &Path) -> Vec<ImageSpec<'static>> {
    let gnu = std::fs::read(corpus.join("layers/gnu.tar")).expect("gnu.tar");
    vec![
        ImageSpec {
            name: "cairn/chain:latest",
            layers: chain_tars(corpus),
        },
        ImageSpec {
            name: "docker.io/library/gnu:1",
            layers: vec![gnu],
        },
    ]
}

fn run(
    engine: &cairn_engine::EngineHandle,
    src: &Path,
    options: &Options,
) -> Result<Summary, MigrateError> {
    migrate(engine, src, options, &|_| {})
}

fn export(engine: &cairn_engine::EngineHandle, chain: &str) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    struct Chan(std::sync::mpsc::Sender<Vec<u8>>);
    impl std::io::Write for Chan {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    engine
        .export_layer(chain, Box::new(Chan(tx)))
        .expect("export");
    rx.try_iter().flatten().collect()
}

#[test]
fn encoder_reproduces_dockers_tar_split() {
    let Some(corpus) = corpus() else { return };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (tar, fixture) in [
        ("chain/0-base.tar", "0-base"),
        ("chain/1-whiteouts.tar", "1-whiteouts"),
        ("chain/2-top.tar", "2-top"),
        ("layers/gnu.tar", "gnu"),
    ] {
        let bytes = std::fs::read(corpus.join(tar)).expect("tar");
        let ours = cairn_migrate::tarsplit::encode(&bytes).expect("encode");
        let docker =
            std::fs::read(fixtures.join(format!("{fixture}.tar-split.json"))).expect("fixture");
        assert!(
            ours == docker,
            "{tar}: our tar-split differs from Docker 20.10's"
        );
    }
}

fn migrates(driver: Driver) {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("docker");
    let written = write_root(&src, driver, &specs(&corpus));
    let before = listing(&src);
    let engine = open_vfs(&tmp.path().join("cairn"));
    let summary = run(&engine, &src, &Options::default()).expect("migrate");
    assert_eq!(summary.skipped, vec![], "{summary:?}");
    assert_eq!(summary.warnings, Vec::<String>::new());
    assert_eq!((summary.layers_moved, summary.images_moved), (4, 2));
    let tars: Vec<Vec<u8>> = specs(&corpus).into_iter().flat_map(|s| s.layers).collect();
    assert_eq!(
        summary.bytes_moved,
        tars.iter().map(|t| t.len() as u64).sum::<u64>()
    );
    // Every layer comes back as the very tar Docker was given.
    for ((chain, _, _), tar) in written.layers.iter().zip(&tars) {
        assert!(
            export(&engine, chain) == *tar,
            "layer {chain} does not export byte for byte"
        );
    }
    let mut names: Vec<String> = engine
        .images()
        .expect("images")
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    assert_eq!(names, ["cairn/chain:latest", "gnu:1"]);
    let chain_image = engine
        .images()
        .expect("images")
        .into_iter()
        .find(|i| i.name == "cairn/chain:latest");
    let chain_image = chain_image.expect("chain image");
    assert_eq!(chain_image.layers.len(), 3);
    assert_eq!(chain_image.config_digest, written.images[0]);
    // Read-only on the source.
    assert_eq!(listing(&src), before, "the migration changed the source");
    // Again: everything is there, nothing is read or imported.
    let again = run(&engine, &src, &Options::default()).expect("migrate again");
    assert_eq!(
        (
            again.layers_moved,
            again.layers_present,
            again.images_moved,
            again.images_present
        ),
        (0, 4, 0, 2)
    );
    engine.close().expect("close");
}

#[test]
fn aufs_root_migrates() {
    migrates(Driver::Aufs);
}

#[test]
fn overlay2_root_migrates() {
    if !is_root() {
        println!("skipped: overlay2's whiteouts (0/0 devices, trusted xattrs) need root");
        return;
    }
    migrates(Driver::Overlay2);
}

#[test]
fn tampered_file_is_named_and_skipped_and_strict_refuses() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("docker");
    let written = write_root(&src, Driver::Aufs, &specs(&corpus));
    // Layer 1 of the chain: same length, one byte changed.
    let conf = written.layers[1].2.join("etc/conf");
    let mut bytes = std::fs::read(&conf).expect("read");
    bytes[0] ^= 0x20;
    std::fs::write(&conf, &bytes).expect("tamper");

    let strict = open_vfs(&tmp.path().join("strict"));
    let err = run(
        &strict,
        &src,
        &Options {
            strict: true,
            ..Options::default()
        },
    )
    .err();
    assert!(matches!(err, Some(MigrateError::Refused { .. })), "{err:?}");
    assert_eq!(
        strict.layers().expect("layers"),
        vec![],
        "--strict imported something"
    );
    assert_eq!(strict.images().expect("images"), vec![]);
    strict.close().expect("close");

    let engine = open_vfs(&tmp.path().join("cairn"));
    let summary = run(
        &engine,
        &src,
        &Options {
            storage_driver: Some(GraphDriver::Aufs),
            strict: false,
        },
    )
    .expect("migrate");
    let bad = &written.layers[1].0;
    let reason = summary
        .skipped
        .iter()
        .find(|s| s.id == *bad)
        .map(|s| s.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("etc/conf") && reason.contains("CRC-64"),
        "{reason}"
    );
    let top = &written.layers[2].0;
    assert!(
        summary
            .skipped
            .iter()
            .any(|s| s.id == *top && s.reason.contains("parent")),
        "{summary:?}"
    );
    assert!(
        summary
            .skipped
            .iter()
            .any(|s| s.kind == "image" && s.id == written.images[0]),
        "{summary:?}"
    );
    // The base and the gnu layer are in; nothing of the tampered chain above the base is.
    let mut have: Vec<String> = engine
        .layers()
        .expect("layers")
        .into_iter()
        .map(|l| l.chain_id)
        .collect();
    have.sort();
    let mut want = vec![written.layers[0].0.clone(), written.layers[3].0.clone()];
    want.sort();
    assert_eq!(have, want);
    assert_eq!(summary.names, vec!["gnu:1".to_owned()]);

    // A file one byte longer than tar-split says is caught too.
    std::fs::write(&conf, b"new\n").expect("grow");
    let again = run(&engine, &src, &Options::default()).expect("migrate");
    let reason = again
        .skipped
        .iter()
        .find(|s| s.id == *bad)
        .map(|s| s.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("etc/conf") && reason.contains("longer"),
        "{reason}"
    );
    engine.close().expect("close");
}

/// The child half of the interrupted migration: migrate, and abort the process (no unwinding,
/// no engine shutdown: as a kill) at the `MIGRATE_ABORT_AT`-th progress event of its kind.
#[test]
fn interrupted_child() {
    let (Ok(src), Ok(root), Ok(at)) = (
        std::env::var("MIGRATE_SRC"),
        std::env::var("MIGRATE_ROOT"),
        std::env::var("MIGRATE_ABORT_AT"),
    ) else {
        return;
    };
    let (kind, n) = at.split_once(':').expect("kind:n");
    let n: usize = n.parse().expect("n");
    let engine = open_vfs(Path::new(&root));
    let seen = std::cell::Cell::new(0usize);
    let progress = |e: cairn_migrate::Event<'_>| {
        let hit = matches!(
            (&e, kind),
            (cairn_migrate::Event::Imported { .. }, "layer")
                | (cairn_migrate::Event::Image { .. }, "image")
        );
        if hit {
            seen.set(seen.get() + 1);
            if seen.get() == n {
                std::process::abort();
            }
        }
    };
    let _ = migrate(&engine, Path::new(&src), &Options::default(), &progress);
    std::process::exit(3);
}

#[test]
fn interrupted_migration_resumes_without_importing_twice() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("docker");
    let written = write_root(&src, Driver::Aufs, &specs(&corpus));
    let total = written.layers.len();
    let mut points: Vec<(String, usize)> = (1..=total).map(|k| ("layer".to_owned(), k)).collect();
    points.push(("image".to_owned(), 1));
    for (kind, k) in points {
        let root = tmp.path().join(format!("cairn-{kind}-{k}"));
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "interrupted_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MIGRATE_SRC", &src)
            .env("MIGRATE_ROOT", &root)
            .env("MIGRATE_ABORT_AT", format!("{kind}:{k}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("child");
        assert!(
            status.code().is_none(),
            "{kind}:{k}: the child was not aborted ({status})"
        );
        let engine = open_vfs(&root);
        let summary = run(&engine, &src, &Options::default()).expect("resume");
        let imported_before = if kind == "layer" { k } else { total };
        assert_eq!(summary.skipped, vec![], "{kind}:{k}");
        assert_eq!(
            (summary.layers_present, summary.layers_moved),
            (imported_before, total - imported_before),
            "{kind}:{k}: the resumed run re-imported a layer"
        );
        assert_eq!(
            summary.images_moved + summary.images_present,
            2,
            "{kind}:{k}"
        );
        if kind == "image" {
            assert_eq!(
                summary.images_present, 1,
                "{kind}:{k}: an image recorded before the abort"
            );
        }
        let problems: Vec<_> = engine
            .verify(None)
            .expect("verify")
            .into_iter()
            .filter(|v| v.problem.is_some())
            .collect();
        assert_eq!(problems, vec![], "{kind}:{k}");
        assert_eq!(engine.layers().expect("layers").len(), total);
        let fsck = engine.fsck(false).expect("fsck");
        assert!(fsck.findings.is_empty(), "{kind}:{k}: {fsck:?}");
        engine.close().expect("close");
    }
}

/// A payload that changes after the check, while the engine reads the re-assembled tar: the
/// import fails with an error `migrate` skips the layer for, and nothing is imported.
#[test]
fn payload_changed_during_import_imports_nothing() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("docker");
    let written = write_root(&src, Driver::Aufs, &specs(&corpus));
    let gnu = &written.layers[3];
    let tool = gnu.2.join("bin/tool");
    let mut bytes = std::fs::read(&tool).expect("read");
    bytes[100] ^= 1;
    std::fs::write(&tool, &bytes).expect("tamper");
    let tar_split = src
        .join("image/aufs/layerdb/sha256")
        .join(gnu.0.trim_start_matches("sha256:"))
        .join("tar-split.json.gz");
    let engine = open_vfs(&tmp.path().join("cairn"));
    let input = cairn_migrate::assemble::Assembly::open(&tar_split, &gnu.2).expect("open");
    let options = cairn_engine::ImportOptions {
        parent: None,
        pin: true,
        expected_diff_id: Some(gnu.0.parse().expect("digest")),
    };
    let err = engine.import_layer(Box::new(input), options).err();
    assert!(
        matches!(
            err,
            Some(
                cairn_engine::EngineError::Layer(_)
                    | cairn_engine::EngineError::DiffIdMismatch { .. }
            )
        ),
        "{err:?}"
    );
    let text = format!("{:?}", err);
    assert!(text.contains("bin/tool"), "{text}");
    assert_eq!(engine.layers().expect("layers"), vec![]);
    engine.close().expect("close");
}

/// Broken layer-store records: each layer that cannot be read is skipped with its reason, and
/// so is everything above it; what can be moved is.
#[test]
fn broken_records_are_skipped_with_reasons() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("docker");
    let written = write_root(&src, Driver::Aufs, &specs(&corpus));
    let layerdb = src.join("image/aufs/layerdb/sha256");
    let dir = |i: usize| layerdb.join(written.layers[i].0.trim_start_matches("sha256:"));
    // The chain's middle layer is gone from the layer store; gnu's tar-split is missing.
    std::fs::remove_dir_all(dir(1)).expect("remove layer 1");
    std::fs::remove_file(dir(3).join("tar-split.json.gz")).expect("remove tar-split");
    // A record whose name is not its ChainID.
    let bogus = layerdb.join("0".repeat(64));
    std::fs::create_dir_all(&bogus).expect("bogus");
    for f in ["diff", "cache-id", "tar-split.json.gz"] {
        std::fs::copy(dir(0).join(f), bogus.join(f)).expect("copy");
    }
    let engine = open_vfs(&tmp.path().join("cairn"));
    let summary = run(&engine, &src, &Options::default()).expect("migrate");
    let reason = |id: &str| {
        summary
            .skipped
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.reason.clone())
            .unwrap_or_default()
    };
    assert!(
        reason(&written.layers[2].0).contains("is not in the layer store"),
        "{summary:#?}"
    );
    assert!(
        reason(&written.layers[3].0).contains("tar-split.json.gz"),
        "{summary:#?}"
    );
    assert!(
        reason(&format!("sha256:{}", "0".repeat(64))).contains("ChainID"),
        "{summary:#?}"
    );
    assert!(
        reason(&written.images[0]).contains("cannot be moved"),
        "{summary:#?}"
    );
    assert!(
        reason(&written.images[1]).contains("cannot be moved"),
        "{summary:#?}"
    );
    assert_eq!(
        (summary.layers_moved, summary.images_moved),
        (1, 0),
        "{summary:#?}"
    );
    assert_eq!(summary.skipped.len(), 5, "{summary:#?}");
    engine.close().expect("close");
}
