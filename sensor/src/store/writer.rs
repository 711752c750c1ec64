//! The writer thread: finished flows in, batched transactions out.
//!
//! The ring-buffer reader must never wait on the disk, so it hands flows over with
//! [`Writer::try_send`]. Full-queue policy: the newest flow is dropped and counted in
//! [`StoreStats::queue_dropped`]; the queue bound (`store_queue_rows`) is what a disk stall
//! may cost in memory. The thread ends when every sender is gone, after writing what it holds.
//! While flows keep coming the thread looks at its queue once a tick ([`crate::pace`]), so
//! the stages that send to it do not wake it once a flow.
//!
//! When a write fails (disk full, read-only file system, a lock held too long) the flows
//! are held in memory, up to `held_rows`, and written again every second; capture never
//! notices. Past the bound the oldest held flows are dropped and counted. Writing resumes
//! by itself when the disk allows. Between batches the thread prunes old flows
//! ([`super::retention`]).
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, params};

use super::{
    StoreError,
    alerts::AlertRow,
    amend::{self, Amendable, Outcome},
    info::IpUpdate,
};
use crate::{flow::FlowRecord, gate::Gate, metrics::Metrics};

/// What the writer takes in: flows, and enrichment answers for `ip_info`.
#[expect(
    clippy::large_enum_variant,
    reason = "flows are nearly every row; boxing them would allocate once a flow"
)]
enum Row {
    Flow(FlowRecord),
    /// Several flows at once, from a source that can wait (replay).
    Flows(Vec<FlowRecord>),
    Ip(Vec<IpUpdate>),
    /// New and updated alerts from the detectors.
    Alerts(Vec<AlertRow>),
}

/// The sending side, shared by the `Writer` and its handles.
#[derive(Clone)]
struct Queue {
    tx: Sender<Row>,
    gate: Arc<Gate>,
}

#[derive(Clone)]
pub struct WriterConfig {
    pub batch_rows: usize,
    pub flush: Duration,
    pub queue_rows: usize,
    /// Heartbeat and write-duration histogram (`sensor run`; replay has none).
    pub metrics: Option<Arc<Metrics>>,
    /// Flows kept in memory while writes fail (disk full, read-only); beyond it the oldest
    /// are dropped and counted as failed.
    pub held_rows: usize,
    /// Pruning of old flows (`sensor run`); None: keep everything (replay).
    pub retention: Option<super::retention::Retention>,
    /// How often retention looks for work when there was none.
    pub prune_every: Duration,
    /// Roll flows up for `sensor top` ([`super::rollup`]) when there is nothing to write.
    pub rollup: bool,
    /// How often the rollup looks for work when it was caught up.
    pub rollup_every: Duration,
    /// A live run (`sensor run`): flows end now, so close→row latency is observed; a
    /// replay's flows ended long ago.
    pub live: bool,
    /// How long (in the flows' own time) a closed TCP connection's row may still be amended
    /// with late packets ([`super::amend`]): the packet table's `close_linger` and a margin.
    pub amend_window: Duration,
    /// Names each owner's unit from its cgroup id as its flow is taken off the queue: every
    /// finished record passes here, merged or not, and on this thread a walk of the cgroup
    /// tree delays no capture or ring-buffer reading (`sensor run`; None for replay, whose
    /// records have no cgroup ids). Shared with the other sinks that write units.
    pub units: Option<crate::flow::unit::SharedUnits>,
}

impl WriterConfig {
    /// Batching as configured; no metrics, no retention.
    pub fn new(batch_rows: usize, flush: Duration, queue_rows: usize) -> Self {
        Self {
            batch_rows,
            flush,
            queue_rows,
            metrics: None,
            held_rows: 100_000,
            retention: None,
            prune_every: Duration::from_secs(60),
            rollup: false,
            rollup_every: Duration::from_secs(10),
            amend_window: Duration::from_secs(7),
            live: false,
            units: None,
        }
    }
}

/// Counters shared with the rest of the agent.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Flows taken into the queue.
    pub accepted: AtomicU64,
    pub rows_written: AtomicU64,
    pub batches: AtomicU64,
    /// Flows dropped because the writer's queue was full.
    pub queue_dropped: AtomicU64,
    /// Flows lost because writes failed for longer than the held buffer could bridge (or
    /// still failed at shutdown).
    pub write_failed: AtomicU64,
    /// Amendments (late packets of a written connection) added to their row, and those
    /// that found no row (it was dropped, pruned, or the amendment came too late).
    pub amendments_applied: AtomicU64,
    pub amendments_missed: AtomicU64,
    /// Amendments dropped: the writer's queue was full, or their write failed for longer
    /// than the held buffer could bridge.
    pub amendments_dropped: AtomicU64,
    /// `ip_info` row updates written (one per pass that answered an address), and lost
    /// (queue full or a failed transaction).
    pub ip_rows_written: AtomicU64,
    pub ip_rows_dropped: AtomicU64,
    /// `alerts` row writes (new or updated), and those lost (a failed transaction, or
    /// writes failing at the time).
    pub alert_rows_written: AtomicU64,
    pub alert_rows_dropped: AtomicU64,
}

