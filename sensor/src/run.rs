//! `sensor run`: wires the stages together and owns shutdown.
//!
//! Order matters: capabilities and the database are checked before anything is attached;
//! at SIGINT/SIGTERM the hooks are detached first, then the ring buffer is drained, every
//! open flow is ended as `shutdown`, and the writer flushes its last batch before exit.
use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use sensor_common::SockEvent;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    capture::live::{self, CaptureError, CaptureStats, LiveCapture},
    config::{Config, HookMode},
    flow::{
        self, BootClock, Listeners, TcpTracker,
        dgram::DgramOwners,
        merge::{self, MergeSender},
    },
    kernel::{self, KernelError, Probe},
    metrics::{self, Metrics, add_delta},
    pipeline::Pipeline,
    store::{self, StoreError, StoreStats, WriterConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Http(#[from] metrics::http::HttpError),
    #[error(transparent)]
    Enrich(#[from] crate::enrich::EnrichError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Exit statuses of `sensor run` that restarting cannot mend (the unit's
/// `RestartPreventExitStatus=` lists them with 2, a configuration file that does not parse):
/// 77 (EX_NOPERM) privileges missing; 73 (EX_CANTCREAT) the database cannot be written;
/// 78 (EX_CONFIG) the configuration names what is not there or not usable (an interface,
/// a database of another program or a newer sensor, an enrichment source). Everything else
/// exits 1, which the unit restarts.
pub const EXIT_NO_PERMISSION: i32 = 77;
/// See [`EXIT_NO_PERMISSION`].
pub const EXIT_CANT_CREATE: i32 = 73;
/// See [`EXIT_NO_PERMISSION`].
pub const EXIT_CONFIG: i32 = 78;

impl RunError {
    /// The exit status (see [`EXIT_NO_PERMISSION`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Kernel(KernelError::MissingCapabilities { .. }) => EXIT_NO_PERMISSION,
            Self::Capture(CaptureError::Open { .. }) => EXIT_NO_PERMISSION,
            Self::Capture(CaptureError::NoSuchInterface { .. }) => EXIT_CONFIG,
            Self::Store(StoreError::NotWritable { .. }) => EXIT_CANT_CREATE,
            Self::Store(StoreError::TooNew { .. } | StoreError::Foreign { .. }) => EXIT_CONFIG,
            Self::Enrich(_) | Self::Pipeline(_) => EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// What one run saw and lost.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub hooks: String,
    pub events: u64,
    pub malformed_events: u64,
    pub ringbuf_dropped: u64,
    /// Packets lost by the kernel's capture rings or the capture queue.
    pub capture_dropped: u64,
    pub store_dropped: u64,
    pub flows_written: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn run(cfg: Config) -> Result<RunSummary, RunError> {
    kernel::require_capabilities(cfg.hooks, !cfg.interfaces.is_empty())?;
    let conn = store::open_for_writing(&cfg.db_path)?;
    let db = cfg.db_path.clone();
    let started_ms = now_ms();
    // Interfaces and the metrics address are checked before anything is attached too.
    let capture_ifaces = if cfg.interfaces.is_empty() {
        Vec::new()
    } else {
        live::resolve(&cfg.interfaces)?
    };
    let metrics = Metrics::new();
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match cfg.metrics_addr.parse::<std::net::SocketAddr>() {
        Ok(addr) => {
            let (bound, h) = metrics::http::serve(addr, Arc::clone(&metrics), async {
                let _ = http_stopped.await;
            })
            .await?;
            tracing::info!(addr = %bound, "serving /metrics and /healthz");
            Some(h)
        }
        Err(_) => None,
    };

    // Databases and lists are opened before anything is attached: a bad file stops here.
    let enrich = crate::enrich::Prepared::new(&cfg.enrich, &db, Arc::clone(&metrics))?;

    let mut probe = match cfg.hooks {
        HookMode::None => None,
        _ => Some(Probe::load(&cfg)?),
    };
    for h in probe.iter().flat_map(|p| &p.hooks) {
        if h.attached {
            tracing::info!(hook = h.name, "attached: {}", h.detail);
        } else {
            tracing::warn!(hook = h.name, "not attached: {}", h.detail);
        }
    }
    let hooks = probe
        .as_ref()
        .map_or_else(|| "none".to_string(), Probe::attached_names);
    if probe.is_some() && !kernel::progstats::enabled() {
        tracing::info!(
            "kernel.bpf_stats_enabled is 0: per-program run counts and times stay 0 \
             (sysctl -w kernel.bpf_stats_enabled=1 to count them)"
        );
    }
    let run_id: i64 = conn
        .query_row(
            "INSERT INTO runs (started_ms, hooks) VALUES (?1, ?2) RETURNING id",
            rusqlite::params![started_ms, hooks],
            |r| r.get(0),
        )
        .map_err(|e| StoreError::sqlite(&db, "recording the run", e))?;

    // Listeners older than the sensor; newer ones arrive as events (buffered meanwhile).
    let mut listeners = Listeners::default();
    let found = listeners.scan_proc();
    tracing::debug!(found, "listeners from /proc");
    let mut tracker = TcpTracker::new(BootClock::now(), listeners).with_limit(cfg.max_flows);
    // Owners of datagram sockets from the kernel, for the packet view's UDP/ICMP flows.
    let dgram = Arc::new(Mutex::new(DgramOwners::with_bound(
        tracker.listeners_mut().take_datagram_owners(),
    )));
    tracker.set_host_addrs(flow::local::host_addrs());

    // Finished flows go through the tee to the writer, enrichment and every collector.
    let pipeline = Pipeline::start(
        conn,
        db.clone(),
        WriterConfig {
            metrics: Some(Arc::clone(&metrics)),
            units: kernel::cgroup::find_cgroup2_root().map(|root| {
                flow::unit::SharedUnits::new(
                    flow::unit::UnitResolver::new(root)
                        .with_counter(metrics.attr_unresolved_cgroups.clone()),
                )
            }),
            ..cfg.writer()
        },
        enrich,
        &cfg.ipfix,
        &cfg.enrich,
        crate::pipeline::DetectSetup::from_config(&cfg)?,
        &metrics,
    )?;
    let store_stats = pipeline.store_stats();
    let sinks = pipeline.sinks();

    // With packets captured, both views' records meet in the merge stage before the writer.
    let merge = if capture_ifaces.is_empty() {
        None
    } else {
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.store_queue_rows);
        let sinks = sinks.clone();
        // A record waits for its twin as long as the packet view may take to write a
        // closed connection (the last ACK's wait) and a sweep or two more; with no kernel
        // view (`--hooks none`) there is no twin to wait for.
        let wait = if probe.is_none() {
            Duration::ZERO
        } else {
            Duration::from_nanos(cfg.table().last_ack_wait_ns()) + Duration::from_secs(2)
        };
        let thread = merge::spawn(wait, rx, Some(Arc::clone(&metrics)), move |f| {
            sinks.offer(f);
        });
        Some((MergeSender::new(tx), thread))
    };
    let capture = if capture_ifaces.is_empty() {
        None
    } else {
        let (tx, rx) = crate::capture::batch::queue(cfg.capture_queue_packets);
        let sender = merge.as_ref().expect("merge with capture").0.clone();
        let owners = Arc::clone(&dgram);
        let flows =
            flow::packets::spawn(cfg.table(), rx, Some(Arc::clone(&metrics)), move |mut f| {
                if f.proto != flow::record::PROTO_TCP {
                    owners
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .fill(&mut f);
                }
                sender.send(merge::Input::Packets(f));
            });
        let live = LiveCapture::start(
            capture_ifaces,
            cfg.capture_ring_bytes,
            cfg.decap,
            tx,
            Some(metrics.heartbeat("capture")),
        )?;
        tracing::info!(interfaces = %live.interfaces.join(","), "capturing packets");
        Some((live, flows))
    };

    let mut ring = match probe.as_mut() {
        Some(p) => {
            let ring = p
                .take_events()
                .ok_or(KernelError::MissingMap { name: "EVENTS" })?;
            // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for
            // as long as the AsyncFd holds it.
            Some(
                unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                    .map_err(|e| KernelError::RingBuf(e.into()))?,
            )
        }
        None => None,
    };
    let mut logger = match probe.as_mut().and_then(Probe::take_logger) {
        Some(l) => Some(
            // SAFETY: as above.
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| KernelError::RingBuf(e.into()))?,
        ),
        None => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    // Fed once a tick: often enough for any WatchdogSec of 2 s or more.
    let watchdog = crate::systemd::watchdog_enabled();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut malformed = 0u64;
    let mut last_drops = 0u64;

    tracing::info!(db = %db.display(), hooks = %hooks, "sensor ready");
    crate::systemd::ready(&format!("recording flows; hooks: {hooks}"));
    let kernel_sink = merge.as_ref().map(|(s, _)| s.clone());
    // The counters resolved once: a label lookup takes a lock, and this runs per flow.
    let ended_by_reason: Vec<(&str, prometheus::IntCounter)> = metrics::END_REASONS
        .iter()
        .map(|r| (*r, metrics.flow_ended.with_label_values(&["kernel", r])))
        .collect();
    let kernel_ended = |f: &flow::FlowRecord| {
        let reason = f.end_reason.as_str();
        match ended_by_reason.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => c.inc(),
            None => metrics
                .flow_ended
                .with_label_values(&["kernel", reason])
                .inc(),
        }
    };
    let mut emit = |f| {
        kernel_ended(&f);
        match &kernel_sink {
            Some(s) => s.send(merge::Input::Kernel(f)),
            None => sinks.offer(f),
        }
    };
    let ringbuf_beat = probe.as_ref().map(|_| metrics.heartbeat("ringbuf"));
    let mut published = Published::default();
    // The programs submit without waking us (unless the ring is filling up): the ring is
    // read on this tick, in batches.
    let mut ring_poll = tokio::time::interval(RING_POLL);
    ring_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => reload(&cfg, pipeline.enrich_pool(), &metrics),
            guard = async { ring.as_mut().expect("guarded").readable_mut().await },
                if ring.is_some() => {
                let mut guard = guard.map_err(KernelError::RingBuf)?;
                malformed += drain(guard.get_inner_mut(), &mut tracker, &dgram, &mut emit);
                guard.clear_ready();
            }
            _ = ring_poll.tick(), if ring.is_some() => {
                let ring = ring.as_mut().expect("guarded").get_mut();
                malformed += drain(ring, &mut tracker, &dgram, &mut emit);
            }
            guard = async { logger.as_mut().expect("guarded").readable_mut().await },
                if logger.is_some() => {
                let mut guard = guard.map_err(KernelError::RingBuf)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {
                // Addresses come and go: which peers are on this host, re-read.
                tracker.set_host_addrs(flow::local::host_addrs());
                dgram.lock().unwrap_or_else(|e| e.into_inner()).expire(Instant::now());
                let (drops, produced) = ringbuf_totals(probe.as_ref(), last_drops);
                if drops > last_drops {
                    tracing::warn!(lost = drops - last_drops, total = drops,
                        "kernel ring buffer full: events lost (raise ringbuf_bytes)");
                    last_drops = drops;
                }
                if let Some(h) = &ringbuf_beat {
                    h.beat();
                }
                // The watchdog is fed every tick, and only while every stage beats: a stuck
                // stage gets the service restarted by systemd.
                if watchdog {
                    let stale = metrics.stale();
                    if stale.is_empty() {
                        crate::systemd::watchdog();
                    } else {
                        tracing::warn!(?stale, "stages stale: not feeding the watchdog");
                    }
                }
                if let Some(p) = &probe {
                    published.publish_programs(&metrics, &p.program_stats());
                }
                published.publish(&metrics, &Sources {
                    tracker: &tracker,
                    ringbuf_produced: produced,
                    ringbuf_dropped: last_drops,
                    malformed,
                    capture: capture.as_ref().map(|(l, _)| &*l.stats),
                    store: &store_stats,
                    merge: merge.as_ref().map(|(s, _)| s),
                    dgram: dgram.lock().unwrap_or_else(|e| e.into_inner()).stats(),
                });
            }
        }
    }

    crate::systemd::stopping();
    drop(ringbuf_beat);
    if let Some(p) = probe.as_mut() {
        p.detach();
    }
    if let Some(ring) = ring.as_mut() {
        malformed += drain(ring.get_mut(), &mut tracker, &dgram, &mut emit);
    }
    // Connections still open whose start the kernel kept instead of sending it.
    for ev in probe.iter().flat_map(Probe::open_sockets) {
        tracker.on_open_at_shutdown(&ev, &mut emit);
    }
    let open = tracker.open_flows();
    tracker.flush_all(&mut emit);
    let (ringbuf_dropped, ringbuf_produced) = ringbuf_totals(probe.as_ref(), last_drops);
    let capture_stats = capture.as_ref().map(|(l, _)| Arc::clone(&l.stats));
    let mut capture_dropped = 0;
    if let (Some((live, flows)), Some(stats)) = (capture, capture_stats.as_deref()) {
        live.stop();
        let table = flows.join().unwrap_or_default();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        capture_dropped = load(&stats.queue_dropped) + load(&stats.kernel_dropped);
        tracing::info!(
            packets = load(&stats.packets),
            not_ip = load(&stats.not_ip),
            malformed = load(&stats.malformed),
            queue_dropped = load(&stats.queue_dropped),
            kernel_dropped = load(&stats.kernel_dropped),
            ring_freezes = load(&stats.ring_freezes),
            flows = table.created,
            evicted = table.evicted,
            "capture stopped"
        );
    }
    drop(kernel_sink);
    published.publish(
        &metrics,
        &Sources {
            tracker: &tracker,
            ringbuf_produced,
            ringbuf_dropped,
            malformed,
            capture: capture_stats.as_deref(),
            store: &store_stats,
            merge: merge.as_ref().map(|(s, _)| s),
            dgram: dgram.lock().unwrap_or_else(|e| e.into_inner()).stats(),
        },
    );
    let mut merge_dropped = 0;
    if let Some((sender, thread)) = merge {
        merge_dropped = sender.dropped();
        drop(sender);
        let m = thread.join().unwrap_or_default();
        tracing::info!(
            merged = m.merged,
            kernel_alone = m.kernel_alone,
            packets_alone = m.packets_alone,
            "merge stopped"
        );
    }
    // Every flow has been offered: the sinks stop in reverse order of start (see
    // `pipeline`), each sending or writing what it holds.
    drop(sinks);
    if let Some(d) = pipeline
        .finish(Duration::from_millis(cfg.enrich.drain_ms))
        .await
    {
        tracing::info!(
            records = d.records,
            alerts = d.raised.iter().sum::<u64>(),
            "detections stopped"
        );
    }
    published.publish_store(&metrics, &store_stats);
    metrics.write_on_exit(cfg.metrics_on_exit.as_deref());
    let _ = http_stop.send(());
    if let Some(h) = http {
        let _ = h.await;
    }

    let summary = RunSummary {
        hooks,
        events: tracker.stats().events,
        malformed_events: malformed,
        ringbuf_dropped,
        capture_dropped,
        store_dropped: store_stats.queue_dropped.load(Ordering::Relaxed)
            + store_stats.write_failed.load(Ordering::Relaxed)
            + merge_dropped,
        flows_written: store_stats.rows_written.load(Ordering::Relaxed),
    };
    record_run_end(&db, run_id, &summary)?;
    tracing::info!(
        events = summary.events,
        flows = summary.flows_written,
        open_at_shutdown = open,
        evicted = tracker.stats().evicted,
        ringbuf_dropped = summary.ringbuf_dropped,
        capture_dropped = summary.capture_dropped,
        store_dropped = summary.store_dropped,
        malformed_events = summary.malformed_events,
        "stopped"
    );
    Ok(summary)
}

/// SIGHUP: reads the config file again and reopens the enrichment sources (MaxMind files,
/// threat lists, DNS and Cymru settings) from its `[enrich]` section. A config or file that
/// fails to load leaves the running ones in place. Other settings (hooks, interfaces, the
/// database, the metrics address) take effect at the next start.
fn reload(cfg: &Config, pool: Option<&crate::enrich::pool::Pool>, metrics: &Arc<Metrics>) {
    crate::systemd::reloading();
    let status = reload_enrich(cfg, pool, metrics);
    crate::systemd::reloaded(status);
}

/// The status [`reload`] reports to systemd.
fn reload_enrich(
    cfg: &Config,
    pool: Option<&crate::enrich::pool::Pool>,
    metrics: &Arc<Metrics>,
) -> &'static str {
    let new = match Config::load(cfg.source.as_deref()).and_then(|mut c| c.apply_env().map(|()| c))
    {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("SIGHUP: keeping the running configuration: {e}");
            return "reload failed: config";
        }
    };
    let Some(pool) = pool else {
        tracing::info!("SIGHUP: enrichment is off; other settings apply at restart");
        return "reloaded";
    };
    if !new.enrich.enabled {
        tracing::warn!("SIGHUP: enrich.enabled = false takes effect at restart");
        return "reloaded";
    }
    let reloads = |outcome| metrics.enrich_reloads.with_label_values(&["mmdb", outcome]);
    match crate::enrich::cascade::Sources::from_config(&new.enrich, Some(Arc::clone(metrics))) {
        Ok(sources) => {
            pool.replace_sources(sources);
            reloads("ok").inc();
            tracing::info!(
                "SIGHUP: enrichment sources reopened; settings other than [enrich] apply at \
                 restart"
            );
            "reloaded"
        }
        Err(e) => {
            reloads("failed").inc();
            metrics
                .enrich_source_errors
                .with_label_values(&[e.source_label()])
                .inc();
            tracing::error!("SIGHUP: keeping the running enrichment sources: {e}");
            "reload failed: enrichment sources"
        }
    }
}

