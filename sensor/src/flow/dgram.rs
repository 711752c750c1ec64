//! Owners of datagram flows (UDP, ICMP): the kernel reports, once per 5-tuple and
//! direction, which local socket sent or received a datagram and who made that socket
//! (`kind::DGRAM`); the packet view's UDP/ICMP records are given those owners when they
//! finish, on the packet-flow thread.
//!
//! Rule: a flow's initiator (`src`) is the end that sent its first packet, so its owner is
//! the socket that sent from `src` to `dst` (`send`), else the one that received there
//! (`recv`); the responder's is the socket at `dst` that received from `src`, else the one
//! that sent from there. ICMP has no ports: its ends are addresses, and an echo to an
//! address of the same socket (ping 127.0.0.1) names only the initiator, since the kernel,
//! not a process, answers it.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use sensor_common::{SockEvent, flags, kind};

use super::{
    record::{Attr, FlowRecord, Owner, PROTO_TCP},
    tcp::addr,
};

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// How long an owner is kept after its last report. The kernel reports a live 5-tuple
/// again every 30 s, so this outlasts two reports.
pub const KEEP: Duration = Duration::from_secs(90);

/// Owners followed at once; past it, new reports are dropped and counted.
pub const MAX_ENDS: usize = 65536;

#[derive(Debug, Clone, Default)]
struct End {
    send: Option<Owner>,
    recv: Option<Owner>,
    seen: Option<Instant>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DgramStats {
    /// Reports read from the kernel and kept.
    pub reports: u64,
    /// Reports with no owner: the socket is older than the hooks and the /proc scan did
    /// not find it.
    pub unknown: u64,
    /// Reports dropped because [`MAX_ENDS`] owners were followed.
    pub dropped: u64,
    /// Finished datagram flows given at least one owner.
    pub named: u64,
    /// Finished datagram flows no report named.
    pub unnamed: u64,
}

/// (protocol, local end, remote end) to the owners of that local socket.
#[derive(Debug, Default)]
pub struct DgramOwners {
    ends: HashMap<(u8, SocketAddr, SocketAddr), End>,
    /// UDP sockets bound before the hooks (from /proc), by local address and port: the
    /// owners of the reports the kernel sends with pid 0.
    bound: HashMap<(IpAddr, u16), Owner>,
    stats: DgramStats,
}

fn portless(proto: u8, a: SocketAddr) -> SocketAddr {
    if matches!(proto, ICMP | ICMPV6) {
        SocketAddr::new(a.ip(), 0)
    } else {
        a
    }
}

impl DgramOwners {
    /// With the UDP sockets bound before the hooks, from a /proc scan
    /// ([`super::Listeners::take_datagram_owners`]).
    pub fn with_bound(bound: HashMap<(IpAddr, u16), Owner>) -> Self {
        Self {
            bound,
            ..Self::default()
        }
    }

    /// The scanned owner of the UDP socket bound at `local`: an exact bind, else a
    /// wildcard one (IPv4 also on a dual-stack `[::]`).
    fn bound_owner(&self, local: SocketAddr) -> Option<Owner> {
        let port = local.port();
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let candidates: &[IpAddr] = match local.ip() {
            ip @ IpAddr::V4(_) => &[ip, any4, any6],
            ip @ IpAddr::V6(_) => &[ip, any6],
        };
        candidates
            .iter()
            .find_map(|a| self.bound.get(&(*a, port)))
            .cloned()
    }

    pub fn stats(&self) -> DgramStats {
        self.stats
    }

    /// A `kind::DGRAM` report from the kernel; other events are ignored.
    pub fn on_event(&mut self, ev: &SockEvent, now: Instant) {
        if ev.kind != kind::DGRAM {
            return;
        }
        let proto = ev.protocol as u8;
        let local = portless(proto, addr(ev.family, &ev.local_addr, ev.local_port));
        let remote = portless(proto, addr(ev.family, &ev.remote_addr, ev.remote_port));
        let key = (proto, local, remote);
        let found = if ev.pid != 0 {
            let attr = if ev.flags & flags::SEND != 0 {
                Attr::Send
            } else {
                Attr::Recv
            };
            Owner::from_event(ev, attr)
        } else if let Some(o) = self.bound_owner(local) {
            o
        } else {
            // Made before the hooks and not bound at the scan: unknown.
            self.stats.unknown += 1;
            return;
        };
        if !self.ends.contains_key(&key) && self.ends.len() >= MAX_ENDS {
            self.expire(now);
            if self.ends.len() >= MAX_ENDS {
                self.stats.dropped += 1;
                return;
            }
        }
        self.stats.reports += 1;
        let end = self.ends.entry(key).or_default();
        end.seen = Some(now);
        if ev.flags & flags::SEND != 0 {
            end.send = Some(found);
        } else {
            end.recv = Some(found);
        }
    }

