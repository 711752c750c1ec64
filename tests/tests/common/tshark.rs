//! tshark as the independent judge of flow counts: what it dissects, added up per
//! conversation, and the same sums from the sensor's database.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
    process::Command,
};

/// (proto, (ip, port) lower, (ip, port) higher).
pub type Conv = (u8, (IpAddr, u16), (IpAddr, u16));
/// Packets and bytes sent by the lower endpoint, then by the higher.
pub type Counts = [(u64, u64); 2];

pub fn conv(proto: u8, a: (IpAddr, u16), b: (IpAddr, u16)) -> (Conv, usize) {
    if a <= b {
        ((proto, a, b), 0)
    } else {
        ((proto, b, a), 1)
    }
}

/// tshark's view of `file`: TCP and UDP conversations, ICMP and ICMPv6 per address pair.
pub fn tshark_convs(file: &Path) -> BTreeMap<Conv, Counts> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(file)
        .args([
            "-o",
            "ip.defragment:FALSE",
            "-o",
            "ipv6.defragment:FALSE",
            "-T",
            "fields",
            "-E",
            "occurrence=f",
            "-E",
            "separator=|",
            "-e",
            "frame.protocols",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ip.len",
            "-e",
            "ip.proto",
            "-e",
            "ip.id",
            "-e",
            "ip.frag_offset",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "ipv6.plen",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
            "-e",
            "ipv6.fraghdr.ident",
            "-e",
            "ipv6.fraghdr.offset",
        ])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut convs: BTreeMap<Conv, Counts> = BTreeMap::new();
    // First fragments' conversations, by (src, dst, proto, id).
    let mut frags: HashMap<(String, String, String, String), (Conv, usize)> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 16 {
            continue;
        }
        let protos: Vec<&str> = f[0].split(':').collect();
        // The outermost IP layer and the transport right after it (a tunnel or an ICMP
        // error's quoted header comes later and is not this packet's flow).
        let Some(ip_at) = protos.iter().position(|p| *p == "ip" || *p == "ipv6") else {
            continue;
        };
        let v6 = protos[ip_at] == "ipv6";
        let transport = protos[ip_at + 1..]
            .iter()
            .find(|p| !p.starts_with("ipv6.") && **p != "ipv6.fraghdr")
            .copied()
            .unwrap_or("");
        let (src, dst, len) = if v6 {
            let plen: u64 = f[9].parse().unwrap_or(0);
            (f[7], f[8], 40 + plen)
        } else {
            (f[1], f[2], f[3].parse().unwrap_or(0))
        };
        let (Ok(src), Ok(dst)) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) else {
            continue;
        };
        // A fragment's identity: IPv4 (src, dst, proto, id); IPv6 (src, dst, ident).
        let (frag_offset, frag_key): (u64, Option<(String, String, String, String)>) = if v6 {
            let ident = f[14];
            (
                f[15].parse().unwrap_or(0),
                (!ident.is_empty()).then(|| (f[7].into(), f[8].into(), "v6".into(), ident.into())),
            )
        } else {
            (
                f[6].parse().unwrap_or(0),
                Some((f[1].into(), f[2].into(), f[4].into(), f[5].into())),
            )
        };
        let key = match transport {
            "tcp" | "udp" => {
                let (sp, dp, proto) = if transport == "tcp" {
                    (f[10], f[11], 6)
                } else {
                    (f[12], f[13], 17)
                };
                let (Ok(sp), Ok(dp)) = (sp.parse::<u16>(), dp.parse::<u16>()) else {
                    continue;
                };
                let c = conv(proto, (src, sp), (dst, dp));
                if let Some(fk) = frag_key {
                    frags.insert(fk, c);
                }
                c
            }
            "icmp" | "icmpv6" => {
                let proto = if transport == "icmp" { 1 } else { 58 };
                conv(proto, (src, 0), (dst, 0))
            }
            _ if frag_offset > 0 => match frag_key.and_then(|fk| frags.get(&fk).copied()) {
                Some(c) => c,
                None => continue,
            },
            _ => continue,
        };
        let (k, dir) = key;
        let e = convs.entry(k).or_default();
        e[dir].0 += 1;
        e[dir].1 += len;
    }
    convs
}

