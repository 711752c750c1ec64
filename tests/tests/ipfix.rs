//! IPFIX into real collectors (issue 12): `sensor replay --ipfix` of every dev capture to
//! nfdump's `nfcapd` on IPv4 and IPv6 loopback at once, and what `nfdump` reads back
//! compared, record by record, with the rows the same replay wrote to SQLite.
//! Needs no privileges; needs nfdump (`cargo xtask setup` installs it).
mod common;

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{metric_required, services::shared_data, temp_dir};

/// nfcapd on `bind`, writing into `dir`; stopped (SIGTERM, so it closes its file) on drop.
struct Nfcapd {
    child: Child,
    pub port: u16,
}

impl Nfcapd {
    fn start(bind: &str, dir: &Path) -> Self {
        let port = UdpSocket::bind((bind, 0))
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new("nfcapd")
            // A replay sends in bursts: a socket buffer that holds them.
            .args(["-b", bind, "-p", &port.to_string(), "-B", "16777216", "-w"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nfcapd not installed: run `cargo xtask setup` (Debian package nfdump)");
        // Ready when the port is taken.
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind((bind, port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "nfcapd did not bind {bind}:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    /// Stops it; returns its log (it reports flows and sequence errors at the end).
    fn stop(mut self) -> String {
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
type Key = (u8, String, u16, String, u16);

/// One flow as both sides see it: 5-tuple, first and last ms, packets and bytes each way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    key: Key,
    first_ms: i64,
    last_ms: i64,
    counts: [u64; 4],
}

fn ms_of(nfdump_time: &str) -> i64 {
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
fn nfdump_flows(dir: &Path) -> Vec<Flow> {
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

fn sqlite_flows(db: &Path) -> Vec<Flow> {
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
        .args(dev_captures())
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
