//! The connection rate on loopback, for `cargo xtask bench --only host-cost`.
//!
//! `connrate --conns N [--max-secs S] [--addr 127.0.0.1:0]` starts a server thread on ADDR
//! and, from the main thread, makes N connections to it one after another: connect, one
//! byte to the server, one byte back, the server closes (so TIME_WAIT is on the server's
//! side and the client's ports come free at once), the client reads the end and closes.
//! It stops after N connections or S seconds (default 60), whichever comes first, and prints
//! `CONNS <done> SECS <seconds> RATE <conns/s> CPU <its own user+system seconds>`; exit 1 if it stopped on the time limit or a
//! connection failed. Every read and write gives up after 5 s.
//!
//! The two threads name themselves `cr-server` / `cr-client` (the kernel's `comm`).
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn usage(why: &str) -> ! {
    eprintln!("connrate: {why}\nusage: connrate --conns N [--max-secs S] [--addr IP:PORT]");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let conns: u64 = arg(&args, "--conns")
        .unwrap_or_else(|| usage("--conns is required"))
        .parse()
        .unwrap_or_else(|_| usage("--conns: a number"));
    let max_secs: f64 = arg(&args, "--max-secs")
        .map_or(Ok(60.0), |s| s.parse())
        .unwrap_or_else(|_| usage("--max-secs: a number"));
    let addr: SocketAddr = arg(&args, "--addr")
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .unwrap_or_else(|_| usage("--addr: IP:PORT"));
    let listener = TcpListener::bind(addr).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    std::thread::Builder::new()
        .name("cr-server".into())
        .spawn(move || serve(listener))
        .expect("server thread");
    set_comm("cr-client");

    let deadline = Duration::from_secs_f64(max_secs);
    let start = Instant::now();
    let mut done = 0u64;
    let mut failed = None;
    while done < conns && start.elapsed() < deadline {
        if let Err(e) = one(addr) {
            failed = Some(e);
            break;
        }
        done += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "CONNS {done} SECS {secs:.6} RATE {:.0} CPU {:.6}",
        done as f64 / secs,
        own_cpu_secs()
    );
    if let Some(e) = failed {
        eprintln!("connrate: connection {} failed: {e}", done + 1);
        std::process::exit(1);
    }
    if done < conns {
        eprintln!("connrate: only {done} of {conns} connections in {max_secs} s");
        std::process::exit(1);
    }
}

/// User + system CPU seconds of this process, every thread.
fn own_cpu_secs() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// One connection: a byte each way; the server closes first.
fn one(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"q")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    // The server's close: EOF.
    loop {
        match s.read(&mut b) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(std::io::Error::other("more than one byte back")),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve(listener: TcpListener) {
    set_comm("cr-server");
    for s in listener.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(b"r");
        }
    }
}
