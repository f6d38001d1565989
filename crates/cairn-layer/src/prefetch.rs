//! The layer's bytes read, decompressed and hashed (the DiffID) on a thread of their own, so
//! the importing thread only parses and writes: the read syscalls, the gunzip or zstd decoding
//! and the stream's sha256 run on the other core, as `gzip -d` does beside `tar -x`. Whatever
//! the input reader does as it is read (a blob-digest check, a progress bar) runs there too.
//!
//! Memory is bounded: at most [`IN_FLIGHT`] chunks of [`CHUNK`] bytes wait in the channel,
//! and chunks the importer is done with go back to the reader for reuse.

use std::io::{self, Read};
use std::thread::{Scope, ScopedJoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest as _, Sha256};

/// Bytes read into one chunk before it is handed over.
const CHUNK: usize = 256 * 1024;
/// Chunks waiting for the importer at most.
const IN_FLIGHT: usize = 4;

/// What the reader reports at the end: the stream's sha256 and length, or nothing when it
/// stopped before EOF (a read error, which it sent on, or the importer gone).
type Ended = Option<([u8; 32], u64)>;

/// The uncompressed stream, read ahead on a helper thread, with its sha256 taken over exactly
/// the bytes delivered.
pub(crate) struct Prefetched<'scope> {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: Sender<Vec<u8>>,
    /// `None` once [`finish`](Self::finish) has joined it.
    thread: Option<ScopedJoinHandle<'scope, Ended>>,
    cur: Vec<u8>,
    pos: usize,
}

impl<'scope> Prefetched<'scope> {
    /// Starts the reader thread; fails only if no thread can be started.
    pub(crate) fn start<'env, R: Read + Send + 'scope>(
        scope: &'scope Scope<'scope, 'env>,
        r: R,
    ) -> io::Result<Prefetched<'scope>> {
        let (tx, rx) = bounded::<io::Result<Vec<u8>>>(IN_FLIGHT);
        let (back, back_rx) = bounded::<Vec<u8>>(IN_FLIGHT + 2);
        let thread = std::thread::Builder::new()
            .name("cairn-read".into())
            .spawn_scoped(scope, move || read_ahead(r, &tx, &back_rx))?;
        Ok(Prefetched {
            rx,
            back,
            thread: Some(thread),
            cur: Vec::new(),
            pos: 0,
        })
    }

    /// The sha256 and length of the whole stream, once it has been read to EOF; `None` if the
    /// reader stopped early or failed (then the stream's end was never seen).
    pub(crate) fn finish(&mut self) -> Option<([u8; 32], u64)> {
        // Hanging up first lets a reader blocked on a full channel (an importer that stopped
        // early) end, so the join cannot wait on it.
        self.rx = bounded(0).1;
        self.thread.take()?.join().ok().flatten()
    }
}

/// The reader thread: fills chunks, hashes them and sends them on, until EOF, a read error
/// (sent on, after the bytes before it) or the importer hanging up.
fn read_ahead<R: Read>(
    mut r: R,
    tx: &Sender<io::Result<Vec<u8>>>,
    back: &Receiver<Vec<u8>>,
) -> Ended {
    let mut hash = Sha256::new();
    let mut len = 0u64;
    loop {
        let mut buf = back.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut n = 0;
        let mut failed = None;
        while n < CHUNK {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        buf.truncate(n);
        hash.update(&buf);
        len += n as u64;
        let eof = n < CHUNK && failed.is_none();
        if n > 0 && tx.send(Ok(buf)).is_err() {
            return None;
        }
        if let Some(e) = failed {
            let _ = tx.send(Err(e));
            return None;
        }
        if eof {
            return Some((hash.finalize().into(), len));
        }
    }
}

impl Read for Prefetched<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            let done = std::mem::take(&mut self.cur);
            if done.capacity() > 0 {
                let _ = self.back.try_send(done);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(Ok(buf)) => self.cur = buf,
                Ok(Err(e)) => return Err(e),
                // The reader ended: at EOF, or early, which `finish` reports.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives its bytes in odd-sized reads, then fails if asked to.
    struct Source {
        data: Vec<u8>,
        at: usize,
        fail_at_end: bool,
    }

    impl Read for Source {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                if self.fail_at_end {
                    return Err(io::Error::other("cut"));
                }
                return Ok(0);
            }
            let n = out.len().min(4093).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn delivers_every_byte_then_its_digest_or_the_error() {
        let data: Vec<u8> = (0..3 * CHUNK + 77).map(|i| (i * 7 % 251) as u8).collect();
        for fail_at_end in [false, true] {
            std::thread::scope(|s| {
                let src = Source {
                    data: data.clone(),
                    at: 0,
                    fail_at_end,
                };
                let mut p = Prefetched::start(s, src).expect("thread");
                let mut got = Vec::new();
                let mut buf = vec![0u8; 1000];
                let res = loop {
                    match p.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => break Err(e),
                    }
                };
                assert_eq!(got, data, "every byte before the end, fail {fail_at_end}");
                let end = p.finish();
                if fail_at_end {
                    assert!(res.is_err());
                    assert_eq!(end, None);
                } else {
                    assert!(res.is_ok());
                    let want: [u8; 32] = Sha256::digest(&data).into();
                    assert_eq!(end, Some((want, data.len() as u64)));
                }
            });
        }
    }

    #[test]
    fn an_importer_that_stops_early_lets_the_reader_go() {
        let data = vec![7u8; 20 * CHUNK];
        std::thread::scope(|s| {
            let src = Source {
                data,
                at: 0,
                fail_at_end: false,
            };
            let mut p = Prefetched::start(s, src).expect("thread");
            let mut buf = [0u8; 512];
            assert_eq!(p.read(&mut buf).expect("read"), 512);
            // Not read to the end: no digest, and the scope still ends (the reader exits).
            assert_eq!(p.finish(), None);
        });
    }
}
