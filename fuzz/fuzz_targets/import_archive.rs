//! Feeds arbitrary bytes to the image store as an archive. It must never panic, and a failed
//! import must leave no image behind. Run: `cargo +nightly fuzz run import_archive`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = gantry_runtime::images::ImageStore::open(&dir.path().join("store")).expect("store");
    let archive = dir.path().join("archive.tar");
    std::fs::write(&archive, data).expect("write archive");
    if store.import(&archive, Some("fuzz/case:1")).is_err() {
        assert!(store.list().expect("list").is_empty(), "a failed import left an image");
    }
});
