//! The detections stage: a thread fed through a bounded queue, handing changed alerts to
//! the writer. It ends when every sender is gone, after writing its last alerts.
//!
//! Full-queue policy: [`DetectQueue::offer`] (live) never waits; a record that finds the
//! queue full is dropped for the detectors alone (`sensor_detect_dropped_records_total`),
//! the store and the other sinks still get it. [`DetectQueue::send_many_blocking`]
//! (replay) waits for room, so a replay's detectors see every flow.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{DetectConfig, DetectStats, Detectors, Kind};
use crate::{
    enrich::tags::Tagger,
    flow::{FlowRecord, unit::SharedUnits},
    metrics::{Metrics, add_delta},
    store::WriterHandle,
};

/// Records in one queue item at most: a replay's batches are cut to this, so the queue's
/// bound (in items) is a bound in records too.
const BATCH: usize = 256;

/// How often changed alerts go to the writer and the metrics are brought up to date.
const PUBLISH: Duration = Duration::from_millis(200);

/// The thread drains its queue this often instead of waking for every record: live, a
/// wake-up a record was most of the stage's cost to the host (a queue of 65,536 records
/// holds 20 ms of well over a million records a second).
const POLL: Duration = Duration::from_millis(20);

enum Item {
    /// Boxed: a record is some 460 bytes, and the queue's slots are all allocated.
    One(Box<FlowRecord>),
    Many(Vec<FlowRecord>),
}

/// The detectors' input, cloned into the tee.
#[derive(Clone)]
pub struct DetectQueue {
    tx: SyncSender<Item>,
    dropped: Arc<AtomicU64>,
}

impl DetectQueue {
    /// Without waiting (see the module's full-queue policy).
    pub fn offer(&self, f: &FlowRecord) {
        if f.amends {
            return;
        }
        match self.tx.try_send(Item::One(Box::new(f.clone()))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waiting while the queue is full (replay).
    pub fn send_many_blocking(&self, flows: &[FlowRecord]) {
        for chunk in flows.chunks(BATCH) {
            let batch: Vec<FlowRecord> = chunk.iter().filter(|f| !f.amends).cloned().collect();
            if batch.is_empty() {
                continue;
            }
            let n = batch.len() as u64;
            if self.tx.send(Item::Many(batch)).is_err() {
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// The running stage.
pub struct DetectStage {
    queue: Option<DetectQueue>,
    handle: Option<JoinHandle<DetectStats>>,
}

impl DetectStage {
    /// Starts the detectors of `cfg` (`threat_contact` with `tags`), their alerts going
    /// to `store`; owners' units named with `units` (live runs), for the alerts' evidence.
    pub fn start(
        cfg: &DetectConfig,
        tags: Option<Tagger>,
        units: Option<SharedUnits>,
        store: WriterHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Every kind's series exists from the start, at zero.
        for kind in Kind::ALL {
            metrics.detect_alerts.with_label_values(&[kind.as_str()]);
            metrics.detect_evictions.with_label_values(&[kind.as_str()]);
            metrics.detect_tracked.with_label_values(&[kind.as_str()]);
        }
        // Items of up to BATCH records: `queue_records` bounds records either way.
        let (tx, rx) = sync_channel(cfg.queue_records.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let queue = DetectQueue {
            tx,
            dropped: Arc::clone(&dropped),
        };
        let detectors = Detectors::new(cfg, tags);
        let handle = std::thread::Builder::new()
            .name("sensor-detect".into())
            .spawn(move || run(detectors, rx, units, store, &metrics, &dropped))
            .expect("spawning the detect thread");
        Self {
            queue: Some(queue),
            handle: Some(handle),
        }
    }

    pub fn queue(&self) -> DetectQueue {
        self.queue.clone().expect("running")
    }

    /// Ends the stage once every other sender is gone (the tee's clones dropped): the
    /// detectors see what is queued and their last alerts go to the writer.
    pub fn finish(mut self) -> DetectStats {
        drop(self.queue.take());
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

fn run(
    mut d: Detectors,
    rx: Receiver<Item>,
    units: Option<SharedUnits>,
    store: WriterHandle,
    metrics: &Metrics,
    dropped: &AtomicU64,
) -> DetectStats {
    let heartbeat = metrics.heartbeat("detect");
    let mut published = Published::default();
    let mut next_publish = Instant::now() + PUBLISH;
    loop {
        let mut closed = false;
        loop {
            match rx.try_recv() {
                Ok(item) => take(&mut d, item, units.as_ref()),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed || Instant::now() >= next_publish {
            next_publish = Instant::now() + PUBLISH;
            heartbeat.beat();
            let rows = d.take_rows();
            if !rows.is_empty() {
                store.send_alerts(rows);
            }
            published.publish(metrics, d.stats(), dropped.load(Ordering::Relaxed));
        }
        if closed {
            return d.stats();
        }
        std::thread::sleep(POLL);
    }
}

fn take(d: &mut Detectors, mut item: Item, units: Option<&SharedUnits>) {
    let flows: &mut [FlowRecord] = match &mut item {
        Item::One(f) => std::slice::from_mut(&mut **f),
        Item::Many(fs) => fs,
    };
    if let Some(u) = units {
        u.fill(flows);
    }
    flows.iter().for_each(|f| d.flow(f));
}

/// What the counters already hold.
#[derive(Default)]
struct Published {
    records: u64,
    dropped: u64,
    raised: [u64; 5],
    evictions: [u64; 5],
}

impl Published {
    fn publish(&mut self, m: &Metrics, s: DetectStats, dropped: u64) {
        add_delta(&m.detect_records, &mut self.records, s.records);
        add_delta(&m.detect_dropped_records, &mut self.dropped, dropped);
        for (i, kind) in Kind::ALL.iter().enumerate() {
            let c = m.detect_alerts.with_label_values(&[kind.as_str()]);
            add_delta(&c, &mut self.raised[i], s.raised[i]);
            let e = m.detect_evictions.with_label_values(&[kind.as_str()]);
            add_delta(&e, &mut self.evictions[i], s.evictions[i]);
            m.detect_tracked
                .with_label_values(&[kind.as_str()])
                .set(s.tracked[i] as i64);
        }
        m.detect_active_alerts.set(s.active_alerts as i64);
    }
}
