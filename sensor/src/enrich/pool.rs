//! The enrichment worker: takes addresses from the queue in batches, reads what `ip_info`
//! already holds for them, runs the in-memory pass and hands its answers to the store at
//! once; then starts the network passes (Cymru, reverse DNS) as tasks of their own, which
//! amend the rows when they are done.
//!
//! The in-memory pass never waits on the network: a hung DNS server or whois costs its own
//! fields, not the batch. Each network source has at most [`MAX_IN_FLIGHT`] batches in
//! flight; a batch beyond that is not asked of that source (policy: shed, counted as
//! `sensor_enrich_lookups_total{result="shed"}`, asked again after the retry interval),
//! so a stuck source can't pile up tasks. Between batches the MaxMind files and threat
//! lists are checked for changes and reloaded.
//!
//! Shutdown: [`Pool::finish`] lets the worker take what is queued and wait for network
//! passes until a deadline; queued addresses left are counted as shed
//! (`reason="shutdown"`), network lookups left as `result="shed"`.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    Source,
    cascade::{Fields, IpInfo, IpUpdate, Quiet, Remote, Sources, ms},
    queue::EnrichQueue,
    unix_ms,
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
        out: impl Fn(Vec<IpUpdate>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        // Two workers: the batches' in-memory pass never queues behind the resolver's and
        // whois' tasks.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
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

/// Batches of one network source in flight at once, at most.
pub const MAX_IN_FLIGHT: usize = 4;

/// A network pass in flight: its addresses, so that a pass cut at shutdown is counted.
struct InFlight {
    source: Source,
    /// Still to answer; emptied when the pass is done.
    infos: Vec<IpInfo>,
    remote: Remote,
}

impl Drop for InFlight {
    /// Aborted at the shutdown deadline: the lookups were not made.
    fn drop(&mut self) {
        if !self.infos.is_empty() {
            let _ = self
                .remote
                .shed(self.source, std::mem::take(&mut self.infos));
        }
    }
}

/// Starts the network pass of `source` over `infos` (or sheds it: too many in flight).
fn start_remote(
    tasks: &mut tokio::task::JoinSet<Source>,
    in_flight: &mut HashMap<Source, usize>,
    source: Source,
    infos: Vec<IpInfo>,
    remote: &Remote,
    queue: &EnrichQueue,
    out: &Arc<dyn Fn(Vec<IpUpdate>) + Send + Sync>,
) {
    if infos.is_empty() {
        return;
    }
    let fields = match source {
        Source::Rdns => Fields::Rdns,
        _ => Fields::Cymru,
    };
    let busy = in_flight.entry(source).or_insert(0);
    if *busy >= MAX_IN_FLIGHT {
        // Not asked: counted, the row left as it is, and offered again after the retry
        // interval.
        let shed = remote.shed(source, infos);
        answered(queue, &shed, fields);
        return;
    }
    *busy += 1;
    let mut guard = InFlight {
        source,
        infos,
        remote: remote.clone(),
    };
    let (queue, out) = (queue.clone(), Arc::clone(out));
    tasks.spawn(async move {
        let infos = guard.infos.clone();
        let done = match source {
            Source::Rdns => guard.remote.rdns(infos, &Quiet).await,
            _ => guard.remote.cymru(infos, &Quiet).await,
        };
        guard.infos.clear();
        answered(&queue, &done, fields);
        // Lookups shed by the breaker were not made: their rows stay as they are.
        let asked: Vec<IpInfo> = done
            .into_iter()
            .filter(|i| fields != Fields::Rdns || i.rdns_status.as_deref() != Some("shed"))
            .collect();
        if !asked.is_empty() {
            out(IpUpdate::wrap(asked, fields));
        }
        source
    });
}

/// Tells the queue when a network pass's addresses are next due (it keeps the earliest).
fn answered(queue: &EnrichQueue, infos: &[IpInfo], fields: Fields) {
    for info in infos {
        let due = match fields {
            Fields::Rdns => info.rdns_due_ms,
            _ => info.cymru_due_ms,
        };
        if let Some(due) = due {
            queue.answered_by(info.ip, due);
        }
    }
}

async fn work(
    mut sources: Sources,
    mut rx: mpsc::Receiver<IpAddr>,
    queue: EnrichQueue,
    cfg: PoolConfig,
    metrics: Arc<Metrics>,
    control: Control,
    out: impl Fn(Vec<IpUpdate>) + Send + Sync + 'static,
) {
    let out: Arc<dyn Fn(Vec<IpUpdate>) + Send + Sync> = Arc::new(out);
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
    let mut tasks: tokio::task::JoinSet<Source> = tokio::task::JoinSet::new();
    let mut in_flight: HashMap<Source, usize> = HashMap::new();
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
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(source) = done
                        && let Some(n) = in_flight.get_mut(&source)
                    {
                        *n = n.saturating_sub(1);
                    }
                    continue;
                }
                _ = tick.tick() => {
                    heartbeat.beat();
                    crate::log_throttle::report(false);
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
        let answers = sources.local(&batch, &known, &Quiet);
        let remote = sources.remote();
        let (cymru_want, rdns_want) = remote.wants(&answers, unix_ms());
        let mut waits = vec![false; answers.len()];
        for &i in cymru_want.iter().chain(&rdns_want) {
            waits[i] = true;
        }
        // Addresses with a network pass to come stay "in progress" in the queue's set
        // until it is done; the others are known until their earliest answer expires.
        for (info, waits) in answers.iter().zip(&waits) {
            if !waits {
                queue.answered(info.ip, next_due(info, &sources));
            }
        }
        let pick = |want: &[usize]| want.iter().map(|&i| answers[i].clone()).collect();
        let (cymru, rdns): (Vec<IpInfo>, Vec<IpInfo>) = (pick(&cymru_want), pick(&rdns_want));
        metrics.enrich_done.inc_by(answers.len() as u64);
        metrics.enrich_queue.sub(answers.len() as i64);
        out(IpUpdate::wrap(answers, Fields::Local));
        for (source, infos) in [(Source::Cymru, cymru), (Source::Rdns, rdns)] {
            start_remote(
                &mut tasks,
                &mut in_flight,
                source,
                infos,
                &remote,
                &queue,
                &out,
            );
        }
    }
    // Whatever is still queued is shed; later offers find the queue closed.
    rx.close();
    let mut left = 0;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    shed(&metrics, left);
    // Network passes still running get until the deadline (they are bounded by their own
    // timeouts); the rest are cut, and counted by their guards.
    let until = deadline.unwrap_or_else(Instant::now);
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = tick.tick() => heartbeat.beat(),
            _ = tokio::time::sleep_until(until.into()) => break,
        }
    }
    if !tasks.is_empty() {
        tracing::info!(
            passes = tasks.len(),
            "network lookups still running at the shutdown deadline were cut"
        );
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    // What the rate limit held back since its last report.
    crate::log_throttle::report(true);
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
                tracing::error!(error = %e, "keeping the previous MaxMind database");
                metrics
                    .enrich_reloads
                    .with_label_values(&["mmdb", "failed"])
                    .inc();
                metrics
                    .enrich_source_errors
                    .with_label_values(&["mmdb"])
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
            tracing::error!(error = %e, "keeping the previous threat lists");
            metrics
                .enrich_reloads
                .with_label_values(&["threat", "failed"])
                .inc();
            metrics
                .enrich_source_errors
                .with_label_values(&["threat"])
                .inc();
        }
    }
    if changed {
        queue.forget_all();
    }
}
