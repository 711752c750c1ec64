//! `sensor export` and `sensor top` against a database of synthetic flows whose every value
//! the test knows: every format parses and holds the database's rows, every filter selects
//! exactly the rows an independent check in Rust selects, every `top` grouping equals the
//! sums computed here, and reading while another process writes never fails.
//!
//! The schema comes from the sensor itself (a replay of a tiny capture); the rows are then
//! replaced by synthetic ones. Local ends are loopback (127.0.0.1, ::1), always local; the
//! remote ends are documentation addresses, never an address of the test host.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{sensor_bin, temp_dir};
use rusqlite::{Connection, params, types::Value};

/// The export's columns, in the order scripts rely on.
const COLUMNS: [&str; 46] = [
    "first_seen_ms",
    "last_seen_ms",
    "proto",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "src_payload_bytes",
    "dst_payload_bytes",
    "src_pid",
    "src_comm",
    "dst_pid",
    "dst_comm",
    "end_reason",
    "srtt_us",
    "retransmits",
    "src_packets",
    "dst_packets",
    "src_bytes",
    "dst_bytes",
    "tcp_flags",
    "src_tcp_flags",
    "dst_tcp_flags",
    "capture",
    "src_country",
    "src_city",
    "src_asn",
    "src_as_org",
    "src_hostname",
    "src_threat",
    "dst_country",
    "dst_city",
    "dst_asn",
    "dst_as_org",
    "dst_hostname",
    "dst_threat",
    "tunnel",
    "tunnel_src_ip",
    "tunnel_dst_ip",
    "tunnel_id",
    "src_uid",
    "src_unit",
    "dst_uid",
    "dst_unit",
    "src_attr",
    "dst_attr",
];

/// The export as the test reads it straight from the database: both ends joined from
/// ip_info, oldest first.
const REFERENCE_SQL: &str = "SELECT f.first_seen_ms, f.last_seen_ms, f.proto, f.src_ip, \
    f.src_port, f.dst_ip, f.dst_port, f.src_payload_bytes, f.dst_payload_bytes, f.src_pid, \
    f.src_comm, f.dst_pid, f.dst_comm, f.end_reason, f.srtt_us, f.retransmits, f.src_packets, \
    f.dst_packets, f.src_bytes, f.dst_bytes, \
    CASE WHEN f.src_tcp_flags IS NULL AND f.dst_tcp_flags IS NULL THEN NULL \
         ELSE ifnull(f.src_tcp_flags, 0) | ifnull(f.dst_tcp_flags, 0) END, \
    f.src_tcp_flags, f.dst_tcp_flags, f.sources, \
    s.country, s.city, s.asn, s.as_org, s.hostname, s.threat, \
    d.country, d.city, d.asn, d.as_org, d.hostname, d.threat, \
    f.tunnel, f.tunnel_src_ip, f.tunnel_dst_ip, f.tunnel_id, \
    f.src_uid, f.src_unit, f.dst_uid, f.dst_unit, f.src_attr, f.dst_attr \
    FROM flows f LEFT JOIN ip_info s ON s.ip = f.src_ip LEFT JOIN ip_info d ON d.ip = f.dst_ip \
    ORDER BY f.first_seen_ms, f.id";

/// One flow as stored.
#[derive(Debug, Clone)]
struct Flow {
    first: i64,
    proto: i64,
    src: String,
    sport: i64,
    dst: String,
    dport: i64,
    src_payload: Option<i64>,
    dst_payload: Option<i64>,
    src_comm: Option<String>,
    dst_comm: Option<String>,
    /// Set after the rows are made (an UPDATE), read back with the rest.
    src_unit: Option<String>,
    dst_unit: Option<String>,
    src_packets: Option<i64>,
    dst_packets: Option<i64>,
    src_bytes: Option<i64>,
    dst_bytes: Option<i64>,
}

/// One ip_info row as stored.
#[derive(Debug, Clone, Default)]
struct Info {
    country: Option<String>,
    asn: Option<i64>,
    as_org: Option<String>,
    hostname: Option<String>,
    threat: Option<String>,
}

struct Db {
    path: PathBuf,
    flows: Vec<Flow>,
    info: HashMap<String, Info>,
    /// When the rows were made; their times count back from it.
    now_ms: i64,
}

