//! `cairn serve`: containerd's snapshots gRPC API (`containerd.services.snapshots.v1.Snapshots`,
//! the API of containerd's proxy snapshotter plugins) over one cairn root, on a unix socket.
//! See docs/serve.md.
//!
//! ```text
//! containerd ──gRPC/unix──► tonic handler ──permit──► EngineHandle::submit ──► engine thread ──oneshot──► handler
//! ```

mod bridge;
pub mod client;
mod convert;
mod error;
mod limit;
mod snapshots;
mod socket;

pub use bridge::Bridge;
pub use error::{code_of, status_of, ServerError};
pub use snapshots::{SnapshotService, SNAPSHOT_REF_LABEL};
pub use socket::SOCKET_MODE;

use cairn_engine::{Engine, EngineOptions};
use cairn_state::types::DriverKind;
use containerd_snapshots::api::snapshots::v1::snapshots_server::SnapshotsServer;
use containerd_snapshots::tonic::transport::Server;
use std::path::PathBuf;
use std::time::Duration;

/// Where containerd's proxy plugin configuration points by default.
pub const DEFAULT_ADDRESS: &str = "/run/cairn/cairn.sock";

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub root: PathBuf,
    pub driver: Option<DriverKind>,
    /// The block driver's options for a new root (see `EngineOptions::block`).
    pub block: Option<cairn_driver::BlockOptions>,
    pub address: PathBuf,
    /// Engine calls queued or running at once, at most; more wait (asynchronously) for a slot.
    pub max_in_flight: usize,
    /// Open client connections, at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// Concurrent requests on one connection, at most (HTTP/2 streams).
    pub max_streams_per_connection: u32,
    /// After SIGTERM/SIGINT, how long in-flight requests may take before the server stops
    /// waiting for them (the engine still answers every command it took before it closes).
    pub drain_timeout_ms: u64,
}

impl ServeOptions {
    pub fn new(root: PathBuf) -> ServeOptions {
        ServeOptions {
            root,
            driver: None,
            block: None,
            address: PathBuf::from(DEFAULT_ADDRESS),
            max_in_flight: 256,
            max_connections: 1024,
            max_streams_per_connection: 128,
            drain_timeout_ms: 10_000,
        }
    }
}

/// Serve until SIGTERM or SIGINT, then drain, checkpoint, remove the socket and return.
pub fn serve(options: ServeOptions) -> Result<(), ServerError> {
    serve_until(options, futures::future::pending())
}

/// [`serve`], also stopping (in the same way) when `stop` completes: for embedders and benches.
pub fn serve_until(
    options: ServeOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with(options, stop, |_| ())
}

/// [`serve_until`], calling `on_open` with the engine once the root is open (before the socket
/// appears); what it returns is dropped when the server has stopped serving, before the engine
/// closes. The CLI starts its control socket (other `cairn` commands on the root) this way.
pub fn serve_with<G: Send + 'static>(
    options: ServeOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    on_open: impl FnOnce(&cairn_engine::EngineHandle) -> G,
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(options.max_in_flight.max(1) + 8)
        .thread_name("cairn-serve")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(run(options, stop, on_open))
}

async fn run<G: Send + 'static>(
    options: ServeOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    on_open: impl FnOnce(&cairn_engine::EngineHandle) -> G,
) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before the socket appears: a SIGTERM from then on is a clean stop.
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Runtime)?;

    let engine_options = EngineOptions {
        driver: options.driver,
        block: options.block,
        queue_capacity: options.max_in_flight.max(1) + 8,
        ..EngineOptions::default()
    };
    let root = options.root.clone();
    let opened = tokio::task::spawn_blocking(move || Engine::open(&root, engine_options))
        .await
        .map_err(|e| ServerError::Runtime(std::io::Error::other(e)))?;
    let (engine, report) = opened?;
    tracing::info!(root = %options.root.display(), ?report, "opened the root");
    let guard = on_open(&engine);

    let bound = match socket::bind(&options.address) {
        Ok(b) => b,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || engine.close()).await;
            return Err(e);
        }
    };
    let result = serve_on(&options, &bound, engine, guard, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
            () = stop => tracing::info!("asked to stop: draining"),
        }
    })
    .await;
    bound.remove();
    tracing::info!(address = %options.address.display(), "stopped");
    result
}

async fn serve_on<G: Send + 'static>(
    options: &ServeOptions,
    bound: &socket::BoundSocket,
    engine: cairn_engine::EngineHandle,
    guard: G,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let std_listener = bound
        .listener
        .try_clone()
        .map_err(ServerError::io("clone listener", &options.address))?;
    std_listener
        .set_nonblocking(true)
        .map_err(ServerError::io("set nonblocking", &options.address))?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .map_err(ServerError::io("listen", &options.address))?;
    let bridge = Bridge::new(engine.clone(), options.max_in_flight);
    let service = SnapshotService::new(bridge.clone());

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        stop.await;
        let _ = stopping_tx.send(());
    };
    tracing::info!(
        address = %options.address.display(),
        max_in_flight = options.max_in_flight,
        "serving containerd.services.snapshots.v1.Snapshots"
    );
    let server = Server::builder()
        .max_concurrent_streams(Some(options.max_streams_per_connection))
        .add_service(SnapshotsServer::new(service))
        .serve_with_incoming_shutdown(limit::incoming(listener, options.max_connections), shutdown);
    let drain = Duration::from_millis(options.drain_timeout_ms);
    let served = tokio::select! {
        r = server => r.map_err(ServerError::from),
        () = async move {
            // Only once the stop began: then give the in-flight requests `drain` to finish.
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(drain).await;
            } else {
                futures::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(drain_timeout_ms = options.drain_timeout_ms, "requests still in flight after the drain timeout; stopping anyway");
            Ok(())
        }
    };
    bridge.close();
    drop(guard);
    // The engine finishes what it took, checkpoints and lets go of the root.
    let closed = tokio::task::spawn_blocking(move || engine.close())
        .await
        .map_err(|e| ServerError::Runtime(std::io::Error::other(e)))?;
    served?;
    closed?;
    Ok(())
}
