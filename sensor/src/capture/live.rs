//! Live capture: one AF_PACKET socket (pnet) per interface, each read by its own thread that
//! parses the frame where it lands (tens of nanoseconds) and hands the packet's facts to
//! the flow table through a bounded queue.
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
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pnet_datalink::{self as datalink, Channel, NetworkInterface};

use super::parse::{self, LinkType, Packet, ParseError};
use crate::metrics::Heartbeat;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture interface {name} does not exist (have: {have})")]
    NoSuchInterface { name: String, have: String },
    #[error("opening a packet socket on {name}: {source} (needs CAP_NET_RAW)")]
    Open {
        name: String,
        #[source]
        source: std::io::Error,
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

/// A packet and when it was captured (unix nanoseconds).
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

/// On loopback every packet passes a packet socket twice, going out and coming back in:
/// a classic BPF filter keeps only the incoming copy (what tcpdump shows too).
fn drop_outgoing(fd: i32, name: &str) -> Result<(), CaptureError> {
    const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
    const SKF_AD_PKTTYPE: u32 = 4;
    const PACKET_OUTGOING: u32 = 4;
    let code = [
        // A = skb->pkt_type
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: SKF_AD_OFF + SKF_AD_PKTTYPE,
        },
        // if A == PACKET_OUTGOING drop, else accept
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: PACKET_OUTGOING,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr().cast_mut(),
    };
    // SAFETY: SO_ATTACH_FILTER copies the program; `code` outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(CaptureError::Open {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Opens a raw packet socket for all protocols, with a receive buffer of `buffer_bytes`
/// (bursts wait there rather than being dropped); pnet binds it to the interface.
fn packet_socket(name: &str, buffer_bytes: usize) -> Result<i32, CaptureError> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    if fd < 0 {
        return Err(CaptureError::Open {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    let size = buffer_bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a c_int value. FORCE (CAP_NET_ADMIN) passes rmem_max.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
    }
    Ok(fd)
}

/// Reads and resets the socket's kernel counters: (packets, drops) since the last read.
fn packet_statistics(fd: i32) -> Option<(u32, u32)> {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt into a correctly sized tpacket_stats.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((st.tp_packets, st.tp_drops))
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
            let fd = packet_socket(&iface.name, buffer_bytes)?;
            let hw = hw_type(&iface.name);
            if hw == ARPHRD_LOOPBACK
                && let Err(e) = drop_outgoing(fd, &iface.name)
            {
                // SAFETY: our own fd, not yet handed to pnet.
                unsafe { libc::close(fd) };
                return Err(e);
            }
            let config = datalink::Config {
                read_timeout: Some(Duration::from_millis(100)),
                read_buffer_size: 1 << 16,
                socket_fd: Some(fd),
                ..Default::default()
            };
            let mut rx = match datalink::channel(&iface, config) {
                Ok(Channel::Ethernet(_tx, rx)) => rx,
                Ok(_) => {
                    return Err(CaptureError::Open {
                        name: iface.name.clone(),
                        source: std::io::Error::other("unexpected channel type"),
                    });
                }
                Err(source) => {
                    return Err(CaptureError::Open {
                        name: iface.name.clone(),
                        source,
                    });
                }
            };
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
                        match rx.next() {
                            Ok(frame) => {
                                stats.packets.fetch_add(1, Ordering::Relaxed);
                                stats.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                                match parse::parse_with(link, frame, decap) {
                                    Ok(p) => match tx.try_send((now_ns(), p)) {
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
                            if let Some((_, drops)) = packet_statistics(fd) {
                                stats
                                    .kernel_dropped
                                    .fetch_add(u64::from(drops), Ordering::Relaxed);
                            }
                        }
                    }
                    if let Some((_, drops)) = packet_statistics(fd) {
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
