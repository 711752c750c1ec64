//! Alerts while they are active: raised once, then updated by every further flow of the
//! same thing until it has been quiet for `alert_idle_ms` (flow time). Changed alerts are
//! handed to the writer as rows, each row rewriting its alert by key.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use foldhash::HashMap;

use crate::{
    flow::{FlowRecord, Owner},
    store::alerts::AlertRow,
};

/// What a detector found. Declared in [`Kind::ALL`]'s order: `kind as usize` indexes
/// per-kind arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    PortScan,
    BruteForce,
    Exfiltration,
    Beacon,
    ThreatContact,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::PortScan,
        Kind::BruteForce,
        Kind::Exfiltration,
        Kind::Beacon,
        Kind::ThreatContact,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PortScan => "port_scan",
            Kind::BruteForce => "brute_force",
            Kind::Exfiltration => "exfiltration",
            Kind::Beacon => "beacon",
            Kind::ThreatContact => "threat_contact",
        }
    }
}

/// What makes an alert one: its kind, its source, and (per kind) its target host, port and
/// protocol. A horizontal scan has no target host (it is about many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub kind: Kind,
    pub src: IpAddr,
    pub dst: Option<IpAddr>,
    pub proto: u8,
    pub port: u16,
}

/// Targets and ports kept per alert (the first ones); the rest are counted.
const LIST_MAX: usize = 16;

/// The first distinct values in order, and how many distinct values there are (counted
/// exactly up to [`DISTINCT_MAX`], "at least" beyond).
#[derive(Debug, Clone)]
struct Firsts<T> {
    items: Vec<T>,
    seen: std::collections::BTreeSet<T>,
    overflow: bool,
}

/// Distinct targets or ports counted per alert.
const DISTINCT_MAX: usize = 65_536;

impl<T> Default for Firsts<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            seen: std::collections::BTreeSet::new(),
            overflow: false,
        }
    }
}

impl<T: Ord + Copy + std::fmt::Display> Firsts<T> {
    fn add(&mut self, v: T) {
        if self.seen.contains(&v) {
            return;
        }
        if self.seen.len() >= DISTINCT_MAX {
            self.overflow = true;
            return;
        }
        self.seen.insert(v);
        if self.items.len() < LIST_MAX {
            self.items.push(v);
        }
    }

    /// `N` or, past the bound, `N+`.
    fn distinct(&self) -> String {
        format!(
            "{}{}",
            self.seen.len(),
            if self.overflow { "+" } else { "" }
        )
    }

    fn text(&self) -> String {
        let mut s = String::new();
        for (i, v) in self.items.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{v}");
        }
        let rest = self.seen.len() - self.items.len();
        if rest > 0 || self.overflow {
            let _ = write!(s, ",+{rest}{}", if self.overflow { "+" } else { "" });
        }
        s
    }
}

/// `tcp/22`, `udp/53`, `icmp/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub proto: u8,
    pub port: u16,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.proto {
            6 => write!(f, "tcp/{}", self.port),
            17 => write!(f, "udp/{}", self.port),
            // ICMP's "port" is type << 8 | code: the type says what it was.
            1 => write!(f, "icmp/{}", self.port >> 8),
            58 => write!(f, "icmpv6/{}", self.port >> 8),
            p => write!(f, "{p}/{}", self.port),
        }
    }
}

impl Port {
    /// The destination port of `f`.
    pub fn of(f: &FlowId) -> Self {
        Self {
            proto: f.proto,
            port: f.dst.port(),
        }
    }
}

struct Active {
    first_ms: i64,
    last_ms: i64,
    targets: Firsts<IpAddr>,
    ports: Firsts<Port>,
    count: u64,
    score: f64,
    owner: Option<Owner>,
    detail: Detail,
    evidence: Vec<String>,
    changed: bool,
}

/// An alert's explanation: written by its detector, or made from the alert's own counts
/// when the row is written (a scan's figures change with every probe).
pub enum Detail {
    Text(String),
    /// `what` (e.g. "vertical scan"): N flows to P ports of H hosts over S s, then `rule`.
    Counted {
        what: &'static str,
        rule: String,
    },
}

impl Detail {
    fn render(&self, a: &Active) -> String {
        match self {
            Detail::Text(t) => t.clone(),
            Detail::Counted { what, rule } => format!(
                "{what}: {} failed or unanswered attempts on {} distinct ports of {} hosts over \
                 {} s ({rule})",
                a.count,
                a.ports.distinct(),
                a.targets.distinct(),
                (a.last_ms - a.first_ms).max(0) / 1000
            ),
        }
    }
}

/// The active alerts and what changed since the writer last heard.
pub struct Alerts {
    active: HashMap<AlertKey, Active>,
    idle_ms: i64,
    evidence_max: usize,
    /// New alerts since start, by kind (in [`Kind::ALL`] order).
    raised: [u64; 5],
    any_changed: bool,
    /// Log a line per new alert (off in benchmarks and unit tests).
    pub log: bool,
}

/// A flow as evidence names it: enough to find its row in `flows` (`first_seen_ms` and
/// the 5-tuple), small enough to keep a few per tracked key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowId {
    pub start_ms: i64,
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl FlowId {
    pub fn of(f: &FlowRecord) -> Self {
        Self {
            start_ms: f.first_seen_ms,
            proto: f.proto,
            src: f.src,
            dst: f.dst,
        }
    }
}

/// What a detector says of one flow that belongs to an alert.
pub struct Evidence<'a> {
    pub flow: FlowId,
    /// The target host to list (the flow's destination, or the listed address).
    pub target: IpAddr,
    pub port: Port,
    /// The source's own process, if a local one was seen.
    pub owner: Option<&'a Owner>,
}

