//! The layer metadata format: what, with the files of the tree, rebuilds the original tar
//! byte for byte. Specified in `docs/layer-format.md`; this file is the only codec.
//!
//! A stream is `MAGIC`, a version, then records `tag u8 | len u32 LE | payload | crc32 u32 LE`
//! where the CRC covers tag, length and payload, so a flipped bit anywhere is caught at the
//! record it hits. Lengths are bounded on read; a stream must end with an `End` record.

use std::io::{self, Read, Write};

use super::digest::Digest;
use super::error::{LayerError, NO_ENTRY};

pub const MAGIC: [u8; 8] = *b"CAIRNTSM";
pub const VERSION: u16 = 1;
/// Raw payloads are written in chunks of at most this size.
pub const RAW_CHUNK: usize = 64 * 1024;
/// Largest payload accepted on read: a full sparse map (16 bytes a segment) plus a path.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Longest path accepted in a record.
pub const MAX_PATH: usize = 64 * 1024;

const TAG_RAW: u8 = 1;
const TAG_FILE: u8 = 2;
const TAG_SPARSE: u8 = 3;
const TAG_END: u8 = 4;
const TAG_ZEROS: u8 = 5;
/// Zero runs at least this long are written as a `Zeros` record (17 bytes): tar's end-of-archive,
/// record padding (often 10 KiB) and the empty fields of every header would otherwise
/// dominate small layers' metadata.
pub const ZERO_RUN_MIN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Tar bytes copied verbatim: headers, extended headers, padding, inlined content,
    /// end-of-archive blocks, trailing bytes.
    Raw(Vec<u8>),
    /// `size` bytes of content to read from `path` (relative to the tree root).
    File {
        path: Vec<u8>,
        size: u64,
        sha256: [u8; 32],
    },
    /// A sparse file's data segments `(offset, len)`, read from the expanded file at `path`
    /// and written back to back, as GNU sparse 1.0 stores them after the map.
    Sparse {
        path: Vec<u8>,
        realsize: u64,
        segments: Vec<(u64, u64)>,
        sha256: [u8; 32],
    },
    /// `n` zero bytes of the tar, verbatim in meaning, compact on disk.
    Zeros(u64),
    /// The end: totals of the tar this stream rebuilds.
    End {
        tar_size: u64,
        diff_id: Digest,
        entries: u64,
    },
}

fn bad(offset: u64, reason: &'static str) -> LayerError {
    LayerError::BadMeta {
        path: NO_ENTRY.to_string(),
        offset,
        reason,
    }
}

/// Writes a metadata stream.
#[derive(Debug)]
pub struct MetaWriter<W: Write> {
    w: W,
    offset: u64,
}

