//! Turns socket events from the kernel into one flow per TCP connection.
//!
//! Each local socket is an *end*. A connection between two processes on this host has two
//! ends (the connecting socket and the accepted one), which join on the 5-tuple seen from
//! the initiator; a connection to or from another host has one. A flow is finished when
//! every end it has seen has closed.
//!
//! The initiator is the side that called `connect()`. Payload bytes each way are taken from
//! the receiving end's `bytes_received` when that end is local, else from the sending end's
//! `bytes_acked`: what the peer acknowledged is what it got.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

// foldhash: these maps see every connection (several times faster than SipHash here).
use foldhash::HashMap;
use sensor_common::{AF_INET, SockEvent, flags, kind, tcp_state};

use super::{
    clock::BootClock,
    listeners::Listeners,
    local::is_local,
    record::{Attr, EndReason, FlowRecord, Owner},
};

/// Initiator's end, responder's end.
const INITIATOR: usize = 0;
const RESPONDER: usize = 1;

#[derive(Debug, Clone, Copy, Default)]
struct CloseStats {
    /// False when the hook could not read the counters below.
    counted: bool,
    /// Payload only: the FIN's sequence byte already taken off.
    bytes_acked: u64,
    bytes_received: u64,
    srtt_us: u32,
    total_retrans: u32,
    old_state: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct End {
    present: bool,
    close: Option<CloseStats>,
}

#[derive(Debug)]
struct OpenFlow {
    src: SocketAddr,
    dst: SocketAddr,
    first_ns: u64,
    last_ns: u64,
    src_owner: Option<Owner>,
    dst_owner: Option<Owner>,
    ends: [End; 2],
    /// Finished only when both ends have closed, even if one has not been seen yet.
    wait_both: bool,
    /// `first_ns` is the initiator's connect() on this host.
    starts_at_connect: bool,
}

/// A local socket we have seen.
#[derive(Debug)]
struct Sock {
    /// Set once the 5-tuple is known.
    flow: Option<u64>,
    role: usize,
    /// From `connect()`, before the flow exists.
    owner: Option<Owner>,
    first_ns: u64,
    /// Seen calling connect(): `first_ns` is that call.
    connect_seen: bool,
}

/// Counters a caller may want to report.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrackerStats {
    pub events: u64,
    pub flows_started: u64,
    pub flows_finished: u64,
    /// Closes of sockets never seen opening (opened before the sensor attached).
    pub orphan_closes: u64,
    /// Flows ended early to keep the socket table within its bound (their close was lost,
    /// or there are more open connections than `max_flows`).
    pub evicted: u64,
}

#[derive(Debug)]
pub struct TcpTracker {
    clock: BootClock,
    listeners: Listeners,
    socks: HashMap<(u32, u64), Sock>,
    flows: HashMap<u64, OpenFlow>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    next_id: u64,
    stats: TrackerStats,
    /// Most sockets followed at once.
    max_socks: usize,
    /// This host's addresses besides loopback: a connection to one of them has both ends
    /// here, and its flow waits for both closes.
    host_addrs: HashSet<IpAddr>,
}

/// Decodes an event's address; IPv4-mapped IPv6 becomes IPv4 so both views of one peer agree.
pub(crate) fn addr(family: u16, raw: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    };
    SocketAddr::new(ip, port)
}

impl TcpTracker {
    pub fn new(clock: BootClock, listeners: Listeners) -> Self {
        Self {
            clock,
            listeners,
            socks: HashMap::default(),
            flows: HashMap::default(),
            by_tuple: HashMap::default(),
            next_id: 1,
            stats: TrackerStats::default(),
            max_socks: usize::MAX,
            host_addrs: HashSet::new(),
        }
    }

    /// This host's addresses now (loopback aside), to tell which peers are local.
    pub fn set_host_addrs(&mut self, addrs: HashSet<IpAddr>) {
        self.host_addrs = addrs;
    }

    /// Bounds the socket table: past `max`, the oldest of a few sockets is let go and its
    /// flow written now, as `evicted` (counted).
    pub fn with_limit(mut self, max: usize) -> Self {
        self.max_socks = max.max(1);
        self
    }

