//! Enrichment against real components: MaxMind's test databases, a dnsmasq on loopback for
//! reverse DNS (answering, stopped, hung), the Cymru replay server (genuine answers, hanging,
//! closing mid-answer, garbage) and the real threat lists in ../shared/data.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    metric_value as metric,
    services::{Cymru, Dnsmasq, shared_data},
};
use serde_json::Value;

fn mmdb(name: &str) -> PathBuf {
    shared_data().join("mmdb/maxmind-test").join(name)
}

fn threat_dir() -> PathBuf {
    shared_data().join("threat-intel")
}

/// Runs `sensor enrich ARGS LIST`; returns the JSON objects, the metrics at exit, the exit
/// status and how long it took.
fn enrich(dir: &Path, args: &[&str], ips: &[&str]) -> (Vec<Value>, String, i32, Duration) {
    let list = dir.join("ips.txt");
    std::fs::write(&list, ips.join("\n") + "\n").unwrap();
    let metrics = dir.join("enrich.prom");
    let started = Instant::now();
    let out = Command::new(common::sensor_bin())
        .arg("enrich")
        .args(args)
        .arg("--metrics-on-exit")
        .arg(&metrics)
        .arg(&list)
        .output()
        .expect("run sensor enrich");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    let metrics = std::fs::read_to_string(&metrics).unwrap_or_default();
    (rows, metrics, out.status.code().unwrap_or(-1), took)
}

/// Held by the tests that compare timings, so that they don't run against each other.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timing() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

fn row<'a>(rows: &'a [Value], ip: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["ip"] == ip)
        .unwrap_or_else(|| panic!("no row for {ip}"))
}

fn lookups(metrics: &str, source: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!("sensor_enrich_lookups_total{{result=\"{result}\",source=\"{source}\"}}"),
    )
}

const LONDON: &str = "81.2.69.142"; // GeoIP2-City-Test: London, GB
const TELSTRA: &str = "1.128.0.0"; // GeoLite2-ASN-Test: AS1221 Telstra Pty Ltd
const GOOGLE: &str = "74.125.225.229"; // recorded Cymru answer: AS15169, 74.125.225.0/24
const TOR_EXIT: &str = "2.56.10.36"; // tor_exits.ipset
const DROP_NET: &str = "1.19.2.3"; // 1.19.0.0/16 in spamhaus_drop and firehol_level1

