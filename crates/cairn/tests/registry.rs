//! `cairn pull` and `cairn push` against a real registry (Debian's `docker-registry` on
//! 127.0.0.1, images pushed into it with `skopeo`), and against a hostile one of the test's
//! own. Needs docker-registry, skopeo and htpasswd (apache2-utils); CI installs them.

#[path = "registry_support/mod.rs"]
mod support;

#[path = "serve_support/mod.rs"]
mod serve_support;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{Fake, Mode, Proxy, Registry};

fn shared() -> Option<PathBuf> {
    // `../shared` beside the repository; CAIRN_SHARED names it elsewhere (a git worktree).
    let dir = match std::env::var_os("CAIRN_SHARED") {
        Some(d) => PathBuf::from(d).join("corpus"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    if dir.join("MANIFEST.tsv").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CAIRN_REQUIRE_SHARED").is_none(),
        "../shared/corpus is missing and CAIRN_REQUIRE_SHARED is set"
    );
    println!("skipped: ../shared/corpus is missing");
    None
}

/// The tools, or a printed reason to skip (a failure in CI, where they are installed).
fn ready() -> bool {
    if let Some((tool, package)) = support::missing_tool() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (Debian package {package}); .ci/run installs it"
        );
        println!("skipped: {tool} is not installed (Debian package {package})");
        return false;
    }
    true
}

fn cairn(root: &Path, args: &[&str]) -> Output {
    cairn_with(root, args, None, &[])
}

