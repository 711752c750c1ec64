//! Frame decoding for packet capture: one captured frame (AF_PACKET or a pcap/pcapng record)
//! in, the facts the flow table keys and counts on out — addresses, transport protocol,
//! ports (or ICMP type/code), the IP-layer length, TCP flags and fragment identity.
//!
//! This runs once per packet on the aggregation hot path, so it borrows the frame
//! (`&[u8]`, zero-copy), never allocates and never panics: every read is bounds-checked
//! and any input, however malformed or truncated, yields `Ok` or a [`ParseError`].
//! The outer packet is always the flow; with decapsulation on ([`parse_with`]), a tunnel's
//! first inner packet is decoded too, into [`Packet::inner`] (see [`super::tunnel`] for the
//! rule). The test for a tunnel is one match on the protocol and ports, so other packets
//! pay nothing more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::tunnel;
pub use super::tunnel::{Inner, TunnelKind};

/// Link-layer framing of a capture, by the pcap LINKTYPE_ numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1): Ethernet II, with VLAN tags, MPLS and PPPoE sessions.
    Ethernet,
    /// LINKTYPE_RAW (101; also 12 and 14 on some systems): raw IP, version from the first nibble.
    Raw,
    /// LINKTYPE_IPV4 (228): raw IPv4.
    Ipv4,
    /// LINKTYPE_IPV6 (229): raw IPv6.
    Ipv6,
    /// LINKTYPE_LINUX_SLL (113): Linux cooked capture v1, 16-byte header.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): Linux cooked capture v2, 20-byte header.
    LinuxSll2,
    /// LINKTYPE_NULL (0): BSD loopback, 4-byte address family in the capturing host's byte
    /// order (2 = IPv4; 24, 28, 30 = IPv6).
    Null,
    /// LINKTYPE_LOOP (108): like [`LinkType::Null`] but the family is big-endian.
    Loop,
    /// LINKTYPE_NFLOG (239): Linux netfilter log messages: a 4-byte header (address family,
    /// version, resource id), then TLVs; the packet is the NFULA_PAYLOAD TLV, raw IP.
    Nflog,
}

impl LinkType {
    /// Every link type this parser decodes.
    pub const ALL: [LinkType; 9] = [
        LinkType::Ethernet,
        LinkType::Raw,
        LinkType::Ipv4,
        LinkType::Ipv6,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::Null,
        LinkType::Loop,
        LinkType::Nflog,
    ];

    /// From a pcap/pcapng link type number; None for ones we do not decode.
    #[inline]
    pub fn from_linktype(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Null,
            1 => Self::Ethernet,
            12 | 14 | 101 => Self::Raw,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            239 => Self::Nflog,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }
}

/// The LINKTYPE_ name of a link type number, for the ones a user may meet (tcpdump.org's
/// link-layer header types list); None for the rest.
pub fn linktype_name(n: u32) -> Option<&'static str> {
    Some(match n {
        0 => "NULL",
        1 => "ETHERNET",
        6 => "IEEE802_5",
        8 => "SLIP",
        9 => "PPP",
        10 => "FDDI",
        12 | 14 | 101 => "RAW",
        50 => "PPP_HDLC",
        51 => "PPP_ETHER",
        104 => "C_HDLC",
        105 => "IEEE802_11",
        107 => "FRELAY",
        108 => "LOOP",
        113 => "LINUX_SLL",
        119 => "IEEE802_11_PRISM",
        127 => "IEEE802_11_RADIOTAP",
        147..=162 => "USER0..USER15",
        163 => "IEEE802_11_AVS",
        187 => "BLUETOOTH_HCI_H4",
        189 => "USB_LINUX",
        192 => "PPI",
        195 => "IEEE802_15_4_WITHFCS",
        197 => "ERF",
        201 => "BLUETOOTH_HCI_H4_WITH_PHDR",
        215 => "IEEE802_15_4_NONASK_PHY",
        220 => "USB_LINUX_MMAPPED",
        227 => "CAN_SOCKETCAN",
        228 => "IPV4",
        229 => "IPV6",
        239 => "NFLOG",
        249 => "USBPCAP",
        251 => "BLUETOOTH_LE_LL",
        252 => "WIRESHARK_UPPER_PDU",
        276 => "LINUX_SLL2",
        _ => return None,
    })
}

/// IPv4 fragment facts: non-first fragments carry no transport header; the flow table
/// attributes them to their flow by (src, dst, proto, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification (16 bits) or the IPv6 fragment header's identification.
    pub id: u32,
    /// Fragment offset in 8-byte units.
    pub offset: u16,
    /// More-fragments flag.
    pub more: bool,
}

/// What the flow table needs from one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source address, as in the (outer) IP header.
    pub src: IpAddr,
    /// Destination address, as in the (outer) IP header.
    pub dst: IpAddr,
    /// IANA protocol number of the transport (after IPv6 extension headers), e.g. 6, 17, 1, 58.
    pub proto: u8,
    /// TCP/UDP/SCTP ports; for ICMP/ICMPv6, src_port = 0 and dst_port = (type << 8) | code;
    /// 0/0 for other protocols and for non-first fragments.
    pub src_port: u16,
    /// See [`Packet::src_port`].
    pub dst_port: u16,
    /// IP-layer bytes: IP header(s) + payload, as IPFIX octetDeltaCount counts them. IPv4: the
    /// total-length field; IPv6: 40 + payload-length. If the header's length field claims more
    /// than was captured, the header's value is still reported: snaplen truncation must not
    /// change the count. A zero length field (GSO / BIG TCP super-packets) falls back to an
    /// IPv6 Jumbo Payload option if there is one, else to the captured IP bytes.
    pub ip_len: u32,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20 ECE=0x40
    /// CWR=0x80); 0 if not TCP or not captured.
    pub tcp_flags: u8,
    /// TCP sequence number (a SYN's is the connection's ISN: a SYN with the same one again is
    /// a retransmission, another one a new connection); 0 if not TCP or not captured.
    pub tcp_seq: u32,
    /// Set for IPv4 packets with MF set or a non-zero offset, and for every IPv6 packet with
    /// a Fragment extension header.
    pub fragment: Option<Fragment>,
    /// The first inner packet of a tunnel, when decapsulation is on and this is one.
    pub inner: Option<Inner>,
}

/// Why a frame could not be decoded. `len` in [`ParseError::Truncated`] is the whole frame's
/// captured length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame ends inside a header we need.
    #[error("frame too short for {layer} header: {len} bytes")]
    Truncated {
        /// Which header: "Ethernet", "VLAN", "MPLS", "PPPoE", "SLL", "SLL2", "loopback",
        /// "IP", "IPv4", "IPv6", "IPv6 extension", "IPv6 fragment", "FabricPath", "NFLOG".
        layer: &'static str,
        /// Captured length of the whole frame.
        len: usize,
    },
    /// Not an IP packet (ARP, LLDP...). Not malformed: count it apart from the other errors.
    /// For Null/Loop captures `ethertype` holds the (low 16 bits of the) address family; for
    /// MPLS and PPPoE payloads that are not IP it is 0x8847 / 0x8864.
    #[error("not IP (ethertype 0x{ethertype:04x})")]
    NotIp {
        /// The ethertype (or equivalent) that was not IP.
        ethertype: u16,
    },
    /// The IP version nibble is neither 4 nor 6 (or not the one the framing announced).
    #[error("IP version {version} is neither 4 nor 6")]
    BadVersion {
        /// The version nibble found.
        version: u8,
    },
    /// IPv4 IHL below 5, or a header longer than the total-length field.
    #[error("bad IPv4 header length {ihl}")]
    BadIhl {
        /// The IHL nibble found (in 4-byte words).
        ihl: u8,
    },
    /// More than [`MAX_IPV6_EXTENSIONS`] IPv6 extension headers.
    #[error("too many IPv6 extension headers")]
    TooManyExtensions,
}

/// The most IPv6 extension headers walked before giving up with
/// [`ParseError::TooManyExtensions`].
pub const MAX_IPV6_EXTENSIONS: u8 = 8;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86DD;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88A8;
const ETH_VLAN_OLD: u16 = 0x9100;
const ETH_MPLS: u16 = 0x8847;
const ETH_PPPOE: u16 = 0x8864;
/// Cisco FabricPath: the outer header's ethertype, then a 2-byte FTag/TTL, then the whole
/// inner Ethernet header (Wireshark's `cfp` dissector).
const ETH_FABRICPATH: u16 = 0x8903;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const PROTO_SCTP: u8 = 132;

