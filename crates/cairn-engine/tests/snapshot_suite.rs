//! containerd's snapshotter test suite (core/snapshots/testsuite: testsuite.go, issues.go,
//! helpers.go) re-expressed against the engine, every case once per driver: `vfs::<case>` and
//! `overlay::<case>`. Like containerd, the suite runs with umask 0 (every test of this binary
//! sets it, so they agree), keys are arbitrary strings (containerd uses paths under work/),
//! and every case ends with checks of its own: `fsck(false)` clean, and a clean close and
//! reopen giving the same `walk`.

mod common;

use cairn_engine::{EngineHandle, Info};
use cairn_state::types::{DriverKind, Kind};
use cairn_state::Labels;
use common::*;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

struct Ctx {
    driver: DriverKind,
    root: PathBuf,
    work: PathBuf,
    sn: EngineHandle,
    closed: Cell<bool>,
    counter: Cell<u32>,
    _tmp: tempfile::TempDir,
}

const GC_ROOT: &str = "containerd.io/gc.root";

/// containerd's `opt`: every snapshot carries a gc root label.
fn opt() -> Labels {
    labels(&[(GC_ROOT, "snapshot-suite")])
}

fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(d.as_nanos()).expect("ns fit")
}

static UMASK: Once = Once::new();

fn run(driver: DriverKind, case: fn(&Ctx)) {
    UMASK.call_once(|| {
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    });
    if driver == DriverKind::Overlay && !is_root() {
        skip("the overlay driver needs root to mount");
        return;
    }
    // The block driver's root is on a scratch xfs with reflink (dropped after everything
    // below, so after the engine has closed).
    let xfs = if driver == DriverKind::Block {
        if let Some(reason) = cairn_driver::scratch::unavailable() {
            skip(&format!("the block driver {reason}"));
            return;
        }
        Some(cairn_driver::scratch::ReflinkFs::make("block-suite-", 4 << 30).expect("scratch xfs"))
    } else {
        None
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!("snapshot-suite-{}-", driver.name()))
        .tempdir_in(
            xfs.as_ref()
                .map_or_else(std::env::temp_dir, |x| x.path().to_path_buf()),
        )
        .expect("tempdir");
    let root = tmp.path().join("root");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let sn = open(&root, driver);
    let ctx = Ctx {
        driver,
        root,
        work,
        sn,
        closed: Cell::new(false),
        counter: Cell::new(0),
        _tmp: tmp,
    };
    case(&ctx);

    // Every case leaves a consistent root that survives a clean reopen unchanged.
    let Ctx {
        driver,
        root,
        sn,
        closed,
        ..
    } = ctx;
    let before = if closed.get() {
        None
    } else {
        let report = sn.fsck(false).expect("fsck");
        assert!(report.is_clean(), "fsck after the case: {report:?}");
        let walk = sn.walk(&[]).expect("walk");
        sn.close().expect("close");
        Some(walk)
    };
    let sn = open(&root, driver);
    if let Some(before) = before {
        assert_eq!(
            sn.walk(&[]).expect("walk after reopen"),
            before,
            "walk changed across a clean reopen"
        );
    }
    let report = sn.fsck(false).expect("fsck after reopen");
    assert!(report.is_clean(), "fsck after reopen: {report:?}");
    sn.close().expect("close");
}

impl Ctx {
    fn next_name(&self, prefix: &str) -> String {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        format!("{prefix}-{n}")
    }

    fn key(&self, name: &str) -> String {
        self.work.join(name).to_string_lossy().into_owned()
    }

    /// containerd's snapshotterPrepareMount.
    fn prepare_mount(&self, key: &str, parent: Option<&str>) -> Mounted {
        let mounts = self.sn.prepare(key, parent, opt()).expect("prepare");
        assert!(!mounts.is_empty(), "expected mounts to have entries");
        Mounted::must(&mounts, &self.work)
    }

    /// helpers.go createSnapshot: prepare on `parent`, apply `ops` through the mounts, commit.
    fn create_snapshot(&self, parent: Option<&str>, ops: &[FsOp]) -> String {
        let name = self.next_name("layer");
        let prepare = format!("{name}-prepare");
        let m = self.prepare_mount(&prepare, parent);
        apply(m.path(), ops).unwrap_or_else(|e| panic!("apply to {name}: {e}"));
        m.unmount();
        self.sn.commit(&name, &prepare, opt()).expect("commit");
        name
    }

    /// helpers.go checkSnapshot: a view of `name` equals `flat`.
    fn check_snapshot(&self, name: &str, flat: &Path) {
        let view = format!("{name}-view");
        let mounts = self.sn.view(&view, Some(name), opt()).expect("view");
        let m = Mounted::must(&mounts, &self.work);
        assert_same_tree(flat, m.path(), &format!("view of {name}"));
        m.unmount();
        self.sn.remove(&view).expect("remove view");
    }

    /// helpers.go checkSnapshots: a chain, one snapshot per applier, each checked in a view
    /// against the same changes applied to one flat directory.
    fn check_snapshots(&self, layers: &[Vec<FsOp>]) -> Vec<String> {
        let flat = tempfile::Builder::new()
            .prefix("flat")
            .tempdir_in(&self.work)
            .expect("flat");
        let mut parent: Option<String> = None;
        let mut names = Vec::new();
        for (i, ops) in layers.iter().enumerate() {
            let name = self.create_snapshot(parent.as_deref(), ops);
            apply(flat.path(), ops)
                .unwrap_or_else(|e| panic!("apply layer {} to flat: {e}", i + 1));
            self.check_snapshot(&name, flat.path());
            names.push(name.clone());
            parent = Some(name);
        }
        names
    }

