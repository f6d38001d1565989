//! The block driver's options: the file system of its images and their apparent size. They
//! are chosen when the root is created and recorded in the base image itself (its length is
//! the size, its superblock's magic the file system): every image is a clone of the base, so
//! the base is the one record a reopen reads, and a root cannot mix file systems or sizes.

use super::error::DriverError;
use cairn_state::types::Mount;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// 10 GiB sparse: costs nothing until written.
pub const DEFAULT_IMAGE_SIZE_BYTES: u64 = 10 << 30;
const SIZE_ENV: &str = "CAIRN_BLOCK_SIZE_BYTES";

/// The file system inside every image of a block root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockFs {
    #[default]
    Ext4,
    Xfs,
}

impl BlockFs {
    pub fn name(self) -> &'static str {
        match self {
            BlockFs::Ext4 => "ext4",
            BlockFs::Xfs => "xfs",
        }
    }

    /// The smallest image its mkfs accepts (mkfs.xfs refuses below 300 MiB).
    pub fn min_size_bytes(self) -> u64 {
        match self {
            BlockFs::Ext4 => 64 << 20,
            BlockFs::Xfs => 300 << 20,
        }
    }

    /// A mount of `image` as data, as containerd's blockfile returns it.
    pub fn mount(self, image: &Path, read_only: bool) -> Mount {
        let mut options = vec![
            "loop".to_string(),
            if read_only { "ro" } else { "rw" }.to_string(),
        ];
        match self {
            // The base is made with lazy inode tables (its file is sparse, they read as zeros):
            // without this every writable mount would start zeroing them, unsharing the clone.
            BlockFs::Ext4 if !read_only => options.push("noinit_itable".to_string()),
            BlockFs::Ext4 => {}
            // Every image is a clone of the base and carries its UUID; xfs refuses to mount a
            // second file system with a UUID already mounted unless told not to check.
            BlockFs::Xfs => options.push("nouuid".to_string()),
        }
        Mount {
            kind: self.name().to_string(),
            source: image.to_path_buf(),
            options,
        }
    }
}

impl std::str::FromStr for BlockFs {
    type Err = DriverError;

    fn from_str(s: &str) -> Result<BlockFs, DriverError> {
        match s {
            "ext4" => Ok(BlockFs::Ext4),
            "xfs" => Ok(BlockFs::Xfs),
            _ => Err(DriverError::BadBlockFs {
                value: s.to_string(),
            }),
        }
    }
}

/// Options for a block root; they matter when the root (its base image) is created; a reopen
/// reads them back from the base (`recorded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOptions {
    /// The apparent size of every image (its file system's size).
    pub size_bytes: u64,
    /// The file system inside every image.
    pub fs: BlockFs,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            size_bytes: DEFAULT_IMAGE_SIZE_BYTES,
            fs: BlockFs::Ext4,
        }
    }
}

/// Parses a size: bytes, or a number with a binary unit (`K`, `M`, `G`, `T`, optionally
/// followed by `iB` or `B`: `512M`, `10GiB`).
pub fn parse_size(value: &str) -> Result<u64, DriverError> {
    let bad = || DriverError::BadImageSize {
        value: value.to_string(),
        min_bytes: BlockFs::Ext4.min_size_bytes(),
    };
    let v = value.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = v.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

impl BlockOptions {
    /// Checks the size against the file system's minimum.
    pub fn validate(self) -> Result<BlockOptions, DriverError> {
        if self.size_bytes < self.fs.min_size_bytes() {
            return Err(DriverError::BadImageSize {
                value: self.size_bytes.to_string(),
                min_bytes: self.fs.min_size_bytes(),
            });
        }
        Ok(self)
    }

    /// The default, with the size from `CAIRN_BLOCK_SIZE_BYTES` if set.
    pub fn from_env() -> Result<BlockOptions, DriverError> {
        let mut options = BlockOptions::default();
        if let Ok(v) = std::env::var(SIZE_ENV) {
            options.size_bytes = parse_size(&v)?;
        }
        options.validate()
    }

    /// The options a base image was made with: its length, and the file system its superblock
    /// names (xfs: `XFSB` at 0; ext4: 0xEF53 at 1024 + 56).
    pub fn recorded(base: &Path) -> Result<BlockOptions, DriverError> {
        let mut file = File::open(base).map_err(|e| DriverError::io("open", base, e))?;
        let size_bytes = file
            .metadata()
            .map_err(|e| DriverError::io("stat", base, e))?
            .len();
        let mut head = [0u8; 2048];
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_exact(&mut head))
            .map_err(|e| DriverError::io("read superblock", base, e))?;
        let fs = if head[0..4] == *b"XFSB" {
            BlockFs::Xfs
        } else if u16::from_le_bytes([head[1024 + 56], head[1024 + 57]]) == 0xEF53 {
            BlockFs::Ext4
        } else {
            return Err(DriverError::BadBaseImage {
                image: base.to_path_buf(),
            });
        };
        Ok(BlockOptions { size_bytes, fs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_refuse_the_rest() {
        assert_eq!(parse_size("67108864").ok(), Some(64 << 20));
        assert_eq!(parse_size("512M").ok(), Some(512 << 20));
        assert_eq!(parse_size("10GiB").ok(), Some(10 << 30));
        assert_eq!(parse_size("1t").ok(), Some(1 << 40));
        for bad in ["", "G", "10 parsecs", "-5", "1.5G", "99999999999T"] {
            assert!(
                matches!(parse_size(bad), Err(DriverError::BadImageSize { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn each_file_system_has_its_minimum() {
        let small = BlockOptions {
            size_bytes: 100 << 20,
            fs: BlockFs::Xfs,
        };
        assert!(matches!(
            small.validate(),
            Err(DriverError::BadImageSize { min_bytes, .. }) if min_bytes == 300 << 20
        ));
        let ext4 = BlockOptions {
            fs: BlockFs::Ext4,
            ..small
        };
        assert_eq!(ext4.validate().ok(), Some(ext4));
        assert!(matches!(
            "btrfs".parse::<BlockFs>(),
            Err(DriverError::BadBlockFs { .. })
        ));
        assert_eq!("xfs".parse::<BlockFs>().ok(), Some(BlockFs::Xfs));
    }

    #[test]
    fn xfs_mounts_skip_the_uuid_check_and_ext4_ones_keep_itables_lazy() {
        let p = Path::new("/r/image");
        assert_eq!(
            BlockFs::Xfs.mount(p, true).options,
            ["loop", "ro", "nouuid"]
        );
        assert_eq!(BlockFs::Xfs.mount(p, false).kind, "xfs");
        assert_eq!(
            BlockFs::Ext4.mount(p, false).options,
            ["loop", "rw", "noinit_itable"]
        );
        assert_eq!(BlockFs::Ext4.mount(p, true).options, ["loop", "ro"]);
    }
}