/// Parses one frame, tunnels not decapsulated. `Err(NotIp)` is not a malformed packet (ARP,
/// LLDP...): callers count it separately from the other errors.
#[inline]
pub fn parse(link: LinkType, frame: &[u8]) -> Result<Packet, ParseError> {
    parse_with(link, frame, false)
}

/// Parses one frame; with `decap`, a tunnel's inner packet goes in [`Packet::inner`].
#[inline]
pub fn parse_with(link: LinkType, frame: &[u8], decap: bool) -> Result<Packet, ParseError> {
    let d = decap;
    match link {
        LinkType::Ethernet => {
            let et = be16(frame, 12).ok_or_else(|| truncated("Ethernet", frame))?;
            ethertype(frame, 14, et, d)
        }
        LinkType::Raw => ip_any(frame, 0, d),
        LinkType::Ipv4 => ipv4(frame, 0, d),
        LinkType::Ipv6 => ipv6(frame, 0, d),
        LinkType::LinuxSll => {
            // The header is fixed-size: the protocol type is its last field.
            let et = be16(frame, 14).ok_or_else(|| truncated("SLL", frame))?;
            ethertype(frame, 16, et, d)
        }
        LinkType::LinuxSll2 => {
            if frame.len() < 20 {
                return Err(truncated("SLL2", frame));
            }
            let et = be16(frame, 0).ok_or_else(|| truncated("SLL2", frame))?;
            ethertype(frame, 20, et, d)
        }
        LinkType::Null => {
            let b = *bytes::<4>(frame, 0).ok_or_else(|| truncated("loopback", frame))?;
            // Host order of the machine that captured: families are small numbers, so
            // whichever reading fits in 16 bits is the right one.
            let le = u32::from_le_bytes(b);
            let af = if le <= 0xFFFF { le } else { le.swap_bytes() };
            loopback(frame, af, d)
        }
        LinkType::Loop => {
            let b = *bytes::<4>(frame, 0).ok_or_else(|| truncated("loopback", frame))?;
            loopback(frame, u32::from_be_bytes(b), d)
        }
        LinkType::Nflog => nflog(frame, d),
    }
}

/// The inner packets of tunnels: IPv4, IPv6, by version nibble, or an Ethernet frame; never
/// decapsulated further.
pub(super) fn inner_ipv4(b: &[u8], off: usize) -> Result<Packet, ParseError> {
    ipv4(b, off, false)
}

pub(super) fn inner_ipv6(b: &[u8], off: usize) -> Result<Packet, ParseError> {
    ipv6(b, off, false)
}

pub(super) fn inner_ip_any(b: &[u8], off: usize) -> Result<Packet, ParseError> {
    ip_any(b, off, false)
}

pub(super) fn inner_ethernet(b: &[u8]) -> Result<Packet, ParseError> {
    let et = be16(b, 12).ok_or_else(|| truncated("Ethernet", b))?;
    ethertype(b, 14, et, false)
}

/// The address families NFLOG announces.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NFULA_PAYLOAD: u16 = 9;

/// NFLOG: the TLVs' length (which counts their own 4-byte header) and type are in the
/// capturing host's byte order, each TLV padded to 4 bytes. Little-endian is tried first; a
/// length that cannot be right (below 4, past the end) is read big-endian.
fn nflog(frame: &[u8], d: bool) -> Result<Packet, ParseError> {
    let family = *frame.first().ok_or_else(|| truncated("NFLOG", frame))?;
    let mut off = 4;
    loop {
        let h = *bytes::<4>(frame, off).ok_or_else(|| truncated("NFLOG", frame))?;
        let fits = |len: u16| len >= 4 && off + usize::from(len) <= frame.len();
        let le = u16::from_le_bytes([h[0], h[1]]);
        let (len, kind) = if fits(le) {
            (le, u16::from_le_bytes([h[2], h[3]]))
        } else {
            let be = u16::from_be_bytes([h[0], h[1]]);
            if !fits(be) {
                return Err(truncated("NFLOG", frame));
            }
            (be, u16::from_be_bytes([h[2], h[3]]))
        };
        // The top bits of the type are netlink's nested / byte-order flags.
        if kind & 0x3FFF == NFULA_PAYLOAD {
            let ip = &frame[off + 4..off + usize::from(len)];
            return match family {
                AF_INET => ipv4(ip, 0, d),
                AF_INET6 => ipv6(ip, 0, d),
                other => Err(ParseError::NotIp {
                    ethertype: u16::from(other),
                }),
            };
        }
        off += (usize::from(len) + 3) & !3;
    }
}

#[cold]
#[inline(never)]
fn truncated(layer: &'static str, frame: &[u8]) -> ParseError {
    ParseError::Truncated {
        layer,
        len: frame.len(),
    }
}

/// `N` bytes at `off`, if all of them are there.
#[inline(always)]
fn bytes<const N: usize>(b: &[u8], off: usize) -> Option<&[u8; N]> {
    b.get(off..)?.first_chunk::<N>()
}

#[inline(always)]
fn be16(b: &[u8], off: usize) -> Option<u16> {
    bytes::<2>(b, off).map(|a| u16::from_be_bytes(*a))
}

#[inline(always)]
fn be32(b: &[u8], off: usize) -> Option<u32> {
    bytes::<4>(b, off).map(|a| u32::from_be_bytes(*a))
}

/// BSD loopback: dispatch on the address family.
#[inline]
fn loopback(frame: &[u8], af: u32, d: bool) -> Result<Packet, ParseError> {
    match af {
        2 => ipv4(frame, 4, d),
        // AF_INET6 is 24 on NetBSD/OpenBSD, 28 on FreeBSD, 30 on Darwin.
        24 | 28 | 30 => ipv6(frame, 4, d),
        _ => Err(ParseError::NotIp {
            ethertype: (af & 0xFFFF) as u16,
        }),
    }
}

/// Ethertype dispatch for the payload at `off`, peeling VLAN tags, MPLS labels and PPPoE.
#[inline]
fn ethertype(frame: &[u8], mut off: usize, mut et: u16, d: bool) -> Result<Packet, ParseError> {
    // Each tag consumes 4 bytes or more, so the loop ends with the frame at the latest.
    loop {
        match et {
            ETH_IPV4 => return ipv4(frame, off, d),
            ETH_IPV6 => return ipv6(frame, off, d),
            ETH_VLAN | ETH_QINQ | ETH_VLAN_OLD => {
                et = be16(frame, off + 2).ok_or_else(|| truncated("VLAN", frame))?;
                off += 4;
            }
            ETH_FABRICPATH => {
                // FTag/TTL (2), inner destination and source MACs (12), inner ethertype.
                et = be16(frame, off + 14).ok_or_else(|| truncated("FabricPath", frame))?;
                off += 16;
            }
            ETH_MPLS => return mpls(frame, off, d),
            ETH_PPPOE => return pppoe(frame, off, d),
            other => return Err(ParseError::NotIp { ethertype: other }),
        }
    }
}

/// MPLS label stack: skip to the bottom of stack, then guess IP by the version nibble.
fn mpls(frame: &[u8], mut off: usize, d: bool) -> Result<Packet, ParseError> {
    loop {
        let label = bytes::<4>(frame, off).ok_or_else(|| truncated("MPLS", frame))?;
        off += 4;
        if label[2] & 0x01 != 0 {
            break;
        }
    }
    match frame.get(off).map(|b| b >> 4) {
        Some(4) => ipv4(frame, off, d),
        Some(6) => ipv6(frame, off, d),
        Some(_) => Err(ParseError::NotIp {
            ethertype: ETH_MPLS,
        }),
        None => Err(truncated("MPLS", frame)),
    }
}

