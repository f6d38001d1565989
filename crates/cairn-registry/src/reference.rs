//! `HOST[:PORT]/REPO[:TAG|@DIGEST]`, as Docker spells an image reference, with the host always
//! written out (cairn has no default registry).

use super::error::RegistryError;
use cairn_layer::Digest;

/// A parsed reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]`.
    pub host: String,
    /// The repository path, e.g. `library/busybox`.
    pub repo: String,
    /// A tag (`latest` when neither tag nor digest is given) or a digest.
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tag(String),
    Digest(Digest),
}

/// Docker's limits: a tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let mut b = t.bytes();
    t.len() <= 128
        && b.next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// A repository path component: lowercase alphanumerics joined by `.`, `_`, `__` or `-`s.
fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::BadReference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.len() > 512 {
            return Err(bad("longer than 512 bytes"));
        }
        let (host, rest) = s
            .split_once('/')
            .ok_or_else(|| bad("no HOST/ in front (cairn has no default registry)"))?;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("the host is not HOST[:PORT]"));
        }
        let (name, target) = if let Some((name, digest)) = rest.split_once('@') {
            let digest: Digest = digest
                .parse()
                .map_err(|_| bad("the digest is not sha256:<64 hex>"))?;
            (name, Target::Digest(digest))
        } else {
            // A colon after the last slash starts the tag.
            let slash = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[slash..].find(':') {
                Some(i) => {
                    let tag = &rest[slash + i + 1..];
                    if !valid_tag(tag) {
                        return Err(bad("the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
                    }
                    (&rest[..slash + i], Target::Tag(tag.to_owned()))
                }
                None => (rest, Target::Tag("latest".to_owned())),
            }
        };
        if !name.split('/').all(valid_component) {
            return Err(bad(
                "the repository is not lowercase components joined by /",
            ));
        }
        Ok(Reference {
            host: host.to_owned(),
            repo: name.to_owned(),
            target,
        })
    }

    /// What the manifest URL ends with: the tag or the digest.
    pub fn target_str(&self) -> String {
        match &self.target {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        }
    }

    /// The host without its port, for the loopback check.
    pub fn hostname(&self) -> &str {
        let h = &self.host;
        if let Some(rest) = h.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        h.rsplit_once(':').map_or(h.as_str(), |(name, _)| name)
    }

    /// Whether the registry is on this machine: the only place plain HTTP is used unasked.
    pub fn is_loopback(&self) -> bool {
        let name = self.hostname();
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Tag(t) => write!(f, "{}/{}:{t}", self.host, self.repo),
            Target::Digest(d) => write!(f, "{}/{}@{d}", self.host, self.repo),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_digests_and_ports() {
        let r = Reference::parse("127.0.0.1:5000/a/b:v1.2").unwrap();
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repo, "a/b");
        assert_eq!(r.target, Target::Tag("v1.2".into()));
        assert!(r.is_loopback());
        let r = Reference::parse("reg.example/x").unwrap();
        assert_eq!(r.to_string(), "reg.example/x:latest");
        assert!(!r.is_loopback());
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("localhost:1/x@{d}")).unwrap();
        assert_eq!(r.target_str(), d);
        assert!(r.is_loopback());
        assert!(Reference::parse("[::1]:5000/x").unwrap().is_loopback());
    }

    #[test]
    fn refuses_bad_references() {
        for s in [
            "busybox",
            "h/UPPER",
            "h/x:",
            "h/x@sha256:12",
            "/x",
            "h/a//b",
            "h/x:-t",
        ] {
            assert!(Reference::parse(s).is_err(), "{s}");
        }
    }
}
