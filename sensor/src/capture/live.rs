//! Live capture: one AF_PACKET socket with a TPACKET_V3 ring ([`PacketRing`]) per
//! interface, each read by its own thread, which walks every block the kernel hands over,
//! parses each frame where it lies in the ring (tens of nanoseconds) and hands the packets'
//! facts, with the kernel's timestamps, to the one flow table in batches ([`super::batch`]).
//!
//! Full-queue policy: the batch is dropped and its packets counted (`queue_dropped`); the
//! capture thread never waits on anything downstream, so the kernel's ring is the only
//! other place packets can be lost, and those losses are read from PACKET_STATISTICS
//! (`kernel_dropped`, and `ring_freezes` for the times the ring ran out of blocks).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use pnet_datalink::{self as datalink, NetworkInterface};

use super::{
    batch::BatchSender,
    block,
    parse::{self, LinkType, ParseError},
    ring::{PacketRing, SocketError},
};
use crate::metrics::Heartbeat;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture interface {name} does not exist (have: {have})")]
    NoSuchInterface { name: String, have: String },
    #[error("opening a packet socket on {name}: {source} (needs CAP_NET_RAW)")]
    Open {
        name: String,
        #[source]
        source: SocketError,
    },
}

/// Counters of every capture thread together.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub packets: AtomicU64,
    /// Parsed and handed to the flow table.
    pub handed_off: AtomicU64,
    /// Frame bytes on the wire (before the filter's snap length cut them).
    pub bytes: AtomicU64,
    pub not_ip: AtomicU64,
    pub malformed: AtomicU64,
    /// Handed-off packets dropped because the flow table's queue was full.
    pub queue_dropped: AtomicU64,
    /// Packets the kernel dropped before we read them (PACKET_STATISTICS tp_drops).
    pub kernel_dropped: AtomicU64,
    /// Times a ring had no free block and the kernel froze it (tp_freeze_q_cnt).
    pub ring_freezes: AtomicU64,
}

pub struct LiveCapture {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<CaptureStats>,
    pub interfaces: Vec<String>,
}

/// The interfaces named, or every interface that is up for `all`.
pub fn resolve(names: &[String]) -> Result<Vec<NetworkInterface>, CaptureError> {
    let all = datalink::interfaces();
    if names.iter().any(|n| n == "all") {
        return Ok(all.into_iter().filter(|i| i.is_up()).collect());
    }
    names
        .iter()
        .map(|n| {
            all.iter().find(|i| &i.name == n).cloned().ok_or_else(|| {
                CaptureError::NoSuchInterface {
                    name: n.clone(),
                    have: all
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })
        })
        .collect()
}

const ARPHRD_ETHER: u32 = 1;
const ARPHRD_LOOPBACK: u32 = 772;

/// The interface's ARPHRD_ type, from /sys/class/net/IF/type.
fn hw_type(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/type"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(ARPHRD_ETHER)
}

/// What a capture on this interface delivers: Ethernet framing, or bare IP on tunnels
/// (ARPHRD_NONE and friends).
fn link_type(hw: u32) -> LinkType {
    match hw {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => LinkType::Ethernet,
        _ => LinkType::Raw,
    }
}

impl LiveCapture {
    /// Starts one capture thread per interface, each reading its own ring of about
    /// `ring_bytes`; `decap`: tunnels' inner packets too (see [`super::tunnel`]).
    pub fn start(
        interfaces: Vec<NetworkInterface>,
        ring_bytes: usize,
        decap: bool,
        tx: BatchSender,
        heartbeat: Option<Heartbeat>,
    ) -> Result<Self, CaptureError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CaptureStats::default());
        let mut threads = Vec::new();
        let mut names = Vec::new();
        for iface in interfaces {
            let hw = hw_type(&iface.name);
            let link = link_type(hw);
            let ring = PacketRing::open(iface.index, ring_bytes, link, hw == ARPHRD_LOOPBACK)
                .map_err(|source| CaptureError::Open {
                    name: iface.name.clone(),
                    source,
                })?;
            let g = ring.geometry();
            tracing::debug!(
                interface = %iface.name,
                blocks = g.blocks,
                block_bytes = g.block_bytes,
                "capture ring"
            );
            let reader = Reader {
                ring,
                link,
                decap,
                tx: tx.clone(),
                stats: Arc::clone(&stats),
                stop: Arc::clone(&stop),
                heartbeat: heartbeat.clone(),
                name: iface.name.clone(),
            };
            names.push(iface.name.clone());
            let handle = std::thread::Builder::new()
                .name(format!("capture-{}", iface.name))
                .spawn(move || reader.run())
                .expect("spawning a capture thread");
            threads.push(handle);
        }
        Ok(Self {
            stop,
            threads,
            stats,
            interfaces: names,
        })
    }

    /// Stops every capture thread (within the poll timeout) and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How long a reader waits for a block before it looks at its stop flag and beats.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// The ring's block retire timeout ([`super::ring::RETIRE_MS`]).
