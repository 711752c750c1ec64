//! IPFIX (RFC 7011) messages from finished flows: one template each for IPv4 and IPv6
//! biflows (RFC 5103: the initiator's counters forward, the responder's as reverse
//! elements), each end's AS number in IANA's BGP elements, with this sensor's own elements
//! (processes, uid, unit, country, threat lists) under an enterprise number, and an options
//! template for the exporter's own counts.
//!
//! Messages are packed up to a byte budget (the path MTU less IP and UDP headers), each
//! starting with the 16-byte header. The sequence number, the count of data records sent in
//! earlier messages of the observation domain (RFC 7011 §3.1, wrapping at 2^32), is written
//! by the sender as each message goes ([`set_sequence`]): only it knows what was sent.
use std::net::IpAddr;

use crate::enrich::tags::{Tagger, Tags};
use crate::flow::record::{EndReason, FlowRecord, Owner};

/// The IPFIX version number in the message header.
pub const VERSION: u16 = 10;
/// Bytes of the message header.
pub const HEADER_BYTES: usize = 16;
const SET_HEADER_BYTES: usize = 4;
const TEMPLATE_SET: u16 = 2;
const OPTIONS_TEMPLATE_SET: u16 = 3;
/// Template ids (data set ids): IPv4 biflows, IPv6 biflows, exporter statistics.
pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
pub const TEMPLATE_STATS: u16 = 258;
/// RFC 5103's Private Enterprise Number for reverse information elements.
pub const REVERSE_PEN: u32 = 29305;
/// The default enterprise number of this sensor's own elements: 32473, which RFC 5612
/// reserves for documentation and examples; set `ipfix.enterprise_number` to your own.
pub const DEFAULT_PEN: u32 = 32473;
const VARIABLE: u16 = 65535;

/// One field of a template: element id, length, enterprise number (0: IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub id: u16,
    pub len: u16,
    pub pen: u32,
}

const fn iana(id: u16, len: u16) -> Field {
    Field { id, len, pen: 0 }
}

const fn reverse(id: u16, len: u16) -> Field {
    Field {
        id,
        len,
        pen: REVERSE_PEN,
    }
}

/// This sensor's elements, numbered under its enterprise number (the README lists them).
pub mod element {
    pub const SRC_PID: u16 = 1;
    pub const SRC_COMM: u16 = 2;
    pub const SRC_UID: u16 = 3;
    pub const SRC_UNIT: u16 = 4;
    pub const DST_PID: u16 = 5;
    pub const DST_COMM: u16 = 6;
    pub const DST_UID: u16 = 7;
    pub const DST_UNIT: u16 = 8;
    /// ISO 3166-1 alpha-2 country of each end's address (MaxMind), empty when unknown.
    pub const SRC_COUNTRY: u16 = 9;
    pub const DST_COUNTRY: u16 = 10;
    /// Threat lists holding each end's address, comma-separated names, empty for none.
    pub const SRC_THREAT: u16 = 11;
    pub const DST_THREAT: u16 = 12;
    /// Options: data records this exporter sent, and dropped (queue full, send failed).
    pub const EXPORTED_RECORDS: u16 = 20;
    pub const DROPPED_RECORDS: u16 = 21;
}

/// IANA element ids used here (RFC 7012 and the IANA registry).
mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const BGP_SOURCE_AS_NUMBER: u16 = 16;
    pub const BGP_DESTINATION_AS_NUMBER: u16 = 17;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const FLOW_END_REASON: u16 = 136;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
    pub const OBSERVATION_DOMAIN_ID: u16 = 149;
    pub const SYSTEM_INIT_TIME_MILLISECONDS: u16 = 160;
}

