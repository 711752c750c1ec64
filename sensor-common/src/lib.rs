//! Types shared between the kernel programs (`sensor-ebpf`) and the agent (`sensor`).
//!
//! Every type here is `#[repr(C)]` with explicit padding, and its size is pinned at compile
//! time so a layout change on one side cannot silently misread the other.
#![no_std]

use core::mem::size_of;

/// What happened to a socket. Values are part of the kernel/user ABI.
pub mod kind {
    /// `listen()` returned: the listening process owns this local address and port.
    pub const LISTEN: u32 = 1;
    /// `connect()` was called: the current process is the initiator.
    pub const CONNECT: u32 = 2;
    /// The active (connecting) side reached ESTABLISHED.
    pub const ACTIVE_ESTABLISHED: u32 = 3;
    /// The passive (accepting) side reached ESTABLISHED. Runs in softirq: pid is meaningless.
    pub const PASSIVE_ESTABLISHED: u32 = 4;
    /// The socket reached TCP_CLOSE; carries the final kernel counters and, in
    /// [`SockEvent::start_kind`] / [`SockEvent::start_ns`] (with `pid` and `comm`), how the
    /// end began, kept in the kernel until now instead of sent as a record of its own.
    pub const CLOSE: u32 = 5;
    /// `accept()`/`accept4()` returned this socket: the current process (`pid`, `comm`,
    /// `uid`, `cgroup_id`) accepted it. Kept in the kernel and carried by the close as its
    /// `start_kind`; a record of its own only when the kernel's table is full.
    pub const ACCEPT: u32 = 6;
    /// A datagram (UDP, ICMP...) went out of (`flags` has [`super::flags::SEND`]) or came
    /// into ([`super::flags::RECV`]) a local socket: `protocol`, the ends as the local socket
    /// sees them, and its owner. Sent once per 5-tuple and direction while the kernel's
    /// table remembers it, not per packet.
    pub const DGRAM: u32 = 7;
}

/// Which hook produced an event.
pub mod source {
    /// The cgroup `sock_ops` program.
    pub const SOCK_OPS: u32 = 1;
    /// The `sock/inet_sock_set_state` tracepoint (BTF-typed or classic).
    pub const TRACEPOINT: u32 = 2;
    /// The cgroup `skb` programs (datagrams), with `sock_create` (their owners).
    pub const CGROUP_SKB: u32 = 3;
}

/// Facts about a socket's end, in [`SockEvent::flags`] of a close. The kernel's byte
/// counters count a FIN as one byte of sequence space; these say when to take it off.
pub mod flags {
    /// `bytes_received` includes the peer's FIN.
    pub const FIN_IN: u32 = 1;
    /// `bytes_acked` includes our FIN (the peer acknowledged it).
    pub const FIN_ACKED: u32 = 2;
    /// The hook could not read the counters (classic tracepoint without BTF).
    pub const NO_COUNTERS: u32 = 4;
    /// A [`super::kind::DGRAM`] that left the local socket.
    pub const SEND: u32 = 8;
    /// A [`super::kind::DGRAM`] that reached the local socket.
    pub const RECV: u32 = 16;
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Bytes of a task's `comm`, as the kernel keeps it.
pub const COMM_LEN: usize = 16;

/// One socket event, sent through the `EVENTS` ring buffer.
///
/// Addresses are in network byte order (IPv4 in the first 4 bytes); ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEvent {
    /// `bpf_ktime_get_boot_ns()` when the event happened.
    pub ts_ns: u64,
    /// Identifies the socket for its lifetime: the socket cookie under `sock_ops`, the
    /// kernel address of the `struct sock` under the tracepoint.
    pub sock_id: u64,
    /// Payload bytes this end sent that the peer acknowledged (`tcp_sock.bytes_acked`).
    pub bytes_acked: u64,
    /// Payload bytes this end received (`tcp_sock.bytes_received`).
    pub bytes_received: u64,
    /// In a close: `ts_ns` of the end's first event (`start_kind`); 0 when `start_kind` is 0.
    pub start_ns: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// One of [`source`].
    pub source: u32,
    /// Thread-group id of the current task (meaningful only where documented in [`kind`]).
    pub pid: u32,
    pub segs_in: u32,
    pub segs_out: u32,
    /// Smoothed RTT in microseconds (the kernel keeps it shifted left by 3; already undone).
    pub srtt_us: u32,
    pub total_retrans: u32,
    /// TCP state before the transition ([`tcp_state`]); 0 when not a transition.
    pub old_state: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    /// IP protocol of a [`kind::DGRAM`]; 0 in the TCP events.
    pub protocol: u16,
    /// [`flags`] known at close.
    pub flags: u32,
    /// In a close: the [`kind`] of the end's first event, which the kernel kept instead of
    /// sending it (`CONNECT`: `pid` and `comm` are the connecting process;
    /// `ACTIVE_ESTABLISHED`: connected before the hooks attached, owner unknown). 0: no start
    /// was kept (the socket is older than the hooks, or the kernel's table was full and the
    /// start went out as a record of its own).
    pub start_kind: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// Where `pid` is filled: the task's cgroup v2 id (`bpf_get_current_cgroup_id`, the
    /// inode of its cgroup directory), for its systemd unit.
    pub cgroup_id: u64,
    /// Where `pid` is filled: the task's real uid.
    pub uid: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<SockEvent>() == 152);

