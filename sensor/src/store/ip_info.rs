//! `ip_info`: one row per enriched address. Flows keep only addresses; exports join this
//! table at query time, so an answer that arrives after its flow was written still shows,
//! and a restart reuses every answer instead of asking again.
use std::{collections::HashMap, net::IpAddr};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::info::{Asn, Fields, Geo, IpInfo, IpUpdate, Source, ThreatHit};

/// Pass 1 (databases, threat lists). The ASN columns are only taken when the databases
/// gave the ASN: otherwise the row keeps Cymru's (written by its own pass, maybe earlier).
const UPSERT_LOCAL: &str = "INSERT INTO ip_info (ip, country, city, lat, lon, asn, as_org,
    asn_source, bgp_prefix, threat, threat_detail, checked_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
    ON CONFLICT (ip) DO UPDATE SET country = excluded.country, city = excluded.city,
    lat = excluded.lat, lon = excluded.lon,
    asn = CASE WHEN excluded.asn_source IS 'mmdb' THEN excluded.asn ELSE ip_info.asn END,
    as_org = CASE WHEN excluded.asn_source IS 'mmdb' THEN excluded.as_org
        ELSE ip_info.as_org END,
    bgp_prefix = CASE WHEN excluded.asn_source IS 'mmdb' THEN NULL ELSE ip_info.bgp_prefix END,
    asn_source = CASE WHEN excluded.asn_source IS 'mmdb' THEN 'mmdb'
        ELSE ip_info.asn_source END,
    threat = excluded.threat, threat_detail = excluded.threat_detail,
    checked_ms = excluded.checked_ms";

/// Pass 2 (Cymru): its ASN and prefix, unless the databases have given an ASN meanwhile,
/// and when to ask again. A row that isn't there yet (its pass-1 update was lost) gets
/// `checked_ms` 0, so pass 1 runs again for it soon.
const UPSERT_CYMRU: &str = "INSERT INTO ip_info (ip, asn, as_org, asn_source, bgp_prefix,
    checked_ms, cymru_due_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
    ON CONFLICT (ip) DO UPDATE SET
    asn = CASE WHEN ip_info.asn_source IS 'mmdb' THEN ip_info.asn ELSE excluded.asn END,
    as_org = CASE WHEN ip_info.asn_source IS 'mmdb' THEN ip_info.as_org
        ELSE excluded.as_org END,
    bgp_prefix = CASE WHEN ip_info.asn_source IS 'mmdb' THEN ip_info.bgp_prefix
        ELSE excluded.bgp_prefix END,
    asn_source = CASE WHEN ip_info.asn_source IS 'mmdb' THEN 'mmdb'
        ELSE excluded.asn_source END,
    cymru_due_ms = excluded.cymru_due_ms";

/// Pass 3 (reverse DNS): the hostname, the outcome and when to ask again.
const UPSERT_RDNS: &str = "INSERT INTO ip_info (ip, hostname, rdns_status, checked_ms,
    rdns_due_ms)
    VALUES (?1, ?2, ?3, 0, ?4)
    ON CONFLICT (ip) DO UPDATE SET hostname = excluded.hostname,
    rdns_status = excluded.rdns_status, rdns_due_ms = excluded.rdns_due_ms";

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

