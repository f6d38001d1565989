//! `migrate` on a data root made by a real Docker daemon (Debian's `docker.io`, 20.10, on the
//! overlay2 driver): the test starts its own `dockerd` with its own data root, exec root,
//! socket and pidfile under a temporary directory, `docker load`s the shared corpus's image and
//! `docker import`s some of its layers, stops the daemon, and migrates that data root.
//!
//! Needs root and `dockerd`; skips with a printed reason otherwise, unless
//! `CAIRN_REQUIRE_DOCKER=1` (set by `.ci/run`), which makes a missing daemon a failure.

mod support;

use cairn_migrate::{migrate, Options};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{corpus, is_root, listing, open_vfs};

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A `dockerd` of our own; stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    child: Child,
    sock: PathBuf,
    docker: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, dockerd: &Path, docker: &Path) -> Daemon {
        let sock = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("log");
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args([
                "--storage-driver=overlay2",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--containerd-namespace=cairn-migrate-test",
                "--containerd-plugins-namespace=cairn-migrate-test-plugins",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let daemon = Daemon {
            child,
            sock,
            docker: docker.to_owned(),
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            let ok = daemon
                .docker(&["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return daemon;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
        panic!("dockerd did not come up in 90 s:\n{log}");
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) {
        let out = self.docker(args).output().expect("docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn layer_dir_of(root: &Path, chain: &str) -> PathBuf {
    root.join("image/overlay2/layerdb/sha256")
        .join(chain.trim_start_matches("sha256:"))
}

#[test]
fn migrates_a_real_docker_overlay2_root() {
    let Some(corpus) = corpus() else { return };
    let require = std::env::var("CAIRN_REQUIRE_DOCKER").as_deref() == Ok("1");
    let tools = (
        find(&["/usr/sbin/dockerd", "/usr/bin/dockerd"]),
        find(&["/usr/bin/docker", "/usr/local/bin/docker"]),
    );
    let (dockerd, docker) = match tools {
        (Some(d), Some(c)) if is_root() => (d, c),
        _ if require => panic!("CAIRN_REQUIRE_DOCKER=1 but dockerd, docker or root is missing"),
        _ => {
            println!("skipped: needs root and Debian's docker.io (dockerd, docker)");
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let mut daemon = Daemon::start(tmp.path(), &dockerd, &docker);
    let chain = corpus.join("images/chain.docker.tar");
    daemon.run(&["load", "-i", chain.to_str().expect("path")]);
    daemon.run(&["tag", "cairn/chain:latest", "cairn/chain:v2"]);
    for layer in ["gnu", "pax", "sparse"] {
        let path = corpus.join(format!("layers/{layer}.tar"));
        daemon.run(&[
            "import",
            path.to_str().expect("path"),
            &format!("cairn/{layer}:1"),
        ]);
    }
    daemon.stop();
    drop(daemon);

    let src = tmp.path().join("root");
    let before = listing(&src);
    let engine = open_vfs(&tmp.path().join("cairn"));
    let summary = migrate(&engine, &src, &Options::default(), &|_| {}).expect("migrate");
    assert_eq!(
        listing(&src),
        before,
        "the migration changed Docker's data root"
    );
    // Docker's overlay2 links and lower files agree with its layer store.
    assert_eq!(summary.warnings, Vec::<String>::new());
    assert_eq!(summary.driver, "overlay2");
    assert_eq!(
        (summary.layers_moved, summary.images_moved),
        (5, 3),
        "{summary:#?}"
    );

    // Docker records a GNU sparse file at its expanded size, so its own tar-split cannot
    // rebuild that layer (`docker save` of it fails too): skipped, named, with its image.
    let sparse_diff = "sha256:0b1df0d9678b239ec5505ab552dd55a38600daf92a713faac012b15c6c92b319";
    let layer_skip = summary
        .skipped
        .iter()
        .find(|s| s.kind == "layer")
        .expect("sparse skipped");
    assert_eq!(layer_skip.id, sparse_diff);
    assert!(
        layer_skip.reason.contains("not its DiffID"),
        "{}",
        layer_skip.reason
    );
    assert_eq!(
        summary.skipped.iter().filter(|s| s.kind == "image").count(),
        1,
        "{summary:#?}"
    );
    assert_eq!(summary.skipped.len(), 2, "{summary:#?}");

    let mut names = summary.names.clone();
    names.sort();
    assert_eq!(
        names,
        [
            "cairn/chain:latest",
            "cairn/chain:v2",
            "cairn/gnu:1",
            "cairn/pax:1"
        ]
    );
    let problems: Vec<_> = engine
        .verify(None)
        .expect("verify")
        .into_iter()
        .filter(|v| v.problem.is_some())
        .collect();
    assert_eq!(problems, vec![]);

    // The chain has the ChainIDs the corpus lists, and our tar-split encoder writes what
    // Docker wrote for each of these layers, byte for byte.
    let expected =
        std::fs::read_to_string(corpus.join("chain/expected-chain-ids.txt")).expect("ids");
    let image = engine
        .images()
        .expect("images")
        .into_iter()
        .find(|i| i.name == "cairn/chain:latest")
        .expect("image");
    for (chain_id, tar) in image.layers.iter().zip(["0-base", "1-whiteouts", "2-top"]) {
        assert!(
            expected.contains(chain_id.as_str()),
            "{chain_id} not in expected-chain-ids.txt"
        );
        let bytes = std::fs::read(corpus.join(format!("chain/{tar}.tar"))).expect("tar");
        let gz = std::fs::read(layer_dir_of(&src, chain_id).join("tar-split.json.gz"))
            .expect("tar-split");
        let mut docker_lines = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&gz[..]),
            &mut docker_lines,
        )
        .expect("gunzip");
        assert!(
            cairn_migrate::tarsplit::encode(&bytes).expect("encode") == docker_lines,
            "{tar}"
        );
    }
    engine.close().expect("close");

    // A file changed under Docker's overlay2 diff is caught and named.
    let gnu_chain = "sha256:b48d1098fcc2870ee69afd9369696a83303109be285be61c4aa59df03be6d7c2";
    let cache_id =
        std::fs::read_to_string(layer_dir_of(&src, gnu_chain).join("cache-id")).expect("cache-id");
    let tool = src
        .join("overlay2")
        .join(cache_id.trim())
        .join("diff/bin/tool");
    let mut bytes = std::fs::read(&tool).expect("bin/tool");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tool, &bytes).expect("tamper");
    let engine = open_vfs(&tmp.path().join("cairn-2"));
    let summary = migrate(&engine, &src, &Options::default(), &|_| {}).expect("migrate");
    let skip = summary
        .skipped
        .iter()
        .find(|s| s.id == gnu_chain)
        .expect("gnu skipped");
    assert!(skip.reason.contains("bin/tool"), "{}", skip.reason);
    assert!(engine
        .layers()
        .expect("layers")
        .iter()
        .all(|l| l.chain_id != gnu_chain));
    engine.close().expect("close");
}