pub struct Writer {
    tx: Option<Queue>,
    handle: Option<JoinHandle<()>>,
    stats: Arc<StoreStats>,
}

/// A sender for other threads (the packet flow table); the writer ends when the `Writer`
/// and every handle are gone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Queue,
    stats: Arc<StoreStats>,
}

fn try_send(q: &Queue, stats: &StoreStats, flow: FlowRecord) {
    let amends = flow.amends;
    if q.gate.try_reserve() {
        if q.tx.send(Row::Flow(flow)).is_ok() {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.gate.taken(1);
    }
    if amends {
        stats.amendments_dropped.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.queue_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Queues flows, waiting while the queue is full.
fn send_many_blocking(q: &Queue, stats: &StoreStats, flows: Vec<FlowRecord>) {
    let n = flows.len();
    if n == 0 {
        return;
    }
    q.gate.reserve_blocking(n);
    if q.tx.send(Row::Flows(flows)).is_err() {
        q.gate.taken(n);
        stats.queue_dropped.fetch_add(n as u64, Ordering::Relaxed);
    } else {
        stats.accepted.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl WriterHandle {
    /// Queues without waiting; counts the flow as dropped when the queue is full.
    pub fn try_send(&self, flow: FlowRecord) {
        try_send(&self.tx, &self.stats, flow);
    }

    /// Queues flows, waiting while the queue is full (see [`Writer::send_blocking`]).
    pub fn send_many_blocking(&self, flows: Vec<FlowRecord>) {
        send_many_blocking(&self.tx, &self.stats, flows);
    }

    /// Queues enrichment answers without waiting; counted as dropped when the queue is
    /// full (the addresses are looked up again when next seen).
    pub fn send_ip_info(&self, infos: Vec<IpUpdate>) {
        let n = infos.len() as u64;
        if self.tx.tx.send(Row::Ip(infos)).is_err() {
            self.stats.ip_rows_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Queues alert rows; they are few, so they never wait for room (the queue's bound is
    /// the flows').
    pub fn send_alerts(&self, rows: Vec<AlertRow>) {
        let n = rows.len() as u64;
        if self.tx.tx.send(Row::Alerts(rows)).is_err() {
            self.stats
                .alert_rows_dropped
                .fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The flow insert (public for the benchmark's bare-loop baseline).
pub const INSERT: &str = "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port,
    dst_ip, dst_port, src_payload_bytes, dst_payload_bytes, src_pid, src_comm, dst_pid,
    dst_comm, srtt_us, retransmits, end_reason, sources, src_packets, dst_packets, src_bytes,
    dst_bytes, src_tcp_flags, dst_tcp_flags, tunnel, tunnel_src_ip, tunnel_dst_ip, tunnel_id,
    src_uid, src_unit, dst_uid, dst_unit, src_attr, dst_attr)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
    ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33)";

impl Writer {
    /// Starts the thread on an open connection (see [`super::open_for_writing`]).
    pub fn spawn(conn: Connection, path: PathBuf, cfg: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(Gate::new(cfg.queue_rows));
        let tx = Queue {
            tx,
            gate: Arc::clone(&gate),
        };
        let stats = Arc::new(StoreStats::default());
        let thread_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("sensor-store".into())
            .spawn(move || run(conn, path, rx, &gate, cfg, &thread_stats))
            .expect("spawning the store thread");
        Self {
            tx: Some(tx),
            handle: Some(handle),
            stats,
        }
    }

    pub fn stats(&self) -> Arc<StoreStats> {
        Arc::clone(&self.stats)
    }

    pub fn handle(&self) -> Option<WriterHandle> {
        self.tx.as_ref().map(|tx| WriterHandle {
            tx: tx.clone(),
            stats: Arc::clone(&self.stats),
        })
    }

    /// Queues a flow without waiting; counts it as dropped when the queue is full.
    pub fn try_send(&self, flow: FlowRecord) {
        let Some(tx) = &self.tx else { return };
        try_send(tx, &self.stats, flow);
    }

    /// Queues a flow, waiting while the queue is full: for sources that can wait (replay of
    /// a file), so nothing is dropped.
    pub fn send_blocking(&self, flow: FlowRecord) {
        self.send_many_blocking(vec![flow]);
    }

    /// Queues flows, waiting while the queue is full (see [`Writer::send_blocking`]).
    pub fn send_many_blocking(&self, flows: Vec<FlowRecord>) {
        if let Some(tx) = &self.tx {
            send_many_blocking(tx, &self.stats, flows);
        }
    }

    /// Closes the queue and waits until everything queued is written.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take()
            && h.join().is_err()
        {
            tracing::error!("store thread panicked");
        }
    }
}

/// How long to wait between attempts while writes fail (disk full, read-only file system).
const RETRY: Duration = Duration::from_secs(1);
/// After this many failed attempts in a row the connection is opened anew (a remounted
/// file system can leave the old file handle unusable).
const REOPEN_AFTER: u32 = 3;

/// The writer thread's state.
struct State {
    conn: Connection,
    path: PathBuf,
    /// Flows whose write failed, oldest first, kept for the next attempt. Bounded by
    /// `held_rows`: beyond it the oldest are dropped and counted as failed.
    held: std::collections::VecDeque<FlowRecord>,
    /// When writes are failing: the next attempt, and how many failed in a row.
    failing: Option<(Instant, u32)>,
    next_prune: Instant,
    /// When to look for flows to roll up; now while behind.
    next_rollup: Instant,
    /// Rows that may still be amended.
    amendable: Amendable,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn run(
    conn: Connection,
    path: PathBuf,
    rx: mpsc::Receiver<Row>,
    gate: &Gate,
    mut cfg: WriterConfig,
    stats: &StoreStats,
) {
    let units = cfg.units.take();
    let mut st = State {
        conn,
        path,
        held: std::collections::VecDeque::new(),
        failing: None,
        next_prune: Instant::now() + Duration::from_secs(1),
        next_rollup: Instant::now() + Duration::from_secs(1),
        amendable: Amendable::new(cfg.amend_window.as_millis() as u64),
    };
    let mut infos: Vec<IpUpdate> = Vec::new();
    let mut alerts: Vec<AlertRow> = Vec::new();
    let mut deadline: Option<Instant> = None;
    let heartbeat = cfg.metrics.as_ref().map(|m| m.heartbeat("store"));
    let mut pace = crate::pace::Paced::new(crate::pace::TICK);
    loop {
        if let Some(h) = &heartbeat {
            h.beat();
        }
        // Wake at least once a second to beat the heartbeat, retry, and prune.
        let mut timeout = deadline
            .map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_secs(1));
        if cfg.rollup && rollup_may_run(&st, &cfg, gate, infos.len(), deadline) {
            // A rollup step is due and there is time: look at the queue, don't wait on it.
            timeout = timeout.min(st.next_rollup.saturating_duration_since(Instant::now()));
        }
        let mut take = |row: Row, held: &mut std::collections::VecDeque<FlowRecord>| match row {
            Row::Flow(mut f) => {
                gate.taken(1);
                if let Some(u) = &units {
                    u.fill(std::slice::from_mut(&mut f));
                }
                held.push_back(f);
            }
            Row::Flows(mut fs) => {
                gate.taken(fs.len());
                if let Some(u) = &units {
                    u.fill(&mut fs);
                }
                held.extend(fs);
            }
            Row::Ip(more) => infos.extend(more),
            Row::Alerts(more) => alerts.extend(more),
        };
        // Enrichment answers are written as they come (a pool batch is one transaction):
        // the in-memory sources' answers must not wait for a flush that slow sources set.
        let mut answers_came = false;
        let closed = match pace.recv(&rx, timeout) {
            Ok(row) => {
                let flows = matches!(row, Row::Flow(_) | Row::Flows(_));
                answers_came = !flows;
                take(row, &mut st.held);
                // After flows, take whatever else is queued up to a batch in one go.
                while flows && st.held.len() < cfg.batch_rows {
                    match rx.try_recv() {
                        Ok(row) => take(row, &mut st.held),
                        Err(_) => break,
                    }
                }
                deadline.get_or_insert_with(|| Instant::now() + cfg.flush);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if !infos.is_empty() && (infos.len() >= cfg.batch_rows || due || closed || answers_came) {
            let (written, dropped) = (&stats.ip_rows_written, &stats.ip_rows_dropped);
            write_side_rows(
                &mut st,
                "writing enrichment answers",
                &infos,
                written,
                dropped,
                super::ip_info::upsert,
            );
            infos.clear();
        }
        // Alerts as they come too: they are few, and a log line has announced each.
        if !alerts.is_empty() {
            let (written, dropped) = (&stats.alert_rows_written, &stats.alert_rows_dropped);
            write_side_rows(
                &mut st,
                "writing alerts",
                &alerts,
                written,
                dropped,
                super::alerts::upsert,
            );
            alerts.clear();
        }
        bound_held(&mut st, &cfg, stats);
        let retry_due = st.failing.is_none_or(|(at, _)| Instant::now() >= at);
        let full = st.held.len() >= cfg.batch_rows;
        // While writes fail, held flows go at each retry, whatever the batch.
        if !st.held.is_empty() && retry_due && (full || due || closed || st.failing.is_some()) {
            write_held(&mut st, &cfg, stats);
        }
        // A due deadline has been served (what failed waits for the retry, not for it);
        // with nothing pending there is none. Left past, it would make the wait above 0.
        if due || (st.held.is_empty() && infos.is_empty()) {
            deadline = None;
        }
        if closed {
            let lost = count_lost(stats, st.held.iter());
            if lost > 0 {
                tracing::error!(
                    rows = lost,
                    path = %st.path.display(),
                    "stopping with flows that could not be written: lost"
                );
            }
            break;
        }
        if st.failing.is_none() && Instant::now() >= st.next_prune {
            prune(&mut st, &cfg);
        }
        // Between batches, when the writer is not behind.
        if cfg.rollup && rollup_may_run(&st, &cfg, gate, infos.len(), deadline) {
            rollup(&mut st, &cfg);
        }
    }
}

/// Whether the writer has time for a rollup step: writes are not failing and not behind
/// (less than a batch held and queued, the flush of a partial batch not yet due), and the
/// step is due. A step may delay a partial batch's flush by its own duration.
fn rollup_may_run(
    st: &State,
    cfg: &WriterConfig,
    gate: &Gate,
    infos: usize,
    deadline: Option<Instant>,
) -> bool {
    let now = Instant::now();
    st.failing.is_none()
        && now >= st.next_rollup
        && deadline.is_none_or(|d| now < d)
        && infos < cfg.batch_rows
        && st.held.len() + gate.queued() < cfg.batch_rows
}

/// One rollup step; the next one right away (when idle) while behind.
fn rollup(st: &mut State, cfg: &WriterConfig) {
    let local = super::sums::LocalAddrs::of_this_host();
    // Rows that may still be amended are rolled up once they no longer can.
    let below = st.amendable.oldest();
    match super::rollup::step_below(&mut st.conn, &local, below) {
        Ok(0) => st.next_rollup = Instant::now() + cfg.rollup_every,
        Ok(n) => {
            tracing::trace!(ids = n, "rolled up");
            st.next_rollup = Instant::now();
        }
        Err(e) => {
            let err = StoreError::sqlite(&st.path, "rolling up flows", e);
            tracing::warn!("{err}");
            st.next_rollup = Instant::now() + cfg.rollup_every;
        }
    }
}

/// Drops the oldest held flows beyond the bound, counting them as failed.
fn bound_held(st: &mut State, cfg: &WriterConfig, stats: &StoreStats) {
    let over = st
        .held
        .len()
        .saturating_sub(cfg.held_rows.max(cfg.batch_rows));
    if over > 0 {
        count_lost(stats, st.held.range(..over));
        st.held.drain(..over);
    }
}

/// Counts flows that could not be written as failed rows, and amendments among them as
/// dropped amendments (they are not rows); returns the rows.
fn count_lost<'a>(stats: &StoreStats, lost: impl Iterator<Item = &'a FlowRecord>) -> u64 {
    let (mut rows, mut amendments) = (0u64, 0u64);
    for f in lost {
        if f.amends {
            amendments += 1;
        } else {
            rows += 1;
        }
    }
    stats.write_failed.fetch_add(rows, Ordering::Relaxed);
    stats
        .amendments_dropped
        .fetch_add(amendments, Ordering::Relaxed);
    rows
}

/// Writes what is held, a batch a transaction, oldest first. On failure keeps the rest
/// for the next attempt.
fn write_held(st: &mut State, cfg: &WriterConfig, stats: &StoreStats) {
    while !st.held.is_empty() {
        let n = st.held.len().min(cfg.batch_rows);
        let started = Instant::now();
        let result = insert_all(&mut st.conn, &mut st.amendable, st.held.range(..n));
        match result {
            Ok(done) => {
                stats.rows_written.fetch_add(done.rows, Ordering::Relaxed);
                stats
                    .amendments_applied
                    .fetch_add(done.applied, Ordering::Relaxed);
                stats
                    .amendments_missed
                    .fetch_add(done.missed, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                if let Some(last) = st.held.range(..n).map(|f| f.last_seen_ms).max() {
                    st.amendable.tick(last);
                }
                if let Some(m) = &cfg.metrics {
                    m.store_write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    let now = now_ms();
                    for f in st.held.range(..n).filter(|f| cfg.live && !f.amends) {
                        let ms = (now - f.last_seen_ms).max(0);
                        m.store_close_to_row_seconds.observe(ms as f64 / 1000.0);
                    }
                }
                st.held.drain(..n);
                if let Some((_, fails)) = st.failing.take() {
                    tracing::warn!(
                        path = %st.path.display(),
                        failed_attempts = fails,
                        "writing again"
                    );
                }
            }
            Err(e) => {
                if let Some(m) = &cfg.metrics {
                    m.store_write_errors.inc();
                }
                let fails = st.failing.map_or(1, |(_, f)| f + 1);
                if fails == 1 {
                    let err = StoreError::sqlite(&st.path, "writing a batch of flows", e);
                    tracing::error!(
                        held = st.held.len(),
                        "{err}; holding flows (up to store_held_rows) and retrying every {} s",
                        RETRY.as_secs()
                    );
                }
                if fails.is_multiple_of(REOPEN_AFTER) {
                    match super::open_for_writing(&st.path) {
                        Ok(c) => st.conn = c,
                        Err(e) => tracing::debug!("reopening: {e}"),
                    }
                }
                st.failing = Some((Instant::now() + RETRY, fails));
                return;
            }
        }
    }
}

/// One retention step; the next one right away while there is more to prune.
fn prune(st: &mut State, cfg: &WriterConfig) {
    let Some(r) = cfg.retention.filter(|r| !r.is_off()) else {
        st.next_prune = Instant::now() + Duration::from_secs(3600);
        return;
    };
    match r.step(&mut st.conn, now_ms()) {
        Ok(Some((why, n))) => {
            if let Some(m) = &cfg.metrics {
                m.store_pruned_rows
                    .with_label_values(&[why.as_str()])
                    .inc_by(n);
            }
            tracing::debug!(rows = n, reason = why.as_str(), "pruned");
            st.next_prune = Instant::now();
        }
        Ok(None) => st.next_prune = Instant::now() + cfg.prune_every,
        Err(e) => {
            let err = StoreError::sqlite(&st.path, "pruning old flows", e);
            tracing::warn!("{err}");
            st.next_prune = Instant::now() + cfg.prune_every;
        }
    }
}

/// Writes rows beside the flows (enrichment answers, alerts) in one transaction with
/// `upsert`, counting them `written` or `dropped`: dropped while flow writes are failing
/// (the flows are held and retried, these are not: they are rewritten when next
/// answered or updated), or when their own transaction fails.
fn write_side_rows<T>(
    st: &mut State,
    what: &'static str,
    rows: &[T],
    written: &AtomicU64,
    dropped: &AtomicU64,
    upsert: impl FnOnce(&rusqlite::Transaction<'_>, &[T]) -> rusqlite::Result<()>,
) {
    let n = rows.len() as u64;
    if st.failing.is_some() {
        dropped.fetch_add(n, Ordering::Relaxed);
        return;
    }
    let result = st.conn.transaction().and_then(|tx| {
        upsert(&tx, rows)?;
        tx.commit()
    });
    match result {
        Ok(()) => {
            written.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            dropped.fetch_add(n, Ordering::Relaxed);
            let err = StoreError::sqlite(&st.path, what, e);
            tracing::error!(rows = n, "{err}");
        }
    }
}

/// An address as text without a heap allocation per row (the insert loop runs 10⁵–10⁶
/// times a second).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn format(&mut self, ip: std::net::IpAddr) -> &str {
        self.len = match ip {
            std::net::IpAddr::V4(v4) => dotted_quad(v4.octets(), &mut self.buf),
            std::net::IpAddr::V6(_) => {
                use std::io::Write as _;
                let mut cur = std::io::Cursor::new(&mut self.buf[..]);
                // An IPv6 address is at most 45 characters: it always fits.
                let _ = write!(cur, "{ip}");
                cur.position() as usize
            }
        };
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// `a.b.c.d` into `out`, its length returned: what `Ipv4Addr`'s `Display` writes, without
/// the formatting machinery (a tenth of the writer's time went there).
fn dotted_quad(octets: [u8; 4], out: &mut [u8; 48]) -> usize {
    let mut n = 0;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            out[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            out[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + o % 10;
        n += 1;
    }
    n
}

/// What one committed batch did.
#[derive(Default)]
struct Done {
    rows: u64,
    applied: u64,
    missed: u64,
    /// Rows remembered as amendable (forgotten again if the transaction fails).
    remembered: usize,
}

/// Inserts a batch (applying its amendments) in one transaction. Rows that may be amended
/// are remembered at once, so an amendment later in the same batch finds its row, and
/// forgotten again when the transaction fails (the batch is written again).
fn insert_all<'a>(
    conn: &mut Connection,
    amendable: &mut Amendable,
    batch: impl Iterator<Item = &'a FlowRecord>,
) -> rusqlite::Result<Done> {
    let mut done = Done::default();
    let result = insert_batch(conn, amendable, batch, &mut done);
    if result.is_err() {
        amendable.forget_last(done.remembered);
    }
    result.map(|()| done)
}

fn insert_batch<'a>(
    conn: &mut Connection,
    amendable: &mut Amendable,
    batch: impl Iterator<Item = &'a FlowRecord>,
    done: &mut Done,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        let (mut src, mut dst) = (IpText::default(), IpText::default());
        let (mut tsrc, mut tdst) = (IpText::default(), IpText::default());
        for f in batch {
            if f.amends {
                match amendable.apply(&tx, f)? {
                    Outcome::Applied => done.applied += 1,
                    Outcome::Missed => done.missed += 1,
                }
                continue;
            }
            done.rows += 1;
            let t = f.tunnel.as_ref();
            let (so, d_o) = (f.src_owner.as_ref(), f.dst_owner.as_ref());
            stmt.execute(params![
                f.first_seen_ms,
                f.last_seen_ms,
                f.proto,
                src.format(f.src.ip()),
                f.src.port(),
                dst.format(f.dst.ip()),
                f.dst.port(),
                f.src_payload_bytes.map(|b| b as i64),
                f.dst_payload_bytes.map(|b| b as i64),
                so.map(|o| o.pid),
                so.map(|o| o.comm.as_str()),
                d_o.map(|o| o.pid),
                d_o.map(|o| o.comm.as_str()),
                f.srtt_us,
                f.retransmits,
                f.end_reason.as_str(),
                f.sources,
                f.src_packets.map(|v| v as i64),
                f.dst_packets.map(|v| v as i64),
                f.src_bytes.map(|v| v as i64),
                f.dst_bytes.map(|v| v as i64),
                f.src_tcp_flags,
                f.dst_tcp_flags,
                t.map(|t| t.kind.as_str()),
                t.map(|t| tsrc.format(t.src)),
                t.map(|t| tdst.format(t.dst)),
                t.and_then(|t| t.id),
                so.and_then(|o| o.uid),
                so.and_then(|o| o.unit.as_deref()),
                d_o.and_then(|o| o.uid),
                d_o.and_then(|o| o.unit.as_deref()),
                so.map(|o| o.attr.as_str()),
                d_o.map(|o| o.attr.as_str()),
            ])?;
            if let Some(r) = amend::remembered(f, tx.last_insert_rowid()) {
                amendable.remember([r]);
                done.remembered += 1;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{EndReason, Owner};

    #[test]
    fn addresses_as_text_are_what_display_writes() {
        let mut t = IpText::default();
        for a in [
            0u32,
            1,
            9,
            10,
            99,
            100,
            255,
            0x0a00_0001,
            0xc0a8_6404,
            0xffff_ffff,
            0x6465_0a00,
        ] {
            let ip = std::net::IpAddr::V4(a.into());
            assert_eq!(t.format(ip), ip.to_string());
        }
        let v6: std::net::IpAddr = "2001:db8::ff00:42:8329".parse().unwrap();
        assert_eq!(t.format(v6), v6.to_string());
    }

    fn flow(i: u16) -> FlowRecord {
        FlowRecord {
            first_seen_ms: 1,
            last_seen_ms: 2,
            src_payload_bytes: Some(10),
            src_owner: Some(Owner {
                pid: 1,
                comm: "a,b".into(),
                ..Default::default()
            }),
            srtt_us: Some(5),
            retransmits: Some(0),
            end_reason: EndReason::Fin,
            ..FlowRecord::kernel(
                format!("127.0.0.1:{i}").parse().unwrap(),
                "[::1]:80".parse().unwrap(),
            )
        }
    }

    /// A packet view's record of a closed connection, as the merge may orient it.
    fn closed(src: &str, dst: &str, start_ns: u64, packets: [u64; 2]) -> FlowRecord {
        FlowRecord {
            first_seen_ms: 1_000,
            last_seen_ms: 2_000,
            end_reason: EndReason::Fin,
            src_packets: Some(packets[0]),
            dst_packets: Some(packets[1]),
            src_bytes: Some(packets[0] * 100),
            dst_bytes: Some(packets[1] * 100),
            src_tcp_flags: Some(0x12),
            dst_tcp_flags: Some(0x12),
            packet_start_ns: Some(start_ns),
            ..FlowRecord::new(6, src.parse().unwrap(), dst.parse().unwrap(), "capture")
        }
    }

    #[test]
    fn amendments_add_to_their_row_whatever_its_orientation_and_hold_the_rollup_back() {
        let dir = std::env::temp_dir().join(format!("sensor-writer-amend-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let conn = super::super::open_for_writing(&path).unwrap();
        let w = Writer::spawn(
            conn,
            path.clone(),
            WriterConfig {
                rollup: true,
                rollup_every: Duration::from_millis(10),
                ..WriterConfig::new(100, Duration::from_millis(10), 10_000)
            },
        );
        let stats = w.stats();
        let (a, b) = ("10.0.0.1:5000", "10.0.0.2:80");
        // Two connections on one tuple (port reuse): the row named by the start is amended.
        w.try_send(closed(a, b, 7, [3, 2]));
        w.try_send(closed(a, b, 9, [5, 5]));
        // The merged row of the second names the other end as source; the packet view's
        // amendment still says a -> b.
        let mut late = closed(b, a, 7, [0, 1]);
        late.amends = true;
        late.src_tcp_flags = Some(0x04);
        late.dst_tcp_flags = Some(0x11);
        late.last_seen_ms = 2_500;
        w.try_send(late);
        // One for a row that never was: missed, and no row.
        let mut stray = closed(a, b, 8, [1, 0]);
        stray.amends = true;
        w.try_send(stray);
        let reader = super::super::open_for_reading(&path).unwrap();
        let started = Instant::now();
        while stats.amendments_missed.load(Ordering::Relaxed) < 1 {
            assert!(started.elapsed() < Duration::from_secs(10), "not written");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The rollup waits: both rows may still be amended.
        std::thread::sleep(Duration::from_millis(300));
        let max_id: i64 = reader
            .query_row("SELECT max_id FROM rollup_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(max_id, 0, "rows that may change are not rolled up");
        let rows: Vec<(i64, i64, i64, i64, i64, i64)> = reader
            .prepare(
                "SELECT src_packets, dst_packets, src_bytes, dst_bytes, src_tcp_flags,                  last_seen_ms FROM flows ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 2, "an amendment is never a row");
        // Row 1 (a -> b) got a's one late packet, named dst in the b -> a amendment.
        assert_eq!(rows[0], (4, 2, 400, 200, 0x12 | 0x11, 2_500));
        assert_eq!(rows[1], (5, 5, 500, 500, 0x12, 2_000));
        assert_eq!(stats.amendments_applied.load(Ordering::Relaxed), 1);
        assert_eq!(stats.rows_written.load(Ordering::Relaxed), 2);
        // Once flows well past the window arrive, the rows are final and rolled up.
        let mut later = flow(1);
        later.last_seen_ms = 60_000;
        w.try_send(later);
        let started = Instant::now();
        loop {
            let max_id: i64 = reader
                .query_row("SELECT max_id FROM rollup_state", [], |r| r.get(0))
                .unwrap();
            if max_id >= 2 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never rolled up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w.finish();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_idle_writer_rolls_up_every_flow_written() {
        let dir = std::env::temp_dir().join(format!("sensor-writer-rollup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let conn = super::super::open_for_writing(&path).unwrap();
        let w = Writer::spawn(
            conn,
            path.clone(),
            WriterConfig {
                rollup: true,
                ..WriterConfig::new(100, Duration::from_millis(10), 10_000)
            },
        );
        for i in 0..250 {
            w.try_send(flow(i));
        }
        let reader = super::super::open_for_reading(&path).unwrap();
        let rolled = || {
            reader
                .query_row(
                    "SELECT (SELECT max_id FROM rollup_state), \
                     (SELECT sum(flows) FROM flow_rollup)",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
                )
                .unwrap()
        };
        let started = Instant::now();
        while rolled() != (250, Some(250)) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                rolled()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w.finish();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Enrichment answers that come after the last batch are written at their deadline, and
    /// the deadline then goes: left in the past it kept the writer from waiting (a busy
    /// loop) and from rolling up until the next flows came.
    #[test]
    fn answers_after_the_last_batch_leave_the_writer_idle() {
        let dir = std::env::temp_dir().join(format!("sensor-writer-ip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let conn = super::super::open_for_writing(&path).unwrap();
        let w = Writer::spawn(
            conn,
            path.clone(),
            WriterConfig {
                rollup: true,
                ..WriterConfig::new(100, Duration::from_millis(10), 10_000)
            },
        );
        let stats = w.stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for i in 0..50 {
            w.try_send(flow(i));
        }
        let started = Instant::now();
        while load(&stats.rows_written) < 50 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "flows not written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        w.handle()
            .unwrap()
            .send_ip_info(crate::store::info::IpUpdate::wrap(
                vec![crate::store::info::IpInfo::new(
                    "192.0.2.1".parse().unwrap(),
                )],
                crate::store::info::Fields::Local,
            ));
        let reader = super::super::open_for_reading(&path).unwrap();
        let rolled = || {
            reader
                .query_row("SELECT max_id FROM rollup_state", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
        };
        while rolled() != 50 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not rolled up: {}",
                rolled()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(load(&stats.ip_rows_written), 1);
        w.finish();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Each end's uid, unit and attribution land in their columns; an end without an owner
    /// is NULL in all three, an owner without a uid or unit NULL in that column only.
    #[test]
    fn owners_uid_unit_and_attribution_are_written_per_end() {
        let dir = std::env::temp_dir().join(format!("sensor-writer-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let conn = super::super::open_for_writing(&path).unwrap();
        let w = Writer::spawn(
            conn,
            path.clone(),
            WriterConfig::new(100, Duration::from_secs(60), 10_000),
        );
        let mut full = flow(1);
        full.src_owner = Some(Owner {
            pid: 10,
            comm: "curl".into(),
            uid: Some(1000),
            cgroup_id: Some(77),
            unit: Some("user@1000.service/app.scope".into()),
            attr: crate::flow::record::Attr::Connect,
        });
        full.dst_owner = Some(Owner {
            pid: 11,
            comm: "nginx".into(),
            attr: crate::flow::record::Attr::Listener,
            ..Default::default()
        });
        let mut none = flow(2);
        none.src_owner = None;
        w.try_send(full);
        w.try_send(none);
        w.finish();
        let conn = super::super::open_for_reading(&path).unwrap();
        type Cols = (
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Cols> = conn
            .prepare(
                "SELECT src_uid, src_unit, dst_uid, dst_unit, src_attr, dst_attr \
                 FROM flows ORDER BY src_port",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            [
                (
                    Some(1000),
                    Some("user@1000.service/app.scope".into()),
                    None,
                    None,
                    Some("connect".into()),
                    Some("listener".into()),
                ),
                (None, None, None, None, None, None),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// With a resolver, each owner's cgroup id becomes its unit on the way in, for single
    /// flows and chunks alike; an unknown id leaves the unit NULL.
    #[test]
    fn the_writer_names_units_from_cgroup_ids() {
        let dir = std::env::temp_dir().join(format!("sensor-writer-units-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A directory tree stands in for the cgroup2 mount.
        let cgroups = dir.join("cgroup");
        let nginx = cgroups.join("system.slice/nginx.service");
        std::fs::create_dir_all(&nginx).unwrap();
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&nginx).unwrap());
        let path = dir.join("f.db");
        let conn = super::super::open_for_writing(&path).unwrap();
        let w = Writer::spawn(
            conn,
            path.clone(),
            WriterConfig {
                units: Some(crate::flow::unit::SharedUnits::new(
                    crate::flow::unit::UnitResolver::new(cgroups),
                )),
                ..WriterConfig::new(100, Duration::from_secs(60), 10_000)
            },
        );
        let with_id = |i: u16, cgroup_id: u64| {
            let mut f = flow(i);
            f.dst_owner = Some(Owner {
                pid: 2,
                comm: "nginx".into(),
                cgroup_id: Some(cgroup_id),
                ..Default::default()
            });
            f
        };
        w.try_send(with_id(1, id));
        w.send_many_blocking(vec![with_id(2, id), with_id(3, u64::MAX)]);
        w.finish();
        let conn = super::super::open_for_reading(&path).unwrap();
        let units: Vec<(Option<String>, Option<String>)> = conn
            .prepare("SELECT src_unit, dst_unit FROM flows ORDER BY src_port")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let nginx = Some("nginx.service".to_string());
        assert_eq!(
            units,
            [(None, nginx.clone()), (None, nginx), (None, None)],
            "the source owner has no cgroup id, the last id is unknown"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writes_every_row_in_batches_and_flushes_at_close() {
        let dir = std::env::temp_dir().join(format!("sensor-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let conn = super::super::open_for_writing(&path).unwrap();
        let w = Writer::spawn(
            conn,
            path.clone(),
            WriterConfig::new(100, Duration::from_secs(60), 10_000),
        );
        for i in 0..250 {
            w.try_send(flow(i));
        }
        let stats = w.stats();
        w.finish();
        assert_eq!(stats.rows_written.load(Ordering::Relaxed), 250);
        assert_eq!(stats.batches.load(Ordering::Relaxed), 3);
        let conn = super::super::open_for_reading(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 250);
    }

    /// Writes that fail are held and retried; past the bound the oldest are dropped and
    /// counted; writing resumes by itself. The failure is a trigger another connection
    /// adds and removes: as deterministic as a full disk, without needing one.
    #[test]
    fn failed_writes_are_held_bounded_and_resume() {
        let dir = std::env::temp_dir().join(format!("sensor-writer-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let conn = super::super::open_for_writing(&path).unwrap();
        let other = super::super::open_for_writing(&path).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER no_space BEFORE INSERT ON flows
                 BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
            )
            .unwrap();
        let mut cfg = WriterConfig::new(100, Duration::from_millis(20), 10_000);
        cfg.held_rows = 500;
        let w = Writer::spawn(conn, path.clone(), cfg);
        let stats = w.stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for i in 0..300 {
            w.try_send(flow(i));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(load(&stats.rows_written), 0);
        assert_eq!(load(&stats.write_failed), 0, "held, not lost");
        for i in 300..700 {
            w.try_send(flow(i));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            load(&stats.write_failed),
            200,
            "the oldest beyond the bound"
        );
        other.execute_batch("DROP TRIGGER no_space").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while load(&stats.rows_written) < 500 {
            assert!(Instant::now() < deadline, "writing did not resume");
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in 700..750 {
            w.try_send(flow(i));
        }
        w.finish();
        assert_eq!(load(&stats.rows_written), 550);
        assert_eq!(load(&stats.accepted), 750);
        let (n, min_port): (i64, i64) = other
            .query_row("SELECT count(*), min(src_port) FROM flows", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, min_port), (550, 200), "the newest were kept, in order");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
