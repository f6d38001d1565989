//! Concurrency: 16 threads share one cloned `EngineHandle` and run mixed commands, each on
//! its own keys (whose outcome it can predict exactly) plus a few shared keys (contested, so
//! conflicts happen). A watchdog fails the test if the threads are not done in 120 s. At the
//! end the walk must agree with what every thread observed, `fsck(false)` must be clean, and a
//! close + reopen must give the same walk.
//!
//! Seeded: `CAIRN_SEED=<n>` replays, `CAIRN_CASES=<n>` sets how many runs.

mod common;

use cairn_engine::{Engine, EngineError, EngineHandle, EngineOptions, Info};
use cairn_state::types::{DriverKind, Kind};
use cairn_state::Labels;
use common::{class, Class};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const THREADS: usize = 16;
const OPS_PER_THREAD: usize = 40;
const SHARED: usize = 3;
const WATCHDOG: Duration = Duration::from_secs(120);

/// What a thread knows for sure about one of its own keys.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Own {
    kind: Kind,
    parent: Option<String>,
    /// The content of the file named after the key written into an active (vfs tree).
    content: Option<String>,
}

/// One thread's record: its exact model of its own keys, and per key how many times it
/// created (or committed into) and destroyed (removed or committed away) that key.
#[derive(Debug, Default)]
struct Observed {
    own: BTreeMap<String, Own>,
    created: BTreeMap<String, i64>,
    destroyed: BTreeMap<String, i64>,
    ops: BTreeMap<(&'static str, Result<(), Class>), u32>,
}

fn cls<T>(r: &Result<T, EngineError>) -> Result<(), Class> {
    r.as_ref().map(|_| ()).map_err(class)
}

#[track_caller]
fn allowed<T: std::fmt::Debug>(r: &Result<T, EngineError>, ok: &[Result<(), Class>], what: &str) {
    let c = cls(r);
    assert!(ok.contains(&c), "{what}: got {r:?}, expected one of {ok:?}");
}

fn worker(t: usize, seed: u64, sn: EngineHandle) -> Observed {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut obs = Observed::default();
    let own_key = |kind: &str, r: usize| format!("t{t}-{kind}{r}");
    for step in 0..OPS_PER_THREAD {
        let ctx = format!("thread {t} step {step}");
        match rng.gen_range(0..100) {
            // Prepare an own active on nothing, an own committed or a shared committed.
            0..=24 => {
                let key = own_key("a", rng.gen_range(0..4));
                let (parent, shared_parent) = match rng.gen_range(0..3) {
                    0 => (None, false),
                    1 => (Some(own_key("c", rng.gen_range(0..4))), false),
                    _ => (Some(format!("s{}", rng.gen_range(0..SHARED))), true),
                };
                let r = sn.prepare(&key, parent.as_deref(), Labels::new());
                let taken = obs.own.contains_key(&key);
                if shared_parent {
                    // Shared names are only ever committed snapshots: present or not.
                    let ok = if taken {
                        Err(Class::AlreadyExists)
                    } else {
                        Ok(())
                    };
                    allowed(
                        &r,
                        &[ok, Err(Class::NotFound)],
                        &format!("{ctx}: prepare {key} on {parent:?}"),
                    );
                } else {
                    let want = match parent.as_ref().map(|p| obs.own.get(p)) {
                        Some(None) => Err(Class::NotFound),
                        Some(Some(p)) if p.kind != Kind::Committed => Err(Class::InvalidArgument),
                        _ if taken => Err(Class::AlreadyExists),
                        _ => Ok(()),
                    };
                    assert_eq!(cls(&r), want, "{ctx}: prepare {key} on {parent:?}: {r:?}");
                }
                *obs.ops.entry(("prepare", cls(&r))).or_default() += 1;
                if let Ok(mounts) = r {
                    let content = format!("{key}@{step}");
                    std::fs::write(mounts[0].source.join(&key), &content).expect("write");
                    obs.own.insert(
                        key.clone(),
                        Own {
                            kind: Kind::Active,
                            parent,
                            content: Some(content),
                        },
                    );
                    *obs.created.entry(key).or_default() += 1;
                }
            }
            // A view of an own committed.
            25..=32 => {
                let key = own_key("v", rng.gen_range(0..2));
                let parent = own_key("c", rng.gen_range(0..4));
                let r = sn.view(&key, Some(&parent), Labels::new());
                let want = match obs.own.get(&parent) {
                    None => Err(Class::NotFound),
                    Some(_) if obs.own.contains_key(&key) => Err(Class::AlreadyExists),
                    Some(_) => Ok(()),
                };
                assert_eq!(cls(&r), want, "{ctx}: view {key} of {parent}: {r:?}");
                *obs.ops.entry(("view", cls(&r))).or_default() += 1;
                if r.is_ok() {
                    obs.own.insert(
                        key.clone(),
                        Own {
                            kind: Kind::View,
                            parent: Some(parent),
                            content: None,
                        },
                    );
                    *obs.created.entry(key).or_default() += 1;
                }
            }
            // Commit an own active.
            33..=52 => {
                let key = own_key("a", rng.gen_range(0..4));
                let name = own_key("c", rng.gen_range(0..4));
                let r = sn.commit(&name, &key, Labels::new());
                let want = if obs.own.contains_key(&name) {
                    Err(Class::AlreadyExists)
                } else if !obs.own.contains_key(&key) {
                    Err(Class::NotFound)
                } else {
                    Ok(())
                };
                assert_eq!(cls(&r), want, "{ctx}: commit {key} as {name}: {r:?}");
                *obs.ops.entry(("commit", cls(&r))).or_default() += 1;
                if r.is_ok() {
                    let mut s = obs.own.remove(&key).expect("held");
                    s.kind = Kind::Committed;
                    obs.own.insert(name.clone(), s);
                    *obs.destroyed.entry(key).or_default() += 1;
                    *obs.created.entry(name.clone()).or_default() += 1;
                    // An acknowledged commit is visible at once.
                    let info = sn.stat(&name).expect("stat a just committed name");
                    assert_eq!(info.kind, Kind::Committed, "{ctx}");
                }
            }
            // Remove an own key.
            53..=64 => {
                let key = match rng.gen_range(0..3) {
                    0 => own_key("a", rng.gen_range(0..4)),
                    1 => own_key("c", rng.gen_range(0..4)),
                    _ => own_key("v", rng.gen_range(0..2)),
                };
                let r = sn.remove(&key);
                let want = if !obs.own.contains_key(&key) {
                    Err(Class::NotFound)
                } else if obs
                    .own
                    .values()
                    .any(|s| s.parent.as_deref() == Some(key.as_str()))
                {
                    Err(Class::FailedPrecondition)
                } else {
                    Ok(())
                };
                assert_eq!(cls(&r), want, "{ctx}: remove {key}: {r:?}");
                *obs.ops.entry(("remove", cls(&r))).or_default() += 1;
                if r.is_ok() {
                    obs.own.remove(&key);
                    *obs.destroyed.entry(key.clone()).or_default() += 1;
                    // An acknowledged remove is gone at once.
                    assert_eq!(
                        class(&sn.stat(&key).expect_err("removed")),
                        Class::NotFound,
                        "{ctx}"
                    );
                }
            }
            // Shared keys: prepare s<j>-a, commit it as s<j>, remove either. Contested.
            65..=72 => {
                let j = rng.gen_range(0..SHARED);
                let key = format!("s{j}-a");
                let r = sn.prepare(&key, None, Labels::new());
                allowed(
                    &r,
                    &[Ok(()), Err(Class::AlreadyExists)],
                    &format!("{ctx}: prepare {key}"),
                );
                *obs.ops.entry(("shared prepare", cls(&r))).or_default() += 1;
                if r.is_ok() {
                    *obs.created.entry(key).or_default() += 1;
                }
            }
            73..=80 => {
                let j = rng.gen_range(0..SHARED);
                let (key, name) = (format!("s{j}-a"), format!("s{j}"));
                let r = sn.commit(&name, &key, Labels::new());
                // Busy: another thread's commit of the same key is in flight.
                allowed(
                    &r,
                    &[
                        Ok(()),
                        Err(Class::AlreadyExists),
                        Err(Class::NotFound),
                        Err(Class::FailedPrecondition),
                    ],
                    &format!("{ctx}: commit {key} as {name}"),
                );
                *obs.ops.entry(("shared commit", cls(&r))).or_default() += 1;
                if r.is_ok() {
                    *obs.destroyed.entry(key).or_default() += 1;
                    *obs.created.entry(name).or_default() += 1;
                }
            }
            81..=86 => {
                let j = rng.gen_range(0..SHARED);
                let key = if rng.gen_bool(0.5) {
                    format!("s{j}")
                } else {
                    format!("s{j}-a")
                };
                let r = sn.remove(&key);
                allowed(
                    &r,
                    &[Ok(()), Err(Class::NotFound), Err(Class::FailedPrecondition)],
                    &format!("{ctx}: remove {key}"),
                );
                *obs.ops.entry(("shared remove", cls(&r))).or_default() += 1;
                if r.is_ok() {
                    *obs.destroyed.entry(key).or_default() += 1;
                }
            }
            // Reads: stat an own key, or a walk whose own entries must match exactly.
            87..=93 => {
                let key = own_key(
                    ["a", "c", "v"].choose(&mut rng).expect("kinds"),
                    rng.gen_range(0..4),
                );
                let r = sn.stat(&key);
                match (obs.own.get(&key), &r) {
                    (Some(s), Ok(info)) => assert_eq!(
                        (info.kind, &info.parent),
                        (s.kind, &s.parent),
                        "{ctx}: stat {key}"
                    ),
                    (None, Err(e)) => assert_eq!(class(e), Class::NotFound, "{ctx}: stat {key}"),
                    (want, got) => panic!("{ctx}: stat {key}: model {want:?}, engine {got:?}"),
                }
            }
            _ => {
                let prefix = format!("t{t}-");
                let walk = sn.walk(&[]).expect("walk");
                let mine: BTreeMap<String, (Kind, Option<String>)> = walk
                    .into_iter()
                    .filter(|i| i.key.starts_with(&prefix))
                    .map(|i| (i.key, (i.kind, i.parent)))
                    .collect();
                let want: BTreeMap<String, (Kind, Option<String>)> = obs
                    .own
                    .iter()
                    .map(|(k, s)| (k.clone(), (s.kind, s.parent.clone())))
                    .collect();
                assert_eq!(mine, want, "{ctx}: walk of own keys");
            }
        }
    }
    obs
}

fn files_of(sn: &EngineHandle, key: &str) -> Option<String> {
    let mounts = sn.mounts(key).expect("mounts");
    std::fs::read_to_string(Path::new(&mounts[0].source).join(key)).ok()
}

fn run_case(seed: u64) {
    let tmp = common::fast_tempdir();
    let root = tmp.path().join("root");
    let options = EngineOptions {
        driver: Some(DriverKind::Vfs),
        checkpoint_every_records: 100,
        max_batch: 32,
        workers: 4,
        queue_capacity: 8,
        ..EngineOptions::default()
    };
    let (sn, _) = Engine::open(&root, options.clone()).expect("open");

    let (done_tx, done_rx) = mpsc::channel();
    for t in 0..THREADS {
        let (sn, done_tx) = (sn.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(format!("client-{t}"))
            .spawn(move || {
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker(t, seed, sn)));
                let _ = done_tx.send((t, r));
            })
            .expect("spawn");
    }
    drop(done_tx);
    let deadline = Instant::now() + WATCHDOG;
    let mut observed: BTreeMap<usize, Observed> = BTreeMap::new();
    while observed.len() < THREADS {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok((t, Ok(obs))) => {
                observed.insert(t, obs);
            }
            Ok((t, Err(panic))) => {
                eprintln!("thread {t} failed");
                std::panic::resume_unwind(panic);
            }
            Err(_) => panic!(
                "watchdog: {} of {THREADS} threads not done after {WATCHDOG:?} (deadlock?); done: {:?}",
                THREADS - observed.len(),
                observed.keys().collect::<Vec<_>>()
            ),
        }
    }

    let mut ops: BTreeMap<(&str, Result<(), Class>), u32> = BTreeMap::new();
    for obs in observed.values() {
        for (k, n) in &obs.ops {
            *ops.entry(*k).or_default() += n;
        }
    }
    println!("seed {seed}: outcomes {ops:?}");

    let walk = sn.walk(&[]).expect("walk");
    let final_keys: BTreeMap<&str, &Info> = walk.iter().map(|i| (i.key.as_str(), i)).collect();
    // Own keys: exactly what their thread knows, trees included.
    for (t, obs) in &observed {
        let prefix = format!("t{t}-");
        let mine: Vec<&str> = final_keys
            .keys()
            .copied()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        let want: Vec<&str> = obs.own.keys().map(String::as_str).collect();
        assert_eq!(
            mine, want,
            "seed {seed}: thread {t}'s keys (every acknowledged commit visible, every remove gone)"
        );
        for (key, s) in &obs.own {
            let info = final_keys[key.as_str()];
            assert_eq!(
                (info.kind, &info.parent),
                (s.kind, &s.parent),
                "seed {seed}: {key}"
            );
            if s.kind == Kind::Active {
                assert_eq!(files_of(&sn, key), s.content, "seed {seed}: file in {key}");
            }
        }
    }
    // Every key: acknowledged creations minus acknowledged destructions is 1 if it exists,
    // else 0 (a key exists at most once at a time, so the two alternate).
    let mut balance: BTreeMap<&str, i64> = BTreeMap::new();
    for obs in observed.values() {
        for (k, n) in &obs.created {
            *balance.entry(k).or_default() += n;
        }
        for (k, n) in &obs.destroyed {
            *balance.entry(k).or_default() -= n;
        }
    }
    for key in final_keys.keys() {
        balance.entry(key).or_default();
    }
    for (key, n) in &balance {
        let present = i64::from(final_keys.contains_key(key));
        assert_eq!(
            *n, present,
            "seed {seed}: {key}: acknowledged creations - destructions = {n}, present = {present}"
        );
    }
    // Shared names are committed snapshots.
    for j in 0..SHARED {
        if let Some(info) = final_keys.get(format!("s{j}").as_str()) {
            assert_eq!(info.kind, Kind::Committed);
        }
    }

    let report = sn.fsck(false).expect("fsck");
    assert!(report.is_clean(), "seed {seed}: fsck: {report:?}");
    sn.close().expect("close");
    let (sn, report) = Engine::open(&root, options).expect("reopen");
    assert!(
        report.dropped.is_empty(),
        "seed {seed}: a clean reopen dropped {report:?}"
    );
    assert_eq!(
        sn.walk(&[]).expect("walk after reopen"),
        walk,
        "seed {seed}: walk changed across close + reopen"
    );
    let report = sn.fsck(false).expect("fsck after reopen");
    assert!(
        report.is_clean(),
        "seed {seed}: fsck after reopen: {report:?}"
    );
    sn.close().expect("close");
}

