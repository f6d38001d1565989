//! Seeded test runs: every case prints its seed when it fails and replays from it.

#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `case` for `count` seeds derived from `base` (or just the seed in env `CAIRN_SEED`),
/// stopping at the first failure with a message that names the seed and how to replay it.
pub fn run_seeds(test: &str, count: u64, base: u64, case: impl Fn(u64)) {
    let seeds: Vec<u64> = match std::env::var("CAIRN_SEED") {
        Ok(s) => vec![s.parse().expect("CAIRN_SEED must be a u64")],
        Err(_) => {
            let count = std::env::var("CAIRN_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(count);
            (0..count)
                .map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect()
        }
    };
    for seed in seeds {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(seed))) {
            eprintln!("{test}: failed with seed {seed}; replay: CAIRN_SEED={seed} cargo test -p cairn-wal --test {test}");
            std::panic::resume_unwind(panic);
        }
    }
}
