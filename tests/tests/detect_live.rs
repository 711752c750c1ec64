//! Detections live, from real attacks: two network namespaces joined by a veth pair, the
//! sensor capturing (packets only, `--hooks none`) on the target's end, and real nmap
//! scans (SYN, connect, UDP, FIN, a horizontal sweep), an FTP password-guessing loop
//! against a real FTP server (pyftpdlib), and a 200 MB upload and download. Each case is
//! its own sensor run and database, judged by the rows of `sensor alerts`: one attack is one
//! alert of its kind naming the attacker and the target, and ordinary traffic none. Needs
//! root (namespaces, packet sockets), nmap, python3, and pyftpdlib for the FTP case.
mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Sensor, is_root, sensor_bin, skip, temp_dir};
use serde_json::Value;

/// The scanner's (client's) address and the target's (server's).
const SCANNER: &str = "10.231.0.1";
const TARGET: &str = "10.231.0.2";

/// Two namespaces, scanner and target, joined by a veth pair; removed on drop (a panic
/// included). Names carry the test's tag and the process id, so tests can run side by side.
struct Net {
    scan_ns: String,
    tgt_ns: String,
    tgt_if: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl Net {
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let n = Self {
            scan_ns: format!("sdet-{tag}-s-{id}"),
            tgt_ns: format!("sdet-{tag}-t-{id}"),
            // Interface names: at most 15 bytes.
            tgt_if: format!("sdet{tag}t"),
        };
        let scan_if = format!("sdet{tag}s");
        // Any leftovers of a run that was killed before its drop.
        for ns in [&n.scan_ns, &n.tgt_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        ip(&["netns", "add", &n.scan_ns]);
        ip(&["netns", "add", &n.tgt_ns]);
        ip(&[
            "link", "add", &scan_if, "netns", &n.scan_ns, "type", "veth", "peer", "name",
            &n.tgt_if, "netns", &n.tgt_ns,
        ]);
        for (ns, dev, v4) in [
            (&n.scan_ns, &scan_if, format!("{SCANNER}/24")),
            (&n.tgt_ns, &n.tgt_if, format!("{TARGET}/24")),
        ] {
            // IPv4 only: no router solicitations or MLD reports among the flows judged.
            n.sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1");
            n.sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1");
            ip(&["-n", ns, "addr", "add", &v4, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }

    fn sysctl(&self, ns: &str, setting: &str) {
        let st = self
            .exec(ns, "sysctl")
            .args(["-qw", setting])
            .status()
            .expect("sysctl");
        assert!(st.success(), "sysctl -w {setting} in {ns}");
    }

    fn exec(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    fn scanner(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.exec(&self.scan_ns, program)
    }

    fn target(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.exec(&self.tgt_ns, program)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.scan_ns, &self.tgt_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A background program (a server in a namespace), killed on drop; declared after the
/// [`Net`] it runs in, so it goes first.
struct Bg(Child);

impl Bg {
    /// Starts `cmd` and waits (10 s at most) for it to print `ready` on stdout.
    fn start(cmd: &mut Command, what: &str) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                let ready = line.trim() == "ready";
                let _ = tx.send(line);
                if ready {
                    break;
                }
            }
            // Keep draining so it never blocks on a full pipe.
            for _ in lines {}
        });
        let guard = Self(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => return guard,
                Ok(line) => eprintln!("{what}: {line}"),
                Err(_) => panic!("{what} did not become ready"),
            }
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// TCP on port 80 (accepts and closes) and UDP on 53 (answers every datagram), on every
/// address of its namespace: the open ports among the scanned.
const LISTENER: &str = r#"
import socket, threading
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 80))
t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 53))
def tcp():
    while True:
        c, _ = t.accept()
        c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    d, a = u.recvfrom(4096)
    u.sendto(b"\0" * 12, a)
"#;

/// An FTP server (pyftpdlib) on ADDR:21 with one user, alice, whose password no guess
/// matches; a failed login is answered at once (no anti-guessing delay, so the test is
/// quick; the detector judges the connections, not their pace).
const FTP_SERVER: &str = r#"
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.ERROR)
auth = DummyAuthorizer()
auth.add_user("alice", "correct horse battery staple", sys.argv[2], perm="elr")
class Handler(FTPHandler):
    authorizer = auth
    auth_failed_timeout = 0