/// An inner conversation of a tunnel: the tunnel's kind (the sensor's name), its id (VNI,
/// TEID, GRE key) and the inner conversation.
pub type InnerConv = (String, Option<u32>, Conv);

/// Per inner conversation: packets and bytes each way (as [`Counts`]) and the outer
/// addresses of its first packet, as (the lower endpoint's side, the higher's): the sensor
/// reports those of a flow's first packet (a tunnel may carry both directions the same
/// way, as some test captures do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InnerCounts {
    pub counts: Counts,
    pub outer: BTreeSet<(IpAddr, IpAddr)>,
}

/// The tunnel between two IP layers, by the protocols between them; None when they are
/// not a tunnel (an ICMP error quoting a header) or one the sensor does not decode.
fn tunnel_kind(outer: &str, between: &[&str], inner: &str) -> Option<&'static str> {
    if between.is_empty() {
        return Some(match (outer, inner) {
            ("ip", "ip") => "ipip",
            ("ip", _) => "6in4",
            ("ipv6", "ip") => "4in6",
            _ => "6in6",
        });
    }
    for (name, kind) in [
        ("vxlan", "vxlan"),
        ("geneve", "geneve"),
        ("gre", "gre"),
        ("gtp", "gtpu"),
        ("teredo", "teredo"),
    ] {
        if between.contains(&name) {
            return Some(kind);
        }
    }
    None
}

/// tshark's inner conversations of the tunnels in `file`: for each frame with a second IP
/// layer inside a tunnel, that layer and the transport right after it, summed as
/// [`tshark_convs`] sums the outer ones (inner IP-layer bytes). Every occurrence of each
/// field is asked for, and a layer's own is picked by counting that protocol's earlier
/// layers in `frame.protocols`.
pub fn tshark_inner_convs(file: &Path) -> BTreeMap<InnerConv, InnerCounts> {
    let fields = [
        "frame.protocols",
        "ip.src",
        "ip.dst",
        "ip.len",
        "ipv6.src",
        "ipv6.dst",
        "ipv6.plen",
        "tcp.srcport",
        "tcp.dstport",
        "udp.srcport",
        "udp.dstport",
        "vxlan.vni",
        "geneve.vni",
        "gtp.teid",
        "gre.key",
    ];
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r"]).arg(file).args([
        "-o",
        "ip.defragment:FALSE",
        "-o",
        "ipv6.defragment:FALSE",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
        "-E",
        "separator=|",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut convs: BTreeMap<InnerConv, InnerCounts> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<Vec<&str>> = line.split('|').map(|c| c.split(',').collect()).collect();
        if f.len() < fields.len() {
            continue;
        }
        let nth = |col: usize, n: usize| f[col].get(n).copied().unwrap_or("");
        let protos: Vec<&str> = f[0][0].split(':').collect();
        let ips: Vec<usize> = (0..protos.len())
            .filter(|&i| protos[i] == "ip" || protos[i] == "ipv6")
            .collect();
        let (Some(&o), Some(&i)) = (ips.first(), ips.get(1)) else {
            continue;
        };
        let Some(kind) = tunnel_kind(protos[o], &protos[o + 1..i], protos[i]) else {
            continue;
        };
        // Which occurrence of `proto` the layer at `at` is.
        let index = |at: usize| protos[..at].iter().filter(|p| **p == protos[at]).count();
        let addrs = |at: usize| -> Option<(IpAddr, IpAddr, u64)> {
            let n = index(at);
            if protos[at] == "ip" {
                Some((
                    nth(1, n).parse().ok()?,
                    nth(2, n).parse().ok()?,
                    nth(3, n).parse().ok()?,
                ))
            } else {
                let plen: u64 = nth(6, n).parse().ok()?;
                Some((nth(4, n).parse().ok()?, nth(5, n).parse().ok()?, 40 + plen))
            }
        };
        let (Some((osrc, odst, _)), Some((src, dst, len))) = (addrs(o), addrs(i)) else {
            continue;
        };
        let Some(t) = protos[i + 1..]
            .iter()
            .position(|p| !p.starts_with("ipv6."))
            .map(|k| i + 1 + k)
        else {
            continue;
        };
        let (conv_key, dir) = match protos[t] {
            "tcp" | "udp" => {
                let (col, proto) = if protos[t] == "tcp" { (7, 6) } else { (9, 17) };
                let n = index(t);
                let (Ok(sp), Ok(dp)) = (nth(col, n).parse::<u16>(), nth(col + 1, n).parse::<u16>())
                else {
                    continue;
                };
                conv(proto, (src, sp), (dst, dp))
            }
            "icmp" => conv(1, (src, 0), (dst, 0)),
            "icmpv6" => conv(58, (src, 0), (dst, 0)),
            _ => continue,
        };
        let id_col = match kind {
            "vxlan" => Some(11),
            "geneve" => Some(12),
            "gtpu" => Some(13),
            "gre" => Some(14),
            _ => None,
        };
        let id = id_col.and_then(|c| {
            let v = nth(c, 0);
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u32::from_str_radix(h, 16).ok())
        });
        let e = convs.entry((kind.to_string(), id, conv_key)).or_default();
        if e.outer.is_empty() {
            e.outer
                .insert(if dir == 0 { (osrc, odst) } else { (odst, osrc) });
        }
        e.counts[dir].0 += 1;
        e.counts[dir].1 += len;
    }
    convs
}