    fn evict_if_full(&mut self, out: &mut impl FnMut(FlowRecord)) {
        while self.socks.len() > self.max_socks {
            let Some(key) = self
                .socks
                .iter()
                .take(16)
                .min_by_key(|(_, s)| s.first_ns)
                .map(|(k, _)| *k)
            else {
                return;
            };
            let sock = self.socks.remove(&key).expect("present");
            let Some(flow) = sock.flow.and_then(|id| self.flows.remove(&id)) else {
                continue;
            };
            if let Some(id) = sock.flow
                && self.by_tuple.get(&(flow.src, flow.dst)) == Some(&id)
            {
                self.by_tuple.remove(&(flow.src, flow.dst));
            }
            self.stats.evicted += 1;
            self.stats.flows_finished += 1;
            out(self.finish(flow, Some(EndReason::Evicted)));
        }
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// A new boot-to-wall-clock offset for the flows finished from now on (see
    /// [`BootClock`]: after a wall-clock step, kernel times keep matching packet times).
    pub fn set_clock(&mut self, clock: BootClock) {
        self.clock = clock;
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }

    pub fn listeners_mut(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    /// Counts an event read from the ring that another table applies (datagram owners).
    pub fn count_event(&mut self) {
        self.stats.events += 1;
    }

    /// Applies one event; finished flows are passed to `out`.
    pub fn on_event(&mut self, ev: &SockEvent, out: &mut impl FnMut(FlowRecord)) {
        self.stats.events += 1;
        if ev.kind == kind::CLOSE {
            let key = (ev.source, ev.sock_id);
            // The process that accepted this end, kept in the kernel until its close.
            let accepted =
                (ev.start_kind == kind::ACCEPT).then(|| Owner::from_event(ev, Attr::Accept));
            // The start the kernel kept for this end rides in its close (an accepted end's
            // too, named by its first I/O: `ACCEPT` then, with the ends it was established
            // with).
            if ev.start_kind != 0 && !self.socks.contains_key(&key) {
                let mut start = *ev;
                start.kind = ev.start_kind;
                start.ts_ns = ev.start_ns;
                self.on_start(&start);
            }
            let local = addr(ev.family, &ev.local_addr, ev.local_port);
            let remote = addr(ev.family, &ev.remote_addr, ev.remote_port);
            self.on_close(ev, key, (local, remote), accepted, out);
        } else {
            self.on_start(ev);
        }
        self.evict_if_full(out);
    }

    /// A connection end the kernel still held open when the hooks were detached (its
    /// start kept in the kernel, never sent): followed like its start event, so that
    /// [`Self::flush_all`] writes it. Not counted as an event read from the ring.
    pub fn on_open_at_shutdown(&mut self, ev: &SockEvent, out: &mut impl FnMut(FlowRecord)) {
        if ev.kind == kind::ACCEPT
            || (ev.kind != kind::CLOSE && !self.socks.contains_key(&(ev.source, ev.sock_id)))
        {
            self.on_start(ev);
            self.evict_if_full(out);
        }
    }

    /// Any event but a close.
    fn on_start(&mut self, ev: &SockEvent) {
        let key = (ev.source, ev.sock_id);
        let local = addr(ev.family, &ev.local_addr, ev.local_port);
        let remote = addr(ev.family, &ev.remote_addr, ev.remote_port);
        match ev.kind {
            kind::LISTEN => {
                let owner = Owner::from_event(ev, Attr::Listener);
                self.listeners.insert(local.ip(), local.port(), owner);
                // Remembered so the listener's close can remove it.
                self.socks.insert(
                    key,
                    Sock {
                        flow: None,
                        role: RESPONDER,
                        owner: None,
                        first_ns: ev.ts_ns,
                        connect_seen: false,
                    },
                );
            }
            kind::CONNECT => {
                let sock = Sock {
                    flow: None,
                    role: INITIATOR,
                    owner: Some(Owner::from_event(ev, Attr::Connect)),
                    first_ns: ev.ts_ns,
                    connect_seen: true,
                };
                self.socks.insert(key, sock);
                // The tracepoint sees connect() before the source port is chosen.
                if ev.local_port != 0 {
                    self.bind(key, local, remote, ev.ts_ns);
                }
            }
            kind::ACTIVE_ESTABLISHED => {
                self.socks.entry(key).or_insert(Sock {
                    flow: None,
                    role: INITIATOR,
                    owner: None,
                    first_ns: ev.ts_ns,
                    connect_seen: false,
                });
                self.bind(key, local, remote, ev.ts_ns);
            }
            kind::PASSIVE_ESTABLISHED => {
                self.socks.insert(
                    key,
                    Sock {
                        flow: None,
                        role: RESPONDER,
                        owner: None,
                        first_ns: ev.ts_ns,
                        connect_seen: false,
                    },
                );
                self.bind(key, local, remote, ev.ts_ns);
            }
            // Kept by the kernel from the established end (its ends are set), riding in its
            // close or read at shutdown: the accepted end starts here, with its process.
            kind::ACCEPT if ev.local_port != 0 && !self.socks.contains_key(&key) => {
                self.socks.insert(
                    key,
                    Sock {
                        flow: None,
                        role: RESPONDER,
                        owner: Some(Owner::from_event(ev, Attr::Accept)),
                        first_ns: ev.ts_ns,
                        connect_seen: false,
                    },
                );
                self.bind(key, local, remote, ev.ts_ns);
            }
            // A process named for an end already followed (its established sent on its own).
            kind::ACCEPT => {
                let owner = Owner::from_event(ev, Attr::Accept);
                match self.socks.get_mut(&key) {
                    Some(sock) => match sock.flow.and_then(|id| self.flows.get_mut(&id)) {
                        Some(flow) if sock.role == RESPONDER => flow.dst_owner = Some(owner),
                        Some(_) => {}
                        None => sock.owner = Some(owner),
                    },
                    None => {
                        self.socks.insert(
                            key,
                            Sock {
                                flow: None,
                                role: RESPONDER,
                                owner: Some(owner),
                                first_ns: ev.ts_ns,
                                connect_seen: false,
                            },
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Attaches socket `key` to the flow of its 5-tuple, creating the flow if needed.
    fn bind(&mut self, key: (u32, u64), local: SocketAddr, remote: SocketAddr, ts: u64) {
        let Some(sock) = self.socks.get_mut(&key) else {
            return;
        };
        if sock.flow.is_some() {
            return;
        }
        let role = sock.role;
        let (src, dst) = if role == INITIATOR {
            (local, remote)
        } else {
            (remote, local)
        };
        let first_ns = sock.first_ns;
        let connect_seen = sock.connect_seen;
        let owner = sock.owner.take();
        let id = match self.by_tuple.get(&(src, dst)) {
            Some(&id) if self.flows.get(&id).is_some_and(|f| !f.ends[role].present) => id,
            _ => {
                let id = self.next_id;
                self.next_id += 1;
                self.stats.flows_started += 1;
                self.flows.insert(
                    id,
                    OpenFlow {
                        src,
                        dst,
                        first_ns,
                        last_ns: ts,
                        src_owner: None,
                        dst_owner: None,
                        ends: [End::default(); 2],
                        wait_both: false,
                        starts_at_connect: false,
                    },
                );
                self.by_tuple.insert((src, dst), id);
                id
            }
        };
        sock.flow = Some(id);
        // The fallback for the accepting end: who made the listener.
        let listener_owner = if role == RESPONDER && owner.is_none() {
            self.listeners
                .owner_of(local.ip(), local.port())
                .cloned()
                .map(|o| Owner {
                    attr: Attr::Listener,
                    ..o
                })
        } else {
            None
        };
        let flow = self.flows.get_mut(&id).expect("flow just looked up");
        flow.ends[role].present = true;
        flow.first_ns = flow.first_ns.min(first_ns);
        flow.starts_at_connect |= connect_seen && flow.first_ns == first_ns;
        flow.last_ns = flow.last_ns.max(ts);
        if role == INITIATOR {
            flow.src_owner = owner.or(flow.src_owner.take());
        } else {
            flow.dst_owner = owner.or(listener_owner).or(flow.dst_owner.take());
        }
    }

    /// A close of a socket opened before we attached. The role comes from the listener
    /// table, the owner from the /proc scan at start; its start is unknown, so first_seen is
    /// this close.
    fn bind_orphan(
        &mut self,
        key: (u32, u64),
        (local, remote): (SocketAddr, SocketAddr),
        ts: u64,
        accepted: bool,
    ) {
        self.stats.orphan_closes += 1;
        let listening = accepted || self.listeners.owner_of(local.ip(), local.port()).is_some();
        let role = if listening { RESPONDER } else { INITIATOR };
        let owner = self.listeners.take_connection_owner(local, remote);
        let (sock_owner, exact_dst) = if role == INITIATOR {
            (owner, None)
        } else {
            (None, owner)
        };
        self.socks.insert(
            key,
            Sock {
                flow: None,
                role,
                owner: sock_owner,
                first_ns: ts,
                connect_seen: false,
            },
        );
        self.bind(key, local, remote, ts);
        let id = self.socks.get(&key).and_then(|s| s.flow);
        if let Some(flow) = id.and_then(|id| self.flows.get_mut(&id)) {
            if exact_dst.is_some() {
                flow.dst_owner = exact_dst;
            }
            // With a local peer the other end is ours too: wait for its close as well.
            flow.wait_both |= is_local(&self.host_addrs, remote.ip());
        }
    }

    fn on_close(
        &mut self,
        ev: &SockEvent,
        key: (u32, u64),
        (local, remote): (SocketAddr, SocketAddr),
        accepted: Option<Owner>,
        out: &mut impl FnMut(FlowRecord),
    ) {
        tracing::trace!(
            %local, %remote, old_state = ev.old_state, flags = ev.flags, source = ev.source,
            acked = ev.bytes_acked, received = ev.bytes_received, "close"
        );
        if ev.old_state == tcp_state::LISTEN {
            self.socks.remove(&key);
            self.listeners.remove(local.ip(), local.port());
            return;
        }
        if self.socks.contains_key(&key) {
            self.bind(key, local, remote, ev.ts_ns);
        } else {
            self.bind_orphan(key, (local, remote), ev.ts_ns, accepted.is_some());
        }
        let Some(sock) = self.socks.remove(&key) else {
            return;
        };
        let Some(id) = sock.flow else {
            return;
        };
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.last_ns = flow.last_ns.max(ev.ts_ns);
        if sock.role == RESPONDER
            && let Some(owner) = accepted
        {
            flow.dst_owner = Some(owner);
        }
        // A connection that was established with a peer on this host has that peer's end
        // to come, even if nothing of it has been seen yet (the kernel sends a connect()
        // only inside its close, so the accepting end may close first).
        if !matches!(
            ev.old_state,
            tcp_state::SYN_SENT | tcp_state::SYN_RECV | tcp_state::NEW_SYN_RECV
        ) && is_local(&self.host_addrs, remote.ip())
        {
            flow.wait_both = true;
        }
        let fin = |bit| u64::from(ev.flags & bit != 0);
        // The active opener's bytes_acked also counts its SYN, acknowledged by the SYN-ACK.
        let syn = u64::from(sock.role == INITIATOR && ev.bytes_acked > 0);
        flow.ends[sock.role].close = Some(CloseStats {
            counted: ev.flags & flags::NO_COUNTERS == 0,
            bytes_acked: ev.bytes_acked.saturating_sub(fin(flags::FIN_ACKED) + syn),
            bytes_received: ev.bytes_received.saturating_sub(fin(flags::FIN_IN)),
            srtt_us: ev.srtt_us,
            total_retrans: ev.total_retrans,
            old_state: ev.old_state,
        });
        let done = flow
            .ends
            .iter()
            .all(|e| e.close.is_some() || (!e.present && !flow.wait_both));
        if done {
            let flow = self.flows.remove(&id).expect("present");
            if self.by_tuple.get(&(flow.src, flow.dst)) == Some(&id) {
                self.by_tuple.remove(&(flow.src, flow.dst));
            }
            self.stats.flows_finished += 1;
            out(self.finish(flow, None));
        }
    }

    /// Ends every open flow (sensor stopping), passing them to `out`.
    pub fn flush_all(&mut self, out: &mut impl FnMut(FlowRecord)) {
        let mut flows: Vec<_> = self.flows.drain().collect();
        flows.sort_by_key(|(id, _)| *id);
        self.by_tuple.clear();
        self.socks.clear();
        for (_, flow) in flows {
            self.stats.flows_finished += 1;
            let rec = self.finish(flow, Some(EndReason::Shutdown));
            out(rec);
        }
    }

    fn finish(&self, flow: OpenFlow, forced: Option<EndReason>) -> FlowRecord {
        let [ini, res] = flow.ends;
        let (ic, rc) = (ini.close, res.close);
        // Ends whose counters were read; the others still tell how the connection ended.
        let (ic_n, rc_n) = (ic.filter(|c| c.counted), rc.filter(|c| c.counted));
        // Receiver's count when the receiver is local, else what the sender saw acked.
        let src_payload = rc_n
            .map(|c| c.bytes_received)
            .or(ic_n.map(|c| c.bytes_acked));
        let dst_payload = ic_n
            .map(|c| c.bytes_received)
            .or(rc_n.map(|c| c.bytes_acked));
        let srtt_us = ic_n.or(rc_n).map(|c| c.srtt_us);
        let retransmits = match (ic_n, rc_n) {
            (None, None) => None,
            (a, b) => Some(
                a.map_or(0, |c| c.total_retrans)
                    .saturating_add(b.map_or(0, |c| c.total_retrans)),
            ),
        };
        let end_reason = forced.unwrap_or_else(|| {
            let reasons = [ic, rc].map(|c| c.map(|c| end_reason(c.old_state)));
            if reasons.contains(&Some(EndReason::Rst)) {
                EndReason::Rst
            } else if reasons.contains(&Some(EndReason::Failed)) {
                EndReason::Failed
            } else {
                EndReason::Fin
            }
        });
        FlowRecord {
            first_seen_ms: self.clock.unix_ms(flow.first_ns),
            last_seen_ms: self.clock.unix_ms(flow.last_ns),
            seen_ns: Some((
                self.clock.unix_ns(flow.first_ns),
                self.clock.unix_ns(flow.last_ns),
            )),
            starts_at_connect: flow.starts_at_connect,
            src_payload_bytes: src_payload,
            dst_payload_bytes: dst_payload,
            src_owner: flow.src_owner,
            dst_owner: flow.dst_owner,
            srtt_us,
            retransmits,
            end_reason,
            ..FlowRecord::kernel(flow.src, flow.dst)
        }
    }
}

/// How one end closed, from the state it left for TCP_CLOSE.
fn end_reason(old_state: u32) -> EndReason {
    match old_state {
        // Orderly: after our FIN was acked (TIME_WAIT follows), or after the peer's FIN.
        tcp_state::FIN_WAIT2 | tcp_state::LAST_ACK | tcp_state::CLOSING | tcp_state::TIME_WAIT => {
            EndReason::Fin
        }
        tcp_state::SYN_SENT | tcp_state::SYN_RECV | tcp_state::NEW_SYN_RECV => EndReason::Failed,
        // From ESTABLISHED, CLOSE_WAIT or FIN_WAIT1 only a reset (sent or received) closes.
        _ => EndReason::Rst,
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::{AF_INET6, source};

    use super::*;

    fn ev(kind: u32, id: u64, local: &str, remote: &str, pid: u32, comm: &str) -> SockEvent {
        let l: SocketAddr = local.parse().unwrap();
        let r: SocketAddr = remote.parse().unwrap();
        let mut e = SockEvent::ZERO;
        e.kind = kind;
        e.source = source::SOCK_OPS;
        e.sock_id = id;
        e.ts_ns = 1_000_000 * id;
        e.pid = pid;
        e.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        let put = |ip: IpAddr, raw: &mut [u8; 16]| match ip {
            IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => *raw = v6.octets(),
        };
        e.family = if l.is_ipv4() { AF_INET } else { AF_INET6 };
        put(l.ip(), &mut e.local_addr);
        put(r.ip(), &mut e.remote_addr);
        e.local_port = l.port();
        e.remote_port = r.port();
        e
    }

    fn close(mut e: SockEvent, old: u32, acked: u64, received: u64) -> SockEvent {
        e.kind = kind::CLOSE;
        e.old_state = old;
        e.flags = match old {
            tcp_state::FIN_WAIT2 => flags::FIN_ACKED | flags::FIN_IN,
            tcp_state::LAST_ACK => flags::FIN_ACKED | flags::FIN_IN,
            _ => 0,
        };
        e.bytes_acked = acked;
        e.bytes_received = received;
        e.pid = 0;
        e
    }

    fn tracker() -> TcpTracker {
        TcpTracker::new(BootClock::fixed(0), Listeners::default())
    }

    #[test]
    fn loopback_connection_is_one_flow_with_both_processes() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.on_event(
            &ev(kind::LISTEN, 1, "127.0.0.1:80", "0.0.0.0:0", 10, "srv"),
            &mut |r| out.push(r),
        );
        let c = ev(
            kind::CONNECT,
            2,
            "127.0.0.1:5000",
            "127.0.0.1:80",
            20,
            "cli",
        );
        t.on_event(&c, &mut |r| out.push(r));
        let s = ev(
            kind::PASSIVE_ESTABLISHED,
            3,
            "127.0.0.1:80",
            "127.0.0.1:5000",
            20,
            "cli",
        );
        t.on_event(&s, &mut |r| out.push(r));
        // Counters include each FIN; the close flags take it off.
        t.on_event(&close(c, tcp_state::FIN_WAIT2, 101, 8), &mut |r| {
            out.push(r)
        });
        assert!(out.is_empty(), "server end still open");
        t.on_event(&close(s, tcp_state::LAST_ACK, 8, 101), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(f.src, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(f.dst, "127.0.0.1:80".parse().unwrap());
        assert_eq!(f.src_owner.as_ref().unwrap().comm, "cli");
        assert_eq!(
            f.dst_owner.as_ref().unwrap().pid,
            10,
            "accept side from listener"
        );
        assert_eq!(
            (f.src_payload_bytes, f.dst_payload_bytes),
            (Some(100), Some(7))
        );
        assert_eq!(f.end_reason, EndReason::Fin);
        assert!(f.starts_at_connect, "begins at the client's connect()");
        assert_eq!(f.seen_ns, Some((2_000_000, 3_000_000)));
        assert_eq!(t.open_flows(), 0);
    }

    /// The connecting end's bytes_acked counts its SYN too (51 = 50 payload + SYN).
    #[test]
    fn reset_and_remote_peer() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = ev(
            kind::CONNECT,
            2,
            "10.0.0.1:5000",
            "192.0.2.1:443",
            20,
            "curl",
        );
        t.on_event(&c, &mut |r| out.push(r));
        t.on_event(&close(c, tcp_state::ESTABLISHED, 51, 60), &mut |r| {
            out.push(r)
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_reason, EndReason::Rst);
        assert_eq!(out[0].src_payload_bytes, Some(50));
        assert_eq!(out[0].dst_payload_bytes, Some(60));
        assert_eq!(out[0].dst_owner, None);
    }

    #[test]
    fn mapped_ipv6_joins_ipv4_and_shutdown_flushes() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = ev(
            kind::CONNECT,
            2,
            "[::ffff:127.0.0.1]:5000",
            "[::ffff:127.0.0.1]:80",
            1,
            "a",
        );
        t.on_event(&c, &mut |r| out.push(r));
        let s = ev(
            kind::PASSIVE_ESTABLISHED,
            3,
            "127.0.0.1:80",
            "127.0.0.1:5000",
            0,
            "",
        );
        t.on_event(&s, &mut |r| out.push(r));
        assert_eq!(t.open_flows(), 1);
        t.flush_all(&mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_reason, EndReason::Shutdown);
        assert!(out[0].src.is_ipv4());
    }

    #[test]
    fn refused_connect_is_failed() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = ev(kind::CONNECT, 2, "127.0.0.1:5000", "127.0.0.1:9", 1, "a");
        t.on_event(&c, &mut |r| out.push(r));
        t.on_event(&close(c, tcp_state::SYN_SENT, 0, 0), &mut |r| out.push(r));
        assert_eq!(out[0].end_reason, EndReason::Failed);
    }

    #[test]
    fn connection_older_than_the_sensor_is_one_flow_at_its_close() {
        let mut t = tracker();
        t.listeners_mut().insert(
            "127.0.0.1".parse().unwrap(),
            80,
            Owner {
                pid: 10,
                comm: "srv".into(),
                ..Default::default()
            },
        );
        let mut out = Vec::new();
        let mut c = ev(kind::CLOSE, 2, "127.0.0.1:5000", "127.0.0.1:80", 0, "");
        c.source = source::TRACEPOINT;
        let mut s = ev(kind::CLOSE, 3, "127.0.0.1:80", "127.0.0.1:5000", 0, "");
        s.source = source::TRACEPOINT;
        t.on_event(&close(c, tcp_state::FIN_WAIT2, 11, 6), &mut |r| out.push(r));
        assert!(out.is_empty(), "loopback: waits for the other end");
        t.on_event(&close(s, tcp_state::LAST_ACK, 6, 11), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].src, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            (out[0].src_payload_bytes, out[0].dst_payload_bytes),
            (Some(10), Some(5))
        );
        assert_eq!(out[0].dst_owner.as_ref().unwrap().comm, "srv");
        assert!(!out[0].starts_at_connect, "begins at its first close");
        assert_eq!(t.stats().orphan_closes, 2);
    }

    /// The kernel keeps an end's connect() and sends it in the close: a client's close
    /// record alone joins the accepted end's flow and names the client.
    fn with_start(
        mut close: SockEvent,
        start_kind: u32,
        start_ns: u64,
        pid: u32,
        comm: &str,
    ) -> SockEvent {
        close.start_kind = start_kind;
        close.start_ns = start_ns;
        close.pid = pid;
        close.comm = [0; 16];
        close.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        close
    }

    #[test]
    fn start_kept_until_close_makes_one_loopback_flow() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.on_event(
            &ev(kind::LISTEN, 1, "127.0.0.1:80", "0.0.0.0:0", 10, "srv"),
            &mut |r| out.push(r),
        );
        let s = ev(
            kind::PASSIVE_ESTABLISHED,
            3,
            "127.0.0.1:80",
            "127.0.0.1:5000",
            99,
            "softirq",
        );
        t.on_event(&s, &mut |r| out.push(r));
        let c = ev(kind::CLOSE, 4, "127.0.0.1:5000", "127.0.0.1:80", 0, "");
        let c = with_start(
            close(c, tcp_state::FIN_WAIT2, 101, 8),
            kind::CONNECT,
            2_500_000,
            20,
            "cli",
        );
        t.on_event(&c, &mut |r| out.push(r));
        assert!(out.is_empty(), "server end still open");
        t.on_event(&close(s, tcp_state::LAST_ACK, 8, 101), &mut |r| out.push(r));
        assert_eq!(out.len(), 1, "one flow for both ends");
        let f = &out[0];
        assert_eq!(f.src, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            f.src_owner,
            Some(Owner {
                pid: 20,
                comm: "cli".into(),
                uid: Some(0),
                attr: Attr::Connect,
                ..Default::default()
            })
        );
        let dst = f.dst_owner.as_ref().unwrap();
        assert_eq!((dst.pid, dst.attr), (10, Attr::Listener));
        assert_eq!(
            (f.src_payload_bytes, f.dst_payload_bytes),
            (Some(100), Some(7))
        );
        assert!(f.starts_at_connect, "begins at the kept connect()");
        assert_eq!(f.seen_ns, Some((2_500_000, 4_000_000)));
        assert_eq!(t.stats().events, 4, "the kept start is not an event read");
        assert_eq!(t.stats().orphan_closes, 0);
        assert_eq!(t.open_flows(), 0);
    }

    /// A worker that accepted (not the listener's maker) is the accepting end's owner,
    /// whether its accept rides in the close or came as a record of its own.
    #[test]
    fn the_accepting_process_names_the_accepted_end() {
        for own_record in [false, true] {
            let mut t = tracker();
            let mut out = Vec::new();
            let mut listen = ev(kind::LISTEN, 1, "127.0.0.1:80", "0.0.0.0:0", 10, "parent");
            listen.uid = 33;
            t.on_event(&listen, &mut |r| out.push(r));
            let s = ev(
                kind::PASSIVE_ESTABLISHED,
                3,
                "127.0.0.1:80",
                "127.0.0.1:5000",
                99,
                "softirq",
            );
            t.on_event(&s, &mut |r| out.push(r));
            let mut accept = ev(kind::ACCEPT, 3, "0.0.0.0:0", "0.0.0.0:0", 11, "worker");
            accept.uid = 33;
            accept.cgroup_id = 77;
            let mut server_close = close(s, tcp_state::LAST_ACK, 8, 101);
            if own_record {
                t.on_event(&accept, &mut |r| out.push(r));
            } else {
                server_close = with_start(server_close, kind::ACCEPT, 2_600_000, 11, "worker");
                server_close.uid = 33;
                server_close.cgroup_id = 77;
            }
            let c = ev(kind::CLOSE, 4, "127.0.0.1:5000", "127.0.0.1:80", 0, "");
            let c = with_start(
                close(c, tcp_state::FIN_WAIT2, 101, 8),
                kind::CONNECT,
                2_500_000,
                20,
                "cli",
            );
            t.on_event(&c, &mut |r| out.push(r));
            t.on_event(&server_close, &mut |r| out.push(r));
            assert_eq!(out.len(), 1, "one flow for both ends");
            let dst = out[0].dst_owner.as_ref().unwrap();
            assert_eq!(
                (dst.pid, dst.comm.as_str(), dst.attr, dst.uid, dst.cgroup_id),
                (11, "worker", Attr::Accept, Some(33), Some(77)),
                "own record: {own_record}"
            );
            assert_eq!(out[0].src_owner.as_ref().unwrap().attr, Attr::Connect);
        }
    }

    /// Both ends' starts ride in their closes only (two records a loopback connection): the
    /// accepted end's, named by its first I/O (`ACCEPT`), or still `PASSIVE_ESTABLISHED`
    /// when it did none, then named after its listener. Either end may close first.
    #[test]
    fn accepted_end_kept_until_its_close_joins_the_flow() {
        for (start, server_first) in [
            (kind::ACCEPT, false),
            (kind::ACCEPT, true),
            (kind::PASSIVE_ESTABLISHED, false),
        ] {
            let mut t = tracker();
            let mut out = Vec::new();
            t.on_event(
                &ev(kind::LISTEN, 1, "127.0.0.1:80", "0.0.0.0:0", 10, "parent"),
                &mut |r| out.push(r),
            );
            let s = ev(kind::CLOSE, 3, "127.0.0.1:80", "127.0.0.1:5000", 0, "");
            let s = with_start(
                close(s, tcp_state::LAST_ACK, 8, 101),
                start,
                2_600_000,
                11,
                "worker",
            );
            let c = ev(kind::CLOSE, 4, "127.0.0.1:5000", "127.0.0.1:80", 0, "");
            let c = with_start(
                close(c, tcp_state::FIN_WAIT2, 101, 8),
                kind::CONNECT,
                2_500_000,
                20,
                "cli",
            );
            let order = if server_first { [&s, &c] } else { [&c, &s] };
            t.on_event(order[0], &mut |r| out.push(r));
            assert!(
                out.is_empty(),
                "{start}: the other end is local, still open"
            );
            t.on_event(order[1], &mut |r| out.push(r));
            assert_eq!(out.len(), 1, "{start}: one flow for both ends");
            let f = &out[0];
            assert_eq!(f.src, "127.0.0.1:5000".parse().unwrap());
            let dst = f.dst_owner.as_ref().unwrap();
            let want = if start == kind::ACCEPT {
                (11, "worker", Attr::Accept)
            } else {
                (10, "parent", Attr::Listener)
            };
            assert_eq!((dst.pid, dst.comm.as_str(), dst.attr), want);
            assert_eq!(f.src_owner.as_ref().unwrap().attr, Attr::Connect);
            assert_eq!(
                (f.src_payload_bytes, f.dst_payload_bytes),
                (Some(100), Some(7))
            );
            assert_eq!(
                f.seen_ns.map(|s| s.0),
                Some(2_500_000),
                "from the connect()"
            );
            assert_eq!(t.stats().orphan_closes, 0, "{start}: no end is an orphan");
            assert_eq!(t.open_flows(), 0);
        }
    }

    /// The accepting end closes first: its flow waits for the connecting end, whose close
    /// (carrying its connect()) comes later; and a refused loopback connect waits for nothing.
    #[test]
    fn accepting_end_closing_first_waits_for_the_local_peer() {
        let mut t = tracker();
        let mut out = Vec::new();
        let s = ev(
            kind::PASSIVE_ESTABLISHED,
            3,
            "127.0.0.1:80",
            "127.0.0.1:5000",
            0,
            "",
        );
        t.on_event(&s, &mut |r| out.push(r));
        t.on_event(&close(s, tcp_state::FIN_WAIT2, 8, 101), &mut |r| {
            out.push(r)
        });
        assert!(out.is_empty(), "the connecting end is still to close");
        let c = ev(kind::CLOSE, 4, "127.0.0.1:5000", "127.0.0.1:80", 0, "");
        let c = with_start(
            close(c, tcp_state::LAST_ACK, 101, 8),
            kind::CONNECT,
            2_000_000,
            20,
            "cli",
        );
        t.on_event(&c, &mut |r| out.push(r));
        assert_eq!(out.len(), 1, "one flow for both ends");
        assert_eq!(out[0].src, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(out[0].src_owner.as_ref().unwrap().pid, 20);
        assert_eq!(
            (out[0].src_payload_bytes, out[0].dst_payload_bytes),
            (Some(100), Some(7))
        );
        // The same with a peer that is this host's address on another interface.
        let mut t = tracker();
        t.set_host_addrs(HashSet::from(["192.0.2.5".parse().unwrap()]));
        let mut out = Vec::new();
        let s = ev(
            kind::PASSIVE_ESTABLISHED,
            3,
            "192.0.2.5:80",
            "192.0.2.5:5000",
            0,
            "",
        );
        t.on_event(&s, &mut |r| out.push(r));
        t.on_event(&close(s, tcp_state::LAST_ACK, 8, 101), &mut |r| out.push(r));
        assert!(out.is_empty(), "a host address is a local peer");
        // A peer elsewhere: the accepting end alone is the flow.
        let s = ev(
            kind::PASSIVE_ESTABLISHED,
            5,
            "192.0.2.5:80",
            "198.51.100.1:5000",
            0,
            "",
        );
        t.on_event(&s, &mut |r| out.push(r));
        t.on_event(&close(s, tcp_state::LAST_ACK, 8, 101), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].src, "198.51.100.1:5000".parse().unwrap());
        // Refused: no accepted end will ever come.
        let mut t = tracker();
        let mut out = Vec::new();
        let c = ev(kind::CLOSE, 6, "127.0.0.1:5001", "127.0.0.1:9", 0, "");
        let c = with_start(
            close(c, tcp_state::SYN_SENT, 0, 0),
            kind::CONNECT,
            1,
            20,
            "cli",
        );
        t.on_event(&c, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_reason, EndReason::Failed);
    }

    #[test]
    fn connection_to_another_host_is_one_record() {
        let mut t = tracker();
        let mut out = Vec::new();
        let c = ev(kind::CLOSE, 7, "10.0.0.1:5000", "192.0.2.1:443", 0, "");
        let c = with_start(
            close(c, tcp_state::FIN_WAIT2, 51, 61),
            kind::CONNECT,
            1_000_000,
            20,
            "curl",
        );
        t.on_event(&c, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].src_owner.as_ref().unwrap().comm, "curl");
        assert_eq!(out[0].dst_owner, None);
        assert_eq!(
            (out[0].src_payload_bytes, out[0].dst_payload_bytes),
            (Some(49), Some(60))
        );
        assert_eq!(out[0].end_reason, EndReason::Fin);
        assert!(out[0].starts_at_connect);
        assert_eq!(out[0].seen_ns, Some((1_000_000, 7_000_000)));
        assert_eq!(
            t.stats().orphan_closes,
            0,
            "not an orphan: its start was kept"
        );
    }

    /// Connections still open at shutdown whose start the kernel kept are written as
    /// `shutdown` rows with their process, like those whose start was a record.
    #[test]
    fn kept_starts_are_flushed_at_shutdown() {
        let mut t = tracker();
        let mut out = Vec::new();
        let s = ev(
            kind::PASSIVE_ESTABLISHED,
            3,
            "[::1]:80",
            "[::1]:5000",
            0,
            "",
        );
        t.on_event(&s, &mut |r| out.push(r));
        let c = ev(kind::CONNECT, 2, "[::1]:5000", "[::1]:80", 20, "cli");
        t.on_open_at_shutdown(&c, &mut |r| out.push(r));
        let far = ev(
            kind::CONNECT,
            5,
            "10.0.0.1:6000",
            "192.0.2.1:443",
            21,
            "far",
        );
        t.on_open_at_shutdown(&far, &mut |r| out.push(r));
        // A close is never an open socket.
        let closed = ev(kind::CLOSE, 6, "10.0.0.1:6001", "192.0.2.1:443", 0, "");
        t.on_open_at_shutdown(&closed, &mut |r| out.push(r));
        assert_eq!(t.stats().events, 1);
        assert_eq!(t.open_flows(), 2);
        t.flush_all(&mut |r| out.push(r));
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|f| f.end_reason == EndReason::Shutdown));
        assert_eq!(out[0].src_owner.as_ref().unwrap().comm, "cli");
        assert_eq!(out[0].dst, "[::1]:80".parse().unwrap());
        assert_eq!(out[1].src_owner.as_ref().unwrap().comm, "far");
    }

    #[test]
    fn socket_table_is_bounded_and_evictions_counted() {
        let mut t = tracker().with_limit(4);
        let mut out = Vec::new();
        for i in 0..10u16 {
            let local = format!("10.0.0.1:{}", 5000 + i);
            let c = ev(
                kind::CONNECT,
                u64::from(i) + 1,
                &local,
                "192.0.2.1:443",
                1,
                "a",
            );
            t.on_event(&c, &mut |r| out.push(r));
        }
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|f| f.end_reason == EndReason::Evicted));
        assert_eq!(t.stats().evicted, 6);
        assert_eq!(t.open_flows(), 4);
    }
}
