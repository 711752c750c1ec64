//! The queue between the capture threads and the one flow table: parsed packets travel in
//! batches (up to [`BATCH_PACKETS`], at least one per ring block), so a channel operation
//! is paid per batch, not per packet; emptied batches come back through a shared pool, so
//! in steady state nothing is allocated.
//!
//! Full-queue policy: the batch is dropped and its packets counted (`dropped`); a capture
//! thread never waits on the flow table, so the kernel's ring is the only other place
//! packets can be lost (counted from PACKET_STATISTICS).
//!
//! The queue holds at most `capacity_packets` packets: batches of
//! `min(BATCH_PACKETS, capacity_packets)`, as many as fit (at least one).
use std::sync::{
    Arc, Mutex,
    mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
};

use super::parse::Packet;

/// A packet and when the kernel received it (unix nanoseconds, the ring frame's stamp: not
/// when it was read, which under load is later by the ring's backlog).
pub type Captured = (u64, Packet);

/// The most packets in one batch: enough that the channel's cost vanishes per packet, few
/// enough that a batch is handed on while its first packets are fresh.
pub const BATCH_PACKETS: usize = 256;

/// Emptied batches, ready for a capture thread to fill again.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<Captured>>>);

impl Pool {
    fn take(&self, capacity: usize) -> Vec<Captured> {
        self.0
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    fn give(&self, mut batch: Vec<Captured>) {
        batch.clear();
        if let Ok(mut v) = self.0.lock() {
            v.push(batch);
        }
    }
}

/// The flow table's side has gone: capture should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the flow table's queue is closed")]
pub struct Closed;

/// A queue of at most `capacity_packets` packets (at least one batch).
pub fn queue(capacity_packets: usize) -> (BatchSender, BatchReceiver) {
    let batch = BATCH_PACKETS.min(capacity_packets).max(1);
    let (tx, rx) = mpsc::sync_channel((capacity_packets / batch).max(1));
    let pool = Arc::new(Pool::default());
    (
        BatchSender {
            tx,
            pool: Arc::clone(&pool),
            batch: Vec::new(),
            max: batch,
            handed_off: 0,
            dropped: 0,
        },
        BatchReceiver { rx, pool },
    )
}

/// One capture thread's end of the queue (clone one per thread).
pub struct BatchSender {
    tx: SyncSender<Vec<Captured>>,
    pool: Arc<Pool>,
    /// The batch being filled.
    batch: Vec<Captured>,
    max: usize,
    handed_off: u64,
    dropped: u64,
}

impl Clone for BatchSender {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            pool: Arc::clone(&self.pool),
            batch: Vec::new(),
            max: self.max,
            handed_off: 0,
            dropped: 0,
        }
    }
}

impl BatchSender {
    /// Adds a packet to the batch, sending the batch when it is full.
    #[inline]
    pub fn push(&mut self, packet: Captured) -> Result<(), Closed> {
        if self.batch.capacity() == 0 {
            self.batch = self.pool.take(self.max);
        }
        self.batch.push(packet);
        if self.batch.len() >= self.max {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Sends the batch so far, if any (at the end of each ring block); a full queue drops
    /// it, counted.
    pub fn flush(&mut self) -> Result<(), Closed> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let n = self.batch.len() as u64;
        match self.tx.try_send(std::mem::take(&mut self.batch)) {
            Ok(()) => {
                self.handed_off += n;
                Ok(())
            }
            Err(TrySendError::Full(mut batch)) => {
                self.dropped += n;
                batch.clear();
                self.batch = batch;
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(Closed),
        }
    }

    /// Packets (handed off, dropped for a full queue) since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.handed_off),
            std::mem::take(&mut self.dropped),
        )
    }
}

/// The flow table's end of the queue.
pub struct BatchReceiver {
    rx: Receiver<Vec<Captured>>,
    pool: Arc<Pool>,
}

impl BatchReceiver {
    /// The next batch; `Disconnected` once every capture thread has gone and the queue is
    /// empty.
    pub fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Vec<Captured>, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Gives an emptied batch back for a capture thread to fill.
    pub fn recycle(&self, batch: Vec<Captured>) {
        self.pool.give(batch);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use super::*;

    fn packet(i: u16) -> Captured {
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        (
            u64::from(i),
            Packet {
                src: a,
                dst: a,
                proto: 17,
                src_port: i,
                dst_port: 53,
                ip_len: 28,
                tcp_flags: 0,
                tcp_seq: 0,
                fragment: None,
                inner: None,
            },
        )
    }

    #[test]
    fn a_full_queue_drops_whole_batches_and_counts_their_packets() {
        // 16 packets of room: one batch of 16.
        let (mut tx, rx) = queue(16);
        for i in 0..40 {
            tx.push(packet(i)).unwrap();
        }
        tx.flush().unwrap();
        // The first 16 went; the next 16 and the last 8 found the queue full.
        assert_eq!(tx.take_counts(), (16, 24));
        assert_eq!(tx.take_counts(), (0, 0), "counts are taken once");
        let b = rx.recv_timeout(Duration::ZERO).unwrap();
        let ports: Vec<u16> = b.iter().map(|(_, p)| p.src_port).collect();
        assert_eq!(
            ports,
            (0..16).collect::<Vec<_>>(),
            "in order, the first ones"
        );
        assert!(
            rx.recv_timeout(Duration::ZERO).is_err(),
            "nothing more queued"
        );
        // Room again: the next batch goes through.
        rx.recycle(b);
        for i in 0..16 {
            tx.push(packet(i)).unwrap();
        }
        assert_eq!(tx.take_counts(), (16, 0));
    }

    #[test]
    fn large_queues_hold_many_batches_and_a_flush_sends_a_partial_one() {
        let (mut tx, rx) = queue(4 * BATCH_PACKETS);
        for i in 0..(4 * BATCH_PACKETS + 10) as u16 {
            tx.push(packet(i)).unwrap();
        }
        tx.flush().unwrap();
        let (handed, dropped) = tx.take_counts();
        assert_eq!((handed, dropped), (4 * BATCH_PACKETS as u64, 10));
        let mut got = 0;
        while let Ok(b) = rx.recv_timeout(Duration::ZERO) {
            assert_eq!(b.len(), BATCH_PACKETS);
            got += b.len();
        }
        assert_eq!(got, 4 * BATCH_PACKETS);
        // A partial batch goes on flush.
        tx.push(packet(1)).unwrap();
        tx.flush().unwrap();
        assert_eq!(rx.recv_timeout(Duration::ZERO).unwrap().len(), 1);
        tx.flush().unwrap();
        assert!(
            rx.recv_timeout(Duration::ZERO).is_err(),
            "an empty flush sends nothing"
        );
    }

    #[test]
    fn recycled_batches_are_filled_again_not_allocated() {
        let (mut tx, rx) = queue(BATCH_PACKETS);
        for i in 0..BATCH_PACKETS as u16 {
            tx.push(packet(i)).unwrap();
        }
        let b = rx.recv_timeout(Duration::ZERO).unwrap();
        let first = b.as_ptr();
        rx.recycle(b);
        for i in 0..BATCH_PACKETS as u16 {
            tx.push(packet(i)).unwrap();
        }
        let b = rx.recv_timeout(Duration::ZERO).unwrap();
        assert_eq!(b.as_ptr(), first, "the same allocation came back");
        assert_eq!(b.len(), BATCH_PACKETS);
    }

    #[test]
    fn a_gone_flow_table_closes_the_queue() {
        let (mut tx, rx) = queue(16);
        drop(rx);
        tx.push(packet(1)).unwrap();
        assert_eq!(tx.flush(), Err(Closed));
    }
}
