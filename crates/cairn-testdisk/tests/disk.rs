//! The test disk itself: writes and flushes reach the log, crash images replay them, faults
//! fail the chosen requests.

use cairn_testdisk::{fsck, missing, Attached, CrashImages, FsKind, TestDisk};
use rand::SeedableRng;
use std::io::Write;
use std::path::Path;

fn server() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cairn-testdisk-fuse"))
}

fn skip(reason: &str) {
    println!("skipped: {reason}");
    eprintln!("skipped: {reason}");
}

fn durable_file_survives(fs: FsKind) {
    if let Some(why) = missing(fs) {
        return skip(&why);
    }
    let mut disk = TestDisk::format(server(), fs, fs.image_bytes(), "selftest").expect("format");
    let before = disk.stats().expect("stats");
    let path = disk.mountpoint().join("durable");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&[7u8; 10_000]).expect("write");
    f.sync_all().expect("fsync");
    let d = std::fs::File::open(disk.mountpoint()).expect("open dir");
    d.sync_all().expect("fsync dir");
    drop((f, d));
    let after = disk.stats().expect("stats");
    assert!(
        after.flushes > before.flushes,
        "an fsync reached the disk as a flush: {before:?} -> {after:?}"
    );
    assert!(after.writes > before.writes, "{before:?} -> {after:?}");
    let synced_at = after.flushes as usize;
    // Written, never synced: may or may not be in a crash image.
    std::fs::write(disk.mountpoint().join("volatile"), b"x").expect("write");
    disk.unmount().expect("unmount");
    let log = disk.log().expect("log");
    assert!(
        log.flushes() >= synced_at,
        "log has {} flushes, stats said {synced_at}",
        log.flushes()
    );
    let scratch = disk.scratch();
    let mut images = CrashImages::new(&disk.base_image(), log, &scratch).expect("crash images");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    // Before any flush: the empty file system.
    let img = scratch.join("crash.img");
    images.image(0, &mut rng, true, &img).expect("image");
    {
        let a = Attached::mount(&img, fs, &scratch.join("mnt")).expect("mount crash image");
        assert!(
            !a.mountpoint.join("durable").exists(),
            "nothing was durable before the first flush"
        );
        a.release().expect("release");
    }
    fsck(fs, &img).expect("fsck of the image before the first flush");
    images
        .image(synced_at, &mut rng, false, &img)
        .expect("image");
    {
        let a = Attached::mount(&img, fs, &scratch.join("mnt")).expect("mount crash image");
        let got = std::fs::read(a.mountpoint.join("durable")).expect("the synced file is there");
        assert_eq!(got, vec![7u8; 10_000]);
        a.release().expect("release");
    }
    fsck(fs, &img).expect("fsck");
}

#[test]
fn ext4_durable_file_survives() {
    durable_file_survives(FsKind::Ext4);
}

#[test]
fn xfs_durable_file_survives() {
    durable_file_survives(FsKind::Xfs);
}

fn faults(fs: FsKind) {
    if let Some(why) = missing(fs) {
        return skip(&why);
    }
    let disk = TestDisk::format(server(), fs, fs.image_bytes(), "selftest-eio").expect("format");
    disk.control("fail flush 1 once").expect("control");
    let path = disk.mountpoint().join("f");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(b"data").expect("write");
    let r = f.sync_all();
    let s = disk.stats().expect("stats");
    assert_eq!(s.failed_flushes, 1, "{s:?}");
    assert!(r.is_err(), "fsync over a failed flush reported success");
    disk.control("heal").expect("heal");
    assert!(
        disk.control("nonsense").is_err(),
        "a bad control line is refused"
    );
}

#[test]
fn ext4_failed_flush_fails_fsync() {
    faults(FsKind::Ext4);
}

#[test]
fn xfs_failed_flush_fails_fsync() {
    faults(FsKind::Xfs);
}
