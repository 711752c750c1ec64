//! The sensor's own metrics: every stage's counters in, out and dropped, named
//! `sensor_<stage>_<what>_<unit>[_total]`, each series created at zero so dashboards and
//! alerts see it before the first event; and a heartbeat per stage for `/healthz`.
pub mod http;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Stages that beat a heartbeat, and how often each must (milliseconds).
pub const STAGES: &[(&str, u64)] = &[
    ("ringbuf", 5_000),
    ("capture", 5_000),
    ("flow", 5_000),
    ("merge", 5_000),
    ("store", 5_000),
    ("enrich", 5_000),
    ("detect", 5_000),
];

/// The sensor's eBPF programs, as labels.
pub const PROGRAMS: &[&str] = &[
    "sensor_sock_ops",
    "sensor_set_state",
    "sensor_set_state_classic",
];

/// Flow end reasons, as labels (bounded).
pub const END_REASONS: &[&str] = &[
    "fin", "rst", "failed", "idle", "active", "evicted", "shutdown",
];

pub struct Metrics {
    pub registry: Registry,
    /// Kernel ring buffer: events read, events the kernel could not queue, short records.
    /// Per eBPF program (`program`), while `kernel.bpf_stats_enabled` is 1.
    pub ebpf_runs: IntCounterVec,
    pub ebpf_run_seconds: prometheus::CounterVec,
    pub ringbuf_produced: IntCounter,
    pub ringbuf_events: IntCounter,
    pub ringbuf_dropped: IntCounter,
    pub ringbuf_malformed: IntCounter,
    /// Packet capture.
    pub capture_packets: IntCounter,
    pub capture_handed_off: IntCounter,
    /// Packets the packet flow table took in.
    pub flow_packets: IntCounter,
    pub capture_bytes: IntCounter,
    pub capture_not_ip: IntCounter,
    pub capture_malformed: IntCounter,
    /// `reason`: `queue` (flow table queue full) or `kernel` (PACKET_STATISTICS).
    pub capture_dropped: IntCounterVec,
    /// Times a capture ring ran out of free blocks (PACKET_STATISTICS tp_freeze_q_cnt).
    pub capture_ring_freezes: IntCounter,
    /// Flow tables (`table`: `kernel` connections, `packets`).
    pub flow_active: IntGaugeVec,
    pub flow_created: IntCounterVec,
    /// `table`, `reason`.
    pub flow_ended: IntCounterVec,
    /// Merge of the two views.
    pub merge_merged: IntCounter,
    pub merge_alone: IntCounterVec,
    /// `view`: TCP records that waited for a twin whose lifetime fits and found none.
    pub merge_unpaired: IntCounterVec,
    /// Merged rows cut at the kernel's close (the packet record ran on into the next
    /// connection on the same 5-tuple).
    pub merge_overrun: IntCounter,
    pub merge_dropped: IntCounter,
    /// Late packets of closed connections: amendments the packet table sent, what the merge
    /// did with them (`folded` into a record still waiting, `passed` on to the store), and
    /// what the store did (`applied` to the row, `missed`: no row, `dropped`: queue full).
    pub flow_amendments: IntCounter,
    pub merge_amendments: IntCounterVec,
    pub store_amendments: IntCounterVec,
    /// Process attribution: flow ends whose cgroup id named no cgroup, even after the
    /// cgroup tree was read again (the cgroup was gone before its flow was written).
    pub attr_unresolved_cgroups: IntCounter,
    /// Datagram owner reports from the kernel: `kept`, `unknown` (a socket older than the
    /// hooks that the /proc scan did not find), `dropped` (the agent's table was full).
    pub attr_dgram_reports: IntCounterVec,
    /// Finished UDP/ICMP flows given an owner (`named`) or not (`unnamed`).
    pub attr_dgram_flows: IntCounterVec,
    /// IPFIX export, per collector: data records sent, dropped (`queue` full, `send`
    /// failed or not connected, `too_big` for a message), messages sent (`data`,
    /// `template`), TCP connection attempts, flows waiting.
    pub ipfix_sent_records: IntCounterVec,
    pub ipfix_dropped_records: IntCounterVec,
    pub ipfix_messages: IntCounterVec,
    pub ipfix_connects: IntCounterVec,
    pub ipfix_queued_records: prometheus::IntGaugeVec,
    /// Store.
    pub store_rows: IntCounter,
    pub store_batches: IntCounter,
    pub store_failed_rows: IntCounter,
    pub store_dropped_rows: IntCounter,
    pub store_pending_rows: IntGauge,
    pub store_write_seconds: Histogram,
    /// Transactions that failed (disk full, read-only...): the rows are held and retried.
    pub store_write_errors: IntCounter,
    /// Rows deleted by retention (`reason`: `age`, `size`).
    pub store_pruned_rows: IntCounterVec,
    /// From a flow's end (its last packet or its close) to its row being committed.
    pub store_close_to_row_seconds: Histogram,
    /// Enrichment: addresses offered, answered from the cache, not public, queued, shed
    /// (`reason`: `queue_full`, `shutdown`), written to `ip_info`; lookups per source.
    pub enrich_offered: IntCounter,
    pub enrich_cache_hits: IntCounter,
    pub enrich_skipped: IntCounter,
    pub enrich_queued: IntCounter,
    pub enrich_shed: IntCounterVec,
    pub enrich_done: IntCounter,
    pub enrich_queue: IntGauge,
    /// `source` (mmdb, cymru, rdns, threat), `result`.
    pub enrich_lookups: IntCounterVec,
    pub enrich_lookup_seconds: prometheus::HistogramVec,
    /// `source` (mmdb, threat), `result` (ok, failed).
    pub enrich_reloads: IntCounterVec,
    /// Sources that failed to (re)open while running, by `source` (mmdb, threat, rdns):
    /// the previous one is kept.
    pub enrich_source_errors: IntCounterVec,
    /// Detections: flow records judged, records dropped for the detectors (queue full),
    /// new alerts by `kind`, keys tracked and forgotten (full) per `detector`, active
    /// alerts.
    pub detect_records: IntCounter,
    pub detect_dropped_records: IntCounter,
    pub detect_alerts: IntCounterVec,
    pub detect_evictions: IntCounterVec,
    pub detect_tracked: prometheus::IntGaugeVec,
    pub detect_active_alerts: IntGauge,
    heartbeats: Vec<(&'static str, u64, Arc<AtomicU64>)>,
}

/// The `source` labels of `sensor_enrich_source_errors_total`.
pub const ENRICH_SOURCES: &[&str] = &["mmdb", "threat", "rdns"];

/// Results of each enrichment source, as labels (bounded). `error` and the failure
/// reasons: the source was asked and gave no usable answer; `shed`: not asked (the source
/// was not answering, or the sensor stopped).
pub const ENRICH_RESULTS: &[(&str, &[&str])] = &[
    ("mmdb", &["found", "not_found", "error"]),
    ("threat", &["hit", "miss"]),
    (
        "rdns",
        &[
            "found",
            "not_found",
            "timeout",
            "servfail",
            "refused",
            "error",
            "shed",
        ],
    ),
    (
        "cymru",
        &[
            "found",
            "not_found",
            "cached",
            "timeout",
            "closed",
            "garbage",
            "connect",
            "error",
            "shed",
        ],
    ),
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stage's heartbeat: it calls [`Heartbeat::beat`] at least once per interval.
#[derive(Clone)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let m = Self {
            ebpf_runs: counter_vec(
                "sensor_ebpf_program_runs_total",
                "Runs of each eBPF program (counted while kernel.bpf_stats_enabled=1).",
                &["program"],
            ),
            ebpf_run_seconds: reg(
                &r,
                prometheus::CounterVec::new(
                    Opts::new(
                        "sensor_ebpf_program_run_seconds_total",
                        "Time spent in each eBPF program (while kernel.bpf_stats_enabled=1).",
                    ),
                    &["program"],
                )
                .expect("valid"),
            ),
            ringbuf_produced: counter(
                "sensor_ringbuf_produced_events_total",
                "Socket events the kernel programs tried to queue (read + dropped).",
            ),
            ringbuf_events: counter(
                "sensor_ringbuf_events_total",
                "Socket events read from the kernel ring buffer.",
            ),
            ringbuf_dropped: counter(
                "sensor_ringbuf_dropped_events_total",
                "Socket events lost because the kernel ring buffer was full.",
            ),
            ringbuf_malformed: counter(
                "sensor_ringbuf_malformed_events_total",
                "Ring buffer records too short to be an event.",
            ),
            capture_packets: counter(
                "sensor_capture_packets_total",
                "Packets captured on all interfaces.",
            ),
            capture_handed_off: counter(
                "sensor_capture_handed_off_packets_total",
                "Parsed packets handed to the flow table.",
            ),
            flow_packets: counter(
                "sensor_flow_packets_total",
                "Packets the packet flow table accounted.",
            ),
            capture_bytes: counter("sensor_capture_bytes_total", "Bytes of captured frames."),
            capture_not_ip: counter(
                "sensor_capture_not_ip_packets_total",
                "Captured frames that are not IP (ARP, LLDP...), skipped.",
            ),
            capture_malformed: counter(
                "sensor_capture_malformed_packets_total",
                "Captured frames that could not be parsed, skipped.",
            ),
            capture_dropped: counter_vec(
                "sensor_capture_dropped_packets_total",
                "Packets lost: reason=queue (flow table behind), reason=kernel (capture ring full).",
                &["reason"],
            ),
            capture_ring_freezes: counter(
                "sensor_capture_ring_freezes_total",
                "Times a capture ring had no free block and the kernel froze it (packets are \
                 dropped until a block is returned; raise capture_ring_bytes).",
            ),
            flow_active: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("sensor_flow_active_flows", "Flows open now."),
                    &["table"],
                )
                .expect("valid"),
            ),
            flow_created: counter_vec(
                "sensor_flow_created_flows_total",
                "Flows started.",
                &["table"],
            ),
            flow_ended: counter_vec(
                "sensor_flow_ended_flows_total",
                "Flow records written out, by why they ended.",
                &["table", "reason"],
            ),
            merge_merged: counter(
                "sensor_merge_merged_flows_total",
                "TCP connections whose kernel and packet records became one.",
            ),
            merge_alone: counter_vec(
                "sensor_merge_alone_flows_total",
                "Records written without a partner from the other view (packet records: with \
                 the UDP, ICMP and active-timeout ones, which never wait).",
                &["view"],
            ),
            merge_unpaired: counter_vec(
                "sensor_merge_unpaired_flows_total",
                "TCP records that waited for a record of the other view whose lifetime \
                 overlaps theirs and found none: written alone.",
                &["view"],
            ),
            merge_overrun: counter(
                "sensor_merge_overrun_flows_total",
                "Merged connections whose packet record ran on past the kernel's close (the \
                 capture lost the packets between it and the next connection on the same \
                 5-tuple): the row ends at the close and holds the packets counted.",
            ),
            merge_dropped: counter(
                "sensor_merge_dropped_flows_total",
                "Flow records dropped because the merge queue was full.",
            ),
            flow_amendments: counter(
                "sensor_flow_amendments_total",
                "Closed TCP connections whose late packets (after the record was written) \
                 were sent as an amendment to their row.",
            ),
            merge_amendments: counter_vec(
                "sensor_merge_amendments_total",
                "Amendments folded into a record still waiting for its twin, or passed on.",
                &["result"],
            ),
            store_amendments: counter_vec(
                "sensor_store_amendments_total",
                "Amendments applied to their row, missed (no such row), or dropped (queue full, or \
                 their write failed).",
                &["result"],
            ),
            store_rows: counter(
                "sensor_store_rows_total",
                "Flow rows written to the database.",
            ),
            store_batches: counter(
                "sensor_store_batches_total",
                "Write transactions committed.",
            ),
            store_failed_rows: counter(
                "sensor_store_failed_rows_total",
                "Rows lost because their transaction failed.",
            ),
            store_dropped_rows: counter(
                "sensor_store_dropped_rows_total",
                "Rows dropped because the writer's queue was full.",
            ),
            store_pending_rows: reg(
                &r,
                IntGauge::new(
                    "sensor_store_pending_rows",
                    "Rows queued or batched, not yet committed.",
                )
                .expect("valid"),
            ),
            store_write_errors: counter(
                "sensor_store_write_errors_total",
                "Write transactions that failed; their rows are held and written again.",
            ),
            store_pruned_rows: counter_vec(
                "sensor_store_pruned_rows_total",
                "Rows deleted by retention: flows by reason=age (max age) or reason=size (max size), \
                 alerts quiet for longer than the max age by reason=alert_age.",
                &["reason"],
            ),
            store_write_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sensor_store_write_seconds",
                        "Time to write and commit one batch.",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid")),
                )
                .expect("valid"),
            ),
            store_close_to_row_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sensor_store_close_to_row_seconds",
                        "From a flow's end to its row being committed.",
                    )
                    .buckets(vec![
                        0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.1, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
                    ]),
                )
                .expect("valid"),
            ),
            enrich_offered: counter(
                "sensor_enrich_offered_addresses_total",
                "Flow addresses offered to enrichment (in).",
            ),
            enrich_cache_hits: counter(
                "sensor_enrich_cache_hits_total",
                "Offered addresses already known or in progress.",
            ),
            enrich_skipped: counter(
                "sensor_enrich_skipped_addresses_total",
                "Offered addresses that are not public (private, loopback, ...): never looked up.",
            ),
            enrich_queued: counter(
                "sensor_enrich_queued_addresses_total",
                "Addresses taken into the enrichment queue.",
            ),
            enrich_shed: counter_vec(
                "sensor_enrich_shed_addresses_total",
                "Addresses not enriched: reason=queue_full (offered while the queue was full), \
                 reason=shutdown (queued when the sensor stopped).",
                &["reason"],
            ),
            enrich_done: counter(
                "sensor_enrich_done_addresses_total",
                "Addresses enriched and handed to the store (out).",
            ),
            enrich_queue: reg(
                &r,
                IntGauge::new(
                    "sensor_enrich_queue_addresses",
                    "Addresses queued or being looked up now.",
                )
                .expect("valid"),
            ),
            enrich_lookups: counter_vec(
                "sensor_enrich_lookups_total",
                "Lookups by source and result.",
                &["source", "result"],
            ),
            enrich_lookup_seconds: reg(
                &r,
                prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "sensor_enrich_lookup_seconds",
                        "Time of one lookup (Cymru: of its bulk request).",
                    )
                    .buckets(prometheus::exponential_buckets(0.000_001, 4.0, 13).expect("valid")),
                    &["source"],
                )
                .expect("valid"),
            ),
            enrich_reloads: counter_vec(
                "sensor_enrich_reloads_total",
                "Reloads of changed MaxMind databases and threat lists.",
                &["source", "result"],
            ),
            attr_unresolved_cgroups: counter(
                "sensor_attr_unresolved_cgroups_total",
                "Flow ends whose cgroup id matched no cgroup in the cgroup2 tree, read again \
                 at most once a second: their unit is left empty.",
            ),
            attr_dgram_reports: counter_vec(
                "sensor_attr_dgram_reports_total",
                "Datagram socket owner reports from the kernel: kept, unknown (a socket older \
                 than the hooks that the /proc scan did not find), dropped (the agent's owner \
                 table was full).",
                &["result"],
            ),
            attr_dgram_flows: counter_vec(
                "sensor_attr_dgram_flows_total",
                "Finished UDP/ICMP flows that got at least one process (named) or none \
                 (unnamed).",
                &["result"],
            ),
            ipfix_sent_records: counter_vec(
                "sensor_ipfix_sent_records_total",
                "Flow records sent to each IPFIX collector.",
                &["collector"],
            ),
            ipfix_dropped_records: counter_vec(
                "sensor_ipfix_dropped_records_total",
                "Flow records not delivered to an IPFIX collector: queue (full), send (failed, \
                 timed out or not connected), too_big (larger than a message).",
                &["collector", "reason"],
            ),
            ipfix_messages: counter_vec(
                "sensor_ipfix_messages_total",
                "IPFIX messages sent to each collector, by kind (data, template).",
                &["collector", "kind"],
            ),
            ipfix_connects: counter_vec(
                "sensor_ipfix_connects_total",
                "TCP connection attempts to IPFIX collectors, by result (ok, failed).",
                &["collector", "result"],
            ),
            ipfix_queued_records: reg(
                &r,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "sensor_ipfix_queued_records",
                        "Flow records waiting for each IPFIX collector.",
                    ),
                    &["collector"],
                )
                .expect("valid"),
            ),
            enrich_source_errors: counter_vec(
                "sensor_enrich_source_errors_total",
                "Enrichment sources that failed to reload (SIGHUP or a changed file); the \
                 running one is kept.",
                &["source"],
            ),
            detect_records: counter(
                "sensor_detect_records_total",
                "Flow records the detectors judged.",
            ),
            detect_dropped_records: counter(
                "sensor_detect_dropped_records_total",
                "Flow records the detectors did not see: their queue was full (the store and \
                 other sinks still got them).",
            ),
            detect_alerts: counter_vec(
                "sensor_detect_alerts_total",
                "New alerts, by kind (an alert updated while active is not counted again).",
                &["kind"],
            ),
            detect_evictions: counter_vec(
                "sensor_detect_evictions_total",
                "Keys a detector forgot to stay within detect.max_tracked, by detector.",
                &["detector"],
            ),
            detect_tracked: reg(
                &r,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "sensor_detect_tracked_keys",
                        "Keys (sources, pairs, services) each detector tracks now; for \
                         threat_contact, addresses it remembers looking up.",
                    ),
                    &["detector"],
                )
                .expect("valid"),
            ),
            detect_active_alerts: reg(
                &r,
                IntGauge::new(
                    "sensor_detect_active_alerts",
                    "Alerts still active (updated, not repeated, until quiet for \
                     detect.alert_idle_ms).",
                )
                .expect("valid"),
            ),
            heartbeats: STAGES
                .iter()
                .map(|(name, interval)| (*name, *interval, Arc::new(AtomicU64::new(0))))
                .collect(),
            registry: r,
        };
        // Every labelled series exists from the start, at zero (the detectors' per-kind
        // ones from the detections stage's start: metrics know no stage above them).
        for reason in ["queue", "kernel"] {
            m.capture_dropped.with_label_values(&[reason]);
        }
        for table in ["kernel", "packets"] {
            m.flow_active.with_label_values(&[table]);
            m.flow_created.with_label_values(&[table]);
            for reason in END_REASONS {
                m.flow_ended.with_label_values(&[table, reason]);
            }
        }
        for view in ["kernel", "packets"] {
            m.merge_alone.with_label_values(&[view]);
            m.merge_unpaired.with_label_values(&[view]);
        }
        for reason in ["age", "size", "alert_age"] {
            m.store_pruned_rows.with_label_values(&[reason]);
        }
        for result in ["folded", "passed"] {
            m.merge_amendments.with_label_values(&[result]);
        }
        for result in ["kept", "unknown", "dropped"] {
            m.attr_dgram_reports.with_label_values(&[result]);
        }
        for result in ["named", "unnamed"] {
            m.attr_dgram_flows.with_label_values(&[result]);
        }
        for result in ["applied", "missed", "dropped"] {
            m.store_amendments.with_label_values(&[result]);
        }
        for reason in ["queue_full", "shutdown"] {
            m.enrich_shed.with_label_values(&[reason]);
        }
        for (source, results) in ENRICH_RESULTS {
            m.enrich_lookup_seconds.with_label_values(&[source]);
            for result in *results {
                m.enrich_lookups.with_label_values(&[source, result]);
            }
        }
        for source in ["mmdb", "threat"] {
            for result in ["ok", "failed"] {
                m.enrich_reloads.with_label_values(&[source, result]);
            }
        }
        for source in ENRICH_SOURCES {
            m.enrich_source_errors.with_label_values(&[source]);
        }
        for program in PROGRAMS {
            m.ebpf_runs.with_label_values(&[program]);
            m.ebpf_run_seconds.with_label_values(&[program]);
        }
        let info = IntGaugeVec::new(
            Opts::new("sensor_build_info", "The running sensor's version."),
            &["version"],
        )
        .expect("valid");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.registry.register(Box::new(info)).expect("unique name");
        Arc::new(m)
    }

    /// The heartbeat of `stage` (one of [`STAGES`]).
    pub fn heartbeat(&self, stage: &str) -> Heartbeat {
        let (_, _, beat) = self
            .heartbeats
            .iter()
            .find(|(name, _, _)| *name == stage)
            .expect("a known stage");
        let h = Heartbeat(Arc::clone(beat));
        h.beat();
        h
    }

    /// Stages whose heartbeat is older than its interval: (stage, age in ms). Stages that
    /// never started (capture off, say) are not judged.
    pub fn stale(&self) -> Vec<(&'static str, u64)> {
        let now = now_ms();
        self.heartbeats
            .iter()
            .filter_map(|(name, interval, beat)| {
                let last = beat.load(Ordering::Relaxed);
                let age = now.saturating_sub(last);
                (last != 0 && age > *interval).then_some((*name, age))
            })
            .collect()
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("text encoding of valid metrics");
        buf
    }

    /// `--metrics-on-exit`: every metric's final value to `path`, if one is given. A
    /// failure is logged, not returned: the command's own outcome stands.
    pub fn write_on_exit(&self, path: Option<&std::path::Path>) {
        if let Some(path) = path
            && let Err(e) = std::fs::write(path, self.encode())
        {
            tracing::error!(path = %path.display(), "writing the final metrics: {e}");
        }
    }
}

