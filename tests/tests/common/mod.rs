//! Helpers shared by the end-to-end tests: finding the binaries, running the sensor.
#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod collectors;
pub mod ipfix_decode;
pub mod services;
pub mod tshark;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The `sensor` binary: `$SENSOR_BIN`, else beside `tcpload` in the same target directory
/// (`cargo xtask test` builds both).
pub fn sensor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SENSOR_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_BIN_EXE_tcpload")).with_file_name("sensor");
    assert!(
        p.is_file(),
        "{} not found: build it first (`cargo build -p sensor`; `cargo xtask test` does this) \
         or set SENSOR_BIN",
        p.display()
    );
    p
}

pub fn tcpload_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tcpload"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Says loudly that a test could not run here, and why: straight to file descriptor 2
/// (libtest captures stderr, and this must show even when the test "passes"), and to
/// `$SENSOR_SKIP_LOG` when set, so `cargo xtask test` counts skips apart from passes.
pub fn skip(test: &str, why: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED {test}: {why}");
    let loud = format!("\n*** {line} ***\n");
    // SAFETY: write(2) to the process's stderr, bypassing libtest's capture.
    unsafe { libc::write(2, loud.as_ptr().cast(), loud.len()) };
    if let Some(path) = std::env::var_os("SENSOR_SKIP_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{line}");
        }
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sensor-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A running `sensor run`, with its stderr collected.
pub struct Sensor {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Sensor {
    /// Starts `sensor run ARGS` and waits for its "sensor ready" line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(sensor_bin()), args)
    }

    /// The same through a prepared command (e.g. `ip netns exec NS sensor`).
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Self {
        cmd.arg("run").args(args);
        // Never the fixed default port: tests may run beside a real sensor.
        if !args.contains(&"--metrics-addr") {
            cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .env("SENSOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sensor");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Self {
            child,
            lines: rx,
            log: Vec::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match s.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("sensor: {line}");
                    let ready = line.contains("sensor ready");
                    s.log.push(line);
                    if ready {
                        return s;
                    }
                }
                Err(_) => {
                    let _ = s.child.kill();
                    panic!("sensor did not become ready; log:\n{}", s.log.join("\n"));
                }
            }
        }
    }

    /// SIGTERM, then waits for exit; returns the exit status and the whole log.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sensor did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            eprintln!("sensor: {line}");
            self.log.push(line);
        }
        (status, std::mem::take(&mut self.log))
    }
}

/// A test that panics before `stop` must not leave a sensor running: it would capture and
/// attach beside every test after it.
impl Drop for Sensor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the child's stderr until a line contains `needle` (30 s at most), then keeps
/// draining it in the background so the child never blocks on a full pipe.
pub fn wait_for_line(child: &mut Child, needle: &str) {
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in lines.by_ref() {
        let line = line.expect("read");
        if line.contains(needle) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return;
        }
        assert!(Instant::now() < deadline, "no '{needle}' line");
    }
    panic!("exited before '{needle}'");
}

/// tcpdump writing everything on `iface` to `pcap`, each packet as it comes
/// (`--immediate-mode`: without it packets wait in the kernel's ring and are lost at exit).
pub fn tcpdump(prefix: &[&str], iface: &str, pcap: &Path) -> Child {
    let mut cmd = if prefix.is_empty() {
        Command::new("tcpdump")
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg("tcpdump");
        c
    };
    let mut child = cmd
        .args([
            "-n",
            "-U",
            "--immediate-mode",
            "-B",
            "65536",
            "-i",
            iface,
            "-w",
        ])
        .arg(pcap)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("tcpdump");
    wait_for_line(&mut child, "listening on");
    child
}

/// SIGTERM and wait.
pub fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

impl Sensor {
    /// The address the sensor serves /metrics on, from its start-up log.
    pub fn metrics_addr(&self) -> String {
        self.log
            .iter()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
            .expect("the sensor logs its metrics address")
    }
}

/// Real TCP connections over 127.0.0.1 and ::1 (`tcpload`): `per_family` each, from
/// `threads` client threads.
pub fn tcp_traffic(per_family: usize, threads: usize) {
    let mut server = Command::new(tcpload_bin())
        .args(["server", "--conns", &(2 * per_family).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut listen = String::new();
    out.read_line(&mut listen).unwrap();
    let a: Vec<&str> = listen.split_whitespace().collect();
    let client = Command::new(tcpload_bin())
        .args(["client", "--v4", a[1], "--v6", a[2]])
        .args(["--per-family", &per_family.to_string()])
        .args(["--threads", &threads.to_string()])
        .output()
        .expect("client");
    assert!(client.status.success(), "{client:?}");
    assert!(server.wait().unwrap().success());
}

/// The value of one series in a Prometheus text exposition (0 when absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The value of one series in a Prometheus text exposition; fails when the series is not
/// there (so a renamed metric fails the test rather than reading as 0).
pub fn metric_required(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("metric {series} not exported"))
}

/// Every alert row of `db` (`sensor alerts --format ndjson ARGS`), one JSON object each.
pub fn alerts(db: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(sensor_bin())
        .args(["alerts", "--db"])
        .arg(db)
        .args(["--format", "ndjson"])
        .args(args)
        .output()
        .expect("run sensor alerts");
    assert!(
        out.status.success(),
        "sensor alerts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `sql` (a `SELECT count(*)`) on the database a running sensor writes; 0 while the
/// database cannot be read yet.
pub fn count_now(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
        .unwrap_or(0)
}
