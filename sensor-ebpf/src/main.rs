//! The sensor's kernel programs.
//!
//! - `inet_sock_set_state` as a BTF-typed tracepoint, the primary hook: it runs only when a
//!   TCP socket changes state; `struct sock` fields are read at offsets the agent found in
//!   the running kernel's BTF and stored in `OFFSETS`.
//! - `sock_ops` (cgroup v2 root), the fallback where BTF-typed programs cannot load: listen,
//!   connect, active/passive established, and the state callback at close with the kernel's
//!   per-connection counters. Only stable UAPI fields of `bpf_sock_ops` are read. It costs
//!   more: the kernel also calls it for the callbacks no program can turn off (RTO and
//!   window initialisation, ECN), about 18 runs a loopback connection.
//!
//! Every event goes through the `EVENTS` ring buffer; a failed reserve counts in `DROPS`
//! (per-CPU, read by the agent). Nothing here logs on the per-event path: aya-log is used only
//! for setup problems that make a program useless (e.g. missing offsets), once per CPU.
//!
//! Records per connection end: the start of an end (`connect()` with its process, the
//! active side's established, the passive side's established) is kept in `OPEN`, keyed by
//! the socket, and sent inside the close record; so every end is one record, a loopback
//! connection two. An accepted end's first read or write (`sock_recv_length` /
//! `sock_send_length`, in the process that accepted it) names its process in place. Only
//! the classic tracepoint, which stands in where those hooks cannot load, still sends the
//! passive established at once: the agent then names the listener's process while the
//! listener is there. When `OPEN` is full, a start goes out as a record of its own.
//!
//! Wake-ups: records are submitted with `BPF_RB_NO_WAKEUP`; the agent polls the ring on a
//! short timer, and a record that finds the ring more than a quarter full
//! (`bpf_ringbuf_query(BPF_RB_AVAIL_DATA)`) forces a wake-up so a burst cannot fill it
//! between two polls.
#![no_std]
// BPF inline assembly: the one way to an atomic add here (the target has no atomic RMW
// in `core`).
#![feature(asm_experimental_arch)]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm as gen_get_current_comm,
            bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skc_to_tcp_sock,
        },
    },
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock, map, sock_ops, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, SkBuffContext, SockContext, SockOpsContext, TracePointContext,
    },
};
use aya_log_ebpf::warn;
use sensor_common::{
    AF_INET, AF_INET6, AcceptOffsets, SOCK_DONE, SockEvent, SockOffsets, TpFormat, flags, kind,
    source, tcp_state,
};

/// Socket events for the agent. The agent sets the size at load time (`ringbuf_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Index 0: events lost because `EVENTS` was full. Per CPU so counting never contends.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: events the programs tried to send (sent + dropped), so the agent can check
/// that what went in came out or was counted.
#[map]
static PRODUCED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: kernel struct offsets for the classic tracepoint's close counters, filled in by
/// the agent (the BTF-typed programs take theirs from `SK_OFF`, set before load).
#[map]
static OFFSETS: Array<SockOffsets> = Array::with_max_entries(1, 0);

/// Index 0: field offsets of the classic tracepoint's record, filled in by the agent.
#[map]
static TP_FORMAT: Array<TpFormat> = Array::with_max_entries(1, 0);

/// Index 0: set to 1 once a CPU has warned about missing offsets, so the warning is not
/// repeated on every event.
#[map]
static WARNED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Sockets (by cookie) that received a FIN after our own close: the one case where the
/// state at close does not tell whether `bytes_received` counts the peer's FIN
/// (FIN_WAIT2 -> CLOSE happens both on the peer's FIN and without it).
#[map]
static FIN_SEEN: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// The start of each connection end not sent yet (its `CONNECT` or `ACTIVE_ESTABLISHED`
/// event, as it would have been sent), keyed by `sock_id`; taken out by the close, which
/// carries it. Bounded: when full, starts are sent as records of their own. The agent reads
/// what is left at shutdown (connections still open).
#[map]
static OPEN: HashMap<u64, SockEvent> = HashMap::with_max_entries(OPEN_MAX, 0);

/// Connection ends followed in `OPEN` at once (about 200 bytes each, preallocated).
const OPEN_MAX: u32 = 16384;

/// A submit that finds more than 1/`WAKE_FRACTION` of the ring in use wakes the agent.
const WAKE_FRACTION: u64 = 4;

const IPPROTO_TCP: u16 = 6;
const TCPHDR_FIN: u32 = 0x01;

