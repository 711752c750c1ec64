//! IPFIX records carry what enrichment knows of each end (issue 12): a `sensor replay` of
//! real captures with the shared MaxMind databases and threat lists, exported to nfdump's
//! `nfcapd` and to a plain UDP socket this test reads. nfdump's `src_as`/`dst_as` (IANA's
//! bgpSourceAsNumber/bgpDestinationAsNumber) and the sensor's own country and threat-list
//! elements, decoded here from the templates the exporter sent, must equal what the same
//! replay wrote to `ip_info` for each end's address, record by record.
//! Needs no privileges; needs nfdump (`cargo xtask setup` installs it).
mod common;

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use common::{
    collectors::{Nfcapd, UdpSink, ms_of, sent_and_dropped},
    ipfix_decode::{Record, be32, decode, wireshark_records, write_pcap},
    services::shared_data,
    temp_dir,
};

/// The sensor's enterprise number (the default) and its element ids (README).
const PEN: u32 = 32473;
const SRC_COUNTRY: u16 = 9;
const DST_COUNTRY: u16 = 10;
const SRC_THREAT: u16 = 11;
const DST_THREAT: u16 = 12;
const BGP_SOURCE_AS: u16 = 16;
const BGP_DESTINATION_AS: u16 = 17;

/// Captures with many public addresses; gnutella.pcap's peers include the one address of
/// the dev captures on the shared threat lists.
fn captures() -> Vec<PathBuf> {
    let d = shared_data().join("pcap/dev/ndpi");
    [
        "tor.pcap",
        "bittorrent.pcap",
        "sites.pcapng",
        "iphone.pcap",
        "waze.pcap",
        "gnutella.pcap",
    ]
    .iter()
    .map(|n| d.join(n))
    .collect()
}

fn text(r: &Record, id: u16) -> String {
    String::from_utf8(r[&(PEN, id)].clone()).expect("utf-8")
}

fn number(r: &Record, id: u16) -> u32 {
    be32(&r[&(0, id)], 0)
}

fn address(r: &Record, v4: u16, v6: u16) -> String {
    if let Some(a) = r.get(&(0, v4)) {
        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(a.as_slice()).unwrap()).to_string()
    } else {
        let a = &r[&(0, v6)];
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(a.as_slice()).unwrap()).to_string()
    }
}

/// What `ip_info` says of each address: (country, asn, threat lists), absent as empty/0.
fn ip_info(db: &std::path::Path) -> HashMap<String, (String, u32, String)> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut st = conn
        .prepare("SELECT ip, country, asn, threat FROM ip_info")
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u32,
                r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            ),
        ))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

