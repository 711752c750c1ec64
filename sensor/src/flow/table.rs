//! The packet flow table: one entry per bidirectional 5-tuple, counting packets, IP-layer
//! bytes (IPFIX octetDeltaCount: IP header + payload) and TCP flags each way.
//!
//! Initiator rule: the sender of a SYN without ACK (or the receiver of a SYN-ACK, when the
//! SYN was not captured); when neither was seen (the capture started mid-connection, or not
//! TCP), the sender of the first packet seen.
//!
//! One TCP connection is one record. A connection is *closed* by a RST, or by FIN both ways
//! and the first closer's ACK of the second FIN. Its record is written at once (so it reaches
//! the store, and its kernel twin in the merge, without waiting), and the entry stays in the
//! table, closed, for `close_linger`: late packets of the connection (the peer's ACK after a
//! simultaneous close, a retransmitted FIN, a repeated RST) join it and leave as one
//! *amendment* when the linger ends, which the store adds to the row already written. A new
//! SYN on the tuple during the linger is port reuse: the closed flow ends at once and the SYN
//! starts a new one. A FIN one way, or FIN both ways without the final ACK, ends the flow
//! after `close_linger` without packets.
//!
//! Flows also end on: `idle_timeout` without packets; `active_timeout` since the record
//! started (the record is exported and the flow goes on with fresh counters, so long flows
//! reach the database in time and their records add up to the totals); eviction when the
//! table is at `max_flows`.
//!
//! Time is the packets' own, so replaying a capture gives the same flows whatever the speed.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

// foldhash, seeded per process: several times faster than SipHash on these small keys,
// and the random seed keeps crafted addresses from aiming at one bucket.
use foldhash::fast::RandomState;

use crate::capture::parse::Packet;

use super::record::{EndReason, FlowRecord, Tunnel};

mod inner;

const TCP: u8 = 6;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

#[derive(Debug, Clone, Copy)]
pub struct TableConfig {
    /// Flows without packets this long end (`idle`): UDP, ICMP, one-way TCP.
    pub idle_timeout_ns: u64,
    /// TCP connections (packets seen both ways, not closed) idle this long end: a quiet
    /// connection kept alive by keepalives every few minutes is still one connection.
    pub tcp_idle_timeout_ns: u64,
    /// TCP flows that saw only SYNs (unanswered) end after this long without packets:
    /// Linux retries a SYN for 127 s, the last gap 64 s.
    pub tcp_syn_timeout_ns: u64,
    pub active_timeout_ns: u64,
    /// How long a closed connection stays to take its late packets (as the kernel keeps
    /// TIME_WAIT); a FIN both ways without the final ACK is closed after
    /// [`TableConfig::last_ack_wait_ns`].
    pub close_linger_ns: u64,
    pub max_flows: usize,
}

impl TableConfig {
    /// How long FIN both ways waits for the final ACK before the record goes anyway.
    pub fn last_ack_wait_ns(&self) -> u64 {
        self.close_linger_ns.min(LAST_ACK_WAIT_NS)
    }
}

/// See [`TableConfig::last_ack_wait_ns`].
const LAST_ACK_WAIT_NS: u64 = 2_000_000_000;

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            idle_timeout_ns: 60_000_000_000,
            tcp_idle_timeout_ns: 3_600_000_000_000,
            tcp_syn_timeout_ns: 130_000_000_000,
            active_timeout_ns: 300_000_000_000,
            close_linger_ns: 60_000_000_000,
            max_flows: 1 << 20,
        }
    }
}

/// An address as the flow table keys it: 4 bytes for IPv4, 16 for IPv6, so the common IPv4
/// entry is a quarter smaller (the table's speed is mostly cache misses).
trait Addr: Copy + Ord + Eq + std::fmt::Debug {
    fn ip(self) -> IpAddr;

    /// The tunnel of a flow between `a` and `b` (initiator 0: `a`); None but for inner flows.
    fn tunnel(_a: Self, _b: Self, _initiator: usize) -> Option<Tunnel> {
        None
    }
}

impl Addr for [u8; 4] {
    fn ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }
}

impl Addr for [u8; 16] {
    fn ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }
}

/// Canonical key: endpoint `a` sorts before `b`, so both directions find one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key<A> {
    a: A,
    b: A,
    a_port: u16,
    b_port: u16,
    proto: u8,
}

impl<A: Addr> Key<A> {
    /// The key of a packet from `src` to `dst`, and whether it was sent by `b`.
    fn of(src: A, dst: A, sport: u16, dport: u16, proto: u8) -> (Self, bool) {
        if (src, sport) <= (dst, dport) {
            (
                Self {
                    a: src,
                    b: dst,
                    a_port: sport,
                    b_port: dport,
                    proto,
                },
                false,
            )
        } else {
            (
                Self {
                    a: dst,
                    b: src,
                    a_port: dport,
                    b_port: sport,
                    proto,
                },
                true,
            )
        }
    }

    fn ports_proto(&self) -> u64 {
        u64::from(self.a_port) | u64::from(self.b_port) << 16 | u64::from(self.proto) << 32
    }
}

