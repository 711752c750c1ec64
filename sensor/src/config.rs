//! The agent's settings: defaults, the TOML file (`--config`), then command-line overrides.
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where flows go when neither `--db` nor the config names a path. systemd's
/// `StateDirectory=sensor` creates the directory.
pub const DEFAULT_DB_PATH: &str = "/var/lib/sensor/flows.db";

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sensor/sensor.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("environment {var}={value}: {why}")]
    Env {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("config {path}: {key} = {value}: {why}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

/// Which kernel hooks to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum HookMode {
    /// The BTF-typed `inet_sock_set_state` tracepoint (it sees every TCP socket, those
    /// older than the sensor too, at a third of `sock_ops`' cost to the host); `sock_ops`
    /// where it cannot load, the classic tracepoint where neither can.
    #[default]
    Auto,
    /// Only the cgroup `sock_ops` program (stable UAPI fields, no struct offsets; it runs
    /// some 18 times a loopback connection, so it costs the host more).
    SockOps,
    /// Only the `inet_sock_set_state` tracepoint (the fallback path, e.g. without cgroup v2):
    /// BTF-typed, else classic through tracefs.
    Tracepoint,
    /// Only the classic tracepoint through tracefs (what kernels without BTF-typed
    /// tracepoints get).
    TracepointClassic,
    /// No kernel hooks: packet capture only.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// SQLite database for flows.
    pub db_path: PathBuf,
    /// Which kernel hooks to attach.
    pub hooks: HookMode,
    /// Size of the kernel-to-agent ring buffer; a power of two, multiple of the page size.
    pub ringbuf_bytes: u32,
    /// Finished flows waiting for the writer. When full, new flows are dropped and counted
    /// (`store_queue_dropped`): the ring-buffer reader never waits on the disk.
    pub store_queue_rows: usize,
    /// Rows per write transaction at most.
    pub batch_rows: usize,
    /// A partial batch is written after this long.
    pub flush_ms: u64,
    /// Flows held in memory while writes fail (disk full, read-only file system) and
    /// written when the disk allows; beyond it the oldest are dropped and counted
    /// (`sensor_store_failed_rows_total`).
    pub store_held_rows: usize,
    /// Flows that started longer ago than this are deleted (`sensor run`); 0 keeps them.
    pub retention_max_age_s: u64,
    /// While the database's data is larger than this, the oldest flows are deleted; 0: no
    /// bound.
    pub retention_max_db_bytes: u64,
    /// cgroup v2 mount to attach `sock_ops` to; found in /proc/self/mountinfo when unset.
    pub cgroup_path: Option<PathBuf>,
    /// Attach the attribution hooks beside the flow hooks: the accepting process of each
    /// TCP connection, and the processes of UDP/ICMP flows (see `sensor check`).
    pub attribution: bool,
    /// A packet flow ends after this long without packets (UDP, ICMP, one-way TCP).
    pub idle_timeout_ms: u64,
    /// A TCP connection (packets seen both ways, not closed) ends after this long without
    /// packets: keepalives minutes apart do not cut one connection into several rows.
    pub tcp_idle_timeout_ms: u64,
    /// A TCP flow that saw only SYNs (never answered) ends after this long without
    /// packets; Linux retries a SYN for 127 s, the last gap 64 s.
    pub tcp_syn_timeout_ms: u64,
    /// A flow open this long is written out and goes on in a new record.
    pub active_timeout_ms: u64,
    /// A closed TCP connection (RST, or FIN both ways and the last ACK) is written at once
    /// and stays this long to take its late packets (a peer's ACK, a retransmitted FIN, a
    /// repeated RST), which amend its row; a new SYN on the tuple starts a new connection
    /// at once. The kernel's TIME_WAIT is 60 s. Also read as `close_linger_ms`.
    #[serde(alias = "close_linger_ms")]
    pub tcp_close_linger_ms: u64,
    /// Most packet flows held at once; beyond it the least recently active are evicted.
    pub max_flows: usize,
    /// Decapsulate tunnels (VXLAN, Geneve, GRE, GTP-U, IP-in-IP, 6in4, 4in6, Teredo): the
    /// first inner connection becomes a flow of its own, with the tunnel and its outer
    /// addresses, beside the outer flow (counted as without it). Off: outer flows only.
    pub decap: bool,
    /// Interfaces to capture packets on; `["all"]` (the default) for every interface that
    /// is up; empty for none (the kernel's connection view only).
    pub interfaces: Vec<String>,
    /// Captured packets waiting for the flow table, in batches of up to 256 (at least one
    /// batch). When full, a batch is dropped and its packets counted
    /// (`sensor_capture_dropped_packets_total{reason="queue"}`): capture never waits.
    pub capture_queue_packets: usize,
    /// Size of each capture socket's TPACKET_V3 ring, shared with the kernel: bursts wait
    /// there, not dropped. Split into blocks of up to 1 MiB (a power of two of pages, 8 of
    /// them when the size allows), rounded down to whole blocks, two pages at least. Frames
    /// are cut to their first 256 bytes, so 8 MiB holds about 24,000 packets however large.
    /// Unlike a socket buffer's limit, the ring is kernel memory taken when capture starts,
    /// once per interface captured. Also read as `capture_buffer_bytes` (its name when it
    /// sized a socket buffer).
    #[serde(alias = "capture_buffer_bytes")]
    pub capture_ring_bytes: usize,
    /// Where `/metrics` and `/healthz` are served; empty for nowhere. Loopback by default:
    /// the metrics name hosts and processes.
    pub metrics_addr: String,
    /// Write the final value of every metric here when the sensor stops (batch runs,
    /// checks that nothing was lost).
    pub metrics_on_exit: Option<PathBuf>,
    /// Enrichment of flow addresses (`[enrich]`).
    pub enrich: EnrichConfig,
    /// IPFIX export of finished flows to collectors (`[ipfix]`).
    pub ipfix: IpfixConfig,
    /// Detections on finished flows (`[detect]`).
    pub detect: DetectConfig,
    /// The file this was read from, if any (SIGHUP reads it again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

pub use crate::{detect::DetectConfig, enrich::config::EnrichConfig, ipfix::config::IpfixConfig};

impl Default for Config {
    fn default() -> Self {
        Self {
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            hooks: HookMode::Auto,
            ringbuf_bytes: 1 << 22,
            store_queue_rows: 65_536,
            batch_rows: 1_000,
            flush_ms: 1_000,
            store_held_rows: 100_000,
            retention_max_age_s: 30 * 86_400,
            retention_max_db_bytes: 0,
            cgroup_path: None,
            attribution: true,
            idle_timeout_ms: 60_000,
            tcp_idle_timeout_ms: 3_600_000,
            tcp_syn_timeout_ms: 130_000,
            active_timeout_ms: 300_000,
            tcp_close_linger_ms: 60_000,
            max_flows: 1 << 20,
            decap: true,
            interfaces: vec!["all".to_string()],
            capture_queue_packets: 1 << 16,
            capture_ring_bytes: 8 << 20,
            metrics_addr: "127.0.0.1:9464".to_string(),
            metrics_on_exit: None,
            enrich: EnrichConfig::default(),
            ipfix: IpfixConfig::default(),
            detect: DetectConfig::default(),
            source: None,
        }
    }
}

impl Config {
    /// The writer's settings (`sensor run`: with retention).
    pub fn writer(&self) -> crate::store::WriterConfig {
        let mut w = crate::store::WriterConfig::new(
            self.batch_rows,
            std::time::Duration::from_millis(self.flush_ms),
            self.store_queue_rows,
        );
        w.held_rows = self.store_held_rows;
        w.amend_window = std::time::Duration::from_millis(self.tcp_close_linger_ms + 5_000);
        w.rollup = true;
        w.live = true;
        w.retention = Some(crate::store::retention::Retention {
            max_age: (self.retention_max_age_s > 0)
                .then(|| std::time::Duration::from_secs(self.retention_max_age_s)),
            max_bytes: (self.retention_max_db_bytes > 0).then_some(self.retention_max_db_bytes),
        });
        w
    }

    /// The packet flow table's settings.
    pub fn table(&self) -> crate::flow::TableConfig {
        crate::flow::TableConfig {
            idle_timeout_ns: self.idle_timeout_ms * 1_000_000,
            tcp_idle_timeout_ns: self.tcp_idle_timeout_ms * 1_000_000,
            tcp_syn_timeout_ns: self.tcp_syn_timeout_ms * 1_000_000,
            active_timeout_ns: self.active_timeout_ms * 1_000_000,
            close_linger_ns: self.tcp_close_linger_ms * 1_000_000,
            max_flows: self.max_flows,
        }
    }

    /// Loads `path` if given (it must exist), else the default path if it exists, else the
    /// defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_toml(&text, path)
    }

    /// Parses and validates a configuration file's text; `path` names it in errors.
    pub fn from_toml(text: &str, path: PathBuf) -> Result<Self, ConfigError> {
        let mut cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            source: Box::new(e),
        })?;
        cfg.validate(&path)?;
        cfg.source = Some(path);
        Ok(cfg)
    }

    /// The environment's overrides for the common settings, over the file and under the
    /// command line: `SENSOR_DB`, `SENSOR_HOOKS` (auto, sock-ops, tracepoint,
    /// tracepoint-classic, none), `SENSOR_INTERFACES` (comma-separated; empty for none),
    /// `SENSOR_METRICS_ADDR`, `SENSOR_RDNS` (true/false), `SENSOR_THREAT_DIR`,
    /// `SENSOR_MMDB` (comma-separated paths).
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_vars(|k| std::env::var(k).ok())
    }

    fn apply_vars(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        use clap::ValueEnum as _;
        if let Some(v) = var("SENSOR_DB") {
            self.db_path = PathBuf::from(v);
        }
        if let Some(v) = var("SENSOR_HOOKS") {
            self.hooks = HookMode::from_str(&v, true).map_err(|_| ConfigError::Env {
                var: "SENSOR_HOOKS",
                value: v.clone(),
                why: "one of auto, sock-ops, tracepoint, tracepoint-classic, none",
            })?;
        }
        if let Some(v) = var("SENSOR_INTERFACES") {
            self.interfaces = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = var("SENSOR_METRICS_ADDR") {
            if !v.is_empty() && v.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Env {
                    var: "SENSOR_METRICS_ADDR",
                    value: v,
                    why: "must be an address:port, or empty",
                });
            }
            self.metrics_addr = v;
        }
        if let Some(v) = var("SENSOR_RDNS") {
            self.enrich.rdns = match v.as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "SENSOR_RDNS",
                        value: v,
                        why: "true or false",
                    });
                }
            };
        }
        if let Some(v) = var("SENSOR_THREAT_DIR") {
            self.enrich.threat_dir = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        if let Some(v) = var("SENSOR_MMDB") {
            self.enrich.mmdb_paths = v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, value: String, why| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            why,
        };
        if !self.ringbuf_bytes.is_power_of_two() || self.ringbuf_bytes < 4096 {
            return Err(bad(
                "ringbuf_bytes",
                self.ringbuf_bytes.to_string(),
                "must be a power of two of at least 4096",
            ));
        }
        if self.batch_rows == 0 {
            return Err(bad("batch_rows", "0".into(), "must be at least 1"));
        }
        if !self.metrics_addr.is_empty()
            && self.metrics_addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(bad(
                "metrics_addr",
                self.metrics_addr.clone(),
                "must be an address:port, e.g. 127.0.0.1:9464, or empty",
            ));
        }
        if self.max_flows == 0 {
            return Err(bad("max_flows", "0".into(), "must be at least 1"));
        }
        for server in &self.enrich.dns_servers {
            if server.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad(
                    "enrich.dns_servers",
                    server.clone(),
                    "must be an address:port, e.g. 127.0.0.1:53",
                ));
            }
        }
        if self.enrich.queue_ips == 0 || self.enrich.batch_ips == 0 {
            return Err(bad(
                "enrich.queue_ips",
                self.enrich.queue_ips.to_string(),
                "queue_ips and batch_ips must be at least 1",
            ));
        }
        if self.store_queue_rows == 0 {
            return Err(bad("store_queue_rows", "0".into(), "must be at least 1"));
        }
        for url in &self.ipfix.collectors {
            if crate::ipfix::exporter::Collector::parse(url).is_err() {
                return Err(bad(
                    "ipfix.collectors",
                    url.clone(),
                    "must be udp://HOST:PORT or tcp://HOST:PORT, HOST an address or a name \
                     that resolves",
                ));
            }
        }
        if self.ipfix.mtu_bytes < 576 || self.ipfix.queue_records == 0 {
            return Err(bad(
                "ipfix.mtu_bytes",
                self.ipfix.mtu_bytes.to_string(),
                "mtu_bytes must be at least 576 and queue_records at least 1",
            ));
        }
        if let Some((name, value)) = self.detect.invalid() {
            return Err(bad(
                name,
                value,
                "queues and bounds at least 1, scan thresholds at least 2, beacons from 4 \
                 connections (and at most beacon_max_samples) with a score in 0..1, ratios \
                 not negative",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let dir = std::env::temp_dir().join(format!("sensor-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "db_path = \"/tmp/x.db\"\nflush_msec = 5\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("flush_msec"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    /// Configs written before the ring keep working: the old name sizes the ring.
    #[test]
    fn capture_buffer_bytes_is_read_as_the_ring_size() {
        let dir = std::env::temp_dir().join(format!("sensor-cfg-ring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("old.toml");
        std::fs::write(&p, "capture_buffer_bytes = 65536\n").unwrap();
        assert_eq!(Config::load(Some(&p)).unwrap().capture_ring_bytes, 65536);
        std::fs::write(&p, "capture_ring_bytes = 131072\n").unwrap();
        assert_eq!(Config::load(Some(&p)).unwrap().capture_ring_bytes, 131072);
        std::fs::write(&p, "capture_ring_bytes = 1\ncapture_buffer_bytes = 2\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            err.contains("duplicate"),
            "both names at once are refused: {err}"
        );
    }

    #[test]
    fn ringbuf_must_be_power_of_two() {
        let dir = std::env::temp_dir().join(format!("sensor-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rb.toml");
        std::fs::write(&p, "ringbuf_bytes = 5000\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("ringbuf_bytes"), "{err}");
    }

    #[test]
    fn environment_overrides_and_names_bad_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut c = Config::default();
        c.apply_vars(env(&[
            ("SENSOR_DB", "/tmp/e.db"),
            ("SENSOR_HOOKS", "tracepoint-classic"),
            ("SENSOR_INTERFACES", "lo, eth0"),
            ("SENSOR_METRICS_ADDR", "127.0.0.1:9999"),
            ("SENSOR_RDNS", "false"),
            ("SENSOR_MMDB", "/a.mmdb,/b.mmdb"),
        ]))
        .unwrap();
        assert_eq!(c.db_path, PathBuf::from("/tmp/e.db"));
        assert_eq!(c.hooks, HookMode::TracepointClassic);
        assert_eq!(c.interfaces, vec!["lo", "eth0"]);
        assert_eq!(c.metrics_addr, "127.0.0.1:9999");
        assert!(!c.enrich.rdns);
        assert_eq!(c.enrich.mmdb_paths.len(), 2);
        let err = Config::default()
            .apply_vars(env(&[("SENSOR_HOOKS", "kprobe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SENSOR_HOOKS=kprobe"), "{err}");
        let err = Config::default()
            .apply_vars(env(&[("SENSOR_METRICS_ADDR", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SENSOR_METRICS_ADDR"), "{err}");
    }

    #[test]
    fn missing_explicit_config_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/sensor.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sensor.toml"));
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// deploy/sensor.toml documents every option with its default: it must parse, and say
    /// the same as `Config::default()`.
    #[test]
    fn deploy_example_matches_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sensor.toml");
        let c = Config::load(Some(&p)).unwrap();
        let d = Config::default();
        assert_eq!(c.db_path, d.db_path);
        assert_eq!(c.hooks, d.hooks);
        assert_eq!(c.ringbuf_bytes, d.ringbuf_bytes);
        assert_eq!(c.store_queue_rows, d.store_queue_rows);
        assert_eq!(c.batch_rows, d.batch_rows);
        assert_eq!(c.flush_ms, d.flush_ms);
        assert_eq!(c.store_held_rows, d.store_held_rows);
        assert_eq!(c.retention_max_age_s, d.retention_max_age_s);
        assert_eq!(c.retention_max_db_bytes, d.retention_max_db_bytes);
        assert_eq!(c.cgroup_path, d.cgroup_path);
        assert_eq!(c.idle_timeout_ms, d.idle_timeout_ms);
        assert_eq!(c.tcp_idle_timeout_ms, d.tcp_idle_timeout_ms);
        assert_eq!(c.tcp_syn_timeout_ms, d.tcp_syn_timeout_ms);
        assert_eq!(c.active_timeout_ms, d.active_timeout_ms);
        assert_eq!(c.tcp_close_linger_ms, d.tcp_close_linger_ms);
        assert_eq!(c.max_flows, d.max_flows);
        assert_eq!(c.decap, d.decap);
        assert_eq!(c.interfaces, d.interfaces);
        assert_eq!(c.capture_queue_packets, d.capture_queue_packets);
        assert_eq!(c.capture_ring_bytes, d.capture_ring_bytes);
        assert_eq!(c.metrics_addr, d.metrics_addr);
        assert_eq!(c.enrich, d.enrich);
    }
}
