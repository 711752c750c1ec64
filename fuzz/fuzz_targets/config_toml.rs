//! The configuration loader must never panic: bad text is an error naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = sensor::config::Config::from_toml(text, "fuzz.toml".into()) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
});
