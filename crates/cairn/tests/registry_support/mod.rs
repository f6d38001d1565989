//! For the registry tests: Debian's `docker-registry` on 127.0.0.1 (optionally with htpasswd
//! auth), a byte-counting TCP proxy in front of it, a small hostile registry of the test's own
//! (wrong digests, truncation, 404s, 401s, a registry that stops mid-blob, a bearer-token
//! flow), and an OCI layout writer for generated images.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TOOLS: [(&str, &str); 3] = [
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("htpasswd", "apache2-utils"),
];

pub fn missing_tool() -> Option<(&'static str, &'static str)> {
    TOOLS.into_iter().find(|(tool, _)| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local address").port()
}

#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub addr: String,
    log: PathBuf,
}

impl Registry {
    /// Start a registry storing under `dir/registry`; with `htpasswd`, basic auth for
    /// `(user, password)`.
    pub fn start(dir: &Path, htpasswd: Option<(&str, &str)>) -> Registry {
        let addr = format!("127.0.0.1:{}", free_port());
        let data = dir.join("registry");
        std::fs::create_dir_all(&data).expect("registry storage");
        let mut auth = String::new();
        if let Some((user, password)) = htpasswd {
            let file = dir.join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&file, out.stdout).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
                file.display()
            );
        }
        let config = dir.join("registry.yml");
        let text = format!(
            "version: 0.1\nlog:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             {auth}http:\n  addr: {addr}\n  secret: cairn-registry-test\n",
            data.display()
        );
        std::fs::write(&config, text).expect("write registry config");
        let log = dir.join("registry.log");
        let err = std::fs::File::create(&log).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start docker-registry");
        let mut r = Registry { child, addr, log };
        let sa: SocketAddr = r.addr.parse().expect("loopback address");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", r.log());
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `skopeo copy SRC docker://ADDR/NAME` (SRC like `oci:DIR:TAG`); extra flags before it.
    pub fn skopeo_copy(&self, src: &str, name: &str, extra: &[&str]) -> String {
        let reference = format!("{}/{name}", self.addr);
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .args(extra)
            .arg(src)
            .arg(format!("docker://{reference}"))
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {src} to {reference}: {}\nregistry: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `upstream` counting the bytes it sends back to clients.
#[derive(Debug)]
pub struct Proxy {
    pub addr: String,
    pub down_bytes: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let down_bytes = Arc::new(AtomicU64::new(0));
        let counter = down_bytes.clone();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let counter = counter.clone();
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                std::thread::spawn(move || pipe(client, server, None));
                std::thread::spawn(move || pipe(s2, c2, Some(counter)));
            }
        });
        Proxy { addr, down_bytes }
    }

    pub fn bytes(&self) -> u64 {
        self.down_bytes.load(Ordering::Relaxed)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// An OCI layout at `dir` with one image tagged `tag`: `layers` are (media type, blob path);
/// `diff_ids` the config's. Blobs are hardlinked/copied in by digest.
pub fn write_layout(dir: &Path, tag: &str, layers: &[(&str, PathBuf)], diff_ids: &[String]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dirs");
    let mut descs = Vec::new();
    for (media_type, path) in layers {
        let mut f = std::fs::File::open(path).expect("layer blob");
        let mut h = Sha256::new();
        let size = std::io::copy(&mut f, &mut h).expect("hash layer");
        let hex = format!("{:x}", h.finalize());
        let dest = blobs.join(&hex);
        if !dest.exists() {
            std::fs::rename(path, &dest)
                .or_else(|_| std::fs::copy(path, &dest).map(drop))
                .expect("place blob");
        }
        descs.push(serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json");
    let config_hex = sha256_hex(&config);
    std::fs::write(blobs.join(&config_hex), &config).expect("config blob");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": descs,
    }))
    .expect("manifest json");
    let manifest_hex = sha256_hex(&manifest);
    std::fs::write(blobs.join(&manifest_hex), &manifest).expect("manifest blob");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{manifest_hex}"), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index.json");
}

/// A layer tar of one file of `size` random bytes (from /dev/urandom), at `path`; its DiffID.
pub fn random_layer(path: &Path, name: &str, size: u64) -> String {
    let file = std::fs::File::create(path).expect("create layer");
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    let random = std::fs::File::open("/dev/urandom")
        .expect("urandom")
        .take(size);
    b.append_data(&mut header, name, random).expect("append");
    b.into_inner()
        .expect("finish tar")
        .flush()
        .expect("flush tar");
    let mut f = std::fs::File::open(path).expect("layer");
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).expect("hash");
    format!("sha256:{:x}", h.finalize())
}

/// How the hostile registry misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A registry as it should be: a `Range: bytes=N-` request of the layer gets the rest.
    Good,
    /// As `Good`, but a `Range` request gets the whole layer (200), as some registries do.
    NoRange,
    /// The layer's bytes differ (same length) from its digest.
    WrongDigest,
    /// The layer response claims the full length and closes after half.
    Truncated,
    /// The manifest names a layer blob the registry does not have.
    MissingBlob,
    /// Every request needs basic auth.
    Basic,
    /// Every request needs a bearer token from `/token` (which needs basic auth).
    Bearer,
    /// Half the layer is sent, then the registry stops listening.
    StopMidBlob,
}

