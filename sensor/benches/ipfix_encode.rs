//! IPFIX encode and send on one core: flow records to messages (templates, MTU packing,
//! sequence numbers, the sensor's own strings) sent one datagram each to a UDP sink on
//! loopback, which a second thread drains. Against the same sends of the messages already
//! encoded, in the same run, so the encoder's own share shows. Records are tagged (country,
//! AS, threat lists) from the shared MaxMind databases when `../shared/data/mmdb` is there,
//! as an exporter with enrichment on does; the destinations are 251 public addresses.
//!
//! `cargo bench -p sensor --bench ipfix_encode` (or `cargo xtask bench --only ipfix`).
//! Prints medians of several rounds; the bar is 2 M records a second.
use std::{
    hint::black_box,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Instant,
};

use sensor::{
    enrich::{geo::GeoDbs, threat::ThreatLists},
    flow::{
        FlowRecord,
        record::{Attr, EndReason, Owner},
    },
    ipfix::{
        encode::{DEFAULT_PEN, Encoder},
        tags::Tagger,
    },
};

const RECORDS: usize = 1_000_000;
const ROUNDS: usize = 5;
/// Records handed to the encoder at once (the exporter's batch).
const BATCH: usize = 64;

fn records(n: usize) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| {
            let i32 = i as u32;
            let src = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | (i32 & 0xffff)), 40_000));
            let dst = SocketAddr::from((Ipv4Addr::new(8, 8, (i32 % 251) as u8, 8), 443));
            let mut f = FlowRecord::new(6, src, dst, "kernel,capture");
            f.first_seen_ms = 1_700_000_000_000 + i as i64;
            f.last_seen_ms = f.first_seen_ms + 250;
            f.src_packets = Some(10);
            f.dst_packets = Some(8);
            f.src_bytes = Some(1_200);
            f.dst_bytes = Some(9_000);
            f.src_tcp_flags = Some(0x1b);
            f.dst_tcp_flags = Some(0x1b);
            f.end_reason = EndReason::Fin;
            f.src_owner = Some(Owner {
                pid: 1000 + i32 % 97,
                comm: "curl".into(),
                uid: Some(1000),
                unit: Some("user@1000.service/app.scope".into()),
                attr: Attr::Connect,
                ..Owner::default()
            });
            f
        })
        .collect()
}

/// A UDP sink on loopback and a thread that drains it.
fn sink() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = s.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while s.recv(&mut buf).is_ok() {}
    });
    addr
}

/// The shared City and ASN databases, when this checkout sits beside `../shared`.
fn tagger() -> (Tagger, bool) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mmdb");
    let paths = [
        dir.join("GeoLite2-City-20191224.mmdb"),
        dir.join("ip-location-db-asn.mmdb"),
    ];
    if !paths.iter().all(|p| p.exists()) {
        return (Tagger::off(), false);
    }
    let geo = GeoDbs::open(&paths).expect("the shared MaxMind databases");
    let t = Tagger::from_sources(
        geo,
        ThreatLists::empty(),
        std::time::Duration::from_secs(3600),
    );
    (t, true)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let flows = records(RECORDS);
    let to = sink();
    let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
    out.connect(to).expect("connect");
    let (mut encode_send, mut send_only, mut encode_only) = (Vec::new(), Vec::new(), Vec::new());
    let mut messages = 0;
    let (mut tags, tagged) = tagger();
    for _ in 0..ROUNDS {
        // Encode and send, as the exporter's thread does.
        let mut e = Encoder::new(1, DEFAULT_PEN, 1400 - 28);
        let t0 = Instant::now();
        out.send(&e.templates(0).bytes).expect("send");
        let mut kept = Vec::new();
        for batch in flows.chunks(BATCH) {
            let (msgs, _) = e.flows(0, batch.iter(), &mut tags);
            for m in &msgs {
                // A full socket buffer on loopback is ENOBUFS/EAGAIN: counted, not retried,
                // as the exporter does.
                let _ = out.send(&m.bytes);
            }
            kept.extend(msgs);
        }
        encode_send.push(RECORDS as f64 / t0.elapsed().as_secs_f64());
        messages = kept.len();
        // The same messages, sent again without encoding.
        let t0 = Instant::now();
        for m in &kept {
            let _ = out.send(&m.bytes);
        }
        send_only.push(RECORDS as f64 / t0.elapsed().as_secs_f64());
        // Encoding alone.
        let mut e = Encoder::new(1, DEFAULT_PEN, 1400 - 28);
        let t0 = Instant::now();
        for batch in flows.chunks(BATCH) {
            black_box(e.flows(0, batch.iter(), &mut tags));
        }
        encode_only.push(RECORDS as f64 / t0.elapsed().as_secs_f64());
    }
    let (a, b, c) = (median(encode_send), median(send_only), median(encode_only));
    println!(
        "ipfix: {RECORDS} records in {messages} messages of at most 1372 bytes, medians of \
         {ROUNDS}: encode+send {:.2} M records/s on one core (bar: 2 M); the same datagrams \
         sent without encoding {:.2} M/s; encoding alone {:.2} M/s; {}",
        a / 1e6,
        b / 1e6,
        c / 1e6,
        if tagged {
            "tagged from the shared City and ASN databases"
        } else {
            "untagged (no ../shared/data/mmdb)"
        }
    );
}
