//! Reverse DNS (PTR) through hickory-resolver: the system's resolv.conf or configured
//! servers, a concurrency limit so a burst of new addresses can't flood the resolver, a
//! timeout per lookup, and the answer's TTL (or the negative TTL) so the caller knows when
//! to ask again. A server that stops answering opens a [`Breaker`]: lookups are shed
//! at once (and asked again after the retry interval) instead of each waiting out the
//! timeout.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{Name, RData},
    },
};
use tokio::sync::Semaphore;

use super::breaker::{Admit, Breaker};

#[derive(Debug, thiserror::Error)]
pub enum RdnsError {
    #[error("reading the system's DNS configuration (/etc/resolv.conf): {source}")]
    SystemConfig {
        #[source]
        source: NetError,
    },
    #[error("building the DNS resolver: {source}")]
    Build {
        #[source]
        source: NetError,
    },
}

#[derive(Debug, Clone)]
pub struct RdnsConfig {
    /// DNS servers to ask (UDP, then TCP on truncation); empty means resolv.conf's.
    pub servers: Vec<SocketAddr>,
    /// How long one lookup may take, retries included.
    pub timeout: Duration,
    /// Lookups in flight at once.
    pub concurrency: usize,
    /// How long "no name" is remembered when the answer carries no SOA negative TTL.
    pub negative_ttl: Duration,
    /// Upper bound on any answer's TTL, so renamed hosts are seen eventually.
    pub max_ttl: Duration,
    /// How long to wait before asking again after a failure (timeout, SERVFAIL, refused).
    pub retry: Duration,
}

/// What one reverse lookup gave.
#[derive(Debug, Clone, PartialEq)]
pub enum RdnsOutcome {
    /// A PTR name (without the trailing dot), valid for `ttl`.
    Name { name: String, ttl: Duration },
    /// The server says there is no name (NXDOMAIN or no PTR): remembered for `ttl`.
    NoName { ttl: Duration },
    /// No usable answer; `reason` is a metric label (`timeout`, `servfail`, `refused`,
    /// `error`). Asked again after the retry interval.
    Failed { reason: &'static str },
    /// Not asked: the server has not been answering (the breaker is open). Asked again
    /// after the retry interval.
    Shed,
}

impl RdnsOutcome {
    /// The `result` label of `sensor_enrich_lookups_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Name { .. } => "found",
            Self::NoName { .. } => "not_found",
            Self::Failed { reason } => reason,
            Self::Shed => "shed",
        }
    }
}

/// How long a lookup that follows a failure waits for the rest of its wave (see
/// [`Rdns::lookup`]).
const SETTLE: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct Rdns {
    resolver: TokioResolver,
    limit: Arc<Semaphore>,
    breaker: Arc<Mutex<Breaker>>,
    cfg: RdnsConfig,
}