impl<W: Write> MetaWriter<W> {
    pub fn new(w: W) -> Result<MetaWriter<W>, LayerError> {
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&VERSION.to_le_bytes());
        let mut mw = MetaWriter { w, offset: 0 };
        mw.put(&head)?;
        Ok(mw)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), LayerError> {
        self.w.write_all(b).map_err(|source| LayerError::Write {
            path: NO_ENTRY.to_string(),
            offset: self.offset,
            what: "metadata",
            source,
        })?;
        self.offset += b.len() as u64;
        Ok(())
    }

    pub fn write(&mut self, rec: &Record) -> Result<(), LayerError> {
        let (tag, payload) = encode(rec);
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or_else(|| bad(self.offset, "record too large to encode"))?;
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(&payload);
        self.put(&head)?;
        self.put(&payload)?;
        self.put(&crc.finalize().to_le_bytes())
    }

    /// Writes `data` as `Raw` records of at most `RAW_CHUNK` bytes, long zero runs as
    /// `Zeros` records.
    pub fn write_raw(&mut self, data: &[u8]) -> Result<(), LayerError> {
        let mut i = 0;
        let mut lit = 0;
        while i < data.len() {
            if data[i] != 0 {
                i += 1;
                continue;
            }
            let run = data[i..].iter().take_while(|&&b| b == 0).count();
            if run >= ZERO_RUN_MIN {
                self.write_literal(&data[lit..i])?;
                self.write(&Record::Zeros(run as u64))?;
                lit = i + run;
            }
            i += run;
        }
        self.write_literal(&data[lit..])
    }

    fn write_literal(&mut self, data: &[u8]) -> Result<(), LayerError> {
        for chunk in data.chunks(RAW_CHUNK) {
            self.write(&Record::Raw(chunk.to_vec()))?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), LayerError> {
        self.w.flush().map_err(|source| LayerError::Write {
            path: NO_ENTRY.to_string(),
            offset: self.offset,
            what: "metadata",
            source,
        })
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

fn encode(rec: &Record) -> (u8, Vec<u8>) {
    let mut p = Vec::new();
    match rec {
        Record::Raw(b) => {
            p.extend_from_slice(b);
            (TAG_RAW, p)
        }
        Record::Zeros(n) => {
            p.extend_from_slice(&n.to_le_bytes());
            (TAG_ZEROS, p)
        }
        Record::File { path, size, sha256 } => {
            p.extend_from_slice(&size.to_le_bytes());
            p.extend_from_slice(sha256);
            p.extend_from_slice(path);
            (TAG_FILE, p)
        }
        Record::Sparse {
            path,
            realsize,
            segments,
            sha256,
        } => {
            p.extend_from_slice(&realsize.to_le_bytes());
            p.extend_from_slice(sha256);
            p.extend_from_slice(&(segments.len() as u32).to_le_bytes());
            for (o, l) in segments {
                p.extend_from_slice(&o.to_le_bytes());
                p.extend_from_slice(&l.to_le_bytes());
            }
            p.extend_from_slice(path);
            (TAG_SPARSE, p)
        }
        Record::End {
            tar_size,
            diff_id,
            entries,
        } => {
            p.extend_from_slice(&tar_size.to_le_bytes());
            p.extend_from_slice(diff_id.as_bytes());
            p.extend_from_slice(&entries.to_le_bytes());
            (TAG_END, p)
        }
    }
}

/// Reads a metadata stream record by record.
#[derive(Debug)]
pub struct MetaReader<R: Read> {
    r: R,
    offset: u64,
    ended: bool,
}

impl<R: Read> MetaReader<R> {
    pub fn new(mut r: R) -> Result<MetaReader<R>, LayerError> {
        let mut head = [0u8; 10];
        read_full(&mut r, &mut head, 0)?;
        if head[..8] != MAGIC {
            return Err(bad(0, "not a cairn layer metadata stream (bad magic)"));
        }
        if u16::from_le_bytes([head[8], head[9]]) != VERSION {
            return Err(bad(8, "unsupported metadata version"));
        }
        Ok(MetaReader {
            r,
            offset: 10,
            ended: false,
        })
    }

    /// Offset of the next record in the metadata stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record; `None` after `End` once the stream is verified to stop there.
    pub fn next_record(&mut self) -> Result<Option<Record>, LayerError> {
        if self.ended {
            let mut one = [0u8; 1];
            return match self.r.read(&mut one) {
                Ok(0) => Ok(None),
                Ok(_) => Err(bad(self.offset, "bytes after the End record")),
                Err(source) => Err(LayerError::Read {
                    path: NO_ENTRY.to_string(),
                    offset: self.offset,
                    source,
                }),
            };
        }
        let at = self.offset;
        let mut head = [0u8; 5];
        read_full(&mut self.r, &mut head, at)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_PAYLOAD {
            return Err(LayerError::TooLarge {
                path: NO_ENTRY.to_string(),
                offset: at,
                what: "metadata record",
                len: u64::from(len),
                max: u64::from(MAX_PAYLOAD),
            });
        }
        let mut payload = vec![0u8; len as usize];
        read_full(&mut self.r, &mut payload, at)?;
        let mut crc = [0u8; 4];
        read_full(&mut self.r, &mut crc, at)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&payload);
        if h.finalize() != u32::from_le_bytes(crc) {
            return Err(bad(at, "record CRC mismatch"));
        }
        self.offset += 9 + u64::from(len);
        let rec = decode(head[0], payload, at)?;
        if matches!(rec, Record::End { .. }) {
            self.ended = true;
        }
        Ok(Some(rec))
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], at: u64) -> Result<(), LayerError> {
    r.read_exact(buf).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            bad(at, "stream cut short (no End record)")
        } else {
            LayerError::Read {
                path: NO_ENTRY.to_string(),
                offset: at,
                source,
            }
        }
    })
}

fn u64_at(p: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[i..i + 8]);
    u64::from_le_bytes(b)
}

fn hash_at(p: &[u8], i: usize) -> [u8; 32] {
    let mut b = [0u8; 32];
    b.copy_from_slice(&p[i..i + 32]);
    b
}

fn path_from(p: &[u8], at: u64) -> Result<Vec<u8>, LayerError> {
    if p.is_empty() || p.len() > MAX_PATH || p.contains(&0) {
        return Err(bad(at, "bad path in record"));
    }
    Ok(p.to_vec())
}

