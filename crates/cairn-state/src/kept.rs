//! What `PutImageConfig` checks of a kept config: pure functions of its bytes.

use sha2::{Digest as _, Sha256};

/// `sha256:<64 lowercase hex>` of `bytes`: the OCI digest of a blob.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in sum {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[derive(serde::Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(serde::Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The config's `rootfs.diff_ids`, base first, or why it has none.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<String>, String> {
    serde_json::from_slice::<Config>(config)
        .map(|c| c.rootfs.diff_ids)
        .map_err(|e| e.to_string())
}
