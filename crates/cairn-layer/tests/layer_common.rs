//! Helpers shared by the layer test files (included with `#[path]`).
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cairn_layer::{extract, ExtractOptions, Extracted, LayerError};

/// `../shared/corpus`, or `None` (with a notice) when it is absent and not required.
pub fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus"
    ));
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

/// Every uncompressed byte of a (possibly compressed) layer file.
pub fn uncompressed(path: &Path) -> Vec<u8> {
    let raw = fs::read(path).expect("read layer");
    let mut out = Vec::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .expect("gunzip");
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(&raw[..]).expect("unzstd");
    } else {
        out = raw;
    }
    out
}

pub fn extract_bytes(
    tar: &[u8],
    target: &Path,
    opts: &ExtractOptions,
) -> Result<(Extracted, Vec<u8>), LayerError> {
    let mut meta = Vec::new();
    let ex = extract(tar, target, opts, &mut meta)?;
    Ok((ex, meta))
}

/// One line per entry below `root`, sorted by path: `d path`, `f path content` (one
/// trailing newline dropped), `l path -> target`, `p path`, `c path maj:min`, `b path maj:min`.
/// The format of `chain/expected-tree.txt`, extended to the other types.
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out.into_iter().map(|(l, _)| l).collect()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut ents: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry"))
        .collect();
    ents.sort_by_key(|e| e.file_name());
    for e in ents {
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("below root")
            .to_string_lossy()
            .into_owned();
        let md = fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        let line = if ft.is_dir() {
            format!("d {rel}")
        } else if ft.is_symlink() {
            format!(
                "l {rel} -> {}",
                fs::read_link(&p).expect("readlink").display()
            )
        } else if ft.is_file() {
            let data = fs::read(&p).expect("read");
            let text = String::from_utf8_lossy(&data);
            format!("f {rel} {}", text.strip_suffix('\n').unwrap_or(&text))
        } else if ft.is_fifo() {
            format!("p {rel}")
        } else if ft.is_char_device() || ft.is_block_device() {
            let d = md.rdev();
            let t = if ft.is_char_device() { 'c' } else { 'b' };
            format!(
                "{t} {rel} {}:{}",
                nix::sys::stat::major(d),
                nix::sys::stat::minor(d)
            )
        } else {
            format!("? {rel}")
        };
        out.push((line, rel));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// The names directly inside `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A writer a worker thread can own while the test keeps a handle on what was written.
#[derive(Clone, Debug, Default)]
pub struct Sink(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Sink {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("sink").clone()
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
