//! `cairn serve`: containerd's snapshots gRPC API on a unix socket (crate `cairn-server`).

use super::{CliError, Ctx, ErrorKind};
use cairn_server::{ServeOptions, ServerError};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The unix socket to serve on (containerd's `[proxy_plugins.cairn] address`).
    #[arg(long, default_value = cairn_server::DEFAULT_ADDRESS, value_name = "PATH")]
    pub address: PathBuf,
    /// Engine calls queued or running at once; more wait for a slot (backpressure).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_in_flight: usize,
    /// Open client connections at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,
    /// After SIGTERM/SIGINT, how long to wait for requests in flight.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub drain_timeout_ms: u64,
}

pub fn run(ctx: &Ctx, args: ServeArgs) -> Result<(), CliError> {
    let mut options = ServeOptions::new(ctx.root.clone());
    options.driver = ctx.driver;
    options.block = ctx.block;
    options.address = args.address;
    options.max_in_flight = args.max_in_flight;
    options.max_connections = args.max_connections;
    options.drain_timeout_ms = args.drain_timeout_ms;
    let root = ctx.root.clone();
    let started = cairn_server::serve_with(options, futures_pending(), move |engine| {
        // The other cairn commands on this root run here, through ROOT/serve.ctl.
        match super::remote::start(&root, engine.clone()) {
            Ok(control) => Some(control),
            Err(e) => {
                tracing::warn!(error = %e, "no control socket: other cairn commands on this root will be refused");
                None
            }
        }
    });
    started.map_err(|e| match e {
        ServerError::Engine(e) => CliError::from(e),
        ServerError::AddressInUse { .. } => CliError::new(ErrorKind::Locked, e.to_string()),
        ServerError::NotASocket { .. } => CliError::invalid(e.to_string()),
        other => CliError::new(ErrorKind::Other, other.to_string()),
    })
}

/// Never completes: `cairn serve` stops on SIGTERM or SIGINT only.
fn futures_pending() -> impl std::future::Future<Output = ()> + Send + 'static {
    std::future::pending()
}