/// PPPoE session: 6-byte PPPoE header, then the PPP protocol (2 bytes, or 1 if compressed).
fn pppoe(frame: &[u8], off: usize, d: bool) -> Result<Packet, ParseError> {
    let first = *frame
        .get(off + 6)
        .ok_or_else(|| truncated("PPPoE", frame))?;
    let (proto, ip_off) = if first & 0x01 != 0 {
        // Protocol-field compression: odd first byte means a one-byte protocol.
        (u16::from(first), off + 7)
    } else {
        (
            be16(frame, off + 6).ok_or_else(|| truncated("PPPoE", frame))?,
            off + 8,
        )
    };
    match proto {
        0x0021 => ipv4(frame, ip_off, d),
        0x0057 => ipv6(frame, ip_off, d),
        _ => Err(ParseError::NotIp {
            ethertype: ETH_PPPOE,
        }),
    }
}

/// Raw IP: the version nibble decides.
#[inline]
fn ip_any(frame: &[u8], off: usize, d: bool) -> Result<Packet, ParseError> {
    match frame.get(off).map(|b| b >> 4) {
        Some(4) => ipv4(frame, off, d),
        Some(6) => ipv6(frame, off, d),
        Some(version) => Err(ParseError::BadVersion { version }),
        None => Err(truncated("IP", frame)),
    }
}

/// For a header too short to hold a full IP header: a wrong version is the better report.
#[cold]
fn short_ip(frame: &[u8], off: usize, want: u8, layer: &'static str) -> ParseError {
    match frame.get(off).map(|b| b >> 4) {
        Some(version) if version != want => ParseError::BadVersion { version },
        _ => truncated(layer, frame),
    }
}

#[inline]
fn ipv4(frame: &[u8], o: usize, d: bool) -> Result<Packet, ParseError> {
    let Some(h) = bytes::<20>(frame, o) else {
        return Err(short_ip(frame, o, 4, "IPv4"));
    };
    let version = h[0] >> 4;
    if version != 4 {
        return Err(ParseError::BadVersion { version });
    }
    let ihl = h[0] & 0x0F;
    let hlen = usize::from(ihl) * 4;
    let total = u16::from_be_bytes([h[2], h[3]]);
    if ihl < 5 || (total != 0 && usize::from(total) < hlen) {
        return Err(ParseError::BadIhl { ihl });
    }
    // `bytes` succeeded, so o + 20 <= frame.len().
    let avail = frame.len() - o;
    if hlen > avail {
        return Err(truncated("IPv4", frame));
    }
    // The IP packet ends at its total length (Ethernet padding is not transport header), or
    // at the capture's end if that comes first.
    let (ip_len, end) = if total == 0 {
        (u32::try_from(avail).unwrap_or(u32::MAX), frame.len())
    } else {
        (u32::from(total), o + avail.min(usize::from(total)))
    };

    let flags_frag = u16::from_be_bytes([h[6], h[7]]);
    let offset = flags_frag & 0x1FFF;
    let more = flags_frag & 0x2000 != 0;
    let fragment = (more || offset != 0).then(|| Fragment {
        id: u32::from(u16::from_be_bytes([h[4], h[5]])),
        offset,
        more,
    });
    let proto = h[9];
    let l4 = frame.get(o + hlen..end).unwrap_or(&[]);
    let (src_port, dst_port, tcp_flags, tcp_seq) = if offset == 0 {
        transport(proto, l4)
    } else {
        (0, 0, 0, 0)
    };
    let inner = if d && offset == 0 && tunnel::maybe(proto, src_port, dst_port) {
        tunnel::decap(false, proto, src_port, dst_port, l4)
    } else {
        None
    };
    Ok(Packet {
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        proto,
        src_port,
        dst_port,
        ip_len,
        tcp_flags,
        tcp_seq,
        fragment,
        inner,
    })
}

#[inline]
fn ipv6(frame: &[u8], o: usize, d: bool) -> Result<Packet, ParseError> {
    let Some(h) = bytes::<40>(frame, o) else {
        return Err(short_ip(frame, o, 6, "IPv6"));
    };
    let version = h[0] >> 4;
    if version != 6 {
        return Err(ParseError::BadVersion { version });
    }
    let plen = u16::from_be_bytes([h[4], h[5]]);
    let mut nh = h[6];
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);

    // `bytes` succeeded, so o + 40 <= frame.len().
    let avail = frame.len() - o - 40;
    let (mut ip_len, end) = if plen == 0 {
        // Jumbogram or GSO super-packet: refined below if a Jumbo Payload option turns up.
        (
            40u32.saturating_add(u32::try_from(avail).unwrap_or(u32::MAX)),
            frame.len(),
        )
    } else {
        (40 + u32::from(plen), o + 40 + avail.min(usize::from(plen)))
    };
    // The IP packet alone: no Ethernet padding.
    let pkt = frame.get(..end).unwrap_or(frame);

    let mut p = o + 40;
    let mut fragment = None;
    let mut count = 0u8;
    loop {
        match nh {
            // Hop-by-Hop, Routing, Destination Options, Mobility, Authentication.
            0 | 43 | 60 | 135 | 51 => {
                if count == MAX_IPV6_EXTENSIONS {
                    return Err(ParseError::TooManyExtensions);
                }
                count += 1;
                let [next, len] =
                    *bytes::<2>(pkt, p).ok_or_else(|| truncated("IPv6 extension", frame))?;
                let hl = if nh == 51 {
                    (usize::from(len) + 2) * 4
                } else {
                    (usize::from(len) + 1) * 8
                };
                if p + hl > pkt.len() {
                    return Err(truncated("IPv6 extension", frame));
                }
                if nh == 0
                    && count == 1
                    && plen == 0
                    && let Some(jumbo) = jumbo_payload(pkt.get(p + 2..p + hl).unwrap_or(&[]))
                {
                    ip_len = 40u32.saturating_add(jumbo);
                }
                p += hl;
                nh = next;
            }
            // Fragment.
            44 => {
                if count == MAX_IPV6_EXTENSIONS {
                    return Err(ParseError::TooManyExtensions);
                }
                count += 1;
                let f = bytes::<8>(pkt, p).ok_or_else(|| truncated("IPv6 fragment", frame))?;
                let off_flags = u16::from_be_bytes([f[2], f[3]]);
                let offset = off_flags >> 3;
                fragment = Some(Fragment {
                    id: u32::from_be_bytes([f[4], f[5], f[6], f[7]]),
                    offset,
                    more: off_flags & 0x0001 != 0,
                });
                nh = f[0];
                p += 8;
                if offset != 0 {
                    break;
                }
            }
            // ESP, No Next Header: nothing more to read.
            50 | 59 => break,
            _ => {
                let l4 = pkt.get(p..).unwrap_or(&[]);
                let (src_port, dst_port, tcp_flags, tcp_seq) = transport(nh, l4);
                let inner = if d && tunnel::maybe(nh, src_port, dst_port) {
                    tunnel::decap(true, nh, src_port, dst_port, l4)
                } else {
                    None
                };
                return Ok(Packet {
                    src: IpAddr::V6(Ipv6Addr::from(src)),
                    dst: IpAddr::V6(Ipv6Addr::from(dst)),
                    proto: nh,
                    src_port,
                    dst_port,
                    ip_len,
                    tcp_flags,
                    tcp_seq,
                    fragment,
                    inner,
                });
            }
        }
    }
    Ok(Packet {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        proto: nh,
        src_port: 0,
        dst_port: 0,
        ip_len,
        tcp_flags: 0,
        tcp_seq: 0,
        fragment,
        inner: None,
    })
}

/// The Jumbo Payload option (RFC 2675) among Hop-by-Hop options, if present.
fn jumbo_payload(mut opts: &[u8]) -> Option<u32> {
    while let Some((&kind, rest)) = opts.split_first() {
        if kind == 0 {
            // Pad1 has no length byte.
            opts = rest;
            continue;
        }
        let (&len, body) = rest.split_first()?;
        if kind == 0xC2 && len == 4 {
            return be32(body, 0);
        }
        opts = body.get(usize::from(len)..)?;
    }
    None
}

/// Ports (or ICMP type/code), TCP flags and sequence number from a transport header;
/// whatever is not captured is 0.
#[inline(always)]
fn transport(proto: u8, l4: &[u8]) -> (u16, u16, u8, u32) {
    match proto {
        PROTO_TCP => {
            let (s, d) = ports(l4);
            let seq = be32(l4, 4).unwrap_or(0);
            (s, d, l4.get(13).copied().unwrap_or(0), seq)
        }
        PROTO_UDP | PROTO_SCTP => {
            let (s, d) = ports(l4);
            (s, d, 0, 0)
        }
        PROTO_ICMP | PROTO_ICMPV6 => (0, be16(l4, 0).unwrap_or(0), 0, 0),
        _ => (0, 0, 0, 0),
    }
}

