//! Crash tests of reference-counted mounts: a child process takes the first reference (or
//! releases the last) and dies at a failpoint, between the journal and the mount(2) or between
//! the mount(2) and its completion (the same for umount(2)); the parent reopens the root and
//! checks that recovery left the counts and `/proc/self/mountinfo` agreeing: counted exactly
//! when mounted, and the snapshot removable exactly when nothing is mounted.
//!
//! Run: `cargo test --features failpoints --test mount_crash` (as root: real mounts).

#![allow(clippy::unwrap_used)]

#[cfg(not(feature = "failpoints"))]
#[test]
fn crash_around_mounts() {
    println!("skipped: build with --features failpoints");
}

#[cfg(feature = "failpoints")]
mod crash {
    use cairn_engine::{Engine, EngineOptions, Row};
    use cairn_state::types::DriverKind;
    use cairn_state::Labels;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::process::Command;

    const CHILD_ENV: &str = "CAIRN_MOUNT_CRASH";

    fn options(driver: DriverKind) -> EngineOptions {
        EngineOptions {
            driver: Some(driver),
            workers: 1,
            ..EngineOptions::default()
        }
    }

    fn driver_of(name: &str) -> DriverKind {
        if name == "overlay" {
            DriverKind::Overlay
        } else {
            DriverKind::Vfs
        }
    }

    /// The child: mount or unmount, with the failpoint armed from FAILPOINTS.
    #[test]
    fn child() {
        let Ok(action) = std::env::var(CHILD_ENV) else {
            return;
        };
        std::panic::set_hook(Box::new(|info| {
            eprintln!("child panic: {info}");
            std::process::abort();
        }));
        let root = std::env::var("CAIRN_MOUNT_ROOT").unwrap();
        let target = std::env::var("CAIRN_MOUNT_TARGET").unwrap();
        let driver = driver_of(&std::env::var("CAIRN_MOUNT_DRIVER").unwrap());
        let (h, _) = Engine::open(Path::new(&root), options(driver)).unwrap();
        std::mem::forget(fail::FailScenario::setup());
        match action.as_str() {
            "mount" => drop(h.mount("a", Path::new(&target)).unwrap()),
            _ => drop(h.unmount(Path::new(&target)).unwrap()),
        }
        std::process::exit(0);
    }

    fn mounted(target: &str) -> bool {
        cairn_driver::mountinfo::is_mount_point(Path::new(target)).unwrap()
    }

    /// Crash `action` at `failpoint`; then check what recovery decided.
    fn case(driver: DriverKind, action: &str, failpoint: &str, expect_mounted: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let target_dir = tmp.path().join("target");
        std::fs::create_dir_all(&target_dir).unwrap();
        let target = target_dir.canonicalize().unwrap().display().to_string();
        let Ok((h, _)) = Engine::open(&root, options(driver)) else {
            println!("skipped: {} unavailable here", driver.name());
            return;
        };
        h.prepare("base-a", None, Labels::new()).unwrap();
        h.commit("base", "base-a", Labels::new()).unwrap();
        h.prepare("a", Some("base"), Labels::new()).unwrap();
        if action == "unmount" {
            h.mount("a", Path::new(&target)).unwrap();
        }
        h.close().unwrap();

        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash::child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, action)
            .env("CAIRN_MOUNT_ROOT", &root)
            .env("CAIRN_MOUNT_TARGET", &target)
            .env("CAIRN_MOUNT_DRIVER", driver.name())
            .env("FAILPOINTS", format!("{failpoint}=panic"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.signal() == Some(libc::SIGABRT)
                && stderr.contains(&format!("failpoint {failpoint} panic")),
            "{action} at {failpoint}: the child did not die there: {:?}\n{stderr}",
            out.status
        );
        let what = format!("{} {action} crashed at {failpoint}", driver.name());
        assert_eq!(mounted(&target), expect_mounted, "{what}: the kernel");

        let (h, report) = Engine::open(&root, options(driver)).unwrap();
        let row = if action == "mount" {
            Row::R37
        } else {
            Row::R38
        };
        assert!(report.rows.contains(&row), "{what}: {report:?}");
        let refs = h.mount_refs().unwrap();
        let counted: Vec<(&str, &str, u64)> = refs
            .iter()
            .map(|m| (m.target.as_str(), m.key.as_str(), m.count))
            .collect();
        if expect_mounted {
            assert_eq!(counted, [(target.as_str(), "a", 1)], "{what}: counted once");
            assert!(h.remove("a").is_err(), "{what}: a mounted snapshot stays");
            assert_eq!(h.unmount(Path::new(&target)).unwrap().count, 0);
            assert!(!mounted(&target), "{what}: the release unmounted it");
        } else {
            assert!(counted.is_empty(), "{what}: nothing counted: {counted:?}");
        }
        // Nothing left behind either way: the snapshot can go, the root is clean.
        h.remove("a").unwrap();
        let fsck = h.fsck(false).unwrap();
        assert!(fsck.is_clean(), "{what}: {fsck:?}");
        h.close().unwrap();
        assert!(!mounted(&target), "{what}");
    }

    fn all(driver: DriverKind) {
        // Journaled, then died before the mount(2): nothing mounted, nothing counted.
        case(driver, "mount", "engine::mount::before_mount", false);
        // Mounted, then died before the completion: recovery completes it, counted once.
        case(driver, "mount", "engine::mount::after_mount", true);
        // The last release journaled, died before the umount(2): the mount and count stay.
        case(driver, "unmount", "engine::unmount::before_unmount", true);
        // Unmounted, died before the completion: recovery completes the release.
        case(driver, "unmount", "engine::unmount::after_unmount", false);
    }

    #[test]
    fn crash_around_mounts_vfs() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: mounting needs root");
            return;
        }
        all(DriverKind::Vfs);
    }

    #[test]
    fn crash_around_mounts_overlay() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: the overlay driver and mounting need root");
            return;
        }
        all(DriverKind::Overlay);
    }
}
