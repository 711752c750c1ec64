//! One AF_PACKET socket bound to one interface, read through a TPACKET_V3 receive ring
//! (Linux 3.2): memory shared with the kernel, split into blocks of many frames each. The
//! kernel fills a block, hands it over (block status `TP_STATUS_USER`) and goes on into
//! the next; user space walks the frames in place ([`super::block`]) and gives the block
//! back. No system call per frame: one `poll` per block at most, none while blocks wait.
//!
//! Timestamps: every frame carries the kernel's stamp (`tp_sec`, `tp_nsec`: CLOCK_REALTIME
//! at the tap, the clock the kernel hooks' boot-time stamps are converted to by
//! `flow::BootClock`), however long its block then waited. The ring stamps every frame
//! from the first (unlike SO_TIMESTAMPNS, which the kernel turns on a moment after it is
//! asked).
//!
//! Losses: when every block is still held by user space the kernel drops the frame
//! (`tp_drops`) and freezes the queue (`tp_freeze_q_cnt`, once per time it runs out) until
//! a block comes back. Both are read from PACKET_STATISTICS.
//!
//! One thread reads each ring. PACKET_FANOUT (spreading one interface over several
//! sockets and threads) is not used: walking and parsing a frame in place costs tens of
//! nanoseconds, so one capture thread per interface keeps up with far more than the one
//! flow table it feeds (which must stay one, to see both directions of every
//! connection), and a fanout group would only move the bottleneck to that table while
//! adding a thread per socket.
//!
//! The socket is opened with protocol 0 and only bound to ETH_P_ALL on its interface after
//! its ring and filter are set, so it never holds frames from other interfaces.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use super::{block::BLOCK_STATUS, filter, parse::LinkType};

/// A step of opening the socket that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct SocketError {
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

fn last_error(step: &'static str) -> SocketError {
    SocketError {
        step,
        source: io::Error::last_os_error(),
    }
}

/// The largest block: big enough for any GSO super-packet kept whole, small enough that
/// an 8 MiB ring has several blocks to rotate through.
const MAX_BLOCK_BYTES: usize = 1 << 20;
/// A ring has at least this many blocks when its size allows (one being read, the others
/// filling meanwhile).
const BLOCKS_WANTED: usize = 8;
/// How long the kernel keeps a partly filled block before handing it over anyway, so
/// packets reach the flow table soon when traffic is light.
pub const RETIRE_MS: u32 = 50;
/// The ring's slot size for the kernel's frame count (TPACKET_V3 packs frames of any size
/// into a block; this only has to divide the block).
const FRAME_BYTES: usize = 2048;

/// The ring's shape: `blocks` blocks of `block_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_bytes: usize,
    pub blocks: usize,
}

impl Geometry {
    /// The shape for a ring of `ring_bytes`: blocks a power of two of pages, up to
    /// [`MAX_BLOCK_BYTES`], [`BLOCKS_WANTED`] of them where that fits; the ring is rounded
    /// down to whole blocks, and is at least two pages.
    pub fn for_bytes(ring_bytes: usize, page: usize) -> Self {
        let ring = ring_bytes.max(2 * page);
        let want = (ring / BLOCKS_WANTED).max(page);
        // The largest power of two of pages not above `want`.
        let mut block_bytes = page;
        while block_bytes * 2 <= want && block_bytes * 2 <= MAX_BLOCK_BYTES {
            block_bytes *= 2;
        }
        Self {
            block_bytes,
            blocks: ring / block_bytes,
        }
    }

    pub fn bytes(&self) -> usize {
        self.block_bytes * self.blocks
    }
}

/// What PACKET_STATISTICS says since it was last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames the kernel dropped for want of a free block.
    pub drops: u32,
    /// Times the kernel found no free block and froze the queue.
    pub freezes: u32,
}

pub struct PacketRing {
    fd: OwnedFd,
    map: *mut u8,
    geometry: Geometry,
    /// The block to read next: the kernel fills them in order.
    next: usize,
}

// SAFETY: the mapping belongs to this value alone; it is read by whichever one thread owns
// the value, and shared only with the kernel through the block status words.
unsafe impl Send for PacketRing {}

