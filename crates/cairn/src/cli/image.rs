//! `cairn image …`: load `docker save` archives, OCI archives and OCI layouts; list; remove.

use super::error::CliError;
use super::output::time_text;
use super::{progress, Ctx};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Load every image in a `docker save` archive, an OCI archive or an OCI layout directory.
    Load {
        path: PathBuf,
        /// Extract the layers one after another, even where the driver could extract them side
        /// by side (overlay).
        #[arg(long)]
        serial: bool,
    },
    /// List images: NAME TOP LAYERS CREATED.
    #[command(alias = "list")]
    Ls,
    /// Remove an image; layers nothing else holds are deleted.
    #[command(alias = "remove")]
    Rm { name: String },
}

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> Result<(), CliError> {
    match cmd {
        ImageCmd::Load { path, serial } => {
            let bar = progress::bytes(ctx.out.json, 0, "load");
            let loaded = ctx.with_engine(|e| {
                let progress = |event: cairn_image::Event<'_>| {
                    let cairn_image::Event::Layer {
                        image,
                        index,
                        count,
                        size_bytes,
                    } = event;
                    bar.set_message(format!("{image}: layer {}/{count}", index + 1));
                    bar.inc(size_bytes);
                };
                let options = cairn_image::LoadOptions { parallel: !serial };
                Ok(cairn_image::load_with(e, &path, options, &progress)?)
            });
            bar.finish_and_clear();
            let loaded = loaded?;
            ctx.out.result(&loaded, || {
                for image in &loaded {
                    let names = image.names.join(", ");
                    let reused = image.reused;
                    let count = image.layers.len();
                    ctx.out.line(&format!(
                        "loaded {names}: {count} layers ({reused} already present), top {}",
                        image.top
                    ))?;
                }
                Ok(())
            })
        }
        ImageCmd::Ls => {
            let images = ctx.with_engine(|e| Ok(e.images()?))?;
            ctx.out.result(&images, || {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.top.clone(),
                            i.layers.len().to_string(),
                            time_text(i.created_ns),
                        ]
                    })
                    .collect();
                ctx.out.table(&["NAME", "TOP", "LAYERS", "CREATED"], &rows)
            })
        }
        ImageCmd::Rm { name } => ctx.with_engine(|e| Ok(e.remove_image(&name)?)),
    }
}
