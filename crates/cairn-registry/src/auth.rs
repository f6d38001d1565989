//! Credentials and challenges: `--username/--password-stdin` or Docker's `config.json`
//! (`credHelpers`, `credsStore`, `auths`), and the `WWW-Authenticate` header's `Basic` or `Bearer` challenge.

use super::error::RegistryError;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Docker's config.json is small; a larger one is not read whole.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A user name and password (or identity token used as password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password, not even in a debug log.
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

impl Credentials {
    /// The `Authorization` header value for basic auth.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// The helper for every registry: `docker-credential-NAME`.
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    /// Per-registry helpers, ahead of `credsStore`.
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Where Docker keeps its config: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker").join("config.json"))
}

/// `https://reg.example/v2/` and `reg.example` name the same registry in `auths`.
fn auths_key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// The credentials `config.json` at `path` holds for `host`, if any. A missing file is none;
/// an unreadable or malformed one is an error (silently pulling anonymously would hide it).
pub fn from_docker_config(path: &Path, host: &str) -> Result<Option<Credentials>, RegistryError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RegistryError::io("open", path)(e)),
    };
    let mut text = Vec::new();
    file.take(MAX_CONFIG_BYTES)
        .read_to_end(&mut text)
        .map_err(RegistryError::io("read", path))?;
    let config: DockerConfig =
        serde_json::from_slice(&text).map_err(|source| RegistryError::Json {
            what: path.display().to_string(),
            source,
        })?;
    // Docker's order: a helper named for the host, then the store's helper, then `auths`.
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| auths_key_host(k) == host)
        .map(|(_, v)| v)
        .or(config.creds_store.as_ref())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        return super::helper::get(helper, host);
    }
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| auths_key_host(k) == host)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: username.clone(),
            password: password.clone(),
        }));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let bad = |reason: &str| RegistryError::Manifest {
        reference: host.to_owned(),
        what: path.display().to_string(),
        reason: reason.to_owned(),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad("auths.auth is not base64"))?;
    let raw = String::from_utf8(raw).map_err(|_| bad("auths.auth is not UTF-8"))?;
    let (username, password) = raw
        .split_once(':')
        .ok_or_else(|| bad("auths.auth is not user:password"))?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `k="v", k2=v2`: values may be quoted (and then hold commas).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:9/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn reads_docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let c = from_docker_config(&path, "reg.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.password, "s3:cret");
        assert!(from_docker_config(&path, "other").unwrap().is_none());
        assert!(from_docker_config(&dir.path().join("none"), "x")
            .unwrap()
            .is_none());
        std::fs::write(&path, "{").unwrap();
        assert!(from_docker_config(&path, "x").is_err());
    }
}
