//! End to end with a real containerd (Debian's 1.6.20) and runc: a containerd of its own (own
//! root, state and socket) with cairn as its proxy snapshotter imports a small busybox image,
//! runs containers from it, shows cairn's snapshots through `ctr snapshots`, survives restarts
//! of containerd and of cairn, and garbage-collects the snapshots in cairn when the image goes.
//! Then the layer store: `cairn image load` of the same image through the running server, and
//! an import beside it; and a pull, from a registry of the test's own, of layers cairn already
//! holds, which containerd then never applies. Last, the power cut: a copy of cairn's
//! loop-mounted backing file taken the instant `ctr images import` returns holds every
//! committed snapshot intact. Needs root, containerd, ctr, runc and busybox, and for the pull
//! docker-registry, skopeo, Go and containerd's Go sources; CI installs them.

#[path = "serve_image/mod.rs"]
mod image;
// The registry tests' own docker-registry starter (no auth here) and skopeo push.
#[path = "registry_support/mod.rs"]
mod registry;
#[path = "serve_support/mod.rs"]
mod support;

use cairn_server::client::connect;
use containerd_snapshots::api::snapshots::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::Server;

const NAMESPACE: &str = "cairn-e2e";

fn missing_tool() -> Option<&'static str> {
    for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            return Some(tool);
        }
    }
    None
}

/// Whether this test can run; prints why not.
fn ready() -> bool {
    if !support::is_root() {
        println!("skipped: containerd and runc need root");
        return false;
    }
    if let Some(tool) = missing_tool() {
        if std::env::var("CI").is_ok() {
            panic!("{tool} is not installed (apt-get install containerd runc)");
        }
        println!("skipped: {tool} is not installed (apt-get install containerd runc)");
        return false;
    }
    true
}

#[derive(Debug)]
struct Containerd {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, cairn_sock: &Path) -> Containerd {
        let sock = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        let text = format!(
            "version = 2\n\
             root = \"{d}/c-root\"\n\
             state = \"{d}/c-state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{s}\"\n\
             [proxy_plugins.cairn]\n  type = \"snapshot\"\n  address = \"{c}\"\n",
            d = dir.display(),
            s = sock.display(),
            c = cairn_sock.display()
        );
        std::fs::write(&config, text).expect("write containerd config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            child,
            dir: dir.to_path_buf(),
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Up, and connected to cairn (the proxy plugin dials it in the background).
        while !c
            .ctr(&["snapshots", "--snapshotter", "cairn", "ls"])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Run ctr, fail the test unless it succeeds, return its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Every snapshot cairn holds, asked directly over its socket.
fn cairn_snapshots(sock: &Path) -> Vec<pb::Info> {
    runtime().block_on(async {
        let mut c = connect(sock).await.expect("connect to cairn");
        let mut s = c
            .list(pb::ListSnapshotsRequest {
                snapshotter: "cairn".into(),
                filters: vec![],
            })
            .await
            .expect("list")
            .into_inner();
        let mut all = Vec::new();
        while let Some(batch) = s.message().await.expect("list batch") {
            all.extend(batch.info);
        }
        all
    })
}

fn committed(sock: &Path) -> Vec<pb::Info> {
    cairn_snapshots(sock)
        .into_iter()
        .filter(|i| i.kind == pb::Kind::Committed as i32)
        .collect()
}

fn run_ok(c: &Containerd, image: &str, id: &str) {
    let out = c.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "cairn",
        image,
        id,
        "/bin/sh",
        "-c",
        "echo ok",
    ]);
    assert_eq!(out.trim(), "ok", "container {id} printed {out:?}");
}

