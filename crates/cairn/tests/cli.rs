//! The `cairn` binary end to end, on the vfs driver in a temporary root.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        assert_eq!(self.stderr, "", "expected nothing on stderr: {self:#?}");
        self
    }

    /// A failure with exit code `code` and exactly one line on stderr, which is returned.
    #[track_caller]
    fn fails(self, code: i32) -> String {
        assert_eq!(self.code, code, "wrong exit code: {self:#?}");
        assert_eq!(self.stdout, "", "nothing on stdout for an error: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error line: {self:#?}");
        lines[0].to_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }

    /// With `--json`: the error object on stderr, checked to have the `kind`.
    #[track_caller]
    fn json_error(self, code: i32, kind: &str) -> String {
        let line = self.fails(code);
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("error not JSON ({e}): {line}"));
        assert_eq!(v["error"]["kind"], kind, "{line}");
        v["error"]["message"]
            .as_str()
            .expect("a message")
            .to_owned()
    }
}

struct Root {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root");
        Root { _dir: dir, path }
    }

    fn run(&self, args: &[&str]) -> Run {
        run_in(&self.path, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run(&all).ok().json()
    }
}

fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for var in ["CAIRN_ROOT", "CAIRN_LOG", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd
}

fn finish(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run cairn");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn run_in(root: &Path, args: &[&str]) -> Run {
    finish(command().arg("--root").arg(root).args(args))
}

#[test]
fn snapshot_lifecycle_in_text() {
    let r = Root::new();
    let out = r
        .run(&["snapshot", "prepare", "base", "--label", "team=infra"])
        .ok()
        .stdout;
    let tree1 = r.path.canonicalize().unwrap().join("snapshots/1/fs");
    assert_eq!(
        out,
        format!("type=bind source={} options=rbind,rw\n", tree1.display())
    );
    std::fs::write(tree1.join("hello"), b"hello, world\n").unwrap();
    r.run(&["snapshot", "commit", "base-c", "base", "--label", "layer=1"])
        .ok();
    r.run(&["snapshot", "prepare", "work", "base-c"]).ok();
    let view = r.run(&["snapshot", "view", "look", "base-c"]).ok().stdout;
    assert_eq!(
        view,
        format!("type=bind source={} options=rbind,ro\n", tree1.display())
    );

    assert_eq!(
        r.run(&["snapshot", "ls"]).ok().stdout,
        "KEY      PARENT   KIND\n\
         base-c            Committed\n\
         look     base-c   View\n\
         work     base-c   Active\n"
    );
    assert_eq!(
        r.run(&["snapshot", "tree"]).ok().stdout,
        "base-c\n  \\_ look\n  \\_ work\n"
    );

    let info = r.run(&["snapshot", "info", "base-c"]).ok().stdout;
    assert!(
        info.starts_with("key:     base-c\nparent:  -\nkind:    Committed\ncreated: 20"),
        "{info}"
    );
    assert!(info.ends_with("labels:\n  layer=1\n"), "{info}");

    let usage = r.run(&["snapshot", "usage", "base-c"]).ok().stdout;
    assert_eq!(
        usage,
        "KEY      SIZE   INODES   DIFF   TREE\nbase-c   13 B   2        13 B   13 B\n"
    );
    let all = r.run(&["snapshot", "usage"]).ok().stdout;
    assert_eq!(all.lines().count(), 4, "{all}");
    assert!(
        all.starts_with(
            "KEY      SIZE   INODES   DIFF   TREE\nbase-c   13 B   2        13 B   13 B\n"
        ),
        "{all}"
    );

    let mounts = r.run(&["snapshot", "mounts", "/mnt/x", "work"]).ok().stdout;
    let tree2 = r.path.canonicalize().unwrap().join("snapshots/2/fs");
    assert_eq!(
        mounts,
        format!("mount -t bind {} -o rbind,rw /mnt/x\n", tree2.display())
    );
    assert!(tree2.join("hello").exists(), "vfs copies the parent");

    // Labels: set one, remove one.
    assert_eq!(
        r.run(&["snapshot", "label", "base-c", "owner=me", "layer="])
            .ok()
            .stdout,
        "owner=me\n"
    );
    assert!(r
        .run(&["snapshot", "info", "base-c"])
        .ok()
        .stdout
        .ends_with("labels:\n  owner=me\n"));

    r.run(&["snapshot", "rm", "look", "work"]).ok();
    r.run(&["snapshot", "rm", "base-c"]).ok();
    assert_eq!(
        r.run(&["snapshot", "ls"]).ok().stdout,
        "KEY   PARENT   KIND\n"
    );
    assert_eq!(r.run(&["cleanup"]).ok().stdout, "nothing to clean up\n");
    assert_eq!(
        r.run(&["fsck"]).ok().stdout,
        "fsck: 0 snapshots checked, clean\n"
    );
}

