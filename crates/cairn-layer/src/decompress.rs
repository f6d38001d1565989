//! Compression detection and streaming decoders.
//!
//! The format is chosen from the first bytes of the stream, peeked through a `BufReader`
//! so nothing is consumed before the decoder sees it. Layers that are neither gzip nor zstd
//! are taken as plain tar; the tar parser then refuses anything that is not a tar.

use std::io::{self, BufRead, BufReader, Read};

use flate2::bufread::MultiGzDecoder;

/// What a layer blob is compressed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// zstd frames may ask for windows of up to 2 GiB; 2^25 = 32 MiB keeps the decoder well
/// inside the library's 64 MiB memory bound and covers every level without `--long`.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Detects the compression from the first bytes of `head` (fewer bytes than a magic means
/// plain: the tar parser will report the stream as cut short).
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

enum Inner<R: Read> {
    Plain(BufReader<R>),
    Gzip(Box<MultiGzDecoder<BufReader<R>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
}

/// A reader yielding the uncompressed tar stream.
pub struct Decoder<R: Read> {
    inner: Inner<R>,
    format: Compression,
}

impl<R: Read> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("format", &self.format)
            .finish()
    }
}

impl<R: Read> Decoder<R> {
    /// Peeks at the stream and sets up the matching decoder. Errors are raw I/O errors of
    /// the underlying reader; the caller attributes them.
    pub fn new(input: R) -> io::Result<Decoder<R>> {
        let mut buf = BufReader::with_capacity(64 * 1024, input);
        // A short first read decides on fewer bytes: gzip needs only 2, and a stream of
        // 1-3 bytes is no valid tar or zstd frame anyway, so the tar parser refuses it.
        let format = detect(buf.fill_buf()?);
        let inner = match format {
            Compression::None => Inner::Plain(buf),
            Compression::Gzip => Inner::Gzip(Box::new(MultiGzDecoder::new(buf))),
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(buf)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Inner::Zstd(Box::new(d))
            }
        };
        Ok(Decoder { inner, format })
    }

    pub fn format(&self) -> Compression {
        self.format
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(r) => r.read(out),
            Inner::Gzip(r) => r.read(out),
            Inner::Zstd(r) => r.read(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip into memory");
        e.finish().expect("gzip into memory")
    }

    #[test]
    fn detects_and_decodes_each_format() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let z = zstd::encode_all(&data[..], 3).expect("zstd into memory");
        for (blob, fmt) in [
            (data.clone(), Compression::None),
            (gz(&data), Compression::Gzip),
            (z, Compression::Zstd),
        ] {
            let mut d = Decoder::new(&blob[..]).expect("decoder");
            assert_eq!(d.format(), fmt);
            let mut out = Vec::new();
            d.read_to_end(&mut out).expect("decode");
            assert_eq!(out, data);
        }
    }

    #[test]
    fn cut_streams_are_errors_not_short_reads() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let z = zstd::encode_all(&data[..], 3).expect("zstd into memory");
        for blob in [gz(&data), z] {
            let cut = &blob[..blob.len() * 2 / 3];
            let mut d = Decoder::new(cut).expect("decoder");
            let mut out = Vec::new();
            assert!(
                d.read_to_end(&mut out).is_err(),
                "cut {:?} decoded",
                d.format()
            );
        }
    }
}
