//! Shared by the `cairn serve` tests: finding the server binary and the shared suite, starting
//! and stopping servers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `cairn` binary: `cairn serve` is under test, `cairn image load` helps.
pub fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// The `cairn` CLI (for `image load` and friends).
pub fn cli_bin() -> PathBuf {
    cairn_bin()
}

/// The command line of a server on `root` at `sock`.
pub fn serve_args(root: &Path, sock: &Path, driver: &str) -> Vec<String> {
    vec![
        "--root".into(),
        root.display().to_string(),
        "--driver".into(),
        driver.into(),
        "serve".into(),
        "--address".into(),
        sock.display().to_string(),
    ]
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The project's checkout (the directory holding Cargo.lock).
pub fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() {
        if !dir.pop() {
            panic!("no Cargo.lock above {}", env!("CARGO_MANIFEST_DIR"));
        }
    }
    dir
}

/// `../shared/NAME` beside the checkout; `None` (after a printed notice) when it is missing,
/// a failure when CAIRN_REQUIRE_SHARED=1.
pub fn shared(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("CAIRN_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("..").join("shared"));
    let p = base.join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CAIRN_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("{} is missing and CAIRN_REQUIRE_SHARED=1", p.display());
    }
    println!("skipped: {} is missing", p.display());
    None
}

#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub sock: PathBuf,
    pub stderr: PathBuf,
}

impl Server {
    /// Start a server and wait (up to 20 s) for its socket.
    pub fn start(root: &Path, sock: &Path, driver: &str, log: &str) -> Server {
        let stderr = PathBuf::from(format!("{}.stderr", root.display()));
        if let Some(d) = stderr.parent() {
            std::fs::create_dir_all(d).expect("create the log directory");
        }
        let err = std::fs::File::create(&stderr).expect("create stderr file");
        let child = Command::new(cairn_bin())
            .args(serve_args(root, sock, driver))
            .env("CAIRN_LOG", log)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn cairn serve");
        let mut server = Server {
            child,
            sock: sock.to_path_buf(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready when it accepts: a stale socket file may be there before the server is.
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("cairn serve exited with {status}: {}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "no socket after 20 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal the server");
    }

    /// Wait for the server to exit (up to 30 s) and return its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(mut self) -> Option<i32> {
        self.stop_ref()
    }

    /// SIGTERM, then wait for the exit code.
    pub fn stop_ref(&mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