/// The sensor's inner flows of tunnels in `db`, summed per inner conversation as
/// [`sensor_convs`] sums the outer ones.
pub fn sensor_inner_convs(db: &Path) -> BTreeMap<InnerConv, InnerCounts> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn
        .prepare(
            "SELECT proto, src_ip, src_port, dst_ip, dst_port, src_packets, src_bytes,
                    dst_packets, dst_bytes, tunnel, tunnel_id, tunnel_src_ip, tunnel_dst_ip
             FROM flows WHERE proto IN (1, 6, 17, 58) AND tunnel IS NOT NULL",
        )
        .expect("prepare");
    let mut convs: BTreeMap<InnerConv, InnerCounts> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                (
                    r.get::<_, u8>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u16>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, u16>(4)?,
                ),
                [
                    (r.get::<_, i64>(5)? as u64, r.get::<_, i64>(6)? as u64),
                    (r.get::<_, i64>(7)? as u64, r.get::<_, i64>(8)? as u64),
                ],
                (
                    r.get::<_, String>(9)?,
                    r.get::<_, Option<i64>>(10)?,
                    r.get::<_, String>(11)?,
                    r.get::<_, String>(12)?,
                ),
            ))
        })
        .expect("query");
    for row in rows {
        let ((proto, sip, mut sp, dip, mut dp), counts, (kind, id, tsrc, tdst)) = row.expect("row");
        if matches!(proto, 1 | 58) {
            (sp, dp) = (0, 0);
        }
        if sp == 0 && dp == 0 && !matches!(proto, 1 | 58) {
            continue;
        }
        let s: IpAddr = sip.parse().expect("src ip");
        let d: IpAddr = dip.parse().expect("dst ip");
        let ts: IpAddr = tsrc.parse().expect("tunnel_src_ip");
        let td: IpAddr = tdst.parse().expect("tunnel_dst_ip");
        let (k, dir) = conv(proto, (s, sp), (d, dp));
        let id = id.map(|v| u32::try_from(v).expect("tunnel_id fits 32 bits"));
        let e = convs.entry((kind, id, k)).or_default();
        for (side, c) in [(dir, counts[0]), (1 - dir, counts[1])] {
            e.counts[side].0 += c.0;
            e.counts[side].1 += c.1;
        }
        e.outer.insert(if dir == 0 { (ts, td) } else { (td, ts) });
    }
    convs
}