impl Alerts {
    pub fn new(idle_ms: u64, evidence_max: usize) -> Self {
        Self {
            active: HashMap::default(),
            idle_ms: idle_ms as i64,
            evidence_max,
            raised: [0; 5],
            any_changed: false,
            log: true,
        }
    }

    pub fn raised(&self, kind: Kind) -> u64 {
        self.raised[kind as usize]
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Whether `key` is an active alert at flow time `now_ms` (an alert quiet for longer
    /// than the idle time is over: the next one is new).
    pub fn is_active(&mut self, key: &AlertKey, now_ms: i64) -> bool {
        match self.active.get(key) {
            Some(a) if now_ms - a.last_ms > self.idle_ms => {
                self.active.remove(key);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Adds `ev` to the active alert `key`; false when there is none (nothing done).
    pub fn update(&mut self, key: &AlertKey, ev: &Evidence<'_>) -> bool {
        if !self.is_active(key, ev.flow.start_ms) {
            return false;
        }
        let max = self.evidence_max;
        let a = self.active.get_mut(key).expect("active");
        add(a, ev, max);
        self.any_changed = true;
        true
    }

    /// Updates `key`'s score and detail (after [`Self::update`] or [`Self::raise`]).
    pub fn describe(&mut self, key: &AlertKey, score: f64, detail: impl FnOnce() -> String) {
        if let Some(a) = self.active.get_mut(key) {
            a.score = score;
            a.detail = Detail::Text(detail());
            a.changed = true;
            self.any_changed = true;
        }
    }

    /// Raises a new alert `key` from the flows that met the rule (`evidence`, oldest
    /// first, and `uncounted` more that it does not name), with its score and detail.
    pub fn raise<'a>(
        &mut self,
        key: AlertKey,
        evidence: impl IntoIterator<Item = Evidence<'a>>,
        uncounted: u64,
        score: f64,
        detail: impl Into<Detail>,
    ) {
        let mut a = Active {
            first_ms: i64::MAX,
            last_ms: i64::MIN,
            targets: Firsts::default(),
            ports: Firsts::default(),
            count: 0,
            score,
            owner: None,
            detail: detail.into(),
            evidence: Vec::new(),
            changed: true,
        };
        for ev in evidence {
            add(&mut a, &ev, self.evidence_max);
        }
        if a.count == 0 {
            return;
        }
        a.count += uncounted;
        self.raised[key.kind as usize] += 1;
        if self.log {
            let detail = a.detail.render(&a);
            tracing::warn!(
                kind = key.kind.as_str(),
                src = %key.src,
                targets = a.targets.text(),
                ports = a.ports.text(),
                comm = a.owner.as_ref().map(|o| o.comm.as_str()),
                "alert: {detail}"
            );
        }
        self.active.insert(key, a);
        self.any_changed = true;
    }

    /// The rows of alerts that changed since the last call.
    pub fn take_rows(&mut self) -> Vec<AlertRow> {
        if !self.any_changed {
            return Vec::new();
        }
        self.any_changed = false;
        let mut rows: Vec<AlertRow> = self
            .active
            .iter_mut()
            .filter(|(_, a)| a.changed)
            .map(|(k, a)| {
                a.changed = false;
                row(k, a)
            })
            .collect();
        // In a stable order (the map's is random).
        rows.sort_by(|a, b| (a.first_seen_ms, &a.key).cmp(&(b.first_seen_ms, &b.key)));
        rows
    }

    /// Forgets alerts quiet for longer than the idle time (their last row was taken).
    pub fn expire(&mut self, now_ms: i64) {
        let idle = self.idle_ms;
        self.active
            .retain(|_, a| a.changed || now_ms - a.last_ms <= idle);
    }
}

impl From<String> for Detail {
    fn from(t: String) -> Self {
        Detail::Text(t)
    }
}

fn add(a: &mut Active, ev: &Evidence<'_>, evidence_max: usize) {
    let f = ev.flow;
    a.first_ms = a.first_ms.min(f.start_ms);
    a.last_ms = a.last_ms.max(f.start_ms);
    a.targets.add(ev.target);
    a.ports.add(ev.port);
    a.count += 1;
    if a.owner.is_none()
        && let Some(o) = ev.owner
    {
        a.owner = Some(o.clone());
    }
    if a.evidence.len() < evidence_max {
        a.evidence.push(
            serde_json::json!({
                "start_ms": f.start_ms,
                "proto": f.proto,
                "src": f.src.to_string(),
                "dst": f.dst.to_string(),
            })
            .to_string(),
        );
    }
    a.changed = true;
}

fn row(k: &AlertKey, a: &Active) -> AlertRow {
    let mut key = format!("{}|{}", k.kind.as_str(), k.src);
    if let Some(d) = k.dst {
        let _ = write!(key, "|{d}");
    }
    if k.port != 0 || k.proto != 0 {
        let _ = write!(
            key,
            "|{}",
            Port {
                proto: k.proto,
                port: k.port
            }
        );
    }
    let _ = write!(key, "|{}", a.first_ms);
    AlertRow {
        kind: k.kind.as_str(),
        key,
        first_seen_ms: a.first_ms,
        last_seen_ms: a.last_ms,
        src_ip: k.src.to_string(),
        targets: a.targets.text(),
        ports: a.ports.text(),
        count: a.count,
        score: a.score,
        pid: a.owner.as_ref().map(|o| o.pid),
        comm: a.owner.as_ref().map(|o| o.comm.clone()),
        unit: a.owner.as_ref().and_then(|o| o.unit.clone()),
        detail: a.detail.render(a),
        evidence: format!("[{}]", a.evidence.join(",")),
    }
}
