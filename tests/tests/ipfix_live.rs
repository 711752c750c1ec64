//! IPFIX from a live `sensor run` (issue 12), as root: real TCP connections (IPv4 and
//! IPv6) and a UDP exchange on loopback, captured and attributed, exported to nfdump's
//! `nfcapd` on IPv4 and IPv6 loopback; what `nfdump` reads back equals the rows in the
//! sensor's SQLite, record for record. And a UDP collector restarted mid-run: the new one
//! learns the templates within the refresh period and decodes every flow after it.
mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use common::{
    Sensor,
    collectors::{Flow, Nfcapd, nfdump_flows, sent_and_dropped, sqlite_flows},
    is_root, metric_required, skip, temp_dir,
};

/// One test at a time: both capture on lo and count what crosses it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `n` connections to a server on `bind`, each with its own payload sizes both ways; the
/// client closes first. Returns the server's address.
fn tcp_connections(bind: &str, n: usize, seed: usize) -> SocketAddr {
    let listener = TcpListener::bind((bind, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = listener.accept().expect("accept");
            let mut len = [0u8; 2];
            s.read_exact(&mut len).expect("read len");
            let want = usize::from(u16::from_be_bytes(len));
            let mut buf = vec![0u8; want];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&vec![7u8; want / 2 + 1]).expect("write");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("read EOF");
        }
    });
    for i in 0..n {
        let want = (i * 37 + seed * 101) % 1400 + 1;
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&(want as u16).to_be_bytes())
            .expect("write len");
        c.write_all(&vec![1u8; want]).expect("write");
        let mut back = vec![0u8; want / 2 + 1];
        c.read_exact(&mut back).expect("read back");
        c.shutdown(Shutdown::Write).expect("shutdown");
        drop(c);
    }
    server.join().expect("server");
    addr
}

/// Five datagrams each way between two sockets on 127.0.0.1; returns the server's port.
fn udp_exchange() -> u16 {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = server.local_addr().unwrap();
    let mut buf = [0u8; 1500];
    for i in 0..5 {
        client.send_to(&vec![3u8; 100 + i], to).expect("send");
        let (_, from) = server.recv_from(&mut buf).expect("recv");
        server.send_to(&[4u8; 50], from).expect("send back");
        client.recv_from(&mut buf).expect("recv back");
    }
    to.port()
}

/// The flows of `records` whose responder port is one of `ports`, counted as a multiset.
fn of_ports(records: &[Flow], ports: &[u16]) -> BTreeMap<Flow, usize> {
    let mut m = BTreeMap::new();
    for f in records.iter().filter(|f| ports.contains(&f.key.4)) {
        *m.entry(f.clone()).or_default() += 1;
    }
    m
}

/// `sensor run --interface lo` with `config` in `dir/sensor.toml`, its database and final
/// metrics in `dir`: the sensor, the database and the metrics file.
fn start_sensor(dir: &Path, config: &str) -> (Sensor, PathBuf, PathBuf) {
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, config).unwrap();
    let (db, prom) = (dir.join("flows.db"), dir.join("final.prom"));
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (dbs, proms, cfgs) = (path(&db), path(&prom), path(&cfg));
    let sensor = Sensor::start(&[
        "--db",
        &dbs,
        "--metrics-on-exit",
        &proms,
        "--config",
        &cfgs,
        "--interface",
        "lo",
    ]);
    (sensor, db, prom)
}