/// The sensor's flows in `db`, summed per conversation (a reused tuple may be several
/// flows, as it may be several tshark streams). ICMP counts per address pair.
pub fn sensor_convs(db: &Path) -> BTreeMap<Conv, Counts> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn
        .prepare(
            "SELECT proto, src_ip, src_port, dst_ip, dst_port, src_packets, src_bytes,
                    dst_packets, dst_bytes FROM flows
             WHERE proto IN (1, 6, 17, 58) AND tunnel IS NULL",
        )
        .expect("prepare");
    let mut convs: BTreeMap<Conv, Counts> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, u8>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u16>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u16>(4)?,
                [
                    (r.get::<_, i64>(5)? as u64, r.get::<_, i64>(6)? as u64),
                    (r.get::<_, i64>(7)? as u64, r.get::<_, i64>(8)? as u64),
                ],
            ))
        })
        .expect("query");
    for row in rows {
        let (proto, sip, mut sp, dip, mut dp, counts) = row.expect("row");
        if matches!(proto, 1 | 58) {
            (sp, dp) = (0, 0);
        }
        // Port-less flows (fragments whose first fragment was never seen) are not
        // conversations to tshark either.
        if sp == 0 && dp == 0 && !matches!(proto, 1 | 58) {
            continue;
        }
        let s: IpAddr = sip.parse().expect("src ip");
        let d: IpAddr = dip.parse().expect("dst ip");
        let (k, dir) = conv(proto, (s, sp), (d, dp));
        let e = convs.entry(k).or_default();
        for (side, c) in [(dir, counts[0]), (1 - dir, counts[1])] {
            e[side].0 += c.0;
            e[side].1 += c.1;
        }
    }
    convs
}

/// One TCP connection as tshark sees it: a `tcp.stream` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub id: u64,
    /// Sender of the first SYN without ACK, when one was captured.
    pub syn_sender: Option<(IpAddr, u16)>,
}

/// tshark's TCP connections of `file` per unordered 5-tuple (the `Conv` key), in stream
/// order. Only TCP right after the outermost IP layer counts: a tunnel's inner TCP and an
/// ICMP error's quoted header are not connections of this layer.
pub fn tshark_streams(file: &Path) -> BTreeMap<Conv, Vec<Stream>> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(file)
        .args([
            "-o",
            "ip.defragment:FALSE",
            "-o",
            "ipv6.defragment:FALSE",
            "-Y",
            "tcp",
            "-T",
            "fields",
            "-E",
            "occurrence=f",
            "-E",
            "separator=|",
            "-e",
            "frame.protocols",
            "-e",
            "tcp.stream",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.flags",
        ])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_id: BTreeMap<u64, (Conv, Option<(IpAddr, u16)>)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 9 {
            continue;
        }
        let protos: Vec<&str> = f[0].split(':').collect();
        let Some(ip_at) = protos.iter().position(|p| *p == "ip" || *p == "ipv6") else {
            continue;
        };
        let next = protos[ip_at + 1..]
            .iter()
            .find(|p| !p.starts_with("ipv6."))
            .copied()
            .unwrap_or("");
        if next != "tcp" {
            continue;
        }
        let v6 = protos[ip_at] == "ipv6";
        let (src, dst) = if v6 { (f[4], f[5]) } else { (f[2], f[3]) };
        let (Ok(id), Ok(src), Ok(dst), Ok(sp), Ok(dp)) = (
            f[1].parse::<u64>(),
            src.parse::<IpAddr>(),
            dst.parse::<IpAddr>(),
            f[6].parse::<u16>(),
            f[7].parse::<u16>(),
        ) else {
            continue;
        };
        let flags = u16::from_str_radix(f[8].trim_start_matches("0x"), 16).unwrap_or(0);
        let pure_syn = flags & 0x12 == 0x02;
        let (k, _) = conv(6, (src, sp), (dst, dp));
        let e = by_id.entry(id).or_insert((k, None));
        if pure_syn && e.1.is_none() {
            e.1 = Some((src, sp));
        }
    }
    let mut streams: BTreeMap<Conv, Vec<Stream>> = BTreeMap::new();
    for (id, (k, syn_sender)) in by_id {
        streams
            .entry(k)
            .or_default()
            .push(Stream { id, syn_sender });
    }
    streams
}

