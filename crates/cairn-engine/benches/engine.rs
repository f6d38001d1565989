//! Throughput and open times of the engine on the vfs driver, against the disk's own peer figure
//! (128-byte append + `fdatasync`).
//!
//! `cargo bench --bench engine` prints one `name: value` line per figure on stdout (where the
//! run happened and what recovery reported go to stderr). Every figure is measured in the same
//! run. As root, on a fresh ext4 made for the run on a loop device (`BenchFs`, as the layer
//! benches), because each snapshot is a directory tree and an aged disk's inode allocator
//! drifts from run to run (ext4 skips inodes deleted in the last minutes, so a run after a
//! run is slower); the throughput figures are then taken again on a fresh xfs (prefixed
//! `xfs_`, where `mkfs.xfs` is present) and on the machine's own disk (prefixed
//! `host_disk_`). Otherwise in a tempdir under `$CAIRN_BENCH_DIR`, else under the
//! cargo target dir: never `/tmp`, which may be tmpfs, where `fdatasync` is free.
//!
//! - `prepare_commit_ops_per_s_{1,16}_clients`: one op = `prepare` of a fresh key with no parent
//!   (an empty snapshot) then `commit` of it under a fresh name; both are durable when they
//!   return. 16 clients are 16 threads sharing one cloned handle. Each of these two figures and
//!   `raw_fdatasync_ops_per_s` is the median of three rounds taken alternately (see
//!   [`throughput`]); the rounds go to stderr.
//! - `engine_thread_cpu_us_per_op_{1,16}_clients`: the engine thread's time on a CPU (from its
//!   `schedstat`) per prepare+commit, over each measurement's whole run; the median of the
//!   rounds.
//! - `device_flushes_per_op_{1,16}_clients` and `ratio_device_flushes_per_op_1_vs_16_clients`:
//!   the cache flushes the disk under the root completed (`/sys/dev/block/<dev>/stat`) per
//!   prepare+commit, over each measurement's whole run; the median of the rounds. They count
//!   every sync's cost at the disk (the journal's, the file system's commits, the checkpoints'),
//!   so they show how much of it group commit shares, in flushes rather than in time.
//! - `remove_ops_per_s`: removing the committed snapshots just made, one client.
//! - `recovery_ms_10k_records`: `Engine::open` of a root whose log holds exactly 10,000 records
//!   after the last checkpoint (2,500 prepare+commits). The root is built by a child process
//!   (this binary, re-run with `CAIRN_ENGINE_BENCH_CHILD`) that exits without `close`, as a crash
//!   would, so nothing is checkpointed at shutdown.
//! - `open_ms_10k_snapshots`: `Engine::open` of a root with 10,000 snapshots, all in the
//!   checkpoint (the root was closed cleanly); `fsck_ms_10k_snapshots`: `fsck` of it (no
//!   content checks), which holds the engine thread while it runs.
//! - The cost curve, at 1,000 / 10,000 / 100,000 snapshots (see [`cost_curve`]):
//!   `open_ms_<n>_snapshots`, `open_cpu_ms_<n>_snapshots` (the CPU time of the process during
//!   the open: the figure a busy machine does not move), `recovery_ms_<n>_snapshots`
//!   (checkpoint plus a WAL tail), `fsck_ms_<n>_snapshots` and
//!   `prepare_commit_ops_per_s_<n>_present`, with ratios to the smallest root. Building the
//!   100,000-snapshot root takes minutes; `CAIRN_ENGINE_BENCH_NO_CURVE=1` skips the curve,
//!   `CAIRN_ENGINE_BENCH_CURVE_ONLY=1` runs only the curve.
//! - `CAIRN_ENGINE_BENCH_PROFILE=<clients>[:<seconds>]` runs only prepare+commit with that many
//!   clients (a steady load for a profiler).