/// Word-sized writes instead of the derive's field-by-field (and length-prefixed array)
/// ones: hashing is a good part of the per-packet cost.
impl Hash for Key<[u8; 4]> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(
            u64::from(u32::from_ne_bytes(self.a)) | u64::from(u32::from_ne_bytes(self.b)) << 32,
        );
        state.write_u64(self.ports_proto());
    }
}

impl Hash for Key<[u8; 16]> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.a));
        state.write_u128(u128::from_ne_bytes(self.b));
        state.write_u64(self.ports_proto());
    }
}

/// Bits of [`Entry::state`]: FIN seen from `a`, from `b`; RST seen.
const FIN_A: u8 = 1;
const FIN_B: u8 = 2;
const RST_SEEN: u8 = 4;
/// The first FIN came from `b` (its sender's ACK of the other FIN is the last packet).
const FIRST_FIN_B: u8 = 8;
/// `b` initiated (else `a`).
const INIT_B: u8 = 16;
/// The initiator is known from a SYN or SYN-ACK, not only from the first packet.
const BY_SYN: u8 = 32;
/// The closed connection's record was written: the counters since are an amendment.
const REPORTED: u8 = 64;
/// A TCP packet with ACK was seen: a connection (not a lone SYN), which may idle up to
/// `tcp_idle_timeout`.
const CONNECTED: u8 = 128;

/// Per-flow state. Index 0 counts packets sent by `a`, index 1 by `b`. Kept at 56 bytes
/// (the table's speed is mostly cache misses): the flags are bits of one byte.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Start of the current record (a new one starts at each active timeout).
    first_ns: u64,
    last_ns: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    flags: [u8; 2],
    /// ICMP: type << 8 | code of the first packet, reported as the destination port.
    /// TCP: the initiator's SYN sequence number (0: no SYN seen), so a retransmitted SYN
    /// stays in its connection and a SYN with another one starts a new connection.
    aux: u32,
    /// `FIN_A` ... `CONNECTED`.
    state: u8,
    /// TCP: which side's first sequence number `aux` holds (0 `a`, 1 `b`).
    seq_side: u8,
}

/// What the timeouts say about a flow at `now_ns`.
enum Expiry {
    /// The flow is over.
    End(EndReason),
    /// The record is over (active timeout); the flow goes on in a new one.
    Restart,
    /// The connection is closed (FIN both ways, the last ACK not seen): its record goes,
    /// and the entry stays for `close_linger` to take late packets.
    Close(EndReason),
}

impl Entry {
    fn new(ts_ns: u64, initiator: u8, aux: u32) -> Self {
        Self {
            first_ns: ts_ns,
            last_ns: ts_ns,
            packets: [0; 2],
            bytes: [0; 2],
            flags: [0; 2],
            aux,
            state: if initiator == 1 { INIT_B } else { 0 },
            seq_side: initiator,
        }
    }

    fn has(&self, bit: u8) -> bool {
        self.state & bit != 0
    }

    /// FIN_A | FIN_B | RST_SEEN.
    fn closing(&self) -> u8 {
        self.state & (FIN_A | FIN_B | RST_SEEN)
    }

    /// 0: `a` initiated, 1: `b` did.
    fn initiator(&self) -> usize {
        usize::from(self.has(INIT_B))
    }

    fn expiry(&self, now_ns: u64, cfg: &TableConfig, tcp: bool) -> Option<Expiry> {
        let idle = now_ns.saturating_sub(self.last_ns);
        if self.has(REPORTED) {
            return (idle >= cfg.close_linger_ns).then(|| Expiry::End(self.end_reason()));
        }
        let idle_timeout = match (tcp, self.has(CONNECTED)) {
            (true, true) => cfg.tcp_idle_timeout_ns,
            (true, false) => cfg.tcp_syn_timeout_ns,
            _ => cfg.idle_timeout_ns,
        };
        if self.closing() != 0 && idle >= cfg.last_ack_wait_ns() {
            match self.end_reason() {
                EndReason::Shutdown if idle >= idle_timeout => {
                    Some(Expiry::End(EndReason::IdleTimeout))
                }
                EndReason::Shutdown => None,
                r => Some(Expiry::Close(r)),
            }
        } else if idle >= idle_timeout {
            Some(Expiry::End(EndReason::IdleTimeout))
        } else if now_ns.saturating_sub(self.first_ns) >= cfg.active_timeout_ns {
            Some(Expiry::Restart)
        } else {
            None
        }
    }

    /// Starts the next record of a flow that goes on (or the next amendment).
    fn restart(&mut self, now_ns: u64) {
        if !self.has(REPORTED) {
            self.first_ns = now_ns;
        }
        self.packets = [0; 2];
        self.bytes = [0; 2];
        self.flags = [0; 2];
    }

