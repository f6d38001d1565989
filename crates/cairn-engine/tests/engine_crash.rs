//! Crash at every durable step.
//!
//! For each workload (one command kind, repeated) the parent first runs the child in trace
//! mode, counting how often each failpoint is passed; then for a few hit counts k of every
//! failpoint passed it runs the child with `FAILPOINTS="<name>=<k>*off->panic"`, the child's
//! panic hook aborting the process on the panic like a power cut of the process. The parent
//! reopens and checks the acknowledgement log against the root (see `crashkit`). Every
//! failpoint in the source must be reached by some workload.
//!
//! The block driver's roots are on a loop-mounted xfs with reflink made by its test (root);
//! after every recovery no mount and no loop device is left on anything under the root.
//!
//! Run: `cargo test --features failpoints --test engine_crash`.

#[cfg(feature = "failpoints")]
mod crashkit;

#[cfg(not(feature = "failpoints"))]
#[test]
fn crash_at_every_failpoint() {
    println!("skipped: build with --features failpoints");
}

#[cfg(feature = "failpoints")]
mod crash {
    use super::crashkit::*;
    use cairn_engine::Engine;
    use cairn_state::types::{DriverKind, Kind, SnapshotId};
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    const CHILD_ENV: &str = "CAIRN_CRASH_MODE";

