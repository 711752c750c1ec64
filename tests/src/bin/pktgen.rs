//! A bounded packet generator for the live capture benchmark (`cargo xtask bench --only
//! host-cost`): prebuilt Ethernet/IPv4/UDP frames sent on one interface through a raw
//! AF_PACKET socket with sendmmsg(2), at a given rate or as fast as it can.
//!
//! `pktgen --interface IF --packets N [--rate PPS] [--max-secs S] [--flows F] [--size B]
//! [--dst-mac MAC] [--src IP] [--dst IP] [--threads T] [--cpus C,C..]` sends N frames (or
//! stops after S seconds, default 10), B bytes each (default 128, the Ethernet header
//! included), cycling through F UDP flows (source ports 10000.., default 64), paced to PPS
//! a second (0, the default: no pacing). With T threads (default 1) each sends its share
//! of N and of PPS on a socket of its own, thread i pinned to the i-th of the CPUs given
//! (default: not pinned beyond the process's own affinity): one core cannot offer much more
//! than ~800k frames/s through veth, because the peer's receive path (and its packet
//! sockets' copy) runs in the sender's softirq. Sockets bypass the qdisc
//! (`PACKET_QDISC_BYPASS`). The destination MAC defaults to 02:00:00:00:00:02, which is not the peer's:
//! the peer's packet sockets see every frame and its IP stack drops them at once
//! (PACKET_OTHERHOST), so nothing answers and no receiving socket fills. Prints
//! `SENT <frames> SECS <seconds> RATE <frames/s> ENOBUFS <retries> CPU <seconds>`, the last
//! its own user + system CPU, which includes the kernel's delivery of each frame to the
//! peer's packet sockets (veth receives in the sender's softirq).
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

const BATCH: usize = 64;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn usage(why: &str) -> ! {
    eprintln!(
        "pktgen: {why}\nusage: pktgen --interface IF --packets N [--rate PPS] [--max-secs S] \
         [--flows F] [--size B] [--dst-mac MAC] [--src IP] [--dst IP]"
    );
    std::process::exit(2);
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> T {
    match arg(args, name) {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| usage(&format!("{name}: bad value {v}"))),
        None => default.unwrap_or_else(|| usage(&format!("{name} is required"))),
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| usage("--dst-mac: aa:bb:..")))
        .collect();
    bytes
        .try_into()
        .unwrap_or_else(|_| usage("--dst-mac: six bytes"))
}

/// The Internet checksum of an IPv4 header.
fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One frame of `size` bytes: Ethernet, IPv4 (no options), UDP without checksum.
fn frame(size: usize, dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (size - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap_or_else(|_| usage("--interface: no NUL"));
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        eprintln!("pktgen: no interface {name}");
        std::process::exit(1);
    }
    i
}

/// A raw packet socket bound to `index` for sending only (protocol 0 receives nothing).
fn open(index: u32) -> OwnedFd {
    // SAFETY: plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        eprintln!(
            "pktgen: socket(AF_PACKET): {} (needs CAP_NET_RAW)",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind with a correctly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("pktgen: bind: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with an int option on our own socket. Best effort: older kernels
    // without it only lose a little speed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    fd
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity(0) is
    // this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "pktgen: pinning to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
    }
}

/// What one sending thread did.
struct Sent {
    sent: u64,
    enobufs: u64,
}

/// Sends `packets` frames of `frames` (cycling) on `fd`, paced to `rate` a second (0: no
/// pacing), for at most `limit`.
fn send(fd: &OwnedFd, frames: &[Vec<u8>], packets: u64, rate: u64, limit: Duration) -> Sent {
    let size = frames[0].len();
    // One iovec per slot of a batch; slot j of batch k carries frame (k * BATCH + j) % flows.
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: size,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid start (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let start = Instant::now();
    let (mut sent, mut enobufs, mut next) = (0u64, 0u64, 0usize);
    while sent < packets && start.elapsed() < limit {
        let n = (packets - sent).min(BATCH as u64) as usize;
        for j in 0..n {
            let f = &frames[(next + j) % frames.len()];
            iov[j].iov_base = f.as_ptr() as *mut libc::c_void;
            msgs[j].msg_hdr.msg_iov = &mut iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at live iovecs over live frames; the kernel only reads.
        let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN) => {
                    enobufs += 1;
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                Some(libc::EINTR) => continue,
                _ => {
                    eprintln!("pktgen: sendmmsg: {e}");
                    std::process::exit(1);
                }
            }
        }
        sent += rc as u64;
        next = (next + rc as usize) % frames.len();
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Sent { sent, enobufs }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let interface: String = parse(&args, "--interface", None);
    let packets: u64 = parse(&args, "--packets", None);
    let rate: u64 = parse(&args, "--rate", Some(0));
    let max_secs: f64 = parse(&args, "--max-secs", Some(10.0));
    let flows: u16 = parse(&args, "--flows", Some(64));
    let size: usize = parse(&args, "--size", Some(128));
    let src: Ipv4Addr = parse(&args, "--src", Some(Ipv4Addr::new(10, 204, 0, 1)));
    let dst: Ipv4Addr = parse(&args, "--dst", Some(Ipv4Addr::new(10, 204, 0, 2)));
    let dst_mac = parse_mac(&arg(&args, "--dst-mac").unwrap_or("02:00:00:00:00:02".into()));
    if !(60..=1514).contains(&size) {
        usage("--size: 60 to 1514 bytes");
    }
    if flows == 0 || flows > 50_000 {
        usage("--flows: 1 to 50000");
    }

    let threads: usize = parse(&args, "--threads", Some(1));
    let cpus: Vec<usize> = match arg(&args, "--cpus") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--cpus: bad CPU {c}")))
            })
            .collect(),
    };
    if threads == 0 || threads > 64 {
        usage("--threads: 1 to 64");
    }
    if flows < threads as u16 {
        usage("--flows: at least one a thread");
    }
    let index = ifindex(&interface);
    let limit = Duration::from_secs_f64(max_secs);
    let start = Instant::now();
    // Thread t sends flows t, t+T, ... and its share of the packets and of the rate.
    let results: Vec<Sent> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let cpu = (!cpus.is_empty()).then(|| cpus[t % cpus.len()]);
                let share =
                    |n: u64| n / threads as u64 + u64::from((t as u64) < n % threads as u64);
                let (packets, rate) = (
                    share(packets),
                    if rate == 0 { 0 } else { share(rate).max(1) },
                );
                scope.spawn(move || {
                    if let Some(cpu) = cpu {
                        pin(cpu);
                    }
                    let fd = open(index);
                    let frames: Vec<Vec<u8>> = (t..flows as usize)
                        .step_by(threads)
                        .map(|i| frame(size, dst_mac, src, dst, 10_000 + i as u16))
                        .collect();
                    send(&fd, &frames, packets, rate, limit)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a sending thread panicked"))
            .collect()
    });
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let enobufs: u64 = results.iter().map(|r| r.enobufs).sum();
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        "SENT {sent} SECS {secs:.6} RATE {:.0} ENOBUFS {enobufs} CPU {:.6}",
        sent as f64 / secs,
        tv(ru.ru_utime) + tv(ru.ru_stime)
    );
}
