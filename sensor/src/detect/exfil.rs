//! `exfiltration`: an initiator sending far more to one remote than it gets back, within
//! `exfil_window_ms`. Uploads are what the initiator sends (a download is the responder's
//! sending, and is not this), and only flows that sent more than they got count: most
//! flows are downloads, and tracking every pair for them would cost the stage most of its
//! time for nothing. Two rules, both needing out ≥ `exfil_ratio` × in over those flows:
//! - absolute: out ≥ `exfil_bytes` (ntopng's elephant-flow check, at a host's scale);
//! - baseline: out ≥ `exfil_min_bytes` and ≥ `exfil_baseline_factor` × the initiator's own
//!   baseline (the mean of its finished windows' totals to each remote), once it has
//!   `exfil_baseline_windows` of them.
use std::net::IpAddr;

use super::{
    alert::{AlertKey, Alerts, Evidence, FlowId, Kind, Port},
    config::DetectConfig,
    facts,
    tracked::Tracked,
};
use crate::flow::FlowRecord;

const KEPT: usize = 4;

struct Window {
    start_ms: i64,
    out: u64,
    inb: u64,
    flows: u32,
    first: Vec<FlowId>,
    /// The rule met, once raised (an update keeps saying it).
    rule: String,
}

impl Window {
    fn new(start_ms: i64) -> Self {
        Self {
            start_ms,
            out: 0,
            inb: 0,
            flows: 0,
            first: Vec::new(),
            rule: String::new(),
        }
    }
}

/// What an initiator usually sends a remote in a window.
#[derive(Default)]
struct Baseline {
    mean: f64,
    windows: u32,
}

impl Baseline {
    /// A running mean over the first 100 windows, then an exponential one (α 0.01).
    fn add(&mut self, total: u64) {
        self.windows = self.windows.saturating_add(1);
        let n = f64::from(self.windows.min(100));
        self.mean += (total as f64 - self.mean) / n;
    }
}

pub struct Exfiltration {
    window_ms: i64,
    bytes: u64,
    ratio: f64,
    min_bytes: u64,
    factor: f64,
    baseline_windows: u32,
    pairs: Tracked<(IpAddr, IpAddr), Window>,
    baselines: Tracked<IpAddr, Baseline>,
}

impl Exfiltration {
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            window_ms: cfg.exfil_window_ms as i64,
            bytes: cfg.exfil_bytes,
            ratio: cfg.exfil_ratio,
            min_bytes: cfg.exfil_min_bytes,
            factor: cfg.exfil_baseline_factor,
            baseline_windows: cfg.exfil_baseline_windows,
            pairs: Tracked::new(cfg.max_tracked),
            baselines: Tracked::new(cfg.max_tracked),
        }
    }

    pub fn tracked(&self) -> usize {
        self.pairs.len() + self.baselines.len()
    }

    pub fn evictions(&self) -> u64 {
        self.pairs.evictions() + self.baselines.evictions()
    }

    pub fn flow(&mut self, f: &FlowRecord, alerts: &mut Alerts) {
        if f.amends {
            return;
        }
        let (out, inb) = (facts::bytes_out(f), facts::bytes_in(f));
        if out == 0 || out <= inb {
            return;
        }
        let (src, dst) = (f.src.ip(), f.dst.ip());
        let now = f.first_seen_ms;
        let w = self
            .pairs
            .get_or_insert_with((src, dst), || Window::new(now));
        if now - w.start_ms >= self.window_ms {
            let done = w.out;
            *w = Window::new(now);
            self.baselines
                .get_or_insert_with(src, Baseline::default)
                .add(done);
        }
        let w = self.pairs.get_mut(&(src, dst)).expect("tracked");
        w.out += out;
        w.inb += inb;
        w.flows += 1;
        let id = FlowId::of(f);
        if w.first.len() < KEPT {
            w.first.push(id);
        }
        let key = AlertKey {
            kind: Kind::Exfiltration,
            src,
            dst: Some(dst),
            proto: 0,
            port: 0,
        };
        let ev = Evidence {
            flow: id,
            target: dst,
            port: Port::of(&id),
            owner: f.src_owner.as_ref(),
        };
        let (w_out, w_in, w_flows, w_start) = (w.out, w.inb, w.flows, w.start_ms);
        let w = self.pairs.get_mut(&(src, dst)).expect("tracked");
        let figures = move || {
            format!(
                "{:.1} MiB sent to {dst} and {:.1} MiB back in {} flows over {} s",
                w_out as f64 / 1048576.0,
                w_in as f64 / 1048576.0,
                w_flows,
                (now - w_start).max(0) / 1000
            )
        };
        if alerts.update(&key, &ev) {
            let rule = &w.rule;
            alerts.describe(&key, 1.0, || format!("{} {rule}", figures()));
            return;
        }
        if (w_out as f64) < self.ratio * w_in as f64 {
            return;
        }
        let rule = if w_out >= self.bytes {
            format!(
                "(rule: at least {} MiB and {}x what came back, in {} s)",
                self.bytes >> 20,
                self.ratio,
                self.window_ms / 1000
            )
        } else {
            let Some(b) = self.baselines.get_mut(&src) else {
                return;
            };
            if w_out < self.min_bytes
                || b.windows < self.baseline_windows
                || (w_out as f64) < self.factor * b.mean
            {
                return;
            }
            format!(
                "(rule: {}x this host's baseline of {:.1} MiB a remote, from {} MiB)",
                self.factor,
                b.mean / 1048576.0,
                self.min_bytes >> 20
            )
        };
        let w = self.pairs.get_mut(&(src, dst)).expect("tracked");
        w.rule = rule.clone();
        let owner = f.src_owner.as_ref();
        let evidence = w.first.iter().map(|id| Evidence {
            flow: *id,
            target: dst,
            port: Port::of(id),
            owner,
        });
        let uncounted = u64::from(w.flows) - w.first.len() as u64;
        alerts.raise(
            key,
            evidence,
            uncounted,
            1.0,
            format!("{} {rule}", figures()),
        );
    }

    /// Ends windows that are over, into their initiators' baselines.
    pub fn sweep(&mut self, now_ms: i64) {
        let w = self.window_ms;
        let mut done = Vec::new();
        self.pairs.retain(|(src, _), v| {
            let keep = now_ms - v.start_ms < w;
            if !keep {
                done.push((*src, v.out));
            }
            keep
        });
        // In a stable order: the baseline's mean depends on it.
        done.sort_unstable();
        for (src, out) in done {
            self.baselines
                .get_or_insert_with(src, Baseline::default)
                .add(out);
        }
    }
}
