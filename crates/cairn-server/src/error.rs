//! The server's errors, and how the engine's errors become the gRPC codes containerd's proxy
//! client turns back into its errdefs classes.

use cairn_engine::EngineError;
use cairn_state::StateError;
use containerd_snapshots::tonic::{Code, Status};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{address}: a server is already listening there")]
    AddressInUse { address: PathBuf },
    #[error("{address}: exists and is not a socket; refusing to replace it")]
    NotASocket { address: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open the root: {0}")]
    Engine(#[from] EngineError),
    #[error("start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] containerd_snapshots::tonic::transport::Error),
}

impl ServerError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ServerError {
        let path = path.into();
        move |source| ServerError::Io { op, path, source }
    }
}

/// The gRPC code for an engine error: the classes containerd's `errdefs.FromGRPC` knows.
pub fn code_of(e: &EngineError) -> Code {
    match e {
        EngineError::State(s) => match s {
            StateError::NotFound { .. } => Code::NotFound,
            StateError::AlreadyExists { .. } => Code::AlreadyExists,
            StateError::FailedPrecondition { .. } => Code::FailedPrecondition,
            StateError::InvalidArgument { .. } => Code::InvalidArgument,
            // A journal that does not follow from the state, or a class added later.
            _ => Code::Internal,
        },
        EngineError::DiffIdMismatch { .. } => Code::InvalidArgument,
        EngineError::ShutDown | EngineError::Failed { .. } | EngineError::Locked { .. } => {
            Code::Unavailable
        }
        _ => Code::Internal,
    }
}

pub fn status_of(e: &EngineError) -> Status {
    Status::new(code_of(e), e.to_string())
}
