//! Manifests and indexes, Docker's and OCI's: resolving a reference to one image manifest.

use super::client::{read_small, Body, Client};
use super::error::RegistryError;
use super::reference::{Reference, Target};
use cairn_layer::Digest;
use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Layer media types a pull imports (the extractor detects gzip and zstd from the bytes).
pub const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// This host's platform in Go's names (`linux/amd64`).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            variant: None,
        }
    }

    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let architecture = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().map(str::to_owned);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            variant,
        })
    }

    fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A resolved image manifest and its digest.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub digest: Digest,
    pub manifest: Manifest,
    /// The manifest's bytes as served (their sha256 is `digest`): kept with the image.
    pub bytes: Vec<u8>,
}

pub(crate) fn parse_digest(reference: &str, s: &str) -> Result<Digest, RegistryError> {
    s.parse().map_err(|_| RegistryError::Manifest {
        reference: reference.to_owned(),
        what: "descriptor".into(),
        reason: format!("{s:?} is not a sha256 digest"),
    })
}

/// GET a manifest by tag or digest; its bytes are checked against the digest that names it
/// (the reference's, else the registry's `Docker-Content-Digest`).
fn fetch(client: &Client, r: &Reference, target: &str) -> Result<(Digest, Vec<u8>), RegistryError> {
    let path = format!("/v2/{}/manifests/{target}", r.repo);
    let resp = client.send(
        "GET",
        &path,
        &[("Accept", ACCEPT)],
        Body::Empty,
        &format!("manifest {target}"),
    )?;
    let header = resp.header("docker-content-digest").map(str::to_owned);
    let bytes = read_small(resp, &path)?;
    let found = Digest::of(&bytes);
    let expected = match target.parse::<Digest>() {
        Ok(d) => Some(d),
        Err(_) => header.as_deref().and_then(|h| h.parse().ok()),
    };
    if let Some(expected) = expected {
        if expected != found {
            return Err(RegistryError::DigestMismatch {
                reference: client.reference().to_owned(),
                digest: expected.to_string(),
                found: found.to_string(),
            });
        }
    }
    Ok((found, bytes))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Resolve `r` to one image manifest: an index (OCI or Docker's list) picks `platform`.
pub fn resolve(
    client: &Client,
    r: &Reference,
    platform: &Platform,
) -> Result<Resolved, RegistryError> {
    let target = match &r.target {
        Target::Tag(t) => t.clone(),
        Target::Digest(d) => d.to_string(),
    };
    let (mut digest, mut bytes) = fetch(client, r, &target)?;
    // An index of indexes is allowed by OCI; follow at most two levels.
    for _ in 0..2 {
        let probe: Probe = json(&format!("manifest {digest}"), &bytes)?;
        let is_index = matches!(probe.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST))
            || (probe.media_type.is_none() && probe.manifests.is_some());
        if !is_index {
            break;
        }
        let manifests = probe.manifests.unwrap_or_default();
        let chosen = manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .ok_or_else(|| RegistryError::NoPlatform {
                reference: client.reference().to_owned(),
                platform: platform.to_string(),
            })?;
        let d = parse_digest(client.reference(), &chosen.digest)?;
        (digest, bytes) = fetch(client, r, &d.to_string())?;
    }
    let manifest: Manifest = json(&format!("manifest {digest}"), &bytes)?;
    if manifest.schema_version != 2 {
        return Err(RegistryError::Manifest {
            reference: client.reference().to_owned(),
            what: format!("manifest {digest}"),
            reason: format!(
                "schemaVersion {} (only 2 is supported)",
                manifest.schema_version
            ),
        });
    }
    Ok(Resolved {
        digest,
        manifest,
        bytes,
    })
}
