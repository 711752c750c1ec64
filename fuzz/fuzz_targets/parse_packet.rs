//! The packet parser must never panic, whatever the bytes and the link type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::capture::parse::{LinkType, parse};

const LINKS: [LinkType; 8] = [
    LinkType::Ethernet,
    LinkType::Raw,
    LinkType::Ipv4,
    LinkType::Ipv6,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Null,
    LinkType::Loop,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(pick) % LINKS.len()];
    if let Ok(p) = parse(link, frame) {
        // A fact the flow table relies on: later fragments carry no ports.
        if p.fragment.is_some_and(|f| f.offset != 0) {
            assert_eq!((p.src_port, p.dst_port), (0, 0));
        }
    }
});
