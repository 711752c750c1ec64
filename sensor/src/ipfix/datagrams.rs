//! Many UDP datagrams a system call (`sendmmsg`): an exporter turns one batch of flows into
//! several messages, and a call each cost about as much as encoding them.
use std::{net::UdpSocket, os::fd::AsRawFd as _};

/// Datagrams handed to the kernel in one call.
const PER_CALL: usize = 32;

/// Sends each of `msgs` as one datagram on the connected `sock`, in order, up to
/// [`PER_CALL`] a call; `done(i, sent)` is told the fate of each. A datagram the kernel
/// refuses (a full buffer, an ICMP error from an earlier one) is not sent again: it is
/// reported and the rest go on.
///
/// Each datagram carries a count of what went before it (IPFIX's sequence number: the
/// data records sent earlier): `number(msg, n)` writes `n` into a datagram just before the
/// call that sends it, `n` being `*sent_count` plus the `weights` of the datagrams ahead of it in
/// that call; `*sent_count` grows by the weight of each datagram sent, so a refused one is not
/// counted by the ones after it.
pub fn send_all(
    sock: &UdpSocket,
    msgs: &mut [Vec<u8>],
    weights: &[u32],
    sent_count: &mut u32,
    mut number: impl FnMut(&mut [u8], u32),
    mut done: impl FnMut(usize, bool),
) {
    let fd = sock.as_raw_fd();
    let mut at = 0;
    while at < msgs.len() {
        let n = (msgs.len() - at).min(PER_CALL);
        let mut count = *sent_count;
        for i in at..at + n {
            number(&mut msgs[i], count);
            count = count.wrapping_add(weights[i]);
        }
        // SAFETY: plain data, all-zero is valid for both.
        let mut iov: [libc::iovec; PER_CALL] = unsafe { std::mem::zeroed() };
        let mut hdr: [libc::mmsghdr; PER_CALL] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let m = &msgs[at + i];
            iov[i] = libc::iovec {
                iov_base: m.as_ptr() as *mut libc::c_void,
                iov_len: m.len(),
            };
            hdr[i].msg_hdr.msg_iov = &mut iov[i];
            hdr[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdr[..n]` point at `iov[..n]`, which point into `msgs`, all alive for
        // the call; the socket is connected, so no addresses are given.
        let sent = unsafe { libc::sendmmsg(fd, hdr.as_mut_ptr(), n as u32, 0) };
        if sent <= 0 {
            // The first one failed (the error is its own): skip it, go on with the rest.
            done(at, false);
            at += 1;
            continue;
        }
        for i in 0..sent as usize {
            *sent_count = sent_count.wrapping_add(weights[at + i]);
            done(at + i, true);
        }
        at += sent as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datagram_arrives_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let mut msgs: Vec<Vec<u8>> = (0..70u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let want = msgs.clone();
        let mut fates = Vec::new();
        let mut sent = 0;
        send_all(
            &tx,
            &mut msgs,
            &[0; 70],
            &mut sent,
            |_, _| {},
            |i, ok| fates.push((i, ok)),
        );
        assert_eq!(fates, (0..70).map(|i| (i, true)).collect::<Vec<_>>());
        let mut buf = [0u8; 200];
        for m in &want {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], m.as_slice());
        }
    }

    #[test]
    fn a_refused_datagram_is_reported_and_the_rest_go_on() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        // Larger than any UDP datagram can be: EMSGSIZE for that one alone.
        let mut msgs = vec![vec![1u8; 8], vec![0u8; 70_000], vec![1u8; 8]];
        let mut fates = Vec::new();
        // Each datagram weighs 5 and starts with the count before it.
        let mut sent = 100;
        let number = |m: &mut [u8], n: u32| m[..4].copy_from_slice(&n.to_be_bytes());
        send_all(&tx, &mut msgs, &[5, 5, 5], &mut sent, number, |i, ok| {
            fates.push((i, ok))
        });
        assert_eq!(fates, [(0, true), (1, false), (2, true)]);
        assert_eq!(sent, 110, "the refused one is not counted");
        let mut buf = [0u8; 64];
        let mut counts = Vec::new();
        for _ in 0..2 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 8);
            counts.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
        }
        assert_eq!(
            counts,
            [100, 105],
            "the one after the refused one counts on from 105"
        );
    }
}
