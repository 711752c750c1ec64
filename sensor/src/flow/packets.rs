//! The live packet flow table's thread: batches of captured packets in (each batch goes
//! back to the capture threads' pool once accounted), flows out; sweeps timeouts on
//! wall-clock time when packets are scarce; flushes every flow when its input closes.
use std::{
    sync::{Arc, mpsc::RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{FlowRecord, FlowTable, TableConfig, table::TableStats};
use crate::{
    capture::batch::BatchReceiver,
    metrics::{Metrics, add_delta},
};

pub fn spawn(
    cfg: TableConfig,
    rx: BatchReceiver,
    metrics: Option<Arc<Metrics>>,
    mut emit: impl FnMut(FlowRecord) + Send + 'static,
) -> JoinHandle<TableStats> {
    std::thread::Builder::new()
        .name("sensor-flows".into())
        .spawn(move || {
            let mut table = FlowTable::new(cfg, "capture");
            let heartbeat = metrics.as_ref().map(|m| m.heartbeat("flow"));
            let mut created = 0u64;
            let mut packets = 0u64;
            // The counters resolved once: a label lookup takes a lock, and this runs per flow.
            let ended: Vec<(&str, prometheus::IntCounter)> = metrics
                .iter()
                .flat_map(|m| {
                    crate::metrics::END_REASONS
                        .iter()
                        .map(|r| (*r, m.flow_ended.with_label_values(&["packets", r])))
                })
                .collect();
            let mut emit = |f: FlowRecord| {
                if let Some(m) = &metrics {
                    if f.amends {
                        m.flow_amendments.inc();
                    } else {
                        let reason = f.end_reason.as_str();
                        match ended.iter().find(|(r, _)| *r == reason) {
                            Some((_, c)) => c.inc(),
                            None => m.flow_ended.with_label_values(&["packets", reason]).inc(),
                        }
                    }
                }
                emit(f);
            };
            let mut last_sweep = Instant::now();
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(batch) => {
                        for (ts, p) in &batch {
                            table.packet(*ts, p, &mut emit);
                        }
                        rx.recycle(batch);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                // Once a second of wall time, busy or not, so ended flows reach the store.
                if last_sweep.elapsed() >= Duration::from_secs(1) {
                    last_sweep = Instant::now();
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    table.sweep(now, &mut emit);
                    if let (Some(m), Some(h)) = (&metrics, &heartbeat) {
                        h.beat();
                        m.flow_active
                            .with_label_values(&["packets"])
                            .set(table.active() as i64);
                        add_delta(
                            &m.flow_created.with_label_values(&["packets"]),
                            &mut created,
                            table.stats().created,
                        );
                        add_delta(&m.flow_packets, &mut packets, table.stats().packets);
                    }
                }
            }
            table.flush_all(&mut emit);
            if let Some(m) = &metrics {
                m.flow_active.with_label_values(&["packets"]).set(0);
                add_delta(
                    &m.flow_created.with_label_values(&["packets"]),
                    &mut created,
                    table.stats().created,
                );
                add_delta(&m.flow_packets, &mut packets, table.stats().packets);
            }
            table.stats()
        })
        .expect("spawning the flow table thread")
}