    fn end_reason(&self) -> EndReason {
        match self.closing() {
            c if c & RST_SEEN != 0 => EndReason::Rst,
            c if c & (FIN_A | FIN_B) == FIN_A | FIN_B => EndReason::Fin,
            _ => EndReason::Shutdown,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TableStats {
    pub packets: u64,
    pub created: u64,
    pub ended_fin: u64,
    pub ended_rst: u64,
    pub ended_idle: u64,
    pub ended_active: u64,
    pub ended_shutdown: u64,
    pub evicted: u64,
    /// Non-first fragments whose first fragment was never seen.
    pub orphan_fragments: u64,
    /// Amendments written: closed connections that had late packets.
    pub amendments: u64,
    /// Packets that came after their connection's close (in amendments).
    pub late_packets: u64,
}

impl TableStats {
    fn count_end(&mut self, reason: EndReason) {
        match reason {
            EndReason::Fin => self.ended_fin += 1,
            EndReason::Rst => self.ended_rst += 1,
            EndReason::IdleTimeout => self.ended_idle += 1,
            EndReason::ActiveTimeout => self.ended_active += 1,
            EndReason::Evicted => self.evicted += 1,
            EndReason::Shutdown | EndReason::Failed => self.ended_shutdown += 1,
        }
    }
}

type Map<A> = HashMap<Key<A>, Entry, RandomState>;

/// A fragmented datagram: (src, dst, proto, id).
type FragKey = (IpAddr, IpAddr, u8, u32);

/// The flow a fragmented datagram belongs to.
#[derive(Debug, Clone, Copy)]
enum AnyKey {
    V4(Key<[u8; 4]>),
    V6(Key<[u8; 16]>),
}

/// What every per-family operation needs besides its map.
struct Ctx {
    cfg: TableConfig,
    stats: TableStats,
    /// Which view fed the table: "capture" or "file".
    source: &'static str,
}

pub struct FlowTable {
    ctx: Ctx,
    v4: Map<[u8; 4]>,
    v6: Map<[u8; 16]>,
    /// Fragmented datagrams to their flow, direction (sent by `b`), and when first seen.
    fragments: HashMap<FragKey, (AnyKey, bool, u64), RandomState>,
    next_sweep_ns: u64,
    /// Packets since the last sweep: a sweep walks the whole map, so packet-driven sweeps
    /// wait for enough packets to pay for it (timeouts stay exact: `account` applies them).
    since_sweep: u64,
    /// The latest packet time seen.
    latest_ns: u64,
    /// Inner flows of tunnels.
    tunnels: inner::Tunnels,
}

/// IPv4-mapped IPv6 addresses become IPv4, so both views of one peer agree.
fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn to16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

const SWEEP_EVERY_NS: u64 = 1_000_000_000;

/// The facts of one packet the per-family code needs.
struct Seen {
    ts_ns: u64,
    ip_len: u32,
    tcp_flags: u8,
    tcp_seq: u32,
    pure_syn: bool,
    /// ICMP type << 8 | code.
    icmp: u32,
}

fn record<A: Addr>(ctx: &Ctx, k: &Key<A>, e: &Entry, reason: EndReason) -> FlowRecord {
    let (i, r) = if e.initiator() == 0 { (0, 1) } else { (1, 0) };
    let ends = [
        SocketAddr::new(normalise(k.a.ip()), k.a_port),
        SocketAddr::new(normalise(k.b.ip()), k.b_port),
    ];
    let mut dst = ends[r];
    if matches!(k.proto, ICMP | ICMPV6) {
        dst.set_port(e.aux as u16);
    }
    let ms = |ns: u64| (ns / 1_000_000) as i64;
    FlowRecord {
        first_seen_ms: ms(e.first_ns),
        last_seen_ms: ms(e.last_ns),
        end_reason: reason,
        src_packets: Some(e.packets[i]),
        dst_packets: Some(e.packets[r]),
        src_bytes: Some(e.bytes[i]),
        dst_bytes: Some(e.bytes[r]),
        src_tcp_flags: (k.proto == TCP).then_some(e.flags[i]),
        dst_tcp_flags: (k.proto == TCP).then_some(e.flags[r]),
        packet_start_ns: Some(e.first_ns),
        amends: e.has(REPORTED),
        tunnel: A::tunnel(k.a, k.b, i),
        seen_ns: Some((e.first_ns, e.last_ns)),
        ..FlowRecord::new(k.proto, ends[i], dst, ctx.source)
    }
}

/// A flow leaves the table: its record, or for a closed connection already written, the
/// amendment of its late packets (nothing when there were none).
fn end<A: Addr>(
    ctx: &mut Ctx,
    k: &Key<A>,
    e: &Entry,
    reason: EndReason,
    out: &mut impl FnMut(FlowRecord),
) {
    if e.has(REPORTED) {
        if e.packets != [0, 0] {
            ctx.stats.amendments += 1;
            ctx.stats.late_packets += e.packets[0] + e.packets[1];
            out(record(ctx, k, e, e.end_reason()));
        }
        return;
    }
    ctx.stats.count_end(reason);
    out(record(ctx, k, e, reason));
}

/// Whether a pure SYN from side `dir` starts a new connection on `e`'s tuple: its sequence
/// number differs from that side's first one (as tshark starts a new `tcp.stream`), or,
/// when that side's first sequence number is not known, the old connection was closing.
/// A SYN with the same number is a retransmission and stays in its connection.
fn new_connection(e: &Entry, dir: usize, seq: u32) -> bool {
    if usize::from(e.seq_side) == dir {
        e.aux != seq
    } else {
        e.closing() != 0
    }
}

/// Accounts a packet to its flow in `map`, creating the flow if needed.
fn account<A: Addr>(
    map: &mut Map<A>,
    ctx: &mut Ctx,
    key: Key<A>,
    from_b: bool,
    p: &Seen,
    out: &mut impl FnMut(FlowRecord),
) where
    Key<A>: Hash,
{
    let dir = usize::from(from_b);
    let aux = if key.proto == TCP { p.tcp_seq } else { p.icmp };
    // A new connection on the tuple (port reuse): end the old flow first. (Only a SYN pays
    // for this lookup; the common path below hashes the key once.)
    if p.pure_syn
        && let Some(e) = map.get(&key)
        && new_connection(e, dir, p.tcp_seq)
    {
        let reason = match e.end_reason() {
            // Never closed as far as we saw: it ended before this SYN.
            EndReason::Shutdown => EndReason::IdleTimeout,
            r => r,
        };
        let old = map.remove(&key).expect("present");
        end(ctx, &key, &old, reason, out);
    }
    let e = match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(o) => {
            let e = o.into_mut();
            // Timeouts are applied here too, so they are exact whenever the sweep runs.
            match e.expiry(p.ts_ns, &ctx.cfg, key.proto == TCP) {
                Some(Expiry::End(reason)) => {
                    let old = std::mem::replace(e, Entry::new(p.ts_ns, dir as u8, aux));
                    e.seq_side = dir as u8;
                    ctx.stats.created += 1;
                    end(ctx, &key, &old, reason, out);
                }
                Some(Expiry::Restart) => {
                    // An idle stretch makes no empty record.
                    if e.packets != [0, 0] {
                        end(ctx, &key, e, EndReason::ActiveTimeout, out);
                    }
                    e.restart(p.ts_ns);
                }
                Some(Expiry::Close(reason)) => close(ctx, &key, e, reason, p.ts_ns, out),
                None => {}
            }
            e
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            ctx.stats.created += 1;
            let e = v.insert(Entry::new(p.ts_ns, dir as u8, aux));
            e.seq_side = dir as u8;
            e
        }
    };
    // (Not after a close: an amendment keeps its record's orientation.)
    if e.state & (BY_SYN | REPORTED) == 0 && key.proto == TCP && p.tcp_flags & SYN != 0 {
        // SYN: its sender initiated; SYN-ACK: its receiver did.
        let initiator = if p.pure_syn { dir } else { 1 - dir };
        e.state = (e.state & !INIT_B) | if initiator == 1 { INIT_B } else { 0 } | BY_SYN;
    }
    e.packets[dir] += 1;
    e.bytes[dir] += u64::from(p.ip_len);
    e.flags[dir] |= p.tcp_flags;
    e.last_ns = e.last_ns.max(p.ts_ns);
    if key.proto == TCP && !e.has(REPORTED) {
        if p.tcp_flags & ACK != 0 {
            e.state |= CONNECTED;
        }
        // The last packet of an orderly close (the first closer's ACK of the second FIN)
        // or a reset closes the connection: its record goes now, so it reaches the store
        // (and its kernel twin in the merge) without waiting; the entry stays for
        // `close_linger` to take the connection's late packets into an amendment.
        let first_fin = usize::from(e.has(FIRST_FIN_B));
        let last_ack = e.state & (FIN_A | FIN_B) == FIN_A | FIN_B
            && first_fin == dir
            && p.tcp_flags & (FIN | SYN | RST) == 0
            && p.tcp_flags & ACK != 0;
        if p.tcp_flags & FIN != 0 {
            if e.state & (FIN_A | FIN_B) == 0 && dir == 1 {
                e.state |= FIRST_FIN_B;
            }
            e.state |= if dir == 0 { FIN_A } else { FIN_B };
        }
        if p.tcp_flags & RST != 0 {
            e.state |= RST_SEEN;
        }
        if last_ack || p.tcp_flags & RST != 0 {
            let reason = e.end_reason();
            close(ctx, &key, e, reason, p.ts_ns, out);
        }
    }
}

/// A connection closes: its record goes now, and the entry stays, reported, so its late
/// packets become an amendment.
fn close<A: Addr>(
    ctx: &mut Ctx,
    k: &Key<A>,
    e: &mut Entry,
    reason: EndReason,
    now_ns: u64,
    out: &mut impl FnMut(FlowRecord),
) {
    end(ctx, k, e, reason, out);
    e.state |= REPORTED;
    e.restart(now_ns);
}

/// Adds a later fragment to its flow; false when the flow is gone.
fn add_fragment<A: Addr>(
    map: &mut Map<A>,
    key: &Key<A>,
    from_b: bool,
    ts_ns: u64,
    ip_len: u32,
) -> bool
where
    Key<A>: Hash,
{
    let Some(e) = map.get_mut(key) else {
        return false;
    };
    let dir = usize::from(from_b);
    e.packets[dir] += 1;
    e.bytes[dir] += u64::from(ip_len);
    e.last_ns = e.last_ns.max(ts_ns);
    true
}

/// Ends the least recently active of a few flows (the map's iteration order is by hash, so
/// this samples without bias toward any key).
fn evict_one<A: Addr>(map: &mut Map<A>, ctx: &mut Ctx, out: &mut impl FnMut(FlowRecord))
where
    Key<A>: Hash,
{
    let victim = map
        .iter()
        .take(16)
        .min_by_key(|(_, e)| e.last_ns)
        .map(|(k, _)| *k);
    if let Some(k) = victim {
        let e = map.remove(&k).expect("present");
        end(ctx, &k, &e, EndReason::Evicted, out);
    }
}

fn sweep_map<A: Addr>(
    map: &mut Map<A>,
    ctx: &mut Ctx,
    now_ns: u64,
    out: &mut impl FnMut(FlowRecord),
) where
    Key<A>: Hash,
{
    let cfg = ctx.cfg;
    let mut ended: Vec<(Key<A>, EndReason)> = Vec::new();
    // Records (active timeout, closes) and amendments that go while the flow stays.
    let mut written: Vec<(Key<A>, Entry, EndReason)> = Vec::new();
    for (k, e) in map.iter_mut() {
        match e.expiry(now_ns, &cfg, k.proto == TCP) {
            Some(Expiry::End(reason)) => ended.push((*k, reason)),
            // An idle stretch makes no empty record.
            Some(Expiry::Restart) if e.packets == [0, 0] => e.restart(now_ns),
            Some(Expiry::Restart) => {
                written.push((*k, *e, EndReason::ActiveTimeout));
                e.restart(now_ns);
            }
            Some(Expiry::Close(reason)) => {
                written.push((*k, *e, reason));
                e.state |= REPORTED;
                e.restart(now_ns);
            }
            // Late packets of a closed connection go as an amendment at each sweep, so its
            // row is exact within a sweep or two.
            None if e.has(REPORTED) && e.packets != [0, 0] => {
                written.push((*k, *e, EndReason::Fin));
                e.restart(now_ns);
            }
            None => {}
        }
    }
    for (k, e, reason) in written {
        end(ctx, &k, &e, reason, out);
    }
    for (k, reason) in ended {
        if let Some(e) = map.remove(&k) {
            end(ctx, &k, &e, reason, out);
        }
    }
}

/// Ends every flow; those already past a timeout at `now_ns` (the latest packet's time)
/// say so, the others end as they stand (`fin`, `rst` or `shutdown`).
fn flush_map<A: Addr>(
    map: &mut Map<A>,
    ctx: &mut Ctx,
    now_ns: u64,
    out: &mut impl FnMut(FlowRecord),
) {
    let mut all: Vec<(Key<A>, Entry)> = map.drain().collect();
    all.sort_by_key(|(_, e)| e.first_ns);
    for (k, e) in all {
        let reason = match e.expiry(now_ns, &ctx.cfg, k.proto == TCP) {
            Some(Expiry::End(r)) => r,
            _ => e.end_reason(),
        };
        end(ctx, &k, &e, reason, out);
    }
}

impl FlowTable {
    pub fn new(cfg: TableConfig, source: &'static str) -> Self {
        // Room for a busy host's working set up front: no rehashing in the first minutes.
        let room = cfg.max_flows.min(1 << 16);
        Self {
            ctx: Ctx {
                cfg,
                stats: TableStats::default(),
                source,
            },
            v4: HashMap::with_capacity_and_hasher(room, RandomState::default()),
            v6: HashMap::with_capacity_and_hasher(room / 8, RandomState::default()),
            fragments: HashMap::default(),
            next_sweep_ns: 0,
            since_sweep: 0,
            latest_ns: 0,
            tunnels: inner::Tunnels::default(),
        }
    }

    pub fn stats(&self) -> TableStats {
        self.ctx.stats
    }

    pub fn active(&self) -> usize {
        self.v4.len() + self.v6.len() + self.tunnels.len()
    }

    /// Accounts one packet seen at `ts_ns`; flows that end are passed to `out`.
    pub fn packet(&mut self, ts_ns: u64, p: &Packet, out: &mut impl FnMut(FlowRecord)) {
        self.ctx.stats.packets += 1;
        self.since_sweep += 1;
        self.latest_ns = self.latest_ns.max(ts_ns);
        if ts_ns >= self.next_sweep_ns
            && self.since_sweep >= ((self.v4.capacity() + self.v6.capacity()) / 16) as u64
        {
            self.sweep(ts_ns, out);
        }
        if let Some(i) = &p.inner {
            self.tunnel_packet(ts_ns, p, i, out);
        }
        let (src, dst) = (normalise(p.src), normalise(p.dst));
        let icmp = matches!(p.proto, ICMP | ICMPV6);
        let (mut sport, mut dport) = if icmp {
            (0, 0)
        } else {
            (p.src_port, p.dst_port)
        };
        if let Some(frag) = p.fragment
            && frag.offset != 0
        {
            // A later fragment: its flow is the first fragment's.
            let fkey = (src, dst, p.proto, frag.id);
            let found = match self.fragments.get(&fkey) {
                Some(&(AnyKey::V4(k), from_b, _)) => {
                    add_fragment(&mut self.v4, &k, from_b, ts_ns, p.ip_len)
                }
                Some(&(AnyKey::V6(k), from_b, _)) => {
                    add_fragment(&mut self.v6, &k, from_b, ts_ns, p.ip_len)
                }
                None => false,
            };
            if found {
                if !frag.more {
                    self.fragments.remove(&fkey);
                }
                return;
            }
            // First fragment not seen (or out of order): a port-less flow.
            self.ctx.stats.orphan_fragments += 1;
            (sport, dport) = (0, 0);
        }
        let seen = Seen {
            ts_ns,
            ip_len: p.ip_len,
            tcp_flags: p.tcp_flags,
            tcp_seq: p.tcp_seq,
            pure_syn: p.proto == TCP && p.tcp_flags & (SYN | ACK) == SYN,
            icmp: if icmp { u32::from(p.dst_port) } else { 0 },
        };
        let full = self.active() >= self.ctx.cfg.max_flows;
        let first_fragment = p.fragment.filter(|f| f.offset == 0 && f.more);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (key, from_b) = Key::of(s.octets(), d.octets(), sport, dport, p.proto);
                if full && !self.v4.contains_key(&key) {
                    self.evict_one(out);
                }
                if let Some(f) = first_fragment {
                    let v = (AnyKey::V4(key), from_b, ts_ns);
                    self.fragments.insert((src, dst, p.proto, f.id), v);
                }
                account(&mut self.v4, &mut self.ctx, key, from_b, &seen, out);
            }
            _ => {
                let (key, from_b) = Key::of(to16(src), to16(dst), sport, dport, p.proto);
                if full && !self.v6.contains_key(&key) {
                    self.evict_one(out);
                }
                if let Some(f) = first_fragment {
                    let v = (AnyKey::V6(key), from_b, ts_ns);
                    self.fragments.insert((src, dst, p.proto, f.id), v);
                }
                account(&mut self.v6, &mut self.ctx, key, from_b, &seen, out);
            }
        }
    }

