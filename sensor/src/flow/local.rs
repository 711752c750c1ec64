//! This host's own addresses: a connection to one of them has its other end here too, and
//! the kernel hooks will report both ends.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The addresses of every interface now (`getifaddrs`); empty when it fails. Loopback
/// addresses need not be listed: [`is_local`] knows them.
pub fn host_addrs() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Whether `ip` is this host's: loopback, or one of `host` (from [`host_addrs`]).
pub fn is_local(host: &HashSet<IpAddr>, ip: IpAddr) -> bool {
    ip.is_loopback() || host.contains(&ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_listed_addresses_are() {
        let host = host_addrs();
        assert!(
            host.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "lo is an interface: {host:?}"
        );
        assert!(is_local(&HashSet::new(), "127.0.0.2".parse().unwrap()));
        assert!(is_local(&HashSet::new(), "::1".parse().unwrap()));
        let mine: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!is_local(&HashSet::new(), mine));
        assert!(is_local(&HashSet::from([mine]), mine));
    }
}
