//! A finished flow: what the aggregator hands to the store.
use std::net::{IpAddr, SocketAddr};

pub use crate::capture::tunnel::TunnelKind;

/// The tunnel an inner flow was carried in (see [`crate::capture::tunnel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub kind: TunnelKind,
    /// VNI, TEID or GRE key; None when the tunnel has none.
    pub id: Option<u32>,
    /// Outer source address of the inner initiator's packets.
    pub src: IpAddr,
    /// Outer destination address of the inner initiator's packets.
    pub dst: IpAddr,
}

/// How an end's owner was found: the rule, so a reader knows how far to trust it. Stored as
/// its lowercase name in `src_attr` / `dst_attr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attr {
    /// The process that called `connect()` (kernel, in its context).
    #[default]
    Connect,
    /// The process that returned from `accept()` with this connection (kernel, in its context).
    Accept,
    /// The process that listened on the local address and port (the accepting process was
    /// not seen: the fallback).
    Listener,
    /// Read from `/proc` (sockets older than the sensor).
    ProcScan,
    /// The process whose socket sent the datagram (kernel, in its context).
    Send,
    /// The process whose socket received the datagram.
    Recv,
}

impl Attr {
    pub fn as_str(self) -> &'static str {
        match self {
            Attr::Connect => "connect",
            Attr::Accept => "accept",
            Attr::Listener => "listener",
            Attr::ProcScan => "proc-scan",
            Attr::Send => "send",
            Attr::Recv => "recv",
        }
    }
}

/// The process that owns one end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    pub pid: u32,
    /// The kernel's `comm`: at most 15 bytes of the thread's name.
    pub comm: String,
    /// The task's real uid, where the hook ran in its context.
    pub uid: Option<u32>,
    /// The task's cgroup v2 id (`bpf_get_current_cgroup_id`), resolved to `unit` off the
    /// ingest path.
    pub cgroup_id: Option<u64>,
    /// The systemd unit (`nginx.service`, `user@1000.service/app.scope`) or, where there is
    /// none, the cgroup path.
    pub unit: Option<String>,
    /// How this owner was found.
    pub attr: Attr,
}

impl Owner {
    /// The task a kernel event names (`pid`, `comm`, `uid`, `cgroup_id`), found `attr`.
    pub fn from_event(ev: &sensor_common::SockEvent, attr: Attr) -> Self {
        Self {
            uid: Some(ev.uid),
            cgroup_id: (ev.cgroup_id != 0).then_some(ev.cgroup_id),
            attr,
            ..Self::from_comm(ev.pid, &ev.comm)
        }
    }

    /// Decodes a NUL-padded kernel `comm`.
    pub fn from_comm(pid: u32, comm: &[u8]) -> Self {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        Self {
            pid,
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
            ..Self::default()
        }
    }
}

/// Why a flow ended. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Closed with FIN on both sides (orderly).
    Fin,
    /// Aborted: a RST was sent or received.
    Rst,
    /// The connection never established (refused, timed out, aborted during the handshake).
    Failed,
    /// Still open when the sensor stopped (or the capture file ended); counters are those
    /// seen so far.
    Shutdown,
    /// No packet for `idle_timeout_ms`.
    IdleTimeout,
    /// Open for `active_timeout_ms`: this record ends, the flow goes on in a new one.
    ActiveTimeout,
    /// Pushed out of a full flow table (`max_flows`).
    Evicted,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Failed => "failed",
            Self::Shutdown => "shutdown",
            Self::IdleTimeout => "idle",
            Self::ActiveTimeout => "active",
            Self::Evicted => "evicted",
        }
    }
}

impl FlowRecord {
    /// A record of `proto` from `src` to `dst` seen by `sources`, every count unknown yet:
    /// each view fills in what it knows.
    pub fn new(
        proto: u8,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        sources: &'static str,
    ) -> Self {
        Self {
            first_seen_ms: 0,
            last_seen_ms: 0,
            proto,
            src,
            dst,
            src_payload_bytes: None,
            dst_payload_bytes: None,
            src_owner: None,
            dst_owner: None,
            srtt_us: None,
            retransmits: None,
            end_reason: EndReason::Shutdown,
            sources,
            src_packets: None,
            dst_packets: None,
            src_bytes: None,
            dst_bytes: None,
            src_tcp_flags: None,
            dst_tcp_flags: None,
            packet_start_ns: None,
            amends: false,
            tunnel: None,
            seen_ns: None,
            starts_at_connect: false,
        }
    }

    /// A TCP record of the kernel's connection view.
    pub fn kernel(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Self {
        Self::new(PROTO_TCP, src, dst, "kernel")
    }
}

/// IANA protocol number for TCP.
pub const PROTO_TCP: u8 = 6;

/// One connection, initiator as source.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// IANA protocol number.
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Payload bytes from source to destination, as the kernel counts them (`None` when no
    /// end of the connection reported its counters, e.g. still open at shutdown).
    pub src_payload_bytes: Option<u64>,
    pub dst_payload_bytes: Option<u64>,
    pub src_owner: Option<Owner>,
    pub dst_owner: Option<Owner>,
    /// Smoothed RTT at close, microseconds (from the initiator's end when it is local).
    pub srtt_us: Option<u32>,
    /// Segments retransmitted, both local ends added.
    pub retransmits: Option<u32>,
    pub end_reason: EndReason,
    /// Which views saw the flow, comma-separated: `kernel`, `capture`, `file`.
    pub sources: &'static str,
    /// Packets each way (packet views only).
    pub src_packets: Option<u64>,
    pub dst_packets: Option<u64>,
    /// IP-layer bytes each way: IP header + payload (IPFIX octetDeltaCount).
    pub src_bytes: Option<u64>,
    pub dst_bytes: Option<u64>,
    /// Union of the TCP flags each way sent.
    pub src_tcp_flags: Option<u8>,
    pub dst_tcp_flags: Option<u8>,
    /// The packet view's start of this flow, in ns: with `src` and `dst` as the packet view
    /// has them, the identity its amendments name. `None` for kernel-only records.
    pub packet_start_ns: Option<u64>,
    /// An amendment, not a flow: packets of a TCP connection that came after its close
    /// had been written (a late ACK, a retransmitted FIN, a repeated RST). Its counts and
    /// flags are added to the row with the same identity; it never becomes a row itself.
    pub amends: bool,
    /// For the inner flow of a tunnel: the tunnel; None for every other flow (the tunnel's
    /// own outer flow included).
    pub tunnel: Option<Tunnel>,
    /// `first_seen_ms` and `last_seen_ms` to the nanosecond (unix time), when the view knows
    /// them that precisely; not stored. The merge pairs the two views' records by their
    /// lifetimes, and connections a few milliseconds long that reuse one 5-tuple back to
    /// back are only told apart below the millisecond.
    pub seen_ns: Option<(u64, u64)>,
    /// The kernel view's record begins at the initiator's `connect()` on this host, so no
    /// packet of this connection comes before it (an accepted one begins when established,
    /// after the SYN). Not stored.
    pub starts_at_connect: bool,
}
