//! IPFIX into real collectors (issue 12): `sensor replay --ipfix` of every dev capture,
//! merged into one file, to nfdump's `nfcapd` on IPv4 and IPv6 loopback at once, and what `nfdump` reads back
//! compared, record by record, with the rows the same replay wrote to SQLite; the same into
//! pmacct's `nfacctd`; every message decoded by `tshark` without a warning; and over TCP,
//! to a collector that is down at the start and restarts mid-stream.
//! Needs no privileges; needs nfdump, pmacct, tshark and mergecap (`cargo xtask setup`
//! installs them).
mod common;

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{TcpListener, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    collectors::{
        Flow, Key, Nfcapd, UdpSink, free_udp_port, ms_of, nfdump_flows, sent_and_dropped,
        sqlite_flows, wait_bound,
    },
    ipfix_decode::{decode, write_pcap},
    metric_required,
    services::shared_data,
    temp_dir,
};

/// One test at a time: each replays every dev capture into collectors on this machine's
/// two cores, and a collector starved of CPU by the others falls behind its socket.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dev_captures() -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).expect("dev captures").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&shared_data().join("pcap/dev"), &mut out);
    out.sort();
    assert!(out.len() > 50, "the dev captures: {}", out.len());
    out
}

/// Every dev capture merged into one file (`mergecap -a`: one after another, each link
/// type an interface of its own), as a fleet's sensor would replay a day's capture.
fn merged_dev_capture(dir: &Path) -> PathBuf {
    let out = dir.join("dev-merged.pcapng");
    let st = Command::new("mergecap")
        .args(["-a", "-F", "pcapng", "-w"])
        .arg(&out)
        .args(dev_captures())
        .status()
        .expect("mergecap not installed (wireshark-common): run `cargo xtask setup`");
    assert!(st.success(), "mergecap: {st}");
    out
}

/// Per 5-tuple: packets and bytes each way, added over its records.
fn sums(flows: &[Flow]) -> BTreeMap<Key, [u64; 4]> {
    let mut m: BTreeMap<_, [u64; 4]> = BTreeMap::new();
    for f in flows {
        let e = m.entry(f.key.clone()).or_default();
        for (a, b) in e.iter_mut().zip(f.counts) {
            *a += b;
        }
    }
    m
}

#[test]
fn replay_to_nfcapd_over_ipv4_and_ipv6_equals_the_database() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("ipfix-nfcapd");
    let (d4, d6) = (dir.join("nf4"), dir.join("nf6"));
    std::fs::create_dir_all(&d4).unwrap();
    std::fs::create_dir_all(&d6).unwrap();
    let c4 = Nfcapd::start("127.0.0.1", &d4);
    let c6 = Nfcapd::start("::1", &d6);
    let db = dir.join("flows.db");
    let prom = dir.join("final.prom");
    let out = Command::new(common::sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg("--metrics-on-exit")
        .arg(&prom)
        .args(["--ipfix", &format!("udp://127.0.0.1:{}", c4.port)])
        .args(["--ipfix", &format!("udp://[::1]:{}", c6.port)])
        .arg(merged_dev_capture(&dir))
        .output()
        .expect("sensor replay");
    let err = String::from_utf8_lossy(&out.stderr);
    // gnutella.pcap holds one packet the parser gives up on.
    assert_eq!(out.status.code(), Some(65), "{err}");
    // Give nfcapd a moment to read its socket before it is told to stop.
    std::thread::sleep(Duration::from_millis(500));
    let urls = [
        format!("udp://127.0.0.1:{}", c4.port),
        format!("udp://[::1]:{}", c6.port),
    ];
    let logs = [c4.stop(), c6.stop()];
    let m = std::fs::read_to_string(&prom).expect("metrics");
    let rows = sqlite_flows(&db);
    let amendments = metric_required(&m, "sensor_flow_amendments_total") as usize;
    let missed = metric_required(&m, "sensor_store_amendments_total{result=\"missed\"}") as usize;
    for ((d, url), log) in [&d4, &d6].into_iter().zip(&urls).zip(&logs) {
        let sent = metric_required(
            &m,
            &format!("sensor_ipfix_sent_records_total{{collector=\"{url}\"}}"),
        ) as usize;
        for reason in ["queue", "send", "too_big"] {
            let dropped = metric_required(
                &m,
                &format!(
                    "sensor_ipfix_dropped_records_total{{collector=\"{url}\",reason=\"{reason}\"}}"
                ),
            );
            assert_eq!(dropped, 0.0, "{url} {reason}");
        }
        let records = nfdump_flows(d);
        // Every row, and every amendment (late packets of a closed connection) as a
        // record of its own: IPFIX counts are deltas.
        assert_eq!(sent, rows.len() + amendments, "{url}");
        assert_eq!(
            records.len(),
            sent,
            "{url}: nfcapd kept every record\n{log}"
        );
        // Each row is a record with its 5-tuple and start to the millisecond.
        let mut starts: BTreeMap<(&Key, i64), usize> = BTreeMap::new();
        for r in &records {
            *starts.entry((&r.key, r.first_ms)).or_default() += 1;
        }
        for row in &rows {
            let n = starts.get_mut(&(&row.key, row.first_ms));
            assert!(
                n.as_ref().is_some_and(|n| **n > 0),
                "{url}: no record for row {row:?}"
            );
            *n.expect("checked") -= 1;
        }
        // Exactly equal rows and records where no amendment touched the 5-tuple.
        let count = |v: &[Flow]| {
            let mut c: BTreeMap<_, usize> = BTreeMap::new();
            for f in v {
                *c.entry(f.key.clone()).or_default() += 1;
            }
            c
        };
        let (nrec, nrow) = (count(&records), count(&rows));
        let single: BTreeMap<_, _> = records
            .iter()
            .filter(|r| nrec[&r.key] == 1)
            .map(|r| (r.key.clone(), r))
            .collect();
        let mut exact = 0;
        for row in &rows {
            if let Some(r) = single.get(&row.key)
                && nrow[&row.key] == 1
            {
                assert_eq!(*r, row, "{url}");
                exact += 1;
            }
        }
        assert!(
            exact > rows.len() / 2,
            "{url}: only {exact} compared exactly"
        );
        // Per 5-tuple, packets and bytes each way add up, but for the amendments the store
        // found no row for (counted): those packets are in the collector only.
        let (a, b) = (sums(&records), sums(&rows));
        assert_eq!(a.len(), b.len(), "{url}: 5-tuples");
        let differ: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).collect();
        assert!(
            differ.len() <= missed,
            "{url}: {} 5-tuples differ, {missed} amendments missed: {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
    }
}

