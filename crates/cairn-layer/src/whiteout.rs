//! AUFS/OCI whiteouts: `.wh.NAME` hides NAME of lower layers, `.wh..wh..opq` makes its
//! directory opaque (hides everything lower layers put there).

use std::collections::HashSet;
use std::io;

use super::safepath::{is_dir, list_dir, lstat_at, remove_all_at, Root};

pub const PREFIX: &[u8] = b".wh.";
pub const OPAQUE: &[u8] = b".wh..wh..opq";
/// Overlayfs marks an opaque directory with this xattr (value `y`).
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How whiteouts are materialized in the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhiteoutStyle {
    /// The target holds the merged tree (vfs): remove what the whiteout names; for an
    /// opaque directory, remove what lower layers put in it and keep this layer's entries.
    #[default]
    Delete,
    /// The target is an overlay upper dir: a whiteout becomes a 0/0 character device and
    /// an opaque directory gets `trusted.overlay.opaque=y`. Needs root.
    OverlayCharDevice,
}

/// What a normalized name means as a whiteout.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    No,
    /// `dir/.wh..wh..opq`
    Opaque { dir: &'a [u8] },
    /// `dir/.wh.name`: the path `dir/name` is hidden.
    Remove { dir: &'a [u8], name: &'a [u8] },
    /// Other `.wh..wh.*` names (AUFS hardlink bookkeeping): no meaning for us, skipped.
    Ignored,
}

/// Classifies a normalized name; `Err` for whiteouts that name `.`, `..` or nothing.
pub fn classify(rel: &[u8]) -> Result<Whiteout<'_>, &'static str> {
    let (dir, base) = super::safepath::split_leaf(rel);
    let Some(name) = base.strip_prefix(PREFIX) else {
        return Ok(Whiteout::No);
    };
    if base == OPAQUE {
        return Ok(Whiteout::Opaque { dir });
    }
    if name.starts_with(PREFIX) {
        return Ok(Whiteout::Ignored);
    }
    match name {
        b"" | b"." => Err("whiteout of an empty name or `.`"),
        b".." => Err("whiteout of `..`"),
        _ => Ok(Whiteout::Remove { dir, name }),
    }
}

/// Delete-style opaque directory: removes every entry below `dir` that this layer did
/// not create (`touched` holds canonical names this layer created, and their ancestors).
/// Directories this layer touched are kept and cleared recursively.
pub fn clear_opaque(root: &Root, dir: &[u8], touched: &HashSet<Vec<u8>>) -> io::Result<()> {
    let fd = match root.open_dir(dir) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in list_dir(&fd)? {
        let mut rel = dir.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&child);
        if !touched.contains(&rel) {
            remove_all_at(std::os::fd::AsRawFd::as_raw_fd(&fd), &child)?;
            continue;
        }
        let st = lstat_at(std::os::fd::AsRawFd::as_raw_fd(&fd), &child)?;
        if st.as_ref().is_some_and(is_dir) {
            clear_opaque(root, &rel, touched)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(b"a/b"), Ok(Whiteout::No));
        assert_eq!(
            classify(b"a/.wh.b"),
            Ok(Whiteout::Remove {
                dir: b"a",
                name: b"b"
            })
        );
        assert_eq!(classify(b".wh..wh..opq"), Ok(Whiteout::Opaque { dir: b"" }));
        assert_eq!(classify(b"x/.wh..wh.plnk"), Ok(Whiteout::Ignored));
        assert!(classify(b".wh...").is_err());
        assert!(classify(b"a/.wh.").is_err());
        assert!(classify(b"a/.wh..").is_err());
    }
}