#[test]
fn every_source_answers_and_says_so() {
    let dir = common::temp_dir("enrich-all");
    let dns = Dnsmasq::start(
        &dir,
        &[
            (LONDON, "london.example.net"),
            ("2001:4860:4860::8888", "dns6.example.net"),
        ],
    );
    let cymru = Cymru::start("replay");
    let city = mmdb("GeoIP2-City-Test.mmdb");
    let asn = mmdb("GeoLite2-ASN-Test.mmdb");
    let td = threat_dir();
    let (rows, metrics, status, _) = enrich(
        &dir,
        &[
            "--mmdb",
            city.to_str().unwrap(),
            "--mmdb",
            asn.to_str().unwrap(),
            "--threat-dir",
            td.to_str().unwrap(),
            "--dns",
            &dns.addr,
            "--cymru",
            &cymru.addr,
        ],
        &[
            LONDON,
            TELSTRA,
            GOOGLE,
            TOR_EXIT,
            DROP_NET,
            "2001:4860:4860::8888",
            "10.1.2.3",
            "::ffff:81.2.69.142",
        ],
    );
    assert_eq!(status, 0);
    assert_eq!(rows.len(), 8, "one line per input line");

    let london = row(&rows, LONDON);
    assert_eq!(london["country"], "GB");
    assert_eq!(london["city"], "London");
    assert!((london["lat"].as_f64().unwrap() - 51.5142).abs() < 1e-3);
    assert!((london["lon"].as_f64().unwrap() + 0.0931).abs() < 1e-3);
    assert_eq!(london["source"]["country"], "mmdb");
    assert_eq!(london["hostname"], "london.example.net");
    assert_eq!(london["source"]["hostname"], "rdns");
    assert_eq!(london["rdns"], "found");
    // The IPv4-mapped form is the same address.
    assert_eq!(rows[7]["ip"], LONDON);
    assert_eq!(rows[7]["city"], "London");

    let telstra = row(&rows, TELSTRA);
    assert_eq!(telstra["asn"], 1221);
    assert_eq!(telstra["as_org"], "Telstra Pty Ltd");
    assert_eq!(telstra["source"]["asn"], "mmdb");

    // Not in the ASN database: Cymru's genuine answer.
    let google = row(&rows, GOOGLE);
    assert_eq!(google["asn"], 15169);
    assert_eq!(google["as_org"], "GOOGLE, US");
    assert_eq!(google["bgp_prefix"], "74.125.225.0/24");
    assert_eq!(google["source"]["asn"], "cymru");
    assert_eq!(google["rdns"], "not_found", "no PTR in dnsmasq: NXDOMAIN");
    assert!(google["hostname"].is_null());

    let tor = row(&rows, TOR_EXIT);
    assert!(
        tor["threat"]
            .as_array()
            .unwrap()
            .contains(&"tor_exits".into()),
        "{tor}"
    );
    assert_eq!(tor["source"]["threat"], "threat");
    let drop = row(&rows, DROP_NET);
    let lists: Vec<&str> = drop["threat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(lists.contains(&"spamhaus_drop"), "{lists:?}");
    assert!(lists.contains(&"firehol_level1"), "{lists:?}");
    for hit in drop["threat_detail"].as_array().unwrap() {
        assert!(hit["entry"].as_str().unwrap().contains('/'), "{hit}");
        assert!(hit["age_s"].as_u64().is_some());
    }

    let v6 = row(&rows, "2001:4860:4860::8888");
    assert_eq!(v6["hostname"], "dns6.example.net");

    // A private address never goes to DNS or Cymru.
    let private = row(&rows, "10.1.2.3");
    assert!(private["rdns"].is_null(), "{private}");
    assert!(private["asn"].is_null());

    // Counted by source and result: 6 distinct public addresses asked by reverse DNS.
    let rdns: f64 = ["found", "not_found"]
        .iter()
        .map(|r| lookups(&metrics, "rdns", r))
        .sum();
    assert_eq!(rdns, 6.0, "{metrics}");
    assert_eq!(lookups(&metrics, "rdns", "found"), 2.0);
    assert!(lookups(&metrics, "cymru", "found") >= 1.0, "{metrics}");
}

#[test]
fn reverse_dns_negative_cache_and_a_dead_server() {
    let dir = common::temp_dir("enrich-rdns");
    let mut dns = Dnsmasq::start(&dir, &[(LONDON, "london.example.net")]);
    let db = dir.join("flows.db");
    let cfg = dir.join("sensor.toml");
    let write_cfg = |dns_addr: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[enrich]\ndns_servers = [\"{dns_addr}\"]\nrdns_timeout_ms = 300\n\
                 rdns_negative_ttl_s = 900\nmmdb_paths = [\"{}\"]\n",
                mmdb("GeoIP2-City-Test.mmdb").display()
            ),
        )
        .unwrap();
    };
    write_cfg(&dns.addr);
    let replay = |file: &Path, tag: &str| -> (String, String) {
        let prom = dir.join(format!("{tag}.prom"));
        let out = Command::new(common::sensor_bin())
            .args(["replay", "--db"])
            .arg(&db)
            .arg("--config")
            .arg(&cfg)
            .arg("--metrics-on-exit")
            .arg(&prom)
            .arg(file)
            .output()
            .expect("run sensor replay");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        (std::fs::read_to_string(&prom).unwrap_or_default(), log)
    };
    let flows = |db: &Path| -> i64 {
        let c = rusqlite::Connection::open(db).unwrap();
        c.query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .unwrap()
    };
    let capture = shared_data().join("pcap/dev/pcapplusplus/tls2.pcap");

    // 1. Answers and NXDOMAINs, kept in ip_info with their TTLs.
    let (m1, _) = replay(&capture, "first");
    let n1 = flows(&db);
    assert!(n1 > 300);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (asked, not_found, ttl_ok): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(rdns_status = 'not_found'),
                    sum(rdns_status != 'not_found' OR
                        rdns_due_ms - checked_ms BETWEEN 119000 AND 901000)
             FROM ip_info WHERE rdns_status IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(asked > 100, "public addresses of tls2.pcap asked: {asked}");
    assert_eq!(not_found, asked, "dnsmasq knows none of them");
    assert_eq!(ttl_ok, asked, "negative answers kept for the negative TTL");
    assert_eq!(lookups(&m1, "rdns", "not_found") as i64, asked, "{m1}");

    // 2. dnsmasq stopped: the negative cache answers, nothing is asked again.
    dns.stop();
    let (m2, _) = replay(&capture, "second");
    assert_eq!(flows(&db), 2 * n1, "flows stored with DNS down");
    let asked_again: f64 = ["found", "not_found", "timeout", "error", "refused"]
        .iter()
        .map(|r| lookups(&m2, "rdns", r))
        .sum();
    assert_eq!(asked_again, 0.0, "{m2}");
    assert!(metric(&m2, "sensor_enrich_done_addresses_total") > 0.0);

    // 3. New addresses with the server gone: failures counted, flows stored, bounded time.
    let other = shared_data().join("pcap/dev/pcapplusplus/many-protocols.pcap");
    let before = flows(&db);
    let started = Instant::now();
    let (m3, log) = replay(&other, "third");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(flows(&db) > before, "{log}");
    let failed: f64 = ["timeout", "error", "refused"]
        .iter()
        .map(|r| lookups(&m3, "rdns", r))
        .sum();
    assert!(failed > 0.0, "failed lookups counted: {m3}");
    let timeouts: i64 = conn
        .query_row(
            "SELECT count(*) FROM ip_info WHERE rdns_status IN ('timeout', 'error', 'refused')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(timeouts as f64, failed);
}