    fn flat(&self, layers: &[&[FsOp]]) -> tempfile::TempDir {
        let flat = tempfile::Builder::new()
            .prefix("flat")
            .tempdir_in(&self.work)
            .expect("flat");
        for ops in layers {
            apply(flat.path(), ops).expect("apply to flat");
        }
        flat
    }
}

fn need_root(what: &str) -> bool {
    if is_root() {
        true
    } else {
        skip(what);
        false
    }
}

mod cases {
    use super::*;

    /// checkSnapshotterBasic.
    pub fn basic(c: &Ctx) {
        let initial = vec![
            file("/foo", b"foo\n", 0o777),
            dir("/a", 0o755),
            dir("/a/b", 0o755),
            dir("/a/b/c", 0o755),
        ];
        let diff = vec![
            file("/bar", b"bar\n", 0o777),
            file("/foo", b"bar\n", 0o777),
            remove_all("/a/b"),
        ];

        let preparing = c.key("preparing");
        let m = c.prepare_mount(&preparing, None);
        apply(m.path(), &initial).expect("apply initial");
        m.unmount();

        let committed = c.key("committed");
        c.sn.commit(&committed, &preparing, opt()).expect("commit");
        let si = c.sn.stat(&committed).expect("stat committed");
        assert_eq!(si.parent, None);
        assert_eq!(si.kind, Kind::Committed);
        expect_err(
            c.sn.stat(&preparing),
            Class::NotFound,
            "stat of the committed active key",
        );

        let next = c.key("nextlayer");
        let m = c.prepare_mount(&next, Some(&committed));
        assert_same_tree(
            c.flat(&[&initial]).path(),
            m.path(),
            "next layer before the diff",
        );
        apply(m.path(), &diff).expect("apply diff");
        m.unmount();

        let ni = c.sn.stat(&next).expect("stat next");
        assert_eq!(ni.parent.as_deref(), Some(committed.as_str()));
        assert_eq!(ni.kind, Kind::Active);

        let next_committed = c.key("committed-next");
        c.sn.commit(&next_committed, &next, opt())
            .expect("commit next");
        let si2 = c.sn.stat(&next_committed).expect("stat committed-next");
        assert_eq!(si2.parent.as_deref(), Some(committed.as_str()));
        assert_eq!(si2.kind, Kind::Committed);
        expect_err(
            c.sn.stat(&next),
            Class::NotFound,
            "stat of the committed next key",
        );

        let walked = c.sn.walk(&[]).expect("walk");
        for expected in [&si, &si2] {
            let got = walked.iter().find(|i| i.key == expected.key);
            assert_eq!(got, Some(expected), "walk entry of {}", expected.key);
        }

        let nextnext = c.key("nextnextlayer");
        let mounts =
            c.sn.view(&nextnext, Some(&next_committed), opt())
                .expect("view");
        let m = Mounted::must(&mounts, &c.work);
        assert_same_tree(
            c.flat(&[&initial, &diff]).path(),
            m.path(),
            "view of committed-next",
        );
        m.unmount();
        c.sn.remove(&nextnext).expect("remove view");

        expect_err(
            c.sn.remove(&committed),
            Class::FailedPrecondition,
            "remove of a parent",
        );
        c.sn.remove(&next_committed).expect("remove committed-next");
        c.sn.remove(&committed).expect("remove committed");
        assert!(c.sn.walk(&[]).expect("walk").is_empty());
    }

    /// checkSnapshotterStatActive.
    pub fn stat_active(c: &Ctx) {
        let preparing = c.key("preparing");
        let m = c.prepare_mount(&preparing, None);
        std::fs::write(m.path().join("foo"), b"foo\n").expect("write");
        m.unmount();
        let si = c.sn.stat(&preparing).expect("stat");
        assert_eq!(si.key, preparing);
        assert_eq!(si.kind, Kind::Active);
        assert_eq!(si.parent, None);
        assert_eq!(si.labels, opt());
    }

    /// checkSnapshotterStatCommitted.
    pub fn stat_committed(c: &Ctx) {
        let preparing = c.key("preparing");
        let m = c.prepare_mount(&preparing, None);
        std::fs::write(m.path().join("foo"), b"foo\n").expect("write");
        m.unmount();
        let committed = c.key("committed");
        c.sn.commit(&committed, &preparing, opt()).expect("commit");
        let si = c.sn.stat(&committed).expect("stat");
        assert_eq!(si.key, committed);
        assert_eq!(si.kind, Kind::Committed);
        assert_eq!(si.parent, None);
    }

