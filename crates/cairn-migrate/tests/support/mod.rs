//! Docker data roots written as Docker 20.10 writes them (moby's `layer/filestore.go`,
//! `image/store.go`, `reference/store.go`, the aufs and overlay2 drivers), from layer tars:
//! for aufs, which no kernel here mounts, and for trees the tests tamper with.
#![allow(dead_code)]

use cairn_engine::{Engine, EngineHandle, EngineOptions};
use cairn_layer::{chain_id, Digest};
use cairn_migrate::tarsplit;
use cairn_state::types::DriverKind;
use std::path::{Path, PathBuf};

pub fn corpus() -> Option<PathBuf> {
    // `CAIRN_SHARED` points elsewhere than `../shared` beside the project root (a worktree).
    let shared = std::env::var_os("CAIRN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    let dir = shared.join("corpus");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CAIRN_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("CAIRN_REQUIRE_SHARED=1 but {} is missing", dir.display());
    }
    println!("notice: ../shared/corpus not found, skipping");
    None
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn open_vfs(root: &Path) -> EngineHandle {
    let options = EngineOptions {
        driver: Some(DriverKind::Vfs),
        ..EngineOptions::default()
    };
    Engine::open(root, options).expect("open engine").0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Aufs,
    Overlay2,
}

/// One image: a name and its layer tars, base first.
pub struct ImageSpec<'a> {
    pub name: &'a str,
    pub layers: Vec<Vec<u8>>,
}

/// What was written: per layer (ChainID, cache id, diff dir), per image its ID.
#[derive(Debug, Default)]
pub struct Written {
    pub layers: Vec<(String, String, PathBuf)>,
    pub images: Vec<String>,
}

fn hex(d: &Digest) -> String {
    d.to_string().trim_start_matches("sha256:").to_owned()
}

/// overlay2's short link names: 26 characters of base32 (as `generateID(26)` makes them).
fn short_link(cache_id: &str) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    Digest::of(cache_id.as_bytes())
        .0
        .iter()
        .take(26)
        .map(|b| alphabet[usize::from(b % 32)] as char)
        .collect()
}

