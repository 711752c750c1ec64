//! `[detect]`: the detectors' windows, thresholds and memory bound. Every default says
//! where it comes from; all times are the flows' own (packet or kernel timestamps), so a
//! replayed capture gives the same alerts whatever the speed it is read at.
use serde::Deserialize;

/// The detections stage: on or off, its bounds, and each detector's rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run the detectors (`--no-detect` turns them off for one run or replay).
    pub enabled: bool,
    /// Flow records waiting for the detectors (live); when full, records are dropped for
    /// the detectors alone and counted (`sensor_detect_dropped_records_total`).
    pub queue_records: usize,
    /// Keys tracked at once by each detector (sources, pairs); when full, the oldest
    /// tracked key is forgotten and counted (`sensor_detect_evictions_total{detector}`).
    pub max_tracked: usize,
    /// An alert stays active (updated, not repeated) until nothing new has come for this
    /// long; then the next detection is a new alert.
    pub alert_idle_ms: u64,
    /// Flows kept as evidence in an alert (the first ones).
    pub evidence_flows: usize,

    /// `port_scan`: window, as Zeek's scan policy (`scan.zeek`: 5 min).
    pub scan_window_ms: u64,
    /// Distinct ports of one host probed by one source (vertical; Zeek's
    /// `port_scan_threshold`, 15).
    pub scan_ports: u32,
    /// Distinct hosts probed on one port by one source (horizontal; Zeek's
    /// `addr_scan_threshold`, 25).
    pub scan_hosts: u32,

    /// `brute_force`: window, as Zeek's `detect-bruteforcing.zeek` (`guessing_timeout`,
    /// 30 min).
    pub brute_window_ms: u64,
    /// Short connections with data both ways from one source to one authentication service
    /// of one host (Zeek's `password_guesses_limit`, 30).
    pub brute_attempts: u32,
    /// A connection longer than this is a session, not a guess.
    pub brute_short_ms: u64,
    /// Authentication services, by port: ftp, ssh, telnet, smtp submission (465, 587),
    /// pop3(s), imap(s), netbios/smb, rdp, vnc. Add HTTP(S) login ports here.
    pub brute_ports: Vec<u16>,

    /// `exfiltration`: window over which an initiator's bytes to one remote add up.
    pub exfil_window_ms: u64,
    /// Sent by the initiator to one remote within the window: always an alert when also
    /// `exfil_ratio` times what came back (ntopng's elephant-flow check, at a host's scale).
    pub exfil_bytes: u64,
    /// Bytes out over bytes in at least this.
    pub exfil_ratio: f64,
    /// Below `exfil_bytes`, still an alert from this many bytes when `exfil_baseline_factor`
    /// times the initiator's own baseline (the mean of its earlier windows' totals to each
    /// remote, from `exfil_baseline_windows` of them on).
    pub exfil_min_bytes: u64,
    pub exfil_baseline_factor: f64,
    pub exfil_baseline_windows: u32,

    /// `beacon`: connections from one host to one service kept for scoring (RITA scores
    /// the intervals and sizes of a pair's connections).
    pub beacon_window_ms: u64,
    /// Connections in the window before a pair is scored.
    pub beacon_min_connections: u32,
    /// RITA-style score (0..1: interval and size regularity) from which a pair beacons.
    pub beacon_score: f64,
    /// Connections kept per pair (the newest).
    pub beacon_max_samples: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_records: 65_536,
            max_tracked: 100_000,
            alert_idle_ms: 600_000,
            evidence_flows: 10,
            scan_window_ms: 300_000,
            scan_ports: 15,
            scan_hosts: 25,
            brute_window_ms: 1_800_000,
            brute_attempts: 30,
            brute_short_ms: 30_000,
            brute_ports: vec![
                21, 22, 23, 110, 139, 143, 445, 465, 587, 993, 995, 3389, 5900,
            ],
            exfil_window_ms: 3_600_000,
            exfil_bytes: 100 << 20,
            exfil_ratio: 10.0,
            exfil_min_bytes: 16 << 20,
            exfil_baseline_factor: 50.0,
            exfil_baseline_windows: 10,
            beacon_window_ms: 3_600_000,
            beacon_min_connections: 20,
            beacon_score: 0.8,
            beacon_max_samples: 64,
        }
    }
}

impl DetectConfig {
    /// The first setting that cannot work, as (name, value).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        let checks: [(&'static str, bool, String); 7] = [
            ("detect.queue_records", self.queue_records == 0, "0".into()),
            ("detect.max_tracked", self.max_tracked == 0, "0".into()),
            (
                "detect.scan_ports",
                self.scan_ports < 2,
                self.scan_ports.to_string(),
            ),
            (
                "detect.scan_hosts",
                self.scan_hosts < 2,
                self.scan_hosts.to_string(),
            ),
            (
                "detect.beacon_min_connections",
                self.beacon_min_connections < 4
                    || self.beacon_max_samples < self.beacon_min_connections as usize,
                self.beacon_min_connections.to_string(),
            ),
            (
                "detect.beacon_score",
                !(0.0..=1.0).contains(&self.beacon_score),
                self.beacon_score.to_string(),
            ),
            (
                "detect.exfil_ratio",
                self.exfil_ratio.is_nan() || self.exfil_ratio < 0.0,
                self.exfil_ratio.to_string(),
            ),
        ];
        checks
            .into_iter()
            .find(|(_, bad, _)| *bad)
            .map(|(name, _, v)| (name, v))
    }
}
