//! Tunnel decapsulation: the connection inside a VXLAN, Geneve, GRE, GTP-U, IP-in-IP
//! (4in4, 6in4, 4in6, 6in6) or Teredo packet, so it can become a flow of its own beside the
//! outer one.
//!
//! The rule, one level: a packet whose outer transport is one of the tunnels below has its
//! first inner IP packet decoded into an [`Inner`]; whatever that inner packet carries
//! (another tunnel included) is not looked into, so of nested tunnels only the first inner
//! level becomes a flow. The outer packet is always the outer flow, counted as if it were
//! not a tunnel. An inner packet that is not IP (ARP over VXLAN), is malformed, or sits in a
//! non-first outer fragment yields no inner part; the outer packet still counts.
//!
//! | tunnel | recognised by | tunnel id |
//! |---|---|---|
//! | `vxlan` | UDP port 4789 or 8472, I flag set; inner Ethernet | VNI |
//! | `geneve` | UDP port 6081, version 0; inner by protocol type (Ethernet, IPv4, IPv6) | VNI |
//! | `gre` | IP protocol 47, GRE version 0 without routing; inner by protocol type 0x0800, 0x86DD, 0x6558 (Ethernet); ERSPAN and others are left alone | key, if present |
//! | `gtpu` | UDP port 2152, GTPv1 G-PDU (message type 255), extension headers skipped | TEID |
//! | `ipip`, `6in4`, `4in6`, `6in6` | IP protocol 4 (IPv4 inside) or 41 (IPv6 inside), outer IPv4 or IPv6 | none |
//! | `teredo` | UDP port 3544, IPv6 inside after optional authentication and origin indicators | none |
//!
//! A UDP tunnel port is looked for in the destination port first, then the source port.
//! Like the rest of the parser this borrows the frame and never allocates.
use std::net::IpAddr;

use super::parse::{self, Fragment, ParseError};

/// Which tunnel carried an inner flow. Stored as its lowercase name ([`TunnelKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TunnelKind {
    Vxlan,
    Geneve,
    Gre,
    Gtpu,
    /// IPv4 in IPv4 (IP protocol 4).
    Ipip,
    /// IPv6 in IPv4 (IP protocol 41).
    SixIn4,
    /// IPv4 in IPv6 (next header 4).
    FourIn6,
    /// IPv6 in IPv6 (next header 41).
    SixIn6,
    Teredo,
}

impl TunnelKind {
    /// The name stored in the `tunnel` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
            Self::Gre => "gre",
            Self::Gtpu => "gtpu",
            Self::Ipip => "ipip",
            Self::SixIn4 => "6in4",
            Self::FourIn6 => "4in6",
            Self::SixIn6 => "6in6",
            Self::Teredo => "teredo",
        }
    }
}

/// The inner packet of a tunnel: the same facts as [`parse::Packet`] (see there for each
/// field), plus which tunnel and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    pub kind: TunnelKind,
    /// VNI (VXLAN, Geneve), TEID (GTP-U), GRE key; None when the tunnel has none.
    pub id: Option<u32>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Inner IP header + payload, as the inner header says.
    pub ip_len: u32,
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub fragment: Option<Fragment>,
}

pub const UDP_VXLAN: u16 = 4789;
/// The port Linux used for VXLAN before IANA assigned 4789.
pub const UDP_VXLAN_LINUX: u16 = 8472;
pub const UDP_GENEVE: u16 = 6081;
pub const UDP_GTPU: u16 = 2152;
pub const UDP_TEREDO: u16 = 3544;

const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const PROTO_GRE: u8 = 47;
const PROTO_UDP: u8 = 17;

const ET_IPV4: u16 = 0x0800;
const ET_IPV6: u16 = 0x86DD;
const ET_TEB: u16 = 0x6558;

/// Whether an outer packet of `proto` between these ports may be a tunnel: the cheap test
/// done for every packet before [`decap`].
#[inline(always)]
pub fn maybe(proto: u8, src_port: u16, dst_port: u16) -> bool {
    match proto {
        PROTO_IPIP | PROTO_IPV6 | PROTO_GRE => true,
        PROTO_UDP => is_tunnel_port(dst_port) || is_tunnel_port(src_port),
        _ => false,
    }
}

#[inline(always)]
fn is_tunnel_port(p: u16) -> bool {
    matches!(
        p,
        UDP_VXLAN | UDP_VXLAN_LINUX | UDP_GENEVE | UDP_GTPU | UDP_TEREDO
    )
}

/// The inner packet of an outer packet of `proto` whose payload (after the outer IP header
/// and its extensions, up to the outer IP packet's end) is `l4`.
#[cold]
pub fn decap(outer_v6: bool, proto: u8, src_port: u16, dst_port: u16, l4: &[u8]) -> Option<Inner> {
    let (kind, id, r) = match proto {
        PROTO_IPIP => {
            let kind = if outer_v6 {
                TunnelKind::FourIn6
            } else {
                TunnelKind::Ipip
            };
            (kind, None, parse::inner_ipv4(l4, 0))
        }
        PROTO_IPV6 => {
            let kind = if outer_v6 {
                TunnelKind::SixIn6
            } else {
                TunnelKind::SixIn4
            };
            (kind, None, parse::inner_ipv6(l4, 0))
        }
        PROTO_GRE => gre(l4)?,
        PROTO_UDP => {
            let payload = l4.get(8..)?;
            let port = if is_tunnel_port(dst_port) {
                dst_port
            } else {
                src_port
            };
            match port {
                UDP_VXLAN | UDP_VXLAN_LINUX => vxlan(payload)?,
                UDP_GENEVE => geneve(payload)?,
                UDP_GTPU => gtpu(payload)?,
                UDP_TEREDO => teredo(payload)?,
                _ => return None,
            }
        }
        _ => return None,
    };
    let p = r.ok()?;
    Some(Inner {
        kind,
        id,
        src: p.src,
        dst: p.dst,
        proto: p.proto,
        src_port: p.src_port,
        dst_port: p.dst_port,
        ip_len: p.ip_len,
        tcp_flags: p.tcp_flags,
        tcp_seq: p.tcp_seq,
        fragment: p.fragment,
    })
}

