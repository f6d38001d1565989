//! Image load of a distribution-shaped root through the `cairn` command line, against GNU
//! tar -x (+ syncfs) of the same layer, in the same run on the same file system.
//!
//! `cargo bench -p cairn --bench image_load` prints one `name: value` line per figure on stdout
//! (where the run happened, and anything else, goes to stderr). As root the run happens on a
//! fresh ext4 made for it on a loop device, so ratios do not drift with the age of the
//! machine's disk; otherwise in a tempdir under `$CAIRN_BENCH_DIR` or the cargo target dir,
//! and the output says so. `CAIRN_IMAGE_BENCH_ONLY=rootfs|multi` runs one part;
//! `CAIRN_IMAGE_BENCH_KEEP=DIR` copies the rootfs inputs there and times nothing (inputs for
//! profiling by hand).
//!
//! Part `rootfs`: a tree shaped like a Debian root (`image_load/rootfs.rs`: ~7,000 entries,
//! ~800 directories, ~10 % symlinks, hardlinks, most files under 16 KiB, a few of MiBs), as one
//! layer tar by GNU tar, a `docker save` archive of it and an OCI archive of it (gzip). Timed:
//! the `cairn` command line as a user runs it, on a root that exists (`layer import` of the
//! tar, `image load` of each archive), beside `tar -xf` + syncfs and `tar -xzf` + syncfs of the
//! same layer. Peak RSS is the largest VmHWM of those `cairn` processes. Every `cairn` command
//! returns only once what it wrote is durable.
//!
//! Part `multi` (root only: overlayfs): the same kind of root over four layers (~50 MB each) in
//! one `docker save` archive, loaded on the overlay driver with its layers extracted side by
//! side (the default, docs/parallel-import.md) and one after another (`--serial`), and on vfs,
//! beside GNU tar extracting the four layers one after the other + syncfs.
//!
//! Each timed figure is the best of [`ROUNDS`] runs, the peers alternating with cairn.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "../../cairn-wal/benches/support.rs"]
mod support;
use support::{figure, syncfs, BenchFs};

#[path = "image_load/rootfs.rs"]
mod rootfs;

const ROOTFS_SEED: u64 = 0x00de_b1a9;
const ROUNDS: usize = 3;
const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then only check
    // that the bench builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let fs = BenchFs::new("image");
    let d = fs.path();
    let only = std::env::var("CAIRN_IMAGE_BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    if part("rootfs") {
        rootfs_figures(&d.join("rootfs"));
    }
    if part("multi") && std::env::var_os("CAIRN_IMAGE_BENCH_KEEP").is_none() {
        multi_figures(&d.join("multi"));
    }
    if !fs.is_fresh() {
        eprintln!("note: figures taken on the machine's own disk, not a fresh file system");
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("spawn");
    assert!(status.success(), "{cmd:?}: {status}");
}

/// What one timed run cost: wall seconds, peak RSS of the measured process (KiB), and its
/// user + system CPU seconds.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    wall_s: f64,
    rss_kb: u64,
    cpu_s: f64,
}

/// Runs `cmd` to completion; its cost, from `wait4`, so tar's and gzip's memory and CPU never
/// mix with ours. CPU time counts the same whatever else the machine runs; wall time does not.
// The child is reaped by the wait4 below (which also gives its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn timed(cmd: &mut Command) -> Cost {
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = i32::try_from(child.id()).expect("pid fits");
    let mut status = 0;
    // SAFETY: wait4 writes only into the two out-parameters we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `pid` is our child, not yet waited for.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall_s = t.elapsed().as_secs_f64();
    assert_eq!(
        rc,
        pid,
        "wait4 {cmd:?}: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed: status {status:#x}"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cost {
        wall_s,
        rss_kb: u64::try_from(ru.ru_maxrss).unwrap_or(0),
        cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
    }
}

fn cairn(root: &Path, driver: &str) -> Command {
    let mut c = Command::new(CAIRN);
    c.arg("--root").arg(root).arg("--driver").arg(driver);
    c
}

/// A root that exists (created, not timed), so a timed command measures the work, not `init`.
fn fresh_root(root: &Path, driver: &str) -> PathBuf {
    run(cairn(root, driver)
        .arg("layer")
        .arg("ls")
        .stdout(Stdio::null()));
    root.to_path_buf()
}

type Runner<'a> = (&'a str, &'a mut dyn FnMut(&Path) -> Cost);