/// Adds the growth of a running total to a counter (stages keep plain totals).
pub fn add_delta(counter: &IntCounter, last: &mut u64, now: u64) {
    if now > *last {
        counter.inc_by(now - *last);
        *last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_zero_and_names_follow_the_scheme() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.contains("sensor_capture_dropped_packets_total{reason=\"kernel\"} 0"));
        assert!(text.contains("sensor_capture_ring_freezes_total 0"));
        assert!(
            text.contains("sensor_flow_ended_flows_total{reason=\"evicted\",table=\"packets\"} 0")
        );
        assert!(text.contains("sensor_build_info{version="));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("sensor_"), "{name}");
            if line.ends_with("counter") {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }

    #[test]
    fn a_stage_that_stops_beating_is_stale() {
        let m = Metrics::new();
        let h = m.heartbeat("store");
        h.beat();
        assert!(m.stale().is_empty());
        h.0.store(now_ms() - 60_000, Ordering::Relaxed);
        let stale = m.stale();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].0, "store");
        assert!(stale[0].1 >= 60_000);
    }
}

#[cfg(test)]
mod deploy_files {
    use super::*;

    /// Every metric the Grafana dashboard and the scrape example name exists.
    #[test]
    fn dashboard_names_only_real_metrics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let m = Metrics::new();
        // Per-collector series exist once a collector is configured: make one.
        let c = "udp://192.0.2.1:4739";
        m.ipfix_sent_records.with_label_values(&[c]);
        m.ipfix_dropped_records.with_label_values(&[c, "queue"]);
        m.ipfix_messages.with_label_values(&[c, "data"]);
        m.ipfix_connects.with_label_values(&[c, "ok"]);
        m.ipfix_queued_records.with_label_values(&[c]);
        // The detectors' per-kind series exist once the stage starts.
        m.detect_alerts.with_label_values(&["port_scan"]);
        m.detect_evictions.with_label_values(&["port_scan"]);
        m.detect_tracked.with_label_values(&["port_scan"]);
        let known = m.encode();
        for file in [
            "grafana-dashboard.json",
            "prometheus.yml",
            "sensor-alerts.rules.yml",
        ] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let mut names = 0;
            for (i, _) in text.match_indices("sensor_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
                if base == "sensor_flows" {
                    continue; // the dashboard's uid
                }
                assert!(
                    known.contains(&format!("# TYPE {base} ")),
                    "{file} names {name}, which the sensor does not export"
                );
                names += 1;
            }
            assert!(names > 0, "{file} names no metric");
        }
    }
}
