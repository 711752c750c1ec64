//! `port_scan`, after Zeek's scan policy: one source's failed or unanswered attempts
//! ([`super::facts::is_probe`]) to `scan_ports` distinct ports of one host (vertical) or to one
//! port of `scan_hosts` distinct hosts (horizontal), within `scan_window_ms`. A vertical
//! alert is about one target host; a horizontal one about the source (its targets and
//! ports listed), so a sweep over many ports of many hosts is one alert, not one a port.
use std::net::IpAddr;

use super::{
    alert::{AlertKey, Alerts, Detail, Evidence, FlowId, Kind, Port},
    config::DetectConfig,
    tracked::Tracked,
};
use crate::flow::{FlowRecord, Owner};

/// Distinct values counted per window: enough to reach any sane threshold; beyond it the
/// window only counts attempts.
const DISTINCT_MAX: usize = 256;

/// Ports of one host a horizontal sweep may probe it on.
const SWEEP_PORTS: usize = 4;

/// Attempts kept per window to raise an alert with: the first of each distinct value, so
/// the alert names every target and port that met the rule.
const KEPT: usize = DISTINCT_MAX;

/// One window of attempts from a source to a host (vertical) or to a port (horizontal).
struct Window {
    start_ms: i64,
    /// Distinct ports (vertical) or hosts (horizontal), up to [`DISTINCT_MAX`].
    distinct: Vec<Distinct>,
    attempts: u32,
    /// The first attempts, to name in the alert.
    first: Vec<FlowId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Distinct {
    Port(u8, u16),
    Host(IpAddr),
}

impl Window {
    fn new(start_ms: i64) -> Self {
        Self {
            start_ms,
            distinct: Vec::new(),
            attempts: 0,
            first: Vec::new(),
        }
    }

    /// Counts an attempt; returns the number of distinct values now.
    fn add(&mut self, d: Distinct, f: FlowId) -> usize {
        self.attempts += 1;
        if self.distinct.len() < DISTINCT_MAX && !self.distinct.contains(&d) {
            self.distinct.push(d);
            if self.first.len() < KEPT {
                self.first.push(f);
            }
        }
        self.distinct.len()
    }
}

pub struct PortScan {
    window_ms: i64,
    ports: usize,
    hosts: usize,
    /// (source, target host) → distinct ports.
    vertical: Tracked<(IpAddr, IpAddr), Window>,
    /// (source, protocol, port) → distinct hosts.
    horizontal: Tracked<(IpAddr, u8, u16), Window>,
}

impl PortScan {
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            window_ms: cfg.scan_window_ms as i64,
            ports: cfg.scan_ports as usize,
            hosts: cfg.scan_hosts as usize,
            vertical: Tracked::new(cfg.max_tracked),
            horizontal: Tracked::new(cfg.max_tracked),
        }
    }

    pub fn tracked(&self) -> usize {
        self.vertical.len() + self.horizontal.len()
    }

    pub fn evictions(&self) -> u64 {
        self.vertical.evictions() + self.horizontal.evictions()
    }

    /// Counts `f` when it is a `probe` ([`super::facts::is_probe`]).
    pub fn flow(&mut self, f: &FlowRecord, probe: bool, alerts: &mut Alerts) {
        if !probe {
            return;
        }
        let id = FlowId::of(f);
        let (src, dst, port) = (f.src.ip(), f.dst.ip(), Port::of(&id));
        let ev = Evidence {
            flow: id,
            target: dst,
            port,
            owner: f.src_owner.as_ref(),
        };
        let vkey = AlertKey {
            kind: Kind::PortScan,
            src,
            dst: Some(dst),
            proto: 0,
            port: 0,
        };
        let hkey = AlertKey { dst: None, ..vkey };
        // An active alert takes the attempt (and says how far the scan has gone).
        if alerts.update(&vkey, &ev) || alerts.update(&hkey, &ev) {
            return;
        }
        let now = f.first_seen_ms;
        let w = window(&mut self.vertical, (src, dst), now, self.window_ms);
        let ports_of_host = w.add(Distinct::Port(port.proto, port.port), id);
        if ports_of_host >= self.ports {
            let w = self.vertical.remove(&(src, dst)).expect("tracked");
            let detail = Detail::Counted {
                what: "vertical scan",
                rule: format!(
                    "rule: {} ports of one host in {} s",
                    self.ports,
                    self.window_ms / 1000
                ),
            };
            raise(alerts, vkey, &w, f.src_owner.as_ref(), detail);
            return;
        }
        // A sweep probes a host on a port or a few (a discovery's echo, 80 and 443); past
        // that the source is scanning this host's ports, and each port it tries must not
        // become a horizontal window of its own (a vertical scan of 65,535 ports would
        // make as many).
        if ports_of_host > SWEEP_PORTS {
            return;
        }
        let k = (src, port.proto, port.port);
        let w = window(&mut self.horizontal, k, now, self.window_ms);
        if w.add(Distinct::Host(dst), id) >= self.hosts {
            let w = self.horizontal.remove(&k).expect("tracked");
            let detail = Detail::Counted {
                what: "horizontal scan",
                rule: format!(
                    "rule: one port of {} hosts in {} s",
                    self.hosts,
                    self.window_ms / 1000
                ),
            };
            raise(alerts, hkey, &w, f.src_owner.as_ref(), detail);
        }
    }

    /// Forgets windows that ended before `now_ms`.
    pub fn sweep(&mut self, now_ms: i64) {
        let w = self.window_ms;
        self.vertical.retain(|_, v| now_ms - v.start_ms < w);
        self.horizontal.retain(|_, v| now_ms - v.start_ms < w);
    }
}

/// The window of `k` that `now` falls in (a new one when the last has ended).
fn window<K: std::hash::Hash + Eq + Copy>(
    t: &mut Tracked<K, Window>,
    k: K,
    now: i64,
    window_ms: i64,
) -> &mut Window {
    let w = t.get_or_insert_with(k, || Window::new(now));
    if now - w.start_ms >= window_ms {
        *w = Window::new(now);
    }
    w
}

fn raise(alerts: &mut Alerts, key: AlertKey, w: &Window, owner: Option<&Owner>, detail: Detail) {
    let evidence = w.first.iter().map(|f| Evidence {
        flow: *f,
        target: f.dst.ip(),
        port: Port::of(f),
        owner,
    });
    // Every attempt of the window counts, not only the kept ones.
    let uncounted = u64::from(w.attempts).saturating_sub(w.first.len() as u64);
    alerts.raise(key, evidence, uncounted, 1.0, detail);
}
