//! `sensor replay FILE...`: capture files through the same parser and flow table as live
//! capture, timed by the packets' own timestamps, every flow flushed at the end of each
//! file. Needs no privileges.
use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    capture::{
        file::{self, FileError},
        parse::{self, ParseError},
    },
    config::Config,
    flow::FlowTable,
    pipeline::{Pipeline, PipelineError, Sinks},
    store::{self, StoreError, WriterConfig},
};

/// What stops a replay before it reads anything. A file that cannot be read in full is
/// not one of these: it is reported in [`ReplayReport::bad_files`] and the others are read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Enrich(#[from] crate::enrich::EnrichError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// The exit statuses of `sensor replay` (and their meaning for scripts): 0 every packet of
/// every file read, stored and looked up; [`EXIT_BAD_INPUT`] some input could not be read
/// in full (a damaged or unreadable file, a link type not decoded, packets the parser gave
/// up on) and what was read is stored; [`EXIT_LOST`] flows or enrichment that were read
/// could not be kept (rows dropped or failed to write, addresses shed). 1: nothing was done
/// (the database or the configuration).
pub const EXIT_BAD_INPUT: u8 = 65;
/// See [`EXIT_BAD_INPUT`].
pub const EXIT_LOST: u8 = 74;

/// A replay's outcome: what it saw and the files it could not read in full.
#[derive(Debug)]
pub struct ReplayReport {
    pub summary: ReplaySummary,
    pub bad_files: Vec<FileError>,
}

impl ReplayReport {
    /// The exit status (see [`EXIT_BAD_INPUT`]): a loss of accepted data outranks bad input.
    pub fn exit_code(&self) -> u8 {
        let s = &self.summary;
        if s.store_dropped > 0 || s.enrich_shed > 0 {
            EXIT_LOST
        } else if !self.bad_files.is_empty() || s.malformed > 0 {
            EXIT_BAD_INPUT
        } else {
            0
        }
    }
}

/// What a replay saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplaySummary {
    pub files: u64,
    pub packets: u64,
    pub not_ip: u64,
    pub malformed: u64,
    pub unsupported_link: u64,
    pub flows: u64,
    pub store_dropped: u64,
    /// Addresses enriched, and shed (queue full, or still queued at the end).
    pub enriched: u64,
    pub enrich_shed: u64,
    /// Alerts the detectors raised.
    pub alerts: u64,
}

/// Replays `files` in order into the database `cfg.db_path`. A file that cannot be read in
/// full (damaged, or of a link type not decoded) is an error, but the files after it are
/// still read: one bad file must not hide the rest.
pub fn replay(cfg: &Config, files: &[PathBuf]) -> Result<ReplayReport, ReplayError> {
    let conn = store::open_for_writing(&cfg.db_path)?;
    let metrics = crate::metrics::Metrics::new();
    let enrich =
        crate::enrich::Prepared::new(&cfg.enrich, &cfg.db_path, std::sync::Arc::clone(&metrics))?;
    let enriching = enrich.is_some();
    // A file can wait: every sink gets every flow (their queues are waited on).
    let pipeline = Pipeline::start(
        conn,
        cfg.db_path.clone(),
        WriterConfig {
            // The same counters a live run keeps: `--metrics-on-exit` tells the truth.
            metrics: Some(std::sync::Arc::clone(&metrics)),
            // A replay keeps every flow: old captures are not old news.
            retention: None,
            // Rolled up by the next `sensor run` (top reads what isn't from flows).
            rollup: false,
            live: false,
            ..cfg.writer()
        },
        enrich,
        &cfg.ipfix,
        &cfg.enrich,
        crate::pipeline::DetectSetup::from_config(cfg)?,
        &metrics,
    )?;
    let store_stats = pipeline.store_stats();
    let sinks = pipeline.sinks();
    let mut summary = ReplaySummary::default();
    let mut failures: Vec<FileError> = Vec::new();
    for path in files {
        match replay_one(cfg, path, &sinks, &mut summary, &metrics) {
            Ok(()) => summary.files += 1,
            Err(e) => {
                tracing::error!("{e} (flows read before it were kept)");
                failures.push(e);
            }
        }
    }
    drop(sinks);
    if let Some(d) = pipeline.finish_blocking(Duration::from_millis(cfg.enrich.drain_ms)) {
        summary.alerts = d.raised.iter().sum();
    }
    if enriching {
        summary.enriched = metrics.enrich_done.get();
        // Addresses shed at the queue, and network lookups shed (a source down or
        // saturated): either way answers that were asked for are missing.
        let lookups_shed: u64 = crate::metrics::ENRICH_RESULTS
            .iter()
            .filter(|(_, results)| results.contains(&"shed"))
            .map(|(source, _)| {
                metrics
                    .enrich_lookups
                    .with_label_values(&[source, "shed"])
                    .get()
            })
            .sum();
        summary.enrich_shed = metrics.enrich_shed.with_label_values(&["queue_full"]).get()
            + metrics.enrich_shed.with_label_values(&["shutdown"]).get()
            + lookups_shed;
    }
    publish_store(&metrics, &store_stats);
    metrics.write_on_exit(cfg.metrics_on_exit.as_deref());
    summary.flows = store_stats.rows_written.load(Ordering::Relaxed);
    summary.store_dropped = store_stats.queue_dropped.load(Ordering::Relaxed)
        + store_stats.write_failed.load(Ordering::Relaxed)
        + store_stats.amendments_dropped.load(Ordering::Relaxed);
    Ok(ReplayReport {
        summary,
        bad_files: failures,
    })
}

