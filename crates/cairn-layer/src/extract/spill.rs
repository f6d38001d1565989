//! Content this layer removes after writing it: copied aside before removal, and put
//! back inline when the final metadata is assembled from the scratch records.

use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use super::{Content, Entry, Ex};
use crate::error::{LayerError, NO_ENTRY};
use crate::meta::{MetaReader, MetaWriter, Record, RAW_CHUNK};
use crate::safepath;

impl<R: Read> Ex<'_, R> {
    /// Copies this layer's content under `canonical` to the scratch before it is removed,
    /// so the metadata can inline it.
    pub(super) fn before_remove(&mut self, canonical: &[u8], e: &Entry) -> Result<(), LayerError> {
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

    /// Writes the final metadata: the scratch records (End included), with references to
    /// content that is no longer on disk replaced by that content.
    pub(super) fn assemble(self, meta: &mut impl Write) -> Result<(), LayerError> {
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
                        let sha =
                            self.file_digests
                                .get(idx as usize)
                                .copied()
                                .ok_or_else(|| LayerError::Read {
                                    path: NO_ENTRY.to_string(),
                                    offset: 0,
                                    source: std::io::Error::other(
                                        "a file record without its content digest",
                                    ),
                                })?;
                        out.write(&with_digest(rec, sha))?;
                    }
                    idx += 1;
                }
                _ => out.write(&rec)?,
            }
        }
        out.flush()
    }
}

/// A file record with the content digest the hashing thread computed.
fn with_digest(rec: Record, sha: [u8; 32]) -> Record {
    match rec {
        Record::File { path, size, .. } => Record::File {
            path,
            size,
            sha256: sha,
        },
        Record::Sparse {
            path,
            realsize,
            segments,
            ..
        } => Record::Sparse {
            path,
            realsize,
            segments,
            sha256: sha,
        },
        other => other,
    }
}
