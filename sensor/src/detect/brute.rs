//! `brute_force`, after Zeek's `detect-bruteforcing.zeek`: `brute_attempts` short
//! connections (at most `brute_short_ms`, payload both ways: something was tried and
//! answered) from one source to one authentication service (`brute_ports`) of one host
//! within `brute_window_ms`. Probes without payload are the scan detector's, not guesses.
use std::net::IpAddr;

use super::{
    alert::{AlertKey, Alerts, Evidence, FlowId, Kind, Port},
    config::DetectConfig,
    facts,
    tracked::Tracked,
};
use crate::flow::FlowRecord;

/// Attempts named in a new alert.
const KEPT: usize = 8;

struct Window {
    start_ms: i64,
    attempts: u32,
    first: Vec<FlowId>,
}

pub struct BruteForce {
    window_ms: i64,
    attempts: u32,
    short_ms: i64,
    /// Sorted, for a binary search per flow.
    ports: Vec<u16>,
    by_service: Tracked<(IpAddr, IpAddr, u16), Window>,
}

impl BruteForce {
    pub fn new(cfg: &DetectConfig) -> Self {
        let mut ports = cfg.brute_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        Self {
            window_ms: cfg.brute_window_ms as i64,
            attempts: cfg.brute_attempts.max(1),
            short_ms: cfg.brute_short_ms as i64,
            ports,
            by_service: Tracked::new(cfg.max_tracked),
        }
    }

    pub fn tracked(&self) -> usize {
        self.by_service.len()
    }

    pub fn evictions(&self) -> u64 {
        self.by_service.evictions()
    }

    pub fn flow(&mut self, f: &FlowRecord, alerts: &mut Alerts) {
        if f.proto != facts::TCP
            || !facts::is_whole(f)
            || self.ports.binary_search(&f.dst.port()).is_err()
            || f.last_seen_ms - f.first_seen_ms > self.short_ms
            || !facts::exchanged_data(f)
        {
            return;
        }
        let id = FlowId::of(f);
        let (src, dst, port) = (f.src.ip(), f.dst.ip(), f.dst.port());
        let key = AlertKey {
            kind: Kind::BruteForce,
            src,
            dst: Some(dst),
            proto: f.proto,
            port,
        };
        let ev = Evidence {
            flow: id,
            target: dst,
            port: Port::of(&id),
            owner: f.src_owner.as_ref(),
        };
        if alerts.update(&key, &ev) {
            return;
        }
        let now = f.first_seen_ms;
        let w = self
            .by_service
            .get_or_insert_with((src, dst, port), || Window {
                start_ms: now,
                attempts: 0,
                first: Vec::new(),
            });
        if now - w.start_ms >= self.window_ms {
            w.start_ms = now;
            w.attempts = 0;
            w.first.clear();
        }
        w.attempts += 1;
        if w.first.len() < KEPT {
            w.first.push(id);
        }
        if w.attempts < self.attempts {
            return;
        }
        let w = self.by_service.remove(&(src, dst, port)).expect("tracked");
        let detail = format!(
            "{} short connections to {} within {} s (rule: {} in {} s, each at most {} s \
             with payload both ways)",
            w.attempts,
            ev.port,
            (now - w.start_ms).max(0) / 1000,
            self.attempts,
            self.window_ms / 1000,
            self.short_ms / 1000
        );
        let owner = f.src_owner.as_ref();
        let evidence = w.first.iter().map(|id| Evidence {
            flow: *id,
            target: dst,
            port: Port::of(id),
            owner,
        });
        let uncounted = u64::from(w.attempts) - w.first.len() as u64;
        alerts.raise(key, evidence, uncounted, 1.0, detail);
    }

    pub fn sweep(&mut self, now_ms: i64) {
        let w = self.window_ms;
        self.by_service.retain(|_, v| now_ms - v.start_ms < w);
    }
}
