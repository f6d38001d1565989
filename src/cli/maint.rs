//! `cairn fsck` and `cairn cleanup`.

use super::error::CliError;
use super::output::{fields_text, variant};
use super::Ctx;
use serde_json::{json, Value};

pub fn fsck(ctx: &Ctx, repair: bool) -> Result<u8, CliError> {
    let report = ctx.with_engine(|e| Ok(e.fsck(repair)?))?;
    let unrepaired = report.findings.iter().filter(|f| !f.repaired).count();
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let (problem, fields) =
                variant(serde_json::to_value(&f.problem).unwrap_or(Value::Null));
            let mut obj = serde_json::Map::new();
            obj.insert("problem".into(), Value::from(problem));
            obj.extend(fields);
            obj.insert("repaired".into(), Value::from(f.repaired));
            Value::Object(obj)
        })
        .collect();
    let value = json!({
        "snapshots_checked": report.snapshots_checked,
        "clean": report.is_clean(),
        "repaired": report.findings.len() - unrepaired,
        "unrepaired": unrepaired,
        "findings": findings,
    });
    ctx.out.result(&value, || {
        for f in &findings {
            let mut fields = f.as_object().cloned().unwrap_or_default();
            let problem = fields
                .remove("problem")
                .and_then(|p| p.as_str().map(str::to_owned))
                .unwrap_or_default();
            let repaired = fields
                .remove("repaired")
                .and_then(|r| r.as_bool())
                .unwrap_or(false);
            let mark = if repaired { "repaired" } else { "NOT REPAIRED" };
            let mut line = problem;
            if !fields.is_empty() {
                line.push(' ');
                line.push_str(&fields_text(&fields));
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
