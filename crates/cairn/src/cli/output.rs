//! Printing results: human text, or with `--json` one JSON value per line on stdout; errors are
//! one line on stderr either way.

use super::error::CliError;
use cairn_state::types::Mount;
use serde::Serialize;
use serde_json::{json, Value};
use std::cell::Cell;
use std::io::Write;

#[derive(Debug, Default)]
pub struct Output {
    pub json: bool,
    /// Set when stdout went away (`cairn wal dump | head`): the rest is dropped silently.
    closed: Cell<bool>,
    /// A command run for a client of `cairn serve`'s control socket: lines go to it as frames
    /// (docs/serve.md), not to this process's stdout and stderr.
    remote: Option<std::sync::Arc<std::sync::Mutex<std::os::unix::net::UnixStream>>>,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output {
            json,
            closed: Cell::new(false),
            remote: None,
        }
    }

    pub(crate) fn remote(
        json: bool,
        conn: std::sync::Arc<std::sync::Mutex<std::os::unix::net::UnixStream>>,
    ) -> Output {
        Output {
            json,
            closed: Cell::new(false),
            remote: Some(conn),
        }
    }

    /// Send one line to the remote client as a frame; false when there is no remote client.
    fn to_remote(&self, stream: &str, text: &str) -> Option<std::io::Result<()>> {
        let conn = self.remote.as_ref()?;
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        Some(writeln!(conn, "{}", json!({ stream: text })).and_then(|()| conn.flush()))
    }

    /// Print one line of text on stdout.
    pub fn line(&self, text: &str) -> Result<(), CliError> {
        if self.closed.get() {
            return Ok(());
        }
        let written = match self.to_remote("stdout", text) {
            Some(r) => r,
            None => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{text}").and_then(|()| out.flush())
            }
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed.set(true);
                Ok(())
            }
            Err(e) => Err(CliError::new(
                super::error::ErrorKind::Other,
                format!("write standard output: {e}"),
            )),
        }
    }

    /// Print one JSON value on one line of stdout.
    pub fn json_line(&self, value: &impl Serialize) -> Result<(), CliError> {
        let text = serde_json::to_string(value).map_err(|e| {
            CliError::new(super::error::ErrorKind::Other, format!("encode JSON: {e}"))
        })?;
        self.line(&text)
    }

    /// Print `value` with `--json`, or run `human` to print text.
    pub fn result(
        &self,
        value: &impl Serialize,
        human: impl FnOnce() -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        if self.json {
            self.json_line(value)
        } else {
            human()
        }
    }

    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
        for line in table_lines(headers, rows) {
            self.line(&line)?;
        }
        Ok(())
    }

    /// A warning on stderr (not an error: the exit code is not affected).
    pub fn warn(&self, kind: &str, message: &str) {
        let line = if self.json {
            json!({"warning": {"kind": kind, "message": message}}).to_string()
        } else {
            format!("cairn: warning: {message}")
        };
        self.err_line(&line);
    }

    pub fn error(&self, e: &CliError) {
        let line = if self.json {
            json!({"error": {"kind": e.kind.name(), "message": e.message}}).to_string()
        } else {
            format!("cairn: {}", e.message)
        };
        self.err_line(&line);
    }

    /// One line on stderr (or to the remote client).
    pub fn err_line(&self, line: &str) {
        if self.to_remote("stderr", line).is_none() {
            eprintln!("{line}");
        }
    }
}

/// Columns padded to their widest cell, separated by three spaces; the last is not padded.
pub fn table_lines(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat(' ').take(pad));
            }
        }
        line
    };
    let mut lines = vec![render(&mut headers.iter().copied())];
    for row in rows {
        lines.push(render(&mut row.iter().map(String::as_str)));
    }
    lines
}

/// A mount in containerd's JSON shape (`type`, `source`, `options`).
#[derive(Debug, Serialize)]
pub struct MountJson<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub source: String,
    pub options: &'a [String],
}

pub fn mounts_json(mounts: &[Mount]) -> Vec<MountJson<'_>> {
    mounts
        .iter()
        .map(|m| MountJson {
            kind: &m.kind,
            source: m.source.display().to_string(),
            options: &m.options,
        })
        .collect()
}

/// A word safe to paste into a POSIX shell: unchanged when it is plain, single-quoted otherwise.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The `mount(8)` command that performs `m` on `target`, as `ctr snapshots mounts` prints it.
pub fn mount_command(m: &Mount, target: &str) -> String {
    let mut cmd = format!(
        "mount -t {} {}",
        shell_quote(&m.kind),
        shell_quote(&m.source.display().to_string())
    );
    if !m.options.is_empty() {
        cmd.push_str(" -o ");
        cmd.push_str(&shell_quote(&m.options.join(",")));
    }
    cmd.push(' ');
    cmd.push_str(&shell_quote(target));
    cmd
}

/// `type=bind source=/r/snapshots/1/fs options=rbind,rw`
pub fn mount_text(m: &Mount) -> String {
    format!(
        "type={} source={} options={}",
        m.kind,
        shell_quote(&m.source.display().to_string()),
        shell_quote(&m.options.join(","))
    )
}

/// A serde enum value (`{"Variant": {fields}}` or `"Variant"`) as its name and its fields.
pub fn variant(value: Value) -> (String, serde_json::Map<String, Value>) {
    match value {
        Value::Object(map) if map.len() == 1 => {
            let (name, inner) = map.into_iter().next().expect("one entry");
            match inner {
                Value::Object(fields) => (name, fields),
                other => {
                    let mut fields = serde_json::Map::new();
                    fields.insert("value".into(), other);
                    (name, fields)
                }
            }
        }
        Value::String(name) => (name, serde_json::Map::new()),
        other => (
            "value".into(),
            [("value".to_owned(), other)].into_iter().collect(),
        ),
    }
}

/// `key="a b" id=3 labels={}`: strings quoted, everything else compact JSON.
pub fn fields_text(fields: &serde_json::Map<String, Value>) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Nanoseconds since the epoch as RFC 3339 UTC (`2026-11-23T09:10:27.123456789Z`).
pub fn time_text(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Bytes in binary units, as `ctr snapshots usage` shows them (`4.0 KiB`).
pub fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            time_text(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            time_text(1_795_431_027_500_000_000),
            "2026-11-23T10:50:27.500000000Z"
        );
    }

    #[test]
    fn sizes_and_quoting() {
        assert_eq!(size_text(0), "0 B");
        assert_eq!(size_text(4096), "4.0 KiB");
        assert_eq!(size_text(5 << 20), "5.0 MiB");
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn tables_align() {
        let rows = vec![vec![
            "base".to_owned(),
            "".to_owned(),
            "Committed".to_owned(),
        ]];
        assert_eq!(
            table_lines(&["KEY", "PARENT", "KIND"], &rows),
            vec!["KEY    PARENT   KIND", "base            Committed"]
        );
    }
}
