//! The classic BPF socket filter every capture socket runs in the kernel, before a frame is
//! copied into the ring. It does two things in one program (a socket has one filter):
//!
//! - **Snap length.** A filter's return value is how many bytes of the frame to keep.
//!   The flow table needs only headers: [`SNAP_BYTES`] covers Ethernet, VLAN tags, an IPv6
//!   header with extension headers, a tunnel's outer UDP/GRE header and the inner IP and
//!   TCP headers it decapsulates. Byte counts come from the IP headers' length fields (see
//!   [`super::parse::Packet::ip_len`]), so cutting the payload changes no count, and a
//!   ring slot of a few hundred bytes holds a packet of 64 KiB.
//!   One exception is kept whole: an IP header whose length field is 0 (a GSO / BIG TCP
//!   super-packet over 64 KiB) is counted by its captured bytes, so those frames are not
//!   cut (the ring's block size still bounds them). The test is made on Ethernet and raw
//!   IP framing, the outer header only.
//! - **Incoming copies only, on loopback.** There every packet passes the tap twice, going
//!   out and coming back in; frames whose `skb->pkt_type` is `PACKET_OUTGOING` are dropped
//!   (tcpdump shows the same single copy).
use super::parse::LinkType;

/// Bytes of a frame kept (the filter's return value). See the module documentation.
pub const SNAP_BYTES: u32 = 256;

const SKF_AD_OFF: u32 = libc::SKF_AD_OFF as u32;
const SKF_AD_PKTTYPE: u32 = libc::SKF_AD_PKTTYPE as u32;
const PACKET_OUTGOING: u32 = libc::PACKET_OUTGOING as u32;
/// "Keep it all": the kernel keeps the smaller of this and the frame's length.
const WHOLE: u32 = u32::MAX;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