/// `setsockopt` with a plain value.
fn set<T>(fd: i32, level: i32, opt: i32, value: &T, step: &'static str) -> Result<(), SocketError> {
    // SAFETY: `value` is a live, correctly sized option value for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error(step))
    }
}

impl PacketRing {
    /// Opens a packet socket on interface `index` with a receive ring of about
    /// `ring_bytes` (see [`Geometry::for_bytes`]), the [`filter`] for `link` framing
    /// (`incoming_only` on loopback), in promiscuous mode.
    pub fn open(
        index: u32,
        ring_bytes: usize,
        link: LinkType,
        incoming_only: bool,
    ) -> Result<Self, SocketError> {
        // SAFETY: plain socket(2) call.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_error("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let v3 = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        set(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &v3,
            "PACKET_VERSION (TPACKET_V3)",
        )?;
        if incoming_only {
            // The outgoing copies never reach this socket: the kernel does not even clone
            // them for it (Linux 4.20). Where it cannot, the filter drops them (below).
            let on: libc::c_int = 1;
            if let Err(e) = set(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                &on,
                "PACKET_IGNORE_OUTGOING",
            ) {
                tracing::debug!(error = %e, "outgoing copies dropped by the filter instead");
            }
        }
        let code = filter::program(link, incoming_only);
        let prog = libc::sock_fprog {
            len: code.len() as u16,
            filter: code.as_ptr().cast_mut(),
        };
        // SO_ATTACH_FILTER copies the program; `code` outlives the call.
        set(
            raw,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
            "SO_ATTACH_FILTER",
        )?;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let geometry = Geometry::for_bytes(ring_bytes, page);
        let req = libc::tpacket_req3 {
            tp_block_size: geometry.block_bytes as u32,
            tp_block_nr: geometry.blocks as u32,
            tp_frame_size: FRAME_BYTES.min(geometry.block_bytes) as u32,
            tp_frame_nr: (geometry.block_bytes / FRAME_BYTES.min(geometry.block_bytes)
                * geometry.blocks) as u32,
            tp_retire_blk_tov: RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
            "PACKET_RX_RING",
        )?;
        // SAFETY: maps the ring the kernel just allocated for this socket, at its size.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                geometry.bytes(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(last_error("mmap of the receive ring"));
        }
        let ring = Self {
            fd,
            map: map.cast(),
            geometry,
            next: 0,
        };
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        // SAFETY: bind with a correctly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_error("bind to the interface"));
        }
        let mreq = libc::packet_mreq {
            mr_ifindex: index as i32,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        set(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
            "PACKET_ADD_MEMBERSHIP (promiscuous)",
        )?;
        Ok(ring)
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The status word of block `i`, shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: block `i` (< blocks) starts inside the mapping, page-aligned, and its
        // status word is an aligned u32 the kernel only ever accesses as one.
        unsafe {
            &*self
                .map
                .add(i * self.geometry.block_bytes + BLOCK_STATUS)
                .cast::<AtomicU32>()
        }
    }

    /// The next block the kernel has handed over, waiting up to `timeout` for one (so the
    /// reader can look at its stop flag and beat its heartbeat). `None` when none came.
    /// The block goes back to the kernel when the returned guard is dropped.
    pub fn next_block(&mut self, timeout: Duration) -> io::Result<Option<Block<'_>>> {
        if self.status(self.next).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::Interrupted => Ok(None),
                    _ => Err(e),
                };
            }
            if self.status(self.next).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                return Ok(None);
            }
        }
        let i = self.next;
        self.next = (i + 1) % self.geometry.blocks;
        Ok(Some(Block {
            ring: self,
            index: i,
        }))
    }

    /// Reads and resets the socket's kernel counters (PACKET_STATISTICS).
    pub fn statistics(&self) -> Option<RingStats> {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: getsockopt into a correctly sized tpacket_stats_v3 (what a TPACKET_V3
        // socket writes).
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(RingStats {
            drops: st.tp_drops,
            freezes: st.tp_freeze_q_cnt,
        })
    }
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; no Block borrows it any more
        // (a Block borrows the ring).
        unsafe {
            libc::munmap(self.map.cast(), self.geometry.bytes());
        }
    }
}

