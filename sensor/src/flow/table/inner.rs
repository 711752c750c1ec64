//! Inner flows of tunnels: the connection inside a VXLAN, GRE, GTP-U... packet (see
//! [`crate::capture::tunnel`] for what is decapsulated) as a flow of its own, beside the
//! outer flow, which is counted as it always was.
//!
//! An inner flow's identity is its own 5-tuple plus the tunnel kind and id (VNI, TEID, GRE
//! key), so tenants reusing the same addresses in different VNIs stay apart. It counts
//! packets and inner IP-layer bytes (inner IP header + payload) each way, with the same
//! initiator rule, timeouts and TCP close as any flow: the bookkeeping is the table's own
//! [`account`], on maps of their own whose addresses carry the tunnel.
//!
//! The outer endpoints ride along with the key without being part of it: those of the
//! flow's first packet are reported, each end's outer address beside its inner address,
//! so `tunnel_src_ip` is the outer source of the initiator's packets whichever side sent
//! first. Inner fragments are not reassembled: a later inner fragment counts in a port-less
//! flow of its own.
use std::{
    cmp::Ordering,
    hash::{Hash, Hasher},
    net::IpAddr,
};

use super::{
    ACK, Addr, Ctx, FlowRecord, FlowTable, ICMP, ICMPV6, Key, Map, SYN, Seen, TCP, account,
    evict_one, flush_map, normalise, sweep_map, to16,
};
use crate::{
    capture::parse::{Inner, Packet},
    flow::record::{Tunnel, TunnelKind},
};

/// An inner address with its tunnel. Equality, order and hash are by (kind, id, addr);
/// `outer` is carried, not compared.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tagged<A> {
    kind: TunnelKind,
    id: Option<u32>,
    addr: A,
    /// The outer address this end's packets were sent from (or to, for the receiving end).
    outer: IpAddr,
}

impl<A: Ord> Tagged<A> {
    fn identity(&self) -> (TunnelKind, Option<u32>, &A) {
        (self.kind, self.id, &self.addr)
    }
}

impl<A: Ord> PartialEq for Tagged<A> {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl<A: Ord> Eq for Tagged<A> {}

impl<A: Ord> PartialOrd for Tagged<A> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<A: Ord> Ord for Tagged<A> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.identity().cmp(&other.identity())
    }
}

impl<A: Addr> Addr for Tagged<A> {
    fn ip(self) -> IpAddr {
        self.addr.ip()
    }

    fn tunnel(a: Self, b: Self, initiator: usize) -> Option<Tunnel> {
        let (i, r) = if initiator == 0 { (a, b) } else { (b, a) };
        Some(Tunnel {
            kind: i.kind,
            id: i.id,
            src: normalise(i.outer),
            dst: normalise(r.outer),
        })
    }
}

/// The tunnel part of a key in one word: kind, whether there is an id, the id.
fn tag<A>(t: &Tagged<A>) -> u64 {
    (t.kind as u64) << 33 | u64::from(t.id.is_some()) << 32 | u64::from(t.id.unwrap_or(0))
}

impl Hash for Key<Tagged<[u8; 4]>> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(
            u64::from(u32::from_ne_bytes(self.a.addr))
                | u64::from(u32::from_ne_bytes(self.b.addr)) << 32,
        );
        // Both ends are in one tunnel: `a`'s tag is the key's.
        state.write_u64(tag(&self.a));
        state.write_u64(self.ports_proto());
    }
}

impl Hash for Key<Tagged<[u8; 16]>> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.a.addr));
        state.write_u128(u128::from_ne_bytes(self.b.addr));
        state.write_u64(tag(&self.a));
        state.write_u64(self.ports_proto());
    }
}

/// The inner flows, by the inner packets' family.
#[derive(Default)]
pub(super) struct Tunnels {
    v4: Map<Tagged<[u8; 4]>>,
    v6: Map<Tagged<[u8; 16]>>,
}

impl Tunnels {
    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub(super) fn sweep(&mut self, ctx: &mut Ctx, now_ns: u64, out: &mut impl FnMut(FlowRecord)) {
        sweep_map(&mut self.v4, ctx, now_ns, out);
        sweep_map(&mut self.v6, ctx, now_ns, out);
    }