/// Write a data root at `root` holding `images` on `driver`.
pub fn write_root(root: &Path, driver: Driver, images: &[ImageSpec<'_>]) -> Written {
    let dname = match driver {
        Driver::Aufs => "aufs",
        Driver::Overlay2 => "overlay2",
    };
    let store = root.join("image").join(dname);
    let layerdb = store.join("layerdb").join("sha256");
    std::fs::create_dir_all(&layerdb).expect("layerdb");
    std::fs::create_dir_all(store.join("layerdb").join("tmp")).expect("tmp");
    let content = store.join("imagedb").join("content").join("sha256");
    std::fs::create_dir_all(&content).expect("imagedb");
    std::fs::create_dir_all(store.join("imagedb").join("metadata").join("sha256"))
        .expect("metadata");
    let mut written = Written::default();
    let mut repositories = serde_json::Map::new();
    for image in images {
        let mut parent: Option<Digest> = None;
        let mut ancestors: Vec<String> = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in &image.layers {
            let diff_id = Digest::of(tar);
            diff_ids.push(diff_id.to_string());
            let chain = chain_id(parent.as_ref(), &diff_id);
            let cache_id = hex(&Digest::of(format!("cache {chain}").as_bytes()));
            let dir = layerdb.join(hex(&chain));
            if !dir.exists() {
                std::fs::create_dir_all(&dir).expect("layer dir");
                std::fs::write(dir.join("diff"), diff_id.to_string()).expect("diff");
                if let Some(p) = parent {
                    std::fs::write(dir.join("parent"), p.to_string()).expect("parent");
                }
                std::fs::write(dir.join("cache-id"), &cache_id).expect("cache-id");
                std::fs::write(
                    dir.join("tar-split.json.gz"),
                    tarsplit::encode_gz(tar).expect("encode"),
                )
                .expect("tar-split");
                let diff = write_content(root, driver, &cache_id, &ancestors, tar);
                let size = du(&diff);
                std::fs::write(dir.join("size"), size.to_string()).expect("size");
                written
                    .layers
                    .push((chain.to_string(), cache_id.clone(), diff));
            }
            ancestors.insert(0, cache_id);
            parent = Some(chain);
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let bytes = serde_json::to_vec(&config).expect("config");
        let id = Digest::of(&bytes);
        std::fs::write(content.join(hex(&id)), &bytes).expect("image config");
        let repo = image
            .name
            .split(':')
            .next()
            .unwrap_or(image.name)
            .to_owned();
        let refs = repositories
            .entry(repo)
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        refs.as_object_mut()
            .expect("object")
            .insert(image.name.to_owned(), id.to_string().into());
        written.images.push(id.to_string());
    }
    let repos = serde_json::json!({ "Repositories": repositories });
    std::fs::write(
        store.join("repositories.json"),
        serde_json::to_vec(&repos).expect("json"),
    )
    .expect("repositories.json");
    written
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.path().symlink_metadata().expect("stat");
        if meta.is_dir() {
            total += du(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// The driver's directory for one layer, unpacked from its tar: aufs keeps `.wh.` files as
/// they are; overlay2 turns them into 0/0 character devices and opaque xattrs.
fn write_content(
    root: &Path,
    driver: Driver,
    cache_id: &str,
    ancestors: &[String],
    tar: &[u8],
) -> PathBuf {
    let diff = match driver {
        Driver::Aufs => {
            let aufs = root.join("aufs");
            for sub in ["diff", "layers", "mnt"] {
                std::fs::create_dir_all(aufs.join(sub)).expect("aufs dirs");
            }
            std::fs::create_dir_all(aufs.join("mnt").join(cache_id)).expect("mnt");
            let mut lines = ancestors.join("\n");
            if !lines.is_empty() {
                lines.push('\n');
            }
            std::fs::write(aufs.join("layers").join(cache_id), lines).expect("layers file");
            aufs.join("diff").join(cache_id)
        }
        Driver::Overlay2 => {
            let base = root.join("overlay2");
            let dir = base.join(cache_id);
            std::fs::create_dir_all(base.join("l")).expect("l");
            std::fs::create_dir_all(&dir).expect("layer dir");
            let link = short_link(cache_id);
            std::fs::write(dir.join("link"), &link).expect("link");
            std::os::unix::fs::symlink(format!("../{cache_id}/diff"), base.join("l").join(&link))
                .expect("short link");
            if !ancestors.is_empty() {
                let lower: Vec<String> = ancestors
                    .iter()
                    .map(|a| format!("l/{}", short_link(a)))
                    .collect();
                std::fs::write(dir.join("lower"), lower.join(":")).expect("lower");
                std::fs::create_dir_all(dir.join("work")).expect("work");
            }
            std::fs::write(dir.join("committed"), b"").expect("committed");
            dir.join("diff")
        }
    };
    std::fs::create_dir_all(&diff).expect("diff dir");
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(true);
    archive.unpack(&diff).expect("unpack layer");
    if driver == Driver::Overlay2 {
        overlay_whiteouts(&diff);
    }
    diff
}

fn overlay_whiteouts(dir: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        let meta = path.symlink_metadata().expect("stat");
        if name == ".wh..wh..opq" {
            std::fs::remove_file(&path).expect("remove opq marker");
            xattr::set(dir, "trusted.overlay.opaque", b"y").expect("opaque xattr");
        } else if let Some(target) = name.strip_prefix(".wh.") {
            std::fs::remove_file(&path).expect("remove whiteout");
            nix::sys::stat::mknod(
                &dir.join(target),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .expect("mknod whiteout");
        } else if meta.is_dir() {
            overlay_whiteouts(&path);
        }
    }
}

/// Every path under `dir` with its type, mode, size, mtime, xattrs and content digest: equal
/// before and after a migration when the migration wrote nothing.
pub fn listing(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let m = p.symlink_metadata().expect("stat");
            let content = if m.is_file() {
                Digest::of(&std::fs::read(&p).expect("read")).to_string()
            } else {
                String::new()
            };
            let mut xattrs: Vec<String> = xattr::list(&p)
                .map(|l| l.map(|n| n.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            xattrs.sort();
            out.push(format!(
                "{} {:o} {} {}.{} {} {:?}",
                p.strip_prefix(dir).unwrap_or(&p).display(),
                m.mode(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                content,
                xattrs
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}