#[inline(always)]
fn count_drop() {
    if let Some(p) = DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn count_produced() {
    if let Some(p) = PRODUCED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// No wake-up (the agent polls), unless the ring is filling up.
#[inline(always)]
fn wakeup_flag() -> u64 {
    let used = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let size = EVENTS.query(u64::from(BPF_RB_RING_SIZE));
    if used > size / WAKE_FRACTION {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Reserves an event, lets `fill` write it, and submits it; counts a drop when full.
#[inline(always)]
fn emit(fill: impl FnOnce(&mut SockEvent)) {
    count_produced();
    match EVENTS.reserve::<SockEvent>(0) {
        Some(mut entry) => {
            // Zeroed in place: a 152-byte zero value on the stack is a third of the limit.
            // SAFETY: the reservation is one SockEvent, all of whose fields are plain data
            // for which zero is valid.
            let ev = unsafe {
                let p = entry.as_mut_ptr();
                zero_words(p);
                &mut *p
            };
            fill(ev);
            entry.submit(wakeup_flag());
        }
        None => count_drop(),
    }
}

/// Zeroes `*p` with one 8-byte store a word. Not `write_bytes`: the BPF target lowers every
/// memset to a call of a byte-at-a-time loop (152 iterations, some 300 ns, for one event);
/// volatile stores cannot be turned back into that call.
///
/// # Safety
/// `p` is valid for writes of a `T` that is 8-byte aligned, a whole number of words long,
/// and valid when all zero.
#[inline(always)]
unsafe fn zero_words<T>(p: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let w = p.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds of `*p` (see above).
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
}

/// What a start in `OPEN` begins as, before it is filled in place (in `.rodata`: a
/// 152-byte value on the stack would be a third of the 512 bytes a program has).
static ZERO_EVENT: SockEvent = SockEvent::ZERO;

/// Keeps the start of connection end `id` in `OPEN` until its close, filled in place by
/// `fill`; sends it as a record of its own when `OPEN` is full.
#[inline(always)]
fn keep_start(id: u64, fill: impl FnOnce(&mut SockEvent)) -> bool {
    // By reference, so the helper reads the zeros from `.rodata`, not from a stack copy.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let kept = OPEN.insert(id, &ZERO_EVENT, 0).is_ok();
    if kept && let Some(p) = OPEN.get_ptr_mut(id) {
        // SAFETY: a value of OPEN just written; only this socket's own (serialised)
        // callbacks write it.
        fill(unsafe { &mut *p });
        return true;
    }
    emit(fill);
    false
}

/// Accepted ends waiting in `OPEN` for their first I/O, counted by [`awaiting_slot`]: the
/// first-I/O hooks run on every socket read and write of the host, and a zero slot lets
/// them leave without a lookup in `OPEN` (a hash lookup, a cache miss or two, on every
/// I/O). A slot is counted up when an accepted start is kept and down exactly once when
/// that start stops waiting (named at its first I/O, or closed before any).
#[map]
static AWAITING: Array<u64> = Array::with_max_entries(AWAITING_SLOTS, 0);

const AWAITING_SLOTS: u32 = 4096;

/// The slot of the socket with `cookie` in `AWAITING`. By cookie whichever hook keys
/// `OPEN` (the first-I/O hooks read it with one load; a socket address cannot be hashed
/// here, the verifier forbids arithmetic on it). Cookies are consecutive.
#[inline(always)]
fn awaiting_slot(cookie: u64) -> u32 {
    (cookie as u32) & (AWAITING_SLOTS - 1)
}

/// Adds `by` (1, or `u64::MAX` for -1) to the slot of `cookie`, atomically: the ends of
/// one slot are on different CPUs.
#[inline(always)]
fn count_awaiting(cookie: u64, by: u64) {
    if let Some(p) = AWAITING.get_ptr_mut(awaiting_slot(cookie)) {
        // SAFETY: `p` is a value of an array map, 8-byte aligned. An XADD (`lock +=`), which
        // every BPF CPU version has; its result is not used.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) += {by}",
                p = in(reg) p,
                by = in(reg) by,
                options(nostack),
            )
        };
    }
}

/// Whether any accepted end in the slot of `cookie` is waiting for its first I/O.
#[inline(always)]
fn maybe_awaiting(cookie: u64) -> bool {
    AWAITING
        .get(awaiting_slot(cookie))
        // SAFETY: a value of an array map, read once.
        .is_some_and(|n| unsafe { core::ptr::read_volatile(n) } != 0)
}

/// Keeps an accepted end's start in `OPEN` to wait for its first I/O, counted in the slot
/// of its `cookie`.
#[inline(always)]
fn keep_accepted(id: u64, cookie: u64, fill: impl FnOnce(&mut SockEvent)) {
    if keep_start(id, fill) {
        count_awaiting(cookie, 1);
    }
}

/// Moves the kept start of the closing end `ev.sock_id` into its close record; `cookie`
/// gives the socket's cookie (for `AWAITING`).
#[inline(always)]
fn take_start(ev: &mut SockEvent, cookie: impl FnOnce() -> u64) {
    if let Some(open) = OPEN.get_ptr(ev.sock_id) {
        // SAFETY: a value of OPEN, read before it is deleted; only this socket's own
        // (serialised) callbacks write it.
        let open = unsafe { &*open };
        if open.kind == kind::PASSIVE_ESTABLISHED {
            // Closed before any I/O named it: it waits no more.
            count_awaiting(cookie(), u64::MAX);
        }
        if open.source == ev.source {
            ev.start_ns = open.ts_ns;
            ev.start_kind = open.kind;
            ev.pid = open.pid;
            ev.comm = open.comm;
            ev.uid = open.uid;
            ev.cgroup_id = open.cgroup_id;
        }
        let _ = OPEN.remove(ev.sock_id);
    }
}

#[inline(always)]
fn current_task(ev: &mut SockEvent) {
    ev.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    current_comm(&mut ev.comm);
    ev.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: no preconditions.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// The current task's name, straight into `out`: the helper fills (and zero-pads) all 16
/// bytes, where aya's wrapper zeroes a stack buffer first (a byte-loop memset call, as
/// every memset is on this target) and then copies it.
#[inline(always)]
fn current_comm(out: &mut [u8; 16]) {
    // SAFETY: `out` is 16 writable bytes.
    unsafe { gen_get_current_comm(out.as_mut_ptr().cast(), out.len() as u32) };
}

#[inline(always)]
fn ip6_bytes(words: [u32; 4]) -> [u8; 16] {
    // The words hold the address in network byte order as it sits in memory.
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[sock_ops]
pub fn sensor_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let event_kind = match op {
        BPF_SOCK_OPS_TCP_LISTEN_CB => kind::LISTEN,
        BPF_SOCK_OPS_TCP_CONNECT_CB => kind::CONNECT,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => kind::ACTIVE_ESTABLISHED,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => kind::PASSIVE_ESTABLISHED,
        BPF_SOCK_OPS_STATE_CB => match ctx.arg(1) {
            tcp_state::CLOSE => kind::CLOSE,
            tcp_state::FIN_WAIT1 => {
                // We closed first: watch the few segments still coming for the peer's FIN.
                let flags = ctx.cb_flags() | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG;
                let _ = ctx.set_cb_flags(flags as i32);
                return 1;
            }
            _ => return 1,
        },
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => {
            // SAFETY: stable bpf_sock_ops field; 0 when the callback has no segment.
            if unsafe { (*ctx.ops).skb_tcp_flags } & TCPHDR_FIN != 0 {
                // SAFETY: valid context for bpf_get_socket_cookie.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
                let _ = FIN_SEEN.insert(cookie, 1, 0);
                // Seen: no need to run on the segments still to come.
                let flags = ctx.cb_flags() & !BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG;
                let _ = ctx.set_cb_flags(flags as i32);
            }
            return 1;
        }
        _ => return 1,
    };
    // Ask for the state callback so the close (with its counters) is seen. Set at connect
    // too, so connections that never establish still report their end.
    // Listeners too, so the agent learns when a listening socket goes away.
    if event_kind != kind::CLOSE
        && ctx.cb_flags() & BPF_SOCK_OPS_STATE_CB_FLAG == 0
        && ctx
            .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
            .is_err()
    {
        warn_once(&ctx, "sock_ops: bpf_sock_ops_cb_flags_set failed");
    }

    let family = ctx.family() as u16;
    if family != AF_INET && family != AF_INET6 {
        return 1;
    }
    let ops = ctx.ops;
    // SAFETY: the kernel hands a valid context; bpf_get_socket_cookie accepts it.
    let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
    if event_kind == kind::CONNECT || event_kind == kind::ACTIVE_ESTABLISHED {
        if let Some(open) = OPEN.get_ptr_mut(cookie) {
            // connect() was kept: only the ends may have changed since.
            // SAFETY: a value of OPEN; this socket's callbacks are serialised.
            sock_ops_ends(&ctx, family, unsafe { &mut *open });
            return 1;
        }
        let _ = keep_start(cookie, |ev| {
            // SAFETY: no preconditions.
            ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
            ev.sock_id = cookie;
            ev.kind = event_kind;
            ev.source = source::SOCK_OPS;
            sock_ops_ends(&ctx, family, ev);
            if event_kind == kind::CONNECT {
                // Runs in the calling process's context.
                current_task(ev);
            }
        });
        return 1;
    }
    if event_kind == kind::PASSIVE_ESTABLISHED && owner_at_first_io() {
        keep_accepted(cookie, cookie, |ev| {
            // SAFETY: no preconditions.
            ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
            ev.sock_id = cookie;
            ev.kind = event_kind;
            ev.source = source::SOCK_OPS;
            sock_ops_ends(&ctx, family, ev);
        });
        return 1;
    }
    emit(|ev| {
        // SAFETY: no preconditions.
        ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
        ev.sock_id = cookie;
        ev.kind = event_kind;
        ev.source = source::SOCK_OPS;
        sock_ops_ends(&ctx, family, ev);
        match event_kind {
            // Runs in the listening process's context.
            kind::LISTEN => current_task(ev),
            kind::CLOSE => {
                let old = ctx.arg(0);
                ev.old_state = old;
                // SAFETY: reading stable bpf_sock_ops fields of a full socket (STATE_CB).
                let (snd_una, snd_nxt) = unsafe { ((*ops).snd_una, (*ops).snd_nxt) };
                let fin_seen = FIN_SEEN.get_ptr(ev.sock_id).is_some();
                if fin_seen {
                    let _ = FIN_SEEN.remove(ev.sock_id);
                }
                ev.flags = close_flags(old, fin_seen, snd_una == snd_nxt);
                // SAFETY: as above.
                unsafe {
                    ev.bytes_acked = (*ops).bytes_acked;
                    ev.bytes_received = (*ops).bytes_received;
                    ev.segs_in = (*ops).segs_in;
                    ev.segs_out = (*ops).segs_out;
                    ev.srtt_us = (*ops).srtt_us >> 3;
                    ev.total_retrans = (*ops).total_retrans;
                }
                take_start(ev, || cookie);
            }
            _ => {}
        }
    });
    1
}

/// The socket's family, addresses and ports, from the stable `bpf_sock_ops` fields.
#[inline(always)]
fn sock_ops_ends(ctx: &SockOpsContext, family: u16, ev: &mut SockEvent) {
    ev.family = family;
    ev.local_port = ctx.local_port() as u16;
    ev.remote_port = u32::from_be(ctx.remote_port()) as u16;
    if family == AF_INET {
        ev.local_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        ev.remote_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    } else {
        ev.local_addr = ip6_bytes(ctx.local_ip6());
        ev.remote_addr = ip6_bytes(ctx.remote_ip6());
    }
}

/// [`flags`] of a closing end. `fin_in_late`: the peer's FIN arrived after our own close;
/// `all_acked`: everything we sent was acknowledged (no reset, no timeout).
#[inline(always)]
fn close_flags(old: u32, fin_in_late: bool, all_acked: bool) -> u32 {
    let mut f = 0;
    // FIN_WAIT2 is entered only when our FIN is acked; from CLOSING and LAST_ACK the normal
    // way out is that ack, the other ways are a reset or a timeout.
    if old == tcp_state::FIN_WAIT2
        || ((old == tcp_state::CLOSING || old == tcp_state::LAST_ACK) && all_acked)
    {
        f |= flags::FIN_ACKED;
    }
    // CLOSE_WAIT, LAST_ACK and CLOSING are entered only on the peer's FIN.
    if matches!(
        old,
        tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING
    ) || fin_in_late
    {
        f |= flags::FIN_IN;
    }
    f
}

#[inline(always)]
fn warn_once<C: aya_ebpf::EbpfContext>(ctx: &C, msg: &'static str) {
    if let Some(p) = WARNED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            if *p == 0 {
                *p = 1;
                warn!(ctx, "{}", msg);
            }
        }
    }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
unsafe fn read_at<T>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()).ok() }
}

