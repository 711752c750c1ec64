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
    collectors::{Flow, Nfcapd, UdpSink, nfdump_flows, sent_and_dropped, sqlite_flows},
    ipfix_decode::{Record, be32, decode, wireshark_records, write_pcap},
    is_root, metric_required, skip, temp_dir,
};

/// The sensor's enterprise number (the default).
const PEN: u32 = 32473;

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

/// Each end's (pid, comm, uid, unit) as the exporter writes them: 0, "", 4294967295 and ""
/// where the database has none (README, "The sensor's own elements").
type Ends = [(u32, String, u32, String); 2];

fn ends_of_rows(db: &Path, port: u16) -> BTreeMap<u16, Ends> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut st = conn
        .prepare(
            "SELECT src_port, src_pid, src_comm, src_uid, src_unit, \
             dst_pid, dst_comm, dst_uid, dst_unit FROM flows WHERE proto = 6 AND dst_port = ?1",
        )
        .unwrap();
    st.query_map([port], |r| {
        let end = |i: usize| -> rusqlite::Result<(u32, String, u32, String)> {
            Ok((
                r.get::<_, Option<u32>>(i)?.unwrap_or(0),
                r.get::<_, Option<String>>(i + 1)?.unwrap_or_default(),
                r.get::<_, Option<u32>>(i + 2)?.unwrap_or(u32::MAX),
                r.get::<_, Option<String>>(i + 3)?.unwrap_or_default(),
            ))
        };
        Ok((r.get(0)?, [end(1)?, end(5)?]))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn ends_of_record(r: &Record) -> Ends {
    let text = |id| String::from_utf8(r[&(PEN, id)].clone()).expect("utf-8");
    let number = |id| be32(&r[&(PEN, id)], 0);
    [
        (number(1), text(2), number(3), text(4)),
        (number(5), text(6), number(7), text(8)),
    ]
}

/// A live run's records name each end's process, user and unit as its database rows do,
/// for a client that is another program (python3) and a server that is this test; and
/// tshark, with the sensor's Wireshark description, reads the same values by name.
#[test]
fn records_name_each_ends_process_as_the_database_does() {
    let name = "records_name_each_ends_process_as_the_database_does";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        skip(name, "needs root to capture on lo and load the hooks");
        return;
    }
    let dir = temp_dir("ipfix-owners");
    let sink = UdpSink::start();
    let url = format!("udp://127.0.0.1:{}", sink.port);
    let (sensor, db, prom) = start_sensor(
        &dir,
        &format!("[ipfix]\ncollectors = [\"{url}\"]\nflush_ms = 100\n"),
    );
    const N: usize = 5;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..N {
            let (mut s, _) = listener.accept().expect("accept");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("read");
            s.write_all(b"ok").expect("write");
        }
    });
    let client = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import socket\nfor _ in range({N}):\n    \
             s = socket.create_connection(('127.0.0.1', {port}))\n    \
             s.sendall(b'x'); s.shutdown(socket.SHUT_WR); s.recv(2); s.close()\n"
        ))
        .spawn()
        .expect("python3");
    let client_pid = client.id();
    let out = client.wait_with_output().expect("python3");
    assert!(out.status.success(), "client failed");
    server.join().expect("server");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, log) = sensor.stop();
    assert!(status.success(), "{}", log.join("\n"));
    std::thread::sleep(Duration::from_millis(300));

    let m = std::fs::read_to_string(&prom).expect("final metrics");
    let (sent, dropped) = sent_and_dropped(&m, &url);
    assert_eq!(dropped, 0, "{url}: drops");
    let messages = sink.take();
    let records = decode(&messages);
    assert_eq!(records.len(), sent, "every record sent reached the sink");

    let rows = ends_of_rows(&db, port);
    assert_eq!(rows.len(), N, "one row a connection: {rows:#?}");
    // The database itself is right: the client is python3, the server this test.
    for ends in rows.values() {
        assert_eq!((ends[0].0, ends[0].1.as_str()), (client_pid, "python3"));
        assert_eq!(ends[1].0, std::process::id(), "{ends:?}");
        assert_eq!((ends[0].2, ends[1].2), (0, 0), "root's connections");
        assert!(
            !ends[0].3.is_empty(),
            "the client's unit or cgroup: {ends:?}"
        );
    }
    let dport = |r: &Record| u16::from_be_bytes(r[&(0, 11)][..2].try_into().unwrap());
    let sport = |r: &Record| u16::from_be_bytes(r[&(0, 7)][..2].try_into().unwrap());
    let exported: BTreeMap<u16, Ends> = records
        .iter()
        .filter(|r| r[&(0, 4)] == [6] && dport(r) == port)
        .map(|r| (sport(r), ends_of_record(r)))
        .collect();
    assert_eq!(exported, rows, "the records' ends are the rows'");

    // tshark reads every record's owners as the decoder does.
    let pcap = dir.join("ipfix.pcap");
    write_pcap(&pcap, &messages);
    let fields = [
        "sensor.src_pid",
        "sensor.src_comm",
        "sensor.src_uid",
        "sensor.src_unit",
        "sensor.dst_pid",
        "sensor.dst_comm",
        "sensor.dst_uid",
        "sensor.dst_unit",
    ];
    let read = wireshark_records(&pcap, &fields);
    let want: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            ends_of_record(r)
                .iter()
                .flat_map(|(pid, comm, uid, unit)| {
                    [pid.to_string(), comm.clone(), uid.to_string(), unit.clone()]
                })
                .collect()
        })
        .collect();
    assert_eq!(read, want, "{fields:?}");
    assert!(
        read.iter().any(|r| r[1] == "python3"),
        "tshark names the client"
    );
}
