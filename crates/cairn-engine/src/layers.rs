//! The layer store's heavy work, run on worker threads: importing a tar into a staged
//! snapshot, exporting it back byte for byte, re-hashing it.

use super::api::{ImageInfo, LayerInfo, Verified};
use super::error::EngineError;
use cairn_driver::Driver;
use cairn_layer::{self as layer, Digest, ExtractOptions};
use cairn_state::types::{SnapshotId, TxId, Usage};
use cairn_state::State;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// The export metadata of a layer, beside its tree in the snapshot's directory, so it is
/// staged, installed and removed together with the tree.
pub const LAYER_META: &str = "layer.meta";

/// Where a layer's metadata lives once installed.
pub fn meta_path(driver: &dyn Driver, id: SnapshotId) -> PathBuf {
    let tree = driver.tree(id);
    tree.parent()
        .map_or(tree.clone(), |dir| dir.join(LAYER_META))
}

fn staged_meta_path(driver: &dyn Driver, txid: TxId) -> PathBuf {
    let tree = driver.staged_tree(txid);
    tree.parent()
        .map_or(tree.clone(), |dir| dir.join(LAYER_META))
}

/// A layer import waiting for its staging effect.
#[derive(Debug)]
pub(crate) struct ImportJob {
    pub input: super::api::Input,
    pub expected: Option<Digest>,
    pub parent: Option<(SnapshotId, Digest)>,
    /// An image to record on the layer in its completion record.
    pub hold: Option<String>,
}

/// What a finished import reports to the engine thread.
#[derive(Debug)]
pub(crate) struct LayerDone {
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub size_bytes: u64,
    pub usage: Usage,
    pub hold: Option<String>,
}

/// Stage a snapshot on the parent layer, extract the tar into it, and make the tree and its
/// metadata durable. Runs on a worker; the engine journals the completion afterwards.
pub(crate) fn import(
    driver: &dyn Driver,
    txid: TxId,
    job: ImportJob,
) -> Result<LayerDone, EngineError> {
    driver.stage(
        txid,
        cairn_state::types::Kind::Active,
        job.parent.map(|(id, _)| id),
    )?;
    driver.attach_staged(txid)?;
    let tree = driver.staged_tree(txid);
    let meta_path = staged_meta_path(driver, txid);
    let file =
        File::create(&meta_path).map_err(EngineError::io("create layer metadata", &meta_path))?;
    let mut meta = BufWriter::new(file);
    let options = ExtractOptions {
        whiteouts: driver.whiteout_style(),
        same_owner: nix::unistd::geteuid().is_root(),
    };
    let mut input = job.input.0;
    let extracted = layer::extract(&mut input, &tree, &options, &mut meta)?;
    // The input is read to its end before anything is journaled, so a source that checks
    // itself at its end (a registry blob's digest, stream.rs in cairn-registry) can still
    // refuse the import.
    std::io::copy(&mut input, &mut std::io::sink())
        .map_err(EngineError::io("read layer input", &tree))?;
    if let Some(expected) = job.expected {
        if extracted.diff_id != expected {
            return Err(EngineError::DiffIdMismatch {
                expected: expected.to_string(),
                found: extracted.diff_id.to_string(),
            });
        }
    }
    let file = meta
        .into_inner()
        .map_err(|e| EngineError::io("write layer metadata", &meta_path)(e.into_error()))?;
    // Invariant: the metadata export needs is durable before the completion is journaled.
    cairn_driver::fsync_open(&file, &meta_path, false)?;
    fail::fail_point!("engine::import::after_meta_sync");
    // Invariant: the layer's content is durable before its completion is journaled: an
    // acknowledged import never comes back with empty files after a power cut.
    driver.sync_staged(txid)?;
    fail::fail_point!("engine::import::after_tree_sync");
    let chain_id = layer::chain_id(job.parent.as_ref().map(|(_, d)| d), &extracted.diff_id);
    Ok(LayerDone {
        diff_id: extracted.diff_id,
        chain_id,
        size_bytes: extracted.size_bytes,
        usage: Usage {
            size_bytes: extracted.size_bytes,
            inodes: extracted.entries,
        },
        hold: job.hold,
    })
}

