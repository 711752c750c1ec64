//! The packet parser must never panic, whatever the bytes and the link type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::capture::parse::{LinkType, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let link = LinkType::ALL[usize::from(pick) % LinkType::ALL.len()];
    if let Ok(p) = parse(link, frame) {
        // A fact the flow table relies on: later fragments carry no ports.
        if p.fragment.is_some_and(|f| f.offset != 0) {
            assert_eq!((p.src_port, p.dst_port), (0, 0));
        }
    }
});
