//! Threads for heavy work (copying trees, syncing them, computing usage, deleting), so the
//! engine thread only ever journals and renames.
//!
//! A job is a piece of work and a delivery. The work runs under `catch_unwind`: if it panics
//! (a bug), the panic is logged and the delivery gets [`Panicked`] instead of a result, so the
//! client waiting on the job gets an error and the worker thread lives on.

use crossbeam_channel::{bounded, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
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

/// A job's work panicked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    pub job: &'static str,
    pub message: String,
}

impl From<Panicked> for super::error::EngineError {
    fn from(p: Panicked) -> Self {
        super::error::EngineError::WorkerPanicked {
            job: p.job,
            message: p.message,
        }
    }
}

/// The text of a panic's payload (what `panic!` was given, when it was a string).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

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

    /// Run `work` on a worker and hand its result to `deliver` (on that worker). `deliver` must
    /// not panic: it only sends on a channel.
    pub fn run<T: 'static>(
        &self,
        job: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
        deliver: impl FnOnce(Result<T, Panicked>) + Send + 'static,
    ) {
        let boxed: Job = Box::new(move || {
            // The work owns everything it touches; nothing it leaves half-done is read again
            // except through the driver, whose staging is discarded or reported as a stray.
            let result = catch_unwind(AssertUnwindSafe(|| {
                fail::fail_point!("engine::worker::job");
                work()
            }));
            let result = result.map_err(|payload| {
                let message = panic_message(payload.as_ref());
                tracing::error!(job, %message, "bug: a worker job panicked; its command fails");
                Panicked { job, message }
            });
            deliver(result);
        });
        if let Some(tx) = &self.tx {
            // The workers only stop when `tx` is dropped, so the channel is open.
            tx.send(boxed).expect("workers run until the engine stops");
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
