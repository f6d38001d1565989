//! The `cairn` command line: parse, open the root, run one command, close the root.
//!
//! Every invocation takes the root's lock for the length of one command (the engine refuses a
//! second process with `root … is locked by pid N`); `wal dump` does not open the engine at all.

mod aufs;
mod container;
mod error;
mod image;
mod layer;
mod maint;
mod migrate;
mod mount;
mod output;
mod progress;
mod registry;
pub mod remote;
mod serve;
mod snapshot;
mod wal;

pub use error::{CliError, ErrorKind};
pub use output::Output;

use cairn_engine::{Engine, EngineHandle, EngineOptions};
use cairn_state::types::DriverKind;
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// A crash-safe, transactional store for container snapshots (containerd's snapshot model).
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The root directory; created on first use.
    #[arg(
        long,
        global = true,
        env = "CAIRN_ROOT",
        default_value = "./cairn-data",
        value_name = "DIR"
    )]
    pub root: PathBuf,
    /// The driver of a new root; for an existing root it must be the one it was created with.
    #[arg(long, global = true, value_enum, value_name = "DRIVER")]
    pub driver: Option<DriverArg>,
    /// block driver: the file system inside every image of a new root (default ext4). For an
    /// existing root, if given, it must be the one it was created with.
    #[arg(long, global = true, value_enum, value_name = "FS")]
    pub block_fs: Option<BlockFsArg>,
    /// block driver: the apparent (sparse) size of every image of a new root, in bytes or
    /// with K, M, G, T (default 10G; at least 64M for ext4, 300M for xfs).
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_block_size)]
    pub block_size_bytes: Option<u64>,
    /// Machine-readable output: one JSON value per line on stdout, errors as
    /// {"error": {"kind", "message"}} on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for another cairn process to release the root (one killed a moment ago
    /// holds it until it has fully exited); then fail with `root … is locked by pid N`.
    #[arg(
        long,
        global = true,
        env = "CAIRN_LOCK_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS",
        value_parser = parse_seconds
    )]
    pub lock_timeout: std::time::Duration,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a number of seconds from 0 up"))
}