use cairn_engine::{Engine, EngineHandle, EngineOptions};
use cairn_state::Labels;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../cairn-wal/benches/support.rs"]
mod support;
use support::{bench_base_dir, figure, fs_type_of, BenchFs};

const MEASURE: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_millis(300);
/// Rounds of the throughput figures (see [`throughput`]).
const ROUNDS: usize = 3;
const CLIENTS: usize = 16;
const RECOVERY_OPS: u64 = 2_500;
/// prepare (BeginCreate + Complete) and commit (BeginCommit + Complete).
const RECORDS_PER_OP: u64 = 4;
const OPEN_SNAPSHOTS: u64 = 10_000;
const CHILD_ENV: &str = "CAIRN_ENGINE_BENCH_CHILD";
/// `CAIRN_ENGINE_BENCH_PROFILE=<clients>[:<seconds>]`: only prepare+commit with that many
/// clients, for that long (default 10 s), on the fresh file system: a steady load to attach a
/// profiler to (`perf record -p`, `perf trace -s`). Prints the one figure.
const PROFILE_ENV: &str = "CAIRN_ENGINE_BENCH_PROFILE";

fn main() {
    if let Some(spec) = std::env::var_os(CHILD_ENV) {
        child(&spec.to_string_lossy());
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then only check that
    // the bench builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // The engine makes a directory tree per snapshot: on an aged disk ext4's inode allocator
    // slows with every inode deleted in the last minutes (a previous run's), so the figures
    // are taken on a file system made for the run, as the layer benches' are.
    let dir = BenchFs::new("engine");

    if std::env::var_os("CAIRN_ENGINE_BENCH_CURVE_ONLY").is_some() {
        cost_curve(dir.path());
        return;
    }
    if let Some(clients) = std::env::var_os(PROFILE_ENV) {
        profile(dir.path(), &clients.to_string_lossy());
        return;
    }
    let (raw, one, sixteen) = throughput(dir.path(), "");
    if dir.is_fresh() {
        // The same figures on a fresh xfs (see `BenchFs::xfs_beside`).
        if let Some(xfs) = dir.xfs_beside("engine-xfs") {
            let (raw, one, sixteen) = throughput(xfs.path(), "xfs_");
            figure("xfs_ratio_16_vs_1_clients", sixteen / one, 2);
            figure("xfs_ratio_16_clients_vs_raw", sixteen / raw, 3);
            figure("xfs_ratio_1_client_vs_raw", one / raw, 3);
        }
        // The same figures on the machine's own disk, in the same run: where a host's roots
        // live. Its syncs are faster and its inode allocator slower (aged), so the ratios
        // differ; both are printed, neither alone is the disk-independent figure.
        let host = tempfile::Builder::new()
            .prefix("cairn-engine-bench-host-")
            .tempdir_in(bench_base_dir())
            .expect("create the host-disk tempdir");
        let fs_type = fs_type_of(host.path()).unwrap_or_else(|| "unknown".to_string());
        eprintln!("host disk dir: {} ({fs_type})", host.path().display());
        let (raw, one, sixteen) = throughput(host.path(), "host_disk_");
        figure("host_disk_ratio_16_vs_1_clients", sixteen / one, 2);
        figure("host_disk_ratio_16_clients_vs_raw", sixteen / raw, 3);
        figure("host_disk_ratio_1_client_vs_raw", one / raw, 3);
    }

    let recovery_root = dir.path().join("recovery");
    run_child(&format!("records:{}", recovery_root.display()));
    figure("recovery_ms_10k_records", time_open(&recovery_root), 1);

    let open_root = dir.path().join("open");
    run_child(&format!("snapshots:{}", open_root.display()));
    figure("open_ms_10k_snapshots", time_open(&open_root), 1);
    figure("fsck_ms_10k_snapshots", time_fsck(&open_root), 1);

    figure("ratio_16_vs_1_clients", sixteen / one, 2);
    figure("ratio_16_clients_vs_raw", sixteen / raw, 3);
    figure("ratio_1_client_vs_raw", one / raw, 3);

    if std::env::var_os("CAIRN_ENGINE_BENCH_NO_CURVE").is_none() {
        cost_curve(dir.path());
    }
}

/// `raw_fdatasync_ops_per_s` and prepare+commit with 1 and 16 clients on a new root under
/// `dir`, each figure named with `prefix`; then the removal figure and an fsck of the root.
///
/// The three are measured in [`ROUNDS`] rounds, alternating (raw, 1 client, 16 clients, then
/// again), and each figure is the median of its rounds: the disk's speed drifts over a run
/// (raw `fdatasync` on the same loop device moved between 621 and 1,360/s within an hour), and
/// alternating puts each ratio's two sides in the same minutes of the disk's life.
fn throughput(dir: &Path, prefix: &str) -> (f64, f64, f64) {
    let root = dir.join("throughput");
    let (engine, _) = Engine::open(&root, options()).expect("open the throughput root");
    let (mut raws, mut ones, mut sixteens) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_ones, mut cpu_sixteens) = (Vec::new(), Vec::new());
    let (mut flushes_ones, mut flushes_sixteens) = (Vec::new(), Vec::new());
    let flushes = FlushCounter::of(dir);
    for round in 0..ROUNDS {
        raws.push(raw_fdatasync_ops_per_s(&dir.join(format!("raw{round}"))));
        let before = flushes.count();
        let t = prepare_commit_ops_per_s(&engine, 1, &format!("one{round}"));
        flushes_ones.extend(flushes.per_op(before, t.all_ops));
        ones.push(t.ops_per_s);
        cpu_ones.push(t.cpu_us_per_op);
        let before = flushes.count();
        let t = prepare_commit_ops_per_s(&engine, CLIENTS, &format!("many{round}"));
        flushes_sixteens.extend(flushes.per_op(before, t.all_ops));
        sixteens.push(t.ops_per_s);
        cpu_sixteens.push(t.cpu_us_per_op);
    }
    eprintln!("{prefix}rounds: raw {raws:.0?}, 1 client {ones:.0?}, 16 clients {sixteens:.0?}");
    let (raw, one, sixteen) = (median(raws), median(ones), median(sixteens));
    figure(&format!("{prefix}raw_fdatasync_ops_per_s"), raw, 0);
    figure(
        &format!("{prefix}prepare_commit_ops_per_s_1_client"),
        one,
        0,
    );
    figure(
        &format!("{prefix}prepare_commit_ops_per_s_16_clients"),
        sixteen,
        0,
    );
    // What the engine thread spends per op on a CPU (its system calls included): with 16
    // clients on two cores, this, not the syncs, is most of an op's share of a batch.
    figure(
        &format!("{prefix}engine_thread_cpu_us_per_op_1_client"),
        median(cpu_ones),
        1,
    );
    figure(
        &format!("{prefix}engine_thread_cpu_us_per_op_16_clients"),
        median(cpu_sixteens),
        1,
    );
    // The disk's cache flushes per op (the journal's, the file system's commits, sled's and
    // the checkpoints', whatever issued them): what group commit shares, counted in flushes
    // rather than in the disk's time for them. Absent where the device counts no flushes.
    if !flushes_ones.is_empty() && !flushes_sixteens.is_empty() {
        let (one, sixteen) = (median(flushes_ones), median(flushes_sixteens));
        figure(&format!("{prefix}device_flushes_per_op_1_client"), one, 2);
        figure(
            &format!("{prefix}device_flushes_per_op_16_clients"),
            sixteen,
            3,
        );
        figure(
            &format!("{prefix}ratio_device_flushes_per_op_1_vs_16_clients"),
            one / sixteen.max(1e-9),
            1,
        );
    }
    let removed = remove_ops_per_s(&engine);
    figure(&format!("{prefix}remove_ops_per_s"), removed, 0);
    // Whatever the figures cost, the root must be consistent after them.
    let fsck = engine.fsck(false).expect("fsck");
    assert!(
        fsck.is_clean(),
        "fsck after the throughput figures: {fsck:?}"
    );
    engine.close().expect("close the throughput root");
    (raw, one, sixteen)
}