/// Which transitions matter, as event kinds.
#[inline(always)]
fn transition_kind(old: u32, new: u32) -> Option<u32> {
    Some(match (old, new) {
        (_, tcp_state::LISTEN) => kind::LISTEN,
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => kind::CONNECT,
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => kind::ACTIVE_ESTABLISHED,
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => kind::PASSIVE_ESTABLISHED,
        (_, tcp_state::CLOSE) => kind::CLOSE,
        _ => return None,
    })
}

/// A socket's addresses, however they were read.
struct Ends {
    family: u16,
    local_port: u16,
    remote_port: u16,
    local: [u8; 16],
    remote: [u8; 16],
}

/// `sock:inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`, BTF-typed:
/// attached by name from the kernel's BTF, so it needs no tracefs.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sensor_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let _ = btf_set_state(&ctx, sk, old as u32, new as u32);
    0
}

/// Struct offsets from the running kernel's BTF, written into the object by the agent
/// before it loads (`override_global`). `.rodata` is frozen and read-only to programs, so
/// the verifier knows every one of them as a constant: the BTF-typed programs read
/// `struct sock` fields with plain loads it checks against the kernel's types, where a
/// `bpf_probe_read_kernel` call per field cost some 30 ns.
#[unsafe(no_mangle)]
static SK_OFF: SockOffsets = SockOffsets::ZERO;

