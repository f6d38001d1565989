//! The one error type of image loading.

use cairn_engine::EngineError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an image: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not in the image")]
    Missing { path: String },
    #[error("{what}: digest is {found}, the image says {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{what}: {count} layers, at most {max} are allowed")]
    TooManyLayers {
        what: String,
        count: usize,
        max: usize,
    },
    #[error("layer {index} of {image}: unsupported media type {media_type}")]
    MediaType {
        image: String,
        index: usize,
        media_type: String,
    },
    #[error("the image's config lists {diff_ids} layers but its manifest {layers}")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
}
