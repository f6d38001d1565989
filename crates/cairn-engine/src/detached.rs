//! Detached layer imports, the client side: a layer extracted into a staging area of its own
//! before its parent is a layer, then put on its parent in chain order (docs/parallel-import.md).
//!
//! [`EngineHandle::stage_layer`] extracts a tar and makes it durable in staging, journaling
//! only the import's begin; [`EngineHandle::attach_layer`] journals its completion naming the
//! parent, which must be a layer by then. So the layers of one image extract side by side
//! while their completions are journaled one after the other, each after its parent's.

use super::api::{Imported, Input, Reply, Request};
use super::error::EngineError;
use super::handle::EngineHandle;
use cairn_state::types::{DriverKind, TxId};

/// At most this many detached imports are in flight or staged at once, per engine: each holds
/// a staging area and a pending transaction until it is attached or aborted.
pub const MAX_DETACHED_IMPORTS: usize = 256;

/// Why a detached import was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetachedRefusal {
    /// The driver's extraction reads the parent (vfs, btrfs, block copy or clone it first).
    #[error("the {driver:?} driver extracts a layer on a copy of its parent, so it cannot stage one before its parent")]
    Unsupported {
        /// The root's driver.
        driver: DriverKind,
    },
    /// [`MAX_DETACHED_IMPORTS`] are in flight or staged already.
    #[error("{max} detached imports are in flight already")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// No staged import of this transaction waits to be attached (attached or aborted already).
    #[error("no staged layer import {txid} waits to be attached")]
    NotStaged {
        /// The import's transaction.
        txid: TxId,
    },
}

/// How to stage a layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageOptions {
    /// The user holds the layer once attached, until `layer rm`.
    pub pin: bool,
    /// The DiffID the tar must have (from an image config): checked before it is staged.
    pub expected_diff_id: Option<cairn_layer::Digest>,
}

/// What the engine answers a staging with.
#[derive(Debug)]
pub(crate) struct Staged {
    pub txid: TxId,
    pub diff_id: String,
    pub size_bytes: u64,
}

/// The detached-import commands.
#[derive(Debug)]
pub(crate) enum DetachedRequest {
    /// Whether the driver can extract a layer before its parent.
    Supported {
        reply: Reply<bool>,
    },
    Stage {
        input: Input,
        options: StageOptions,
        reply: Reply<Staged>,
    },
    Attach {
        txid: TxId,
        parent: Option<String>,
        reply: Reply<Imported>,
    },
    Abort {
        txid: TxId,
        reply: Reply<()>,
    },
}

impl DetachedRequest {
    pub(crate) fn refuse(self, error: EngineError) {
        // The caller may have gone away; nothing is waiting then.
        match self {
            DetachedRequest::Supported { reply } => drop(reply.send(Err(error))),
            DetachedRequest::Stage { reply, .. } => drop(reply.send(Err(error))),
            DetachedRequest::Attach { reply, .. } => drop(reply.send(Err(error))),
            DetachedRequest::Abort { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

/// A layer extracted and durable in a staging area of its own, not yet a layer. Put it on its
/// parent with [`EngineHandle::attach_layer`]; dropped unattached, its import is aborted (and
/// a crash before either drops it: recovery row R41).
#[derive(Debug)]
pub struct StagedLayer {
    txid: TxId,
    diff_id: String,
    size_bytes: u64,
    /// Taken by `attach_layer`; still here on drop means: abort.
    engine: Option<EngineHandle>,
}

impl StagedLayer {
    /// The import's transaction.
    pub fn txid(&self) -> TxId {
        self.txid
    }

    /// The DiffID of the tar that was read.
    pub fn diff_id(&self) -> &str {
        &self.diff_id
    }

    /// Uncompressed tar length.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}

impl Drop for StagedLayer {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            // Best effort: if the engine is gone, recovery drops the import (R41).
            let txid = self.txid;
            if let Err(e) =
                engine.call(|reply| Request::Detached(DetachedRequest::Abort { txid, reply }))
            {
                tracing::debug!(%txid, error = %e, "aborting an unattached staged layer");
            }
        }
    }
}

impl EngineHandle {
    /// Whether this root's driver can stage a layer before its parent is a layer (overlay).
    pub fn extracts_without_parent(&self) -> Result<bool, EngineError> {
        self.call(|reply| Request::Detached(DetachedRequest::Supported { reply }))
    }

    /// Extract a layer tar (plain, gzip or zstd) into a staging area of its own and make it
    /// durable, without naming its parent: several can run at once. Journals only the
    /// import's begin; [`attach_layer`](Self::attach_layer) records the layer.
    pub fn stage_layer(
        &self,
        input: Box<dyn std::io::Read + Send>,
        options: StageOptions,
    ) -> Result<StagedLayer, EngineError> {
        let staged = self.call(|reply| {
            Request::Detached(DetachedRequest::Stage {
                input: Input(input),
                options,
                reply,
            })
        })?;
        Ok(StagedLayer {
            txid: staged.txid,
            diff_id: staged.diff_id,
            size_bytes: staged.size_bytes,
            engine: Some(self.clone()),
        })
    }

    /// Record a staged layer on `parent` (a layer's ChainID, or none for a base layer), once
    /// `parent` is a layer: call it in chain order, each after its parent's returned. Answered
    /// when the completion is durable and the tree installed. On any error the staged import
    /// is aborted (a parent that is not a layer: `NotFound`).
    pub fn attach_layer(
        &self,
        mut staged: StagedLayer,
        parent: Option<&str>,
    ) -> Result<Imported, EngineError> {
        // The engine aborts the import itself if the attach fails: nothing is left to drop.
        staged.engine = None;
        let txid = staged.txid;
        self.call(|reply| {
            Request::Detached(DetachedRequest::Attach {
                txid,
                parent: parent.map(str::to_owned),
                reply,
            })
        })
    }
}