/// Writes each update's own fields (see [`Fields`]); the other columns of an existing row
/// stand.
pub fn upsert(tx: &Transaction<'_>, updates: &[IpUpdate]) -> rusqlite::Result<()> {
    for u in updates {
        let i = &u.info;
        let ip = i.ip.to_string();
        let asn = i.asn.as_ref().map(|a| a.asn);
        let as_org = i.asn.as_ref().and_then(|a| a.org.as_deref());
        match u.fields {
            Fields::Local => {
                let geo = i.geo.as_ref();
                tx.prepare_cached(UPSERT_LOCAL)?.execute(params![
                    ip,
                    geo.and_then(|g| g.country.as_deref()),
                    geo.and_then(|g| g.city.as_deref()),
                    geo.and_then(|g| g.lat),
                    geo.and_then(|g| g.lon),
                    asn,
                    as_org,
                    i.asn_source.map(Source::as_str),
                    i.bgp_prefix,
                    i.threat_lists(),
                    encode_threat(&i.threat),
                    i.checked_ms,
                ])?;
            }
            Fields::Cymru => {
                tx.prepare_cached(UPSERT_CYMRU)?.execute(params![
                    ip,
                    asn,
                    as_org,
                    i.asn_source.map(Source::as_str),
                    i.bgp_prefix,
                    i.cymru_due_ms,
                ])?;
            }
            Fields::Rdns => {
                tx.prepare_cached(UPSERT_RDNS)?.execute(params![
                    ip,
                    i.hostname,
                    i.rdns_status,
                    i.rdns_due_ms,
                ])?;
            }
        }
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
        upsert(&tx, &IpUpdate::wrap(vec![IpInfo::new(ip)], Fields::Local)).unwrap();
        for fields in [Fields::Local, Fields::Cymru, Fields::Rdns] {
            upsert(&tx, &IpUpdate::wrap(vec![info.clone()], fields)).unwrap();
        }
        tx.commit().unwrap();
        let got = load(&conn, &[ip, "1.1.1.1".parse().unwrap()]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[&ip], info);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn db(name: &str) -> (std::path::PathBuf, Connection) {
        let dir = std::env::temp_dir().join(format!("sensor-ipinfo-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conn = crate::store::open_for_writing(&dir.join("f.db")).unwrap();
        (dir, conn)
    }

    fn write(conn: &mut Connection, info: &IpInfo, fields: Fields) {
        let tx = conn.transaction().unwrap();
        upsert(&tx, &IpUpdate::wrap(vec![info.clone()], fields)).unwrap();
        tx.commit().unwrap();
    }

    /// Each pass sets its own columns only, whatever order the passes land in.
    #[test]
    fn partial_updates_keep_the_other_passes_fields() {
        let (dir, mut conn) = db("partial");
        let ip: IpAddr = "45.1.2.3".parse().unwrap();
        let local = IpInfo {
            geo: Some(Geo {
                country: Some("DE".into()),
                city: Some("Berlin".into()),
                lat: Some(52.5),
                lon: Some(13.4),
            }),
            threat: vec![ThreatHit {
                list: "drop".into(),
                age_s: 1,
                entry: "45.1.0.0/16".into(),
            }],
            checked_ms: 100,
            ..IpInfo::new(ip)
        };
        let cymru = IpInfo {
            asn: Some(Asn {
                asn: 64500,
                org: Some("EXAMPLE".into()),
            }),
            asn_source: Some(Source::Cymru),
            bgp_prefix: Some("45.1.2.0/24".into()),
            cymru_due_ms: Some(200),
            ..IpInfo::new(ip)
        };
        let rdns = IpInfo {
            hostname: Some("h.example.net".into()),
            rdns_status: Some("found".into()),
            rdns_due_ms: Some(300),
            ..IpInfo::new(ip)
        };
        let whole = IpInfo {
            geo: local.geo.clone(),
            threat: local.threat.clone(),
            checked_ms: 100,
            asn: cymru.asn.clone(),
            asn_source: Some(Source::Cymru),
            bgp_prefix: cymru.bgp_prefix.clone(),
            cymru_due_ms: Some(200),
            hostname: rdns.hostname.clone(),
            rdns_status: rdns.rdns_status.clone(),
            rdns_due_ms: Some(300),
            ..IpInfo::new(ip)
        };
        let orders = [
            [Fields::Local, Fields::Cymru, Fields::Rdns],
            [Fields::Rdns, Fields::Cymru, Fields::Local],
            [Fields::Cymru, Fields::Local, Fields::Rdns],
        ];
        for order in orders {
            conn.execute("DELETE FROM ip_info", []).unwrap();
            for f in order {
                let info = match f {
                    Fields::Local => &local,
                    Fields::Cymru => &cymru,
                    Fields::Rdns => &rdns,
                };
                write(&mut conn, info, f);
            }
            assert_eq!(load(&conn, &[ip]).unwrap()[&ip], whole, "{order:?}");
        }
        // A later pass 1 without a database ASN keeps Cymru's; one with it takes over,
        // and a Cymru answer landing after that doesn't overwrite the database's.
        let again = IpInfo {
            checked_ms: 400,
            ..local.clone()
        };
        write(&mut conn, &again, Fields::Local);
        let got = &load(&conn, &[ip]).unwrap()[&ip];
        assert_eq!(
            (got.asn.clone(), got.asn_source),
            (cymru.asn.clone(), Some(Source::Cymru))
        );
        assert_eq!(got.checked_ms, 400);
        let mmdb = IpInfo {
            asn: Some(Asn {
                asn: 3320,
                org: Some("DTAG".into()),
            }),
            asn_source: Some(Source::Mmdb),
            ..again.clone()
        };
        write(&mut conn, &mmdb, Fields::Local);
        write(&mut conn, &cymru, Fields::Cymru);
        let got = &load(&conn, &[ip]).unwrap()[&ip];
        assert_eq!(got.asn, mmdb.asn);
        assert_eq!(got.asn_source, Some(Source::Mmdb));
        assert_eq!(got.bgp_prefix, None);
        assert_eq!(
            got.cymru_due_ms,
            Some(200),
            "Cymru's due time is still its own"
        );
        assert_eq!(
            got.hostname, rdns.hostname,
            "no pass but rDNS touches the hostname"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
