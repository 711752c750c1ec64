//! Paced receiving, for the stages that take finished flows one by one from a queue (the
//! merge, the store's writer). Blocking in `recv` for every item makes each send of a busy
//! producer wake the consumer: some 10k wake-ups a second on a host making 10k connections,
//! each a context switch on the host's own CPUs. A paced receiver blocks only while its
//! queue is idle; once items come, it empties the queue, then sleeps a tick before it looks
//! again, so sends meanwhile wake no one and a tick's items are taken in one go. An item
//! waits one tick at most for it; the queue must hold a tick of the fastest producer
//! (the 65,536 rows of the default queues hold 20 ms of over three million a second).
use std::{
    sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError},
    time::Duration,
};

/// The tick of the live stages.
pub const TICK: Duration = Duration::from_millis(20);

/// Remembers whether the queue was busy at the last look.
#[derive(Debug)]
pub struct Paced {
    tick: Duration,
    busy: bool,
}

impl Paced {
    pub fn new(tick: Duration) -> Self {
        Self { tick, busy: false }
    }

    /// The next item, waiting up to `timeout` for one: an item already queued at once;
    /// with the queue just emptied, after a sleep of a tick (or `timeout`, when shorter) and
    /// one more look; with the queue idle, as soon as an item comes.
    pub fn recv<T>(&mut self, rx: &Receiver<T>, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match rx.try_recv() {
            Ok(item) => {
                self.busy = true;
                return Ok(item);
            }
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        if std::mem::take(&mut self.busy) {
            std::thread::sleep(self.tick.min(timeout));
            return match rx.try_recv() {
                Ok(item) => {
                    self.busy = true;
                    Ok(item)
                }
                Err(TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            };
        }
        let item = rx.recv_timeout(timeout)?;
        self.busy = true;
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::mpsc, time::Instant};

    #[test]
    fn an_idle_queue_is_waited_on_and_a_busy_one_looked_at_once_a_tick() {
        let (tx, rx) = mpsc::channel();
        let mut p = Paced::new(Duration::from_millis(50));
        // Idle: the item comes as soon as it is sent, well before a tick.
        let sender = std::thread::spawn({
            let tx = tx.clone();
            move || {
                std::thread::sleep(Duration::from_millis(5));
                tx.send(1).unwrap();
            }
        });
        let t0 = Instant::now();
        assert_eq!(p.recv(&rx, Duration::from_secs(5)), Ok(1));
        assert!(t0.elapsed() < Duration::from_secs(1));
        sender.join().unwrap();
        // Queued items at once, then a tick's sleep with the queue just emptied.
        tx.send(2).unwrap();
        tx.send(3).unwrap();
        assert_eq!(p.recv(&rx, Duration::from_secs(5)), Ok(2));
        assert_eq!(p.recv(&rx, Duration::from_secs(5)), Ok(3));
        let t0 = Instant::now();
        assert_eq!(
            p.recv(&rx, Duration::from_secs(5)),
            Err(RecvTimeoutError::Timeout)
        );
        let slept = t0.elapsed();
        assert!(slept >= Duration::from_millis(50), "{slept:?}");
        // A timeout shorter than the tick bounds the sleep.
        tx.send(4).unwrap();
        assert_eq!(p.recv(&rx, Duration::from_secs(5)), Ok(4));
        let t0 = Instant::now();
        assert_eq!(
            p.recv(&rx, Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(t0.elapsed() < Duration::from_millis(50));
        // Idle again: blocks until the timeout, and sees the queue close.
        drop(tx);
        assert_eq!(
            p.recv::<i32>(&rx, Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    }
}
