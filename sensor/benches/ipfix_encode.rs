//! IPFIX encode and send on one core: flow records to messages (templates, MTU packing,
//! sequence numbers, the sensor's own strings) sent as datagrams (`sendmmsg`, as the
//! exporter does) to a UDP sink on loopback, which a second thread drains. Against the same sends of the messages already
//! encoded, in the same run, so the encoder's own share shows. Untagged records (no enrichment
//! sources), and, when `../shared/data/mmdb` is there, records tagged (country, AS) from
//! the shared MaxMind databases, as an exporter with enrichment on does, round by round;
//! the destinations are 251 public addresses.
//!
//! `cargo bench -p sensor --bench ipfix_encode` (or `cargo xtask bench --only ipfix`).
//! Prints medians of several rounds; the bar is 2 M records a second.
use std::{
    hint::black_box,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Instant,
};

use sensor::{
    enrich::{geo::GeoDbs, tags::Tagger, threat::ThreatLists},
    flow::{
        FlowRecord,
        record::{Attr, EndReason, Owner},
    },
    ipfix::{
        datagrams,
        encode::{DEFAULT_PEN, Encoder, Message, set_sequence},
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

/// Messages as the exporter sends them: datagrams, several a system call, numbered as
/// they go.
struct Datagrams {
    bytes: Vec<Vec<u8>>,
    records: Vec<u32>,
}

impl Datagrams {
    fn of(msgs: Vec<Message>) -> Self {
        let records = msgs.iter().map(|m| m.records).collect();
        let bytes = msgs.into_iter().map(|m| m.bytes).collect();
        Self { bytes, records }
    }

    fn send(&mut self, out: &UdpSocket, sequence: &mut u32) {
        let (bytes, records) = (&mut self.bytes, &self.records);
        datagrams::send_all(out, bytes, records, sequence, set_sequence, |_, _| {});
    }
}

/// Records a second of each step in one round: (encode+send, send alone, encode alone),
/// and the messages a round made.
fn round(flows: &[FlowRecord], out: &UdpSocket, tags: &mut Tagger) -> ([f64; 3], usize) {
    let tagged = tags.is_on();
    // Encode and send, as the exporter's thread does.
    let mut e = Encoder::new(1, DEFAULT_PEN, 1400 - 28, tagged);
    let t0 = Instant::now();
    out.send(&e.templates(0).bytes).expect("send");
    let mut kept = Vec::new();
    let mut sequence = 0;
    for batch in flows.chunks(BATCH) {
        let (msgs, _) = e.flows(0, batch.iter(), tags);
        // A datagram the kernel refuses is counted, not retried, as the exporter does.
        let mut d = Datagrams::of(msgs);
        d.send(out, &mut sequence);
        kept.push(d);
    }
    let encode_send = RECORDS as f64 / t0.elapsed().as_secs_f64();
    // The same messages, sent again without encoding.
    let t0 = Instant::now();
    for d in &mut kept {
        d.send(out, &mut sequence);
    }
    let send_only = RECORDS as f64 / t0.elapsed().as_secs_f64();
    // Encoding alone.
    let mut e = Encoder::new(1, DEFAULT_PEN, 1400 - 28, tagged);
    let t0 = Instant::now();
    for batch in flows.chunks(BATCH) {
        black_box(e.flows(0, batch.iter(), tags));
    }
    let encode_only = RECORDS as f64 / t0.elapsed().as_secs_f64();
    (
        [encode_send, send_only, encode_only],
        kept.iter().map(|d| d.bytes.len()).sum(),
    )
}

fn main() {
    let flows = records(RECORDS);
    let to = sink();
    let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
    out.connect(to).expect("connect");
    let (mut tagger, shared) = tagger();
    // Untagged (no enrichment sources: the templates leave the tag fields out) and tagged,
    // round by round.
    let mut rows: Vec<(&str, Tagger, Vec<[f64; 3]>, usize)> =
        vec![("untagged", Tagger::off(), Vec::new(), 0)];
    if shared {
        rows.push((
            "tagged from the shared City and ASN databases",
            std::mem::replace(&mut tagger, Tagger::off()),
            Vec::new(),
            0,
        ));
    }
    for _ in 0..ROUNDS {
        for (_, tags, got, messages) in &mut rows {
            let (r, m) = round(&flows, &out, tags);
            got.push(r);
            *messages = m;
        }
    }
    for (what, _, got, messages) in rows {
        let m = |i: usize| median(got.iter().map(|r| r[i]).collect()) / 1e6;
        println!(
            "ipfix ({what}): {RECORDS} records in {messages} messages of at most 1372 bytes, \
             medians of {ROUNDS}: encode+send {:.2} M records/s on one core (bar: 2 M); the \
             same datagrams sent without encoding {:.2} M/s; encoding alone {:.2} M/s",
            m(0),
            m(1),
            m(2),
        );
    }
    if !shared {
        println!("ipfix: no tagged row (no ../shared/data/mmdb)");
    }
}