/// The database's directory goes when the test passes; a failing test leaves it to look
/// at.
impl Drop for Db {
    fn drop(&mut self) {
        if !std::thread::panicking()
            && let Some(dir) = self.path.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A small deterministic generator (no dependency for a test's dice).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const MINUTE: i64 = 60_000;
const FLOWS: usize = 600;
const COMMS: &[&str] = &[
    "curl",
    "nginx",
    "sshd",
    "we,ird \"name\"",
    "systemd-resolve",
];

/// This host's interface addresses, by getifaddrs(3).
fn host_addresses() -> std::collections::HashSet<String> {
    let mut set = std::collections::HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below; each entry's address is read according
    // to its family.
    unsafe {
        assert_eq!(libc::getifaddrs(&mut list), 0, "getifaddrs");
        let mut p = list;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        set.insert(ip.to_string());
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        set.insert(ip.to_canonical().to_string());
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    set
}

/// A database with the sensor's schema and known synthetic flows and ip_info rows.
fn synthetic_db(name: &str) -> Db {
    let dir = temp_dir(name);
    let path = dir.join("flows.db");
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tcp_handshake.pcapng");
    let out = run(Command::new(sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&path)
        .arg(&capture));
    assert!(out.status.success(), "{}", stderr(&out));
    let mut conn = Connection::open(&path).unwrap();
    conn.execute_batch("DELETE FROM flows; DELETE FROM ip_info;")
        .unwrap();

    let mut rng = Lcg(0x5eed);
    // Documentation addresses, less any this host has (a test VM may use 192.0.2.0/24).
    let host = host_addresses();
    let v4: Vec<String> = (1..=40)
        .map(|i| format!("192.0.2.{i}"))
        .chain((1..=40).map(|i| format!("198.51.100.{i}")))
        .chain((1..=20).map(|i| format!("203.0.113.{i}")))
        .filter(|a| !host.contains(a))
        .collect();
    let v6: Vec<String> = (1..=30)
        .map(|i| format!("2001:db8::{i:x}"))
        .chain((1..=15).map(|i| format!("2001:db8:1::{i:x}")))
        .filter(|a| !host.contains(a))
        .collect();
    let now_ms = now_ms();
    let tx = conn.transaction().unwrap();
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO ip_info (ip, country, city, asn, as_org, hostname, threat, \
                 checked_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .unwrap();
        for ip in v4.iter().chain(&v6) {
            if rng.chance(25) {
                continue;
            }
            let asn = *rng.pick(&[Some(3320), Some(15169), Some(64500), None]);
            let org = asn.map(|a| match a {
                3320 => "Deutsche Telekom AG",
                15169 => "Google LLC",
                _ => "Example, \"Networks\" Inc.",
            });
            ins.execute(params![
                ip,
                rng.pick(&[Some("DE"), Some("US"), Some("FR"), None]),
                rng.pick(&[Some("Berlin"), Some("Zürich, Kanton"), None]),
                asn,
                org,
                rng.chance(50).then(|| format!("h-{ip}.example.net")),
                rng.chance(12).then_some("spamhaus_drop,firehol_level1"),
                now_ms,
            ])
            .unwrap();
        }
        let mut rows = Vec::new();
        for i in 0..FLOWS as i64 {
            // Minutes apart, never near the relative boundaries the filters use.
            let first = now_ms - (i * 61 + 30) * MINUTE - rng.below(1000) as i64;
            let kind = rng.below(20);
            let is_v6 = rng.chance(30);
            let (local, remote) = match (kind, is_v6) {
                // Both ends local: the remote end is the destination.
                (0, false) => ("127.0.0.1".to_string(), "127.0.0.53".to_string()),
                (0, true) => ("::1".to_string(), "::1".to_string()),
                // Neither end local: the remote end is the destination.
                (1, _) => (rng.pick(&v4).clone(), rng.pick(&v4).clone()),
                (_, false) => ("127.0.0.1".to_string(), rng.pick(&v4).clone()),
                (_, true) => ("::1".to_string(), rng.pick(&v6).clone()),
            };
            let v6_flow = local.contains(':');
            let proto = match (rng.below(100), v6_flow) {
                (0..70, _) => 6,
                (70..90, _) => 17,
                (_, true) => 58,
                (90..97, false) => 1,
                _ => 132,
            };
            let service = *rng.pick(&[443, 80, 53, 22, 8443, 5353]);
            let ephemeral = 32_768 + rng.below(28_000) as i64;
            let outgoing = rng.chance(65);
            let (src, sport, dst, dport) = if outgoing {
                (local, ephemeral, remote, service)
            } else {
                (remote, ephemeral, local, service)
            };
            let (sport, dport) = if proto == 1 || proto == 58 {
                (0, *rng.pick(&[8 << 8, 0, 3 << 8 | 3]))
            } else {
                (sport, dport)
            };
            let view = if proto == 6 { rng.below(10) } else { 9 };
            let (kernel, capture) = match view {
                0 | 1 => (true, false),
                2..=6 => (true, true),
                _ => (false, true),
            };
            let comm = |rng: &mut Lcg, on: bool| on.then(|| rng.pick(COMMS).to_string());
            let (src_has, dst_has) = (rng.chance(85), rng.chance(60));
            let src_comm = comm(&mut rng, kernel && src_has);
            let dst_comm = comm(&mut rng, kernel && dst_has);
            let src_packets = capture.then(|| 1 + rng.below(60) as i64);
            let dst_packets = capture.then(|| rng.below(60) as i64);
            let payload = |rng: &mut Lcg| kernel.then(|| rng.below(100_000) as i64);
            let (src_payload, dst_payload) = (payload(&mut rng), payload(&mut rng));
            let bytes =
                |rng: &mut Lcg, p: Option<i64>| p.map(|p| p * 60 + rng.below(50_000) as i64);
            let (src_bytes, dst_bytes) =
                (bytes(&mut rng, src_packets), bytes(&mut rng, dst_packets));
            rows.push((
                first,
                Flow {
                    first,
                    proto,
                    src,
                    sport,
                    dst,
                    dport,
                    src_payload,
                    dst_payload,
                    src_comm,
                    dst_comm,
                    src_unit: None,
                    dst_unit: None,
                    src_packets,
                    dst_packets,
                    src_bytes,
                    dst_bytes,
                },
                kernel,
                capture,
            ));
        }
        // Stored out of time order, as flows are (written when they end).
        for i in (1..rows.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            rows.swap(i, j);
        }
        let mut ins = tx
            .prepare(
                "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port, \
                 dst_ip, dst_port, src_payload_bytes, dst_payload_bytes, src_pid, src_comm, \
                 dst_pid, dst_comm, srtt_us, retransmits, end_reason, sources, src_packets, \
                 dst_packets, src_bytes, dst_bytes, src_tcp_flags, dst_tcp_flags) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                 ?18, ?19, ?20, ?21, ?22, ?23)",
            )
            .unwrap();
        for (first, f, kernel, capture) in &rows {
            let sources = match (kernel, capture) {
                (true, true) => "kernel,capture",
                (true, false) => "kernel",
                _ => "capture",
            };
            let tcp_capture = *capture && f.proto == 6;
            ins.execute(params![
                first,
                first + rng.below(600_000) as i64,
                f.proto,
                f.src,
                f.sport,
                f.dst,
                f.dport,
                f.src_payload,
                f.dst_payload,
                f.src_comm.as_ref().map(|_| 1000 + rng.below(5000) as i64),
                f.src_comm,
                f.dst_comm.as_ref().map(|_| 1000 + rng.below(5000) as i64),
                f.dst_comm,
                kernel.then(|| rng.below(90_000) as i64),
                kernel.then(|| rng.below(4) as i64),
                rng.pick(&["fin", "rst", "idle", "active", "failed", "shutdown"]),
                sources,
                f.src_packets,
                f.dst_packets,
                f.src_bytes,
                f.dst_bytes,
                tcp_capture.then_some(0x1b_i64),
                tcp_capture.then(|| *rng.pick(&[0x12_i64, 0x19, 0x04])),
            ])
            .unwrap();
        }
    }
    // Some flows are a tunnel's inner flows: the tunnel columns come last in every format.
    tx.execute_batch(
        "UPDATE flows SET tunnel = 'vxlan', tunnel_src_ip = '192.0.2.250', \
         tunnel_dst_ip = '2001:db8::fe', tunnel_id = 4242 WHERE id % 7 = 0;
         UPDATE flows SET tunnel = 'ipip', tunnel_src_ip = '198.51.100.250', \
         tunnel_dst_ip = '198.51.100.251' WHERE id % 7 = 3;
         UPDATE flows SET src_uid = 1000, src_unit = 'user@1000.service/app.scope', \
         src_attr = 'connect' WHERE src_comm IS NOT NULL AND id % 3 = 0;
         UPDATE flows SET dst_uid = 0, dst_unit = 'nginx.service', dst_attr = 'accept' \
         WHERE dst_comm IS NOT NULL AND id % 3 = 1;",
    )
    .unwrap();
    tx.commit().unwrap();
    drop(conn);
    let (flows, info) = read_back(&path);
    Db {
        path,
        flows,
        info,
        now_ms,
    }
}

/// The flows and ip_info rows as the database holds them.
fn read_back(path: &Path) -> (Vec<Flow>, HashMap<String, Info>) {
    let conn = Connection::open(path).unwrap();
    let flows = conn
        .prepare(
            "SELECT first_seen_ms, proto, src_ip, src_port, dst_ip, dst_port, \
             src_payload_bytes, dst_payload_bytes, src_comm, dst_comm, src_packets, \
             dst_packets, src_bytes, dst_bytes, src_unit, dst_unit FROM flows",
        )
        .unwrap()
        .query_map([], |r| {
            Ok(Flow {
                first: r.get(0)?,
                proto: r.get(1)?,
                src: r.get(2)?,
                sport: r.get(3)?,
                dst: r.get(4)?,
                dport: r.get(5)?,
                src_payload: r.get(6)?,
                dst_payload: r.get(7)?,
                src_comm: r.get(8)?,
                dst_comm: r.get(9)?,
                src_packets: r.get(10)?,
                dst_packets: r.get(11)?,
                src_bytes: r.get(12)?,
                dst_bytes: r.get(13)?,
                src_unit: r.get(14)?,
                dst_unit: r.get(15)?,
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let info = conn
        .prepare("SELECT ip, country, asn, as_org, hostname, threat FROM ip_info")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                Info {
                    country: r.get(1)?,
                    asn: r.get(2)?,
                    as_org: r.get(3)?,
                    hostname: r.get(4)?,
                    threat: r.get(5)?,
                },
            ))
        })
        .unwrap()
        .collect::<Result<HashMap<_, _>, _>>()
        .unwrap();
    (flows, info)
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("SENSOR_LOG", "warn").output().expect("run sensor")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sensor(db: &Path, args: &[&str]) -> Output {
    run(Command::new(sensor_bin()).args(args).arg("--db").arg(db))
}

/// `sensor ARGS --db DB`, which must succeed; its stdout.
fn sensor_ok(db: &Path, args: &[&str]) -> String {
    let out = sensor(db, args);
    assert!(
        out.status.success(),
        "sensor {}: {}",
        args.join(" "),
        stderr(&out)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The reference rows, each value as SQLite holds it.
fn reference_rows(db: &Path) -> Vec<Vec<Value>> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare(REFERENCE_SQL).unwrap();
    stmt.query_map([], |r| {
        (0..COLUMNS.len())
            .map(|i| r.get::<_, Value>(i))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn value_as_csv(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn value_as_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => (*f).into(),
        Value::Text(t) => t.clone().into(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned().into(),
    }
}

fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn every_export_format_holds_the_database_rows() {
    let db = synthetic_db("query-formats");
    let want = reference_rows(&db.path);
    assert_eq!(want.len(), FLOWS);

    let (header, rows) = parse_csv(&sensor_ok(&db.path, &["export", "--format", "csv"]));
    assert_eq!(header, COLUMNS);
    let want_csv: Vec<Vec<String>> = want
        .iter()
        .map(|r| r.iter().map(value_as_csv).collect())
        .collect();
    assert_eq!(rows.len(), want_csv.len());
    for (got, want) in rows.iter().zip(&want_csv) {
        assert_eq!(got, want);
    }
    // Quoting survived: a comma and quotes in a process name, in an AS name.
    assert!(rows.iter().any(|r| r[10] == "we,ird \"name\""));
    assert!(
        rows.iter()
            .any(|r| r.iter().any(|v| v == "Example, \"Networks\" Inc."))
    );

    let json = sensor_ok(&db.path, &["export", "--format", "json"]);
    let array: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(&json).expect("one JSON array");
    let ndjson_text = sensor_ok(&db.path, &["export", "--format", "ndjson"]);
    let ndjson: Vec<serde_json::Map<String, serde_json::Value>> = ndjson_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one object a line"))
        .collect();
    assert_eq!(array, ndjson);
    assert_eq!(array.len(), want.len());
    for (got, want) in array.iter().zip(&want) {
        assert_eq!(got.len(), COLUMNS.len());
        for (name, v) in COLUMNS.iter().zip(want) {
            assert_eq!(got[*name], value_as_json(v), "{name} in {got:?}");
        }
    }
    // Keys in the CSV header's order.
    let first = ndjson_text.lines().next().unwrap();
    let at: Vec<usize> = COLUMNS
        .iter()
        .map(|c| first.find(&format!("\"{c}\":")).unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{first}");
    // Numbers are numbers, missing values null.
    assert!(array.iter().all(|o| o["first_seen_ms"].is_i64()));
    assert!(array.iter().any(|o| o["src_packets"].is_null()));
    assert!(array.iter().any(|o| o["src_country"].is_string()));
    assert!(
        array
            .iter()
            .any(|o| o["tunnel_id"] == 4242 && o["tunnel"] == "vxlan")
    );
    assert!(
        array
            .iter()
            .any(|o| o["tunnel"] == "ipip" && o["tunnel_id"].is_null())
    );
    assert!(array.iter().any(|o| o["tunnel"].is_null()));
    // The owner columns come after the tunnel's, numbers as numbers.
    assert!(array.iter().any(|o| o["src_uid"] == 1000
        && o["src_unit"] == "user@1000.service/app.scope"
        && o["src_attr"] == "connect"));
    assert!(array.iter().any(|o| o["dst_uid"] == 0
        && o["dst_unit"] == "nginx.service"
        && o["dst_attr"] == "accept"));
    assert!(
        array
            .iter()
            .any(|o| o["src_unit"].is_null() && o["src_attr"].is_null())
    );
}

/// `t` (Unix ms) in RFC 3339, by date(1).
fn rfc3339(t: i64) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", t.div_euclid(1000)),
            "+%Y-%m-%dT%H:%M:%S",
        ])
        .output()
        .expect("date");
    format!(
        "{}.{:03}Z",
        String::from_utf8(out.stdout).unwrap().trim(),
        t.rem_euclid(1000)
    )
}

fn is_local(ip: &str) -> bool {
    ip.starts_with("127.") || ip == "::1"
}

/// Whether `ip` is in the network `net/len` (text), by arithmetic on the parsed address.
fn in_net(ip: &str, net: &str, len: u32) -> bool {
    let (ip, net): (std::net::IpAddr, std::net::IpAddr) =
        (ip.parse().unwrap(), net.parse().unwrap());
    match (ip, net) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[test]
fn each_filter_selects_exactly_the_matching_flows() {
    let db = synthetic_db("query-filters");
    let flows = &db.flows;
    let info = |ip: &str| db.info.get(ip);
    let either = |f: &Flow, p: &dyn Fn(&Info) -> bool| {
        info(&f.src).is_some_and(p) || info(&f.dst).is_some_and(p)
    };
    // Boundaries at the exact start of a stored flow: --since includes it, --until does not.
    let mut times: Vec<i64> = flows.iter().map(|f| f.first).collect();
    times.sort();
    let (t1, t2) = (times[FLOWS / 4], times[FLOWS / 2]);
    let (s1, s2) = (rfc3339(t1), rfc3339(t2));
    let v6_used = flows
        .iter()
        .map(|f| f.dst.as_str())
        .find(|ip| ip.starts_with("2001:db8::"))
        .unwrap()
        .to_string();
    let now = db.now_ms;
    // Relative times: no flow may sit within five minutes of a boundary (they are an hour
    // apart), so the seconds between making the rows and running the sensor don't matter.
    for ago in [2 * 60, 24 * 60, 3 * 24 * 60, 10 * 24 * 60] {
        let edge = now - ago * MINUTE;
        assert!(flows.iter().all(|f| (f.first - edge).abs() > 5 * MINUTE));
    }
    type Pred<'a> = Box<dyn Fn(&Flow) -> bool + 'a>;
    let cases: Vec<(Vec<String>, Pred<'_>)> = vec![
        (
            vec!["--since".into(), "2h".into()],
            Box::new(|f| f.first >= now - 120 * MINUTE),
        ),
        (
            vec!["--since".into(), "3d".into(), "--until".into(), "1d".into()],
            Box::new(|f| f.first >= now - 3 * 1440 * MINUTE && f.first < now - 1440 * MINUTE),
        ),
        (
            vec!["--since".into(), s1.clone()],
            Box::new(move |f| f.first >= t1),
        ),
        (
            vec!["--until".into(), s1.clone()],
            Box::new(move |f| f.first < t1),
        ),
        (
            vec!["--since".into(), s1.clone(), "--until".into(), s2.clone()],
            Box::new(move |f| f.first >= t1 && f.first < t2),
        ),
        (
            vec!["--ip".into(), "198.51.100.0/24".into()],
            Box::new(|f| in_net(&f.src, "198.51.100.0", 24) || in_net(&f.dst, "198.51.100.0", 24)),
        ),
        (
            vec!["--ip".into(), "192.0.2.16/28".into()],
            Box::new(|f| in_net(&f.src, "192.0.2.16", 28) || in_net(&f.dst, "192.0.2.16", 28)),
        ),
        (
            vec!["--ip".into(), v6_used.to_uppercase()],
            Box::new(|f| f.src == v6_used || f.dst == v6_used),
        ),
        (
            vec!["--ip".into(), "2001:db8:1::/48".into()],
            Box::new(|f| in_net(&f.src, "2001:db8:1::", 48) || in_net(&f.dst, "2001:db8:1::", 48)),
        ),
        (
            vec!["--ip".into(), "127.0.0.1".into()],
            Box::new(|f| f.src == "127.0.0.1" || f.dst == "127.0.0.1"),
        ),
        (
            vec!["--port".into(), "53".into()],
            Box::new(|f| f.sport == 53 || f.dport == 53),
        ),
        (
            vec!["--proto".into(), "udp".into()],
            Box::new(|f| f.proto == 17),
        ),
        (
            vec!["--proto".into(), "icmpv6".into()],
            Box::new(|f| f.proto == 58),
        ),
        (
            vec!["--proto".into(), "icmp".into()],
            Box::new(|f| f.proto == 1),
        ),
        (
            vec!["--proto".into(), "132".into()],
            Box::new(|f| f.proto == 132),
        ),
        (
            vec!["--country".into(), "de".into()],
            Box::new(|f| either(f, &|i| i.country.as_deref() == Some("DE"))),
        ),
        (
            vec!["--asn".into(), "AS15169".into()],
            Box::new(|f| either(f, &|i| i.asn == Some(15169))),
        ),
        (
            vec!["--threat".into()],
            Box::new(|f| either(f, &|i| i.threat.is_some())),
        ),
        (
            vec!["--unit".into(), "user@1000.service/app.scope".into()],
            Box::new(|f| {
                f.src_unit.as_deref() == Some("user@1000.service/app.scope")
                    || f.dst_unit.as_deref() == Some("user@1000.service/app.scope")
            }),
        ),
        (
            vec!["--process".into(), "nginx".into()],
            Box::new(|f| {
                f.src_comm.as_deref() == Some("nginx") || f.dst_comm.as_deref() == Some("nginx")
            }),
        ),
        (
            vec!["--process".into(), "we,ird \"name\"".into()],
            Box::new(|f| {
                let c = Some("we,ird \"name\"");
                f.src_comm.as_deref() == c || f.dst_comm.as_deref() == c
            }),
        ),
        (
            vec![
                "--proto".into(),
                "tcp".into(),
                "--country".into(),
                "US".into(),
                "--since".into(),
                "10d".into(),
            ],
            Box::new(|f| {
                f.proto == 6
                    && either(f, &|i| i.country.as_deref() == Some("US"))
                    && f.first >= now - 10 * 1440 * MINUTE
            }),
        ),
    ];
    for (args, pred) in &cases {
        let want: BTreeSet<i64> = flows.iter().filter(|f| pred(f)).map(|f| f.first).collect();
        assert!(
            !want.is_empty() && want.len() < flows.len(),
            "{args:?} must select some rows and not all ({} of {})",
            want.len(),
            flows.len()
        );
        let mut full = vec!["export", "--format", "csv"];
        full.extend(args.iter().map(String::as_str));
        let (_, rows) = parse_csv(&sensor_ok(&db.path, &full));
        let got: Vec<i64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
        assert!(
            got.windows(2).all(|w| w[0] <= w[1]),
            "{args:?}: oldest first"
        );
        let got: BTreeSet<i64> = got.into_iter().collect();
        assert_eq!(got.len(), rows.len(), "{args:?}: a flow twice");
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{args:?}: {} flows missing (first_seen_ms {missing:?}), {} extra ({extra:?})",
            missing.len(),
            extra.len()
        );
    }
    // The same filter through JSON.
    let json: Vec<serde_json::Value> = serde_json::from_str(&sensor_ok(
        &db.path,
        &["export", "--format", "json", "--proto", "udp", "--threat"],
    ))
    .unwrap();
    let want = flows
        .iter()
        .filter(|f| f.proto == 17 && either(f, &|i| i.threat.is_some()))
        .count();
    assert_eq!(json.len(), want);
    assert!(json.iter().all(|o| o["proto"] == 17));
}

#[test]
fn bad_filter_values_are_usage_errors_naming_the_flag() {
    let db = synthetic_db("query-bad");
    for (flag, value) in [
        ("--since", "yesterday"),
        ("--until", "2026-13-01T00:00:00Z"),
        ("--since", "2026-11-24T10:00:00"),
        ("--ip", "10.0.0.0/33"),
        ("--ip", "example.com"),
        ("--port", "70000"),
        ("--proto", "tcpx"),
        ("--country", "Germany"),
        ("--asn", "ASx"),
    ] {
        for sub in ["export", "top"] {
            let out = sensor(&db.path, &[sub, flag, value]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{sub} {flag} {value}: {err}");
            assert!(
                err.contains(flag) && err.contains(value),
                "{sub} {flag} {value}: {err}"
            );
            assert!(out.stdout.is_empty());
        }
    }
    let out = sensor(&db.path, &["export", "--since", "1h", "--until", "2h"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--since 1h") && err.contains("--until 2h"),
        "{err}"
    );
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sums {
    flows: u64,
    packets: u64,
    bytes: u64,
}

impl Sums {
    fn by(&self, by: &str) -> u64 {
        match by {
            "bytes" => self.bytes,
            "packets" => self.packets,
            _ => self.flows,
        }
    }
}

/// The documented definitions, computed here.
fn flow_bytes(f: &Flow) -> u64 {
    let v = if f.src_bytes.is_none() && f.dst_bytes.is_none() {
        f.src_payload.unwrap_or(0) + f.dst_payload.unwrap_or(0)
    } else {
        f.src_bytes.unwrap_or(0) + f.dst_bytes.unwrap_or(0)
    };
    v as u64
}

fn flow_packets(f: &Flow) -> u64 {
    (f.src_packets.unwrap_or(0) + f.dst_packets.unwrap_or(0)) as u64
}

fn remote(f: &Flow) -> &str {
    if is_local(&f.dst) && !is_local(&f.src) {
        &f.src
    } else {
        &f.dst
    }
}

fn group_of(db: &Db, f: &Flow, group: &str) -> String {
    let info = db.info.get(remote(f));
    match group {
        "remote-ip" => remote(f).to_string(),
        "country" => info
            .and_then(|i| i.country.clone())
            .unwrap_or_else(|| "-".into()),
        "asn" => info.and_then(|i| i.asn).unwrap_or(0).to_string(),
        "process" => {
            let comm = if is_local(&f.src) {
                &f.src_comm
            } else {
                &f.dst_comm
            };
            comm.clone().unwrap_or_else(|| "-".into())
        }
        "unit" => {
            let unit = if is_local(&f.src) {
                &f.src_unit
            } else {
                &f.dst_unit
            };
            unit.clone().unwrap_or_else(|| "-".into())
        }
        "port" => {
            let name = match f.proto {
                1 => "icmp".to_string(),
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                58 => "icmpv6".to_string(),
                n => n.to_string(),
            };
            format!("{name}/{}", f.dport)
        }
        "pair" => format!("{} → {}", f.src, f.dst),
        _ => unreachable!(),
    }
}

fn expected_top(db: &Db, group: &str, keep: impl Fn(&Flow) -> bool) -> BTreeMap<String, Sums> {
    let mut m: BTreeMap<String, Sums> = BTreeMap::new();
    for f in db.flows.iter().filter(|f| keep(f)) {
        let s = m.entry(group_of(db, f, group)).or_default();
        s.flows += 1;
        s.packets += flow_packets(f);
        s.bytes += flow_bytes(f);
    }
    m
}

const KEY_COLUMN: [(&str, &str); 7] = [
    ("remote-ip", "remote_ip"),
    ("country", "country"),
    ("asn", "asn"),
    ("process", "process"),
    ("unit", "unit"),
    ("port", "port"),
    ("pair", "pair"),
];

/// `top --format json` against the sums computed here: the same groups with the same
/// totals, ranked by `by`, shares of the total.
fn check_top(db: &Db, group: &str, by: &str, extra: &[&str], keep: impl Fn(&Flow) -> bool) {
    let want = expected_top(db, group, keep);
    let column = KEY_COLUMN.iter().find(|(g, _)| *g == group).unwrap().1;
    let mut args = vec![
        "top", "--group", group, "--by", by, "--limit", "0", "--format", "json",
    ];
    args.extend(extra);
    let got: Vec<serde_json::Value> =
        serde_json::from_str(&sensor_ok(&db.path, &args)).expect("a JSON array");
    let what = format!("top {}", args[1..].join(" "));
    assert_eq!(got.len(), want.len(), "{what}: groups");
    let total: u64 = want.values().map(|s| s.by(by)).sum();
    let mut last: Option<u64> = None;
    for (i, row) in got.iter().enumerate() {
        assert_eq!(row["rank"], i as u64 + 1, "{what}");
        let key = match &row[column] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let w = want
            .get(&key)
            .unwrap_or_else(|| panic!("{what}: unexpected group {key}"));
        let g = Sums {
            flows: row["flows"].as_u64().unwrap(),
            packets: row["packets"].as_u64().unwrap(),
            bytes: row["bytes"].as_u64().unwrap(),
        };
        assert_eq!(&g, w, "{what}: {key}");
        let v = g.by(by);
        assert!(last.is_none_or(|l| l >= v), "{what}: not ranked by {by}");
        last = Some(v);
        let share = row["share_pct"].as_f64().unwrap();
        let exact = v as f64 * 100.0 / total as f64;
        assert!(
            (share - exact).abs() <= 0.0051,
            "{what}: {key} share {share} vs {exact}"
        );
        if group == "remote-ip" {
            let info = db.info.get(&key);
            let text = |v: Option<&String>| v.map_or(serde_json::Value::Null, |s| s.clone().into());
            assert_eq!(
                row["hostname"],
                text(info.and_then(|i| i.hostname.as_ref())),
                "{key}"
            );
            assert_eq!(
                row["country"],
                text(info.and_then(|i| i.country.as_ref())),
                "{key}"
            );
            assert_eq!(
                row["asn"],
                info.and_then(|i| i.asn)
                    .map_or(serde_json::Value::Null, Into::into),
                "{key}"
            );
        }
        if group == "asn" && key != "0" {
            let orgs: BTreeSet<&str> = db
                .info
                .values()
                .filter(|i| i.asn.map(|a| a.to_string()) == Some(key.clone()))
                .filter_map(|i| i.as_org.as_deref())
                .collect();
            assert!(
                orgs.contains(row["as_org"].as_str().unwrap()),
                "{key}: {row}"
            );
        }
    }
}

#[test]
fn top_equals_sums_computed_independently() {
    let db = synthetic_db("query-top");
    for (group, _) in KEY_COLUMN {
        for by in ["bytes", "packets", "flows"] {
            check_top(&db, group, by, &[], |_| true);
        }
    }
    // The rule for the remote end was exercised with two different local ends, both ways,
    // and with neither end local.
    assert!(
        db.flows
            .iter()
            .any(|f| is_local(&f.src) && is_local(&f.dst) && f.src != f.dst)
    );
    assert!(
        db.flows
            .iter()
            .any(|f| is_local(&f.dst) && !is_local(&f.src))
    );
    assert!(
        db.flows
            .iter()
            .any(|f| is_local(&f.src) && !is_local(&f.dst))
    );
    assert!(
        db.flows
            .iter()
            .any(|f| !is_local(&f.src) && !is_local(&f.dst))
    );
    // Filters are shared with export.
    let now = db.now_ms;
    check_top(
        &db,
        "port",
        "bytes",
        &["--proto", "udp", "--since", "10d"],
        |f| f.proto == 17 && f.first >= now - 10 * 1440 * MINUTE,
    );
    check_top(&db, "remote-ip", "flows", &["--ip", "2001:db8::/32"], |f| {
        in_net(&f.src, "2001:db8::", 32) || in_net(&f.dst, "2001:db8::", 32)
    });
    check_top(&db, "unit", "flows", &["--unit", "nginx.service"], |f| {
        f.src_unit.as_deref() == Some("nginx.service")
            || f.dst_unit.as_deref() == Some("nginx.service")
    });
    check_top(&db, "process", "packets", &["--country", "US"], |f| {
        [&f.src, &f.dst].iter().any(|ip| {
            db.info
                .get(*ip)
                .is_some_and(|i| i.country.as_deref() == Some("US"))
        })
    });
}

/// `top` by remote address, country and ASN answers the same from the rollup as from every
/// flow (`--no-rollup`), with and without time ranges that end mid-day: before any rollup,
/// rolled up, with more flows added (into rolled-up days and later ones), and rolled up
/// again. The rollup is made by `sensor rollup`, the writer's own step run to the end.
#[test]
fn top_with_the_rollup_equals_a_raw_scan() {
    const DAY: i64 = 86_400_000;
    let mut db = synthetic_db("query-top-rollup");
    let since = rfc3339((db.now_ms - 9 * DAY).div_euclid(DAY) * DAY + 5 * 3_600_000 + 17);
    let until = rfc3339(db.now_ms - 2 * DAY + 1234);
    let compare = |db: &Db, stage: &str| {
        let ranges: [&[&str]; 4] = [
            &[],
            &["--since", &since],
            &["--until", &until],
            &["--since", &since, "--until", &until],
        ];
        for group in ["remote-ip", "country", "asn"] {
            for range in ranges {
                let mut args = vec!["top", "--group", group, "--limit", "0", "--format", "csv"];
                args.extend(range);
                let with = sensor_ok(&db.path, &args);
                args.push("--no-rollup");
                let without = sensor_ok(&db.path, &args);
                assert_eq!(with, without, "{stage}: {}", args.join(" "));
                assert!(with.lines().count() > 1, "{stage}: {}", args.join(" "));
            }
        }
    };
    let state = |db: &Db| -> (i64, i64, i64) {
        let c = Connection::open(&db.path).unwrap();
        c.query_row(
            "SELECT (SELECT max_id FROM rollup_state), (SELECT max(id) FROM flows), \
             (SELECT count(*) FROM flow_rollup)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    compare(&db, "before any rollup");
    sensor_ok(&db.path, &["rollup"]);
    let (rolled, max_id, rows) = state(&db);
    assert_eq!(rolled, max_id);
    assert!(rows > 0);
    compare(&db, "rolled up");
    check_top(&db, "remote-ip", "bytes", &[], |_| true);
    check_top(&db, "asn", "flows", &[], |_| true);

    // A third of the flows again, some hours later: into rolled-up days and past them.
    Connection::open(&db.path)
        .unwrap()
        .execute(
            "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port, dst_ip, \
             dst_port, src_payload_bytes, dst_payload_bytes, src_pid, src_comm, dst_pid, \
             dst_comm, srtt_us, retransmits, end_reason, sources, src_packets, dst_packets, \
             src_bytes, dst_bytes, src_tcp_flags, dst_tcp_flags) \
             SELECT first_seen_ms + (id % 7) * 3600000, last_seen_ms + (id % 7) * 3600000, \
             proto, src_ip, src_port, dst_ip, dst_port, src_payload_bytes, \
             dst_payload_bytes, src_pid, src_comm, dst_pid, dst_comm, srtt_us, retransmits, \
             end_reason, sources, src_packets, dst_packets, src_bytes, dst_bytes, \
             src_tcp_flags, dst_tcp_flags FROM flows WHERE id % 3 = 0",
            [],
        )
        .unwrap();
    db.flows = read_back(&db.path).0;
    let (rolled_before, max_id, _) = state(&db);
    assert!(rolled_before < max_id);
    compare(&db, "more flows added");
    check_top(&db, "remote-ip", "packets", &[], |_| true);
    check_top(&db, "country", "bytes", &[], |_| true);

    sensor_ok(&db.path, &["rollup"]);
    let (rolled, max_id, _) = state(&db);
    assert_eq!(rolled, max_id);
    compare(&db, "rolled up again");
    check_top(&db, "remote-ip", "bytes", &[], |_| true);
}

#[test]
fn top_limit_and_formats() {
    let db = synthetic_db("query-top-formats");
    let all: Vec<serde_json::Value> = serde_json::from_str(&sensor_ok(
        &db.path,
        &[
            "top",
            "--group",
            "remote-ip",
            "--limit",
            "0",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    assert!(all.len() > 20, "{}", all.len());
    // Defaults: by bytes, remote-ip, 10 rows.
    let (header, rows) = parse_csv(&sensor_ok(&db.path, &["top", "--format", "csv"]));
    assert_eq!(
        header,
        [
            "rank",
            "remote_ip",
            "hostname",
            "country",
            "asn",
            "flows",
            "packets",
            "bytes",
            "share_pct"
        ]
    );
    assert_eq!(rows.len(), 10);
    for (row, want) in rows.iter().zip(&all) {
        assert_eq!(row[1], want["remote_ip"].as_str().unwrap());
        assert_eq!(row[7], want["bytes"].to_string());
    }
    let three: Vec<serde_json::Value> = serde_json::from_str(&sensor_ok(
        &db.path,
        &[
            "top", "--group", "port", "--by", "flows", "--limit", "3", "--format", "json",
        ],
    ))
    .unwrap();
    assert_eq!(three.len(), 3);
    // The table: a header and one line per group, every line as wide (numbers right-aligned
    // to the last column), bytes also for people.
    let table = sensor_ok(&db.path, &["top", "--group", "country", "--limit", "4"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    for name in [
        "rank", "country", "flows", "packets", "bytes", "size", "share",
    ] {
        assert!(lines[0].contains(name), "{table}");
    }
    let width = lines[0].chars().count();
    assert!(lines.iter().all(|l| l.chars().count() == width), "{table}");
    assert!(lines[1..].iter().all(|l| l.ends_with('%')), "{table}");
    assert!(
        lines[1..].iter().all(|l| [" B ", " kB ", " MB ", " GB "]
            .iter()
            .any(|u| l.contains(u))),
        "{table}"
    );
}

/// Exports and `top`s, over and over while `busy()` says a writer is at work; each must
/// succeed without a word about locks, and the rows seen never go back. Returns the runs
/// and the rows last seen.
fn read_while(db: &Path, mut busy: impl FnMut() -> bool) -> (usize, usize) {
    let mut runs = 0;
    let mut last_rows = 0;
    while busy() || runs == 0 {
        for args in [
            &["export", "--format", "csv"][..],
            &["export", "--format", "ndjson", "--since", "1h"],
            &["top", "--group", "remote-ip"],
            &["top", "--group", "port", "--since", "1h"],
        ] {
            let out = sensor(db, args);
            let err = stderr(&out);
            assert!(out.status.success(), "{args:?} failed: {err}");
            assert!(
                !err.contains("locked") && !err.contains("busy"),
                "{args:?}: {err}"
            );
            if args[2] == "csv" {
                let (_, rows) = parse_csv(&String::from_utf8(out.stdout).unwrap());
                assert!(
                    rows.len() >= last_rows,
                    "rows went from {last_rows} to {}",
                    rows.len()
                );
                last_rows = rows.len();
            }
            runs += 1;
        }
    }
    (runs, last_rows)
}

#[test]
fn reading_while_another_process_writes_never_fails() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let db = synthetic_db("query-concurrent");
    let path = db.path.clone();
    let stop = Arc::new(AtomicBool::new(false));
    // A writer busier than the sensor's: small transactions back to back, checkpoints that
    // wait for readers (TRUNCATE), and the connection closed and reopened now and then (the
    // last connection to close checkpoints and removes the WAL).
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut written = 0u64;
            let mut round = 0u64;
            let open = || {
                let c = Connection::open(&path).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                c
            };
            let mut conn = open();
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let tx = conn.transaction().unwrap();
                for i in 0..200 {
                    tx.execute(
                        "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, \
                         src_port, dst_ip, dst_port, end_reason, sources, src_packets, \
                         dst_packets, src_bytes, dst_bytes) VALUES (?1, ?1, 6, '127.0.0.1', \
                         40000, '192.0.2.200', 443, 'fin', 'capture', 1, 1, 100, 100)",
                        [now_ms() + i],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
                written += 200;
                if round.is_multiple_of(10) {
                    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                        .unwrap();
                }
                if round.is_multiple_of(25) {
                    drop(conn);
                    conn = open();
                }
            }
            written
        })
    };
    let started = Instant::now();
    let (runs, rows) = read_while(&db.path, || started.elapsed() < Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 2_000, "the writer barely ran: {written} rows");
    assert!(rows > FLOWS, "{rows}");
    eprintln!("{runs} reads while a rusqlite writer wrote {written} rows");

    // The sensor's own writer: a replay of real captures into the same database.
    let dev = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/pcap/dev/ndpi"
    ));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dev)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        common::skip(
            "reading_while_another_process_writes_never_fails (replay half)",
            &format!("no captures in {}", dev.display()),
        );
        return;
    }
    let mut replay = Command::new(sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db.path)
        // Three times over, to be writing for a while.
        .args(files.iter().cycle().take(3 * files.len()))
        .env("SENSOR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (runs, after) = read_while(&db.path, || replay.try_wait().unwrap().is_none());
    let status = replay.wait().unwrap();
    // 65: the dev captures hold a packet the parser gives up on (gnutella.pcap); never 74:
    // no flow is lost while readers read.
    assert!(
        matches!(status.code(), Some(0 | 65)),
        "replay failed: {status}"
    );
    let total: i64 = Connection::open(&db.path)
        .unwrap()
        .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
        .unwrap();
    let total = total as usize;
    assert!(total > rows, "the replay added nothing: {total}");
    assert!(after >= rows);
    eprintln!(
        "{runs} reads while sensor replay wrote {} flows",
        total - rows
    );
}