/// The writer's totals into the metrics, once at the end (a replay starts them at zero).
fn publish_store(m: &crate::metrics::Metrics, st: &store::StoreStats) {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    m.store_rows.inc_by(load(&st.rows_written));
    m.store_batches.inc_by(load(&st.batches));
    m.store_failed_rows.inc_by(load(&st.write_failed));
    m.store_dropped_rows.inc_by(load(&st.queue_dropped));
    for (result, n) in [
        ("applied", &st.amendments_applied),
        ("missed", &st.amendments_missed),
        ("dropped", &st.amendments_dropped),
    ] {
        m.store_amendments
            .with_label_values(&[result])
            .inc_by(load(n));
    }
}

fn replay_one(
    cfg: &Config,
    path: &Path,
    sinks: &Sinks,
    summary: &mut ReplaySummary,
    metrics: &crate::metrics::Metrics,
) -> Result<(), FileError> {
    let mut table = FlowTable::new(cfg.table(), "file");
    // A file can wait for the disk: nothing is dropped.
    // Flows go to the writer in chunks: a replay outruns the disk, and chunks spare the
    // two threads a wake-up each per flow.
    const CHUNK: usize = 512;
    let mut chunk: Vec<crate::flow::FlowRecord> = Vec::with_capacity(CHUNK);
    // Counted as `sensor run` counts its packet table's records.
    let ended: Vec<(&str, prometheus::IntCounter)> = crate::metrics::END_REASONS
        .iter()
        .map(|r| (*r, metrics.flow_ended.with_label_values(&["packets", r])))
        .collect();
    let mut emit = |f: crate::flow::FlowRecord| {
        if f.amends {
            metrics.flow_amendments.inc();
        } else if let Some((_, c)) = ended.iter().find(|(r, _)| *r == f.end_reason.as_str()) {
            c.inc();
        }
        chunk.push(f);
        if chunk.len() >= CHUNK {
            sinks.send_many_blocking(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
        }
    };
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut bytes = 0u64;
    // A progress bar on a terminal, plain log lines otherwise (journald, CI, pipes).
    let bar = std::io::stderr().is_terminal().then(|| {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let (mut frame_bytes, mut parsed, mut not_ip, mut malformed) = (0u64, 0u64, 0u64, 0u64);
    let r = file::read(path, |ts_ns, link, frame| {
        bytes += frame.len() as u64 + 16;
        frame_bytes += frame.len() as u64;
        match parse::parse_with(link, frame, cfg.decap) {
            Ok(p) => {
                parsed += 1;
                table.packet(ts_ns, &p, &mut emit);
            }
            Err(ParseError::NotIp { .. }) => not_ip += 1,
            Err(_) => malformed += 1,
        }
        let every = if bar.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        if last_report.elapsed() >= every {
            last_report = Instant::now();
            let s = table.stats();
            let secs = started.elapsed().as_secs_f64();
            let flows_per_s = ((s.created as f64) / secs) as u64;
            match &bar {
                Some(bar) => {
                    bar.set_position(bytes);
                    bar.set_message(format!(
                        "{} packets, {} flows, {flows_per_s} flows/s",
                        s.packets, s.created
                    ));
                }
                None => tracing::info!(
                    file = %path.display(),
                    packets = s.packets,
                    mbytes = bytes / 1_000_000,
                    flows_per_s,
                    "replaying"
                ),
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Whatever happened, the flows read so far are kept.
    table.flush_all(&mut emit);
    sinks.send_many_blocking(chunk);
    let t = table.stats();
    summary.not_ip += not_ip;
    summary.malformed += malformed;
    // The file is this run's capture: the same counters as a live capture's.
    metrics.capture_handed_off.inc_by(parsed);
    metrics.capture_bytes.inc_by(frame_bytes);
    metrics.capture_not_ip.inc_by(not_ip);
    metrics.capture_malformed.inc_by(malformed);
    metrics.capture_packets.inc_by(parsed + not_ip + malformed);
    metrics.flow_packets.inc_by(t.packets);
    metrics
        .flow_created
        .with_label_values(&["packets"])
        .inc_by(t.created);
    let stats = r?;
    summary.packets += stats.packets;
    summary.unsupported_link += stats.unsupported_link;
    tracing::info!(
        file = %path.display(),
        packets = stats.packets,
        flows = t.created,
        secs = format!("{:.4}", started.elapsed().as_secs_f64()),
        "replayed"
    );
    if let Some(linktype) = stats.unsupported_linktype {
        return Err(FileError::UnsupportedLink {
            path: path.to_path_buf(),
            linktype,
            packets: stats.unsupported_link,
        });
    }
    Ok(())
}
