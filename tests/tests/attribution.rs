//! Process attribution, end to end and for real (issue 15): real programs on loopback with
//! the sensor attached to this kernel, and every row's processes checked against what the
//! programs themselves report (their pids, the ports they served).
//!
//! - a pre-fork server (one listener, four workers that each `accept()`), and four
//!   processes with `SO_REUSEPORT` listeners on one port: each row names the worker that
//!   accepted;
//! - UDP over IPv4 and IPv6, connected and unconnected, between two processes, a resolver
//!   against a dnsmasq started before the sensor, and `ping`;
//! - 500 processes that each connect once and exit at once;
//! - a client in a cgroup the test makes, under another uid.
//!
//! Needs root (it loads eBPF and makes cgroups); CI runs as root.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use common::{Sensor, is_root, metric_required, services::Dnsmasq, skip, temp_dir};

/// One sensor test at a time: they share the machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const CONNS: usize = 200;

/// One end of a row: pid, comm, uid, unit, attr.
#[derive(Debug, Clone, PartialEq, Eq)]
struct End {
    pid: Option<i64>,
    comm: Option<String>,
    uid: Option<i64>,
    unit: Option<String>,
    attr: Option<String>,
}

#[derive(Debug, Clone)]
struct Row {
    src_ip: String,
    src_port: i64,
    src: End,
    dst: End,
}

fn rows(db: &Path, filter: &str) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let sql = format!(
        "SELECT src_ip, src_port, \
         src_pid, src_comm, src_uid, src_unit, src_attr, \
         dst_pid, dst_comm, dst_uid, dst_unit, dst_attr FROM flows WHERE {filter}"
    );
    let mut st = conn.prepare(&sql).expect("prepare");
    st.query_map([], |r| {
        let end = |i: usize| -> rusqlite::Result<End> {
            Ok(End {
                pid: r.get(i)?,
                comm: r.get(i + 1)?,
                uid: r.get(i + 2)?,
                unit: r.get(i + 3)?,
                attr: r.get(i + 4)?,
            })
        };
        Ok(Row {
            src_ip: r.get(0)?,
            src_port: r.get(1)?,
            src: end(2)?,
            dst: end(7)?,
        })
    })
    .expect("query")
    .map(|r| r.expect("row"))
    .collect()
}

fn python(script: &str, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg("-c").arg(script).args(args);
    c
}

/// A free TCP port on 127.0.0.1 (and, for the tests here, on ::1).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts `sensor run` on a database in `dir`, its metrics written to `dir/final.prom` at
/// the end.
fn start_sensor(dir: &Path, capture: bool) -> (Sensor, PathBuf) {
    let db = dir.join("flows.db");
    let prom = dir.join("final.prom");
    let mut args = vec![
        "--db",
        db.to_str().expect("utf-8 path"),
        "--metrics-on-exit",
        prom.to_str().expect("utf-8 path"),
    ];
    if capture {
        args.extend(["--interface", "lo"]);
    } else {
        args.push("--no-capture");
    }
    (Sensor::start(&args), db)
}

/// Stops the sensor, checks it exited cleanly and lost nothing; its final metrics.
fn stop_sensor(s: Sensor, dir: &Path) -> String {
    let (st, log) = s.stop();
    assert!(st.success(), "sensor exit {st}:\n{}", log.join("\n"));
    let prom = std::fs::read_to_string(dir.join("final.prom")).expect("final metrics");
    for series in [
        "sensor_ringbuf_dropped_events_total",
        "sensor_store_dropped_rows_total",
        "sensor_attr_dgram_reports_total{result=\"dropped\"}",
    ] {
        assert_eq!(metric_required(&prom, series), 0.0, "{series}");
    }
    prom
}

