//! A bound on items queued for a consumer thread, counted in items (a chunk counts for its
//! length), shared by the store's writer and the IPFIX exporters. Senders that may not
//! wait are refused at the bound; senders that may wait (a replay) sleep until the consumer
//! has taken the queue down to half, so a fast producer and its consumer don't wake each
//! other once an item.
use std::{
    sync::{
        Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

pub struct Gate {
    queued: AtomicUsize,
    cap: usize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    space: Condvar,
}

impl Gate {
    /// At most `cap` items queued (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            cap: cap.max(1),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            space: Condvar::new(),
        }
    }

    /// Items queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Room for one item, without waiting: false at the bound.
    pub fn try_reserve(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            false
        } else {
            true
        }
    }

    /// Room for `n` items, waiting for it (a chunk larger than the bound goes alone).
    pub fn reserve_blocking(&self, n: usize) {
        let fits = |q: usize| q == 0 || q + n <= self.cap;
        loop {
            let q = self.queued.load(Ordering::Acquire);
            if fits(q) {
                if self
                    .queued
                    .compare_exchange(q, q + n, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            self.waiters.fetch_add(1, Ordering::AcqRel);
            let mut guard = self.lock.lock().expect("gate lock");
            while !fits(self.queued.load(Ordering::Acquire)) {
                guard = self
                    .space
                    .wait_timeout(guard, Duration::from_millis(50))
                    .expect("gate lock")
                    .0;
            }
            drop(guard);
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The consumer took `n` items off the queue (or a sender gave back what it reserved).
    pub fn taken(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        if before.saturating_sub(n) <= self.cap / 2 && self.waiters.load(Ordering::Acquire) > 0 {
            let _guard = self.lock.lock().expect("gate lock");
            self.space.notify_all();
        }
    }
}
