//! How a batch's durable step is made: one fsync per file and directory, or one `syncfs` for
//! all of them. Both make the same things durable (docs/drivers.md, "Batched syncs"); which is
//! cheaper depends on the file system and the disk under it, so by default the driver measures
//! both and takes the cheaper.
//!
//! Measured on the machines this was built on (a fresh ext4 on a loop device): on one, 16
//! clients made 4,050–4,300 prepare+commits/s with per-file fsyncs against 3,570–3,730 with a
//! shared `syncfs` (ext4's `syncfs` also writes every committed metadata block back in place),
//! and through `cairn serve` one client went from 570–590 to 690–800/s; on another, with dearer
//! cache flushes (a clean inode's fsync still flushes), per-file fsyncs took 16 clients from
//! 2,204 down to 1,510/s. On xfs (`syncfs` is a log force) the two were level. A fixed rule
//! loses on one machine or the other.
//!
//! The choice is bounded: a step needing at most [`ALWAYS_PER_FILE`] fsyncs always takes them
//! (one or two empty commits), one needing more than [`PER_FILE_MAX`] always takes the
//! `syncfs`. In between, each way's cost is an exponentially weighted mean of its measured
//! times (per fsync call; per `syncfs`), and one step in [`EXPLORE_EVERY`] takes the other way
//! so that its mean follows the disk ([`EXPLORE_RARELY`] when one way costs twice the other).
//! A wrong choice costs time, never durability: both ways make the same things durable before
//! the batch is journaled.

use std::sync::Mutex;
use std::time::Duration;

/// A step needing at most this many fsyncs always takes them: cheaper than a `syncfs` on every
/// file system measured.
pub const ALWAYS_PER_FILE: usize = 2;
/// A step needing more fsyncs than this always takes the `syncfs`: it bounds the time one
/// step can spend in fsyncs, whatever the means say.
pub const PER_FILE_MAX: usize = 64;
/// One step in this many (of those the means decide) takes the way they did not choose, while
/// the two means are within a factor of two of each other.
pub const EXPLORE_EVERY: u64 = 64;
/// The same when one way costs at least twice the other: a step the wrong way then costs a
/// lot (a `syncfs` under 16 clients on ext4 took 7 ms against 0.6 ms for the per-file step),
/// and the means are unlikely to cross soon.
pub const EXPLORE_RARELY: u64 = 1024;
/// Weight of a new measurement in a mean: 1 / 2^`WEIGHT_SHIFT`.
const WEIGHT_SHIFT: u32 = 3;

/// Which way a driver makes its batches' durable steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DurableStep {
    /// The cheaper of the two, as measured (the default).
    #[default]
    Auto,
    /// One fsync per file and directory, up to [`PER_FILE_MAX`] of them (a `syncfs` beyond).
    PerFile,
    /// One `syncfs`, unless the step needs at most [`ALWAYS_PER_FILE`] fsyncs.
    Syncfs,
}

/// The way one step takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    PerFile,
    Syncfs,
}

/// The measured costs, and how many steps the means have decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Costs {
    /// Mean nanoseconds per fsync call of a per-file step.
    per_fsync_ns: Option<u64>,
    /// Mean nanoseconds of a step's `syncfs`.
    syncfs_ns: Option<u64>,
    decided: u64,
}

impl Costs {
    /// The way a step needing `calls` fsyncs takes under `mode`. Pure: the clock stays with
    /// the caller.
    pub(crate) fn choose(&mut self, mode: DurableStep, calls: usize) -> Way {
        if calls <= ALWAYS_PER_FILE {
            return Way::PerFile;
        }
        if calls > PER_FILE_MAX {
            return Way::Syncfs;
        }
        match mode {
            DurableStep::PerFile => return Way::PerFile,
            DurableStep::Syncfs => return Way::Syncfs,
            DurableStep::Auto => {}
        }
        // A way never measured is tried first: per-file, then syncfs.
        let (Some(per_fsync), Some(syncfs)) = (self.per_fsync_ns, self.syncfs_ns) else {
            return if self.per_fsync_ns.is_none() {
                Way::PerFile
            } else {
                Way::Syncfs
            };
        };
        self.decided += 1;
        let per_file = per_fsync.saturating_mul(calls as u64);
        let (cheaper, low, high) = if per_file <= syncfs {
            (Way::PerFile, per_file, syncfs)
        } else {
            (Way::Syncfs, syncfs, per_file)
        };
        let every = if high / 2 >= low.max(1) {
            EXPLORE_RARELY
        } else {
            EXPLORE_EVERY
        };
        if self.decided % every == 0 {
            match cheaper {
                Way::PerFile => Way::Syncfs,
                Way::Syncfs => Way::PerFile,
            }
        } else {
            cheaper
        }
    }

