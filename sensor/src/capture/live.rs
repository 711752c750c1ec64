//! Live capture: one AF_PACKET socket ([`PacketSocket`]) per interface, each read by its own
//! thread that parses the frame where it lands (tens of nanoseconds) and hands the packet's
//! facts, with the kernel's timestamp of the frame, to the flow table through a bounded
//! queue.
//!
//! Full-queue policy: the packet is dropped and counted (`queue_dropped`); the capture thread
//! never waits on anything downstream, so the kernel's own socket buffer is the only other
//! place packets can be lost, and those losses are read from PACKET_STATISTICS.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use pnet_datalink::{self as datalink, NetworkInterface};

use super::{
    parse::{self, LinkType, Packet, ParseError},
    socket::{PacketSocket, SocketError},
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
    pub bytes: AtomicU64,
    pub not_ip: AtomicU64,
    pub malformed: AtomicU64,
    /// Handed-off packets dropped because the flow table's queue was full.
    pub queue_dropped: AtomicU64,
    /// Packets the kernel dropped before we read them (PACKET_STATISTICS tp_drops).
    pub kernel_dropped: AtomicU64,
}

pub struct LiveCapture {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<CaptureStats>,
    pub interfaces: Vec<String>,
}

/// A packet and when the kernel received it (unix nanoseconds, the frame's SO_TIMESTAMPNS
/// stamp: not when it was read, which under load is later by the socket buffer's backlog).
pub type Captured = (u64, Packet);

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
    /// Starts one capture thread per interface; `decap`: tunnels' inner packets too (see
    /// [`super::tunnel`]).
    pub fn start(
        interfaces: Vec<NetworkInterface>,
        buffer_bytes: usize,
        decap: bool,
        tx: SyncSender<Captured>,
        heartbeat: Option<Heartbeat>,
    ) -> Result<Self, CaptureError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CaptureStats::default());
        let mut threads = Vec::new();
        let mut names = Vec::new();
        for iface in interfaces {
            let hw = hw_type(&iface.name);
            let mut sock = PacketSocket::open(
                iface.index,
                buffer_bytes,
                Duration::from_millis(100),
                hw == ARPHRD_LOOPBACK,
            )
            .map_err(|source| CaptureError::Open {
                name: iface.name.clone(),
                source,
            })?;
            let link = link_type(hw);
            let (stop, stats, tx) = (Arc::clone(&stop), Arc::clone(&stats), tx.clone());
            let heartbeat = heartbeat.clone();
            names.push(iface.name.clone());
            let name = iface.name.clone();
            let handle = std::thread::Builder::new()
                .name(format!("capture-{name}"))
                .spawn(move || {
                    let mut last_stats = Instant::now();
                    let mut since_beat = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        since_beat += 1;
                        if since_beat >= 4096
                            && let Some(h) = &heartbeat
                        {
                            h.beat();
                            since_beat = 0;
                        }
                        match sock.recv() {
                            Ok((ts, frame)) => {
                                stats.packets.fetch_add(1, Ordering::Relaxed);
                                stats.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                                match parse::parse_with(link, frame, decap) {
                                    Ok(p) => match tx.try_send((ts, p)) {
                                        Ok(()) => {
                                            stats.handed_off.fetch_add(1, Ordering::Relaxed);
                                        }
                                        Err(TrySendError::Full(_)) => {
                                            stats.queue_dropped.fetch_add(1, Ordering::Relaxed);
                                        }
                                        Err(TrySendError::Disconnected(_)) => break,
                                    },
                                    Err(ParseError::NotIp { .. }) => {
                                        stats.not_ip.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(_) => {
                                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                                if let Some(h) = &heartbeat {
                                    h.beat();
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                tracing::error!(interface = %name, "capture stopped: {e}");
                                break;
                            }
                        }
                        if last_stats.elapsed() >= Duration::from_secs(1) {
                            last_stats = Instant::now();
                            if let Some(h) = &heartbeat {
                                h.beat();
                            }
                            if let Some((_, drops)) = sock.statistics() {
                                stats
                                    .kernel_dropped
                                    .fetch_add(u64::from(drops), Ordering::Relaxed);
                            }
                        }
                    }
                    if let Some((_, drops)) = sock.statistics() {
                        stats
                            .kernel_dropped
                            .fetch_add(u64::from(drops), Ordering::Relaxed);
                    }
                })
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

    /// Stops every capture thread (within the read timeout) and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
