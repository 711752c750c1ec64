//! The cascade: addresses through every source, in passes that don't wait for each other.
//!
//! 1. MaxMind databases and threat lists, in memory (microseconds an address):
//!    [`Sources::local`]. Its answers are stored at once ([`Fields::Local`]).
//! 2. Team Cymru, in bulk, for public addresses the databases have no ASN for — answers are
//!    cached by BGP prefix, so one answer serves a whole network: [`Remote::cymru`].
//! 3. Reverse DNS for public addresses, with the resolver's concurrency limit, timeout and
//!    breaker: [`Remote::rdns`].
//!
//! Passes 2 and 3 each amend the stored row later with their own fields only
//! ([`Fields::Cymru`], [`Fields::Rdns`]), so a source that hangs or fails leaves its own
//! fields empty and never delays, drops or caps the others' answers.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    Asn, Source,
    cymru::{CymruAnswer, CymruClient, PrefixCache},
    geo::GeoDbs,
    rdns::{Rdns, RdnsOutcome},
    scope::is_public,
    threat::ThreatLists,
    unix_ms,
};
use crate::metrics::Metrics;

pub use crate::store::info::{Fields, IpInfo, IpUpdate};

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
    pub cymru_cache: Arc<Mutex<PrefixCache>>,
    pub ttls: Ttls,
    pub metrics: Option<Arc<Metrics>>,
}

/// The network sources of a [`Sources`], shareable with the tasks that wait on them.
#[derive(Clone)]
pub struct Remote {
    pub rdns: Option<Rdns>,
    pub cymru: Option<CymruClient>,
    cymru_cache: Arc<Mutex<PrefixCache>>,
    ttls: Ttls,
    metrics: Option<Arc<Metrics>>,
}

