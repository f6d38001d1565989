//! What the tree digest costs (issue 8, item 5): a commit reads its whole tree to record the
//! digest `fsck --verify` checks, and verifying at open would read every tree committed since
//! the last checkpoint.
//!
//! `cargo bench -p cairn-engine --bench digest` prints, for two trees (2,000 files of 4 KiB;
//! 64 files of 1 MiB), each measured best of 3 with a cold-ish cache only in the sense that the
//! files were just written (as at a commit):
//! - `tree_digest_ms_<tree>`: `cairn_driver::tree_digest` of the tree;
//! - `sha256sum_ms_<tree>`: the peer, GNU `sha256sum` over the same files (`find | xargs`);
//! - `digest_vs_sha256sum_<tree>`: the ratio of the two;
//! - `commit_ms_<tree>`: the engine's whole commit of that tree (seal: sync + marker, then the
//!   digest, then the journal sync), and `digest_share_of_commit_<tree>`: digest / commit.

use cairn_engine::{Engine, EngineOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../cairn-wal/benches/support.rs"]
mod support;
use support::{bench_base_dir, figure, fs_type_of};

fn fill(tree: &Path, files: usize, size: usize) {
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..files {
        let dir = tree.join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut d = data.clone();
        d[0] = i as u8;
        std::fs::write(dir.join(format!("f{i:05}")), &d).expect("write");
    }
}

fn best(mut f: impl FnMut() -> Duration) -> f64 {
    (0..3).map(|_| f()).min().unwrap_or_default().as_secs_f64() * 1e3
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let base = bench_base_dir();
    std::fs::create_dir_all(&base).expect("bench base dir");
    let dir = tempfile::Builder::new()
        .prefix("cairn-digest-bench-")
        .tempdir_in(&base)
        .expect("tempdir");
    eprintln!(
        "bench dir: {} ({})",
        dir.path().display(),
        fs_type_of(dir.path()).unwrap_or_else(|| "unknown".into())
    );
    let root = dir.path().join("root");
    let options = EngineOptions {
        workers: 2,
        ..EngineOptions::default()
    };
    let (h, _) = Engine::open(&root, options).expect("open");
    for (name, files, size) in [("2000x4k", 2000, 4096), ("64x1m", 64, 1 << 20)] {
        let mut commit_ms = f64::MAX;
        for round in 0..3 {
            let key = format!("{name}-{round}");
            let tree = h.prepare(&key, None, Default::default()).expect("prepare")[0]
                .source
                .clone();
            fill(&tree, files, size);
            let start = Instant::now();
            h.commit(&format!("{key}-c"), &key, Default::default())
                .expect("commit");
            commit_ms = commit_ms.min(start.elapsed().as_secs_f64() * 1e3);
        }
        // The trees of the last round, committed: measure the digest and the peer on it.
        let view = h
            .view("probe", Some(&format!("{name}-2-c")), Default::default())
            .expect("view");
        let tree = view[0].source.clone();
        h.remove("probe").expect("remove probe");
        let digest_ms = best(|| {
            let start = Instant::now();
            cairn_driver::tree_digest(&tree).expect("digest");
            start.elapsed()
        });
        let peer_ms = best(|| {
            let start = Instant::now();
            let status = Command::new("sh")
                .arg("-c")
                .arg("find . -type f -print0 | xargs -0 sha256sum > /dev/null")
                .current_dir(&tree)
                .status()
                .expect("sha256sum");
            assert!(status.success());
            start.elapsed()
        });
        figure(&format!("tree_digest_ms_{name}"), digest_ms, 1);
        figure(&format!("sha256sum_ms_{name}"), peer_ms, 1);
        figure(
            &format!("digest_vs_sha256sum_{name}"),
            digest_ms / peer_ms,
            2,
        );
        figure(&format!("commit_ms_{name}"), commit_ms, 1);
        figure(
            &format!("digest_share_of_commit_{name}"),
            digest_ms / commit_ms,
            2,
        );
    }
    h.close().expect("close");
}
