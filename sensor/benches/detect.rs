//! The detections stage on one core: flow records through every detector (port scan,
//! brute force, exfiltration, beacon; threat contact with a 1,000-entry list), with
//! 100,000 sources tracked, each talking to two servers (`max_tracked` 250,000 so that the
//! pairs fit: evictions are printed, and should be 0). The state is warmed first with a pass over every source, then
//! the same stream goes on (new flows of the same sources: windows updated, not made);
//! records a second are the median of several rounds. Memory per tracked key is the
//! resident-set growth of the warm-up over the keys it made.
//!
//! `cargo bench -p sensor --bench detect` (or `cargo xtask bench --only detect`). The bar
//! is 2 M records a second.
use std::{
    hint::black_box,
    net::{Ipv4Addr, SocketAddr},
    time::Instant,
};

use sensor::{
    detect::{DetectConfig, Detectors},
    enrich::{geo::GeoDbs, tags::Tagger, threat::ThreatLists},
    flow::{FlowRecord, record::EndReason},
};

const SOURCES: u32 = 100_000;
const RECORDS: usize = 2_000_000;
const ROUNDS: usize = 5;

/// Record `i` of the stream: source `i % SOURCES`, to one of its two public servers; most are
/// web requests with payload both ways, one in 10 an unanswered probe, one in 20 a login
/// to ssh, one in 50 an upload.
fn record(i: usize, t0: i64) -> FlowRecord {
    let n = i as u32;
    let s = n % SOURCES;
    let src = SocketAddr::from((
        Ipv4Addr::from(0x0a00_0000 | s),
        (40_000 + n % 20_000) as u16,
    ));
    // Each source talks to two servers of 1,000.
    let which = n / SOURCES % 2;
    let server = Ipv4Addr::new(23, ((s + which * 7) % 250) as u8, (s % 4) as u8, 9);
    let kind = n % 100;
    let port = match kind {
        0..10 => 1 + (n / SOURCES % 1000) as u16,
        10..15 => 22,
        _ => 443,
    };
    // Irregular, as people are: within 0..60 s of the stream's clock, sizes spread too.
    let h = (n.wrapping_mul(2_654_435_761) >> 7) as u64;
    let mut f = FlowRecord::new(6, src, SocketAddr::from((server, port)), "capture");
    f.first_seen_ms = t0 + (i / 100) as i64 + (h % 60_000) as i64;
    f.last_seen_ms = f.first_seen_ms + 120;
    f.end_reason = EndReason::Fin;
    if kind < 10 {
        f.src_packets = Some(1);
        f.dst_packets = Some(0);
        f.src_bytes = Some(44);
        f.dst_bytes = Some(0);
        f.src_tcp_flags = Some(0x02);
        f.dst_tcp_flags = Some(0);
        f.end_reason = EndReason::IdleTimeout;
    } else {
        let up = if kind < 12 {
            3_000_000
        } else {
            300 + h % 4_000
        };
        f.src_packets = Some(8);
        f.dst_packets = Some(10);
        f.src_bytes = Some(up);
        f.dst_bytes = Some(5_000 + h % 50_000);
        f.src_tcp_flags = Some(0x1b);
        f.dst_tcp_flags = Some(0x1b);
    }
    f
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A list of 1,000 /24s, none of which the stream's servers are in.
fn lists() -> ThreatLists {
    let dir = std::env::temp_dir().join(format!("sensor-bench-detect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text: String = (0..1000)
        .map(|i| format!("45.{}.{}.0/24\n", i / 250, i % 250))
        .collect();
    std::fs::write(dir.join("bench.netset"), text).expect("write list");
    let l = ThreatLists::load(&dir).expect("load list");
    let _ = std::fs::remove_dir_all(&dir);
    l
}

fn main() {
    let t0 = 1_780_000_000_000;
    let mut stream: Vec<FlowRecord> = (0..RECORDS).map(|i| record(i, t0)).collect();
    let before = rss_bytes();
    // Room for every key of the stream (sources × servers): the steady state, not churn.
    let cfg = DetectConfig {
        max_tracked: 250_000,
        ..DetectConfig::default()
    };
    let tags = Tagger::from_sources(
        GeoDbs::empty(),
        lists(),
        std::time::Duration::from_secs(3600),
    );
    let mut d = Detectors::new(&cfg, Some(tags));
    d.alerts.log = false;
    // Warm-up: every source seen (twice over), the state at its working size.
    for f in &stream[..2 * SOURCES as usize] {
        d.flow(f);
    }
    let warm = d.stats();
    let keys: u64 = warm.tracked.iter().take(4).sum();
    let grown = rss_bytes().saturating_sub(before);
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        // The same sources on, later in flow time.
        for f in &mut stream {
            f.first_seen_ms += (RECORDS / 100) as i64;
            f.last_seen_ms += (RECORDS / 100) as i64;
        }
        let t = Instant::now();
        for f in &stream {
            d.flow(black_box(f));
        }
        rates.push(RECORDS as f64 / t.elapsed().as_secs_f64());
        let rows = d.take_rows();
        if let Some(r) = rows.iter().find(|r| r.kind == "beacon")
            && std::env::var_os("DEBUG").is_some()
        {
            eprintln!("{r:?}");
        }
    }
    let s = d.stats();
    println!(
        "detect: {:.2} M records/s on one core (median of {ROUNDS} rounds of {} M; bar 2 M), \
         {} sources; tracked keys: port_scan {}, brute_force {}, exfiltration {}, beacon {}; \
         {:.0} bytes a tracked key ({:.1} MiB for {keys} keys after warm-up); {:?} alerts \
         raised, {} evictions",
        median(rates) / 1e6,
        RECORDS / 1_000_000,
        SOURCES,
        s.tracked[0],
        s.tracked[1],
        s.tracked[2],
        s.tracked[3],
        grown as f64 / keys.max(1) as f64,
        grown as f64 / 1048576.0,
        s.raised,
        s.evictions.iter().sum::<u64>(),
    );
}
