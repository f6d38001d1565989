//! From the async gRPC handlers to the synchronous engine.
//!
//! Each call first takes a permit from a bounded semaphore (waiting asynchronously when all
//! are out: that wait is the backpressure, and it holds no thread). At most `max_in_flight`
//! calls are in the engine's queue or running at once.
//!
//! A single command ([`Bridge::submit`]) goes to the engine without any thread of ours
//! waiting for it: the engine thread completes a oneshot with the answer, which wakes the
//! handler's task (and gives the permit back). No blocking-pool hop: that hop cost two thread
//! wakeups per request. A compound call (several engine calls with logic between them,
//! [`Bridge::call`]) still runs on tokio's blocking pool, which the runtime sizes to the
//! number of permits.

use crate::error::status_of;
use cairn_engine::{Command, EngineError, EngineHandle};
use containerd_snapshots::tonic::Status;
use std::sync::Arc;
use tokio::sync::{oneshot, watch, Semaphore};

#[derive(Clone, Debug)]
pub struct Bridge {
    engine: EngineHandle,
    permits: Arc<Semaphore>,
    /// Turns true once the engine thread has exited: a command that reached its queue after
    /// it stopped reading is never answered (nor dropped while a handle lives), so a waiting
    /// call watches this too.
    stopped: watch::Receiver<bool>,
}

impl Bridge {
    pub fn new(engine: EngineHandle, max_in_flight: usize) -> Bridge {
        let (set_stopped, stopped) = watch::channel(false);
        let wait = engine.stopped_waiter();
        // One watcher per server, holding no handle (it does not keep the engine open). If
        // the thread cannot start, calls still see a dropped reply from a panicking engine.
        let _ = std::thread::Builder::new()
            .name("cairn-serve-watch".into())
            .spawn(move || {
                wait();
                let _ = set_stopped.send(true);
            });
        Bridge {
            engine,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            stopped,
        }
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the server is stopping"))
    }

    /// Send one command to the engine and wait (asynchronously) for its answer. The command
    /// runs to its end even if the client goes away meanwhile; its permit is given back when
    /// the engine answers, not when the client leaves, so the bound holds either way.
    pub async fn submit<T: Send + 'static>(&self, command: Command<T>) -> Result<T, Status> {
        let permit = self.permit().await?;
        let (tx, mut rx) = oneshot::channel();
        let on_reply = move |answer: Result<T, EngineError>| {
            drop(permit);
            // The handler may have gone away (client cancelled): nobody waits then.
            let _ = tx.send(answer);
        };
        if let Err(full) = self.engine.submit(command, on_reply) {
            // The engine's queue is full (other users of the handle besides this server's
            // permits): wait for room on a thread that may block.
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || engine.send_blocking(full))
                .await
                .map_err(|e| Status::internal(format!("engine call failed: {e}")))?;
        }
        let mut stopped = self.stopped.clone();
        let answer = tokio::select! {
            biased;
            r = &mut rx => r.ok(),
            // An answer sent before the engine exited wins.
            () = async {
                // No watcher (its thread could not start): only a reply or its drop ends this.
                if stopped.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => rx.try_recv().ok(),
        };
        match answer {
            Some(result) => result.map_err(|e| status_of(&e)),
            None => Err(status_of(&self.engine.gone())),
        }
    }

    /// Run `f` (several engine calls) on the blocking pool. The call runs to its end even if
    /// the client goes away meanwhile: the engine answers every command it took.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&EngineHandle) -> Result<T, EngineError> + Send + 'static,
    {
        let permit = self.permit().await?;
        let engine = self.engine.clone();
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _entered = span.enter();
            f(&engine)
        })
        .await;
        match joined {
            Ok(result) => result.map_err(|e| status_of(&e)),
            Err(e) => Err(Status::internal(format!("engine call failed: {e}"))),
        }
    }

    /// Refuse new calls: waiting ones get Unavailable.
    pub fn close(&self) {
        self.permits.close();
    }
}