server = FTPServer((sys.argv[1], 21), Handler)
print("ready", flush=True)
server.serve_forever()
"#;

/// N login attempts on ADDR:21, each a new connection with a wrong password; prints how
/// many were refused.
const FTP_GUESSER: &str = r#"
import ftplib, sys
host, n = sys.argv[1], int(sys.argv[2])
refused = 0
for i in range(n):
    f = ftplib.FTP()
    f.connect(host, 21, timeout=10)
    try:
        f.login("alice", "guess%d" % i)
    except ftplib.error_perm:
        refused += 1
    finally:
        f.close()
print("refused", refused)
"#;

/// One TCP connection accepted on ADDR:PORT: `recv` reads to EOF then answers "ok";
/// `send` sends N bytes, then reads to EOF. Prints what it received.
const SINK: &str = r#"
import socket, sys
host, port, mode, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
got = 0
if mode == "send":
    buf = b"d" * (1 << 20)
    left = n
    while left:
        k = min(left, len(buf))
        c.sendall(buf[:k])
        left -= k
    c.shutdown(socket.SHUT_WR)
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    got += len(b)
if mode == "recv":
    c.sendall(b"ok")
c.close()
print("received", got, flush=True)
"#;

/// The client side of [`SINK`]: `send` uploads N bytes and reads the answer, `recv` reads
/// to EOF. Prints what it received.
const CLIENT: &str = r#"
import socket, sys
host, port, mode, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = socket.create_connection((host, port), timeout=30)
if mode == "send":
    buf = b"u" * (1 << 20)
    left = n
    while left:
        k = min(left, len(buf))
        c.sendall(buf[:k])
        left -= k
    c.shutdown(socket.SHUT_WR)
got = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    got += len(b)
c.close()
print("received", got)
"#;

/// Whether `program ARGS` runs and succeeds.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Calls `skip` and returns false when this machine cannot run the test.
fn can_run(test: &str, nmap: bool) -> bool {
    if !is_root() {
        skip(test, "needs root for network namespaces and packet sockets");
        return false;
    }
    if !runs("ip", &["-V"]) {
        skip(test, "ip (iproute2) not found");
        return false;
    }
    if !runs("python3", &["-c", "import socket"]) {
        skip(test, "python3 not found");
        return false;
    }
    if nmap && !runs("nmap", &["--version"]) {
        skip(test, "nmap not found (`cargo xtask setup` installs it)");
        return false;
    }
    true
}

/// A python3 that imports pyftpdlib: PATH's, else the system's (where Debian's
/// python3-pyftpdlib installs, when PATH's python3 is another, e.g. pyenv's).
fn python_with_pyftpdlib() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| runs(py, &["-c", "import pyftpdlib"]))
}

/// One sensor run's database in its own directory, the config keeping it quiet (no
/// enrichment lookups).
struct Run {
    dir: PathBuf,
    db: PathBuf,
    config: PathBuf,
}

impl Run {
    fn new(name: &str) -> Self {
        let dir = temp_dir(&format!("detect-live-{name}"));
        let db = dir.join("flows.db");
        let config = dir.join("sensor.toml");
        std::fs::write(
            &config,
            format!(
                "db_path = \"{}\"\nattribution = false\nretention_max_age_s = 0\n\n\
                 [enrich]\nenabled = false\nrdns = false\n",
                db.display()
            ),
        )
        .expect("write config");
        Self { dir, db, config }
    }

