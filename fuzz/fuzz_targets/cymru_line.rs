//! The Team Cymru answer parser must never panic on what a server sends back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = sensor::enrich::cymru::parse_line(&line);
});
