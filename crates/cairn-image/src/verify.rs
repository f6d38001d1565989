//! A reader that checks a blob's digest as it streams: a mismatch is an IO error at the end of
//! the blob, so the import that reads it fails and is aborted, changing nothing.

use cairn_layer::Digest;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};

use super::plan::PlannedLayer;

/// The stream to import for `layer`: checked against its blob digest as it is read, unless
/// that check is the import's own. An uncompressed blob's digest is its DiffID, which the
/// import computes over the same bytes and compares before anything is journaled (and the
/// stream is the archive entry, `size` bytes, either way): hashing it twice would only double
/// the cost of the load's largest CPU item.
pub fn layer_reader(
    reader: Box<dyn Read + Send>,
    size_bytes: u64,
    layer: &PlannedLayer,
) -> Box<dyn Read + Send> {
    match &layer.blob {
        Some(blob) if *blob != layer.diff_id => Box::new(Verifying::new(
            reader,
            size_bytes,
            *blob,
            layer.path.clone(),
        )),
        _ => reader,
    }
}

pub struct Verifying<R> {
    inner: R,
    hasher: Sha256,
    read_bytes: u64,
    size_bytes: u64,
    expected: Digest,
    what: String,
}

impl<R: Read> Verifying<R> {
    pub fn new(inner: R, size_bytes: u64, expected: Digest, what: String) -> Verifying<R> {
        Verifying {
            inner,
            hasher: Sha256::new(),
            read_bytes: 0,
            size_bytes,
            expected,
            what,
        }
    }

    fn check(&self) -> io::Result<()> {
        let found = Digest(self.hasher.clone().finalize().into());
        if found != self.expected || self.read_bytes != self.size_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: blob digest is {found} ({} bytes), the manifest says {}",
                    self.what, self.read_bytes, self.expected
                ),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read_bytes += n as u64;
        // Checked when the blob's last byte is read, not only at EOF: a decompressor may stop
        // at the end of its stream without asking for more.
        if (n == 0 && !buf.is_empty()) || self.read_bytes >= self.size_bytes {
            self.check()?;
        }
        Ok(n)
    }
}
