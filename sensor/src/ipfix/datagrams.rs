//! Many UDP datagrams a system call (`sendmmsg`): an exporter turns one batch of flows into
//! several messages, and a call each cost about as much as encoding them.
use std::{net::UdpSocket, os::fd::AsRawFd as _};

/// Datagrams handed to the kernel in one call.
const PER_CALL: usize = 32;

/// Sends each of `msgs` as one datagram on the connected `sock`, in order, up to
/// [`PER_CALL`] a call; `done(i, sent)` is told the fate of each. A datagram the kernel
/// refuses (a full buffer, an ICMP error from an earlier one) is not sent again: it is
/// reported and the rest go on.
pub fn send_all(sock: &UdpSocket, msgs: &[&[u8]], mut done: impl FnMut(usize, bool)) {
    let fd = sock.as_raw_fd();
    let mut at = 0;
    while at < msgs.len() {
        let n = (msgs.len() - at).min(PER_CALL);
        // SAFETY: plain data, all-zero is valid for both.
        let mut iov: [libc::iovec; PER_CALL] = unsafe { std::mem::zeroed() };
        let mut hdr: [libc::mmsghdr; PER_CALL] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let m = msgs[at + i];
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
        let msgs: Vec<Vec<u8>> = (0..70u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let mut fates = Vec::new();
        send_all(&tx, &refs, |i, ok| fates.push((i, ok)));
        assert_eq!(fates, (0..70).map(|i| (i, true)).collect::<Vec<_>>());
        let mut buf = [0u8; 200];
        for m in &msgs {
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
        let big = vec![0u8; 70_000];
        let small = [1u8; 8];
        let refs: Vec<&[u8]> = vec![&small, &big, &small];
        let mut fates = Vec::new();
        send_all(&tx, &refs, |i, ok| fates.push((i, ok)));
        assert_eq!(fates, [(0, true), (1, false), (2, true)]);
    }
}