impl Rdns {
    pub fn new(cfg: RdnsConfig) -> Result<Self, RdnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if cfg.servers.is_empty() {
            TokioResolver::builder(provider).map_err(|source| RdnsError::SystemConfig { source })?
        } else {
            let servers = cfg
                .servers
                .iter()
                .map(|s| {
                    let conn = |mut c: ConnectionConfig| {
                        c.port = s.port();
                        c
                    };
                    NameServerConfig::new(
                        s.ip(),
                        true,
                        vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        // Our own cache (ip_info) keeps answers; the resolver's would only duplicate it.
        opts.cache_size = 0;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let resolver = builder
            .build()
            .map_err(|source| RdnsError::Build { source })?;
        Ok(Self {
            resolver,
            limit: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            breaker: Arc::new(Mutex::new(Breaker::new())),
            cfg,
        })
    }

    fn admit(&self) -> Admit {
        self.breaker
            .lock()
            .expect("breaker lock")
            .admit(Instant::now())
    }

    /// One lookup, waiting for a free slot first. Never takes longer than the slot wait
    /// plus the configured timeout; shed at once while the server is taken to be down.
    pub async fn lookup(&self, ip: IpAddr) -> RdnsOutcome {
        let mut admit = self.admit();
        if admit == Admit::Shed {
            return RdnsOutcome::Shed;
        }
        let _slot = self.limit.acquire().await.expect("semaphore never closed");
        // The breaker may have opened while this one waited for its slot. When the lookup
        // that freed the slot failed, the others of its wave (started together, timing out
        // together) are about to: let them land first, so a hung server costs one timeout,
        // not two.
        if admit == Admit::Ask {
            let failing = {
                let b = self.breaker.lock().expect("breaker lock");
                b.failures_in_a_row() > 0 && !b.is_open()
            };
            if failing {
                tokio::time::sleep(SETTLE).await;
            }
            admit = self.admit();
            if admit == Admit::Shed {
                return RdnsOutcome::Shed;
            }
        }
        let outcome = self.ask(ip).await;
        let mut breaker = self.breaker.lock().expect("breaker lock");
        match outcome {
            RdnsOutcome::Failed {
                reason: "timeout" | "error",
            } => {
                if breaker.failure(Instant::now(), admit == Admit::Probe) {
                    tracing::warn!(
                        servers = ?self.cfg.servers,
                        "reverse DNS is not answering ({} failures in a row): lookups are \
                         shed, and asked again after rdns_retry_s, until a probe (every {} s \
                         at first) is answered",
                        super::breaker::THRESHOLD,
                        super::breaker::MIN_COOLDOWN.as_secs()
                    );
                }
            }
            _ => {
                if breaker.is_open() {
                    tracing::info!("reverse DNS answers again");
                }
                breaker.success();
            }
        }
        outcome
    }

    async fn ask(&self, ip: IpAddr) -> RdnsOutcome {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let query = self.resolver.reverse_lookup(Name::from(ip));
        match tokio::time::timeout(self.cfg.timeout, query).await {
            Err(_) => RdnsOutcome::Failed { reason: "timeout" },
            Ok(Ok(lookup)) => {
                let mut best: Option<(String, u32)> = None;
                for r in lookup.answers() {
                    if let RData::PTR(ptr) = &r.data {
                        let name = ptr.0.to_utf8();
                        let name = name.trim_end_matches('.').to_string();
                        // Several PTRs: the first, with the smallest TTL of them all.
                        best = Some(match best {
                            None => (name, r.ttl),
                            Some((n, t)) => (n, t.min(r.ttl)),
                        });
                    }
                }
                match best {
                    Some((name, ttl)) => RdnsOutcome::Name {
                        name,
                        ttl: Duration::from_secs(ttl.into()).min(self.cfg.max_ttl),
                    },
                    None => RdnsOutcome::NoName {
                        ttl: self.cfg.negative_ttl,
                    },
                }
            }
            Ok(Err(e)) => self.outcome_of_error(&e),
        }
    }

    fn outcome_of_error(&self, e: &NetError) -> RdnsOutcome {
        match e {
            NetError::Dns(DnsError::NoRecordsFound(nr)) => RdnsOutcome::NoName {
                ttl: nr
                    .negative_ttl
                    .map_or(self.cfg.negative_ttl, |t| Duration::from_secs(t.into()))
                    .min(self.cfg.max_ttl),
            },
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
                RdnsOutcome::Failed { reason: "servfail" }
            }
            NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
                RdnsOutcome::Failed { reason: "refused" }
            }
            NetError::Timeout => RdnsOutcome::Failed { reason: "timeout" },
            other => {
                // Rate-limited (log_throttle): a garbage-answering server fails every lookup.
                tracing::warn!(error = %other, "reverse lookup failed");
                RdnsOutcome::Failed { reason: "error" }
            }
        }
    }

    /// Lookups in flight at once, at most.
    pub fn concurrency(&self) -> usize {
        self.cfg.concurrency.max(1)
    }

    /// Whether a lookup now would be shed (the breaker is open, no probe due).
    pub fn is_down(&self) -> bool {
        self.breaker
            .lock()
            .expect("breaker lock")
            .sheds(Instant::now())
    }

    pub fn retry_after(&self) -> Duration {
        self.cfg.retry
    }
}
