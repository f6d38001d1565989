//! The sha256 of each file's content (a span of the layer's stream) for the metadata records,
//! on a helper thread, so it runs beside the file writes, not after them. (The stream's own
//! sha256, the DiffID, is taken by the reader thread in `prefetch`.)

use std::collections::VecDeque;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest as _, Sha256};

/// Bytes gathered before they are handed to the hashing thread.
const BATCH: usize = 256 * 1024;
/// Batches in flight at most: bounds the memory to a few MiB.
const IN_FLIGHT: usize = 4;

/// A batch: stream bytes, and the file spans `(stream offset, length)` that start in it.
type Batch = (Vec<u8>, Vec<(u64, u64)>);
/// One digest per span in the order the spans were given.
type Digests = Vec<[u8; 32]>;
/// The channel to the hashing thread, the buffers it gives back, and the thread.
type Pipe = (Sender<Batch>, Receiver<Vec<u8>>, JoinHandle<Digests>);

/// The hashing itself, the same on the thread and inline.
struct Hashes {
    offset: u64,
    /// Spans not yet complete: (end offset, hasher), in stream order.
    open: VecDeque<(u64, u64, Sha256)>,
    done: Vec<[u8; 32]>,
}

impl Hashes {
    fn new() -> Hashes {
        Hashes {
            offset: 0,
            open: VecDeque::new(),
            done: Vec::new(),
        }
    }

    fn consume(&mut self, bytes: &[u8], spans: &[(u64, u64)]) {
        self.open.extend(
            spans
                .iter()
                .map(|&(start, len)| (start, start + len, Sha256::new())),
        );
        let (from, to) = (self.offset, self.offset + bytes.len() as u64);
        while let Some((start, end, h)) = self.open.front_mut() {
            let (a, b) = ((*start).max(from), (*end).min(to));
            if a < b {
                h.update(&bytes[(a - from) as usize..(b - from) as usize]);
            }
            if *end > to {
                break;
            }
            if let Some((_, _, h)) = self.open.pop_front() {
                self.done.push(h.finalize().into());
            }
        }
        self.offset = to;
    }

    fn finish(mut self) -> Digests {
        // Spans past the end (a stream cut short) cannot be complete; the import fails
        // before their digests are used, but every span still gets one.
        while let Some((_, _, h)) = self.open.pop_front() {
            self.done.push(h.finalize().into());
        }
        self.done
    }
}

pub(crate) struct HashPipe {
    pending: Vec<u8>,
    spans: Vec<(u64, u64)>,
    /// Stream bytes given so far.
    offset: u64,
    /// `None` once the thread is gone (or could not start): hash inline from then on.
    pipe: Option<Pipe>,
    inline: Option<Hashes>,
    /// Some bytes went to a thread that died: no digest can be given.
    broken: bool,
}

impl HashPipe {
    pub(crate) fn new() -> HashPipe {
        let (tx, rx) = bounded::<Batch>(IN_FLIGHT);
        let (back_tx, back_rx) = bounded::<Vec<u8>>(IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("cairn-hash".into())
            .spawn(move || {
                let mut h = Hashes::new();
                for (b, spans) in rx {
                    h.consume(&b, &spans);
                    let _ = back_tx.try_send(b);
                }
                h.finish()
            });
        let (pipe, inline) = match thread {
            Ok(t) => (Some((tx, back_rx, t)), None),
            Err(_) => (None, Some(Hashes::new())),
        };
        HashPipe {
            pending: Vec::with_capacity(BATCH),
            spans: Vec::new(),
            offset: 0,
            pipe,
            inline,
            broken: false,
        }
    }

    /// The next `len` bytes given are a file's content: its digest is the next one
    /// [`finalize`](Self::finalize) returns.
    pub(crate) fn file_span(&mut self, len: u64) {
        self.spans.push((self.offset, len));
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.offset += data.len() as u64;
        if let Some(h) = &mut self.inline {
            h.consume(data, &std::mem::take(&mut self.spans));
            return;
        }
        self.pending.extend_from_slice(data);
        if self.pending.len() >= BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        let Some((tx, back, _)) = &self.pipe else {
            return;
        };
        let next = back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut self.pending, next);
        self.pending.clear();
        if tx.send((full, std::mem::take(&mut self.spans))).is_err() {
            // Unreachable in practice (the thread only ends when the sender is dropped); the
            // digest would be wrong, so make finalize fail rather than guess.
            self.pipe = None;
            self.broken = true;
        }
    }

    /// The sha256 of each file span in order; `None` if the hashing thread failed.
    pub(crate) fn finalize(&mut self) -> Option<Digests> {
        if self.broken {
            return None;
        }
        if let Some(mut h) = self.inline.take() {
            h.consume(&[], &std::mem::take(&mut self.spans));
            return Some(h.finish());
        }
        self.send();
        let (tx, _, thread) = self.pipe.take()?;
        drop(tx);
        thread.join().ok()
    }
}

impl std::fmt::Debug for HashPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashPipe")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_hash_their_bytes_across_batches() {
        let data: Vec<u8> = (0..3 * BATCH + 77).map(|i| (i * 7 % 251) as u8).collect();
        // Spans: empty at the start, one inside a batch, one across two batch boundaries,
        // one empty in the middle, one ending at the very end.
        let spans = [
            (0, 0),
            (10, 1000),
            (BATCH - 5, BATCH + 10),
            (2 * BATCH + 5, 0),
            (2 * BATCH + 5, BATCH + 72),
        ];
        for threaded in [true, false] {
            let mut p = HashPipe::new();
            if !threaded {
                p.pipe = None;
                p.inline = Some(Hashes::new());
            }
            let mut at = 0usize;
            for &(start, len) in &spans {
                // Feed in odd-sized pieces up to the span's start, then register it.
                while at < start {
                    let k = (start - at).min(4093);
                    p.update(&data[at..at + k]);
                    at += k;
                }
                p.file_span(len as u64);
            }
            p.update(&data[at..]);
            let files = p.finalize().expect("digests");
            assert_eq!(files.len(), spans.len());
            for (&(start, len), got) in spans.iter().zip(&files) {
                let want: [u8; 32] = Sha256::digest(&data[start..start + len]).into();
                assert_eq!(got, &want, "span at {start} of {len}, threaded {threaded}");
            }
        }
    }
}
