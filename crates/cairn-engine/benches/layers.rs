//! Layer import/export throughput against GNU tar, image load of a distribution-shaped root
//! against GNU tar -x (+ syncfs), and the importer's peak memory.
//!
//! `cargo bench --bench layers` prints one `name: value` line per figure on stdout (where the
//! run happened, and anything else, goes to stderr). Every figure is measured in the same run,
//! on the same file system: as root, a fresh ext4 made for the run on a loop device (so the
//! ratios do not drift with the age of the machine's disk); otherwise a tempdir under
//! `$CAIRN_BENCH_DIR`, else under the cargo target dir (not `/tmp`, which may be tmpfs where
//! syncs are free). `CAIRN_LAYERS_BENCH_ONLY=generated|rootfs|multi` runs one part;
//! `CAIRN_LAYERS_BENCH_KEEP=DIR` keeps a copy of the rootfs inputs there and
//! times nothing (inputs for profiling by hand).
//!
//! Part `generated`: a seeded tree of about 200 MB (a few thousand files: many small, some
//! hundreds of KB, a few MB-sized; half of every file's blocks compressible), tarred by GNU tar
//! and gzipped. MB are 10^6 bytes of uncompressed tar. Durable on both sides: GNU tar is
//! followed by syncfs or an fsync of the archive; `import_layer` returns only after the
//! content is synced; the export's file is fsynced.
//!
//! Part `rootfs`: a tree shaped like a Debian root (`layers/rootfs.rs`: ~7,000 entries, ~800
//! directories, ~10 % symlinks, hardlinks, most files under 16 KiB, a few of MiBs), as one layer
//! tar by GNU tar, a `docker save` archive of it and an OCI archive of it (gzip). Timed: the
//! `cairn` command line, as a user runs it, on a root that exists (`layer import` of the tar,
//! `image load` of each archive), beside `tar -xf` + syncfs and `tar -xzf` + syncfs of the same
//! layer. Peak RSS is the largest VmHWM of those `cairn` processes.
//!
//! Part `multi` (root and overlayfs only): the same kind of root split over four layers, one
//! `docker save` archive, loaded on the overlay driver, beside GNU tar extracting the four
//! layers one after the other + syncfs.
//!
//! Each timed figure is the best of [`ROUNDS`] runs, the peers alternating with cairn.

use cairn_engine::{Engine, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::types::DriverKind;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "../../cairn-wal/benches/support.rs"]
mod support;
use support::{figure, syncfs, BenchFs};

#[path = "layers/rootfs.rs"]
mod rootfs;

const SEED: u64 = 0x0ca1_12b5;
const ROOTFS_SEED: u64 = 0xdeb1_a9;
const ROUNDS: usize = 3;
const CHILD_ENV: &str = "CAIRN_LAYERS_BENCH_CHILD_IMPORT";
const CHILD_ROOT_ENV: &str = "CAIRN_LAYERS_BENCH_CHILD_ROOT";
const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

