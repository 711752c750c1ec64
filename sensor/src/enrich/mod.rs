//! Enrichment: what is known about each remote address — geo, ASN, hostname, threat-list
//! verdicts — looked up off the ingest path by a worker pool and stored per address
//! (`ip_info`), so flows and enrichment join at query time.
//!
//! The sources form a cascade: the MaxMind databases ([`geo`]) and the threat lists
//! ([`threat`]) answer in memory; Team Cymru's bulk whois ([`cymru`]) fills the ASN for
//! addresses the databases don't know; reverse DNS ([`rdns`]) gives the hostname. Addresses
//! that are not public ([`scope::is_public`]) never leave the host.
pub mod batch;
pub mod breaker;
pub mod cascade;
pub mod config;
pub mod cymru;
pub mod geo;
pub mod pool;
pub mod queue;
pub mod rdns;
pub mod scope;
pub mod tags;
pub mod threat;

/// Wall-clock Unix milliseconds (0 before the epoch): the times `ip_info` keeps.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub use crate::store::info::{Asn, Geo, Source, ThreatHit};

/// Why enrichment could not start.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error(transparent)]
    Geo(#[from] geo::GeoError),
    #[error(transparent)]
    Threat(#[from] threat::ThreatError),
    #[error(transparent)]
    Rdns(#[from] rdns::RdnsError),
    #[error("starting the enrichment worker: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("enrich.dns_servers: {value} is not an address:port")]
    DnsServer { value: String },
}

impl EnrichError {
    /// The `source` label of `sensor_enrich_source_errors_total`.
    pub fn source_label(&self) -> &'static str {
        match self {
            EnrichError::Geo(_) => "mmdb",
            EnrichError::Threat(_) => "threat",
            EnrichError::Rdns(_) | EnrichError::DnsServer { .. } | EnrichError::Runtime(_) => {
                "rdns"
            }
        }
    }
}

/// The MaxMind databases `cfg` names (each must open), else those found in geoipupdate's
/// directories (taken where usable: such a directory may hold other MaxMind products, e.g.
/// Anonymous-IP); none found is no error.
pub fn open_geo(cfg: &config::EnrichConfig) -> Result<geo::GeoDbs, EnrichError> {
    if !cfg.mmdb_paths.is_empty() {
        return Ok(geo::GeoDbs::open(&cfg.mmdb_paths)?);
    }
    let dirs: Vec<&std::path::Path> = geo::DEFAULT_DIRS.iter().map(std::path::Path::new).collect();
    match geo::GeoDbs::open_dirs(&dirs) {
        Ok((dbs, skipped)) => {
            for (path, e) in skipped {
                tracing::warn!(path = %path.display(), "skipping MaxMind file: {e}");
            }
            Ok(dbs)
        }
        Err(geo::GeoError::NoneFound { .. }) => {
            tracing::info!(
                "no MaxMind databases configured or found in {}: no geo/ASN from them",
                geo::DEFAULT_DIRS.join(", ")
            );
            Ok(geo::GeoDbs::empty())
        }
        Err(e) => Err(e.into()),
    }
}

/// The threat lists in `cfg.threat_dir` (none without one); an unreadable list is an error.
pub fn open_threat(cfg: &config::EnrichConfig) -> Result<threat::ThreatLists, EnrichError> {
    Ok(match &cfg.threat_dir {
        Some(dir) => threat::ThreatLists::load(dir)?,
        None => threat::ThreatLists::empty(),
    })
}

impl cascade::Sources {
    /// Opens what `cfg` names: databases (configured, else found in geoipupdate's
    /// directories), threat lists, the resolver and the Cymru client. A database or list
    /// that is named but unreadable is an error here, at start, rather than a silent gap.
    pub fn from_config(
        cfg: &config::EnrichConfig,
        metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    ) -> Result<Self, EnrichError> {
        use std::time::Duration;
        let geo = open_geo(cfg)?;
        for (path, kind, _) in geo.files() {
            tracing::info!(path = %path.display(), kind, "MaxMind database");
        }
        let threat = open_threat(cfg)?;
        let rdns = if cfg.rdns {
            let servers = cfg
                .dns_servers
                .iter()
                .map(|s| {
                    s.parse()
                        .map_err(|_| EnrichError::DnsServer { value: s.clone() })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(rdns::Rdns::new(rdns::RdnsConfig {
                servers,
                timeout: Duration::from_millis(cfg.rdns_timeout_ms),
                concurrency: cfg.rdns_concurrency,
                negative_ttl: Duration::from_secs(cfg.rdns_negative_ttl_s),
                max_ttl: Duration::from_secs(cfg.rdns_max_ttl_s),
                retry: Duration::from_secs(cfg.rdns_retry_s),
            })?)
        } else {
            None
        };
        let cymru = cfg.cymru.then(|| {
            cymru::CymruClient::new(
                cfg.cymru_server.clone(),
                Duration::from_millis(cfg.cymru_timeout_ms),
            )
        });
        Ok(Self {
            geo,
            threat,
            rdns,
            cymru,
            cymru_cache: std::sync::Arc::new(std::sync::Mutex::new(cymru::PrefixCache::new())),
            ttls: cascade::Ttls {
                mmdb: Duration::from_secs(cfg.mmdb_ttl_s),
                cymru: Duration::from_secs(cfg.cymru_ttl_s),
                cymru_retry: Duration::from_secs(cfg.rdns_retry_s),
            },
            metrics,
        })
    }
}

/// Enrichment set up for a run or a replay: the queue flows offer into (give it to the
/// store's writer), and what the worker needs once the writer exists.
pub struct Prepared {
    pub queue: queue::EnrichQueue,
    rx: tokio::sync::mpsc::Receiver<std::net::IpAddr>,
    sources: cascade::Sources,
    pool: pool::PoolConfig,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Prepared {
    /// Opens the sources; None when enrichment is off.
    pub fn new(
        cfg: &config::EnrichConfig,
        db_path: &std::path::Path,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Self>, EnrichError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let sources = cascade::Sources::from_config(cfg, Some(std::sync::Arc::clone(&metrics)))?;
        let (queue, rx) = queue::EnrichQueue::new(
            cfg.queue_ips,
            cfg.cache_ips,
            std::sync::Arc::clone(&metrics),
        );
        Ok(Some(Self {
            queue,
            rx,
            sources,
            pool: pool::PoolConfig {
                batch_ips: cfg.batch_ips,
                batch_wait: std::time::Duration::from_millis(cfg.batch_ms),
                reload_check: std::time::Duration::from_millis(cfg.reload_check_ms),
                db_path: Some(db_path.to_path_buf()),
            },
            metrics,
        }))
    }

    /// Starts the worker on its own thread; answers go to `out`.
    pub fn spawn(
        self,
        out: impl Fn(Vec<cascade::IpUpdate>) + Send + Sync + 'static,
    ) -> Result<pool::Pool, EnrichError> {
        pool::Pool::spawn(
            self.sources,
            self.rx,
            self.queue,
            self.pool,
            self.metrics,
            out,
        )
        .map_err(EnrichError::Runtime)
    }
}
