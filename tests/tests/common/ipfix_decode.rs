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
