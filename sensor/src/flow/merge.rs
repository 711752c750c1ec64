//! Merge: the kernel's record of a TCP connection and the packet view's record of the same
//! connection become one flow, carrying the processes and kernel counters (payload bytes,
//! srtt, retransmits) and the packet counts, with `sources` naming both.
//!
//! Records are paired by identity, not by address alone: one 5-tuple (the client's port
//! reused) carries many connections one after another, and capture under load loses
//! packets, so a connection may have no packet record of its own, or one that ran on into
//! the next connection. Two records of the same unordered 5-tuple pair only when their
//! lifetimes overlap, on one clock to the nanosecond (the kernel's boot-time stamps
//! converted by [`super::BootClock`], the packets' kernel timestamps): the kernel record
//! runs from `connect()` (or the accepted socket's establishment) to the last close, the
//! packet record from its first packet to its last. Among several candidates the best fit
//! wins, not the first to arrive (see [`fit`]). A packet record that begins after the
//! kernel's close or before its `connect()`, or that opened with a SYN and ended before the
//! kernel's socket existed, is another connection and never pairs: nothing is paired across
//! a close and a new SYN.
//!
//! The two views end a connection at different moments, so whichever record comes first
//! waits up to `wait` for its twin; alone after that, it is written as it is and counted
//! (`sensor_merge_unpaired_flows_total{view}`). Records the packet table cuts at the active
//! timeout are partial and pass straight through; the final one merges.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

// foldhash: every TCP record passes through `pending`.
use super::record::{EndReason, FlowRecord, PROTO_TCP};
use crate::metrics::{Metrics, add_delta};
use foldhash::HashMap;

/// How far apart two lifetimes may be and still be one connection, when the packet record
/// has no SYN (a connection older than the sensor, whose kernel record starts at its first
/// close, and whose last packet comes just before that). Both clocks are the kernel's and
/// the offset between them is read again every second, so they agree to microseconds; the
/// slack is for records known only to the millisecond and for stamps taken a little before
/// or after the event they mark.
pub const TOLERANCE_NS: u64 = 5_000_000;

/// How far outside the kernel's lifetime a connection's own packets may still be stamped:
/// the last ACK or the RST leaves microseconds after the socket is closed, and the two
/// clocks agree to microseconds. A merged row ends at most this long after the kernel's
/// close, and a packet record starting longer than this before the kernel's `connect()` is
/// another connection's.
pub const EDGE_SLACK_NS: u64 = 1_000_000;

const SYN: u8 = 0x02;

/// How often the merge thread sweeps its waiting records for those past `wait`.
const SWEEP: Duration = Duration::from_millis(100);

/// A record and which view made it.
pub enum Input {
    Kernel(FlowRecord),
    Packets(FlowRecord),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct MergeStats {
    pub merged: u64,
    /// Records written without a twin: every kernel record that found none, and every
    /// packet record that did not (with the packet records that never wait: not TCP, or cut
    /// at the active timeout).
    pub kernel_alone: u64,
    pub packets_alone: u64,
    /// Amendments added to a packet record still waiting here, and those passed on.
    pub amendments_folded: u64,
    pub amendments_passed: u64,
    /// TCP records that waited `wait` for a twin whose lifetime fits and found none.
    pub kernel_unpaired: u64,
    pub packets_unpaired: u64,
    /// Merged connections whose packet record ran on past the kernel's close by more than
    /// [`EDGE_SLACK_NS`]: the capture lost a burst holding this connection's last packets
    /// and the next one's first on the same 5-tuple, and the packet table, seeing no
    /// boundary, counted both as one flow. The row ends at the kernel's close; the packets
    /// stay counted once, in this row (the next connection's row is the kernel's alone).
    pub overrun: u64,
}

type Key = (SocketAddr, SocketAddr);

/// Orientation-free key: the lower endpoint first.
fn key(f: &FlowRecord) -> Key {
    if f.src <= f.dst {
        (f.src, f.dst)
    } else {
        (f.dst, f.src)
    }
}

/// A record's lifetime in unix nanoseconds: to the nanosecond when the view knows it, else
/// the whole milliseconds it names.
fn span(f: &FlowRecord) -> (u64, u64) {
    f.seen_ns.unwrap_or_else(|| {
        let ns = |ms: i64| ms.max(0) as u64 * 1_000_000;
        (ns(f.first_seen_ms), ns(f.last_seen_ms) + 999_999)
    })
}

/// How a kernel and a packet record of one 5-tuple fit together in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fit {
    /// Not the same connection.
    No,
    /// Apart by this many nanoseconds, within [`TOLERANCE_NS`]: paired only once one of
    /// them has waited its `wait` and nothing better came (the closest first).
    Near { closeness: std::cmp::Reverse<u64> },
    /// The lifetimes share time: paired at once. Better when the packet record's first
    /// packet falls inside the kernel's lifetime (that socket sent or took its SYN), then
    /// the more nanoseconds shared.
    Overlap { holds_first: bool, shared_ns: u64 },
}

