//! `pull`: resolve, fetch the config, skip layers the store has (known by ChainID before any
//! byte is fetched), fetch the rest several at once into the spool, and import each, in
//! order, as `image load` does; the image is recorded under its name when every layer is in.
//!
//! While a pull runs, an image named `NAME#partial` holds the layers it has imported, so a
//! crash or a kill leaves whole layers that the next pull of the same image finds (recovery
//! collects layers nothing holds). A pull that fails with an error removes that hold: the
//! store is as before it, and only the spool keeps the bytes for a retry.

use super::client::{read_small, Body, Client, ClientOptions};
use super::error::RegistryError;
use super::manifest::{self, parse_digest, Platform, DOCKER_CONFIG, LAYER_TYPES, OCI_CONFIG};
use super::reference::Reference;
use super::spool::{Fetched, Spool};
use super::stream::{End, Stream};
use cairn_engine::{EngineHandle, ImportOptions};
use cairn_layer::Digest;
use cairn_state::MAX_LAYER_DEPTH;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    pub client: ClientOptions,
    /// The platform an index is resolved for (the host's when `None`).
    pub platform: Option<Platform>,
    /// Blobs fetched at once; the spool holds at most `jobs + 1` of this pull's blobs.
    pub jobs: usize,
    /// The root of the store (the spool is `ROOT/spool`).
    pub root: PathBuf,
}

/// What a pull reports as it goes, for progress bars (called from the fetching threads).
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// Layer `index` of `count`, and what the pull will do with it.
    Layer {
        index: usize,
        count: usize,
        digest: &'a str,
        size_bytes: u64,
        present: bool,
    },
    /// `bytes` more of layer `index` are in the spool.
    Bytes { index: usize, bytes: u64 },
    /// Layer `index` is in the store.
    Imported { index: usize },
}

/// One image pulled.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pulled {
    pub reference: String,
    /// The name the image is recorded under.
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub top: String,
    /// ChainIDs, base first.
    pub layers: Vec<String>,
    /// Layers that were in the store before (not fetched).
    pub present: usize,
    /// Bytes received from the registry (manifests and config excluded).
    pub fetched_bytes: u64,
    /// Bytes an earlier, interrupted pull had spooled and this one used.
    pub resumed_bytes: u64,
}

/// The name of the image that holds a pull's layers until it is recorded.
pub fn hold_name(name: &str) -> String {
    format!("{name}#partial")
}

struct Planned {
    digest: Digest,
    size_bytes: u64,
    diff_id: Digest,
    chain_id: String,
}

fn fetch_config(
    client: &Client,
    r: &Reference,
    desc: &manifest::Descriptor,
) -> Result<(Digest, Vec<u8>), RegistryError> {
    let digest = parse_digest(client.reference(), &desc.digest)?;
    if !desc.media_type.is_empty()
        && desc.media_type != OCI_CONFIG
        && desc.media_type != DOCKER_CONFIG
    {
        return Err(RegistryError::Manifest {
            reference: client.reference().to_owned(),
            what: "config".into(),
            reason: format!("unsupported media type {}", desc.media_type),
        });
    }
    let path = format!("/v2/{}/blobs/{digest}", r.repo);
    let resp = client.send("GET", &path, &[], Body::Empty, &format!("config {digest}"))?;
    let bytes = read_small(resp, &path)?;
    let found = Digest::of(&bytes);
    if found != digest {
        return Err(RegistryError::DigestMismatch {
            reference: client.reference().to_owned(),
            digest: digest.to_string(),
            found: found.to_string(),
        });
    }
    Ok((digest, bytes))
}