/// The fields of the flow templates, `v6` for the IPv6 one, own elements under `pen`;
/// `tagged` adds each end's AS, country and threat lists (only when there are sources to
/// fill them: 44 fewer bytes a record, and more records a datagram, without).
pub fn flow_fields(v6: bool, pen: u32, tagged: bool) -> Vec<Field> {
    let own = |id, len| Field { id, len, pen };
    let (src, dst, alen) = if v6 {
        (ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS, 16)
    } else {
        (ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS, 4)
    };
    let mut fields = vec![
        iana(ie::FLOW_START_MILLISECONDS, 8),
        iana(ie::FLOW_END_MILLISECONDS, 8),
        iana(src, alen),
        iana(dst, alen),
        iana(ie::SOURCE_TRANSPORT_PORT, 2),
        iana(ie::DESTINATION_TRANSPORT_PORT, 2),
        iana(ie::PROTOCOL_IDENTIFIER, 1),
        iana(ie::FLOW_END_REASON, 1),
        // The reverse flags first: collectors that do not tell RFC 5103's reverse elements
        // from their forward ones (nfdump 1.7 for the flags) then keep the initiator's.
        reverse(ie::TCP_CONTROL_BITS, 2),
        iana(ie::TCP_CONTROL_BITS, 2),
        iana(ie::OCTET_DELTA_COUNT, 8),
        iana(ie::PACKET_DELTA_COUNT, 8),
        reverse(ie::OCTET_DELTA_COUNT, 8),
        reverse(ie::PACKET_DELTA_COUNT, 8),
        own(element::SRC_PID, 4),
        own(element::SRC_UID, 4),
        own(element::DST_PID, 4),
        own(element::DST_UID, 4),
        own(element::SRC_COMM, VARIABLE),
        own(element::SRC_UNIT, VARIABLE),
        own(element::DST_COMM, VARIABLE),
        own(element::DST_UNIT, VARIABLE),
    ];
    if tagged {
        fields.extend([
            iana(ie::BGP_SOURCE_AS_NUMBER, 4),
            iana(ie::BGP_DESTINATION_AS_NUMBER, 4),
            own(element::SRC_COUNTRY, VARIABLE),
            own(element::DST_COUNTRY, VARIABLE),
            own(element::SRC_THREAT, VARIABLE),
            own(element::DST_THREAT, VARIABLE),
        ]);
    }
    fields
}

/// The options template's fields: scope observationDomainId, then the counts.
fn stats_fields(pen: u32) -> Vec<Field> {
    vec![
        iana(ie::OBSERVATION_DOMAIN_ID, 4),
        iana(ie::SYSTEM_INIT_TIME_MILLISECONDS, 8),
        Field {
            id: element::EXPORTED_RECORDS,
            len: 8,
            pen,
        },
        Field {
            id: element::DROPPED_RECORDS,
            len: 8,
            pen,
        },
    ]
}

/// RFC 5102 flowEndReason: 1 idle timeout, 2 active timeout, 3 end of flow detected,
/// 4 forced end, 5 lack of resources.
pub fn end_reason(r: EndReason) -> u8 {
    match r {
        EndReason::IdleTimeout => 1,
        EndReason::ActiveTimeout => 2,
        EndReason::Fin | EndReason::Rst | EndReason::Failed => 3,
        EndReason::Shutdown => 4,
        EndReason::Evicted => 5,
    }
}

fn put_template(out: &mut Vec<u8>, id: u16, fields: &[Field], scope: Option<u16>) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    if let Some(n) = scope {
        out.extend_from_slice(&n.to_be_bytes());
    }
    for f in fields {
        let id = if f.pen != 0 { f.id | 0x8000 } else { f.id };
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&f.len.to_be_bytes());
        if f.pen != 0 {
            out.extend_from_slice(&f.pen.to_be_bytes());
        }
    }
}