    /// checkSnapshotterTransitivity: A <- B, B's parent is A, A has none.
    pub fn transitivity(c: &Ctx) {
        let preparing = c.key("preparing");
        let m = c.prepare_mount(&preparing, None);
        std::fs::write(m.path().join("foo"), b"foo\n").expect("write");
        m.unmount();
        let snap_a = c.key("snapA");
        c.sn.commit(&snap_a, &preparing, opt()).expect("commit A");

        let next = c.key("next");
        let m = c.prepare_mount(&next, Some(&snap_a));
        assert_eq!(std::fs::read(m.path().join("foo")).expect("read"), b"foo\n");
        std::fs::write(m.path().join("foo"), b"foo bar\n").expect("write");
        m.unmount();
        let snap_b = c.key("snapB");
        c.sn.commit(&snap_b, &next, opt()).expect("commit B");

        let si_a = c.sn.stat(&snap_a).expect("stat A");
        let si_b = c.sn.stat(&snap_b).expect("stat B");
        let si_parent_b =
            c.sn.stat(si_b.parent.as_deref().expect("B has a parent"))
                .expect("stat B's parent");
        assert_eq!(si_a.parent, None);
        assert_eq!(si_b.parent.as_deref(), Some(snap_a.as_str()));
        assert_eq!(si_parent_b.parent, None);
        assert_eq!(si_parent_b, si_a);
    }

    /// checkSnapshotterPrepareView: two snapshots with one key must fail, whatever their kinds.
    pub fn prepare_view(c: &Ctx) {
        let preparing = c.key("preparing");
        c.prepare_mount(&preparing, None).unmount();
        let snap_a = c.key("snapA");
        c.sn.commit(&snap_a, &preparing, opt()).expect("commit");

        let new_layer = c.key("newlayer");
        c.sn.prepare(&new_layer, Some(&snap_a), opt())
            .expect("prepare");
        expect_err(
            c.sn.view(&new_layer, Some(&snap_a), opt()),
            Class::AlreadyExists,
            "view over a prepare",
        );

        let prep_layer = c.key("prepLayer");
        c.sn.prepare(&prep_layer, Some(&snap_a), opt())
            .expect("prepare");
        expect_err(
            c.sn.prepare(&prep_layer, Some(&snap_a), opt()),
            Class::AlreadyExists,
            "prepare twice",
        );

        let view_layer = c.key("viewLayer");
        c.sn.view(&view_layer, Some(&snap_a), opt()).expect("view");
        expect_err(
            c.sn.view(&view_layer, Some(&snap_a), opt()),
            Class::AlreadyExists,
            "view twice",
        );
        expect_err(
            c.sn.prepare(&view_layer, None, opt()),
            Class::AlreadyExists,
            "prepare over a view",
        );

        // The failures changed nothing.
        assert_eq!(c.sn.stat(&new_layer).expect("stat").kind, Kind::Active);
        assert_eq!(c.sn.stat(&view_layer).expect("stat").kind, Kind::View);
        assert_eq!(c.sn.walk(&[]).expect("walk").len(), 4);
    }

    /// checkDeletedFilesInChildSnapshot.
    pub fn deleted_files_in_child(c: &Ctx) {
        c.check_snapshots(&[
            vec![
                file("/foo", b"foo\n", 0o777),
                file("/foobar", b"foobar\n", 0o777),
            ],
            vec![remove_all("/foobar")],
            vec![],
        ]);
    }

    /// checkRemoveIntermediateSnapshot.
    pub fn remove_intermediate(c: &Ctx) {
        let base = c.key("base");
        c.prepare_mount(&base, None).unmount();
        let committed_base = c.key("committed-base");
        c.sn.commit(&committed_base, &base, opt())
            .expect("commit base");
        let intermediate = c.key("intermediate");
        c.sn.prepare(&intermediate, Some(&committed_base), opt())
            .expect("prepare intermediate");
        let committed_inter = c.key("committed-inter");
        c.sn.commit(&committed_inter, &intermediate, opt())
            .expect("commit intermediate");
        let top = c.key("toplayer");
        c.sn.prepare(&top, Some(&committed_inter), opt())
            .expect("prepare top");

        expect_err(
            c.sn.remove(&committed_inter),
            Class::FailedPrecondition,
            "remove intermediate",
        );
        expect_err(
            c.sn.remove(&committed_base),
            Class::FailedPrecondition,
            "remove base",
        );
        c.sn.remove(&top).expect("remove top");
        c.sn.remove(&committed_inter).expect("remove intermediate");
        c.sn.remove(&committed_base).expect("remove base");
        assert!(c.sn.walk(&[]).expect("walk").is_empty());
    }

    /// baseTestSnapshots.
    fn base_test_snapshots(c: &Ctx) {
        c.sn.prepare("c1-a", None, opt()).expect("c1-a");
        c.sn.commit("c1", "c1-a", opt()).expect("c1");
        c.sn.prepare("c2-a", Some("c1"), opt()).expect("c2-a");
        c.sn.commit("c2", "c2-a", opt()).expect("c2");
        c.sn.prepare("a1", Some("c2"), opt()).expect("a1");
        c.sn.prepare("a2", None, opt()).expect("a2");
        c.sn.view("v1", Some("c2"), opt()).expect("v1");
        c.sn.view("v2", None, opt()).expect("v2");
    }

