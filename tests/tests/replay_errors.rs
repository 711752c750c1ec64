//! Bad capture files: a clear error naming the file and the byte offset, and nothing that
//! was read before the damage is lost. Malformed packets are counted and skipped. Each of
//! these exits 65 (bad input, partial results); lost flows exit 74.
mod common;

use std::{path::Path, process::Command};

use common::{sensor_bin, temp_dir};

fn replay(db: &Path, file: &Path) -> (Option<i32>, String) {
    let out = Command::new(sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(db)
        .arg(file)
        .output()
        .expect("run sensor replay");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rows(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("open db");
    conn.query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
        .expect("count")
}

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

#[test]
fn truncated_pcap_names_file_and_offset_and_keeps_earlier_flows() {
    let dir = temp_dir("truncated");
    let whole = std::fs::read(data("four_ipv6_http_streams.pcap")).expect("read");
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &whole[..30_000]).expect("write");
    let db = dir.join("f.db");
    let (code, err) = replay(&db, &cut);
    assert_eq!(code, Some(65), "bad input, partial results: {err}");
    assert!(err.contains(cut.to_str().unwrap()), "names the file: {err}");
    assert!(
        err.contains("truncated") && err.contains("byte 29660"),
        "{err}"
    );
    assert!(rows(&db) >= 1, "flows before the damage are kept");
}

#[test]
fn damaged_pcapng_block_names_its_offset() {
    let dir = temp_dir("damaged");
    let mut bytes = std::fs::read(data("http_ip4and6.pcapng")).expect("read");
    // Walk the blocks (type, length) and break the seventh one's length.
    let mut off = 0usize;
    for _ in 0..6 {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        off += len;
    }
    bytes[off + 4..off + 8].copy_from_slice(&13u32.to_le_bytes());
    let bad = dir.join("bad.pcapng");
    std::fs::write(&bad, &bytes).expect("write");
    let db = dir.join("f.db");
    let (code, err) = replay(&db, &bad);
    assert_eq!(code, Some(65), "bad input, partial results: {err}");
    assert!(err.contains(&format!("damaged at byte {off}")), "{err}");
    assert!(rows(&db) >= 1, "flows before the damage are kept");
}

#[test]
fn not_a_capture_is_named() {
    let dir = temp_dir("notpcap");
    let f = dir.join("notes.pcap");
    std::fs::write(&f, b"this is not a capture file at all").expect("write");
    let (code, err) = replay(&dir.join("f.db"), &f);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("not a pcap or pcapng file"), "{err}");
}

/// A pcap file with one good Ethernet/IPv4/UDP packet and one whose IPv4 header is cut.
fn pcap_with_a_malformed_packet() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    let eth = |payload: &[u8]| {
        let mut p = vec![0u8; 12];
        p.extend_from_slice(&[0x08, 0x00]);
        p.extend_from_slice(payload);
        p
    };
    let mut ip = vec![
        0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    for (i, frame) in [eth(&ip), eth(&[0x45, 0, 0])].iter().enumerate() {
        f.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(frame);
    }
    f
}

#[test]
fn malformed_packets_are_counted_and_skipped() {
    let dir = temp_dir("malformed");
    let f = dir.join("m.pcap");
    std::fs::write(&f, pcap_with_a_malformed_packet()).expect("write");
    let db = dir.join("f.db");
    let (code, err) = replay(&db, &f);
    // The parser gave up on a packet: the run says so in its status, after storing the rest.
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("malformed=1"), "{err}");
    assert!(err.contains("packets=2"), "{err}");
    assert_eq!(rows(&db), 1, "the good packet's flow");
}

/// A file of a link type the parser does not decode is an error naming the file and the
/// link type, not zero rows; the good file given after it is still read and stored, and
/// the exit status says something failed.
#[test]
fn unsupported_link_type_names_file_and_type_and_the_rest_is_read() {
    let dir = temp_dir("linktype");
    let good = data("four_ipv6_http_streams.pcap");
    let mut bytes = std::fs::read(&good).expect("read");
    // The pcap header's link type (bytes 20..24, little-endian here): 802.11.
    assert_eq!(
        &bytes[..4],
        &0xa1b2_c3d4u32.to_le_bytes(),
        "a little-endian pcap"
    );
    bytes[20..24].copy_from_slice(&105u32.to_le_bytes());
    let bad = dir.join("wifi.pcap");
    std::fs::write(&bad, &bytes).expect("write");
    let db = dir.join("f.db");
    let out = Command::new(sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg(&bad)
        .arg(&good)
        .output()
        .expect("run sensor replay");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "names the file: {err}");
    assert!(err.contains("link type 105 (IEEE802_11)"), "{err}");
    assert!(err.contains("1 of 2 files"), "{err}");
    // The good file's flows, and only its: the bad one gave none.
    let alone = dir.join("alone.db");
    let (code, e) = replay(&alone, &good);
    assert_eq!(code, Some(0), "{e}");
    assert!(rows(&alone) > 0);
    assert_eq!(
        rows(&db),
        rows(&alone),
        "the good file after the bad one is stored"
    );

    // Alone, the bad file fails the same way.
    let (code, err) = replay(&dir.join("g.db"), &bad);
    assert_eq!(code, Some(65), "{err}");
    assert!(
        err.contains("link type 105 (IEEE802_11)") && err.contains("wifi.pcap"),
        "{err}"
    );
}