enum Keep {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Keep {
    fn path(&self) -> &Path {
        match self {
            Keep::Temp(t) => t.path(),
            Keep::Kept(p) => p,
        }
    }
}

#[test]
fn containerd_runs_containers_on_cairn() {
    if !ready() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("serve-e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    // CAIRN_E2E_KEEP=1 keeps the directory (logs, roots) for a look after a failure.
    let dir = if std::env::var_os("CAIRN_E2E_KEEP").is_some() {
        Keep::Kept(dir.keep())
    } else {
        Keep::Temp(dir)
    };
    let d = dir.path();
    let Some(img) = image::build(d, "docker.io/library/cairn-e2e:1") else {
        println!("skipped: no busybox binary to build the image from");
        return;
    };
    let root = d.join("cairn");
    let sock = d.join("cairn.sock");
    let log = "info,cairn_server=debug";
    let mut server = Server::start(&root, &sock, "overlay", log);
    let mut ctrd = Containerd::start(d, &sock);

    ctrd.ok(&[
        "images",
        "import",
        "--snapshotter",
        "cairn",
        &img.archive.display().to_string(),
    ]);
    assert!(ctrd.ok(&["images", "ls", "-q"]).contains(&img.name));
    let layers = committed(&sock);
    assert_eq!(layers.len(), 2, "two committed layers in cairn: {layers:?}");
    run_ok(&ctrd, &img.name, "c1");
    run_ok(&ctrd, &img.name, "c2");
    assert_eq!(
        committed(&sock).len(),
        2,
        "the second container reuses the layers"
    );

    // ctr shows what cairn holds.
    let ls = ctrd.ok(&["snapshots", "--snapshotter", "cairn", "ls"]);
    for chain in &img.chain_ids {
        assert!(
            ls.contains(chain.as_str()),
            "ctr snapshots ls lacks {chain}:\n{ls}"
        );
    }
    let info = ctrd.ok(&[
        "snapshots",
        "--snapshotter",
        "cairn",
        "info",
        &img.chain_ids[1],
    ]);
    assert!(
        info.contains(&img.chain_ids[0]),
        "info names the parent:\n{info}"
    );
    let usage = ctrd.ok(&[
        "snapshots",
        "--snapshotter",
        "cairn",
        "usage",
        &img.chain_ids[0],
    ]);
    assert!(usage.contains(&img.chain_ids[0]), "usage:\n{usage}");
    let tree = ctrd.ok(&["snapshots", "--snapshotter", "cairn", "tree"]);
    assert!(tree.contains(&img.chain_ids[1]), "tree:\n{tree}");

    // Restart containerd: everything is still there and runs.
    ctrd.stop();
    ctrd = Containerd::start(d, &sock);
    assert_eq!(committed(&sock).len(), 2);
    run_ok(&ctrd, &img.name, "c3");
    // Restart cairn serve under the running containerd: it reconnects.
    assert_eq!(server.stop_ref(), Some(0), "{}", server.log());
    server = Server::start(&root, &sock, "overlay", log);
    assert_eq!(committed(&sock).len(), 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctrd
        .ctr(&["snapshots", "--snapshotter", "cairn", "ls"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "containerd did not reconnect to cairn"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run_ok(&ctrd, &img.name, "c4");

    // Remove the image: containerd's garbage collection removes the snapshots in cairn,
    // children first (cairn refuses a parent with children, so none may be refused).
    ctrd.ok(&["images", "rm", "--sync", &img.name]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cairn_snapshots(&sock).is_empty() {
        assert!(
            Instant::now() < deadline,
            "snapshots left after GC: {:?}",
            cairn_snapshots(&sock)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log_text = server.log();
    let removes: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("method=\"remove\""))
        .collect();
    assert!(!removes.is_empty(), "no removes logged");
    assert!(
        removes.iter().all(|l| !l.contains("refused")),
        "a remove was refused: {removes:#?}"
    );

    // The same image loaded into cairn's layer store first (its layers become committed
    // snapshots named by their ChainIDs; `cairn image load` runs inside the server, through its
    // control socket) and then imported into containerd. containerd 1.6's `images import`
    // unpacks without the snapshot-ref label (only its pull unpacker asks for layers a
    // snapshotter holds), so it unpacks its own copies beside cairn's; both run.
    let load = Command::new(support::cli_bin())
        .arg("--root")
        .arg(&root)
        .args(["image", "load"])
        .arg(&img.archive)
        .output()
        .expect("cairn image load");
    assert!(
        load.status.success(),
        "image load: {}",
        String::from_utf8_lossy(&load.stderr)
    );

    let names: Vec<String> = committed(&sock).into_iter().map(|i| i.name).collect();
    assert_eq!(
        names, img.chain_ids,
        "the layer store's snapshots are named by ChainID"
    );
    ctrd.ok(&[
        "images",
        "import",
        "--snapshotter",
        "cairn",
        &img.archive.display().to_string(),
    ]);
    run_ok(&ctrd, &img.name, "c5");
    ctrd.ok(&["images", "rm", "--sync", &img.name]);

    ctrd.stop();
    assert_eq!(server.stop_ref(), Some(0));
}

/// Remove `image` from containerd and wait (up to 30 s) until its garbage collection has
/// removed every snapshot in cairn.
fn remove_and_collect(c: &Containerd, sock: &Path, image: &str) {
    c.ok(&["images", "rm", "--sync", image]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cairn_snapshots(sock).is_empty() {
        assert!(
            Instant::now() < deadline,
            "snapshots left after GC: {:?}",
            cairn_snapshots(sock)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the server logged about one pull: the layers it answered as held, and its commits.
#[derive(Debug)]
struct PullLog {
    held: Vec<String>,
    commits: usize,
}

fn pull_log(text: &str) -> PullLog {
    let held = text
        .lines()
        .filter(|l| l.contains("layer already held: AlreadyExists"))
        .map(str::to_owned)
        .collect();
    let commits = text
        .lines()
        .filter(|l| l.contains("method=\"commit\"") && l.contains(": ok elapsed_us="))
        .count();
    PullLog { held, commits }
}

/// `ctr pull` of `reference` and `ctr run` of it, timed; returns the time and what the
/// server logged during the pull.
fn pull_and_run(
    c: &Containerd,
    pull: &Path,
    server: &Server,
    reference: &str,
    id: &str,
) -> (Duration, PullLog) {
    let before = server.log().len();
    let t = Instant::now();
    let out = Command::new(pull)
        .arg("-address")
        .arg(&c.sock)
        .args([
            "-namespace",
            NAMESPACE,
            "-snapshotter",
            "cairn",
            "-plain-http",
        ])
        .arg(reference)
        .stdin(Stdio::null())
        .output()
        .expect("run cairnpull");
    assert!(
        out.status.success(),
        "cairnpull {reference}: {}\ncontainerd: {}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    let during = server.log().get(before..).unwrap_or_default().to_owned();
    run_ok(c, reference, id);
    (t.elapsed(), pull_log(&during))
}

/// Build `tests/serve_pull/main.go` (a pull through containerd's client with its pull
/// unpacker, which `ctr images pull` 1.6 does not use) against Debian's containerd Go sources,
/// offline, once per target dir. `None` (after a printed reason) when Go or the sources are
/// missing outside CI.
fn cairnpull() -> Option<PathBuf> {
    let sources = Path::new("/usr/share/gocode/src/github.com/containerd/containerd/pull.go");
    let go = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("go").exists()))
        .unwrap_or(false);
    if !go || !sources.exists() {
        let why = "Go or containerd's Go sources are missing \
                   (apt-get install golang-go golang-github-containerd-containerd-dev)";
        if std::env::var("CI").is_ok() {
            panic!("{why}");
        }
        println!("skipped: {why}");
        return None;
    }
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cairnpull");
    let bin = base.join("cairnpull");
    let src = base.join("gopath/src/cairnpull");
    std::fs::create_dir_all(&src).expect("cairnpull source dir");
    let main = include_str!("serve_pull/main.go");
    std::fs::write(src.join("main.go"), main).expect("write cairnpull source");
    let gopath = format!("{}:/usr/share/gocode", base.join("gopath").display());
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOFLAGS", "")
        .env("GOCACHE", base.join("cache"))
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build cairnpull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

/// What the held-layer test needs of the registry tools (no htpasswd: its registry has no auth),
/// with the Debian package that has each.
const REGISTRY_TOOLS: [(&str, &str); 2] =
    [("docker-registry", "docker-registry"), ("skopeo", "skopeo")];

fn missing_registry_tool() -> Option<(&'static str, &'static str)> {
    REGISTRY_TOOLS.into_iter().find(|(tool, _)| {
        !std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false)
    })
}

/// Layers cairn already holds, through a real containerd's pull from a real registry: with
/// the image's layers loaded by `cairn image load`, containerd's pull unpacker asks for each
/// layer with the `containerd.io/snapshot.ref` label, cairn answers AlreadyExists with its
/// committed snapshot named by that ChainID, and containerd applies nothing. The same pull
/// with nothing held unpacks both layers (the control). Prints `ctr pull` + `ctr run` times.
#[test]
fn a_pull_of_layers_cairn_holds_applies_nothing() {
    if !ready() {
        return;
    }
    if let Some((tool, package)) = missing_registry_tool() {
        if std::env::var("CI").is_ok() {
            panic!("{tool} is not installed (apt-get install {package})");
        }
        println!("skipped: {tool} is not installed (apt-get install {package})");
        return;
    }
    let Some(pull) = cairnpull() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("serve-held-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let dir = if std::env::var_os("CAIRN_E2E_KEEP").is_some() {
        Keep::Kept(dir.keep())
    } else {
        Keep::Temp(dir)
    };
    let d = dir.path();
    let Some(img) = image::build(d, "docker.io/library/cairn-held:1") else {
        println!("skipped: no busybox binary to build the image from");
        return;
    };
    let reg = registry::Registry::start(d, None);
    let archive = format!("oci-archive:{}", img.archive.display());
    let reference = reg.skopeo_copy(&archive, "cairn/busybox:1", &[]);
    let root = d.join("cairn");
    let sock = d.join("cairn.sock");
    let server = Server::start(&root, &sock, "overlay", "info,cairn_server=debug");
    let ctrd = Containerd::start(d, &sock);

    // Warm up (containerd, the shim, runc and the page cache), untimed; then the control:
    // nothing held, so containerd fetches and applies both layers (two commits in cairn).
    let (_, warm) = pull_and_run(&ctrd, &pull, &server, &reference, "held-warm");
    assert_eq!(
        warm.commits, 2,
        "the first pull applies both layers: {warm:?}"
    );
    remove_and_collect(&ctrd, &sock, &reference);
    let (unpacked, control) = pull_and_run(&ctrd, &pull, &server, &reference, "held-unpacked");
    assert!(control.held.is_empty(), "nothing was held: {control:?}");
    assert_eq!(control.commits, 2, "both layers applied: {control:?}");
    remove_and_collect(&ctrd, &sock, &reference);

    // Load the image into cairn's layer store (through the running server's control socket).
    let load = Command::new(support::cli_bin())
        .arg("--root")
        .arg(&root)
        .args(["image", "load"])
        .arg(&img.archive)
        .output()
        .expect("cairn image load");
    assert!(
        load.status.success(),
        "image load: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    let names: Vec<String> = committed(&sock).into_iter().map(|i| i.name).collect();
    assert_eq!(names, img.chain_ids, "the layer store holds both layers");

    let (held_time, held) = pull_and_run(&ctrd, &pull, &server, &reference, "held-run");
    assert_eq!(
        held.commits, 0,
        "containerd applied a layer cairn holds: {held:?}"
    );
    for chain in &img.chain_ids {
        assert_eq!(
            held.held
                .iter()
                .filter(|l| l.contains(&format!("target={chain}")))
                .count(),
            1,
            "{chain} answered AlreadyExists once: {held:?}"
        );
    }
    // Nothing beside the held layers (no extraction snapshot left, no copy), and each held
    // snapshot carries the ref label containerd found it by.
    let after = committed(&sock);
    let names: Vec<&str> = after.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, img.chain_ids, "only the held layers are committed");
    for info in &after {
        assert_eq!(
            info.labels.get("containerd.io/snapshot.ref"),
            Some(&info.name),
            "{} carries its ref label",
            info.name
        );
    }
    assert!(
        cairn_snapshots(&sock)
            .iter()
            .all(|i| !i.name.contains("extract-")),
        "an extraction snapshot appeared: {:?}",
        cairn_snapshots(&sock)
    );
    assert!(
        ctrd.ok(&["images", "ls", "-q"]).contains(&reference),
        "containerd lists the pulled image"
    );

    let ms = |t: Duration| t.as_secs_f64() * 1000.0;
    println!("ctr_run_held_layers_ms: {:.1}", ms(held_time));
    println!("ctr_run_unpacked_ms: {:.1}", ms(unpacked));
    println!(
        "ratio_held_vs_unpacked: {:.2}",
        ms(held_time) / ms(unpacked).max(f64::MIN_POSITIVE)
    );

    ctrd.stop();
    assert_eq!(server.stop(), Some(0));
}

/// A loop-mounted ext4 image, unmounted and detached on drop.
#[derive(Debug)]
struct LoopFs {
    mnt: PathBuf,
    dev: String,
}

impl LoopFs {
    fn mount(backing: &Path, mnt: &Path) -> LoopFs {
        std::fs::create_dir_all(mnt).expect("mount point");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let fs = LoopFs {
            mnt: mnt.to_path_buf(),
            dev,
        };
        let st = Command::new("mount")
            .arg(&fs.dev)
            .arg(mnt)
            .status()
            .expect("mount");
        assert!(st.success(), "mount {} {}", fs.dev, mnt.display());
        fs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Anything cairn or containerd left mounted below it first.
        let _ = Command::new("umount").arg("-R").arg(&self.mnt).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Power cut right after `ctr images import` returns: the copy of cairn's backing file taken
/// at that instant (what the disk held; the page cache is lost) must hold every committed
/// snapshot's files intact, because cairn syncs a tree before it acknowledges its commit.
#[test]
fn a_power_cut_right_after_import_keeps_every_committed_layer() {
    if !ready() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("serve-pc-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let d = dir.path();
    let Some(img) = image::build(d, "docker.io/library/cairn-pc:1") else {
        println!("skipped: no busybox binary to build the image from");
        return;
    };
    let backing = d.join("serve-pc.img");
    let copy = d.join("serve-pc-copy.img");
    let f = std::fs::File::create(&backing).expect("backing file");
    f.set_len(512 << 20).expect("size the backing file");
    drop(f);
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&backing)
        .status()
        .expect("mkfs.ext4");
    assert!(st.success());
    let sock = d.join("cairn.sock");
    {
        let fs = LoopFs::mount(&backing, &d.join("serve-pc-mnt"));
        let root = fs.mnt.join("cairn");
        let server = Server::start(&root, &sock, "vfs", "warn");
        let ctrd = Containerd::start(d, &sock);
        // The control: a file written without a sync just before the import (printed, not
        // asserted: the kernel may write it back meanwhile) shows what a power cut loses.
        std::fs::write(fs.mnt.join("unsynced"), vec![7u8; 1 << 20]).expect("control file");
        ctrd.ok(&[
            "images",
            "import",
            "--snapshotter",
            "cairn",
            &img.archive.display().to_string(),
        ]);
        // The instant the import returns: what the loop device wrote to its backing file.
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&backing)
            .arg(&copy)
            .status()
            .expect("copy the backing file");
        assert!(st.success());
        ctrd.stop();
        server.stop();
    }
    // After the "power cut": mount the copy (ext4 replays its journal) and let cairn recover.
    let fs = LoopFs::mount(&copy, &d.join("serve-pc-after"));
    let control = std::fs::read(fs.mnt.join("unsynced")).unwrap_or_default();
    println!(
        "power cut control: {} of {} unsynced bytes survived",
        control.iter().filter(|b| **b == 7).count(),
        1 << 20
    );
    let server = Server::start(&fs.mnt.join("cairn"), &sock, "vfs", "warn");
    let layers = committed(&sock);
    assert_eq!(layers.len(), 2, "both committed layers survive: {layers:?}");
    let mut intact = 0;
    runtime().block_on(async {
        let mut c = connect(&sock).await.expect("connect");
        for (n, layer) in layers.iter().enumerate() {
            let view = c
                .view(pb::ViewSnapshotRequest {
                    snapshotter: "cairn".into(),
                    key: format!("check-{n}"),
                    parent: layer.name.clone(),
                    labels: Default::default(),
                })
                .await
                .expect("view")
                .into_inner();
            let tree = PathBuf::from(&view.mounts[0].source);
            let busybox = std::fs::read(tree.join("bin/busybox")).unwrap_or_default();
            assert_eq!(
                busybox.len(),
                img.busybox.len(),
                "{}: bin/busybox",
                layer.name
            );
            assert!(
                busybox == img.busybox,
                "{}: bin/busybox differs",
                layer.name
            );
            if layer.parent.is_empty() {
                assert!(!tree.join(image::MARKER_PATH).exists());
            } else {
                let marker = std::fs::read(tree.join(image::MARKER_PATH)).unwrap_or_default();
                assert_eq!(
                    marker,
                    image::MARKER,
                    "{}: {}",
                    layer.name,
                    image::MARKER_PATH
                );
            }
            intact += 1;
        }
    });
    println!(
        "power cut after import: {intact} of {} committed snapshots intact",
        layers.len()
    );
    server.stop();
}
