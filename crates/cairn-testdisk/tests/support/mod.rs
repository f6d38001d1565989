//! Shared by the test-disk suites: the workload steps (crashkit's operations plus a gzip import
//! and a real image load), running them on a test disk with the flush count at each send and
//! acknowledgement, and the check of a crash image against the model.

#![allow(dead_code, clippy::unwrap_used)]

#[path = "../../../cairn-engine/tests/crashkit/mod.rs"]
pub mod crashkit;
pub mod cuts;
pub mod eio_cases;

use cairn_engine::{Engine, EngineHandle, ImportOptions};
use cairn_state::types::{DriverKind, Kind};
use cairn_state::Labels;
use cairn_testdisk::{Attached, FsKind, TestDisk};
use crashkit::{layer_ids, layer_tar, own_tree, read_tree, MLayer, Model, Op};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub fn server() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cairn-testdisk-fuse"))
}

pub fn skip(reason: &str) {
    println!("skipped: {reason}");
    eprintln!("skipped: {reason}");
}

/// Overlay needs root and a kernel with overlayfs; the disk needs root anyway.
pub fn drivers() -> [DriverKind; 2] {
    [DriverKind::Vfs, DriverKind::Overlay]
}

pub fn driver_name(d: DriverKind) -> &'static str {
    d.name()
}

/// The name a suite's summary lines carry: the driver's when it runs one (`block`, `btrfs`),
/// else the file system's.
pub fn suite_name(fs: FsKind, drivers: &[DriverKind]) -> &'static str {
    match drivers {
        [d] => d.name(),
        _ => fs.name(),
    }
}

/// The apparent size of every block image (the driver's minimum): the test disk's xfs is
/// 320 MiB.
pub const BLOCK_IMAGE_BYTES: &str = "67108864";

/// Readies a block-driver suite: why it cannot run (no loop devices or mounting), or `None`
/// after setting the image size. Call it first, from the binary's only test: no other thread
/// reads the environment while it is set.
pub fn block_suite() -> Option<String> {
    if let Some(why) = cairn_driver::scratch::unavailable() {
        return Some(format!("the block driver {why}"));
    }
    std::env::set_var("CAIRN_BLOCK_SIZE_BYTES", BLOCK_IMAGE_BYTES);
    None
}

