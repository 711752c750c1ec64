//! Real TCP traffic with known payloads, for the sensor's end-to-end tests.
//!
//! `tcpload server --v4 ADDR --v6 ADDR --conns N` listens on both addresses, prints
//! `LISTEN <v4 addr> <v6 addr>`, serves N connections, prints `DONE` and exits.
//! `tcpload client --v4 ADDR --v6 ADDR --per-family N [--threads T]` opens N connections to
//! each address and prints one line per connection:
//! `C <local> <peer> <request bytes> <response bytes> <mode>`, then `PID <pid>` and
//! `RATE <conns/s>`.
//!
//! `tcpload reuse --peer ADDR --source-port P --conns N [--hold-ms H]` makes N connections
//! one after another, all from local port P (SO_REUSEADDR), each held H ms (default 2)
//! after its response and closed with RST (so no TIME_WAIT stands in the next one's way);
//! one line per connection: `C <local> <peer> <request bytes> <response bytes> 1
//! <start unix ns> <end unix ns>` (from before the socket exists to after it is closed),
//! then `PID <pid>`.
//!
//! `tcpload rate --conns N [--v4 ADDR]` measures the connection rate: it serves on ADDR
//! (default an ephemeral port on 127.0.0.1) from a thread of its own and makes N connections
//! one after another, each one byte each way, closed by the client first; prints
//! `RATE <conns/s>`.
//!
//! Each connection starts with a 12-byte header (request length including the header,
//! response length, mode; big-endian u32s). Modes say who closes and how:
//! 0 client FIN first, 1 client RST, 2 server FIN first, 3 server RST, 4 both at once (the
//! client sends one last byte after the response and closes; the server closes as soon as
//! it reads it, so the two FINs cross, as with curl and a keep-alive-less server).
//! The two roles name themselves `tl-server` / `tl-client` (the kernel's `comm`).
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const HEADER: usize = 12;

fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Close with RST instead of FIN.
fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Reads until EOF or reset; returns bytes read.
fn drain(s: &mut TcpStream) -> usize {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return n,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return n,
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let role = args.get(1).map(String::as_str);
    let v4: SocketAddr = arg(&args, "--v4")
        .unwrap_or("127.0.0.1:0".into())
        .parse()
        .expect("--v4");
    let v6: SocketAddr = arg(&args, "--v6")
        .unwrap_or("[::1]:0".into())
        .parse()
        .expect("--v6");
    match role {
        Some("server") => {
            let conns: usize = arg(&args, "--conns")
                .expect("--conns")
                .parse()
                .expect("--conns");
            server(v4, v6, conns);
        }
        Some("client") => {
            let n: usize = arg(&args, "--per-family")
                .expect("--per-family")
                .parse()
                .expect("--per-family");
            let threads: usize =
                arg(&args, "--threads").map_or(4, |t| t.parse().expect("--threads"));
            client(v4, v6, n, threads);
        }
        Some("reuse") => {
            let num = |name: &str, default: Option<u64>| -> u64 {
                arg(&args, name)
                    .map(|v| v.parse().expect(name))
                    .or(default)
                    .expect(name)
            };
            let peer: SocketAddr = arg(&args, "--peer")
                .expect("--peer")
                .parse()
                .expect("--peer");
            let port = u16::try_from(num("--source-port", None)).expect("--source-port");
            reuse(peer, port, num("--conns", None), num("--hold-ms", Some(2)));
        }
        Some("rate") => {
            let conns: usize = arg(&args, "--conns")
                .expect("--conns")
                .parse()
                .expect("--conns");
            rate(v4, conns);
        }
        _ => {
            eprintln!("usage: tcpload server|client|reuse|rate ...");
            std::process::exit(2);
        }
    }
}

