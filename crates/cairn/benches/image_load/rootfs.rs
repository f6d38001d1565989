//! A seeded tree shaped like a distribution's root file system, and the images made of it.
//!
//! The shape follows a Debian root (6,768 entries, 195 MB): about 800 directories under the
//! usual skeleton, most files under 16 KiB, a few hundred of tens to hundreds of KiB, a few of
//! several MiB; about 10 % symlinks (relative and absolute, to files and to directories, the
//! `bin -> usr/bin` kind among them) and a hundred hardlinks. Half of every file's 4 KiB blocks
//! are random, half a short repeated pattern: gzip gets about 2:1, as on real binaries.

use rand::{Rng, SeedableRng};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a generated tree holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
}

impl Shape {
    pub fn entries(&self) -> u64 {
        self.dirs + self.files + self.symlinks + self.hardlinks
    }
}

const SKELETON: &[&str] = &[
    "etc",
    "etc/default",
    "etc/init.d",
    "etc/ssl/certs",
    "etc/apt/apt.conf.d",
    "home",
    "root",
    "tmp",
    "opt",
    "srv",
    "mnt",
    "media",
    "boot",
    "dev",
    "proc",
    "sys",
    "run",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib64",
    "usr/libexec",
    "usr/include",
    "usr/local/bin",
    "usr/share/doc",
    "usr/share/man/man1",
    "usr/share/man/man5",
    "usr/share/man/man8",
    "usr/share/locale",
    "usr/share/zoneinfo",
    "usr/share/common-licenses",
    "var/lib/dpkg/info",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log/apt",
    "var/spool",
    "var/mail",
];

/// Where new directories go, weighted as in a Debian root (docs and libraries dominate).
const GROWTH: &[(&str, u32)] = &[
    ("usr/share/doc", 40),
    ("usr/lib/x86_64-linux-gnu", 15),
    ("usr/lib", 12),
    ("usr/share/locale", 8),
    ("usr/share/zoneinfo", 6),
    ("usr/share", 8),
    ("usr/include", 5),
    ("etc", 6),
];

fn name(rng: &mut impl Rng, prefix: &str, i: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
    let len = rng.gen_range(3..18);
    let mut s = String::with_capacity(len + prefix.len() + 8);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALPHA[rng.gen_range(0..ALPHA.len())] as char);
    }
    s.push_str(&format!("{i}"));
    s
}

fn fill(rng: &mut impl Rng, buf: &mut Vec<u8>, size: usize) {
    buf.clear();
    buf.resize(size, 0);
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
}

/// Log-uniform in `[lo, hi)`: many small, few large, as file sizes are.
fn log_size(rng: &mut impl Rng, lo: u64, hi: u64) -> usize {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    rng.gen_range(l..h).exp() as usize
}

/// Generates the tree at `root` (which must not exist) at `scale` of a full root (1.0 is
/// about 7,000 entries and 180 MB).
pub fn generate(root: &Path, seed: u64, scale: f64) -> Shape {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = |full: f64| ((full * scale).round() as usize).max(1);
    let mut shape = Shape::default();
    std::fs::create_dir_all(root).expect("mkdir root");
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in SKELETON {
        let p = root.join(d);
        // Count every directory the skeleton makes, parents included.
        let mut q = p.clone();
        let mut new = Vec::new();
        while q != root && !q.exists() {
            new.push(q.clone());
            q = q.parent().expect("below root").to_path_buf();
        }
        std::fs::create_dir_all(&p).expect("mkdir");
        for q in new.into_iter().rev() {
            shape.dirs += 1;
            dirs.push(q);
        }
    }
    let total_weight: u32 = GROWTH.iter().map(|(_, w)| w).sum();
    let target_dirs = n(800.0);
    let mut i = 0;
    while (shape.dirs as usize) < target_dirs {
        i += 1;
        // Half the new directories go one level below an existing one under a growth point,
        // so the tree gets depth, the others straight under a growth point.
        let mut pick = rng.gen_range(0..total_weight);
        let mut base = root.join(GROWTH[0].0);
        for (d, w) in GROWTH {
            if pick < *w {
                base = root.join(d);
                break;
            }
            pick -= w;
        }
        let parent = if rng.gen_bool(0.5) {
            let under: Vec<&PathBuf> = dirs.iter().filter(|d| d.starts_with(&base)).collect();
            under[rng.gen_range(0..under.len())].clone()
        } else {
            base
        };
        let p = parent.join(name(&mut rng, "", i));
        if std::fs::create_dir(&p).is_ok() {
            shape.dirs += 1;
            dirs.push(p);
        }
    }
    let mut sizes: Vec<usize> = Vec::new();
    sizes.extend((0..n(4_700.0)).map(|_| log_size(&mut rng, 60, 16 << 10)));
    sizes.extend((0..n(550.0)).map(|_| log_size(&mut rng, 16 << 10, 256 << 10)));
    sizes.extend((0..n(60.0)).map(|_| log_size(&mut rng, 256 << 10, 2 << 20)));
    sizes.extend((0..n(15.0)).map(|_| log_size(&mut rng, 2 << 20, 8 << 20)));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut buf = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        fill(&mut rng, &mut buf, size);
        let dir = &dirs[rng.gen_range(0..dirs.len())];
        let ext = [".so", ".gz", ".conf", "", ".txt", ".py", ".mo", ".h"][rng.gen_range(0..8)];
        let p = dir.join(format!("{}{ext}", name(&mut rng, "", i)));
        std::fs::write(&p, &buf).expect("write");
        let mode = match rng.gen_range(0..100) {
            0 => 0o4755,
            1..=25 => 0o755,
            26..=28 => 0o600,
            _ => 0o644,
        };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        shape.files += 1;
        shape.bytes += size as u64;
        files.push(p);
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if std::os::unix::fs::symlink(target, root.join(link)).is_ok() {
            shape.symlinks += 1;
        }
    }
    for i in 0..n(700.0) {
        let dir = &dirs[rng.gen_range(0..dirs.len())];
        let target: String = match rng.gen_range(0..10) {
            // Absolute, to a file or a directory of the tree.
            0..=2 => {
                let t = if rng.gen_bool(0.8) {
                    &files[rng.gen_range(0..files.len())]
                } else {
                    &dirs[rng.gen_range(0..dirs.len())]
                };
                format!("/{}", t.strip_prefix(root).expect("below").display())
            }
            // Relative, to a sibling (the libfoo.so -> libfoo.so.1 kind).
            3..=8 => {
                let siblings: Vec<&PathBuf> =
                    files.iter().filter(|f| f.parent() == Some(dir)).collect();
                match siblings.is_empty() {
                    true => format!("../{}", name(&mut rng, "dangling-", i)),
                    false => siblings[rng.gen_range(0..siblings.len())]
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                }
            }
            // Dangling, as /etc/mtab -> /proc/self/mounts is in a container image.
            _ => "/proc/self/mounts".to_owned(),
        };
        let p = dir.join(name(&mut rng, "l-", i));
        if std::os::unix::fs::symlink(&target, &p).is_ok() {
            shape.symlinks += 1;
        }
    }
    for i in 0..n(100.0) {
        let target = &files[rng.gen_range(0..files.len())];
        let dir = &dirs[rng.gen_range(0..dirs.len())];
        if std::fs::hard_link(target, dir.join(name(&mut rng, "h-", i))).is_ok() {
            shape.hardlinks += 1;
        }
    }
    shape
}