/// See [`PROFILE_ENV`].
fn profile(dir: &Path, spec: &str) {
    let (clients, seconds) = spec.split_once(':').unwrap_or((spec, "10"));
    let clients: usize = clients
        .parse()
        .expect("CAIRN_ENGINE_BENCH_PROFILE: <clients>[:<s>]");
    let seconds: u64 = seconds
        .parse()
        .expect("CAIRN_ENGINE_BENCH_PROFILE: <clients>[:<s>]");
    let (engine, _) = Engine::open(&dir.join("profile"), options()).expect("open the root");
    eprintln!("profiling pid {}", std::process::id());
    let flushes = FlushCounter::of(dir);
    let before = flushes.count();
    let t = prepare_commit_ops_per_s_for(&engine, clients, "profile", Duration::from_secs(seconds));
    if let Some(per_op) = flushes.per_op(before, t.all_ops) {
        figure(
            &format!("device_flushes_per_op_{clients}_clients"),
            per_op,
            3,
        );
    }
    figure(
        &format!("prepare_commit_ops_per_s_{clients}_clients"),
        t.ops_per_s,
        0,
    );
    figure(
        &format!("engine_thread_cpu_us_per_op_{clients}_clients"),
        t.cpu_us_per_op,
        1,
    );
    engine.close().expect("close the root");
}