#[test]
fn sixteen_clients_share_one_handle() {
    common::run_seeds("engine_concurrency", 2, 0x0C0C_0C0C_1616, run_case);
}

/// `usage` of an active measures its tree off the engine thread; a `remove` racing with it
/// must look like one happened before the other: the usage is a number or NotFound, never an
/// I/O error from a tree deleted under the walk.
#[test]
fn usage_racing_remove_is_ok_or_not_found() {
    let tmp = common::fast_tempdir();
    let root = tmp.path().join("root");
    let (sn, _) = Engine::open(&root, common::options(DriverKind::Vfs)).expect("open");
    let mut outcomes: BTreeMap<Result<(), Class>, u32> = BTreeMap::new();
    for round in 0..20 {
        let key = format!("busy-{round}");
        let mounts = sn.prepare(&key, None, Labels::new()).expect("prepare");
        for d in 0..20 {
            let dir = mounts[0].source.join(format!("d{d}"));
            std::fs::create_dir(&dir).expect("mkdir");
            for f in 0..20 {
                std::fs::write(dir.join(format!("f{f}")), b"x").expect("write");
            }
        }
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let reader = {
            let (sn, key) = (sn.clone(), key.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let r = sn.usage(&key);
                    let gone = matches!(&r, Err(e) if class(e) == Class::NotFound);
                    seen.push(r.map(|u| u.inodes).map_err(|e| (class(&e), e.to_string())));
                    if gone || stop_rx.try_recv().is_ok() {
                        return seen;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(5));
        sn.remove(&key).expect("remove");
        let _ = stop_tx.send(());
        for r in reader.join().expect("reader") {
            match r {
                Ok(inodes) => {
                    assert_eq!(
                        inodes,
                        1 + 20 + 400,
                        "round {round}: a usage saw a partial tree"
                    );
                    *outcomes.entry(Ok(())).or_default() += 1;
                }
                Err((Class::NotFound, _)) => {
                    *outcomes.entry(Err(Class::NotFound)).or_default() += 1
                }
                Err((c, e)) => panic!("round {round}: usage racing a remove answered {c:?}: {e}"),
            }
        }
    }
    println!("usage outcomes: {outcomes:?}");
    sn.close().expect("close");
}

/// `close` while 8 clients keep sending: every call returns (Ok or ShutDown, never hangs),
/// and after a reopen every acknowledged prepare and commit is there.
#[test]
fn close_under_load() {
    common::run_seeds("engine_concurrency", 2, 0xC105_E000, |seed| {
        let tmp = common::fast_tempdir();
        let root = tmp.path().join("root");
        let options = EngineOptions {
            queue_capacity: 4,
            ..common::options(DriverKind::Vfs)
        };
        let (sn, _) = Engine::open(&root, options.clone()).expect("open");
        let (done_tx, done_rx) = mpsc::channel();
        for t in 0..8 {
            let (sn, done_tx) = (sn.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut acked: Vec<(String, Kind)> = Vec::new();
                    for i in 0.. {
                        let key = format!("t{t}-{i}");
                        match sn.prepare(&key, None, Labels::new()) {
                            Ok(_) => acked.push((key.clone(), Kind::Active)),
                            Err(EngineError::ShutDown) => return acked,
                            Err(e) => panic!("prepare {key}: {e}"),
                        }
                        if i % 2 == 0 {
                            let name = format!("{key}-c");
                            match sn.commit(&name, &key, Labels::new()) {
                                Ok(()) => {
                                    acked.pop();
                                    acked.push((name, Kind::Committed));
                                }
                                Err(EngineError::ShutDown) => return acked,
                                Err(e) => panic!("commit {key}: {e}"),
                            }
                        }
                    }
                    unreachable!()
                }));
                let _ = done_tx.send(r);
            });
        }
        drop(done_tx);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..300)));
        sn.close().expect("close");
        let deadline = Instant::now() + WATCHDOG;
        let mut acked = Vec::new();
        for _ in 0..8 {
            match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(a)) => acked.extend(a),
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => panic!("watchdog: a client is still blocked {WATCHDOG:?} after close"),
            }
        }
        let (sn, _) = Engine::open(&root, options).expect("reopen");
        let walk: BTreeMap<String, Kind> = sn
            .walk(&[])
            .expect("walk")
            .into_iter()
            .map(|i| (i.key, i.kind))
            .collect();
        println!(
            "seed {seed}: {} acknowledged, {} after reopen",
            acked.len(),
            walk.len()
        );
        assert!(
            !acked.is_empty(),
            "no client got anything done before close"
        );
        for (key, kind) in &acked {
            assert_eq!(
                walk.get(key),
                Some(kind),
                "seed {seed}: acknowledged {key} lost by close"
            );
        }
        let report = sn.fsck(false).expect("fsck");
        assert!(report.is_clean(), "seed {seed}: {report:?}");
        sn.close().expect("close");
    });
}

