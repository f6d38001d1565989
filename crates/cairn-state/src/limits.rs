//! Bounds on what a record may carry, checked before anything else, so nothing unbounded
//! reaches the journal: a command over a limit is refused with `InvalidArgument` and changes
//! nothing, instead of making the journal's append fail (which would stop the engine for every
//! client). docs/engine.md lists them.

use super::{Invalid, Labels, Op, Record, StateError};
use crate::types::Usage;

/// containerd's limit on a label's key and value together.
pub const MAX_LABEL_BYTES: usize = 4096;
/// Labels one snapshot may carry.
pub const MAX_LABELS: usize = 256;
/// The keys and values of one snapshot's labels together.
pub const MAX_LABELS_TOTAL_BYTES: usize = 64 << 10;
/// Keys and names (snapshots, images, containers) are path-like names.
pub const MAX_KEY_BYTES: usize = 4096;
/// Digests (DiffIDs, ChainIDs, manifest and config digests): `sha512:` and 128 hex digits fit.
pub const MAX_DIGEST_BYTES: usize = 256;
/// What a container's name may be: its init snapshot's key (`NAME-init`) must be a valid key.
pub const MAX_CONTAINER_NAME_BYTES: usize = MAX_KEY_BYTES - super::INIT_SUFFIX.len();
/// An image's kept config (`PutImageConfig`): Docker and containerd configs are a few KiB; a
/// long `history` stays far below this.
pub const MAX_KEPT_CONFIG_BYTES: usize = 512 << 10;
/// An image's kept manifest: a manifest names its config and layers only.
pub const MAX_KEPT_MANIFEST_BYTES: usize = 256 << 10;
/// An upper bound of one record's journal encoding. The limits above keep every record far
/// below it; the engine's WAL accepts records of this size (its default is 16 MiB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

fn invalid(reason: Invalid) -> StateError {
    StateError::InvalidArgument { reason }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A digest or other bounded field: at most `max` bytes.
pub fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), StateError> {
    if value.len() > max {
        return Err(invalid(Invalid::TooLong {
            field,
            value: short(value),
            len: value.len(),
            max,
        }));
    }
    Ok(())
}

/// A key or name: at most `max` bytes.
fn key_len(value: &str, max: usize) -> Result<(), StateError> {
    if value.len() > max {
        return Err(invalid(Invalid::KeyTooLong {
            key: short(value),
            max,
        }));
    }
    Ok(())
}

/// A key or name being created: not empty, at most [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() {
        return Err(invalid(Invalid::EmptyKey));
    }
    key_len(key, MAX_KEY_BYTES)
}

/// Whether `key` has the form of a ChainID (`sha256:` and 64 lowercase hex digits): the layer
/// store names its layers' snapshots so, and no other snapshot may take such a key.
pub fn is_layer_key(key: &str) -> bool {
    key.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A snapshot key (or commit name, or container name) a user creates: a valid key outside the
/// layer store's key space.
pub fn validate_snapshot_key(key: &str) -> Result<(), StateError> {
    validate_key(key)?;
    if is_layer_key(key) {
        return Err(invalid(Invalid::ReservedKey {
            key: key.to_owned(),
        }));
    }
    Ok(())
}

pub fn validate_labels(labels: &Labels) -> Result<(), StateError> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(Invalid::TooManyLabels {
            count: labels.len(),
            max: MAX_LABELS,
        }));
    }
    let mut total = 0usize;
    for (k, v) in labels {
        let bytes = k.len() + v.len();
        if bytes > MAX_LABEL_BYTES {
            return Err(invalid(Invalid::LabelTooLong {
                key: short(k),
                max: MAX_LABEL_BYTES,
            }));
        }
        total += bytes;
    }
    if total > MAX_LABELS_TOTAL_BYTES {
        return Err(invalid(Invalid::LabelsTooLarge {
            bytes: total,
            max: MAX_LABELS_TOTAL_BYTES,
        }));
    }
    Ok(())
}

fn blob_len(field: &'static str, value: &[u8], max: usize) -> Result<(), StateError> {
    if value.len() > max {
        return Err(invalid(Invalid::KeptTooLarge {
            field,
            len: value.len(),
            max,
        }));
    }
    Ok(())
}

