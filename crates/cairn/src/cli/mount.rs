//! `cairn mount KEY TARGET` and `cairn umount TARGET`: real mounts, so root only.

use super::error::{CliError, ErrorKind};
use super::output::{mount_command, mounts_json};
use super::Ctx;
use cairn_driver::mount::{mount_all, unmount};
use serde_json::json;
use std::path::Path;

fn require_root(what: &str) -> Result<(), CliError> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return Ok(());
    }
    Err(CliError::new(
        ErrorKind::PermissionDenied,
        format!("{what} needs root (running as uid {euid}); `cairn snapshot mounts TARGET KEY` prints the mount commands instead"),
    ))
}

pub fn mount(ctx: &Ctx, key: &str, target: &Path) -> Result<(), CliError> {
    require_root("mount")?;
    // The root is closed again before mounting: the lock is held only to read the mounts.
    let mounts = ctx.with_engine(|e| Ok(e.mounts(key)?))?;
    mount_all(&mounts, target)?;
    let target_text = target.display().to_string();
    let value = json!({"key": key, "target": target_text, "mounts": mounts_json(&mounts)});
    ctx.out.result(&value, || {
        mounts.iter().try_for_each(|m| {
            ctx.out
                .line(&format!("mounted: {}", mount_command(m, &target_text)))
        })
    })
}

pub fn umount(ctx: &Ctx, target: &Path) -> Result<(), CliError> {
    require_root("umount")?;
    unmount(target)?;
    ctx.out
        .result(&json!({"target": target.display().to_string()}), || Ok(()))
}
