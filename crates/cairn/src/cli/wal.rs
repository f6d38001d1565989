//! `cairn wal dump`: every journal record, decoded. Read-only and without the root lock (see
//! `engine::read_journal`), so it also works on a root a running engine holds.

use super::error::CliError;
use super::output::{fields_text, variant};
use super::Ctx;
use cairn_engine::read_journal;
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Map, Value};

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

/// One `--json` line: the record's place in the log first, then the operation's fields.
#[derive(Debug, Serialize)]
struct DumpLine<'a> {
    lsn: u64,
    acked: u64,
    txid: u64,
    op: &'a str,
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
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
            let obj = DumpLine {
                lsn: entry.lsn.0,
                acked: entry.acked.0,
                txid: entry.record.txid.0,
                op: &op,
                fields: &fields,
            };
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
