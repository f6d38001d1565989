//! A small runnable OCI image archive for `ctr images import`, built from the host's busybox:
//! layer 1 holds /bin/busybox (and its libraries if it is not static) and /bin/sh, layer 2 a
//! marker file.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MARKER_PATH: &str = "etc/cairn-e2e";
pub const MARKER: &[u8] = b"written by cairn's end-to-end test\n";

#[derive(Debug)]
pub struct Image {
    pub archive: PathBuf,
    pub name: String,
    /// ChainIDs, base first.
    pub chain_ids: Vec<String>,
    pub busybox: Vec<u8>,
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Shared libraries a dynamic busybox needs (none for busybox-static).
fn libraries(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(bin).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn add_file(t: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    t.append_data(&mut h, path, data).expect("tar file");
}

fn add_dir(t: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Directory);
    t.append_data(&mut h, path, std::io::empty())
        .expect("tar dir");
}

fn add_link(t: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Symlink);
    t.append_link(&mut h, path, target).expect("tar symlink");
}

/// Build the archive into `dir`; `None` when there is no busybox.
pub fn build(dir: &Path, name: &str) -> Option<Image> {
    let bin = busybox()?;
    let busybox = std::fs::read(&bin).expect("read busybox");
    let mut l1 = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        add_dir(&mut l1, d);
    }
    add_file(&mut l1, "bin/busybox", &busybox, 0o755);
    add_link(&mut l1, "bin/sh", "busybox");
    let mut dirs = std::collections::BTreeSet::new();
    for lib in libraries(&bin) {
        let rel = lib.strip_prefix("/").expect("absolute").to_path_buf();
        let mut parent = rel.parent().map(Path::to_path_buf);
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.clone());
            parent = p.parent().map(Path::to_path_buf);
        }
        for p in chain.into_iter().rev() {
            if dirs.insert(p.clone()) && p != Path::new("bin") && p != Path::new("etc") {
                add_dir(&mut l1, &p.display().to_string());
            }
        }
        let data = std::fs::read(&lib).expect("read library");
        add_file(&mut l1, &rel.display().to_string(), &data, 0o755);
    }
    let l1 = l1.into_inner().expect("layer 1");
    let mut l2 = tar::Builder::new(Vec::new());
    add_dir(&mut l2, "etc");
    add_file(&mut l2, MARKER_PATH, MARKER, 0o644);
    let l2 = l2.into_inner().expect("layer 2");

    let (d1, d2) = (sha(&l1), sha(&l2));
    let c1 = d1.clone();
    let c2 = sha(format!("{c1} {d2}").as_bytes());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [d1, d2]},
    })
    .to_string()
    .into_bytes();
    let layer = |data: &[u8]| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha(data), "size": data.len(),
        })
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&config), "size": config.len()},
        "layers": [layer(&l1), layer(&l2)],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest), "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("1"),
            },
        }],
    })
    .to_string()
    .into_bytes();
    let mut t = tar::Builder::new(Vec::new());
    add_file(
        &mut t,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    );
    add_file(&mut t, "index.json", &index, 0o644);
    add_dir(&mut t, "blobs");
    add_dir(&mut t, "blobs/sha256");
    for blob in [&l1, &l2, &config, &manifest] {
        let digest = sha(blob);
        let hex = digest.trim_start_matches("sha256:");
        add_file(&mut t, &format!("blobs/sha256/{hex}"), blob, 0o644);
    }
    let archive = dir.join(format!("{}.tar", name.replace([':', '/'], "_")));
    std::fs::write(&archive, t.into_inner().expect("archive")).expect("write archive");
    Some(Image {
        archive,
        name: name.to_owned(),
        chain_ids: vec![c1, c2],
        busybox,
    })
}
