//! What the store keeps about an address (`ip_info` rows) and which source gave it: the
//! types enrichment fills in and the store writes and reads. Defined here, below both, so
//! that the store needs nothing from the enrichment stage above it.
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
    /// The list entry that matched, normalised (`1.19.0.0/16`; a single address without
    /// `/32` or `/128`).
    pub entry: String,
}

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

/// Which fields of the stored row an update sets: each pass writes only its own, so the
/// passes may land in any order and none wipes another's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields {
    /// Geo, the databases' ASN, threat verdicts, `checked_ms`.
    Local,
    /// Cymru's ASN (unless the databases gave one), BGP prefix, `cymru_due_ms`.
    Cymru,
    /// Hostname, `rdns_status`, `rdns_due_ms`.
    Rdns,
}

/// One address's answers from one pass, for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct IpUpdate {
    pub info: IpInfo,
    pub fields: Fields,
}

impl IpUpdate {
    pub fn wrap(infos: Vec<IpInfo>, fields: Fields) -> Vec<IpUpdate> {
        infos
            .into_iter()
            .map(|info| IpUpdate { info, fields })
            .collect()
    }
}