fn decode(tag: u8, p: Vec<u8>, at: u64) -> Result<Record, LayerError> {
    match tag {
        TAG_RAW => Ok(Record::Raw(p)),
        TAG_ZEROS => {
            if p.len() != 8 {
                return Err(bad(at, "zeros record of the wrong size"));
            }
            // Writers never emit runs longer than two raw chunks; the bound keeps a forged
            // record from making export write without end.
            let n = u64_at(&p, 0);
            if n > u64::from(MAX_PAYLOAD) {
                return Err(bad(at, "zeros record longer than the bound"));
            }
            Ok(Record::Zeros(n))
        }
        TAG_FILE => {
            if p.len() < 40 {
                return Err(bad(at, "file record too short"));
            }
            Ok(Record::File {
                size: u64_at(&p, 0),
                sha256: hash_at(&p, 8),
                path: path_from(&p[40..], at)?,
            })
        }
        TAG_SPARSE => {
            if p.len() < 44 {
                return Err(bad(at, "sparse record too short"));
            }
            let n = u32::from_le_bytes([p[40], p[41], p[42], p[43]]) as usize;
            let end = n
                .checked_mul(16)
                .and_then(|s| s.checked_add(44))
                .filter(|&e| e <= p.len())
                .ok_or_else(|| bad(at, "sparse map longer than its record"))?;
            let segments: Vec<(u64, u64)> = (0..n)
                .map(|i| (u64_at(&p, 44 + 16 * i), u64_at(&p, 52 + 16 * i)))
                .collect();
            let realsize = u64_at(&p, 0);
            // Ordered, disjoint and inside the file, as import checked them: export then
            // reads each byte of the file at most once.
            let mut covered = 0u64;
            for &(off, len) in &segments {
                match off.checked_add(len) {
                    Some(stop) if off >= covered && stop <= realsize => covered = stop,
                    _ => return Err(bad(at, "sparse segments out of order or past the end")),
                }
            }
            Ok(Record::Sparse {
                realsize,
                sha256: hash_at(&p, 8),
                segments,
                path: path_from(&p[end..], at)?,
            })
        }
        TAG_END => {
            if p.len() != 48 {
                return Err(bad(at, "end record of the wrong size"));
            }
            Ok(Record::End {
                tar_size: u64_at(&p, 0),
                diff_id: Digest(hash_at(&p, 8)),
                entries: u64_at(&p, 40),
            })
        }
        _ => Err(bad(at, "unknown record tag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::Raw(vec![1, 2, 3]),
            Record::Zeros(10240),
            Record::File {
                path: b"a/b".to_vec(),
                size: 7,
                sha256: [9; 32],
            },
            Record::Sparse {
                path: b"s".to_vec(),
                realsize: 1 << 23,
                segments: vec![(0, 4), (1 << 22, 4)],
                sha256: [3; 32],
            },
            Record::End {
                tar_size: 10240,
                diff_id: Digest([5; 32]),
                entries: 2,
            },
        ]
    }

    fn encode_all(recs: &[Record]) -> Vec<u8> {
        let mut w = MetaWriter::new(Vec::new()).expect("header");
        for r in recs {
            w.write(r).expect("write");
        }
        w.into_inner()
    }

    fn decode_all(b: &[u8]) -> Result<Vec<Record>, LayerError> {
        let mut r = MetaReader::new(b)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn roundtrip() {
        let recs = sample();
        assert_eq!(decode_all(&encode_all(&recs)).expect("decode"), recs);
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_caught() {
        let bytes = encode_all(&sample());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_all(&b).is_err(), "flip at {i} accepted");
            assert!(decode_all(&bytes[..i]).is_err(), "cut at {i} accepted");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_all(&extra).is_err());
    }

    #[test]
    fn zero_runs_are_compact_and_exact() {
        let mut data = vec![7u8; 100];
        data.extend(std::iter::repeat(0).take(3000));
        data.push(1);
        data.extend(std::iter::repeat(0).take(100));
        let mut w = MetaWriter::new(Vec::new()).expect("header");
        w.write_raw(&data).expect("write");
        let bytes = w.into_inner();
        assert!(bytes.len() < 400, "{} bytes", bytes.len());
        let mut back = Vec::new();
        for rec in decode_all_open(&bytes) {
            match rec {
                Record::Raw(b) => back.extend(b),
                Record::Zeros(n) => back.extend(std::iter::repeat(0).take(n as usize)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, data);
    }

    /// Records of a stream without End (the reader reports the cut after them).
    fn decode_all_open(b: &[u8]) -> Vec<Record> {
        let mut r = MetaReader::new(b).expect("header");
        let mut out = Vec::new();
        while let Ok(Some(rec)) = r.next_record() {
            out.push(rec);
        }
        out
    }

    #[test]
    fn forged_bounds_are_refused() {
        let forged = [
            Record::Zeros(u64::MAX),
            Record::Sparse {
                path: b"s".to_vec(),
                realsize: 10,
                segments: vec![(0, 8), (4, 4)],
                sha256: [0; 32],
            },
            Record::Sparse {
                path: b"s".to_vec(),
                realsize: 10,
                segments: vec![(8, 4)],
                sha256: [0; 32],
            },
        ];
        for rec in forged {
            let bytes = encode_all(std::slice::from_ref(&rec));
            assert!(
                matches!(decode_all(&bytes), Err(LayerError::BadMeta { .. })),
                "{rec:?} accepted"
            );
        }
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(TAG_RAW);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_all(&b), Err(LayerError::TooLarge { .. })));
    }
}
