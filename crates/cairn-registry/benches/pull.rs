//! `cargo bench -p cairn-registry --bench pull`: a 200 MB, 4-layer image pulled from a
//! loopback `docker-registry` into an empty root (fetched, digest-checked, unpacked, durable),
//! beside `skopeo copy docker://… oci:DIR` of the same image in the same run (download and
//! write only: no unpacking, no sync). Prints `name: value` lines, the ratio per driver and
//! which drivers meet the target (≤ 1.5 × skopeo), and the bytes each pull sent to storage
//! (`/proc/self/io`: written less cancelled before write-back; skopeo writes the image's bytes
//! once, unsynced).

use cairn_engine::{Engine, EngineOptions};
use cairn_registry::{ClientOptions, PullOptions};
use cairn_state::types::DriverKind;
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAYERS: usize = 4;
const LAYER_BYTES: u64 = 50 << 20;
const ROUNDS: usize = 3;
/// The issue's target: cairn's pull at most this many times skopeo's copy.
const TARGET_RATIO: f64 = 1.5;

/// Bytes this process has caused to be written to storage, less those cancelled by a
/// truncate or unlink before write-back (`/proc/self/io`, all threads).
fn storage_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(field("write_bytes:")?.saturating_sub(field("cancelled_write_bytes:")?))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// An OCI layout of LAYERS uncompressed layers of random bytes; skopeo gzips them on push.
fn write_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout");
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..LAYERS {
        let tmp = dir.join("layer.tmp");
        {
            let file = std::fs::File::create(&tmp).expect("layer");
            let mut b = tar::Builder::new(std::io::BufWriter::new(file));
            let mut h = tar::Header::new_ustar();
            h.set_size(LAYER_BYTES);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            let random = std::fs::File::open("/dev/urandom")
                .expect("urandom")
                .take(LAYER_BYTES);
            b.append_data(&mut h, format!("layer{i}.bin"), random)
                .expect("append");
            b.into_inner().expect("tar").flush().expect("flush");
        }
        let mut h = Sha256::new();
        let size =
            std::io::copy(&mut std::fs::File::open(&tmp).expect("layer"), &mut h).expect("hash");
        let d = format!("{:x}", h.finalize());
        std::fs::rename(&tmp, blobs.join(&d)).expect("place");
        layers.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{d}"), "size": size}),
        );
        diff_ids.push(format!("sha256:{d}"));
    }
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
    .expect("config");
    std::fs::write(blobs.join(hex(&config)), &config).expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", hex(&config)), "size": config.len()},
        "layers": layers}))
    .expect("manifest");
    std::fs::write(blobs.join(hex(&manifest)), &manifest).expect("manifest");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", hex(&manifest)), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
}

fn main() {
    if !have("docker-registry") || !have("skopeo") {
        println!("skipped: docker-registry and skopeo are needed (Debian packages of those names)");
        return;
    }
    let base = std::env::var_os("CAIRN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = tempfile::tempdir_in(base).expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = d.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: cairn-bench\n",
            d.path().join("registry").display()
        ),
    )
    .expect("config");
    let mut registry = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry");
    let sa: SocketAddr = addr.parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let layout = d.path().join("layout");
    write_layout(&layout);
    let reference = format!("{addr}/bench/img:v1");
    let status = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{reference}"))
        .status()
        .expect("skopeo push");
    assert!(status.success(), "skopeo copy into the registry failed");
    std::fs::remove_dir_all(&layout).expect("remove layout");

    // vfs (the default: each layer's tree is a full copy of its parent's, made durable) and,
    // as root, overlay (each layer an upper directory of its own, as container hosts run).
    let mut drivers = vec![DriverKind::Vfs];
    if nix::unistd::geteuid().is_root() {
        drivers.push(DriverKind::Overlay);
    } else {
        println!("skipped: the overlay pull needs root");
    }
    let mut cairn_s: Vec<Vec<f64>> = vec![Vec::new(); drivers.len()];
    let mut written: Vec<Option<u64>> = vec![None; drivers.len()];
    let mut skopeo_s = Vec::new();
    let mut fetched = 0;
    for round in 0..ROUNDS {
        let dest = d.path().join(format!("oci-{round}"));
        let t = Instant::now();
        let status = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", dest.display()))
            .status()
            .expect("skopeo pull");
        assert!(status.success(), "skopeo copy out of the registry failed");
        skopeo_s.push(t.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&dest).expect("remove");

        for (i, driver) in drivers.iter().enumerate() {
            let root = d.path().join(format!("root-{round}-{}", driver.name()));
            let before = storage_written();
            let t = Instant::now();
            let options = EngineOptions {
                driver: Some(*driver),
                ..EngineOptions::default()
            };
            let (engine, _) = Engine::open(&root, options).expect("open root");
            let options = PullOptions {
                client: ClientOptions::default(),
                platform: None,
                jobs: 3,
                root: root.clone(),
            };
            let pulled =
                cairn_registry::pull(&engine, &reference, &options, &|_| {}).expect("pull");
            engine.close().expect("close");
            cairn_s[i].push(t.elapsed().as_secs_f64());
            written[i] = before
                .zip(storage_written())
                .map(|(b, a)| a.saturating_sub(b));
            fetched = pulled.fetched_bytes;
            std::fs::remove_dir_all(&root).expect("remove root");
        }
    }
    let _ = registry.kill();
    let _ = registry.wait();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let s = median(&mut skopeo_s);
    println!("pull_image_bytes: {fetched}");
    println!("pull_layers: {LAYERS}");
    println!("pull_skopeo_copy_s: {s:.3}");
    println!("pull_target_ratio: {TARGET_RATIO:.2}");
    let mut meet = Vec::new();
    for ((driver, times), written) in drivers.iter().zip(&mut cairn_s).zip(&written) {
        let c = median(times);
        let name = driver.name();
        println!("pull_cairn_{name}_s: {c:.3}");
        println!(
            "pull_cairn_{name}_mib_per_s: {:.1}",
            fetched as f64 / c / (1 << 20) as f64
        );
        println!("pull_ratio_cairn_{name}_over_skopeo: {:.2}", c / s);
        let met = c / s <= TARGET_RATIO;
        println!(
            "pull_cairn_{name}_meets_target: {}",
            if met { "yes" } else { "no" }
        );
        if met {
            meet.push(name);
        }
        if let Some(w) = written {
            let mib = *w as f64 / (1 << 20) as f64;
            println!("pull_cairn_{name}_storage_written_mib: {mib:.1}");
        }
    }
    let met = if meet.is_empty() {
        "none".to_owned()
    } else {
        meet.join(",")
    };
    println!("pull_target_met_by: {met}");
}
