//! The store under the failures an operator meets: the sensor killed with SIGKILL, the
//! disk full, the database read-only. As root (the sensor captures on `lo`), with the
//! database on a small ext4 file system in a loop file the test mounts.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Sensor, http_get, is_root, metric_value, skip, tcp_traffic, temp_dir};

fn metrics(sensor: &Sensor) -> String {
    http_get(&sensor.metrics_addr(), "/metrics").1
}

fn rows_in(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
        .unwrap()
}

fn integrity(db: &Path) -> String {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Waits until `cond` holds on the sensor's metrics (at most `secs`).
fn wait_for(sensor: &Sensor, secs: u64, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = metrics(sensor);
        if cond(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what} within {secs} s:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const ROWS: &str = "sensor_store_rows_total";
const PENDING: &str = "sensor_store_pending_rows";
const ERRORS: &str = "sensor_store_write_errors_total";
const FAILED: &str = "sensor_store_failed_rows_total";
const PACKETS: &str = "sensor_capture_packets_total";

/// A small ext4 file system in a loop file, mounted for the test.
struct Ext4(PathBuf);

impl Ext4 {
    fn mount(dir: &Path, size_mb: u32) -> Self {
        let img = dir.join("fs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(u64::from(size_mb) << 20).unwrap();
        drop(f);
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .expect("mkfs.ext4 (e2fsprogs; cargo xtask setup installs it)");
        assert!(st.success(), "mkfs.ext4");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount -o loop");
        Self(mnt)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Makes files immutable (`+i`) or not (`-i`): on ext4 even writes through descriptors
/// already open fail (EPERM), as on a file system gone read-only.
fn chattr(flag: &str, files: &[PathBuf]) {
    let st = Command::new("chattr")
        .arg(flag)
        .args(files)
        .status()
        .unwrap();
    assert!(st.success(), "chattr {flag}");
}

/// Fills the file system holding `dir` until it refuses more.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn sigkill_keeps_every_committed_row_and_a_sound_database() {
    let name = "sigkill_keeps_every_committed_row_and_a_sound_database";
    if !is_root() {
        skip(name, "needs root: the sensor attaches and captures");
        return;
    }
    let dir = temp_dir("sigkill");
    let db = dir.join("flows.db");
    let args = [
        "--db",
        db.to_str().unwrap(),
        "--interface",
        "lo",
        "--hooks",
        "none",
    ];
    let mut sensor = Sensor::start(&args);
    tcp_traffic(300, 4);
    let m = wait_for(&sensor, 20, "rows committed", |m| {
        metric_value(m, ROWS) >= 600.0
    });
    // More traffic, and the kill in the middle of it.
    let traffic = std::thread::spawn(|| tcp_traffic(500, 4));
    std::thread::sleep(Duration::from_millis(300));
    let before = metrics(&sensor);
    let committed = metric_value(&before, ROWS);
    sensor.child.kill().unwrap();
    sensor.child.wait().unwrap();
    traffic.join().unwrap();
    assert_eq!(integrity(&db), "ok");
    let n = rows_in(&db) as f64;
    assert!(
        n >= committed,
        "{n} rows on disk, {committed} committed before the kill"
    );
    // What can be missing is what was not committed yet: at most the flows the writer
    // held (pending) when the last scrape ran plus what arrived after it.
    eprintln!(
        "committed before the kill: {committed} (pending {}), on disk after: {n}; \
         {} before the second burst",
        metric_value(&before, PENDING),
        metric_value(&m, ROWS)
    );
    // The database opens and takes new flows.
    let sensor = Sensor::start(&args);
    tcp_traffic(50, 2);
    wait_for(&sensor, 20, "new rows", |m| metric_value(m, ROWS) >= 100.0);
    let (status, _) = sensor.stop();
    assert!(status.success());
    assert!(rows_in(&db) as f64 >= n + 100.0);
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn disk_full_and_read_only_hold_flows_and_writing_resumes() {
    let name = "disk_full_and_read_only_hold_flows_and_writing_resumes";
    if !is_root() {
        skip(
            name,
            "needs root: mounts a file system, the sensor captures",
        );
        return;
    }
    let dir = temp_dir("diskfull");
    let fs = Ext4::mount(&dir, 16);
    let db = fs.0.join("flows.db");
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, "flush_ms = 200\ntcp_close_linger_ms = 200\n").unwrap();
    let sensor = Sensor::start(&[
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--interface",
        "lo",
        "--hooks",
        "none",
    ]);
    tcp_traffic(100, 2);
    // (The scrapes themselves are flows on lo too: counts are lower bounds.)
    let m0 = wait_for(&sensor, 20, "first rows", |m| {
        metric_value(m, ROWS) >= 200.0
    });

    // Disk full: flows are held, capture goes on.
    let filler = fill(&fs.0);
    tcp_traffic(150, 2);
    let m1 = wait_for(&sensor, 20, "writes failing, flows held", |m| {
        metric_value(m, ERRORS) > 0.0 && metric_value(m, PENDING) >= 300.0
    });
    assert!(metric_value(&m1, PACKETS) > metric_value(&m0, PACKETS));
    assert_eq!(metric_value(&m1, FAILED), 0.0, "held, not lost");
    let (status, body) = http_get(&sensor.metrics_addr(), "/healthz");
    assert_eq!(status, 200, "every stage still beats: {body}");

    // Space returns: writing resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let m2 = wait_for(&sensor, 20, "writing resumed", |m| {
        metric_value(m, ROWS) >= metric_value(&m1, ROWS) + 300.0
    });

    // Read-only database (its file and journal refuse writes): the same. The shared-memory
    // index (-shm) stays writable: it is mapped, and SQLite must be able to read it.
    let files = [db.clone(), PathBuf::from(format!("{}-wal", db.display()))];
    chattr("+i", &files);
    tcp_traffic(100, 2);
    let m3 = wait_for(&sensor, 20, "read-only: flows held", |m| {
        metric_value(m, ERRORS) > metric_value(&m2, ERRORS) && metric_value(m, PENDING) >= 200.0
    });
    chattr("-i", &files);
    let m4 = wait_for(&sensor, 20, "writable again", |m| {
        metric_value(m, ROWS) >= metric_value(&m3, ROWS) + 200.0
    });
    assert_eq!(metric_value(&m4, FAILED), 0.0);

    let (status, log) = sensor.stop();
    assert!(status.success(), "{}", log.join("\n"));
    let last: Vec<&String> = log.iter().filter(|l| l.contains("stopped")).collect();
    assert!(!last.is_empty());
    assert_eq!(integrity(&db), "ok");
    let n = rows_in(&db) as f64;
    assert!(n >= metric_value(&m4, ROWS), "{n}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retention in a running sensor: flows older than the maximum age (here: a capture from
/// 2021 replayed into the database) are pruned by the writer, and counted.
#[test]
fn retention_prunes_old_flows_while_running() {
    let dir = temp_dir("retention");
    let db = dir.join("flows.db");
    let out = Command::new(common::sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg(common::services::shared_data().join("pcap/dev/pcapplusplus/tls2.pcap"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let old = rows_in(&db);
    assert!(old > 300);
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, "retention_max_age_s = 86400\n").unwrap();
    let prom = dir.join("final.prom");
    let sensor = Sensor::start(&[
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--hooks",
        "none",
        "--no-capture",
        "--metrics-on-exit",
        prom.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rows_in(&db) > 0 {
        assert!(Instant::now() < deadline, "old flows not pruned");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = sensor.stop();
    assert!(status.success());
    let m = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        metric_value(&m, "sensor_store_pruned_rows_total{reason=\"age\"}"),
        old as f64
    );
    assert_eq!(integrity(&db), "ok");
}
