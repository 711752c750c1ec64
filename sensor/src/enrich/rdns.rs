//! Reverse DNS (PTR) through hickory-resolver: the system's resolv.conf or configured
//! servers, a concurrency limit so a burst of new addresses can't flood the resolver, a
//! timeout per lookup, and the answer's TTL (or the negative TTL) so the caller knows when
//! to ask again.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
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
}

impl RdnsOutcome {
    /// The `result` label of `sensor_enrich_lookups_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Name { .. } => "found",
            Self::NoName { .. } => "not_found",
            Self::Failed { reason } => reason,
        }
    }
}

#[derive(Clone)]
pub struct Rdns {
    resolver: TokioResolver,
    limit: Arc<Semaphore>,
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
            cfg,
        })
    }

    /// One lookup, waiting for a free slot first. Never takes longer than the slot wait
    /// plus the configured timeout.
    pub async fn lookup(&self, ip: IpAddr) -> RdnsOutcome {
        let _slot = self.limit.acquire().await.expect("semaphore never closed");
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
                tracing::debug!(error = %other, "reverse lookup failed");
                RdnsOutcome::Failed { reason: "error" }
            }
        }
    }

    pub fn retry_after(&self) -> Duration {
        self.cfg.retry
    }
}