/// A prepare acknowledged in the same engine batch as a remove (or commit) of its key still
/// answers with its mounts: the creation happened, the remove came after it.
#[test]
fn prepare_racing_remove_of_its_key_succeeds() {
    let tmp = common::fast_tempdir();
    let root = tmp.path().join("root");
    let (sn, _) = Engine::open(&root, common::options(DriverKind::Vfs)).expect("open");
    for round in 0..150 {
        let key = format!("k{round}");
        let remover = {
            let (sn, key) = (sn.clone(), key.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    match sn.remove(&key) {
                        Ok(()) => return true,
                        Err(e) if class(&e) == Class::NotFound => std::thread::yield_now(),
                        Err(e) => panic!("remove {key}: {e}"),
                    }
                }
                false
            })
        };
        let r = sn.prepare(&key, None, Labels::new());
        assert!(
            r.is_ok(),
            "round {round}: prepare of a free key answered {r:?}"
        );
        assert!(
            remover.join().expect("remover"),
            "round {round}: never removed"
        );
        assert_eq!(class(&sn.stat(&key).expect_err("removed")), Class::NotFound);
    }
    let report = sn.fsck(false).expect("fsck");
    assert!(report.is_clean(), "{report:?}");
    sn.close().expect("close");
}

/// Two clones closed at once: each close returns only when the engine has let go of the root,
/// so either closer can reopen it right away.
#[test]
fn concurrent_closes_both_release_the_root() {
    for round in 0..5 {
        let tmp = common::fast_tempdir();
        let root = tmp.path().join("root");
        let options = common::options(DriverKind::Vfs);
        let (sn, _) = Engine::open(&root, options.clone()).expect("open");
        sn.prepare("k", None, Labels::new()).expect("prepare");
        let reopen = std::sync::Arc::new(std::sync::Mutex::new(()));
        let closers: Vec<_> = (0..2)
            .map(|i| {
                let (sn, root, options, reopen) =
                    (sn.clone(), root.clone(), options.clone(), reopen.clone());
                std::thread::spawn(move || {
                    sn.close().expect("close");
                    let _one_at_a_time = reopen.lock().expect("lock");
                    let (again, _) = Engine::open(&root, options).unwrap_or_else(|e| {
                        panic!("round {round}: closer {i} could not reopen: {e}")
                    });
                    assert_eq!(again.walk(&[]).expect("walk").len(), 1);
                    again.close().expect("close again");
                })
            })
            .collect();
        drop(sn);
        for c in closers {
            c.join().expect("closer");
        }
    }
}

