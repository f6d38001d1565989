//! Arbitrary bytes as a layer: import must end in success or a typed error, never a panic,
//! and never create anything beside the target. A successful import must export back to
//! the very stream it hashed.
#![no_main]

use cairn_layer::{export, extract, ExtractOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parent = tempfile::tempdir().expect("tempdir");
    let target = parent.path().join("target");
    std::fs::create_dir(&target).expect("mkdir target");
    let mut meta = Vec::new();
    if let Ok(ex) = extract(data, &target, &ExtractOptions::default(), &mut meta) {
        let mut out = Vec::new();
        let got = export(&meta[..], &target, &mut out, &ex.diff_id)
            .unwrap_or_else(|e| panic!("export after a successful import failed: {e}"));
        assert_eq!(got, ex.diff_id);
        assert_eq!(out.len() as u64, ex.size_bytes);
    }
    let beside: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("target")],
        "escaped the target"
    );
});
