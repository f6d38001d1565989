//! `cairn serve` as a daemon: its socket, a live or stale server on the address, SIGTERM and
//! SIGINT, many concurrent clients, keys with slashes and spaces, error codes, request logs.
//! These run unprivileged, on vfs.

#[path = "serve_support/mod.rs"]
mod support;

use cairn_server::client::connect;
use containerd_snapshots::api::snapshots::v1 as pb;
use containerd_snapshots::tonic::Code;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::Server;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn prepare(
    c: &mut pb::snapshots_client::SnapshotsClient<containerd_snapshots::tonic::transport::Channel>,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<(), containerd_snapshots::tonic::Status> {
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: "cairn".into(),
        key: key.into(),
        parent: parent.into(),
        labels,
    })
    .await
    .map(|_| ())
}

async fn commit(
    c: &mut pb::snapshots_client::SnapshotsClient<containerd_snapshots::tonic::transport::Channel>,
    name: &str,
    key: &str,
) -> Result<(), containerd_snapshots::tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: "cairn".into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

async fn stat(
    c: &mut pb::snapshots_client::SnapshotsClient<containerd_snapshots::tonic::transport::Channel>,
    key: &str,
) -> Result<pb::Info, containerd_snapshots::tonic::Status> {
    let r = c
        .stat(pb::StatSnapshotRequest {
            snapshotter: "cairn".into(),
            key: key.into(),
        })
        .await?;
    Ok(r.into_inner().info.unwrap_or_default())
}

#[test]
fn the_socket_is_0660_a_live_server_is_refused_and_a_stale_socket_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("run/cairn.sock");
    let mut first = Server::start(&dir.path().join("a"), &sock, "vfs", "info");
    let mode = std::fs::metadata(&sock)
        .expect("stat socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");

    // A second server on the same address (another root) is refused with a clear error.
    let second = Command::new(support::cairn_bin())
        .args(support::serve_args(&dir.path().join("b"), &sock, "vfs"))
        .output()
        .expect("run a second server");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already listening"), "stderr: {err}");
    assert!(
        sock.exists(),
        "the refused server must leave the live socket alone"
    );

    // A server killed outright leaves its socket file behind: stale, so the next one replaces it.
    first.signal(Signal::SIGKILL);
    first.wait();
    assert!(sock.exists());
    let again = Server::start(&dir.path().join("a"), &sock, "vfs", "info");
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(&sock).await.expect("connect to the new server");
        prepare(&mut c, "after-stale", "", HashMap::new())
            .await
            .expect("prepare");
    });
    assert_eq!(again.stop(), Some(0));
    assert!(!sock.exists(), "a clean stop removes the socket");
}

#[test]
fn sigint_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let mut server = Server::start(&dir.path().join("root"), &sock, "vfs", "info");
    runtime().block_on(async {
        let mut c = connect(&sock).await.expect("connect");
        prepare(&mut c, "a", "", HashMap::new())
            .await
            .expect("prepare");
    });
    server.signal(Signal::SIGINT);
    assert_eq!(server.wait(), Some(0), "{}", server.log());
    assert!(!sock.exists());
    assert!(
        dir.path().join("root/checkpoint").exists(),
        "stop checkpoints"
    );
}