    /// The sensor capturing on the target's end of the veth.
    fn start(&self, net: &Net) -> Sensor {
        Sensor::start_with(
            net.target(sensor_bin()),
            &[
                "--config",
                self.config.to_str().unwrap(),
                "--db",
                self.db.to_str().unwrap(),
                "--metrics-addr",
                "127.0.0.1:0",
                "--hooks",
                "none",
                "--interface",
                &net.tgt_if,
            ],
        )
    }

    /// Stops the sensor after the last packets are in; it must exit cleanly, having lost
    /// nothing.
    fn stop(&self, sensor: Sensor) {
        std::thread::sleep(Duration::from_millis(500));
        let (status, log) = sensor.stop();
        assert!(status.success(), "sensor: {status}\n{}", log.join("\n"));
        let capture = log
            .iter()
            .find(|l| l.contains("capture stopped"))
            .expect("capture summary");
        assert!(
            capture.contains("queue_dropped=0") && capture.contains("kernel_dropped=0"),
            "{capture}"
        );
    }

    /// Every alert row, as `sensor alerts --format ndjson` prints them.
    fn alerts(&self) -> Vec<Value> {
        common::alerts(&self.db, &[])
    }

    /// What to read when an assertion fails: the alerts table and the first flows.
    fn report(&self) -> String {
        let table = Command::new(sensor_bin())
            .args(["alerts", "--db"])
            .arg(&self.db)
            .args(["--format", "table"])
            .output()
            .expect("run sensor alerts");
        let flows = Command::new(sensor_bin())
            .args(["export", "--db"])
            .arg(&self.db)
            .args(["--format", "csv"])
            .output()
            .expect("run sensor export");
        // The 5-tuple, end and the packet view's counts and flags; 20 flows at most.
        let text = String::from_utf8_lossy(&flows.stdout);
        let flows: Vec<String> = text
            .lines()
            .take(21)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let pick = [0, 1, 2, 3, 4, 5, 6, 13, 16, 17, 18, 19, 21, 22];
                pick.iter()
                    .filter_map(|i| f.get(*i).copied())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        format!(
            "sensor alerts --format table ({}):\n{}\nflows (first 20 of {}):\n{}",
            self.dir.display(),
            String::from_utf8_lossy(&table.stdout),
            text.lines().count().saturating_sub(1),
            flows.join("\n")
        )
    }
}

fn s<'a>(a: &'a Value, k: &str) -> &'a str {
    a[k].as_str().unwrap_or_default()
}

/// A comma list's entries, the `+N` that counts the rest left off.
fn listed(a: &Value, k: &str) -> (Vec<String>, u64) {
    let mut items = Vec::new();
    let mut more = 0;
    for v in s(a, k).split(',').filter(|v| !v.is_empty()) {
        match v.strip_prefix('+') {
            Some(n) => more = n.trim_end_matches('+').parse().unwrap_or(0),
            None => items.push(v.to_string()),
        }
    }
    (items, more)
}

