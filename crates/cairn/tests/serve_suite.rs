//! containerd 1.6.20's own snapshotter test suite (`snapshots/testsuite`, through containerd's
//! proxy client) against `cairn serve`, on vfs and on overlay. Needs root (the suite mounts)
//! and ../shared/containerd-suite; builds the suite once per target dir with its build.sh.

#[path = "serve_support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static BUILD: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The suite binary, built into the target dir if it is not there yet (once per process).
fn suite_binary() -> Option<PathBuf> {
    let dir = support::shared("containerd-suite")?;
    let mut built = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.as_ref() {
        return Some(p.clone());
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("containerd-suite");
    let bin = out.join("suite.test");
    if !bin.exists() {
        let start = std::time::Instant::now();
        let status = Command::new("bash")
            .arg(dir.join("build.sh"))
            .arg(&out)
            .status()
            .expect("run build.sh");
        assert!(
            status.success(),
            "containerd-suite/build.sh failed: {status}"
        );
        println!("suite_build_s: {:.1}", start.elapsed().as_secs_f64());
    }
    *built = Some(bin.clone());
    Some(bin)
}

fn run_suite(driver: &str) {
    if !support::is_root() {
        println!("skipped: containerd's snapshotter suite mounts and needs root");
        return;
    }
    let Some(suite) = suite_binary() else { return };
    let args = support::serve_args("{root}/store".as_ref(), "{sock}".as_ref(), driver);
    let cmd = std::iter::once(support::cairn_bin().display().to_string())
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(&suite)
        .arg("-test.v")
        .env("SNAPSHOTTER_CMD", &cmd)
        .env("SNAPSHOTTER_NAME", "cairn")
        .env("CAIRN_LOG", "warn")
        .output()
        .expect("run suite.test");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let count = |what: &str| {
        text.lines()
            .filter(|l| {
                l.trim_start()
                    .starts_with(&format!("--- {what}: TestSnapshotterSuite/"))
            })
            .count()
    };
    let (pass, skip, fail) = (count("PASS"), count("SKIP"), count("FAIL"));
    println!("containerd suite on {driver}: {pass} pass, {skip} skip, {fail} fail");
    for line in text
        .lines()
        .filter(|l| l.contains("--- FAIL") || l.contains("--- SKIP"))
    {
        println!("  {}", line.trim());
    }
    if !output.status.success() || fail > 0 {
        panic!("the suite failed on {driver}:\n{text}");
    }
    // 21 cases; containerd 1.6 skips Rename itself.
    assert_eq!((pass, skip), (20, 1), "unexpected case counts:\n{text}");
}

#[test]
fn containerd_suite_on_vfs() {
    run_suite("vfs");
}

#[test]
fn containerd_suite_on_overlay() {
    run_suite("overlay");
}
