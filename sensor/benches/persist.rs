//! Persisting flows: the writer thread (queue, batches of `batch_rows` in one transaction
//! each, cached prepared statement) against a bare rusqlite loop inserting the same rows
//! with a prepared statement in transactions of the same size, in the same run, on the
//! same kind of database (WAL, synchronous=NORMAL, the sensor's schema and indexes).
//!
//! `cargo bench -p sensor --bench persist` (or `cargo xtask bench --only persist`). Prints
//! medians of several rounds; the machines are noisy, so the ratio is the figure to compare.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::params;
use sensor::{
    flow::{EndReason, FlowRecord, Owner},
    store::{self, Writer, WriterConfig, writer::INSERT},
};

const ROWS: usize = 1_000_000;
const BATCH: usize = 1_000;
const ROUNDS: usize = 3;

fn flows() -> Vec<FlowRecord> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let comms = [
        "curl", "firefox", "sshd", "postgres", "nginx", "python3", "java",
    ];
    (0..ROWS)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let local = IpAddr::V4(Ipv4Addr::new(192, 168, 1, (x & 0x3f) as u8 + 2));
            let remote = if x & 0x1f == 0 {
                IpAddr::V6(Ipv6Addr::new(
                    0x2a00,
                    0x1450,
                    (x >> 8) as u16,
                    0,
                    0,
                    0,
                    0,
                    1,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(
                    0x2d00_0000 | ((x >> 8) as u32 & 0x00ff_ffff),
                ))
            };
            let t = 1_700_000_000_000 + i as i64;
            FlowRecord {
                first_seen_ms: t,
                last_seen_ms: t + (x % 60_000) as i64,
                src_payload_bytes: Some(x % 100_000),
                dst_payload_bytes: Some((x >> 20) % 1_000_000),
                src_owner: Some(Owner {
                    pid: (x % 30_000) as u32,
                    comm: comms[(x % comms.len() as u64) as usize].to_string(),
                    ..Default::default()
                }),
                srtt_us: Some((x % 100_000) as u32),
                retransmits: Some((x % 3) as u32),
                end_reason: EndReason::Fin,
                src_packets: Some(x % 1_000),
                dst_packets: Some((x >> 10) % 1_000),
                src_bytes: Some(x % 200_000),
                dst_bytes: Some((x >> 20) % 2_000_000),
                src_tcp_flags: Some(0x1b),
                dst_tcp_flags: Some(0x1b),
                ..FlowRecord::kernel(
                    SocketAddr::new(local, 30_000 + (x % 30_000) as u16),
                    SocketAddr::new(remote, [443, 80, 22, 5432][(x % 4) as usize]),
                )
            }
        })
        .collect()
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
    }
    p
}

/// The baseline: the same INSERT, prepared once, the same rows, BATCH rows a transaction.
fn bare(path: &Path, rows: &[FlowRecord]) -> Duration {
    let mut conn = store::open_for_writing(path).expect("open");
    let t = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let tx = conn.transaction().expect("tx");
        {
            let mut stmt = tx.prepare_cached(INSERT).expect("prepare");
            for f in chunk {
                stmt.execute(params![
                    f.first_seen_ms,
                    f.last_seen_ms,
                    f.proto,
                    f.src.ip().to_string(),
                    f.src.port(),
                    f.dst.ip().to_string(),
                    f.dst.port(),
                    f.src_payload_bytes.map(|b| b as i64),
                    f.dst_payload_bytes.map(|b| b as i64),
                    f.src_owner.as_ref().map(|o| o.pid),
                    f.src_owner.as_ref().map(|o| o.comm.as_str()),
                    f.dst_owner.as_ref().map(|o| o.pid),
                    f.dst_owner.as_ref().map(|o| o.comm.as_str()),
                    f.srtt_us,
                    f.retransmits,
                    f.end_reason.as_str(),
                    f.sources,
                    f.src_packets.map(|v| v as i64),
                    f.dst_packets.map(|v| v as i64),
                    f.src_bytes.map(|v| v as i64),
                    f.dst_bytes.map(|v| v as i64),
                    f.src_tcp_flags,
                    f.dst_tcp_flags,
                ])
                .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    t.elapsed()
}

/// The writer: queue in (in chunks, as replay sends them), batched transactions out, until
/// every row is committed.
fn writer(path: &Path, rows: Vec<FlowRecord>) -> (Duration, i64) {
    let conn = store::open_for_writing(path).expect("open");
    let w = Writer::spawn(
        conn,
        path.to_path_buf(),
        WriterConfig {
            // As `sensor run`: rolled up for `top` whenever the queue runs dry.
            rollup: true,
            ..WriterConfig::new(BATCH, Duration::from_secs(1), 65_536)
        },
    );
    let stats = w.stats();
    let t = Instant::now();
    // As `sensor replay` hands flows over: in chunks of 512.
    let mut rows = rows.into_iter();
    loop {
        let chunk: Vec<FlowRecord> = rows.by_ref().take(512).collect();
        if chunk.is_empty() {
            break;
        }
        w.send_many_blocking(chunk);
    }
    w.finish();
    let took = t.elapsed();
    let written = stats
        .rows_written
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(written as usize, ROWS, "every row written");
    // How far the rollup got between batches (it yields while the writer is behind).
    let rolled: i64 = store::open_for_reading(path)
        .expect("open")
        .query_row("SELECT max_id FROM rollup_state", [], |r| r.get(0))
        .expect("rollup_state");
    (took, rolled)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let rows = flows();
    let mut bare_rates = Vec::new();
    let mut writer_rates = Vec::new();
    let mut rolled = Vec::new();
    for _ in 0..ROUNDS {
        let b = bare(&fresh(&dir, "persist-bare.db"), &rows);
        bare_rates.push(ROWS as f64 / b.as_secs_f64());
        let (w, r) = writer(&fresh(&dir, "persist-writer.db"), rows.clone());
        writer_rates.push(ROWS as f64 / w.as_secs_f64());
        rolled.push(r);
    }
    let (b, w) = (median(bare_rates), median(writer_rates));
    println!(
        "persist: writer {:.0} k rows/s, bare rusqlite prepared-insert loop {:.0} k rows/s \
         ({ROWS} rows, {BATCH} a transaction, medians of {ROUNDS}); ratio {:.2} \
         (targets: >= 300 k rows/s, >= 0.50); rows rolled up by the writer meanwhile: {rolled:?}",
        w / 1e3,
        b / 1e3,
        w / b
    );
    for name in ["persist-bare.db", "persist-writer.db"] {
        fresh(&dir, name);
    }
}
