//! Peak memory does not grow with the layer: a large streamed layer (never held in memory
//! by the test either) raises the process high-water mark by far less than the 64 MiB bound.
//! Alone in its own test binary so no other test's allocations move the mark.
//! `CAIRN_MEMTEST_MIB=1024` makes the big file larger (debug builds hash slowly).

use std::io::Read;

use cairn_layer::{export, extract, ExtractOptions};

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn header(path: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A tar of one `big`-byte file, then `small` small files, generated on the fly.
fn layer(big: u64, small: usize) -> impl Read {
    let mut head = header("big.bin", big);
    let pad = (512 - big % 512) % 512;
    let mut rest = vec![0u8; pad as usize];
    for i in 0..small {
        rest.extend(header(&format!("many/{i:06}"), 3));
        rest.extend(b"abc");
        rest.extend([0u8; 509]);
    }
    rest.extend([0u8; 1024]);
    head.shrink_to_fit();
    std::io::Cursor::new(head)
        .chain(std::io::repeat(0x5a).take(big))
        .chain(std::io::Cursor::new(rest))
}

#[test]
fn peak_memory_is_bounded() {
    let big: u64 = std::env::var("CAIRN_MEMTEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
        << 20;
    let Some(before) = vm_hwm_kib() else {
        println!("skipped: no /proc/self/status VmHWM");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut meta = Vec::new();
    let ex = extract(
        layer(big, 2000),
        tmp.path(),
        &ExtractOptions::default(),
        &mut meta,
    )
    .expect("import");
    assert!(ex.size_bytes > big);
    let mut sink = std::io::sink();
    export(&meta[..], tmp.path(), &mut sink, &ex.diff_id).expect("export");
    let after = vm_hwm_kib().expect("VmHWM");
    let grew_mib = after.saturating_sub(before) / 1024;
    println!(
        "layer of {} MiB: peak grew by {grew_mib} MiB, metadata {} KiB",
        ex.size_bytes >> 20,
        meta.len() >> 10
    );
    assert!(grew_mib < 32, "peak memory grew by {grew_mib} MiB");
}