/// `cleanup` racing removes: the trees being deleted belong to acknowledged or in-flight
/// removes, not to cleanup; both must succeed and leave a clean root.
#[test]
fn cleanup_racing_removes() {
    let tmp = common::fast_tempdir();
    let root = tmp.path().join("root");
    let (sn, _) = Engine::open(&root, common::options(DriverKind::Vfs)).expect("open");
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for key in &keys {
        let mounts = sn.prepare(key, None, Labels::new()).expect("prepare");
        for d in 0..10 {
            let dir = mounts[0].source.join(format!("d{d}"));
            std::fs::create_dir(&dir).expect("mkdir");
            for f in 0..60 {
                std::fs::write(dir.join(format!("f{f}")), b"x").expect("write");
            }
        }
    }
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let cleaner = {
        let sn = sn.clone();
        std::thread::spawn(move || {
            let mut runs = 0;
            while stop_rx.try_recv().is_err() {
                sn.cleanup()
                    .unwrap_or_else(|e| panic!("cleanup #{runs} racing removes: {e}"));
                runs += 1;
            }
            runs
        })
    };
    for key in &keys {
        sn.remove(key).expect("remove");
    }
    let _ = stop_tx.send(());
    let runs = cleaner.join().expect("cleaner");
    println!("{runs} cleanups");
    assert!(sn.walk(&[]).expect("walk").is_empty());
    let report = sn.fsck(false).expect("fsck");
    assert!(report.is_clean(), "{report:?}");
    sn.close().expect("close");
}
