//! sha256 of a stream on a helper thread, so the DiffID of a layer is computed while the
//! caller goes on writing files (and hashing each one): the two hashes of every byte no longer
//! run one after the other on the import's thread.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest as _, Sha256};

/// Bytes gathered before they are handed to the hashing thread.
const BATCH: usize = 256 * 1024;
/// Batches in flight at most: bounds the memory to a few MiB.
const IN_FLIGHT: usize = 4;

/// The channel to the hashing thread, the buffers it gives back, and the thread.
type Pipe = (Sender<Vec<u8>>, Receiver<Vec<u8>>, JoinHandle<Sha256>);

pub(crate) struct HashPipe {
    pending: Vec<u8>,
    /// `None` once the thread is gone (or could not start): hash inline from then on.
    pipe: Option<Pipe>,
    inline: Sha256,
    /// Some bytes went to a thread that died: no digest can be given.
    broken: bool,
}

impl HashPipe {
    pub(crate) fn new() -> HashPipe {
        let (tx, rx) = bounded::<Vec<u8>>(IN_FLIGHT);
        let (back_tx, back_rx) = bounded::<Vec<u8>>(IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("cairn-hash".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for b in rx {
                    h.update(&b);
                    let _ = back_tx.try_send(b);
                }
                h
            });
        HashPipe {
            pending: Vec::with_capacity(BATCH),
            pipe: thread.ok().map(|t| (tx, back_rx, t)),
            inline: Sha256::new(),
            broken: false,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        if self.pipe.is_none() {
            self.inline.update(data);
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
        if tx.send(full).is_err() {
            // Unreachable in practice (the thread only ends when the sender is dropped); the
            // digest would be wrong, so make finalize fail rather than guess.
            self.pipe = None;
            self.broken = true;
        }
    }

    /// The sha256 of everything given; `None` if the hashing thread failed.
    pub(crate) fn finalize(mut self) -> Option<[u8; 32]> {
        if self.broken {
            return None;
        }
        if self.pipe.is_none() {
            // The thread could not start: everything was hashed inline.
            return Some(self.inline.finalize().into());
        }
        self.send();
        let (tx, _, thread) = self.pipe.take()?;
        drop(tx);
        thread.join().ok().map(|h| h.finalize().into())
    }
}

impl std::fmt::Debug for HashPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashPipe")
    }
}