/// How well `kernel` and `packets` (records of the same 5-tuple) fit.
pub fn fit(kernel: &FlowRecord, packets: &FlowRecord) -> Fit {
    let (k0, k1) = span(kernel);
    let (p0, p1) = span(packets);
    // No packet of a connection comes before its connect(): packets that begin earlier are
    // an earlier connection's, run on past its close because its closing packets were lost.
    if kernel.starts_at_connect && p0 + EDGE_SLACK_NS < k0 {
        return Fit::No;
    }
    let (start, end) = (k0.max(p0), k1.min(p1));
    if start <= end {
        return Fit::Overlap {
            holds_first: (k0..=k1).contains(&p0),
            shared_ns: end - start,
        };
    }
    // Packets that begin after the kernel's close belong to a later connection.
    if p0 > k1 {
        return Fit::No;
    }
    // They ended before the kernel's socket existed: an earlier connection if they opened
    // with a SYN; else possibly this one seen from before the sensor started.
    let syn = (packets.src_tcp_flags.unwrap_or(0) | packets.dst_tcp_flags.unwrap_or(0)) & SYN;
    let gap = k0 - p1;
    if syn == 0 && gap <= TOLERANCE_NS {
        Fit::Near {
            closeness: std::cmp::Reverse(gap),
        }
    } else {
        Fit::No
    }
}

/// One record of each view, combined. The kernel's initiator is the truth; the packet
/// counts are turned around when the packet view guessed the other way. The lifetime is
/// both views' together, except that it ends at most [`EDGE_SLACK_NS`] after a kernel close
/// (a packet record that ran on past it holds a later connection's packets).
pub fn combine(kernel: FlowRecord, packets: FlowRecord) -> FlowRecord {
    let same = kernel.src == packets.src;
    let (sp, dp, sb, db, sf, df) = if same {
        (
            packets.src_packets,
            packets.dst_packets,
            packets.src_bytes,
            packets.dst_bytes,
            packets.src_tcp_flags,
            packets.dst_tcp_flags,
        )
    } else {
        (
            packets.dst_packets,
            packets.src_packets,
            packets.dst_bytes,
            packets.src_bytes,
            packets.dst_tcp_flags,
            packets.src_tcp_flags,
        )
    };
    let sources = match packets.sources {
        "file" => "kernel,file",
        _ => "kernel,capture",
    };
    let ((k0, k1), (p0, p1)) = (span(&kernel), span(&packets));
    let p1 = if closed(&kernel) {
        p1.min(k1 + EDGE_SLACK_NS)
    } else {
        p1
    };
    let (first, last) = (k0.min(p0), k1.max(p1));
    let ms = |ns: u64| (ns / 1_000_000) as i64;
    FlowRecord {
        first_seen_ms: ms(first),
        last_seen_ms: ms(last),
        src_packets: sp,
        dst_packets: dp,
        src_bytes: sb,
        dst_bytes: db,
        src_tcp_flags: sf,
        dst_tcp_flags: df,
        sources,
        packet_start_ns: packets.packet_start_ns,
        seen_ns: Some((first, last)),
        ..kernel
    }
}

