//! What loading an image means, whatever its format: names, the config's DiffIDs, and where
//! each layer's bytes are (with the blob digest to check when the format has one).

use super::error::ImageError;
use super::source::Source;
use cairn_layer::Digest;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedLayer {
    pub path: String,
    pub diff_id: Digest,
    /// The digest of the blob as stored (compressed or not), when the format records it.
    pub blob: Option<Digest>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub names: Vec<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<PlannedLayer>,
    /// The config's bytes as read (its sha256 is `config_digest`): kept with the image.
    pub config: Vec<u8>,
    /// The manifest's bytes (OCI sources; its sha256 is `manifest_digest`): kept with the
    /// image. `None` for a `docker save` archive, which has no manifest blob.
    pub manifest: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(
    path: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn digest(s: &str, what: &str) -> Result<Digest, ImageError> {
    s.parse().map_err(|_| ImageError::Format {
        path: what.to_owned(),
        reason: format!("{s:?} is not a sha256 digest"),
    })
}

/// Check a blob read whole against the digest that names it.
pub(crate) fn check(what: &str, bytes: &[u8], expected: &Digest) -> Result<(), ImageError> {
    let found = Digest::of(bytes);
    if &found != expected {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

/// The DiffIDs a config lists.
pub fn diff_ids(path: &str, config: &[u8]) -> Result<Vec<Digest>, ImageError> {
    let config: Config = json(path, config)?;
    config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| digest(d, path))
        .collect()
}

/// Read the plans of every image in `source`, in the order the format lists them.
pub fn plans(source: &Source) -> Result<Vec<Plan>, ImageError> {
    if source.exists("manifest.json") {
        super::docker::plans(source)
    } else if source.exists("index.json") {
        super::oci::plans(source)
    } else {
        Err(ImageError::Format {
            path: source.describe(),
            reason: "neither manifest.json (docker save) nor index.json (OCI) found".into(),
        })
    }
}
