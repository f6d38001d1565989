//! A small OCI distribution client on `ureq`: one registry, one repository's scope at a time,
//! anonymous, basic or bearer auth from the registry's challenge, and retries with backoff on
//! 5xx and dropped connections. Bodies are streamed: nothing here holds a blob in memory.

use super::auth::{parse_challenge, Challenge, Credentials};
use super::error::RegistryError;
use super::reference::Reference;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// How often and how patiently to retry a request that failed in a way that may pass.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first pause; each next one doubles, up to `max_delay_ms`.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 5,
            base_delay_ms: 200,
            max_delay_ms: 5_000,
        }
    }
}

impl Retry {
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let ms = self
            .base_delay_ms
            .saturating_mul(1u64 << attempt.min(16))
            .min(self.max_delay_ms);
        Duration::from_millis(ms)
    }
}

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    pub credentials: Option<Credentials>,
    /// Plain HTTP to a registry that is not on loopback.
    pub insecure: bool,
    pub retry: Retry,
}

/// A request body that can be sent again on a retry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// The reference as the user wrote it, for error messages.
    reference: String,
    insecure: bool,
    credentials: Option<Credentials>,
    /// The `Authorization` header in use (basic, or the last bearer token).
    authorization: Mutex<Option<String>>,
    pub(crate) retry: Retry,
}

fn loopback_url(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    Reference {
        host: host.to_owned(),
        repo: String::new(),
        target: super::reference::Target::Tag(String::new()),
    }
    .is_loopback()
}

