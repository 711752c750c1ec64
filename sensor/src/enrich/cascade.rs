//! The cascade: one batch of addresses through every source, in passes.
//!
//! 1. MaxMind databases and threat lists, in memory (microseconds an address).
//! 2. Team Cymru, in bulk, for public addresses the databases have no ASN for — answers are
//!    cached by BGP prefix, so one answer serves a whole network.
//! 3. Reverse DNS for public addresses, with the resolver's concurrency limit and timeout.
//!
//! Passes 2 and 3 run at the same time. A source that fails leaves its fields empty and
//! every other source's answers stand.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    Asn, Geo, Source, ThreatHit,
    cymru::{CymruAnswer, CymruClient, PrefixCache},
    geo::GeoDbs,
    rdns::{Rdns, RdnsOutcome},
    scope::is_public,
    threat::ThreatLists,
    unix_ms,
};
use crate::metrics::Metrics;

/// What is known about one address, and when each source should be asked again.
#[derive(Debug, Clone, PartialEq)]
pub struct IpInfo {
    pub ip: IpAddr,
    pub geo: Option<Geo>,
    pub asn: Option<Asn>,
    /// Which source gave `asn` (the databases, else Cymru).
    pub asn_source: Option<Source>,
    /// Cymru's BGP prefix for the address, when Cymru answered.
    pub bgp_prefix: Option<String>,
    pub hostname: Option<String>,
    /// `found`, `not_found` or why the lookup failed; None when reverse DNS was not asked.
    pub rdns_status: Option<String>,
    pub threat: Vec<ThreatHit>,
    /// Unix ms when the in-memory sources (databases, threat lists) were last applied.
    pub checked_ms: i64,
    /// Unix ms after which each remote source should be asked again; None: never asked.
    pub cymru_due_ms: Option<i64>,
    pub rdns_due_ms: Option<i64>,
}