    /// Makes room in the larger of the two families' maps.
    fn evict_one(&mut self, out: &mut impl FnMut(FlowRecord)) {
        if self.v4.len() >= self.v6.len() {
            evict_one(&mut self.v4, &mut self.ctx, out);
        } else {
            evict_one(&mut self.v6, &mut self.ctx, out);
        }
    }

    /// Ends flows that timed out by `now_ns`.
    pub fn sweep(&mut self, now_ns: u64, out: &mut impl FnMut(FlowRecord)) {
        self.next_sweep_ns = now_ns.saturating_add(SWEEP_EVERY_NS);
        self.since_sweep = 0;
        sweep_map(&mut self.v4, &mut self.ctx, now_ns, out);
        sweep_map(&mut self.v6, &mut self.ctx, now_ns, out);
        self.tunnels.sweep(&mut self.ctx, now_ns, out);
        let idle_timeout = self.ctx.cfg.idle_timeout_ns;
        self.fragments
            .retain(|_, (_, _, seen)| now_ns.saturating_sub(*seen) < idle_timeout);
    }

    /// Ends every flow (end of a capture file, or the sensor stopping).
    pub fn flush_all(&mut self, out: &mut impl FnMut(FlowRecord)) {
        let now = self.latest_ns;
        flush_map(&mut self.v4, &mut self.ctx, now, out);
        flush_map(&mut self.v6, &mut self.ctx, now, out);
        self.tunnels.flush(&mut self.ctx, now, out);
        self.fragments.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::parse::Fragment;

    const S: u64 = 1_000_000_000;

    fn pkt(src: &str, dst: &str, proto: u8, flags: u8, len: u32) -> Packet {
        let s: SocketAddr = src.parse().unwrap();
        let d: SocketAddr = dst.parse().unwrap();
        Packet {
            src: s.ip(),
            dst: d.ip(),
            proto,
            src_port: s.port(),
            dst_port: d.port(),
            ip_len: len,
            tcp_flags: flags,
            tcp_seq: 0,
            fragment: None,
            inner: None,
        }
    }

    fn table(cfg: TableConfig) -> (FlowTable, Vec<FlowRecord>) {
        (FlowTable::new(cfg, "file"), Vec::new())
    }

    #[test]
    fn both_directions_one_flow_initiator_from_syn_ack() {
        let (mut t, mut out) = table(TableConfig::default());
        // The SYN was not captured: the SYN-ACK's receiver initiated.
        t.packet(
            S,
            &pkt("10.0.0.2:80", "10.0.0.1:5000", TCP, SYN | ACK, 60),
            &mut |r| out.push(r),
        );
        t.packet(
            S,
            &pkt("10.0.0.1:5000", "10.0.0.2:80", TCP, ACK, 52),
            &mut |r| out.push(r),
        );
        t.packet(
            2 * S,
            &pkt("10.0.0.1:5000", "10.0.0.2:80", TCP, FIN | ACK, 52),
            &mut |r| out.push(r),
        );
        t.packet(
            2 * S,
            &pkt("10.0.0.2:80", "10.0.0.1:5000", TCP, FIN | ACK, 52),
            &mut |r| out.push(r),
        );
        assert_eq!(t.active(), 1);
        t.flush_all(&mut |r| out.push(r));
        let f = &out[0];
        assert_eq!(f.src, "10.0.0.1:5000".parse().unwrap());
        assert_eq!((f.src_packets, f.dst_packets), (Some(2), Some(2)));
        assert_eq!((f.src_bytes, f.dst_bytes), (Some(104), Some(112)));
        assert_eq!(f.src_tcp_flags, Some(FIN | ACK));
        assert_eq!(f.dst_tcp_flags, Some(SYN | FIN | ACK));
        assert_eq!(f.end_reason, EndReason::Fin);
    }

    #[test]
    fn close_linger_then_fin_and_port_reuse_starts_a_new_flow() {
        let (mut t, mut out) = table(TableConfig::default());
        let c = "[::ffff:10.0.0.1]:5000";
        t.packet(S, &pkt(c, "10.0.0.2:80", TCP, SYN, 60), &mut |r| {
            out.push(r)
        });
        t.packet(
            S,
            &pkt("10.0.0.2:80", "10.0.0.1:5000", TCP, RST | ACK, 40),
            &mut |r| out.push(r),
        );
        // Same tuple again: the refused connection ends, a new one starts.
        t.packet(2 * S, &pkt(c, "10.0.0.2:80", TCP, SYN, 60), &mut |r| {
            out.push(r)
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_reason, EndReason::Rst);
        assert!(out[0].src.is_ipv4(), "IPv4-mapped is IPv4");
        t.packet(
            10 * S,
            &pkt("10.0.0.9:1", "10.0.0.8:2", 17, 0, 30),
            &mut |r| out.push(r),
        );
        // The second SYN went unanswered: idle 8 s < 60 s, still open.
        assert_eq!(t.active(), 2);
    }

    #[test]
    fn late_packets_after_a_close_amend_the_record_and_reuse_starts_anew() {
        let (mut t, mut out) = table(TableConfig::default());
        let (c, s) = ("10.0.0.1:5000", "10.0.0.2:80");
        let p = |t: &mut FlowTable, ts: u64, from: &str, to: &str, flags: u8, out: &mut Vec<_>| {
            t.packet(ts, &pkt(from, to, TCP, flags, 52), &mut |r| out.push(r));
        };
        p(&mut t, S, c, s, SYN, &mut out);
        p(&mut t, S, s, c, SYN | ACK, &mut out);
        p(&mut t, S, c, s, ACK, &mut out);
        // Simultaneous close: both FINs cross, then each side ACKs the other's.
        p(&mut t, 2 * S, c, s, FIN | ACK, &mut out);
        p(&mut t, 2 * S, s, c, FIN | ACK, &mut out);
        p(&mut t, 2 * S, c, s, ACK, &mut out);
        assert_eq!(out.len(), 1, "the record goes at the close");
        assert!(!out[0].amends);
        assert_eq!((out[0].src_packets, out[0].dst_packets), (Some(4), Some(2)));
        // The responder's ACK, a retransmitted FIN and a RST come after the record.
        p(&mut t, 2 * S + 1, s, c, ACK, &mut out);
        p(&mut t, 2 * S + 300_000_000, s, c, FIN | ACK, &mut out);
        p(&mut t, 2 * S + 300_000_001, c, s, RST, &mut out);
        assert_eq!(out.len(), 1, "late packets wait for the linger");
        // A retransmitted SYN (same sequence number) is one more late packet...
        p(&mut t, 2 * S + 400_000_000, c, s, SYN, &mut out);
        assert_eq!(out.len(), 1);
        // ... while a SYN with another one is port reuse: the amendment goes, then a new
        // flow starts.
        let mut reuse = pkt(c, s, TCP, SYN, 52);
        reuse.tcp_seq = 777;
        t.packet(3 * S, &reuse, &mut |r| out.push(r));
        assert_eq!(out.len(), 2);
        let a = &out[1];
        assert!(a.amends);
        assert_eq!(a.src, c.parse().unwrap(), "same orientation as its record");
        assert_eq!(a.packet_start_ns, out[0].packet_start_ns);
        assert_eq!((a.src_packets, a.dst_packets), (Some(2), Some(2)));
        assert_eq!(a.dst_tcp_flags, Some(FIN | ACK));
        assert_eq!(t.stats().amendments, 1);
        assert_eq!(t.stats().late_packets, 4);
        assert_eq!(t.stats().created, 2);
        // The new connection is refused; its repeated RSTs join it, never a flow of their own.
        p(&mut t, 3 * S, s, c, RST | ACK, &mut out);
        p(&mut t, 3 * S + 10, s, c, RST | ACK, &mut out);
        t.flush_all(&mut |r| out.push(r));
        assert_eq!(out.len(), 4);
        assert_eq!(out[2].end_reason, EndReason::Rst);
        assert_eq!((out[2].src_packets, out[2].dst_packets), (Some(1), Some(1)));
        assert!(out[3].amends && out[3].dst_packets == Some(1));
        assert_ne!(out[2].packet_start_ns, out[0].packet_start_ns);
        // A closed flow with no late packets leaves without an amendment.
        let (mut t, mut out) = table(TableConfig::default());
        t.packet(S, &pkt(c, s, TCP, SYN, 60), &mut |r| out.push(r));
        t.packet(S, &pkt(s, c, TCP, RST | ACK, 40), &mut |r| out.push(r));
        t.sweep(10 * S, &mut |r| out.push(r));
        assert_eq!(t.active(), 1, "lingers");
        t.sweep(100 * S, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(t.active(), 0, "gone after the linger");
    }

    #[test]
    fn idle_and_active_timeouts_and_totals_add_up() {
        let cfg = TableConfig {
            idle_timeout_ns: 10 * S,
            active_timeout_ns: 30 * S,
            ..TableConfig::default()
        };
        let (mut t, mut out) = table(cfg);
        // A UDP stream, one packet a second for 100 s, plus a one-off that goes idle.
        t.packet(0, &pkt("10.0.0.3:9", "10.0.0.4:9", 17, 0, 100), &mut |r| {
            out.push(r)
        });
        for i in 0..100 {
            t.packet(
                i * S,
                &pkt("10.0.0.1:53", "10.0.0.2:53", 17, 0, 50),
                &mut |r| out.push(r),
            );
        }
        t.flush_all(&mut |r| out.push(r));
        let idle = out
            .iter()
            .filter(|f| f.end_reason == EndReason::IdleTimeout)
            .count();
        assert_eq!(idle, 1);
        let stream: Vec<_> = out.iter().filter(|f| f.src.port() == 53).collect();
        assert!(
            stream
                .iter()
                .filter(|f| f.end_reason == EndReason::ActiveTimeout)
                .count()
                >= 3
        );
        let packets: u64 = stream.iter().map(|f| f.src_packets.unwrap()).sum();
        let bytes: u64 = stream.iter().map(|f| f.src_bytes.unwrap()).sum();
        assert_eq!((packets, bytes), (100, 5000));
    }

    #[test]
    fn full_table_evicts_and_counts() {
        let cfg = TableConfig {
            max_flows: 10,
            ..TableConfig::default()
        };
        let (mut t, mut out) = table(cfg);
        for port in 1..=25u16 {
            let src = format!("10.0.0.1:{port}");
            t.packet(S, &pkt(&src, "10.0.0.2:80", 17, 0, 30), &mut |r| {
                out.push(r)
            });
        }
        assert_eq!(t.active(), 10);
        assert_eq!(t.stats().evicted, 15);
        assert_eq!(out.len(), 15);
        assert!(out.iter().all(|f| f.end_reason == EndReason::Evicted));
    }

    #[test]
    fn later_fragments_count_in_their_flow() {
        let (mut t, mut out) = table(TableConfig::default());
        let mut first = pkt("10.0.0.1:5353", "10.0.0.2:53", 17, 0, 1500);
        first.fragment = Some(Fragment {
            id: 7,
            offset: 0,
            more: true,
        });
        let mut last = pkt("10.0.0.1:0", "10.0.0.2:0", 17, 0, 400);
        last.fragment = Some(Fragment {
            id: 7,
            offset: 185,
            more: false,
        });
        t.packet(S, &first, &mut |r| out.push(r));
        t.packet(S, &last, &mut |r| out.push(r));
        t.flush_all(&mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].src_packets, out[0].src_bytes),
            (Some(2), Some(1900))
        );
        assert_eq!(t.stats().orphan_fragments, 0);
    }

    #[test]
    fn timeouts_are_exact_between_sweeps() {
        let cfg = TableConfig {
            idle_timeout_ns: 10 * S,
            ..TableConfig::default()
        };
        let (mut t, mut out) = table(cfg);
        let p = pkt("10.0.0.1:53", "10.0.0.2:53", 17, 0, 50);
        t.packet(S, &p, &mut |r| out.push(r));
        // No sweep runs between these (too few packets to pay for one), yet the gap
        // ends the first flow.
        t.packet(100 * S, &p, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end_reason, EndReason::IdleTimeout);
        assert_eq!(out[0].last_seen_ms, 1_000);
        t.flush_all(&mut |r| out.push(r));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].first_seen_ms, 100_000);
    }
}
