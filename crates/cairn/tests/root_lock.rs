//! The root lock waits for a holder that is going away (a process killed a moment ago keeps
//! its flock until its last thread has left the kernel) and fails naming the holder after
//! `lock_timeout_ms` / `--lock-timeout`.

use cairn_engine::{Engine, EngineError, EngineOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn options(lock_timeout_ms: u64) -> EngineOptions {
    EngineOptions {
        lock_timeout_ms,
        workers: 1,
        ..EngineOptions::default()
    }
}

fn cairn(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("CAIRN_LOCK_TIMEOUT")
        .output()
        .expect("run cairn")
}

#[test]
fn open_waits_for_a_holder_that_lets_go() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (first, _) = Engine::open(&root, options(0)).expect("open");
    let waiter = {
        let root = root.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let opened = Engine::open(&root, options(20_000));
            (opened.map(|(h, _)| h), start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    first.close().expect("close");
    let (second, waited) = waiter.join().expect("join");
    let second = second.expect("the second open waits for the lock instead of failing");
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    second.close().expect("close");
}

#[test]
fn open_fails_after_the_timeout_naming_the_holder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (first, _) = Engine::open(&root, options(0)).expect("open");
    let start = Instant::now();
    match Engine::open(&root, options(300)) {
        Err(EngineError::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "gave up after {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    first.close().expect("close");
}

/// Another process holds the lock for a moment (as a killed cairn does until it has exited):
/// the command waits, says once on stderr who holds the root, and then runs.
#[test]
fn the_cli_waits_for_another_process_and_says_so_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let out = cairn(&root, &["snapshot", "prepare", "a"]);
    assert!(out.status.success(), "{out:?}");
    let root = root.canonicalize().expect("canonical root");
    let lock = root.join("LOCK");
    // flock(1) takes the same flock(2) lock and holds it for 0.6 s.
    let mut holder = match Command::new("flock")
        .arg(&lock)
        .args(["sleep", "0.6"])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!("skipped: flock(1) is not available: {e}");
            return;
        }
    };
    // flock(1) writes no pid; write the holder's, as a cairn process does.
    std::fs::write(&lock, holder.id().to_string()).expect("write pid");
    // Wait until the holder has the lock.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .expect("flock -n");
        if !probe.success() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = cairn(&root, &["snapshot", "ls"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the command failed instead of waiting: {stderr}"
    );
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("is locked by pid"))
        .collect();
    assert_eq!(
        notices,
        [format!(
            "cairn: root {} is locked by pid {}; waiting up to 30 s for it",
            root.display(),
            holder.id()
        )
        .as_str()],
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('a'));
    holder.wait().expect("wait");
}

#[test]
fn the_cli_fails_after_lock_timeout_with_the_locked_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let (engine, _) = Engine::open(&root, options(0)).expect("open");
    let root = root.canonicalize().expect("canonical root");
    let start = Instant::now();
    let out = cairn(&root, &["--lock-timeout", "0.3", "snapshot", "ls"]);
    let waited = start.elapsed();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pid = std::process::id();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "cairn: root {} is locked by pid {pid}; waiting up to 0.3 s for it",
                root.display()
            ),
            format!("cairn: root {} is locked by pid {pid}", root.display()),
        ],
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let bad = cairn(&root, &["--lock-timeout", "soon", "snapshot", "ls"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    engine.close().expect("close");
}