/// Write the original tar of an installed layer; returns its DiffID.
pub(crate) fn export(
    driver: &dyn Driver,
    id: SnapshotId,
    diff_id: &Digest,
    out: &mut dyn Write,
) -> Result<Digest, EngineError> {
    let path = meta_path(driver, id);
    let meta = File::open(&path).map_err(EngineError::io("open layer metadata", &path))?;
    let meta = std::io::BufReader::new(meta);
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let tree = driver.open_tree(id)?;
    let digest = layer::export(meta, tree.path(), &mut out, diff_id)?;
    out.flush()
        .map_err(EngineError::io("write export", "output"))?;
    Ok(digest)
}

/// Write snapshot `id`'s changes against `parent` (its nearest committed ancestor) as a
/// layer tar; returns its DiffID.
pub(crate) fn diff(
    driver: &dyn Driver,
    id: SnapshotId,
    parent: Option<SnapshotId>,
    out: Box<dyn Write + Send>,
) -> Result<Digest, EngineError> {
    let tree = driver.open_tree(id)?;
    let lower = parent.map(|p| driver.open_tree(p)).transpose()?;
    let source = match driver.whiteout_style() {
        layer::WhiteoutStyle::Delete => layer::DiffSource::Trees {
            lower: lower.as_ref().map(|l| l.path()),
            upper: tree.path(),
        },
        layer::WhiteoutStyle::OverlayCharDevice => layer::DiffSource::OverlayUpper(tree.path()),
    };
    Ok(layer::diff(source, out)?.diff_id)
}

/// Re-export a layer into nothing, checking its DiffID.
pub(crate) fn verify(
    driver: &dyn Driver,
    chain_id: &str,
    id: SnapshotId,
    diff_id: &Digest,
) -> Verified {
    let problem = export(driver, id, diff_id, &mut std::io::sink())
        .err()
        .map(|e| e.to_string());
    Verified {
        chain_id: chain_id.to_owned(),
        problem,
    }
}

pub(crate) fn parse_digest(s: &str) -> Result<Digest, EngineError> {
    s.parse::<Digest>().map_err(|_| {
        cairn_state::StateError::InvalidArgument {
            reason: cairn_state::Invalid::BadDigest {
                digest: s.to_owned(),
            },
        }
        .into()
    })
}

pub(crate) fn layer_info(state: &State, chain_id: &str) -> Result<LayerInfo, EngineError> {
    let layer = state.layer(chain_id)?;
    let snap = state.get(chain_id)?;
    Ok(LayerInfo {
        chain_id: chain_id.to_owned(),
        diff_id: layer.diff_id.clone(),
        parent: layer.parent.clone(),
        size_bytes: layer.size_bytes,
        refcount: layer.refcount(),
        pinned: layer.pinned,
        children: layer.children,
        holders: layer.holders,
        snapshot_id: snap.id,
    })
}

pub(crate) fn image_infos(state: &State) -> Result<Vec<ImageInfo>, EngineError> {
    state
        .images
        .iter()
        .map(|(name, image)| {
            let mut layers = state.layer_chain(&image.top)?;
            layers.reverse();
            Ok(ImageInfo {
                name: name.clone(),
                top: image.top.clone(),
                layers,
                manifest_digest: image.manifest_digest.clone(),
                config_digest: image.config_digest.clone(),
                created_ns: image.created_ns,
            })
        })
        .collect()
}

/// Docker's init layer: empty placeholders the runtime bind-mounts over. Created only where
/// absent, never through a symlink (an image's `etc` may be one), so nothing outside the tree
/// is touched.
pub(crate) fn write_init_files(tree: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let etc = tree.join("etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o755).create(&etc)?;
        }
        Err(e) => return Err(e),
    }
    for name in ["hostname", "hosts", "resolv.conf"] {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(etc.join(name));
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
