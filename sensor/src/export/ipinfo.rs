//! `ip_info` in memory, read once per query: a hash lookup per flow end instead of two
//! joins per row. Memory grows with the distinct addresses enriched, not with the flows.
use std::collections::HashMap;

use rusqlite::Connection;

/// What enrichment knows about one address (NULLs as `None`).
#[derive(Debug, Default, Clone)]
pub struct Info {
    pub country: Option<Box<str>>,
    pub city: Option<Box<str>>,
    pub asn: Option<i64>,
    pub as_org: Option<Box<str>>,
    pub hostname: Option<Box<str>>,
    pub threat: Option<Box<str>>,
}

/// Keyed by the address as `flows` stores it (its text), so rows are looked up without
/// parsing.
pub type InfoMap = HashMap<Box<[u8]>, Info, foldhash::fast::RandomState>;

/// Every `ip_info` row; empty for a database from before enrichment (no table).
pub fn load(conn: &Connection) -> rusqlite::Result<InfoMap> {
    let mut map = InfoMap::default();
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'ip_info'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(map);
    }
    let mut stmt =
        conn.prepare("SELECT ip, country, city, asn, as_org, hostname, threat FROM ip_info")?;
    let mut rows = stmt.query([])?;
    let text = |r: &rusqlite::Row<'_>, i| -> rusqlite::Result<Option<Box<str>>> {
        Ok(r.get::<_, Option<String>>(i)?.map(String::into_boxed_str))
    };
    while let Some(r) = rows.next()? {
        let ip: String = r.get(0)?;
        map.insert(
            ip.into_bytes().into_boxed_slice(),
            Info {
                country: text(r, 1)?,
                city: text(r, 2)?,
                asn: r.get(3)?,
                as_org: text(r, 4)?,
                hostname: text(r, 5)?,
                threat: text(r, 6)?,
            },
        );
    }
    Ok(map)
}
