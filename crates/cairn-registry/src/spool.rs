//! The spool: blobs in flight between the registry and the layer store, in `ROOT/spool/`.
//!
//! A name says what the file is, so recovery and fsck never meet an orphan of unknown state:
//! - `sha256-HEX.partial`: the first bytes of a blob, as received (possibly cut short by a
//!   crash); a later pull of the same blob hashes them again and continues with a `Range`
//!   request. Never imported.
//! - `sha256-HEX`: a whole blob whose bytes hashed to HEX, synced before it took that name.
//!
//! A pull keeps only the blobs it still needs (removing any other entry when it starts) and
//! deletes each blob once its layer is imported, so the spool holds at most the window of
//! blobs one pull has in flight.

use super::client::{Body, Client};
use super::error::RegistryError;
use super::stream::{End, Stream};
use cairn_layer::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const SPOOL: &str = "spool";
const PARTIAL: &str = ".partial";
/// Bytes read from the network per write into the spool.
const CHUNK_BYTES: usize = 256 << 10;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

/// What fetching one blob took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes received from the registry for it in this pull.
    pub fetched_bytes: u64,
    /// Bytes a previous pull had spooled and this one kept.
    pub resumed_bytes: u64,
}

fn file_name(d: &Digest) -> String {
    d.to_string().replace(':', "-")
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(RegistryError::io("fsync", dir))
}

impl Spool {
    pub fn open(root: &Path) -> Result<Spool, RegistryError> {
        let dir = root.join(SPOOL);
        fs::create_dir_all(&dir).map_err(RegistryError::io("mkdir", &dir))?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a whole, verified blob.
    pub fn complete(&self, d: &Digest) -> PathBuf {
        self.dir.join(file_name(d))
    }

    /// A verified blob's bytes: under its whole name, or (when an import read it as it came)
    /// still under its partial one.
    pub(crate) fn blob(&self, d: &Digest) -> PathBuf {
        let complete = self.complete(d);
        if complete.exists() {
            complete
        } else {
            self.partial(d)
        }
    }

    fn partial(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!("{}{PARTIAL}", file_name(d)))
    }

