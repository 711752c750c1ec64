//! The sensor's metrics, scraped for real: `promtool check metrics` on a live scrape, a real
//! Prometheus (Debian's) scraping the sensor on loopback and answering PromQL with the
//! counters the traffic must have moved, and `/healthz`. Needs root (the sensor attaches).
mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Sensor, http_get, is_root, metric_required, metric_value, skip, temp_dir};

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `per_family` tcpload connections over each of 127.0.0.1 and ::1, `threads` at a time.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The first sample's value of a PromQL instant query, if any.
fn query(prom: &str, promql: &str) -> Option<f64> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={q}"));
    if status != 200 {
        return None;
    }
    // ..."value":[1732480000.123,"40"]...
    let v = body.split("\"value\":[").nth(1)?;
    let v = v.split(',').nth(1)?;
    v.trim_start_matches('"').split('"').next()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_sensor_and_promtool_accepts_it() {
    let name = "prometheus_scrapes_the_sensor_and_promtool_accepts_it";
    if !is_root() {
        skip(name, "needs root: the sensor attaches its kernel hooks");
        return;
    }
    if !have("prometheus") || !have("promtool") {
        skip(
            name,
            "prometheus/promtool not installed (cargo xtask setup installs them)",
        );
        return;
    }
    let dir = temp_dir("metrics");
    let db = dir.join("flows.db");
    // Per-program run counts need the kernel's BPF statistics on; restored at the end.
    let stats_knob = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_before = std::fs::read_to_string(stats_knob).unwrap_or_default();
    std::fs::write(stats_knob, "1").expect("enable kernel.bpf_stats_enabled");
    let sensor = Sensor::start(&["--db", db.to_str().unwrap(), "--interface", "lo"]);
    let metrics = sensor.metrics_addr();

    // A real Prometheus scraping the sensor every second.
    let prom = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sensor\n    \
             static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&prom).is_err() || http_get(&prom, "/-/ready").0 != 200 {
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Traffic: 20 connections each over 127.0.0.1 and ::1.
    common::tcp_traffic(20, 4);

    // promtool on a live scrape.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && problems.trim().is_empty(),
        "promtool: {problems}"
    );

    let runs: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("sensor_ebpf_program_runs_total{program=\"sensor_set_state\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(runs > 0.0, "the tracepoint's run count published: {runs}");

    let (status, health) = http_get(&metrics, "/healthz");
    assert_eq!((status, health.trim()), (200, "{\"status\":\"ok\"}"));

    // Prometheus has the counters the traffic moved.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = (None, None);
    while Instant::now() < deadline {
        seen = (
            query(&prom, "sensor_flow_created_flows_total{table=\"kernel\"}"),
            query(&prom, "sensor_capture_packets_total"),
        );
        if seen.0.is_some_and(|v| v >= 40.0) && seen.1.is_some_and(|v| v > 0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::write(stats_knob, stats_before.trim());
    let (status, _) = sensor.stop();
    assert!(status.success());
    assert!(
        seen.0.is_some_and(|v| v >= 40.0) && seen.1.is_some_and(|v| v > 0.0),
        "PromQL answers: kernel flows created {:?}, packets captured {:?}",
        seen.0,
        seen.1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn sum_prefix(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// In = out + counted drops at every stage, under a burst that overflows a deliberately
/// small ring buffer and small queues.
#[test]
fn every_stage_accounts_for_everything_under_overflow() {
    let name = "every_stage_accounts_for_everything_under_overflow";
    if !is_root() {
        skip(name, "needs root: the sensor attaches its kernel hooks");
        return;
    }
    let dir = temp_dir("invariant");
    let db = dir.join("flows.db");
    let cfg = dir.join("small.toml");
    std::fs::write(
        &cfg,
        "ringbuf_bytes = 4096\nstore_queue_rows = 4\ncapture_queue_packets = 16\n",
    )
    .unwrap();
    let final_metrics = dir.join("final.prom");
    let sensor = Sensor::start(&[
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--interface",
        "lo",
        "--metrics-on-exit",
        final_metrics.to_str().unwrap(),
    ]);
    common::tcp_traffic(2000, 8);
    let (status, _) = sensor.stop();
    assert!(status.success());
    let m = std::fs::read_to_string(&final_metrics).expect("final metrics");

    // Kernel ring buffer: what the programs produced was read or counted as dropped.
    let produced = metric_value(&m, "sensor_ringbuf_produced_events_total");
    let read = metric_value(&m, "sensor_ringbuf_events_total");
    let dropped = metric_value(&m, "sensor_ringbuf_dropped_events_total");
    assert!(dropped > 0.0, "the burst overflowed the 4 KiB ring buffer");
    assert_eq!(produced, read + dropped, "ringbuf: in = out + dropped");

    // Capture: every frame was handed off, dropped (counted) or skipped (counted); the
    // flow table took in what was handed off.
    let captured = metric_value(&m, "sensor_capture_packets_total");
    let handed = metric_value(&m, "sensor_capture_handed_off_packets_total");
    let queue_dropped = metric_value(&m, "sensor_capture_dropped_packets_total{reason=\"queue\"}");
    let skipped = metric_value(&m, "sensor_capture_not_ip_packets_total")
        + metric_value(&m, "sensor_capture_malformed_packets_total");
    assert!(captured > 0.0);
    assert_eq!(
        captured,
        handed + queue_dropped + skipped,
        "capture: in = out + dropped"
    );
    assert_eq!(
        metric_value(&m, "sensor_flow_packets_total"),
        handed,
        "flow table took all"
    );
    // The ring's losses: a TPACKET_V3 ring drops only while frozen for want of a block.
    let kernel_dropped = metric_required(
        &m,
        "sensor_capture_dropped_packets_total{reason=\"kernel\"}",
    );
    let freezes = metric_required(&m, "sensor_capture_ring_freezes_total");
    assert!(
        kernel_dropped == 0.0 || freezes > 0.0,
        "{kernel_dropped} kernel drops without a ring freeze"
    );

    // Flow tables: every flow created has ended (nothing open after shutdown).
    for table in ["kernel", "packets"] {
        let created = metric_value(
            &m,
            &format!("sensor_flow_created_flows_total{{table=\"{table}\"}}"),
        );
        let ended: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("sensor_flow_ended_flows_total")
                    && l.contains(&format!("table=\"{table}\""))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        assert!(created > 0.0, "{table} flows created");
        assert_eq!(created, ended, "{table} flows: created = ended");
    }

    // Merge: records and amendments that reached it = 2 per merged pair + those alone +
    // amendments folded into a waiting record or passed on.
    let records = sum_prefix(&m, "sensor_flow_ended_flows_total");
    let amendments = metric_required(&m, "sensor_flow_amendments_total");
    let merge_dropped = metric_value(&m, "sensor_merge_dropped_flows_total");
    let merged = metric_value(&m, "sensor_merge_merged_flows_total");
    let alone = sum_prefix(&m, "sensor_merge_alone_flows_total");
    let passed = metric_required(&m, "sensor_merge_amendments_total{result=\"passed\"}");
    let folded = metric_required(&m, "sensor_merge_amendments_total{result=\"folded\"}");
    assert_eq!(
        records + amendments - merge_dropped,
        2.0 * merged + alone + folded + passed,
        "merge: in = out + dropped"
    );

    // Store: what the merge sent was written, failed or dropped (all counted); the rows
    // are in the database; amendments were applied, missed or dropped (counted apart).
    let rows = metric_value(&m, "sensor_store_rows_total");
    let failed = metric_value(&m, "sensor_store_failed_rows_total");
    let store_dropped = metric_value(&m, "sensor_store_dropped_rows_total");
    assert_eq!(
        merged + alone,
        rows + failed + store_dropped,
        "store: in = out + dropped"
    );
    assert_eq!(
        passed,
        sum_prefix(&m, "sensor_store_amendments_total"),
        "store: every amendment applied, missed or dropped"
    );
    assert_eq!(metric_value(&m, "sensor_store_pending_rows"), 0.0);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: f64 = conn
        .query_row("SELECT count(*) FROM flows", [], |r| r.get::<_, i64>(0))
        .unwrap() as f64;
    assert_eq!(n, rows, "rows counted = rows stored");

    // Enrichment: both addresses of every flow sent to the writer were offered, and each
    // offer was answered from memory, skipped (not public: all of these are loopback),
    // enriched or shed.
    let offered = metric_value(&m, "sensor_enrich_offered_addresses_total");
    assert_eq!(
        offered,
        2.0 * (merged + alone),
        "enrich: every flow offered"
    );
    assert_eq!(
        offered,
        metric_value(&m, "sensor_enrich_cache_hits_total")
            + metric_value(&m, "sensor_enrich_skipped_addresses_total")
            + metric_value(&m, "sensor_enrich_done_addresses_total")
            + sum_prefix(&m, "sensor_enrich_shed_addresses_total"),
        "enrich: in = out + shed"
    );
    assert_eq!(metric_value(&m, "sensor_enrich_queue_addresses"), 0.0);
    eprintln!(
        "ringbuf dropped {dropped} of {produced}; capture queue dropped {queue_dropped} of \
         {captured}; merge dropped {merge_dropped}; store dropped {store_dropped}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped alerting rules are valid for Prometheus (`promtool check rules`) and name
/// only metrics the sensor serves (the unit test `dashboard_names_only_real_metrics` checks
/// the names; this checks the PromQL and the file's shape).
#[test]
fn the_detection_alert_rules_pass_promtool() {
    let name = "the_detection_alert_rules_pass_promtool";
    if !have("promtool") {
        skip(
            name,
            "promtool not installed (cargo xtask setup installs it)",
        );
        return;
    }
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sensor-alerts.rules.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 3 rules found"), "{text}");
}
