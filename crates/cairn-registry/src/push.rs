//! `push`: upload an image of the store. Each layer is re-created byte for byte from the
//! store (`export_layer`, checked against its DiffID) and uploaded uncompressed, so its blob
//! digest is its DiffID and a blob the registry has is skipped by a HEAD before anything is
//! exported; a cross-repository mount is asked for when a source repository on the same
//! registry is known. Then the config, then the manifest.
//!
//! The config pushed is the image's original, kept with it by `image load` and `pull`
//! (`PutImageKept`: one record with the image), byte for byte, so its digest is the original's; the kept manifest is
//! re-sent as is when the layers it names are the (uncompressed) blobs pushed, else a manifest
//! naming the kept config is built. An image without a kept config (a store from before kept
//! configs, or one recorded by `put_image` alone) gets a synthesized config: the
//! platform and the DiffIDs (`rootfs`), nothing of the original's `Env`, `Cmd` or history;
//! `Pushed::config` says which.

use super::client::{Body, Client, ClientOptions};
use super::error::RegistryError;
use super::manifest::{Descriptor, Manifest, Platform, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use super::reference::{Reference, Target};
use super::spool::Spool;
use cairn_engine::EngineHandle;
use cairn_layer::Digest;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct PushOptions {
    pub client: ClientOptions,
    /// The root of the store (layers are exported into `ROOT/spool` for upload).
    pub root: PathBuf,
    /// A repository on the same registry to mount blobs from (by default, the image's own
    /// when its name is a reference to that registry).
    pub mount_from: Option<String>,
}

/// How one blob got to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobAction {
    /// The registry had it (HEAD).
    Exists,
    /// Mounted from another repository.
    Mounted,
    Uploaded,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PushedBlob {
    pub digest: String,
    pub size_bytes: u64,
    pub action: BlobAction,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pushed {
    pub name: String,
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<PushedBlob>,
    pub uploaded_bytes: u64,
    /// Where the config came from: `kept` (the original) or `synthesized`.
    pub config: Source,
    /// Where the manifest came from: `kept` (the original, re-sent) or `synthesized`.
    pub manifest: Source,
}

/// Whether a pushed config or manifest is the image's original or made by the push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Kept,
    Synthesized,
}

#[derive(serde::Deserialize)]
struct KeptManifest {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn check_kept(
    image: &str,
    what: &'static str,
    bytes: &[u8],
    expected: &str,
) -> Result<(), RegistryError> {
    let found = Digest::of(bytes).to_string();
    if found != expected {
        return Err(RegistryError::KeptDigestMismatch {
            image: image.to_owned(),
            what,
            expected: expected.to_owned(),
            found,
        });
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<String>,
}

#[derive(serde::Serialize)]
struct Config<'a> {
    architecture: &'a str,
    os: &'a str,
    rootfs: RootFs<'a>,
}

/// The size of blob `digest` in `repo`, if the registry has it.
fn head(client: &Client, repo: &str, digest: &Digest) -> Result<Option<u64>, RegistryError> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    match client.send("HEAD", &path, &[], Body::Empty, &format!("blob {digest}")) {
        Ok(resp) => Ok(resp.header("content-length").and_then(|l| l.parse().ok())),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

enum Started {
    Mounted,
    Upload(String),
}

fn start_upload(
    client: &Client,
    repo: &str,
    digest: &Digest,
    mount_from: Option<&str>,
) -> Result<Started, RegistryError> {
    let path = match mount_from {
        Some(from) if from != repo => {
            format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}")
        }
        _ => format!("/v2/{repo}/blobs/uploads/"),
    };
    let resp = client.send("POST", &path, &[], Body::Bytes(&[]), "upload")?;
    if resp.status() == 201 {
        return Ok(Started::Mounted);
    }
    let location = resp
        .header("location")
        .ok_or_else(|| RegistryError::Manifest {
            reference: client.reference().to_owned(),
            what: "upload".into(),
            reason: "the registry started an upload without a Location".into(),
        })?;
    Ok(Started::Upload(location.to_owned()))
}

fn finish_upload(
    client: &Client,
    location: &str,
    digest: &Digest,
    body: Body<'_>,
) -> Result<(), RegistryError> {
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={digest}");
    client.send(
        "PUT",
        &url,
        &[("Content-Type", "application/octet-stream")],
        body,
        "upload",
    )?;
    Ok(())
}

/// Push image `name` of the store to `reference`.
pub fn push(
    engine: &EngineHandle,
    name: &str,
    reference: &str,
    options: &PushOptions,
    progress: &dyn Fn(&str),
) -> Result<Pushed, RegistryError> {
    let r = Reference::parse(reference)?;
    let client = Client::new(&r, &options.client);
    let image = engine
        .images()?
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| RegistryError::NoImage {
            name: name.to_owned(),
        })?;
    let mount_from = options.mount_from.clone().or_else(|| {
        Reference::parse(name)
            .ok()
            .filter(|src| src.host == r.host && src.repo != r.repo)
            .map(|src| src.repo)
    });
    let spool = Spool::open(&options.root)?;
    let mut pushed = Vec::with_capacity(image.layers.len());
    let mut diff_ids = Vec::with_capacity(image.layers.len());
    let mut uploaded_bytes = 0;
    for chain_id in &image.layers {
        let layer = engine.layer(chain_id)?;
        let digest: Digest = super::manifest::parse_digest(client.reference(), &layer.diff_id)?;
        diff_ids.push(layer.diff_id.clone());
        progress(&format!("layer {digest}"));
        if let Some(size_bytes) = head(&client, &r.repo, &digest)? {
            pushed.push(PushedBlob {
                digest: digest.to_string(),
                size_bytes,
                action: BlobAction::Exists,
            });
            continue;
        }
        let started = start_upload(&client, &r.repo, &digest, mount_from.as_deref())?;
        let location = match started {
            Started::Upload(l) => l,
            Started::Mounted => {
                let size_bytes = head(&client, &r.repo, &digest)?.unwrap_or(0);
                pushed.push(PushedBlob {
                    digest: digest.to_string(),
                    size_bytes,
                    action: BlobAction::Mounted,
                });
                continue;
            }
        };
        // The layer's original tar, from the store, checked against its DiffID by the export.
        let scratch = spool.scratch(&digest);
        let file =
            std::fs::File::create(&scratch).map_err(RegistryError::io("create", &scratch))?;
        let result = engine
            .export_layer(chain_id, Box::new(std::io::BufWriter::new(file)))
            .map_err(RegistryError::from)
            .and_then(|_| {
                let size_bytes = std::fs::metadata(&scratch)
                    .map_err(RegistryError::io("stat", &scratch))?
                    .len();
                finish_upload(
                    &client,
                    &location,
                    &digest,
                    Body::File(&scratch, size_bytes),
                )?;
                Ok(size_bytes)
            });
        let _ = std::fs::remove_file(&scratch);
        let size_bytes = result?;
        uploaded_bytes += size_bytes;
        pushed.push(PushedBlob {
            digest: digest.to_string(),
            size_bytes,
            action: BlobAction::Uploaded,
        });
    }

    let kept = engine.image_kept(name)?;
    let kept_manifest = match kept.as_ref().and_then(|k| k.manifest.as_deref()) {
        Some(bytes) => {
            check_kept(name, "manifest", bytes, &image.manifest_digest)?;
            serde_json::from_slice::<KeptManifest>(bytes)
                .ok()
                .map(|m| (bytes, m))
        }
        None => None,
    };
    let (config, config_source) = match &kept {
        Some(k) => {
            check_kept(name, "config", &k.config, &image.config_digest)?;
            (k.config.clone(), Source::Kept)
        }
        None => {
            let platform = Platform::host();
            let config = serde_json::to_vec(&Config {
                architecture: &platform.architecture,
                os: &platform.os,
                rootfs: RootFs {
                    kind: "layers",
                    diff_ids,
                },
            })
            .map_err(|source| RegistryError::Json {
                what: "config".into(),
                source,
            })?;
            (config, Source::Synthesized)
        }
    };
    let config_digest = Digest::of(&config);
    if head(&client, &r.repo, &config_digest)?.is_none() {
        if let Started::Upload(location) = start_upload(&client, &r.repo, &config_digest, None)? {
            finish_upload(&client, &location, &config_digest, Body::Bytes(&config))?;
        }
    }
    // The kept manifest names these very blobs only when the source's layers were
    // uncompressed tars (what push uploads); a compressed source gets a new manifest.
    let resend = kept_manifest.as_ref().filter(|(_, m)| {
        m.config.digest == config_digest.to_string()
            && m.layers.len() == pushed.len()
            && m.layers
                .iter()
                .zip(&pushed)
                .all(|(d, b)| d.digest == b.digest)
    });
    let (manifest_bytes, content_type, manifest_source) = match resend {
        Some((bytes, m)) => (
            bytes.to_vec(),
            m.media_type
                .clone()
                .unwrap_or_else(|| OCI_MANIFEST.to_owned()),
            Source::Kept,
        ),
        None => {
            let config_media_type = kept_manifest
                .as_ref()
                .map(|(_, m)| m.config.media_type.clone())
                .filter(|t| !t.is_empty() && config_source == Source::Kept)
                .unwrap_or_else(|| OCI_CONFIG.to_owned());
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.to_owned()),
                config: Descriptor {
                    media_type: config_media_type,
                    digest: config_digest.to_string(),
                    size: config.len() as u64,
                    platform: None,
                },
                layers: pushed
                    .iter()
                    .map(|b| Descriptor {
                        media_type: OCI_LAYER_TAR.to_owned(),
                        digest: b.digest.clone(),
                        size: b.size_bytes,
                        platform: None,
                    })
                    .collect(),
            };
            let bytes = serde_json::to_vec(&manifest).map_err(|source| RegistryError::Json {
                what: "manifest".into(),
                source,
            })?;
            (bytes, OCI_MANIFEST.to_owned(), Source::Synthesized)
        }
    };
    let manifest_digest = Digest::of(&manifest_bytes);
    if let Target::Digest(d) = &r.target {
        if *d != manifest_digest {
            return Err(RegistryError::DigestMismatch {
                reference: client.reference().to_owned(),
                digest: d.to_string(),
                found: manifest_digest.to_string(),
            });
        }
    }
    let path = format!("/v2/{}/manifests/{}", r.repo, r.target_str());
    client.send(
        "PUT",
        &path,
        &[("Content-Type", content_type.as_str())],
        Body::Bytes(&manifest_bytes),
        "manifest",
    )?;
    Ok(Pushed {
        name: name.to_owned(),
        reference: r.to_string(),
        manifest_digest: manifest_digest.to_string(),
        config_digest: config_digest.to_string(),
        layers: pushed,
        uploaded_bytes,
        config: config_source,
        manifest: manifest_source,
    })
}