const RETIRE: Duration = Duration::from_millis(super::ring::RETIRE_MS as u64);

/// One interface's capture thread.
struct Reader {
    ring: PacketRing,
    link: LinkType,
    decap: bool,
    tx: BatchSender,
    stats: Arc<CaptureStats>,
    stop: Arc<AtomicBool>,
    heartbeat: Option<Heartbeat>,
    name: String,
}

/// One block's counts, added to the shared ones once per block.
#[derive(Default)]
struct BlockCounts {
    packets: u64,
    bytes: u64,
    not_ip: u64,
    malformed: u64,
}

/// What reading one block came to.
enum Read {
    /// A block was read (or none came within the timeout: `false`).
    Went(bool),
    /// The flow table has gone, or the socket failed: the reader ends.
    Ended,
}

impl Reader {
    fn run(mut self) {
        let mut last_stats = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            if let Read::Ended = self.read_block(POLL_TIMEOUT) {
                self.kernel_stats();
                return;
            }
            if let Some(h) = &self.heartbeat {
                h.beat();
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                self.kernel_stats();
            }
        }
        // What the kernel had taken before the stop: the block being filled is handed
        // over within the retire timeout. At most one ring's worth, so a stop is prompt
        // under any load.
        for _ in 0..self.ring.geometry().blocks {
            if !matches!(self.read_block(2 * RETIRE), Read::Went(true)) {
                break;
            }
        }
        self.kernel_stats();
    }

    /// Waits up to `timeout` for a block, then parses its frames in place into the batch
    /// queue, gives the block back and sends what it held.
    fn read_block(&mut self, timeout: Duration) -> Read {
        let mut counts = BlockCounts::default();
        let mut closed = false;
        let got = match self.ring.next_block(timeout) {
            Ok(Some(b)) => {
                for f in block::frames(b.bytes()) {
                    counts.packets += 1;
                    counts.bytes += u64::from(f.wire_len);
                    match parse::parse_with(self.link, f.data, self.decap) {
                        Ok(p) => {
                            if self.tx.push((f.ts_ns, p)).is_err() {
                                closed = true;
                                break;
                            }
                        }
                        Err(ParseError::NotIp { .. }) => counts.not_ip += 1,
                        Err(_) => counts.malformed += 1,
                    }
                }
                // The packets are copied out: the block goes back to the kernel first.
                drop(b);
                closed |= self.tx.flush().is_err();
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(interface = %self.name, "capture stopped: {e}");
                return Read::Ended;
            }
        };
        self.add(&counts);
        if closed { Read::Ended } else { Read::Went(got) }
    }

    fn add(&mut self, c: &BlockCounts) {
        let s = &self.stats;
        let (handed_off, dropped) = self.tx.take_counts();
        for (counter, n) in [
            (&s.packets, c.packets),
            (&s.bytes, c.bytes),
            (&s.not_ip, c.not_ip),
            (&s.malformed, c.malformed),
            (&s.handed_off, handed_off),
            (&s.queue_dropped, dropped),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn kernel_stats(&self) {
        if let Some(st) = self.ring.statistics() {
            self.stats
                .kernel_dropped
                .fetch_add(u64::from(st.drops), Ordering::Relaxed);
            self.stats
                .ring_freezes
                .fetch_add(u64::from(st.freezes), Ordering::Relaxed);
        }
    }
}
