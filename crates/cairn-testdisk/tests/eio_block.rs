//! EIO at the block layer during the block driver's fsyncs: its root on the test disk's xfs
//! (`-m reflink=1`). For each command whose durable steps are block's own (prepare and view:
//! the clone's fsync; commit: the image's fsync before the marker; import and container
//! create: the syncfs of the image's loop mount and the image's fsync; remove), the disk fails
//! the j-th flush or write the command causes (once). The answer must be a typed error or
//! success, never a panic of the engine thread; the engine stays up (it answers a walk and the
//! same command sent again after the disk healed); a commit whose image fsync failed is never
//! acknowledged by a retry over the same dirty pages (the image is marked `sync-failed`). Then
//! the power is cut after the last flush and the root must show every acknowledged command,
//! an unacknowledged one wholly there or gone, no orphan image, nothing attached, fsck clean.
//!
//! Prints one line per case and `eio_cases_checked: N (block)`; the seed (which write of a
//! command fails) is printed and replayed with `CAIRN_SEED`.

mod support;

use cairn_engine::Engine;
use cairn_state::types::DriverKind;
use cairn_testdisk::{missing, CrashImages, FsKind, TestDisk};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::crashkit::{Model, Op};
use support::steps::*;
use support::{apply, check_image, run_steps, skip, Expect, Step};

/// The apparent size of every image (the driver's minimum): the test disk's xfs is 320 MiB.
const IMAGE_BYTES: &str = "67108864";

/// Panics on the engine thread (named `cairn-engine`) in this process that the engine does
/// not contain.
static ENGINE_PANICS: AtomicUsize = AtomicUsize::new(0);

/// The frames under which the index runs every call into sled inside `catch_unwind` (sled
/// 0.34.7 unwraps some disk errors; see eio.rs): those panics become `IndexDamaged`.
const CONTAINED_BY: [&str; 3] = [
    "cairn_engine::index::Index::guard",
    "cairn_engine::index::drop_contained",
    "cairn_engine::index::Index::open::{{closure}}",
];

fn count_engine_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("cairn-engine") {
            let stack = std::backtrace::Backtrace::force_capture().to_string();
            if CONTAINED_BY.iter().any(|f| stack.contains(f)) {
                eprintln!("contained panic on the engine thread: {info}");
                return;
            }
            ENGINE_PANICS.fetch_add(1, Ordering::Relaxed);
        }
        previous(info)
    }));
}

struct Kind {
    name: &'static str,
    /// Durable in the disk's base image.
    template: Vec<Step>,
    /// Run on the live disk before the fault is armed.
    live: Vec<Step>,
    command: Step,
}

fn kinds() -> Vec<Kind> {
    let committed = || vec![p("a", None), w("a", "f1", 6000), c("base", "a")];
    let k = |name, template, live, command| Kind {
        name,
        template,
        live,
        command,
    };
    vec![
        k("prepare", committed(), vec![], p("b", Some("base"))),
        k("view", committed(), vec![], v("v1", "base")),
        k(
            "commit",
            vec![p("a", None)],
            vec![w("a", "f1", 20_000), w("a", "f2", 300)],
            c("base", "a"),
        ),
        k("remove", committed(), vec![], rm("base")),
        k("import", vec![], vec![], imp("L0", true)),
        k(
            "container_create",
            vec![imp("L0", true), img("im", "L0")],
            vec![],
            ctr("ctr", "im"),
        ),
    ]
}

fn template_image(kind: &Kind, out: &Path) {
    let fs = FsKind::Xfs;
    let mut disk = TestDisk::format(support::server(), fs, fs.image_bytes(), "blockdrv-eio-t")
        .expect("format");
    let root = disk.mountpoint().join("root");
    let (h, _) = Engine::open(&root, support::crashkit::options(DriverKind::Block)).expect("open");
    for r in run_steps(&disk, &h, &kind.template) {
        r.result
            .unwrap_or_else(|e| panic!("template step {}: {e}", r.step.name()));
    }
    h.close().expect("close");
    disk.unmount().expect("unmount");
    cairn_testdisk::sparse_copy(&disk.live_image(), out).expect("copy the template");
}