/// Writes a variable-length string (RFC 7011 §7): one length byte below 255, else 255 and
/// two; at most 65535 bytes, cut at a character boundary.
fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(65535);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let b = &s.as_bytes()[..end];
    if b.len() < 255 {
        out.push(b.len() as u8);
    } else {
        out.push(255);
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(b);
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// Counts each way for the wire: the packet view's, else the kernel's payload bytes (a
/// kernel-only flow has no packet counts: 0 packets).
fn counts(f: &FlowRecord) -> [u64; 4] {
    [
        f.src_bytes.or(f.src_payload_bytes).unwrap_or(0),
        f.src_packets.unwrap_or(0),
        f.dst_bytes.or(f.dst_payload_bytes).unwrap_or(0),
        f.dst_packets.unwrap_or(0),
    ]
}

/// Appends one data record of `f` (template [`TEMPLATE_V4`] or [`TEMPLATE_V6`] by its
/// source address; both ends are of one family in every flow), with the tags of its source
/// and destination addresses when the templates carry them.
pub fn put_flow(out: &mut Vec<u8>, f: &FlowRecord, tags: Option<(&Tags, &Tags)>) {
    out.extend_from_slice(&(f.first_seen_ms.max(0) as u64).to_be_bytes());
    out.extend_from_slice(&(f.last_seen_ms.max(0) as u64).to_be_bytes());
    put_ip(out, f.src.ip());
    put_ip(out, f.dst.ip());
    out.extend_from_slice(&f.src.port().to_be_bytes());
    out.extend_from_slice(&f.dst.port().to_be_bytes());
    out.push(f.proto);
    out.push(end_reason(f.end_reason));
    out.extend_from_slice(&u16::from(f.dst_tcp_flags.unwrap_or(0)).to_be_bytes());
    out.extend_from_slice(&u16::from(f.src_tcp_flags.unwrap_or(0)).to_be_bytes());
    for c in counts(f) {
        out.extend_from_slice(&c.to_be_bytes());
    }
    let ids = |o: &Option<Owner>| {
        o.as_ref()
            .map_or((0, u32::MAX), |o| (o.pid, o.uid.unwrap_or(u32::MAX)))
    };
    let (sp, su) = ids(&f.src_owner);
    let (dp, du) = ids(&f.dst_owner);
    for v in [sp, su, dp, du] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for o in [&f.src_owner, &f.dst_owner] {
        put_string(out, o.as_ref().map_or("", |o| o.comm.as_str()));
        put_string(
            out,
            o.as_ref().and_then(|o| o.unit.as_deref()).unwrap_or(""),
        );
    }
    if let Some((src, dst)) = tags {
        for v in [src.asn, dst.asn] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for s in [&src.country, &dst.country, &src.threat, &dst.threat] {
            put_string(out, s);
        }
    }
}

/// Is `f` sent with the IPv6 template?
pub fn is_v6(f: &FlowRecord) -> bool {
    f.src.is_ipv6()
}

/// The exporter's own counts, for the options record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExporterCounts {
    pub init_ms: u64,
    pub exported: u64,
    pub dropped: u64,
}

/// Builds messages for one observation domain.
#[derive(Debug)]
pub struct Encoder {
    domain: u32,
    pen: u32,
    /// Largest message, bytes.
    max_bytes: usize,
    /// Whether the flow templates carry the tag fields ([`flow_fields`]).
    tagged: bool,
}

/// One message, ready to send, and how many data records it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub bytes: Vec<u8>,
    pub records: u32,
}

/// Writes `seq` as the sequence number of `message` (a whole message, header first).
pub fn set_sequence(message: &mut [u8], seq: u32) {
    message[8..12].copy_from_slice(&seq.to_be_bytes());
}

impl Encoder {
    /// `max_bytes`: the largest message (the path MTU less 28 for IPv4/UDP, 48 for IPv6);
    /// `tagged`: records carry each end's AS, country and threat lists.
    pub fn new(domain: u32, pen: u32, max_bytes: usize, tagged: bool) -> Self {
        Self {
            domain,
            pen,
            max_bytes: max_bytes.clamp(512, 65535),
            tagged,
        }
    }