    /// A scratch file for a push (a layer exported for upload).
    pub fn scratch(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!("push-{}", file_name(d)))
    }

    /// Remove every entry but the blobs (whole or partial) in `keep`.
    pub fn retain(&self, keep: &BTreeSet<Digest>) -> Result<(), RegistryError> {
        let names: BTreeSet<String> = keep
            .iter()
            .flat_map(|d| [file_name(d), format!("{}{PARTIAL}", file_name(d))])
            .collect();
        let entries = fs::read_dir(&self.dir).map_err(RegistryError::io("read", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(RegistryError::io("read", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !names.contains(&name) {
                let path = entry.path();
                fs::remove_file(&path).map_err(RegistryError::io("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Drop a blob once its layer is in the store.
    pub fn remove(&self, d: &Digest) -> Result<(), RegistryError> {
        for path in [self.complete(d), self.partial(d)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RegistryError::io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Bytes in the spool now (for tests and the bound's documentation).
    pub fn size_bytes(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Fetch blob `digest` (`size_bytes` long, from `repo`) into the spool, continuing a
    /// partial one, checking its digest as it streams; whole and verified when this returns.
    /// `stream` follows the bytes as they land, for an import that reads behind the fetch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fetch(
        &self,
        client: &Client,
        repo: &str,
        digest: &Digest,
        size_bytes: u64,
        progress: &dyn Fn(u64),
        cancel: &AtomicBool,
        stream: &Stream,
    ) -> Result<Fetched, RegistryError> {
        let result = self.fetch_blob(client, repo, digest, size_bytes, progress, cancel, stream);
        stream.finish(if result.is_ok() {
            End::Verified
        } else {
            End::Failed
        });
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch_blob(
        &self,
        client: &Client,
        repo: &str,
        digest: &Digest,
        size_bytes: u64,
        progress: &dyn Fn(u64),
        cancel: &AtomicBool,
        stream: &Stream,
    ) -> Result<Fetched, RegistryError> {
        let complete = self.complete(digest);
        if fs::metadata(&complete).is_ok_and(|m| m.len() == size_bytes) {
            return Ok(Fetched {
                fetched_bytes: 0,
                resumed_bytes: size_bytes,
            });
        }
        let partial = self.partial(digest);
        let mut fetched = Fetched::default();
        // A partial that fails its digest may be a torn write from a power cut: start over
        // once from nothing before blaming the registry.
        for restart in 0..2 {
            let (found, got) = self.fetch_into(
                client,
                repo,
                digest,
                size_bytes,
                &partial,
                restart == 0,
                &mut fetched,
                progress,
                cancel,
                stream,
            )?;
            if got < size_bytes {
                return Err(RegistryError::Truncated {
                    reference: client.reference().to_owned(),
                    digest: digest.to_string(),
                    got_bytes: got,
                    size_bytes,
                });
            }
            if &found == digest {
                if stream.attached() {
                    // An import is reading these bytes as they came and removes them when it
                    // is done; if it is cut short, the next pull re-hashes the partial. No
                    // whole name, so no sync is owed.
                    return Ok(fetched);
                }
                // Invariant: a blob under its whole name is on disk in full before the rename
                // gives it that name, so a resumed pull never imports a torn blob.
                File::open(&partial)
                    .and_then(|f| f.sync_data())
                    .map_err(RegistryError::io("fsync", &partial))?;
                fs::rename(&partial, &complete).map_err(RegistryError::io("rename", &partial))?;
                // The name is durable: a pull after a power cut does not fetch it again.
                sync_dir(&self.dir)?;
                return Ok(fetched);
            }
            fs::remove_file(&partial).map_err(RegistryError::io("remove", &partial))?;
            if fetched.resumed_bytes == 0 || restart == 1 {
                return Err(RegistryError::DigestMismatch {
                    reference: client.reference().to_owned(),
                    digest: digest.to_string(),
                    found: found.to_string(),
                });
            }
            fetched.resumed_bytes = 0;
        }
        Err(RegistryError::Cancelled)
    }

    /// Append the blob's bytes to `partial` until it has `size_bytes` or the retries run out;
    /// returns the digest of what the file holds and its length.
    #[allow(clippy::too_many_arguments)]
    fn fetch_into(
        &self,
        client: &Client,
        repo: &str,
        digest: &Digest,
        size_bytes: u64,
        partial: &Path,
        resume: bool,
        fetched: &mut Fetched,
        progress: &dyn Fn(u64),
        cancel: &AtomicBool,
        stream: &Stream,
    ) -> Result<(Digest, u64), RegistryError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .map_err(RegistryError::io("open", partial))?;
        let len = file
            .metadata()
            .map_err(RegistryError::io("stat", partial))?
            .len();
        let mut offset = len;
        if !resume || offset > size_bytes {
            offset = 0;
        }
        // Only a file that is longer is cut: on ext4 a truncate to size 0 (even of an empty
        // file) marks it for `auto_da_alloc`, which writes all its dirty pages out when it is
        // closed, so every spooled blob would go to disk once more (on a pull bound by disk
        // writes) although the import removes it unsynced.
        if len != offset {
            file.set_len(offset)
                .map_err(RegistryError::io("truncate", partial))?;
        }
        stream.start(&file, offset);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        // The bytes kept from before count towards the digest: hash them again.
        {
            let mut kept = (&file).take(offset);
            loop {
                let n = kept
                    .read(&mut buf)
                    .map_err(RegistryError::io("read", partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        fetched.resumed_bytes = offset;
        if offset > 0 {
            progress(offset);
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(RegistryError::io("seek", partial))?;
        let path = format!("/v2/{repo}/blobs/{digest}");
        let what = format!("blob {digest}");
        let mut failures = 0;
        // Progress is a byte never reached before (a registry that ignores Range and cuts
        // every answer short makes none).
        let mut best = offset;
        while offset < size_bytes {
            if cancel.load(Ordering::Relaxed) {
                return Err(RegistryError::Cancelled);
            }
            let range = format!("bytes={offset}-");
            let headers: &[(&str, &str)] = if offset > 0 {
                &[("Range", range.as_str())]
            } else {
                &[]
            };
            let resp = client.send("GET", &path, headers, Body::Empty, &what)?;
            let honoured = resp.status() == 206
                && resp
                    .header("content-range")
                    .is_some_and(|c| c.starts_with(&format!("bytes {offset}-")));
            if offset > 0 && !honoured {
                // The registry sent the whole blob: start the file and the digest over. The
                // kept bytes were not used after all.
                offset = 0;
                fetched.resumed_bytes = 0;
                hasher = Sha256::new();
                stream.restart();
                file.set_len(0)
                    .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
                    .map_err(RegistryError::io("truncate", partial))?;
            }
            let mut reader = resp.into_reader();
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(RegistryError::Cancelled);
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    // A dropped connection: keep what came, ask for the rest.
                    Err(e) => {
                        tracing::debug!(%digest, offset, error = %e, "blob read failed");
                        break;
                    }
                };
                if offset + n as u64 > size_bytes {
                    drop(file);
                    fs::remove_file(partial).map_err(RegistryError::io("remove", partial))?;
                    return Err(RegistryError::TooLong {
                        reference: client.reference().to_owned(),
                        digest: digest.to_string(),
                        size_bytes,
                    });
                }
                file.write_all(&buf[..n])
                    .map_err(RegistryError::io("write", partial))?;
                hasher.update(&buf[..n]);
                offset += n as u64;
                stream.advance(offset);
                fetched.fetched_bytes += n as u64;
                progress(n as u64);
            }
            if offset < size_bytes {
                if offset > best {
                    best = offset;
                    failures = 1;
                } else {
                    failures += 1;
                }
                if failures >= client.retry.attempts {
                    break;
                }
                std::thread::sleep(client.retry.delay(failures - 1));
            }
        }
        file.flush().map_err(RegistryError::io("write", partial))?;
        Ok((Digest(hasher.finalize().into()), offset))
    }
}
