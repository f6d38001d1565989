//! The other `cairn` commands while `cairn serve` holds the root: they run inside the server,
//! on its engine, through a control socket in the root (`ROOT/serve.ctl`, mode 0600).
//!
//! The protocol (docs/serve.md): the client connects, sends one JSON line
//! `{"args": [...], "cwd": DIR}` (its command line without the program name, and its working
//! directory, against which the server resolves relative paths), and reads JSON lines back: `{"stdout": LINE}`, `{"stderr": LINE}`, and last
//! `{"exit": CODE}`. One command per connection; at most `MAX_CLIENTS` at once.

use super::{dispatch, error::ErrorKind, Cli, CliError, Ctx, Output};
use cairn_engine::EngineHandle;
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The control socket's name inside the root.
pub const CONTROL_SOCKET: &str = "serve.ctl";
/// Commands running at once through the control socket; more are refused (exit 1).
const MAX_CLIENTS: usize = 16;
/// The request line, at most.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
struct Request {
    args: Vec<String>,
    cwd: PathBuf,
    /// `pull`/`push --password-stdin`: the first line of the client's standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, not even in a debug log.
        f.debug_struct("Request")
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Frame {
    Stdout(String),
    Stderr(String),
    Exit(u8),
}

pub fn control_path(root: &Path) -> PathBuf {
    root.join(CONTROL_SOCKET)
}

/// The server side: accepts commands until dropped.
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Listen on `ROOT/serve.ctl` and run the commands sent there on `engine`.
pub fn start(root: &Path, engine: EngineHandle) -> std::io::Result<Control> {
    let root = root.canonicalize()?;
    let path = control_path(&root);
    // The root's lock is ours: a socket file here is a dead server's.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(0));
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("cairn-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if running.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        running.fetch_sub(1, Ordering::AcqRel);
                        let mut conn = conn;
                        let _ = send(
                            &mut conn,
                            &Frame::Stderr("cairn: the server is busy; try again".into()),
                        );
                        let _ = send(&mut conn, &Frame::Exit(ErrorKind::Other.code()));
                        continue;
                    }
                    let (root, engine, running) =
                        (root.clone(), engine.clone(), Arc::clone(&running));
                    let spawned = std::thread::Builder::new()
                        .name("cairn-control-cmd".into())
                        .spawn(move || {
                            handle(conn, &root, engine);
                            running.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        tracing::warn!("could not start a thread for a control command");
                    }
                }
            })?
    };
    Ok(Control {
        path,
        stop,
        thread: Some(thread),
    })
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send(conn: &mut UnixStream, frame: &Frame) -> std::io::Result<()> {
    let line = serde_json::to_string(frame).map_err(std::io::Error::other)?;
    writeln!(conn, "{line}")?;
    conn.flush()
}

fn handle(mut conn: UnixStream, root: &Path, engine: EngineHandle) {
    let code = match run_one(&conn, root, engine) {
        Ok(code) => code,
        Err(e) => {
            let _ = send(&mut conn, &Frame::Stderr(format!("cairn: {}", e.message)));
            e.kind.code()
        }
    };
    let _ = send(&mut conn, &Frame::Exit(code));
}

