//! Layer import/export throughput against GNU tar, and the importer's peak memory.
//!
//! `cargo bench -p cairn-engine --bench layers` prints one `name: value` line per figure on
//! stdout (where the run happened, and anything else, goes to stderr). Every figure is measured
//! in the same run, on the same file system: as root, a fresh ext4 made for the run on a loop
//! device (so the ratios do not drift with the age of the machine's disk); otherwise a tempdir
//! under `$CAIRN_BENCH_DIR`, else under the cargo target dir (not `/tmp`, which may be tmpfs
//! where syncs are free). Image load of a distribution-shaped root, through the command line,
//! is `cargo bench -p cairn --bench image_load`.
//!
//! The layer: a seeded tree of about 200 MB (a few thousand files: many small, some hundreds
//! of KB, a few MB-sized; half of every file's blocks compressible), tarred by GNU tar and
//! gzipped. MB are 10^6 bytes of uncompressed tar. Durable on both sides: GNU tar is followed
//! by syncfs or an fsync of the archive; `import_layer` returns only after the content is
//! synced; the export's file is fsynced.
//!
//! Each timed figure is the best of [`ROUNDS`] runs, the peers alternating with cairn.

use cairn_engine::{Engine, EngineHandle, EngineOptions, ImportOptions};
use cairn_state::types::DriverKind;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "../../cairn-wal/benches/support.rs"]
mod support;
use support::{figure, syncfs, BenchFs};

const SEED: u64 = 0x0ca1_12b5;
const ROUNDS: usize = 3;
const CHILD_ENV: &str = "CAIRN_LAYERS_BENCH_CHILD_IMPORT";
const CHILD_ROOT_ENV: &str = "CAIRN_LAYERS_BENCH_CHILD_ROOT";

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
    generated_figures(&d.join("generated"));
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
