//! Streaming import of a layer tar into a directory, writing the export metadata.
//!
//! One pass over the input: each header is parsed from its raw block, content goes straight
//! to its file, and everything that is not file content goes verbatim into the metadata.
//! Memory is bounded by the limits in `header` and `meta`, never by the layer.
//!
//! Content that will not be on disk at export (a file this layer overwrites or whites out
//! later) cannot be known when its record is written, so records go to an unnamed scratch
//! file first; before such a file is removed its bytes are copied to a second scratch file,
//! and the final metadata is the first scratch with those references replaced by the bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use super::decompress::{Compression, Decoder};
use super::digest::Digest;
use super::error::{LayerError, NO_ENTRY};
use super::header::{self, Header, Pax, TypeFlag, BLOCK};
use super::meta::{MetaWriter, Record, RAW_CHUNK};
use super::prefetch::Prefetched;
use super::safepath::{self, Root};
use super::whiteout::WhiteoutStyle;

mod apply;
mod spill;

/// How to materialize a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    pub whiteouts: WhiteoutStyle,
    /// Give entries the tar's uid/gid. Only takes effect when running as root.
    pub same_owner: bool,
}

/// What an import produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// sha256 of the whole uncompressed stream, trailer and trailing bytes included.
    pub diff_id: Digest,
    /// Length of the uncompressed stream.
    pub size_bytes: u64,
    /// Tar entries (extended headers not counted).
    pub entries: u64,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The uncompressed stream (read, decompressed and hashed ahead on the reader thread):
/// counts every byte read and hands file content to the per-file hashing.
struct TarIn<R: Read> {
    r: R,
    hash: super::hashpipe::HashPipe,
    offset: u64,
    format: Compression,
}

impl<R: Read> TarIn<R> {
    /// Reads until `buf` is full or EOF; returns the count.
    fn fill(&mut self, buf: &mut [u8], path: &[u8]) -> Result<usize, LayerError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    let (path, offset) = (lossy(path), self.offset + n as u64);
                    return Err(match self.format {
                        Compression::None => LayerError::Read {
                            path,
                            offset,
                            source,
                        },
                        f => LayerError::Decompress {
                            path,
                            offset,
                            format: f.name(),
                            source,
                        },
                    });
                }
            }
        }
        self.hash.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }

    fn exact(
        &mut self,
        buf: &mut [u8],
        path: &[u8],
        reason: &'static str,
    ) -> Result<(), LayerError> {
        let at = self.offset;
        if self.fill(buf, path)? != buf.len() {
            return Err(LayerError::Truncated {
                path: lossy(path),
                offset: at,
                reason,
            });
        }
        Ok(())
    }
}

/// One tar entry with its extended headers applied.
struct Entry {
    /// The name as the tar spells it (for errors).
    name: Vec<u8>,
    rel: Vec<u8>,
    link: Vec<u8>,
    hdr: Header,
    size: u64,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: Option<(Vec<u8>, u64)>,
    /// Offset of the entry's first header (extended headers included).
    offset: u64,
}

/// What a tracked file's content is, to copy it before the file is removed.
enum Content {
    Plain(u64),
    Sparse(Vec<(u64, u64)>),
}

struct Ex<'o, R: Read> {
    tin: TarIn<R>,
    root: Root,
    opts: &'o ExtractOptions,
    is_root: bool,
    raw: Vec<u8>,
    spill: MetaWriter<BufWriter<File>>,
    content: File,
    content_len: u64,
    /// Canonical name -> (file record index, content) for content of this layer on disk.
    tracked: BTreeMap<Vec<u8>, (u64, Content)>,
    /// File record index -> (offset, len) of its bytes in `content`.
    inlined: HashMap<u64, (u64, u64)>,
    touched: HashSet<Vec<u8>>,
    dirs: Vec<(Vec<u8>, u32, (i64, u32))>,
    dir_index: HashMap<Vec<u8>, usize>,
    next_file: u64,
    entries: u64,
    /// sha256 of each file record's content, by record index (known once the stream ends).
    file_digests: Vec<[u8; 32]>,
    /// Canonical names of directories this import made (empty when it began), so a name in
    /// one that `touched` lacks cannot exist: no `lstat` before creating it. Cleared by
    /// anything that removes (a replaced entry, a whiteout).
    fresh_dirs: HashSet<Vec<u8>>,
    /// The copy buffer of file data and raw spans, reused across entries.
    io_buf: Vec<u8>,
}