/// 64 clients on their own connections prepare and commit keys shaped like containerd's
/// (`ns/<seq>/<key>`, `extract-<n> <chainID>`) until SIGTERM: the server drains, exits 0 and
/// removes its socket; every commit it acknowledged is there after a restart, under the
/// exact name, and nothing failed with anything but Unavailable or a closed transport.
#[test]
fn sigterm_drains_64_clients_and_every_acknowledged_commit_survives() {
    const CLIENTS: usize = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let root = dir.path().join("root");
    let mut server = Server::start(&root, &sock, "vfs", "warn");
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acked: Vec<Vec<String>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let sock = sock.clone();
            let stop = Arc::clone(&stop);
            let started = Arc::clone(&started);
            tasks.push(tokio::spawn(async move {
                let mut client = connect(&sock).await.expect("connect");
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) && i % 7 == 0 {
                        // Keep a few requests in flight across the signal, then stop.
                        break;
                    }
                    let key = format!("default/{c}/extract-{i} sha256:{c:04}{i:06}");
                    let name = format!("sha256:{c:04}{i:06} layer {c}/{i}");
                    let r = async {
                        prepare(&mut client, &key, "", HashMap::new()).await?;
                        commit(&mut client, &name, &key).await
                    }
                    .await;
                    match r {
                        Ok(()) => {
                            if acked.is_empty() {
                                started.fetch_add(1, Ordering::Relaxed);
                            }
                            acked.push(name)
                        }
                        // The server is going away: a refusal, or a request that met the
                        // connection's GOAWAY (a transport error, which tonic calls Internal).
                        Err(s)
                            if matches!(
                                s.code(),
                                Code::Unavailable | Code::Unknown | Code::Cancelled
                            ) || std::error::Error::source(&s).is_some_and(|e| {
                                e.is::<containerd_snapshots::tonic::transport::Error>()
                            }) =>
                        {
                            break
                        }
                        Err(s) => panic!("client {c}: unexpected error {s:?}"),
                    }
                }
                acked
            }));
        }
        // SIGTERM once every client has had a commit acknowledged (or after 30 s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while started.load(Ordering::Relaxed) < CLIENTS && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        server.signal(Signal::SIGTERM);
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("client task"));
        }
        all
    });
    assert_eq!(server.wait(), Some(0), "{}", server.log());
    assert!(!sock.exists(), "the socket is removed at exit");
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(
        acked.iter().all(|a| !a.is_empty()),
        "every client got some commits through"
    );
    println!("{total} commits acknowledged by {CLIENTS} clients before SIGTERM");

    let again = Server::start(&root, &sock, "vfs", "warn");
    rt.block_on(async {
        let mut c = connect(&sock).await.expect("connect");
        for name in acked.iter().flatten() {
            let info = stat(&mut c, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(&info.name, name);
            assert_eq!(info.kind, pb::Kind::Committed as i32);
        }
        let listed: usize = {
            let mut s = c
                .list(pb::ListSnapshotsRequest {
                    snapshotter: "cairn".into(),
                    filters: vec![],
                })
                .await
                .expect("list")
                .into_inner();
            let mut n = 0;
            while let Some(batch) = s.message().await.expect("list batch") {
                n += batch.info.len();
            }
            n
        };
        // Prepared but uncommitted keys of the last round may be listed too (Active).
        assert!(listed >= total, "listed {listed} of {total}");
    });
    assert_eq!(again.stop(), Some(0));
}

#[test]
fn errors_map_to_the_codes_containerd_understands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let server = Server::start(&dir.path().join("root"), &sock, "vfs", "warn");
    runtime().block_on(async {
        let mut c = connect(&sock).await.expect("connect");
        assert_eq!(
            stat(&mut c, "missing")
                .await
                .map(|_| ())
                .expect_err("must be refused")
                .code(),
            Code::NotFound
        );
        prepare(&mut c, "a", "", HashMap::new())
            .await
            .expect("prepare a");
        let again = prepare(&mut c, "a", "", HashMap::new())
            .await
            .expect_err("must be refused");
        assert_eq!(again.code(), Code::AlreadyExists);
        commit(&mut c, "base", "a").await.expect("commit");
        prepare(&mut c, "child", "base", HashMap::new())
            .await
            .expect("prepare child");
        let busy = c
            .remove(pb::RemoveSnapshotRequest {
                snapshotter: "cairn".into(),
                key: "base".into(),
            })
            .await
            .expect_err("must be refused");
        assert_eq!(busy.code(), Code::FailedPrecondition);
        assert!(busy.message().starts_with("remove:"), "{}", busy.message());
        let bad = c
            .update(pb::UpdateSnapshotRequest {
                snapshotter: "cairn".into(),
                info: Some(pb::Info {
                    name: "base".into(),
                    parent: "other".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["parent".into()],
                }),
            })
            .await
            .expect_err("must be refused");
        assert_eq!(bad.code(), Code::InvalidArgument);
        let not_committed = prepare(&mut c, "x", "child", HashMap::new())
            .await
            .expect_err("must be refused");
        assert_eq!(
            not_committed.code(),
            Code::InvalidArgument,
            "{not_committed:?}"
        );
    });
    server.stop();
}

