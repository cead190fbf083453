//! Feeds arbitrary bytes to the manifest parser. It must never panic; whatever it accepts must
//! pass the server's object validation too. Run: `cargo +nightly fuzz run manifest`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(objects) = gantry_api::manifest::parse("fuzz.yaml", text) {
        for obj in objects {
            assert!(
                obj.validate().is_ok(),
                "parse accepted what validate refuses: {obj:?}"
            );
        }
    }
});
