//! `cairn snapshot changes KEY` (what `docker diff` prints) and `cairn snapshot usage` with
//! aufs' `DiffSize` beside the whole tree's size.

use super::error::CliError;
use super::output::size_text;
use super::Ctx;
use serde::Serialize;

/// `snapshot usage` with `--json`: the snapshot's own tree, its changes' bytes (`DiffSize`)
/// and the whole tree a mount of it shows.
#[derive(Debug, Serialize)]
struct UsageJson {
    key: String,
    size: u64,
    inodes: u64,
    diff_size: u64,
    tree_size: u64,
    tree_inodes: u64,
}

pub fn changes(ctx: &Ctx, key: &str) -> Result<(), CliError> {
    let changes = ctx.with_engine(|e| Ok(e.changes(key)?))?;
    let out = &ctx.out;
    out.result(&changes, || {
        changes
            .iter()
            .try_for_each(|c| out.line(&format!("{} {}", c.kind, c.path)))
    })
}

pub fn usage(ctx: &Ctx, key: Option<&str>) -> Result<(), CliError> {
    let out = &ctx.out;
    let usages = ctx.with_engine(|e| {
        let keys = match key {
            Some(k) => vec![k.to_owned()],
            None => e.walk(&[])?.into_iter().map(|i| i.key).collect(),
        };
        let mut usages = Vec::new();
        for key in keys {
            let u = e.diff_usage(&key)?;
            usages.push(UsageJson {
                key,
                size: u.usage.size_bytes,
                inodes: u.usage.inodes,
                diff_size: u.diff_size_bytes,
                tree_size: u.tree_size_bytes,
                tree_inodes: u.tree_inodes,
            });
        }
        Ok(usages)
    })?;
    let human = || {
        let rows: Vec<Vec<String>> = usages
            .iter()
            .map(|u| {
                vec![
                    u.key.clone(),
                    size_text(u.size),
                    u.inodes.to_string(),
                    size_text(u.diff_size),
                    size_text(u.tree_size),
                ]
            })
            .collect();
        out.table(&["KEY", "SIZE", "INODES", "DIFF", "TREE"], &rows)
    };
    match (key, usages.first()) {
        (Some(_), Some(one)) => out.result(one, human),
        _ => out.result(&usages, human),
    }
}