/// A prepare whose snapshot-ref label names a committed snapshot cairn holds is answered
/// AlreadyExists (containerd then skips fetching and applying that layer), and the
/// extraction key is not created.
#[test]
fn a_prepare_for_a_held_layer_answers_already_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let root = dir.path().join("root");
    // The held layer: imported into the layer store, whose snapshot is named by its ChainID
    // (ChainID keys are the layer store's own: a client cannot commit one).
    let tar_path = dir.path().join("layer.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).expect("create tar"));
        let data = b"held\n";
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_cksum();
        b.append_data(&mut h, "held.txt", &data[..])
            .expect("append");
        b.into_inner().expect("finish tar");
    }
    let out = Command::new(support::cli_bin())
        .arg("--root")
        .arg(&root)
        .args(["--driver", "vfs", "layer", "import"])
        .arg(&tar_path)
        .output()
        .expect("run cairn layer import");
    assert!(out.status.success(), "layer import: {out:?}");
    let chain = String::from_utf8(out.stdout).expect("utf-8");
    let chain = chain.trim().to_owned();
    assert!(chain.starts_with("sha256:") && chain.len() == 71, "{chain}");
    let server = Server::start(&root, &sock, "vfs", "warn");
    runtime().block_on(async {
        let mut c = connect(&sock).await.expect("connect");
        let labels: HashMap<String, String> =
            [(cairn_server::SNAPSHOT_REF_LABEL.to_owned(), chain.clone())].into();
        // A ref cairn does not hold: a normal extraction snapshot.
        let other = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let other_labels: HashMap<String, String> = [(
            cairn_server::SNAPSHOT_REF_LABEL.to_owned(),
            other.to_owned(),
        )]
        .into();
        prepare(
            &mut c,
            &format!("default/1/extract-1 {other}"),
            "",
            other_labels,
        )
        .await
        .expect("an extraction of a layer cairn does not hold");
        let held = prepare(&mut c, &format!("default/2/extract-2 {chain}"), "", labels)
            .await
            .expect_err("must be refused");
        assert_eq!(held.code(), Code::AlreadyExists);
        let gone = stat(&mut c, &format!("default/2/extract-2 {chain}"))
            .await
            .expect_err("must be refused");
        assert_eq!(gone.code(), Code::NotFound);
        // What containerd's metadata store asks next: the committed snapshot with that ref
        // label and that parent (the base layer: parent "").
        let filter = format!(
            "labels.\"{}\"=={chain},parent==\"\"",
            cairn_server::SNAPSHOT_REF_LABEL
        );
        let mut s = c
            .list(pb::ListSnapshotsRequest {
                snapshotter: "cairn".into(),
                filters: vec![filter],
            })
            .await
            .expect("walk")
            .into_inner();
        let mut found = Vec::new();
        while let Some(batch) = s.message().await.expect("walk batch") {
            found.extend(batch.info.into_iter().map(|i| i.name));
        }
        assert_eq!(found, vec![chain.to_owned()]);
        // A prepare with that ref on another parent is a normal extraction.
        prepare(&mut c, "default/3/base", "", HashMap::new())
            .await
            .expect("prepare");
        commit(&mut c, "other-base", "default/3/base")
            .await
            .expect("commit");
        let labels: HashMap<String, String> = [(
            cairn_server::SNAPSHOT_REF_LABEL.to_owned(),
            chain.to_owned(),
        )]
        .into();
        prepare(
            &mut c,
            &format!("default/4/extract-4 {chain}"),
            "other-base",
            labels,
        )
        .await
        .expect("an extraction on another parent");
    });
    server.stop();
}

#[test]
fn logs_name_the_request_method_key_and_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let server = Server::start(
        &dir.path().join("root"),
        &sock,
        "vfs",
        "cairn=debug,cairn_engine=debug,cairn_server=debug",
    );
    runtime().block_on(async {
        let mut c = connect(&sock).await.expect("connect");
        prepare(&mut c, "ns/7/a key with spaces", "", HashMap::new())
            .await
            .expect("prepare");
    });
    let log = server.log();
    assert_eq!(server.stop(), Some(0));
    let line = log
        .lines()
        .find(|l| l.contains("method=\"prepare\"") && l.contains("ok"))
        .unwrap_or_else(|| panic!("no request line in:\n{log}"));
    assert!(line.contains("request="), "{line}");
    assert!(line.contains("key=\"ns/7/a key with spaces\""), "{line}");
    assert!(
        log.lines()
            .any(|l| l.contains("txid=tx") && l.contains("ns/7/a key with spaces")),
        "no transaction line in:\n{log}"
    );
}