fn server(v4: SocketAddr, v6: SocketAddr, conns: usize) {
    set_comm("tl-server");
    let l4 = TcpListener::bind(v4).expect("bind v4");
    let l6 = TcpListener::bind(v6).expect("bind v6");
    println!(
        "LISTEN {} {}",
        l4.local_addr().expect("addr"),
        l6.local_addr().expect("addr")
    );
    std::io::stdout().flush().expect("stdout");
    let done = Arc::new(AtomicUsize::new(0));
    for l in [l4, l6] {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    serve_one(s);
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.load(Ordering::SeqCst) < conns {
        if Instant::now() > deadline {
            eprintln!(
                "tcpload server: only {} of {conns} connections finished",
                done.load(Ordering::SeqCst)
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("DONE");
}

fn serve_one(mut s: TcpStream) {
    let mut hdr = [0u8; HEADER];
    if s.read_exact(&mut hdr).is_err() {
        return;
    }
    let word =
        |i: usize| u32::from_be_bytes(hdr[i * 4..i * 4 + 4].try_into().expect("4 bytes")) as usize;
    let (req, resp, mode) = (word(0), word(1), word(2));
    let mut rest = vec![0u8; req.saturating_sub(HEADER)];
    if s.read_exact(&mut rest).is_err() {
        return;
    }
    if s.write_all(&vec![b'r'; resp]).is_err() {
        return;
    }
    match mode {
        0 | 1 => {
            drain(&mut s);
        }
        2 => {}
        4 => {
            let mut last = [0u8; 1];
            let _ = s.read_exact(&mut last);
        }
        _ => set_linger_zero(&s),
    }
    drop(s);
}

fn client(v4: SocketAddr, v6: SocketAddr, per_family: usize, threads: usize) {
    set_comm("tl-client");
    let total = per_family * 2;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return lines;
                    }
                    let peer = if i.is_multiple_of(2) { v4 } else { v6 };
                    lines.push(one_connection(peer, i));
                }
            })
        })
        .collect();
    let mut out = String::new();
    for w in workers {
        for line in w.join().expect("client thread") {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let secs = start.elapsed().as_secs_f64();
    print!("{out}");
    println!("PID {}", std::process::id());
    println!("RATE {:.0}", total as f64 / secs);
}

/// Sizes vary with `i` so that a swapped direction or an off-by-one shows.
fn one_connection(peer: SocketAddr, i: usize) -> String {
    let req = HEADER + (i * 7919) % 6000;
    let resp = (i * 104_729) % 9000;
    let mode = (i / 2) % 5;
    let mut s = TcpStream::connect(peer).expect("connect");
    let local = s.local_addr().expect("local addr");
    let mut msg = Vec::with_capacity(req);
    for w in [req, resp, mode] {
        msg.extend_from_slice(&(w as u32).to_be_bytes());
    }
    msg.resize(req, b'q');
    s.write_all(&msg).expect("send request");
    let mut got = vec![0u8; resp];
    match mode {
        0 | 1 => {
            s.read_exact(&mut got).expect("read response");
            if mode == 1 {
                set_linger_zero(&s);
            }
        }
        4 => {
            s.read_exact(&mut got).expect("read response");
            s.write_all(b"x").expect("send the last byte");
        }
        _ => {
            // The server closes first: read to EOF (or its reset).
            drain(&mut s);
        }
    }
    drop(s);
    // Bytes the client sent: the request, and mode 4's last byte.
    let sent = req + usize::from(mode == 4);
    format!("C {local} {peer} {sent} {resp} {mode}")
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// A TCP socket bound to `local` with SO_REUSEADDR, connected to `peer`. A bind or connect
/// that finds the port still taken is tried again (200 times, 1 ms apart, at most).
fn connect_from(local: SocketAddr, peer: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let to_raw = |a: SocketAddr| -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain data; zeroed is a valid start.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    };
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    for _ in 0..200 {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is ours; from here the stream closes it.
        let s = unsafe { TcpStream::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a c_int on our socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_REUSEADDR: {}", std::io::Error::last_os_error());
        let (l, llen) = to_raw(local);
        let (p, plen) = to_raw(peer);
        // SAFETY: bind and connect with correctly sized socket addresses.
        let ok = unsafe {
            libc::bind(fd, (&l as *const libc::sockaddr_storage).cast(), llen) == 0
                && libc::connect(fd, (&p as *const libc::sockaddr_storage).cast(), plen) == 0
        };
        if ok {
            return s;
        }
        let e = std::io::Error::last_os_error();
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
            ),
            "bind/connect from {local} to {peer}: {e}"
        );
        drop(s);
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("port {} still taken after 200 tries", local.port());
}

fn reuse(peer: SocketAddr, port: u16, conns: u64, hold_ms: u64) {
    set_comm("tl-client");
    let local = SocketAddr::new(
        if peer.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        },
        port,
    );
    let mut out = String::new();
    for i in 0..conns as usize {
        let req = HEADER + 100 + (i * 7919) % 900;
        let resp = 50 + (i * 104_729) % 900;
        let start = unix_ns();
        let mut s = connect_from(local, peer);
        let mut msg = Vec::with_capacity(req);
        for w in [req, resp, 1] {
            msg.extend_from_slice(&(w as u32).to_be_bytes());
        }
        msg.resize(req, b'q');
        s.write_all(&msg).expect("send request");
        let mut got = vec![0u8; resp];
        s.read_exact(&mut got).expect("read response");
        std::thread::sleep(Duration::from_millis(hold_ms));
        set_linger_zero(&s);
        drop(s);
        let end = unix_ns();
        out.push_str(&format!("C {local} {peer} {req} {resp} 1 {start} {end}\n"));
    }
    print!("{out}");
    println!("PID {}", std::process::id());
}

/// Sequential connections, one byte each way, client closes first.
fn rate(addr: SocketAddr, conns: usize) {
    set_comm("tl-rate");
    let listener = TcpListener::bind(addr).expect("bind");
    let peer = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        for _ in 0..conns {
            let (mut s, _) = listener.accept().expect("accept");
            s.read_exact(&mut byte).expect("server read");
            s.write_all(&byte).expect("server write");
            drain(&mut s);
        }
    });
    let start = Instant::now();
    let mut byte = [b'x'; 1];
    for _ in 0..conns {
        let mut s = TcpStream::connect(peer).expect("connect");
        s.write_all(&byte).expect("client write");
        s.read_exact(&mut byte).expect("client read");
    }
    let secs = start.elapsed().as_secs_f64();
    server.join().expect("server thread");
    println!("RATE {:.0}", conns as f64 / secs);
}
