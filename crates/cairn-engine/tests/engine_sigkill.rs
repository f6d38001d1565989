//! Random SIGKILL: a child runs a seeded random workload from several threads, logging every
//! acknowledgement (one `write` per line); the parent kills it with SIGKILL after a seeded
//! delay, reopens, and checks the root against the log (acknowledged → present; in flight →
//! wholly there or wholly gone; fsck clean; no stray names), for many rounds on the SAME root.
//!
//! Prints its seed; `CAIRN_SEED=<n>` replays it. `CAIRN_SIGKILL_SECS` bounds the run (default 40).
//! Needs no failpoints, but runs with the crash suite: `cargo test --features failpoints`.

#[cfg(feature = "failpoints")]
mod crashkit;

#[cfg(not(feature = "failpoints"))]
#[test]
fn sigkill_rounds() {
    println!("skipped: build with --features failpoints");
}

#[cfg(feature = "failpoints")]
mod sigkill {
    use super::crashkit::*;
    use cairn_engine::Engine;
    use cairn_state::types::{DriverKind, Kind};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeMap;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const THREADS: usize = 3;

    /// What one thread knows of its own keys (prefix `t<n>-`): kind and parent.
    struct Mine {
        snaps: BTreeMap<String, (Kind, Option<String>)>,
        next: u64,
    }

    impl Mine {
        fn children(&self, key: &str) -> bool {
            self.snaps.values().any(|(_, p)| p.as_deref() == Some(key))
        }
        fn pick(&self, rng: &mut ChaCha8Rng, f: impl Fn(&str, Kind) -> bool) -> Option<String> {
            let c: Vec<&String> = self
                .snaps
                .iter()
                .filter(|(k, (kind, _))| f(k, *kind))
                .map(|(k, _)| k)
                .collect();
            if c.is_empty() {
                None
            } else {
                Some(c[rng.gen_range(0..c.len())].clone())
            }
        }
    }

    fn worker(
        h: &cairn_engine::EngineHandle,
        log: &AckLog,
        t: usize,
        round: u64,
        seed: u64,
        mut mine: Mine,
    ) {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for _ in 0..400 {
            let fresh = |mine: &mut Mine| {
                mine.next += 1;
                format!("t{t}-{round}-{}", mine.next)
            };
            let committed = mine.pick(&mut rng, |_, k| k == Kind::Committed);
            let op = match rng.gen_range(0..100) {
                0..=24 => {
                    let parent = if rng.gen_bool(0.6) { committed } else { None };
                    Op::Prepare {
                        key: fresh(&mut mine),
                        parent,
                        view: false,
                        labels: labels(&[("t", &t.to_string())]),
                    }
                }
                25..=32 => match committed {
                    Some(parent) => Op::Prepare {
                        key: fresh(&mut mine),
                        parent: Some(parent),
                        view: true,
                        labels: labels(&[]),
                    },
                    None => continue,
                },
                33..=52 => match mine.pick(&mut rng, |_, k| k == Kind::Active) {
                    Some(key) => {
                        let n: usize = rng.gen_range(1..20_000);
                        let file = format!("f{}", rng.gen_range(0..4));
                        let data = (0..n)
                            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(t as u8))
                            .collect();
                        Op::Write { key, file, data }
                    }
                    None => continue,
                },
                53..=70 => match mine.pick(&mut rng, |_, k| k == Kind::Active) {
                    Some(key) => Op::Commit {
                        name: fresh(&mut mine),
                        key,
                        labels: labels(&[("c", "1")]),
                    },
                    None => continue,
                },
                71..=86 => match mine.pick(&mut rng, |k, _| !mine.children(k)) {
                    Some(key) => Op::Remove { key },
                    None => continue,
                },
                87..=96 => match mine.pick(&mut rng, |_, _| true) {
                    Some(key) => Op::Update {
                        key,
                        labels: labels(&[("u", &rng.gen::<u32>().to_string())]),
                    },
                    None => continue,
                },
                _ => Op::Checkpoint,
            };
            log.begin(t, &op);
            if let Err(e) = exec(h, &op) {
                panic!("thread {t}: {op:?}: {e}");
            }
            log.ack(t, &op);
            match &op {
                Op::Prepare {
                    key, parent, view, ..
                } => {
                    mine.snaps.insert(
                        key.clone(),
                        (
                            if *view { Kind::View } else { Kind::Active },
                            parent.clone(),
                        ),
                    );
                }
                Op::Commit { name, key, .. } => {
                    let (_, parent) = mine.snaps.remove(key).expect("mine");
                    mine.snaps.insert(name.clone(), (Kind::Committed, parent));
                }
                Op::Remove { key } => {
                    mine.snaps.remove(key);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn child() {
        let Ok(root) = std::env::var("CAIRN_SIGKILL_ROOT") else {
            return;
        };
        std::panic::set_hook(Box::new(|info| {
            eprintln!("child panic: {info}");
            std::process::abort();
        }));
        let log = AckLog::open(Path::new(&std::env::var("CAIRN_SIGKILL_LOG").expect("log")));
        let seed: u64 = std::env::var("CAIRN_SIGKILL_CHILD_SEED")
            .expect("seed")
            .parse()
            .expect("seed");
        let round: u64 = std::env::var("CAIRN_SIGKILL_ROUND")
            .expect("round")
            .parse()
            .expect("round");
        let mut opts = options(DriverKind::Vfs);
        opts.checkpoint_every_records = 40;
        let (h, _) = Engine::open(Path::new(&root), opts).expect("open");
        let infos = h.walk(&[]).expect("walk");
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let prefix = format!("t{t}-");
                let snaps = infos
                    .iter()
                    .filter(|i| i.key.starts_with(&prefix))
                    .map(|i| (i.key.clone(), (i.kind, i.parent.clone())))
                    .collect();
                let mine = Mine { snaps, next: 0 };
                let (h, log) = (&h, &log);
                s.spawn(move || worker(h, log, t, round, seed, mine));
            }
        });
        std::process::exit(0);
    }