/// The seed of a run: `CAIRN_SEED`, or one drawn from the clock (printed by the caller).
pub fn seed() -> u64 {
    match std::env::var("CAIRN_SEED") {
        Ok(s) => s.parse().expect("CAIRN_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// One step of a workload.
#[derive(Clone, Debug)]
pub enum Step {
    Op(Op),
    /// An `Op::ImportLayer`, its tar sent gzip-compressed.
    ImportGz(Op),
    /// `cairn_image::load` of the repository's `examples/hello-oci`.
    LoadImage,
}

impl Step {
    pub fn name(&self) -> String {
        match self {
            Step::Op(Op::ImportLayer { name, pin, .. }) => format!("import {name} pin={pin}"),
            Step::Op(Op::Write { key, file, data }) => {
                format!("write {key}/{file} ({} bytes)", data.len())
            }
            Step::Op(o) => format!("{o:?}").chars().take(90).collect(),
            Step::ImportGz(Op::ImportLayer { name, .. }) => format!("import gzip {name}"),
            Step::ImportGz(o) => format!("import gzip {o:?}"),
            Step::LoadImage => "image load hello-oci".into(),
        }
    }
}

/// How a step changes the model; an image load's effect is learnt from the live run.
#[derive(Clone, Debug)]
pub enum Effect {
    Op(Op),
    Insert {
        layers: Vec<(String, MLayer)>,
        images: Vec<(String, String)>,
    },
}

pub fn apply(model: &mut Model, effect: &Effect) {
    match effect {
        Effect::Op(op) => model.apply(op),
        Effect::Insert { layers, images } => {
            for (chain, l) in layers {
                if model.layers.contains_key(chain) {
                    continue;
                }
                model.layers.insert(chain.clone(), l.clone());
                model.snaps.insert(
                    chain.clone(),
                    crashkit::MSnap {
                        kind: Kind::Committed,
                        parent: l.parent.clone(),
                        labels: Labels::default(),
                        files: BTreeMap::new(),
                    },
                );
            }
            for (name, top) in images {
                model.apply(&Op::PutImage {
                    image: name.clone(),
                    top: top.clone(),
                });
            }
        }
    }
}

/// The effect of a step whose effect does not depend on the run (not an image load).
pub fn exec_effect(step: &Step) -> Effect {
    match step {
        Step::Op(op) | Step::ImportGz(op) => Effect::Op(op.clone()),
        Step::LoadImage => panic!("an image load's effect is learnt from its run"),
    }
}

/// A step as it ran: the flushes completed when it was sent and when it was answered.
#[derive(Clone, Debug)]
pub struct Ran {
    pub step: Step,
    pub effect: Effect,
    pub sent_at_flush: u64,
    pub acked_at_flush: u64,
    pub result: Result<(), String>,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn hello_oci() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-oci")
}

/// Runs one step; the effect it had on the store.
pub fn exec(h: &EngineHandle, step: &Step) -> (Effect, Result<(), String>) {
    match step {
        Step::Op(op) => (Effect::Op(op.clone()), crashkit::exec(h, op)),
        Step::ImportGz(op) => {
            let Op::ImportLayer {
                parent_chain,
                entries,
                pin,
                ..
            } = op
            else {
                panic!("ImportGz of {op:?}");
            };
            let tar = layer_tar(entries);
            let (diff, chain) = layer_ids(&tar, parent_chain.as_deref());
            let options = ImportOptions {
                parent: parent_chain.clone(),
                pin: *pin,
                expected_diff_id: None,
            };
            let r = h
                .import_layer(Box::new(std::io::Cursor::new(gzip(&tar))), options)
                .map_err(|e| e.to_string())
                .and_then(|got| {
                    if got.chain_id == chain && got.diff_id == diff {
                        Ok(())
                    } else {
                        Err(format!("import answered {got:?}, expected {chain} {diff}"))
                    }
                });
            (Effect::Op(op.clone()), r)
        }
        Step::LoadImage => {
            let r = cairn_image::load(h, &hello_oci(), &|_| {});
            let loaded = match r {
                Ok(l) => l,
                Err(e) => {
                    // An image load is several journaled commands (its layers' imports, then
                    // `PutImageKept`), and a failed sync answers Err after the record may be
                    // on disk: a load that answered Err may still have made the image whole.
                    // Its in-flight outcome is a whole load's, learnt from an earlier run
                    // that succeeded.
                    let whole = LOADED.get().cloned().unwrap_or(Effect::Insert {
                        layers: vec![],
                        images: vec![],
                    });
                    return (whole, Err(e.to_string()));
                }
            };
            let mut layers = Vec::new();
            let mut images = Vec::new();
            for l in &loaded {
                // Every layer of the image, also those an earlier, failed load stored.
                for chain in &l.layers {
                    let info = h.layer(chain).unwrap();
                    let out = crashkit::SharedBuf::default();
                    h.export_layer(chain, Box::new(out.clone())).unwrap();
                    let tar = out.0.lock().unwrap().clone();
                    layers.push((
                        chain.clone(),
                        MLayer {
                            diff_id: info.diff_id,
                            parent: info.parent,
                            pinned: false,
                            tar,
                        },
                    ));
                }
                for n in &l.names {
                    images.push((n.clone(), l.top.clone()));
                }
            }
            let effect = Effect::Insert { layers, images };
            let _ = LOADED.set(effect.clone());
            (effect, Ok(()))
        }
    }
}

/// The effect of a whole load of `hello_oci()`, from the first run that succeeded: the same
/// example gives the same layers and names every time.
static LOADED: std::sync::OnceLock<Effect> = std::sync::OnceLock::new();

/// Runs `steps` on the disk's root, one at a time, noting the disk's flush count around each.
pub fn run_steps(disk: &TestDisk, h: &EngineHandle, steps: &[Step]) -> Vec<Ran> {
    let mut out = Vec::new();
    for step in steps {
        let sent_at_flush = disk.stats().expect("stats").flushes;
        let (effect, result) = exec(h, step);
        let acked_at_flush = disk.stats().expect("stats").flushes;
        out.push(Ran {
            step: step.clone(),
            effect,
            sent_at_flush,
            acked_at_flush,
            result,
        });
    }
    out
}

/// What a crash after flush `k` (before flush `k + 1`) must show: the model of what was
/// acknowledged by then, and the step in flight, if any.
pub struct Expect {
    pub acked: Model,
    pub inflight: Option<(String, Model)>,
    /// (key, file) of acknowledged writes into snapshots that were never committed: nothing
    /// synced them, so a crash may leave each absent, shorter, or with zeros for some bytes.
    pub writes: Vec<(String, String)>,
    /// Those writes may have any bytes (a write of theirs failed with EIO: the blocks it did
    /// not write read back as whatever was there), not only none or a prefix.
    pub unsynced_any: bool,
}

pub fn expect_at(driver: DriverKind, ran: &[Ran], k: u64) -> Expect {
    let mut acked = Model::new(driver);
    let mut inflight = None;
    let mut writes = Vec::new();
    for r in ran {
        if r.result.is_err() {
            // A refused step changes nothing; a failed one is checked by the EIO suite.
            continue;
        }
        if let Effect::Op(Op::Write { key, file, .. }) = &r.effect {
            writes.push((key.clone(), file.clone()));
        }
        if r.acked_at_flush <= k {
            apply(&mut acked, &r.effect);
        } else if r.sent_at_flush <= k {
            let mut with = acked.clone();
            apply(&mut with, &r.effect);
            inflight = Some((r.step.name(), with));
        }
    }
    Expect {
        acked,
        inflight,
        writes,
        unsynced_any: false,
    }
}

/// True when the step in flight at the cut is a user write into `key`.
fn writing_into(expect: &Expect, key: &str) -> bool {
    expect
        .inflight
        .as_ref()
        .is_some_and(|(name, _)| name.starts_with(&format!("write {key}/")))
}

/// The contents the in-flight step gives `key`'s `file`, if it writes it.
fn inflight_file(expect: &Expect, key: &str, file: &str) -> Option<Vec<u8>> {
    if !writing_into(expect, key) {
        return None;
    }
    let (_, with) = expect.inflight.as_ref()?;
    with.snaps.get(key)?.files.get(file).cloned()
}

/// Opens the root of a crash image, finds the outcome it shows, checks trees, layers, fsck and
/// names, and reopens. Panics with what differs.
pub fn check_root(root: &Path, driver: DriverKind, expect: &Expect) {
    let options = crashkit::options(driver);
    let (h, report) = Engine::open(root, options.clone())
        .unwrap_or_else(|e| panic!("the root does not open after the power cut: {e}"));
    assert!(report.lost.is_empty(), "lost trees: {report:?}");
    assert!(report.unexpected.is_empty(), "unexpected names: {report:?}");
    let infos = h.walk(&[]).expect("walk");
    let actual = crashkit::actual_meta(&infos);
    let actual_store = crashkit::actual_store(&h);
    let mut candidates = vec![("acknowledged only".to_owned(), expect.acked.clone())];
    if let Some((name, with)) = &expect.inflight {
        candidates.push((format!("with in-flight {name}"), with.clone()));
    }
    let mut chosen = None;
    for (what, mut m) in candidates.clone() {
        m.collect_unheld();
        if m.meta() == actual && m.store() == actual_store {
            chosen = Some((what, m));
            break;
        }
    }
    let Some((_, m)) = chosen else {
        panic!(
            "the state after recovery matches no outcome (in flight: {:?})\n expected (acknowledged): {:#?}\n {:#?}\n actual: {actual:#?}\n {actual_store:#?}",
            expect.inflight.as_ref().map(|(n, _)| n),
            expect.acked.meta(),
            expect.acked.store()
        );
    };
    for (n, (key, snap)) in m.snaps.iter().enumerate() {
        if m.opaque(key) {
            continue;
        }
        let (mounts, probe) = if snap.kind == Kind::Committed {
            let probe = format!("testdisk-probe-{n}");
            let mounts = h
                .view(&probe, Some(key), Labels::default())
                .unwrap_or_else(|e| panic!("view of committed {key}: {e}"));
            (mounts, Some(probe))
        } else {
            (h.mounts(key).expect("mounts"), None)
        };
        // block: the image loop-mounted as its mounts say, unmounted before the probe goes.
        let tree = match crashkit::try_own_tree(&mounts) {
            Ok(t) => t,
            // The user's own write into the Active image was in flight (a mount, writes and
            // the unmount's flushes): that ext4's state at the cut is ext4's crash consistency,
            // not cairn's, and a torn write of its superblock fails its checksum at mount. As
            // an operator would, repair it with e2fsck first; any other image must mount.
            Err(e) if writing_into(expect, key) => {
                let image = &mounts[0].source;
                let fixed = std::process::Command::new("e2fsck")
                    .args(["-fy"])
                    .arg(image)
                    .output()
                    .unwrap_or_else(|e| panic!("run e2fsck: {e}"));
                println!(
                    "{key}: its image did not mount after a cut inside a write into it ({e}); e2fsck -fy: {}",
                    fixed.status
                );
                own_tree(&mounts)
            }
            Err(e) => panic!("{key}: {e}"),
        };
        let dir = tree.as_ref().map(|t| t.path().to_path_buf());
        let on_disk = dir.as_ref().map(|d| read_tree(d));
        drop(tree);
        if let Some(p) = &probe {
            h.remove(p).expect("remove probe view");
        }
        let (Some(dir), Some(mut on_disk)) = (dir, on_disk) else {
            continue;
        };
        let mut expected = match (snap.kind, &snap.parent) {
            (Kind::View, Some(p)) => m.snaps[p].files.clone(),
            _ => snap.files.clone(),
        };
        if snap.kind == Kind::Active {
            for (k, f) in &expect.writes {
                if k != key {
                    continue;
                }
                // An in-flight write may be wholly there (block: its unmount flushed it).
                let want = expected
                    .remove(f)
                    .or_else(|| inflight_file(expect, key, f))
                    .unwrap_or_default();
                if let Some(got) = on_disk.remove(f) {
                    // Nothing synced it: ext4 may have made its size and blocks durable before
                    // its data (unwritten extents read back as zeros), but never other data.
                    let written_or_zero = got.len() <= want.len()
                        && got.iter().zip(&want).all(|(g, w)| g == w || *g == 0);
                    assert!(
                        expect.unsynced_any || written_or_zero,
                        "{key}/{f}: an unsynced write left bytes it never wrote ({} bytes on disk, {} written)",
                        got.len(),
                        want.len()
                    );
                }
            }
        }
        if on_disk != expected {
            let sum = |m: &BTreeMap<String, Vec<u8>>| -> Vec<(String, usize, u32)> {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.len(), crc32fast::hash(v)))
                    .collect()
            };
            panic!(
                "{key} ({:?}, parent {:?}) in {}: files differ from what was written before it was acknowledged\n on disk: {:?}\n expected: {:?}",
                snap.kind,
                snap.parent,
                dir.display(),
                sum(&on_disk),
                sum(&expected)
            );
        }
    }
    for (chain, l) in &m.layers {
        let out = crashkit::SharedBuf::default();
        let diff = h
            .export_layer(chain, Box::new(out.clone()))
            .unwrap_or_else(|e| panic!("export of acknowledged layer {chain}: {e}"));
        assert_eq!(diff, l.diff_id, "export of {chain}");
        assert!(
            out.0.lock().unwrap().as_slice() == l.tar.as_slice(),
            "export of {chain} differs from the imported tar"
        );
    }
    let verified = h.verify(None).expect("verify");
    assert!(
        verified.iter().all(|v| v.problem.is_none()),
        "verify: {verified:?}"
    );
    // fsck --verify: also every layer against its DiffID and every committed tree against the
    // digest journaled with its commit. A snapshot whose tree sync failed is named (it can no
    // longer be committed): that is the failure an EIO case injected, not damage.
    let fsck = h.fsck_with(false, true).expect("fsck --verify");
    let damage: Vec<_> = fsck
        .findings
        .iter()
        .filter(|f| !matches!(f.problem, cairn_engine::Problem::SyncFailed { .. }))
        .collect();
    assert!(damage.is_empty(), "fsck --verify after recovery: {fsck:?}");
    h.close().expect("close");
    crashkit::check_root_names(root, infos.len());
    crashkit::check_nothing_attached(root);
    let (h, report2) = Engine::open(root, options).expect("second reopen");
    assert!(
        report2.dropped.is_empty() && report2.installed.is_empty(),
        "second recovery did work: {report2:?}"
    );
    assert_eq!(
        h.walk(&[]).expect("walk"),
        infos,
        "second reopen gives another state"
    );
    h.close().expect("close");
}

/// Crash images whose primary superblock was torn, mounted after `btrfs rescue super-recover`
/// (btrfs) or `e2fsck` from a backup superblock (ext4; see `check_image`).
pub static SUPERBLOCKS_RECOVERED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Mounts a crash image (after `e2fsck -fy` when `repair_first`; xfs repairs itself by log
/// replay at mount, and `xfs_repair` refuses a dirty log), checks the root in it, unmounts, and checks the file system strictly.
pub fn check_image(
    fs: FsKind,
    image: &Path,
    mnt: &Path,
    driver: DriverKind,
    expect: &Expect,
    repair_first: bool,
) -> Result<(), String> {
    // xfs_repair refuses a dirty log (the mount replays it) and needs no repair to mount.
    let mut repaired = String::new();
    if repair_first && fs != FsKind::Xfs {
        repaired =
            cairn_testdisk::repair(fs, image).map_err(|e| format!("repair before mount: {e}"))?;
    }
    let a = match Attached::mount(image, fs, mnt) {
        Ok(a) => a,
        Err(e) if fs == FsKind::Btrfs => {
            // btrfs writes its 4 KiB superblock in place and checks it by checksum; a torn one
            // (the disk keeps only some of its 512-byte sectors) fails the mount, and the
            // kernel does not fall back to the mirror copy by itself. The operator's remedy is
            // `btrfs rescue super-recover`, which installs the newest valid copy: the
            // committed tree it names was flushed before any copy was written, so the state
            // is the old transaction's or the new one's, both of them crash states.
            // Its exit status is 2 even when it recovered (it reports the bad copy it
            // replaced): the mount after it is the test.
            let recovered = match cairn_testdisk::run(
                "btrfs",
                &[
                    "rescue",
                    "super-recover",
                    "-y",
                    image.to_string_lossy().as_ref(),
                ],
            ) {
                Ok(out) => out,
                Err(cairn_testdisk::DiskError::Command { output, .. }) => output,
                Err(r) => return Err(format!("the crash image does not mount: {e}; {r}")),
            };
            let a = Attached::mount(image, fs, mnt).map_err(|e2| {
                format!(
                    "the crash image does not mount: {e}; after super-recover ({recovered}): {e2}"
                )
            })?;
            SUPERBLOCKS_RECOVERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            a
        }
        Err(e) if fs == FsKind::Ext4 && !repair_first => {
            // ext4 writes its 1 KiB primary superblock in place at mount (outside the journal),
            // across two 512-byte sectors: a cut that tears that write leaves a superblock
            // whose checksum fails, and the kernel does not fall back to a backup. The
            // operator's remedy is e2fsck, which opens the file system from a backup
            // superblock, replays the journal and rewrites the primary. Only that case is
            // repaired here; anything else that fails the mount is a failure.
            let out = cairn_testdisk::repair(fs, image)
                .map_err(|r| format!("the crash image does not mount: {e}; repair: {r}"))?;
            if !out.contains("trying backup blocks") {
                return Err(format!(
                    "the crash image does not mount: {e}; repair: {}",
                    out.lines().take(12).collect::<Vec<_>>().join(" | ")
                ));
            }
            let a = Attached::mount(image, fs, mnt).map_err(|e2| {
                format!("the crash image does not mount: {e}; after e2fsck from a backup superblock: {e2}")
            })?;
            SUPERBLOCKS_RECOVERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            repaired = out;
            a
        }
        Err(e) => {
            let repair = cairn_testdisk::repair(fs, image);
            return Err(format!(
                "the crash image does not mount: {e}; repair: {repair:?}"
            ));
        }
    };
    let root = a.mountpoint.join("root");
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_root(&root, driver, expect);
        if fs == FsKind::Btrfs {
            if let Err(e) = check_subvolumes(&a.mountpoint) {
                panic!("{e}");
            }
        }
    }));
    let released = a.release();
    if let Err(p) = checked {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into());
        if repaired.contains("FIXED")
            || repaired.contains("Fix?")
            || repaired.contains("lost+found")
        {
            let head: String = repaired.lines().take(12).collect::<Vec<_>>().join(" | ");
            return Err(format!("{msg}\n (the repair before mounting said: {head})"));
        }
        return Err(msg);
    }
    released.map_err(|e| format!("unmount the crash image: {e}"))?;
    cairn_testdisk::fsck(fs, image).map_err(|e| format!("{} is not clean: {e}", fs.name()))
}