/// Server side of the TCP tests: `mode` prefork (listen, then fork 4 workers that accept)
/// or reuseport (4 processes, each with its own SO_REUSEPORT listener). Prints "parent PID"
/// and "worker PID" lines, "ready", then "PID PORT" for every connection a worker accepted,
/// and "done" after `n`.
const SERVER: &str = r#"
import os, socket, sys, time
mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mode == "reuseport":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(512)
    return s
ls = listener() if mode == "prefork" else None
r, w = os.pipe()
kids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        me = ls if ls is not None else listener()
        os.write(w, b"x")
        while True:
            c, a = me.accept()
            c.recv(16); c.sendall(b"y"); c.close()
            os.write(w, ("%d %d\n" % (os.getpid(), a[1])).encode())
    kids.append(pid)
os.close(w)
print("parent", os.getpid(), flush=True)
for k in kids:
    print("worker", k, flush=True)
f = os.fdopen(r, "rb")
f.read(4)
print("ready", flush=True)
seen = 0
while seen < n:
    line = f.readline()
    if not line:
        break
    sys.stdout.write(line.decode()); sys.stdout.flush()
    seen += 1
print("done", flush=True)
for k in kids:
    os.kill(k, 9)
"#;

/// Makes `n` connections to 127.0.0.1:`port`, one after another, a byte each way.
const CLIENT: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"x"); s.recv(16); s.close()
"#;

fn accepting_workers(mode: &str) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("attr-{mode}");
    if !is_root() {
        skip(&name, "needs root to load eBPF programs (CI runs as root)");
        return;
    }
    let dir = temp_dir(&name);
    let (sensor, db) = start_sensor(&dir, false);
    let port = free_port();
    let mut server = python(SERVER, &[mode, &port.to_string(), &CONNS.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut out = BufReader::new(server.stdout.take().expect("stdout"));
    let (mut parent, mut workers) = (0i64, BTreeSet::new());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).expect("read") > 0, "server ended");
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["parent", p] => parent = p.parse().expect("pid"),
            ["worker", p] => {
                workers.insert(p.parse::<i64>().expect("pid"));
            }
            ["ready"] => break,
            _ => panic!("server said {line:?}"),
        }
    }
    server.stdout = None;
    let mut client = python(CLIENT, &[&port.to_string(), &CONNS.to_string()])
        .spawn()
        .expect("spawn client");
    let client_pid = i64::from(client.id());
    // The rest of the server's output: who served which port.
    let mut served = BTreeMap::new();
    for line in out.lines().map_while(Result::ok) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["done"] => break,
            [pid, p] => {
                served.insert(
                    p.parse::<i64>().expect("port"),
                    pid.parse::<i64>().expect("pid"),
                );
            }
            _ => panic!("server said {line:?}"),
        }
    }
    assert!(client.wait().expect("client").success());
    let _ = server.wait();
    std::thread::sleep(Duration::from_millis(500));
    stop_sensor(sensor, &dir);

    assert_eq!(served.len(), CONNS, "the workers served every connection");
    let rows = rows(&db, &format!("proto = 6 AND dst_port = {port}"));
    assert_eq!(rows.len(), CONNS, "one row per connection");
    let mut by_worker: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &rows {
        let worker = served
            .get(&r.src_port)
            .unwrap_or_else(|| panic!("row for a port no worker served: {r:?}"));
        assert_eq!(r.dst.pid, Some(*worker), "the accepting worker: {r:?}");
        assert_ne!(r.dst.pid, Some(parent), "not the listener's maker: {r:?}");
        assert_eq!(r.dst.attr.as_deref(), Some("accept"), "{r:?}");
        assert_eq!(r.dst.comm.as_deref(), Some("python3"), "{r:?}");
        assert_eq!(r.dst.uid, Some(0), "{r:?}");
        assert_eq!(r.src.pid, Some(client_pid), "the client: {r:?}");
        assert_eq!(r.src.attr.as_deref(), Some("connect"), "{r:?}");
        *by_worker.entry(*worker).or_default() += 1;
    }
    assert!(
        by_worker.keys().all(|w| workers.contains(w)),
        "{by_worker:?} vs {workers:?}"
    );
    // The kernel spreads connections over the workers: more than one served, so a single
    // right pid by chance cannot pass.
    assert!(by_worker.len() >= 2, "one worker served all: {by_worker:?}");
}