#[test]
fn every_command_speaks_json() {
    let r = Root::new();
    let v = r.json(&["snapshot", "prepare", "base", "--label", "a=1"]);
    assert_eq!(v["key"], "base");
    assert_eq!(v["mounts"][0]["type"], "bind");
    assert_eq!(
        v["mounts"][0]["options"],
        serde_json::json!(["rbind", "rw"])
    );
    assert!(v["mounts"][0]["source"]
        .as_str()
        .unwrap()
        .ends_with("/snapshots/1/fs"));

    let v = r.json(&["snapshot", "commit", "base-c", "base"]);
    assert_eq!(v, serde_json::json!({"name": "base-c", "key": "base"}));
    let v = r.json(&["snapshot", "view", "v", "base-c"]);
    assert_eq!(
        v["mounts"][0]["options"],
        serde_json::json!(["rbind", "ro"])
    );
    r.json(&["snapshot", "prepare", "w", "base-c"]);

    let v = r.json(&["snapshot", "info", "base-c"]);
    assert_eq!(v["key"], "base-c");
    assert_eq!(v["kind"], "Committed");
    assert_eq!(v["parent"], Value::Null);
    assert!(v["created"].as_str().unwrap().ends_with('Z'));

    let v = r.json(&["snapshot", "ls"]);
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["base-c", "v", "w"]);
    assert_eq!(v[1]["parent"], "base-c");
    assert_eq!(v[1]["kind"], "View");

    let v = r.json(&["snapshot", "tree"]);
    assert_eq!(v[0]["key"], "base-c");
    assert_eq!(v[0]["children"][1]["key"], "w");
    assert_eq!(v[0]["children"][1]["kind"], "Active");

    let v = r.json(&["snapshot", "usage", "base-c"]);
    assert_eq!(
        (v["key"].as_str(), v["size"].as_u64(), v["inodes"].as_u64()),
        (Some("base-c"), Some(0), Some(1))
    );
    assert_eq!(r.json(&["snapshot", "usage"]).as_array().unwrap().len(), 3);

    let v = r.json(&["snapshot", "mounts", "/mnt", "v"]);
    assert_eq!(v["target"], "/mnt");
    assert!(v["commands"][0]
        .as_str()
        .unwrap()
        .starts_with("mount -t bind /"));

    let v = r.json(&["snapshot", "label", "w", "x=y"]);
    assert_eq!(v["labels"], serde_json::json!({"x": "y"}));

    let v = r.json(&["fsck"]);
    assert_eq!(v["clean"], true);
    assert_eq!(v["snapshots_checked"], 3);
    let v = r.json(&["cleanup"]);
    assert_eq!(v["snapshots_removed"], serde_json::json!([]));

    let v = r.json(&["snapshot", "rm", "v", "w"]);
    assert_eq!(v["removed"], serde_json::json!(["v", "w"]));

    // wal dump: one object per line.
    let dump = r.run(&["--json", "wal", "dump"]).ok().stdout;
    let lines: Vec<Value> = dump
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.len() >= 10, "{dump}");
    assert!(lines
        .iter()
        .all(|l| l["lsn"].is_u64() && l["txid"].is_u64() && l["op"].is_string()));
}

