//! tar-split's packed format (`tar-split.json.gz` in Docker's layer store): one JSON object a
//! line, gzip'd. A *segment* (`"type":2`) carries raw tar bytes (headers, padding, the end of
//! the archive) base64'd in `payload`; a *file* (`"type":1`) names a regular file's payload by
//! `name` (or `name_raw`, base64, when the name is not UTF-8) and `size`, with the CRC-64/ISO of
//! its bytes (big-endian, base64) in `payload`. `position` counts the entries from 0. The byte
//! spec is in `docs/migrate.md`.
//!
//! [`Decoder`] reads it with a bound on every allocation; [`encode`] writes it as Docker 20.10
//! does for a given tar, for fixtures and tests.

use super::error::MigrateError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashSet;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// CRC-64 with the ISO polynomial, as Go's `hash/crc64.MakeTable(crc64.ISO)`.
pub static CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);

/// The longest line read: a segment is a tar header or a padding chunk of at most 1 MiB,
/// base64'd; anything longer is not tar-split.
pub const MAX_LINE_BYTES: usize = 4 << 20;
/// The most entries one layer may have (two or three per tar entry).
pub const MAX_ENTRIES: u64 = 16_000_000;
/// Trailing bytes after the end of the archive go into segments of at most this many bytes (as
/// tar-split reads them).
const PADDING_CHUNK_BYTES: usize = 1 << 20;

/// One decoded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Raw tar bytes, copied to the output as they are.
    Segment(Vec<u8>),
    /// A file payload read from the layer's directory: `size` bytes whose CRC-64 is `crc64`
    /// (absent for an empty payload, which is never read).
    File {
        name: Vec<u8>,
        size_bytes: u64,
        crc64: Option<u64>,
    },
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    payload: Option<String>,
    position: u64,
}

/// Reads entries one at a time; checks positions count up from 0 and that no file is named
/// twice (tar-split refuses both).
pub struct Decoder<R> {
    input: R,
    path: PathBuf,
    position: u64,
    line: Vec<u8>,
    seen: HashSet<Vec<u8>>,
}

impl<R> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("path", &self.path)
            .field("position", &self.position)
            .finish()
    }
}

/// A gzip'd tar-split file on disk.
pub type FileDecoder = Decoder<std::io::BufReader<flate2::read::GzDecoder<std::fs::File>>>;

impl FileDecoder {
    pub fn open(path: &Path) -> Result<FileDecoder, MigrateError> {
        let file = std::fs::File::open(path).map_err(|e| MigrateError::io("open", path, e))?;
        let gz = flate2::read::GzDecoder::new(file);
        Ok(Decoder::new(std::io::BufReader::new(gz), path))
    }
}

impl<R: BufRead> Decoder<R> {
    pub fn new(input: R, path: &Path) -> Decoder<R> {
        Decoder {
            input,
            path: path.to_owned(),
            position: 0,
            line: Vec::new(),
            seen: HashSet::new(),
        }
    }

    fn bad(&self, reason: impl Into<String>) -> MigrateError {
        MigrateError::TarSplit {
            path: self.path.clone(),
            entry: self.position,
            reason: reason.into(),
        }
    }

