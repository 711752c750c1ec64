//! What a sink says of each address beyond the flow itself, on its own thread: its country
//! and autonomous system (from the MaxMind databases) and the threat lists that hold it
//! (the IPFIX exporters' tags, the detectors' threat contacts). Only the enrichment sources
//! that answer in memory are asked: reverse DNS and Team Cymru answer later, over the
//! network, and go to `ip_info` alone. Addresses that are not public are never looked up
//! (as for enrichment).
//!
//! Each sink thread keeps its own copy of the sources and a bounded cache of answers
//! (cleared when full: a sink sees a working set of remote addresses again and again), and
//! looks for changed database and list files every `reload_check_ms`, as the enrichment
//! worker does.
use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};

use super::config::EnrichConfig;
use super::{
    EnrichError, geo::GeoDbs, open_geo, open_threat, scope::is_public, threat::ThreatLists,
};

/// One address's tags; empty (and 0) where nothing is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    /// ISO 3166-1 alpha-2 code of the country.
    pub country: String,
    /// The autonomous system number (0: unknown, as in bgpSourceAsNumber).
    pub asn: u32,
    /// The names of the threat lists holding the address, sorted, comma-separated.
    pub threat: String,
    /// The same with each list's matching entry: `firehol_level1 (1.19.0.0/16)`.
    pub threat_entries: String,
}

/// Where the tags come from: the local enrichment sources, opened once per exporter.
pub struct Tagger {
    sources: Option<Sources>,
    cache: HashMap<IpAddr, Arc<Tags>>,
    none: Arc<Tags>,
}

struct Sources {
    geo: GeoDbs,
    threat: ThreatLists,
    reload_every: Duration,
    checked: Instant,
}

/// Addresses remembered per exporter before the cache starts over.
const CACHE_ADDRESSES: usize = 65_536;

impl Tagger {
    /// No tags (enrichment off): every address is untagged, nothing is looked up.
    pub fn off() -> Self {
        Self {
            sources: None,
            cache: HashMap::new(),
            none: Arc::new(Tags::default()),
        }
    }

    /// The databases and lists `cfg` names; [`Self::off`] when enrichment is off. A named
    /// file that cannot be read is an error, as at the enrichment's own start.
    pub fn open(cfg: &EnrichConfig) -> Result<Self, EnrichError> {
        if !cfg.enabled {
            return Ok(Self::off());
        }
        Ok(Self::from_sources(
            open_geo(cfg)?,
            open_threat(cfg)?,
            Duration::from_millis(cfg.reload_check_ms),
        ))
    }

    pub fn from_sources(geo: GeoDbs, threat: ThreatLists, reload_every: Duration) -> Self {
        let idle = !geo.has_geo() && !geo.has_asn() && threat.is_empty();
        Self {
            sources: (!idle).then(|| Sources {
                geo,
                threat,
                reload_every,
                checked: Instant::now(),
            }),
            ..Self::off()
        }
    }

    /// Whether any source can tag an address: else records go without the tag fields.
    pub fn is_on(&self) -> bool {
        self.sources.is_some()
    }

    /// The tags of `ip` when a threat list holds it; None (with no count of references
    /// taken) for the many that are not: the detectors ask of every flow's two ends.
    pub fn listed(&mut self, ip: IpAddr) -> Option<Arc<Tags>> {
        if self.sources.is_none() || !is_public(ip) {
            return None;
        }
        if let Some(t) = self.cache.get(&ip) {
            return (!t.threat.is_empty()).then(|| Arc::clone(t));
        }
        Some(self.tags(ip)).filter(|t| !t.threat.is_empty())
    }

    /// The tags of `ip`.
    pub fn tags(&mut self, ip: IpAddr) -> Arc<Tags> {
        let Some(src) = &self.sources else {
            return Arc::clone(&self.none);
        };
        if !is_public(ip) {
            return Arc::clone(&self.none);
        }
        if let Some(t) = self.cache.get(&ip) {
            return Arc::clone(t);
        }
        let (geo, asn) = src.geo.lookup(ip);
        let (mut threat, mut threat_entries) = (String::new(), String::new());
        for hit in src.threat.lookup(ip) {
            if !threat.is_empty() {
                threat.push(',');
                threat_entries.push_str(", ");
            }
            threat.push_str(&hit.list);
            threat_entries.push_str(&format!("{} ({})", hit.list, hit.entry));
        }
        let tags = Arc::new(Tags {
            country: geo.and_then(|g| g.country).unwrap_or_default(),
            asn: asn.map_or(0, |a| a.asn),
            threat,
            threat_entries,
        });
        if self.cache.len() >= CACHE_ADDRESSES {
            self.cache.clear();
        }
        self.cache.insert(ip, Arc::clone(&tags));
        tags
    }

    /// Re-opens changed databases and lists when a check is due; answers cached from the
    /// old ones are forgotten.
    pub fn reload_if_due(&mut self) {
        let Some(src) = &mut self.sources else {
            return;
        };
        if src.checked.elapsed() < src.reload_every {
            return;
        }
        src.checked = Instant::now();
        let mut changed = false;
        for (path, r) in src.geo.reload_changed() {
            changed = true;
            if let Err(e) = r {
                tracing::warn!(path = %path.display(), "tags: keeping the old database: {e}");
            }
        }
        match src.threat.reload_if_changed() {
            Ok(c) => changed |= c,
            Err(e) => tracing::warn!("tags: keeping the old threat lists: {e}"),
        }
        if changed {
            self.cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_tags_nothing_and_private_addresses_are_never_looked_up() {
        let mut t = Tagger::off();
        assert_eq!(*t.tags("8.8.8.8".parse().unwrap()), Tags::default());
        let dir = std::env::temp_dir().join(format!("sensor-tags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.txt"), "10.0.0.0/8\n1.19.0.0/16\n").unwrap();
        std::fs::write(dir.join("worse.txt"), "1.19.2.3\n").unwrap();
        let lists = ThreatLists::load(&dir).unwrap();
        let mut t = Tagger::from_sources(GeoDbs::empty(), lists, Duration::from_secs(60));
        // 10/8 is listed, but a private address is not looked up.
        assert_eq!(*t.tags("10.1.2.3".parse().unwrap()), Tags::default());
        assert_eq!(t.tags("1.19.2.3".parse().unwrap()).threat, "bad,worse");
        assert_eq!(t.tags("1.19.9.9".parse().unwrap()).threat, "bad");
        assert_eq!(t.tags("1.20.0.1".parse().unwrap()).threat, "");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