/// While `cairn serve` holds the root, the other commands run inside it through its control
/// socket, say so in one line on stderr, print their output here and exit with their code.
#[test]
fn cli_commands_on_a_served_root_go_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let root = dir.path().join("root");
    let server = Server::start(&root, &sock, "vfs", "warn");
    let cairn = |args: &[&str]| {
        Command::new(support::cairn_bin())
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .expect("run cairn")
    };
    let prepared = cairn(&["snapshot", "prepare", "ns/1/a key"]);
    assert!(prepared.status.success(), "{prepared:?}");
    let err = String::from_utf8_lossy(&prepared.stderr);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(err.contains("held by cairn serve"), "{err}");
    assert!(String::from_utf8_lossy(&prepared.stdout).contains("type=bind"));
    // A tar on standard output cannot cross the socket; a relative -o is the client's.
    let to_stdout = cairn(&["snapshot", "diff", "ns/1/a key"]);
    assert_eq!(to_stdout.status.code(), Some(2), "{to_stdout:?}");
    let diff = Command::new(support::cairn_bin())
        .current_dir(dir.path())
        .args([
            "--root",
            "root",
            "snapshot",
            "diff",
            "ns/1/a key",
            "-o",
            "diff.tar",
        ])
        .output()
        .expect("run cairn");
    assert!(diff.status.success(), "{diff:?}");
    assert!(
        dir.path().join("diff.tar").exists(),
        "written where the client is"
    );
    assert!(cairn(&["snapshot", "commit", "base layer", "ns/1/a key"])
        .status
        .success());
    let ls = cairn(&["--json", "snapshot", "ls"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("\"base layer\""),
        "{ls:?}"
    );
    let missing = cairn(&["snapshot", "info", "missing"]);
    assert_eq!(missing.status.code(), Some(3), "not found: {missing:?}");
    let second = cairn(&[
        "serve",
        "--address",
        &dir.path().join("other.sock").display().to_string(),
    ]);
    assert_eq!(
        second.status.code(),
        Some(6),
        "a second server on the root: {second:?}"
    );
    // What the CLI did is what the server holds.
    runtime().block_on(async {
        let mut c = connect(&sock).await.expect("connect");
        let info = stat(&mut c, "base layer").await.expect("stat");
        assert_eq!(info.kind, pb::Kind::Committed as i32);
    });
    assert_eq!(server.stop(), Some(0));
    assert!(
        !root.join("serve.ctl").exists(),
        "the control socket goes with the server"
    );
}

/// The aufs surface through the control socket: `snapshot changes`, `snapshot usage` and,
/// as root, reference-counted `mount` / `umount` / `mounted` run inside the server.
#[test]
fn changes_usage_and_mounts_go_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let root = dir.path().join("root");
    let server = Server::start(&root, &sock, "vfs", "warn");
    let cairn = |args: &[&str]| {
        let out = Command::new(support::cairn_bin())
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .expect("run cairn");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let prepared: serde_json::Value =
        serde_json::from_str(&cairn(&["--json", "snapshot", "prepare", "a"])).expect("json");
    let tree = std::path::PathBuf::from(prepared["mounts"][0]["source"].as_str().expect("source"));
    std::fs::write(tree.join("hello"), b"hello").expect("write");
    assert_eq!(cairn(&["snapshot", "changes", "a"]), "A /hello\n");
    let usage: serde_json::Value =
        serde_json::from_str(&cairn(&["--json", "snapshot", "usage", "a"])).expect("json");
    assert_eq!(usage["diff_size"], 5);
    assert_eq!(usage["tree_size"], 5);
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: mount through the server needs root");
    } else {
        let target = dir.path().join("target");
        std::fs::create_dir(&target).expect("target");
        let t = target.to_str().expect("utf-8");
        cairn(&["mount", "a", t]);
        assert!(cairn(&["mount", "a", t]).ends_with("references: 2\n"));
        assert!(cairn(&["mounted"]).contains(" 2"));
        assert!(target.join("hello").exists(), "mounted by the server");
        cairn(&["umount", t]);
        assert!(cairn(&["umount", t]).starts_with("unmounted: "));
        assert!(!target.join("hello").exists());
    }
    assert_eq!(server.stop(), Some(0));
}
