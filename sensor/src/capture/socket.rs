//! One AF_PACKET socket bound to one interface, read with recvmsg(2) so that every frame
//! comes with the time the kernel stamped it (SO_TIMESTAMPNS, Linux 2.6.22), not the time
//! this process got round to reading it.
//!
//! Why the kernel's time: under load a frame waits in the socket buffer for tens or
//! hundreds of milliseconds before it is read, and the merge tells connections that reuse
//! one 5-tuple apart by their lifetimes. The stamp is CLOCK_REALTIME (`ktime_get_real`),
//! the clock the kernel hooks' boot-time stamps are converted to (`flow::BootClock`). The
//! kernel turns stamping on a moment after the first socket asks (`net_enable_timestamp`
//! defers it to a work item): frames of the first few milliseconds after start may carry
//! their read time instead.
//!
//! The socket is opened with protocol 0 and only bound to ETH_P_ALL on its interface after
//! its buffer and filter are set, so it never holds frames from other interfaces.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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

/// Largest frame read whole: loopback's MTU is 65536, plus its 14-byte header.
const FRAME_BUFFER_BYTES: usize = (1 << 16) + 64;

pub struct PacketSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Room for one SCM_TIMESTAMPNS control message (and any other the kernel adds).
    control: Vec<u64>,
}

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

impl PacketSocket {
    /// Opens a raw packet socket on interface `index` with a kernel receive buffer of
    /// `buffer_bytes` (bursts wait there rather than being dropped), kernel timestamps,
    /// promiscuous mode, and reads that give up after `read_timeout` (so a reader can look
    /// at its stop flag and beat its heartbeat). With `incoming_only`, a classic BPF filter
    /// keeps only frames coming in: on loopback each packet passes twice, going out and
    /// coming back (tcpdump shows the same single copy).
    pub fn open(
        index: u32,
        buffer_bytes: usize,
        read_timeout: Duration,
        incoming_only: bool,
    ) -> Result<Self, SocketError> {
        // SAFETY: plain socket(2) call.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_error("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = buffer_bytes.min(i32::MAX as usize) as libc::c_int;
        // FORCE (CAP_NET_ADMIN) may exceed net.core.rmem_max; the plain one is the fallback.
        set(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size,
            "SO_RCVBUFFORCE",
        )
        .or_else(|_| set(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &size, "SO_RCVBUF"))?;
        let on: libc::c_int = 1;
        set(
            raw,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on,
            "SO_TIMESTAMPNS",
        )?;
        let tv = libc::timeval {
            tv_sec: read_timeout.as_secs() as libc::time_t,
            tv_usec: read_timeout.subsec_micros() as libc::suseconds_t,
        };
        set(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv, "SO_RCVTIMEO")?;
        if incoming_only {
            drop_outgoing(raw)?;
        }
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
        Ok(Self {
            fd,
            buf: vec![0; FRAME_BUFFER_BYTES],
            control: vec![0; 16],
        })
    }

    /// The next frame and the kernel's time for it (unix nanoseconds). `TimedOut` when
    /// nothing came within the read timeout.
    pub fn recv(&mut self) -> io::Result<(u64, &[u8])> {
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is a valid start.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.control.as_mut_ptr().cast();
        msg.msg_controllen = self.control.len() * size_of::<u64>();
        // SAFETY: every pointer in `msg` points into buffers we own, sized as stated.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock => io::Error::new(io::ErrorKind::TimedOut, e),
                _ => e,
            });
        }
        let ts = kernel_time(&msg).unwrap_or_else(now_ns);
        let len = (n as usize).min(self.buf.len());
        Ok((ts, &self.buf[..len]))
    }

    /// Reads and resets the socket's kernel counters (PACKET_STATISTICS): packets and
    /// drops since the last read.
    pub fn statistics(&self) -> Option<(u32, u32)> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: getsockopt into a correctly sized tpacket_stats.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some((st.tp_packets, st.tp_drops))
    }
}

/// The SCM_TIMESTAMPNS control message of a received frame, as unix nanoseconds.
fn kernel_time(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen, which recvmsg set.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Read time, only if the kernel ever omits its stamp (it does not for packet sockets).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A classic BPF filter that drops frames going out (`skb->pkt_type == PACKET_OUTGOING`).
fn drop_outgoing(fd: i32) -> Result<(), SocketError> {
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
    // SO_ATTACH_FILTER copies the program; `code` outlives the call.
    set(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        &prog,
        "SO_ATTACH_FILTER",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs CAP_NET_RAW: skipped (with a note) otherwise. A frame sent on loopback comes
    /// back stamped by the kernel at about the time it was sent, not when it was read.
    #[test]
    fn loopback_frames_carry_the_kernels_time() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED loopback_frames_carry_the_kernels_time: needs root");
            return;
        }
        let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .expect("lo")
            .trim()
            .parse()
            .expect("ifindex");
        let mut s = PacketSocket::open(lo, 1 << 20, Duration::from_millis(100), true).unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        // The kernel turns stamping on a moment after the first socket asks for it
        // (net_enable_timestamp defers it to a work item); until then frames carry the time
        // they are read.
        std::thread::sleep(Duration::from_millis(200));
        let sent = now_ns();
        tx.send_to(b"stamp-me", ("127.0.0.1", port)).unwrap();
        // Read it late: the stamp must still be the sending time.
        std::thread::sleep(Duration::from_millis(300));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            assert!(std::time::Instant::now() < deadline, "frame not seen");
            let Ok((ts, frame)) = s.recv() else { continue };
            if !frame.windows(8).any(|w| w == b"stamp-me") {
                continue;
            }
            let read = now_ns();
            assert!(ts >= sent.saturating_sub(1_000_000), "{ts} before {sent}");
            assert!(
                ts < sent + 100_000_000,
                "stamped {} ms after sending",
                (ts - sent) / 1_000_000
            );
            assert!(read - ts >= 250_000_000, "stamped at read time");
            break;
        }
    }
}
