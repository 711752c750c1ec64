//! `sensor replay` tells the truth: its `--metrics-on-exit` counters are the ones a live run
//! keeps, they add up stage by stage and equal the rows in the database; and a replay that
//! loses rows (a full file system) says so in its exit status (74), not 0.
mod common;

use std::{path::Path, process::Command};

use common::{is_root, metric_required, services::shared_data, skip, temp_dir};

fn rows(db: &Path) -> f64 {
    let conn = rusqlite::Connection::open(db).expect("open db");
    conn.query_row("SELECT count(*) FROM flows", [], |r| r.get::<_, i64>(0))
        .expect("count") as f64
}

fn sum_prefix(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn replay_metrics_add_up_and_equal_the_database() {
    let dir = temp_dir("replay-metrics");
    let db = dir.join("f.db");
    let prom = dir.join("final.prom");
    let captures = [
        shared_data().join("pcap/dev/pcapplusplus/tls2.pcap"),
        shared_data().join("pcap/dev/ndpi/gnutella.pcap"),
    ];
    let out = Command::new(common::sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg("--metrics-on-exit")
        .arg(&prom)
        .args(&captures)
        .output()
        .expect("run sensor replay");
    let err = String::from_utf8_lossy(&out.stderr);
    // gnutella.pcap holds one packet the parser gives up on: bad input, partial results.
    assert_eq!(out.status.code(), Some(65), "{err}");
    let m = std::fs::read_to_string(&prom).expect("metrics written");
    let read = metric_required(&m, "sensor_capture_packets_total");
    let parsed = metric_required(&m, "sensor_capture_handed_off_packets_total");
    let not_ip = metric_required(&m, "sensor_capture_not_ip_packets_total");
    let malformed = metric_required(&m, "sensor_capture_malformed_packets_total");
    assert!(read > 10_000.0, "{read} packets read");
    assert_eq!(malformed, 1.0);
    assert_eq!(
        read,
        parsed + not_ip + malformed,
        "capture: in = out + skipped"
    );
    assert_eq!(
        metric_required(&m, "sensor_flow_packets_total"),
        parsed,
        "every parsed packet reached the flow table"
    );
    let created = metric_required(&m, "sensor_flow_created_flows_total{table=\"packets\"}");
    let records = sum_prefix(&m, "sensor_flow_ended_flows_total");
    // A flow cut at the active timeout goes on: one more record, not one more flow.
    let cut = metric_required(
        &m,
        "sensor_flow_ended_flows_total{reason=\"active\",table=\"packets\"}",
    );
    assert!(created > 300.0, "{created} flows");
    assert_eq!(created, records - cut, "flows: created = ended");
    let ended = records;
    let stored = metric_required(&m, "sensor_store_rows_total");
    assert_eq!(
        ended,
        stored
            + metric_required(&m, "sensor_store_failed_rows_total")
            + metric_required(&m, "sensor_store_dropped_rows_total"),
        "store: in = out + dropped"
    );
    assert_eq!(stored, rows(&db), "rows counted = rows stored");
    let amendments = metric_required(&m, "sensor_flow_amendments_total");
    assert_eq!(
        amendments,
        sum_prefix(&m, "sensor_store_amendments_total"),
        "every amendment applied, missed or dropped"
    );
    assert_eq!(
        metric_required(&m, "sensor_store_amendments_total{result=\"missed\"}"),
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database on a file system too small for it: the rows that fit are stored, the rest
/// are counted as lost, and the exit status is 74.
#[test]
fn replay_onto_a_full_file_system_exits_74_and_counts_the_loss() {
    if !is_root() {
        skip(
            "replay_onto_a_full_file_system_exits_74_and_counts_the_loss",
            "needs root to mount a small tmpfs",
        );
        return;
    }
    let dir = temp_dir("replay-full");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=192k", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(st.success(), "mount tmpfs");
    let db = mnt.join("f.db");
    let prom = dir.join("final.prom");
    let cfg = dir.join("sensor.toml");
    // Small batches so that some fit before the disk is full; few retries.
    std::fs::write(&cfg, "batch_rows = 50\nstore_held_rows = 50\n").unwrap();
    let out = Command::new(common::sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg("--config")
        .arg(&cfg)
        .arg("--metrics-on-exit")
        .arg(&prom)
        .arg(shared_data().join("pcap/dev/pcapplusplus/many-protocols.pcap"))
        .output()
        .expect("run sensor replay");
    let err = String::from_utf8_lossy(&out.stderr);
    let m = std::fs::read_to_string(&prom).expect("metrics written");
    let stored_rows = rows(&db);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(err.contains("could not be kept"), "{err}");
    let failed = metric_required(&m, "sensor_store_failed_rows_total");
    let stored = metric_required(&m, "sensor_store_rows_total");
    assert!(failed > 0.0, "the loss is counted");
    assert_eq!(stored, stored_rows, "rows counted = rows stored");
    let ended = sum_prefix(&m, "sensor_flow_ended_flows_total");
    assert_eq!(
        ended,
        stored + failed + metric_required(&m, "sensor_store_dropped_rows_total"),
        "every flow stored or counted lost"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
