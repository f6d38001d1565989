//! containerd's same-client benchmark (`../shared/containerd-suite/snapbench.go`: prepare+commit
//! of empty snapshots through containerd's Go proxy client, 1 and 16 clients) against
//! `cairn serve` on vfs (in this process) and against containerd 1.6.20's own overlayfs
//! snapshotter (a containerd of its own, on its own root and socket), in the same run.
//! Prints `name: value` lines and the ratios. The containerd peer needs root and Debian's
//! `containerd`; without them only cairn's figures are printed, with the reason.
//!
//! Both sides run on one fresh ext4 made for the run on a loop device (as root; the cargo
//! target dir otherwise, said on stderr), since both make a directory tree per snapshot and an
//! aged disk's inode allocator slows from one run to the next. Each side runs [`ROUNDS`] times,
//! alternating (cairn on a new root each time: snapbench's keys repeat), and each figure is the
//! best of its rounds: the first requests after a server starts are slower on either side.
//! Then both sides again on a fresh xfs (lines prefixed `xfs_`, where `mkfs.xfs` is present).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OPS_PER_CLIENT: &str = "200";
const CLIENTS: &str = "16";
const ROUNDS: usize = 2;

#[path = "../../cairn-wal/benches/support.rs"]
mod support;

fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() {
        assert!(dir.pop(), "no Cargo.lock above the crate");
    }
    dir
}

fn snapbench() -> Option<PathBuf> {
    let shared = std::env::var_os("CAIRN_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"));
    let dir = shared.join("containerd-suite");
    if !dir.exists() {
        println!("skipped: {} is missing", dir.display());
        return None;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("containerd-suite");
    let bin = out.join("snapbench");
    if !bin.exists() {
        let ok = Command::new("bash")
            .arg(dir.join("build.sh"))
            .arg(&out)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            println!("skipped: containerd-suite/build.sh failed");
            return None;
        }
    }
    Some(bin)
}

fn wait_for(sock: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// snapbench's two figures: (1 client, 16 clients).
fn run_snapbench(bin: &Path, sock: &Path, name: &str) -> Option<(f64, f64)> {
    let out = Command::new(bin)
        .args(["-sock", &sock.display().to_string(), "-name", name])
        .args(["-n", OPS_PER_CLIENT, "-clients", CLIENTS])
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "snapbench against {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim_start_matches(':').trim().parse::<f64>().ok())
    };
    Some((
        value("prepare_commit_ops_per_s_1_client")?,
        value(&format!("prepare_commit_ops_per_s_{CLIENTS}_clients"))?,
    ))
}

fn cairn_figures(bin: &Path, dir: &Path, round: usize) -> Option<(f64, f64)> {
    let sock = dir.join(format!("cairn-{round}.sock"));
    let mut options = cairn_server::ServeOptions::new(dir.join(format!("cairn-root-{round}")));
    options.address = sock.clone();
    options.driver = Some(cairn_state::types::DriverKind::Vfs);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        cairn_server::serve_until(options, async move {
            let _ = stop_rx.await;
        })
    });
    let figures = if wait_for(&sock) {
        run_snapbench(bin, &sock, "cairn")
    } else {
        println!("cairn serve did not come up");
        None
    };
    let _ = stop_tx.send(());
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("cairn serve: {e}"),
        Err(_) => println!("cairn serve panicked"),
    }
    figures
}

fn containerd_figures(bin: &Path, dir: &Path, round: usize) -> Option<(f64, f64)> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: containerd (the peer) needs root");
        return None;
    }
    let containerd = ["/usr/bin/containerd", "/usr/sbin/containerd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(containerd) = containerd else {
        println!("skipped: containerd is not installed (apt-get install containerd)");
        return None;
    };
    // Its own root per round too (snapbench's namespace is new each run, so a shared one would
    // do, but each side then starts from the same empty state).
    let dir = &dir.join(format!("containerd-{round}"));
    std::fs::create_dir_all(dir).ok()?;
    let sock = dir.join("containerd.sock");
    let config = dir.join("containerd.toml");
    let text = format!(
        "version = 2\nroot = \"{0}/c-root\"\nstate = \"{0}/c-state\"\n\
         # Only the snapshot service is measured.\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{1}\"\n",
        dir.display(),
        sock.display()
    );
    std::fs::write(&config, text).ok()?;
    let log = std::fs::File::create(dir.join("containerd.log")).ok()?;
    let mut child = Command::new(containerd)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ok()?;
    let figures = if wait_for(&sock) {
        run_snapbench(bin, &sock, "overlayfs")
    } else {
        println!("containerd did not come up");
        None
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    figures
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(bin) = snapbench() else { return };
    // Not a tmpfs: the syncs are what is measured.
    if std::env::var_os("CAIRN_BENCH_DIR").is_none() {
        std::env::set_var("CAIRN_BENCH_DIR", env!("CARGO_TARGET_TMPDIR"));
    }
    let fs = support::BenchFs::new("serve");
    measure(&bin, &fs, "");
    // Both sides again on a fresh xfs (see `BenchFs::xfs_beside`).
    let xfs = fs.xfs_beside("serve-xfs");
    drop(fs);
    if let Some(xfs) = xfs {
        measure(&bin, &xfs, "xfs_");
    }
}

/// Both sides' figures on `fs`, [`ROUNDS`] rounds alternating, each name prefixed `prefix`.
fn measure(bin: &Path, fs: &support::BenchFs, prefix: &str) {
    let best = |a: Option<(f64, f64)>, b: Option<(f64, f64)>| match (a, b) {
        (Some((a1, a16)), Some((b1, b16))) => Some((a1.max(b1), a16.max(b16))),
        (a, b) => a.or(b),
    };
    let (mut cairn, mut peer) = (None, None);
    for round in 0..ROUNDS {
        cairn = best(cairn, cairn_figures(bin, fs.path(), round));
        peer = best(peer, containerd_figures(bin, fs.path(), round));
    }
    if let Some((one, many)) = cairn {
        println!("{prefix}serve_vfs_prepare_commit_ops_per_s_1_client: {one:.0}");
        println!("{prefix}serve_vfs_prepare_commit_ops_per_s_{CLIENTS}_clients: {many:.0}");
    }
    if let Some((one, many)) = peer {
        println!("{prefix}containerd_overlayfs_prepare_commit_ops_per_s_1_client: {one:.0}");
        println!(
            "{prefix}containerd_overlayfs_prepare_commit_ops_per_s_{CLIENTS}_clients: {many:.0}"
        );
    }
    if let (Some((c1, c16)), Some((p1, p16))) = (cairn, peer) {
        println!("{prefix}ratio_1_client_cairn_vs_containerd: {:.2}", c1 / p1);
        println!(
            "{prefix}ratio_{CLIENTS}_clients_cairn_vs_containerd: {:.2}",
            c16 / p16
        );
    }
}