    /// A step that took `way` with `calls` fsyncs needed took `elapsed_ns`. Steps of at most
    /// [`ALWAYS_PER_FILE`] fsyncs are not counted: their choice is fixed, and one fsync is
    /// not the cost of several.
    pub(crate) fn record(&mut self, way: Way, calls: usize, elapsed_ns: u64) {
        if calls <= ALWAYS_PER_FILE {
            return;
        }
        let (mean, sample) = match way {
            Way::PerFile => (&mut self.per_fsync_ns, elapsed_ns / calls as u64),
            Way::Syncfs => (&mut self.syncfs_ns, elapsed_ns),
        };
        *mean = Some(match *mean {
            None => sample,
            Some(m) => m - (m >> WEIGHT_SHIFT) + (sample >> WEIGHT_SHIFT),
        });
    }
}

/// A driver's choice between the two ways, shared by its batches.
#[derive(Debug, Default)]
pub(crate) struct StepChooser {
    mode: Mutex<DurableStep>,
    costs: Mutex<Costs>,
}

impl StepChooser {
    pub(crate) fn set_mode(&self, mode: DurableStep) {
        *lock(&self.mode) = mode;
    }

    /// The way a step needing `calls` fsyncs takes.
    pub(crate) fn choose(&self, calls: usize) -> Way {
        let mode = *lock(&self.mode);
        lock(&self.costs).choose(mode, calls)
    }

    /// A step chosen by [`StepChooser::choose`] took `elapsed`.
    pub(crate) fn record(&self, way: Way, calls: usize, elapsed: Duration) {
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        lock(&self.costs).record(way, calls, elapsed_ns);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values: a panic elsewhere while one was held leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_bounds_hold_in_every_mode() {
        for mode in [DurableStep::Auto, DurableStep::PerFile, DurableStep::Syncfs] {
            let mut costs = Costs::default();
            assert_eq!(costs.choose(mode, 1), Way::PerFile, "{mode:?}");
            assert_eq!(
                costs.choose(mode, ALWAYS_PER_FILE),
                Way::PerFile,
                "{mode:?}"
            );
            assert_eq!(
                costs.choose(mode, PER_FILE_MAX + 1),
                Way::Syncfs,
                "{mode:?}"
            );
        }
        let mut costs = Costs::default();
        assert_eq!(
            costs.choose(DurableStep::PerFile, PER_FILE_MAX),
            Way::PerFile
        );
        assert_eq!(costs.choose(DurableStep::Syncfs, 3), Way::Syncfs);
    }

    #[test]
    fn auto_measures_both_ways_then_takes_the_cheaper() {
        let mut costs = Costs::default();
        assert_eq!(costs.choose(DurableStep::Auto, 3), Way::PerFile);
        costs.record(Way::PerFile, 3, 3 * 100_000);
        assert_eq!(costs.choose(DurableStep::Auto, 3), Way::Syncfs);
        costs.record(Way::Syncfs, 3, 1_000_000);
        // 3 × 100 µs against 1 ms: per-file; 12 × 100 µs against 1 ms: syncfs.
        assert_eq!(costs.choose(DurableStep::Auto, 3), Way::PerFile);
        assert_eq!(costs.choose(DurableStep::Auto, 12), Way::Syncfs);
    }

    #[test]
    fn auto_follows_a_disk_whose_costs_change() {
        let mut costs = Costs::default();
        costs.record(Way::PerFile, 4, 4 * 100_000);
        costs.record(Way::Syncfs, 4, 1_000_000);
        let mut ways = Vec::new();
        // The fsyncs get ten times dearer; only the exploring steps measure the syncfs.
        for _ in 0..(4 * EXPLORE_RARELY) {
            let way = costs.choose(DurableStep::Auto, 4);
            let elapsed = match way {
                Way::PerFile => 4 * 1_000_000,
                Way::Syncfs => 1_000_000,
            };
            costs.record(way, 4, elapsed);
            ways.push(way);
        }
        let tail = &ways[ways.len() - EXPLORE_RARELY as usize..];
        assert_eq!(
            tail.iter().filter(|w| **w == Way::PerFile).count(),
            1,
            "after the change the syncfs is taken, per-file only to explore: {tail:?}"
        );
        let explored = ways.iter().filter(|w| **w == Way::PerFile).count();
        assert!(
            explored >= 4,
            "per-file is still explored now and then: {explored}"
        );
    }

    #[test]
    fn two_close_ways_are_explored_more_often_than_two_far_apart() {
        let explored = |syncfs_ns: u64| {
            let mut costs = Costs::default();
            costs.record(Way::PerFile, 4, 4 * 100_000);
            costs.record(Way::Syncfs, 4, syncfs_ns);
            (0..EXPLORE_RARELY)
                .filter(|_| costs.choose(DurableStep::Auto, 4) == Way::Syncfs)
                .count() as u64
        };
        // Per-file costs 400 µs: a 500 µs syncfs is close, a 7 ms one far.
        assert_eq!(explored(500_000), EXPLORE_RARELY / EXPLORE_EVERY);
        assert_eq!(explored(7_000_000), 1);
    }

    #[test]
    fn small_steps_leave_the_means_alone() {
        let mut costs = Costs::default();
        costs.record(Way::PerFile, ALWAYS_PER_FILE, 1);
        assert_eq!(costs, Costs::default());
    }
}
