//! What the kernel has mounted, from `/proc/self/mountinfo`: recovery reconciles the journaled
//! mount counts with it, and a mount is refused on a target something else is mounted on.

use super::error::DriverError;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Every mount point of this process's mount namespace.
pub fn mount_points() -> Result<BTreeSet<PathBuf>, DriverError> {
    let text = std::fs::read(MOUNTINFO).map_err(|source| DriverError::Io {
        op: "read mountinfo",
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    Ok(parse(&text))
}

/// Whether `target` is a mount point now.
pub fn is_mount_point(target: &Path) -> Result<bool, DriverError> {
    Ok(mount_points()?.contains(target))
}

/// The mount points (field 5) of a mountinfo text; lines that do not have one are skipped.
pub fn parse(text: &[u8]) -> BTreeSet<PathBuf> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .filter(|field| !field.is_empty())
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect()
}

/// The kernel writes space, tab, newline and backslash in paths as `\` and three octal digits.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_field_five_unescaped() {
        let text = b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
            98 22 0:50 / /tmp/a\\040b rw - overlay overlay rw,lowerdir=/x\n\
            99 22 0:51 /snapshots/3/fs /mnt/back\\134slash ro - ext4 /dev/vda rw\n\
            short line\n";
        let got = parse(text);
        let want: BTreeSet<PathBuf> = ["/", "/tmp/a b", "/mnt/back\\slash"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn this_process_sees_its_root_mounted() {
        let points = mount_points().expect("mountinfo");
        assert!(points.contains(Path::new("/")), "{points:?}");
    }
}