pub const FAKE_USER: &str = "alice";
pub const FAKE_PASSWORD: &str = "wonderland";
const FAKE_TOKEN: &str = "cairn-test-token";

/// A one-image registry: repository `fake/img`, tag `v1`, one layer.
#[derive(Debug)]
pub struct Fake {
    pub addr: String,
    pub token_requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    pub fn start(mode: Mode, layer: Vec<u8>, diff_id: &str) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake registry");
        let addr = listener.local_addr().expect("address").to_string();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .expect("config");
        let layer_digest = format!("sha256:{}", sha256_hex(&layer));
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        let listed_layer = if mode == Mode::MissingBlob {
            format!("sha256:{}", "0".repeat(64))
        } else {
            layer_digest.clone()
        };
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": listed_layer, "size": layer.len()}],
        }))
        .expect("manifest");
        let token_requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tr, st, a) = (token_requests.clone(), stop.clone(), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let stopped = serve_one(
                    conn,
                    mode,
                    &a,
                    &manifest,
                    &config,
                    &config_digest,
                    &layer,
                    &layer_digest,
                    &tr,
                );
                if stopped {
                    st.store(true, Ordering::Relaxed);
                    break;
                }
            }
            // The listener is dropped here: later connections are refused.
        });
        Fake {
            addr,
            token_requests,
            stop,
        }
    }

    pub fn reference(&self) -> String {
        format!("{}/fake/img:v1", self.addr)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    let has_len = headers.iter().any(|(k, _)| *k == "Content-Length");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

/// Serve one request; true when the registry should stop.
#[allow(clippy::too_many_arguments)]
fn serve_one(
    mut conn: TcpStream,
    mode: Mode,
    addr: &str,
    manifest: &[u8],
    config: &[u8],
    config_digest: &str,
    layer: &[u8],
    layer_digest: &str,
    token_requests: &AtomicU64,
) -> bool {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return false,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return false;
    }
    let mut authorization = String::new();
    let mut range_from: Option<usize> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = v.trim().to_owned();
            }
            if k.eq_ignore_ascii_case("range") {
                range_from = v
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse().ok());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let basic = format!(
        "Basic {}",
        base64_encode(format!("{FAKE_USER}:{FAKE_PASSWORD}").as_bytes())
    );
    if path.starts_with("/token") {
        token_requests.fetch_add(1, Ordering::Relaxed);
        if authorization != basic {
            respond(&mut conn, "401 Unauthorized", &[], b"{}");
        } else {
            let body = format!(r#"{{"token":"{FAKE_TOKEN}"}}"#);
            respond(&mut conn, "200 OK", &[], body.as_bytes());
        }
        return false;
    }
    match mode {
        Mode::Basic if authorization != basic => {
            let h = [("WWW-Authenticate", "Basic realm=\"fake\"".to_owned())];
            respond(&mut conn, "401 Unauthorized", &h, b"{}");
            return false;
        }
        Mode::Bearer if authorization != format!("Bearer {FAKE_TOKEN}") => {
            let h = [(
                "WWW-Authenticate",
                format!(
                    "Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:fake/img:pull\""
                ),
            )];
            respond(&mut conn, "401 Unauthorized", &h, b"{}");
            return false;
        }
        _ => {}
    }
    let digest_header = |d: &str| ("Docker-Content-Digest", d.to_owned());
    if path == "/v2/fake/img/manifests/v1" {
        let d = format!("sha256:{}", sha256_hex(manifest));
        let h = [
            digest_header(&d),
            (
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
            ),
        ];
        respond(
            &mut conn,
            "200 OK",
            &h,
            if method == "HEAD" { b"" } else { manifest },
        );
        return false;
    }
    if path == format!("/v2/fake/img/blobs/{config_digest}") {
        respond(&mut conn, "200 OK", &[digest_header(config_digest)], config);
        return false;
    }
    if path == format!("/v2/fake/img/blobs/{layer_digest}") && mode != Mode::MissingBlob {
        let half = layer.len() / 2;
        match mode {
            Mode::WrongDigest => {
                let mut bad = layer.to_vec();
                let last = bad.len() - 1;
                bad[last] ^= 0xff;
                respond(&mut conn, "200 OK", &[], &bad);
            }
            Mode::Truncated | Mode::StopMidBlob => {
                let h = [("Content-Length", layer.len().to_string())];
                respond(&mut conn, "200 OK", &h, &layer[..half]);
                let _ = conn.shutdown(Shutdown::Both);
                return mode == Mode::StopMidBlob;
            }
            Mode::Good if range_from.is_some_and(|from| from < layer.len()) => {
                let from = range_from.unwrap_or(0);
                let h = [(
                    "Content-Range",
                    format!("bytes {from}-{}/{}", layer.len() - 1, layer.len()),
                )];
                respond(&mut conn, "206 Partial Content", &h, &layer[from..]);
            }
            _ => respond(&mut conn, "200 OK", &[], layer),
        }
        return false;
    }
    respond(
        &mut conn,
        "404 Not Found",
        &[],
        br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#,
    );
    false
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
