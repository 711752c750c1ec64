//! The way into the enrichment pool: called for both addresses of every flow on its way to
//! the store, so it must cost nanoseconds and never wait.
//!
//! Full-queue policy: the address is shed — counted in
//! `sensor_enrich_shed_addresses_total{reason="queue_full"}` and not remembered, so the next
//! flow that touches it offers it again. Capture and the flow tables never block on
//! enrichment. Addresses already known (or in progress) are answered from an in-memory set
//! of due times; it is bounded, and when full, entries past due go first, then all of them
//! (they are only a shortcut: `ip_info` still holds every answer).
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::{scope::is_public, unix_ms};
use crate::metrics::Metrics;

/// How long an address offered but not yet answered counts as known (in progress).
const PENDING_MS: i64 = 10 * 60 * 1000;

struct Known {
    due_ms: HashMap<IpAddr, i64, foldhash::fast::RandomState>,
    cap: usize,
}

impl Known {
    fn make_room(&mut self, now_ms: i64) {
        if self.due_ms.len() < self.cap {
            return;
        }
        self.due_ms.retain(|_, due| *due > now_ms);
        if self.due_ms.len() >= self.cap {
            self.due_ms.clear();
        }
    }
}

/// Cheap to clone; every clone offers into the same queue.
#[derive(Clone)]
pub struct EnrichQueue {
    tx: mpsc::Sender<IpAddr>,
    known: Arc<Mutex<Known>>,
    metrics: Arc<Metrics>,
}

impl EnrichQueue {
    /// A queue of `capacity` addresses; the receiver goes to [`super::pool::spawn`].
    pub fn new(
        capacity: usize,
        known_cap: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::Receiver<IpAddr>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let q = Self {
            tx,
            known: Arc::new(Mutex::new(Known {
                due_ms: HashMap::default(),
                cap: known_cap.max(1),
            })),
            metrics,
        };
        (q, rx)
    }

    /// Offers one address. Never waits; takes the lock once and allocates nothing (beyond
    /// the known set's amortised growth).
    pub fn offer(&self, ip: IpAddr) {
        let m = &self.metrics;
        m.enrich_offered.inc();
        // IPv4-mapped IPv6 as IPv4, as flows store them.
        let ip = ip.to_canonical();
        if !is_public(ip) {
            m.enrich_skipped.inc();
            return;
        }
        let now = unix_ms();
        let mut known = self.known.lock().expect("known lock");
        if known.due_ms.get(&ip).is_some_and(|due| *due > now) {
            m.enrich_cache_hits.inc();
            return;
        }
        // `try_send` never waits, so it runs under the lock: the address is only marked
        // known when it is really queued, and a concurrent offer of it can't slip between.
        match self.tx.try_send(ip) {
            Ok(()) => {
                known.make_room(now);
                known.due_ms.insert(ip, now + PENDING_MS);
                drop(known);
                m.enrich_queued.inc();
                m.enrich_queue.inc();
            }
            Err(e) => {
                drop(known);
                let reason = match e {
                    TrySendError::Full(_) => "queue_full",
                    TrySendError::Closed(_) => "shutdown",
                };
                m.enrich_shed.with_label_values(&[reason]).inc();
            }
        }
    }

    /// Records when an address is next due (its earliest expiring answer).
    pub fn answered(&self, ip: IpAddr, due_ms: i64) {
        let mut known = self.known.lock().expect("known lock");
        known.make_room(unix_ms());
        known.due_ms.insert(ip, due_ms);
    }

    /// Records that one network pass for `ip` is done and its answer is due at `due_ms`:
    /// the address stays known until then, or until an earlier time already recorded
    /// (another pass's answer, or the "in progress" mark) — so no answer is left past due.
    pub fn answered_by(&self, ip: IpAddr, due_ms: i64) {
        let mut known = self.known.lock().expect("known lock");
        known.make_room(unix_ms());
        let due = known.due_ms.entry(ip).or_insert(due_ms);
        *due = (*due).min(due_ms);
    }

    /// Forgets everything (threat lists or databases changed: answers are re-applied as
    /// addresses come back).
    pub fn forget_all(&self) {
        self.known.lock().expect("known lock").due_ms.clear();
    }
}
