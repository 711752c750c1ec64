//! Query benchmarks: `sensor export` of 1 M flows (target: at least 1 M rows/s to CSV) and
//! `sensor top` over 10 M flows (target: under 1 s), medians of three; and, in the same
//! run, the floor under each: SQLite alone handing over the same columns the same way
//! (`sensor/benches/query_floor.rs`).
//!
//! The databases are synthetic but shaped like a busy host's: one local address (plus some
//! loopback traffic) talking to 50,000 remote addresses (IPv4 and IPv6, a few of them very
//! popular), 300 processes, 2,000 server ports, kernel-only, capture-only and merged flows,
//! bytes spread over six orders of magnitude, and `ip_info` rows (country, ASN, some host
//! names and threat lists) for every remote address. They are made once and kept under
//! `target/bench/`; the schema comes from the sensor itself (a replay of a tiny capture),
//! so a schema change makes them again.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, measure::median_secs, run};

const SENSOR: &str = "target/release/sensor";
/// Bump when the generated rows change, so cached databases are made again.
const GENERATOR: u32 = 1;
const REMOTES: usize = 50_000;
const PROCESSES: usize = 300;
const PORTS: usize = 2_000;
/// The flows span this long, ending now (so relative `--since` means something).
const SPAN_MS: i64 = 30 * 86_400_000;

pub fn export() -> Result<()> {
    build()?;
    let n = 1_000_000;
    let db = database(n)?;
    for format in ["csv", "json", "ndjson"] {
        let secs = median_secs(|| {
            let out = std::fs::File::create("/dev/null")?;
            let st = Command::new(SENSOR)
                .args(["export", "--format", format, "--db"])
                .arg(&db)
                .stdout(out)
                .status()?;
            if !st.success() {
                bail!("sensor export --format {format} failed");
            }
            Ok(())
        })?;
        println!(
            "export --format {format}: {n} flows in {secs:.3} s = {:.2} M rows/s \
             (target >= 1 M rows/s for csv; median of 3)",
            n as f64 / secs / 1e6
        );
    }
    let floor = floor(&db, "export")?;
    println!(
        "export floor: SQLite alone handing over the same 24 columns in index order on one \
         thread: {floor:.3} s = {:.2} M rows/s (median of 3)",
        n as f64 / floor / 1e6
    );
    // A filter that the index answers, and one that every row is checked against.
    for args in [&["--since", "3d"][..], &["--ip", "100.0.0.0/6"][..]] {
        let (secs, rows) = timed_rows(&db, "export", args)?;
        println!(
            "export --format csv {}: {rows} of {n} flows in {secs:.3} s (median of 3)",
            args.join(" ")
        );
    }
    Ok(())
}

pub fn top() -> Result<()> {
    build()?;
    let n = 10_000_000;
    let db = database(n)?;
    let runs: &[&[&str]] = &[
        &["--group", "remote-ip"],
        &["--group", "country"],
        &["--group", "asn", "--by", "flows"],
        &["--group", "process", "--by", "packets"],
        &["--group", "port"],
        &["--group", "pair"],
        &["--group", "remote-ip", "--since", "1d"],
        &["--group", "remote-ip", "--country", "DE"],
    ];
    // The rollup, by the code the writer runs when idle (a no-op when the cached database
    // has it already).
    let t = std::time::Instant::now();
    let st = Command::new(SENSOR)
        .args(["rollup", "--db"])
        .arg(&db)
        .env("SENSOR_LOG", "warn")
        .status()?;
    if !st.success() {
        bail!("sensor rollup failed");
    }
    println!(
        "rollup of {n} flows (only what was not rolled up yet): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for args in runs {
        for rollup in [true, false] {
            let mut args = args.to_vec();
            if !rollup {
                args.push("--no-rollup");
            }
            let (secs, _) = timed_rows(&db, "top", &args)?;
            println!(
                "top {} over {n} flows: {secs:.3} s ({}; median of 3)",
                args.join(" "),
                if secs < 1.0 {
                    "under the 1 s target"
                } else {
                    "OVER the 1 s target"
                }
            );
        }
    }
    let floor = floor(&db, "top")?;
    println!(
        "top floor: SQLite alone handing over the 4 columns top --group remote-ip reads, \
         one thread per core: {floor:.3} s (median of 3; a row-by-row top cannot beat it)"
    );
    Ok(())
}

