//! The threat-list line parser must never panic; what it accepts is a network in canonical
//! form (host bits clear), so lookups and the stored entry agree.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    if let Ok(Some(net)) = sensor::enrich::threat::parse_line(&line) {
        assert_eq!(net, net.trunc(), "{line:?} gave {net}");
    }
});
