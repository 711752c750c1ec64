//! The finished-flow half of the pipeline, built the same way by `sensor run` and
//! `sensor replay`:
//!
//! ```text
//!   flow sources ──▶ Sinks (tee) ──┬──▶ store (SQLite writer thread)
//!   (kernel, merge,                ├──▶ enrich (worker pool) ──answers──▶ store
//!    packet tables)                ├──▶ ipfix (one exporter thread per collector)
//!                                  └──▶ detect (detectors' thread) ──alerts──▶ store
//! ```
//!
//! Each sink is a stage that owns its settings, metrics and heartbeat, ends when its input
//! closes and flushes on the way out. [`Pipeline::finish`] stops them in reverse order of
//! start: enrichment first (its last answers still go to the writer), then the detectors
//! (their last alerts too), then the exporters, then the writer. The writer knows nothing
//! of the other sinks.
pub mod sinks;

use std::{path::PathBuf, sync::Arc, time::Duration};

use rusqlite::Connection;

pub use sinks::Sinks;

use crate::{
    config::{EnrichConfig, IpfixConfig},
    detect::{DetectConfig, DetectStage, DetectStats},
    enrich::tags::Tagger,
    enrich::{EnrichError, Prepared, pool::Pool},
    ipfix::{Exporters, IpfixError},
    metrics::Metrics,
    store::{StoreStats, Writer, WriterConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Enrich(#[from] EnrichError),
    #[error(transparent)]
    Ipfix(#[from] IpfixError),
}

/// The running sinks.
pub struct Pipeline {
    writer: Writer,
    ipfix: Exporters,
    enrich: Option<Pool>,
    detect: Option<DetectStage>,
    sinks: Sinks,
}

/// What the detections stage needs to start: its settings and, for `threat_contact`, the
/// threat lists as tags (opened beforehand, like enrichment's sources).
pub struct DetectSetup {
    pub cfg: DetectConfig,
    pub tags: Option<Tagger>,
}

impl DetectSetup {
    /// The detections `cfg` asks for: None when off; the threat lists of `[enrich]` when
    /// enrichment is on and names them (a named directory that cannot be read is an error).
    pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Self>, PipelineError> {
        if !cfg.detect.enabled {
            return Ok(None);
        }
        let tags = if cfg.enrich.enabled && cfg.enrich.threat_dir.is_some() {
            Some(Tagger::from_sources(
                crate::enrich::geo::GeoDbs::empty(),
                crate::enrich::open_threat(&cfg.enrich)?,
                Duration::from_millis(cfg.enrich.reload_check_ms),
            ))
        } else {
            None
        };
        Ok(Some(Self {
            cfg: cfg.detect.clone(),
            tags,
        }))
    }
}

impl Pipeline {
    /// Starts the writer on `conn`, then the IPFIX exporters, then the detectors (`detect`,
    /// when on), then the enrichment pool (whose answers go to the writer). `enrich` was
    /// opened beforehand, so that a bad database or list stops the start before anything
    /// else runs.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        conn: Connection,
        db: PathBuf,
        writer: WriterConfig,
        enrich: Option<Prepared>,
        ipfix: &IpfixConfig,
        enrich_cfg: &EnrichConfig,
        detect: Option<DetectSetup>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, PipelineError> {
        // The writer, the exporters and the detectors name units alike, from one resolver.
        let units = writer.units.clone();
        let writer = Writer::spawn(conn, db, writer);
        let store = writer.handle().expect("writer open");
        let ipfix = Exporters::start(ipfix, enrich_cfg, units.clone(), metrics)?;
        let detect = detect
            .map(|d| DetectStage::start(&d.cfg, d.tags, units, store.clone(), Arc::clone(metrics)));
        let (queue, enrich) = match enrich {
            Some(e) => {
                let queue = e.queue.clone();
                let answers = store.clone();
                (
                    Some(queue),
                    Some(e.spawn(move |infos| answers.send_ip_info(infos))?),
                )
            }
            None => (None, None),
        };
        let sinks = Sinks::new(
            store,
            queue,
            ipfix.tee.clone(),
            detect.as_ref().map(DetectStage::queue),
        );
        Ok(Self {
            writer,
            ipfix,
            enrich,
            detect,
            sinks,
        })
    }

    /// Where finished flows go. Every clone must be dropped before [`Self::finish`].
    pub fn sinks(&self) -> Sinks {
        self.sinks.clone()
    }

    pub fn store_stats(&self) -> Arc<StoreStats> {
        self.writer.stats()
    }

    pub fn enrich_pool(&self) -> Option<&Pool> {
        self.enrich.as_ref()
    }

    /// Stops the sinks in reverse order of start: the pool looks up what is queued
    /// (bounded by `drain`) and hands its last answers to the writer, the detectors judge
    /// what is queued and hand over their last alerts, the exporters send what they hold,
    /// and the writer writes everything queued.
    pub async fn finish(mut self, drain: Duration) -> Option<DetectStats> {
        if let Some(pool) = self.enrich.take() {
            pool.finish(drain).await;
        }
        self.finish_sinks()
    }

    /// [`Self::finish`] for callers outside the async runtime (`replay`).
    pub fn finish_blocking(mut self, drain: Duration) -> Option<DetectStats> {
        if let Some(pool) = self.enrich.take() {
            pool.finish_blocking(drain);
        }
        self.finish_sinks()
    }

    /// After the pool: the detectors, the exporters, then the writer. Returns what the
    /// detectors counted (none when off).
    fn finish_sinks(mut self) -> Option<DetectStats> {
        drop(self.sinks);
        let detected = self.detect.take().map(DetectStage::finish);
        self.ipfix.finish();
        self.writer.finish();
        detected
    }
}
