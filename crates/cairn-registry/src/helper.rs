//! Docker credential helpers: `docker-credential-NAME get`, the registry host on standard
//! input, `{"ServerURL": …, "Username": …, "Secret": …}` on standard output. A helper that has
//! nothing for the host says `credentials not found` and exits non-zero: that is anonymous, not
//! an error.

use super::auth::Credentials;
use super::error::RegistryError;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A helper's answer is a few hundred bytes; more is not read.
const MAX_OUTPUT_BYTES: u64 = 64 << 10;
/// A helper may ask a keychain; one that hangs longer than this is given up on.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The credentials helper `name` holds for `host`, if any.
pub(crate) fn get(name: &str, host: &str) -> Result<Option<Credentials>, RegistryError> {
    let fail = |reason: String| RegistryError::CredentialHelper {
        helper: name.to_owned(),
        host: host.to_owned(),
        reason,
    };
    // The name becomes part of a program name found on PATH: no path separators.
    if name.contains('/') || name.contains('\0') {
        return Err(fail("the helper's name has a path separator".into()));
    }
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its exit status below.
        let _ = stdin.write_all(host.as_bytes());
    }
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(MAX_OUTPUT_BYTES).read_to_end(&mut out);
        }
        out
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer in {} s", TIMEOUT.as_secs())));
            }
            Err(e) => return Err(fail(format!("wait: {e}"))),
        }
    };
    let out = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    if !status.success() {
        if text.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("{status}: {}", text.trim())));
    }
    let answer: Answer = serde_json::from_slice(&out)
        .map_err(|e| fail(format!("its answer is not the helper protocol's JSON: {e}")))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}