impl IpInfo {
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            geo: None,
            asn: None,
            asn_source: None,
            bgp_prefix: None,
            hostname: None,
            rdns_status: None,
            threat: Vec::new(),
            checked_ms: 0,
            cymru_due_ms: None,
            rdns_due_ms: None,
        }
    }

    /// The threat lists that hold the address, comma-separated (the export column).
    pub fn threat_lists(&self) -> Option<String> {
        (!self.threat.is_empty()).then(|| {
            self.threat
                .iter()
                .map(|h| h.list.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// How long answers stay good.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    /// Databases and threat lists: they are re-applied after this long.
    pub mmdb: Duration,
    pub cymru: Duration,
    /// Cymru after a failed chunk.
    pub cymru_retry: Duration,
}

/// Watches a batch's passes (progress bars in `sensor enrich`).
pub trait Progress: Sync {
    fn pass(&self, _name: &'static str, _total: u64) {}
    fn inc(&self, _name: &'static str, _n: u64) {}
    fn done(&self, _name: &'static str) {}
}

/// No progress shown.
pub struct Quiet;
impl Progress for Quiet {}

/// The configured sources.
pub struct Sources {
    pub geo: GeoDbs,
    pub threat: ThreatLists,
    pub rdns: Option<Rdns>,
    pub cymru: Option<CymruClient>,
    pub cymru_cache: Mutex<PrefixCache>,
    pub ttls: Ttls,
    pub metrics: Option<Arc<Metrics>>,
}

/// `d` in milliseconds, saturating.
pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Sources {
    /// Counts `n` lookups of `source` that ended in `result`, each taking `took`.
    fn count(&self, source: Source, result: &str, took: Duration, n: usize) {
        let Some(m) = &self.metrics else { return };
        if n == 0 {
            return;
        }
        m.enrich_lookups
            .with_label_values(&[source.as_str(), result])
            .inc_by(n as u64);
        let seconds = m
            .enrich_lookup_seconds
            .with_label_values(&[source.as_str()]);
        for _ in 0..n {
            seconds.observe(took.as_secs_f64());
        }
    }

    /// Every address of `ips` through the cascade. `prior` holds what was known before (from
    /// `ip_info`): remote sources are only asked when their answer is due. The result has
    /// one entry per address of `ips`, in order.
    pub async fn enrich(
        &self,
        ips: &[IpAddr],
        prior: &HashMap<IpAddr, IpInfo>,
        progress: &dyn Progress,
    ) -> Vec<IpInfo> {
        let now = unix_ms();
        let mut out: Vec<IpInfo> = ips
            .iter()
            .map(|ip| prior.get(ip).cloned().unwrap_or_else(|| IpInfo::new(*ip)))
            .collect();

        // Pass 1: in memory.
        progress.pass("mmdb+threat", out.len() as u64);
        for info in &mut out {
            let t = Instant::now();
            let (geo, asn) = self.geo.lookup(info.ip);
            let took = t.elapsed();
            if self.geo.has_geo() || self.geo.has_asn() {
                let found = geo.is_some() || asn.is_some();
                self.count(
                    Source::Mmdb,
                    if found { "found" } else { "not_found" },
                    took,
                    1,
                );
            }
            if geo.is_some() || info.geo.is_none() {
                info.geo = geo;
            }
            if let Some(asn) = asn {
                info.asn = Some(asn);
                info.asn_source = Some(Source::Mmdb);
                info.bgp_prefix = None;
            }
            if !self.threat.is_empty() {
                let t = Instant::now();
                info.threat = self.threat.lookup(info.ip);
                let result = if info.threat.is_empty() {
                    "miss"
                } else {
                    "hit"
                };
                self.count(Source::Threat, result, t.elapsed(), 1);
            }
            info.checked_ms = now;
        }
        progress.inc("mmdb+threat", out.len() as u64);
        progress.done("mmdb+threat");

        // Passes 2 and 3, together.
        let cymru_want: Vec<usize> = match &self.cymru {
            Some(_) => (0..out.len())
                .filter(|&i| {
                    let info = &out[i];
                    is_public(info.ip)
                        && info.asn_source != Some(Source::Mmdb)
                        && info.cymru_due_ms.is_none_or(|due| due <= now)
                })
                .collect(),
            None => Vec::new(),
        };
        let rdns_want: Vec<usize> = match &self.rdns {
            Some(_) => (0..out.len())
                .filter(|&i| {
                    is_public(out[i].ip) && out[i].rdns_due_ms.is_none_or(|due| due <= now)
                })
                .collect(),
            None => Vec::new(),
        };
        let cymru_ips: Vec<IpAddr> = cymru_want.iter().map(|&i| out[i].ip).collect();
        let rdns_ips: Vec<IpAddr> = rdns_want.iter().map(|&i| out[i].ip).collect();
        let (cymru_answers, rdns_answers) = tokio::join!(
            self.cymru_pass(&cymru_ips, progress),
            self.rdns_pass(&rdns_ips, progress)
        );
        for (&i, answer) in cymru_want.iter().zip(cymru_answers) {
            let info = &mut out[i];
            match answer {
                Some(a) => {
                    if let Some(asn) = a.asn {
                        info.asn = Some(Asn {
                            asn,
                            org: a.as_name.clone(),
                        });
                        info.asn_source = Some(Source::Cymru);
                        info.bgp_prefix = a.prefix.map(|p| p.to_string());
                    }
                    info.cymru_due_ms = Some(now.saturating_add(ms(self.ttls.cymru)));
                }
                None => info.cymru_due_ms = Some(now.saturating_add(ms(self.ttls.cymru_retry))),
            }
        }
        if let Some(rdns) = &self.rdns {
            for (&i, outcome) in rdns_want.iter().zip(rdns_answers) {
                let info = &mut out[i];
                info.rdns_status = Some(outcome.result().to_string());
                let wait = match outcome {
                    RdnsOutcome::Name { name, ttl } => {
                        info.hostname = Some(name);
                        ttl
                    }
                    RdnsOutcome::NoName { ttl } => {
                        info.hostname = None;
                        ttl
                    }
                    // A failure keeps an earlier name: a flaky resolver doesn't erase it.
                    RdnsOutcome::Failed { .. } => rdns.retry_after(),
                };
                info.rdns_due_ms = Some(now.saturating_add(ms(wait)));
            }
        }
        out
    }

    /// Cymru answers for `ips` (None where no answer came), from the prefix cache first.
    async fn cymru_pass(
        &self,
        ips: &[IpAddr],
        progress: &dyn Progress,
    ) -> Vec<Option<CymruAnswer>> {
        let Some(client) = &self.cymru else {
            return Vec::new();
        };
        if ips.is_empty() {
            return Vec::new();
        }
        progress.pass("cymru", ips.len() as u64);
        let mut found: HashMap<IpAddr, CymruAnswer> = HashMap::new();
        let mut ask = Vec::new();
        {
            let cache = self.cymru_cache.lock().expect("cache lock");
            let now = Instant::now();
            for ip in ips {
                match cache.get(*ip, now) {
                    Some(a) => {
                        found.insert(*ip, a);
                    }
                    None => ask.push(*ip),
                }
            }
        }
        let cached = ips.len() - ask.len();
        self.count(Source::Cymru, "cached", Duration::ZERO, cached);
        progress.inc("cymru", found.len() as u64);
        if !ask.is_empty() {
            let t = Instant::now();
            let (answers, errors) = client.lookup(&ask).await;
            let took = t.elapsed();
            let expires = Instant::now() + self.ttls.cymru;
            let mut cache = self.cymru_cache.lock().expect("cache lock");
            let mut with_asn = 0;
            let answered = answers.len();
            for a in answers {
                if a.asn.is_some() {
                    with_asn += 1;
                    if a.prefix.is_some() {
                        cache.insert(&a, expires);
                    }
                }
                found.insert(a.ip, a);
            }
            drop(cache);
            self.count(Source::Cymru, "found", took, with_asn);
            self.count(Source::Cymru, "not_found", took, answered - with_asn);
            for e in &errors {
                tracing::warn!(error = %e, "Team Cymru lookup");
            }
            let failed = ask.iter().filter(|ip| !found.contains_key(ip)).count();
            self.count(
                Source::Cymru,
                cymru_error_label(errors.first()),
                took,
                failed,
            );
            progress.inc("cymru", ask.len() as u64);
        }
        progress.done("cymru");
        ips.iter().map(|ip| found.remove(ip)).collect()
    }

    async fn rdns_pass(&self, ips: &[IpAddr], progress: &dyn Progress) -> Vec<RdnsOutcome> {
        let Some(rdns) = &self.rdns else {
            return Vec::new();
        };
        if ips.is_empty() {
            return Vec::new();
        }
        progress.pass("rdns", ips.len() as u64);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, ip) in ips.iter().enumerate() {
            let rdns = rdns.clone();
            let ip = *ip;
            tasks.spawn(async move {
                let t = Instant::now();
                let o = rdns.lookup(ip).await;
                (i, o, t.elapsed())
            });
        }
        let mut out = vec![RdnsOutcome::Failed { reason: "error" }; ips.len()];
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, outcome, took)) = done {
                self.count(Source::Rdns, outcome.result(), took, 1);
                out[i] = outcome;
            }
            progress.inc("rdns", 1);
        }
        progress.done("rdns");
        out
    }
}

fn cymru_error_label(e: Option<&super::cymru::CymruError>) -> &'static str {
    use super::cymru::CymruError as E;
    match e {
        Some(E::Timeout { .. }) => "timeout",
        Some(E::Closed { .. }) => "closed",
        Some(E::Parse { .. }) => "garbage",
        Some(E::Connect { .. }) => "connect",
        _ => "error",
    }
}
