//! Walking one TPACKET_V3 ring block (Linux 3.2): a block descriptor, then `num_pkts`
//! frames, each a `tpacket3_hdr` whose `tp_next_offset` leads to the next one.
//!
//! This is pure: it reads a block the kernel has handed to user space (block status
//! `TP_STATUS_USER`, so the kernel writes nothing in it until it is given back) as plain
//! bytes, and so a test can walk a block built by hand. Every offset the kernel wrote is
//! checked against the block's length: a frame that would reach past it ends the walk
//! rather than being read.
use std::mem::offset_of;

use libc::{tpacket_block_desc, tpacket_hdr_v1, tpacket3_hdr};

/// Where the fields read live: the kernel's layout, from libc's definitions.
const BLOCK_HDR: usize = offset_of!(tpacket_block_desc, hdr);
const NUM_PKTS: usize = BLOCK_HDR + offset_of!(tpacket_hdr_v1, num_pkts);
const FIRST_PKT: usize = BLOCK_HDR + offset_of!(tpacket_hdr_v1, offset_to_first_pkt);
/// Where the block's status word is (the word user space and the kernel pass it by).
pub const BLOCK_STATUS: usize = BLOCK_HDR + offset_of!(tpacket_hdr_v1, block_status);
const NEXT: usize = offset_of!(tpacket3_hdr, tp_next_offset);
const SEC: usize = offset_of!(tpacket3_hdr, tp_sec);
const NSEC: usize = offset_of!(tpacket3_hdr, tp_nsec);
const SNAPLEN: usize = offset_of!(tpacket3_hdr, tp_snaplen);
const LEN: usize = offset_of!(tpacket3_hdr, tp_len);
const MAC: usize = offset_of!(tpacket3_hdr, tp_mac);
const FRAME_HDR: usize = size_of::<tpacket3_hdr>();
const BLOCK_DESC: usize = size_of::<tpacket_block_desc>();

// The UAPI layout (include/uapi/linux/if_packet.h) this walk and its tests assume.
const _: () = assert!(BLOCK_STATUS == 8 && NUM_PKTS == 12 && FIRST_PKT == 16);
const _: () = assert!(SEC == 4 && NSEC == 8 && SNAPLEN == 12 && LEN == 16 && MAC == 24);
const _: () = assert!(FRAME_HDR == 48 && BLOCK_DESC == 48);

/// One frame of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// When the kernel took the frame, unix nanoseconds (`tp_sec`, `tp_nsec`): the stamp of
    /// the packet's arrival at the tap, however long the block then waited to be read.
    pub ts_ns: u64,
    /// The frame's length on the wire (`tp_len`): longer than `data` when the socket
    /// filter's snap length cut it.
    pub wire_len: u32,
    /// The captured bytes, from the link-layer header on (`tp_mac`, `tp_snaplen`).
    pub data: &'a [u8],
}

/// The frames of one block, in the order the kernel wrote them.
pub fn frames(block: &[u8]) -> Frames<'_> {
    let left = read_u32(block, NUM_PKTS).unwrap_or(0);
    let at = read_u32(block, FIRST_PKT).map_or(usize::MAX, |o| o as usize);
    Frames { block, at, left }
}

pub struct Frames<'a> {
    block: &'a [u8],
    at: usize,
    left: u32,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.left == 0 {
            return None;
        }
        let frame = frame_at(self.block, self.at);
        match frame {
            Some((f, next)) => {
                // The last frame's next offset is 0.
                self.left = if next == 0 { 0 } else { self.left - 1 };
                self.at = self.at.saturating_add(next);
                Some(f)
            }
            None => {
                self.left = 0;
                None
            }
        }
    }
}

