//! The EIO runner shared by the `eio*` suites (the cases and their check are described in
//! eio.rs): for each command kind, a write or flush it causes fails once, the command is sent
//! again after a heal, the power is cut after the last flush, and the root is checked.

use super::crashkit::{Model, Op};
use super::steps::*;
use super::{apply, check_image, driver_name, run_steps, skip, suite_name, Expect, Step};
use cairn_engine::Engine;
use cairn_state::types::DriverKind;
use cairn_testdisk::{missing, CrashImages, FsKind, TestDisk};
use rand::{Rng, SeedableRng};
use std::path::Path;

static BUSY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Panics on threads named `cairn-engine` (the engine thread), in this process, that the engine
/// does not contain.
static ENGINE_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Panics inside sled that the engine's index contained (sled 0.34.7 unwraps some disk errors:
/// the EROFS of its log's `sync_all` on drop, logger.rs:467).
static CONTAINED_SLED_PANICS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The frames under which the index runs every call into sled inside `catch_unwind`.
const CONTAINED_BY: [&str; 3] = [
    "cairn_engine::index::Index::guard",
    "cairn_engine::index::drop_contained",
    "cairn_engine::index::Index::open::{{closure}}",
];

fn count_engine_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("cairn-engine") {
                let stack = std::backtrace::Backtrace::force_capture().to_string();
                if CONTAINED_BY.iter().any(|f| stack.contains(f)) {
                    // One line instead of the whole backtrace: the engine turns it into an
                    // error, and the case checks what the client saw.
                    CONTAINED_SLED_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("contained panic on the engine thread: {info}");
                    return;
                }
                ENGINE_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            previous(info)
        }));
    });
}

pub struct Kind {
    pub name: &'static str,
    /// Durable in the disk's base image.
    template: Vec<Step>,
    /// Run on the live disk before the fault is armed (unsynced writes).
    live: Vec<Step>,
    command: Step,
    /// Another thread calls `syncfs` on the file system in a loop while the command runs (the
    /// `sync -f` of another process): writeback, and its errors, happen before the command's
    /// own sync (issue 8, item 3).
    pub stealer: bool,
}

pub fn kinds() -> Vec<Kind> {
    let committed = || vec![p("a", None), w("a", "f1", 6000), c("base", "a")];
    let k = |name, template, live, command| Kind {
        name,
        template,
        live,
        command,
        stealer: false,
    };
    let stolen = |name, template, live, command| Kind {
        name,
        template,
        live,
        command,
        stealer: true,
    };
    vec![
        stolen("import_syncfs", vec![], vec![], imp("L0", true)),
        stolen(
            "commit_syncfs",
            vec![p("a", None)],
            vec![w("a", "f1", 20_000), w("a", "f2", 300)],
            c("base", "a"),
        ),
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
        k("import_gzip", vec![], vec![], imp_gz("L0", true)),
        k("image_load", vec![], vec![], Step::LoadImage),
        k(
            "layer_rm_cascade",
            vec![imp("L0", false), imp("L1", true)],
            vec![],
            lrm("L1"),
        ),
        k(
            "container_create",
            vec![imp("L0", true), img("im", "L0")],
            vec![],
            ctr("ctr", "im"),
        ),
        k(
            "container_rm",
            vec![imp("L0", true), img("im", "L0"), ctr("ctr", "im")],
            vec![],
            crm("ctr"),
        ),
        k(
            "checkpoint",
            vec![p("a", None), p("b", None), rm("a")],
            vec![],
            checkpoint(),
        ),
    ]
}

/// A disk with `template` applied and closed cleanly: its image is every case's base.
fn template_image(fs: FsKind, driver: DriverKind, kind: &Kind, out: &Path) {
    let mut disk =
        TestDisk::format(super::server(), fs, fs.image_bytes(), "eio-template").expect("format");
    let root = disk.mountpoint().join("root");
    let (h, _) = Engine::open(&root, super::crashkit::options(driver)).expect("open");
    for r in run_steps(&disk, &h, &kind.template) {
        r.result
            .unwrap_or_else(|e| panic!("template step {}: {e}", r.step.name()));
    }
    h.close().expect("close");
    disk.unmount().expect("unmount");
    cairn_testdisk::sparse_copy(&disk.live_image(), out).expect("copy the template");
}