    /// Forgets owners not reported for [`KEEP`].
    pub fn expire(&mut self, now: Instant) {
        self.ends
            .retain(|_, e| e.seen.is_some_and(|t| now.duration_since(t) < KEEP));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Gives a finished UDP/ICMP record the owners reported for its ends; TCP records and
    /// ends that already have one are left as they are.
    pub fn fill(&mut self, f: &mut FlowRecord) {
        if f.proto == PROTO_TCP {
            return;
        }
        let (src, dst) = (portless(f.proto, f.src), portless(f.proto, f.dst));
        let at = |a: SocketAddr, b: SocketAddr| self.ends.get(&(f.proto, a, b));
        if f.src_owner.is_none() {
            f.src_owner = at(src, dst).and_then(|e| e.send.clone().or_else(|| e.recv.clone()));
        }
        if f.dst_owner.is_none() && src != dst {
            f.dst_owner = at(dst, src).and_then(|e| e.recv.clone().or_else(|| e.send.clone()));
        }
        if f.src_owner.is_some() || f.dst_owner.is_some() {
            self.stats.named += 1;
        } else {
            self.stats.unnamed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn report(proto: u8, local: SocketAddr, remote: SocketAddr, send: bool, pid: u32) -> SockEvent {
        let mut ev = SockEvent::ZERO;
        ev.kind = kind::DGRAM;
        ev.protocol = u16::from(proto);
        ev.family = sensor_common::AF_INET;
        let v4 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v) => v.octets(),
            IpAddr::V6(_) => unreachable!(),
        };
        ev.local_addr[..4].copy_from_slice(&v4(local));
        ev.remote_addr[..4].copy_from_slice(&v4(remote));
        ev.local_port = local.port();
        ev.remote_port = remote.port();
        ev.flags = if send { flags::SEND } else { flags::RECV };
        ev.pid = pid;
        ev.uid = 1000;
        ev.cgroup_id = 42;
        ev.comm[..4].copy_from_slice(b"proc");
        ev
    }

    fn flow(proto: u8, src: SocketAddr, dst: SocketAddr) -> FlowRecord {
        FlowRecord::new(proto, src, dst, "packets")
    }

    fn sa(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port)
    }

    #[test]
    fn udp_pair_on_loopback_names_both_ends() {
        let mut o = DgramOwners::default();
        let now = Instant::now();
        let (c, s) = (sa(1, 40000), sa(1, 53));
        o.on_event(&report(17, c, s, true, 10), now);
        o.on_event(&report(17, s, c, false, 20), now);
        o.on_event(&report(17, s, c, true, 20), now);
        let mut f = flow(17, c, s);
        o.fill(&mut f);
        let (src, dst) = (f.src_owner.unwrap(), f.dst_owner.unwrap());
        assert_eq!((src.pid, src.attr, src.uid), (10, Attr::Send, Some(1000)));
        assert_eq!(
            (dst.pid, dst.attr, dst.cgroup_id),
            (20, Attr::Recv, Some(42))
        );
        assert_eq!(o.stats().named, 1);
        // Another 5-tuple is not named.
        let mut g = flow(17, sa(1, 40001), s);
        o.fill(&mut g);
        assert!(g.src_owner.is_none() && g.dst_owner.is_none());
        assert_eq!(o.stats().unnamed, 1);
    }

    #[test]
    fn sockets_older_than_the_hooks_are_named_from_the_scan() {
        let server = Owner {
            pid: 5,
            comm: "dnsmasq".into(),
            attr: Attr::ProcScan,
            ..Default::default()
        };
        let bound = HashMap::from([((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53), server.clone())]);
        let mut o = DgramOwners::with_bound(bound);
        let now = Instant::now();
        let (c, s) = (sa(1, 40000), sa(1, 53));
        o.on_event(&report(17, c, s, true, 10), now);
        o.on_event(&report(17, s, c, false, 0), now);
        // An unknown socket of pid 0 names nothing.
        o.on_event(&report(17, sa(1, 9), c, false, 0), now);
        assert_eq!(o.len(), 2);
        let mut f = flow(17, c, s);
        o.fill(&mut f);
        assert_eq!(f.dst_owner, Some(server));
    }

    #[test]
    fn loopback_echo_names_only_the_pinger_and_expires() {
        let mut o = DgramOwners::default();
        let now = Instant::now();
        let a = sa(1, 0);
        o.on_event(&report(ICMP, a, a, true, 7), now);
        o.on_event(&report(ICMP, a, a, false, 7), now);
        // The packet view reports ICMP type/code as the destination port.
        let mut f = flow(ICMP, a, sa(1, 8 << 8));
        o.fill(&mut f);
        assert_eq!(f.src_owner.as_ref().map(|o| o.pid), Some(7));
        assert!(f.dst_owner.is_none());
        o.expire(now + KEEP);
        assert!(o.is_empty());
    }
}