/// The fields `PutImage` and `PutImageKept` share.
fn image_fields(
    name: &str,
    top: &str,
    manifest_digest: &str,
    config_digest: &str,
) -> Result<(), StateError> {
    key_len(name, MAX_KEY_BYTES)?;
    check_len("top", top, MAX_DIGEST_BYTES)?;
    check_len("manifest_digest", manifest_digest, MAX_DIGEST_BYTES)?;
    check_len("config_digest", config_digest, MAX_DIGEST_BYTES)
}

/// The kept bytes `PutImageConfig` and `PutImageKept` share.
fn kept_fields(config: &[u8], manifest: &Option<Vec<u8>>) -> Result<(), StateError> {
    blob_len("config", config, MAX_KEPT_CONFIG_BYTES)?;
    match manifest {
        Some(m) => blob_len("manifest", m, MAX_KEPT_MANIFEST_BYTES),
        None => Ok(()),
    }
}

fn opt_key(value: &Option<String>, max: usize) -> Result<(), StateError> {
    match value {
        Some(v) => key_len(v, max),
        None => Ok(()),
    }
}

fn opt(field: &'static str, value: &Option<String>, max: usize) -> Result<(), StateError> {
    match value {
        Some(v) => check_len(field, v, max),
        None => Ok(()),
    }
}

/// Every field of `op` within its bound. Fields that name something to create are checked
/// fully by the op's own check; here only lengths, so that lookups of absurd keys are refused
/// the same way.
pub fn check_op(op: &Op) -> Result<(), StateError> {
    let key = MAX_KEY_BYTES;
    let digest = MAX_DIGEST_BYTES;
    match op {
        Op::BeginCreate {
            key: k,
            parent,
            labels,
            ..
        } => {
            key_len(k, key)?;
            opt_key(parent, key)?;
            validate_labels(labels)
        }
        Op::BeginCommit {
            key: k,
            name,
            labels,
            ..
        } => {
            key_len(k, key)?;
            key_len(name, key)?;
            validate_labels(labels)
        }
        Op::Complete { .. } | Op::Abort { .. } | Op::CollectLayers => Ok(()),
        Op::Remove { key: k } => key_len(k, key),
        Op::Update { key: k, labels, .. } => {
            key_len(k, key)?;
            validate_labels(labels)
        }
        Op::BeginImport { parent, .. } => opt("parent", parent, digest),
        Op::CompleteImport {
            diff_id, chain_id, ..
        } => {
            check_len("diff_id", diff_id, digest)?;
            check_len("chain_id", chain_id, digest)
        }
        Op::BeginDetachedImport { .. } => Ok(()),
        Op::CompleteDetachedImport {
            parent,
            diff_id,
            chain_id,
            ..
        } => {
            opt("parent", parent, digest)?;
            check_len("diff_id", diff_id, digest)?;
            check_len("chain_id", chain_id, digest)
        }
        Op::RemoveLayer { chain_id } => check_len("chain_id", chain_id, digest),
        Op::PutImage {
            name,
            top,
            manifest_digest,
            config_digest,
            ..
        } => image_fields(name, top, manifest_digest, config_digest),
        Op::RemoveImage { name } => key_len(name, key),
        Op::PutImageConfig {
            name,
            config,
            manifest,
        } => {
            key_len(name, key)?;
            kept_fields(config, manifest)
        }
        Op::PutImageKept {
            name,
            top,
            manifest_digest,
            config_digest,
            config,
            manifest,
            ..
        } => {
            image_fields(name, top, manifest_digest, config_digest)?;
            kept_fields(config, manifest)
        }
        Op::BeginContainer { name, layer, .. } => {
            key_len(name, MAX_CONTAINER_NAME_BYTES)?;
            check_len("layer", layer, digest)
        }
        Op::RemoveContainer { name } => key_len(name, key),
        Op::Mount { key: k, target } => {
            key_len(k, key)?;
            check_len("target", target, super::mounts::MAX_TARGET_BYTES)
        }
        Op::Unmount { target } | Op::MountGone { target } => {
            check_len("target", target, super::mounts::MAX_TARGET_BYTES)
        }
        Op::CompleteImportHeld {
            diff_id,
            chain_id,
            hold,
            ..
        } => {
            check_len("diff_id", diff_id, digest)?;
            check_len("chain_id", chain_id, digest)?;
            key_len(hold, key)
        }
    }
}

