//! The packet parser must never panic, whatever the bytes and the link type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::capture::parse::{LinkType, parse_with};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let link = LinkType::ALL[usize::from(pick & 0x7F) % LinkType::ALL.len()];
    // The high bit: decapsulate tunnels too.
    if let Ok(p) = parse_with(link, frame, pick & 0x80 != 0) {
        // A fact the flow table relies on: later fragments carry no ports.
        if p.fragment.is_some_and(|f| f.offset != 0) {
            assert_eq!((p.src_port, p.dst_port), (0, 0));
        }
    }
});
