//! Which addresses are public. Everything else — private, loopback, link-local, CGNAT,
//! ULA, multicast, documentation, benchmarking, reserved — never goes to a remote source
//! (reverse DNS, Cymru): asking about it would leak host data and answer nothing.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when `ip` is a globally routable unicast address worth enriching.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let a = u32::from(ip);
    let in_net = |net: u32, len: u32| (a ^ net) >> (32 - len) == 0;
    !(o[0] == 0                                   // "this network" 0.0.0.0/8
        || o[0] == 10                             // RFC 1918
        || in_net(0x6440_0000, 10)                // CGNAT 100.64.0.0/10
        || o[0] == 127                            // loopback
        || in_net(0xa9fe_0000, 16)                // link-local 169.254.0.0/16
        || in_net(0xac10_0000, 12)                // RFC 1918 172.16.0.0/12
        || in_net(0xc000_0000, 24)                // IETF protocol assignments 192.0.0.0/24
        || in_net(0xc000_0200, 24)                // TEST-NET-1
        || in_net(0xc058_6300, 24)                // 6to4 relay anycast 192.88.99.0/24
        || in_net(0xc0a8_0000, 16)                // RFC 1918 192.168.0.0/16
        || in_net(0xc612_0000, 15)                // benchmarking 198.18.0.0/15
        || in_net(0xc633_6400, 24)                // TEST-NET-2
        || in_net(0xcb00_7100, 24)                // TEST-NET-3
        || o[0] >= 224) // multicast 224/4, reserved 240/4, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Global unicast is 2000::/3; inside it, documentation (2001:db8::/32, 3fff::/20),
    // ORCHID/benchmarking/TEREDO-style IETF space 2001::/23 and 6to4 (2002::/16, which
    // embeds an IPv4 address we can't vouch for).
    (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && s[1] == 0x0db8)
        && !(s[0] == 0x2001 && s[1] < 0x0200)
        && s[0] != 0x2002
        && (s[0] & 0xfff0) != 0x3ff0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_ranges_are_not_public() {
        for s in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:10.1.2.3",
            "::ffff:127.0.0.1",
            "2002:c000:0204::1",
            "3fff::1",
            "2001::1",
        ] {
            assert!(!is_public(s.parse().unwrap()), "{s} must not be public");
        }
    }

    #[test]
    fn routable_addresses_are_public() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "74.125.225.229",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2a00:2381:ffff::1",
            "2801:10:c000::",
            "::ffff:8.8.4.4",
        ] {
            assert!(is_public(s.parse().unwrap()), "{s} must be public");
        }
    }
}