#[test]
fn a_hung_dns_server_costs_one_timeout_and_the_rest_is_shed() {
    let dir = common::temp_dir("enrich-hung");
    let dns = Dnsmasq::start(&dir, &[(LONDON, "london.example.net")]);
    dns.freeze();
    let ips: Vec<String> = (0..200)
        .map(|i| format!("5.{}.{}.9", i / 200, i % 200))
        .collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let cfg = dir.join("sensor.toml");
    std::fs::write(
        &cfg,
        "[enrich]\nrdns_timeout_ms = 500\nrdns_concurrency = 64\n",
    )
    .unwrap();
    let (rows, metrics, status, took) = enrich(
        &dir,
        &["--config", cfg.to_str().unwrap(), "--dns", &dns.addr],
        &ips,
    );
    assert_eq!(status, 74, "EX_IOERR: lookups were shed");
    assert_eq!(rows.len(), 200);
    let timeouts = rows.iter().filter(|r| r["rdns"] == "timeout").count();
    let shed = rows.iter().filter(|r| r["rdns"] == "shed").count();
    assert_eq!(timeouts + shed, 200, "{:?}", rows[0]);
    // The first wave (64 at once) times out; the breaker opens after 8 failures in a row,
    // so at most the 7 that took a freed slot before it opened are asked after it.
    assert!((64..64 + 8).contains(&timeouts), "{timeouts} timed out");
    assert_eq!(lookups(&metrics, "rdns", "timeout"), timeouts as f64);
    assert_eq!(lookups(&metrics, "rdns", "shed"), shed as f64);
    // About two timeouts (0.5 s each), never 200 / 64 of them.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn cymru_failures_are_bounded_counted_and_keep_other_answers() {
    let dir = common::temp_dir("enrich-cymru");
    let city = mmdb("GeoIP2-City-Test.mmdb");
    let td = threat_dir();
    // 600 addresses: two bulk connections (500 + 100).
    let mut ips: Vec<String> = (0..598)
        .map(|i| format!("45.{}.{}.7", i / 250, i % 250))
        .collect();
    ips.push(LONDON.into());
    ips.push(TOR_EXIT.into());
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, "[enrich]\ncymru_timeout_ms = 1500\n").unwrap();
    for (mode, result) in [
        ("replay", "found"),
        ("hang", "timeout"),
        ("close-mid", "closed"),
        ("garbage", "garbage"),
    ] {
        let cymru = Cymru::start(mode);
        let (rows, metrics, status, took) = enrich(
            &dir,
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--no-rdns",
                "--mmdb",
                city.to_str().unwrap(),
                "--threat-dir",
                td.to_str().unwrap(),
                "--cymru",
                &cymru.addr,
            ],
            &ips,
        );
        assert_eq!(status, 0, "{mode}");
        assert_eq!(rows.len(), 600, "{mode}");
        // Two connections at once, each with a 1.5 s deadline.
        assert!(took < Duration::from_secs(10), "{mode}: took {took:?}");
        assert!(
            lookups(&metrics, "cymru", result) > 0.0,
            "{mode}: {result} counted\n{metrics}"
        );
        // The other sources' answers stand whatever Cymru did.
        assert_eq!(row(&rows, LONDON)["city"], "London", "{mode}");
        assert!(
            row(&rows, TOR_EXIT)["threat"]
                .as_array()
                .unwrap()
                .contains(&"tor_exits".into()),
            "{mode}"
        );
        let with_asn = rows
            .iter()
            .filter(|r| r["source"]["asn"] == "cymru")
            .count();
        match mode {
            "replay" => assert!(with_asn >= 598, "{mode}: {with_asn}"),
            "hang" | "garbage" => assert_eq!(with_asn, 0, "{mode}"),
            // Half of each answer arrives before the close, and is kept.
            _ => assert!(with_asn > 0 && with_asn < 598, "{mode}: {with_asn}"),
        }
    }
}

#[test]
fn bad_lines_are_named_and_the_rest_enriched() {
    let dir = common::temp_dir("enrich-bad");
    let td = threat_dir();
    let (rows, _, status, _) = enrich(
        &dir,
        &["--no-rdns", "--threat-dir", td.to_str().unwrap()],
        &[
            TOR_EXIT,
            "not-an-ip",
            "# a comment",
            "",
            "8.8.8.8 trailing words",
        ],
    );
    assert_eq!(status, 65, "EX_DATAERR when lines were skipped");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["ip"], "8.8.8.8");
    let out = Command::new(common::sensor_bin())
        .args(["enrich", "--no-rdns"])
        .arg(dir.join("ips.txt"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ips.txt:2") && err.contains("not-an-ip"),
        "{err}"
    );
}

/// A pcap of `flows` UDP flows from one private host to as many distinct public
/// addresses, one flow a millisecond, two packets each.
fn synthetic_capture(path: &Path, flows: u32) {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    // pcap global header: µs timestamps, Ethernet.
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&[0; 8]);
    hdr.extend_from_slice(&65535u32.to_le_bytes());
    hdr.extend_from_slice(&1u32.to_le_bytes());
    f.write_all(&hdr).unwrap();
    let t0: u64 = 1_700_000_000_000_000;
    for i in 0..flows {
        // 45.0.0.0/8 onwards: public, distinct per flow.
        let dst = [45 + (i >> 16) as u8, (i >> 8) as u8, i as u8, 1];
        for (k, (src, dport, sport, rev)) in [
            (
                [192u8, 168, 1, 2],
                53u16,
                40000u16 + (i % 20000) as u16,
                false,
            ),
            ([192, 168, 1, 2], 53, 40000 + (i % 20000) as u16, true),
        ]
        .into_iter()
        .enumerate()
        {
            let (s, d, sp, dp) = if rev {
                (dst, src, dport, sport)
            } else {
                (src, dst, sport, dport)
            };
            let mut pkt = Vec::with_capacity(50);
            pkt.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0]);
            let total: u16 = 20 + 8 + 8;
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&s);
            ip.extend_from_slice(&d);
            pkt.extend_from_slice(&ip);
            pkt.extend_from_slice(&sp.to_be_bytes());
            pkt.extend_from_slice(&dp.to_be_bytes());
            pkt.extend_from_slice(&16u16.to_be_bytes());
            pkt.extend_from_slice(&[0, 0]);
            pkt.extend_from_slice(&[0xab; 8]);
            let ts = t0 + u64::from(i) * 1000 + k as u64 * 10;
            let mut rec = Vec::with_capacity(16);
            rec.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
            rec.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
            rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
            rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
            f.write_all(&rec).unwrap();
            f.write_all(&pkt).unwrap();
        }
    }
    f.flush().unwrap();
}

