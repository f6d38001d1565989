//! Threads for heavy work (copying trees, syncing them, computing usage, deleting), so the
//! engine thread only ever journals and renames.

use crossbeam_channel::{bounded, Sender};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub struct Workers {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// Jobs waiting for a worker, at most. Every job belongs to a client that is blocked waiting for
/// its reply, so this is reached only with that many clients; then the engine thread waits.
pub const MAX_QUEUED_JOBS: usize = 4096;

impl Workers {
    pub fn new(count: usize) -> Workers {
        let (tx, rx) = bounded::<Job>(MAX_QUEUED_JOBS);
        let threads = (0..count.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-worker-{i}"))
                    .spawn(move || {
                        for job in rx {
                            job();
                        }
                    })
                    .expect("spawn a worker thread")
            })
            .collect();
        Workers {
            tx: Some(tx),
            threads,
        }
    }

    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(tx) = &self.tx {
            // The workers only stop when `tx` is dropped, so the channel is open.
            tx.send(Box::new(job))
                .expect("workers run until the engine stops");
        }
    }

    /// Let queued jobs finish, then stop the threads.
    pub fn join(mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
