//! Reading a Docker data root (read-only): the layer store under `image/<driver>/layerdb/`, the
//! graph driver's diff directories (`aufs/diff/<cache-id>`, `overlay2/<cache-id>/diff`), the
//! image store under `image/<driver>/imagedb/` and the names in `repositories.json`, as moby's
//! `layer/filestore.go`, `image/store.go`, `reference/store.go` and the drivers write them.

use super::error::MigrateError;
use cairn_layer::{chain_id, Digest};
use cairn_state::MAX_LAYER_DEPTH;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The graph drivers whose layer content we can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphDriver {
    /// `aufs/diff/<cache-id>`; whiteouts are `.wh.` files on disk.
    Aufs,
    /// `overlay2/<cache-id>/diff`; whiteouts are 0/0 character devices and opaque xattrs.
    Overlay2,
}

impl GraphDriver {
    pub fn name(self) -> &'static str {
        match self {
            GraphDriver::Aufs => "aufs",
            GraphDriver::Overlay2 => "overlay2",
        }
    }

    pub fn parse(name: &str) -> Option<GraphDriver> {
        match name {
            "aufs" => Some(GraphDriver::Aufs),
            "overlay2" => Some(GraphDriver::Overlay2),
            _ => None,
        }
    }
}

/// One layer of the layer store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    pub cache_id: String,
    /// Docker's `size` file: the bytes of the layer's diff directory (not the tar's length).
    pub size_bytes: Option<u64>,
    pub tar_split: PathBuf,
    /// The driver's diff directory for `cache_id`.
    pub content: PathBuf,
    /// 0 for a base layer.
    pub depth: usize,
}

/// One image of the image store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// The image ID: the digest of its config.
    pub id: Digest,
    pub diff_ids: Vec<Digest>,
    /// `repo:tag` names from `repositories.json`, as `docker images` shows them.
    pub names: Vec<String>,
    /// The manifest digest of a `repo@sha256:…` reference to it, if any.
    pub manifest_digest: Option<String>,
}

/// Something that will not be moved, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// `layer` or `image`.
    pub kind: &'static str,
    /// Its ChainID or image ID.
    pub id: String,
    pub reason: String,
}

/// What the source holds, read once, before anything is imported.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub driver: GraphDriver,
    /// Parents before children.
    pub layers: Vec<LayerRecord>,
    pub images: Vec<ImageRecord>,
    pub skipped: Vec<Skipped>,
    /// Inconsistencies that do not stop a layer: a driver link that does not match its chain.
    pub warnings: Vec<String>,
}

/// Small metadata files are at most this long (a digest, an id, a number).
const MAX_SMALL_BYTES: u64 = 4 << 10;
/// An image config is at most this long.
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// `repositories.json` is at most this long.
const MAX_REPOSITORIES_BYTES: u64 = 64 << 20;
/// The most layers or images one source may list.
const MAX_RECORDS: usize = 1_000_000;

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, MigrateError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| MigrateError::io("open", path, e))?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| MigrateError::io("read", path, e))?;
    if out.len() as u64 > max {
        return Err(MigrateError::Metadata {
            path: path.to_owned(),
            reason: format!("longer than {max} bytes"),
        });
    }
    Ok(out)
}

fn read_text(path: &Path) -> Result<String, MigrateError> {
    let bytes = read_bounded(path, MAX_SMALL_BYTES)?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| MigrateError::Metadata {
            path: path.to_owned(),
            reason: "not UTF-8".into(),
        })
}

fn read_digest(path: &Path) -> Result<Digest, MigrateError> {
    let text = read_text(path)?;
    text.parse().map_err(|_| MigrateError::Metadata {
        path: path.to_owned(),
        reason: format!("{text:?} is not a sha256 digest"),
    })
}