/// One TCP row of the sensor's database.
#[derive(Debug, Clone)]
pub struct Row {
    pub src: (IpAddr, u16),
    pub end_reason: String,
    pub first_seen_ms: i64,
    pub packets: u64,
}

/// The sensor's TCP rows in `db` per unordered 5-tuple, oldest first.
pub fn sensor_tcp_rows(db: &Path) -> BTreeMap<Conv, Vec<Row>> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn
        .prepare(
            "SELECT src_ip, src_port, dst_ip, dst_port, end_reason, first_seen_ms,
                    COALESCE(src_packets, 0) + COALESCE(dst_packets, 0)
             FROM flows WHERE proto = 6 AND tunnel IS NULL ORDER BY first_seen_ms, id",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u16>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u16>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .expect("query");
    let mut out: BTreeMap<Conv, Vec<Row>> = BTreeMap::new();
    for row in rows {
        let (sip, sp, dip, dp, end_reason, first_seen_ms, packets) = row.expect("row");
        let s: IpAddr = sip.parse().expect("src ip");
        let d: IpAddr = dip.parse().expect("dst ip");
        let (k, _) = conv(6, (s, sp), (d, dp));
        out.entry(k).or_default().push(Row {
            src: (s, sp),
            end_reason,
            first_seen_ms,
            packets: packets as u64,
        });
    }
    out
}

/// Connection identity, judged against tshark: per TCP 5-tuple, as many rows (not counting
/// records cut by the active timeout) as tshark has streams, and where a stream's SYN was
/// captured, the row's source is the SYN's sender. Returns (connections, problems).
pub fn identity_problems(file: &Path, db: &Path) -> (usize, Vec<String>) {
    let want = tshark_streams(file);
    let got = sensor_tcp_rows(db);
    let mut problems = Vec::new();
    let mut connections = 0;
    for (k, streams) in &want {
        connections += streams.len();
        let rows: Vec<&Row> = got
            .get(k)
            .map(|v| v.iter().filter(|r| r.end_reason != "active").collect())
            .unwrap_or_default();
        if rows.len() != streams.len() {
            problems.push(format!(
                "{k:?}: {} tshark streams, {} sensor rows ({:?})",
                streams.len(),
                rows.len(),
                rows.iter()
                    .map(|r| format!("{}@{}:{}p", r.end_reason, r.first_seen_ms, r.packets))
                    .collect::<Vec<_>>()
            ));
            continue;
        }
        // Every record of a connection (active-timeout cuts included) names one source.
        let all = &got[k];
        for (stream, row) in streams.iter().zip(&rows) {
            if let Some(syn) = stream.syn_sender
                && row.src != syn
            {
                problems.push(format!(
                    "{k:?} stream {}: source {:?}, SYN sent by {syn:?}",
                    stream.id, row.src
                ));
            }
        }
        if streams.len() == 1
            && let Some(syn) = streams[0].syn_sender
            && all.iter().any(|r| r.src != syn)
        {
            problems.push(format!(
                "{k:?}: an active-timeout record names the responder"
            ));
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(k)) {
        problems.push(format!("{k:?}: sensor rows, no tshark stream"));
    }
    (connections, problems)
}