#[test]
fn prefork_workers_are_the_accepting_processes() {
    accepting_workers("prefork");
}

#[test]
fn reuseport_listeners_are_the_accepting_processes() {
    accepting_workers("reuseport");
}

/// UDP server: binds v4 and v6 sockets, answers every datagram, and prints "PORT4 PORT6"
/// then "done" when told to stop by a datagram "stop".
const UDP_SERVER: &str = r#"
import socket, select
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind(("127.0.0.1", 0))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s6.bind(("::1", 0))
print(s4.getsockname()[1], s6.getsockname()[1], flush=True)
stop = 0
while stop < 2:
    for s in select.select([s4, s6], [], [])[0]:
        d, a = s.recvfrom(100)
        if d == b"stop":
            stop += 1
        else:
            s.sendto(b"r" + d, a)
"#;

/// UDP client: per family, one unconnected and one connected socket, each a query and
/// its answer; prints "FAMILY KIND LOCALPORT".
const UDP_CLIENT: &str = r#"
import socket, sys
p4, p6 = int(sys.argv[1]), int(sys.argv[2])
for fam, host, port in ((socket.AF_INET, "127.0.0.1", p4), (socket.AF_INET6, "::1", p6)):
    u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(5)
    u.sendto(b"q", (host, port)); u.recvfrom(100)
    c = socket.socket(fam, socket.SOCK_DGRAM); c.settimeout(5)
    c.connect((host, port)); c.send(b"q"); c.recv(100)
    print(fam, "unconnected", u.getsockname()[1], flush=True)
    print(fam, "connected", c.getsockname()[1], flush=True)
for host, port in (("127.0.0.1", p4), ("::1", p6)):
    socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM).sendto(b"stop", (host, port))
"#;

/// An A query for `name` to 127.0.0.1:`port`, by hand (no resolver library here): prints
/// the local port and the answer's rcode.
const RESOLVER: &str = r#"
import socket, struct, sys
port, name = int(sys.argv[1]), sys.argv[2]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for label in name.split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, ("127.0.0.1", port))
a, _ = s.recvfrom(512)
print(s.getsockname()[1], a[3] & 0x0f, flush=True)
"#;