#[inline(always)]
fn ports(l4: &[u8]) -> (u16, u16) {
    match l4.first_chunk::<4>() {
        Some(&[a, b, c, d]) => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
        None => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const V4_SRC: [u8; 4] = [192, 0, 2, 1];
    const V4_DST: [u8; 4] = [198, 51, 100, 7];

    fn v6(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[2] = 0x0d;
        a[3] = 0xb8;
        a[15] = last;
        a
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_DST);
        f.extend_from_slice(&MAC_SRC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&1000u32.to_be_bytes()); // seq
        t.extend_from_slice(&0u32.to_be_bytes()); // ack
        t.push(5 << 4); // data offset
        t.push(flags);
        t.extend_from_slice(&65535u16.to_be_bytes()); // window
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        t.extend_from_slice(payload);
        t
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// IPv4 header (no options) + payload; `total` overrides the total-length field.
    fn ipv4(proto: u8, id: u16, flags_frag: u16, payload: &[u8], total: Option<u16>) -> Vec<u8> {
        let mut p = vec![0x45, 0];
        let total = total.unwrap_or(20 + payload.len() as u16);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&flags_frag.to_be_bytes());
        p.push(64);
        p.push(proto);
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&V4_SRC);
        p.extend_from_slice(&V4_DST);
        p.extend_from_slice(payload);
        p
    }

    /// IPv6 header + payload (payload-length from the payload).
    fn ipv6(nh: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.push(nh);
        p.push(64);
        p.extend_from_slice(&v6(1));
        p.extend_from_slice(&v6(2));
        p.extend_from_slice(payload);
        p
    }

    fn frag6(nh: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
        let mut f = vec![nh, 0];
        f.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f
    }

    fn v4addr(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn v6addr(last: u8) -> IpAddr {
        IpAddr::from(v6(last))
    }

    fn eth_ipv4_tcp() -> Vec<u8> {
        eth(
            ETH_IPV4,
            &ipv4(6, 0x1234, 0x4000, &tcp(43210, 443, 0x12, b"hello"), None),
        )
    }

    /// Every prefix of `frame`, under every link type: Ok or Err, never a panic.
    fn every_prefix(frame: &[u8]) {
        for n in 0..=frame.len() {
            for link in LinkType::ALL {
                let _ = parse(link, &frame[..n]);
                let _ = parse_with(link, &frame[..n], true);
            }
        }
    }

    #[test]
    fn linktype_numbers() {
        assert_eq!(LinkType::from_linktype(1), Some(LinkType::Ethernet));
        for n in [12, 14, 101] {
            assert_eq!(LinkType::from_linktype(n), Some(LinkType::Raw));
        }
        assert_eq!(LinkType::from_linktype(228), Some(LinkType::Ipv4));
        assert_eq!(LinkType::from_linktype(229), Some(LinkType::Ipv6));
        assert_eq!(LinkType::from_linktype(113), Some(LinkType::LinuxSll));
        assert_eq!(LinkType::from_linktype(276), Some(LinkType::LinuxSll2));
        assert_eq!(LinkType::from_linktype(0), Some(LinkType::Null));
        assert_eq!(LinkType::from_linktype(108), Some(LinkType::Loop));
        assert_eq!(LinkType::from_linktype(105), None); // 802.11
        assert_eq!(LinkType::from_linktype(u32::MAX), None);
    }

    #[test]
    fn ethernet_ipv4_tcp() {
        let f = eth_ipv4_tcp();
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!(
            p,
            Packet {
                src: v4addr(V4_SRC),
                dst: v4addr(V4_DST),
                proto: 6,
                src_port: 43210,
                dst_port: 443,
                ip_len: 20 + 20 + 5,
                tcp_flags: 0x12,
                tcp_seq: 1000,
                fragment: None, // DF alone is not a fragment
                inner: None,
            }
        );
    }

    #[test]
    fn ethernet_padding_is_not_transport() {
        // A 20-byte IPv4 packet claiming TCP, padded to the Ethernet minimum with bytes that
        // would look like ports.
        let mut f = eth(ETH_IPV4, &ipv4(6, 1, 0, &[], None));
        f.resize(60, 0xAB);
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!(
            (p.src_port, p.dst_port, p.tcp_flags, p.ip_len),
            (0, 0, 0, 20)
        );
    }

    #[test]
    fn qinq_ipv6_udp() {
        let inner = ipv6(17, &udp(5353, 53, b"query"));
        let mut tagged = Vec::new();
        tagged.extend_from_slice(&[0x00, 0x64]); // S-tag VID 100
        tagged.extend_from_slice(&ETH_VLAN.to_be_bytes());
        tagged.extend_from_slice(&[0x20, 0xC8]); // C-tag PCP 1 VID 200
        tagged.extend_from_slice(&ETH_IPV6.to_be_bytes());
        tagged.extend_from_slice(&inner);
        let f = eth(ETH_QINQ, &tagged);
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!(p.src, v6addr(1));
        assert_eq!(p.dst, v6addr(2));
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 5353, 53));
        assert_eq!(p.ip_len, 40 + 8 + 5);
        assert_eq!((p.tcp_flags, p.fragment), (0, None));
        every_prefix(&f);
    }

    #[test]
    fn old_vlan_tag_9100() {
        let mut tagged = vec![0x00, 0x0A];
        tagged.extend_from_slice(&ETH_IPV4.to_be_bytes());
        tagged.extend_from_slice(&ipv4(17, 7, 0, &udp(1, 2, b""), None));
        let p = parse(LinkType::Ethernet, &eth(ETH_VLAN_OLD, &tagged)).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 1, 2));
    }

    fn hbh(nh: u8) -> Vec<u8> {
        // 8 bytes: next header, length 0, PadN of 4 + Pad1 + Pad1.
        vec![nh, 0, 1, 2, 0, 0, 0, 0]
    }

    #[test]
    fn ipv6_hop_by_hop_and_fragments() {
        // First fragment: offset 0, more set, the UDP header follows.
        let mut payload = hbh(44);
        payload.extend_from_slice(&frag6(17, 0, true, 0xDEADBEEF));
        payload.extend_from_slice(&udp(4000, 4001, &[0; 16]));
        let f = eth(ETH_IPV6, &ipv6(0, &payload));
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 4000, 4001));
        assert_eq!(
            p.fragment,
            Some(Fragment {
                id: 0xDEADBEEF,
                offset: 0,
                more: true
            })
        );
        assert_eq!(p.ip_len, 40 + 8 + 8 + 8 + 16);
        every_prefix(&f);

        // Non-first fragment: offset 3 (24 bytes), last; payload bytes are not a header.
        let mut payload = hbh(44);
        payload.extend_from_slice(&frag6(17, 3, false, 0xDEADBEEF));
        payload.extend_from_slice(&[0x11; 12]);
        let f = eth(ETH_IPV6, &ipv6(0, &payload));
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 0, 0));
        assert_eq!(
            p.fragment,
            Some(Fragment {
                id: 0xDEADBEEF,
                offset: 3,
                more: false
            })
        );
        assert_eq!(p.ip_len, 40 + 8 + 8 + 12);
        every_prefix(&f);
    }

    #[test]
    fn ipv6_extension_limits_and_terminals() {
        // Eight Destination Options headers then TCP: fine.
        let mut payload = Vec::new();
        for _ in 0..7 {
            payload.extend_from_slice(&hbh(60));
        }
        payload.extend_from_slice(&hbh(6));
        payload.extend_from_slice(&tcp(1, 2, 0x01, b""));
        let p = parse(LinkType::Ipv6, &ipv6(60, &payload)).unwrap();
        assert_eq!(
            (p.proto, p.src_port, p.dst_port, p.tcp_flags),
            (6, 1, 2, 0x01)
        );

        // Nine: too many.
        let mut payload = Vec::new();
        for _ in 0..8 {
            payload.extend_from_slice(&hbh(60));
        }
        payload.extend_from_slice(&hbh(6));
        payload.extend_from_slice(&tcp(1, 2, 0x01, b""));
        assert_eq!(
            parse(LinkType::Ipv6, &ipv6(60, &payload)),
            Err(ParseError::TooManyExtensions)
        );

        // AH (length in 4-byte units + 2) then ESP: proto 50, no ports.
        let mut ah = vec![50, 4]; // (4 + 2) * 4 = 24 bytes
        ah.resize(24, 0);
        ah.extend_from_slice(&[0xAA; 16]);
        let p = parse(LinkType::Ipv6, &ipv6(51, &ah)).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (50, 0, 0));

        // AH then TCP.
        let mut ah = vec![6, 1]; // 12 bytes
        ah.resize(12, 0);
        ah.extend_from_slice(&tcp(80, 8080, 0x18, b""));
        let p = parse(LinkType::Ipv6, &ipv6(51, &ah)).unwrap();
        assert_eq!(
            (p.proto, p.src_port, p.dst_port, p.tcp_flags),
            (6, 80, 8080, 0x18)
        );

        // Routing header then No Next Header.
        let p = parse(LinkType::Ipv6, &ipv6(43, &hbh(59))).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (59, 0, 0));

        // Truncated extension header is an error, not a guess.
        let mut f = ipv6(60, &hbh(6));
        f.truncate(44);
        assert!(matches!(
            parse(LinkType::Ipv6, &f),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn ipv6_jumbo_and_zero_length() {
        // Payload length 0 with a Jumbo Payload option: the option's length counts.
        let mut payload = vec![17, 0, 0xC2, 4];
        payload.extend_from_slice(&100_000u32.to_be_bytes());
        payload.extend_from_slice(&udp(9, 10, b""));
        let mut f = ipv6(0, &payload);
        f[4] = 0;
        f[5] = 0;
        let p = parse(LinkType::Ipv6, &f).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 9, 10));
        assert_eq!(p.ip_len, 40 + 100_000);

        // Payload length 0 without one (GSO super-packet): the captured bytes.
        let mut f = ipv6(6, &tcp(1, 2, 0x10, &[0; 100]));
        f[4] = 0;
        f[5] = 0;
        let p = parse(LinkType::Ipv6, &f).unwrap();
        assert_eq!((p.src_port, p.ip_len), (1, 40 + 20 + 100));
    }

    #[test]
    fn ipv4_non_first_fragment() {
        // Offset 185 (1480 bytes), last fragment: the payload is not a UDP header.
        let f = eth(ETH_IPV4, &ipv4(17, 0xBEEF, 185, &[0x55; 100], None));
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!(
            (p.proto, p.src_port, p.dst_port, p.tcp_flags),
            (17, 0, 0, 0)
        );
        assert_eq!(
            p.fragment,
            Some(Fragment {
                id: 0xBEEF,
                offset: 185,
                more: false
            })
        );
        assert_eq!(p.ip_len, 120);

        // First fragment (MF, offset 0): ports read, fragment set.
        let f = eth(
            ETH_IPV4,
            &ipv4(17, 0xBEEF, 0x2000, &udp(7, 8, &[0; 32]), None),
        );
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!((p.src_port, p.dst_port), (7, 8));
        assert_eq!(
            p.fragment,
            Some(Fragment {
                id: 0xBEEF,
                offset: 0,
                more: true
            })
        );

        // First fragment too short for the ports: ports 0, not an error.
        let f = eth(ETH_IPV4, &ipv4(6, 3, 0x2000, &[0x01, 0x02], None));
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (6, 0, 0));
        assert!(p.fragment.is_some());
    }

    #[test]
    fn linux_cooked_sll_and_sll2() {
        let ip = ipv4(6, 1, 0, &tcp(1234, 22, 0x02, b""), None);

        let mut sll = vec![0, 0, 0, 1, 0, 6]; // outgoing, ARPHRD_ETHER, 6-byte address
        sll.extend_from_slice(&MAC_SRC);
        sll.extend_from_slice(&[0, 0]); // address padding to 8 bytes
        sll.extend_from_slice(&ETH_IPV4.to_be_bytes());
        assert_eq!(sll.len(), 16);
        sll.extend_from_slice(&ip);
        let p = parse(LinkType::LinuxSll, &sll).unwrap();
        assert_eq!(
            (p.proto, p.src_port, p.dst_port, p.tcp_flags),
            (6, 1234, 22, 0x02)
        );
        assert_eq!((p.src, p.ip_len), (v4addr(V4_SRC), 40));
        every_prefix(&sll);

        let mut sll2 = Vec::new();
        sll2.extend_from_slice(&ETH_IPV4.to_be_bytes());
        sll2.extend_from_slice(&[0, 0]); // reserved
        sll2.extend_from_slice(&2u32.to_be_bytes()); // interface index
        sll2.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
        sll2.push(0); // packet type: to us
        sll2.push(6);
        sll2.extend_from_slice(&MAC_SRC);
        sll2.extend_from_slice(&[0, 0]);
        assert_eq!(sll2.len(), 20);
        sll2.extend_from_slice(&ip);
        let p = parse(LinkType::LinuxSll2, &sll2).unwrap();
        assert_eq!(
            (p.proto, p.src_port, p.dst_port, p.tcp_flags),
            (6, 1234, 22, 0x02)
        );
        every_prefix(&sll2);

        // A VLAN tag after the cooked header.
        let mut tagged = sll2[..20].to_vec();
        tagged[0..2].copy_from_slice(&ETH_VLAN.to_be_bytes());
        tagged.extend_from_slice(&[0, 5]);
        tagged.extend_from_slice(&ETH_IPV4.to_be_bytes());
        tagged.extend_from_slice(&ip);
        assert_eq!(parse(LinkType::LinuxSll2, &tagged).unwrap().dst_port, 22);
    }

    #[test]
    fn raw_ipv6_icmpv6_echo() {
        let f = ipv6(
            58,
            &[128, 0, 0x12, 0x34, 0, 1, 0, 1, b'p', b'i', b'n', b'g'],
        );
        for link in [LinkType::Raw, LinkType::Ipv6] {
            let p = parse(link, &f).unwrap();
            assert_eq!((p.proto, p.src_port, p.dst_port), (58, 0, 0x8000));
            assert_eq!(p.ip_len, 40 + 12);
        }
        assert_eq!(
            parse(LinkType::Ipv4, &f),
            Err(ParseError::BadVersion { version: 6 })
        );
        every_prefix(&f);
    }

    #[test]
    fn icmpv4_type_code() {
        // Destination unreachable (3), port unreachable (3).
        let f = ipv4(1, 9, 0, &[3, 3, 0, 0, 0, 0, 0, 0], None);
        let p = parse(LinkType::Raw, &f).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (1, 0, 0x0303));
    }

    /// IPv4 between the given addresses (no options).
    fn ipv4_between(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = ipv4(proto, 1, 0, payload, None);
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    const IN_SRC: [u8; 4] = [10, 0, 0, 1];
    const IN_DST: [u8; 4] = [10, 0, 0, 2];

    fn inner_tcp() -> Vec<u8> {
        ipv4_between(6, IN_SRC, IN_DST, &tcp(40000, 443, 0x02, b"hi"))
    }

    /// Outer Ethernet / IPv4 / UDP `sport` -> `dport` around `payload`.
    fn over_udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        eth(ETH_IPV4, &ipv4(17, 7, 0, &udp(sport, dport, payload), None))
    }

    /// Decapsulated: the outer facts are those of `parse` without decapsulation, and the
    /// inner part is there. Every prefix of the frame parses without panicking.
    fn decap(frame: &[u8]) -> Inner {
        let with = parse_with(LinkType::Ethernet, frame, true).unwrap();
        let without = parse(LinkType::Ethernet, frame).unwrap();
        assert_eq!(without.inner, None);
        assert_eq!(
            Packet {
                inner: None,
                ..with
            },
            without,
            "outer facts unchanged"
        );
        for n in 0..=frame.len() {
            let _ = parse_with(LinkType::Ethernet, &frame[..n], true);
        }
        with.inner.expect("an inner packet")
    }

    fn no_decap(frame: &[u8]) {
        let p = parse_with(LinkType::Ethernet, frame, true).unwrap();
        assert_eq!(p.inner, None, "{p:?}");
    }

    fn assert_inner_tcp(i: &Inner) {
        assert_eq!((i.src, i.dst), (v4addr(IN_SRC), v4addr(IN_DST)));
        assert_eq!(
            (i.proto, i.src_port, i.dst_port, i.tcp_flags),
            (6, 40000, 443, 0x02)
        );
        assert_eq!(i.ip_len, 20 + 20 + 2);
    }

    #[test]
    fn fabricpath_inner_ethernet() {
        let mut fp = vec![0x00, 0x21]; // FTag 2, TTL 1
        fp.extend_from_slice(&MAC_DST);
        fp.extend_from_slice(&MAC_SRC);
        fp.extend_from_slice(&ETH_IPV4.to_be_bytes());
        fp.extend_from_slice(&ipv4(17, 1, 0, &udp(53, 5353, b"x"), None));
        let f = eth(ETH_FABRICPATH, &fp);
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!(
            (p.src, p.proto, p.src_port, p.dst_port),
            (v4addr(V4_SRC), 17, 53, 5353)
        );
        assert_eq!(p.ip_len, 29);
        every_prefix(&f);
        // The inner Ethernet header cut short.
        assert_eq!(
            parse(LinkType::Ethernet, &f[..14 + 15]),
            Err(ParseError::Truncated {
                layer: "FabricPath",
                len: 29
            })
        );
    }

    /// NFLOG: header, a prefix TLV padded to 8, a timestamp-ish TLV, then the payload.
    fn nflog_frame(family: u8, ip: &[u8], big_endian: bool) -> Vec<u8> {
        let tlv = |len: u16, kind: u16| -> [u8; 4] {
            let (l, k) = if big_endian {
                (len.to_be_bytes(), kind.to_be_bytes())
            } else {
                (len.to_le_bytes(), kind.to_le_bytes())
            };
            [l[0], l[1], k[0], k[1]]
        };
        let mut f = vec![family, 0, 0, 42];
        f.extend_from_slice(&tlv(5, 10)); // NFULA_PREFIX, 1 byte, padded
        f.extend_from_slice(&[b'p', 0, 0, 0]);
        f.extend_from_slice(&tlv(8, 1)); // NFULA_PACKET_HDR
        f.extend_from_slice(&[0x08, 0x00, 1, 0]);
        f.extend_from_slice(&tlv(4 + ip.len() as u16, 9));
        f.extend_from_slice(ip);
        f
    }

    #[test]
    fn nflog_payload_tlv() {
        assert_eq!(LinkType::from_linktype(239), Some(LinkType::Nflog));
        let ip = ipv4(6, 1, 0, &tcp(1234, 80, 0x02, b""), None);
        for be in [false, true] {
            let f = nflog_frame(AF_INET, &ip, be);
            let p = parse(LinkType::Nflog, &f).unwrap();
            assert_eq!(
                (p.src, p.proto, p.src_port, p.dst_port),
                (v4addr(V4_SRC), 6, 1234, 80)
            );
            assert_eq!(p.ip_len, 40);
            every_prefix(&f);
        }
        let ip6 = ipv6(17, &udp(1, 2, b"abc"));
        let p = parse(LinkType::Nflog, &nflog_frame(AF_INET6, &ip6, false)).unwrap();
        assert_eq!((p.src, p.src_port, p.ip_len), (v6addr(1), 1, 51));
        // The family says IPv6, the payload is IPv4.
        assert_eq!(
            parse(LinkType::Nflog, &nflog_frame(AF_INET6, &ip, false)),
            Err(ParseError::BadVersion { version: 4 })
        );
        // Neither IPv4 nor IPv6 (AF_BRIDGE).
        assert_eq!(
            parse(LinkType::Nflog, &nflog_frame(7, &ip, false)),
            Err(ParseError::NotIp { ethertype: 7 })
        );
        // No payload TLV at all.
        let mut f = nflog_frame(AF_INET, &ip, false);
        f.truncate(4 + 8 + 8);
        assert!(matches!(
            parse(LinkType::Nflog, &f),
            Err(ParseError::Truncated { layer: "NFLOG", .. })
        ));
    }

    #[test]
    fn vxlan_inner_ethernet_and_vni() {
        let mut vx = vec![0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0];
        vx.extend_from_slice(&eth(ETH_IPV4, &inner_tcp()));
        for port in [tunnel::UDP_VXLAN, tunnel::UDP_VXLAN_LINUX] {
            let i = decap(&over_udp(50000, port, &vx));
            assert_eq!((i.kind, i.id), (TunnelKind::Vxlan, Some(0x123456)));
            assert_inner_tcp(&i);
        }
        // The port on the source side (a reply): still VXLAN.
        assert_eq!(decap(&over_udp(4789, 50000, &vx)).kind, TunnelKind::Vxlan);
        // I flag clear: not VXLAN.
        let mut bad = vx.clone();
        bad[0] = 0;
        no_decap(&over_udp(50000, 4789, &bad));
        // ARP inside: the outer packet only.
        let mut arp = vx[..8].to_vec();
        arp.extend_from_slice(&eth(0x0806, &[0, 1, 8, 0, 6, 4, 0, 1]));
        no_decap(&over_udp(50000, 4789, &arp));
    }

    #[test]
    fn geneve_with_options_raw_ipv6() {
        let mut g = vec![0x02, 0x00]; // version 0, 2 words of options
        g.extend_from_slice(&ETH_IPV6.to_be_bytes());
        g.extend_from_slice(&[0, 0, 0x2A, 0]); // VNI 42
        g.extend_from_slice(&[0xAA; 8]);
        g.extend_from_slice(&ipv6(17, &udp(7000, 7001, b"x")));
        let i = decap(&over_udp(12345, tunnel::UDP_GENEVE, &g));
        assert_eq!((i.kind, i.id), (TunnelKind::Geneve, Some(42)));
        assert_eq!(
            (i.src, i.proto, i.src_port, i.dst_port),
            (v6addr(1), 17, 7000, 7001)
        );
        assert_eq!(i.ip_len, 40 + 9);
        // Transparent Ethernet inside.
        let mut e = vec![0, 0];
        e.extend_from_slice(&0x6558u16.to_be_bytes());
        e.extend_from_slice(&[0, 0, 1, 0]);
        e.extend_from_slice(&eth(ETH_IPV4, &inner_tcp()));
        assert_inner_tcp(&decap(&over_udp(1, tunnel::UDP_GENEVE, &e)));
        // Version 1: not decoded.
        g[0] = 0x42;
        no_decap(&over_udp(12345, tunnel::UDP_GENEVE, &g));
    }

    #[test]
    fn gre_flags_key_and_payload_types() {
        // Checksum, key and sequence present.
        let mut g = vec![0xB0, 0x00];
        g.extend_from_slice(&ETH_IPV4.to_be_bytes());
        g.extend_from_slice(&[0; 4]); // checksum + reserved
        g.extend_from_slice(&0xCAFE_0001u32.to_be_bytes()); // key
        g.extend_from_slice(&7u32.to_be_bytes()); // sequence
        g.extend_from_slice(&inner_tcp());
        let f = eth(ETH_IPV4, &ipv4(47, 1, 0, &g, None));
        let i = decap(&f);
        assert_eq!((i.kind, i.id), (TunnelKind::Gre, Some(0xCAFE_0001)));
        assert_inner_tcp(&i);

        // Plain, IPv6 inside: no key.
        let mut g6 = vec![0, 0];
        g6.extend_from_slice(&ETH_IPV6.to_be_bytes());
        g6.extend_from_slice(&ipv6(6, &tcp(1, 2, 0x10, b"")));
        let i = decap(&eth(ETH_IPV4, &ipv4(47, 1, 0, &g6, None)));
        assert_eq!(
            (i.kind, i.id, i.src, i.dst_port),
            (TunnelKind::Gre, None, v6addr(1), 2)
        );

        // Transparent Ethernet bridging.
        let mut teb = vec![0x20, 0];
        teb.extend_from_slice(&0x6558u16.to_be_bytes());
        teb.extend_from_slice(&9u32.to_be_bytes());
        teb.extend_from_slice(&eth(ETH_IPV4, &inner_tcp()));
        let i = decap(&eth(ETH_IPV4, &ipv4(47, 1, 0, &teb, None)));
        assert_eq!(i.id, Some(9));
        assert_inner_tcp(&i);

        // ERSPAN type II (0x88BE), PPTP's version 1, source routing: outer only.
        for (flags, proto) in [(0x1000u16, 0x88BEu16), (0x3001, 0x880B), (0x4000, 0x0800)] {
            let mut g = flags.to_be_bytes().to_vec();
            g.extend_from_slice(&proto.to_be_bytes());
            g.extend_from_slice(&[0; 8]);
            g.extend_from_slice(&inner_tcp());
            no_decap(&eth(ETH_IPV4, &ipv4(47, 1, 0, &g, None)));
        }
    }

    #[test]
    fn gtpu_extension_headers_and_teid() {
        // Version 1, PT, E and S; G-PDU; one 4-byte extension header (PDU session container).
        let mut g = vec![0x36, 0xFF];
        let inner = inner_tcp();
        g.extend_from_slice(&((4 + 4 + inner.len()) as u16).to_be_bytes());
        g.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        g.extend_from_slice(&[0, 1, 0, 0x85]); // sequence 1, N-PDU 0, next: 0x85
        g.extend_from_slice(&[1, 0x10, 0x05, 0]); // 1 word, next: none
        g.extend_from_slice(&inner);
        let i = decap(&over_udp(2152, tunnel::UDP_GTPU, &g));
        assert_eq!((i.kind, i.id), (TunnelKind::Gtpu, Some(0x0102_0304)));
        assert_inner_tcp(&i);
        // No optional fields, IPv6 inside.
        let mut g6 = vec![0x30, 0xFF, 0, 0];
        g6.extend_from_slice(&5u32.to_be_bytes());
        g6.extend_from_slice(&ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 1]));
        let i = decap(&over_udp(2152, 2152, &g6));
        assert_eq!((i.id, i.proto, i.dst_port), (Some(5), 58, 0x8000));
        // Echo request (type 1) and GTPv2: outer only. An extension header of 0 words: not
        // decoded (it would never end).
        let mut echo = g6.clone();
        echo[1] = 1;
        no_decap(&over_udp(2152, 2152, &echo));
        let mut v2 = g6.clone();
        v2[0] = 0x48;
        no_decap(&over_udp(2152, 2152, &v2));
        let mut zero = g.clone();
        zero[12] = 0;
        no_decap(&over_udp(2152, 2152, &zero));
    }

    #[test]
    fn ip_in_ip_kinds() {
        let inner6 = ipv6(17, &udp(30000, 13000, b"x"));
        let cases = [
            (
                eth(ETH_IPV4, &ipv4(4, 1, 0, &inner_tcp(), None)),
                TunnelKind::Ipip,
            ),
            (
                eth(ETH_IPV4, &ipv4(41, 1, 0, &inner6, None)),
                TunnelKind::SixIn4,
            ),
            (eth(ETH_IPV6, &ipv6(4, &inner_tcp())), TunnelKind::FourIn6),
            (eth(ETH_IPV6, &ipv6(41, &inner6)), TunnelKind::SixIn6),
        ];
        for (f, kind) in cases {
            let i = decap(&f);
            assert_eq!((i.kind, i.id), (kind, None));
            let want_port = if i.proto == 6 { 40000 } else { 30000 };
            assert_eq!(i.src_port, want_port, "{kind:?}");
        }
        // Outer IPv6 with a Hop-by-Hop header before the tunnel.
        let mut hop = hbh(4);
        hop.extend_from_slice(&inner_tcp());
        assert_inner_tcp(&decap(&eth(ETH_IPV6, &ipv6(0, &hop))));
        // A later outer fragment: its payload is not a header.
        let f = eth(ETH_IPV4, &ipv4(4, 1, 185, &inner_tcp(), None));
        no_decap(&f);
        // Inner IPv4 malformed: outer only.
        let mut bad = inner_tcp();
        bad[0] = 0x44;
        no_decap(&eth(ETH_IPV4, &ipv4(4, 1, 0, &bad, None)));
    }

    #[test]
    fn teredo_indicators() {
        let inner6 = ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 1]);
        let mut origin = vec![0, 0, 0x12, 0x34, 1, 2, 3, 4];
        origin.extend_from_slice(&inner6);
        let mut auth = vec![0, 1, 2, 3, b'i', b'd', 1, 2, 3];
        auth.extend_from_slice(&[0; 9]); // nonce and confirmation
        auth.extend_from_slice(&origin);
        for payload in [&inner6, &origin, &auth] {
            let i = decap(&over_udp(tunnel::UDP_TEREDO, 3797, payload));
            assert_eq!(
                (i.kind, i.id, i.src, i.proto),
                (TunnelKind::Teredo, None, v6addr(1), 58)
            );
        }
        // IPv4 after the indicators: not Teredo.
        let mut v4 = vec![0, 0, 0, 0, 0, 0, 0, 0];
        v4.extend_from_slice(&inner_tcp());
        no_decap(&over_udp(3544, 3797, &v4));
    }

    #[test]
    fn unknown_linktype_names() {
        assert_eq!(linktype_name(105), Some("IEEE802_11"));
        assert_eq!(linktype_name(239), Some("NFLOG"));
        assert_eq!(linktype_name(150), Some("USER0..USER15"));
        assert_eq!(linktype_name(99_999), None);
        // Every decoded link type has a name.
        for n in [0, 1, 12, 14, 101, 108, 113, 228, 229, 239, 276] {
            assert!(
                LinkType::from_linktype(n).is_some() && linktype_name(n).is_some(),
                "{n}"
            );
        }
    }

    #[test]
    fn sctp_ports_and_other_protocols() {
        let mut sctp = Vec::new();
        sctp.extend_from_slice(&36412u16.to_be_bytes());
        sctp.extend_from_slice(&36413u16.to_be_bytes());
        sctp.extend_from_slice(&[0; 8]);
        let p = parse(LinkType::Ipv4, &ipv4(132, 1, 0, &sctp, None)).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (132, 36412, 36413));

        // GRE is not decoded: the outer packet is the flow.
        let p = parse(
            LinkType::Ipv4,
            &ipv4(47, 1, 0, &[0, 0, 0x08, 0, 0x45], None),
        )
        .unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (47, 0, 0));
    }

    #[test]
    fn arp_and_others_are_not_ip() {
        let arp = eth(0x0806, &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(
            parse(LinkType::Ethernet, &arp),
            Err(ParseError::NotIp { ethertype: 0x0806 })
        );
        let lldp = eth(0x88CC, &[0; 30]);
        assert_eq!(
            parse(LinkType::Ethernet, &lldp),
            Err(ParseError::NotIp { ethertype: 0x88CC })
        );
        // PPPoE carrying LCP.
        let mut pppoe = vec![0x11, 0, 0, 1, 0, 4];
        pppoe.extend_from_slice(&0xC021u16.to_be_bytes());
        pppoe.extend_from_slice(&[1, 1]);
        assert_eq!(
            parse(LinkType::Ethernet, &eth(ETH_PPPOE, &pppoe)),
            Err(ParseError::NotIp {
                ethertype: ETH_PPPOE
            })
        );
        // Loopback family that is not IP.
        assert_eq!(
            parse(LinkType::Loop, &[0, 0, 0, 17, 0x45]),
            Err(ParseError::NotIp { ethertype: 17 })
        );
    }

    #[test]
    fn mpls_and_pppoe() {
        let ip = ipv4(17, 1, 0, &udp(500, 4500, b""), None);
        // Two labels, the second with bottom-of-stack.
        let mut m = vec![0x00, 0x01, 0x00, 0x40, 0x00, 0x02, 0x01, 0x40];
        m.extend_from_slice(&ip);
        let f = eth(ETH_MPLS, &m);
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 500, 4500));
        every_prefix(&f);

        let mut m6 = vec![0x00, 0x01, 0x01, 0x40];
        m6.extend_from_slice(&ipv6(17, &udp(1, 2, b"")));
        let p = parse(LinkType::Ethernet, &eth(ETH_MPLS, &m6)).unwrap();
        assert_eq!((p.src, p.src_port), (v6addr(1), 1));

        // Pseudowire control word (first nibble 0): not IP.
        let m_pw = vec![0x00, 0x01, 0x01, 0x40, 0x00, 0, 0, 0];
        assert_eq!(
            parse(LinkType::Ethernet, &eth(ETH_MPLS, &m_pw)),
            Err(ParseError::NotIp {
                ethertype: ETH_MPLS
            })
        );

        let mut pppoe = vec![0x11, 0x00, 0x12, 0x34];
        pppoe.extend_from_slice(&((ip.len() + 2) as u16).to_be_bytes());
        pppoe.extend_from_slice(&0x0021u16.to_be_bytes());
        pppoe.extend_from_slice(&ip);
        let f = eth(ETH_PPPOE, &pppoe);
        let p = parse(LinkType::Ethernet, &f).unwrap();
        assert_eq!((p.proto, p.src_port, p.dst_port), (17, 500, 4500));
        every_prefix(&f);

        let mut pppoe6 = vec![0x11, 0x00, 0x12, 0x34, 0, 0];
        pppoe6.extend_from_slice(&0x0057u16.to_be_bytes());
        pppoe6.extend_from_slice(&ipv6(6, &tcp(5, 6, 0x04, b"")));
        let p = parse(LinkType::Ethernet, &eth(ETH_PPPOE, &pppoe6)).unwrap();
        assert_eq!(
            (p.proto, p.src_port, p.dst_port, p.tcp_flags),
            (6, 5, 6, 0x04)
        );
    }

    #[test]
    fn bsd_loopback_both_orders() {
        let ip = ipv4(6, 1, 0, &tcp(1, 2, 0x11, b""), None);
        for hdr in [[2, 0, 0, 0], [0, 0, 0, 2]] {
            let mut f = hdr.to_vec();
            f.extend_from_slice(&ip);
            assert_eq!(parse(LinkType::Null, &f).unwrap().tcp_flags, 0x11);
        }
        let mut f = vec![0, 0, 0, 2];
        f.extend_from_slice(&ip);
        assert_eq!(parse(LinkType::Loop, &f).unwrap().dst_port, 2);

        let ip6 = ipv6(17, &udp(3, 4, b""));
        for af in [24u32, 28, 30] {
            let mut f = af.to_le_bytes().to_vec();
            f.extend_from_slice(&ip6);
            assert_eq!(parse(LinkType::Null, &f).unwrap().src_port, 3);
            let mut f = af.to_be_bytes().to_vec();
            f.extend_from_slice(&ip6);
            assert_eq!(parse(LinkType::Loop, &f).unwrap().src_port, 3);
            every_prefix(&f);
        }
    }

    #[test]
    fn snaplen_truncation_keeps_header_length() {
        // A 1500-byte packet captured with snaplen 54: Ethernet + IPv4 + the ports and flags.
        let full = eth(
            ETH_IPV4,
            &ipv4(6, 1, 0x4000, &tcp(50000, 80, 0x10, &[0; 1460]), None),
        );
        let p = parse(LinkType::Ethernet, &full[..54]).unwrap();
        assert_eq!(p.ip_len, 1500);
        assert_eq!((p.src_port, p.dst_port, p.tcp_flags), (50000, 80, 0x10));
        // Cut before the flags byte: ports still there, flags 0, length unchanged.
        let p = parse(LinkType::Ethernet, &full[..14 + 20 + 4]).unwrap();
        assert_eq!(
            (p.src_port, p.dst_port, p.tcp_flags, p.ip_len),
            (50000, 80, 0, 1500)
        );
        // Cut right after the IP header.
        let p = parse(LinkType::Ethernet, &full[..34]).unwrap();
        assert_eq!((p.src_port, p.ip_len), (0, 1500));

        let full6 = ipv6(17, &udp(1, 2, &[0; 1000]));
        let p = parse(LinkType::Raw, &full6[..48]).unwrap();
        assert_eq!((p.src_port, p.ip_len), (1, 1048));
    }

    #[test]
    fn malformed_ipv4() {
        let mut f = ipv4(6, 1, 0, &tcp(1, 2, 0, b""), None);
        f[0] = 0x44;
        assert_eq!(parse(LinkType::Raw, &f), Err(ParseError::BadIhl { ihl: 4 }));
        // IHL 15 (60 bytes) but total length 40.
        f[0] = 0x4F;
        assert_eq!(
            parse(LinkType::Raw, &f),
            Err(ParseError::BadIhl { ihl: 15 })
        );
        // IHL 6 with its option word cut off by the capture.
        let mut g = ipv4(6, 1, 0, &[], Some(100));
        g[0] = 0x46;
        assert_eq!(
            parse(LinkType::Raw, &g),
            Err(ParseError::Truncated {
                layer: "IPv4",
                len: 20
            })
        );
        // IHL 6 with the option present: transport follows it.
        let mut opts = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        opts.extend_from_slice(&udp(11, 12, b""));
        let mut h = ipv4(17, 1, 0, &opts, None);
        h[0] = 0x46;
        let p = parse(LinkType::Raw, &h).unwrap();
        assert_eq!((p.src_port, p.dst_port, p.ip_len), (11, 12, 32));

        assert_eq!(
            parse(LinkType::Raw, &[0x50; 30]),
            Err(ParseError::BadVersion { version: 5 })
        );
        assert_eq!(
            parse(LinkType::Ipv6, &[0x45; 10]),
            Err(ParseError::BadVersion { version: 4 })
        );
        assert_eq!(
            parse(LinkType::Raw, &[]),
            Err(ParseError::Truncated {
                layer: "IP",
                len: 0
            })
        );
        assert_eq!(
            parse(LinkType::Ethernet, &[0; 13]),
            Err(ParseError::Truncated {
                layer: "Ethernet",
                len: 13
            })
        );
    }

    #[test]
    fn every_prefix_of_a_valid_frame() {
        let f = eth_ipv4_tcp();
        let want = parse(LinkType::Ethernet, &f).unwrap();
        for n in 0..=f.len() {
            match parse(LinkType::Ethernet, &f[..n]) {
                Ok(p) => {
                    // Once the IP header is in, the header facts never change with truncation.
                    assert!(n >= 34, "Ok at {n} bytes");
                    assert_eq!(
                        (p.src, p.dst, p.proto, p.ip_len),
                        (want.src, want.dst, 6, 45)
                    );
                }
                Err(e) => {
                    assert!(n < 34, "{e} at {n} bytes");
                    assert!(matches!(e, ParseError::Truncated { .. }), "{e}");
                }
            }
        }
        every_prefix(&f);
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: deterministic, no dependency. Seed the first bytes towards the interesting
        // paths so the walk gets deep, not just past the first check.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut buf = [0u8; 128];
        for i in 0..200_000u32 {
            for b in buf.iter_mut() {
                *b = next() as u8;
            }
            let len = (next() % 129) as usize;
            match i % 8 {
                0 => buf[12..14].copy_from_slice(&ETH_IPV6.to_be_bytes()),
                1 => buf[12..14].copy_from_slice(&ETH_IPV4.to_be_bytes()),
                2 => {
                    buf[12..14].copy_from_slice(&ETH_VLAN.to_be_bytes());
                    buf[16..18].copy_from_slice(&ETH_MPLS.to_be_bytes());
                }
                3 => buf[0] = 0x60 | (buf[0] & 0x0F),
                4 => {
                    buf[0] = 0x60;
                    buf[6] = [0, 43, 44, 60, 51, 135][(next() % 6) as usize];
                }
                // Outer IPv4 (no options, whole frame) towards a tunnel.
                5 | 6 => {
                    buf[12..14].copy_from_slice(&ETH_IPV4.to_be_bytes());
                    buf[14] = 0x45;
                    buf[16..18].copy_from_slice(&0u16.to_be_bytes());
                    buf[20..22].copy_from_slice(&0u16.to_be_bytes());
                    buf[23] = [4, 41, 47, 17][(next() % 4) as usize];
                    let port = [4789u16, 8472, 6081, 2152, 3544][(next() % 5) as usize];
                    buf[36..38].copy_from_slice(&port.to_be_bytes());
                    if i % 8 == 6 {
                        // A plausible tunnel header's first bytes.
                        buf[34] = [0x08, 0x00, 0x30, 0x36][(next() % 4) as usize];
                        buf[42] = buf[34];
                        buf[43] = 0xFF;
                    }
                }
                _ => {}
            }
            for link in LinkType::ALL {
                let _ = parse(link, &buf[..len]);
                let _ = parse_with(link, &buf[..len], true);
            }
        }
    }
}
