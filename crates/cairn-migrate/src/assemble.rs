//! Re-assembling a layer's original tar from its tar-split and the files of the driver's diff
//! directory, as Docker's `layer.assembleTarTo` does: segments copied as they are, each file
//! payload read from `<diff>/<name>` and checked against the size and CRC-64 tar-split recorded.
//!
//! Reads only: files are opened `O_RDONLY | O_NOATIME` with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so no name (or symlink on disk) reaches outside the diff directory.

use super::error::MigrateError;
use super::tarsplit::{Entry, FileDecoder, CRC64};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

enum Pending {
    Idle,
    Bytes {
        bytes: Vec<u8>,
        at: usize,
    },
    File {
        file: File,
        path: PathBuf,
        remaining: u64,
        digest: crc::Digest<'static, u64>,
        expected: u64,
    },
    Done,
}

/// The layer's tar as a stream, in order.
pub struct Assembly {
    decoder: FileDecoder,
    dir: File,
    dir_path: PathBuf,
    pending: Pending,
}

impl std::fmt::Debug for Assembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembly")
            .field("dir", &self.dir_path)
            .finish()
    }
}

impl Assembly {
    /// `tar_split`: the layer's `tar-split.json.gz`; `dir`: the driver's diff directory.
    pub fn open(tar_split: &Path, dir: &Path) -> Result<Assembly, MigrateError> {
        let decoder = FileDecoder::open(tar_split)?;
        let dir_file = File::open(dir).map_err(|e| MigrateError::io("open", dir, e))?;
        let meta = dir_file
            .metadata()
            .map_err(|e| MigrateError::io("stat", dir, e))?;
        if !meta.is_dir() {
            return Err(MigrateError::Payload {
                path: dir.to_owned(),
                reason: "the layer's content is not a directory".into(),
            });
        }
        Ok(Assembly {
            decoder,
            dir: dir_file,
            dir_path: dir.to_owned(),
            pending: Pending::Idle,
        })
    }

    fn payload_error(path: &Path, reason: impl Into<String>) -> MigrateError {
        MigrateError::Payload {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    fn open_payload(&self, name: &[u8]) -> Result<(File, PathBuf), MigrateError> {
        // Docker joins the name to the diff directory; a leading `/` or `./` means the same.
        let mut rel = name;
        loop {
            if let Some(rest) = rel.strip_prefix(b"/") {
                rel = rest;
            } else if let Some(rest) = rel.strip_prefix(b"./") {
                rel = rest;
            } else {
                break;
            }
        }
        let rel = Path::new(OsStr::from_bytes(rel));
        let path = self.dir_path.join(rel);
        if rel.as_os_str().is_empty() {
            return Err(Self::payload_error(
                &path,
                "a file payload with an empty name",
            ));
        }
        let resolve = ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        let open = |flags: OFlag| {
            openat2(
                self.dir.as_raw_fd(),
                rel,
                OpenHow::new().flags(flags).resolve(resolve),
            )
        };
        let base = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        // O_NOATIME keeps the source untouched; it needs ownership (or CAP_FOWNER).
        let fd = match open(base | OFlag::O_NOATIME) {
            Err(nix::errno::Errno::EPERM) => open(base),
            other => other,
        }
        .map_err(|e| MigrateError::io("open", &path, std::io::Error::from(e)))?;
        // SAFETY: openat2 just returned this descriptor and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file
            .metadata()
            .map_err(|e| MigrateError::io("stat", &path, e))?;
        if !meta.is_file() {
            return Err(Self::payload_error(
                &path,
                "tar-split names a payload here but it is not a regular file",
            ));
        }
        Ok((file, path))
    }

    /// Fill `buf` with the next bytes of the tar; 0 at the end. Errors are typed and name the
    /// file or entry.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<usize, MigrateError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.pending {
                Pending::Done => return Ok(0),
                Pending::Bytes { bytes, at } => {
                    let n = (bytes.len() - *at).min(buf.len());
                    buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                    *at += n;
                    if *at == bytes.len() {
                        self.pending = Pending::Idle;
                    }
                    if n > 0 {
                        return Ok(n);
                    }
                }
                Pending::File {
                    file,
                    path,
                    remaining,
                    digest,
                    expected,
                } => {
                    if *remaining == 0 {
                        let mut one = [0u8; 1];
                        let extra = file
                            .read(&mut one)
                            .map_err(|e| MigrateError::io("read", path.as_path(), e))?;
                        if extra != 0 {
                            return Err(Self::payload_error(
                                path,
                                "the file is longer than the layer's tar-split records",
                            ));
                        }
                        let found = std::mem::replace(digest, CRC64.digest()).finalize();
                        if found != *expected {
                            return Err(Self::payload_error(
                                path,
                                format!(
                                    "the file's CRC-64 is {found:016x}, the layer's tar-split \
                                     records {expected:016x}: it was changed"
                                ),
                            ));
                        }
                        self.pending = Pending::Idle;
                        continue;
                    }
                    let want = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let n = file
                        .read(&mut buf[..want])
                        .map_err(|e| MigrateError::io("read", path.as_path(), e))?;
                    if n == 0 {
                        return Err(Self::payload_error(
                            path,
                            format!(
                                "the file is {remaining} bytes shorter than the layer's \
                                 tar-split records"
                            ),
                        ));
                    }
                    digest.update(&buf[..n]);
                    *remaining -= n as u64;
                    return Ok(n);
                }
                Pending::Idle => match self.decoder.next_entry()? {
                    None => self.pending = Pending::Done,
                    Some(Entry::Segment(bytes)) => self.pending = Pending::Bytes { bytes, at: 0 },
                    // Empty payloads (directories, links, whiteouts, empty files) are never
                    // read, as in tar-split's assembler.
                    Some(Entry::File { size_bytes: 0, .. }) => {}
                    Some(Entry::File {
                        name,
                        size_bytes,
                        crc64,
                    }) => {
                        let (file, path) = self.open_payload(&name)?;
                        let Some(expected) = crc64 else {
                            return Err(Self::payload_error(&path, "a payload without a checksum"));
                        };
                        self.pending = Pending::File {
                            file,
                            path,
                            remaining: size_bytes,
                            digest: CRC64.digest(),
                            expected,
                        };
                    }
                },
            }
        }
    }
}

impl Read for Assembly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.fill(buf).map_err(std::io::Error::other)
    }
}

/// Re-assemble into nothing: the tar's DiffID and length, or the first payload that differs.
pub fn digest(tar_split: &Path, dir: &Path) -> Result<(cairn_layer::Digest, u64), MigrateError> {
    use sha2::Digest as _;
    let mut assembly = Assembly::open(tar_split, dir)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 128 << 10];
    let mut total = 0u64;
    loop {
        let n = assembly.fill(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((cairn_layer::Digest(hasher.finalize().into()), total))
}