// postcard's encoding, bounded from above: a varint of a u64 takes at most 10 bytes, an enum
// tag (a u32 varint) at most 5, a string its length after a varint length.
const VARINT: usize = 10;
const TAG: usize = 5;

fn string(s: &str) -> usize {
    VARINT + s.len()
}

fn opt_string(s: &Option<String>) -> usize {
    1 + s.as_deref().map_or(0, string)
}

fn labels(l: &Labels) -> usize {
    VARINT + l.iter().map(|(k, v)| string(k) + string(v)).sum::<usize>()
}

/// A kept config (bytes) and manifest (option of bytes).
fn kept(config: &[u8], manifest: &Option<Vec<u8>>) -> usize {
    VARINT + config.len() + 1 + manifest.as_ref().map_or(0, |m| VARINT + m.len())
}

fn usage(u: &Option<Usage>) -> usize {
    1 + u.map_or(0, |_| 2 * VARINT)
}

/// An upper bound of the postcard encoding of `record` (checked against postcard in the
/// tests): what the record-size limit is checked on, without encoding.
pub fn encoded_bytes_bound(record: &Record) -> usize {
    let body = match &record.op {
        Op::BeginCreate {
            key,
            parent,
            labels: l,
            ..
        } => string(key) + opt_string(parent) + TAG + VARINT + labels(l) + VARINT,
        Op::BeginCommit {
            key,
            name,
            labels: l,
            ..
        } => string(key) + string(name) + labels(l) + VARINT,
        Op::Complete { usage: u, .. } => VARINT + usage(u),
        Op::Abort { .. } | Op::CollectLayers => VARINT,
        Op::Remove { key } => string(key),
        Op::Update { key, labels: l, .. } => string(key) + labels(l) + VARINT,
        Op::BeginImport { parent, .. } => VARINT + opt_string(parent) + 1 + VARINT,
        Op::CompleteImport {
            diff_id, chain_id, ..
        } => VARINT + string(diff_id) + string(chain_id) + VARINT + 2 * VARINT,
        Op::BeginDetachedImport { .. } => VARINT + 1 + VARINT,
        Op::CompleteDetachedImport {
            parent,
            diff_id,
            chain_id,
            ..
        } => VARINT + opt_string(parent) + string(diff_id) + string(chain_id) + VARINT + 2 * VARINT,
        Op::RemoveLayer { chain_id } => string(chain_id),
        Op::PutImage {
            name,
            top,
            manifest_digest,
            config_digest,
            ..
        } => string(name) + string(top) + string(manifest_digest) + string(config_digest) + VARINT,
        Op::RemoveImage { name } | Op::RemoveContainer { name } => string(name),
        Op::PutImageConfig {
            name,
            config,
            manifest,
        } => string(name) + kept(config, manifest),
        Op::PutImageKept {
            name,
            top,
            manifest_digest,
            config_digest,
            config,
            manifest,
            ..
        } => {
            string(name)
                + string(top)
                + string(manifest_digest)
                + string(config_digest)
                + VARINT
                + kept(config, manifest)
        }
        Op::BeginContainer { name, layer, .. } => string(name) + string(layer) + 2 * VARINT,
        Op::Mount { key, target } => string(key) + string(target),
        Op::Unmount { target } | Op::MountGone { target } => string(target),
        Op::CompleteImportHeld {
            diff_id,
            chain_id,
            hold,
            ..
        } => {
            VARINT
                + string(diff_id)
                + string(chain_id)
                + VARINT
                + 2 * VARINT
                + string(hold)
                + VARINT
        }
    };
    VARINT + TAG + body
}

/// The record as a whole within [`MAX_RECORD_BYTES`].
pub fn check_record(record: &Record) -> Result<(), StateError> {
    check_op(&record.op)?;
    let bytes = encoded_bytes_bound(record);
    if bytes > MAX_RECORD_BYTES {
        return Err(invalid(Invalid::RecordTooLarge {
            bytes,
            max: MAX_RECORD_BYTES,
        }));
    }
    Ok(())
}