/// Imports a layer (plain, gzip or zstd tar) into `target`, writing the export metadata to
/// `meta`. `target` must exist; it may hold the parent's tree. On error the target may hold
/// part of the layer and must be discarded; nothing outside it is created or changed.
pub fn extract<R: Read + Send>(
    input: R,
    target: &Path,
    opts: &ExtractOptions,
    meta: &mut impl Write,
) -> Result<Extracted, LayerError> {
    let fs_err = |op, source| LayerError::Fs {
        path: target.display().to_string(),
        offset: 0,
        op,
        source,
    };
    let root = Root::open(target).map_err(|e| fs_err("open target", e))?;
    let spill_file = safepath::scratch_file(&root).map_err(|e| fs_err("create scratch", e))?;
    let content = safepath::scratch_file(&root).map_err(|e| fs_err("create scratch", e))?;
    let r = Decoder::new(input).map_err(|source| LayerError::Read {
        path: NO_ENTRY.to_string(),
        offset: 0,
        source,
    })?;
    let format = r.format();
    // The reader thread lives in this scope: it borrows nothing past the import, and an import
    // that fails hangs up on it, so the scope's join waits only for its current read.
    std::thread::scope(|scope| {
        let r = Prefetched::start(scope, r).map_err(|e| fs_err("start the reader thread", e))?;
        let ex = Ex {
            tin: TarIn {
                r,
                hash: super::hashpipe::HashPipe::new(),
                offset: 0,
                format,
            },
            root,
            opts,
            is_root: nix::unistd::geteuid().is_root(),
            raw: Vec::new(),
            spill: MetaWriter::new(BufWriter::new(spill_file))?,
            content,
            content_len: 0,
            tracked: BTreeMap::new(),
            inlined: HashMap::new(),
            touched: HashSet::new(),
            dirs: Vec::new(),
            dir_index: HashMap::new(),
            next_file: 0,
            entries: 0,
            file_digests: Vec::new(),
            fresh_dirs: HashSet::new(),
            io_buf: vec![0u8; RAW_CHUNK],
        };
        import(ex, target, meta)
    })
}

fn import(
    mut ex: Ex<'_, Prefetched<'_>>,
    target: &Path,
    meta: &mut impl Write,
) -> Result<Extracted, LayerError> {
    let fs_err = |op, source| LayerError::Fs {
        path: target.display().to_string(),
        offset: 0,
        op,
        source,
    };
    // A target with nothing in it (a base layer's, or an overlay upper directory) is fresh:
    // the scratch files are unnamed, so they do not count.
    if std::fs::read_dir(target)
        .map_err(|e| fs_err("read target", e))?
        .next()
        .is_none()
    {
        ex.fresh_dirs.insert(Vec::new());
    }
    ex.run()?;
    ex.finish_dirs()?;
    ex.flush_raw()?;
    let failed = |what: &str| LayerError::Read {
        path: NO_ENTRY.to_string(),
        offset: ex.tin.offset,
        source: std::io::Error::other(format!("the {what} thread failed")),
    };
    let file_digests = ex
        .tin
        .hash
        .finalize()
        .ok_or_else(|| failed("file hashing"))?;
    // The DiffID is the reader's hash of every byte it delivered; the import read them all
    // (it only succeeds at EOF), and the counts agreeing says so.
    let (diff_id, read_bytes) = ex.tin.r.finish().ok_or_else(|| failed("reader"))?;
    if read_bytes != ex.tin.offset {
        return Err(failed("reader"));
    }
    let diff_id = Digest(diff_id);
    ex.file_digests = file_digests;
    let done = Extracted {
        diff_id,
        size_bytes: ex.tin.offset,
        entries: ex.entries,
    };
    ex.spill.write(&Record::End {
        tar_size: done.size_bytes,
        diff_id: done.diff_id,
        entries: done.entries,
    })?;
    ex.spill.flush()?;
    ex.assemble(meta)?;
    Ok(done)
}

