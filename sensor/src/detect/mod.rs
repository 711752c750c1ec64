//! Detections in one pass: every finished flow record (active-timeout parts included) goes
//! once through each detector, on the stage's own thread, with windowed state bounded by
//! `[detect] max_tracked` per detector (the oldest key forgotten and counted when full).
//!
//! | detector | rule (defaults) | anchor |
//! |---|---|---|
//! | `port_scan` | 15 ports of one host, or one port of 25 hosts, failed or unanswered, in 5 min | Zeek `scan.zeek` |
//! | `brute_force` | 30 short connections with payload both ways to one auth service of one host in 30 min | Zeek `detect-bruteforcing.zeek` |
//! | `exfiltration` | an initiator's 100 MiB to one remote at 10× what came back in 1 h, or 50× its baseline from 16 MiB | ntopng elephant flows |
//! | `beacon` | 20+ connections to one service in 1 h, RITA-style interval and size score ≥ 0.8 | RITA |
//! | `threat_contact` | a flow to or from an address on a threat list | enrichment's lists |
//!
//! Time is the flows' own (their starts), never the clock on the wall: a replayed capture
//! gives the same alerts on every replay, at any speed.
pub mod alert;
pub mod beacon;
pub mod brute;
pub mod config;
pub mod exfil;
pub mod facts;
pub mod scan;
pub mod stage;
pub mod threat;
pub mod tracked;

pub use alert::Kind;
pub use config::DetectConfig;
pub use stage::{DetectQueue, DetectStage};

use crate::{enrich::tags::Tagger, flow::FlowRecord, store::alerts::AlertRow};

/// Flow time between sweeps of expired windows and alerts.
const SWEEP_MS: i64 = 10_000;

/// Every detector and the alerts they keep.
pub struct Detectors {
    scan: scan::PortScan,
    brute: brute::BruteForce,
    exfil: exfil::Exfiltration,
    beacon: beacon::Beacon,
    threat: Option<threat::ThreatContact>,
    pub alerts: alert::Alerts,
    /// The latest flow start seen: the detectors' clock.
    clock_ms: i64,
    next_sweep_ms: i64,
    records: u64,
}

/// Sizes and counts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectStats {
    pub records: u64,
    /// Keys tracked and keys forgotten to make room, per detector: port_scan,
    /// brute_force, exfiltration, beacon, threat_contact (0: it keeps no state of its own,
    /// the tagger's bounded cache aside).
    pub tracked: [u64; 5],
    pub evictions: [u64; 5],
    pub active_alerts: u64,
    /// New alerts by kind, in [`Kind::ALL`] order.
    pub raised: [u64; 5],
}

impl Detectors {
    /// The detectors of `cfg`; `threat_contact` only with `tags` that can tag.
    pub fn new(cfg: &DetectConfig, tags: Option<Tagger>) -> Self {
        Self {
            scan: scan::PortScan::new(cfg),
            brute: brute::BruteForce::new(cfg),
            exfil: exfil::Exfiltration::new(cfg),
            beacon: beacon::Beacon::new(cfg),
            threat: tags.filter(Tagger::is_on).map(threat::ThreatContact::new),
            alerts: alert::Alerts::new(cfg.alert_idle_ms, cfg.evidence_flows),
            clock_ms: i64::MIN,
            next_sweep_ms: i64::MIN,
            records: 0,
        }
    }

    /// Runs every detector on `f`.
    pub fn flow(&mut self, f: &FlowRecord) {
        if f.amends {
            // Late packets of a written connection: no new attempt, no new bytes to judge.
            return;
        }
        self.records += 1;
        self.clock_ms = self.clock_ms.max(f.first_seen_ms);
        let a = &mut self.alerts;
        // Asked once: the scan detector counts probes, the beacon detector skips them.
        let probe = facts::is_probe(f);
        self.scan.flow(f, probe, a);
        self.brute.flow(f, a);
        self.exfil.flow(f, a);
        self.beacon.flow(f, probe, a);
        if let Some(t) = &mut self.threat {
            t.flow(f, a);
        }
        if self.clock_ms >= self.next_sweep_ms {
            self.sweep();
        }
    }

    /// Forgets windows and alerts that are over by the flows' clock.
    fn sweep(&mut self) {
        let now = self.clock_ms;
        self.next_sweep_ms = now.saturating_add(SWEEP_MS);
        self.scan.sweep(now);
        self.brute.sweep(now);
        self.exfil.sweep(now);
        self.beacon.sweep(now);
        self.alerts.expire(now);
        if let Some(t) = &mut self.threat {
            t.reload_if_due();
        }
    }

    /// Rows of the alerts raised or updated since the last call.
    pub fn take_rows(&mut self) -> Vec<AlertRow> {
        self.alerts.take_rows()
    }

    pub fn stats(&self) -> DetectStats {
        DetectStats {
            records: self.records,
            tracked: [
                self.scan.tracked() as u64,
                self.brute.tracked() as u64,
                self.exfil.tracked() as u64,
                self.beacon.tracked() as u64,
                0,
            ],
            evictions: [
                self.scan.evictions(),
                self.brute.evictions(),
                self.exfil.evictions(),
                self.beacon.evictions(),
                0,
            ],
            active_alerts: self.alerts.active() as u64,
            raised: Kind::ALL.map(|k| self.alerts.raised(k)),
        }
    }
}