/// Adds an amendment's late packets to the record it amends (same orientation).
pub fn add_amendment(to: &mut FlowRecord, a: &FlowRecord) {
    let add = |x: &mut Option<u64>, y: Option<u64>| {
        if let Some(y) = y {
            *x = Some(x.unwrap_or(0) + y);
        }
    };
    add(&mut to.src_packets, a.src_packets);
    add(&mut to.dst_packets, a.dst_packets);
    add(&mut to.src_bytes, a.src_bytes);
    add(&mut to.dst_bytes, a.dst_bytes);
    let or = |x: &mut Option<u8>, y: Option<u8>| {
        if let Some(y) = y {
            *x = Some(x.unwrap_or(0) | y);
        }
    };
    or(&mut to.src_tcp_flags, a.src_tcp_flags);
    or(&mut to.dst_tcp_flags, a.dst_tcp_flags);
    to.last_seen_ms = to.last_seen_ms.max(a.last_seen_ms);
}

/// Whether a kernel record ends at the connection's close (not at shutdown or eviction,
/// when the connection goes on and its packets may be later than the kernel's last event).
fn closed(kernel: &FlowRecord) -> bool {
    !matches!(
        kernel.end_reason,
        EndReason::Shutdown | EndReason::Evicted | EndReason::ActiveTimeout
    )
}

/// Where both views send their records. Full-queue policy: drop and count, like the
/// writer's own queue (the merge queue is the first half of the way to the disk).
#[derive(Clone)]
pub struct MergeSender {
    tx: SyncSender<Input>,
    dropped: Arc<AtomicU64>,
}

impl MergeSender {
    pub fn new(tx: SyncSender<Input>) -> Self {
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn send(&self, input: Input) {
        if self.tx.try_send(input).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Waiting {
    record: FlowRecord,
    kernel: bool,
    since: Instant,
}

/// The fit of two waiting records, kernel first whichever way round they are given.
fn fit_of(a: &Waiting, b: &Waiting) -> Fit {
    match (a.kernel, b.kernel) {
        (true, false) => fit(&a.record, &b.record),
        (false, true) => fit(&b.record, &a.record),
        _ => Fit::No,
    }
}

/// Pairs records from both views; what waits too long goes out alone.
pub struct Merger {
    wait: Duration,
    pending: HashMap<Key, Vec<Waiting>>,
    stats: MergeStats,
}

impl Merger {
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            pending: HashMap::default(),
            stats: MergeStats::default(),
        }
    }

    pub fn stats(&self) -> MergeStats {
        self.stats
    }

    pub fn input(&mut self, input: Input, now: Instant, out: &mut impl FnMut(FlowRecord)) {
        let (record, kernel) = match input {
            Input::Kernel(r) => (r, true),
            Input::Packets(r) => (r, false),
        };
        // Only TCP is seen by both; partial (active-timeout) packet records never wait.
        if record.proto != PROTO_TCP || (!kernel && record.end_reason == EndReason::ActiveTimeout) {
            if !kernel {
                self.stats.packets_alone += 1;
            }
            out(record);
            return;
        }
        let k = key(&record);
        if record.amends {
            // Late packets of a connection: into its packet record if that still waits
            // here, else on to the store, which amends the row (order is kept: the record
            // went out before its amendment).
            let waiting = self.pending.get_mut(&k).and_then(|q| {
                q.iter_mut().find(|w| {
                    !w.kernel
                        && w.record.packet_start_ns == record.packet_start_ns
                        && w.record.src == record.src
                })
            });
            match waiting {
                Some(w) => {
                    self.stats.amendments_folded += 1;
                    add_amendment(&mut w.record, &record);
                }
                None => {
                    self.stats.amendments_passed += 1;
                    out(record);
                }
            }
            return;
        }
        let new = Waiting {
            record,
            kernel,
            since: now,
        };
        let queue = self.pending.entry(k).or_default();
        let best = queue
            .iter()
            .enumerate()
            .map(|(i, w)| (fit_of(&new, w), i))
            .filter(|(f, _)| matches!(f, Fit::Overlap { .. }))
            .max();
        match best {
            Some((_, i)) => {
                let other = queue.swap_remove(i);
                if queue.is_empty() {
                    self.pending.remove(&k);
                }
                self.pair(new, other, out);
            }
            None => queue.push(new),
        }
    }

    fn pair(&mut self, a: Waiting, b: Waiting, out: &mut impl FnMut(FlowRecord)) {
        let (kernel, packets) = if a.kernel {
            (a.record, b.record)
        } else {
            (b.record, a.record)
        };
        self.stats.merged += 1;
        if closed(&kernel) && span(&packets).1 > span(&kernel).1 + EDGE_SLACK_NS {
            self.stats.overrun += 1;
        }
        out(combine(kernel, packets));
    }

    /// Writes out what has waited longer than `wait` (all of it when `force`): with the
    /// nearest record of the other view within [`TOLERANCE_NS`] if there is one, else alone.
    pub fn expire(&mut self, now: Instant, force: bool, out: &mut impl FnMut(FlowRecord)) {
        let wait = self.wait;
        let due = |w: &Waiting| force || now.duration_since(w.since) >= wait;
        let keys: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, q)| q.iter().any(due))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let mut queue = self.pending.remove(&k).expect("listed");
            // Oldest first, as they came.
            queue.sort_by_key(|w| w.since);
            let mut keep = Vec::new();
            let mut rest = std::collections::VecDeque::from(queue);
            while let Some(w) = rest.pop_front() {
                if !due(&w) {
                    keep.push(w);
                    continue;
                }
                let near = rest
                    .iter()
                    .enumerate()
                    .map(|(i, o)| (fit_of(&w, o), i))
                    .filter(|(f, _)| *f != Fit::No)
                    .max();
                if let Some((_, i)) = near {
                    let other = rest.remove(i).expect("found");
                    self.pair(w, other, out);
                    continue;
                }
                if w.kernel {
                    self.stats.kernel_alone += 1;
                    self.stats.kernel_unpaired += 1;
                } else {
                    self.stats.packets_alone += 1;
                    self.stats.packets_unpaired += 1;
                }
                out(w.record);
            }
            if !keep.is_empty() {
                self.pending.insert(k, keep);
            }
        }
    }
}

