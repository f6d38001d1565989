//! `cairn mount KEY TARGET`, `cairn umount TARGET` and `cairn mounted`: reference-counted
//! mounts, as Docker's aufs driver counted them (`Get`/`Put`), journaled by the engine. Real
//! mounts, so root only.

use super::error::{CliError, ErrorKind};
use super::Ctx;
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
    let (info, mounts) = ctx.with_engine(|e| {
        let info = e.mount(key, target)?;
        Ok((info, e.mounts(key)?))
    })?;
    let value = json!({
        "key": info.key,
        "target": info.target,
        "count": info.count,
        "mounts": super::output::mounts_json(&mounts),
    });
    ctx.out.result(&value, || {
        if info.count == 1 {
            for m in &mounts {
                let command = super::output::mount_command(m, &info.target);
                ctx.out.line(&format!("mounted: {command}"))?;
            }
        } else {
            ctx.out.line(&format!("already mounted: {}", info.target))?;
        }
        ctx.out.line(&format!("references: {}", info.count))
    })
}

pub fn umount(ctx: &Ctx, target: &Path) -> Result<(), CliError> {
    require_root("umount")?;
    let info = ctx.with_engine(|e| Ok(e.unmount(target)?))?;
    let value = json!({"key": info.key, "target": info.target, "count": info.count});
    ctx.out.result(&value, || {
        if info.count == 0 {
            ctx.out.line(&format!("unmounted: {}", info.target))
        } else {
            ctx.out.line(&format!(
                "released: {} (references left: {})",
                info.target, info.count
            ))
        }
    })
}

pub fn mounted(ctx: &Ctx) -> Result<(), CliError> {
    let infos = ctx.with_engine(|e| Ok(e.mount_refs()?))?;
    ctx.out.result(&infos, || {
        let rows: Vec<Vec<String>> = infos
            .iter()
            .map(|i| vec![i.target.clone(), i.key.clone(), i.count.to_string()])
            .collect();
        ctx.out.table(&["TARGET", "KEY", "REFERENCES"], &rows)
    })
}