fn main() {
    if let Some(layer) = std::env::var_os(CHILD_ENV) {
        let root = std::env::var_os(CHILD_ROOT_ENV).expect("child root");
        child_import(Path::new(&layer), Path::new(&root));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then only check
    // that the bench builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let fs = BenchFs::new("layers");
    let d = fs.path();
    let only = std::env::var("CAIRN_LAYERS_BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    if part("generated") {
        generated_figures(&d.join("generated"));
    }
    if part("rootfs") {
        rootfs_figures(&d.join("rootfs"));
    }
    if part("multi") {
        multi_figures(&d.join("multi"));
    }
    if !fs.is_fresh() {
        eprintln!("note: figures taken on the machine's own disk, not a fresh file system");
    }
}

fn generated_figures(d: &Path) {
    std::fs::create_dir_all(d).expect("mkdir");
    let t = Instant::now();
    let tree = d.join("tree");
    let (files, bytes) = generate_tree(&tree);
    syncfs(&tree);
    eprintln!(
        "generated {files} files, {:.1} MB in {:.1}s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // GNU tar create (the layer itself), then fsync of the archive: the export's peer.
    let layer = d.join("layer.tar");
    let mut create_s = f64::MAX;
    for _ in 0..ROUNDS {
        let _ = std::fs::remove_file(&layer);
        let t = Instant::now();
        run(Command::new("tar")
            .arg("--sort=name")
            .arg("-C")
            .arg(&tree)
            .arg("-cf")
            .arg(&layer)
            .arg("."));
        File::open(&layer)
            .and_then(|f| f.sync_all())
            .expect("fsync archive");
        create_s = create_s.min(t.elapsed().as_secs_f64());
    }
    let tar_bytes = std::fs::metadata(&layer).expect("stat layer").len();
    let mb = tar_bytes as f64 / 1e6;
    eprintln!("layer: {mb:.1} MB of tar");
    let gz = d.join("layer.tar.gz");
    {
        let mut e = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(File::create(&gz).expect("create gz")),
            flate2::Compression::fast(),
        );
        std::io::copy(&mut File::open(&layer).expect("open layer"), &mut e).expect("gzip");
        e.finish().expect("gzip").flush().expect("gzip");
    }
    eprintln!(
        "gzip: {:.1} MB",
        std::fs::metadata(&gz).expect("stat gz").len() as f64 / 1e6
    );
    // Nothing is deleted until every figure is taken: ext4 skips inodes freed in the last few
    // seconds when it allocates (`recently_deleted`), so a run right after a big `rm -r` pays
    // an inode-table scan the other side may not; every run here starts from the same state.
    let (mut extract_s, mut import_s, mut import_gz_s, mut export_s) =
        (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let mut engines = Vec::new();
    for round in 0..ROUNDS {
        // GNU tar extract into a fresh directory, then syncfs.
        let x = d.join(format!("gnu-x-{round}"));
        std::fs::create_dir(&x).expect("mkdir");
        syncfs(d);
        let t = Instant::now();
        run(Command::new("tar").arg("-C").arg(&x).arg("-xf").arg(&layer));
        syncfs(&x);
        extract_s = extract_s.min(t.elapsed().as_secs_f64());

        // A root per figure: the same DiffID twice in one root would be a dedupe.
        let engine = open(&d.join(format!("root-{round}")));
        syncfs(d);
        let t = Instant::now();
        let chain = import(&engine, &layer);
        import_s = import_s.min(t.elapsed().as_secs_f64());

        let out = d.join(format!("export-{round}.tar"));
        let t = Instant::now();
        let f = File::create(&out).expect("create export");
        let sync = f.try_clone().expect("dup");
        engine.export_layer(&chain, Box::new(f)).expect("export");
        sync.sync_all().expect("fsync export");
        export_s = export_s.min(t.elapsed().as_secs_f64());
        assert_eq!(
            std::fs::metadata(&out).expect("stat").len(),
            tar_bytes,
            "export is the layer byte for byte"
        );

        let gz_engine = open(&d.join(format!("root-gz-{round}")));
        syncfs(d);
        let t = Instant::now();
        import(&gz_engine, &gz);
        import_gz_s = import_gz_s.min(t.elapsed().as_secs_f64());
        engines.push(engine);
        engines.push(gz_engine);
    }
    for engine in engines {
        engine.close().expect("close");
    }

    let rss_kb = child_peak_rss_kb(&layer, &d.join("child-root"));

    let extract = mb / extract_s;
    let import_mb = mb / import_s;
    let create = mb / create_s;
    let export = mb / export_s;
    figure("layer_mb", mb, 1);
    figure("layer_files", files as f64, 0);
    figure("gnu_tar_extract_mb_per_s", extract, 1);
    figure("import_mb_per_s", import_mb, 1);
    figure("import_gzip_mb_per_s", mb / import_gz_s, 1);
    figure("gnu_tar_create_mb_per_s", create, 1);
    figure("export_mb_per_s", export, 1);
    figure("import_peak_rss_mb", rss_kb as f64 * 1024.0 / 1e6, 1);
    figure("ratio_import_vs_gnu_tar", import_mb / extract, 2);
    figure("ratio_export_vs_gnu_tar", export / create, 2);
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("spawn");
    assert!(status.success(), "{cmd:?}: {status}");
}

fn open(root: &Path) -> EngineHandle {
    let options = EngineOptions {
        driver: Some(DriverKind::Vfs),
        ..EngineOptions::default()
    };
    Engine::open(root, options).expect("open engine").0
}

fn import(engine: &EngineHandle, path: &Path) -> String {
    let f = File::open(path).expect("open layer");
    let options = ImportOptions {
        parent: None,
        pin: true,
        expected_diff_id: None,
    };
    engine
        .import_layer(Box::new(f), options)
        .expect("import")
        .chain_id
}

/// In a child process (this binary again): import the layer, print VmHWM.
fn child_import(layer: &Path, root: &Path) {
    let engine = open(root);
    import(&engine, layer);
    engine.close().expect("close");
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .expect("VmHWM")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_owned();
    println!("vmhwm_kb {hwm}");
}

fn child_peak_rss_kb(layer: &Path, root: &Path) -> u64 {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_ENV, layer)
        .env(CHILD_ROOT_ENV, root)
        .output()
        .expect("spawn child");
    assert!(out.status.success(), "child import failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("vmhwm_kb "))
        .and_then(|v| v.trim().parse().ok())
        .expect("child reported VmHWM")
}

/// A seeded tree of about 200 MB: ~3,000 small files, ~300 of hundreds of KB, ~25 of MBs, in
/// a two-level directory structure. Returns (files, bytes).
fn generate_tree(root: &Path) -> (u64, u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for a in 0..16 {
        for b in 0..6 {
            let p = root.join(format!("d{a:02}")).join(format!("s{b}"));
            std::fs::create_dir_all(&p).expect("mkdir");
            dirs.push(p);
        }
    }
    let mut sizes: Vec<usize> = Vec::new();
    sizes.extend((0..3000).map(|_| rng.gen_range(100..16_000)));
    sizes.extend((0..300).map(|_| rng.gen_range(50_000..350_000)));
    sizes.extend((0..25).map(|_| rng.gen_range(2_000_000..7_000_000)));
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        buf.clear();
        buf.resize(size, 0);
        // Half the 4 KiB blocks random, half a repeated short pattern: gzip ~2:1.
        for block in buf.chunks_mut(4096) {
            if rng.gen_bool(0.5) {
                rng.fill(block);
            } else {
                let pat: [u8; 16] = rng.gen();
                for (j, b) in block.iter_mut().enumerate() {
                    *b = pat[j % 16];
                }
            }
        }
        let dir = &dirs[rng.gen_range(0..dirs.len())];
        std::fs::write(dir.join(format!("f{i:05}.bin")), &buf).expect("write");
        files += 1;
        bytes += size as u64;
    }
    (files, bytes)
}

/// Runs `cmd` to completion; (wall seconds, peak RSS in KiB) of that one process, from
/// `wait4`, so tar's and gzip's memory never mix with ours.
fn timed(cmd: &mut Command) -> (f64, u64) {
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
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(rc, pid, "wait4 {cmd:?}: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed: status {status:#x}"
    );
    (secs, u64::try_from(ru.ru_maxrss).unwrap_or(0))
}

fn cairn(root: &Path, driver: &str) -> Command {
    let mut c = Command::new(CAIRN);
    c.arg("--root").arg(root).arg("--driver").arg(driver);
    c
}

/// A root that exists (created, not timed), so a timed command measures the work, not `init`.
fn fresh_root(root: &Path, driver: &str) -> PathBuf {
    run(cairn(root, driver).arg("layer").arg("ls").stdout(Stdio::null()));
    root.to_path_buf()
}

/// Best wall time (ms) of each named runner over [`ROUNDS`] rounds, runners alternating within
/// a round; and the largest peak RSS (KiB) of the runners whose name starts with `cairn`.
fn best_of(d: &Path, runners: &mut [(&str, &mut dyn FnMut(&Path) -> (f64, u64))]) -> (Vec<f64>, u64) {
    let mut best = vec![f64::MAX; runners.len()];
    let mut rss = 0u64;
    for round in 0..ROUNDS {
        for (i, (name, run)) in runners.iter_mut().enumerate() {
            let out = d.join(format!("{name}-{round}"));
            // Everything before is on disk: each run pays for its own writes only.
            syncfs(d);
            let (secs, kb) = run(&out);
            eprintln!("  round {round} {name}: {:.0} ms", secs * 1e3);
            best[i] = best[i].min(secs * 1e3);
            if name.starts_with("cairn") {
                rss = rss.max(kb);
            }
        }
    }
    (best, rss)
}

fn gnu_extract(out: &Path, flags: &str, layers: &[PathBuf]) -> (f64, u64) {
    std::fs::create_dir_all(out).expect("mkdir");
    let t = Instant::now();
    for layer in layers {
        run(Command::new("tar").arg("-C").arg(out).arg(flags).arg(layer));
    }
    syncfs(out);
    (t.elapsed().as_secs_f64(), 0)
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
    rootfs::docker_save(&docker, &[layer.clone()], "bench/rootfs:latest");
    let oci = d.join("rootfs.oci.tar");
    let gz = rootfs::oci_archive(&oci, d, &[layer.clone()], "bench/rootfs:latest");
    let tar_mb = std::fs::metadata(&layer).expect("stat").len() as f64 / 1e6;
    let gz_mb = std::fs::metadata(&gz[0]).expect("stat").len() as f64 / 1e6;
    syncfs(d);
    eprintln!(
        "rootfs: {shape:?}, {tar_mb:.1} MB of tar, {gz_mb:.1} MB gzipped, made in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // For profiling by hand: a copy of the inputs that outlives the run.
    if let Some(keep) = std::env::var_os("CAIRN_LAYERS_BENCH_KEEP") {
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
    let (best, rss_kb) = best_of(
        d,
        &mut [
            ("gnu-tar-x", &mut |out: &Path| gnu_extract(out, "-xf", &tar1)),
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
            ("gnu-tar-xzf", &mut |out: &Path| gnu_extract(out, "-xzf", &gz1)),
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
    figure("ratio_layer_import_vs_gnu_tar_rootfs", import / tar_x, 2);
    figure("ratio_image_load_vs_gnu_tar_rootfs", load / tar_x, 2);
    figure("ratio_image_load_oci_vs_gnu_tar_xzf_rootfs", load_oci / tar_xzf, 2);
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
    let (best, _) = best_of(
        d,
        &mut [
            ("gnu-tar-x-4", &mut |out: &Path| gnu_extract(out, "-xf", &layers)),
            ("cairn-image-load-4-overlay", &mut |out: &Path| {
                timed(
                    cairn(&fresh_root(out, "overlay"), "overlay")
                        .args(["image", "load"])
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
    let [tar_x, overlay, vfs] = best[..] else {
        unreachable!("three runners")
    };
    figure("gnu_tar_extract_4_layers_ms", tar_x, 0);
    figure("image_load_4_layers_overlay_ms", overlay, 0);
    figure("image_load_4_layers_vfs_ms", vfs, 0);
    figure("ratio_image_load_4_layers_overlay_vs_gnu_tar", overlay / tar_x, 2);
}
