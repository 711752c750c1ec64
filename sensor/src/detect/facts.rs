//! What the detectors ask of a flow record, answered the same way for the packet view
//! (flags, packets, IP bytes) and the kernel's view (payload bytes, how it ended).
use crate::flow::{EndReason, FlowRecord};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// ICMP echo request as the flow table writes its "port": type << 8 | code.
const ICMP_ECHO: u16 = 8 << 8;
const ICMPV6_ECHO: u16 = 128 << 8;

/// Most packets a probe's sender sends: a SYN and its retries (Linux retries 6 times).
const PROBE_PACKETS: u64 = 7;

/// Bytes the initiator (`src`) sent: IP bytes where packets were counted, else the
/// kernel's payload bytes; 0 when unknown.
pub fn bytes_out(f: &FlowRecord) -> u64 {
    f.src_bytes.or(f.src_payload_bytes).unwrap_or(0)
}

/// Bytes the responder sent, the same way.
pub fn bytes_in(f: &FlowRecord) -> u64 {
    f.dst_bytes.or(f.dst_payload_bytes).unwrap_or(0)
}

/// The most bytes `packets` packets of one side carry with no payload: the first (a SYN,
/// with the most options: 60 bytes over IPv4, 80 over IPv6) and the rest as ACKs with
/// timestamps (52 / 72). A packet view has no payload counts, so a side whose bytes stay
/// within this sent none. An FTP login's `USER`/`PASS` (25 bytes over 7 packets) is
/// payload by this; a data-less ACK carrying SACK blocks after a loss passes for payload.
fn header_budget(f: &FlowRecord, packets: u64) -> u64 {
    let (first, rest) = if f.src.is_ipv4() { (60, 52) } else { (80, 72) };
    if packets == 0 {
        0
    } else {
        first + (packets - 1) * rest
    }
}

/// Whether the initiator sent payload (kernel view: its payload counter; packet view: more
/// bytes than headers alone).
pub fn src_sent_data(f: &FlowRecord) -> bool {
    match (f.src_payload_bytes, f.src_bytes, f.src_packets) {
        (Some(p), _, _) => p > 0,
        (None, Some(b), Some(n)) => b > header_budget(f, n),
        _ => false,
    }
}

/// Whether the responder sent payload.
pub fn dst_sent_data(f: &FlowRecord) -> bool {
    match (f.dst_payload_bytes, f.dst_bytes, f.dst_packets) {
        (Some(p), _, _) => p > 0,
        (None, Some(b), Some(n)) => b > header_budget(f, n),
        _ => false,
    }
}

/// A failed or unanswered attempt, what a scan is made of (Zeek counts the same: attempts
/// that were rejected or went unanswered), carrying no payload from its sender:
/// - TCP, packet view: no answer at all (SYN scan of a filtered port, FIN/NULL/Xmas to an
///   open one); a probe without SYN (FIN, NULL, Xmas, ACK: no connection starts that way);
///   a SYN answered by RST (closed port); a handshake the initiator never acknowledged or
///   reset (half-open SYN scan, connect scan of an open port);
/// - TCP, kernel view: a connect that failed, or one reset with no payload either way;
/// - UDP: no answer (a closed port's ICMP unreachable is a flow of its own);
/// - ICMP/ICMPv6: an echo request with no reply.
pub fn is_probe(f: &FlowRecord) -> bool {
    if f.amends {
        return false;
    }
    match f.proto {
        TCP => match f.src_tcp_flags {
            Some(s) => {
                if src_sent_data(f) || f.src_packets.unwrap_or(0) > PROBE_PACKETS {
                    return false;
                }
                let d = f.dst_tcp_flags.unwrap_or(0);
                let answered = f.dst_packets.unwrap_or(0) > 0;
                !answered
                    || s & SYN == 0
                    || s & ACK == 0
                    || d & SYN == 0
                    || (s & RST != 0 && !dst_sent_data(f))
            }
            None => {
                f.end_reason == EndReason::Failed
                    || (f.end_reason == EndReason::Rst && !src_sent_data(f) && !dst_sent_data(f))
            }
        },
        UDP => {
            f.dst_packets == Some(0)
                && !src_sent_data_many(f)
                && f.src_packets.unwrap_or(0) <= PROBE_PACKETS
        }
        ICMP => f.dst_packets == Some(0) && f.dst.port() == ICMP_ECHO,
        ICMPV6 => f.dst_packets == Some(0) && f.dst.port() == ICMPV6_ECHO,
        _ => false,
    }
}

/// A UDP probe carries a small payload (nmap's are protocol-shaped, mostly under 100
/// bytes); a one-way stream of large datagrams (syslog, telemetry) is not one.
fn src_sent_data_many(f: &FlowRecord) -> bool {
    match (f.src_bytes, f.src_packets) {
        (Some(b), Some(n)) if n > 0 => b / n > 600,
        _ => false,
    }
}

/// A finished connection with payload both ways: something was said and answered (a
/// login attempt, a request).
pub fn exchanged_data(f: &FlowRecord) -> bool {
    src_sent_data(f) && dst_sent_data(f)
}

/// A record of a whole connection: not an amendment, not the first part of one the active
/// timeout cut (whose end is not the connection's).
pub fn is_whole(f: &FlowRecord) -> bool {
    !f.amends && f.end_reason != EndReason::ActiveTimeout
}
