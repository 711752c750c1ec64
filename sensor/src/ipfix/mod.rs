//! IPFIX export of finished flows to collectors (nfcapd, nfacctd, GoFlow2...).
pub mod config;
pub mod datagrams;
pub mod encode;
pub mod exporter;

use std::thread::JoinHandle;

use crate::{
    enrich::config::EnrichConfig,
    flow::{FlowRecord, unit::SharedUnits},
    metrics::Metrics,
};
use config::IpfixConfig;

pub use exporter::IpfixError;

/// The pipeline's side of every collector: each finished flow is offered to each one.
#[derive(Clone, Default)]
pub struct Tee(Vec<exporter::Sender>);

impl Tee {
    /// Without waiting: a full collector queue drops the flow for that collector, counted.
    pub fn offer(&self, f: &FlowRecord) {
        for s in &self.0 {
            s.offer(f);
        }
    }

    /// Waiting while a collector's queue is full: for replays, which can wait.
    pub fn send_many_blocking(&self, flows: &[FlowRecord]) {
        for s in &self.0 {
            s.send_many_blocking(flows);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The running exporters, one per collector.
#[derive(Default)]
pub struct Exporters {
    pub tee: Tee,
    threads: Vec<JoinHandle<()>>,
}

impl Exporters {
    /// One exporter per configured collector; none when there are none. Each tags records
    /// from its own copy of the local enrichment sources `enrich` names (none when
    /// enrichment is off), and names owners' units with `units` (live runs).
    pub fn start(
        cfg: &IpfixConfig,
        enrich: &EnrichConfig,
        units: Option<SharedUnits>,
        metrics: &Metrics,
    ) -> Result<Self, IpfixError> {
        let mut out = Self::default();
        for url in &cfg.collectors {
            let c = exporter::Collector::parse(url)?;
            tracing::info!(collector = %c.url, addr = %c.addr, "exporting IPFIX");
            let tags = crate::enrich::tags::Tagger::open(enrich).map_err(|e| IpfixError::Tags {
                url: c.url.clone(),
                detail: e.to_string(),
            })?;
            let e = exporter::spawn(c, cfg, tags, units.clone(), metrics)?;
            out.tee.0.push(e.sender);
            out.threads.push(e.thread);
        }
        Ok(out)
    }

    /// Closes the queues (every clone of the tee must be gone) and waits for each exporter
    /// to send what it holds.
    pub fn finish(self) {
        drop(self.tee);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