/// `sensor/benches/query_floor.rs` on `db`: seconds, median of three.
fn floor(db: &Path, what: &str) -> Result<f64> {
    let out = cargo()
        .args(["bench", "-p", "sensor", "--bench", "query_floor"])
        .env("QUERY_FLOOR_DB", std::fs::canonicalize(db)?)
        .env("QUERY_FLOOR", what)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("cargo bench --bench query_floor failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .with_context(|| format!("query_floor printed no time: {text}"))
}

/// Median wall time of `sensor SUB ARGS --db DB` (CSV/table to a pipe), and its output
/// lines less the header.
fn timed_rows(db: &Path, sub: &str, args: &[&str]) -> Result<(f64, usize)> {
    let mut lines = 0;
    let secs = median_secs(|| {
        let out = Command::new(SENSOR)
            .arg(sub)
            .args(args)
            .arg("--db")
            .arg(db)
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("sensor {sub} {} failed", args.join(" "));
        }
        lines = out.stdout.split(|b| *b == b'\n').count().saturating_sub(2);
        Ok(())
    })?;
    Ok((secs, lines))
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "sensor"]))
}

/// The schema version the sensor writes: from a fresh replay of a tiny capture.
fn fresh_schema(dir: &Path) -> Result<PathBuf> {
    let db = dir.join("query-schema.db");
    remove_db(&db);
    let out = Command::new(SENSOR)
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg("tests/data/tcp_handshake.pcapng")
        .env("SENSOR_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "sensor replay (for the schema) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(db)
}

fn remove_db(db: &Path) {
    for ext in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

fn user_version(db: &Path) -> Result<i64> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// The benchmark database of `n` flows: cached while the schema and generator are the same.
fn database(n: usize) -> Result<PathBuf> {
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let schema = fresh_schema(&dir)?;
    let version = user_version(&schema)?;
    let db = dir.join(format!("query-{n}-g{GENERATOR}-s{version}.db"));
    if db.is_file() {
        let conn = rusqlite::Connection::open(&db)?;
        let have: i64 = conn.query_row("SELECT count(*) FROM flows", [], |r| r.get(0))?;
        if have == n as i64 {
            eprintln!("xtask: using {} ({n} flows)", db.display());
            return Ok(db);
        }
    }
    remove_db(&db);
    let tmp = dir.join(format!("query-{n}.tmp.db"));
    remove_db(&tmp);
    std::fs::copy(&schema, &tmp)?;
    eprintln!("xtask: making {} ({n} synthetic flows)", db.display());
    let t = std::time::Instant::now();
    fill(&tmp, n).with_context(|| format!("filling {}", tmp.display()))?;
    std::fs::rename(&tmp, &db)?;
    eprintln!("xtask:   done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(db)
}

/// splitmix64: deterministic, so every machine benchmarks the same rows.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in [lo, hi).
    fn log_uniform(&mut self, lo: f64, hi: f64) -> i64 {
        (lo * (hi / lo).powf(self.unit())) as i64
    }

    /// An index in [0, n), skewed: a few values are very popular, as with real peers.
    fn skewed(&mut self, n: usize) -> usize {
        ((n as f64) * self.unit().powi(3)) as usize
    }
}

/// A public-looking address: 80 % IPv4, the rest IPv6.
fn remote_address(rng: &mut Rng) -> String {
    if rng.below(5) > 0 {
        loop {
            let a = 1 + rng.below(223) as u8;
            if [10, 100, 127, 169, 172, 192].contains(&a) {
                continue;
            }
            let r = rng.next();
            return Ipv4Addr::new(a, r as u8, (r >> 8) as u8, (r >> 16) as u8).to_string();
        }
    }
    let r = rng.next();
    Ipv6Addr::new(
        0x2a00 | (r & 0xff) as u16,
        (r >> 8) as u16,
        (r >> 24) as u16,
        0,
        0,
        0,
        0,
        (r >> 40) as u16 | 1,
    )
    .to_string()
}

const COUNTRIES: &[&str] = &[
    "US", "DE", "FR", "GB", "NL", "IE", "SE", "JP", "CN", "KR", "IN", "BR", "CA", "AU", "RU", "PL",
    "IT", "ES", "CH", "SG", "HK", "FI", "NO", "DK", "AT", "BE", "CZ", "ZA", "MX", "AR",
];
const END_REASONS: &[&str] = &["fin", "fin", "fin", "rst", "idle", "active", "failed"];

fn fill(db: &Path, n: usize) -> Result<()> {
    let mut rng = Rng(0x5e45_0a11 ^ n as u64);
    let mut conn = rusqlite::Connection::open(db)?;
    // Loading a copy nobody else reads: no journal, no syncs; WAL again at the end, as the
    // sensor leaves its databases.
    let mode: String = conn.query_row("PRAGMA journal_mode=OFF", [], |r| r.get(0))?;
    if mode != "off" {
        bail!("journal_mode is {mode}");
    }
    conn.execute_batch(
        "PRAGMA synchronous=OFF; PRAGMA cache_size=-262144; \
         DELETE FROM flows; DELETE FROM ip_info;",
    )?;
    let remotes: Vec<String> = (0..REMOTES).map(|_| remote_address(&mut rng)).collect();
    let processes: Vec<String> = (0..PROCESSES).map(|i| format!("proc-{i:03}")).collect();
    let ports: Vec<i64> = (0..PORTS)
        .map(|i| match i {
            0 => 443,
            1 => 80,
            2 => 53,
            3 => 22,
            _ => 1 + rng.below(49_151) as i64,
        })
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let tx = conn.transaction()?;
    {
        let mut info = tx.prepare(
            "INSERT OR REPLACE INTO ip_info (ip, country, city, asn, as_org, hostname, threat, \
             checked_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (i, ip) in remotes.iter().enumerate() {
            let asn = 1 + rng.below(2_000) as i64 * 7;
            let threat = (rng.below(100) == 0).then_some("firehol_level1,spamhaus_drop");
            let hostname = (i % 2 == 0).then(|| format!("host-{i}.example.net"));
            info.execute(rusqlite::params![
                ip,
                COUNTRIES[rng.skewed(COUNTRIES.len())],
                format!("City {}", rng.below(500)),
                asn,
                format!("AS{asn} Example Networks, Inc."),
                hostname,
                threat,
                now_ms,
            ])?;
        }
        let mut ins = tx.prepare(
            "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port, dst_ip, \
             dst_port, src_payload_bytes, dst_payload_bytes, src_pid, src_comm, dst_pid, \
             dst_comm, srtt_us, retransmits, end_reason, sources, src_packets, dst_packets, \
             src_bytes, dst_bytes, src_tcp_flags, dst_tcp_flags) VALUES (?1, ?2, ?3, ?4, ?5, \
             ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, \
             ?23)",
        )?;
        // Flows are written when they end: each chunk's flows start in order and are
        // inserted in the order they end, so `first_seen_ms` is nearly, not exactly, in
        // rowid order.
        let chunk = 4096;
        let step = SPAN_MS as f64 / n as f64;
        let mut flows = Vec::with_capacity(chunk);
        let mut made = 0usize;
        while made < n {
            flows.clear();
            for _ in 0..chunk.min(n - made) {
                let first = now_ms - SPAN_MS + (made as f64 * step) as i64;
                made += 1;
                let duration = rng.log_uniform(1.0, 600_000.0);
                flows.push((first, first + duration, rng.next(), rng.next()));
            }
            flows.sort_by_key(|f| f.1);
            for &(first, last, r, s) in &flows {
                insert_flow(
                    &mut ins,
                    &mut rng,
                    (first, last, r, s),
                    &remotes,
                    &processes,
                    &ports,
                )?;
            }
        }
    }
    tx.commit()?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("could not return {} to WAL: {mode}", db.display());
    }
    Ok(())
}

fn insert_flow(
    ins: &mut rusqlite::Statement<'_>,
    rng: &mut Rng,
    (first, last, r, s): (i64, i64, u64, u64),
    remotes: &[String],
    processes: &[String],
    ports: &[i64],
) -> Result<()> {
    let remote = &remotes[rng.skewed(remotes.len())];
    let v6 = remote.contains(':');
    let loopback = r % 20 == 0;
    let local = match (loopback, v6) {
        (true, false) => "127.0.0.1",
        (true, true) => "::1",
        (false, false) => "192.168.1.23",
        (false, true) => "fd12:3456::23",
    };
    let remote: &str = if loopback { local } else { remote };
    let proto: i64 = match (r >> 8) % 100 {
        0..85 => 6,
        85..98 => 17,
        _ if v6 => 58,
        _ => 1,
    };
    let service = ports[rng.skewed(ports.len())];
    let ephemeral = 32_768 + (r >> 16) as i64 % 28_000;
    let outgoing = (r >> 32) % 10 < 7;
    let (src, sport, dst, dport) = if outgoing {
        (local, ephemeral, remote, service)
    } else {
        (remote, ephemeral, local, service)
    };
    let (sport, dport) = if proto == 6 || proto == 17 {
        (sport, dport)
    } else {
        (0, 8 << 8)
    };
    // Which views saw it: kernel only (TCP), capture only, or both merged.
    let view = if proto == 6 { (r >> 40) % 10 } else { 9 };
    let (kernel, capture) = match view {
        0 => (true, false),
        1..=5 => (true, true),
        _ => (false, true),
    };
    let sources = match (kernel, capture) {
        (true, true) => "kernel,capture",
        (true, false) => "kernel",
        _ => "capture",
    };
    let up = rng.log_uniform(40.0, 50_000_000.0);
    let down = rng.log_uniform(40.0, 200_000_000.0);
    let comm = |i: u64| processes[(i % PROCESSES as u64) as usize].as_str();
    let local_comm = kernel.then(|| comm(s));
    let local_pid = kernel.then_some(1_000 + (s % PROCESSES as u64) as i64);
    let (src_pid, src_comm, dst_pid, dst_comm) = if outgoing {
        (local_pid, local_comm, None, None)
    } else {
        (None, None, local_pid, local_comm)
    };
    let (src_packets, dst_packets) = if capture {
        (Some(1 + up / 900), Some(1 + down / 1_300))
    } else {
        (None, None)
    };
    let (src_bytes, dst_bytes) = if capture {
        (
            Some(up + 40 * src_packets.unwrap_or(0)),
            Some(down + 40 * dst_packets.unwrap_or(0)),
        )
    } else {
        (None, None)
    };
    let (src_payload, dst_payload) = if kernel {
        (Some(up), Some(down))
    } else {
        (None, None)
    };
    let flags = (capture && proto == 6).then_some(0x1b_i64);
    ins.execute(rusqlite::params![
        first,
        last,
        proto,
        src,
        sport,
        dst,
        dport,
        src_payload,
        dst_payload,
        src_pid,
        src_comm,
        dst_pid,
        dst_comm,
        kernel.then_some(1_000 + (s >> 20) as i64 % 100_000),
        kernel.then_some((s >> 40) as i64 % 3),
        END_REASONS[(s >> 50) as usize % END_REASONS.len()],
        sources,
        src_packets,
        dst_packets,
        src_bytes,
        dst_bytes,
        flags,
        flags.map(|f| f & 0x13),
    ])?;
    Ok(())
}
