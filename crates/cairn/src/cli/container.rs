//! `cairn container …`: a read-write snapshot on a NAME-init snapshot on an image or layer.

use super::error::CliError;
use super::output::{mount_text, mounts_json};
use super::Ctx;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ContainerCmd {
    /// Create container NAME on an image's top layer or on a layer; prints its mounts.
    Create {
        name: String,
        #[arg(long, conflicts_with = "layer", required_unless_present = "layer")]
        image: Option<String>,
        /// ChainID of the layer to run on.
        #[arg(long)]
        layer: Option<String>,
    },
    /// Remove a container and its two snapshots; releases its layer.
    #[command(alias = "remove")]
    Rm { name: String },
    /// List containers: NAME LAYER READY.
    #[command(alias = "list")]
    Ls,
}

pub fn run(ctx: &Ctx, cmd: ContainerCmd) -> Result<(), CliError> {
    match cmd {
        ContainerCmd::Create { name, image, layer } => {
            let mounts = ctx.with_engine(|e| {
                Ok(e.create_container(&name, layer.as_deref(), image.as_deref())?)
            })?;
            ctx.out.result(&mounts_json(&mounts), || {
                for m in &mounts {
                    ctx.out.line(&mount_text(m))?;
                }
                Ok(())
            })
        }
        ContainerCmd::Rm { name } => ctx.with_engine(|e| Ok(e.remove_container(&name)?)),
        ContainerCmd::Ls => {
            let list = ctx.with_engine(|e| Ok(e.containers()?))?;
            ctx.out.result(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| vec![c.name.clone(), c.layer.clone(), c.ready.to_string()])
                    .collect();
                ctx.out.table(&["NAME", "LAYER", "READY"], &rows)
            })
        }
    }
}
