//! Crash images from a write log, without root: a synthetic log and base, replayed.

use cairn_testdisk::log::{header, KIND_FLUSH, KIND_WRITE, KIND_ZERO};
use cairn_testdisk::{CrashImages, Fate, Log, SECTOR_BYTES};
use rand::SeedableRng;
use std::io::Write;

fn write(log: &mut Vec<u8>, offset: u64, data: &[u8]) {
    log.extend_from_slice(&header(KIND_WRITE, offset, data.len() as u64));
    log.extend_from_slice(data);
}

#[test]
fn cuts_replay_flushed_writes_and_choose_among_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base");
    std::fs::write(&base, vec![0u8; 8 * SECTOR_BYTES]).expect("base");
    let mut log = Vec::new();
    write(&mut log, 0, &[1u8; SECTOR_BYTES]);
    log.extend_from_slice(&header(KIND_FLUSH, 0, 0));
    write(&mut log, SECTOR_BYTES as u64, &[2u8; 4 * SECTOR_BYTES]);
    log.extend_from_slice(&header(KIND_ZERO, 0, SECTOR_BYTES as u64));
    log.extend_from_slice(&header(KIND_FLUSH, 0, 0));
    let log_path = dir.path().join("log");
    std::fs::File::create(&log_path)
        .and_then(|mut f| f.write_all(&log))
        .expect("log");
    let log = Log::read(&log_path).expect("read log");
    assert_eq!(log.flushes(), 2);
    assert_eq!(log.writes(), 3);
    let mut images = CrashImages::new(&base, log, &dir.path().join("work")).expect("images");
    let out = dir.path().join("crash");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // Before the first flush with everything dropped: the base.
    images.image(0, &mut rng, true, &out).expect("image");
    assert_eq!(
        std::fs::read(&out).expect("read"),
        vec![0u8; 8 * SECTOR_BYTES]
    );
    // After flush 1: the first write is durable; the two after it are kept, dropped or torn.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let fates = images.image(1, &mut rng, false, &out).expect("image");
        let img = std::fs::read(&out).expect("read");
        assert_eq!(fates.len(), 2);
        let zeroed = match &fates[1] {
            Fate::Kept => true,
            Fate::Dropped => false,
            Fate::Torn(mask) => mask[0],
        };
        let first = if zeroed { 0 } else { 1 };
        assert!(img[..SECTOR_BYTES].iter().all(|b| *b == first), "{fates:?}");
        for s in 1..5 {
            let sector = &img[s * SECTOR_BYTES..(s + 1) * SECTOR_BYTES];
            let want = match &fates[0] {
                Fate::Kept => 2,
                Fate::Dropped => 0,
                Fate::Torn(mask) => {
                    if mask[s - 1] {
                        2
                    } else {
                        0
                    }
                }
            };
            assert!(sector.iter().all(|b| *b == want), "sector {s}: {fates:?}");
        }
        seen.insert(format!("{:?}", std::mem::discriminant(&fates[0])));
    }
    assert_eq!(seen.len(), 3, "64 draws give kept, dropped and torn");
    // After the last flush: everything.
    images.image(2, &mut rng, false, &out).expect("image");
    let img = std::fs::read(&out).expect("read");
    assert!(img[..SECTOR_BYTES].iter().all(|b| *b == 0));
    assert!(img[SECTOR_BYTES..5 * SECTOR_BYTES].iter().all(|b| *b == 2));
}

#[test]
fn a_damaged_log_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("log");
    let mut log = header(KIND_WRITE, 0, 1 << 40).to_vec();
    log.extend_from_slice(&[0u8; 16]);
    std::fs::write(&p, &log).expect("write");
    assert!(Log::read(&p).is_err(), "a write longer than the log");
    std::fs::write(&p, header(9, 0, 0)).expect("write");
    assert!(Log::read(&p).is_err(), "an unknown record kind");
}