/// Runs a merger on its own thread until every sender of `rx` is gone, then writes out
/// everything still waiting.
pub fn spawn(
    wait: Duration,
    rx: Receiver<Input>,
    metrics: Option<Arc<Metrics>>,
    mut out: impl FnMut(FlowRecord) + Send + 'static,
) -> JoinHandle<MergeStats> {
    std::thread::Builder::new()
        .name("sensor-merge".into())
        .spawn(move || {
            let mut m = Merger::new(wait);
            let heartbeat = metrics.as_ref().map(|m| m.heartbeat("merge"));
            let mut published = MergeStats::default();
            let publish = |s: MergeStats, last: &mut MergeStats| {
                if let Some(mx) = &metrics {
                    add_delta(&mx.merge_merged, &mut last.merged, s.merged);
                    let kernel = mx.merge_alone.with_label_values(&["kernel"]);
                    add_delta(&kernel, &mut last.kernel_alone, s.kernel_alone);
                    let packets = mx.merge_alone.with_label_values(&["packets"]);
                    add_delta(&packets, &mut last.packets_alone, s.packets_alone);
                    let folded = mx.merge_amendments.with_label_values(&["folded"]);
                    add_delta(&folded, &mut last.amendments_folded, s.amendments_folded);
                    let passed = mx.merge_amendments.with_label_values(&["passed"]);
                    add_delta(&passed, &mut last.amendments_passed, s.amendments_passed);
                    let kernel = mx.merge_unpaired.with_label_values(&["kernel"]);
                    add_delta(&kernel, &mut last.kernel_unpaired, s.kernel_unpaired);
                    let packets = mx.merge_unpaired.with_label_values(&["packets"]);
                    add_delta(&packets, &mut last.packets_unpaired, s.packets_unpaired);
                    add_delta(&mx.merge_overrun, &mut last.overrun, s.overrun);
                }
            };
            let mut last_sweep = Instant::now();
            let mut pace = crate::pace::Paced::new(crate::pace::TICK);
            loop {
                match pace.recv(&rx, SWEEP) {
                    Ok(input) => m.input(input, Instant::now(), &mut out),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                // The sweep looks at every waiting record and the counters take locks:
                // once per SWEEP, not per record (a record waits `wait` + SWEEP at most).
                let now = Instant::now();
                if now.duration_since(last_sweep) >= SWEEP {
                    last_sweep = now;
                    m.expire(now, false, &mut out);
                    if let Some(h) = &heartbeat {
                        h.beat();
                    }
                    publish(m.stats(), &mut published);
                }
            }
            m.expire(Instant::now(), true, &mut out);
            publish(m.stats(), &mut published);
            m.stats()
        })
        .expect("spawning the merge thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Owner;

    fn kernel() -> FlowRecord {
        FlowRecord {
            first_seen_ms: 100,
            last_seen_ms: 200,
            src_payload_bytes: Some(10),
            dst_payload_bytes: Some(20),
            src_owner: Some(Owner {
                pid: 1,
                comm: "curl".into(),
                ..Default::default()
            }),
            end_reason: EndReason::Fin,
            ..FlowRecord::kernel(
                "10.0.0.1:5000".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
            )
        }
    }

    fn packets(reversed: bool) -> FlowRecord {
        let (a, b) = (
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let (src, dst) = if reversed { (b, a) } else { (a, b) };
        FlowRecord {
            first_seen_ms: 99,
            last_seen_ms: 201,
            src_packets: Some(if reversed { 4 } else { 6 }),
            dst_packets: Some(if reversed { 6 } else { 4 }),
            src_bytes: Some(if reversed { 260 } else { 370 }),
            dst_bytes: Some(if reversed { 370 } else { 260 }),
            src_tcp_flags: Some(0x12),
            dst_tcp_flags: Some(0x12),
            sources: "capture",
            end_reason: EndReason::Fin,
            ..FlowRecord::kernel(src, dst)
        }
    }

    const MS: u64 = 1_000_000;

    /// Connection `n` of many from one client port: 2 ms long, 100 µs apart.
    fn conn(n: u64) -> (u64, u64) {
        let start = 1_000_000 * MS + n * 2_100_000;
        (start, start + 2 * MS)
    }

    /// The kernel's record of a connection this host opened.
    fn kernel_at((first, last): (u64, u64), pid: u32) -> FlowRecord {
        FlowRecord {
            seen_ns: Some((first, last)),
            starts_at_connect: true,
            first_seen_ms: (first / MS) as i64,
            last_seen_ms: (last / MS) as i64,
            src_owner: Some(Owner {
                pid,
                comm: "client".into(),
                ..Default::default()
            }),
            ..kernel()
        }
    }

    /// A packet record of `count` packets from the client, opening with a SYN.
    fn packets_at((first, last): (u64, u64), count: u64) -> FlowRecord {
        FlowRecord {
            seen_ns: Some((first, last)),
            first_seen_ms: (first / MS) as i64,
            last_seen_ms: (last / MS) as i64,
            src_packets: Some(count),
            ..packets(false)
        }
    }

    #[test]
    fn kernel_then_packets_merge_with_kernel_orientation() {
        let mut m = Merger::new(Duration::from_secs(3));
        let mut out = Vec::new();
        let t = Instant::now();
        m.input(Input::Kernel(kernel()), t, &mut |r| out.push(r));
        assert!(out.is_empty(), "waits for the packet view");
        // The packet view guessed the other way round.
        m.input(Input::Packets(packets(true)), t, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(f.src, "10.0.0.1:5000".parse().unwrap());
        assert_eq!((f.src_packets, f.dst_packets), (Some(6), Some(4)));
        assert_eq!((f.src_bytes, f.src_payload_bytes), (Some(370), Some(10)));
        assert_eq!((f.first_seen_ms, f.last_seen_ms), (99, 201));
        assert_eq!(f.sources, "kernel,capture");
        assert_eq!(m.stats().merged, 1);
        assert_eq!(m.stats().overrun, 0);
    }

    #[test]
    fn alone_after_the_wait_and_partials_pass_through() {
        let mut m = Merger::new(Duration::from_secs(3));
        let mut out = Vec::new();
        let t = Instant::now();
        let mut partial = packets(false);
        partial.end_reason = EndReason::ActiveTimeout;
        m.input(Input::Packets(partial), t, &mut |r| out.push(r));
        assert_eq!(out.len(), 1, "partial records do not wait");
        m.input(Input::Kernel(kernel()), t, &mut |r| out.push(r));
        m.expire(t + Duration::from_secs(1), false, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        m.expire(t + Duration::from_secs(4), false, &mut |r| out.push(r));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].sources, "kernel");
        let s = m.stats();
        assert_eq!((s.kernel_alone, s.kernel_unpaired), (1, 1));
        assert_eq!(
            (s.packets_alone, s.packets_unpaired),
            (1, 0),
            "a partial never waits"
        );
    }

    /// The case: the packet record of connection 0 was lost. Arrival order would
    /// give connection 0 the packets of 1, 1 those of 2, and so on; by lifetime each gets
    /// its own and connection 0 goes out alone, counted.
    #[test]
    fn a_lost_packet_record_shifts_nothing() {
        let mut m = Merger::new(Duration::from_secs(3));
        let mut out = Vec::new();
        let t = Instant::now();
        for n in 0..4 {
            m.input(Input::Kernel(kernel_at(conn(n), n as u32)), t, &mut |r| {
                out.push(r)
            });
        }
        for n in 1..4 {
            let (a, b) = conn(n);
            m.input(
                Input::Packets(packets_at((a + 20_000, b - 30_000), 10 + n)),
                t,
                &mut |r| out.push(r),
            );
        }
        assert_eq!(out.len(), 3);
        for f in &out {
            let pid = f.src_owner.as_ref().unwrap().pid;
            assert_eq!(f.src_packets, Some(10 + u64::from(pid)), "connection {pid}");
            assert_eq!(f.seen_ns.unwrap().0, conn(u64::from(pid)).0);
        }
        m.expire(t + Duration::from_secs(4), false, &mut |r| out.push(r));
        assert_eq!(out.len(), 4);
        assert_eq!(out[3].src_owner.as_ref().unwrap().pid, 0);
        assert_eq!(out[3].sources, "kernel");
        assert_eq!((m.stats().merged, m.stats().kernel_unpaired), (3, 1));
    }

    /// A packet record whose closing packets were lost runs on into the next connection:
    /// it goes to the connection whose lifetime holds its first packet, the row ends at
    /// that connection's close, and the next connection goes out alone.
    #[test]
    fn a_packet_record_running_into_the_next_connection_is_cut_at_the_close() {
        let mut m = Merger::new(Duration::from_secs(3));
        let mut out = Vec::new();
        let t = Instant::now();
        m.input(Input::Kernel(kernel_at(conn(0), 0)), t, &mut |r| {
            out.push(r)
        });
        m.input(Input::Kernel(kernel_at(conn(1), 1)), t, &mut |r| {
            out.push(r)
        });
        // From conn 0's SYN to conn 1's end: it shares more time with conn 1.
        let both = packets_at((conn(0).1 - 300_000, conn(1).1), 9);
        m.input(Input::Packets(both), t, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].src_owner.as_ref().unwrap().pid, 0);
        let (first, last) = out[0].seen_ns.unwrap();
        assert_eq!(first, conn(0).0);
        assert_eq!(
            last,
            conn(0).1 + EDGE_SLACK_NS,
            "ends at the close, give or take"
        );
        assert_eq!(m.stats().overrun, 1);
        m.expire(t + Duration::from_secs(4), false, &mut |r| out.push(r));
        assert_eq!(out[1].src_owner.as_ref().unwrap().pid, 1);
        assert_eq!(out[1].sources, "kernel");
    }

    /// Of two waiting packet records, the one whose first packet is in the kernel's
    /// lifetime wins, though it came second (an accepted connection: its packets may start
    /// before the kernel's record).
    #[test]
    fn the_best_fit_wins_not_the_first_to_come() {
        let mut m = Merger::new(Duration::from_secs(3));
        let mut out = Vec::new();
        let t = Instant::now();
        let k = conn(5);
        let mut accepted = kernel_at(k, 5);
        accepted.starts_at_connect = false;
        let mut early = packets_at((k.0 - 3 * MS, k.0 + 100_000), 1);
        early.src_tcp_flags = Some(0x10);
        early.dst_tcp_flags = Some(0x10);
        m.input(Input::Packets(early), t, &mut |r| out.push(r));
        m.input(
            Input::Packets(packets_at((k.0 + 10_000, k.1), 2)),
            t,
            &mut |r| out.push(r),
        );
        m.input(Input::Kernel(accepted), t, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].src_packets, Some(2));
    }

    /// Nothing pairs across a close and a new SYN: packets that begin after the kernel's
    /// close or before its connect(), or that opened with a SYN and ended before its socket
    /// existed, even by tens of microseconds.
    #[test]
    fn never_across_a_close_and_a_new_syn() {
        let k = kernel_at(conn(1), 1);
        let (k0, k1) = conn(1);
        let later = packets_at((k1 + 50_000, k1 + MS), 1);
        assert_eq!(fit(&k, &later), Fit::No);
        // The previous connection's packets, its RST lost, running into this one.
        let ran_on = packets_at((k0 - 2 * MS, k1), 1);
        assert_eq!(fit(&k, &ran_on), Fit::No);
        let mut accepted = k.clone();
        accepted.starts_at_connect = false;
        let earlier = packets_at((k0 - 2 * MS, k0 - 50_000), 1);
        assert_eq!(fit(&accepted, &earlier), Fit::No);

        let mut m = Merger::new(Duration::from_secs(3));
        let mut out = Vec::new();
        let t = Instant::now();
        m.input(Input::Kernel(k), t, &mut |r| out.push(r));
        m.input(Input::Packets(later), t, &mut |r| out.push(r));
        m.input(Input::Packets(ran_on), t, &mut |r| out.push(r));
        m.expire(t + Duration::from_secs(4), false, &mut |r| out.push(r));
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|f| f.sources != "kernel,capture"));
        let s = m.stats();
        assert_eq!((s.merged, s.packets_unpaired, s.kernel_unpaired), (0, 2, 1));
    }

    /// A connection older than the sensor: its kernel record starts at its first close, and
    /// its packets (no SYN seen) end just before. They pair once waited, for want of better.
    #[test]
    fn older_than_the_sensor_pairs_within_the_tolerance() {
        let (k0, k1) = conn(1);
        let mut k = kernel_at((k0, k1), 1);
        k.starts_at_connect = false;
        let mut older = packets_at((k0 - 900 * MS, k0 - 50_000), 7);
        older.src_tcp_flags = Some(0x18);
        older.dst_tcp_flags = Some(0x11);
        assert!(matches!(fit(&k, &older), Fit::Near { .. }));
        let mut m = Merger::new(Duration::from_secs(3));
        let mut out = Vec::new();
        let t = Instant::now();
        m.input(Input::Kernel(k), t, &mut |r| out.push(r));
        m.input(Input::Packets(older), t, &mut |r| out.push(r));
        assert!(out.is_empty(), "only near: waits for something better");
        m.expire(t + Duration::from_secs(4), false, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sources, "kernel,capture");
        assert_eq!(out[0].seen_ns.unwrap(), (k0 - 900 * MS, k1));
        assert_eq!(m.stats().merged, 1);
    }

    /// At shutdown the kernel's last event is not the connection's end: later packets are
    /// not cut off.
    #[test]
    fn open_at_shutdown_keeps_the_packets_end() {
        let mut k = kernel_at(conn(0), 0);
        k.end_reason = EndReason::Shutdown;
        let p = packets_at((conn(0).0 + 10_000, conn(0).1 + 900 * MS), 3);
        let f = combine(k, p);
        assert_eq!(f.seen_ns.unwrap().1, conn(0).1 + 900 * MS);
    }
}