/// One case: its line, the failure if the promise broke, and the command's (writes, flushes).
fn case(
    kind: &Kind,
    template: &Path,
    fault: Option<(&str, u64)>,
) -> (String, Option<String>, (u64, u64)) {
    let fs = FsKind::Xfs;
    let driver = DriverKind::Block;
    let mut disk =
        TestDisk::over_image(support::server(), fs, template, "blockdrv-eio").expect("disk");
    let root = disk.mountpoint().join("root");
    let (h, _) = Engine::open(&root, support::crashkit::options(driver)).expect("open");
    let live = run_steps(&disk, &h, &kind.live);
    for r in &live {
        r.result
            .clone()
            .unwrap_or_else(|e| panic!("live step {}: {e}", r.step.name()));
    }
    let before = disk.stats().expect("stats");
    if let Some((what, j)) = fault {
        disk.control(&format!("fail {what} {j} once")).expect("arm");
    }
    let first = run_steps(&disk, &h, std::slice::from_ref(&kind.command));
    let during = disk.stats().expect("stats");
    disk.control("heal").expect("heal");
    let mut problems = Vec::new();
    // The engine still answers: a walk succeeds, or (after a failed sync of the WAL or of an
    // install, which is never retried: the engine stops by design) fails with the typed
    // `Failed` error naming the cause, never by hanging or panicking.
    let walked = match h.walk(&[]) {
        Ok(_) => "ok",
        Err(cairn_engine::EngineError::Failed { .. }) => "stopped",
        Err(e) => {
            problems.push(format!("a walk after the EIO failed: {e}"));
            "failed"
        }
    };
    let retry = if first[0].result.is_err() {
        run_steps(&disk, &h, std::slice::from_ref(&kind.command))
    } else {
        Vec::new()
    };
    if let (Some(Err(e)), Some(Ok(()))) = (
        first.first().map(|r| &r.result),
        retry.first().map(|r| &r.result),
    ) {
        // fsyncgate: a second fsync of the image would return 0 over the pages the failed one
        // dropped; the retry of a commit must be refused, never acknowledged over them.
        if kind.name == "commit" && e.contains("fsync") && e.contains("image") {
            problems.push(format!(
                "a commit whose image fsync failed ({e}) was acknowledged on retry"
            ));
        }
    }
    let cut_at = disk.stats().expect("stats").flushes;
    let closed = h.close();
    support::crashkit::check_nothing_attached(&root);
    if let Err(e) = disk.unmount() {
        problems.push(format!(
            "the engine did not let go of the root after close: {e}"
        ));
    }
    let counts = (
        during.writes - before.writes,
        (during.flushes + during.failed_flushes) - (before.flushes + before.failed_flushes),
    );
    let mut acked = Model::new(driver);
    for s in &kind.template {
        apply(&mut acked, &support::exec_effect(s));
    }
    for r in &live {
        apply(&mut acked, &r.effect);
    }
    let writes = live
        .iter()
        .filter_map(|r| match &r.effect {
            support::Effect::Op(Op::Write { key, file, .. }) => Some((key.clone(), file.clone())),
            _ => None,
        })
        .collect();
    let ok = first.iter().chain(&retry).find(|r| r.result.is_ok());
    let effect = ok.map_or_else(|| first[0].effect.clone(), |r| r.effect.clone());
    let expect = if ok.is_some() {
        apply(&mut acked, &effect);
        Expect {
            acked,
            inflight: None,
            writes,
            unsynced_any: true,
        }
    } else {
        let mut with = acked.clone();
        apply(&mut with, &effect);
        Expect {
            acked,
            inflight: Some((kind.command.name(), with)),
            writes,
            unsynced_any: true,
        }
    };
    let log = disk.log().expect("log");
    let scratch = disk.scratch();
    let mut images = CrashImages::new(&disk.base_image(), log, &scratch).expect("images");
    let img = scratch.join("crash.img");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    images
        .image(cut_at as usize, &mut rng, true, &img)
        .expect("crash image");
    if let Err(e) = check_image(fs, &img, &scratch.join("mnt"), driver, &expect, true) {
        problems.push(e);
    }
    let show = |r: &[support::Ran]| match r.first().map(|r| &r.result) {
        None => "-".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(e)) => format!("Err({})", e.chars().take(100).collect::<String>()),
    };
    let line = format!(
        "eio xfs block {}: fault {fault:?}: first {}, walk {walked}, retry {}, close {:?} => {}",
        kind.name,
        show(&first),
        show(&retry),
        closed.is_ok(),
        if problems.is_empty() {
            "checked"
        } else {
            "BROKEN"
        }
    );
    let failure = (!problems.is_empty()).then(|| format!("{line}: {}", problems.join("; ")));
    (line, failure, counts)
}

#[test]
fn eio_block_xfs() {
    if let Some(why) = missing(FsKind::Xfs) {
        return skip(&why);
    }
    if let Some(why) = cairn_driver::scratch::unavailable() {
        return skip(&format!("the block driver {why}"));
    }
    // The only test of this binary: no other thread reads the environment while it is set.
    std::env::set_var("CAIRN_BLOCK_SIZE_BYTES", IMAGE_BYTES);
    count_engine_panics();
    let seed = support::seed();
    println!("eio block xfs: seed {seed} (replay: CAIRN_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut cases = 0;
    let mut failures = Vec::new();
    for kind in kinds() {
        // Removed on drop, also when a case panics.
        let dir = tempfile::Builder::new()
            .prefix(&format!("blockdrv-eio-{}-", kind.name))
            .tempdir()
            .expect("template dir");
        let template = dir.path().join("template.img");
        template_image(&kind, &template);
        let (line, failure, (writes, flushes)) = case(&kind, &template, None);
        println!("{line} ({writes} writes, {flushes} flushes)");
        cases += 1;
        failures.extend(failure);
        // The first flushes (the clone's or image's fsync comes first), the last (the WAL's
        // completion record), and a first, a last and a seeded write.
        let mut faults: Vec<(&str, u64)> = (1..=flushes.min(3)).map(|j| ("flush", j)).collect();
        if flushes > 3 {
            faults.push(("flush", flushes));
        }
        if writes > 0 {
            faults.push(("write", 1));
            faults.push(("write", rng.gen_range(1..=writes)));
            faults.push(("write", writes));
        }
        faults.dedup();
        for f in faults {
            let (line, failure, _) = case(&kind, &template, Some(f));
            println!("{line}");
            cases += 1;
            failures.extend(failure);
        }
    }
    println!("eio_cases_checked: {cases} (block)");
    let panics = ENGINE_PANICS.load(Ordering::Relaxed);
    for f in &failures {
        println!("FAILED: {f}");
    }
    assert_eq!(panics, 0, "an I/O error panicked the engine thread");
    assert!(
        failures.is_empty(),
        "{} of {cases} EIO cases of block on xfs broke the promise (seed {seed}); first: {}",
        failures.len(),
        failures[0]
    );
}
