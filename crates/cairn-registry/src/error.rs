//! The one error type of registry pulls and pushes: every variant names the reference, blob or
//! URL it is about.

use cairn_engine::EngineError;
use cairn_image::ImageError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("{reference:?} is not a registry reference: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{host}: plain HTTP is only used for loopback registries or with --insecure")]
    Insecure { host: String },
    #[error("{reference}: unauthorized (401): {detail}")]
    Unauthorized { reference: String, detail: String },
    #[error("{reference}: access denied (403)")]
    Denied { reference: String },
    #[error("{reference}: {what} not found (404)")]
    NotFound { reference: String, what: String },
    #[error("{reference}: {url}: HTTP {status}")]
    Status {
        reference: String,
        url: String,
        status: u16,
    },
    #[error("{reference}: {url}: {source}")]
    Transport {
        reference: String,
        url: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("{reference}: {what}: {reason}")]
    Manifest {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("{reference}: blob {digest}: digest is {found}, the manifest says {digest}")]
    DigestMismatch {
        reference: String,
        digest: String,
        found: String,
    },
    /// The config (or manifest) kept with an image no longer has the digest the image records.
    #[error("image {image}: its kept {what} has digest {found}, the image records {expected}")]
    KeptDigestMismatch {
        image: String,
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("{reference}: blob {digest}: the registry sent {got_bytes} of {size_bytes} bytes")]
    Truncated {
        reference: String,
        digest: String,
        got_bytes: u64,
        size_bytes: u64,
    },
    #[error("{reference}: blob {digest}: over its manifest size of {size_bytes} bytes")]
    TooLong {
        reference: String,
        digest: String,
        size_bytes: u64,
    },
    #[error("{reference}: no manifest in the index matches platform {platform}")]
    NoPlatform { reference: String, platform: String },
    #[error("image {name} is not in the store")]
    NoImage { name: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("credential helper docker-credential-{helper} for {host}: {reason}")]
    CredentialHelper {
        helper: String,
        host: String,
        reason: String,
    },
    #[error("the pull was cancelled")]
    Cancelled,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RegistryError {
    pub(crate) fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| RegistryError::Io { op, path, source }
    }

    /// Whether the store's own error says "not found" / "invalid" (for the CLI's exit codes).
    pub fn engine(&self) -> Option<&EngineError> {
        match self {
            RegistryError::Engine(e) => Some(e),
            RegistryError::Image(ImageError::Engine(e)) => Some(e),
            _ => None,
        }
    }
}
