//! `cairn layer …`: import, export, list, inspect and remove layers; `cairn verify`.

use super::error::{CliError, ErrorKind};
use super::output::size_text;
use super::{progress, Ctx};
use cairn_engine::ImportOptions;
use clap::Subcommand;
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// Import a layer tar (plain, gzip or zstd; `-` for standard input) and print its ChainID.
    Import {
        file: PathBuf,
        /// ChainID of the layer it goes on.
        #[arg(long)]
        parent: Option<String>,
    },
    /// Write a layer's original tar, byte for byte (standard output by default).
    Export {
        chain_id: String,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List layers: CHAIN_ID PARENT SIZE REFS.
    #[command(alias = "list")]
    Ls,
    /// DiffID, ChainID, parent, size, references and snapshot id of a layer.
    Inspect { chain_id: String },
    /// Release a layer you imported; it and every parent nothing holds any more are deleted.
    #[command(alias = "remove")]
    Rm { chain_id: String },
}

/// The DiffID of a layer file: sha256 of its uncompressed stream, read once, nothing written.
fn diff_id_of(
    file: std::fs::File,
    path: &std::path::Path,
) -> Result<cairn_layer::Digest, CliError> {
    use sha2::Digest as _;
    let bad = |e: std::io::Error| {
        CliError::new(
            ErrorKind::InvalidArgument,
            format!("{}: {e}", path.display()),
        )
    };
    let mut decoder =
        cairn_layer::decompress::Decoder::new(std::io::BufReader::new(file)).map_err(bad)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut decoder, &mut hasher).map_err(bad)?;
    Ok(cairn_layer::Digest(hasher.finalize().into()))
}

/// Whether a layer file might be one the store holds: a plain tar only if a stored layer has
/// its length (a layer's size is its uncompressed tar's), a compressed one if any layer is
/// stored (its uncompressed length is not known without reading it).
fn may_be_stored(
    engine: &cairn_engine::EngineHandle,
    path: &std::path::Path,
    size: u64,
) -> Result<bool, CliError> {
    let layers = engine.layers()?;
    if layers.is_empty() {
        return Ok(false);
    }
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::new(ErrorKind::NotFound, format!("{}: {e}", path.display())))?;
    let n = f.read(&mut head).unwrap_or(0);
    Ok(match cairn_layer::decompress::detect(&head[..n]) {
        cairn_layer::Compression::None => layers.iter().any(|l| l.size_bytes == size),
        _ => true,
    })
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

pub fn run(ctx: &Ctx, cmd: LayerCmd) -> Result<(), CliError> {
    match cmd {
        LayerCmd::Import { file, parent } => {
            let open = |path: &std::path::Path| {
                std::fs::File::open(path).map_err(|e| {
                    CliError::new(ErrorKind::NotFound, format!("{}: {e}", path.display()))
                })
            };
            let from_stdin = file.as_os_str() == "-";
            let (input, size): (Box<dyn Read + Send>, u64) = if from_stdin {
                (Box::new(std::io::stdin()), 0)
            } else {
                let f = open(&file)?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                (Box::new(f), size)
            };
            let bar = progress::bytes(ctx.out.json, size, "import");
            let input = Box::new(bar.wrap_read(input));
            let imported = ctx.with_engine(|e| {
                // A file can be read twice: when the store may hold this layer already, learn
                // its DiffID first, so the layer is recognised without extracting anything.
                // Only then: for a new layer the first pass would cost as much hashing as the
                // import itself.
                let expected_diff_id = if !from_stdin && may_be_stored(e, &file, size)? {
                    Some(diff_id_of(open(&file)?, &file)?)
                } else {
                    None
                };
                let options = ImportOptions {
                    parent,
                    pin: true,
                    expected_diff_id,
                };
                Ok(e.import_layer(input, options)?)
            });
            bar.finish_and_clear();
            let imported = imported?;
            ctx.out
                .result(&imported, || ctx.out.line(&imported.chain_id))
        }
        LayerCmd::Export { chain_id, output } => {
            let (out, to_stdout): (Box<dyn std::io::Write + Send>, bool) = match &output {
                Some(path) => {
                    let f = std::fs::File::create(path).map_err(|e| {
                        CliError::new(ErrorKind::Other, format!("{}: {e}", path.display()))
                    })?;
                    (Box::new(f), false)
                }
                None => (Box::new(std::io::stdout()), true),
            };
            let bar = progress::bytes(ctx.out.json || to_stdout, 0, "export");
            let out = Box::new(bar.wrap_write(out));
            let digest = ctx.with_engine(|e| Ok(e.export_layer(&chain_id, out)?));
            bar.finish_and_clear();
            let digest = digest?;
            if let Some(path) = output {
                let value =
                    serde_json::json!({ "chain_id": chain_id, "diff_id": digest, "file": path });
                ctx.out.result(&value, || ctx.out.line(&digest))?;
            }
            Ok(())
        }
        LayerCmd::Ls => {
            let layers = ctx.with_engine(|e| Ok(e.layers()?))?;
            ctx.out.result(&layers, || {
                let rows: Vec<Vec<String>> = layers
                    .iter()
                    .map(|l| {
                        vec![
                            l.chain_id.clone(),
                            l.parent.as_deref().map(short).unwrap_or_default(),
                            size_text(l.size_bytes),
                            l.refcount.to_string(),
                        ]
                    })
                    .collect();
                ctx.out
                    .table(&["CHAIN_ID", "PARENT", "SIZE", "REFS"], &rows)
            })
        }
        LayerCmd::Inspect { chain_id } => {
            let layer = ctx.with_engine(|e| Ok(e.layer(&chain_id)?))?;
            ctx.out.result(&layer, || {
                for (k, v) in [
                    ("ChainID", layer.chain_id.clone()),
                    ("DiffID", layer.diff_id.clone()),
                    ("Parent", layer.parent.clone().unwrap_or_else(|| "-".into())),
                    (
                        "Size",
                        format!(
                            "{} ({} bytes)",
                            size_text(layer.size_bytes),
                            layer.size_bytes
                        ),
                    ),
                    (
                        "Refcount",
                        format!(
                            "{} (pinned: {}, child layers: {}, images and containers: {})",
                            layer.refcount, layer.pinned, layer.children, layer.holders
                        ),
                    ),
                    ("Snapshot", layer.snapshot_id.to_string()),
                ] {
                    ctx.out.line(&format!("{k:<9} {v}"))?;
                }
                Ok(())
            })
        }
        LayerCmd::Rm { chain_id } => ctx.with_engine(|e| Ok(e.remove_layer(&chain_id)?)),
    }
}

/// `cairn verify [CHAIN_ID]`: re-hash stored layers; exit 1 when any differs.
pub fn verify(ctx: &Ctx, chain_id: Option<String>) -> Result<u8, CliError> {
    let results = ctx.with_engine(|e| Ok(e.verify(chain_id.as_deref())?))?;
    let bad = results.iter().filter(|v| v.problem.is_some()).count();
    ctx.out.result(&results, || {
        for v in &results {
            match &v.problem {
                None => ctx.out.line(&format!("{} ok", v.chain_id))?,
                Some(p) => ctx.out.line(&format!("{} DIFFERS: {p}", v.chain_id))?,
            }
        }
        ctx.out.line(&format!(
            "verify: {} layers checked, {bad} differ",
            results.len()
        ))
    })?;
    Ok(u8::from(bad > 0))
}