type Decoded = (TunnelKind, Option<u32>, Result<parse::Packet, ParseError>);

#[inline(always)]
fn be16(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..)?
        .first_chunk::<2>()
        .map(|a| u16::from_be_bytes(*a))
}

#[inline(always)]
fn be32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..)?
        .first_chunk::<4>()
        .map(|a| u32::from_be_bytes(*a))
}

/// 24-bit VNI in bytes 4..7 of a VXLAN or Geneve header.
fn vni(h: &[u8]) -> Option<u32> {
    be32(h, 4).map(|w| w >> 8)
}

/// The inner packet by an ethertype-like protocol type at `off` of `b`.
fn by_protocol_type(b: &[u8], off: usize, et: u16) -> Option<Result<parse::Packet, ParseError>> {
    Some(match et {
        ET_IPV4 => parse::inner_ipv4(b, off),
        ET_IPV6 => parse::inner_ipv6(b, off),
        ET_TEB => parse::inner_ethernet(b.get(off..)?),
        _ => return None,
    })
}

/// RFC 7348: flags (I = 0x08), 3 reserved, VNI (3), reserved; then an Ethernet frame.
fn vxlan(b: &[u8]) -> Option<Decoded> {
    let flags = *b.first()?;
    if flags & 0x08 == 0 {
        return None;
    }
    let id = vni(b)?;
    Some((
        TunnelKind::Vxlan,
        Some(id),
        parse::inner_ethernet(b.get(8..)?),
    ))
}

/// RFC 8926: version (2 bits, 0) and options length (6 bits, 4-byte words), flags,
/// protocol type, VNI (3), reserved; options; then the payload.
fn geneve(b: &[u8]) -> Option<Decoded> {
    let first = *b.first()?;
    if first >> 6 != 0 {
        return None;
    }
    let opts = usize::from(first & 0x3F) * 4;
    let et = be16(b, 2)?;
    let id = vni(b)?;
    Some((
        TunnelKind::Geneve,
        Some(id),
        by_protocol_type(b, 8 + opts, et)?,
    ))
}

/// RFC 2784/2890: C R K S flags, version 0; checksum+offset if C or R, key if K, sequence
/// if S. Source routing (R, RFC 1701) and version 1 (PPTP) are not decoded.
fn gre(b: &[u8]) -> Option<Decoded> {
    let flags = be16(b, 0)?;
    if flags & 0x0007 != 0 || flags & 0x4000 != 0 {
        return None;
    }
    let et = be16(b, 2)?;
    let mut off = 4;
    if flags & 0x8000 != 0 {
        off += 4;
    }
    let key = if flags & 0x2000 != 0 {
        let k = be32(b, off)?;
        off += 4;
        Some(k)
    } else {
        None
    };
    if flags & 0x1000 != 0 {
        off += 4;
    }
    Some((TunnelKind::Gre, key, by_protocol_type(b, off, et)?))
}

/// 3GPP TS 29.281: flags (version 1, PT 1, E S PN), message type (255 = G-PDU), length,
/// TEID; sequence, N-PDU and next extension type if any of E S PN; extension headers (length
/// in 4-byte words, the last byte the next type) while the next type is not 0; then IP.
fn gtpu(b: &[u8]) -> Option<Decoded> {
    let flags = *b.first()?;
    if flags >> 5 != 1 || flags & 0x10 == 0 || *b.get(1)? != 255 {
        return None;
    }
    let teid = be32(b, 4)?;
    let mut off = 8;
    if flags & 0x07 != 0 {
        let mut next = *b.get(11)?;
        off = 12;
        if flags & 0x04 != 0 {
            // Each header is at least 4 bytes, so the walk ends with the packet.
            while next != 0 {
                let words = usize::from(*b.get(off)?);
                if words == 0 {
                    return None;
                }
                off += words * 4;
                next = *b.get(off - 1)?;
            }
        }
    }
    Some((TunnelKind::Gtpu, Some(teid), parse::inner_ip_any(b, off)))
}

/// RFC 4380: optional authentication indicator (0x0001, id length, auth length, client id,
/// auth value, nonce (8), confirmation (1)) and origin indicator (0x0000, port, address);
/// then an IPv6 packet.
fn teredo(b: &[u8]) -> Option<Decoded> {
    let mut off = 0;
    if be16(b, off)? == 0x0001 {
        let id_len = usize::from(*b.get(off + 2)?);
        let au_len = usize::from(*b.get(off + 3)?);
        off += 4 + id_len + au_len + 9;
    }
    if be16(b, off)? == 0x0000 {
        off += 8;
    }
    if b.get(off)? >> 4 != 6 {
        return None;
    }
    Some((TunnelKind::Teredo, None, parse::inner_ipv6(b, off)))
}