    /// checkUpdate: times, immutable fields, `labels.<k>` and `labels` field paths.
    pub fn update(c: &Ctx) {
        let t1 = now_ns();
        base_test_snapshots(c);
        let t2 = now_ns();
        let cases: [(&str, Kind, Option<&str>); 6] = [
            ("c1", Kind::Committed, None),
            ("c2", Kind::Committed, Some("c1")),
            ("a1", Kind::Active, Some("c2")),
            ("a2", Kind::Active, None),
            ("v1", Kind::View, Some("c2")),
            ("v2", Kind::View, None),
        ];
        for (name, kind, parent) in cases {
            let mut st = c.sn.stat(name).expect("stat");
            assert!(
                t1 <= st.created_ns && st.created_ns <= t2,
                "{name}: created {} not in [{t1}, {t2}]",
                st.created_ns
            );
            assert_eq!(
                st.created_ns, st.updated_ns,
                "{name}: updated differs from created"
            );
            assert_eq!(st.kind, kind, "{name}");
            assert_eq!(st.parent.as_deref(), parent, "{name}");
            assert_eq!(st.key, name);

            let created = st.created_ns;
            let expected = labels(&[
                ("l1", "v1"),
                ("l2", "v2"),
                ("l3", "v3"),
                (GC_ROOT, "updated-root"),
            ]);
            st.parent = Some("doesnotexist".into());
            st.labels = expected.clone();
            let u1 = now_ns();
            let st = c.sn.update(st, &[]).expect("update");
            let u2 = now_ns();
            assert_eq!(st.created_ns, created, "{name}: created changed");
            assert!(
                u1 <= st.updated_ns && st.updated_ns <= u2,
                "{name}: updated {} not in [{u1}, {u2}]",
                st.updated_ns
            );
            assert_eq!(st.kind, kind, "{name}");
            assert_eq!(
                st.parent.as_deref(),
                parent,
                "{name}: the parent is immutable"
            );
            assert_eq!(st.key, name);
            assert_eq!(st.labels, expected, "{name}");

            let mut st = st;
            st.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
            let st =
                c.sn.update(st, &["labels.l1", "labels.l2"])
                    .expect("update labels.l1 labels.l2");
            assert_eq!(
                st.labels,
                labels(&[("l1", "updated"), ("l3", "v3"), (GC_ROOT, "updated-root")]),
                "{name}"
            );

            let mut st = st;
            let expected = labels(&[("l4", "v4"), (GC_ROOT, "updated-root")]);
            st.labels = expected.clone();
            let mut st = c.sn.update(st, &["labels"]).expect("update labels");
            assert_eq!(st.labels, expected, "{name}");
            assert_eq!(
                c.sn.stat(name).expect("stat").labels,
                expected,
                "{name}: stat after update"
            );

            st.parent = Some("doesnotexist".into());
            expect_err(
                c.sn.update(st, &["parent"]),
                Class::InvalidArgument,
                "update of the parent field",
            );
            let after = c.sn.stat(name).expect("stat");
            assert_eq!(after.parent.as_deref(), parent);
            assert_eq!(
                after.labels, expected,
                "{name}: a refused update changed the labels"
            );
        }
        let mut ghost = c.sn.stat("c1").expect("stat");
        ghost.key = "ghost".into();
        expect_err(
            c.sn.update(ghost, &[]),
            Class::NotFound,
            "update of a missing snapshot",
        );
    }

    /// checkRemove: keys and names are reusable after removal.
    pub fn remove(c: &Ctx) {
        c.sn.prepare("committed-a", None, opt()).expect("prepare");
        c.sn.commit("committed-1", "committed-a", opt())
            .expect("commit");
        c.sn.prepare("reuse-1", Some("committed-1"), opt())
            .expect("prepare reuse-1");
        c.sn.remove("reuse-1").expect("remove");
        c.sn.view("reuse-1", Some("committed-1"), opt())
            .expect("view reuse-1");
        c.sn.remove("reuse-1").expect("remove");
        c.sn.prepare("reuse-1", None, opt())
            .expect("prepare reuse-1 without parent");
        c.sn.remove("committed-1").expect("remove committed-1");
        c.sn.commit("committed-1", "reuse-1", opt())
            .expect("commit as committed-1 again");
        let si = c.sn.stat("committed-1").expect("stat");
        assert_eq!((si.kind, si.parent), (Kind::Committed, None));
        expect_err(
            c.sn.remove("reuse-1"),
            Class::NotFound,
            "remove of a committed key",
        );
        expect_err(
            c.sn.remove("never"),
            Class::NotFound,
            "remove of a missing key",
        );
    }

