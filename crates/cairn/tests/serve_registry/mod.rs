//! A registry of the test's own for containerd's pull: Debian's `docker-registry`
//! (distribution 2.8) on 127.0.0.1 with its own storage directory and config (plain HTTP, no
//! auth), and `skopeo` to push an OCI archive into it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tools this module needs, with the Debian package that has each.
pub const TOOLS: [(&str, &str); 2] = [("docker-registry", "docker-registry"), ("skopeo", "skopeo")];

#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: PathBuf,
}

fn free_port() -> u16 {
    // Bind port 0 and let it go: the registry takes the port a moment later (a race with any
    // other process picking the same free port is possible, and unlikely).
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local address").port()
}

impl Registry {
    /// Start a registry storing under `dir/registry` and wait (up to 20 s) until it accepts.
    pub fn start(dir: &Path) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.join("registry");
        std::fs::create_dir_all(&data).expect("registry storage");
        let config = dir.join("registry.yml");
        let text = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: cairn-e2e\n",
            data.display()
        );
        std::fs::write(&config, text).expect("write registry config");
        let log = dir.join("registry.log");
        let err = std::fs::File::create(&log).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start docker-registry");
        let mut r = Registry { child, addr, log };
        let sa: SocketAddr = r.addr.parse().expect("loopback address");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                r.addr,
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Push the OCI archive `archive` (one manifest) as `REPO:TAG` (e.g. `cairn/busybox:1`);
    /// returns the reference containerd pulls, `127.0.0.1:PORT/REPO:TAG`.
    pub fn push(&self, archive: &Path, name: &str) -> String {
        let reference = format!("{}/{name}", self.addr);
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{reference}"))
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {reference}: {}\nregistry: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
