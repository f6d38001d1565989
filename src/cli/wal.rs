//! `cairn wal dump`: every journal record, decoded. Read-only and without the root lock (see
//! `engine::read_journal`), so it also works on a root a running engine holds.

use super::error::CliError;
use super::output::{fields_text, variant};
use super::Ctx;
use crate::engine::read_journal;
use clap::Subcommand;
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum WalCmd {
    /// Print every record in the log: LSN, transaction id, operation and its fields
    /// (`--json`: one object per line).
    Dump,
}

pub fn run(ctx: &Ctx, cmd: WalCmd) -> Result<(), CliError> {
    match cmd {
        WalCmd::Dump => dump(ctx),
    }
}

fn dump(ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    let mut journal = read_journal(&ctx.root)?;
    if !out.json {
        out.line(&format!(
            "# root {}: driver {}, store {}, checkpoint covers LSN {}",
            ctx.root.display(),
            journal.driver.name(),
            journal.store_id,
            journal.checkpoint_lsn
        ))?;
    }
    for entry in journal.by_ref() {
        let entry = entry?;
        let (op, fields) = variant(serde_json::to_value(&entry.record.op).unwrap_or(Value::Null));
        if out.json {
            let mut obj = serde_json::Map::new();
            obj.insert("lsn".into(), Value::from(entry.lsn.0));
            obj.insert("acked".into(), Value::from(entry.acked.0));
            obj.insert("txid".into(), Value::from(entry.record.txid.0));
            obj.insert("op".into(), Value::from(op));
            obj.extend(fields);
            out.json_line(&obj)?;
        } else {
            let line = format!(
                "LSN {} {} {op} {}",
                entry.lsn,
                entry.record.txid,
                fields_text(&fields)
            );
            out.line(line.trim_end())?;
        }
    }
    if let Some(tail) = journal.tail() {
        out.warn(
            "torn-tail",
            &format!(
                "the log ends in bytes that are not a record at {} offset {} (LSN {}: {}); a torn write, cut when the root is next opened",
                tail.segment.display(),
                tail.offset,
                tail.lsn,
                tail.reason
            ),
        );
    }
    Ok(())
}
