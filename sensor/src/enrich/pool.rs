//! The enrichment worker: takes addresses from the queue in batches, reads what `ip_info`
//! already holds for them, runs the cascade, and hands the answers to the store.
//!
//! One batch runs at a time; inside it, Cymru chunks and reverse lookups run concurrently
//! (bounded by their own limits). While a batch waits on the network, the queue fills and
//! further addresses are shed at the door ([`super::queue`]): the worker's slowness never
//! reaches capture. Between batches the MaxMind files and threat lists are checked for
//! changes and reloaded.
//!
//! Shutdown: [`Pool::finish`] lets the worker look up what is queued until a deadline;
//! what is left is counted as shed (`reason="shutdown"`).
use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    cascade::{IpInfo, Quiet, Sources, ms},
    queue::EnrichQueue,
};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Addresses per batch at most (Cymru takes 500 a connection).
    pub batch_ips: usize,
    /// How long to gather a batch after its first address.
    pub batch_wait: Duration,
    /// How often the databases and lists are checked for changes.
    pub reload_check: Duration,
    /// Where earlier answers are (`ip_info`); None: nothing is known before.
    pub db_path: Option<PathBuf>,
}

/// The worker runs on a runtime of its own, on its own thread: a batch's database reads
/// and in-memory lookups never take time from the thread that drains the ring buffer.
pub struct Pool {
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<Instant>>,
    replace: mpsc::UnboundedSender<Sources>,
    task: tokio::task::JoinHandle<()>,
}

impl Pool {
    /// Starts the worker. `out` receives each batch's answers (the store's writer).
    pub fn spawn(
        sources: Sources,
        rx: mpsc::Receiver<IpAddr>,
        queue: EnrichQueue,
        cfg: PoolConfig,
        metrics: Arc<Metrics>,
        out: impl Fn(Vec<IpInfo>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sensor-enrich")
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let (replace, replaced) = mpsc::unbounded_channel();
        let control = Control { stopped, replaced };
        let task = rt.spawn(work(sources, rx, queue, cfg, metrics, control, out));
        Ok(Self {
            rt: Some(rt),
            stop: Some(stop),
            replace,
            task,
        })
    }

    /// Swaps in newly opened sources (SIGHUP) between two batches; every address is
    /// looked up again as its flows come back.
    pub fn replace_sources(&self, sources: Sources) {
        let _ = self.replace.send(sources);
    }

    /// Looks up what is queued until `drain` has passed, sheds the rest, and waits for the
    /// worker to end.
    pub async fn finish(mut self, drain: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Instant::now() + drain);
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "enrichment worker failed");
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// [`Pool::finish`] from outside any runtime (replay).
    pub fn finish_blocking(mut self, drain: Duration) {
        let Some(rt) = self.rt.take() else { return };
        rt.block_on(async {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(Instant::now() + drain);
            }
            if let Err(e) = (&mut self.task).await {
                tracing::error!(error = %e, "enrichment worker failed");
            }
        });
        rt.shutdown_background();
    }
}

impl Drop for Pool {
    /// A pool dropped without `finish` (start-up failed after it was spawned) stops its
    /// runtime without blocking: dropping a runtime inside another would panic.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What the agent tells the worker: stop by a deadline, or take new sources.
struct Control {
    stopped: oneshot::Receiver<Instant>,
    replaced: mpsc::UnboundedReceiver<Sources>,
}

/// Reads earlier answers for a batch from `ip_info`.
struct Prior {
    conn: Option<rusqlite::Connection>,
}

impl Prior {
    fn open(path: Option<&PathBuf>) -> Self {
        let conn = path.and_then(|p| match crate::store::open_for_reading(p) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "enrichment starts without earlier answers");
                None
            }
        });
        Self { conn }
    }

    fn load(&self, ips: &[IpAddr]) -> HashMap<IpAddr, IpInfo> {
        let Some(conn) = &self.conn else {
            return HashMap::new();
        };
        match crate::store::ip_info::load(conn, ips) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading ip_info");
                HashMap::new()
            }
        }
    }
}

/// The earliest time any of the record's answers expires (by the TTLs of the sources
/// that gave them, which a reload may change).
pub fn next_due(info: &IpInfo, sources: &Sources) -> i64 {
    let mut due = info.checked_ms.saturating_add(ms(sources.ttls.mmdb));
    if sources.cymru.is_some()
        && let Some(d) = info.cymru_due_ms
    {
        due = due.min(d);
    }
    if sources.rdns.is_some()
        && let Some(d) = info.rdns_due_ms
    {
        due = due.min(d);
    }
    due
}