#[test]
fn records_carry_each_ends_as_country_and_threat_lists_as_ip_info_does() {
    let dir = temp_dir("ipfix-tags");
    let nf = dir.join("nf");
    std::fs::create_dir_all(&nf).unwrap();
    let nfcapd = Nfcapd::start("127.0.0.1", &nf);
    let sink = UdpSink::start();
    let mmdb = shared_data().join("mmdb");
    let cfg = dir.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[enrich]\nrdns = false\ncymru = false\nmmdb_paths = [\"{}\", \"{}\"]\n\
             threat_dir = \"{}\"\n",
            mmdb.join("GeoLite2-City-20191224.mmdb").display(),
            mmdb.join("ip-location-db-asn.mmdb").display(),
            shared_data().join("threat-intel").display()
        ),
    )
    .unwrap();
    let db = dir.join("flows.db");
    let prom = dir.join("final.prom");
    let (u_nf, u_sink) = (
        format!("udp://127.0.0.1:{}", nfcapd.port),
        format!("udp://127.0.0.1:{}", sink.port),
    );
    let out = Command::new(common::sensor_bin())
        .args(["replay", "--config"])
        .arg(&cfg)
        .arg("--db")
        .arg(&db)
        .arg("--metrics-on-exit")
        .arg(&prom)
        .args(["--ipfix", &u_nf, "--ipfix", &u_sink])
        .args(captures())
        .output()
        .expect("sensor replay");
    let err = String::from_utf8_lossy(&out.stderr);
    // gnutella.pcap holds one packet the parser gives up on.
    assert_eq!(out.status.code(), Some(65), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let log = nfcapd.stop();
    let m = std::fs::read_to_string(&prom).expect("metrics");
    let info = ip_info(&db);
    let want = |ip: &str| info.get(ip).cloned().unwrap_or_default();

    // Our own collector: every record decoded, each end's tags those of ip_info.
    let messages = sink.take();
    let records = decode(&messages);
    let (sent, dropped) = sent_and_dropped(&m, &u_sink);
    assert_eq!(dropped, 0, "{u_sink}");
    assert_eq!(records.len(), sent, "every record sent reached the sink");
    let (mut with_as, mut with_country, mut with_threat) = (0, 0, 0);
    for r in &records {
        let src = address(r, 8, 27);
        let dst = address(r, 12, 28);
        let got = [
            (
                text(r, SRC_COUNTRY),
                number(r, BGP_SOURCE_AS),
                text(r, SRC_THREAT),
            ),
            (
                text(r, DST_COUNTRY),
                number(r, BGP_DESTINATION_AS),
                text(r, DST_THREAT),
            ),
        ];
        assert_eq!(got, [want(&src), want(&dst)], "{src} -> {dst}");
        for g in &got {
            with_country += usize::from(!g.0.is_empty());
            with_as += usize::from(g.1 != 0);
            with_threat += usize::from(!g.2.is_empty());
        }
    }
    println!(
        "{} records: {with_as} ends with an AS, {with_country} with a country, \
         {with_threat} on a threat list",
        records.len()
    );
    // Not vacuous: the captures talk to the internet, and some of it is listed.
    assert!(with_as > records.len() / 2, "ends with an AS: {with_as}");
    assert!(
        with_country > records.len() / 2,
        "ends with a country: {with_country}"
    );
    assert!(with_threat > 0, "no end on a threat list");

    // Wireshark, with the sensor's description loaded, reads the same values by name.
    let pcap = dir.join("ipfix.pcap");
    write_pcap(&pcap, &messages);
    let names = [
        ("sensor.src_country", SRC_COUNTRY),
        ("sensor.dst_country", DST_COUNTRY),
        ("sensor.src_threat_lists", SRC_THREAT),
        ("sensor.dst_threat_lists", DST_THREAT),
    ];
    let fields: Vec<&str> = names.iter().map(|n| n.0).collect();
    let read = wireshark_records(&pcap, &fields);
    let decoded: Vec<Vec<String>> = records
        .iter()
        .map(|r| names.iter().map(|n| text(r, n.1)).collect())
        .collect();
    assert_eq!(read.len(), decoded.len(), "tshark's flow records");
    for (i, (got, decoded)) in read.iter().zip(&decoded).enumerate() {
        assert_eq!(got, decoded, "record {i}: {fields:?}");
    }
    // The options records: the last, sent as the exporter stopped, counts every record.
    let counts = wireshark_records(
        &pcap,
        &["sensor.exported_records", "sensor.dropped_records"],
    );
    assert_eq!(
        counts.last().map(|c| c.as_slice()),
        Some([sent.to_string(), "0".to_string()].as_slice()),
        "{counts:?}"
    );

    // nfdump reads the AS numbers from the standard elements.
    let (sent, dropped) = sent_and_dropped(&m, &u_nf);
    assert_eq!(dropped, 0, "{u_nf}");
    let out = Command::new("nfdump")
        .env("TZ", "UTC")
        .arg("-R")
        .arg(&nf)
        .args(["-o", "json"])
        .output()
        .expect("nfdump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nfdump json");
    let flows: Vec<_> = v
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["type"] == "FLOW")
        .collect();
    assert_eq!(flows.len(), sent, "nfcapd kept every record\n{log}");
    let mut nonzero = 0;
    for f in flows {
        let ip = |k4: &str, k6: &str| {
            f[k4]
                .as_str()
                .or_else(|| f[k6].as_str())
                .expect("address")
                .to_string()
        };
        let (src, dst) = (ip("src4_addr", "src6_addr"), ip("dst4_addr", "dst6_addr"));
        let as_of = |k: &str| f[k].as_u64().unwrap_or(0) as u32;
        let got = (as_of("src_as"), as_of("dst_as"));
        assert_eq!(
            got,
            (want(&src).1, want(&dst).1),
            "nfdump: {src} -> {dst} at {}",
            ms_of(f["first"].as_str().expect("first"))
        );
        nonzero += usize::from(got != (0, 0));
    }
    assert!(
        nonzero > sent / 2,
        "nfdump records with an AS: {nonzero} of {sent}"
    );
}