    /// The next entry, or `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, MigrateError> {
        loop {
            self.line.clear();
            let limit = MAX_LINE_BYTES as u64 + 1;
            let n = (&mut self.input)
                .take(limit)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| self.bad(format!("cannot read: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            if self.line.len() > MAX_LINE_BYTES {
                return Err(self.bad(format!("a line longer than {MAX_LINE_BYTES} bytes")));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.position >= MAX_ENTRIES {
                return Err(self.bad(format!("more than {MAX_ENTRIES} entries")));
            }
            let raw: RawEntry = serde_json::from_slice(&self.line)
                .map_err(|e| self.bad(format!("not a tar-split entry: {e}")))?;
            if raw.position != self.position {
                return Err(self.bad(format!("position {} out of order", raw.position)));
            }
            let entry = self.decode(raw)?;
            self.position += 1;
            return Ok(Some(entry));
        }
    }

    fn base64(&self, what: &str, text: &str) -> Result<Vec<u8>, MigrateError> {
        BASE64
            .decode(text)
            .map_err(|e| self.bad(format!("{what} is not base64: {e}")))
    }

    fn decode(&mut self, raw: RawEntry) -> Result<Entry, MigrateError> {
        match raw.kind {
            2 => {
                let payload = match &raw.payload {
                    Some(p) => self.base64("payload", p)?,
                    None => Vec::new(),
                };
                Ok(Entry::Segment(payload))
            }
            1 => {
                let name = match (&raw.name_raw, &raw.name) {
                    (Some(r), _) if !r.is_empty() => self.base64("name_raw", r)?,
                    (_, Some(n)) => n.clone().into_bytes(),
                    _ => return Err(self.bad("a file entry without a name")),
                };
                let size_bytes = u64::try_from(raw.size.unwrap_or(0))
                    .map_err(|_| self.bad("a negative size"))?;
                let crc64 = match (&raw.payload, size_bytes) {
                    (_, 0) => None,
                    (Some(p), _) => {
                        let bytes = self.base64("payload", p)?;
                        let sum: [u8; 8] = bytes
                            .try_into()
                            .map_err(|_| self.bad("a checksum that is not 8 bytes"))?;
                        Some(u64::from_be_bytes(sum))
                    }
                    (None, _) => return Err(self.bad("a file payload without a checksum")),
                };
                if !self.seen.insert(clean(&name)) {
                    return Err(
                        self.bad(format!("{} is named twice", String::from_utf8_lossy(&name)))
                    );
                }
                Ok(Entry::File {
                    name,
                    size_bytes,
                    crc64,
                })
            }
            other => Err(self.bad(format!("unknown entry type {other}"))),
        }
    }
}

/// The name as Go's `filepath.Clean` would compare it, near enough for duplicate detection:
/// no `./` prefix, no trailing or doubled slash.
fn clean(name: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = name
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    parts.join(&b'/')
}

/// Write the tar-split of `tar` (uncompressed JSON lines) as Docker 20.10's vendored tar-split
/// does: a segment of the bytes before each entry's data (the previous entry's padding, its
/// extension headers, its header), a file entry for every entry (a checksum only for a
/// payload), then the end-of-archive blocks, the trailing bytes in chunks of at most 1 MiB, and
/// one empty segment. GNU sparse entries are refused: tar-split records their expanded size.
pub fn encode(tar_bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut position = 0u64;
    let mut at = 0usize;
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() == tar::EntryType::GNUSparse
            || entry
                .pax_extensions()?
                .into_iter()
                .flatten()
                .flatten()
                .any(|ext| ext.key_bytes().starts_with(b"GNU.sparse"))
        {
            return Err(std::io::Error::other("sparse entries are not encoded"));
        }
        let data_start =
            usize::try_from(entry.raw_file_position()).map_err(std::io::Error::other)?;
        let size = usize::try_from(entry.header().entry_size()?).map_err(std::io::Error::other)?;
        let data_end = data_start
            .checked_add(size)
            .filter(|end| *end <= tar_bytes.len())
            .ok_or_else(|| std::io::Error::other("an entry runs past the end"))?;
        segment(&mut out, &mut position, &tar_bytes[at..data_start]);
        let name = entry.path_bytes().into_owned();
        let crc = (size > 0).then(|| CRC64.checksum(&tar_bytes[data_start..data_end]));
        file_line(&mut out, &mut position, &name, size as u64, crc);
        at = data_end;
        // The payload is consumed through `tar_bytes` directly.
        std::io::copy(&mut entry, &mut std::io::sink())?;
    }
    // Go's reader reads the padding and both zero blocks before it reports the end.
    let end = at.div_ceil(512).saturating_mul(512).saturating_add(1024);
    let end = end.min(tar_bytes.len());
    if end > at {
        segment(&mut out, &mut position, &tar_bytes[at..end]);
    }
    for chunk in tar_bytes[end..].chunks(PADDING_CHUNK_BYTES) {
        segment(&mut out, &mut position, chunk);
    }
    // The read that meets EOF adds an empty segment.
    segment_line(&mut out, &mut position, &[]);
    Ok(out)
}

fn segment(out: &mut Vec<u8>, position: &mut u64, bytes: &[u8]) {
    if !bytes.is_empty() {
        segment_line(out, position, bytes);
    }
}

fn segment_line(out: &mut Vec<u8>, position: &mut u64, bytes: &[u8]) {
    out.extend_from_slice(b"{\"type\":2,\"payload\":\"");
    out.extend_from_slice(BASE64.encode(bytes).as_bytes());
    out.extend_from_slice(format!("\",\"position\":{position}}}\n").as_bytes());
    *position += 1;
}

fn file_line(out: &mut Vec<u8>, position: &mut u64, name: &[u8], size: u64, crc: Option<u64>) {
    out.extend_from_slice(b"{\"type\":1,");
    match std::str::from_utf8(name) {
        Ok(name) => {
            out.extend_from_slice(b"\"name\":");
            go_json_string(out, name);
        }
        Err(_) => {
            out.extend_from_slice(b"\"name_raw\":\"");
            out.extend_from_slice(BASE64.encode(name).as_bytes());
            out.push(b'"');
        }
    }
    if size > 0 {
        out.extend_from_slice(format!(",\"size\":{size}").as_bytes());
    }
    match crc {
        Some(crc) => {
            out.extend_from_slice(b",\"payload\":\"");
            out.extend_from_slice(BASE64.encode(crc.to_be_bytes()).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"payload\":null"),
    }
    out.extend_from_slice(format!(",\"position\":{position}}}\n").as_bytes());
    *position += 1;
}

/// A JSON string as Go's `encoding/json` writes it (HTML-safe: `<`, `>`, `&` escaped too).
fn go_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// [`encode`], gzip'd, as the layer store keeps it.
pub fn encode_gz(tar_bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let lines = encode(tar_bytes)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&lines)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_gos_iso_table() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO))
        assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn decoder_refuses_out_of_order_and_duplicates() {
        let two = b"{\"type\":2,\"payload\":\"\",\"position\":1}\n";
        let mut d = Decoder::new(&two[..], Path::new("t"));
        assert!(matches!(d.next_entry(), Err(MigrateError::TarSplit { .. })));
        let dup = b"{\"type\":1,\"name\":\"a\",\"payload\":null,\"position\":0}\n{\"type\":1,\"name\":\"./a\",\"payload\":null,\"position\":1}\n";
        let mut d = Decoder::new(&dup[..], Path::new("t"));
        assert!(d.next_entry().is_ok());
        let err = d
            .next_entry()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn go_escapes_html() {
        let mut out = Vec::new();
        go_json_string(&mut out, "a<b>&\"c\u{1}");
        assert_eq!(out, br#""a\u003cb\u003e\u0026\"c\u0001""#);
    }
}
