//! Rebuilds a layer's tar from its metadata and the files of the tree, hashing as it goes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::error::{LayerError, NO_ENTRY};
use super::meta::{MetaReader, Record, RAW_CHUNK};
use super::safepath::{self, Root};

struct Out<W: Write> {
    w: W,
    hash: Sha256,
    offset: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8], path: &[u8]) -> Result<(), LayerError> {
        self.w.write_all(b).map_err(|source| LayerError::Write {
            path: String::from_utf8_lossy(path).into_owned(),
            offset: self.offset,
            what: "exported tar",
            source,
        })?;
        self.hash.update(b);
        self.offset += b.len() as u64;
        Ok(())
    }
}

/// Writes the original tar of a layer to `out`: `meta` is what `extract` wrote, `tree` the
/// directory it extracted into (later layers' changes must not be in it). Returns the
/// DiffID of what was written, which must equal `expected`.
pub fn export(
    meta: impl Read,
    tree: &Path,
    out: impl Write,
    expected: &Digest,
) -> Result<Digest, LayerError> {
    let root = Root::open(tree).map_err(|source| LayerError::Fs {
        path: tree.display().to_string(),
        offset: 0,
        op: "open tree",
        source,
    })?;
    let mut reader = MetaReader::new(meta)?;
    let mut out = Out {
        w: out,
        hash: Sha256::new(),
        offset: 0,
    };
    let mut end = None;
    while let Some(rec) = reader.next_record()? {
        match rec {
            Record::Raw(b) => out.put(&b, NO_ENTRY.as_bytes())?,
            Record::Zeros(mut n) => {
                let zeros = [0u8; 4096];
                while n > 0 {
                    let k = n.min(zeros.len() as u64) as usize;
                    out.put(&zeros[..k], NO_ENTRY.as_bytes())?;
                    n -= k as u64;
                }
            }
            Record::File { path, size, sha256 } => {
                let f = open(&root, &path, size, out.offset)?;
                let sha = copy_ranges(&f, &[(0, size)], &path, &mut out)?;
                check_sha(&f, &path, size, sha, sha256, out.offset)?;
            }
            Record::Sparse {
                path,
                realsize,
                segments,
                sha256,
            } => {
                let f = open(&root, &path, realsize, out.offset)?;
                let sha = copy_ranges(&f, &segments, &path, &mut out)?;
                check_sha(&f, &path, realsize, sha, sha256, out.offset)?;
            }
            Record::End {
                tar_size,
                diff_id,
                entries: _,
            } => end = Some((tar_size, diff_id)),
        }
    }
    let actual = Digest(out.hash.finalize().into());
    let Some((tar_size, recorded)) = end else {
        return Err(LayerError::BadMeta {
            path: NO_ENTRY.to_string(),
            offset: reader.offset(),
            reason: "no End record",
        });
    };
    if actual != *expected || recorded != *expected || tar_size != out.offset {
        return Err(LayerError::DigestMismatch {
            path: NO_ENTRY.to_string(),
            offset: out.offset,
            expected: *expected,
            actual,
        });
    }
    out.w.flush().map_err(|source| LayerError::Write {
        path: NO_ENTRY.to_string(),
        offset: out.offset,
        what: "exported tar",
        source,
    })?;
    Ok(actual)
}

fn open(root: &Root, path: &[u8], size: u64, offset: u64) -> Result<File, LayerError> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    let f = safepath::open_file_in(root, path).map_err(|source| LayerError::Fs {
        path: shown(),
        offset,
        op: "open file for export",
        source,
    })?;
    let md = f.metadata().map_err(|source| LayerError::Fs {
        path: shown(),
        offset,
        op: "stat",
        source,
    })?;
    if !md.file_type().is_file() {
        return Err(LayerError::ContentChanged {
            path: shown(),
            offset,
            reason: "no longer a regular file",
        });
    }
    if md.size() != size {
        return Err(LayerError::SizeChanged {
            path: shown(),
            offset,
            expected: size,
            actual: md.size(),
        });
    }
    Ok(f)
}

fn copy_ranges<W: Write>(
    f: &File,
    ranges: &[(u64, u64)],
    path: &[u8],
    out: &mut Out<W>,
) -> Result<[u8; 32], LayerError> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; RAW_CHUNK];
    for &(off, len) in ranges {
        let mut done = 0u64;
        while done < len {
            let k = (len - done).min(RAW_CHUNK as u64) as usize;
            let at = out.offset;
            f.read_exact_at(&mut buf[..k], off + done)
                .map_err(|source| LayerError::Fs {
                    path: String::from_utf8_lossy(path).into_owned(),
                    offset: at,
                    op: "read file for export",
                    source,
                })?;
            sha.update(&buf[..k]);
            out.put(&buf[..k], path)?;
            done += k as u64;
        }
    }
    Ok(sha.finalize().into())
}

/// A size change during the copy shows as a short read above; a same-size rewrite only in
/// the content hash. Both are reported against the file, not the whole layer.
fn check_sha(
    f: &File,
    path: &[u8],
    size: u64,
    got: [u8; 32],
    want: [u8; 32],
    offset: u64,
) -> Result<(), LayerError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    if let Ok(md) = f.metadata() {
        if md.size() != size {
            return Err(LayerError::SizeChanged {
                path: shown,
                offset,
                expected: size,
                actual: md.size(),
            });
        }
    }
    if got != want {
        return Err(LayerError::ContentChanged {
            path: shown,
            offset,
            reason: "content hash differs from the one recorded at import",
        });
    }
    Ok(())
}