#[test]
fn datagram_flows_name_both_processes() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = "attr-udp";
    if !is_root() {
        skip(
            name,
            "needs root to load eBPF programs and capture (CI runs as root)",
        );
        return;
    }
    let dir = temp_dir(name);
    // Started before the sensor: its socket is older than the hooks, named by the scan.
    let dns = Dnsmasq::start(&dir, &[("192.0.2.7", "host.test")]);
    let dns_port: u16 = dns.addr.rsplit(':').next().unwrap().parse().unwrap();
    let (sensor, db) = start_sensor(&dir, true);

    let mut server = python(UDP_SERVER, &[])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn udp server");
    let server_pid = i64::from(server.id());
    let mut out = BufReader::new(server.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ports");
    let ports: Vec<String> = line.split_whitespace().map(String::from).collect();
    let client = python(UDP_CLIENT, &[&ports[0], &ports[1]])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn udp client");
    let client_pid = i64::from(client.id());
    let cout = client.wait_with_output().expect("client");
    assert!(cout.status.success(), "udp client failed");
    assert!(server.wait().expect("server").success());
    let client_ports: Vec<i64> = String::from_utf8_lossy(&cout.stdout)
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(client_ports.len(), 4);

    let resolver = python(RESOLVER, &[&dns_port.to_string(), "host.test"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn resolver");
    let resolver_pid = i64::from(resolver.id());
    let rout = resolver.wait_with_output().expect("resolver");
    assert!(rout.status.success(), "resolver failed");
    let rline = String::from_utf8_lossy(&rout.stdout);
    let resolver_port: i64 = rline.split_whitespace().next().unwrap().parse().unwrap();

    let ping = Command::new("ping")
        .args(["-c", "3", "-i", "0.2", "127.0.0.1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ping (iputils-ping)");
    let ping_pid = i64::from(ping.id());
    assert!(ping.wait_with_output().expect("ping").status.success());
    // Datagram flows end by idle timeout; stopping writes them.
    std::thread::sleep(Duration::from_millis(500));
    let prom = stop_sensor(sensor, &dir);
    // 4 client sockets, the resolver, ping (and the stop datagrams' flows).
    let named = metric_required(&prom, "sensor_attr_dgram_flows_total{result=\"named\"}");
    assert!(named >= 6.0, "named datagram flows: {named}");
    let dns_pid = i64::from(dns.pid());

    let udp = rows(
        &db,
        &format!(
            "proto = 17 AND dst_port IN ({}, {}) AND src_port IN ({})",
            ports[0],
            ports[1],
            client_ports
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    assert_eq!(udp.len(), 4, "one flow per client socket: {udp:#?}");
    let got: BTreeSet<i64> = udp.iter().map(|r| r.src_port).collect();
    assert_eq!(got, client_ports.iter().copied().collect(), "{udp:#?}");
    for r in &udp {
        assert_eq!(r.src.pid, Some(client_pid), "sender: {r:?}");
        assert_eq!(r.src.attr.as_deref(), Some("send"), "{r:?}");
        assert_eq!(r.dst.pid, Some(server_pid), "receiver: {r:?}");
        assert_eq!(r.dst.attr.as_deref(), Some("recv"), "{r:?}");
        assert_eq!(r.src.comm.as_deref(), Some("python3"), "{r:?}");
        assert_eq!((r.src.uid, r.dst.uid), (Some(0), Some(0)), "{r:?}");
    }
    assert!(udp.iter().any(|r| r.src_ip == "::1") && udp.iter().any(|r| r.src_ip == "127.0.0.1"));

    let dns_rows = rows(
        &db,
        &format!("proto = 17 AND dst_port = {dns_port} AND src_port = {resolver_port}"),
    );
    assert_eq!(dns_rows.len(), 1, "{dns_rows:#?}");
    let r = &dns_rows[0];
    assert_eq!(r.src.pid, Some(resolver_pid), "{r:?}");
    assert_eq!(
        r.dst.pid,
        Some(dns_pid),
        "dnsmasq, named by the scan: {r:?}"
    );
    assert_eq!(r.dst.comm.as_deref(), Some("dnsmasq"), "{r:?}");
    assert_eq!(r.dst.attr.as_deref(), Some("proc-scan"), "{r:?}");

    let icmp = rows(
        &db,
        "proto = 1 AND src_ip = '127.0.0.1' AND dst_ip = '127.0.0.1'",
    );
    assert_eq!(icmp.len(), 1, "ping is one ICMP flow: {icmp:#?}");
    assert_eq!(icmp[0].src.pid, Some(ping_pid), "{:?}", icmp[0]);
    assert_eq!(icmp[0].src.comm.as_deref(), Some("ping"), "{:?}", icmp[0]);
    drop(dns);
}

#[test]
fn short_lived_processes_are_all_named() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = "attr-short-lived";
    if !is_root() {
        skip(name, "needs root to load eBPF programs (CI runs as root)");
        return;
    }
    const N: usize = 500;
    let dir = temp_dir(name);
    let (sensor, db) = start_sensor(&dir, false);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..N {
            let (mut c, _) = listener.accept().expect("accept");
            let mut b = [0u8; 1];
            let _ = c.read(&mut b);
        }
    });
    let mut pids = BTreeSet::new();
    for _ in 0..N {
        // Connects, writes a byte and exits at once: nothing is left to find in /proc.
        let mut c = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf x >&3"))
            .spawn()
            .expect("spawn bash");
        pids.insert(i64::from(c.id()));
        assert!(c.wait().expect("bash").success());
    }
    acceptor.join().expect("acceptor");
    std::thread::sleep(Duration::from_millis(500));
    stop_sensor(sensor, &dir);
    let rows = rows(&db, &format!("proto = 6 AND dst_port = {port}"));
    assert_eq!(rows.len(), N, "one row per connection");
    let named: BTreeSet<i64> = rows.iter().filter_map(|r| r.src.pid).collect();
    assert_eq!(named, pids, "every process named by its own pid");
    for r in &rows {
        assert_eq!(r.src.comm.as_deref(), Some("bash"), "{r:?}");
        assert_eq!(r.src.attr.as_deref(), Some("connect"), "{r:?}");
    }
}

/// The cgroup v2 root, from /proc/self/mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut f = left.split_whitespace().skip(3);
        let (root, point) = (f.next()?, f.next()?);
        (right.starts_with("cgroup2 ") && root == "/").then(|| PathBuf::from(point))
    })
}