fn list_dir(path: &Path) -> Result<Vec<String>, MigrateError> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(MigrateError::io("read directory", path, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| MigrateError::io("read directory", path, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
        if names.len() > MAX_RECORDS {
            return Err(MigrateError::Metadata {
                path: path.to_owned(),
                reason: format!("more than {MAX_RECORDS} entries"),
            });
        }
    }
    // Sorted: every run sees the source in the same order.
    names.sort();
    Ok(names)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Which driver's layer store to read: the one asked for, or the only one there.
pub fn driver_of(root: &Path, asked: Option<GraphDriver>) -> Result<GraphDriver, MigrateError> {
    let image_dir = root.join("image");
    if !image_dir.is_dir() {
        return Err(MigrateError::NotDockerRoot {
            path: root.to_owned(),
            reason: "it has no image/ directory".into(),
        });
    }
    let present: Vec<String> = list_dir(&image_dir)?
        .into_iter()
        .filter(|d| image_dir.join(d).join("layerdb").is_dir())
        .collect();
    match asked {
        Some(d) if present.iter().any(|p| p == d.name()) => Ok(d),
        Some(d) => Err(MigrateError::NotDockerRoot {
            path: root.to_owned(),
            reason: format!("it has no image/{}/layerdb", d.name()),
        }),
        None => match present.as_slice() {
            [one] => GraphDriver::parse(one).ok_or_else(|| MigrateError::NotDockerRoot {
                path: root.to_owned(),
                reason: format!("its layers are on the {one} driver; aufs and overlay2 are read"),
            }),
            [] => Err(MigrateError::NotDockerRoot {
                path: root.to_owned(),
                reason: "it has no image/<driver>/layerdb".into(),
            }),
            many => Err(MigrateError::NotDockerRoot {
                path: root.to_owned(),
                reason: format!(
                    "it has layer stores for {}: choose one with --storage-driver",
                    many.join(", ")
                ),
            }),
        },
    }
}

/// Read the layer store and image store of `root` on `driver`.
pub fn inventory(root: &Path, driver: GraphDriver) -> Result<Inventory, MigrateError> {
    let mut inv = Inventory {
        driver,
        layers: Vec::new(),
        images: Vec::new(),
        skipped: Vec::new(),
        warnings: Vec::new(),
    };
    let store = root.join("image").join(driver.name());
    let layerdb = store.join("layerdb").join("sha256");
    let mut records: BTreeMap<Digest, LayerRecord> = BTreeMap::new();
    for name in list_dir(&layerdb)? {
        if !is_hex64(&name) {
            continue;
        }
        let dir = layerdb.join(&name);
        let id = format!("sha256:{name}");
        match read_layer(root, driver, &dir, &name) {
            Ok(record) => {
                records.insert(record.chain_id, record);
            }
            Err(e) => inv.skipped.push(Skipped {
                kind: "layer",
                id,
                reason: e.to_string(),
            }),
        }
    }
    order_layers(records, &mut inv);
    if driver == GraphDriver::Overlay2 {
        check_overlay2_links(root, &mut inv);
    } else {
        check_aufs_layers(root, &mut inv);
    }
    read_images(&store, &mut inv)?;
    Ok(inv)
}

fn read_layer(
    root: &Path,
    driver: GraphDriver,
    dir: &Path,
    name: &str,
) -> Result<LayerRecord, MigrateError> {
    let diff_id = read_digest(&dir.join("diff"))?;
    let parent_path = dir.join("parent");
    let parent = if parent_path.exists() {
        Some(read_digest(&parent_path)?)
    } else {
        None
    };
    let cache_path = dir.join("cache-id");
    let cache_id = read_text(&cache_path)?;
    // moby's stringIDRegexp: a driver id is 64 hex digits, `-init` for a container's init layer.
    let bare = cache_id.strip_suffix("-init").unwrap_or(&cache_id);
    if !is_hex64(bare) {
        return Err(MigrateError::Metadata {
            path: cache_path,
            reason: format!("{cache_id:?} is not a driver id"),
        });
    }
    let size_path = dir.join("size");
    let size_bytes = if size_path.exists() {
        let text = read_text(&size_path)?;
        Some(text.parse::<u64>().map_err(|_| MigrateError::Metadata {
            path: size_path,
            reason: format!("{text:?} is not a size"),
        })?)
    } else {
        None
    };
    let expected = chain_id(parent.as_ref(), &diff_id);
    if expected.to_string() != format!("sha256:{name}") {
        return Err(MigrateError::Metadata {
            path: dir.to_owned(),
            reason: format!("its parent and DiffID give ChainID {expected}, not its name"),
        });
    }
    let tar_split = dir.join("tar-split.json.gz");
    if !tar_split.is_file() {
        return Err(MigrateError::Metadata {
            path: tar_split,
            reason: "missing: the layer's original tar cannot be re-assembled".into(),
        });
    }
    let content = match driver {
        GraphDriver::Aufs => root.join("aufs").join("diff").join(&cache_id),
        GraphDriver::Overlay2 => root.join("overlay2").join(&cache_id).join("diff"),
    };
    if !content.is_dir() {
        return Err(MigrateError::Metadata {
            path: content,
            reason: format!(
                "missing: the {} driver has no content for the layer",
                driver.name()
            ),
        });
    }
    Ok(LayerRecord {
        chain_id: expected,
        diff_id,
        parent,
        cache_id,
        size_bytes,
        tar_split,
        content,
        depth: 0,
    })
}

/// Parents before children; a layer whose parent is missing (or skipped), or whose chain is
/// deeper than cairn allows, is skipped.
fn order_layers(mut records: BTreeMap<Digest, LayerRecord>, inv: &mut Inventory) {
    let ids: Vec<Digest> = records.keys().copied().collect();
    let mut depth: BTreeMap<Digest, Result<usize, String>> = BTreeMap::new();
    for id in &ids {
        // Walk down to a layer of known depth (or the base), then number back up.
        let mut path = vec![*id];
        let mut base: Result<usize, String> = Ok(0);
        while let Some(top) = path.last().copied() {
            if let Some(known) = depth.get(&top) {
                base = match known {
                    Ok(d) => Ok(d + 1),
                    Err(_) => Err("a layer below it cannot be moved".to_owned()),
                };
                path.pop();
                break;
            }
            let parent = records.get(&top).and_then(|r| r.parent);
            match parent {
                None => {
                    base = Ok(0);
                    break;
                }
                Some(p) if !records.contains_key(&p) => {
                    base = Err(format!("its parent {p} is not in the layer store"));
                    break;
                }
                Some(p) if path.len() > MAX_LAYER_DEPTH => {
                    base = Err(format!(
                        "its chain is deeper than {MAX_LAYER_DEPTH} layers (or loops through {p})"
                    ));
                    break;
                }
                Some(p) => path.push(p),
            }
        }
        // `path` runs from `id` down; its last element sits at `base`.
        for (i, layer) in path.iter().rev().enumerate() {
            let d = match &base {
                Ok(b) => {
                    let d = b + i;
                    if d >= MAX_LAYER_DEPTH {
                        Err(format!("its chain is deeper than {MAX_LAYER_DEPTH} layers"))
                    } else {
                        Ok(d)
                    }
                }
                Err(reason) if i == 0 => Err(reason.clone()),
                Err(_) => Err("a layer below it cannot be moved".to_owned()),
            };
            depth.entry(*layer).or_insert(d);
        }
    }
    let mut ordered = Vec::new();
    for (id, d) in depth {
        match (d, records.remove(&id)) {
            (Ok(d), Some(mut record)) => {
                record.depth = d;
                ordered.push(record);
            }
            (Err(reason), Some(_)) => inv.skipped.push(Skipped {
                kind: "layer",
                id: id.to_string(),
                reason,
            }),
            (_, None) => {}
        }
    }
    ordered.sort_by_key(|l| (l.depth, l.chain_id));
    inv.layers = ordered;
}

/// The cache ids of a layer's ancestors, nearest first.
fn ancestors(inv: &Inventory, layer: &LayerRecord) -> Vec<String> {
    let by_chain: BTreeMap<Digest, &LayerRecord> =
        inv.layers.iter().map(|l| (l.chain_id, l)).collect();
    let mut out = Vec::new();
    let mut next = layer.parent;
    while let Some(p) = next {
        let Some(record) = by_chain.get(&p) else {
            break;
        };
        out.push(record.cache_id.clone());
        next = record.parent;
        if out.len() > MAX_LAYER_DEPTH {
            break;
        }
    }
    out
}

/// overlay2 keeps, per layer, `link` (its short name under `l/`) and `lower` (`l/A:l/B…`, the
/// ancestors' short names, nearest first). They only matter for mounting, not for the tar, so
/// a mismatch is a warning.
fn check_overlay2_links(root: &Path, inv: &mut Inventory) {
    let base = root.join("overlay2");
    let resolve = |short: &str| -> Option<String> {
        let target = std::fs::read_link(base.join("l").join(short)).ok()?;
        let text = target.to_str()?;
        let id = text.strip_prefix("../")?.strip_suffix("/diff")?;
        Some(id.to_owned())
    };
    let mut warnings = Vec::new();
    for layer in &inv.layers {
        let dir = base.join(&layer.cache_id);
        match std::fs::read_to_string(dir.join("link")) {
            Ok(link) if resolve(link.trim()).as_deref() == Some(layer.cache_id.as_str()) => {}
            Ok(link) => warnings.push(format!(
                "overlay2/{}: l/{} does not point at its diff",
                layer.cache_id,
                link.trim()
            )),
            Err(_) => warnings.push(format!("overlay2/{}: no link file", layer.cache_id)),
        }
        let expected = ancestors(inv, layer);
        let found: Vec<String> = match std::fs::read_to_string(dir.join("lower")) {
            Ok(text) => text
                .trim()
                .split(':')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.strip_prefix("l/")
                        .and_then(resolve)
                        .unwrap_or_else(|| format!("?{s}"))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if found != expected {
            warnings.push(format!(
                "overlay2/{}: its lower file names {} layers that are not its parent chain",
                layer.cache_id,
                found.len()
            ));
        }
    }
    inv.warnings.extend(warnings);
}

/// aufs keeps `aufs/layers/<id>`: the ancestors' ids, nearest first, one a line.
fn check_aufs_layers(root: &Path, inv: &mut Inventory) {
    let mut warnings = Vec::new();
    for layer in &inv.layers {
        let path = root.join("aufs").join("layers").join(&layer.cache_id);
        let found: Vec<String> = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(_) => {
                warnings.push(format!("aufs/layers/{}: missing", layer.cache_id));
                continue;
            }
        };
        if found != ancestors(inv, layer) {
            warnings.push(format!(
                "aufs/layers/{}: does not list its parent chain",
                layer.cache_id
            ));
        }
    }
    inv.warnings.extend(warnings);
}

#[derive(Deserialize)]
struct Config {
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

/// A reference as `docker images` prints it: Docker Hub's `docker.io/library/` and
/// `docker.io/` prefixes dropped.
pub fn familiar(name: &str) -> String {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    name.to_owned()
}

fn read_images(store: &Path, inv: &mut Inventory) -> Result<(), MigrateError> {
    // Names first: image ID → tags (and one manifest digest).
    let mut names: BTreeMap<Digest, (BTreeSet<String>, Option<String>)> = BTreeMap::new();
    let repos_path = store.join("repositories.json");
    if repos_path.exists() {
        let bytes = read_bounded(&repos_path, MAX_REPOSITORIES_BYTES)?;
        let repos: Repositories =
            serde_json::from_slice(&bytes).map_err(|e| MigrateError::Metadata {
                path: repos_path.clone(),
                reason: format!("not Docker's repositories.json: {e}"),
            })?;
        for refs in repos.repositories.values() {
            for (reference, id) in refs {
                let Ok(id) = id.parse::<Digest>() else {
                    inv.warnings.push(format!(
                        "repositories.json: {reference} names {id:?}, not an image ID"
                    ));
                    continue;
                };
                let entry = names.entry(id).or_default();
                match reference.split_once('@') {
                    Some((_, digest)) => {
                        entry.1.get_or_insert_with(|| digest.to_owned());
                    }
                    None => {
                        entry.0.insert(familiar(reference));
                    }
                }
            }
        }
    }
    let content = store.join("imagedb").join("content").join("sha256");
    for name in list_dir(&content)? {
        if !is_hex64(&name) {
            continue;
        }
        let id_text = format!("sha256:{name}");
        let path = content.join(&name);
        let skip = |inv: &mut Inventory, reason: String| {
            inv.skipped.push(Skipped {
                kind: "image",
                id: id_text.clone(),
                reason,
            })
        };
        let bytes = match read_bounded(&path, MAX_CONFIG_BYTES) {
            Ok(b) => b,
            Err(e) => {
                skip(inv, e.to_string());
                continue;
            }
        };
        let id = Digest::of(&bytes);
        if id.to_string() != id_text {
            skip(
                inv,
                format!("its config's digest is {id}: the file was changed"),
            );
            continue;
        }
        let config: Config = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                skip(inv, format!("its config is not an image config: {e}"));
                continue;
            }
        };
        let diff_ids: Result<Vec<Digest>, _> = config
            .rootfs
            .map(|r| r.diff_ids)
            .unwrap_or_default()
            .iter()
            .map(|d| d.parse::<Digest>())
            .collect();
        let Ok(diff_ids) = diff_ids else {
            skip(
                inv,
                "its config lists a DiffID that is not a sha256 digest".into(),
            );
            continue;
        };
        let (tags, manifest_digest) = names.remove(&id).unwrap_or_default();
        inv.images.push(ImageRecord {
            id,
            diff_ids,
            names: tags.into_iter().collect(),
            manifest_digest,
        });
    }
    for (id, (tags, _)) in names {
        inv.warnings.push(format!(
            "repositories.json: {} name image {id}, which is not in the image store",
            tags.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}
