//! `sensor replay FILE...`: capture files through the same parser and flow table as live
//! capture, timed by the packets' own timestamps, every flow flushed at the end of each
//! file. Needs no privileges.
use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

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
}

/// Replays `files` in order into the database `cfg.db_path`.
pub fn replay(cfg: &Config, files: &[PathBuf]) -> Result<ReplaySummary, ReplayError> {
    let conn = store::open_for_writing(&cfg.db_path)?;
    let writer = Writer::spawn(
        conn,
        cfg.db_path.clone(),
        WriterConfig {
            batch_rows: cfg.batch_rows,
            flush: Duration::from_millis(cfg.flush_ms),
            queue_rows: cfg.store_queue_rows,
        },
    );
    let store_stats = writer.stats();
    let mut summary = ReplaySummary::default();
    let mut result = Ok(());
    for path in files {
        match replay_one(cfg, path, &writer, &mut summary) {
            Ok(()) => summary.files += 1,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    writer.finish();
    summary.flows = store_stats.rows_written.load(Ordering::Relaxed);
    summary.store_dropped = store_stats.queue_dropped.load(Ordering::Relaxed)
        + store_stats.write_failed.load(Ordering::Relaxed);
    result.map(|()| summary).map_err(ReplayError::from)
}

fn replay_one(
    cfg: &Config,
    path: &Path,
    writer: &Writer,
    summary: &mut ReplaySummary,
) -> Result<(), FileError> {
    let mut table = FlowTable::new(cfg.table(), "file");
    // A file can wait for the disk: nothing is dropped.
    let mut emit = |f| writer.send_blocking(f);
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut bytes = 0u64;
    let r = file::read(path, |ts_ns, link, frame| {
        bytes += frame.len() as u64;
        match parse::parse(link, frame) {
            Ok(p) => table.packet(ts_ns, &p, &mut emit),
            Err(ParseError::NotIp { .. }) => summary.not_ip += 1,
            Err(_) => summary.malformed += 1,
        }
        if last_log.elapsed() >= Duration::from_secs(2) {
            last_log = Instant::now();
            let s = table.stats();
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                file = %path.display(),
                packets = s.packets,
                mbytes = bytes / 1_000_000,
                flows_per_s = ((s.created as f64) / secs) as u64,
                "replaying"
            );
        }
    });
    // Whatever happened, the flows read so far are kept.
    table.flush_all(&mut emit);
    let stats = r?;
    summary.packets += stats.packets;
    summary.unsupported_link += stats.unsupported_link;
    let t = table.stats();
    tracing::info!(
        file = %path.display(),
        packets = stats.packets,
        flows = t.created,
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "replayed"
    );
    if stats.unsupported_link > 0 {
        tracing::warn!(
            file = %path.display(),
            packets = stats.unsupported_link,
            "packets on interfaces of a link type we do not decode were skipped"
        );
    }
    Ok(())
}