/// Pull `reference` into the store.
pub fn pull(
    engine: &EngineHandle,
    reference: &str,
    options: &PullOptions,
    progress: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Pulled, RegistryError> {
    let r = Reference::parse(reference)?;
    let client = Client::new(&r, &options.client);
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let resolved = manifest::resolve(&client, &r, &platform)?;
    let (config_digest, config) = fetch_config(&client, &r, &resolved.manifest.config)?;
    let diff_ids = cairn_image::diff_ids(&format!("config {config_digest}"), &config)?;
    let layers = &resolved.manifest.layers;
    if diff_ids.len() != layers.len() {
        return Err(cairn_image::ImageError::LayerCount {
            diff_ids: diff_ids.len(),
            layers: layers.len(),
        }
        .into());
    }
    if layers.is_empty() || layers.len() > MAX_LAYER_DEPTH {
        return Err(RegistryError::Manifest {
            reference: client.reference().to_owned(),
            what: format!("manifest {}", resolved.digest),
            reason: format!(
                "{} layers (1 to {MAX_LAYER_DEPTH} are allowed)",
                layers.len()
            ),
        });
    }
    let mut planned = Vec::with_capacity(layers.len());
    let mut parent: Option<Digest> = None;
    for (index, (desc, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        if !LAYER_TYPES.contains(&desc.media_type.as_str()) {
            return Err(cairn_image::ImageError::MediaType {
                image: client.reference().to_owned(),
                index,
                media_type: desc.media_type.clone(),
            }
            .into());
        }
        let chain = cairn_layer::chain_id(parent.as_ref(), diff_id);
        planned.push(Planned {
            digest: parse_digest(client.reference(), &desc.digest)?,
            size_bytes: desc.size,
            diff_id: *diff_id,
            chain_id: chain.to_string(),
        });
        parent = Some(chain);
    }

    // Layers the store has, from the bottom: a present ChainID implies its whole chain.
    let have: BTreeSet<String> = engine.layers()?.into_iter().map(|l| l.chain_id).collect();
    let present = planned
        .iter()
        .rposition(|p| have.contains(&p.chain_id))
        .map_or(0, |i| i + 1);
    let count = planned.len();
    for (index, p) in planned.iter().enumerate() {
        progress(Event::Layer {
            index,
            count,
            digest: &p.digest.to_string(),
            size_bytes: p.size_bytes,
            present: index < present,
        });
    }

    let name = r.to_string();
    let hold = hold_name(&name);
    let spool = Spool::open(&options.root)?;
    spool.retain(&planned[present..].iter().map(|p| p.digest).collect())?;

    let totals = (AtomicU64::new(0), AtomicU64::new(0));
    let result = fetch_and_import(
        engine, &client, &r, &spool, &planned, present, options, &hold, &totals, progress,
    );
    let has_hold = |images: Vec<cairn_engine::ImageInfo>| images.iter().any(|i| i.name == hold);
    if let Err(e) = result {
        // The store goes back to what it was: the layers this pull imported go with the
        // hold (those other images hold stay). The spool keeps its bytes for a retry.
        if engine.images().map(has_hold).unwrap_or(false) {
            if let Err(e2) = engine.remove_image(&hold) {
                tracing::warn!(error = %e2, "could not remove {hold}");
            }
        }
        return Err(e);
    }
    let top = planned[count - 1].chain_id.clone();
    // The image with its config and manifest kept, in one record: no crash leaves it listed
    // without them (push re-sends them, docs/registry.md).
    engine.put_image_kept(
        &name,
        &top,
        &resolved.digest.to_string(),
        &config_digest.to_string(),
        &config,
        Some(&resolved.bytes),
    )?;
    if has_hold(engine.images()?) {
        engine.remove_image(&hold)?;
    }
    Ok(Pulled {
        reference: reference.to_owned(),
        name,
        manifest_digest: resolved.digest.to_string(),
        config_digest: config_digest.to_string(),
        top,
        layers: planned.iter().map(|p| p.chain_id.clone()).collect(),
        present,
        fetched_bytes: totals.0.load(Ordering::Relaxed),
        resumed_bytes: totals.1.load(Ordering::Relaxed),
    })
}

/// Fetch layers `present..` on `options.jobs` threads, at most `jobs + 1` ahead of the
/// import, and import each in order while it downloads: the import reads the spool file behind
/// the fetch (stream.rs), and sees the blob's end only once its digest is checked.
#[allow(clippy::too_many_arguments)]
fn fetch_and_import(
    engine: &EngineHandle,
    client: &Client,
    r: &Reference,
    spool: &Spool,
    planned: &[Planned],
    present: usize,
    options: &PullOptions,
    hold: &str,
    totals: &(AtomicU64, AtomicU64),
    progress: &(dyn Fn(Event<'_>) + Sync),
) -> Result<(), RegistryError> {
    let count = planned.len();
    if present == count {
        return Ok(());
    }
    let jobs = options.jobs.clamp(1, 16);
    let window = jobs + 1;
    let cancel = Arc::new(AtomicBool::new(false));
    // Every blob fetched here is imported by this pull, most of them while they come; one
    // fetched ahead of its import is read later from the same file. So none is owed an
    // fdatasync and a whole name (that would write each fetched-ahead blob to disk once more,
    // ~150 MiB of the bench's 200 MiB image, on a pull bound by disk writes): the import
    // removes the bytes once its layer is in, and a pull cut short re-hashes the partial.
    let streams: Vec<Arc<Stream>> = (0..count)
        .map(|_| {
            let stream = Arc::new(Stream::default());
            stream.attach();
            stream
        })
        .collect();
    let (job_tx, job_rx) = crossbeam_channel::bounded::<usize>(count);
    let (done_tx, done_rx) =
        crossbeam_channel::unbounded::<(usize, Result<Fetched, RegistryError>)>();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(count - present) {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let cancel = &*cancel;
            let streams = &streams;
            s.spawn(move || {
                for index in job_rx {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let p = &planned[index];
                    let bytes = |n| progress(Event::Bytes { index, bytes: n });
                    let result = spool.fetch(
                        client,
                        &r.repo,
                        &p.digest,
                        p.size_bytes,
                        &bytes,
                        cancel,
                        &streams[index],
                    );
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut next = present;
        let result = (|| {
            while next < count && next < present + window {
                let _ = job_tx.send(next);
                next += 1;
            }
            let mut done: BTreeMap<usize, Fetched> = BTreeMap::new();
            // The fetch result of layer `index` (an error of any layer ends the pull).
            let mut wait = |index: usize| -> Result<(), RegistryError> {
                while !done.contains_key(&index) {
                    let (i, fetched) = done_rx.recv().map_err(|_| RegistryError::Cancelled)?;
                    let fetched = fetched?;
                    totals.0.fetch_add(fetched.fetched_bytes, Ordering::Relaxed);
                    totals.1.fetch_add(fetched.resumed_bytes, Ordering::Relaxed);
                    done.insert(i, fetched);
                }
                Ok(())
            };
            let mut parent = present.checked_sub(1).map(|i| planned[i].chain_id.clone());
            for (index, p) in planned.iter().enumerate().skip(present) {
                let import = |input: Box<dyn std::io::Read + Send>| {
                    // 1 MiB reads: the extractor's input comes from the page cache.
                    let reader = std::io::BufReader::with_capacity(1 << 20, input);
                    // The hold keeps the layer (and those below) through a crash until the
                    // image is recorded: it is recorded in the import's completion record.
                    engine.import_layer_held(
                        Box::new(reader),
                        ImportOptions {
                            parent: parent.clone(),
                            pin: false,
                            expected_diff_id: Some(p.diff_id),
                        },
                        hold,
                    )
                };
                let (input, reset) = streams[index]
                    .follow(spool.complete(&p.digest), Arc::clone(&cancel))
                    .boxed();
                // The import checks the uncompressed stream against the config's DiffID.
                let imported = match import(input) {
                    Ok(imported) => {
                        wait(index)?;
                        imported
                    }
                    // The fetch failed: its error says why (digest, truncation, the registry).
                    Err(_) if streams[index].end() == Some(End::Failed) => {
                        wait(index)?;
                        return Err(RegistryError::Cancelled);
                    }
                    // The fetch started over under the import (a registry that ignored
                    // `Range`): import again from the verified spool file.
                    Err(_) if reset.get() => {
                        wait(index)?;
                        let path = spool.blob(&p.digest);
                        let file =
                            std::fs::File::open(&path).map_err(RegistryError::io("open", &path))?;
                        import(Box::new(file))?
                    }
                    Err(e) => return Err(e.into()),
                };
                debug_assert_eq!(imported.chain_id, p.chain_id);
                spool.remove(&p.digest)?;
                progress(Event::Imported { index });
                parent = Some(imported.chain_id);
                if next < count {
                    let _ = job_tx.send(next);
                    next += 1;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        drop(job_tx);
        result
    })
}
