//! `threat_contact`: a flow to or from an address on a threat list (the enrichment's
//! `threat_dir`, the same lists and longest-prefix match, asked through the sinks' shared
//! [`Tagger`]: its cache, and its reload of changed lists). One alert per pair of the other
//! end and the listed address while it stays active; the alert's source is the other end
//! (on this host, the one to look at), its target the listed address. Only public
//! addresses are looked up, as for enrichment.
use super::alert::{AlertKey, Alerts, Evidence, FlowId, Kind, Port};
use crate::{enrich::tags::Tagger, flow::FlowRecord};

pub struct ThreatContact {
    tags: Tagger,
}

impl ThreatContact {
    pub fn new(tags: Tagger) -> Self {
        Self { tags }
    }

    /// Re-reads changed lists when a check is due.
    pub fn reload_if_due(&mut self) {
        self.tags.reload_if_due();
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
            let Some(tags) = self.tags.listed(listed) else {
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
            let detail = format!("{what}, listed in {}", tags.threat_entries);
            alerts.raise(key, [ev], 0, 1.0, detail);
        }
    }
}
