//! `ip_info` in memory, read once per query: a hash lookup per flow end instead of two
//! joins per row. Memory grows with the distinct addresses enriched, not with the flows.
use std::collections::HashMap;

use rusqlite::Connection;

use crate::store::inline::Inline;

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

/// Addresses as text fit in this many bytes ([`crate::store::sums::ADDR_KEY`]).
pub const KEY: usize = crate::store::sums::ADDR_KEY;

/// `ip_info` by address. The hash table holds only the address (inline) and an index, so
/// that looking up a flow's ends touches little memory; the answers sit apart.
#[derive(Debug, Default)]
pub struct InfoMap {
    index: HashMap<Inline<KEY>, u32, foldhash::fast::RandomState>,
    infos: Vec<Info>,
}

impl InfoMap {
    pub fn get(&self, ip: &[u8]) -> Option<&Info> {
        let i = *self.index.get(&Inline::new(ip, None)?)?;
        self.infos.get(i as usize)
    }

    pub fn values(&self) -> impl Iterator<Item = &Info> {
        self.infos.iter()
    }

    /// Every address (as text) with what is known about it.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Info)> {
        self.index
            .iter()
            .map(|(k, &i)| (k.as_slice(), &self.infos[i as usize]))
    }

    pub fn insert(&mut self, ip: &[u8], info: Info) {
        let Some(key) = Inline::new(ip, None) else {
            return;
        };
        match self.index.get(&key) {
            Some(&i) => self.infos[i as usize] = info,
            None => {
                self.index.insert(key, self.infos.len() as u32);
                self.infos.push(info);
            }
        }
    }
}

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
            ip.as_bytes(),
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