/// Nanoseconds the engine thread (named `cairn-engine`) has run on a CPU, from its
/// `/proc/self/task/<tid>/schedstat`; 0 if it cannot be found.
fn engine_thread_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "cairn-engine" {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            return stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// The middle value (of an odd count; the upper middle of an even one).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Snapshot counts of the cost curve.
const CURVE: [u64; 3] = [1_000, 10_000, 100_000];
/// Prepare+commits journaled after the checkpoint of a curve root, not checkpointed: the WAL
/// tail recovery replays.
const CURVE_TAIL_OPS: u64 = 200;
const CURVE_MEASURE: Duration = Duration::from_secs(2);

/// How open, recovery and throughput grow with the snapshots in the root: for each count, a
/// root of that many snapshots closed cleanly (`open_ms_<n>_snapshots`: the checkpoint alone),
/// then the same root with a WAL tail of [`CURVE_TAIL_OPS`] prepare+commits left by a process
/// that exited without close (`recovery_ms_<n>_snapshots`: checkpoint plus replay), and
/// prepare+commit throughput with 16 clients on it (`prepare_commit_ops_per_s_<n>_present`).
/// The ratios to the first count show the curve: linear growth keeps
/// `ratio_open_<n>_vs_<first>` at or under `<n>/<first>`.
fn cost_curve(dir: &Path) {
    let mut first: Option<(u64, f64, f64, f64)> = None;
    for n in CURVE {
        let root = dir.join(format!("curve-{n}"));
        let t = Instant::now();
        build_curve_root(n, &root);
        eprintln!(
            "curve root of {n} snapshots built in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let open = best_open(&root);
        let open_cpu = (0..3).map(|_| open_cpu_ms(&root)).fold(f64::MAX, f64::min);
        run_child(&format!("tail:{CURVE_TAIL_OPS}:{}", root.display()));
        let recovery = time_open(&root);
        let fsck = time_fsck(&root);
        let (engine, _) = Engine::open(&root, options()).expect("open the curve root");
        let ops =
            prepare_commit_ops_per_s_for(&engine, CLIENTS, "present", CURVE_MEASURE).ops_per_s;
        engine.close().expect("close the curve root");
        figure(&format!("open_ms_{n}_snapshots"), open, 1);
        figure(&format!("open_cpu_ms_{n}_snapshots"), open_cpu, 1);
        figure(&format!("recovery_ms_{n}_snapshots"), recovery, 1);
        figure(&format!("fsck_ms_{n}_snapshots"), fsck, 1);
        figure(&format!("prepare_commit_ops_per_s_{n}_present"), ops, 0);
        match first {
            None => first = Some((n, open, recovery, fsck)),
            Some((n0, open0, recovery0, fsck0)) => {
                figure(&format!("ratio_fsck_{n}_vs_{n0}"), fsck / fsck0, 2);
                figure(&format!("ratio_open_{n}_vs_{n0}"), open / open0, 2);
                figure(
                    &format!("ratio_recovery_{n}_vs_{n0}"),
                    recovery / recovery0,
                    2,
                );
            }
        }
    }
}

/// Builds a root of `n` empty snapshots at `root`, closed cleanly. Building it where syncs
/// cost nothing (`/dev/shm`, when it is a tmpfs) and copying it over is minutes faster for
/// 100,000 snapshots than building it in place, and the root is the same: what open and
/// recovery read does not depend on how fast it was written.
fn build_curve_root(n: u64, root: &Path) {
    let shm = Path::new("/dev/shm");
    if fs_type_of(shm).as_deref() != Some("tmpfs") {
        run_child(&format!("curve:{n}:{}", root.display()));
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("cairn-engine-bench-curve-")
        .tempdir_in(shm)
        .expect("tempdir in /dev/shm");
    let built = scratch.path().join("root");
    run_child(&format!("curve:{n}:{}", built.display()));
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&built)
        .arg(root)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -a of the curve root: {status}");
    // The copy is on disk before anything is timed.
    let f = File::open(root).expect("open the curve root");
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    assert_eq!(rc, 0, "syncfs: {}", std::io::Error::last_os_error());
}

/// The best of three opens of a cleanly closed root (each open is closed again, which
/// checkpoints, so every open reads the same checkpoint and an empty tail).
fn best_open(root: &Path) -> f64 {
    (0..3).map(|_| time_open(root)).fold(f64::MAX, f64::min)
}

/// CPU time (user + system, ms) this process has used so far, all its threads: the cost of an
/// open however busy the machine is (wall time on a shared machine also counts the waits for
/// a core).
fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// The CPU time (ms) of one open of `root` (closed again, not counted).
fn open_cpu_ms(root: &Path) -> f64 {
    let before = cpu_ms();
    let (engine, _) = Engine::open(root, options()).expect("open the prepared root");
    let used = cpu_ms() - before;
    engine.close().expect("close the prepared root");
    used
}

fn options() -> EngineOptions {
    EngineOptions::default()
}

/// Open `root` (timed) and close it again (not timed: close checkpoints).
fn time_open(root: &Path) -> f64 {
    let start = Instant::now();
    let (engine, report) = Engine::open(root, options()).expect("open the prepared root");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "open {}: checkpoint_lsn {} replayed {} installed {} dropped {} index_rebuilt {}",
        root.display(),
        report.checkpoint_lsn,
        report.replayed_records,
        report.installed.len(),
        report.dropped.len(),
        report.index_rebuilt
    );
    engine.close().expect("close the prepared root");
    ms
}

/// `fsck` (no content checks) of `root`, timed on an open engine: it runs on the engine thread,
/// so every client waits for it. The root must be clean.
fn time_fsck(root: &Path) -> f64 {
    let (engine, _) = Engine::open(root, options()).expect("open the prepared root");
    let start = Instant::now();
    let report = engine.fsck(false).expect("fsck");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(report.is_clean(), "fsck of {}: {report:?}", root.display());
    engine.close().expect("close the prepared root");
    ms
}

/// Re-run this binary to build a root, so that the process that built it ends without `close`.
fn run_child(spec: &str) {
    let exe = std::env::current_exe().expect("path of the bench binary");
    let status = std::process::Command::new(exe)
        .env(CHILD_ENV, spec)
        .status()
        .expect("run the bench child");
    assert!(status.success(), "bench child {spec} failed: {status}");
}

fn child(spec: &str) {
    let (what, root) = spec.split_once(':').expect("CHILD_ENV is <what>:<root>");
    let spec = spec.to_owned();
    let root = PathBuf::from(root);
    match what {
        "records" => {
            // No checkpoint while building; the process exits without close, so none at
            // shutdown either: the log holds every record.
            let options = EngineOptions {
                checkpoint_every_records: u64::MAX,
                ..options()
            };
            let (engine, _) = Engine::open(&root, options).expect("open the recovery root");
            run_clients(&engine, CLIENTS, "rec", prepare_commit, RECOVERY_OPS);
            let expected = RECOVERY_OPS * RECORDS_PER_OP;
            eprintln!("recovery root: {expected} records journaled; exiting without close");
            // Like a crash, minus the torn tail: every acknowledged record is durable.
            std::process::exit(0);
        }
        "snapshots" => {
            let (engine, _) = Engine::open(&root, options()).expect("open the snapshots root");
            run_clients(
                &engine,
                CLIENTS,
                "snap",
                |engine, tag, i| {
                    engine
                        .prepare(&format!("{tag}-{i}"), None, Labels::new())
                        .expect("prepare");
                },
                OPEN_SNAPSHOTS,
            );
            // Close checkpoints: the next open reads 10,000 snapshots from the checkpoint.
            engine.close().expect("close the snapshots root");
        }
        "curve" => {
            let (n, root) = spec
                .strip_prefix("curve:")
                .and_then(|r| r.split_once(':'))
                .expect("curve:<n>:<root>");
            let n: u64 = n.parse().expect("curve count");
            let (engine, _) = Engine::open(Path::new(root), options()).expect("open curve root");
            run_clients(
                &engine,
                CLIENTS,
                "c",
                |engine, tag, i| {
                    engine
                        .prepare(&format!("{tag}-{i}"), None, Labels::new())
                        .expect("prepare");
                },
                n,
            );
            engine.close().expect("close the curve root");
        }
        "tail" => {
            let (n, root) = spec
                .strip_prefix("tail:")
                .and_then(|r| r.split_once(':'))
                .expect("tail:<n>:<root>");
            let n: u64 = n.parse().expect("tail count");
            let options = EngineOptions {
                checkpoint_every_records: u64::MAX,
                ..options()
            };
            let (engine, _) = Engine::open(Path::new(root), options).expect("open curve root");
            run_clients(&engine, CLIENTS, "tail", prepare_commit, n);
            // Like a crash: every acknowledged record is durable, nothing checkpointed.
            std::process::exit(0);
        }
        other => panic!("unknown bench child {other}"),
    }
}

/// Run exactly `total` ops spread over `clients` threads, each op numbered once.
fn run_clients(
    engine: &EngineHandle,
    clients: usize,
    tag: &str,
    op: impl Fn(&EngineHandle, &str, u64) + Send + Sync + Copy + 'static,
    total: u64,
) {
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (engine, next, tag) = (engine.clone(), Arc::clone(&next), tag.to_owned());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                op(&engine, &tag, i);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

fn prepare_commit(engine: &EngineHandle, tag: &str, i: u64) {
    let key = format!("{tag}-active-{i}");
    engine.prepare(&key, None, Labels::new()).expect("prepare");
    engine
        .commit(&format!("{tag}-{i}"), &key, Labels::new())
        .expect("commit");
}

/// `clients` threads doing prepare+commit of fresh keys, for the warm-up and then [`MEASURE`];
/// ops per second of the measured part.
fn prepare_commit_ops_per_s(engine: &EngineHandle, clients: usize, tag: &str) -> Throughput {
    prepare_commit_ops_per_s_for(engine, clients, tag, MEASURE)
}

/// One measurement: prepare+commits per second in the measured window, and the engine
/// thread's CPU time per prepare+commit over the whole run (warm-up included).
#[derive(Clone, Copy, Debug)]
struct Throughput {
    ops_per_s: f64,
    cpu_us_per_op: f64,
    /// Every op of the run, warm-up included.
    all_ops: u64,
}

/// The cache flushes the block device under a directory has completed (`/sys/dev/block`'s
/// `stat`, field 16): the loop device of a fresh bench file system, or the host disk.
struct FlushCounter(Option<PathBuf>);

impl FlushCounter {
    fn of(dir: &Path) -> FlushCounter {
        use std::os::unix::fs::MetadataExt;
        let stat = std::fs::metadata(dir).ok().map(|m| {
            let dev = m.dev();
            PathBuf::from(format!(
                "/sys/dev/block/{}:{}/stat",
                libc::major(dev),
                libc::minor(dev)
            ))
        });
        let counter = FlushCounter(stat);
        if counter.count().is_none() {
            eprintln!(
                "{}: the device counts no flushes; no flush figures",
                dir.display()
            );
        }
        counter
    }

    fn count(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.0.as_ref()?).ok()?;
        stat.split_whitespace().nth(15)?.parse().ok()
    }

    /// Flushes per op since `before`, over `ops` ops.
    fn per_op(&self, before: Option<u64>, ops: u64) -> Option<f64> {
        let flushes = self.count()?.checked_sub(before?)?;
        Some(flushes as f64 / ops.max(1) as f64)
    }
}

fn prepare_commit_ops_per_s_for(
    engine: &EngineHandle,
    clients: usize,
    tag: &str,
    measure: Duration,
) -> Throughput {
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = engine_thread_cpu_ns();
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let end = measure_from + measure;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (engine, next, tag) = (engine.clone(), Arc::clone(&next), tag.to_owned());
            std::thread::spawn(move || {
                let mut measured = 0u64;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    prepare_commit(&engine, &tag, next.fetch_add(1, Ordering::Relaxed));
                    // An op counts if it started in the measured window.
                    if began >= measure_from {
                        measured += 1;
                    }
                }
                measured
            })
        })
        .collect();
    let ops: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    let cpu_ns = engine_thread_cpu_ns().saturating_sub(cpu_before);
    // Every op of the run, warm-up included, as the CPU time is.
    let all_ops = next.load(Ordering::Relaxed).max(1);
    Throughput {
        ops_per_s: ops as f64 / measure.as_secs_f64(),
        cpu_us_per_op: cpu_ns as f64 / 1e3 / all_ops as f64,
        all_ops,
    }
}

