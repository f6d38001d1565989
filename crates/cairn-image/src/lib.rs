//! Loading images: `docker save` archives, OCI archives and OCI image layouts. A client of the
//! engine, like the CLI: it plans the load from the image's JSON, streams each layer into
//! `EngineHandle::import_layer` (checked against the blob digest and the config's DiffID), and
//! records the image with `put_image` once every layer is in.

mod docker;
mod error;
mod oci;
mod parallel;
mod plan;
mod source;
mod verify;

pub use error::ImageError;
pub use parallel::{max_extractions, MAX_PARALLEL_EXTRACTIONS};
pub use plan::{diff_ids, Plan, PlannedLayer};
use source::Source;

use cairn_engine::{EngineHandle, ImportOptions};
use cairn_state::MAX_LAYER_DEPTH;

/// One image loaded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Loaded {
    pub names: Vec<String>,
    pub top: String,
    /// ChainIDs, base first.
    pub layers: Vec<String>,
    /// Layers that were already in the store.
    pub reused: usize,
}

/// What `load` reports as it goes, for progress bars.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    Layer {
        image: &'a str,
        index: usize,
        count: usize,
        size_bytes: u64,
    },
}

/// How to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Extract the layers of a multi-layer image side by side where the driver allows it
    /// (overlay), recording them in chain order; `false`: one after another.
    pub parallel: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { parallel: true }
    }
}

/// Load every image in the file or directory at `path`.
pub fn load(
    engine: &EngineHandle,
    path: &std::path::Path,
    progress: &dyn Fn(Event<'_>),
) -> Result<Vec<Loaded>, ImageError> {
    load_with(engine, path, LoadOptions::default(), progress)
}

/// [`load`] with options.
pub fn load_with(
    engine: &EngineHandle,
    path: &std::path::Path,
    options: LoadOptions,
    progress: &dyn Fn(Event<'_>),
) -> Result<Vec<Loaded>, ImageError> {
    let source = Source::open(path)?;
    let plans = plan::plans(&source)?;
    if plans.is_empty() {
        return Err(ImageError::Format {
            path: source.describe(),
            reason: "it lists no image".into(),
        });
    }
    plans
        .iter()
        .map(|p| load_one(engine, &source, p, options, progress))
        .collect()
}

fn load_one(
    engine: &EngineHandle,
    source: &Source,
    plan: &Plan,
    options: LoadOptions,
    progress: &dyn Fn(Event<'_>),
) -> Result<Loaded, ImageError> {
    let image = plan.names.first().cloned().unwrap_or_default();
    if plan.layers.is_empty() {
        return Err(ImageError::Format {
            path: image,
            reason: "the image has no layers".into(),
        });
    }
    if plan.layers.len() > MAX_LAYER_DEPTH {
        return Err(ImageError::TooManyLayers {
            what: image,
            count: plan.layers.len(),
            max: MAX_LAYER_DEPTH,
        });
    }
    let mut parent: Option<String> = None;
    let mut layers = Vec::new();
    let mut reused = 0;
    let parallel_from = if options.parallel {
        parallel::start(engine, plan)?
    } else {
        None
    };
    for (index, layer) in plan.layers.iter().enumerate() {
        if Some(index) == parallel_from {
            let (rest, found) =
                parallel::import(engine, source, plan, index, parent, &image, progress)?;
            reused += found;
            parent = rest.last().cloned();
            layers.extend(rest);
            break;
        }
        let (reader, size) = open_layer(source, layer)?;
        progress(Event::Layer {
            image: &image,
            index,
            count: plan.layers.len(),
            size_bytes: size,
        });
        let options = ImportOptions {
            parent: parent.clone(),
            pin: false,
            expected_diff_id: Some(layer.diff_id),
        };
        let imported = engine.import_layer(reader, options)?;
        reused += usize::from(imported.existed);
        layers.push(imported.chain_id.clone());
        parent = Some(imported.chain_id);
    }
    let top = parent.expect("at least one layer");
    for name in &plan.names {
        // The image and its original config (and manifest) in one record: no crash leaves the
        // image listed without them (`cairn push` re-sends them, docs/registry.md).
        engine.put_image_kept(
            name,
            &top,
            &plan.manifest_digest,
            &plan.config_digest,
            &plan.config,
            plan.manifest.as_deref(),
        )?;
    }
    Ok(Loaded {
        names: plan.names.clone(),
        top,
        layers,
        reused,
    })
}

/// A layer's blob as a stream checked against its blob digest (`verify::layer_reader`), with
/// its size.
fn open_layer(
    source: &Source,
    layer: &PlannedLayer,
) -> Result<(Box<dyn std::io::Read + Send>, u64), ImageError> {
    let (reader, size) = source.open_file(&layer.path)?;
    let reader = verify::layer_reader(reader, size, layer);
    Ok((reader, size))
}