/// Best wall time and best CPU time (ms) of each runner over [`ROUNDS`] rounds, runners
/// alternating within a round; and the largest peak RSS (KiB) of the runners whose name starts
/// with `cairn`.
fn best_of(d: &Path, runners: &mut [Runner<'_>]) -> (Vec<f64>, Vec<f64>, u64) {
    let mut wall = vec![f64::MAX; runners.len()];
    let mut cpu = vec![f64::MAX; runners.len()];
    let mut rss = 0u64;
    for round in 0..ROUNDS {
        for (i, (name, run)) in runners.iter_mut().enumerate() {
            let out = d.join(format!("{name}-{round}"));
            // Everything before is on disk: each run pays for its own writes only.
            syncfs(d);
            let c = run(&out);
            eprintln!(
                "  round {round} {name}: {:.0} ms wall, {:.0} ms cpu",
                c.wall_s * 1e3,
                c.cpu_s * 1e3
            );
            wall[i] = wall[i].min(c.wall_s * 1e3);
            cpu[i] = cpu[i].min(c.cpu_s * 1e3);
            if name.starts_with("cairn") {
                rss = rss.max(c.rss_kb);
            }
        }
    }
    (wall, cpu, rss)
}

/// GNU tar extracting `layers` in order into `out`, then syncfs: the wall time of all of it,
/// the CPU of the tar processes (gzip's included for -xzf: tar waits for it).
fn gnu_extract(out: &Path, flags: &str, layers: &[PathBuf]) -> Cost {
    std::fs::create_dir_all(out).expect("mkdir");
    let t = Instant::now();
    let mut cost = Cost::default();
    for layer in layers {
        let c = timed(Command::new("tar").arg("-C").arg(out).arg(flags).arg(layer));
        cost.cpu_s += c.cpu_s;
    }
    syncfs(out);
    cost.wall_s = t.elapsed().as_secs_f64();
    cost
}

fn rootfs_figures(d: &Path) {
    std::fs::create_dir_all(d).expect("mkdir");
    let t = Instant::now();
    let tree = d.join("tree");
    let shape = rootfs::generate(&tree, ROOTFS_SEED, 1.0);
    let layer = d.join("rootfs.tar");
    run(Command::new("tar")
        .arg("--sort=name")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let docker = d.join("rootfs.docker.tar");
    rootfs::docker_save(&docker, std::slice::from_ref(&layer), "bench/rootfs:latest");
    let oci = d.join("rootfs.oci.tar");
    let gz = rootfs::oci_archive(&oci, d, std::slice::from_ref(&layer), "bench/rootfs:latest");
    let tar_mb = std::fs::metadata(&layer).expect("stat").len() as f64 / 1e6;
    let gz_mb = std::fs::metadata(&gz[0]).expect("stat").len() as f64 / 1e6;
    syncfs(d);
    eprintln!(
        "rootfs: {shape:?}, {tar_mb:.1} MB of tar, {gz_mb:.1} MB gzipped, made in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // For profiling by hand: a copy of the inputs that outlives the run.
    if let Some(keep) = std::env::var_os("CAIRN_IMAGE_BENCH_KEEP") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).expect("mkdir keep");
        for f in [&layer, &docker, &oci, &gz[0]] {
            let name = f.file_name().expect("file name");
            std::fs::copy(f, keep.join(name)).expect("keep a copy");
        }
        eprintln!("inputs kept in {}; nothing timed", keep.display());
        return;
    }
    let (tar1, gz1) = (vec![layer.clone()], gz.clone());
    let (best, cpu, rss_kb) = best_of(
        d,
        &mut [
            ("gnu-tar-x", &mut |out: &Path| {
                gnu_extract(out, "-xf", &tar1)
            }),
            ("cairn-layer-import", &mut |out: &Path| {
                timed(
                    cairn(&fresh_root(out, "vfs"), "vfs")
                        .args(["layer", "import"])
                        .arg(&layer),
                )
            }),
            ("cairn-image-load", &mut |out: &Path| {
                timed(
                    cairn(&fresh_root(out, "vfs"), "vfs")
                        .args(["image", "load"])
                        .arg(&docker),
                )
            }),
            ("gnu-tar-xzf", &mut |out: &Path| {
                gnu_extract(out, "-xzf", &gz1)
            }),
            ("cairn-image-load-oci", &mut |out: &Path| {
                timed(
                    cairn(&fresh_root(out, "vfs"), "vfs")
                        .args(["image", "load"])
                        .arg(&oci),
                )
            }),
        ],
    );
    let [tar_x, import, load, tar_xzf, load_oci] = best[..] else {
        unreachable!("five runners")
    };
    figure("rootfs_entries", shape.entries() as f64, 0);
    figure("rootfs_tar_mb", tar_mb, 1);
    figure("gnu_tar_extract_rootfs_ms", tar_x, 0);
    figure("layer_import_rootfs_ms", import, 0);
    figure("image_load_rootfs_ms", load, 0);
    figure("gnu_tar_xzf_rootfs_ms", tar_xzf, 0);
    figure("image_load_oci_gzip_rootfs_ms", load_oci, 0);
    figure("cairn_peak_rss_rootfs_mb", rss_kb as f64 * 1024.0 / 1e6, 1);
    let [tar_x_cpu, import_cpu, load_cpu, tar_xzf_cpu, load_oci_cpu] = cpu[..] else {
        unreachable!("five runners")
    };
    figure("gnu_tar_extract_rootfs_cpu_ms", tar_x_cpu, 0);
    figure("layer_import_rootfs_cpu_ms", import_cpu, 0);
    figure("image_load_rootfs_cpu_ms", load_cpu, 0);
    figure("gnu_tar_xzf_rootfs_cpu_ms", tar_xzf_cpu, 0);
    figure("image_load_oci_gzip_rootfs_cpu_ms", load_oci_cpu, 0);
    figure("ratio_layer_import_vs_gnu_tar_rootfs", import / tar_x, 2);
    figure("ratio_image_load_vs_gnu_tar_rootfs", load / tar_x, 2);
    figure(
        "ratio_image_load_oci_vs_gnu_tar_xzf_rootfs",
        load_oci / tar_xzf,
        2,
    );
}

fn multi_figures(d: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the 4-layer overlay figures need root (overlayfs)");
        return;
    }
    std::fs::create_dir_all(d).expect("mkdir");
    let layers: Vec<PathBuf> = (0..4u64)
        .map(|i| {
            let tree = d.join(format!("tree-{i}"));
            rootfs::generate(&tree, ROOTFS_SEED + 1 + i, 0.25);
            let layer = d.join(format!("layer-{i}.tar"));
            run(Command::new("tar")
                .arg("--sort=name")
                .arg("-C")
                .arg(&tree)
                .arg("-cf")
                .arg(&layer)
                .arg("."));
            layer
        })
        .collect();
    let docker = d.join("multi.docker.tar");
    rootfs::docker_save(&docker, &layers, "bench/multi:latest");
    syncfs(d);
    let (best, cpu, _) = best_of(
        d,
        &mut [
            ("gnu-tar-x-4", &mut |out: &Path| {
                gnu_extract(out, "-xf", &layers)
            }),
            ("cairn-image-load-4-overlay", &mut |out: &Path| {
                timed(
                    cairn(&fresh_root(out, "overlay"), "overlay")
                        .args(["image", "load"])
                        .arg(&docker),
                )
            }),
            ("cairn-image-load-4-overlay-serial", &mut |out: &Path| {
                timed(
                    cairn(&fresh_root(out, "overlay"), "overlay")
                        .args(["image", "load", "--serial"])
                        .arg(&docker),
                )
            }),
            ("cairn-image-load-4-vfs", &mut |out: &Path| {
                timed(
                    cairn(&fresh_root(out, "vfs"), "vfs")
                        .args(["image", "load"])
                        .arg(&docker),
                )
            }),
        ],
    );
    let [tar_x, overlay, serial, vfs] = best[..] else {
        unreachable!("four runners")
    };
    figure("gnu_tar_extract_4_layers_ms", tar_x, 0);
    figure("image_load_4_layers_overlay_ms", overlay, 0);
    figure("image_load_4_layers_vfs_ms", vfs, 0);
    figure("image_load_4_layers_overlay_cpu_ms", cpu[1], 0);
    figure(
        "ratio_image_load_4_layers_overlay_vs_gnu_tar",
        overlay / tar_x,
        2,
    );
    figure("ratio_image_load_4_layers_overlay_vs_vfs", overlay / vfs, 2);
    // The same overlay load, layers one after another against side by side.
    figure("image_load_4layer_serial_ms", serial, 0);
    figure("image_load_4layer_parallel_ms", overlay, 0);
    figure("image_load_4layer_serial_cpu_ms", cpu[2], 0);
    figure("image_load_4layer_parallel_cpu_ms", cpu[1], 0);
    figure(
        "ratio_image_load_4layer_parallel_vs_serial",
        overlay / serial,
        2,
    );
}