/// `sensor replay --no-enrich` of `files` with `--ipfix` to each of `urls`; returns the
/// database, the final metrics and the replay's stderr. Exit 65: gnutella.pcap holds one
/// packet the parser gives up on; 0 for other sets.
fn replay_to(dir: &Path, urls: &[String], files: &[PathBuf]) -> (PathBuf, String, String) {
    let db = dir.join("flows.db");
    let prom = dir.join("final.prom");
    let mut cmd = Command::new(common::sensor_bin());
    cmd.args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg("--metrics-on-exit")
        .arg(&prom);
    for u in urls {
        cmd.args(["--ipfix", u]);
    }
    let out = cmd.args(files).output().expect("sensor replay");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 65)),
        "{:?}\n{err}",
        out.status
    );
    let m = std::fs::read_to_string(&prom).expect("metrics");
    (db, m, err)
}

/// The exporter's accounting for `url`: every row and every amendment of the replay is
/// either sent or counted as dropped, none both, none neither. Returns (sent, dropped).
fn every_flow_sent_or_counted(m: &str, url: &str, db: &Path, log: &str) -> (usize, usize) {
    let (sent, dropped) = sent_and_dropped(m, url);
    let rows = sqlite_flows(db).len();
    let amendments = metric_required(m, "sensor_flow_amendments_total") as usize;
    assert!(rows > 0, "no rows\n{log}");
    assert_eq!(
        sent + dropped,
        rows + amendments,
        "every flow sent or counted\n{log}"
    );
    (sent, dropped)
}