    pub(super) fn flush(&mut self, ctx: &mut Ctx, now_ns: u64, out: &mut impl FnMut(FlowRecord)) {
        flush_map(&mut self.v4, ctx, now_ns, out);
        flush_map(&mut self.v6, ctx, now_ns, out);
    }
}

impl FlowTable {
    /// Accounts the inner packet `i` of the tunnel packet `p` to its inner flow.
    pub(super) fn tunnel_packet(
        &mut self,
        ts_ns: u64,
        p: &Packet,
        i: &Inner,
        out: &mut impl FnMut(FlowRecord),
    ) {
        let (src, dst) = (normalise(i.src), normalise(i.dst));
        let icmp = matches!(i.proto, ICMP | ICMPV6);
        let later_fragment = i.fragment.is_some_and(|f| f.offset != 0);
        let (sport, dport) = if icmp || later_fragment {
            (0, 0)
        } else {
            (i.src_port, i.dst_port)
        };
        let seen = Seen {
            ts_ns,
            ip_len: i.ip_len,
            tcp_flags: i.tcp_flags,
            tcp_seq: i.tcp_seq,
            pure_syn: i.proto == TCP && i.tcp_flags & (SYN | ACK) == SYN,
            icmp: if icmp { u32::from(i.dst_port) } else { 0 },
        };
        let full = self.active() >= self.ctx.cfg.max_flows;
        fn tagged<A>(i: &Inner, addr: A, outer: IpAddr) -> Tagged<A> {
            Tagged {
                kind: i.kind,
                id: i.id,
                addr,
                outer,
            }
        }
        let t = &mut self.tunnels;
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (key, from_b) = Key::of(
                    tagged(i, s.octets(), p.src),
                    tagged(i, d.octets(), p.dst),
                    sport,
                    dport,
                    i.proto,
                );
                if full && !t.v4.contains_key(&key) {
                    evict(t, &mut self.ctx, out);
                }
                account(&mut t.v4, &mut self.ctx, key, from_b, &seen, out);
            }
            _ => {
                let (key, from_b) = Key::of(
                    tagged(i, to16(src), p.src),
                    tagged(i, to16(dst), p.dst),
                    sport,
                    dport,
                    i.proto,
                );
                if full && !t.v6.contains_key(&key) {
                    evict(t, &mut self.ctx, out);
                }
                account(&mut t.v6, &mut self.ctx, key, from_b, &seen, out);
            }
        }
    }
}