async fn work(
    mut sources: Sources,
    mut rx: mpsc::Receiver<IpAddr>,
    queue: EnrichQueue,
    cfg: PoolConfig,
    metrics: Arc<Metrics>,
    control: Control,
    out: impl Fn(Vec<IpInfo>),
) {
    let Control {
        mut stopped,
        mut replaced,
    } = control;
    let heartbeat = metrics.heartbeat("enrich");
    let prior = Prior::open(cfg.db_path.as_ref());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_reload = Instant::now();
    let mut deadline: Option<Instant> = None;
    let mut batch: Vec<IpAddr> = Vec::with_capacity(cfg.batch_ips);
    loop {
        batch.clear();
        if let Some(d) = deadline {
            // Draining: whatever is queued, until the deadline.
            if Instant::now() >= d {
                break;
            }
            while batch.len() < cfg.batch_ips {
                match rx.try_recv() {
                    Ok(ip) => batch.push(ip),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, cfg.batch_ips) => {
                    if n == 0 {
                        break;
                    }
                    // Gather a fuller batch for a moment: Cymru and the database reads
                    // are cheaper in bulk.
                    let until = tokio::time::Instant::now() + cfg.batch_wait;
                    while batch.len() < cfg.batch_ips {
                        let more = cfg.batch_ips - batch.len();
                        match tokio::time::timeout_at(until, rx.recv_many(&mut batch, more)).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
                _ = tick.tick() => {
                    heartbeat.beat();
                    if last_reload.elapsed() >= cfg.reload_check {
                        last_reload = Instant::now();
                        reload(&mut sources, &queue, &metrics);
                        // Expired Cymru prefixes go too: the cache would otherwise keep
                        // every prefix ever answered.
                        sources
                            .cymru_cache
                            .lock()
                            .expect("cache lock")
                            .purge(Instant::now());
                    }
                    continue;
                }
                d = &mut stopped => {
                    deadline = Some(d.unwrap_or_else(|_| Instant::now()));
                    continue;
                }
                Some(new) = replaced.recv() => {
                    sources = new;
                    queue.forget_all();
                    tracing::info!("enrichment sources reloaded");
                    continue;
                }
            }
        }
        let known = prior.load(&batch);
        let lookup = sources.enrich(&batch, &known, &Quiet);
        tokio::pin!(lookup);
        let answers = loop {
            // A batch can wait on the network for a while: keep beating, and give up at
            // the shutdown deadline.
            let cut = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                a = &mut lookup => break Some(a),
                _ = tick.tick() => heartbeat.beat(),
                _ = cut => break None,
                d = &mut stopped, if deadline.is_none() => {
                    deadline = Some(d.unwrap_or_else(|_| Instant::now()));
                }
            }
        };
        match answers {
            Some(answers) => {
                for info in &answers {
                    queue.answered(info.ip, next_due(info, &sources));
                }
                metrics.enrich_done.inc_by(answers.len() as u64);
                metrics.enrich_queue.sub(answers.len() as i64);
                out(answers);
            }
            None => {
                shed(&metrics, batch.len());
                break;
            }
        }
    }
    // Whatever is still queued is shed; later offers find the queue closed.
    rx.close();
    let mut left = 0;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    shed(&metrics, left);
}

fn shed(metrics: &Metrics, n: usize) {
    if n > 0 {
        metrics
            .enrich_shed
            .with_label_values(&["shutdown"])
            .inc_by(n as u64);
        metrics.enrich_queue.sub(n as i64);
        tracing::info!(
            addresses = n,
            "enrichment stopped with addresses still queued"
        );
    }
}

fn reload(sources: &mut Sources, queue: &EnrichQueue, metrics: &Metrics) {
    let mut changed = false;
    for (path, result) in sources.geo.reload_changed() {
        match result {
            Ok(()) => {
                tracing::info!(path = %path.display(), "reloaded MaxMind database");
                metrics
                    .enrich_reloads
                    .with_label_values(&["mmdb", "ok"])
                    .inc();
                changed = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the previous MaxMind database");
                metrics
                    .enrich_reloads
                    .with_label_values(&["mmdb", "failed"])
                    .inc();
            }
        }
    }
    match sources.threat.reload_if_changed() {
        Ok(true) => {
            tracing::info!("reloaded threat lists");
            metrics
                .enrich_reloads
                .with_label_values(&["threat", "ok"])
                .inc();
            changed = true;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "keeping the previous threat lists");
            metrics
                .enrich_reloads
                .with_label_values(&["threat", "failed"])
                .inc();
        }
    }
    if changed {
        queue.forget_all();
    }
}