/// Runs `cmd`, which must succeed; returns its stdout.
fn output(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One nmap scan of the target from the scanner, the open ports listening; exactly one
/// alert: a port_scan by the scanner naming the target, on `proto` ports.
fn one_scan_one_alert(test: &str, tag: &str, scan: &[&str], proto: &str, open_line: &str) {
    if !can_run(test, true) {
        return;
    }
    let t0 = Instant::now();
    let net = Net::new(tag);
    // Closed UDP ports answer with ICMP port unreachable: unlimited, so -sU is quick.
    net.sysctl(&net.tgt_ns, "net.ipv4.icmp_ratelimit=0");
    let _listener = Bg::start(net.target("python3").args(["-c", LISTENER]), "listener");
    let run = Run::new(tag);
    let sensor = run.start(&net);
    let mut nmap = net.scanner("nmap");
    nmap.args(scan)
        .args(["-T4", "--max-retries", "1", "-n", "-Pn", TARGET]);
    let report = output(nmap, "nmap");
    run.stop(sensor);
    assert!(
        report.contains(open_line),
        "nmap saw the listener ({open_line}):\n{report}"
    );
    let rows = run.alerts();
    let why = run.report();
    assert_eq!(
        rows.len(),
        1,
        "one scan is exactly one alert:\n{report}\n{why}"
    );
    let a = &rows[0];
    assert_eq!(s(a, "kind"), "port_scan", "{why}");
    assert_eq!(s(a, "src_ip"), SCANNER, "the scanner is the source:\n{why}");
    let (targets, _) = listed(a, "targets");
    assert!(
        targets.iter().any(|t| t == TARGET),
        "the target is named:\n{why}"
    );
    let (ports, more) = listed(a, "ports");
    assert!(
        ports.len() >= 15 && ports.iter().all(|p| p.starts_with(proto)),
        "the scanned {proto} ports are named:\n{why}"
    );
    let count = a["count"].as_u64().unwrap_or(0);
    assert!(
        count >= ports.len() as u64 + more,
        "every probe counted ({count}):\n{why}"
    );
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn nmap_syn_scan_is_one_port_scan() {
    one_scan_one_alert(
        "nmap_syn_scan_is_one_port_scan",
        "ss",
        &["-sS", "-p", "1-200"],
        "tcp/",
        "80/tcp open",
    );
}

#[test]
fn nmap_connect_scan_is_one_port_scan() {
    one_scan_one_alert(
        "nmap_connect_scan_is_one_port_scan",
        "st",
        &["-sT", "-p", "1-200"],
        "tcp/",
        "80/tcp open",
    );
}

#[test]
fn nmap_udp_scan_is_one_port_scan() {
    // Fewer ports: nmap paces UDP probes even when every closed port answers.
    one_scan_one_alert(
        "nmap_udp_scan_is_one_port_scan",
        "su",
        &["-sU", "-p", "1-100"],
        "udp/",
        "53/udp open",
    );
}

#[test]
fn nmap_fin_scan_is_one_port_scan() {
    // A FIN to an open port gets no answer (open|filtered), to a closed one a RST.
    one_scan_one_alert(
        "nmap_fin_scan_is_one_port_scan",
        "sf",
        &["-sF", "-p", "1-200"],
        "tcp/",
        "80/tcp open|filtered",
    );
}

/// Port 80 of 40 addresses of the target: one horizontal port_scan by the scanner.
#[test]
fn nmap_sweep_of_one_port_is_one_port_scan() {
    let test = "nmap_sweep_of_one_port_is_one_port_scan";
    if !can_run(test, true) {
        return;
    }
    let t0 = Instant::now();
    let net = Net::new("hz");
    // 10.231.0.100 .. 10.231.0.139, every one the target's.
    let hosts: Vec<String> = (100..140).map(|y| format!("10.231.0.{y}")).collect();
    for h in &hosts {
        ip(&[
            "-n",
            &net.tgt_ns,
            "addr",
            "add",
            &format!("{h}/24"),
            "dev",
            &net.tgt_if,
        ]);
    }
    let _listener = Bg::start(net.target("python3").args(["-c", LISTENER]), "listener");
    let run = Run::new("hz");
    let sensor = run.start(&net);
    let mut nmap = net.scanner("nmap");
    nmap.args(["-sS", "-p", "80", "-T4", "--max-retries", "1", "-n", "-Pn"])
        .arg("10.231.0.100-139");
    let report = output(nmap, "nmap");
    run.stop(sensor);
    assert!(
        report.contains("40 IP addresses (40 hosts up)"),
        "nmap swept every address:\n{report}"
    );
    let rows = run.alerts();
    let why = run.report();
    assert_eq!(rows.len(), 1, "one sweep is exactly one alert:\n{why}");
    let a = &rows[0];
    assert_eq!(s(a, "kind"), "port_scan", "{why}");
    assert_eq!(s(a, "src_ip"), SCANNER, "the scanner is the source:\n{why}");
    assert_eq!(s(a, "ports"), "tcp/80", "the one port swept:\n{why}");
    let (targets, more) = listed(a, "targets");
    assert!(
        targets.len() >= 10 && targets.iter().all(|t| hosts.contains(t)),
        "the swept addresses are named:\n{why}"
    );
    assert!(
        targets.len() as u64 + more >= 30,
        "every swept address counted ({} named, +{more}):\n{why}",
        targets.len()
    );
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// 60 wrong FTP passwords, a connection each, against a real FTP server: one brute_force
/// alert on tcp/21 of the server, and no port_scan.
#[test]
fn ftp_password_guessing_is_one_brute_force() {
    let test = "ftp_password_guessing_is_one_brute_force";
    if !can_run(test, false) {
        return;
    }
    let Some(py_ftpd) = python_with_pyftpdlib() else {
        skip(
            test,
            "python3 cannot import pyftpdlib (`cargo xtask setup` installs python3-pyftpdlib)",
        );
        return;
    };
    let t0 = Instant::now();
    let net = Net::new("bf");
    let run = Run::new("bf");
    let root = run.dir.join("ftp");
    std::fs::create_dir_all(&root).expect("ftp root");
    let _ftpd = Bg::start(
        net.target(py_ftpd)
            .args(["-c", FTP_SERVER, TARGET])
            .arg(&root),
        "ftp server",
    );
    let sensor = run.start(&net);
    let mut guesser = net.scanner("python3");
    guesser.args(["-c", FTP_GUESSER, TARGET, "60"]);
    let said = output(guesser, "ftp guesser");
    run.stop(sensor);
    assert_eq!(said.trim(), "refused 60", "every guess was refused");
    let rows = run.alerts();
    let why = run.report();
    assert!(
        rows.iter().all(|a| s(a, "kind") != "port_scan"),
        "logins answered are no scan:\n{why}"
    );
    assert_eq!(
        rows.len(),
        1,
        "one guessing run is exactly one alert:\n{why}"
    );
    let a = &rows[0];
    assert_eq!(s(a, "kind"), "brute_force", "{why}");
    assert_eq!(s(a, "src_ip"), SCANNER, "the guesser is the source:\n{why}");
    assert_eq!(s(a, "targets"), TARGET, "the server is the target:\n{why}");
    assert_eq!(s(a, "ports"), "tcp/21", "{why}");
    let count = a["count"].as_u64().unwrap_or(0);
    assert!(count >= 30, "the guesses counted ({count}):\n{why}");
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// 200 MB over one connection, `client_mode` being the client's part (`send`: an upload,
/// `recv`: a download); returns the run, its alerts judged by the caller.
fn transfer(net: &Net, name: &str, client_mode: &str) -> Run {
    const BYTES: u64 = 200_000_000;
    let server_mode = if client_mode == "send" {
        "recv"
    } else {
        "send"
    };
    let n = BYTES.to_string();
    let mut sink = Bg::start(
        net.target("python3")
            .args(["-c", SINK, TARGET, "9000", server_mode, &n]),
        "sink",
    );
    let run = Run::new(name);
    let sensor = run.start(net);
    let mut client = net.scanner("python3");
    client.args(["-c", CLIENT, TARGET, "9000", client_mode, &n]);
    let said = output(client, "client");
    let st = sink.0.wait().expect("sink");
    assert!(st.success(), "sink: {st}");
    run.stop(sensor);
    let want = if client_mode == "recv" { BYTES } else { 2 };
    assert_eq!(said.trim(), format!("received {want}"), "the transfer ran");
    run
}

#[test]
fn a_200_mb_upload_is_one_exfiltration() {
    let test = "a_200_mb_upload_is_one_exfiltration";
    if !can_run(test, false) {
        return;
    }
    let t0 = Instant::now();
    let net = Net::new("up");
    let run = transfer(&net, "up", "send");
    let rows = run.alerts();
    let why = run.report();
    assert_eq!(rows.len(), 1, "one upload is exactly one alert:\n{why}");
    let a = &rows[0];
    assert_eq!(s(a, "kind"), "exfiltration", "{why}");
    assert_eq!(
        s(a, "src_ip"),
        SCANNER,
        "the uploader is the source:\n{why}"
    );
    assert_eq!(
        s(a, "targets"),
        TARGET,
        "the receiver is the target:\n{why}"
    );
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_200_mb_download_is_no_alert() {
    let test = "a_200_mb_download_is_no_alert";
    if !can_run(test, false) {
        return;
    }
    let t0 = Instant::now();
    let net = Net::new("dn");
    let run = transfer(&net, "dn", "recv");
    let rows = run.alerts();
    assert!(
        rows.is_empty(),
        "a download is no exfiltration, nor anything else:\n{}",
        run.report()
    );
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Web servers on four ports of the target: every path answers 200 with as many bytes as
/// its last component says (`/page/12000`), `/missing` 404.
const WEB: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/missing":
            self.send_error(404); return
        n = int(self.path.rsplit("/", 1)[-1])
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(b"x" * n)
    def log_message(self, *a): pass
servers = [http.server.ThreadingHTTPServer((sys.argv[1], p), H) for p in (80, 443, 8080, 8443)]
import threading
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"#;

/// A browser's day in small: 40 page loads with a pause to read each (0.05 to 0.4 s,
/// irregular), each a page and 8 resources fetched over connections of their own from the
/// four servers, sizes of a few to some hundred kilobytes, a missing resource now and then
/// and, twice, a mirror that is down (a refused connection).
const BROWSE: &str = r#"
import http.client, random, socket, sys, time
host = sys.argv[1]
rnd = random.Random(7)
ports = (80, 443, 8080, 8443)
fetched = refused = 0
for page in range(40):
    paths = ["/page/%d" % rnd.randint(2000, 60000)] + \
        ["/res/%d" % rnd.choice((300, 1500, 9000, 40000, 250000)) for _ in range(8)]
    if page % 7 == 3:
        paths[4] = "/missing"
    for i, path in enumerate(paths):
        c = http.client.HTTPConnection(host, ports[(page + i) % 4], timeout=10)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        fetched += 1
    if page in (11, 29):
        try:
            socket.create_connection((host, 81), timeout=2).close()
        except OSError:
            refused += 1
    time.sleep(rnd.uniform(0.05, 0.4))
print("fetched", fetched, "refused", refused)
"#;

#[test]
fn browsing_is_no_alert() {
    let test = "browsing_is_no_alert";
    if !can_run(test, false) {
        return;
    }
    let t0 = Instant::now();
    let net = Net::new("web");
    let _web = Bg::start(net.target("python3").args(["-c", WEB, TARGET]), "web");
    let run = Run::new("web");
    let sensor = run.start(&net);
    let mut client = net.scanner("python3");
    client.args(["-c", BROWSE, TARGET]);
    let said = output(client, "browser");
    run.stop(sensor);
    assert_eq!(said.trim(), "fetched 360 refused 2", "the browsing ran");
    let rows = run.alerts();
    assert!(
        rows.is_empty(),
        "browsing is no scan, guessing, exfiltration or beacon:\n{}",
        run.report()
    );
    // Not vacuous: every connection is a row the detectors saw.
    let conn = rusqlite::Connection::open(&run.db).expect("open db");
    let flows: i64 = conn
        .query_row(
            "SELECT count(*) FROM flows WHERE proto = 6 AND src_ip = ?1",
            [SCANNER],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(
        flows, 362,
        "the browser's connections, the refused two included"
    );
    eprintln!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}