    fn start(&self, export_s: u32) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.max_bytes);
        m.extend_from_slice(&VERSION.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&export_s.to_be_bytes());
        // The sequence number, set as the message is sent.
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&self.domain.to_be_bytes());
        m
    }

    fn finish(&self, mut m: Vec<u8>, records: u32) -> Message {
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        Message { bytes: m, records }
    }

    /// A message with the templates (IPv4, IPv6 flows; the options template).
    pub fn templates(&mut self, export_s: u32) -> Message {
        let mut m = self.start(export_s);
        let set = m.len();
        m.extend_from_slice(&TEMPLATE_SET.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        let (pen, tagged) = (self.pen, self.tagged);
        put_template(&mut m, TEMPLATE_V4, &flow_fields(false, pen, tagged), None);
        put_template(&mut m, TEMPLATE_V6, &flow_fields(true, pen, tagged), None);
        close_set(&mut m, set);
        let set = m.len();
        m.extend_from_slice(&OPTIONS_TEMPLATE_SET.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        put_template(&mut m, TEMPLATE_STATS, &stats_fields(self.pen), Some(1));
        close_set(&mut m, set);
        self.finish(m, 0)
    }

    /// A message with the exporter's own counts (one options data record).
    pub fn stats(&mut self, export_s: u32, c: ExporterCounts) -> Message {
        let mut m = self.start(export_s);
        let set = m.len();
        m.extend_from_slice(&TEMPLATE_STATS.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&self.domain.to_be_bytes());
        for v in [c.init_ms, c.exported, c.dropped] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        close_set(&mut m, set);
        self.finish(m, 1)
    }

    /// Packs `flows` into as few messages as fit `max_bytes`, in order; a set per run of
    /// one family. A record too large for any message (strings near 64 KiB) is left out
    /// and counted in the returned number. `tags` says what is known of each address (when
    /// the templates carry it).
    pub fn flows<'a>(
        &mut self,
        export_s: u32,
        flows: impl IntoIterator<Item = &'a FlowRecord>,
        tags: &mut Tagger,
    ) -> (Vec<Message>, u64) {
        let mut out = Vec::new();
        let mut too_big = 0u64;
        let mut m = self.start(export_s);
        let mut records = 0u32;
        // (set start, its template) of the set being filled.
        let mut set: Option<(usize, u16)> = None;
        let mut rec = Vec::with_capacity(256);
        for f in flows {
            rec.clear();
            if self.tagged {
                let (st, dt) = (tags.tags(f.src.ip()), tags.tags(f.dst.ip()));
                put_flow(&mut rec, f, Some((&st, &dt)));
            } else {
                put_flow(&mut rec, f, None);
            }
            let tid = if is_v6(f) { TEMPLATE_V6 } else { TEMPLATE_V4 };
            if HEADER_BYTES + SET_HEADER_BYTES + rec.len() > self.max_bytes {
                too_big += 1;
                continue;
            }
            let need = rec.len()
                + if set.is_some_and(|(_, t)| t == tid) {
                    0
                } else {
                    4
                };
            if m.len() + need > self.max_bytes {
                if let Some((s, _)) = set.take() {
                    close_set(&mut m, s);
                }
                let full = std::mem::take(&mut m);
                let msg = self.finish(full, records);
                out.push(msg);
                m = self.start(export_s);
                records = 0;
            }
            if set.is_none_or(|(_, t)| t != tid) {
                if let Some((s, _)) = set.take() {
                    close_set(&mut m, s);
                }
                set = Some((m.len(), tid));
                m.extend_from_slice(&tid.to_be_bytes());
                m.extend_from_slice(&0u16.to_be_bytes());
            }
            m.extend_from_slice(&rec);
            records += 1;
        }
        if let Some((s, _)) = set {
            close_set(&mut m, s);
        }
        if records > 0 {
            out.push(self.finish(m, records));
        }
        (out, too_big)
    }
}

