//! A decoder of IPFIX messages for the tests (RFC 7011), driven by the templates the
//! messages themselves define, so it reads whatever layout the exporter chose.
use std::collections::HashMap;

/// One decoded data record: field (enterprise, id) to its bytes.
pub type Record = HashMap<(u32, u16), Vec<u8>>;

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Decodes every data record of `messages` with the templates they define (RFC 7011:
/// template sets are set id 2; variable-length fields carry a 1- or 3-byte length).
pub fn decode(messages: &[Vec<u8>]) -> Vec<Record> {
    let mut templates: HashMap<u16, Vec<(u32, u16, u16)>> = HashMap::new();
    let mut out = Vec::new();
    for m in messages {
        assert_eq!(be16(m, 0), 10, "IPFIX version");
        assert_eq!(usize::from(be16(m, 2)), m.len(), "message length");
        let mut at = 16;
        while at + 4 <= m.len() {
            let (id, len) = (be16(m, at), usize::from(be16(m, at + 2)));
            let set = &m[at + 4..at + len];
            at += len;
            if id == 2 {
                let mut i = 0;
                while i + 4 <= set.len() {
                    let (tid, n) = (be16(set, i), be16(set, i + 2));
                    i += 4;
                    let mut fields = Vec::new();
                    for _ in 0..n {
                        let (raw, flen) = (be16(set, i), be16(set, i + 2));
                        i += 4;
                        let pen = if raw & 0x8000 != 0 {
                            i += 4;
                            be32(set, i - 4)
                        } else {
                            0
                        };
                        fields.push((pen, raw & 0x7fff, flen));
                    }
                    templates.insert(tid, fields);
                }
            } else if id >= 256 && id != 258 {
                let fields = templates.get(&id).expect("a data set after its template");
                let mut i = 0;
                // Padding is shorter than any record: stop when no whole field is left.
                while i < set.len() && set.len() - i >= fields.len() {
                    let mut rec = Record::new();
                    for &(pen, fid, flen) in fields {
                        let n = if flen == 65535 {
                            let l = usize::from(set[i]);
                            if l == 255 {
                                i += 3;
                                usize::from(be16(set, i - 2))
                            } else {
                                i += 1;
                                l
                            }
                        } else {
                            usize::from(flen)
                        };
                        rec.insert((pen, fid), set[i..i + n].to_vec());
                        i += n;
                    }
                    out.push(rec);
                }
            }
        }
    }
    out
}

/// Writes `messages` as UDP datagrams from 127.0.0.1:40000 to 127.0.0.1:4739 in a pcap
/// (link type raw IP), for tshark to decode.
pub fn write_pcap(path: &std::path::Path, messages: &[Vec<u8>]) {
    let mut out = Vec::new();
    for v in [
        0xa1b2_c3d4u32.to_le_bytes().as_slice(),
        &2u16.to_le_bytes(),
        &4u16.to_le_bytes(),
    ] {
        out.extend_from_slice(v);
    }
    for v in [0u32, 0, 65_535, 101] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, m) in messages.iter().enumerate() {
        let udp_len = 8 + m.len();
        let ip_len = 20 + udp_len;
        let mut frame = Vec::with_capacity(ip_len);
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
        frame.extend_from_slice(&(i as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        frame.extend_from_slice(&40_000u16.to_be_bytes());
        frame.extend_from_slice(&4739u16.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(m);
        for v in [1_000 + i as u32, 0, frame.len() as u32, frame.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).expect("write pcap");
}

/// The Wireshark description of the sensor's elements (`deploy/wireshark/`).
pub fn wireshark_lua() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/wireshark/sensor-ipfix.lua")
}

/// What tshark, with the sensor's Lua description loaded, reads of `fields` (`sensor.*`
/// names) in every flow record of `pcap` (as [`write_pcap`] writes it): one row per record,
/// in message order, a value per field as tshark prints it.
pub fn wireshark_records(pcap: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    const AGGREGATOR: &str = "\u{1f}";
    let mut cmd = std::process::Command::new("tshark");
    cmd.arg("-r")
        .arg(pcap)
        .args(["-d", "udp.port==4739,cflow", "-X"])
        .arg(format!("lua_script:{}", wireshark_lua().display()))
        // Only the messages that hold flow records: each field then occurs once a record.
        .args(["-Y", fields[0], "-T", "fields", "-E"])
        .arg(format!("aggregator={AGGREGATOR}"));
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark not installed: run `cargo xtask setup`");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark: {err}");
    assert!(
        !err.contains("Lua") && !err.contains("rror"),
        "tshark with {}: {err}",
        wireshark_lua().display()
    );
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let columns: Vec<Vec<&str>> = line
            .split('\t')
            .map(|c| c.split(AGGREGATOR).collect())
            .collect();
        assert_eq!(columns.len(), fields.len(), "{line:?}");
        let n = columns[0].len();
        assert!(
            columns.iter().all(|c| c.len() == n),
            "a value per record in every field: {line:?}"
        );
        for i in 0..n {
            rows.push(columns.iter().map(|c| c[i].to_string()).collect());
        }
    }
    rows
}