/// The "replayed ... secs=" of a replay's log: the ingest time of the file alone.
fn ingest_secs(log: &str) -> f64 {
    log.lines()
        .find_map(|l| l.split("secs=\"").nth(1)?.split('"').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no secs in {log}"))
}

#[test]
fn flooding_the_pool_while_dns_hangs_never_slows_ingest() {
    let _timing = timing();
    let dir = common::temp_dir("enrich-flood");
    let flows = 150_000;
    let pcap = dir.join("flood.pcap");
    synthetic_capture(&pcap, flows);
    let dns = Dnsmasq::start(&dir, &[]);
    dns.freeze();
    // The baseline has the same enrichment with reverse DNS off: the pool works (it no
    // longer stalls on DNS), and what it costs on a small machine is not DNS's doing.
    let write_cfg = |name: &str, rdns: bool| -> PathBuf {
        let cfg = dir.join(name);
        std::fs::write(
            &cfg,
            format!(
                "idle_timeout_ms = 1000\n[enrich]\nrdns = {rdns}\ndns_servers = [\"{}\"]\n\
                 rdns_timeout_ms = 5000\nqueue_ips = 64\ndrain_ms = 200\n",
                dns.addr
            ),
        )
        .unwrap();
        cfg
    };
    let cfg = write_cfg("sensor.toml", true);
    let cfg_off = write_cfg("rdns-off.toml", false);
    let run = |tag: &str, cfg: &Path| -> (f64, String, i64) {
        let db = dir.join(format!("{tag}.db"));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
        }
        let prom = dir.join(format!("{tag}.prom"));
        let out = Command::new(common::sensor_bin())
            .args(["replay", "--db"])
            .arg(&db)
            .arg("--config")
            .arg(cfg)
            .arg("--metrics-on-exit")
            .arg(&prom)
            .arg(&pcap)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        // Both runs shed addresses at the 64-address queue, and the exit status says so
        // (74: read but not kept).
        assert_eq!(out.status.code(), Some(74), "{log}");
        let n: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .unwrap();
        (
            ingest_secs(&log),
            std::fs::read_to_string(&prom).unwrap_or_default(),
            n,
        )
    };
    // Alternate the two, three times each; compare medians.
    let mut off = Vec::new();
    let mut hung = Vec::new();
    let mut last = String::new();
    for _ in 0..3 {
        let (s, _, n) = run("off", &cfg_off);
        assert_eq!(n, i64::from(flows));
        off.push(s);
        let (s, m, n) = run("hung", &cfg);
        assert_eq!(n, i64::from(flows), "every flow stored while DNS hangs");
        hung.push(s);
        last = m;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, hung) = (median(&mut off), median(&mut hung));
    eprintln!(
        "ingest of {} packets: {:.3} s with reverse DNS off, {:.3} s with DNS hung ({:.2}x)",
        2 * flows,
        off,
        hung,
        hung / off
    );
    let m = |s: &str| metric(&last, s);
    let shed_full = m("sensor_enrich_shed_addresses_total{reason=\"queue_full\"}");
    let shed_end = m("sensor_enrich_shed_addresses_total{reason=\"shutdown\"}");
    assert!(
        shed_full > 100_000.0,
        "most public addresses shed at the full queue: {shed_full}"
    );
    // Every offer is accounted for: in = answered from memory + not public + done + shed.
    let offered = m("sensor_enrich_offered_addresses_total");
    assert_eq!(offered, 2.0 * f64::from(flows));
    assert_eq!(m("sensor_enrich_skipped_addresses_total"), f64::from(flows));
    assert_eq!(
        offered,
        m("sensor_enrich_cache_hits_total")
            + m("sensor_enrich_skipped_addresses_total")
            + m("sensor_enrich_done_addresses_total")
            + shed_full
            + shed_end,
        "{last}"
    );
    assert_eq!(m("sensor_enrich_queue_addresses"), 0.0);
    // Ingest with the pool flooded and DNS stuck is as fast as with reverse DNS off; the
    // bound leaves room for a noisy machine, not for a pipeline that waits on DNS (that
    // would be 5 s a batch).
    assert!(
        hung < off * 1.5 + 0.05,
        "ingest slowed: {hung:.3} s against {off:.3} s"
    );
}

