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
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, futimens, mkdirat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, mkfifoat, symlinkat, Gid, Uid};
use sha2::{Digest as _, Sha256};

use super::decompress::{Compression, Decoder};
use super::digest::Digest;
use super::error::{LayerError, NO_ENTRY};
use super::header::{self, Header, Pax, TypeFlag, BLOCK};
use super::meta::{MetaReader, MetaWriter, Record, RAW_CHUNK};
use super::safepath::{self, errno_io, lstat_at, os, remove_all_at, Leaf, Root};
use super::whiteout::{self, Whiteout, WhiteoutStyle};

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

/// The uncompressed stream: counts and hashes every byte read.
struct TarIn<R: Read> {
    r: Decoder<R>,
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
}

/// Imports a layer (plain, gzip or zstd tar) into `target`, writing the export metadata to
/// `meta`. `target` must exist; it may hold the parent's tree. On error the target may hold
/// part of the layer and must be discarded; nothing outside it is created or changed.
pub fn extract<R: Read>(
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
    let mut ex = Ex {
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
    };
    ex.run()?;
    ex.finish_dirs()?;
    ex.flush_raw()?;
    let hash = std::mem::replace(&mut ex.tin.hash, super::hashpipe::HashPipe::new());
    let diff_id = Digest(hash.finalize().ok_or_else(|| LayerError::Read {
        path: NO_ENTRY.to_string(),
        offset: ex.tin.offset,
        source: std::io::Error::other("the DiffID hashing thread failed"),
    })?);
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
        let mut left = n;
        let mut buf = vec![0u8; RAW_CHUNK];
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
        let mut name = pax.path.or(long_name).unwrap_or_else(|| hdr.name.clone());
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
            size: pax.size.unwrap_or(hdr.size),
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

    fn entry(&mut self, e: Entry) -> Result<(), LayerError> {
        match whiteout::classify(&e.rel) {
            Err(reason) => {
                return Err(LayerError::UnsafePath {
                    path: lossy(&e.name),
                    offset: e.offset,
                    reason,
                })
            }
            Ok(Whiteout::No) => {}
            Ok(w) => {
                self.whiteout(&e, w)?;
                return self.skip_data(&e);
            }
        }
        if e.rel.is_empty() {
            if e.hdr.flag != TypeFlag::Dir {
                return Err(LayerError::UnsafePath {
                    path: lossy(&e.name),
                    offset: e.offset,
                    reason: "a non-directory names the root",
                });
            }
            self.chown_at(&e, self.root.fd(), b".")?;
            self.defer_dir(Vec::new(), &e);
            return self.skip_data(&e);
        }
        match e.hdr.flag {
            TypeFlag::Regular => self.regular(e),
            TypeFlag::Hardlink => {
                self.hardlink(&e)?;
                self.skip_data(&e)
            }
            TypeFlag::Dir => {
                let leaf = self.prepare(&e, true)?;
                match mkdirat(
                    Some(leaf.dirfd()),
                    os(&leaf.name),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(er) => return Err(self.fs(&e, "mkdir")(errno_io(er))),
                }
                self.chown_at(&e, leaf.dirfd(), &leaf.name)?;
                self.xattrs_at(&e, &leaf)?;
                self.defer_dir(leaf.canonical, &e);
                self.skip_data(&e)
            }
            TypeFlag::Symlink => {
                let leaf = self.prepare(&e, false)?;
                symlinkat(os(&e.link), Some(leaf.dirfd()), os(&leaf.name))
                    .map_err(|er| self.fs(&e, "symlink")(errno_io(er)))?;
                self.chown_at(&e, leaf.dirfd(), &leaf.name)?;
                self.xattrs_at(&e, &leaf)?;
                self.times_at(&e, &leaf)?;
                self.skip_data(&e)
            }
            TypeFlag::Fifo | TypeFlag::Char | TypeFlag::Block => {
                let (kind, dev) = match e.hdr.flag {
                    TypeFlag::Fifo => (SFlag::S_IFIFO, 0),
                    TypeFlag::Char => (
                        SFlag::S_IFCHR,
                        nix::sys::stat::makedev(e.hdr.devmajor, e.hdr.devminor),
                    ),
                    _ => (
                        SFlag::S_IFBLK,
                        nix::sys::stat::makedev(e.hdr.devmajor, e.hdr.devminor),
                    ),
                };
                if kind != SFlag::S_IFIFO && !self.is_root {
                    return Err(LayerError::NotPermitted {
                        path: lossy(&e.name),
                        offset: e.offset,
                        reason: "device nodes need root",
                    });
                }
                let leaf = self.prepare(&e, false)?;
                let r = if kind == SFlag::S_IFIFO {
                    mkfifoat(
                        Some(leaf.dirfd()),
                        os(&leaf.name),
                        Mode::from_bits_truncate(0o600),
                    )
                } else {
                    mknodat(
                        Some(leaf.dirfd()),
                        os(&leaf.name),
                        kind,
                        Mode::from_bits_truncate(0o600),
                        dev,
                    )
                };
                r.map_err(|er| self.fs(&e, "mknod")(errno_io(er)))?;
                self.chown_at(&e, leaf.dirfd(), &leaf.name)?;
                self.xattrs_at(&e, &leaf)?;
                // The leaf was just created by us and is not a symlink, so following is safe.
                fchmodat(
                    Some(leaf.dirfd()),
                    os(&leaf.name),
                    Mode::from_bits_truncate(e.hdr.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|er| self.fs(&e, "chmod")(errno_io(er)))?;
                self.times_at(&e, &leaf)?;
                self.skip_data(&e)
            }
            _ => Err(LayerError::Unsupported {
                path: lossy(&e.name),
                offset: e.offset,
                reason: "entry type",
            }),
        }
    }

    /// Data of an entry that is not written to a file (tar allows it on any type) is kept
    /// verbatim in the metadata, with its padding.
    fn skip_data(&mut self, e: &Entry) -> Result<(), LayerError> {
        self.raw_data(e.size, &e.name, "inside entry data")?;
        self.raw_data(header::padding(e.size), &e.name, "inside padding")
    }

    fn defer_dir(&mut self, canonical: Vec<u8>, e: &Entry) {
        let v = (canonical.clone(), e.hdr.mode, e.mtime);
        match self.dir_index.get(&canonical) {
            Some(&i) => self.dirs[i] = v,
            None => {
                self.dir_index.insert(canonical, self.dirs.len());
                self.dirs.push(v);
            }
        }
    }

    fn mark_touched(&mut self, canonical: &[u8]) {
        for (i, &c) in canonical.iter().enumerate() {
            if c == b'/' {
                self.touched.insert(canonical[..i].to_vec());
            }
        }
        self.touched.insert(canonical.to_vec());
    }

    /// Resolves the entry's parent (creating it), and clears the way: an existing entry is
    /// removed unless both it and the new one are directories.
    fn prepare(&mut self, e: &Entry, new_is_dir: bool) -> Result<Leaf, LayerError> {
        let leaf = self
            .root
            .leaf(&e.rel, true)
            .map_err(self.fs(e, "resolve parent directory"))?;
        let existing = lstat_at(leaf.dirfd(), &leaf.name).map_err(self.fs(e, "lstat"))?;
        if let Some(st) = existing {
            if !(new_is_dir && safepath::is_dir(&st)) {
                self.before_remove(&leaf.canonical, e)?;
                remove_all_at(leaf.dirfd(), &leaf.name).map_err(self.fs(e, "remove existing"))?;
            }
        }
        self.mark_touched(&leaf.canonical);
        Ok(leaf)
    }

    /// Copies this layer's content under `canonical` to the scratch before it is removed,
    /// so the metadata can inline it.
    fn before_remove(&mut self, canonical: &[u8], e: &Entry) -> Result<(), LayerError> {
        let hit: Vec<Vec<u8>> = self
            .tracked
            .range(canonical.to_vec()..)
            .take_while(|(k, _)| k.starts_with(canonical))
            .filter(|(k, _)| k.len() == canonical.len() || k[canonical.len()] == b'/')
            .map(|(k, _)| k.clone())
            .collect();
        for k in hit {
            let Some((idx, content)) = self.tracked.remove(&k) else {
                continue;
            };
            let f = safepath::open_file_in(&self.root, &k)
                .map_err(self.fs(e, "open overwritten file"))?;
            let ranges = match content {
                Content::Plain(n) => vec![(0, n)],
                Content::Sparse(s) => s,
            };
            let start = self.content_len;
            let mut buf = vec![0u8; RAW_CHUNK];
            for (off, len) in ranges {
                let mut done = 0;
                while done < len {
                    let k = (len - done).min(RAW_CHUNK as u64) as usize;
                    f.read_exact_at(&mut buf[..k], off + done)
                        .map_err(self.fs(e, "read overwritten file"))?;
                    self.content
                        .write_all_at(&buf[..k], self.content_len)
                        .map_err(self.fs(e, "write scratch"))?;
                    self.content_len += k as u64;
                    done += k as u64;
                }
            }
            self.inlined.insert(idx, (start, self.content_len - start));
        }
        Ok(())
    }

    fn regular(&mut self, e: Entry) -> Result<(), LayerError> {
        let leaf = self.prepare(&e, false)?;
        let fd = openat(
            Some(leaf.dirfd()),
            os(&leaf.name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|er| self.fs(&e, "create file")(errno_io(er)))?;
        // SAFETY: fd was just opened and is owned by nobody else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut sha = Sha256::new();
        let record = match &e.sparse {
            None => {
                self.copy_into(&mut file, &mut sha, e.size, &e)?;
                self.tracked.insert(
                    leaf.canonical.clone(),
                    (self.next_file, Content::Plain(e.size)),
                );
                Record::File {
                    path: leaf.canonical.clone(),
                    size: e.size,
                    sha256: sha.finalize().into(),
                }
            }
            Some((_, realsize)) => {
                let segments = self.sparse_map(&e, *realsize)?;
                for &(off, len) in &segments {
                    file.seek(SeekFrom::Start(off))
                        .map_err(self.fs(&e, "seek"))?;
                    self.copy_into(&mut file, &mut sha, len, &e)?;
                }
                file.set_len(*realsize).map_err(self.fs(&e, "truncate"))?;
                self.tracked.insert(
                    leaf.canonical.clone(),
                    (self.next_file, Content::Sparse(segments.clone())),
                );
                Record::Sparse {
                    path: leaf.canonical.clone(),
                    realsize: *realsize,
                    segments,
                    sha256: sha.finalize().into(),
                }
            }
        };
        self.flush_raw()?;
        self.spill.write(&record)?;
        self.next_file += 1;
        if self.opts.same_owner && self.is_root {
            let (u, g) = self.ids(&e)?;
            fchown(file.as_raw_fd(), Some(u), Some(g))
                .map_err(|er| self.fs(&e, "chown")(errno_io(er)))?;
        }
        for (k, v) in &e.xattrs {
            xattr::FileExt::set_xattr(&file, os(k), v).map_err(self.fs(&e, "setxattr"))?;
        }
        fchmod(file.as_raw_fd(), Mode::from_bits_truncate(e.hdr.mode))
            .map_err(|er| self.fs(&e, "chmod")(errno_io(er)))?;
        let (a, m) = times(&e);
        futimens(file.as_raw_fd(), &a, &m).map_err(|er| self.fs(&e, "set times")(errno_io(er)))?;
        self.raw_data(header::padding(e.size), &e.name, "inside padding")
    }

    fn copy_into(
        &mut self,
        file: &mut File,
        sha: &mut Sha256,
        n: u64,
        e: &Entry,
    ) -> Result<(), LayerError> {
        let mut left = n;
        let mut buf = vec![0u8; RAW_CHUNK];
        while left > 0 {
            let k = left.min(RAW_CHUNK as u64) as usize;
            self.tin.exact(&mut buf[..k], &e.name, "inside file data")?;
            sha.update(&buf[..k]);
            file.write_all(&buf[..k])
                .map_err(self.fs(e, "write file"))?;
            left -= k as u64;
        }
        Ok(())
    }

    /// Reads the GNU sparse 1.0 map (decimal lines, padded to a block) at the start of the
    /// entry's data, recording it raw; returns the checked segments.
    fn sparse_map(&mut self, e: &Entry, realsize: u64) -> Result<Vec<(u64, u64)>, LayerError> {
        let max_blocks = (header::MAX_SPARSE_SEGMENTS * 2 + 1) * 21 / BLOCK + 1;
        let bad = |reason| LayerError::BadHeader {
            path: lossy(&e.name),
            offset: e.offset,
            reason,
        };
        let mut nums: Vec<u64> = Vec::new();
        let mut cur: Option<u64> = None;
        let mut want: Option<u64> = None;
        let mut blocks = 0u64;
        let mut block = [0u8; BLOCK as usize];
        'blocks: loop {
            if blocks >= max_blocks || (blocks + 1) * BLOCK > e.size {
                return Err(bad("sparse map larger than its bound or its entry"));
            }
            self.tin
                .exact(&mut block, &e.name, "inside the sparse map")?;
            self.push_raw(&block)?;
            blocks += 1;
            for &c in &block {
                match c {
                    b'0'..=b'9' => {
                        let v = cur.unwrap_or(0);
                        cur = Some(
                            v.checked_mul(10)
                                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                                .ok_or_else(|| bad("sparse map number overflows"))?,
                        );
                    }
                    b'\n' => {
                        nums.push(
                            cur.take()
                                .ok_or_else(|| bad("empty line in the sparse map"))?,
                        );
                        if want.is_none() {
                            if nums[0] > header::MAX_SPARSE_SEGMENTS {
                                return Err(LayerError::TooLarge {
                                    path: lossy(&e.name),
                                    offset: e.offset,
                                    what: "sparse map",
                                    len: nums[0],
                                    max: header::MAX_SPARSE_SEGMENTS,
                                });
                            }
                            want = Some(1 + 2 * nums[0]);
                        }
                        if Some(nums.len() as u64) == want {
                            break 'blocks;
                        }
                    }
                    _ => return Err(bad("bad byte in the sparse map")),
                }
            }
        }
        let segments: Vec<(u64, u64)> = nums[1..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &segments {
            let stop = off
                .checked_add(len)
                .ok_or_else(|| bad("sparse segment overflows"))?;
            if off < end || stop > realsize {
                return Err(bad("sparse segments overlap or exceed the real size"));
            }
            end = stop;
            total += len;
        }
        if total + blocks * BLOCK != e.size {
            return Err(bad("sparse segments do not add up to the entry size"));
        }
        Ok(segments)
    }

    fn hardlink(&mut self, e: &Entry) -> Result<(), LayerError> {
        let bad = |reason| LayerError::BadHardlink {
            path: lossy(&e.name),
            offset: e.offset,
            target: lossy(&e.link),
            reason,
        };
        let target_rel =
            safepath::normalize(&e.link).map_err(|_| bad("target escapes the layer"))?;
        if target_rel.is_empty() {
            return Err(bad("empty target"));
        }
        let t = match self.root.leaf(&target_rel, false) {
            Ok(t) => t,
            Err(er) if matches!(er.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(bad("target does not exist"))
            }
            Err(er) => return Err(self.fs(e, "resolve link target")(er)),
        };
        match lstat_at(t.dirfd(), &t.name).map_err(self.fs(e, "lstat link target"))? {
            None => return Err(bad("target does not exist")),
            Some(st) if safepath::is_dir(&st) => return Err(bad("target is a directory")),
            Some(_) => {}
        }
        let leaf = self
            .root
            .leaf(&e.rel, true)
            .map_err(self.fs(e, "resolve parent directory"))?;
        if leaf.canonical == t.canonical {
            // A link to itself: the file is already what the entry asks for.
            return Ok(());
        }
        drop(leaf);
        let leaf = self.prepare(e, false)?;
        linkat(
            Some(t.dirfd()),
            os(&t.name),
            Some(leaf.dirfd()),
            os(&leaf.name),
            AtFlags::empty(),
        )
        .map_err(|er| match er {
            Errno::ENOENT => bad("target does not exist"),
            er => self.fs(e, "link")(errno_io(er)),
        })
    }

    fn ids(&self, e: &Entry) -> Result<(Uid, Gid), LayerError> {
        let conv = |v: u64| {
            u32::try_from(v).map_err(|_| LayerError::BadHeader {
                path: lossy(&e.name),
                offset: e.offset,
                reason: "uid or gid above 2^32",
            })
        };
        Ok((Uid::from_raw(conv(e.uid)?), Gid::from_raw(conv(e.gid)?)))
    }

    fn chown_at(&self, e: &Entry, dirfd: i32, name: &[u8]) -> Result<(), LayerError> {
        if !(self.opts.same_owner && self.is_root) {
            return Ok(());
        }
        let (u, g) = self.ids(e)?;
        let flags = if name == b"." {
            AtFlags::empty()
        } else {
            AtFlags::AT_SYMLINK_NOFOLLOW
        };
        fchownat(Some(dirfd), os(name), Some(u), Some(g), flags)
            .map_err(|er| self.fs(e, "chown")(errno_io(er)))
    }

    fn xattrs_at(&self, e: &Entry, leaf: &Leaf) -> Result<(), LayerError> {
        if e.xattrs.is_empty() {
            return Ok(());
        }
        let p = leaf.proc_path();
        for (k, v) in &e.xattrs {
            xattr::set(&p, os(k), v).map_err(self.fs(e, "setxattr"))?;
        }
        Ok(())
    }

    fn times_at(&self, e: &Entry, leaf: &Leaf) -> Result<(), LayerError> {
        let (a, m) = times(e);
        utimensat(
            Some(leaf.dirfd()),
            os(&leaf.name),
            &a,
            &m,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|er| self.fs(e, "set times")(errno_io(er)))
    }

    fn whiteout(&mut self, e: &Entry, w: Whiteout<'_>) -> Result<(), LayerError> {
        let overlay = self.opts.whiteouts == WhiteoutStyle::OverlayCharDevice;
        if overlay && !self.is_root && !matches!(w, Whiteout::Ignored) {
            return Err(LayerError::NotPermitted {
                path: lossy(&e.name),
                offset: e.offset,
                reason: "overlay whiteouts need root",
            });
        }
        match w {
            Whiteout::No | Whiteout::Ignored => Ok(()),
            Whiteout::Remove { dir, name } => {
                let mut rel = dir.to_vec();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name);
                if overlay {
                    let leaf = self
                        .root
                        .leaf(&rel, true)
                        .map_err(self.fs(e, "resolve parent directory"))?;
                    self.before_remove(&leaf.canonical, e)?;
                    remove_all_at(leaf.dirfd(), &leaf.name)
                        .map_err(self.fs(e, "remove whited-out path"))?;
                    self.mark_touched(&leaf.canonical);
                    mknodat(
                        Some(leaf.dirfd()),
                        os(&leaf.name),
                        SFlag::S_IFCHR,
                        Mode::empty(),
                        nix::sys::stat::makedev(0, 0),
                    )
                    .map_err(|er| self.fs(e, "mknod whiteout")(errno_io(er)))?;
                    return self.chown_at(e, leaf.dirfd(), &leaf.name);
                }
                let leaf = match self.root.leaf(&rel, false) {
                    Ok(l) => l,
                    Err(er) if matches!(er.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                        return Ok(())
                    }
                    Err(er) => return Err(self.fs(e, "resolve parent directory")(er)),
                };
                self.before_remove(&leaf.canonical, e)?;
                remove_all_at(leaf.dirfd(), &leaf.name)
                    .map_err(self.fs(e, "remove whited-out path"))?;
                Ok(())
            }
            Whiteout::Opaque { dir } => {
                let canonical = if dir.is_empty() {
                    Vec::new()
                } else {
                    let leaf = self
                        .root
                        .leaf(dir, overlay)
                        .map_err(self.fs(e, "resolve opaque directory"));
                    let leaf = match leaf {
                        Ok(l) => l,
                        Err(_) if !overlay => return Ok(()),
                        Err(er) => return Err(er),
                    };
                    if overlay {
                        match mkdirat(
                            Some(leaf.dirfd()),
                            os(&leaf.name),
                            Mode::from_bits_truncate(0o755),
                        ) {
                            Ok(()) | Err(Errno::EEXIST) => {}
                            Err(er) => return Err(self.fs(e, "mkdir")(errno_io(er))),
                        }
                    }
                    leaf.canonical
                };
                if overlay {
                    self.mark_touched(&canonical);
                    // A readable descriptor, not O_PATH: fsetxattr refuses O_PATH descriptors.
                    let dir = self
                        .root
                        .open_dir(&canonical)
                        .map_err(self.fs(e, "open opaque directory"))?;
                    let fd = openat(
                        Some(dir.as_raw_fd()),
                        ".",
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|er| self.fs(e, "open opaque directory")(errno_io(er)))?;
                    // SAFETY: fd was just opened and is owned by nobody else.
                    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                    return xattr::FileExt::set_xattr(&f, whiteout::OVERLAY_OPAQUE_XATTR, b"y")
                        .map_err(self.fs(e, "setxattr"));
                }
                whiteout::clear_opaque(&self.root, &canonical, &self.touched)
                    .map_err(self.fs(e, "clear opaque directory"))
            }
        }
    }

    /// Directory modes and times are applied last, children first: creating entries inside
    /// a directory changes its mtime, and a read-only mode would stop a non-root import.
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        for (canonical, mode, mtime) in self.dirs.iter().rev() {
            let err = |op, source| LayerError::Fs {
                path: lossy(canonical),
                offset: 0,
                op,
                source,
            };
            let fd = if canonical.is_empty() {
                openat(
                    Some(self.root.fd()),
                    ".",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            } else {
                let leaf = match self.root.leaf(canonical, false) {
                    Ok(l) => l,
                    Err(_) => continue,
                };
                openat(
                    Some(leaf.dirfd()),
                    os(&leaf.name),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            };
            // Removed or replaced by a non-directory later in the layer: nothing to do.
            let Ok(fd) = fd else { continue };
            // SAFETY: fd was just opened and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(*mode))
                .map_err(|e| err("chmod", errno_io(e)))?;
            let t = TimeSpec::new(mtime.0, i64::from(mtime.1));
            futimens(fd.as_raw_fd(), &t, &t).map_err(|e| err("set times", errno_io(e)))?;
        }
        Ok(())
    }

    /// Writes the final metadata: the scratch records (End included), with references to
    /// content that is no longer on disk replaced by that content.
    fn assemble(self, meta: &mut impl Write) -> Result<(), LayerError> {
        let mut spill = self
            .spill
            .into_inner()
            .into_inner()
            .map_err(|e| LayerError::Write {
                path: NO_ENTRY.to_string(),
                offset: 0,
                what: "metadata scratch",
                source: e.into_error(),
            })?;
        spill
            .seek(SeekFrom::Start(0))
            .map_err(|source| LayerError::Read {
                path: NO_ENTRY.to_string(),
                offset: 0,
                source,
            })?;
        let mut reader = MetaReader::new(BufReader::new(spill))?;
        let mut out = MetaWriter::new(meta)?;
        let mut idx = 0u64;
        let mut buf = vec![0u8; RAW_CHUNK];
        while let Some(rec) = reader.next_record()? {
            match &rec {
                Record::File { .. } | Record::Sparse { .. } => {
                    if let Some(&(start, len)) = self.inlined.get(&idx) {
                        let mut done_bytes = 0;
                        while done_bytes < len {
                            let k = (len - done_bytes).min(RAW_CHUNK as u64) as usize;
                            self.content
                                .read_exact_at(&mut buf[..k], start + done_bytes)
                                .map_err(|source| LayerError::Read {
                                    path: NO_ENTRY.to_string(),
                                    offset: 0,
                                    source,
                                })?;
                            out.write(&Record::Raw(buf[..k].to_vec()))?;
                            done_bytes += k as u64;
                        }
                    } else {
                        out.write(&rec)?;
                    }
                    idx += 1;
                }
                _ => out.write(&rec)?,
            }
        }
        out.flush()
    }
}

fn times(e: &Entry) -> (TimeSpec, TimeSpec) {
    let t = TimeSpec::new(e.mtime.0, i64::from(e.mtime.1));
    (t, t)
}