/// tshark decodes every message of a replay of all dev captures: no malformed packet, no
/// data set without its template, no expert warning, and as many data records as the
/// exporter says it sent.
#[test]
fn tshark_decodes_every_message_without_warnings() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("ipfix-tshark");
    let sink = UdpSink::start();
    let url = format!("udp://127.0.0.1:{}", sink.port);
    let (db, m, _) = replay_to(
        &dir,
        std::slice::from_ref(&url),
        &[merged_dev_capture(&dir)],
    );
    std::thread::sleep(Duration::from_millis(500));
    let messages = sink.take();
    let (sent, dropped) = sent_and_dropped(&m, &url);
    assert_eq!(dropped, 0);
    let rows = sqlite_flows(&db).len();
    let pcap = dir.join("ipfix.pcap");
    write_pcap(&pcap, &messages);
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-d", "udp.port==4739,cflow", "-V"])
        .output()
        .expect("tshark not installed: run `cargo xtask setup`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for bad in ["Malformed", "no template found", "Expert Info"] {
        let n = text.matches(bad).count();
        assert_eq!(n, 0, "tshark printed {bad:?} {n} times");
    }
    // "Set 1 [id=256] (15 flows)": data records per set, by template.
    let mut records = BTreeMap::<u32, usize>::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("Set ") else {
            continue;
        };
        let Some((_, after)) = rest.split_once("[id=") else {
            continue;
        };
        let (id, after) = after.split_once(']').expect("id");
        // Template sets read "(Data Template): 256,257"; data sets "(15 flows)".
        let Some(n) = after
            .trim()
            .strip_prefix('(')
            .and_then(|a| a.strip_suffix(" flows)"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        *records.entry(id.parse().expect("id")).or_default() += n;
    }
    let flows = records.get(&256).copied().unwrap_or(0) + records.get(&257).copied().unwrap_or(0);
    assert_eq!(flows, sent, "{records:?}");
    assert!(
        flows >= rows && records.get(&257).is_some_and(|n| *n > 0),
        "{records:?}"
    );
    assert!(
        records.get(&258).is_some_and(|n| *n > 0),
        "no options record: {records:?}"
    );
    println!(
        "tshark: {} messages, {flows} flow records, {rows} rows",
        messages.len()
    );
}

/// nfacctd on `bind`, its print plugin writing CSV into `dir`.
struct Nfacctd {
    child: Child,
    port: u16,
    csv: PathBuf,
}

impl Nfacctd {
    fn start(bind: &str, dir: &Path) -> Self {
        let port = free_udp_port(bind);
        let csv = dir.join("flows.csv");
        let conf = dir.join("nfacctd.conf");
        std::fs::write(
            &conf,
            format!(
                "daemonize: false\nnfacctd_ip: {bind}\nnfacctd_port: {port}\n\
                 nfacctd_pipe_size: 16777216\ntimestamps_utc: true\nplugins: print[p]\n\
                 print_output[p]: csv\nprint_output_file[p]: {}\nprint_refresh_time[p]: 1\n\
                 print_output_file_append[p]: true\n\
                 print_cache_entries[p]: 99991\n\
                 aggregate[p]: src_host, dst_host, src_port, dst_port, proto, \
                 timestamp_start, timestamp_end\n",
                csv.display()
            ),
        )
        .expect("nfacctd.conf");
        // Its own process group: nfacctd forks its plugins, which hold the socket too, and
        // all of them go when it is stopped.
        let child = Command::new("nfacctd")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("nfacctd not installed: run `cargo xtask setup` (Debian package pmacct)");
        wait_bound("nfacctd", bind, port);
        Self { child, port, csv }
    }

    /// The flows it printed: key, first and last ms, forward packets and bytes (pmacct
    /// keeps no RFC 5103 reverse counters). Waits until `expect` lines are there.
    fn flows(&self, expect: usize) -> Vec<Flow> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.csv).unwrap_or_default();
            // Whole lines only (a purge may be writing), without each purge's header.
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let lines: Vec<&str> = whole.lines().filter(|l| !l.starts_with("SRC_IP")).collect();
            if lines.len() >= expect || Instant::now() > deadline {
                return lines.iter().map(|l| nfacctd_flow(l)).collect();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Nfacctd {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group nfacctd leads (its pid, set at spawn).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `SRC_IP,DST_IP,SRC_PORT,DST_PORT,PROTOCOL,TIMESTAMP_START,TIMESTAMP_END,PACKETS,BYTES`.
fn nfacctd_flow(line: &str) -> Flow {
    let f: Vec<&str> = line.split(',').collect();
    assert_eq!(f.len(), 9, "{line}");
    let proto = f[4]
        .parse()
        .ok()
        .or_else(|| protocol_number(f[4]))
        .unwrap_or_else(|| panic!("protocol {}", f[4]));
    let ms = |t: &str| ms_of(&t.replace(' ', "T")[..23.min(t.len())]);
    Flow {
        key: (
            proto,
            f[0].to_string(),
            f[2].parse().expect("sport"),
            f[1].to_string(),
            f[3].parse().expect("dport"),
        ),
        first_ms: ms(f[5]),
        last_ms: ms(f[6]),
        counts: [
            f[7].parse().expect("packets"),
            f[8].parse().expect("bytes"),
            0,
            0,
        ],
    }
}

/// A protocol's number from its name in /etc/protocols (pmacct prints names).
fn protocol_number(name: &str) -> Option<u8> {
    let text = std::fs::read_to_string("/etc/protocols").ok()?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let first = w.next()?;
            let number = w.next()?;
            (first.eq_ignore_ascii_case(name) || w.any(|a| a.eq_ignore_ascii_case(name)))
                .then(|| number.parse().ok())
                .flatten()
        })
}