/// Where the totals published as metrics come from.
struct Sources<'a> {
    tracker: &'a TcpTracker,
    ringbuf_produced: u64,
    ringbuf_dropped: u64,
    malformed: u64,
    capture: Option<&'a CaptureStats>,
    store: &'a StoreStats,
    merge: Option<&'a MergeSender>,
    dgram: crate::flow::dgram::DgramStats,
}

/// The totals last published: stages keep plain running totals, the metrics get the growth.
#[derive(Default)]
struct Published {
    produced: u64,
    events: u64,
    ringbuf_dropped: u64,
    malformed: u64,
    created: u64,
    capture: [u64; 8],
    store: [u64; 4],
    amendments: [u64; 3],
    merge_dropped: u64,
    /// Datagram owners: reports kept, unknown, dropped; flows named, unnamed.
    dgram: [u64; 5],
    /// Per program: (runs, run time ns).
    programs: std::collections::HashMap<String, (u64, u64)>,
}

impl Published {
    fn publish(&mut self, m: &Metrics, s: &Sources<'_>) {
        let t = s.tracker.stats();
        add_delta(&m.ringbuf_produced, &mut self.produced, s.ringbuf_produced);
        add_delta(&m.ringbuf_events, &mut self.events, t.events);
        add_delta(
            &m.ringbuf_dropped,
            &mut self.ringbuf_dropped,
            s.ringbuf_dropped,
        );
        add_delta(&m.ringbuf_malformed, &mut self.malformed, s.malformed);
        let d = s.dgram;
        let now = [d.reports, d.unknown, d.dropped, d.named, d.unnamed];
        let series = [
            m.attr_dgram_reports.with_label_values(&["kept"]),
            m.attr_dgram_reports.with_label_values(&["unknown"]),
            m.attr_dgram_reports.with_label_values(&["dropped"]),
            m.attr_dgram_flows.with_label_values(&["named"]),
            m.attr_dgram_flows.with_label_values(&["unnamed"]),
        ];
        for ((c, last), now) in series.iter().zip(self.dgram.iter_mut()).zip(now) {
            add_delta(c, last, now);
        }
        let kernel_created = m.flow_created.with_label_values(&["kernel"]);
        add_delta(&kernel_created, &mut self.created, t.flows_started);
        m.flow_active
            .with_label_values(&["kernel"])
            .set(s.tracker.open_flows() as i64);
        if let Some(c) = s.capture {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let now = [
                load(&c.packets),
                load(&c.bytes),
                load(&c.not_ip),
                load(&c.malformed),
                load(&c.queue_dropped),
                load(&c.kernel_dropped),
                load(&c.handed_off),
                load(&c.ring_freezes),
            ];
            let targets = [
                m.capture_packets.clone(),
                m.capture_bytes.clone(),
                m.capture_not_ip.clone(),
                m.capture_malformed.clone(),
                m.capture_dropped.with_label_values(&["queue"]),
                m.capture_dropped.with_label_values(&["kernel"]),
                m.capture_handed_off.clone(),
                m.capture_ring_freezes.clone(),
            ];
            for ((counter, last), now) in targets.iter().zip(&mut self.capture).zip(now) {
                add_delta(counter, last, now);
            }
        }
        if let Some(merge) = s.merge {
            add_delta(&m.merge_dropped, &mut self.merge_dropped, merge.dropped());
        }
        self.publish_store(m, s.store);
    }