/// The same for the first-I/O hooks (their `valid` and `by_cookie` live in the
/// `ACCEPT_OFFSETS` map: they change after load).
#[unsafe(no_mangle)]
static IO_OFF: AcceptOffsets = AcceptOffsets::ZERO;

/// One offset of `SK_OFF`/`IO_OFF`: a load the compiler may not fold (the zeros it sees are
/// replaced before the program loads).
#[inline(always)]
fn konst(field: &u32) -> u32 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(field) }
}

/// A field of a BTF-typed kernel object at a constant offset, with a plain load: the
/// verifier checks it against the kernel's types (and makes a faulting read yield zero).
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: the caller passes a BTF-typed pointer and an offset from the kernel's BTF.
    unsafe { core::ptr::read_volatile(base.add(off as usize).cast::<T>()) }
}

/// An `in6_addr` at `off`, as two 8-byte loads.
#[inline(always)]
unsafe fn field_in6(base: *const u8, off: u32) -> [u8; 16] {
    // SAFETY: as for `field`.
    let (a, b): (u64, u64) = unsafe { (field(base, off), field(base, off + 8)) };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_ne_bytes());
    out[8..].copy_from_slice(&b.to_ne_bytes());
    out
}

#[inline(always)]
fn btf_set_state(ctx: &BtfTracePointContext, sk: *const u8, old: u32, new: u32) -> Option<()> {
    let event_kind = transition_kind(old, new)?;
    if konst(&SK_OFF.valid) == 0 {
        warn_once(
            ctx,
            "inet_sock_set_state: kernel offsets not loaded, events ignored",
        );
        return None;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *`; the TCP fields are read
    // through the `tcp_sock` the kernel's own cast helper returns; every offset is from the
    // running kernel's BTF.
    let (tp, ends, close) = unsafe {
        let protocol: u16 = field(sk, konst(&SK_OFF.protocol));
        if protocol != IPPROTO_TCP {
            return None;
        }
        let tp = bpf_skc_to_tcp_sock(sk as *mut _) as *const u8;
        if tp.is_null() {
            return None;
        }
        let family: u16 = field(tp, konst(&SK_OFF.family));
        let mut local = [0u8; 16];
        let mut remote = [0u8; 16];
        if family == AF_INET {
            let l: u32 = field(tp, konst(&SK_OFF.rcv_saddr));
            let r: u32 = field(tp, konst(&SK_OFF.daddr));
            local[..4].copy_from_slice(&l.to_ne_bytes());
            remote[..4].copy_from_slice(&r.to_ne_bytes());
        } else if family == AF_INET6 {
            local = field_in6(tp, konst(&SK_OFF.v6_rcv_saddr));
            remote = field_in6(tp, konst(&SK_OFF.v6_daddr));
        } else {
            return None;
        }
        let ends = Ends {
            family,
            local_port: u16::from_be(field(tp, konst(&SK_OFF.sport))),
            remote_port: u16::from_be(field(tp, konst(&SK_OFF.dport))),
            local,
            remote,
        };
        let close = if event_kind == kind::CLOSE {
            Close::read(
                old,
                &CloseOffsets::of(&SK_OFF, konst),
                |o| field(tp, o),
                |o| field(tp, o),
            )
        } else {
            Close::NONE
        };
        (tp, ends, close)
    };
    // SAFETY: a BTF-typed socket, as the helper takes for tracing programs.
    let cookie = || unsafe { bpf_get_socket_cookie(tp as *mut _) };
    emit_transition(tp, old, event_kind, &ends, &close, cookie);
    Some(())
}

/// What a close record carries besides the ends: the kernel's counters and [`flags`].
struct Close {
    flags: u32,
    bytes_acked: u64,
    bytes_received: u64,
    segs_in: u32,
    segs_out: u32,
    srtt_us: u32,
    total_retrans: u32,
}

impl Close {
    /// Not a close (or counters out of reach: then `flags` says so).
    const NONE: Self = Self {
        flags: 0,
        bytes_acked: 0,
        bytes_received: 0,
        segs_in: 0,
        segs_out: 0,
        srtt_us: 0,
        total_retrans: 0,
    };
}

/// The same tracepoint through tracefs (kernels where BTF-typed programs do not load).
/// Fields are read from the trace record at offsets from the event's `format` file.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sensor_set_state_classic(ctx: TracePointContext) -> u32 {
    let _ = classic_set_state(&ctx);
    0
}

#[inline(always)]
fn classic_set_state(ctx: &TracePointContext) -> Option<()> {
    let f = TP_FORMAT.get(0)?;
    if f.valid == 0 {
        warn_once(
            ctx,
            "inet_sock_set_state: tracepoint format not loaded, events ignored",
        );
        return None;
    }
    // SAFETY: offsets come from this kernel's format file for this very event.
    unsafe {
        let protocol: u16 = ctx.read_at(f.protocol as usize).ok()?;
        if protocol != IPPROTO_TCP {
            return None;
        }
        let old: i32 = ctx.read_at(f.oldstate as usize).ok()?;
        let new: i32 = ctx.read_at(f.newstate as usize).ok()?;
        let event_kind = transition_kind(old as u32, new as u32)?;
        let sk: u64 = ctx.read_at(f.skaddr as usize).ok()?;
        let family: u16 = ctx.read_at(f.family as usize).ok()?;
        let mut local = [0u8; 16];
        let mut remote = [0u8; 16];
        if family == AF_INET {
            let l: [u8; 4] = ctx.read_at(f.saddr as usize).ok()?;
            let r: [u8; 4] = ctx.read_at(f.daddr as usize).ok()?;
            local[..4].copy_from_slice(&l);
            remote[..4].copy_from_slice(&r);
        } else if family == AF_INET6 {
            local = ctx.read_at(f.saddr_v6 as usize).ok()?;
            remote = ctx.read_at(f.daddr_v6 as usize).ok()?;
        } else {
            return None;
        }
        let ends = Ends {
            family,
            local_port: ctx.read_at(f.sport as usize).ok()?,
            remote_port: ctx.read_at(f.dport as usize).ok()?,
            local,
            remote,
        };
        let close = if event_kind != kind::CLOSE {
            Close::NONE
        } else {
            match OFFSETS.get(0) {
                Some(off) if off.valid != 0 => probed_close(sk as *const u8, old as u32, off),
                // Without BTF the counters cannot be located: the close says so.
                _ => Close {
                    flags: flags::NO_COUNTERS,
                    ..Close::NONE
                },
            }
        };
        // No cookie for a plain address (nothing waits for its first I/O here, see
        // `emit_transition`).
        emit_transition(sk as *const u8, old as u32, event_kind, &ends, &close, || 0);
    }
    Some(())
}

/// A close's counters read with `bpf_probe_read_kernel` at offsets from the `OFFSETS` map:
/// the classic tracepoint's `skaddr` is a plain number to the verifier, not a typed pointer.
#[inline(always)]
fn probed_close(sk: *const u8, old: u32, off: &SockOffsets) -> Close {
    // SAFETY (both readers): bpf_probe_read_kernel at offsets from the running kernel's
    // BTF; a bad address reads as 0.
    Close::read(
        old,
        &CloseOffsets::of(off, |o| *o),
        |o| unsafe { read_at(sk, o) }.unwrap_or(0),
        |o| unsafe { read_at(sk, o) }.unwrap_or(0),
    )
}

/// Where a close's fields are: taken from `SK_OFF` through `konst` (constants the verifier
/// knows), or from the `OFFSETS` map as they are.
struct CloseOffsets {
    sk_flags: u32,
    sk_err: u32,
    bytes_acked: u32,
    bytes_received: u32,
    segs_in: u32,
    segs_out: u32,
    srtt_us: u32,
    total_retrans: u32,
}

impl CloseOffsets {
    #[inline(always)]
    fn of(off: &SockOffsets, get: impl Fn(&u32) -> u32) -> Self {
        Self {
            sk_flags: get(&off.sk_flags),
            sk_err: get(&off.sk_err),
            bytes_acked: get(&off.bytes_acked),
            bytes_received: get(&off.bytes_received),
            segs_in: get(&off.segs_in),
            segs_out: get(&off.segs_out),
            srtt_us: get(&off.srtt_us),
            total_retrans: get(&off.total_retrans),
        }
    }
}

impl Close {
    /// A close from the state `old`, its fields read with `u64_at`/`u32_at` (plain loads
    /// or probe reads) at `off`: one rule for the flags whichever way the fields are read.
    #[inline(always)]
    fn read(
        old: u32,
        off: &CloseOffsets,
        u64_at: impl Fn(u32) -> u64,
        u32_at: impl Fn(u32) -> u32,
    ) -> Self {
        let sk_flags = u64_at(off.sk_flags);
        let sk_err = u32_at(off.sk_err);
        // The FIN handler sets SOCK_DONE before the state change; tcp_done after.
        let fin_late = old == tcp_state::FIN_WAIT2 && sk_flags & SOCK_DONE != 0;
        Self {
            flags: close_flags(old, fin_late, sk_err == 0),
            bytes_acked: u64_at(off.bytes_acked),
            bytes_received: u64_at(off.bytes_received),
            segs_in: u32_at(off.segs_in),
            segs_out: u32_at(off.segs_out),
            srtt_us: u32_at(off.srtt_us) >> 3,
            total_retrans: u32_at(off.total_retrans),
        }
    }
}

/// Emits a tracepoint-seen transition of socket `sk`; `close` is what a close carries.
#[inline(always)]
fn emit_transition(
    sk: *const u8,
    old: u32,
    event_kind: u32,
    ends: &Ends,
    close: &Close,
    cookie: impl Fn() -> u64,
) {
    let fill = |ev: &mut SockEvent| {
        // SAFETY: no preconditions.
        ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
        ev.sock_id = sk as u64;
        ev.kind = event_kind;
        ev.source = source::TRACEPOINT;
        ev.old_state = old;
        ev.family = ends.family;
        ev.local_port = ends.local_port;
        ev.remote_port = ends.remote_port;
        ev.local_addr = ends.local;
        ev.remote_addr = ends.remote;
        ev.bytes_acked = close.bytes_acked;
        ev.bytes_received = close.bytes_received;
        ev.segs_in = close.segs_in;
        ev.segs_out = close.segs_out;
        ev.srtt_us = close.srtt_us;
        ev.total_retrans = close.total_retrans;
        ev.flags = close.flags;
        // Only listen() and connect() run in the owning process's context here; the
        // accept side's transitions run in softirq.
        if matches!(event_kind, kind::LISTEN | kind::CONNECT) {
            current_task(ev);
        }
        if event_kind == kind::CLOSE {
            take_start(ev, &cookie);
        }
    };
    // An accepted end waits in `OPEN` for its first I/O to name its process (not in the
    // classic program: where it must stand in, the first-I/O hooks, BTF typed too, do not
    // load either).
    if event_kind == kind::PASSIVE_ESTABLISHED && owner_at_first_io() {
        keep_accepted(sk as u64, cookie(), fill);
        return;
    }
    if event_kind == kind::CONNECT || event_kind == kind::ACTIVE_ESTABLISHED {
        let id = sk as u64;
        if let Some(open) = OPEN.get_ptr_mut(id) {
            // connect() was kept, before its source port was chosen: the ends now.
            // SAFETY: a value of OPEN; this socket's transitions are serialised.
            let open = unsafe { &mut *open };
            open.local_port = ends.local_port;
            open.remote_port = ends.remote_port;
            open.local_addr = ends.local;
            open.remote_addr = ends.remote;
            return;
        }
        let _ = keep_start(id, fill);
        return;
    }
    emit(fill);
}

/// Index 0: where the first-I/O hooks find a socket's protocol and cookie, filled in by the
/// agent; `valid == 0` (not attached) also stops connections from waiting for an owner.
#[map]
static ACCEPT_OFFSETS: Array<AcceptOffsets> = Array::with_max_entries(1, 0);

/// Whether the first-I/O hooks are attached: then an accepted end's start waits in `OPEN`
/// for them to name its process, and goes out inside its close (one record an end).
#[inline(always)]
fn owner_at_first_io() -> bool {
    ACCEPT_OFFSETS.get(0).is_some_and(|o| o.valid != 0)
}

/// `sock:sock_recv_length(struct sock *sk, int ret, int flags)`, BTF-typed: runs in the
/// process that called recv/read on any socket.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sensor_sock_recv(ctx: BtfTracePointContext) -> i32 {
    let _ = first_io(ctx.arg(0));
    0
}

/// `sock:sock_send_length`, the same for send/write (servers that speak first).
#[btf_tracepoint(function = "sock_send_length")]
pub fn sensor_sock_send(ctx: BtfTracePointContext) -> i32 {
    let _ = first_io(ctx.arg(0));
    0
}

/// The first read or write on an accepted TCP socket: the process doing it is the one that
/// accepted it (a pre-fork worker, one of several `SO_REUSEPORT` processes), kept for the
/// close as `connect()`'s owner is. Every other socket I/O leaves after a few loads, with no
/// lookup in `OPEN` while its `AWAITING` slot is zero. (The accept() return itself is not
/// hooked: a hook on syscall exit puts every system call of the host on the slow path,
/// about 10% of a loopback connection.)
///
/// Two threads making the very first I/O on one accepted socket at the same instant can both
/// find it waiting and both count its slot down (BPF v1 has no compare-and-swap to make the
/// change of kind exclusive); that slot then reads non-zero and only costs lookups, until
/// an accepted end of the slot that then waits would bring it back to zero early and be
/// named by the listener instead.
#[inline(always)]
fn first_io(sk: *const u8) -> Option<()> {
    let off = ACCEPT_OFFSETS.get(0)?;
    if off.valid == 0 || konst(&IO_OFF.valid) == 0 {
        return None;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *`; plain loads at offsets
    // from the running kernel's BTF, checked by the verifier.
    unsafe {
        let protocol: u16 = field(sk, konst(&IO_OFF.sk_protocol));
        if protocol != IPPROTO_TCP {
            return None;
        }
        let cookie: u64 = field(sk, konst(&IO_OFF.sk_cookie));
        if !maybe_awaiting(cookie) {
            return None;
        }
        let (id, src) = if off.by_cookie != 0 {
            (cookie, source::SOCK_OPS)
        } else {
            (sk as u64, source::TRACEPOINT)
        };
        let open = OPEN.get_ptr_mut(id)?;
        // SAFETY: a value of OPEN; this socket's own (serialised) callbacks write it.
        let open = &mut *open;
        if open.kind != kind::PASSIVE_ESTABLISHED || open.source != src {
            return None;
        }
        // The start keeps the time it was established; it now says who accepted it.
        open.kind = kind::ACCEPT;
        count_awaiting(cookie, u64::MAX);
        current_task(open);
    }
    Some(())
}

/// Who made each datagram socket (`sock_create` runs in the creating process), by cookie,
/// for the datagram programs, which run where the task is not the owner.
#[map]
static DGRAM_OWNERS: LruHashMap<u64, TaskOwner> = LruHashMap::with_max_entries(16384, 0);

/// Datagram flows already reported: (5-tuple as the local socket sees it, direction) to
/// when. Reported again after [`DGRAM_REFRESH_NS`], so the agent, which forgets owners
/// after a while, keeps knowing those of long-lived flows.
#[map]
static DGRAM_SEEN: LruHashMap<DgramKey, u64> = LruHashMap::with_max_entries(16384, 0);

const DGRAM_REFRESH_NS: u64 = 30_000_000_000;

#[repr(C)]
#[derive(Clone, Copy)]
struct TaskOwner {
    cgroup_id: u64,
    pid: u32,
    uid: u32,
    comm: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DgramKey {
    cookie: u64,
    local: [u8; 16],
    remote: [u8; 16],
    local_port: u16,
    remote_port: u16,
    protocol: u8,
    dir: u8,
    family: u8,
    _pad: u8,
}

const SOCK_STREAM: u32 = 1;

/// `cgroup/sock_create`: a datagram or raw socket (UDP, ICMP echo, ...) is born; its
/// maker is remembered by cookie. TCP sockets are left to `sock_ops`.
#[cgroup_sock(sock_create)]
pub fn sensor_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock.
    let (ty, family) = unsafe { ((*ctx.sock).type_, (*ctx.sock).family) };
    if ty == SOCK_STREAM || (family != u32::from(AF_INET) && family != u32::from(AF_INET6)) {
        return 1;
    }
    // SAFETY: valid context for bpf_get_socket_cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    let mut owner = TaskOwner {
        cgroup_id: 0,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        comm: [0; 16],
    };
    current_comm(&mut owner.comm);
    // SAFETY: no preconditions.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let _ = DGRAM_OWNERS.insert(cookie, owner, 0);
    1
}

