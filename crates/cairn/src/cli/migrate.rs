//! `cairn migrate docker DIR`: move a Docker data root's layers and images into the root.

use super::error::CliError;
use super::Ctx;
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum MigrateCmd {
    /// Import the layers (aufs or overlay2, from Docker's layer store) and images of a Docker
    /// data root such as /var/lib/docker, read-only on it. Each layer's tar is re-assembled
    /// from tar-split and checked against its DiffID before it is imported; one that does not
    /// match is skipped and named. Run again after an interruption: nothing is imported twice.
    /// Exit 1 when anything was skipped.
    Docker {
        /// The Docker data root (stop the daemon first).
        dir: PathBuf,
        /// The driver whose layer store to read, when the root has more than one.
        #[arg(long, value_enum, value_name = "DRIVER")]
        storage_driver: Option<StorageDriver>,
        /// Import nothing unless every layer and image can be moved.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageDriver {
    Aufs,
    Overlay2,
}

pub fn run(ctx: &Ctx, cmd: MigrateCmd) -> Result<u8, CliError> {
    let MigrateCmd::Docker {
        dir,
        storage_driver,
        strict,
    } = cmd;
    let options = cairn_migrate::Options {
        storage_driver: storage_driver.map(|d| match d {
            StorageDriver::Aufs => cairn_migrate::GraphDriver::Aufs,
            StorageDriver::Overlay2 => cairn_migrate::GraphDriver::Overlay2,
        }),
        strict,
    };
    let bar = super::progress::bytes(ctx.out.json, 0, "migrate");
    let summary = ctx.with_engine(|e| {
        let progress = |event: cairn_migrate::Event<'_>| match event {
            cairn_migrate::Event::Planned { layers, images } => {
                bar.set_message(format!("{layers} layers, {images} images: checking"));
            }
            cairn_migrate::Event::Verified { chain_id, .. } => {
                bar.set_message(format!("checked {}", short(chain_id)));
            }
            cairn_migrate::Event::Imported {
                chain_id,
                size_bytes,
                ..
            } => {
                bar.set_message(format!("imported {}", short(chain_id)));
                bar.inc(size_bytes);
            }
            cairn_migrate::Event::Image { name } => bar.set_message(format!("named {name}")),
        };
        Ok(cairn_migrate::migrate(e, &dir, &options, &progress)?)
    });
    bar.finish_and_clear();
    let summary = summary?;
    ctx.out.result(&summary, || {
        let out = &ctx.out;
        out.line(&format!(
            "moved {} layers ({} bytes) and {} images from {} ({}); {} layers and {} images were \
             already there",
            summary.layers_moved,
            summary.bytes_moved,
            summary.images_moved,
            summary.source,
            summary.driver,
            summary.layers_present,
            summary.images_present,
        ))?;
        for name in &summary.names {
            out.line(&format!("image {name}"))?;
        }
        for s in &summary.skipped {
            out.line(&format!("skipped {} {}: {}", s.kind, s.id, s.reason))?;
        }
        for w in &summary.warnings {
            out.line(&format!("warning: {w}"))?;
        }
        Ok(())
    })?;
    Ok(u8::from(!summary.skipped.is_empty()))
}

fn short(chain_id: &str) -> &str {
    let hex = chain_id.strip_prefix("sha256:").unwrap_or(chain_id);
    hex.get(..12).unwrap_or(hex)
}
