//! The layers of a multi-layer image extracted side by side, on a driver whose extraction does
//! not read the parent (overlay), and recorded in chain order (docs/parallel-import.md).
//!
//! At most [`max_extractions`] layers extract at once (each is a streaming extraction on an
//! engine worker, holding one open blob and bounded buffers); a layer extracted ahead of its
//! parent waits, durable in staging, and is attached as soon as its parent is a layer. The
//! first failure stops new extractions; what is staged and not attached is aborted (dropping a
//! `StagedLayer` aborts it), so no child outlives a parent that did not make it.

use super::error::ImageError;
use super::{open_layer, Event, Plan};
use cairn_engine::{EngineHandle, StageOptions, StagedLayer};
use cairn_layer::Digest;
use std::collections::BTreeMap;

/// Never more extractions at once than this, whatever the machine.
pub const MAX_PARALLEL_EXTRACTIONS: usize = 8;

/// How many layers extract at once: the machine's cores (2 at least: one extraction waiting
/// on its sync leaves the CPU to the other), at most [`MAX_PARALLEL_EXTRACTIONS`].
pub fn max_extractions() -> usize {
    std::thread::available_parallelism()
        .map_or(2, usize::from)
        .clamp(2, MAX_PARALLEL_EXTRACTIONS)
}

/// Where the parallel import of `plan` starts, if it is worth one: the first layer not in the
/// store yet, when at least two remain and the driver can extract them before their parents.
/// Layers before it are in the store already (the serial path finds them without reading).
pub(crate) fn start(engine: &EngineHandle, plan: &Plan) -> Result<Option<usize>, ImageError> {
    if plan.layers.len() < 2 || !engine.extracts_without_parent()? {
        return Ok(None);
    }
    let mut parent: Option<Digest> = None;
    for (index, layer) in plan.layers.iter().enumerate() {
        let chain = cairn_layer::chain_id(parent.as_ref(), &layer.diff_id);
        if engine.layer(&chain.to_string()).is_err() {
            return Ok((plan.layers.len() - index >= 2).then_some(index));
        }
        parent = Some(chain);
    }
    Ok(None)
}

/// Import layers `from..` of `plan` onto `parent`; their ChainIDs in order and how many were
/// in the store already.
pub(crate) fn import(
    engine: &EngineHandle,
    source: &super::Source,
    plan: &Plan,
    from: usize,
    parent: Option<String>,
    image: &str,
    progress: &dyn Fn(Event<'_>),
) -> Result<(Vec<String>, usize), ImageError> {
    let count = plan.layers.len();
    let window = max_extractions();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Result<StagedLayer, _>)>();
    std::thread::scope(|scope| {
        let mut next = from;
        let mut running = 0usize;
        let mut staged: BTreeMap<usize, StagedLayer> = BTreeMap::new();
        let mut parent = parent;
        let mut layers = Vec::new();
        let mut reused = 0;
        let mut failed: Option<ImageError> = None;
        loop {
            while failed.is_none() && running < window && next < count {
                let layer = &plan.layers[next];
                let index = next;
                next += 1;
                let (reader, size_bytes) = match open_layer(source, layer) {
                    Ok(r) => r,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                progress(Event::Layer {
                    image,
                    index,
                    count,
                    size_bytes,
                });
                let options = StageOptions {
                    pin: false,
                    expected_diff_id: Some(layer.diff_id),
                };
                let (engine, done_tx) = (engine.clone(), done_tx.clone());
                running += 1;
                scope.spawn(move || {
                    let _ = done_tx.send((index, engine.stage_layer(reader, options)));
                });
            }
            // Attach every staged layer whose parent is a layer now, in chain order.
            let want = from + layers.len();
            if failed.is_none() {
                if let Some(s) = staged.remove(&want) {
                    match engine.attach_layer(s, parent.as_deref()) {
                        Ok(imported) => {
                            reused += usize::from(imported.existed);
                            layers.push(imported.chain_id.clone());
                            parent = Some(imported.chain_id);
                        }
                        Err(e) => failed = Some(e.into()),
                    }
                    continue;
                }
            }
            if running == 0 {
                break;
            }
            let Ok((index, result)) = done_rx.recv() else {
                break;
            };
            running -= 1;
            match result {
                Ok(s) if failed.is_none() => {
                    staged.insert(index, s);
                }
                // Dropped: aborted. A child of a failed layer is never attached.
                Ok(s) => drop(s),
                Err(e) => {
                    failed.get_or_insert(e.into());
                }
            }
        }
        // Anything still staged is a child of the failure: dropped, so aborted.
        drop(staged);
        match failed {
            Some(e) => Err(e),
            None if layers.len() == count - from => Ok((layers, reused)),
            None => Err(ImageError::Format {
                path: image.to_owned(),
                reason: "a layer's extraction ended without an answer".into(),
            }),
        }
    })
}