/// `cgroup_skb/egress`: a packet leaves a local socket. TCP returns at once.
#[cgroup_skb(egress)]
pub fn sensor_dgram_out(ctx: SkBuffContext) -> i32 {
    let _ = dgram(&ctx, true);
    1
}

/// `cgroup_skb/ingress`: a packet reaches a local socket. TCP returns at once.
#[cgroup_skb(ingress)]
pub fn sensor_dgram_in(ctx: SkBuffContext) -> i32 {
    let _ = dgram(&ctx, false);
    1
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_UDPLITE: u8 = 136;

/// Whether the packet is TCP, read straight from the linear header where it is there
/// (no helper call): these programs run on every packet, and TCP is most of them.
#[inline(always)]
fn is_tcp(ctx: &SkBuffContext) -> bool {
    // SAFETY: `data`/`data_end` bound the packet's linear part; every read is checked
    // against them (the verifier enforces it).
    unsafe {
        let skb = ctx.skb.skb;
        let data = (*skb).data as usize;
        let end = (*skb).data_end as usize;
        if data + 10 > end {
            return false;
        }
        let v = *(data as *const u8) >> 4;
        let proto = match v {
            4 => *((data + 9) as *const u8),
            6 => *((data + 6) as *const u8),
            _ => return false,
        };
        proto == IPPROTO_TCP as u8
    }
}

#[inline(always)]
fn dgram(ctx: &SkBuffContext, out: bool) -> Option<()> {
    if is_tcp(ctx) {
        return None;
    }
    // The packet starts at its IP header here.
    let v: u8 = ctx.load(0).ok()?;
    let mut key = DgramKey {
        cookie: 0,
        local: [0; 16],
        remote: [0; 16],
        local_port: 0,
        remote_port: 0,
        protocol: 0,
        dir: u8::from(out),
        family: 0,
        _pad: 0,
    };
    let (src, dst, l4): ([u8; 16], [u8; 16], usize) = match v >> 4 {
        4 => {
            let proto: u8 = ctx.load(9).ok()?;
            if proto == IPPROTO_TCP as u8 {
                return None;
            }
            let frag: u16 = u16::from_be(ctx.load(6).ok()?);
            if frag & 0x1fff != 0 {
                // A later fragment has no ports; its first fragment was counted.
                return None;
            }
            key.protocol = proto;
            key.family = AF_INET as u8;
            let s: [u8; 4] = ctx.load(12).ok()?;
            let d: [u8; 4] = ctx.load(16).ok()?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&s);
            dst[..4].copy_from_slice(&d);
            (src, dst, usize::from(v & 0x0f) * 4)
        }
        6 => {
            let proto: u8 = ctx.load(6).ok()?;
            if proto == IPPROTO_TCP as u8 {
                return None;
            }
            key.protocol = proto;
            key.family = AF_INET6 as u8;
            (ctx.load(8).ok()?, ctx.load(24).ok()?, 40)
        }
        _ => return None,
    };
    let ports = matches!(key.protocol, IPPROTO_UDP | IPPROTO_UDPLITE);
    if !ports && !matches!(key.protocol, IPPROTO_ICMP | IPPROTO_ICMPV6) {
        return None;
    }
    let (sport, dport) = if ports {
        let p: [u8; 4] = ctx.load(l4).ok()?;
        (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        )
    } else {
        (0, 0)
    };
    // SAFETY: valid context for bpf_get_socket_cookie (0 without a socket).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // A socket older than the hooks has no maker here: reported with pid 0, for the agent
    // to name from its /proc scan.
    let owner = DGRAM_OWNERS.get_ptr(cookie);
    key.cookie = cookie;
    if out {
        (key.local, key.remote, key.local_port, key.remote_port) = (src, dst, sport, dport);
    } else {
        (key.local, key.remote, key.local_port, key.remote_port) = (dst, src, dport, sport);
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(last) = DGRAM_SEEN.get_ptr(key) {
        // SAFETY: a value of DGRAM_SEEN; a racing update only moves the time.
        if now.wrapping_sub(unsafe { *last }) < DGRAM_REFRESH_NS {
            return None;
        }
    }
    let _ = DGRAM_SEEN.insert(key, now, 0);
    let owner = match owner {
        // SAFETY: a value of DGRAM_OWNERS, copied at once.
        Some(o) => unsafe { *o },
        None => TaskOwner {
            cgroup_id: 0,
            pid: 0,
            uid: 0,
            comm: [0; 16],
        },
    };
    emit(|ev| {
        ev.ts_ns = now;
        ev.sock_id = cookie;
        ev.kind = kind::DGRAM;
        ev.source = source::CGROUP_SKB;
        ev.protocol = u16::from(key.protocol);
        ev.family = u16::from(key.family);
        ev.local_addr = key.local;
        ev.remote_addr = key.remote;
        ev.local_port = key.local_port;
        ev.remote_port = key.remote_port;
        ev.flags = if out { flags::SEND } else { flags::RECV };
        ev.pid = owner.pid;
        ev.uid = owner.uid;
        ev.cgroup_id = owner.cgroup_id;
        ev.comm = owner.comm;
    });
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