#[test]
fn export_carries_the_enrichment_of_both_ends() {
    let dir = common::temp_dir("enrich-export");
    let db = dir.join("flows.db");
    let cfg = dir.join("sensor.toml");
    let data = shared_data();
    std::fs::write(
        &cfg,
        format!(
            "[enrich]\nrdns = false\nmmdb_paths = [\"{}\", \"{}\"]\nthreat_dir = \"{}\"\n",
            data.join("mmdb/GeoLite2-City-20191224.mmdb").display(),
            data.join("mmdb/ip-location-db-asn.mmdb").display(),
            threat_dir().display()
        ),
    )
    .unwrap();
    let out = Command::new(common::sensor_bin())
        .args(["replay", "--db"])
        .arg(&db)
        .arg("--config")
        .arg(&cfg)
        .arg(data.join("pcap/dev/pcapplusplus/tls2.pcap"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = Command::new(common::sensor_bin())
        .args(["export", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(csv.status.success());
    let mut reader = csv::Reader::from_reader(csv.stdout.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for name in [
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
    ] {
        col(name);
    }
    // The same answers as ip_info holds for each address.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut with_country = 0;
    let mut private_clean = 0;
    for rec in reader.records() {
        let f = rec.unwrap();
        let line = format!("{f:?}");
        let (src, dst) = (&f[col("src_ip")], &f[col("dst_ip")]);
        let expected: Option<(Option<String>, Option<i64>)> = conn
            .query_row(
                "SELECT country, asn FROM ip_info WHERE ip = ?1",
                [dst],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        if let Some((country, _)) = &expected
            && let Some(c) = country
        {
            assert_eq!(&f[col("dst_country")], c, "{line}");
            with_country += 1;
        }
        if src.starts_with("192.168.") {
            assert_eq!(&f[col("src_country")], "", "private source: {line}");
            private_clean += 1;
        }
    }
    assert!(with_country > 100, "{with_country} rows with dst_country");
    assert!(private_clean > 100, "{private_clean}");
    let (n, asn): (i64, i64) = conn
        .query_row("SELECT count(*), count(asn) FROM ip_info", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(
        n > 100 && asn * 10 >= n * 9,
        "{asn} of {n} addresses with an ASN"
    );
}

#[test]
fn a_corrupt_database_is_an_error_naming_it() {
    let dir = common::temp_dir("enrich-corrupt");
    let bad = dir.join("GeoLite2-City.mmdb");
    let good = std::fs::read(mmdb("GeoIP2-City-Test.mmdb")).unwrap();
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    let out = Command::new(common::sensor_bin())
        .args(["enrich", "--no-rdns", "--mmdb"])
        .arg(&bad)
        .arg("-")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
}

/// The same 10,000 real addresses through `sensor enrich`, without reverse DNS and with
/// it hung: the geo and ASN answers must be the same, and must not wait for DNS.
#[test]
fn ten_thousand_addresses_get_geo_and_asn_while_dns_hangs() {
    let _timing = timing();
    let dir = common::temp_dir("enrich-10k");
    let data = shared_data();
    let list = data.join("ips/ips-bench-10k.txt");
    let city = data.join("mmdb/GeoLite2-City-20191224.mmdb");
    let asn = data.join("mmdb/ip-location-db-asn.mmdb");
    let dns = Dnsmasq::start(&dir, &[]);
    dns.freeze();
    // A hung server costs one timeout, whatever the number of addresses: the in-memory
    // pass runs meanwhile (before: 10,000 / 64 timeouts, 23 s at this timeout).
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, "[enrich]\nrdns_timeout_ms = 150\n").unwrap();
    let run = |extra: &[&str]| -> (Vec<Value>, String, i32, Duration) {
        let prom = dir.join("10k.prom");
        let started = Instant::now();
        let out = Command::new(common::sensor_bin())
            .arg("enrich")
            .args(["--config", cfg.to_str().unwrap()])
            .args([
                "--mmdb",
                city.to_str().unwrap(),
                "--mmdb",
                asn.to_str().unwrap(),
            ])
            .args(extra)
            .arg("--metrics-on-exit")
            .arg(&prom)
            .arg(&list)
            .output()
            .unwrap();
        let took = started.elapsed();
        let rows = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let prom = std::fs::read_to_string(&prom).unwrap_or_default();
        (rows, prom + &log, out.status.code().unwrap_or(-1), took)
    };
    let geo_asn = |rows: &[Value]| -> Vec<(Value, Value, Value)> {
        rows.iter()
            .map(|r| (r["ip"].clone(), r["country"].clone(), r["asn"].clone()))
            .collect()
    };
    let mut off = Vec::new();
    let mut hung = Vec::new();
    for _ in 0..3 {
        let (rows_off, _, status, t) = run(&["--no-rdns"]);
        assert_eq!(status, 0);
        off.push(t);
        let (rows, log, status, t) = run(&["--dns", &dns.addr]);
        assert_eq!(status, 74, "lookups shed while DNS hangs\n{log}");
        hung.push(t);
        assert_eq!(rows.len(), rows_off.len());
        assert!(rows.len() >= 9_000, "{} rows", rows.len());
        assert_eq!(
            geo_asn(&rows),
            geo_asn(&rows_off),
            "the same geo/ASN answers"
        );
        let with_geo = rows.iter().filter(|r| !r["country"].is_null()).count();
        let with_asn = rows.iter().filter(|r| !r["asn"].is_null()).count();
        assert!(with_geo * 10 >= rows.len() * 9, "{with_geo} with a country");
        assert!(with_asn * 10 >= rows.len() * 8, "{with_asn} with an ASN");
        // Every public address was asked or shed, none lost without a word.
        let asked = lookups(&log, "rdns", "timeout");
        let shed = lookups(&log, "rdns", "shed");
        assert!((64.0..72.0).contains(&asked), "{asked} asked");
        let rdns_rows = rows
            .iter()
            .filter(|r| r["rdns"] == "timeout" || r["rdns"] == "shed")
            .count();
        assert_eq!(asked + shed, rdns_rows as f64, "{log}");
    }
    off.sort();
    hung.sort();
    let (off, hung) = (off[1], hung[1]);
    eprintln!("sensor enrich of 10,000 addresses: {off:?} with rDNS off, {hung:?} with DNS hung");
    // The one timeout runs beside the in-memory pass, so the hung run may cost at most
    // that timeout more (less the pass it overlaps), plus scheduling slack; a second
    // timeout, or a wait per batch, would not fit. (A ratio to the run without rDNS was
    // wrong on fast machines: a 210 ms run plus the 150 ms timeout's remainder is 1.5x.)
    let timeout = Duration::from_millis(150);
    let slack = Duration::from_millis(50);
    assert!(
        hung < off + timeout + slack,
        "DNS hung: {hung:?} against {off:?} without rDNS: more than one {timeout:?} timeout"
    );
}

/// A pcap of one UDP flow (a query and its answer) from a private host to each of `dsts`,
/// a millisecond apart.
fn capture_to(path: &Path, dsts: &[std::net::Ipv4Addr]) {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&[0; 8]);
    hdr.extend_from_slice(&65535u32.to_le_bytes());
    hdr.extend_from_slice(&1u32.to_le_bytes());
    f.write_all(&hdr).unwrap();
    let t0: u64 = 1_700_000_000_000_000;
    let host = [192u8, 168, 1, 2];
    for (i, dst) in dsts.iter().enumerate() {
        let dst = dst.octets();
        let sport = 40000 + (i % 20000) as u16;
        for (k, (s, d, sp, dp)) in [(host, dst, sport, 53u16), (dst, host, 53, sport)]
            .into_iter()
            .enumerate()
        {
            let mut pkt = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
            let mut ip = vec![0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip.extend_from_slice(&s);
            ip.extend_from_slice(&d);
            pkt.extend_from_slice(&ip);
            pkt.extend_from_slice(&sp.to_be_bytes());
            pkt.extend_from_slice(&dp.to_be_bytes());
            pkt.extend_from_slice(&16u16.to_be_bytes());
            pkt.extend_from_slice(&[0, 0]);
            pkt.extend_from_slice(&[0xab; 8]);
            let ts = t0 + i as u64 * 1000 + k as u64 * 10;
            let mut rec = Vec::with_capacity(16);
            rec.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
            rec.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
            rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
            rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
            f.write_all(&rec).unwrap();
            f.write_all(&pkt).unwrap();
        }
    }
    f.flush().unwrap();
}

/// The same through the pool, as `sensor replay` (and `run`) use it: with DNS hung, every
/// address's geo/ASN row lands in `ip_info` about as soon as with reverse DNS off.
#[test]
fn the_pool_stores_geo_and_asn_at_once_while_dns_hangs() {
    let _timing = timing();
    let dir = common::temp_dir("enrich-pool-10k");
    let data = shared_data();
    let dsts: Vec<std::net::Ipv4Addr> = std::fs::read_to_string(data.join("ips/ips-bench-10k.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(dsts.len() >= 9_000);
    let pcap = dir.join("10k.pcap");
    capture_to(&pcap, &dsts);
    let dns = Dnsmasq::start(&dir, &[]);
    dns.freeze();
    let cfg = |tag: &str, rdns: bool| -> PathBuf {
        let path = dir.join(format!("{tag}.toml"));
        std::fs::write(
            &path,
            format!(
                "[enrich]\nrdns = {rdns}\ndns_servers = [\"{}\"]\nrdns_timeout_ms = 500\n\
                 mmdb_paths = [\"{}\", \"{}\"]\n",
                dns.addr,
                data.join("mmdb/GeoLite2-City-20191224.mmdb").display(),
                data.join("mmdb/ip-location-db-asn.mmdb").display(),
            ),
        )
        .unwrap();
        path
    };
    // Starts a replay; returns when ip_info holds `want` rows with a country or an ASN
    // (or the replay ended), how long that took, the final count and the metrics.
    let run = |tag: &str, rdns: bool, want: Option<i64>| -> (Duration, i64, String) {
        let db = dir.join(format!("{tag}.db"));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
        }
        let prom = dir.join(format!("{tag}.prom"));
        let started = Instant::now();
        let mut child = Command::new(common::sensor_bin())
            .args(["replay", "--db"])
            .arg(&db)
            .arg("--config")
            .arg(cfg(tag, rdns))
            .arg("--metrics-on-exit")
            .arg(&prom)
            .arg(&pcap)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let count = || {
            common::count_now(
                &db,
                "SELECT count(*) FROM ip_info WHERE country IS NOT NULL OR asn IS NOT NULL",
            )
        };
        let mut reached = None;
        let limit = Instant::now() + Duration::from_secs(120);
        while Instant::now() < limit {
            let exited = child.try_wait().unwrap().is_some();
            if reached.is_none() && db.exists() && want.is_some_and(|w| count() >= w) {
                reached = Some(started.elapsed());
            }
            if exited {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let ended = started.elapsed();
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        // With DNS hung, reverse lookups are shed and the exit status says so (74).
        let want_code = if rdns { 74 } else { 0 };
        assert_eq!(out.status.code(), Some(want_code), "{log}");
        let n = count();
        let prom = std::fs::read_to_string(&prom).unwrap_or_default();
        (reached.unwrap_or(ended), n, prom + &log)
    };
    // Reverse DNS off first: how many rows, and how soon.
    let (_, want, _) = run("warm", false, None);
    assert!(want >= 9_000, "{want} addresses with geo/ASN");
    let all: i64 = rusqlite::Connection::open(dir.join("warm.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM ip_info", [], |r| r.get(0))
        .unwrap();
    let mut off = Vec::new();
    let mut hung = Vec::new();
    for i in 0..3 {
        let (t, n, _) = run(&format!("off{i}"), false, Some(want));
        assert_eq!(n, want);
        off.push(t);
        let (t, n, log) = run(&format!("hung{i}"), true, Some(want));
        assert_eq!(n, want, "every geo/ASN row stored while DNS hangs\n{log}");
        hung.push(t);
        let db = rusqlite::Connection::open(dir.join(format!("hung{i}.db"))).unwrap();
        let (rows, timeouts, not_asked): (i64, i64, i64) = db
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE rdns_status = 'timeout'),
                        count(*) FILTER (WHERE rdns_status IS NULL)
                 FROM ip_info",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(rows, all, "one row per public address");
        // Every address was asked (and timed out) or shed (not asked, row left as it
        // was), and counted as such.
        assert_eq!(timeouts + not_asked, rows);
        assert_eq!(timeouts as f64, lookups(&log, "rdns", "timeout"), "{log}");
        assert_eq!(not_asked as f64, lookups(&log, "rdns", "shed"), "{log}");
        assert!(lookups(&log, "rdns", "shed") > 0.0, "{log}");
    }
    off.sort();
    hung.sort();
    let (off, hung) = (off[1], hung[1]);
    eprintln!(
        "replay of 10,000 addresses: geo/ASN rows after {off:?} with rDNS off, {hung:?} with DNS hung"
    );
    assert!(
        hung.as_secs_f64() < off.as_secs_f64() * 1.5,
        "DNS hung: {hung:?} against {off:?}"
    );
}

/// A database damaged inside (its metadata intact, so it opens) is refused at start, by
/// `enrich` and by `replay`, naming the file.
#[test]
fn a_database_damaged_inside_is_refused_at_start() {
    let dir = common::temp_dir("enrich-damaged");
    let bad = dir.join("GeoIP2-City.mmdb");
    let mut bytes = std::fs::read(mmdb("GeoIP2-City-Test.mmdb")).unwrap();
    // The search tree is at the start; the metadata at the end. Scribble over the tree.
    let len = bytes.len();
    for b in &mut bytes[len / 10..len / 10 + 2048] {
        *b = 0xff;
    }
    std::fs::write(&bad, &bytes).unwrap();
    let out = Command::new(common::sensor_bin())
        .args(["enrich", "--no-rdns", "--mmdb"])
        .arg(&bad)
        .arg("-")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    let cfg = dir.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[enrich]\nrdns = false\nmmdb_paths = [\"{}\"]\n",
            bad.display()
        ),
    )
    .unwrap();
    let out = Command::new(common::sensor_bin())
        .args(["replay", "--db"])
        .arg(dir.join("f.db"))
        .arg("--config")
        .arg(&cfg)
        .arg(shared_data().join("pcap/dev/pcapplusplus/tls2.pcap"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    // A named threat directory that isn't there is an error too.
    let out = Command::new(common::sensor_bin())
        .args(["enrich", "--no-rdns", "--threat-dir"])
        .arg(dir.join("no-such-dir"))
        .arg("-")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no-such-dir"), "{err}");
}

/// Bytes that aren't UTF-8 and over-long lines are skipped with their line numbers; every
/// good line is enriched.
#[test]
fn undecodable_and_overlong_lines_never_abort_the_rest() {
    let dir = common::temp_dir("enrich-bytes");
    let list = dir.join("raw.txt");
    let mut data = format!("{LONDON}\n").into_bytes();
    data.extend(b"\xff\xfe\x00garbage\n");
    data.extend(format!("{TOR_EXIT}\n").as_bytes());
    data.extend(std::iter::repeat_n(b'1', 100_000));
    data.extend(format!("\n{DROP_NET}\n").as_bytes());
    std::fs::write(&list, &data).unwrap();
    let out = Command::new(common::sensor_bin())
        .args(["enrich", "--no-rdns", "--mmdb"])
        .arg(mmdb("GeoIP2-City-Test.mmdb"))
        .arg("--threat-dir")
        .arg(threat_dir())
        .arg(&list)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ips: Vec<&str> = rows.iter().map(|r| r["ip"].as_str().unwrap()).collect();
    assert_eq!(ips, [LONDON, TOR_EXIT, DROP_NET]);
    assert_eq!(rows[0]["city"], "London");
    assert!(err.contains("raw.txt:2: not UTF-8"), "{err}");
    assert!(err.contains("raw.txt:4: longer than 4096 bytes"), "{err}");
}

/// A DNS server answering garbage to every query: the resolver's complaint is logged once
/// per window with a count, not once per packet, and the lookups are counted as failed.
#[test]
fn a_garbage_answering_dns_server_is_logged_once_with_a_count() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let dir = common::temp_dir("enrich-garbage-dns");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let server = {
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            // Bounded: until told to stop, or a minute at most.
            let limit = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                if let Ok((n, peer)) = sock.recv_from(&mut buf)
                    && n >= 2
                {
                    // A reply with the wrong id (the resolver warns and waits on), then
                    // the query's id with bytes that are no DNS message.
                    let wrong = [buf[0] ^ 0x5a, buf[1], 0xff, 0xff];
                    let _ = sock.send_to(&wrong, peer);
                    let mut reply = buf[..2].to_vec();
                    reply.extend_from_slice(&[0xff; 30]);
                    let _ = sock.send_to(&reply, peer);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let ips: Vec<String> = (0..300)
        .map(|i| format!("45.7.{}.{}", i / 250, i % 250))
        .collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, "[enrich]\nrdns_timeout_ms = 500\n").unwrap();
    let list = dir.join("ips.txt");
    std::fs::write(&list, ips.join("\n") + "\n").unwrap();
    let prom = dir.join("garbage.prom");
    let out = Command::new(common::sensor_bin())
        .args(["enrich", "--config", cfg.to_str().unwrap(), "--dns", &addr])
        .arg("--metrics-on-exit")
        .arg(&prom)
        .arg(&list)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let metrics = std::fs::read_to_string(&prom).unwrap();
    let answered = answered.load(Ordering::Relaxed);
    assert!(answered >= 20, "{answered} garbage answers sent");
    // Lines shown, and the counts of those held back, per kind: the resolver's "wrong
    // message id" and our "reverse lookup failed".
    let shown = |needle: &str| {
        err.lines()
            .filter(|l| l.contains("WARN") && l.contains(needle) && !l.contains("more like this"))
            .count() as u64
    };
    let held = |from: &str| -> u64 {
        err.lines()
            .filter(|l| l.contains(&format!(" more like this from {from}")))
            .filter_map(|l| {
                l.split(" more like this")
                    .next()?
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let errors = lookups(&metrics, "rdns", "error") as u64;
    assert!(errors >= 8, "garbage answers fail lookups: {metrics}");
    let (wrong_id, failed_lines) = (shown("wrong message id"), shown("reverse lookup failed"));
    assert!(
        wrong_id <= 1 && failed_lines <= 1,
        "{wrong_id} + {failed_lines} lines for {answered} garbage answers:\n{err}"
    );
    // Nothing dropped without a word: every failed lookup was shown or counted, and so was
    // every bad packet the resolver saw before it.
    assert_eq!(failed_lines + held("sensor::enrich::rdns"), errors, "{err}");
    assert!(wrong_id + held("hickory") >= errors, "{err}");
    let failed: f64 = ["timeout", "error", "shed"]
        .iter()
        .map(|r| lookups(&metrics, "rdns", r))
        .sum();
    assert_eq!(failed, 300.0, "{metrics}");
}

/// A database replaced by a damaged one, and a SIGHUP naming a threat directory that isn't
/// there: `sensor run` keeps what it had, says so, and counts each in
/// `sensor_enrich_source_errors_total{source}`.
#[test]
fn a_source_that_fails_to_reload_is_kept_logged_and_counted() {
    let dir = common::temp_dir("enrich-reload");
    let city = dir.join("city.mmdb");
    let good = std::fs::read(mmdb("GeoIP2-City-Test.mmdb")).unwrap();
    std::fs::write(&city, &good).unwrap();
    let cfg = dir.join("sensor.toml");
    let body = format!(
        "[enrich]\nrdns = false\nreload_check_ms = 100\nmmdb_paths = [\"{}\"]\n",
        city.display()
    );
    std::fs::write(&cfg, &body).unwrap();
    let db = dir.join("flows.db");
    let sensor = common::Sensor::start(&[
        "--hooks",
        "none",
        "--no-capture",
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let addr = sensor.metrics_addr();
    let errors = |source: &str| {
        let (_, body) = common::http_get(&addr, "/metrics");
        common::metric_required(
            &body,
            &format!("sensor_enrich_source_errors_total{{source=\"{source}\"}}"),
        )
    };
    assert_eq!(errors("mmdb"), 0.0);
    assert_eq!(errors("threat"), 0.0);
    // Replaced by rename (as geoipupdate does) with a copy damaged at the top of its tree.
    let mut bad = good.clone();
    let len = bad.len();
    for b in &mut bad[len / 10..len / 10 + 2048] {
        *b = 0xff;
    }
    let tmp = dir.join("city.mmdb.tmp");
    std::fs::write(&tmp, &bad).unwrap();
    std::fs::rename(&tmp, &city).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while errors("mmdb") < 1.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(errors("mmdb"), 1.0, "the failed reload is counted once");
    // The good file back (else the SIGHUP below would fail on it first).
    std::fs::write(&tmp, &good).unwrap();
    std::fs::rename(&tmp, &city).unwrap();
    // SIGHUP with a threat directory that isn't there: the running sources stay.
    std::fs::write(
        &cfg,
        format!("{body}threat_dir = \"{}\"\n", dir.join("gone").display()),
    )
    .unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(sensor.child.id() as i32, libc::SIGHUP) };
    let until = Instant::now() + Duration::from_secs(10);
    while errors("threat") < 1.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(errors("threat"), 1.0);
    assert_eq!(errors("mmdb"), 1.0);
    let (status, log) = sensor.stop();
    let log = log.join("\n");
    assert!(status.success(), "{log}");
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("keeping the previous MaxMind database")
            && l.contains(city.to_str().unwrap())),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("keeping the running enrichment sources")
            && l.contains("gone")),
        "{log}"
    );
}