fn jge(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

const LD_LEN: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_LEN;
const LDH: u32 = libc::BPF_LD | libc::BPF_H | libc::BPF_ABS;
const LDB: u32 = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
const LDW: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const RSH: u32 = libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// The program for a capture of `link` framing; `incoming_only` on loopback.
pub fn program(link: LinkType, incoming_only: bool) -> Vec<libc::sock_filter> {
    let mut p = Vec::new();
    if incoming_only {
        p.push(stmt(LDW, SKF_AD_OFF + SKF_AD_PKTTYPE));
        // Outgoing: to the last instruction (drop), else on.
        p.push(jeq(PACKET_OUTGOING, 0, 1));
        p.push(stmt(RET, 0));
    }
    // The tail every branch ends in: [.., SNAP, WHOLE]. Jump distances below count
    // instructions skipped after the jump.
    match link {
        LinkType::Ethernet => {
            // Shorter than Ethernet + the IPv6 payload length: nothing to cut anyway.
            p.push(stmt(LD_LEN, 0));
            p.push(jge(20, 0, 7)); // -> SNAP
            p.push(stmt(LDH, 12)); // ethertype
            p.push(jeq(0x0800, 0, 2)); // IPv4 -> next, else -> IPv6 test
            p.push(stmt(LDH, 16)); // IPv4 total length
            p.push(jeq(0, 4, 3)); // -> WHOLE / SNAP
            p.push(jeq(0x86DD, 0, 2)); // IPv6 -> next, else -> SNAP
            p.push(stmt(LDH, 18)); // IPv6 payload length
            p.push(jeq(0, 1, 0)); // -> WHOLE / SNAP
        }
        LinkType::Raw => {
            p.push(stmt(LD_LEN, 0));
            p.push(jge(6, 0, 8)); // -> SNAP
            p.push(stmt(LDB, 0));
            p.push(stmt(RSH, 4)); // IP version
            p.push(jeq(4, 0, 2)); // IPv4 -> next, else -> IPv6 test
            p.push(stmt(LDH, 2)); // IPv4 total length
            p.push(jeq(0, 4, 3)); // -> WHOLE / SNAP
            p.push(jeq(6, 0, 2)); // IPv6 -> next, else -> SNAP
            p.push(stmt(LDH, 4)); // IPv6 payload length
            p.push(jeq(0, 1, 0)); // -> WHOLE / SNAP
        }
        // Live capture delivers only the two framings above.
        _ => {}
    }
    p.push(stmt(RET, SNAP_BYTES));
    p.push(stmt(RET, WHOLE));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as the filter sees it: its bytes and `skb->pkt_type`.
    struct Skb<'a> {
        data: &'a [u8],
        pkt_type: u32,
    }

    /// Runs a classic BPF program over a frame, the instructions this module emits and
    /// the kernel's rules for them (an out-of-bounds load ends the program with 0;
    /// jumps must land inside the program; it must end in a return).
    fn run(p: &[libc::sock_filter], skb: &Skb<'_>) -> u32 {
        let mut a = 0u32;
        let mut pc = 0usize;
        let load = |k: u32, n: usize| -> Option<u32> {
            let at = k as usize;
            let b = skb.data.get(at..at + n)?;
            Some(b.iter().fold(0, |v, &x| (v << 8) | u32::from(x)))
        };
        loop {
            let i = p.get(pc).expect("ran off the end of the program");
            let code = u32::from(i.code);
            pc += 1;
            match code {
                LD_LEN => a = skb.data.len() as u32,
                LDW if i.k == SKF_AD_OFF + SKF_AD_PKTTYPE => a = skb.pkt_type,
                LDW | LDH | LDB => {
                    let n = match code {
                        LDW => 4,
                        LDH => 2,
                        _ => 1,
                    };
                    match load(i.k, n) {
                        Some(v) => a = v,
                        None => return 0,
                    }
                }
                RSH => a >>= i.k,
                RET => return i.k,
                c if c == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                c if c == (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) => {
                    pc += usize::from(if a >= i.k { i.jt } else { i.jf });
                }
                c => panic!("instruction {c:#x} not modelled"),
            }
            assert!(pc < p.len(), "jump past the end");
        }
    }

    fn eth(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    fn ipv4(total: u16, len: usize) -> Vec<u8> {
        let mut h = vec![0u8; len];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h
    }

    fn ipv6(plen: u16, len: usize) -> Vec<u8> {
        let mut h = vec![0u8; len];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&plen.to_be_bytes());
        h
    }

    const HOST: u32 = 0;

    #[test]
    fn ethernet_frames_are_cut_to_the_snap_length() {
        for incoming_only in [false, true] {
            let p = program(LinkType::Ethernet, incoming_only);
            let v4 = eth(0x0800, &ipv4(1500, 1500));
            let v6 = eth(0x86DD, &ipv6(1460, 1500));
            let arp = eth(0x0806, &[0; 28]);
            for f in [&v4, &v6, &arp] {
                let kept = run(
                    &p,
                    &Skb {
                        data: f,
                        pkt_type: HOST,
                    },
                );
                assert_eq!(kept, SNAP_BYTES, "{incoming_only} {:x?}", &f[12..14]);
            }
            // Short frames: SNAP_BYTES too (the kernel keeps what there is).
            let short = eth(0x0800, &[0x45, 0, 0]);
            assert_eq!(
                run(
                    &p,
                    &Skb {
                        data: &short,
                        pkt_type: HOST
                    }
                ),
                SNAP_BYTES
            );
            let tiny = [0u8; 13];
            assert_eq!(
                run(
                    &p,
                    &Skb {
                        data: &tiny,
                        pkt_type: HOST
                    }
                ),
                SNAP_BYTES
            );
        }
    }

    #[test]
    fn zero_length_super_packets_are_kept_whole() {
        let p = program(LinkType::Ethernet, true);
        let v4 = eth(0x0800, &ipv4(0, 1000));
        let v6 = eth(0x86DD, &ipv6(0, 1000));
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &v4,
                    pkt_type: HOST
                }
            ),
            WHOLE
        );
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &v6,
                    pkt_type: HOST
                }
            ),
            WHOLE
        );
        let p = program(LinkType::Raw, false);
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &ipv4(0, 1000),
                    pkt_type: HOST
                }
            ),
            WHOLE
        );
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &ipv6(0, 1000),
                    pkt_type: HOST
                }
            ),
            WHOLE
        );
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &ipv4(900, 1000),
                    pkt_type: HOST
                }
            ),
            SNAP_BYTES
        );
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &ipv6(960, 1000),
                    pkt_type: HOST
                }
            ),
            SNAP_BYTES
        );
        // Neither version: cut.
        let mut other = ipv4(0, 100);
        other[0] = 0x55;
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &other,
                    pkt_type: HOST
                }
            ),
            SNAP_BYTES
        );
        assert_eq!(
            run(
                &p,
                &Skb {
                    data: &[0x45, 0],
                    pkt_type: HOST
                }
            ),
            SNAP_BYTES
        );
    }

    #[test]
    fn outgoing_copies_are_dropped_only_when_asked() {
        let v4 = eth(0x0800, &ipv4(1500, 1500));
        let out = Skb {
            data: &v4,
            pkt_type: PACKET_OUTGOING,
        };
        assert_eq!(run(&program(LinkType::Ethernet, true), &out), 0);
        assert_eq!(run(&program(LinkType::Raw, true), &out), 0);
        assert_eq!(run(&program(LinkType::Ethernet, false), &out), SNAP_BYTES);
        // Every other packet type is kept.
        for pkt_type in [0, 1, 2, 3, 5] {
            let skb = Skb {
                data: &v4,
                pkt_type,
            };
            assert_eq!(run(&program(LinkType::Ethernet, true), &skb), SNAP_BYTES);
        }
    }
}
