//! `ip_info`: one row per enriched address. Flows keep only addresses; exports join this
//! table at query time, so an answer that arrives after its flow was written still shows,
//! and a restart reuses every answer instead of asking again.
use std::{collections::HashMap, net::IpAddr};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::enrich::{Asn, Geo, Source, ThreatHit, cascade::IpInfo};

const UPSERT: &str = "INSERT INTO ip_info (ip, country, city, lat, lon, asn, as_org, asn_source,
    bgp_prefix, hostname, rdns_status, threat, threat_detail, checked_ms, cymru_due_ms,
    rdns_due_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
    ON CONFLICT (ip) DO UPDATE SET country = excluded.country, city = excluded.city,
    lat = excluded.lat, lon = excluded.lon, asn = excluded.asn, as_org = excluded.as_org,
    asn_source = excluded.asn_source, bgp_prefix = excluded.bgp_prefix,
    hostname = excluded.hostname, rdns_status = excluded.rdns_status,
    threat = excluded.threat, threat_detail = excluded.threat_detail,
    checked_ms = excluded.checked_ms, cymru_due_ms = excluded.cymru_due_ms,
    rdns_due_ms = excluded.rdns_due_ms";

const SELECT: &str = "SELECT country, city, lat, lon, asn, as_org, asn_source, bgp_prefix,
    hostname, rdns_status, threat_detail, checked_ms, cymru_due_ms, rdns_due_ms
    FROM ip_info WHERE ip = ?1";

/// `list|age_s|entry` per hit, `;`-separated: enough to rebuild the verdict.
fn encode_threat(hits: &[ThreatHit]) -> Option<String> {
    (!hits.is_empty()).then(|| {
        hits.iter()
            .map(|h| format!("{}|{}|{}", h.list, h.age_s, h.entry))
            .collect::<Vec<_>>()
            .join(";")
    })
}

fn decode_threat(s: Option<String>) -> Vec<ThreatHit> {
    let Some(s) = s else { return Vec::new() };
    s.split(';')
        .filter_map(|h| {
            let mut f = h.splitn(3, '|');
            Some(ThreatHit {
                list: f.next()?.to_string(),
                age_s: f.next()?.parse().ok()?,
                entry: f.next()?.to_string(),
            })
        })
        .collect()
}

fn source_of(s: Option<String>) -> Option<Source> {
    Source::ALL
        .into_iter()
        .find(|src| s.as_deref() == Some(src.as_str()))
}

/// Writes (or replaces) the rows of `infos`.
pub fn upsert(tx: &Transaction<'_>, infos: &[IpInfo]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(UPSERT)?;
    for i in infos {
        let geo = i.geo.as_ref();
        stmt.execute(params![
            i.ip.to_string(),
            geo.and_then(|g| g.country.as_deref()),
            geo.and_then(|g| g.city.as_deref()),
            geo.and_then(|g| g.lat),
            geo.and_then(|g| g.lon),
            i.asn.as_ref().map(|a| a.asn),
            i.asn.as_ref().and_then(|a| a.org.as_deref()),
            i.asn_source.map(Source::as_str),
            i.bgp_prefix,
            i.hostname,
            i.rdns_status,
            i.threat_lists(),
            encode_threat(&i.threat),
            i.checked_ms,
            i.cymru_due_ms,
            i.rdns_due_ms,
        ])?;
    }
    Ok(())
}

/// What `ip_info` holds for `ips` (absent addresses are left out).
pub fn load(conn: &Connection, ips: &[IpAddr]) -> rusqlite::Result<HashMap<IpAddr, IpInfo>> {
    let mut stmt = conn.prepare_cached(SELECT)?;
    let mut out = HashMap::with_capacity(ips.len());
    for ip in ips {
        let row = stmt
            .query_row([ip.to_string()], |r| {
                let country: Option<String> = r.get(0)?;
                let city: Option<String> = r.get(1)?;
                let lat: Option<f64> = r.get(2)?;
                let lon: Option<f64> = r.get(3)?;
                let geo = (country.is_some() || city.is_some() || lat.is_some()).then_some(Geo {
                    country,
                    city,
                    lat,
                    lon,
                });
                let asn: Option<u32> = r.get(4)?;
                Ok(IpInfo {
                    ip: *ip,
                    geo,
                    asn: asn.map(|asn| Asn {
                        asn,
                        org: r.get(5).ok().flatten(),
                    }),
                    asn_source: source_of(r.get(6)?),
                    bgp_prefix: r.get(7)?,
                    hostname: r.get(8)?,
                    rdns_status: r.get(9)?,
                    threat: decode_threat(r.get(10)?),
                    checked_ms: r.get(11)?,
                    cymru_due_ms: r.get(12)?,
                    rdns_due_ms: r.get(13)?,
                })
            })
            .optional()?;
        if let Some(info) = row {
            out.insert(*ip, info);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let dir = std::env::temp_dir().join(format!("sensor-ipinfo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let mut conn = crate::store::open_for_writing(&path).unwrap();
        let ip: IpAddr = "8.8.8.8".parse().unwrap();
        let info = IpInfo {
            geo: Some(Geo {
                country: Some("US".into()),
                city: None,
                lat: Some(37.75),
                lon: Some(-97.82),
            }),
            asn: Some(Asn {
                asn: 15169,
                org: Some("GOOGLE".into()),
            }),
            asn_source: Some(Source::Cymru),
            bgp_prefix: Some("8.8.8.0/24".into()),
            hostname: Some("dns.google".into()),
            rdns_status: Some("found".into()),
            threat: vec![ThreatHit {
                list: "a".into(),
                age_s: 5,
                entry: "8.8.0.0/16".into(),
            }],
            checked_ms: 10,
            cymru_due_ms: Some(20),
            rdns_due_ms: Some(30),
            ..IpInfo::new(ip)
        };
        let tx = conn.transaction().unwrap();
        upsert(&tx, &[IpInfo::new(ip)]).unwrap();
        upsert(&tx, std::slice::from_ref(&info)).unwrap();
        tx.commit().unwrap();
        let got = load(&conn, &[ip, "1.1.1.1".parse().unwrap()]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[&ip], info);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