#[test]
fn live_run_to_nfcapd_equals_the_database() {
    let name = "live_run_to_nfcapd_equals_the_database";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        skip(name, "needs root to capture on lo and load the hooks");
        return;
    }
    let dir = temp_dir("ipfix-live");
    let (d4, d6) = (dir.join("nf4"), dir.join("nf6"));
    std::fs::create_dir_all(&d4).unwrap();
    std::fs::create_dir_all(&d6).unwrap();
    let c4 = Nfcapd::start("127.0.0.1", &d4);
    let c6 = Nfcapd::start("::1", &d6);
    let urls = [
        format!("udp://127.0.0.1:{}", c4.port),
        format!("udp://[::1]:{}", c6.port),
    ];
    let (sensor, db, prom) = start_sensor(
        &dir,
        &format!(
            "[ipfix]\ncollectors = [\"{}\", \"{}\"]\nflush_ms = 100\n",
            urls[0], urls[1]
        ),
    );
    let p4 = tcp_connections("127.0.0.1", 30, 1).port();
    let p6 = tcp_connections("::1", 30, 2).port();
    let pu = udp_exchange();
    // Both ends' closes read and merged with the packet view.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, log) = sensor.stop();
    assert!(status.success(), "{}", log.join("\n"));
    std::thread::sleep(Duration::from_millis(300));
    let logs = [c4.stop(), c6.stop()];

    let m = std::fs::read_to_string(&prom).expect("final metrics");
    let rows = sqlite_flows(&db);
    let ports = [p4, p6, pu];
    let ours = of_ports(&rows, &ports);
    let n: usize = ours.values().sum();
    // One row per connection, and one for the UDP exchange.
    assert_eq!(n, 61, "rows of the test's traffic: {ours:#?}");
    let by_proto = |p: u8| ours.keys().filter(|f| f.key.0 == p).count();
    assert_eq!((by_proto(6), by_proto(17)), (60, 1));
    for (url, (d, log)) in urls.iter().zip([&d4, &d6].into_iter().zip(&logs)) {
        let (sent, dropped) = sent_and_dropped(&m, url);
        assert_eq!(dropped, 0, "{url}: drops");
        let records = nfdump_flows(d);
        assert_eq!(
            records.len(),
            sent,
            "{url}: nfcapd kept every record\n{log}"
        );
        // Every flow the sensor finished is a record: its own rows and the amendments.
        let amendments = metric_required(&m, "sensor_flow_amendments_total") as usize;
        assert_eq!(sent, rows.len() + amendments, "{url}");
        // The test's flows: the same 5-tuples, times to the millisecond, packets and
        // bytes each way, as many of each.
        let theirs = of_ports(&records, &ports);
        let differ: Vec<(&Flow, Option<&usize>, usize)> = ours
            .iter()
            .filter(|(f, n)| theirs.get(*f) != Some(n))
            .map(|(f, n)| (f, theirs.get(f), *n))
            .collect();
        assert!(
            differ.is_empty(),
            "{url}: rows the collector does not hold as they are: {differ:#?}\nit holds: {theirs:#?}"
        );
        assert_eq!(theirs.len(), ours.len(), "{url}: no more records than rows");
        // The counts are real: every TCP row has packets and payload both ways.
        for f in ours.keys().filter(|f| f.key.0 == 6) {
            assert!(f.counts.iter().all(|c| *c > 0), "{f:?}");
        }
    }
}

/// `n` connections to a fresh server on 127.0.0.1; its port.
fn batch(n: usize, seed: usize) -> u16 {
    tcp_connections("127.0.0.1", n, seed).port()
}

fn records_to(d: &Path, port: u16) -> Vec<Flow> {
    nfdump_flows(d)
        .into_iter()
        .filter(|f| f.key.4 == port)
        .collect()
}

#[test]
fn udp_collector_restarted_learns_the_templates_within_the_refresh_period() {
    let name = "udp_collector_restarted_learns_the_templates_within_the_refresh_period";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        skip(name, "needs root to capture on lo and load the hooks");
        return;
    }
    let dir = temp_dir("ipfix-restart-udp");
    let (d1, d2) = (dir.join("first"), dir.join("second"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let first = Nfcapd::start("127.0.0.1", &d1);
    let port = first.port;
    let url = format!("udp://127.0.0.1:{port}");
    // Templates again every second, and never by message count: only the timer can teach
    // the second collector.
    let (sensor, db, prom) = start_sensor(
        &dir,
        &format!(
            "[ipfix]\ncollectors = [\"{url}\"]\nflush_ms = 100\ntemplate_refresh_s = 1\n\
             template_every_messages = 1000000000\n"
        ),
    );
    let before = batch(10, 1);
    std::thread::sleep(Duration::from_millis(1000));
    let log1 = first.stop();
    let second = Nfcapd::start_on("127.0.0.1", port, &d2);
    // One refresh period, and a little: the templates have gone out again.
    std::thread::sleep(Duration::from_millis(1300));
    let after = batch(10, 2);
    std::thread::sleep(Duration::from_millis(1000));
    let (status, log) = sensor.stop();
    assert!(status.success(), "{}", log.join("\n"));
    std::thread::sleep(Duration::from_millis(300));
    let log2 = second.stop();

    let rows = sqlite_flows(&db);
    let rows_of = |p: u16| rows.iter().filter(|f| f.key.4 == p).count();
    assert_eq!((rows_of(before), rows_of(after)), (10, 10));
    assert_eq!(
        records_to(&d1, before).len(),
        10,
        "the first collector: {log1}"
    );
    let got = records_to(&d2, after);
    assert_eq!(
        got.len(),
        10,
        "the restarted collector decoded every flow after one refresh period: {log2}"
    );
    let mut want: Vec<Flow> = rows.into_iter().filter(|f| f.key.4 == after).collect();
    let mut got = got;
    want.sort();
    got.sort();
    assert_eq!(got, want, "as the rows are");
    let m = std::fs::read_to_string(&prom).expect("final metrics");
    let (sent, _) = sent_and_dropped(&m, &url);
    assert!(sent >= 20, "{sent}");
}
