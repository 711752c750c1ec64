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
    store::{self, StoreError, Writer, WriterConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The flows read before the damage were kept.
    #[error("{0} (flows read before it were kept)")]
    File(#[from] FileError),
    /// Several files were given and some could not be read in full; each was logged as it
    /// happened and the others were read.
    #[error(
        "{failed} of {files} files could not be read in full (each named above); the flows read were kept"
    )]
    Files { failed: usize, files: usize },
    #[error(transparent)]
    Enrich(#[from] crate::enrich::EnrichError),
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
}

/// Replays `files` in order into the database `cfg.db_path`. A file that cannot be read in
/// full (damaged, or of a link type not decoded) is an error, but the files after it are
/// still read: one bad file must not hide the rest.
pub fn replay(cfg: &Config, files: &[PathBuf]) -> Result<ReplaySummary, ReplayError> {
    let conn = store::open_for_writing(&cfg.db_path)?;
    let metrics = crate::metrics::Metrics::new();
    let enrich =
        crate::enrich::Prepared::new(&cfg.enrich, &cfg.db_path, std::sync::Arc::clone(&metrics))?;
    let writer = Writer::spawn(
        conn,
        cfg.db_path.clone(),
        WriterConfig {
            enrich: enrich.as_ref().map(|e| e.queue.clone()),
            // A replay keeps every flow: old captures are not old news.
            retention: None,
            // Rolled up by the next `sensor run` (top reads what isn't from flows).
            rollup: false,
            ..cfg.writer()
        },
    );
    let store_stats = writer.stats();
    let pool = match enrich {
        Some(e) => {
            let handle = writer.handle().expect("writer open");
            Some(e.spawn(move |infos| handle.send_ip_info(infos))?)
        }
        None => None,
    };
    let mut summary = ReplaySummary::default();
    let mut failures: Vec<FileError> = Vec::new();
    for path in files {
        match replay_one(cfg, path, &writer, &mut summary) {
            Ok(()) => summary.files += 1,
            Err(e) => {
                if files.len() > 1 {
                    tracing::error!("{e} (flows read before it were kept)");
                }
                failures.push(e);
            }
        }
    }
    if let Some(pool) = pool {
        pool.finish_blocking(Duration::from_millis(cfg.enrich.drain_ms));
        summary.enriched = metrics.enrich_done.get();
        summary.enrich_shed = metrics.enrich_shed.with_label_values(&["queue_full"]).get()
            + metrics.enrich_shed.with_label_values(&["shutdown"]).get();
    }
    writer.finish();
    metrics.write_on_exit(cfg.metrics_on_exit.as_deref());
    summary.flows = store_stats.rows_written.load(Ordering::Relaxed);
    summary.store_dropped = store_stats.queue_dropped.load(Ordering::Relaxed)
        + store_stats.write_failed.load(Ordering::Relaxed);
    match failures.len() {
        0 => Ok(summary),
        1 if files.len() == 1 => Err(ReplayError::File(failures.remove(0))),
        failed => Err(ReplayError::Files {
            failed,
            files: files.len(),
        }),
    }
}

fn replay_one(
    cfg: &Config,
    path: &Path,
    writer: &Writer,
    summary: &mut ReplaySummary,
) -> Result<(), FileError> {
    let mut table = FlowTable::new(cfg.table(), "file");
    // A file can wait for the disk: nothing is dropped.
    // Flows go to the writer in chunks: a replay outruns the disk, and chunks spare the
    // two threads a wake-up each per flow.
    const CHUNK: usize = 512;
    let mut chunk: Vec<crate::flow::FlowRecord> = Vec::with_capacity(CHUNK);
    let mut emit = |f| {
        chunk.push(f);
        if chunk.len() >= CHUNK {
            writer.send_many_blocking(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
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
    let r = file::read(path, |ts_ns, link, frame| {
        bytes += frame.len() as u64 + 16;
        match parse::parse_with(link, frame, cfg.decap) {
            Ok(p) => table.packet(ts_ns, &p, &mut emit),
            Err(ParseError::NotIp { .. }) => summary.not_ip += 1,
            Err(_) => summary.malformed += 1,
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
    writer.send_many_blocking(chunk);
    let stats = r?;
    summary.packets += stats.packets;
    summary.unsupported_link += stats.unsupported_link;
    let t = table.stats();
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
