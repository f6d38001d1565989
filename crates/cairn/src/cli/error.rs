//! The CLI's errors: one class per exit code, one line of text.

use cairn_driver::DriverError;
use cairn_engine::EngineError;
use cairn_state::StateError;
use std::process::ExitCode;

/// The error classes the CLI distinguishes, each with its own exit code (see README "CLI").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Anything else: I/O, a damaged root, a failed mount, a driver error. Exit 1.
    Other,
    /// A bad command line, key, label, filter, or a `--driver` that does not match the root.
    /// Exit 2 (as for clap's usage errors).
    InvalidArgument,
    /// The snapshot does not exist. Exit 3.
    NotFound,
    /// The key (or commit name) is taken. Exit 4.
    AlreadyExists,
    /// The snapshot is in the wrong state (has children, is not active, is busy). Exit 5.
    FailedPrecondition,
    /// Another process holds the root. Exit 6.
    Locked,
    /// The command needs root (mount, umount). Exit 7.
    PermissionDenied,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Other => "other",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::FailedPrecondition => "failed-precondition",
            ErrorKind::Locked => "locked",
            ErrorKind::PermissionDenied => "permission-denied",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::InvalidArgument => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::AlreadyExists => 4,
            ErrorKind::FailedPrecondition => 5,
            ErrorKind::Locked => 6,
            ErrorKind::PermissionDenied => 7,
        }
    }

    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

/// An error as the user sees it: a class and one line (no trailing newline, no `cairn:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CliError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: one_line(&message.into()),
        }
    }

    pub fn invalid(message: impl Into<String>) -> CliError {
        CliError::new(ErrorKind::InvalidArgument, message)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Newlines inside a message (from an OS error or a path) would break the one-line promise.
fn one_line(s: &str) -> String {
    s.trim().replace(['\n', '\r'], " ")
}

/// The error's message followed by each cause not already part of it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !message.contains(&part) {
            message.push_str(": ");
            message.push_str(&part);
        }
        source = s.source();
    }
    message
}

fn state_message(e: &StateError) -> String {
    match e {
        StateError::NotFound { key } => format!("snapshot {key:?}: not found"),
        StateError::AlreadyExists { key } => format!("snapshot {key:?}: already exists"),
        StateError::FailedPrecondition { key, reason } => {
            format!("snapshot {key:?}: failed precondition: {reason}")
        }
        other => other.to_string(),
    }
}

fn state_kind(e: &StateError) -> ErrorKind {
    match e {
        StateError::NotFound { .. } => ErrorKind::NotFound,
        StateError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        StateError::FailedPrecondition { .. } => ErrorKind::FailedPrecondition,
        StateError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
        // NotPending, and refusals a newer state machine may add.
        _ => ErrorKind::Other,
    }
}

fn io_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    }
}

impl From<DriverError> for CliError {
    fn from(e: DriverError) -> CliError {
        let kind = match &e {
            DriverError::Mount { source, .. } | DriverError::Unmount { source, .. } => {
                io_kind(source)
            }
            _ => ErrorKind::Other,
        };
        CliError::new(kind, chain(&e))
    }
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> CliError {
        match e {
            EngineError::State(s) => CliError::new(state_kind(&s), state_message(&s)),
            EngineError::Driver(d) => d.into(),
            EngineError::Locked { .. } => CliError::new(ErrorKind::Locked, e.to_string()),
            EngineError::DriverMismatch { .. } => {
                CliError::new(ErrorKind::InvalidArgument, e.to_string())
            }
            EngineError::Io { ref source, .. } => CliError::new(io_kind(source), chain(&e)),
            // Bad input: a tar or image that cannot be imported.
            EngineError::Layer(_) | EngineError::DiffIdMismatch { .. } => {
                CliError::new(ErrorKind::InvalidArgument, chain(&e))
            }
            other => CliError::new(ErrorKind::Other, chain(&other)),
        }
    }
}

impl From<cairn_image::ImageError> for CliError {
    fn from(e: cairn_image::ImageError) -> CliError {
        use cairn_image::ImageError as I;
        match e {
            I::Engine(e) => e.into(),
            I::Io { ref source, .. } => CliError::new(io_kind(source), chain(&e)),
            other => CliError::new(ErrorKind::InvalidArgument, chain(&other)),
        }
    }
}

impl From<cairn_migrate::MigrateError> for CliError {
    fn from(e: cairn_migrate::MigrateError) -> CliError {
        use cairn_migrate::MigrateError as M;
        match e {
            M::Engine(e) => e.into(),
            M::Io { ref source, .. } => CliError::new(io_kind(source), chain(&e)),
            M::Refused { .. } => CliError::new(ErrorKind::FailedPrecondition, chain(&e)),
            other => CliError::new(ErrorKind::InvalidArgument, chain(&other)),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::new(io_kind(&e), chain(&e))
    }
}
