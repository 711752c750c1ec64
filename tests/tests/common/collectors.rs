//! The nfdump collector for the IPFIX tests: `nfcapd` on loopback, what `nfdump` reads
//! back, and the sensor's own rows in the same shape to compare them with.
use std::{
    net::UdpSocket,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A UDP port free on `bind` now.
pub fn free_udp_port(bind: &str) -> u16 {
    UdpSocket::bind((bind, 0))
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until the collector `what` has taken `bind:port` (binding it fails).
pub fn wait_bound(what: &str, bind: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind((bind, port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{what} did not bind {bind}:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nfcapd on `bind`, writing into `dir`; stopped (SIGTERM, so it closes its file) on drop.
pub struct Nfcapd {
    child: Child,
    pub port: u16,
}

impl Nfcapd {
    pub fn start(bind: &str, dir: &Path) -> Self {
        Self::start_on(bind, free_udp_port(bind), dir)
    }

    /// On a given port (a collector restarted where the last one was).
    pub fn start_on(bind: &str, port: u16, dir: &Path) -> Self {
        let child = Command::new("nfcapd")
            // A replay sends in bursts: a socket buffer that holds them.
            .args(["-b", bind, "-p", &port.to_string(), "-B", "16777216", "-w"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nfcapd not installed: run `cargo xtask setup` (Debian package nfdump)");
        wait_bound("nfcapd", bind, port);
        Self { child, port }
    }

    /// Stops it; returns its log (it reports flows and sequence errors at the end).
    pub fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"))
            .wait_with_output()
            .expect("nfcapd exit");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// proto, src, sport, dst, dport.
pub type Key = (u8, String, u16, String, u16);

/// One flow as both sides see it: 5-tuple, first and last ms, packets and bytes each way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub key: Key,
    pub first_ms: i64,
    pub last_ms: i64,
    pub counts: [u64; 4],
}

pub fn ms_of(nfdump_time: &str) -> i64 {
    // "2021-01-05T06:55:36.669", printed in UTC (TZ=UTC).
    let (date, time) = nfdump_time.split_once('T').expect("T");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms.parse::<i64>().unwrap()
}

/// The records nfdump reads back from `dir`.
pub fn nfdump_flows(dir: &Path) -> Vec<Flow> {
    let out = Command::new("nfdump")
        .env("TZ", "UTC")
        .arg("-R")
        .arg(dir)
        .args(["-o", "json"])
        .output()
        .expect("nfdump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No flows at all: nfdump prints nothing, not an empty array.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nfdump json");
    v.as_array()
        .expect("array")
        .iter()
        .filter(|r| r["type"] == "FLOW")
        .map(|r| {
            let s = |k: &str| r[k].as_str().map(str::to_string);
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            let src = s("src4_addr").or_else(|| s("src6_addr")).expect("src");
            let dst = s("dst4_addr").or_else(|| s("dst6_addr")).expect("dst");
            // ICMP: nfdump shows type and code, which the sensor keeps as the destination
            // port (type << 8 | code), as NetFlow does.
            let (sport, dport) = match r.get("icmp_type") {
                Some(t) => (0, t.as_u64().unwrap_or(0) << 8 | n("icmp_code")),
                None => (n("src_port"), n("dst_port")),
            };
            Flow {
                key: (n("proto") as u8, src, sport as u16, dst, dport as u16),
                first_ms: ms_of(r["first"].as_str().expect("first")),
                last_ms: ms_of(r["last"].as_str().expect("last")),
                counts: [
                    n("in_packets"),
                    n("in_bytes"),
                    n("out_packets"),
                    n("out_bytes"),
                ],
            }
        })
        .collect()
}

pub fn sqlite_flows(db: &Path) -> Vec<Flow> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut st = conn
        .prepare(
            "SELECT proto, src_ip, src_port, dst_ip, dst_port, first_seen_ms, last_seen_ms, \
             src_packets, src_bytes, dst_packets, dst_bytes FROM flows",
        )
        .expect("prepare");
    st.query_map([], |r| {
        let c = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0) as u64);
        Ok(Flow {
            key: (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            first_ms: r.get(5)?,
            last_ms: r.get(6)?,
            counts: [c(7)?, c(8)?, c(9)?, c(10)?],
        })
    })
    .expect("query")
    .map(|r| r.expect("row"))
    .collect()
}

/// What the exporter to `url` sent, and dropped for any reason, from final metrics `m`.
pub fn sent_and_dropped(m: &str, url: &str) -> (usize, usize) {
    let sent = super::metric_required(
        m,
        &format!("sensor_ipfix_sent_records_total{{collector=\"{url}\"}}"),
    ) as usize;
    let dropped: f64 = ["queue", "send", "too_big"]
        .iter()
        .map(|reason| {
            super::metric_required(
                m,
                &format!(
                    "sensor_ipfix_dropped_records_total{{collector=\"{url}\",reason=\"{reason}\"}}"
                ),
            )
        })
        .sum();
    (sent, dropped as usize)
}

/// A UDP "collector" that keeps every datagram, read on a thread of its own.
pub struct UdpSink {
    pub port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl UdpSink {
    pub fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = sock.local_addr().expect("addr").port();
        // A replay sends in bursts: make room for them (as root the limit does not apply).
        let size: libc::c_int = 32 << 20;
        // SAFETY: setsockopt on our own socket with a c_int option value.
        unsafe {
            use std::os::fd::AsRawFd as _;
            for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = sock.recv(&mut buf) {
                keep.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        Self { port, got }
    }

    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}