/// pmacct's nfacctd takes every record: per 5-tuple and start, the same flows as the
/// database, to the millisecond, with the initiator's packets and bytes.
#[test]
fn replay_to_nfacctd_equals_the_database_forward() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("ipfix-nfacctd");
    let c = Nfacctd::start("127.0.0.1", &dir);
    let url = format!("udp://127.0.0.1:{}", c.port);
    let (db, m, _) = replay_to(
        &dir,
        std::slice::from_ref(&url),
        &[merged_dev_capture(&dir)],
    );
    let (sent, dropped) = sent_and_dropped(&m, &url);
    assert_eq!(dropped, 0);
    let missed = metric_required(&m, "sensor_store_amendments_total{result=\"missed\"}") as usize;
    let rows = sqlite_flows(&db);
    // pmacct adds up records with the same key (5-tuple, start, end): so do the rows.
    let group = |v: &[Flow]| {
        let mut g: BTreeMap<(Key, i64, i64), [u64; 2]> = BTreeMap::new();
        for f in v {
            let e = g.entry((f.key.clone(), f.first_ms, f.last_ms)).or_default();
            e[0] += f.counts[0];
            e[1] += f.counts[1];
        }
        g
    };
    let theirs = c.flows(1);
    let ours = group(&rows);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut theirs = group(&theirs);
    // Each refresh appends what it aggregated since the last: wait until every key is in.
    while ours.keys().any(|k| !theirs.contains_key(k)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        theirs = group(&c.flows(0));
    }
    assert!(sent >= rows.len());
    // Every row's (5-tuple, first, last) is there; an amendment is a record of its own
    // with its own times, so those keys are extra on pmacct's side.
    let missing: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} rows missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    // Forward packets and bytes per 5-tuple: equal but for amendments the store missed.
    let by_tuple = |g: &BTreeMap<(Key, i64, i64), [u64; 2]>| {
        let mut t: BTreeMap<Key, [u64; 2]> = BTreeMap::new();
        for ((k, ..), v) in g {
            let e = t.entry(k.clone()).or_default();
            e[0] += v[0];
            e[1] += v[1];
        }
        t
    };
    let (a, b) = (by_tuple(&theirs), by_tuple(&ours));
    assert_eq!(a.len(), b.len(), "5-tuples");
    let differ = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).count();
    assert!(
        differ <= missed,
        "{differ} 5-tuples differ, {missed} amendments missed"
    );
    println!(
        "nfacctd: {} keys, {} rows, {sent} records sent",
        theirs.len(),
        rows.len()
    );
}

/// Splits a TCP stream of IPFIX messages by their header's length field.
fn split_messages(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= stream.len() {
        let len = usize::from(u16::from_be_bytes([stream[at + 2], stream[at + 3]]));
        assert!(
            len >= 16 && at + len <= stream.len(),
            "message at {at}: length {len}"
        );
        assert_eq!(&stream[at..at + 2], &[0, 10], "version at {at}");
        out.push(stream[at..at + len].to_vec());
        at += len;
    }
    assert_eq!(at, stream.len(), "a partial message at the end");
    out
}

/// The first set id of a message (2: a template set).
fn first_set(m: &[u8]) -> u16 {
    u16::from_be_bytes([m[16], m[17]])
}

/// The committed captures (tests/data), small.
fn committed_captures() -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
        .expect("tests/data")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

/// A TCP collector that is not there for the whole replay: the replay still ends with
/// status 0 and every row in SQLite, and every flow is counted as dropped for it.
#[test]
fn tcp_collector_down_the_replay_goes_on_and_counts_every_flow_dropped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("ipfix-tcp-down");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let (db, m, err) = replay_to(&dir, std::slice::from_ref(&url), &committed_captures());
    let (sent, dropped) = every_flow_sent_or_counted(&m, &url, &db, &err);
    assert!(sent == 0 && dropped > 0, "sent {sent}, dropped {dropped}");
    let failed = metric_required(
        &m,
        &format!("sensor_ipfix_connects_total{{collector=\"{url}\",result=\"failed\"}}"),
    );
    assert!(failed >= 1.0, "connect attempts counted: {failed}");
}