/// One case: the outcome line, and the failure if the root broke the promise.
fn case(
    fs: FsKind,
    driver: DriverKind,
    kind: &Kind,
    template: &Path,
    fault: Option<(&str, u64)>,
    strict_release: bool,
) -> (String, Option<String>, (u64, u64)) {
    let mut disk = TestDisk::over_image(super::server(), fs, template, "eio").expect("disk");
    let root = disk.mountpoint().join("root");
    let (h, _) = Engine::open(&root, super::crashkit::options(driver)).expect("open");
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
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stealer = kind.stealer.then(|| {
        let stop = std::sync::Arc::clone(&stop);
        let dir = std::fs::File::open(disk.mountpoint()).expect("open the mount point");
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: syncfs on a descriptor this thread owns.
                unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    });
    let first = run_steps(&disk, &h, std::slice::from_ref(&kind.command));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = stealer {
        t.join().expect("the syncfs thread");
    }
    let during = disk.stats().expect("stats");
    disk.control("heal").expect("heal");
    // Broken promises of the live run (block's own checks), besides the crash image's.
    let mut problems = Vec::new();
    let block = driver == DriverKind::Block;
    // block: the engine still answers: a walk succeeds, or (after a failed sync of the WAL or
    // of an install, which is never retried: the engine stops by design) fails with the typed
    // `Failed` error naming the cause, never by hanging or panicking.
    let walked = if block {
        match h.walk(&[]) {
            Ok(_) => ", walk ok",
            Err(cairn_engine::EngineError::Failed { .. }) => ", walk stopped",
            Err(e) => {
                problems.push(format!("a walk after the EIO failed: {e}"));
                ", walk failed"
            }
        }
    } else {
        ""
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
        // fsyncgate: a second fsync of block's image would return 0 over the pages the failed
        // one dropped; the retry of a commit must be refused, never acknowledged over them.
        if block && kind.name == "commit" && e.contains("fsync") && e.contains("image") {
            problems.push(format!(
                "a commit whose image fsync failed ({e}) was acknowledged on retry"
            ));
        }
    }
    let cut_at = disk.stats().expect("stats").flushes;
    let closed = h.close();
    if block {
        // Its images are loop-mounted while the case reads and writes them.
        super::crashkit::check_nothing_attached(&root);
    }
    // A closed engine has let go of the root; a busy file system means it did not.
    let busy = disk
        .unmount()
        .err()
        .map(|e| format!("the engine did not let go of the root after close: {e}"));
    if busy.is_some() {
        BUSY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let counts = (
        during.writes - before.writes,
        (during.flushes + during.failed_flushes) - (before.flushes + before.failed_flushes),
    );
    // Expectations at the cut: the template and the live steps, the command if either try was
    // acknowledged, else in flight; the live writes are unsynced unless a commit took them.
    let mut acked = Model::new(driver);
    for s in &kind.template {
        apply(&mut acked, &super::exec_effect(s));
    }
    for r in &live {
        apply(&mut acked, &r.effect);
    }
    let writes = live
        .iter()
        .filter_map(|r| match &r.effect {
            super::Effect::Op(Op::Write { key, file, .. }) => Some((key.clone(), file.clone())),
            _ => None,
        })
        .collect();
    let ok = first.iter().chain(&retry).find(|r| r.result.is_ok());
    let effect = first[0].effect.clone();
    let effect = ok.map(|r| r.effect.clone()).unwrap_or(effect);
    let expect = match ok {
        Some(_) => {
            apply(&mut acked, &effect);
            Expect {
                acked,
                inflight: None,
                writes,
                unsynced_any: true,
            }
        }
        None => {
            let mut with = acked.clone();
            apply(&mut with, &effect);
            Expect {
                acked,
                inflight: Some((kind.command.name(), with)),
                writes,
                unsynced_any: true,
            }
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
    // A file system that saw an I/O error marks itself (ext4: the superblock's error state), so
    // the image is repaired first, as an operator would; the strict check comes after.
    let checked = check_image(fs, &img, &scratch.join("mnt"), driver, &expect, true);
    let checked = match (&busy, checked) {
        (Some(b), Ok(())) if strict_release => Err(b.clone()),
        (Some(b), Err(e)) => Err(format!("{b}; {e}")),
        (_, c) => c,
    };
    let checked = match (problems.is_empty(), checked) {
        (true, c) => c,
        (false, Ok(())) => Err(problems.join("; ")),
        (false, Err(e)) => Err(format!("{}; {e}", problems.join("; "))),
    };
    let show = |r: &[super::Ran]| match r.first().map(|r| &r.result) {
        None => "-".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(e)) => format!("Err({})", e.chars().take(100).collect::<String>()),
    };
    let line = format!(
        "eio {} {} {}: fault {:?}: first {}{walked}, retry {}, close {:?} => {}",
        fs.name(),
        driver_name(driver),
        kind.name,
        fault,
        show(&first),
        show(&retry),
        closed.is_ok(),
        if checked.is_ok() { "checked" } else { "BROKEN" }
    );
    let line = match &busy {
        Some(b) => format!("{line} (but {b})"),
        None => line,
    };
    (
        line.clone(),
        checked.err().map(|e| format!("{line}: {e}")),
        counts,
    )
}

/// `strict_release`: a root still busy after `close` (the engine kept files open) fails the
/// case, and an engine thread that panicked fails the test; otherwise both are reported.
pub fn eio(fs: FsKind, drivers: &[DriverKind], strict_release: bool, only: fn(&Kind) -> bool) {
    if let Some(why) = missing(fs) {
        return skip(&why);
    }
    count_engine_panics();
    let seed = super::seed();
    println!("eio {}: seed {seed} (replay: CAIRN_SEED={seed})", fs.name());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut cases = 0;
    let mut failures = Vec::new();
    for &driver in drivers {
        for kind in kinds().into_iter().filter(only) {
            // Removed on drop, also when a case panics.
            let dir = tempfile::Builder::new()
                .prefix(&format!(
                    "cairn-testdisk-eio-{}-{}-{}-",
                    fs.name(),
                    driver_name(driver),
                    kind.name
                ))
                .tempdir()
                .expect("template dir");
            let template = dir.path().join("template.img");
            template_image(fs, driver, &kind, &template);
            // A healthy run counts the command's writes and flushes.
            let (line, failure, (writes, flushes)) =
                case(fs, driver, &kind, &template, None, strict_release);
            println!("{line} ({writes} writes, {flushes} flushes)");
            cases += 1;
            failures.extend(failure);
            let mut faults: Vec<(&str, u64)> = Vec::new();
            for j in 1..=flushes.min(3) {
                faults.push(("flush", j));
            }
            if flushes > 3 {
                faults.push(("flush", flushes));
            }
            if kind.name.starts_with("commit") || kind.stealer {
                // The commit's tree sync is where fsyncgate lives: fail each of its writes.
                faults.extend((1..=writes.min(24)).map(|j| ("write", j)));
            } else if writes > 0 {
                faults.push(("write", 1));
                faults.push(("write", writes));
                faults.push(("write", rng.gen_range(1..=writes)));
            }
            faults.dedup();
            for f in faults {
                let (line, failure, _) =
                    case(fs, driver, &kind, &template, Some(f), strict_release);
                println!("{line}");
                cases += 1;
                failures.extend(failure);
            }
        }
    }
    println!("eio_cases_checked: {cases} ({})", suite_name(fs, drivers));
    let panics = ENGINE_PANICS.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "eio {}: engine threads that panicked (in this process so far): {panics}",
        fs.name()
    );
    println!(
        "eio {}: sled panics the index contained (in this process so far): {}",
        fs.name(),
        CONTAINED_SLED_PANICS.load(std::sync::atomic::Ordering::Relaxed)
    );
    if strict_release {
        assert_eq!(panics, 0, "an I/O error panicked the engine thread");
    }
    println!(
        "eio {}: cases whose root stayed busy after close: {}",
        fs.name(),
        BUSY.load(std::sync::atomic::Ordering::Relaxed)
    );
    for f in &failures {
        println!("FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} EIO cases of {} on {} broke the promise (seed {seed}); first: {}",
        failures.len(),
        suite_name(fs, drivers),
        fs.name(),
        failures[0]
    );
}