/// A cgroup this test makes, removed (its processes moved out first) when dropped.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a Python client in cgroup `cg` as uid 65534: one connection to `port`.
fn client_in(cg: &Path, port: u16) {
    let script = format!(
        "import os, socket, encodings.idna\n\
         open({procs:?}, 'w').write(str(os.getpid()))\n\
         os.setgid(65534); os.setuid(65534)\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'x'); s.recv(1); s.close()\n",
        procs = cg.join("cgroup.procs").display().to_string(),
    );
    let st = python(&script, &[]).status().expect("client");
    assert!(st.success(), "client in {} failed", cg.display());
}

#[test]
fn clients_in_cgroups_are_named_by_them_and_their_uid() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = "attr-cgroup";
    if !is_root() {
        skip(
            name,
            "needs root to load eBPF programs and make cgroups (CI runs as root)",
        );
        return;
    }
    let Some(root) = cgroup2_root() else {
        skip(name, "no cgroup v2 hierarchy is mounted");
        return;
    };
    let dir = temp_dir(name);
    let top = format!("sensor-test-{}", std::process::id());
    // Dropped in reverse: the leaves, then their parent.
    let parent = TestCgroup(root.join(&top));
    let scope = TestCgroup(root.join(&top).join("client.scope"));
    let plain = TestCgroup(root.join(&top).join("plain"));
    for cg in [&scope, &plain] {
        std::fs::create_dir_all(&cg.0).expect("make the test cgroup");
    }
    let (sensor, db) = start_sensor(&dir, true);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut c, _) = listener.accept().expect("accept");
            let mut b = [0u8; 1];
            let _ = c.read(&mut b);
            let _ = c.write_all(b"y");
        }
    });
    client_in(&scope.0, port);
    client_in(&plain.0, port);
    acceptor.join().expect("acceptor");
    std::thread::sleep(Duration::from_millis(500));
    stop_sensor(sensor, &dir);
    let mut rows = rows(&db, &format!("proto = 6 AND dst_port = {port}"));
    rows.sort_by_key(|r| r.src.pid);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let units: BTreeSet<Option<String>> = rows.iter().map(|r| r.src.unit.clone()).collect();
    // A `.scope` under no user manager is named by that unit; a cgroup without one by its
    // path.
    let want: BTreeSet<Option<String>> = [
        Some("client.scope".to_string()),
        Some(format!("/{top}/plain")),
    ]
    .into();
    assert_eq!(units, want, "{rows:#?}");
    for r in &rows {
        assert_eq!(r.src.uid, Some(65534), "the client's uid: {r:?}");
        assert_eq!(r.dst.uid, Some(0), "{r:?}");
        assert_ne!(r.dst.unit, r.src.unit, "{r:?}");
    }
    drop(plain);
    drop(scope);
    drop(parent);
}