fn run_one(conn: &UnixStream, root: &Path, engine: EngineHandle) -> Result<u8, CliError> {
    let read_half = conn
        .try_clone()
        .map_err(|e| CliError::new(ErrorKind::Other, format!("control socket: {e}")))?;
    let mut line = String::new();
    BufReader::new(read_half.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .map_err(|e| CliError::invalid(format!("control request: {e}")))?;
    let request: Request = serde_json::from_str(&line)
        .map_err(|e| CliError::invalid(format!("control request: {e}")))?;
    let mut cli = Cli::try_parse_from(std::iter::once("cairn".to_owned()).chain(request.args))
        .map_err(|e| CliError::invalid(super::clap_message(&e)))?;
    if !cli.root.is_absolute() {
        cli.root = request.cwd.join(&cli.root);
    }
    for_the_server(&mut cli.command, &request.cwd)?;
    if matches!(cli.command, super::Command::Serve(_)) {
        return Err(CliError::new(
            ErrorKind::Locked,
            format!("{} is already served by this server", root.display()),
        ));
    }
    let asked = cli.root.canonicalize().unwrap_or(cli.root.clone());
    if asked != root {
        return Err(CliError::invalid(format!(
            "this server holds {}, not {}",
            root.display(),
            cli.root.display()
        )));
    }
    let conn = conn
        .try_clone()
        .map_err(|e| CliError::new(ErrorKind::Other, format!("control socket: {e}")))?;
    let ctx = Ctx {
        root: root.to_path_buf(),
        driver: cli.driver.map(Into::into),
        block: cli.block_options(),
        // The server already holds the root: nothing to wait for.
        lock_timeout: cli.lock_timeout,
        out: Output::remote(cli.json, Arc::new(Mutex::new(conn))),
        engine: Some(engine),
        password: request.password,
    };
    match dispatch(&ctx, cli.command) {
        Ok(code) => Ok(code),
        Err(e) => {
            ctx.out.error(&e);
            Ok(e.kind.code())
        }
    }
}

/// Resolve the command's paths against the client's working directory, and refuse what
/// cannot cross the socket: standard input, and tars written to standard output.
fn for_the_server(command: &mut super::Command, cwd: &Path) -> Result<(), CliError> {
    use super::{image::ImageCmd, layer::LayerCmd, snapshot::SnapshotCmd, Command};
    let absolute = |p: &mut PathBuf| {
        if !p.is_absolute() {
            *p = cwd.join(&*p);
        }
    };
    let no_stdio = |what: &str| {
        CliError::invalid(format!(
            "{what} cannot go through cairn serve's socket; give a file path"
        ))
    };
    match command {
        Command::Image(ImageCmd::Load { path, .. }) => absolute(path),
        Command::Layer(LayerCmd::Import { file, .. }) => {
            if file.as_os_str() == "-" {
                return Err(no_stdio("standard input"));
            }
            absolute(file)
        }
        Command::Layer(LayerCmd::Export { output, .. })
        | Command::Snapshot(SnapshotCmd::Diff { output, .. }) => match output {
            Some(p) => absolute(p),
            None => return Err(no_stdio("a tar on standard output (use -o FILE)")),
        },
        Command::Mount { target, .. } | Command::Umount { target } => absolute(target),
        _ => {}
    }
    Ok(())
}

/// The control socket of a live `cairn serve` on `root`, if one answers (a socket file left by
/// a dead server refuses the connection).
pub fn connect(root: &Path) -> Option<UnixStream> {
    UnixStream::connect(control_path(root)).ok()
}

/// The client side: run `args` (the command line without the program name) in the server
/// that holds `root`, over `conn` (from [`connect`]); its output is printed here. Returns the
/// exit code.
pub fn forward(
    out: &Output,
    root: &Path,
    mut conn: UnixStream,
    args: &[std::ffi::OsString],
) -> Result<u8, CliError> {
    let path = control_path(root);
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::new(ErrorKind::Other, format!("working directory: {e}")))?;
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // `--password-stdin` reads this process's standard input, not the server's: the line
    // travels with the command (the socket is the root's, mode 0600).
    let password = if args.iter().any(|a| a == "--password-stdin") {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Some(line.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        None
    };
    let request = serde_json::to_string(&Request {
        args,
        cwd,
        password,
    })
    .map_err(|e| CliError::new(ErrorKind::Other, format!("encode request: {e}")))?;
    writeln!(conn, "{request}")
        .map_err(|e| CliError::new(ErrorKind::Other, format!("{}: {e}", path.display())))?;
    for line in BufReader::new(conn).lines() {
        let line =
            line.map_err(|e| CliError::new(ErrorKind::Other, format!("{}: {e}", path.display())))?;
        match serde_json::from_str::<Frame>(&line) {
            Ok(Frame::Stdout(l)) => out.line(&l)?,
            Ok(Frame::Stderr(l)) => out.err_line(&l),
            Ok(Frame::Exit(code)) => return Ok(code),
            Err(e) => {
                return Err(CliError::new(
                    ErrorKind::Other,
                    format!("{}: bad frame: {e}", path.display()),
                ))
            }
        }
    }
    Err(CliError::new(
        ErrorKind::Other,
        format!(
            "{}: the server closed the connection before the command ended",
            path.display()
        ),
    ))
}