impl SockEvent {
    pub const ZERO: Self = Self {
        ts_ns: 0,
        sock_id: 0,
        bytes_acked: 0,
        bytes_received: 0,
        start_ns: 0,
        kind: 0,
        source: 0,
        pid: 0,
        segs_in: 0,
        segs_out: 0,
        srtt_us: 0,
        total_retrans: 0,
        old_state: 0,
        family: 0,
        local_port: 0,
        remote_port: 0,
        protocol: 0,
        flags: 0,
        start_kind: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        comm: [0; COMM_LEN],
        cgroup_id: 0,
        uid: 0,
        _pad: 0,
    };
}

/// Byte offsets of the kernel struct fields the tracepoint program reads, found by the agent
/// in the running kernel's BTF (`/sys/kernel/btf/vmlinux`), so the object is not tied to the
/// layout of one kernel build. A zero `valid` means "not filled in": the program emits
/// nothing rather than read at wrong offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockOffsets {
    pub valid: u32,
    /// `sock_common.skc_family` (u16).
    pub family: u32,
    /// `sock.sk_protocol` (u16 since Linux 5.6).
    pub protocol: u32,
    /// `sock_common.skc_rcv_saddr` (IPv4 local, be32).
    pub rcv_saddr: u32,
    /// `sock_common.skc_daddr` (IPv4 remote, be32).
    pub daddr: u32,
    /// `inet_sock.inet_sport` (local port, be16). Not `skc_num`: the kernel zeroes that
    /// when it releases the port, before the close transition the hooks see.
    pub sport: u32,
    /// `sock_common.skc_dport` (remote port, be16).
    pub dport: u32,
    /// `sock_common.skc_v6_rcv_saddr` (in6_addr).
    pub v6_rcv_saddr: u32,
    /// `sock_common.skc_v6_daddr` (in6_addr).
    pub v6_daddr: u32,
    /// `tcp_sock.bytes_acked` (u64).
    pub bytes_acked: u32,
    /// `tcp_sock.bytes_received` (u64).
    pub bytes_received: u32,
    /// `tcp_sock.segs_in` (u32).
    pub segs_in: u32,
    /// `tcp_sock.segs_out` (u32).
    pub segs_out: u32,
    /// `tcp_sock.srtt_us` (u32, shifted left by 3).
    pub srtt_us: u32,
    /// `tcp_sock.total_retrans` (u32).
    pub total_retrans: u32,
    /// `sock.sk_flags` (unsigned long; bit [`SOCK_DONE`] set by the FIN handler).
    pub sk_flags: u32,
    /// `sock.sk_err` (int; non-zero after a reset or a timeout).
    pub sk_err: u32,
}

const _: () = assert!(size_of::<SockOffsets>() == 68);

impl SockOffsets {
    /// Not filled in (`valid == 0`).
    pub const ZERO: Self = Self {
        valid: 0,
        family: 0,
        protocol: 0,
        rcv_saddr: 0,
        daddr: 0,
        sport: 0,
        dport: 0,
        v6_rcv_saddr: 0,
        v6_daddr: 0,
        bytes_acked: 0,
        bytes_received: 0,
        segs_in: 0,
        segs_out: 0,
        srtt_us: 0,
        total_retrans: 0,
        sk_flags: 0,
        sk_err: 0,
    };
}

/// `enum sock_flags`: SOCK_DONE, set when a FIN arrives (and after `tcp_done`, which runs
/// after the state change the hooks see).
pub const SOCK_DONE: u64 = 1 << 1;

/// Byte offsets of the classic `sock/inet_sock_set_state` tracepoint's fields, read by the
/// agent from the event's `format` file in tracefs (the fallback where BTF-typed tracepoints
/// cannot load). A zero `valid` means "not filled in".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TpFormat {
    pub valid: u32,
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    /// Host byte order.
    pub sport: u32,
    /// Host byte order.
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    /// `__u8[4]`, network order.
    pub saddr: u32,
    pub daddr: u32,
    /// `__u8[16]`.
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

const _: () = assert!(size_of::<TpFormat>() == 48);

/// Where the first-I/O hooks (`sock_recv_length`/`sock_send_length`, which name the
/// process of an accepted connection) find a socket's protocol and id: offsets from the
/// running kernel's BTF. A zero `valid` means "not filled in": the programs do nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptOffsets {
    pub valid: u32,
    /// 1: sockets are named by their cookie (`sock_ops` runs and made one at
    /// PASSIVE_ESTABLISHED); 0: by the `struct sock` address (the tracepoint's naming).
    pub by_cookie: u32,
    /// `sock_common.skc_cookie` (u64), within `struct sock`.
    pub sk_cookie: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
}

const _: () = assert!(size_of::<AcceptOffsets>() == 16);

impl AcceptOffsets {
    /// Not filled in (`valid == 0`).
    pub const ZERO: Self = Self {
        valid: 0,
        by_cookie: 0,
        sk_cookie: 0,
        sk_protocol: 0,
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::SockEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TpFormat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AcceptOffsets {}
}