/// The frame whose header is at `h`, and the offset from there to the next one.
fn frame_at(b: &[u8], h: usize) -> Option<(Frame<'_>, usize)> {
    if h < BLOCK_DESC || h.checked_add(FRAME_HDR)? > b.len() {
        return None;
    }
    let mac = usize::from(read_u16(b, h + MAC)?);
    let snap = read_u32(b, h + SNAPLEN)? as usize;
    let start = h.checked_add(mac)?;
    let data = b.get(start..start.checked_add(snap)?)?;
    let ts_ns =
        u64::from(read_u32(b, h + SEC)?) * 1_000_000_000 + u64::from(read_u32(b, h + NSEC)?);
    let frame = Frame {
        ts_ns,
        wire_len: read_u32(b, h + LEN)?,
        data,
    };
    Some((frame, read_u32(b, h + NEXT)? as usize))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Builds a block the way the kernel lays one out: the descriptor, then each frame's
    /// header at a 16-byte aligned offset, its data `mac` bytes after the header's start.
    pub fn block(frames: &[(u32, u32, u32, &[u8])], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        let put =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut b, NUM_PKTS, frames.len() as u32);
        let first = BLOCK_DESC.next_multiple_of(16);
        put(&mut b, FIRST_PKT, first as u32);
        let mut at = first;
        for (i, (sec, nsec, wire_len, data)) in frames.iter().enumerate() {
            // As the kernel does: tp_mac past the header and the sockaddr_ll, aligned.
            let mac = (FRAME_HDR + size_of::<libc::sockaddr_ll>()).next_multiple_of(16);
            let len = (mac + data.len()).next_multiple_of(16);
            let next = if i + 1 == frames.len() { 0 } else { len as u32 };
            put(&mut b, at + NEXT, next);
            put(&mut b, at + SEC, *sec);
            put(&mut b, at + NSEC, *nsec);
            put(&mut b, at + SNAPLEN, data.len() as u32);
            put(&mut b, at + LEN, *wire_len);
            b[at + MAC..at + MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[at + mac..at + mac + data.len()].copy_from_slice(data);
            at += len;
        }
        b
    }

    #[test]
    fn walks_every_frame_with_its_stamp_and_lengths() {
        let a = [0xaau8; 60];
        let c = [0xccu8; 256];
        let b = block(
            &[
                (1_700_000_000, 5, 60, &a),
                (1_700_000_001, 999_999_999, 1514, &c),
                (1_700_000_002, 0, 3, &[1, 2, 3]),
            ],
            4096,
        );
        let got: Vec<Frame<'_>> = frames(&b).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].ts_ns, 1_700_000_000_000_000_005);
        assert_eq!((got[0].wire_len, got[0].data), (60, &a[..]));
        assert_eq!(got[1].ts_ns, 1_700_000_001_999_999_999);
        assert_eq!((got[1].wire_len, got[1].data.len()), (1514, 256));
        assert!(got[1].data.iter().all(|&x| x == 0xcc));
        assert_eq!((got[2].wire_len, got[2].data), (3, &[1u8, 2, 3][..]));
    }

    #[test]
    fn empty_block_has_no_frames() {
        assert_eq!(frames(&block(&[], 4096)).count(), 0);
        assert_eq!(frames(&[0u8; 10]).count(), 0, "shorter than a descriptor");
    }

    #[test]
    fn a_frame_reaching_past_the_block_ends_the_walk() {
        let d = [7u8; 100];
        let mut b = block(&[(1, 0, 100, &d), (2, 0, 100, &d)], 4096);
        // The second frame's snap length claims more than the block holds.
        let first = BLOCK_DESC.next_multiple_of(16);
        let second = first + read_u32(&b, first + NEXT).unwrap() as usize;
        b[second + SNAPLEN..second + SNAPLEN + 4].copy_from_slice(&5000u32.to_ne_bytes());
        let got: Vec<_> = frames(&b).collect();
        assert_eq!(got.len(), 1, "the good frame, then the walk stops");
        // A count larger than the frames there: the walk ends at the last one (next = 0).
        let mut b = block(&[(1, 0, 100, &d)], 4096);
        b[NUM_PKTS..NUM_PKTS + 4].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(frames(&b).count(), 1);
        // A first-frame offset inside the descriptor or past the end: nothing.
        let mut b = block(&[(1, 0, 100, &d)], 4096);
        b[FIRST_PKT..FIRST_PKT + 4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(frames(&b).count(), 0);
        b[FIRST_PKT..FIRST_PKT + 4].copy_from_slice(&4090u32.to_ne_bytes());
        assert_eq!(frames(&b).count(), 0);
    }
}
