//! Live capture for real: two network namespaces joined by a veth pair, real TCP, UDP and
//! ICMP traffic over IPv4 and IPv6 between them, the sensor capturing on one end, and
//! tcpdump capturing the same end as the record tshark judges. Needs root.
mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Sensor, is_root, sensor_bin, skip, tcpload_bin, temp_dir,
    tshark::{self as tshark_conv, sensor_convs, tshark_convs},
};

/// Two namespaces and a veth pair, removed on drop.
struct Netns {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id();
        let n = Self {
            a: format!("sens-a-{id}"),
            b: format!("sens-b-{id}"),
        };
        ip(&["netns", "add", &n.a]);
        ip(&["netns", "add", &n.b]);
        ip(&[
            "link", "add", "veth-a", "netns", &n.a, "type", "veth", "peer", "name", "veth-b",
            "netns", &n.b,
        ]);
        for (ns, dev, v4, v6) in [
            (&n.a, "veth-a", "10.203.0.1/24", "fd00:203::1/64"),
            (&n.b, "veth-b", "10.203.0.2/24", "fd00:203::2/64"),
        ] {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev]);
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }

    fn exec(&self, ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn veth_capture_matches_tcpdump() {
    if !is_root() {
        skip(
            "veth_capture_matches_tcpdump",
            "needs root for network namespaces and packet sockets",
        );
        return;
    }
    let dir = temp_dir("veth");
    let net = Netns::new();
    let pcap = dir.join("tcpdump.pcap");
    let tcpdump = common::tcpdump(&["ip", "netns", "exec", &net.a], "veth-a", &pcap);

    let db = dir.join("flows.db");
    // The sensor runs inside namespace a, capturing only (the kernel hooks are tested
    // elsewhere; here the packets are the subject).
    let sensor = Sensor::start_with(
        net.exec(&net.a, &sensor_bin()),
        &[
            "--db",
            db.to_str().unwrap(),
            "--hooks",
            "none",
            "--interface",
            "veth-a",
        ],
    );

    // TCP over IPv4 and IPv6: tcpload's server in a, client in b.
    let mut server = net
        .exec(&net.a, &tcpload_bin())
        .args([
            "server",
            "--v4",
            "10.203.0.1:0",
            "--v6",
            "[fd00:203::1]:0",
            "--conns",
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut out = BufReader::new(server.stdout.take().expect("stdout"));
    let mut listen = String::new();
    out.read_line(&mut listen).expect("LISTEN");
    let addrs: Vec<&str> = listen.split_whitespace().collect();
    let client = net
        .exec(&net.b, &tcpload_bin())
        .args([
            "client",
            "--v4",
            addrs[1],
            "--v6",
            addrs[2],
            "--per-family",
            "10",
            "--threads",
            "2",
        ])
        .output()
        .expect("client");
    assert!(client.status.success(), "{client:?}");
    assert!(server.wait().expect("server").success());
    // With no kernel view there is no twin to wait for: each connection's row is written
    // within the packet table's close wait, a flush (1 s) and the stages' ticks.
    let closed = Instant::now();
    let tcp_rows = || {
        common::count_now(
            &db,
            "SELECT count(*) FROM flows WHERE proto = 6 AND end_reason != 'shutdown'",
        )
    };
    while tcp_rows() < 20 && closed.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let latency = closed.elapsed();
    eprintln!("rows of the 20 connections written {latency:?} after the last close");
    assert_eq!(
        tcp_rows(),
        20,
        "every connection written while the sensor runs"
    );
    assert!(
        latency < Duration::from_millis(2_500),
        "rows of closed connections took {latency:?} (packets only: no merge wait)"
    );

    // UDP both families, and ICMP echo both families.
    let udp = "import socket\n\
               for fam, host in ((socket.AF_INET, '10.203.0.1'), (socket.AF_INET6, 'fd00:203::1')):\n\
               \x20   s = socket.socket(fam, socket.SOCK_DGRAM)\n\
               \x20   for i in range(1, 8): s.sendto(b'u' * (i * 100), (host, 9999))\n";
    let st = net
        .exec(&net.b, std::path::Path::new("python3"))
        .args(["-c", udp])
        .status()
        .expect("python3");
    assert!(st.success());
    for target in ["10.203.0.1", "fd00:203::1"] {
        let st = net
            .exec(&net.b, std::path::Path::new("ping"))
            .args(["-c", "3", "-i", "0.2", "-q", target])
            .stdout(Stdio::null())
            .status()
            .expect("ping");
        assert!(st.success(), "ping {target}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = sensor.stop();
    assert!(status.success(), "sensor: {status}");
    common::stop(tcpdump);

    // The traffic this test made: both ends on the veth's own prefixes. (The kernel's own
    // link-local chatter, router and multicast listener messages, comes at times of its
    // choosing, which tcpdump's longer window may or may not include.)
    let ours = |k: &tshark_conv::Conv| {
        [k.1.0, k.2.0].iter().all(|ip| {
            let s = ip.to_string();
            s.starts_with("10.203.0.") || s.starts_with("fd00:203::")
        })
    };
    let mut want = tshark_convs(&pcap);
    let mut got = sensor_convs(&db);
    want.retain(|k, _| ours(k));
    got.retain(|k, _| ours(k));
    let protos: std::collections::BTreeSet<u8> = want.keys().map(|k| k.0).collect();
    assert!(
        [1u8, 6, 17, 58].iter().all(|p| protos.contains(p)),
        "traffic of every kind was made: {protos:?}"
    );
    let differ: Vec<String> = want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| want.get(k) != got.get(k))
        .map(|k| format!("{k:?}: tcpdump {:?} sensor {:?}", want.get(k), got.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "the sensor's flows match tcpdump's capture, per conversation:\n{}",
        differ.join("\n")
    );
    // Rows, not only sums: one row per TCP connection tcpdump saw, the SYN's sender as
    // its source (client and server close in every way tcpload knows, FINs crossing too).
    let (connections, problems) = common::tshark::identity_problems(&pcap, &db);
    assert_eq!(connections, 20, "tcpdump saw every connection");
    assert!(
        problems.is_empty(),
        "one row per connection, source = SYN sender:\n{}",
        problems.join("\n")
    );
    let dropped = log
        .iter()
        .find(|l| l.contains("capture stopped"))
        .expect("capture summary");
    assert!(
        dropped.contains("queue_dropped=0") && dropped.contains("kernel_dropped=0"),
        "{dropped}"
    );
}
