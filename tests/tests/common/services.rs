//! Real services on loopback for the enrichment tests: dnsmasq answering PTR queries, and
//! the Cymru replay server.
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The shared data folder (`../shared/data` beside the project).
pub fn shared_data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
}

fn free_port() -> u16 {
    // UDP and TCP on the same port must both be free for dnsmasq: probe both.
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// dnsmasq on 127.0.0.1:PORT answering PTR queries from a hosts file, NXDOMAIN for every
/// other reverse name, and nothing else (no upstream, no system files).
pub struct Dnsmasq {
    child: Child,
    pub addr: String,
}

impl Dnsmasq {
    /// `records`: (address, name) pairs.
    pub fn start(dir: &Path, records: &[(&str, &str)]) -> Self {
        let hosts = dir.join("dnsmasq.hosts");
        let mut f = std::fs::File::create(&hosts).expect("hosts file");
        for (ip, name) in records {
            writeln!(f, "{ip} {name}").expect("write hosts");
        }
        drop(f);
        let port = free_port();
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("dnsmasq not installed: run `cargo xtask setup` (Debian package dnsmasq-base)");
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-daemon",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--user=root",
                "--pid-file=",
                "--local=/in-addr.arpa/",
                "--local=/ip6.arpa/",
                "--local-ttl=600",
                "--neg-ttl=120",
                &format!("--addn-hosts={}", hosts.display()),
                &format!("--log-facility={}", dir.join("dnsmasq.log").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let addr = format!("127.0.0.1:{port}");
        // Ready when it listens on TCP.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes it (SIGSTOP): queries go unanswered, as with a hung server.
    pub fn freeze(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    pub fn stop(&mut self) {
        // SAFETY: as above; SIGCONT first so a frozen process can die.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The loopback Cymru bulk whois server (`cymru-replay`), in one of its modes.
pub struct Cymru {
    child: Child,
    pub addr: String,
}

impl Cymru {
    pub fn start(mode: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cymru-replay"))
            .args(["--listen", "127.0.0.1:0", "--mode", mode, "--data"])
            .arg(shared_data().join("cymru"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cymru-replay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("cymru-replay said {line:?}"))
            .to_string();
        Self { child, addr }
    }
}

impl Drop for Cymru {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