#[test]
fn errors_are_one_line_with_distinct_exit_codes() {
    let r = Root::new();
    r.run(&["snapshot", "prepare", "a"]).ok();

    let e = r.run(&["snapshot", "info", "x"]).fails(3);
    assert_eq!(e, r#"cairn: snapshot "x": not found"#);
    assert_eq!(
        r.run(&["snapshot", "prepare", "b", "missing"]).fails(3),
        r#"cairn: snapshot "missing": not found"#
    );

    assert_eq!(
        r.run(&["snapshot", "prepare", "a"]).fails(4),
        r#"cairn: snapshot "a": already exists"#
    );

    r.run(&["snapshot", "commit", "a-c", "a"]).ok();
    r.run(&["snapshot", "prepare", "child", "a-c"]).ok();
    let e = r.run(&["snapshot", "rm", "a-c"]).fails(5);
    assert_eq!(
        e,
        r#"cairn: snapshot "a-c": failed precondition: it has children"#
    );
    let e = r.run(&["snapshot", "commit", "again", "a-c"]).fails(5);
    assert!(
        e.starts_with(r#"cairn: snapshot "a-c": failed precondition: it is not active"#),
        "{e}"
    );

    assert_eq!(
        r.run(&["snapshot", "prepare", ""]).fails(2),
        "cairn: invalid argument: the key is empty"
    );
    let e = r.run(&["snapshot", "prepare", "c", "child"]).fails(2);
    assert!(e.contains("not a committed snapshot"), "{e}");
    let e = r
        .run(&["snapshot", "prepare", "c", "--label", "novalue"])
        .fails(2);
    assert!(
        e.starts_with("cairn: invalid value 'novalue' for '--label"),
        "{e}"
    );
    let e = r.run(&["snapshot", "label", "child", "=x"]).fails(2);
    assert!(e.contains("needs a key"), "{e}");
    let e = r.run(&["snapshot", "frobnicate"]).fails(2);
    assert!(
        e.starts_with("cairn: unrecognized subcommand 'frobnicate'"),
        "{e}"
    );

    // The same classes with --json.
    let m = r
        .run(&["--json", "snapshot", "info", "x"])
        .json_error(3, "not-found");
    assert_eq!(m, r#"snapshot "x": not found"#);
    r.run(&["--json", "snapshot", "prepare", "a-c"])
        .json_error(4, "already-exists");
    r.run(&["--json", "snapshot", "rm", "a-c"])
        .json_error(5, "failed-precondition");
    r.run(&["--json", "snapshot", "prepare", ""])
        .json_error(2, "invalid-argument");
    r.run(&["snapshot", "prepare", "--json", "c", "--label", "x"])
        .json_error(2, "invalid-argument");

    // Nothing above changed the root.
    assert_eq!(r.json(&["snapshot", "ls"]).as_array().unwrap().len(), 2);
    assert_eq!(
        r.run(&["fsck"]).ok().stdout,
        "fsck: 2 snapshots checked, clean\n"
    );
}

#[test]
fn rm_stops_at_the_first_failure() {
    let r = Root::new();
    r.run(&["snapshot", "prepare", "a"]).ok();
    r.run(&["snapshot", "prepare", "b"]).ok();
    assert_eq!(
        r.run(&["snapshot", "rm", "a", "nope", "b"]).fails(3),
        r#"cairn: snapshot "nope": not found"#
    );
    let keys = r.json(&["snapshot", "ls"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["key"], "b");
}

#[test]
fn a_locked_root_is_refused_but_can_be_dumped() {
    let r = Root::new();
    r.run(&["snapshot", "prepare", "a"]).ok();
    let (engine, _) =
        cairn_engine::Engine::open(&r.path, cairn_engine::EngineOptions::default()).expect("open");
    let e = r.run(&["--lock-timeout", "0", "snapshot", "ls"]).fails(6);
    assert_eq!(
        e,
        format!(
            "cairn: root {} is locked by pid {}",
            r.path.canonicalize().unwrap().display(),
            std::process::id()
        )
    );
    r.run(&["--json", "--lock-timeout", "0", "snapshot", "ls"])
        .json_error(6, "locked");
    // wal dump reads without the lock.
    let dump = r.run(&["wal", "dump"]).ok().stdout;
    assert!(dump.contains(r#"BeginCreate id=1 key="a""#), "{dump}");
    engine.close().expect("close");
    r.run(&["snapshot", "ls"]).ok();
}

#[test]
fn the_driver_of_a_root_is_fixed() {
    let r = Root::new();
    r.run(&["--driver", "vfs", "snapshot", "prepare", "a"]).ok();
    let canonical = r.path.canonicalize().unwrap();
    let e = r.run(&["--driver", "overlay", "snapshot", "ls"]).fails(2);
    assert_eq!(
        e,
        format!(
            "cairn: root {} was created with the vfs driver, not overlay",
            canonical.display()
        )
    );
    r.run(&["--json", "--driver", "overlay", "snapshot", "ls"])
        .json_error(2, "invalid-argument");
    r.run(&["--driver", "vfs", "snapshot", "ls"]).ok();
    r.run(&["snapshot", "ls"]).ok();
    let e = r.run(&["--driver", "zfs", "snapshot", "ls"]).fails(2);
    assert!(
        e.starts_with("cairn: invalid value 'zfs' for '--driver"),
        "{e}"
    );
}

#[test]
fn wal_dump_shows_the_commands_just_run() {
    let r = Root::new();
    r.run(&["snapshot", "prepare", "base", "--label", "k=v"])
        .ok();
    r.run(&["snapshot", "commit", "base-c", "base"]).ok();
    r.run(&["snapshot", "label", "base-c", "x=1"]).ok();
    r.run(&["snapshot", "prepare", "tmp", "base-c"]).ok();
    r.run(&["snapshot", "rm", "tmp"]).ok();
    let dump = r.run(&["wal", "dump"]).ok().stdout;
    let lines: Vec<&str> = dump.lines().collect();
    assert!(
        lines[0].starts_with(&format!("# root {}: driver vfs, store ", r.path.display())),
        "{dump}"
    );
    let records: Vec<String> = lines[1..]
        .iter()
        .map(|l| {
            // Times differ from run to run, tree digests with the user running the test.
            let l = l.split(" time_ns=").next().unwrap();
            match l.split_once(r#"digest="sha256:"#) {
                Some((head, tail)) => format!("{head}digest=<sha256>{}", &tail[65..]),
                None => l.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        records,
        [
            r#"LSN 1 tx1 BeginCreate id=1 key="base" kind="Active" labels={"k":"v"} parent=-"#,
            "LSN 2 tx2 Complete digest=- of=1 usage=-",
            r#"LSN 3 tx3 BeginCommit key="base" labels={} name="base-c""#,
            r#"LSN 4 tx4 Complete digest=<sha256> of=3 usage={"inodes":1,"size_bytes":0}"#,
            r#"LSN 5 tx5 Update key="base-c" labels={"x":"1"}"#,
            r#"LSN 6 tx6 BeginCreate id=2 key="tmp" kind="Active" labels={} parent="base-c""#,
            "LSN 7 tx7 Complete digest=- of=6 usage=-",
            r#"LSN 8 tx8 Remove key="tmp""#,
        ]
    );
    let json = r.run(&["--json", "wal", "dump"]).ok().stdout;
    let first: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["lsn"], 1);
    assert_eq!(first["txid"], 1);
    assert_eq!(first["op"], "BeginCreate");
    assert_eq!(first["key"], "base");
    assert_eq!(first["labels"], serde_json::json!({"k": "v"}));
    let last: Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(
        (
            last["lsn"].as_u64(),
            last["op"].as_str(),
            last["key"].as_str()
        ),
        (Some(8), Some("Remove"), Some("tmp"))
    );
}

#[test]
fn wal_dump_needs_a_root_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let e = run_in(&missing, &["wal", "dump"]).fails(1);
    assert!(
        e.starts_with("cairn: ") && e.contains("nothing-here"),
        "{e}"
    );
    assert!(!missing.exists());
}

#[test]
fn fsck_reports_a_lost_tree_and_exits_1() {
    let r = Root::new();
    r.run(&["snapshot", "prepare", "a"]).ok();
    r.run(&["snapshot", "prepare", "b"]).ok();
    std::fs::remove_dir_all(r.path.join("snapshots/2")).unwrap();
    let run = r.run(&["fsck"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:#?}");
    assert!(
        lines[0].starts_with(r#"TreeMissing id=2 key="b" path=""#),
        "{run:#?}"
    );
    assert!(lines[0].ends_with("[NOT REPAIRED]"), "{run:#?}");
    assert_eq!(
        lines[1],
        "fsck: 2 snapshots checked, 1 finding (0 repaired)"
    );
    // A lost tree is never repaired.
    let run = r.run(&["--json", "fsck", "--repair"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let v = run.json();
    assert_eq!(v["clean"], false);
    assert_eq!(v["findings"][0]["problem"], "TreeMissing");
    assert_eq!(v["findings"][0]["key"], "b");
    assert_eq!(v["findings"][0]["repaired"], false);
    // Removing the snapshot makes the root clean again.
    // (Every open until then logs the lost tree.)
    let run = r.run(&["snapshot", "rm", "b"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("snapshot tree lost"), "{run:#?}");
    r.run(&["fsck"]).ok();
}

#[test]
fn the_root_defaults_to_cairn_root_then_cairn_data() {
    let dir = tempfile::tempdir().unwrap();
    let env_root = dir.path().join("from-env");
    finish(
        command()
            .env("CAIRN_ROOT", &env_root)
            .args(["snapshot", "prepare", "a"]),
    )
    .ok();
    assert!(env_root.join("cairn.meta").exists());
    finish(
        command()
            .current_dir(dir.path())
            .args(["snapshot", "prepare", "b"]),
    )
    .ok();
    assert!(dir.path().join("cairn-data/cairn.meta").exists());
    // --root wins over the environment.
    let run = finish(
        command()
            .env("CAIRN_ROOT", &env_root)
            .arg("--root")
            .arg(dir.path().join("cairn-data"))
            .args(["snapshot", "ls"]),
    );
    assert_eq!(
        run.ok().stdout,
        "KEY   PARENT   KIND\nb              Active\n"
    );
}

#[test]
fn recovery_is_logged_at_debug_level() {
    let r = Root::new();
    let run = finish(
        command()
            .env("CAIRN_LOG", "cairn=debug")
            .arg("--root")
            .arg(&r.path)
            .args(["snapshot", "ls"]),
    );
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr.contains("opened the root") && run.stderr.contains("RecoveryReport"),
        "{run:#?}"
    );
    // Quiet by default.
    r.run(&["snapshot", "ls"]).ok();
}

#[test]
fn help_and_version() {
    let run = finish(command().arg("--help"));
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("snapshot") && run.stdout.contains("--json"));
    let run = finish(command().arg("--version"));
    assert_eq!(run.stdout, format!("cairn {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn mount_and_umount_as_root() {
    let r = Root::new();
    let target = r.path.parent().unwrap().join("target");
    std::fs::create_dir(&target).unwrap();
    r.run(&["snapshot", "prepare", "a"]).ok();
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: mount and umount need root; checking the refusal only");
        let e = r.run(&["mount", "a", target.to_str().unwrap()]).fails(7);
        assert!(e.starts_with("cairn: mount needs root"), "{e}");
        r.run(&["umount", target.to_str().unwrap()]).fails(7);
        return;
    }
    let t = target.to_str().unwrap();
    // The same commands as an unprivileged user are refused before the root is touched.
    for args in [&["mount", "a", t][..], &["umount", t][..]] {
        use std::os::unix::process::CommandExt;
        let run = finish(
            command()
                .uid(65534)
                .gid(65534)
                .arg("--root")
                .arg(&r.path)
                .args(args),
        );
        let e = run.fails(7);
        assert!(
            e.starts_with(&format!(
                "cairn: {} needs root (running as uid 65534)",
                args[0]
            )),
            "{e}"
        );
    }
    let out = r.run(&["mount", "a", t]).ok().stdout;
    assert!(
        out.starts_with("mounted: mount -t bind ")
            && out.ends_with(&format!(" -o rbind,rw {t}\nreferences: 1\n")),
        "{out}"
    );
    std::fs::write(target.join("through-the-mount"), b"x").unwrap();
    // Reference-counted: a second mount counts, a snapshot with a mount is not removed, the
    // first umount releases one reference, the second unmounts.
    let out = r.run(&["mount", "a", t]).ok().stdout;
    assert_eq!(out, format!("already mounted: {t}\nreferences: 2\n"));
    let listed = r.json(&["mounted"]);
    assert_eq!(
        listed,
        serde_json::json!([{"target": t, "key": "a", "count": 2}])
    );
    let e = r.run(&["snapshot", "rm", "a"]).fails(5);
    assert!(e.contains(&format!("it is mounted on {t}")), "{e}");
    let out = r.run(&["umount", t]).ok().stdout;
    assert_eq!(out, format!("released: {t} (references left: 1)\n"));
    assert!(target.join("through-the-mount").exists(), "still mounted");
    let v = r.json(&["umount", t]);
    assert_eq!(v["target"], t);
    assert_eq!(v["count"], 0);
    assert!(!target.join("through-the-mount").exists(), "unmounted");
    assert!(
        r.path.join("snapshots/1/fs/through-the-mount").exists(),
        "written into the snapshot"
    );

    // A read-only view really is read-only; --json mount.
    r.run(&["snapshot", "commit", "a-c", "a"]).ok();
    r.run(&["snapshot", "view", "v", "a-c"]).ok();
    let v = r.json(&["mount", "v", t]);
    assert_eq!(
        v["mounts"][0]["options"],
        serde_json::json!(["rbind", "ro"])
    );
    assert!(target.join("through-the-mount").exists());
    let err = std::fs::write(target.join("nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    r.run(&["umount", t]).ok();

    // Errors: a missing snapshot, a missing target, nothing mounted.
    assert_eq!(
        r.run(&["mount", "zz", t]).fails(3),
        r#"cairn: snapshot "zz": not found"#
    );
    let missing = r.path.parent().unwrap().join("no-such-dir");
    let e = r.run(&["mount", "v", missing.to_str().unwrap()]).fails(1);
    assert!(
        e.starts_with("cairn: resolve mount target ") && e.contains("no-such-dir"),
        "{e}"
    );
    let e = r.run(&["umount", t]).fails(3);
    assert_eq!(
        e,
        format!("cairn: {t}: nothing cairn mounted is counted there")
    );
}

#[test]
fn overlay_root_mounts_as_root() {
    let r = Root::new();
    let target = r.path.parent().unwrap().join("target");
    std::fs::create_dir(&target).unwrap();
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: the overlay driver needs root");
        return;
    }
    let run = r.run(&["--driver", "overlay", "snapshot", "prepare", "a"]);
    if run.code != 0 && run.stderr.contains("overlay is not usable") {
        println!("skipped: overlay is not usable here: {}", run.stderr.trim());
        return;
    }
    run.ok();
    std::fs::write(r.path.join("snapshots/1/fs/lower"), b"x").unwrap();
    r.run(&["snapshot", "commit", "a-c", "a"]).ok();
    r.run(&["snapshot", "prepare", "b", "a-c"]).ok();
    let canonical = r.path.canonicalize().unwrap();
    let cmd = r.run(&["snapshot", "mounts", "/mnt", "b"]).ok().stdout;
    let s = |p: &str| canonical.join("snapshots").join(p).display().to_string();
    // The driver chooses the options and their order; these three must be there.
    let opts = cmd
        .strip_prefix("mount -t overlay overlay -o ")
        .and_then(|rest| rest.strip_suffix(" /mnt\n"))
        .unwrap_or_else(|| panic!("{cmd}"));
    let opts: Vec<&str> = opts.split(',').collect();
    for want in [
        format!("upperdir={}", s("2/fs")),
        format!("workdir={}", s("2/work")),
        format!("lowerdir={}", s("1/fs")),
    ] {
        assert!(opts.contains(&want.as_str()), "{want} in {cmd}");
    }
    let t = target.to_str().unwrap();
    r.run(&["mount", "b", t]).ok();
    assert!(
        target.join("lower").exists(),
        "the parent is the lower layer"
    );
    std::fs::write(target.join("upper"), b"y").unwrap();
    r.run(&["umount", t]).ok();
    assert!(
        canonical.join("snapshots/2/fs/upper").exists(),
        "written into the upper dir"
    );
    assert!(!target.join("lower").exists());
    // The root stays an overlay root.
    let e = r.run(&["--driver", "vfs", "snapshot", "ls"]).fails(2);
    assert!(
        e.ends_with("was created with the overlay driver, not vfs"),
        "{e}"
    );
    r.run(&["fsck"]).ok();
}

#[test]
fn wal_dump_reports_a_torn_tail_and_changes_nothing() {
    use std::os::unix::fs::FileExt;
    let r = Root::new();
    r.run(&["snapshot", "prepare", "a"]).ok();
    let segment = r.path.join("wal/00000000000000000001.wal");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(&[0xff; 8], 8192).unwrap();
    let before = std::fs::read(&segment).unwrap();
    let run = r.run(&["wal", "dump"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(
        run.stdout.lines().count(),
        3,
        "header and two records: {run:#?}"
    );
    assert!(
        run.stderr
            .starts_with("cairn: warning: the log ends in bytes that are not a record at "),
        "{run:#?}"
    );
    assert!(run.stderr.contains("(LSN 3: "), "{run:#?}");
    let run = r.run(&["--json", "wal", "dump"]);
    let warning: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(warning["warning"]["kind"], "torn-tail");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        before,
        "dump never writes"
    );
}

/// Damage that a later record proves was durable is corruption, not a torn tail: `wal dump`
/// refuses it exactly as opening the root does (one scanner in the WAL crate for both), and
/// neither changes a byte.
#[test]
fn wal_dump_calls_corrupt_what_opening_the_root_refuses() {
    use cairn_wal::format::{decode_record, SegmentHeader, HEADER_BYTES, RECORD_HEADER_BYTES};
    use std::os::unix::fs::FileExt;
    let r = Root::new();
    r.run(&["snapshot", "prepare", "a"]).ok();
    r.run(&["snapshot", "prepare", "b"]).ok();
    // An empty prepare journals its begin and completion in one append: c's records are the
    // later ones that acknowledge b's.
    r.run(&["snapshot", "prepare", "c"]).ok();
    let segment = r.path.join("wal/00000000000000000001.wal");
    let data = std::fs::read(&segment).unwrap();
    let store = SegmentHeader::decode(&data).unwrap().store_id;
    // Find record LSN 3 (b's begin) and check that a later record acknowledges it.
    let (mut pos, mut at3, mut proof) = (HEADER_BYTES, None, false);
    while let Ok(rec) = decode_record(&data[pos..], store, u32::MAX >> 8) {
        if rec.lsn.0 == 3 {
            at3 = Some(pos);
        }
        proof |= rec.lsn.0 > 3 && rec.acked.0 >= 3;
        pos += rec.span;
    }
    let at3 = at3.expect("record LSN 3");
    assert!(proof, "a record after LSN 3 acknowledges it");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    // Flip a payload byte: the record's checksum no longer matches.
    let flipped = [data[at3 + RECORD_HEADER_BYTES] ^ 0xff];
    file.write_all_at(&flipped, (at3 + RECORD_HEADER_BYTES) as u64)
        .unwrap();
    let before = std::fs::read(&segment).unwrap();
    let e = r.run(&["wal", "dump"]).fails(1);
    assert!(e.contains("corrupt record") && e.contains("LSN 3"), "{e}");
    let e = r.run(&["snapshot", "ls"]).fails(1);
    assert!(e.contains("corrupt record") && e.contains("LSN 3"), "{e}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        before,
        "neither dump nor open writes"
    );
}