/// Counts `n` lookups of `source` that ended in `result`, each taking `took`.
fn count(metrics: &Option<Arc<Metrics>>, source: Source, result: &str, took: Duration, n: usize) {
    let Some(m) = metrics else { return };
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

/// `d` in milliseconds, saturating.
pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Sources {
    /// The network sources, for tasks of their own.
    pub fn remote(&self) -> Remote {
        Remote {
            rdns: self.rdns.clone(),
            cymru: self.cymru.clone(),
            cymru_cache: Arc::clone(&self.cymru_cache),
            ttls: self.ttls,
            metrics: self.metrics.clone(),
        }
    }

    /// Pass 1, in memory, for every address of `ips` (in order). `prior` holds what was
    /// known before (from `ip_info`); remote fields are carried over from it.
    pub fn local(
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
        progress.pass("mmdb+threat", out.len() as u64);
        let has_dbs = self.geo.has_geo() || self.geo.has_asn();
        for info in &mut out {
            let t = Instant::now();
            let errors_before = self.geo.errors();
            let (geo, asn) = self.geo.lookup(info.ip);
            let took = t.elapsed();
            if has_dbs {
                let result = if self.geo.errors() > errors_before {
                    "error"
                } else if geo.is_some() || asn.is_some() {
                    "found"
                } else {
                    "not_found"
                };
                count(&self.metrics, Source::Mmdb, result, took, 1);
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
                count(&self.metrics, Source::Threat, result, t.elapsed(), 1);
            }
            info.checked_ms = now;
        }
        progress.inc("mmdb+threat", out.len() as u64);
        progress.done("mmdb+threat");
        out
    }

    /// Every address of `ips` through every pass, for a job that wants whole answers
    /// (`sensor enrich`). Reverse DNS doesn't depend on the databases, so it starts first
    /// and waits on the network while the in-memory pass runs; Cymru follows the databases
    /// (it is only asked what they don't know). Each network pass is bounded by its own
    /// deadlines and breaker. One entry per address, in order.
    pub async fn enrich(
        &self,
        ips: &[IpAddr],
        prior: &HashMap<IpAddr, IpInfo>,
        progress: &dyn Progress,
    ) -> Vec<IpInfo> {
        let remote = self.remote();
        let base: Vec<IpInfo> = ips
            .iter()
            .map(|ip| prior.get(ip).cloned().unwrap_or_else(|| IpInfo::new(*ip)))
            .collect();
        let (_, rdns_want) = remote.wants(&base, unix_ms());
        let rdns_in = pick(&base, &rdns_want);
        drop(base);
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let local = async {
            if multi_thread {
                // The lookups' tasks go on running on the other workers meanwhile.
                tokio::task::block_in_place(|| self.local(ips, prior, progress))
            } else {
                self.local(ips, prior, progress)
            }
        };
        let (rdns, mut out) = tokio::join!(remote.rdns(rdns_in, progress), local);
        let (cymru_want, _) = remote.wants(&out, unix_ms());
        let cymru = remote.cymru(pick(&out, &cymru_want), progress).await;
        for (&i, a) in cymru_want.iter().zip(cymru) {
            take_cymru(&mut out[i], a);
        }
        for (&i, a) in rdns_want.iter().zip(rdns) {
            take_rdns(&mut out[i], a);
        }
        out
    }
}

/// Clones of the entries of `infos` at `want`.
fn pick(infos: &[IpInfo], want: &[usize]) -> Vec<IpInfo> {
    want.iter().map(|&i| infos[i].clone()).collect()
}

/// Copies the fields of [`Fields::Cymru`].
pub fn take_cymru(to: &mut IpInfo, from: IpInfo) {
    to.asn = from.asn;
    to.asn_source = from.asn_source;
    to.bgp_prefix = from.bgp_prefix;
    to.cymru_due_ms = from.cymru_due_ms;
}

/// Copies the fields of [`Fields::Rdns`].
pub fn take_rdns(to: &mut IpInfo, from: IpInfo) {
    to.hostname = from.hostname;
    to.rdns_status = from.rdns_status;
    to.rdns_due_ms = from.rdns_due_ms;
}

impl Remote {
    /// Which of `infos` each network source should be asked about (indexes): public
    /// addresses whose answer is due; Cymru only where the databases gave no ASN.
    pub fn wants(&self, infos: &[IpInfo], now: i64) -> (Vec<usize>, Vec<usize>) {
        let cymru = match &self.cymru {
            Some(_) => (0..infos.len())
                .filter(|&i| {
                    let info = &infos[i];
                    is_public(info.ip)
                        && info.asn_source != Some(Source::Mmdb)
                        && info.cymru_due_ms.is_none_or(|due| due <= now)
                })
                .collect(),
            None => Vec::new(),
        };
        let rdns = match &self.rdns {
            Some(_) => (0..infos.len())
                .filter(|&i| {
                    is_public(infos[i].ip) && infos[i].rdns_due_ms.is_none_or(|due| due <= now)
                })
                .collect(),
            None => Vec::new(),
        };
        (cymru, rdns)
    }

    /// When a source not asked now (shed) should be asked again.
    fn retry_ms(&self, now: i64) -> i64 {
        now.saturating_add(ms(self.ttls.cymru_retry))
    }

    /// Marks `infos` as not asked of `source` (its work was shed: too much in flight, or
    /// the sensor stopped): counted, and asked again after the retry interval.
    pub fn shed(&self, source: Source, mut infos: Vec<IpInfo>) -> Vec<IpInfo> {
        let due = self.retry_ms(unix_ms());
        count(&self.metrics, source, "shed", Duration::ZERO, infos.len());
        for info in &mut infos {
            match source {
                Source::Rdns => {
                    info.rdns_status = Some("shed".to_string());
                    info.rdns_due_ms = Some(due);
                }
                _ => info.cymru_due_ms = Some(due),
            }
        }
        infos
    }

    /// Pass 2: Cymru's answers applied to `infos` (the same addresses, in order), from the
    /// prefix cache first.
    pub async fn cymru(&self, mut infos: Vec<IpInfo>, progress: &dyn Progress) -> Vec<IpInfo> {
        let now = unix_ms();
        let ips: Vec<IpAddr> = infos.iter().map(|i| i.ip).collect();
        let answers = self.cymru_pass(&ips, progress).await;
        for (info, answer) in infos.iter_mut().zip(answers) {
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
        infos
    }

    /// Pass 3: reverse DNS applied to `infos` (the same addresses, in order).
    pub async fn rdns(&self, mut infos: Vec<IpInfo>, progress: &dyn Progress) -> Vec<IpInfo> {
        let Some(rdns) = &self.rdns else {
            return infos;
        };
        let now = unix_ms();
        let ips: Vec<IpAddr> = infos.iter().map(|i| i.ip).collect();
        let outcomes = self.rdns_pass(&ips, progress).await;
        for (info, outcome) in infos.iter_mut().zip(outcomes) {
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
                RdnsOutcome::Failed { .. } | RdnsOutcome::Shed => rdns.retry_after(),
            };
            info.rdns_due_ms = Some(now.saturating_add(ms(wait)));
        }
        infos
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
        count(
            &self.metrics,
            Source::Cymru,
            "cached",
            Duration::ZERO,
            cached,
        );
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
            count(&self.metrics, Source::Cymru, "found", took, with_asn);
            count(
                &self.metrics,
                Source::Cymru,
                "not_found",
                took,
                answered - with_asn,
            );
            let mut shed = 0;
            for e in &errors {
                match e {
                    super::cymru::CymruError::Shed { asked, .. } => shed += asked,
                    // Rate-limited (log_throttle).
                    e => tracing::warn!(error = %e, "Team Cymru lookup"),
                }
            }
            let failed = ask.iter().filter(|ip| !found.contains_key(ip)).count();
            count(&self.metrics, Source::Cymru, "shed", took, shed);
            let first = errors
                .iter()
                .find(|e| !matches!(e, super::cymru::CymruError::Shed { .. }));
            count(
                &self.metrics,
                Source::Cymru,
                cymru_error_label(first),
                took,
                failed.saturating_sub(shed),
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
        // At most the resolver's concurrency in tasks at once, so that once its breaker is
        // open the rest are shed right here, without a task each.
        let mut tasks = tokio::task::JoinSet::new();
        let mut out = vec![RdnsOutcome::Failed { reason: "error" }; ips.len()];
        let mut next = 0;
        let mut shed = 0;
        loop {
            while tasks.len() < rdns.concurrency() && next < ips.len() {
                let i = next;
                next += 1;
                if rdns.is_down() {
                    out[i] = RdnsOutcome::Shed;
                    shed += 1;
                    continue;
                }
                let rdns = rdns.clone();
                let ip = ips[i];
                tasks.spawn(async move {
                    let t = Instant::now();
                    let o = rdns.lookup(ip).await;
                    (i, o, t.elapsed())
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            if let Ok((i, outcome, took)) = done {
                count(&self.metrics, Source::Rdns, outcome.result(), took, 1);
                out[i] = outcome;
            }
            progress.inc("rdns", 1);
        }
        count(&self.metrics, Source::Rdns, "shed", Duration::ZERO, shed);
        progress.inc("rdns", shed as u64);
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