fn close_set(m: &mut [u8], start: usize) {
    let len = (m.len() - start) as u16;
    m[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Attr;

    fn flow(src: &str, dst: &str) -> FlowRecord {
        let mut f = FlowRecord::new(6, src.parse().unwrap(), dst.parse().unwrap(), "capture");
        f.first_seen_ms = 1_700_000_000_123;
        f.last_seen_ms = 1_700_000_001_456;
        f.src_packets = Some(5);
        f.dst_packets = Some(4);
        f.src_bytes = Some(500);
        f.dst_bytes = Some(4000);
        f.src_tcp_flags = Some(0x1b);
        f.dst_tcp_flags = Some(0x12);
        f.end_reason = EndReason::Fin;
        f.src_owner = Some(Owner {
            pid: 42,
            comm: "curl".into(),
            uid: Some(1000),
            unit: Some("user@1000.service/app.scope".into()),
            attr: Attr::Connect,
            ..Owner::default()
        });
        f
    }

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([b[i], b[i + 1]])
    }

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_be_bytes(b[i..i + 4].try_into().unwrap())
    }

    /// Walks a message's sets: (set id, body) each; checks the lengths add up.
    fn sets(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
        assert_eq!(u16_at(m, 0), VERSION);
        assert_eq!(u16_at(m, 2) as usize, m.len());
        let mut i = HEADER_BYTES;
        let mut out = Vec::new();
        while i < m.len() {
            let (id, len) = (u16_at(m, i), u16_at(m, i + 2) as usize);
            assert!(len >= 4 && i + len <= m.len(), "set at {i}: {len}");
            out.push((id, m[i + 4..i + len].to_vec()));
            i += len;
        }
        out
    }

    #[test]
    fn template_message_defines_both_families_and_the_options() {
        let mut e = Encoder::new(7, DEFAULT_PEN, 1400, true);
        let m = e.templates(1000);
        assert_eq!(u32_at(&m.bytes, 12), 7, "observation domain");
        let s = sets(&m.bytes);
        assert_eq!(s.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2, 3]);
        let t = &s[0].1;
        assert_eq!(u16_at(t, 0), TEMPLATE_V4);
        assert_eq!(
            u16_at(t, 2) as usize,
            flow_fields(false, DEFAULT_PEN, true).len()
        );
        // Reverse octets: enterprise bit set, RFC 5103's number.
        let fields = flow_fields(false, DEFAULT_PEN, true);
        let rev = fields
            .iter()
            .position(|f| f.pen == REVERSE_PEN && f.id == 1)
            .unwrap();
        // 4 bytes per field before it, plus 4 per enterprise field before it.
        let off = 4 + fields[..rev]
            .iter()
            .map(|f| if f.pen != 0 { 8 } else { 4 })
            .sum::<usize>();
        assert_eq!(u16_at(t, off), 0x8001);
        assert_eq!(u32_at(t, off + 4), REVERSE_PEN);
        assert_eq!(m.records, 0, "templates are not data records");
    }

    #[test]
    fn flows_pack_within_the_budget() {
        let mut e = Encoder::new(1, DEFAULT_PEN, 512, false);
        let v4 = flow("10.0.0.1:40000", "192.0.2.1:443");
        let v6 = flow("[2001:db8::1]:40000", "[2001:db8::2]:443");
        let all: Vec<FlowRecord> = (0..30)
            .map(|i| if i % 3 == 0 { v6.clone() } else { v4.clone() })
            .collect();
        let (msgs, too_big) = e.flows(5, &all, &mut Tagger::off());
        assert_eq!(too_big, 0);
        assert!(msgs.len() > 1);
        let mut total = 0;
        for m in &msgs {
            assert!(m.bytes.len() <= 512, "{}", m.bytes.len());
            assert_eq!(
                usize::from(u16_at(&m.bytes, 2)),
                m.bytes.len(),
                "header length"
            );
            for (id, _) in sets(&m.bytes) {
                assert!(id == TEMPLATE_V4 || id == TEMPLATE_V6);
            }
            total += m.records;
        }
        assert_eq!(total, 30);
    }

    #[test]
    fn a_record_carries_both_directions_and_the_owner() {
        let f = flow("10.0.0.1:40000", "192.0.2.1:443");
        let mut rec = Vec::new();
        let dst = Tags {
            country: "US".into(),
            asn: 15169,
            threat: "firehol_level1,spamhaus_drop".into(),
            ..Tags::default()
        };
        put_flow(&mut rec, &f, Some((&Tags::default(), &dst)));
        assert_eq!(
            u64::from_be_bytes(rec[0..8].try_into().unwrap()),
            1_700_000_000_123
        );
        assert_eq!(&rec[16..20], &[10, 0, 0, 1]);
        assert_eq!(u16_at(&rec, 24), 40000);
        assert_eq!(u16_at(&rec, 26), 443);
        assert_eq!((rec[28], rec[29]), (6, 3), "tcp, end of flow detected");
        assert_eq!(
            (u16_at(&rec, 30), u16_at(&rec, 32)),
            (0x12, 0x1b),
            "reverse, forward"
        );
        let c = |i: usize| u64::from_be_bytes(rec[34 + i * 8..42 + i * 8].try_into().unwrap());
        assert_eq!((c(0), c(1), c(2), c(3)), (500, 5, 4000, 4));
        assert_eq!(u32_at(&rec, 66), 42, "src pid");
        assert_eq!(u32_at(&rec, 70), 1000, "src uid");
        assert_eq!(u32_at(&rec, 74), 0, "no dst process");
        assert_eq!(u32_at(&rec, 78), u32::MAX, "no dst uid");
        assert_eq!(rec[82] as usize, 4);
        assert_eq!(&rec[83..87], b"curl");
        let unit = "user@1000.service/app.scope";
        assert_eq!(rec[87] as usize, unit.len());
        let mut at = 88 + unit.len();
        assert_eq!(&rec[88..at], unit.as_bytes());
        assert_eq!(
            &rec[at..at + 2],
            &[0, 0],
            "two empty strings for dst's process"
        );
        at += 2;
        let untagged = at;
        assert_eq!(u32_at(&rec, at), 0, "src AS unknown");
        assert_eq!(u32_at(&rec, at + 4), 15169, "dst AS");
        at += 8;
        // Countries, then threat lists: source's empty, destination's set.
        assert_eq!(&rec[at..at + 4], &[0, 2, b'U', b'S']);
        at += 4;
        let lists = b"firehol_level1,spamhaus_drop";
        assert_eq!((rec[at], rec[at + 1] as usize), (0, lists.len()));
        assert_eq!(&rec[at + 2..], lists);
        // The template's fields, in the record's order.
        let fields = flow_fields(false, DEFAULT_PEN, true);
        let fixed = |fields: &[Field]| -> usize {
            fields
                .iter()
                .filter(|f| f.len != VARIABLE)
                .map(|f| f.len as usize)
                .sum()
        };
        let strings = |fields: &[Field]| fields.iter().filter(|f| f.len == VARIABLE).count();
        assert_eq!((fixed(&fields), strings(&fields)), (90, 8));
        // Untagged: the same record up to the tags, and the template without their fields.
        let mut bare = Vec::new();
        put_flow(&mut bare, &f, None);
        assert_eq!(bare, rec[..untagged]);
        let fields = flow_fields(false, DEFAULT_PEN, false);
        assert_eq!((fixed(&fields), strings(&fields)), (82, 4));
    }

    #[test]
    fn long_strings_use_the_three_byte_length() {
        let mut out = Vec::new();
        put_string(&mut out, &"x".repeat(300));
        assert_eq!(&out[..3], &[255, 1, 44]);
        assert_eq!(out.len(), 303);
    }
}