    /// checkWalk: the filter table.
    pub fn walk(c: &Ctx) {
        let o = labels(&[(GC_ROOT, "check-walk")]);
        let with = |l: &str| labels(&[("l", l), (GC_ROOT, "check-walk")]);
        c.sn.prepare("a-np", None, o.clone()).expect("a-np");
        c.sn.prepare("p-tmp", None, o.clone()).expect("p-tmp");
        c.sn.commit("p", "p-tmp", o.clone()).expect("p");
        c.sn.prepare("a", Some("p"), o.clone()).expect("a");
        c.sn.view("v", Some("p"), o.clone()).expect("v");
        c.sn.prepare("p-wl-tmp", None, o.clone()).expect("p-wl-tmp");
        c.sn.commit("p-wl", "p-wl-tmp", with("1")).expect("p-wl");
        c.sn.prepare("a-wl", Some("p-wl"), with("2")).expect("a-wl");
        c.sn.view("v-wl", Some("p-wl"), with("3")).expect("v-wl");
        c.sn.prepare("a-np-wl", None, with("2")).expect("a-np-wl");

        let table: &[(&[&str], &[&str])] = &[
            (
                &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
                &["labels.\"containerd.io/gc.root\"==check-walk"],
            ),
            (
                &["a-np", "a", "a-wl", "a-np-wl"],
                &["kind==active,labels.\"containerd.io/gc.root\"==check-walk"],
            ),
            (
                &["v", "v-wl"],
                &["kind==view,labels.\"containerd.io/gc.root\"==check-walk"],
            ),
            (
                &["p", "p-wl"],
                &["kind==committed,labels.\"containerd.io/gc.root\"==check-walk"],
            ),
            (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
            (&["a-wl"], &["name==a-wl,labels.l"]),
            (&["a", "v"], &["parent==p"]),
            (
                &["a", "v", "a-wl", "v-wl"],
                &["parent!=\"\",labels.\"containerd.io/gc.root\"==check-walk"],
            ),
            (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
            (&["a-wl", "a-np-wl"], &["labels.l==2"]),
        ];
        for (i, (matches, filters)) in table.iter().enumerate() {
            let mut want: Vec<&str> = matches.to_vec();
            want.sort_unstable();
            let got: Vec<String> =
                c.sn.walk(filters)
                    .expect("walk")
                    .into_iter()
                    .map(|i| i.key)
                    .collect();
            assert_eq!(got, want, "[{i}] filters {filters:?}");
        }
        expect_err(
            c.sn.walk(&["bogus==1"]),
            Class::InvalidArgument,
            "walk with a bad filter",
        );
    }

    /// issues.go checkLayerFileUpdate (docker#21555), five times across second boundaries.
    pub fn layer_file_update(c: &Ctx) {
        let l1 = vec![
            dir("/etc", 0o700),
            file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
            file("/etc/profile", b"PATH=/usr/bin", 0o644),
        ];
        let l2 = vec![
            file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
            file("/etc/profile", b"PATH=/usr/bin", 0o666),
            dir("/root", 0o700),
            file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
        ];
        for _ in 0..5 {
            c.check_snapshots(&[l1.clone(), l2.clone()]);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock");
            std::thread::sleep(std::time::Duration::from_nanos(
                1_000_000_000 - u64::from(now.subsec_nanos()),
            ));
        }
    }

    /// issues.go checkRemoveDirectoryInLowerLayer (docker#25244).
    pub fn remove_directory_in_lower_layer(c: &Ctx) {
        c.check_snapshots(&[
            vec![dir("/lib", 0o700), file("/lib/hidden", b"", 0o644)],
            vec![
                remove_all("/lib"),
                dir("/lib", 0o700),
                file("/lib/not-hidden", b"", 0o644),
            ],
            vec![file("/lib/newfile", b"", 0o644)],
        ]);
    }

    /// issues.go checkChown (docker#20240, #24913, #28391).
    pub fn chown(c: &Ctx) {
        if !need_root("chown to another uid needs root") {
            return;
        }
        c.check_snapshots(&[
            vec![
                dir("/opt", 0o700),
                dir("/opt/a", 0o700),
                dir("/opt/a/b", 0o700),
                file("/opt/a/b/file.txt", b"hello", 0o644),
            ],
            vec![
                super::chown("/opt", 1, 1),
                super::chown("/opt/a", 1, 1),
                super::chown("/opt/a/b", 1, 1),
                super::chown("/opt/a/b/file.txt", 1, 1),
            ],
        ]);
    }

    /// issues.go checkRename (docker#25409). As in containerd, overlay without redirect_dir
    /// cannot rename a lower directory, so the directory rename is vfs only.
    pub fn rename(c: &Ctx) {
        let l1 = vec![
            dir("/dir1", 0o700),
            dir("/somefiles", 0o700),
            file("/somefiles/f1", b"was here first!", 0o644),
            file("/somefiles/f2", b"nothing interesting", 0o644),
        ];
        let mut l2 = Vec::new();
        if c.driver != DriverKind::Overlay {
            l2.push(super::rename("/dir1", "/dir2"));
        }
        l2.extend([
            file("/somefiles/f1-overwrite", b"new content 1", 0o644),
            super::rename("/somefiles/f1-overwrite", "/somefiles/f1"),
            super::rename("/somefiles/f2", "/somefiles/f3"),
        ]);
        c.check_snapshots(&[l1, l2]);
    }

    /// issues.go checkDirectoryPermissionOnCommit (docker#27298).
    pub fn directory_permission_on_commit(c: &Ctx) {
        if !need_root("chown to another uid needs root") {
            return;
        }
        c.check_snapshots(&[
            vec![
                dir("/dir1", 0o700),
                dir("/dir2", 0o700),
                dir("/dir3", 0o700),
                dir("/dir4", 0o700),
                file("/dir4/f1", b"...", 0o644),
                dir("/dir5", 0o700),
                file("/dir5/f1", b"...", 0o644),
                super::chown("/dir1", 1, 1),
                super::chown("/dir2", 1, 1),
                super::chown("/dir3", 1, 1),
                super::chown("/dir5", 1, 1),
                super::chown("/dir5/f1", 1, 1),
            ],
            vec![
                super::chown("/dir2", 0, 0),
                remove_all("/dir3"),
                super::chown("/dir4", 1, 1),
                super::chown("/dir4/f1", 1, 1),
            ],
            vec![
                dir("/dir3", 0o700),
                super::chown("/dir3", 1, 1),
                remove_all("/dir5"),
                dir("/dir5", 0o700),
                super::chown("/dir5", 1, 1),
            ],
        ]);
    }

    /// testsuite.go checkFileFromLowerLayer (MoveFileFromLowerLayer): hardlink a lower file
    /// elsewhere, delete the original.
    pub fn file_from_lower_layer(c: &Ctx) {
        c.check_snapshots(&[
            vec![
                dir("/dir1", 0o700),
                file("/dir1/f1", b"Hello", 0o644),
                dir("dir2", 0o700),
                file("dir2/f2", b"...", 0o644),
            ],
            vec![
                dir("/dir3", 0o700),
                file("/dir3/f1", b"Hello", 0o644),
                remove_all("/dir1"),
                link("dir2/f2", "dir3/f2"),
                remove_all("dir2/f2"),
            ],
        ]);
    }

    /// checkSnapshotterViewReadonly: a view really mounts read-only (containerd#1368).
    pub fn view_readonly(c: &Ctx) {
        if !need_root("mounting a view needs root") {
            return;
        }
        for depth in [1usize, 2] {
            // depth 2: a view of a chain (an overlay mount on the overlay driver).
            let mut parent: Option<String> = None;
            for i in 0..depth {
                let preparing = c.key(&format!("preparing-{depth}-{i}"));
                let m = c.prepare_mount(&preparing, parent.as_deref());
                std::fs::write(m.path().join(format!("f{i}")), b"x").expect("write");
                m.unmount();
                let committed = c.key(&format!("committed-{depth}-{i}"));
                c.sn.commit(&committed, &preparing, opt()).expect("commit");
                parent = Some(committed);
            }
            let view = c.key(&format!("view-{depth}"));
            let mounts = c.sn.view(&view, parent.as_deref(), opt()).expect("view");
            let m = Mounted::must(&mounts, &c.work);
            let written = std::fs::write(m.path().join("testfile"), b"testcontent");
            let err = written.expect_err("a write into a view must fail (EROFS)");
            assert_eq!(
                err.raw_os_error(),
                Some(libc::EROFS),
                "write into a view: {err}"
            );
            assert_eq!(
                std::fs::read(m.path().join("f0")).expect("read through the view"),
                b"x"
            );
            m.unmount();
            c.sn.remove(&view).expect("remove view");
            // Nothing leaked into the committed trees either.
            let check =
                c.sn.view(&view, parent.as_deref(), opt())
                    .expect("view again");
            let m = Mounted::must(&check, &c.work);
            assert!(!m.path().join("testfile").exists());
            m.unmount();
            c.sn.remove(&view).expect("remove view");
        }
    }

    /// issues.go checkStatInWalk: what walk reports equals what stat reports.
    pub fn stat_in_walk(c: &Ctx) {
        let prefix = "stats-in-walk-";
        c.sn.prepare(&format!("{prefix}c1-a"), None, opt())
            .expect("prepare");
        c.sn.commit(&format!("{prefix}c1"), &format!("{prefix}c1-a"), opt())
            .expect("commit");
        c.sn.prepare(
            &format!("{prefix}c2-a"),
            Some(&format!("{prefix}c1")),
            opt(),
        )
        .expect("prepare");
        c.sn.commit(&format!("{prefix}c2"), &format!("{prefix}c2-a"), opt())
            .expect("commit");
        c.sn.prepare(&format!("{prefix}a1"), Some(&format!("{prefix}c2")), opt())
            .expect("prepare");
        c.sn.view(&format!("{prefix}v1"), Some(&format!("{prefix}c2")), opt())
            .expect("view");
        let walked = c.sn.walk(&[]).expect("walk");
        assert_eq!(walked.len(), 4);
        for si in walked {
            let si2: Info = c.sn.stat(&si.key).expect("stat");
            assert_eq!(si, si2);
        }
    }

    /// closeTwice: both closes succeed; the handle is unusable afterwards.
    pub fn close_twice(c: &Ctx) {
        let n = c.next_name("closeTwice");
        let prepare = format!("{n}-prepare");
        c.sn.prepare(&prepare, None, opt()).expect("prepare");
        c.sn.commit(&n, &prepare, opt()).expect("commit");
        c.sn.remove(&n).expect("remove");
        c.closed.set(true);
        c.sn.clone().close().expect("first close");
        c.sn.clone().close().expect("second close");
        match c.sn.stat(&n) {
            Err(cairn_engine::EngineError::ShutDown) => {}
            other => panic!("a call after close answered {other:?}"),
        }
    }

    /// checkRootPermission: the root of a new snapshot is 0755 even with umask 0.
    pub fn root_permission(c: &Ctx) {
        use std::os::unix::fs::PermissionsExt;
        let m = c.prepare_mount(&c.key("preparing"), None);
        let mode = std::fs::metadata(m.path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        m.unmount();
        assert_eq!(mode, 0o755, "expected 0755, got 0{mode:o}");
    }

    /// check128LayersMount: each layer equals the flat directory before and after its changes,
    /// and a view of the top layer (128 lowerdirs on overlay) equals it too.
    pub fn layers_128_mount(c: &Ctx) {
        let mut appliers = vec![vec![
            file("/bottom", b"way at the bottom\n", 0o777),
            file("/overwriteme", b"FIRST!\n", 0o777),
            dir("/addhere", 0o755),
            dir("/onlyme", 0o755),
            file("/onlyme/bottom", b"bye!\n", 0o777),
        ]];
        for i in 1..=127 {
            appliers.push(vec![
                file("/overwriteme", format!("{i} WAS HERE!\n").as_bytes(), 0o777),
                file(&format!("/addhere/file-{i}"), b"same\n", 0o755),
                remove_all("/onlyme"),
                dir("/onlyme", 0o755),
                file(&format!("/onlyme/file-{i}"), b"only me!\n", 0o777),
            ]);
        }
        let flat = c.flat(&[]);
        let mut parent: Option<String> = None;
        for (i, ops) in appliers.iter().enumerate() {
            let preparing = c.key(&format!("prepare-layer-{i}"));
            let m = c.prepare_mount(&preparing, parent.as_deref());
            assert_same_tree(flat.path(), m.path(), &format!("layer {i} before apply"));
            apply(flat.path(), ops).expect("apply to flat");
            apply(m.path(), ops).expect("apply to layer");
            assert_same_tree(flat.path(), m.path(), &format!("layer {i} after apply"));
            m.unmount();
            let committed = c.key(&format!("committed-{i}"));
            c.sn.commit(&committed, &preparing, opt()).expect("commit");
            parent = Some(committed);
        }
        let view = c.key("fullview");
        let mounts = c.sn.view(&view, parent.as_deref(), opt()).expect("view");
        if c.driver == DriverKind::Overlay {
            assert_eq!(mounts[0].kind, "overlay");
            let lower = mounts[0]
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .expect("lowerdir");
            assert_eq!(lower.split(':').count(), 128, "one lowerdir per layer");
        }
        let m = Mounted::must(&mounts, &c.work);
        assert_same_tree(flat.path(), m.path(), "full view");
        assert_eq!(
            std::fs::read(m.path().join("bottom")).expect("bottom layer's file"),
            b"way at the bottom\n"
        );
        assert_eq!(
            std::fs::read(m.path().join("overwriteme")).expect("top"),
            b"127 WAS HERE!\n"
        );
        assert!(
            !m.path().join("onlyme/bottom").exists(),
            "deleted in layer 1"
        );
        m.unmount();
    }

    /// Error classes containerd's metadata store gives (core/snapshots/storage/bolt.go),
    /// including which check comes first when several fail.
    pub fn error_classes(c: &Ctx) {
        c.sn.prepare("base-a", None, opt()).expect("prepare");
        c.sn.commit("base", "base-a", opt()).expect("commit");
        c.sn.prepare("active", Some("base"), opt())
            .expect("prepare");
        c.sn.view("view", Some("base"), opt()).expect("view");

        expect_err(c.sn.stat("missing"), Class::NotFound, "stat missing");
        expect_err(c.sn.usage("missing"), Class::NotFound, "usage missing");
        expect_err(c.sn.mounts("missing"), Class::NotFound, "mounts missing");
        expect_err(c.sn.remove("missing"), Class::NotFound, "remove missing");
        expect_err(
            c.sn.prepare("x", Some("missing"), opt()),
            Class::NotFound,
            "prepare on a missing parent",
        );
        expect_err(
            c.sn.view("x", Some("missing"), opt()),
            Class::NotFound,
            "view of a missing parent",
        );
        expect_err(
            c.sn.prepare("x", Some("active"), opt()),
            Class::InvalidArgument,
            "prepare on an active parent",
        );
        expect_err(
            c.sn.view("x", Some("view"), opt()),
            Class::InvalidArgument,
            "view of a view",
        );
        expect_err(
            c.sn.prepare("x", Some(""), opt()),
            Class::NotFound,
            "prepare on an empty-named parent",
        );
        expect_err(
            c.sn.prepare("", None, opt()),
            Class::InvalidArgument,
            "prepare with an empty key",
        );
        // The parent is checked before the key (bolt.go CreateSnapshot).
        expect_err(
            c.sn.prepare("active", Some("missing"), opt()),
            Class::NotFound,
            "existing key, missing parent",
        );
        expect_err(
            c.sn.prepare("active", Some("view"), opt()),
            Class::InvalidArgument,
            "existing key, view parent",
        );
        expect_err(
            c.sn.prepare("active", Some("base"), opt()),
            Class::AlreadyExists,
            "existing key",
        );
        expect_err(
            c.sn.view("base", None, opt()),
            Class::AlreadyExists,
            "view over a committed name",
        );

        // Commit: the name first, then the key, then its kind (bolt.go CommitActive).
        expect_err(
            c.sn.commit("base", "missing", opt()),
            Class::AlreadyExists,
            "commit to a taken name",
        );
        expect_err(
            c.sn.commit("new", "missing", opt()),
            Class::NotFound,
            "commit of a missing key",
        );
        expect_err(
            c.sn.commit("new", "view", opt()),
            Class::FailedPrecondition,
            "commit of a view",
        );
        expect_err(
            c.sn.commit("new", "base", opt()),
            Class::FailedPrecondition,
            "commit of a committed",
        );
        expect_err(
            c.sn.commit("view", "active", opt()),
            Class::AlreadyExists,
            "commit onto a view's key",
        );

        // Mounts exist for Active and View only (bolt.go GetSnapshot).
        expect_err(
            c.sn.mounts("base"),
            Class::FailedPrecondition,
            "mounts of a committed snapshot",
        );
        assert!(!c
            .sn
            .mounts("active")
            .expect("mounts of an active")
            .is_empty());
        assert!(!c.sn.mounts("view").expect("mounts of a view").is_empty());

        // containerd's labels.Validate: key and value together at most 4096 bytes.
        let at_limit = labels(&[("k", &"v".repeat(4095))]);
        let over = labels(&[("k", &"v".repeat(4096))]);
        expect_err(
            c.sn.prepare("big", None, over.clone()),
            Class::InvalidArgument,
            "prepare with a too long label",
        );
        expect_err(
            c.sn.view("big", Some("base"), over.clone()),
            Class::InvalidArgument,
            "view with a too long label",
        );
        expect_err(
            c.sn.commit("big", "active", over.clone()),
            Class::InvalidArgument,
            "commit with a too long label",
        );
        let mut info = c.sn.stat("active").expect("stat");
        info.labels = over;
        expect_err(
            c.sn.update(info.clone(), &[]),
            Class::InvalidArgument,
            "update with a too long label",
        );
        info.labels = at_limit;
        assert_eq!(
            c.sn.update(info, &["labels.k"])
                .expect("update at the limit")
                .labels["k"]
                .len(),
            4095
        );
        let mut info = c.sn.stat("active").expect("stat");
        info.labels = opt();
        c.sn.update(info, &["labels"]).expect("restore labels");
        expect_err(
            c.sn.remove("base"),
            Class::FailedPrecondition,
            "remove with children",
        );
        let mut info = c.sn.stat("active").expect("stat");
        info.labels = labels(&[("k", "v")]);
        expect_err(
            c.sn.update(info.clone(), &["kind"]),
            Class::InvalidArgument,
            "update kind",
        );
        expect_err(
            c.sn.update(info, &["labels.k", "name"]),
            Class::InvalidArgument,
            "update name",
        );
        assert_eq!(
            c.sn.stat("active").expect("stat").labels,
            opt(),
            "a refused update changed nothing"
        );
        assert_eq!(c.sn.walk(&[]).expect("walk").len(), 3);
    }

    /// Usage of a committed snapshot is its own tree, recorded at commit: overlay counts only
    /// its diff, vfs its full copy; an active one is measured when asked.
    pub fn usage(c: &Ctx) {
        let m = c.prepare_mount("base-a", None);
        apply(
            m.path(),
            &[
                dir("/d", 0o755),
                file("/d/five", b"12345", 0o644),
                file("/three", b"abc", 0o644),
            ],
        )
        .expect("apply");
        m.unmount();
        c.sn.commit("base", "base-a", opt()).expect("commit");
        let u = c.sn.usage("base").expect("usage");
        // root + d + two files
        assert_eq!((u.size_bytes, u.inodes), (8, 4), "base");

        let m = c.prepare_mount("child-a", Some("base"));
        std::fs::write(m.path().join("ten"), b"0123456789").expect("write");
        let active = c.sn.usage("child-a").expect("usage of an active");
        std::fs::write(m.path().join("seven"), b"0123456").expect("write");
        let active2 = c.sn.usage("child-a").expect("usage of an active");
        m.unmount();
        assert_eq!(
            active2.size_bytes,
            active.size_bytes + 7,
            "an active's usage is measured when asked"
        );
        assert_eq!(active2.inodes, active.inodes + 1);
        c.sn.commit("child", "child-a", opt()).expect("commit");
        let u = c.sn.usage("child").expect("usage");
        let want = match c.driver {
            DriverKind::Overlay => (17, 3),
            DriverKind::Vfs => (25, 6),
            // Not run on block (its usage is the image's allocated bytes): see driver_block.rs.
            DriverKind::Block => return,
        };
        assert_eq!((u.size_bytes, u.inodes), want, "child");
        assert_eq!(
            c.sn.usage("base").expect("usage").size_bytes,
            8,
            "the parent's usage is unchanged"
        );
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod vfs {
            $( #[test] fn $case() { super::run(cairn_state::types::DriverKind::Vfs, super::cases::$case) } )*
        }
        mod overlay {
            $( #[test] fn $case() { super::run(cairn_state::types::DriverKind::Overlay, super::cases::$case) } )*
        }
    };
}

/// The block driver runs every case but `usage` (it reports an image's allocated bytes,
/// checked in cairn-driver's driver_block.rs).
macro_rules! block_suite {
    ($($case:ident),* $(,)?) => {
        mod block {
            $( #[test] fn $case() { super::run(cairn_state::types::DriverKind::Block, super::cases::$case) } )*
        }
    };
}

block_suite!(
    basic,
    stat_active,
    stat_committed,
    transitivity,
    prepare_view,
    deleted_files_in_child,
    remove_intermediate,
    update,
    remove,
    walk,
    layer_file_update,
    remove_directory_in_lower_layer,
    chown,
    rename,
    directory_permission_on_commit,
    file_from_lower_layer,
    view_readonly,
    stat_in_walk,
    close_twice,
    root_permission,
    layers_128_mount,
    error_classes,
);

suite!(
    basic,
    stat_active,
    stat_committed,
    transitivity,
    prepare_view,
    deleted_files_in_child,
    remove_intermediate,
    update,
    remove,
    walk,
    layer_file_update,
    remove_directory_in_lower_layer,
    chown,
    rename,
    directory_permission_on_commit,
    file_from_lower_layer,
    view_readonly,
    stat_in_walk,
    close_twice,
    root_permission,
    layers_128_mount,
    error_classes,
    usage,
);

#[test]
fn overlay_really_runs_as_root() {
    // The house rule: overlay variants must run where they can. Fail loudly if a root run
    // could not open an overlay root (it would otherwise look like a skip).
    if !need_root("overlay availability check needs root") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let sn = open(&tmp.path().join("root"), DriverKind::Overlay);
    sn.close().expect("close");
}