impl<R: Read> Ex<'_, R> {
    fn push_raw(&mut self, b: &[u8]) -> Result<(), LayerError> {
        self.raw.extend_from_slice(b);
        if self.raw.len() >= RAW_CHUNK {
            self.flush_raw()?;
        }
        Ok(())
    }

    fn flush_raw(&mut self) -> Result<(), LayerError> {
        if !self.raw.is_empty() {
            let raw = std::mem::take(&mut self.raw);
            self.spill.write_raw(&raw)?;
        }
        Ok(())
    }

    /// Copies `n` bytes of the stream into the metadata verbatim.
    fn raw_data(&mut self, n: u64, path: &[u8], reason: &'static str) -> Result<(), LayerError> {
        let mut buf = std::mem::take(&mut self.io_buf);
        let done = self.raw_data_with(&mut buf, n, path, reason);
        self.io_buf = buf;
        done
    }

    fn raw_data_with(
        &mut self,
        buf: &mut Vec<u8>,
        n: u64,
        path: &[u8],
        reason: &'static str,
    ) -> Result<(), LayerError> {
        buf.resize(RAW_CHUNK, 0);
        let mut left = n;
        while left > 0 {
            let k = left.min(RAW_CHUNK as u64) as usize;
            self.tin.exact(&mut buf[..k], path, reason)?;
            self.push_raw(&buf[..k])?;
            left -= k as u64;
        }
        Ok(())
    }

    /// Reads a bounded extended-header payload and its padding (both recorded raw).
    fn ext_data(
        &mut self,
        size: u64,
        max: u64,
        what: &'static str,
        name: &[u8],
    ) -> Result<Vec<u8>, LayerError> {
        if size > max {
            return Err(LayerError::TooLarge {
                path: lossy(name),
                offset: self.tin.offset,
                what,
                len: size,
                max,
            });
        }
        let mut data = vec![0u8; size as usize];
        self.tin
            .exact(&mut data, name, "inside an extended header")?;
        self.push_raw(&data)?;
        self.raw_data(header::padding(size), name, "inside padding")?;
        Ok(data)
    }

    fn run(&mut self) -> Result<(), LayerError> {
        let mut global = Pax::default();
        let mut pax = Pax::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut group_start: Option<u64> = None;
        loop {
            let at = self.tin.offset;
            let mut block = [0u8; BLOCK as usize];
            let n = self.tin.fill(&mut block, NO_ENTRY.as_bytes())?;
            if n == 0 && group_start.is_none() {
                // EOF on a header boundary without the zero blocks: accepted, as Go's
                // archive/tar (and so Docker) does.
                return Ok(());
            }
            let shown = pax
                .path
                .clone()
                .or_else(|| long_name.clone())
                .or_else(|| header::parse_header(&block).ok().map(|h| h.name))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| NO_ENTRY.as_bytes().to_vec());
            if n < block.len() {
                return Err(LayerError::Truncated {
                    path: lossy(&shown),
                    offset: at,
                    reason: "inside a header block",
                });
            }
            if header::is_zero_block(&block) {
                if group_start.is_some() {
                    return Err(LayerError::BadHeader {
                        path: lossy(&shown),
                        offset: at,
                        reason: "end of archive right after an extended header",
                    });
                }
                self.push_raw(&block)?;
                return self.trailer();
            }
            if let Err((stored, computed)) = header::verify_checksum(&block) {
                return Err(LayerError::BadChecksum {
                    path: lossy(&shown),
                    offset: at,
                    stored,
                    computed,
                });
            }
            let hdr = header::parse_header(&block).map_err(|reason| LayerError::BadHeader {
                path: lossy(&shown),
                offset: at,
                reason,
            })?;
            self.push_raw(&block)?;
            let start = *group_start.get_or_insert(at);
            let bad = |reason| LayerError::BadHeader {
                path: lossy(&shown),
                offset: at,
                reason,
            };
            match hdr.flag {
                TypeFlag::PaxLocal => {
                    let d = self.ext_data(hdr.size, header::MAX_PAX, "PAX header", &shown)?;
                    header::parse_pax(&d, &mut pax).map_err(bad)?;
                }
                TypeFlag::PaxGlobal => {
                    let d =
                        self.ext_data(hdr.size, header::MAX_PAX, "global PAX header", &shown)?;
                    header::parse_pax(&d, &mut global).map_err(bad)?;
                    header::parse_pax(&d, &mut pax).map_err(bad)?;
                    // A global header is an entry of its own; nothing follows it for it.
                    group_start = None;
                }
                TypeFlag::GnuLongName | TypeFlag::GnuLongLink => {
                    let d =
                        self.ext_data(hdr.size, header::MAX_LONG_NAME, "GNU long name", &shown)?;
                    let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
                    let v = d[..end].to_vec();
                    if hdr.flag == TypeFlag::GnuLongName {
                        long_name = Some(v);
                    } else {
                        long_link = Some(v);
                    }
                }
                TypeFlag::GnuOldSparse => {
                    return Err(LayerError::Unsupported {
                        path: lossy(&shown),
                        offset: start,
                        reason: "old GNU sparse entries (type 'S')",
                    })
                }
                TypeFlag::Other(_) => {
                    return Err(LayerError::Unsupported {
                        path: lossy(&shown),
                        offset: start,
                        reason: "unknown entry type",
                    })
                }
                _ => {
                    let cur = std::mem::replace(&mut pax, global.clone());
                    let e = self.entry_of(hdr, cur, long_name.take(), long_link.take(), start)?;
                    group_start = None;
                    self.entries += 1;
                    self.entry(e)?;
                }
            }
        }
    }

    fn entry_of(
        &self,
        hdr: Header,
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        offset: u64,
    ) -> Result<Entry, LayerError> {
        let mut hdr = hdr;
        let mut name = pax.path.or(long_name).unwrap_or_else(|| hdr.name.clone());
        // Pre-POSIX tars mark directories as regular entries whose name ends in '/'.
        if hdr.flag == TypeFlag::Regular && name.ends_with(b"/") && pax.sparse_major.is_none() {
            hdr.flag = TypeFlag::Dir;
        }
        let link = pax
            .linkpath
            .or(long_link)
            .unwrap_or_else(|| hdr.linkname.clone());
        let unsupported = |name: &[u8], reason| LayerError::Unsupported {
            path: lossy(name),
            offset,
            reason,
        };
        if pax.old_sparse {
            return Err(unsupported(&name, "GNU sparse 0.x PAX entries"));
        }
        let sparse = match (pax.sparse_major, pax.sparse_minor) {
            (None, None) => None,
            (Some(1), Some(0)) if hdr.flag == TypeFlag::Regular => {
                let real = pax.sparse.name.ok_or_else(|| LayerError::BadHeader {
                    path: lossy(&name),
                    offset,
                    reason: "sparse entry without GNU.sparse.name",
                })?;
                let realsize = pax.sparse.realsize.ok_or_else(|| LayerError::BadHeader {
                    path: lossy(&name),
                    offset,
                    reason: "sparse entry without GNU.sparse.realsize",
                })?;
                name = real.clone();
                Some((real, realsize))
            }
            _ => return Err(unsupported(&name, "GNU sparse format other than 1.0")),
        };
        let rel = safepath::normalize(&name).map_err(|reason| LayerError::UnsafePath {
            path: lossy(&name),
            offset,
            reason,
        })?;
        Ok(Entry {
            rel,
            link,
            // Links, devices, fifos and directories carry no data, whatever `size` says:
            // Go's archive/tar (Docker, containerd, tar-split) reads them that way, and a
            // layer must mean the same thing here as there.
            size: if header_only(hdr.flag) {
                0
            } else {
                pax.size.unwrap_or(hdr.size)
            },
            uid: pax.uid.unwrap_or(hdr.uid),
            gid: pax.gid.unwrap_or(hdr.gid),
            mtime: pax.mtime.unwrap_or((hdr.mtime, 0)),
            xattrs: pax.xattrs,
            sparse,
            offset,
            hdr,
            name,
        })
    }

    /// After the first zero block everything to EOF is kept verbatim and not interpreted:
    /// the second zero block, tar's record padding, and whatever a writer appended.
    fn trailer(&mut self) -> Result<(), LayerError> {
        let mut buf = vec![0u8; RAW_CHUNK];
        loop {
            let n = self.tin.fill(&mut buf, NO_ENTRY.as_bytes())?;
            if n == 0 {
                return Ok(());
            }
            self.push_raw(&buf[..n])?;
        }
    }

    fn fs(&self, e: &Entry, op: &'static str) -> impl Fn(std::io::Error) -> LayerError + '_ {
        let path = lossy(&e.name);
        let offset = e.offset;
        move |source| LayerError::Fs {
            path: path.clone(),
            offset,
            op,
            source,
        }
    }
}

fn header_only(flag: TypeFlag) -> bool {
    matches!(
        flag,
        TypeFlag::Hardlink
            | TypeFlag::Symlink
            | TypeFlag::Char
            | TypeFlag::Block
            | TypeFlag::Dir
            | TypeFlag::Fifo
    )
}