fn cairn_with(root: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.arg("--root").arg(root).arg("--json").args(args);
    // No Docker credentials of the machine's own.
    cmd.env("DOCKER_CONFIG", root.with_extension("no-docker-config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run cairn");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for cairn")
}

fn ok_json(root: &Path, args: &[&str]) -> Value {
    let out = cairn(root, args);
    assert!(
        out.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null")).expect("JSON output")
}

fn image_names(root: &Path) -> Vec<String> {
    let v = ok_json(root, &["image", "ls"]);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn layer_ids(root: &Path) -> BTreeSet<String> {
    let v = ok_json(root, &["layer", "ls"]);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["chain_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn fsck_clean(root: &Path) {
    let out = cairn(root, &["fsck"]);
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every layer of the pulled image re-exports to its DiffID.
fn assert_exports_match(root: &Path, pulled: &Value) {
    for chain in pulled["layers"].as_array().expect("layers") {
        let chain = chain.as_str().expect("chain id");
        let info = ok_json(root, &["layer", "inspect", chain]);
        let diff_id = info["diff_id"].as_str().expect("diff_id").to_owned();
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--root")
            .arg(root)
            .args(["layer", "export", chain])
            .output()
            .expect("export");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            format!("sha256:{}", support::sha256_hex(&out.stdout)),
            diff_id
        );
    }
}

#[test]
fn pull_corpus_images_byte_identical() {
    let Some(corpus) = shared() else { return };
    if !ready() {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(d.path(), None);
    let images = corpus.join("images");
    // An OCI layout (gzip layers), an OCI archive, a docker-save archive (skopeo writes
    // Docker's media types), and the OCI layout recompressed with zstd.
    let refs = [
        reg.skopeo_copy(
            &format!("oci:{}", images.join("chain-oci").display()),
            "corpus/oci:1",
            &[],
        ),
        reg.skopeo_copy(
            &format!("oci-archive:{}", images.join("chain.oci.tar").display()),
            "corpus/archive:1",
            &[],
        ),
        reg.skopeo_copy(
            &format!(
                "docker-archive:{}",
                images.join("chain.docker.tar").display()
            ),
            "corpus/docker:1",
            &["--format", "v2s2"],
        ),
    ];
    // What skopeo wrote: Docker's media types for the docker-save archive, zstd layers.
    let raw = |reference: &str| -> String {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo inspect");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(raw(&refs[2]).contains("application/vnd.docker.image.rootfs.diff.tar.gzip"));
    // skopeo 1.9 does not recompress gzip to zstd: a layout of the corpus's zstd layer.
    let zstd_layout = d.path().join("zstd-layout");
    let zst = d.path().join("gnu.tar.zst");
    std::fs::copy(corpus.join("layers/gnu.tar.zst"), &zst).expect("copy gnu.tar.zst");
    let (_, gnu_diff_id) = corpus_layer(&corpus, "layers/gnu.tar.zst");
    support::write_layout(
        &zstd_layout,
        "1",
        &[("application/vnd.oci.image.layer.v1.tar+zstd", zst)],
        &[gnu_diff_id],
    );
    let zstd_ref = reg.skopeo_copy(
        &format!("oci:{}:1", zstd_layout.display()),
        "corpus/zstd:1",
        &[],
    );
    assert!(raw(&zstd_ref).contains("application/vnd.oci.image.layer.v1.tar+zstd"));
    let expected: Vec<String> =
        std::fs::read_to_string(corpus.join("chain/expected-chain-ids.txt"))
            .expect("expected chain ids")
            .lines()
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect();
    let root = d.path().join("root");
    for (i, reference) in refs.iter().enumerate() {
        let pulled = ok_json(&root, &["pull", reference]);
        assert_eq!(pulled["name"], reference.as_str());
        let layers: Vec<String> = pulled["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        assert_eq!(layers.len(), 3, "{reference}");
        assert_eq!(layers.last(), expected.last(), "{reference}: top ChainID");
        if i == 0 {
            assert_eq!(pulled["present"], 0);
            assert!(pulled["fetched_bytes"].as_u64().unwrap_or(0) > 0);
            assert_exports_match(&root, &pulled);
        } else {
            // Same DiffIDs: every layer is known by ChainID before any byte is fetched.
            assert_eq!(pulled["present"], 3, "{reference}");
            assert_eq!(pulled["fetched_bytes"], 0, "{reference}");
        }
        assert!(image_names(&root).contains(reference));
    }
    // The same images into fresh roots: each compression's own path (docker, zstd) imports.
    let zstd_root = d.path().join("root-zstd");
    let pulled = ok_json(&zstd_root, &["pull", &zstd_ref]);
    assert_eq!(pulled["layers"].as_array().map(Vec::len), Some(1));
    assert_exports_match(&zstd_root, &pulled);
    fsck_clean(&zstd_root);
    for reference in &refs[2..] {
        let root = d.path().join(format!(
            "root-{}",
            support::sha256_hex(reference.as_bytes())
        ));
        let pulled = ok_json(&root, &["pull", reference]);
        assert_eq!(pulled["present"], 0);
        assert_exports_match(&root, &pulled);
        fsck_clean(&root);
        assert!(!image_names(&root).iter().any(|n| n.ends_with("#partial")));
    }
    fsck_clean(&root);
}

#[test]
fn push_then_inspect_and_pull_into_a_second_root() {
    let Some(corpus) = shared() else { return };
    if !ready() {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(d.path(), None);
    let root = d.path().join("root");
    let archive = corpus.join("images/chain.oci.tar");
    ok_json(&root, &["image", "load", archive.to_str().expect("path")]);
    let name = image_names(&root)
        .into_iter()
        .next()
        .expect("a loaded image");
    let target = format!("{}/pushed/chain:v1", reg.addr);
    let pushed = ok_json(&root, &["push", &name, &target]);
    let actions: Vec<&str> = pushed["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l["action"].as_str())
        .collect();
    assert_eq!(actions, ["uploaded"; 3]);

    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .expect("skopeo inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    assert_eq!(inspected["Digest"], pushed["manifest_digest"]);
    // The original config, byte for byte: the registry's manifest names the loaded config's
    // digest. The source's layers are gzip, cairn pushes them uncompressed, so the manifest
    // is a new one naming the kept config.
    let loaded = ok_json(&root, &["image", "ls"])
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["name"] == name.as_str())
        .expect("the image")
        .clone();
    assert_eq!(pushed["config"], "kept", "{pushed}");
    assert_eq!(pushed["manifest"], "synthesized", "{pushed}");
    assert_eq!(pushed["config_digest"], loaded["config_digest"]);
    assert_ne!(pushed["manifest_digest"], loaded["manifest_digest"]);
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .expect("skopeo inspect --raw");
    assert!(raw.status.success());
    let raw: Value = serde_json::from_slice(&raw.stdout).expect("manifest JSON");
    assert_eq!(raw["config"]["digest"], loaded["config_digest"], "{raw}");
    let ours: Vec<String> = ok_json(&root, &["image", "ls"])
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["name"] == name.as_str())
        .expect("the image")["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|c| {
            ok_json(&root, &["layer", "inspect", c.as_str().expect("id")])["diff_id"]
                .as_str()
                .expect("diff")
                .to_owned()
        })
        .collect();
    let theirs: Vec<String> = inspected["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    assert_eq!(theirs, ours, "pushed layer digests are the DiffIDs");

    let second = d.path().join("second");
    let pulled = ok_json(&second, &["pull", &target]);
    assert_eq!(pulled["manifest_digest"], pushed["manifest_digest"]);
    assert_eq!(pulled["config_digest"], pushed["config_digest"]);
    assert_exports_match(&second, &pulled);
    // The pulled image keeps the registry's manifest, whose layers are the uncompressed blobs
    // push sends: pushed on from the second root it is re-sent as is, same digests.
    let onward = format!("{}/onward/chain:v1", reg.addr);
    let repushed = ok_json(
        &second,
        &["push", pulled["name"].as_str().expect("name"), &onward],
    );
    assert_eq!(repushed["manifest"], "kept", "{repushed}");
    assert_eq!(repushed["config"], "kept", "{repushed}");
    assert_eq!(repushed["manifest_digest"], pushed["manifest_digest"]);
    assert_eq!(repushed["config_digest"], pushed["config_digest"]);
    let third = d.path().join("third");
    let pulled3 = ok_json(&third, &["pull", &onward]);
    assert_eq!(pulled3["manifest_digest"], pushed["manifest_digest"]);
    assert_eq!(pulled3["config_digest"], loaded["config_digest"]);

    // A docker save archive keeps its config too (it has no manifest blob).
    let docker_root = d.path().join("docker");
    let docker = corpus.join("images/chain.docker.tar");
    ok_json(
        &docker_root,
        &["image", "load", docker.to_str().expect("path")],
    );
    let dimage = ok_json(&docker_root, &["image", "ls"])
        .as_array()
        .expect("images")[0]
        .clone();
    let dtarget = format!("{}/docker/chain:v1", reg.addr);
    let dpushed = ok_json(
        &docker_root,
        &["push", dimage["name"].as_str().expect("name"), &dtarget],
    );
    assert_eq!(dpushed["config"], "kept", "{dpushed}");
    assert_eq!(dpushed["config_digest"], dimage["config_digest"]);

    // Again: the registry has every blob (HEAD); another repository mounts them.
    let again = ok_json(&root, &["push", &name, &target]);
    assert!(again["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .all(|l| l["action"] == "exists"));
    assert_eq!(again["manifest_digest"], pushed["manifest_digest"]);
    let other = format!("{}/other/chain:v1", reg.addr);
    let mounted = ok_json(
        &root,
        &["push", &name, &other, "--mount-from", "pushed/chain"],
    );
    assert!(
        mounted["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .all(|l| l["action"] == "mounted"),
        "{mounted}"
    );
    assert_eq!(mounted["uploaded_bytes"], 0);
}

#[test]
fn basic_auth_with_htpasswd_and_docker_config() {
    let Some(corpus) = shared() else { return };
    if !ready() {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(d.path(), Some(("bob", "hunter2")));
    let src = format!("oci:{}", corpus.join("images/chain-oci").display());
    let target = reg.skopeo_copy(&src, "auth/chain:1", &["--dest-creds", "bob:hunter2"]);
    let root = d.path().join("root");
    let out = cairn(&root, &["pull", &target]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unauthorized") && err.contains(&target),
        "{err}"
    );
    let out = cairn_with(
        &root,
        &["pull", &target, "--username", "bob", "--password-stdin"],
        Some("wrong\n"),
        &[],
    );
    assert_eq!(out.status.code(), Some(7));
    assert!(image_names(&root).is_empty());
    let out = cairn_with(
        &root,
        &["pull", &target, "--username", "bob", "--password-stdin"],
        Some("hunter2\n"),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Docker's config.json: auths by host.
    let config_dir = d.path().join("docker");
    std::fs::create_dir_all(&config_dir).expect("docker config dir");
    std::fs::write(
        config_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Ym9iOmh1bnRlcjI="}}}}}}"#,
            reg.addr
        ),
    )
    .expect("config.json");
    let root2 = d.path().join("root2");
    let out = cairn_with(
        &root2,
        &["pull", &target],
        None,
        &[("DOCKER_CONFIG", &config_dir)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(image_names(&root2), std::slice::from_ref(&target));

    // Credential helpers: `credHelpers` for this host, else `credsStore`, each a
    // `docker-credential-NAME get` on PATH that reads the host on stdin and answers JSON.
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let asked = d.path().join("asked");
    let helper = |name: &str, secret: &str| {
        let path = bin.join(format!("docker-credential-{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r host\necho \"$host\" > {}\n\
                 if [ \"$host\" = {} ]; then\n  echo '{{\"ServerURL\":\"'$host'\",\"Username\":\"bob\",\"Secret\":\"{secret}\"}}'\n\
                 else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
                asked.display(),
                reg.addr
            ),
        )
        .expect("helper");
        let mut perms = std::fs::metadata(&path).expect("helper").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).expect("chmod helper");
    };
    helper("good", "hunter2");
    helper("bad", "wrong");
    let path_env = std::ffi::OsString::from(format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    ));
    let path_env = Path::new(&path_env);
    let configs = [
        // The host's own helper wins over the store's (and over auths).
        (
            format!(
                r#"{{"credsStore":"bad","credHelpers":{{"{}":"good"}},"auths":{{"{}":{{}}}}}}"#,
                reg.addr, reg.addr
            ),
            true,
        ),
        (r#"{"credsStore":"good"}"#.to_owned(), true),
        (r#"{"credsStore":"bad"}"#.to_owned(), false),
        // A helper for another host is not asked: anonymous, so 401.
        (
            r#"{"credHelpers":{"other.example":"good"}}"#.to_owned(),
            false,
        ),
    ];
    for (i, (config, works)) in configs.iter().enumerate() {
        std::fs::write(config_dir.join("config.json"), config).expect("config.json");
        let _ = std::fs::remove_file(&asked);
        let root = d.path().join(format!("helper-{i}"));
        let out = cairn_with(
            &root,
            &["pull", &target],
            None,
            &[("DOCKER_CONFIG", &config_dir), ("PATH", path_env)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if *works {
            assert!(out.status.success(), "{config}: {err}");
            assert_eq!(
                image_names(&root),
                std::slice::from_ref(&target),
                "{config}"
            );
        } else {
            assert_eq!(out.status.code(), Some(7), "{config}: {err}");
            assert!(image_names(&root).is_empty(), "{config}");
        }
        if i < 3 {
            // The helper was given the registry's host on stdin.
            let host = std::fs::read_to_string(&asked).expect("the helper ran");
            assert_eq!(host.trim(), reg.addr, "{config}");
        } else {
            assert!(!asked.exists(), "{config}: a helper for another host ran");
        }
    }
}

/// `--password-stdin` while `cairn serve` holds the root: the client reads the line and sends
/// it with the command through the control socket; the server never reads its own stdin.
#[test]
fn password_stdin_through_cairn_serve() {
    let Some(corpus) = shared() else { return };
    if !ready() {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(d.path(), Some(("bob", "hunter2")));
    let src = format!("oci:{}", corpus.join("images/chain-oci").display());
    let target = reg.skopeo_copy(&src, "auth/chain:1", &["--dest-creds", "bob:hunter2"]);
    let root = d.path().join("root");
    let server = serve_support::Server::start(&root, &d.path().join("s.sock"), "vfs", "warn");
    let pull = |password: &str| {
        cairn_with(
            &root,
            &["pull", &target, "--username", "bob", "--password-stdin"],
            Some(password),
            &[],
        )
    };
    let out = pull("wrong\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("held by cairn serve"), "{err}");
    let out = pull("hunter2\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("held by cairn serve"), "{err}");
    assert_eq!(image_names(&root), [target]);
    assert_eq!(server.stop(), Some(0));
}

/// A corpus layer's bytes and its DiffID from MANIFEST.tsv.
fn corpus_layer(corpus: &Path, file: &str) -> (Vec<u8>, String) {
    let layer = std::fs::read(corpus.join(file)).expect("corpus layer");
    let manifest = std::fs::read_to_string(corpus.join("MANIFEST.tsv")).expect("MANIFEST.tsv");
    let diff_id = manifest
        .lines()
        .find(|l| l.starts_with(&format!("{file}\t")))
        .and_then(|l| l.split('\t').nth(2))
        .expect("the layer's DiffID")
        .to_owned();
    (layer, diff_id)
}

fn small_layer(corpus: &Path) -> (Vec<u8>, String) {
    corpus_layer(corpus, "layers/pax.tar.gz")
}

#[test]
fn bearer_token_flow() {
    let Some(corpus) = shared() else { return };
    let (layer, diff_id) = small_layer(&corpus);
    let fake = Fake::start(Mode::Bearer, layer, &diff_id);
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path().join("root");
    let out = cairn(&root, &["pull", &fake.reference()]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cairn_with(
        &root,
        &[
            "pull",
            &fake.reference(),
            "--username",
            support::FAKE_USER,
            "--password-stdin",
        ],
        Some(&format!("{}\n", support::FAKE_PASSWORD)),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fake.token_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert_eq!(image_names(&root), [fake.reference()]);
}

#[test]
fn hostile_registries_give_typed_errors_and_change_nothing() {
    let Some(corpus) = shared() else { return };
    let (layer, diff_id) = small_layer(&corpus);
    let d = tempfile::tempdir().expect("tempdir");
    let cases = [
        (Mode::WrongDigest, 1, "digest is"),
        (Mode::Truncated, 1, "bytes"),
        (Mode::MissingBlob, 3, "not found (404)"),
        (Mode::Basic, 7, "unauthorized (401)"),
        (Mode::StopMidBlob, 1, "fake/img"),
    ];
    for (mode, code, text) in cases {
        let fake = Fake::start(mode, layer.clone(), &diff_id);
        let root = d.path().join(format!("{mode:?}"));
        // A root with something in it already, to see that it stays as it was.
        ok_json(
            &root,
            &[
                "layer",
                "import",
                corpus.join("layers/gnu.tar").to_str().expect("path"),
            ],
        );
        let before = (layer_ids(&root), image_names(&root));
        let out = cairn(&root, &["pull", &fake.reference()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{mode:?}: {err}");
        assert!(
            err.contains(text) && err.contains(&fake.reference()),
            "{mode:?}: {err}"
        );
        assert_eq!((layer_ids(&root), image_names(&root)), before, "{mode:?}");
        fsck_clean(&root);
        // Nothing half-fetched is ever under a blob's whole name.
        // (No spool at all when the pull stopped before fetching.)
        for entry in std::fs::read_dir(root.join("spool"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".partial"),
                "{mode:?}: {name} left whole in the spool"
            );
        }
    }
}

/// Add the imports whose completion the journal of `root` holds: ChainID → txids.
fn completed_imports(root: &Path, imports: &mut std::collections::BTreeMap<String, BTreeSet<u64>>) {
    if !root.join("wal").exists() {
        return;
    }
    let out = cairn(root, &["wal", "dump"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).expect("wal dump JSON line");
        if matches!(
            v["op"].as_str(),
            Some("CompleteImport" | "CompleteImportHeld")
        ) {
            let chain_id = v["chain_id"].as_str().expect("chain_id").to_owned();
            let txid = v["txid"].as_u64().expect("txid");
            imports.entry(chain_id).or_default().insert(txid);
        }
    }
}

/// kill -9 at random moments during a pull of a 120 MB image (a layer of 104 MiB), then pull
/// again: no layer imported twice, fewer than 1.5 × the image's bytes fetched over all
/// attempts, fsck clean after every kill. Seeded: CAIRN_SEED=N replays a run.
#[test]
fn kill_during_pull_then_resume() {
    if !ready() {
        return;
    }
    let seed: u64 = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed: {seed} (CAIRN_SEED={seed} replays)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let d = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(d.path(), None);
    let layout = d.path().join("big");
    let big = d.path().join("big.tar");
    let small = d.path().join("small.tar");
    // The small layer first: it is imported (and held) early, so kills during the big one
    // check that a layer in the store is never imported again.
    let diff_ids = [
        support::random_layer(&small, "small.bin", 16 << 20),
        support::random_layer(&big, "big.bin", 104 << 20),
    ];
    let tar = "application/vnd.oci.image.layer.v1.tar";
    support::write_layout(&layout, "v1", &[(tar, small), (tar, big)], &diff_ids);
    let reference = reg.skopeo_copy(&format!("oci:{}:v1", layout.display()), "big/img:v1", &[]);
    std::fs::remove_dir_all(&layout).expect("remove layout");
    let proxy = Proxy::start(&reg.addr);
    let through = reference.replacen(&reg.addr, &proxy.addr, 1);
    let image_bytes: u64 = {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo inspect");
        let m: Value = serde_json::from_slice(&out.stdout).expect("manifest");
        m["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter_map(|l| l["size"].as_u64())
            .sum()
    };
    let root = d.path().join("root");
    let mut seen = BTreeSet::new();
    let mut imports = std::collections::BTreeMap::new();
    let kills = 4;
    for k in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--root")
            .arg(&root)
            .args(["--json", "pull", &through])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pull");
        let wait_ms = rng.gen_range(200..12_000);
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let finished = child.try_wait().expect("try_wait").is_some();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        // Before anything opens the root again (recovery may checkpoint and cut the log).
        completed_imports(&root, &mut imports);
        fsck_clean(&root);
        let now = layer_ids(&root);
        // A layer in the store stays there: it is never imported a second time.
        assert!(
            now.is_superset(&seen),
            "kill {k} after {wait_ms} ms: layers lost: {seen:?} → {now:?}"
        );
        println!(
            "kill {k} after {wait_ms} ms: {} layers, {} bytes fetched so far, finished: {finished}",
            now.len(),
            proxy.bytes()
        );
        seen = now;
    }
    let out = cairn(&root, &["pull", &through]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled: Value = serde_json::from_slice(&out.stdout).expect("pull JSON");
    assert_eq!(
        pulled["present"].as_u64(),
        Some(seen.len() as u64),
        "{pulled}"
    );
    completed_imports(&root, &mut imports);
    // No layer imported twice: every ChainID was completed by one transaction over all the
    // attempts (a layer completed but left unheld would be collected and imported again).
    assert_eq!(imports.len(), 2, "{imports:?}");
    for (chain_id, txids) in &imports {
        assert_eq!(txids.len(), 1, "{chain_id} imported by {txids:?}");
    }
    let fetched = proxy.bytes();
    println!("image: {image_bytes} bytes, fetched over all attempts: {fetched} bytes");
    assert!(
        (fetched as f64) < 1.5 * image_bytes as f64,
        "fetched {fetched} bytes for an image of {image_bytes}"
    );
    assert_exports_match(&root, &pulled);
    fsck_clean(&root);
    assert_eq!(image_names(&root), [through]);
    assert_eq!(
        std::fs::read_dir(root.join("spool"))
            .expect("spool")
            .count(),
        0
    );
}

/// Cut a pull of the fake image mid-blob; returns the `.partial` it left and its length.
fn cut_pull(root: &Path, layer: &[u8], diff_id: &str) -> (PathBuf, usize) {
    let cut = Fake::start(Mode::StopMidBlob, layer.to_vec(), diff_id);
    let out = cairn(root, &["pull", &cut.reference()]);
    assert!(!out.status.success(), "the pull was cut mid-blob");
    let partial = std::fs::read_dir(root.join("spool"))
        .expect("spool")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".partial"))
        .expect("the cut pull left a partial blob");
    let len = std::fs::metadata(&partial).expect("partial").len() as usize;
    assert!(len >= 1024 && len < layer.len(), "{len} bytes spooled");
    (partial, len)
}

/// Pull the fake image (`mode`) into `root`; asserts the layer is in and the spool empty, and
/// returns what the pull reported.
fn pull_after_cut(root: &Path, mode: Mode, layer: &[u8], diff_id: &str) -> Value {
    let good = Fake::start(mode, layer.to_vec(), diff_id);
    let pulled = ok_json(root, &["pull", &good.reference()]);
    assert_eq!(image_names(root), [good.reference()]);
    let layers = ok_json(root, &["layer", "ls"]);
    assert!(
        layers
            .as_array()
            .expect("layers")
            .iter()
            .any(|l| l["diff_id"] == diff_id),
        "{layers}"
    );
    fsck_clean(root);
    let left: Vec<_> = std::fs::read_dir(root.join("spool"))
        .expect("spool")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the spool keeps nothing once imported: {left:?}"
    );
    pulled
}

/// A pull cut mid-blob resumes where it stopped; a spooled `.partial` whose bytes a power cut
/// tore (its length kept, a sector of it lost) fails its digest when resumed and is fetched
/// again from nothing, never imported; a registry that ignores `Range` sends the blob whole,
/// and nothing is reported resumed.
#[test]
fn a_cut_pull_resumes_and_a_torn_partial_blob_is_fetched_again() {
    let Some(corpus) = shared() else { return };
    let (layer, diff_id) = small_layer(&corpus);
    let d = tempfile::tempdir().expect("tempdir");
    let size = layer.len() as u64;

    let root = d.path().join("resumed");
    let (_, kept) = cut_pull(&root, &layer, &diff_id);
    let pulled = pull_after_cut(&root, Mode::Good, &layer, &diff_id);
    assert_eq!(pulled["resumed_bytes"], kept as u64, "{pulled}");
    assert_eq!(pulled["fetched_bytes"], size - kept as u64, "{pulled}");

    let root = d.path().join("torn");
    let (partial, _) = cut_pull(&root, &layer, &diff_id);
    let mut torn = std::fs::read(&partial).expect("read the partial");
    // The second sector reads back as zeros: written, never made durable.
    torn[512..1024].fill(0);
    std::fs::write(&partial, &torn).expect("tear the partial");
    let pulled = pull_after_cut(&root, Mode::Good, &layer, &diff_id);
    assert_eq!(pulled["resumed_bytes"], 0, "{pulled}");
    let fetched = pulled["fetched_bytes"].as_u64().expect("fetched_bytes");
    assert!(
        fetched >= size,
        "the whole blob was fetched again: {pulled}"
    );

    let root = d.path().join("no-range");
    cut_pull(&root, &layer, &diff_id);
    let pulled = pull_after_cut(&root, Mode::NoRange, &layer, &diff_id);
    assert_eq!(pulled["resumed_bytes"], 0, "{pulled}");
    assert_eq!(pulled["fetched_bytes"], size, "{pulled}");
}