    fn publish_programs(&mut self, m: &Metrics, stats: &[(String, u64, u64)]) {
        for (name, runs, ns) in stats {
            let last = self.programs.entry(name.clone()).or_default();
            let c = m.ebpf_runs.with_label_values(&[name.as_str()]);
            add_delta(&c, &mut last.0, *runs);
            if *ns > last.1 {
                m.ebpf_run_seconds
                    .with_label_values(&[name.as_str()])
                    .inc_by((*ns - last.1) as f64 / 1e9);
                last.1 = *ns;
            }
        }
    }

    fn publish_store(&mut self, m: &Metrics, st: &StoreStats) {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let now = [
            load(&st.rows_written),
            load(&st.batches),
            load(&st.write_failed),
            load(&st.queue_dropped),
        ];
        let targets = [
            &m.store_rows,
            &m.store_batches,
            &m.store_failed_rows,
            &m.store_dropped_rows,
        ];
        for ((counter, last), now) in targets.iter().zip(&mut self.store).zip(now) {
            add_delta(counter, last, now);
        }
        let amended = [
            load(&st.amendments_applied),
            load(&st.amendments_missed),
            load(&st.amendments_dropped),
        ];
        for ((result, last), now) in ["applied", "missed", "dropped"]
            .iter()
            .zip(&mut self.amendments)
            .zip(amended)
        {
            add_delta(&m.store_amendments.with_label_values(&[result]), last, now);
        }
        let pending = load(&st.accepted).saturating_sub(now[0] + now[2] + amended[0] + amended[1]);
        m.store_pending_rows.set(pending as i64);
    }
}