pub fn sha256_file(path: &Path) -> (String, u64) {
    let mut f = File::open(path).expect("open for hashing");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).expect("read for hashing");
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (hex, n)
}

fn hex_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"sha256:{d}\"")).collect();
    format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        ids.join(",")
    )
    .into_bytes()
}

fn append_bytes(b: &mut tar::Builder<File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)
        .expect("append to archive");
}

fn append_file(b: &mut tar::Builder<File>, name: &str, path: &Path) {
    let mut f = File::open(path).expect("open layer");
    let mut h = tar::Header::new_ustar();
    h.set_size(f.metadata().expect("stat layer").len());
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, &mut f).expect("append layer");
}

/// A `docker save` archive of an image made of `layers` (uncompressed tars, base first).
pub fn docker_save(out: &Path, layers: &[PathBuf], tag: &str) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_file(l).0).collect();
    let config = config(&diff_ids);
    let config_name = format!("{}.json", hex_of(&config));
    let mut b = tar::Builder::new(File::create(out).expect("create archive"));
    let mut names = Vec::new();
    for (layer, id) in layers.iter().zip(&diff_ids) {
        let name = format!("{id}/layer.tar");
        append_file(&mut b, &name, layer);
        names.push(format!("\"{name}\""));
    }
    append_bytes(&mut b, &config_name, &config);
    let manifest = format!(
        "[{{\"Config\":\"{config_name}\",\"RepoTags\":[\"{tag}\"],\"Layers\":[{}]}}]",
        names.join(",")
    );
    append_bytes(&mut b, "manifest.json", manifest.as_bytes());
    b.into_inner()
        .expect("finish archive")
        .sync_all()
        .expect("fsync archive");
}

/// An OCI archive of an image made of `layers` (uncompressed tars, base first), each layer
/// gzipped at the default level as `docker push` / buildkit do. Returns the gzip files.
pub fn oci_archive(out: &Path, work: &Path, layers: &[PathBuf], tag: &str) -> Vec<PathBuf> {
    let mut diff_ids = Vec::new();
    let mut blobs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        diff_ids.push(sha256_file(layer).0);
        let gz = work.join(format!("layer-{i}.tar.gz"));
        let mut e = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(File::create(&gz).expect("create gz")),
            flate2::Compression::default(),
        );
        std::io::copy(&mut File::open(layer).expect("open layer"), &mut e).expect("gzip");
        e.finish().expect("gzip").flush().expect("gzip");
        let (digest, size) = sha256_file(&gz);
        blobs.push((gz, digest, size));
    }
    let config = config(&diff_ids);
    let layer_descs: Vec<String> = blobs
        .iter()
        .map(|(_, d, s)| {
            format!(
                "{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\
                 \"digest\":\"sha256:{d}\",\"size\":{s}}}"
            )
        })
        .collect();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\
         \"digest\":\"sha256:{}\",\"size\":{}}},\"layers\":[{}]}}",
        hex_of(&config),
        config.len(),
        layer_descs.join(",")
    );
    let index = format!(
        "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\
         \"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:{}\",\"size\":{},\
         \"annotations\":{{\"org.opencontainers.image.ref.name\":\"{tag}\"}}}}]}}",
        hex_of(manifest.as_bytes()),
        manifest.len()
    );
    let mut b = tar::Builder::new(File::create(out).expect("create archive"));
    append_bytes(&mut b, "oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}");
    append_bytes(&mut b, "index.json", index.as_bytes());
    append_bytes(
        &mut b,
        &format!("blobs/sha256/{}", hex_of(manifest.as_bytes())),
        manifest.as_bytes(),
    );
    append_bytes(
        &mut b,
        &format!("blobs/sha256/{}", hex_of(&config)),
        &config,
    );
    for (gz, digest, _) in &blobs {
        append_file(&mut b, &format!("blobs/sha256/{digest}"), gz);
    }
    b.into_inner()
        .expect("finish archive")
        .sync_all()
        .expect("fsync archive");
    blobs.into_iter().map(|(gz, _, _)| gz).collect()
}
