//! `threat_contact`: a flow to or from an address on a threat list (the enrichment's
//! `threat_dir`, the same lists and longest-prefix match). One alert per pair of the
//! other end and the listed address while it stays active; the alert's source is the other
//! end (on this host, the one to look at), its target the listed address. Only public
//! addresses are looked up, as for enrichment.
use std::net::IpAddr;

use foldhash::HashMap;

use super::{
    alert::{AlertKey, Alerts, Evidence, FlowId, Kind, Port},
    config::DetectConfig,
};
use crate::{
    enrich::{scope::is_public, threat::ThreatLists},
    flow::FlowRecord,
};

pub struct ThreatContact {
    lists: ThreatLists,
    /// Address → the lists holding it ("" for none); cleared when full.
    cache: HashMap<IpAddr, Option<std::sync::Arc<str>>>,
    cache_max: usize,
}

impl ThreatContact {
    pub fn new(cfg: &DetectConfig, lists: ThreatLists) -> Self {
        Self {
            lists,
            cache: HashMap::default(),
            cache_max: cfg.threat_cache_addresses.max(1),
        }
    }

    pub fn tracked(&self) -> usize {
        self.cache.len()
    }

    fn lookup(&mut self, ip: IpAddr) -> Option<std::sync::Arc<str>> {
        if !is_public(ip) {
            return None;
        }
        if let Some(hit) = self.cache.get(&ip) {
            return hit.clone();
        }
        if self.cache.len() >= self.cache_max {
            self.cache.clear();
        }
        let hits = self.lists.lookup(ip);
        let hit = (!hits.is_empty()).then(|| {
            hits.iter()
                .map(|h| format!("{} ({})", h.list, h.entry))
                .collect::<Vec<_>>()
                .join(", ")
                .into()
        });
        self.cache.insert(ip, hit.clone());
        hit
    }

    pub fn flow(&mut self, f: &FlowRecord, alerts: &mut Alerts) {
        if f.amends {
            return;
        }
        let id = FlowId::of(f);
        for (listed, other, owner) in [
            (f.dst.ip(), f.src.ip(), f.src_owner.as_ref()),
            (f.src.ip(), f.dst.ip(), f.dst_owner.as_ref()),
        ] {
            let Some(lists) = self.lookup(listed) else {
                continue;
            };
            let key = AlertKey {
                kind: Kind::ThreatContact,
                src: other,
                dst: Some(listed),
                proto: 0,
                port: 0,
            };
            let ev = Evidence {
                flow: id,
                target: listed,
                port: Port::of(&id),
                owner,
            };
            if alerts.update(&key, &ev) {
                continue;
            }
            let what = if listed == f.dst.ip() {
                format!("{other} contacted {listed}")
            } else {
                format!("{listed} contacted {other}")
            };
            alerts.raise(key, [ev], 0, 1.0, format!("{what}, listed in {lists}"));
        }
    }
}