    fn p(key: &str, parent: Option<&str>) -> Op {
        Op::Prepare {
            key: key.into(),
            parent: parent.map(Into::into),
            view: false,
            labels: labels(&[("k", key)]),
        }
    }
    fn v(key: &str, parent: Option<&str>) -> Op {
        Op::Prepare {
            key: key.into(),
            parent: parent.map(Into::into),
            view: true,
            labels: labels(&[]),
        }
    }
    fn w(key: &str, file: &str) -> Op {
        let data = format!("{key}/{file}: ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(3000)
            .collect();
        Op::Write {
            key: key.into(),
            file: file.into(),
            data,
        }
    }
    /// A file over the inline seal's limit (`cairn_driver::INLINE_SEAL_MAX_BYTES`): the
    /// commit of its snapshot is sealed by a worker (marker rewrite and all), not inline.
    fn wbig(key: &str, file: &str) -> Op {
        let data = format!("{key}/{file}: ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(cairn_driver::INLINE_SEAL_MAX_BYTES as usize + 4096)
            .collect();
        Op::Write {
            key: key.into(),
            file: file.into(),
            data,
        }
    }
    fn c(name: &str, key: &str) -> Op {
        Op::Commit {
            name: name.into(),
            key: key.into(),
            labels: labels(&[("committed", name)]),
        }
    }
    fn rm(key: &str) -> Op {
        Op::Remove { key: key.into() }
    }
    fn up(key: &str, val: &str) -> Op {
        Op::Update {
            key: key.into(),
            labels: labels(&[("v", val)]),
        }
    }

    /// The layers the workloads import: name -> parent name.
    fn layer_parent(name: &str) -> Option<&'static str> {
        match name {
            "L1" => Some("L0"),
            "L2" => Some("L1"),
            "T1" => Some("B0"),
            "P1" => Some("P0"),
            "P2" => Some("P1"),
            "P3" => Some("P2"),
            _ => None,
        }
    }

    /// A layer's entries: a few files, and on a parent a whiteout of one of its files.
    fn layer_entries(name: &str) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| {
                let data = format!("{name} file {i} ")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(700 * (i + 1))
                    .collect();
                (format!("{name}/d{i}/f{i}"), data)
            })
            .collect();
        out.push((format!("etc/{name}.conf"), name.as_bytes().to_vec()));
        if let Some(p) = layer_parent(name) {
            out.push((format!("{p}/d1/.wh.f1"), Vec::new()));
        }
        out
    }

    fn chain(name: &str) -> String {
        let parent = layer_parent(name).map(chain);
        layer_ids(&layer_tar(&layer_entries(name)), parent.as_deref()).1
    }

    fn imp(name: &str, pin: bool) -> Op {
        let parent = layer_parent(name);
        Op::ImportLayer {
            name: name.into(),
            parent: parent.map(Into::into),
            parent_chain: parent.map(chain),
            entries: layer_entries(name),
            pin,
        }
    }
    /// The layers `names` (base first) imported as a parallel image load does (overlay).
    fn chain_imp(names: &[&str]) -> Op {
        Op::ImportChain {
            layers: names.iter().map(|n| imp(n, true)).collect(),
        }
    }
    fn lrm(name: &str) -> Op {
        Op::RemoveLayer { chain: chain(name) }
    }
    fn img(image: &str, top: &str) -> Op {
        Op::PutImage {
            image: image.into(),
            top: chain(top),
        }
    }
    fn irm(image: &str) -> Op {
        Op::RemoveImage {
            image: image.into(),
        }
    }
    fn ctr(name: &str, image: &str) -> Op {
        Op::CreateContainer {
            name: name.into(),
            image: image.into(),
        }
    }
    fn crm(name: &str) -> Op {
        Op::RemoveContainer { name: name.into() }
    }

    /// A root with a committed base, an active child of it and a view of it.
    fn base_setup() -> Vec<Op> {
        vec![
            p("base-a", None),
            w("base-a", "f1"),
            w("base-a", "f2"),
            c("base", "base-a"),
            p("act", Some("base")),
            w("act", "a1"),
            v("v0", Some("base")),
        ]
    }

    #[derive(Clone, Debug)]
    struct Workload {
        name: String,
        setup: Vec<Op>,
        focus: Vec<Op>,
        checkpoint_every: u64,
        /// Arm the failpoints before opening (crash inside recovery or root creation).
        arm_before_open: bool,
        /// Start from no root at all.
        fresh: bool,
        /// Crash once at this failpoint before the workload (leaving recovery work to do).
        prior: Option<(Vec<Op>, String)>,
    }

    fn workload(name: &str, extra_setup: Vec<Op>, focus: Vec<Op>) -> Workload {
        let mut setup = base_setup();
        setup.extend(extra_setup);
        Workload {
            name: name.into(),
            setup,
            focus,
            checkpoint_every: 10_000,
            arm_before_open: false,
            fresh: false,
            prior: None,
        }
    }

    fn workloads() -> Vec<Workload> {
        let mut out = vec![
            workload(
                "prepare",
                vec![],
                vec![p("p0", None), w("p0", "x"), p("p1", None), p("p2", None)],
            ),
            workload(
                "prepare_parent",
                vec![],
                vec![
                    p("q0", Some("base")),
                    w("q0", "x"),
                    p("q1", Some("base")),
                    p("q2", Some("base")),
                ],
            ),
            workload(
                "view",
                vec![],
                vec![v("v1", Some("base")), v("v2", None), v("v3", Some("base"))],
            ),
            workload(
                "commit",
                vec![
                    p("c0", Some("base")),
                    w("c0", "c"),
                    p("c1", None),
                    w("c1", "c"),
                    p("c2", Some("base")),
                ],
                vec![c("C0", "c0"), c("C1", "c1"), c("C2", "c2")],
            ),
            // Commits sealed by a worker (trees over the inline limit), one beside an inline one.
            workload(
                "commit_big",
                vec![
                    p("g0", None),
                    wbig("g0", "g"),
                    p("g1", Some("base")),
                    wbig("g1", "g"),
                    p("g2", None),
                ],
                vec![c("G0", "g0"), c("G1", "g1"), c("G2", "g2")],
            ),
            workload(
                "remove",
                vec![
                    p("r0", None),
                    w("r0", "r"),
                    c("R0", "r0"),
                    p("r1", Some("base")),
                    v("r2", Some("base")),
                ],
                vec![rm("R0"), rm("r1"), rm("r2"), rm("act")],
            ),
            workload(
                "update",
                vec![],
                vec![
                    up("base", "1"),
                    up("act", "2"),
                    up("v0", "3"),
                    up("base", "4"),
                ],
            ),
            workload(
                "checkpoint",
                vec![],
                vec![
                    up("base", "1"),
                    Op::Checkpoint,
                    up("act", "2"),
                    Op::Checkpoint,
                    p("k0", None),
                    Op::Checkpoint,
                ],
            ),
            workload(
                "close",
                vec![],
                vec![up("base", "1"), p("k0", Some("base")), Op::Close],
            ),
        ];
        out.extend([
            workload(
                "import",
                vec![],
                vec![
                    imp("L0", true),
                    imp("L1", true),
                    imp("L1", true),
                    imp("L2", true),
                ],
            ),
            // Overlay only (vfs copies the parent, so it refuses detached imports).
            workload(
                "import_parallel",
                vec![],
                vec![
                    chain_imp(&["P0", "P1", "P2"]),
                    chain_imp(&["P0", "P1", "P2", "P3"]),
                ],
            ),
            workload(
                "layer_rm_cascade",
                vec![imp("B0", true)],
                vec![imp("T1", false), img("img", "T1"), irm("img"), lrm("B0")],
            ),
            workload(
                "image",
                vec![imp("L0", true), imp("L1", true)],
                vec![
                    img("i1", "L1"),
                    img("i2", "L0"),
                    img("i1", "L0"),
                    irm("i2"),
                    lrm("L1"),
                    irm("i1"),
                ],
            ),
            workload(
                "container",
                vec![imp("L0", true), imp("L1", false), img("i1", "L1")],
                vec![
                    ctr("c1", "i1"),
                    ctr("c2", "i1"),
                    irm("i1"),
                    crm("c1"),
                    crm("c2"),
                ],
            ),
        ]);
        let mut auto = workload(
            "auto_checkpoint",
            vec![],
            vec![
                p("m0", Some("base")),
                w("m0", "m"),
                c("M0", "m0"),
                up("M0", "1"),
                rm("v0"),
                p("m1", Some("M0")),
                rm("m1"),
                v("m2", None),
            ],
        );
        auto.checkpoint_every = 3;
        out.push(auto);
        out.push(Workload {
            name: "open_fresh".into(),
            setup: vec![],
            focus: vec![p("o0", None), Op::Close],
            checkpoint_every: 10_000,
            arm_before_open: true,
            fresh: true,
            prior: None,
        });
        // Recovery with work to do, interrupted: the prior crash leaves a pending create, a
        // completed create still in staging, an inline creation's unjournaled tree, a removal
        // in trash, or a pending commit.
        for (tag, prior_focus, fp) in [
            (
                "pending_create",
                vec![p("x0", Some("base"))],
                "driver::stage::after_dir_sync",
            ),
            (
                "staged_install",
                vec![p("x0", Some("base"))],
                "engine::effect::before_install",
            ),
            // An inline creation (no copy, both drivers): its tree durable in snapshots/<id>,
            // nothing journaled yet (row R40).
            (
                "inline_create",
                vec![p("x1", None)],
                "driver::create::after_sync",
            ),
            ("trash", vec![rm("act")], "driver::remove::after_rename"),
            // A worker's seal (a tree over the inline limit): its BeginCommit journaled, the
            // new marker durable, no completion (rows R17, R23's neighbour).
            (
                "pending_commit",
                vec![wbig("act", "big"), c("X", "act")],
                "driver::seal::after_marker",
            ),
            // An inline seal: the tree durable, nothing of the commit journaled yet.
            (
                "inline_commit",
                vec![c("X", "act")],
                "driver::seal::after_sync",
            ),
            (
                "pending_import",
                vec![imp("L0", true), imp("L1", true)],
                "engine::import::after_tree_sync",
            ),
            // Several detached imports in flight, some staged and durable (row R41).
            (
                "pending_parallel_import",
                vec![chain_imp(&["P0", "P1", "P2"])],
                "engine::import::after_tree_sync",
            ),
            (
                "import_install",
                vec![imp("L0", true)],
                "engine::effect::before_install",
            ),
        ] {
            let mut wl = workload(
                &format!("recover_{tag}"),
                vec![],
                vec![up("base", "r"), Op::Close],
            );
            wl.arm_before_open = true;
            wl.prior = Some((prior_focus, fp.to_owned()));
            out.push(wl);
        }
        out
    }

    fn driver_name(d: DriverKind) -> &'static str {
        d.name()
    }

    /// The child: run `setup` (mode setup) or the focus (modes trace and crash) of a workload.
    #[test]
    fn child() {
        let Ok(mode) = std::env::var(CHILD_ENV) else {
            return;
        };
        std::panic::set_hook(Box::new(|info| {
            eprintln!("child panic: {info}");
            std::process::abort();
        }));
        let name = std::env::var("CAIRN_CRASH_WORKLOAD").expect("workload");
        let root = std::path::PathBuf::from(std::env::var("CAIRN_CRASH_ROOT").expect("root"));
        let log = AckLog::open(Path::new(&std::env::var("CAIRN_CRASH_LOG").expect("log")));
        let driver = match std::env::var("CAIRN_CRASH_DRIVER").as_deref() {
            Ok("overlay") => DriverKind::Overlay,
            Ok("btrfs") => DriverKind::Btrfs,
            Ok("block") => DriverKind::Block,
            _ => DriverKind::Vfs,
        };
        let mut wl = workloads()
            .into_iter()
            .find(|w| w.name == name)
            .expect("known workload");
        if mode == "prior" {
            let (focus, _) = wl.prior.take().expect("prior");
            wl.focus = focus;
            wl.arm_before_open = false;
        }
        let mut opts = options(driver);
        opts.checkpoint_every_records = wl.checkpoint_every;
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let arm = || match mode.as_str() {
            "trace" => {
                for fp in all_failpoints() {
                    let counts = Arc::clone(&counts);
                    let key = fp.clone();
                    fail::cfg_callback(fp, move || {
                        *counts
                            .lock()
                            .expect("counts")
                            .entry(key.clone())
                            .or_default() += 1
                    })
                    .expect("cfg callback");
                }
            }
            "crash" | "prior" => std::mem::forget(fail::FailScenario::setup()),
            _ => {}
        };
        if wl.arm_before_open {
            arm();
        }
        let (h, _) = Engine::open(&root, opts).expect("open");
        if mode == "setup" {
            for op in &wl.setup {
                log.begin(0, op);
                exec(&h, op).unwrap_or_else(|e| panic!("setup {op:?}: {e}"));
                log.ack(0, op);
            }
            h.close().expect("close");
            return;
        }
        if !wl.arm_before_open {
            arm();
        }
        let mut h = Some(h);
        for op in &wl.focus {
            log.begin(0, op);
            if *op == Op::Close {
                h.take().expect("open").close().expect("close");
            } else {
                exec(h.as_ref().expect("open"), op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
            }
            log.ack(0, op);
        }
        if mode == "trace" {
            println!(
                "TRACE {}",
                serde_json::to_string(&*counts.lock().expect("counts")).expect("json")
            );
        }
        // Leave without a clean shutdown when the workload did not ask for one.
        std::process::exit(0);
    }

    enum Outcome {
        Completed(String),
        Crashed,
    }

    fn run_child(
        mode: &str,
        wl: &Workload,
        driver: DriverKind,
        root: &Path,
        log: &Path,
        fp: Option<String>,
    ) -> Outcome {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.args(["--exact", "crash::child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .env("CAIRN_CRASH_WORKLOAD", &wl.name)
            .env("CAIRN_CRASH_ROOT", root)
            .env("CAIRN_CRASH_LOG", log)
            .env("CAIRN_CRASH_DRIVER", driver_name(driver))
            .env_remove("FAILPOINTS");
        if let Some(fp) = &fp {
            cmd.env("FAILPOINTS", fp);
        }
        if driver == DriverKind::Block {
            // Small images: every case's root is a (reflinked) copy of the template's.
            cmd.env("CAIRN_BLOCK_SIZE_BYTES", BLOCK_IMAGE_BYTES.to_string());
        }
        let out = cmd.output().expect("run child");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return Outcome::Completed(stdout);
        }
        let failpoint_panic = fp
            .as_deref()
            .and_then(|f| f.split('=').next())
            .is_some_and(|name| stderr.contains(&format!("failpoint {name} panic")));
        assert!(
            out.status.signal() == Some(libc::SIGABRT) && failpoint_panic,
            "child {mode} {} ({fp:?}) failed other than at its failpoint: {:?}\n{stderr}",
            wl.name,
            out.status
        );
        Outcome::Crashed
    }

    fn actions(k: u64) -> String {
        if k == 0 {
            "panic".into()
        } else {
            format!("{k}*off->panic")
        }
    }

    /// Prepare the workload's starting root in `dir/template`; returns it and the model.
    fn template(
        wl: &Workload,
        driver: DriverKind,
        dir: &Path,
    ) -> (std::path::PathBuf, Model, Vec<Op>) {
        let root = dir.join("template");
        let log = dir.join("template.log");
        let mut model = Model::new(driver);
        let mut inflight = Vec::new();
        if wl.fresh {
            return (root, model, inflight);
        }
        assert!(matches!(
            run_child("setup", wl, driver, &root, &log, None),
            Outcome::Completed(_)
        ));
        if let Some((_, fp)) = &wl.prior {
            let crashed = run_child(
                "prior",
                wl,
                driver,
                &root,
                &log,
                Some(format!("{fp}=panic")),
            );
            assert!(
                matches!(crashed, Outcome::Crashed),
                "{}: prior crash at {fp} not reached",
                wl.name
            );
        }
        let view = read_log(&log);
        for op in &view.acked {
            model.apply(op);
        }
        inflight.extend(view.inflight);
        (root, model, inflight)
    }

    /// Run one workload at every failpoint it passes; returns the failpoints that crashed it.
    fn run_workload(wl: &Workload, driver: DriverKind, max_ks: usize) -> BTreeSet<String> {
        let tmp = match BLOCK_XFS.get() {
            // The block driver's roots live on the test's xfs with reflink.
            Some(xfs) if driver == DriverKind::Block => cairn_loopfs::Scratch::Plain(
                tempfile::Builder::new()
                    .prefix("crash-")
                    .tempdir_in(xfs)
                    .expect("scratch dir on xfs"),
            ),
            _ => cairn_loopfs::Scratch::new(driver == DriverKind::Btrfs, "crash-")
                .expect("scratch dir"),
        };
        let (template, model, prior_inflight) = template(wl, driver, tmp.path());
        let case_root = |name: &str| {
            let root = tmp.path().join(name);
            if template.exists() {
                copy_dir(&template, &root);
            }
            let log = tmp.path().join(format!("{name}.log"));
            if tmp.path().join("template.log").exists() {
                std::fs::copy(tmp.path().join("template.log"), &log).expect("copy log");
            }
            (root, log)
        };
        let (root, log) = case_root("trace");
        let Outcome::Completed(stdout) = run_child("trace", wl, driver, &root, &log, None) else {
            unreachable!("trace never crashes")
        };
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("TRACE ").map(|(_, j)| j))
            .expect("trace line");
        let counts: BTreeMap<String, u64> = serde_json::from_str(line).expect("trace json");
        let mut covered = BTreeSet::new();
        let mut cases = 0;
        for (fp, &n) in &counts {
            let mut ks: Vec<u64> = [0, n / 2, n.saturating_sub(1)]
                .into_iter()
                .filter(|k| *k < n)
                .collect();
            ks.sort_unstable();
            ks.dedup();
            ks.truncate(max_ks);
            for k in ks {
                cases += 1;
                let name = format!("case{cases}");
                let (root, log) = case_root(&name);
                let spec = format!("{fp}={}", actions(k));
                let outcome = run_child("crash", wl, driver, &root, &log, Some(spec.clone()));
                if matches!(outcome, Outcome::Crashed) {
                    covered.insert(fp.clone());
                }
                let view = read_log(&log);
                let mut m = model.clone();
                for op in &view.acked {
                    m.apply(op);
                }
                // The prior crash's in-flight operation is still undecided until recovery ran.
                let mut inflight = view.inflight.clone();
                for op in &prior_inflight {
                    if !view.acked.contains(op) && !inflight.contains(op) {
                        inflight.push(op.clone());
                    }
                }
                let result =
                    std::panic::catch_unwind(|| check_after_crash(&root, driver, &m, &inflight));
                if let Err(e) = result {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                    panic!(
                        "{} [{}] crash at {spec}: {}",
                        wl.name,
                        driver_name(driver),
                        msg.unwrap_or_default()
                    );
                }
                let _ = std::fs::remove_dir_all(&root);
            }
        }
        println!(
            "{} [{}]: {cases} crash cases, crashed at {} failpoints",
            wl.name,
            driver_name(driver),
            covered.len()
        );
        covered
    }

    /// The creation a workload's prior crash interrupts, when it crashes inside one: its kind,
    /// whether it is on a parent, and whether the failpoint needs it made inline (`true`:
    /// `driver::create::`) or staged (`false`: `driver::stage::`, an install's).
    fn prior_creation(wl: &Workload) -> Option<(Kind, bool, bool)> {
        let (focus, fp) = wl.prior.as_ref()?;
        let [Op::Prepare { parent, view, .. }] = focus.as_slice() else {
            return None;
        };
        let inline = if fp.starts_with("driver::create::") {
            true
        } else if fp.starts_with("driver::stage::") || fp == "engine::effect::before_install" {
            false
        } else {
            return None;
        };
        let kind = if *view { Kind::View } else { Kind::Active };
        Some((kind, parent.is_some(), inline))
    }

    /// A driver of `driver`'s kind on a scratch root (where that driver's roots live), to ask
    /// it how it makes trees.
    fn probe_driver(driver: DriverKind) -> (cairn_loopfs::Scratch, Box<dyn cairn_driver::Driver>) {
        let tmp = match BLOCK_XFS.get() {
            Some(xfs) if driver == DriverKind::Block => cairn_loopfs::Scratch::Plain(
                tempfile::Builder::new()
                    .prefix("crash-probe-")
                    .tempdir_in(xfs)
                    .expect("scratch dir on xfs"),
            ),
            _ => cairn_loopfs::Scratch::new(driver == DriverKind::Btrfs, "crash-probe-")
                .expect("scratch dir"),
        };
        let block = (driver == DriverKind::Block).then(|| cairn_driver::BlockOptions {
            size_bytes: BLOCK_IMAGE_BYTES,
            ..cairn_driver::BlockOptions::default()
        });
        let probe = cairn_driver::open_driver_with(driver, &tmp.path().join("root"), block)
            .unwrap_or_else(|e| panic!("open a {} driver to probe: {e}", driver.name()));
        (tmp, probe)
    }

    fn run_all(driver: DriverKind, names: Option<&[&str]>, max_ks: usize) -> BTreeSet<String> {
        // CAIRN_CRASH_ONLY=<workload,...> runs only those (the coverage check is skipped then).
        let only = std::env::var("CAIRN_CRASH_ONLY").ok();
        let (_probe_root, probe) = probe_driver(driver);
        let wls: Vec<Workload> = workloads()
            .into_iter()
            .filter(|w| names.map_or(true, |n| n.contains(&w.name.as_str())))
            // A prior crash inside a creation is reached only where the driver makes that
            // creation the way the failpoint needs, inline or staged (`Driver::creates_inline`):
            // block stages every creation, btrfs makes every prepare inline.
            .filter(|w| {
                prior_creation(w).map_or(true, |(kind, on_parent, inline)| {
                    probe.creates_inline(kind, on_parent.then_some(SnapshotId(1))) == inline
                })
            })
            // Detached imports need a driver that extracts without the parent (overlay).
            .filter(|w| {
                !w.name.contains("parallel_import") && w.name != "import_parallel"
                    || driver == DriverKind::Overlay
            })
            .filter(|w| {
                only.as_ref()
                    .map_or(true, |o| o.split(',').any(|x| x == w.name))
            })
            .collect();
        let next = Mutex::new(0usize);
        let covered = Mutex::new(BTreeSet::new());
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    let i = {
                        let mut n = next.lock().expect("next");
                        *n += 1;
                        *n - 1
                    };
                    let Some(wl) = wls.get(i) else { break };
                    let got = run_workload(wl, driver, max_ks);
                    covered.lock().expect("covered").extend(got);
                });
            }
        });
        covered.into_inner().expect("covered")
    }

    #[test]
    fn crash_at_every_failpoint_vfs() {
        let covered = run_all(DriverKind::Vfs, None, 3);
        if std::env::var("CAIRN_CRASH_ONLY").is_ok() {
            return;
        }
        // Overlay-only steps are covered by the overlay test.
        let missing: Vec<String> = all_failpoints()
            .into_iter()
            .filter(|fp| !covered.contains(fp))
            .collect();
        let allowed_missing = [
            "driver::sync_staged::before_sync",
            "driver::sync_staged::after_sync",
            // These fire only when `staging/<txid>` already exists at stage time, which the
            // engine never produces (txids are never reused); the driver's own
            // `crates/cairn-driver/tests/driver_failpoints.rs` covers them.
            "driver::stage::before_clear",
            "driver::stage::after_clear",
            // Reference-counted mounts need root and real mounts; tests/mount_crash.rs crashes
            // at each of these and checks recovery against /proc/self/mountinfo.
            "engine::mount::before_mount",
            "engine::mount::after_mount",
            "engine::unmount::before_unmount",
            "engine::unmount::after_unmount",
            // The block driver's clone steps: its own failpoint crash test covers them.
            "driver::block::before_clone",
            "driver::block::after_clone",
        ];
        let missing: Vec<&String> = missing
            .iter()
            .filter(|fp| !allowed_missing.contains(&fp.as_str()))
            // The btrfs driver's own steps: covered by crash_at_every_failpoint_btrfs.
            .filter(|fp| !fp.starts_with("driver::btrfs::"))
            .collect();
        assert!(
            missing.is_empty(),
            "failpoints no workload reached: {missing:?}"
        );
    }

    #[test]
    fn crash_at_every_failpoint_btrfs() {
        if let Err(reason) = cairn_loopfs::btrfs() {
            println!("skipped: crash_at_every_failpoint_btrfs: {reason}");
            return;
        }
        let covered = run_all(DriverKind::Btrfs, None, 1);
        if std::env::var("CAIRN_CRASH_ONLY").is_ok() {
            return;
        }
        // Every failpoint the btrfs driver passes through: its own, and the shared layout's.
        let missing: Vec<String> = all_failpoints()
            .into_iter()
            .filter(|fp| fp.starts_with("driver::btrfs::") || fp.starts_with("driver::install::"))
            .filter(|fp| !covered.contains(fp))
            .collect();
        assert!(
            missing.is_empty(),
            "btrfs failpoints no workload reached: {missing:?}"
        );
    }

    /// The loop-mounted xfs (reflink) the block test's roots are made on, while it runs.
    static BLOCK_XFS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    /// The apparent size of the block test's images (the driver's minimum).
    const BLOCK_IMAGE_BYTES: u64 = 64 << 20;

    #[test]
    fn crash_at_every_failpoint_block() {
        if let Some(reason) = cairn_driver::scratch::unavailable() {
            println!("skipped: crash_at_every_failpoint_block: the block driver {reason}");
            return;
        }
        let xfs = cairn_driver::scratch::ReflinkFs::make("blockdrv-crash-", 4 << 30)
            .expect("scratch xfs with reflink");
        BLOCK_XFS
            .set(xfs.path().to_path_buf())
            .expect("one block crash test per process");
        // Every durable step block has of its own (clone, import sync, seal) and the shared
        // layout's, each crashed once: creations from the base (setup, open_fresh: the base
        // image itself) and from a parent, commits,
        // removals, imports (the image mounted on the staged tree), containers (init files
        // through the same mount), and recovery itself interrupted.
        let covered = run_all(
            DriverKind::Block,
            Some(&[
                "prepare_parent",
                "commit",
                "remove",
                "import",
                "container",
                "open_fresh",
                "recover_staged_install",
                "recover_pending_commit",
                "recover_pending_import",
            ]),
            1,
        );
        if std::env::var("CAIRN_CRASH_ONLY").is_ok() {
            return;
        }
        let missing: Vec<String> = all_failpoints()
            .into_iter()
            .filter(|fp| {
                fp.starts_with("driver::block::")
                    || fp.starts_with("driver::sync_staged::")
                    || fp.starts_with("driver::seal::")
                    || fp.starts_with("driver::install::")
            })
            // The batched seal's own step; block seals one image at a time.
            .filter(|fp| fp != "driver::seal::after_marker_rename")
            .filter(|fp| !covered.contains(fp))
            .collect();
        assert!(
            missing.is_empty(),
            "block failpoints no workload reached: {missing:?}"
        );
    }

    #[test]
    fn crash_at_every_failpoint_overlay() {
        let probe = tempfile::tempdir().expect("tempdir");
        let mut opts = options(DriverKind::Overlay);
        opts.workers = 1;
        match Engine::open(&probe.path().join("root"), opts) {
            Ok((h, _)) => h.close().expect("close"),
            Err(e) => {
                println!("skipped: overlay unavailable here ({e})");
                return;
            }
        }
        run_all(
            DriverKind::Overlay,
            Some(&[
                "prepare_parent",
                "commit",
                "remove",
                // Overlay creations are inline (no staging, no install): their crash case.
                "recover_inline_create",
                "import",
                "layer_rm_cascade",
                "container",
                "recover_pending_import",
                "import_parallel",
                "recover_pending_parallel_import",
            ]),
            1,
        );
    }
}
