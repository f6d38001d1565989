//! Content digests: DiffIDs and ChainIDs as the OCI image spec defines them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::error::LayerError;

/// A sha256 digest, printed and parsed as `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

// Debug prints the same text as Display: a byte array dump is useless in logs and asserts.
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = LayerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| LayerError::BadDigest {
            path: s.chars().take(80).collect(),
            offset: 0,
            reason,
        };
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("missing the sha256: prefix"))?;
        if hex.len() != 64 {
            return Err(bad("not 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            // Only lowercase: the OCI spec's canonical form, and it keeps one text per digest.
            let nib = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            match (nib(pair[0]), nib(pair[1])) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(bad("not lowercase hex")),
            }
        }
        Ok(Digest(out))
    }
}

/// ChainID per the OCI image spec: the first layer's ChainID is its DiffID, each next one is
/// `sha256(parent_chain_id + " " + diff_id)` over the text forms.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => *diff_id,
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_roundtrip_and_rejects() {
        let d = Digest::of(b"");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(s.parse::<Digest>().ok(), Some(d));
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!(s.replace("sha256:", "md5:").parse::<Digest>().is_err());
        assert!(s
            .to_uppercase()
            .replace("SHA256", "sha256")
            .parse::<Digest>()
            .is_err());
        assert!(format!("{s}0").parse::<Digest>().is_err());
    }

    #[test]
    fn chain_id_follows_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(chain_id(None, &a), a);
        let expect = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(Some(&a), &b), expect);
        assert_ne!(chain_id(Some(&b), &a), expect);
    }
}