fn parse_block_size(s: &str) -> Result<u64, String> {
    cairn_driver::parse_size(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BlockFsArg {
    Ext4,
    Xfs,
}

impl Cli {
    /// The block options the flags ask for; `None` when neither flag is given.
    pub fn block_options(&self) -> Option<cairn_driver::BlockOptions> {
        if self.block_fs.is_none() && self.block_size_bytes.is_none() {
            return None;
        }
        let mut o = cairn_driver::BlockOptions::default();
        if let Some(fs) = self.block_fs {
            o.fs = match fs {
                BlockFsArg::Ext4 => cairn_driver::BlockFs::Ext4,
                BlockFsArg::Xfs => cairn_driver::BlockFs::Xfs,
            };
        }
        if let Some(size_bytes) = self.block_size_bytes {
            o.size_bytes = size_bytes;
        }
        Some(o)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DriverArg {
    /// Full copies; works unprivileged (the default for a new root).
    Vfs,
    /// Overlay upper dirs on parent lowerdirs; needs root and overlayfs.
    Overlay,
    /// One ext4 image per snapshot, reflink-cloned from its parent's; needs root and a root
    /// on a file system that reflinks (xfs with reflink=1, btrfs).
    Block,
    /// A btrfs subvolume per snapshot, constant-time snapshots; the root must be on btrfs.
    Btrfs,
}

impl From<DriverArg> for DriverKind {
    fn from(d: DriverArg) -> DriverKind {
        match d {
            DriverArg::Vfs => DriverKind::Vfs,
            DriverArg::Overlay => DriverKind::Overlay,
            DriverArg::Block => DriverKind::Block,
            DriverArg::Btrfs => DriverKind::Btrfs,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, commit, inspect and remove snapshots.
    #[command(subcommand, alias = "snapshots")]
    Snapshot(snapshot::SnapshotCmd),
    /// Mount Active or View snapshot KEY on TARGET and take a reference on it (needs root).
    /// Mounting it there again only counts another reference.
    Mount { key: String, target: PathBuf },
    /// Release a reference `cairn mount` took on TARGET; the last one unmounts (needs root).
    Umount { target: PathBuf },
    /// List the mounts cairn counts: TARGET KEY REFERENCES.
    Mounted,
    /// Check the journal, checkpoint, index and trees against each other; exit 1 when
    /// something is wrong and was not repaired.
    Fsck {
        /// Fix what can be fixed (the index, orphaned trees, stray staging, trash).
        #[arg(long)]
        repair: bool,
        /// Also hash every layer against its DiffID and every committed snapshot's tree against
        /// the digest recorded at its commit (reads every stored byte).
        #[arg(long)]
        verify: bool,
    },
    /// Inspect the write-ahead log.
    #[command(subcommand)]
    Wal(wal::WalCmd),
    /// Remove trees and staging areas on disk that no snapshot owns.
    Cleanup,
    /// Import, export, list and remove layers (OCI/Docker layer tars).
    #[command(subcommand, alias = "layers")]
    Layer(layer::LayerCmd),
    /// Load, list and remove images.
    #[command(subcommand, alias = "images")]
    Image(image::ImageCmd),
    /// Create, list and remove containers' read-write snapshots.
    #[command(subcommand, alias = "containers")]
    Container(container::ContainerCmd),
    /// Re-hash stored layers (one, or all) against their DiffIDs; exit 1 when any differs.
    Verify { chain_id: Option<String> },
    /// Move another store's layers and images into the root (`migrate docker DIR`).
    #[command(subcommand)]
    Migrate(migrate::MigrateCmd),
    /// Serve containerd's snapshots gRPC API on a unix socket (a containerd proxy
    /// snapshotter) until SIGTERM or SIGINT. See docs/serve.md.
    Serve(serve::ServeArgs),
    /// Pull an image from an OCI registry: HOST[:PORT]/REPO[:TAG|@DIGEST]. See docs/registry.md.
    Pull(registry::PullArgs),
    /// Push an image of the store to an OCI registry. See docs/registry.md.
    Push(registry::PushArgs),
}

/// What a command needs: where the root is, how to open it, how to print.
#[derive(Debug)]
pub struct Ctx {
    pub root: PathBuf,
    pub driver: Option<DriverKind>,
    /// The block driver's options from `--block-fs` / `--block-size-bytes`.
    pub block: Option<cairn_driver::BlockOptions>,
    pub lock_timeout: std::time::Duration,
    pub out: Output,
    /// Set when the command runs inside `cairn serve` (its control socket): that engine.
    pub engine: Option<EngineHandle>,
    /// Inside `cairn serve`: the `--password-stdin` line the client read from its own
    /// standard input and sent with the command (the server's stdin is not the user's).
    pub password: Option<String>,
}

impl Ctx {
    /// Open the root (recovering it), run `f`, and close the root again whatever `f` returned.
    pub fn with_engine<T>(
        &self,
        f: impl FnOnce(&EngineHandle) -> Result<T, CliError>,
    ) -> Result<T, CliError> {
        if let Some(engine) = &self.engine {
            return f(engine);
        }
        let options = EngineOptions {
            driver: self.driver,
            block: self.block,
            workers: 2,
            lock_timeout_ms: u64::try_from(self.lock_timeout.as_millis()).unwrap_or(u64::MAX),
            // In JSON mode stderr carries only the JSON error.
            lock_notice: if self.out.json {
                cairn_engine::LockNotice::Log
            } else {
                cairn_engine::LockNotice::Stderr
            },
            ..EngineOptions::default()
        };
        let (engine, report) = Engine::open(&self.root, options)?;
        tracing::debug!(root = %self.root.display(), ?report, "opened the root");
        let result = f(&engine);
        let closed = engine.close();
        let value = result?;
        closed?;
        Ok(value)
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CAIRN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// clap's error as one line: its message and tips, without the usage block.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
        }
    }
    parts.join("; ")
}

/// Run the command line of this process.
pub fn run() -> ExitCode {
    run_from(std::env::args_os())
}

/// Run a command line (the first item is the program name).
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
            }
            // The flag may come anywhere; the parse failed, so look for it by hand.
            let json = args
                .iter()
                .skip(1)
                .take_while(|a| *a != "--")
                .any(|a| a == "--json");
            let err = CliError::invalid(clap_message(&e));
            Output::new(json).error(&err);
            return err.kind.exit_code();
        }
    };
    init_tracing();
    let ctx = Ctx {
        block: cli.block_options(),
        root: cli.root,
        driver: cli.driver.map(Into::into),
        lock_timeout: cli.lock_timeout,
        out: Output::new(cli.json),
        engine: None,
        password: None,
    };
    let serving = matches!(cli.command, Command::Serve(_));
    // A root held by a live `cairn serve` runs the command there, without waiting for its lock.
    if !serving {
        if let Some(conn) = remote::connect(&ctx.root) {
            return through_server(&ctx, conn, &args[1..]);
        }
    }
    match dispatch(&ctx, cli.command) {
        Ok(code) => ExitCode::from(code),
        // The root is held: by `cairn serve`, if it started while this command waited.
        Err(e) if e.kind == ErrorKind::Locked && !serving => match remote::connect(&ctx.root) {
            Some(conn) => through_server(&ctx, conn, &args[1..]),
            None => {
                ctx.out.error(&e);
                e.kind.exit_code()
            }
        },
        Err(e) => {
            ctx.out.error(&e);
            e.kind.exit_code()
        }
    }
}

/// Run the command in the `cairn serve` that holds the root, saying so once on stderr.
fn through_server(
    ctx: &Ctx,
    conn: std::os::unix::net::UnixStream,
    args: &[std::ffi::OsString],
) -> ExitCode {
    ctx.out.warn(
        "served",
        &format!(
            "{} is held by cairn serve; running this command through it",
            ctx.root.display()
        ),
    );
    match remote::forward(&ctx.out, &ctx.root, conn, args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            ctx.out.error(&e);
            e.kind.exit_code()
        }
    }
}

/// Run one command; `Ok` carries the exit code (0, or 1 for an fsck that found problems).
fn dispatch(ctx: &Ctx, command: Command) -> Result<u8, CliError> {
    match command {
        Command::Snapshot(cmd) => snapshot::run(ctx, cmd).map(|()| 0),
        Command::Mount { key, target } => mount::mount(ctx, &key, &target).map(|()| 0),
        Command::Umount { target } => mount::umount(ctx, &target).map(|()| 0),
        Command::Mounted => mount::mounted(ctx).map(|()| 0),
        Command::Fsck { repair, verify } => maint::fsck(ctx, repair, verify),
        Command::Wal(cmd) => wal::run(ctx, cmd).map(|()| 0),
        Command::Cleanup => maint::cleanup(ctx).map(|()| 0),
        Command::Layer(cmd) => layer::run(ctx, cmd).map(|()| 0),
        Command::Image(cmd) => image::run(ctx, cmd).map(|()| 0),
        Command::Container(cmd) => container::run(ctx, cmd).map(|()| 0),
        Command::Verify { chain_id } => layer::verify(ctx, chain_id),
        Command::Serve(args) => serve::run(ctx, args).map(|()| 0),
        Command::Pull(args) => registry::pull(ctx, args).map(|()| 0),
        Command::Push(args) => registry::push(ctx, args).map(|()| 0),
        Command::Migrate(cmd) => migrate::run(ctx, cmd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