/// Makes room among the inner flows (the outer ones make room among themselves).
fn evict(t: &mut Tunnels, ctx: &mut Ctx, out: &mut impl FnMut(FlowRecord)) {
    if t.v4.len() >= t.v6.len() {
        evict_one(&mut t.v4, ctx, out);
    } else {
        evict_one(&mut t.v6, ctx, out);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::flow::{EndReason, TableConfig};

    const S: u64 = 1_000_000_000;

    /// An outer VXLAN packet between `outer_src` and `outer_dst` carrying a TCP packet from
    /// `src` to `dst` in VNI `vni`.
    fn vxlan(outer: (&str, &str), vni: u32, src: &str, dst: &str, flags: u8, len: u32) -> Packet {
        let s: SocketAddr = src.parse().unwrap();
        let d: SocketAddr = dst.parse().unwrap();
        // One outer UDP flow: the lower tunnel end's port is 50000, the other's 4789.
        let (src_port, dst_port) = if outer.0 < outer.1 {
            (50000, 4789)
        } else {
            (4789, 50000)
        };
        Packet {
            src: outer.0.parse().unwrap(),
            dst: outer.1.parse().unwrap(),
            proto: 17,
            src_port,
            dst_port,
            ip_len: len + 50,
            tcp_flags: 0,
            tcp_seq: 0,
            fragment: None,
            inner: Some(Inner {
                kind: TunnelKind::Vxlan,
                id: Some(vni),
                src: s.ip(),
                dst: d.ip(),
                proto: TCP,
                src_port: s.port(),
                dst_port: d.port(),
                ip_len: len,
                tcp_flags: flags,
                tcp_seq: 0,
                fragment: None,
            }),
        }
    }

    #[test]
    fn inner_flows_apart_by_vni_beside_the_outer_flow() {
        let mut t = FlowTable::new(TableConfig::default(), "file");
        let mut out = Vec::new();
        let (o1, o2) = ("192.0.2.1", "192.0.2.2");
        // The same tenant tuple in VNI 10 and VNI 20; the reply of VNI 10 comes first, from
        // the other tunnel end.
        let a = "10.0.0.1:40000";
        let b = "10.0.0.2:443";
        for (ts, p) in [
            (S, vxlan((o2, o1), 10, b, a, SYN | ACK, 60)),
            (S, vxlan((o1, o2), 10, a, b, ACK, 52)),
            (S, vxlan((o1, o2), 20, a, b, SYN, 60)),
            (2 * S, vxlan((o1, o2), 20, a, b, ACK, 40)),
        ] {
            t.packet(ts, &p, &mut |r| out.push(r));
        }
        assert_eq!(t.active(), 3, "one outer flow, two inner");
        t.flush_all(&mut |r| out.push(r));
        let outer: Vec<_> = out.iter().filter(|r| r.tunnel.is_none()).collect();
        assert_eq!(outer.len(), 1);
        // Outer counts as without decapsulation: the first packet's sender initiated.
        assert_eq!(outer[0].src.ip().to_string(), o2);
        assert_eq!(
            (outer[0].src_packets, outer[0].dst_packets),
            (Some(1), Some(3))
        );
        assert_eq!(
            (outer[0].src_bytes, outer[0].dst_bytes),
            (Some(110), Some(102 + 110 + 90))
        );
        let inner = |vni| {
            out.iter()
                .find(|r| r.tunnel.is_some_and(|t| t.id == Some(vni)))
                .unwrap_or_else(|| panic!("no flow in VNI {vni}: {out:?}"))
        };
        let v10 = inner(10);
        // Initiator from the SYN-ACK: a; its packets went o1 -> o2, though the first packet
        // seen was b's, o2 -> o1.
        assert_eq!(v10.src, a.parse().unwrap());
        assert_eq!(v10.dst, b.parse().unwrap());
        let t10 = v10.tunnel.unwrap();
        assert_eq!(t10.kind, TunnelKind::Vxlan);
        assert_eq!(
            (t10.src.to_string(), t10.dst.to_string()),
            (o1.into(), o2.into())
        );
        assert_eq!((v10.src_packets, v10.dst_packets), (Some(1), Some(1)));
        assert_eq!((v10.src_bytes, v10.dst_bytes), (Some(52), Some(60)));
        assert_eq!(v10.src_tcp_flags, Some(ACK));
        let v20 = inner(20);
        assert_eq!((v20.src_packets, v20.dst_packets), (Some(2), Some(0)));
        assert_eq!(v20.src_bytes, Some(100));
        assert_eq!(v20.end_reason, EndReason::Shutdown);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn inner_flows_time_out_and_count_towards_max_flows() {
        let cfg = TableConfig {
            max_flows: 2,
            ..TableConfig::default()
        };
        let mut t = FlowTable::new(cfg, "file");
        let mut out = Vec::new();
        let o = ("192.0.2.1", "192.0.2.2");
        t.packet(
            S,
            &vxlan(o, 1, "10.0.0.1:1", "10.0.0.2:2", ACK, 40),
            &mut |r| out.push(r),
        );
        assert_eq!(t.active(), 2);
        // A second inner flow: the table is full, an inner flow makes room.
        t.packet(
            S,
            &vxlan(o, 2, "10.0.0.1:1", "10.0.0.2:2", ACK, 40),
            &mut |r| out.push(r),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_reason, EndReason::Evicted);
        assert_eq!(out[0].tunnel.map(|t| t.id), Some(Some(1)));
        // Idle past the timeouts (UDP's for the outer flow, a TCP connection's for the
        // inner one): both end as idle.
        t.sweep(S + cfg.tcp_idle_timeout_ns, &mut |r| out.push(r));
        assert_eq!(t.active(), 0);
        assert_eq!(out.len(), 3);
        assert!(
            out[1..]
                .iter()
                .all(|r| r.end_reason == EndReason::IdleTimeout)
        );
        assert_eq!(out[1..].iter().filter(|r| r.tunnel.is_some()).count(), 1);
    }
}
