//! `cairn fsck` and `cairn cleanup`.

use super::error::CliError;
use super::output::{fields_text, variant};
use super::Ctx;
use serde::Serialize;
use serde_json::{Map, Value};

/// A finding as `--json` prints it: the problem's name, its fields, whether it was repaired.
#[derive(Debug, Serialize)]
struct FindingJson {
    problem: String,
    #[serde(flatten)]
    fields: Map<String, Value>,
    repaired: bool,
}

#[derive(Debug, Serialize)]
struct FsckJson<'a> {
    clean: bool,
    snapshots_checked: usize,
    repaired: usize,
    unrepaired: usize,
    findings: &'a [FindingJson],
}

pub fn fsck(ctx: &Ctx, repair: bool) -> Result<u8, CliError> {
    let report = ctx.with_engine(|e| Ok(e.fsck(repair)?))?;
    let unrepaired = report.findings.iter().filter(|f| !f.repaired).count();
    let findings: Vec<FindingJson> = report
        .findings
        .iter()
        .map(|f| {
            let (problem, fields) =
                variant(serde_json::to_value(&f.problem).unwrap_or(Value::Null));
            FindingJson {
                problem,
                fields,
                repaired: f.repaired,
            }
        })
        .collect();
    let value = FsckJson {
        clean: report.is_clean(),
        snapshots_checked: report.snapshots_checked,
        repaired: report.findings.len() - unrepaired,
        unrepaired,
        findings: &findings,
    };
    ctx.out.result(&value, || {
        for f in &findings {
            let mark = if f.repaired {
                "repaired"
            } else {
                "NOT REPAIRED"
            };
            let mut line = f.problem.clone();
            if !f.fields.is_empty() {
                line.push(' ');
                line.push_str(&fields_text(&f.fields));
            }
            ctx.out.line(&format!("{line} [{mark}]"))?;
        }
        let checked = plural(report.snapshots_checked, "snapshot");
        let summary = if report.is_clean() {
            "clean".to_owned()
        } else {
            let repaired = report.findings.len() - unrepaired;
            format!(
                "{} ({repaired} repaired)",
                plural(report.findings.len(), "finding")
            )
        };
        ctx.out.line(&format!("fsck: {checked} checked, {summary}"))
    })?;
    Ok(if unrepaired > 0 { 1 } else { 0 })
}

pub fn cleanup(ctx: &Ctx) -> Result<(), CliError> {
    let report = ctx.with_engine(|e| Ok(e.cleanup()?))?;
    ctx.out.result(&report, || {
        for id in &report.snapshots_removed {
            ctx.out.line(&format!("removed tree of snapshot id {id}"))?;
        }
        for txid in &report.staging_removed {
            ctx.out.line(&format!("removed staging of {txid}"))?;
        }
        if report.snapshots_removed.is_empty() && report.staging_removed.is_empty() {
            ctx.out.line("nothing to clean up")?;
        }
        Ok(())
    })
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
