//! Enrichment: what is known about each remote address — geo, ASN, hostname, threat-list
//! verdicts — looked up off the ingest path by a worker pool and stored per address
//! (`ip_info`), so flows and enrichment join at query time.
//!
//! The sources form a cascade: the MaxMind databases ([`geo`]) and the threat lists
//! ([`threat`]) answer in memory; Team Cymru's bulk whois ([`cymru`]) fills the ASN for
//! addresses the databases don't know; reverse DNS ([`rdns`]) gives the hostname. Addresses
//! that are not public ([`scope::is_public`]) never leave the host.
pub mod cymru;
pub mod geo;
pub mod scope;
pub mod threat;

use std::net::IpAddr;

/// Which source answered a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A MaxMind-format database (City, Country or ASN).
    Mmdb,
    /// Team Cymru's bulk whois.
    Cymru,
    /// Reverse DNS (PTR).
    Rdns,
    /// The threat-intel lists.
    Threat,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Mmdb, Source::Cymru, Source::Rdns, Source::Threat];

    /// The name used in `ip_info`, the JSON output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mmdb => "mmdb",
            Source::Cymru => "cymru",
            Source::Rdns => "rdns",
            Source::Threat => "threat",
        }
    }
}

/// Geolocation of one address (from a City or Country database).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 code of the country (`country.iso_code`).
    pub country: Option<String>,
    /// English city name (`city.names.en`); only City databases have it.
    pub city: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

/// The autonomous system that announces an address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Asn {
    pub asn: u32,
    pub org: Option<String>,
}

/// One threat list that contains an address.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreatHit {
    /// The list's name: its file name without the extension (`firehol_level1`).
    pub list: String,
    /// How old the list's file is, in seconds (now − mtime), when looked up.
    pub age_s: u64,
    /// The list entry that matched, as written (`1.19.0.0/16`).
    pub entry: String,
}
