//! `[enrich]`: which sources answer, how long answers stay good, and the pool's bounds.
//! The stage owns its settings, as `[detect]` and `[ipfix]` do; `crate::config` reads them.
use std::path::PathBuf;

use serde::Deserialize;

/// The `[enrich]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Look up the addresses of flows at all.
    pub enabled: bool,
    /// MaxMind-format databases (City or Country, and ASN). Empty: every .mmdb found in
    /// geoipupdate's directories (/var/lib/GeoIP, /usr/share/GeoIP).
    pub mmdb_paths: Vec<PathBuf>,
    /// Directory of threat lists (FireHOL .netset/.ipset, plain IP/CIDR files); unset: none.
    pub threat_dir: Option<PathBuf>,
    /// Reverse DNS of public addresses.
    pub rdns: bool,
    /// DNS servers for reverse lookups ("127.0.0.1:53"); empty: /etc/resolv.conf's.
    pub dns_servers: Vec<String>,
    pub rdns_timeout_ms: u64,
    /// Reverse lookups in flight at once.
    pub rdns_concurrency: usize,
    /// How long "no name" is remembered when the server gives no negative TTL.
    pub rdns_negative_ttl_s: u64,
    /// Upper bound on a PTR answer's TTL.
    pub rdns_max_ttl_s: u64,
    /// Wait before asking again after a timeout or server failure.
    pub rdns_retry_s: u64,
    /// Team Cymru bulk whois for addresses the databases have no ASN for. Off by default:
    /// it sends the host's peer addresses to a third party.
    pub cymru: bool,
    /// Cymru's bulk whois server, host:port.
    pub cymru_server: String,
    /// Deadline for one Cymru connection (up to 500 addresses).
    pub cymru_timeout_ms: u64,
    /// How long Cymru's answers are kept (they are cached by BGP prefix).
    pub cymru_ttl_s: u64,
    /// How long database answers and threat verdicts stand before they are re-applied.
    pub mmdb_ttl_s: u64,
    /// Addresses waiting for the pool. When full, new addresses are shed and counted
    /// (`sensor_enrich_shed_addresses_total{reason="queue_full"}`): flows never wait.
    pub queue_ips: usize,
    /// Addresses looked up together at most.
    pub batch_ips: usize,
    /// How long a batch gathers after its first address.
    pub batch_ms: u64,
    /// Addresses remembered as known in memory (answers themselves are in `ip_info`).
    pub cache_ips: usize,
    /// How often the databases and lists are checked for changes.
    pub reload_check_ms: u64,
    /// At shutdown, how long queued addresses may still be looked up.
    pub drain_ms: u64,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mmdb_paths: Vec::new(),
            threat_dir: None,
            rdns: true,
            dns_servers: Vec::new(),
            rdns_timeout_ms: 2_000,
            rdns_concurrency: 64,
            rdns_negative_ttl_s: 3_600,
            rdns_max_ttl_s: 86_400,
            rdns_retry_s: 300,
            cymru: false,
            cymru_server: "whois.cymru.com:43".to_string(),
            cymru_timeout_ms: 10_000,
            cymru_ttl_s: 90 * 86_400,
            mmdb_ttl_s: 7 * 86_400,
            queue_ips: 16_384,
            batch_ips: 500,
            batch_ms: 50,
            cache_ips: 1 << 20,
            reload_check_ms: 10_000,
            drain_ms: 5_000,
        }
    }
}
