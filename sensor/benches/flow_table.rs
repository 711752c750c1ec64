//! The flow table alone, on one core: packets per second, against a bare hash-map counting
//! loop over the same keys in the same run, and bytes of memory per active flow at 1 M flows.
//!
//! `cargo bench -p sensor --bench flow_table` (or `cargo xtask bench`). Prints medians of
//! several rounds; the machines are noisy, so the ratio is the figure to compare.
use std::{
    collections::HashMap,
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use sensor::{
    capture::parse::Packet,
    flow::{FlowTable, TableConfig},
};

const FLOWS: u32 = 100_000;
const PACKETS: usize = 10_000_000;
const ROUNDS: usize = 5;

fn packets(n: usize, flows: u32) -> Vec<Packet> {
    // A fixed pseudo-random walk over `flows` TCP connections, both directions.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = (x % u64::from(flows)) as u32;
            let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (f >> 8)));
            let server = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (f & 0xff) as u8));
            let port = 1024 + (f % 50_000) as u16;
            let reply = x & 1 == 1;
            let (src, dst, sp, dp) = if reply {
                (server, client, 443, port)
            } else {
                (client, server, port, 443)
            };
            Packet {
                src,
                dst,
                proto: 6,
                src_port: sp,
                dst_port: dp,
                ip_len: 40 + (x >> 40) as u32 % 1400,
                tcp_flags: 0x10,
                tcp_seq: 0,
                fragment: None,
                inner: None,
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The baseline: the least a flow table must do, count per 5-tuple in a hash map with the
/// same hasher.
fn bare_loop(pkts: &[Packet]) -> usize {
    type Tuple = (IpAddr, IpAddr, u16, u16, u8);
    let mut m: HashMap<Tuple, (u64, u64), foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(1 << 16, Default::default());
    for p in pkts {
        let k = if (p.src, p.src_port) <= (p.dst, p.dst_port) {
            (p.src, p.dst, p.src_port, p.dst_port, p.proto)
        } else {
            (p.dst, p.src, p.dst_port, p.src_port, p.proto)
        };
        let e = m.entry(k).or_default();
        e.0 += 1;
        e.1 += u64::from(p.ip_len);
    }
    m.len()
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

fn main() {
    let pkts = packets(PACKETS, FLOWS);
    let mut table_rates = Vec::new();
    let mut bare_rates = Vec::new();
    for _ in 0..ROUNDS {
        let cfg = TableConfig::default();
        let mut table = FlowTable::new(cfg, "bench");
        let mut ended = 0u64;
        let t = Instant::now();
        for (i, p) in pkts.iter().enumerate() {
            // 1 µs of packet time apart: no timeouts fire during the run.
            table.packet(i as u64 * 1_000, p, &mut |_| ended += 1);
        }
        let secs = t.elapsed().as_secs_f64();
        black_box(ended);
        assert_eq!(table.active(), FLOWS as usize);
        table_rates.push(PACKETS as f64 / secs);

        let t = Instant::now();
        let n = black_box(bare_loop(black_box(&pkts)));
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(n, FLOWS as usize);
        bare_rates.push(PACKETS as f64 / secs);
    }
    let (table, bare) = (median(table_rates), median(bare_rates));
    println!(
        "flow_table: {:.2} M packets/s (median of {ROUNDS}, {FLOWS} flows); bare HashMap loop \
         {:.2} M/s; ratio {:.2}",
        table / 1e6,
        bare / 1e6,
        table / bare
    );

    // Memory per active flow at 1 M flows.
    drop(pkts);
    const MANY: u32 = 1_000_000;
    let many = packets(4 * MANY as usize, MANY);
    let before = rss_bytes();
    let mut table = FlowTable::new(
        TableConfig {
            max_flows: 2 * MANY as usize,
            ..TableConfig::default()
        },
        "bench",
    );
    for (i, p) in many.iter().enumerate() {
        table.packet(i as u64, p, &mut |_| {});
    }
    let after = rss_bytes();
    let active = table.active();
    println!(
        "flow_table: {active} active flows use {:.0} bytes each (RSS delta {} MiB)",
        (after - before) as f64 / active as f64,
        (after - before) >> 20
    );
    black_box(table);
}