    #[test]
    fn sigkill_rounds() {
        let seed: u64 = match std::env::var("CAIRN_SEED") {
            Ok(s) => s.parse().expect("CAIRN_SEED is a number"),
            Err(_) => getrandom_seed(),
        };
        let secs: u64 = std::env::var("CAIRN_SIGKILL_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        println!("sigkill: CAIRN_SEED={seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tmp = tempfile::tempdir().expect("tempdir");
        let root: PathBuf = tmp.path().join("root");
        let mut model = Model::new(DriverKind::Vfs);
        let start = Instant::now();
        let mut round = 0u64;
        let (mut killed, mut completed, mut acked_total) = (0, 0, 0);
        while start.elapsed() < Duration::from_secs(secs) || round < 3 {
            round += 1;
            let log_path = tmp.path().join(format!("round{round}.log"));
            let child_seed: u64 = rng.gen();
            let delay = Duration::from_millis(rng.gen_range(20..1500));
            let child = Command::new(std::env::current_exe().expect("exe"))
                .args([
                    "--exact",
                    "sigkill::child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("CAIRN_SIGKILL_ROOT", &root)
                .env("CAIRN_SIGKILL_LOG", &log_path)
                .env("CAIRN_SIGKILL_CHILD_SEED", child_seed.to_string())
                .env("CAIRN_SIGKILL_ROUND", round.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child");
            std::thread::sleep(delay);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = child.wait_with_output().expect("wait child");
            match out.status.signal() {
                Some(libc::SIGKILL) => killed += 1,
                None if out.status.success() => completed += 1,
                _ => panic!(
                    "round {round} (CAIRN_SEED={seed}): child failed by itself: {:?}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
            let view = read_log(&log_path);
            acked_total += view.acked.len();
            for op in &view.acked {
                model.apply(op);
            }
            let result = std::panic::catch_unwind(|| {
                check_after_crash(&root, DriverKind::Vfs, &model, &view.inflight)
            });
            match result {
                Ok(m) => model = m,
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                    panic!(
                        "round {round} (CAIRN_SEED={seed}, delay {delay:?}): {}",
                        msg.unwrap_or_default()
                    );
                }
            }
        }
        println!(
            "sigkill: {round} rounds ({killed} killed, {completed} completed), {acked_total} acknowledged commands, {} snapshots at the end",
            model.snaps.len()
        );
    }

    fn getrandom_seed() -> u64 {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).expect("getrandom");
        u64::from_le_bytes(b)
    }
}