/// The ring buffer's (dropped, produced) totals, all CPUs; a failed read keeps `last_drops`
/// and counts nothing produced (the metrics only ever grow).
fn ringbuf_totals(probe: Option<&Probe>, last_drops: u64) -> (u64, u64) {
    probe.map_or((0, 0), |p| {
        (
            p.ringbuf_drops().unwrap_or(last_drops),
            p.ringbuf_produced().unwrap_or(0),
        )
    })
}

/// How often the ring buffer is read without a wake-up. A closed connection's record waits
/// at most this long (a burst that fills a quarter of the ring wakes the reader at once),
/// so close to row takes at most `RING_POLL` + `flush_ms` + the writer's tick
/// ([`crate::pace::TICK`]) + the write.
pub const RING_POLL: Duration = Duration::from_millis(50);

/// Reads every event waiting in the ring buffer. Returns how many were too short to be an
/// event (never expected; counted rather than trusted).
fn drain(
    ring: &mut RingBuf<MapData>,
    tracker: &mut TcpTracker,
    dgram: &Mutex<DgramOwners>,
    emit: &mut impl FnMut(crate::flow::FlowRecord),
) -> u64 {
    let mut malformed = 0;
    let now = Instant::now();
    // Kernel times onto the packets' clock as of this read (see `BootClock`).
    tracker.set_clock(BootClock::now());
    while let Some(item) = ring.next() {
        if item.len() < size_of::<SockEvent>() {
            malformed += 1;
            continue;
        }
        // SAFETY: the buffer holds at least one SockEvent, a plain-old-data type written by
        // our program; read_unaligned makes no alignment assumption.
        let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SockEvent>()) };
        if ev.kind == sensor_common::kind::DGRAM {
            tracker.count_event();
            dgram
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .on_event(&ev, now);
        } else {
            tracker.on_event(&ev, emit);
        }
    }
    malformed
}

fn record_run_end(db: &std::path::Path, run_id: i64, s: &RunSummary) -> Result<(), StoreError> {
    let conn = store::open_for_writing(db)?;
    conn.execute(
        "UPDATE runs SET ended_ms = ?1, events = ?2, ringbuf_dropped = ?3, store_dropped = ?4,
         flows = ?5, capture_dropped = ?7 WHERE id = ?6",
        rusqlite::params![
            now_ms(),
            s.events as i64,
            s.ringbuf_dropped as i64,
            s.store_dropped as i64,
            s.flows_written as i64,
            run_id,
            s.capture_dropped as i64
        ],
    )
    .map_err(|e| StoreError::sqlite(db, "recording the run's end", e))?;
    Ok(())
}
