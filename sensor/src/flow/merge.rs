//! Merge: the kernel's record of a TCP connection and the packet view's record of the same
//! 5-tuple become one flow, carrying the processes and kernel counters (payload bytes, srtt,
//! retransmits) and the packet counts, with `sources` naming both.
//!
//! The two views end a connection at different moments (the kernel at the socket's close,
//! the packet table after FIN both ways and `tcp_close_linger_ms`), so whichever record comes
//! first waits up to `wait` for the other; alone after that, it is written as it is. Records
//! the packet table cuts at the active timeout are partial and pass straight through; the
//! final one merges.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::record::{EndReason, FlowRecord, PROTO_TCP};
use crate::metrics::{Metrics, add_delta};

/// A record and which view made it.
pub enum Input {
    Kernel(FlowRecord),
    Packets(FlowRecord),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct MergeStats {
    pub merged: u64,
    pub kernel_alone: u64,
    pub packets_alone: u64,
    /// Amendments added to a packet record still waiting here, and those passed on.
    pub amendments_folded: u64,
    pub amendments_passed: u64,
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

/// One record of each view, combined. The kernel's initiator is the truth; the packet
/// counts are turned around when the packet view guessed the other way.
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
    FlowRecord {
        first_seen_ms: kernel.first_seen_ms.min(packets.first_seen_ms),
        last_seen_ms: kernel.last_seen_ms.max(packets.last_seen_ms),
        src_packets: sp,
        dst_packets: dp,
        src_bytes: sb,
        dst_bytes: db,
        src_tcp_flags: sf,
        dst_tcp_flags: df,
        sources,
        packet_start_ns: packets.packet_start_ns,
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

/// Pairs records from both views; what waits too long goes out alone.
pub struct Merger {
    wait: Duration,
    pending: HashMap<Key, VecDeque<Waiting>>,
    stats: MergeStats,
}

impl Merger {
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            pending: HashMap::new(),
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
        let queue = self.pending.entry(k).or_default();
        if let Some(pos) = queue.iter().position(|w| w.kernel != kernel) {
            let other = queue.remove(pos).expect("found").record;
            if queue.is_empty() {
                self.pending.remove(&k);
            }
            self.stats.merged += 1;
            out(if kernel {
                combine(record, other)
            } else {
                combine(other, record)
            });
            return;
        }
        queue.push_back(Waiting {
            record,
            kernel,
            since: now,
        });
    }

    /// Writes out what has waited longer than `wait` (all of it when `force`).
    pub fn expire(&mut self, now: Instant, force: bool, out: &mut impl FnMut(FlowRecord)) {
        let wait = self.wait;
        let stats = &mut self.stats;
        self.pending.retain(|_, queue| {
            while let Some(w) = queue.front() {
                if !force && now.duration_since(w.since) < wait {
                    break;
                }
                let w = queue.pop_front().expect("front");
                if w.kernel {
                    stats.kernel_alone += 1;
                } else {
                    stats.packets_alone += 1;
                }
                out(w.record);
            }
            !queue.is_empty()
        });
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
                }
            };
            loop {
                match rx.recv_timeout(Duration::from_millis(250)) {
                    Ok(input) => m.input(input, Instant::now(), &mut out),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                m.expire(Instant::now(), false, &mut out);
                if let Some(h) = &heartbeat {
                    h.beat();
                }
                publish(m.stats(), &mut published);
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
            last_seen_ms: 2200,
            src_packets: Some(if reversed { 4 } else { 6 }),
            dst_packets: Some(if reversed { 6 } else { 4 }),
            src_bytes: Some(if reversed { 260 } else { 370 }),
            dst_bytes: Some(if reversed { 370 } else { 260 }),
            sources: "capture",
            end_reason: EndReason::Fin,
            ..FlowRecord::kernel(src, dst)
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
        assert_eq!((f.first_seen_ms, f.last_seen_ms), (99, 2200));
        assert_eq!(f.sources, "kernel,capture");
        assert_eq!(m.stats().merged, 1);
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
        assert_eq!(m.stats().kernel_alone, 1);
    }
}
