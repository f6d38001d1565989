//! From the async gRPC handlers to the synchronous engine handle.
//!
//! An engine call blocks its thread until the engine thread answers (after the journal sync),
//! so it must not run on the runtime's worker threads. Each call first takes a permit from a
//! bounded semaphore (waiting asynchronously when all are out: that wait is the backpressure,
//! and it holds no thread), then runs on tokio's blocking pool, which the runtime sizes to the
//! number of permits. At most `max_in_flight` calls are in the engine's queue or running.

use crate::error::status_of;
use cairn_engine::{EngineError, EngineHandle};
use containerd_snapshots::tonic::Status;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct Bridge {
    engine: EngineHandle,
    permits: Arc<Semaphore>,
}

impl Bridge {
    pub fn new(engine: EngineHandle, max_in_flight: usize) -> Bridge {
        Bridge {
            engine,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Run `f` against the engine off the async threads. The call runs to its end even if the
    /// client goes away meanwhile: the engine answers every command it took.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&EngineHandle) -> Result<T, EngineError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .instrument(tracing::trace_span!("queue"))
            .await
            .map_err(|_| Status::unavailable("the server is stopping"))?;
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