/// Over TCP, a collector that drops the connection mid-stream (a restart): the exporter
/// reconnects and begins again with its templates, the stream after it decodes whole
/// (relayed message by message to nfcapd, every record is read back), and every flow is
/// either sent or counted as dropped.
#[test]
fn tcp_collector_restarted_mid_stream_gets_templates_again_and_every_flow_is_counted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("ipfix-tcp");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("tcp://127.0.0.1:{port}");
    let collector = std::thread::spawn(move || {
        // First connection: read a little, then drop it (a collector restart).
        let (mut s, _) = listener.accept().expect("accept");
        let mut first = vec![0u8; 4096];
        let mut n = 0;
        while n < first.len() {
            match s.read(&mut first[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        first.truncate(n);
        drop(s);
        // Then the rest, until the exporter closes at the end of the replay.
        let (mut s, _) = listener.accept().expect("accept after restart");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("read");
        (first, rest)
    });
    let (db, m, err) = replay_to(&dir, std::slice::from_ref(&url), &dev_captures());
    let (first, rest) = collector.join().expect("collector");
    let ok = metric_required(
        &m,
        &format!("sensor_ipfix_connects_total{{collector=\"{url}\",result=\"ok\"}}"),
    );
    assert!(ok >= 2.0, "connects {ok}\n{err}");
    assert_eq!(
        first_set(&first),
        2,
        "the first connection starts with templates"
    );
    let rest = split_messages(&rest);
    assert_eq!(
        first_set(&rest[0]),
        2,
        "the new connection starts with templates"
    );
    let nf = dir.join("nf");
    std::fs::create_dir_all(&nf).unwrap();
    let c = Nfcapd::start("127.0.0.1", &nf);
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    for msg in &rest {
        relay.send_to(msg, ("127.0.0.1", c.port)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    // Counted by the templates the new connection sent (records hold strings, so a set's
    // length alone does not say).
    let in_rest = decode(&rest).len();
    std::thread::sleep(Duration::from_millis(500));
    let log = c.stop();
    let records = nfdump_flows(&nf);
    assert_eq!(
        records.len(),
        in_rest,
        "nfcapd read every record relayed\n{log}"
    );
    let (sent, dropped) = every_flow_sent_or_counted(&m, &url, &db, &err);
    assert!(dropped > 0, "the restart cost flows, counted");
    // What the first connection's close cut off in flight is in `sent` (TCP has no
    // acknowledgement a collector gives): the rest is exact.
    assert!(in_rest > 0 && in_rest <= sent, "{in_rest} of {sent}");
    println!(
        "tcp: {} bytes before the restart, {} messages and {in_rest} records after; \
         sent {sent}, dropped {dropped}",
        first.len(),
        rest.len()
    );
}

/// A TCP collector that accepts and never reads (back-pressure): the replay is not held
/// back (the exporter's write times out, it reconnects with backoff and drops meanwhile),
/// SQLite gets every row, and every flow is either sent or counted as dropped.
#[test]
fn tcp_collector_that_stops_reading_holds_nothing_back_and_drops_are_counted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("ipfix-tcp-stuck");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("tcp://127.0.0.1:{port}");
    // Accepts every connection and keeps it open, reading nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let t0 = Instant::now();
    // Twice over: more than the exporter's bounded send buffer and the collector's
    // receive buffer hold.
    let files: Vec<PathBuf> = dev_captures()
        .into_iter()
        .cycle()
        .take(2 * dev_captures().len())
        .collect();
    let (db, m, err) = replay_to(&dir, std::slice::from_ref(&url), &files);
    let took = t0.elapsed();
    let (sent, dropped) = every_flow_sent_or_counted(&m, &url, &db, &err);
    let rows = sqlite_flows(&db).len();
    assert!(
        dropped > 0,
        "a collector that reads nothing cannot have got {sent} records"
    );
    // The same replay without IPFIX writes the same rows.
    let plain = temp_dir("ipfix-tcp-stuck-plain");
    let (db2, _, _) = replay_to(&plain, &[], &files);
    assert_eq!(rows, sqlite_flows(&db2).len(), "SQLite got every row");
    assert!(took < Duration::from_secs(60), "the replay took {took:?}");
    println!(
        "stuck collector: replay took {took:?}; sent {sent} (into socket buffers), dropped {dropped}"
    );
}