/// Remove the committed snapshots the throughput figures made, one client, for at most
/// [`MEASURE`].
fn remove_ops_per_s(engine: &EngineHandle) -> f64 {
    let names: Vec<String> = engine
        .walk(&["kind==committed"])
        .expect("walk")
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert!(!names.is_empty(), "nothing to remove");
    let start = Instant::now();
    let mut removed = 0u64;
    for name in &names {
        engine.remove(name).expect("remove");
        removed += 1;
        if start.elapsed() >= MEASURE {
            break;
        }
    }
    eprintln!("removed {removed} of {} committed snapshots", names.len());
    removed as f64 / start.elapsed().as_secs_f64()
}

/// The peer: what any append-only file with per-write durability costs on this disk.
fn raw_fdatasync_ops_per_s(path: &Path) -> f64 {
    let file = File::create(path).expect("create the raw file");
    let record = [0x5au8; 128];
    let mut end = 0u64;
    let mut op = || {
        file.write_all_at(&record, end).expect("raw write");
        end += record.len() as u64;
        file.sync_data().expect("raw fdatasync");
    };
    let start = Instant::now();
    while start.elapsed() < WARM_UP {
        op();
    }
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < MEASURE {
        op();
        ops += 1;
    }
    ops as f64 / start.elapsed().as_secs_f64()
}