/// A block user space holds: its bytes, given back to the kernel on drop.
pub struct Block<'a> {
    ring: &'a PacketRing,
    index: usize,
}

impl Block<'_> {
    pub fn bytes(&self) -> &[u8] {
        let size = self.ring.geometry.block_bytes;
        // SAFETY: the block lies inside the mapping, and while its status says
        // TP_STATUS_USER (checked with Acquire before this guard was made) the kernel
        // writes nothing in it.
        unsafe { std::slice::from_raw_parts(self.ring.map.add(self.index * size), size) }
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        // Release: every read of the block happens before the kernel may refill it.
        self.ring
            .status(self.index)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::capture::block;

    #[test]
    fn geometry_rounds_to_whole_power_of_two_blocks() {
        let page = 4096;
        let g = Geometry::for_bytes(8 << 20, page);
        assert_eq!((g.block_bytes, g.blocks), (1 << 20, 8));
        let g = Geometry::for_bytes(64 << 20, page);
        assert_eq!(
            (g.block_bytes, g.blocks),
            (1 << 20, 64),
            "blocks stop at 1 MiB"
        );
        let g = Geometry::for_bytes(65536, page);
        assert_eq!((g.block_bytes, g.blocks), (8192, 8));
        let g = Geometry::for_bytes(100_000, page);
        assert_eq!(
            (g.block_bytes, g.blocks),
            (8192, 12),
            "rounded down to whole blocks"
        );
        let g = Geometry::for_bytes(1000, page);
        assert_eq!((g.block_bytes, g.blocks), (4096, 2), "two pages at least");
    }

    fn now_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// Needs CAP_NET_RAW: skipped (with a note) otherwise. A datagram sent on loopback is
    /// seen once (the outgoing copy is filtered), cut to the snap length with its length
    /// on the wire kept, and stamped by the kernel when it was sent, not when it was read.
    #[test]
    fn loopback_frames_are_cut_once_seen_and_carry_the_kernels_time() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIPPED loopback_frames_are_cut_once_seen_and_carry_the_kernels_time: needs root"
            );
            return;
        }
        let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .expect("lo")
            .trim()
            .parse()
            .expect("ifindex");
        let mut ring = PacketRing::open(lo, 1 << 20, LinkType::Ethernet, true).unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut payload = vec![0u8; 1000];
        payload[..8].copy_from_slice(b"stamp-me");
        let sent = now_ns();
        tx.send_to(&payload, ("127.0.0.1", port)).unwrap();
        // Read it late: the stamp must still be the sending time.
        std::thread::sleep(Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        // Until the block holding it is handed over (the retire timeout), and one more
        // round for a second copy, if there were one.
        while Instant::now() < deadline && seen.len() < 2 {
            let Some(b) = ring.next_block(Duration::from_millis(100)).unwrap() else {
                if !seen.is_empty() {
                    break;
                }
                continue;
            };
            for f in block::frames(b.bytes()) {
                if f.data.windows(8).any(|w| w == b"stamp-me") {
                    seen.push((f.ts_ns, f.wire_len, f.data.len(), now_ns()));
                }
            }
        }
        assert_eq!(seen.len(), 1, "one copy of the datagram: {seen:?}");
        let (ts, wire, captured, read) = seen[0];
        assert_eq!(wire, 14 + 20 + 8 + 1000, "the length on the wire");
        assert_eq!(
            captured,
            filter::SNAP_BYTES as usize,
            "cut to the snap length"
        );
        assert!(ts >= sent.saturating_sub(1_000_000), "{ts} before {sent}");
        assert!(
            ts < sent + 100_000_000,
            "stamped {} ms after sending",
            (ts - sent) / 1_000_000
        );
        assert!(read - ts >= 250_000_000, "stamped at read time");
        // The counters of a TPACKET_V3 socket read (their values depend on what else
        // loopback carried meanwhile).
        ring.statistics().expect("PACKET_STATISTICS");
    }
}