impl Client {
    pub fn new(reference: &Reference, options: &ClientOptions) -> Client {
        let scheme = if reference.is_loopback() || options.insecure {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // A registry that stops sending for this long counts as a dropped connection.
            .timeout_read(Duration::from_secs(30))
            .timeout_write(Duration::from_secs(60))
            .redirects(5)
            .build();
        Client {
            agent,
            base: format!("{scheme}://{}", reference.host),
            reference: reference.to_string(),
            insecure: options.insecure,
            credentials: options.credentials.clone(),
            authorization: Mutex::new(None),
            retry: options.retry,
        }
    }

    pub(crate) fn reference(&self) -> &str {
        &self.reference
    }

    /// `/v2/…` → a URL on this registry; a URL (an upload's `Location`) as it is.
    pub(crate) fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn current_authorization(&self) -> Option<String> {
        self.authorization
            .lock()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set_authorization(&self, value: String) {
        match self.authorization.lock() {
            Ok(mut a) => *a = Some(value),
            Err(p) => *p.into_inner() = Some(value),
        }
    }

    /// Send a request, answering auth challenges and retrying 5xx and transport failures.
    /// `what` names the object for a 404.
    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        what: &str,
    ) -> Result<ureq::Response, RegistryError> {
        let url = self.url(path);
        let mut challenges = 0;
        let mut attempt = 0;
        loop {
            let mut req = self.agent.request(method, &url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = self.current_authorization() {
                req = req.set("Authorization", &a);
            }
            let result = match body {
                Body::Empty => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::File(p, len) => {
                    let file = std::fs::File::open(p).map_err(RegistryError::io("open", p))?;
                    req.set("Content-Length", &len.to_string()).send(file)
                }
            };
            let retryable = match result {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) => {
                    challenges += 1;
                    let header = r.header("www-authenticate").unwrap_or("").to_owned();
                    if challenges > 2 {
                        return Err(self.unauthorized("the registry refused the credentials"));
                    }
                    self.authenticate(&header)?;
                    continue;
                }
                Err(ureq::Error::Status(403, _)) => {
                    return Err(RegistryError::Denied {
                        reference: self.reference.clone(),
                    })
                }
                Err(ureq::Error::Status(404, _)) => {
                    return Err(RegistryError::NotFound {
                        reference: self.reference.clone(),
                        what: what.to_owned(),
                    })
                }
                Err(ureq::Error::Status(status, _)) if status >= 500 || status == 429 => {
                    RegistryError::Status {
                        reference: self.reference.clone(),
                        url: url.clone(),
                        status,
                    }
                }
                Err(ureq::Error::Status(status, _)) => {
                    return Err(RegistryError::Status {
                        reference: self.reference.clone(),
                        url,
                        status,
                    })
                }
                Err(ureq::Error::Transport(t)) => RegistryError::Transport {
                    reference: self.reference.clone(),
                    url: url.clone(),
                    source: Box::new(t),
                },
            };
            attempt += 1;
            if attempt >= self.retry.attempts {
                return Err(retryable);
            }
            tracing::debug!(%url, attempt, error = %retryable, "retrying");
            std::thread::sleep(self.retry.delay(attempt - 1));
        }
    }

    fn unauthorized(&self, detail: &str) -> RegistryError {
        RegistryError::Unauthorized {
            reference: self.reference.clone(),
            detail: detail.to_owned(),
        }
    }

    /// Answer a 401's challenge: basic credentials, or a bearer token from the realm.
    fn authenticate(&self, header: &str) -> Result<(), RegistryError> {
        match parse_challenge(header) {
            Some(Challenge::Basic) => {
                let Some(c) = &self.credentials else {
                    return Err(self.unauthorized(
                        "the registry asks for credentials (basic); give --username and \
                         --password-stdin, or an auths entry in Docker's config.json",
                    ));
                };
                let basic = c.basic();
                if self.current_authorization().as_deref() == Some(basic.as_str()) {
                    return Err(self.unauthorized("the registry refused the credentials"));
                }
                self.set_authorization(basic);
                Ok(())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let token = self.token(&realm, service.as_deref(), scope.as_deref())?;
                self.set_authorization(format!("Bearer {token}"));
                Ok(())
            }
            None => Err(self.unauthorized(&format!(
                "the registry's challenge {header:?} is neither Basic nor Bearer"
            ))),
        }
    }

    /// Docker's token protocol: GET realm?service=…&scope=…, with basic credentials if any.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        if realm.starts_with("http://") && !self.insecure && !loopback_url(realm) {
            return Err(RegistryError::Insecure {
                host: realm.to_owned(),
            });
        }
        let mut req = self.agent.get(realm);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(s) = scope {
            req = req.query("scope", s);
        }
        if let Some(c) = &self.credentials {
            req = req.set("Authorization", &c.basic());
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(401 | 403, _)) => {
                return Err(self.unauthorized("the token service refused the credentials"))
            }
            Err(ureq::Error::Status(status, _)) => {
                return Err(RegistryError::Status {
                    reference: self.reference.clone(),
                    url: realm.to_owned(),
                    status,
                })
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(RegistryError::Transport {
                    reference: self.reference.clone(),
                    url: realm.to_owned(),
                    source: Box::new(t),
                })
            }
        };
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = read_small(resp, realm)?;
        let t: Token = serde_json::from_slice(&bytes).map_err(|source| RegistryError::Json {
            what: realm.to_owned(),
            source,
        })?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| self.unauthorized("the token service answered without a token"))
    }
}

/// JSON documents (manifests, configs, tokens) are read whole; bound them.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// A small body read whole, refused past [`MAX_JSON_BYTES`].
pub(crate) fn read_small(resp: ureq::Response, what: &str) -> Result<Vec<u8>, RegistryError> {
    let mut buf = Vec::new();
    resp.into_reader()
        .take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| RegistryError::Io {
            op: "read",
            path: what.to_owned(),
            source,
        })?;
    if buf.len() as u64 > MAX_JSON_BYTES {
        return Err(RegistryError::Manifest {
            reference: what.to_owned(),
            what: what.to_owned(),
            reason: format!("over the {MAX_JSON_BYTES}-byte limit for JSON documents"),
        });
    }
    Ok(buf)
}
