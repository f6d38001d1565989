//! Helpers every cairn benchmark shares: where to run (on the project's disk, not tmpfs), what
//! file system that is, and the `name: value` output. Included by `#[path]` from
//! `wal/benches/wal.rs`, `benches/engine.rs` and `benches/layers.rs`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn figure(name: &str, value: f64, decimals: usize) {
    println!("{name}: {value:.decimals$}");
}

/// `$CAIRN_BENCH_DIR`, else `<target dir>/bench`: the target dir is on the disk the project is
/// built on, which is the disk we want, where `/tmp` may be tmpfs.
pub fn bench_base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAIRN_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("bench");
    }
    // The bench runs as `<target>/release/deps/<name>-<hash>`.
    let exe = std::env::current_exe().expect("path of the bench binary");
    exe.ancestors()
        .nth(3)
        .expect("the bench binary lives in <target>/<profile>/deps")
        .join("bench")
}

/// The file system type of the mount holding `path`, from `/proc/mounts` (longest mount point
/// that is a prefix), so the output says what kind of disk the numbers are about.
pub fn fs_type_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            Some((PathBuf::from(mount_point), fs_type.to_string()))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.components().count())
        .map(|(_, fs_type)| fs_type)
}