/// No orphan subvolume: every subvolume of the btrfs mounted at `mnt` (`btrfs subvolume list`,
/// which leaves out deleted ones the cleaner has yet to reclaim) is the tree of a snapshot the
/// root holds, `root/snapshots/<id>/fs`, and every snapshot's tree is one. A subvolume that
/// lost its name, or one left in staging/ or trash/, fails.
pub fn check_subvolumes(mnt: &Path) -> Result<(), String> {
    let listed = cairn_testdisk::run(
        "btrfs",
        &["subvolume", "list", mnt.to_string_lossy().as_ref()],
    )
    .map_err(|e| format!("btrfs subvolume list: {e}"))?;
    let mut paths = Vec::new();
    for line in listed.lines().filter(|l| !l.trim().is_empty()) {
        let Some((_, path)) = line.split_once(" path ") else {
            return Err(format!("btrfs subvolume list: unexpected line {line:?}"));
        };
        let path = path.trim();
        let parts: Vec<&str> = path.split('/').collect();
        let is_tree = matches!(parts.as_slice(), ["root", "snapshots", id, "fs"]
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
        if !is_tree {
            return Err(format!("orphan subvolume {path:?} (not a snapshot's tree)"));
        }
        paths.push(path.to_owned());
    }
    let snapshots = mnt.join("root/snapshots");
    let mut trees = 0;
    for e in std::fs::read_dir(&snapshots).map_err(|e| format!("read {snapshots:?}: {e}"))? {
        let e = e.map_err(|e| format!("read {snapshots:?}: {e}"))?;
        if e.path().join("fs").is_dir() {
            trees += 1;
            let want = format!("root/snapshots/{}/fs", e.file_name().to_string_lossy());
            if !paths.contains(&want) {
                return Err(format!("{want} is not a subvolume"));
            }
        }
    }
    if trees != paths.len() {
        return Err(format!(
            "{} subvolumes for {trees} snapshot trees: {paths:?}",
            paths.len()
        ));
    }
    Ok(())
}

/// Builders for the workloads' steps.
pub mod steps {
    use super::crashkit::{labels, layer_ids, layer_tar, Op};
    use super::Step;

    pub fn p(key: &str, parent: Option<&str>) -> Step {
        Step::Op(Op::Prepare {
            key: key.into(),
            parent: parent.map(Into::into),
            view: false,
            labels: labels(&[("k", key)]),
        })
    }
    /// A prepare with `bytes` of labels: fills WAL segments so the log rotates.
    pub fn p_big(key: &str, bytes: usize) -> Step {
        let big = "x".repeat(bytes);
        Step::Op(Op::Prepare {
            key: key.into(),
            parent: None,
            view: false,
            labels: labels(&[("big", big.as_str())]),
        })
    }
    pub fn v(key: &str, parent: &str) -> Step {
        Step::Op(Op::Prepare {
            key: key.into(),
            parent: Some(parent.into()),
            view: true,
            labels: labels(&[]),
        })
    }
    pub fn w(key: &str, file: &str, len: usize) -> Step {
        let data = format!("{key}/{file}: ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(len)
            .collect();
        Step::Op(Op::Write {
            key: key.into(),
            file: file.into(),
            data,
        })
    }
    pub fn c(name: &str, key: &str) -> Step {
        Step::Op(Op::Commit {
            name: name.into(),
            key: key.into(),
            labels: labels(&[("committed", name)]),
        })
    }
    pub fn rm(key: &str) -> Step {
        Step::Op(Op::Remove { key: key.into() })
    }
    pub fn checkpoint() -> Step {
        Step::Op(Op::Checkpoint)
    }

    fn layer_parent(name: &str) -> Option<&'static str> {
        match name {
            "L1" => Some("L0"),
            _ => None,
        }
    }
    fn layer_entries(name: &str) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| {
                let data = format!("{name} file {i} ")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(1500 * (i + 1))
                    .collect();
                (format!("{name}/d{i}/f{i}"), data)
            })
            .collect();
        if let Some(p) = layer_parent(name) {
            out.push((format!("{p}/d1/.wh.f1"), Vec::new()));
        }
        out
    }
    pub fn chain(name: &str) -> String {
        let parent = layer_parent(name).map(chain);
        layer_ids(&layer_tar(&layer_entries(name)), parent.as_deref()).1
    }
    fn import_op(name: &str, pin: bool) -> Op {
        let parent = layer_parent(name);
        Op::ImportLayer {
            name: name.into(),
            parent: parent.map(Into::into),
            parent_chain: parent.map(chain),
            entries: layer_entries(name),
            pin,
        }
    }
    pub fn imp(name: &str, pin: bool) -> Step {
        Step::Op(import_op(name, pin))
    }
    pub fn imp_gz(name: &str, pin: bool) -> Step {
        Step::ImportGz(import_op(name, pin))
    }
    pub fn lrm(name: &str) -> Step {
        Step::Op(Op::RemoveLayer { chain: chain(name) })
    }
    pub fn img(image: &str, top: &str) -> Step {
        Step::Op(Op::PutImage {
            image: image.into(),
            top: chain(top),
        })
    }
    pub fn irm(image: &str) -> Step {
        Step::Op(Op::RemoveImage {
            image: image.into(),
        })
    }
    pub fn ctr(name: &str, image: &str) -> Step {
        Step::Op(Op::CreateContainer {
            name: name.into(),
            image: image.into(),
        })
    }
    pub fn crm(name: &str) -> Step {
        Step::Op(Op::RemoveContainer { name: name.into() })
    }
}
