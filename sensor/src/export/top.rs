//! `sensor top`: the flows added up by a key, the largest first.
//!
//! Per flow: bytes are the IP-layer bytes both ways (`src_bytes + dst_bytes`) when a packet
//! view counted the flow, else the kernel's payload bytes both ways (kernel-only flows have
//! no packet counts); packets are `src_packets + dst_packets` (0 when absent).
//!
//! The remote end of a flow is the end that is not an address of this host (its interface
//! addresses now, and loopback); when neither or both are, the destination. The local end
//! is the source when the source is local, else the destination.
//!
//! Speed: SQLite only reads the columns asked for; the rows are added up in Rust, in a hash
//! map keyed by the stored bytes (the remote address's text, say), by one thread per core,
//! each over its own part of the table on its own read-only connection (WAL readers don't
//! wait for each other or for the writer). Country and ASN add up by remote address first,
//! then map each address through `ip_info` once.
use std::{
    collections::HashMap,
    io::{self, BufWriter, Write},
    path::Path,
};

use rusqlite::types::{Value, ValueRef};

use crate::store::rollup::{self, DAY_MS, day_of};
pub use crate::store::sums::{BYTES_SQL, LocalAddrs, PACKETS_SQL, Totals};
use crate::store::sums::{InlineSums, Sums};

use super::{
    Cell, ExportError, RowWriter,
    filter::{Filter, RowCheck, TimeAccess},
    ipinfo::{self, InfoMap},
};

/// What to rank by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// IP-layer bytes both ways, else (kernel-only flows) payload bytes both ways.
    Bytes,
    /// Packets both ways (0 for kernel-only flows).
    Packets,
    /// Number of flows.
    Flows,
}

/// What to add flows up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// The remote end's address, with its host name, country and ASN.
    RemoteIp,
    /// The remote end's country (ip_info; "-" when unknown).
    Country,
    /// The remote end's AS number (ip_info; 0 when unknown).
    Asn,
    /// The local end's process name (comm; "-" when unknown).
    Process,
    /// The local end's unit: its systemd unit, else its cgroup path ("-" when unknown).
    Unit,
    /// The destination port with the protocol, e.g. tcp/443.
    Port,
    /// Source and destination as stored: "src_ip → dst_ip".
    Pair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopFormat {
    /// Aligned columns for people: numbers right-aligned, bytes also as kB/MB/GB.
    Table,
    /// A header row, then one group a line.
    Csv,
    /// One JSON array of objects, keys as the CSV header.
    Json,
}

#[derive(Debug, Clone)]
pub struct TopOptions {
    pub by: By,
    pub group: Group,
    /// At most this many groups; 0 for all.
    pub limit: usize,
    pub format: TopFormat,
    pub filter: Filter,
    /// Read whole days from the rollup where the answer allows it (see [`rank`]); false:
    /// every flow from `flows`.
    pub rollup: bool,
}

/// The total a ranking is by.
fn by_total(t: &Totals, by: By) -> u64 {
    match by {
        By::Bytes => t.bytes,
        By::Packets => t.packets,
        By::Flows => t.flows,
    }
}

/// One group of the answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKey {
    Text(String),
    Asn(i64),
    Port { proto: u8, port: u16 },
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(t) => f.write_str(t),
            Self::Asn(a) => write!(f, "{a}"),
            Self::Port { proto, port } => match proto_name(*proto) {
                Some(name) => write!(f, "{name}/{port}"),
                None => write!(f, "{proto}/{port}"),
            },
        }
    }
}

fn proto_name(proto: u8) -> Option<&'static str> {
    match proto {
        1 => Some("icmp"),
        6 => Some("tcp"),
        17 => Some("udp"),
        58 => Some("icmpv6"),
        _ => None,
    }
}

/// The ranked answer: every group (before `--limit`) and the total over all of them.
#[derive(Debug, Clone)]
pub struct Ranking {
    pub rows: Vec<(GroupKey, Totals)>,
    pub total: Totals,
}

/// Below this share of the time span the table holds, a time range is read through the
/// first_seen_ms index; above it a plain scan of the table is cheaper than looking up each
/// row the index finds.
const INDEX_SHARE: f64 = 0.2;

/// How the table is split between threads.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// `id` in `[lo, hi)`: a straight walk over the table's pages.
    Rows(i64, i64),
    /// `first_seen_ms` in `[lo, hi)`, through the index.
    Time(i64, i64),
    /// `id` in `ids` and `first_seen_ms` in `ms` (both `[lo, hi)`): the flows not yet rolled
    /// up, within the days read from the rollup.
    RowsTime { ids: (i64, i64), ms: (i64, i64) },
    /// `flow_rollup` days in `[lo, hi)`, read only while the rollup is still at `state`.
    Rollup {
        days: (i64, i64),
        state: rollup::RollupState,
    },
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// `[lo, hi)` in `n` nearly equal parts.
fn split(lo: i64, hi: i64, n: usize) -> impl Iterator<Item = (i64, i64)> {
    let n = n.max(1) as i64;
    let step = ((hi - lo) / n).max(1);
    (0..n).filter_map(move |i| {
        let a = lo + i * step;
        let b = if i == n - 1 { hi } else { (a + step).min(hi) };
        (a < b).then_some((a, b))
    })
}

fn one_i64(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(sql, [], |r| r.get(0))
}

/// The parts to read, cheapest way first. Empty when nothing can match.
fn plan(conn: &rusqlite::Connection, filter: &Filter) -> rusqlite::Result<Vec<Part>> {
    let (Some(min_id), Some(max_id)) = (
        one_i64(conn, "SELECT min(id) FROM flows")?,
        one_i64(conn, "SELECT max(id) FROM flows")?,
    ) else {
        return Ok(Vec::new());
    };
    let rows = || {
        split(min_id, max_id + 1, threads())
            .map(|(a, b)| Part::Rows(a, b))
            .collect()
    };
    if filter.since.is_none() && filter.until.is_none() {
        return Ok(rows());
    }
    // Both ends of the index: two lookups, not a scan.
    let (Some(first), Some(last)) = (
        one_i64(conn, "SELECT min(first_seen_ms) FROM flows")?,
        one_i64(conn, "SELECT max(first_seen_ms) FROM flows")?,
    ) else {
        return Ok(Vec::new());
    };
    let lo = filter.since.as_ref().map_or(first, |t| t.ms.max(first));
    let hi = filter
        .until
        .as_ref()
        .map_or(last + 1, |t| t.ms.min(last + 1));
    if lo >= hi {
        return Ok(Vec::new());
    }
    let share = (hi - lo) as f64 / (last + 1 - first) as f64;
    if share > INDEX_SHARE {
        return Ok(rows());
    }
    Ok(split(lo, hi, threads())
        .map(|(a, b)| Part::Time(a, b))
        .collect())
}

/// Whether the filter only bounds the time (so the rollup, which knows nothing else of a
/// flow, can answer).
fn only_time(filter: &Filter) -> bool {
    let Filter {
        since: _,
        until: _,
        ip,
        port,
        proto,
        country,
        asn,
        process,
        unit,
        threat,
    } = filter;
    ip.is_none()
        && port.is_none()
        && proto.is_none()
        && country.is_none()
        && asn.is_none()
        && process.is_none()
        && unit.is_none()
        && !threat
}

/// The parts to read with the rollup: the whole UTC days inside the range (after the days
/// retention pruned) from `flow_rollup`; from `flows` the partial days at the edges of the
/// range, and within the whole days the flows not rolled up yet (`id > max_id`). `None`
/// when no whole day can come from the rollup.
fn plan_rollup(
    conn: &rusqlite::Connection,
    filter: &Filter,
) -> rusqlite::Result<Option<Vec<Part>>> {
    let state = rollup::state(conn)?;
    if state.max_id == 0 {
        return Ok(None);
    }
    let (Some(first), Some(last), Some(max_id)) = (
        one_i64(conn, "SELECT min(first_seen_ms) FROM flows")?,
        one_i64(conn, "SELECT max(first_seen_ms) FROM flows")?,
        one_i64(conn, "SELECT max(id) FROM flows")?,
    ) else {
        return Ok(None);
    };
    // The range as stored: [lo_ms, hi_ms).
    let lo_ms = filter.since.as_ref().map_or(first, |t| t.ms.max(first));
    let hi_ms = filter
        .until
        .as_ref()
        .map_or(last + 1, |t| t.ms.min(last + 1));
    if lo_ms >= hi_ms {
        return Ok(None);
    }
    // Whole days: every flow of the day is inside the range. Without --since every day
    // from the first flow's is; without --until every day up to the last flow's.
    let mut lo_day = filter
        .since
        .as_ref()
        .map_or(day_of(first), |t| -day_of(-t.ms))
        .max(day_of(first));
    if let Some(p) = state.pruned_day {
        lo_day = lo_day.max(p + 1);
    }
    let hi_day = filter
        .until
        .as_ref()
        .map_or(day_of(last) + 1, |t| day_of(t.ms))
        .min(day_of(last) + 1);
    if lo_day >= hi_day {
        return Ok(None);
    }
    let (whole_lo, whole_hi) = (lo_day * DAY_MS, hi_day * DAY_MS);
    let n = threads();
    let mut parts: Vec<Part> = split(lo_day, hi_day, n)
        .map(|days| Part::Rollup { days, state })
        .collect();
    // The edges, every flow.
    if lo_ms < whole_lo {
        parts.extend(split(lo_ms, whole_lo, n).map(|(a, b)| Part::Time(a, b)));
    }
    if whole_hi < hi_ms {
        parts.extend(split(whole_hi, hi_ms, n).map(|(a, b)| Part::Time(a, b)));
    }
    // The whole days, flows not rolled up yet.
    if state.max_id < max_id {
        parts.extend(
            split(state.max_id + 1, max_id + 1, n).map(|ids| Part::RowsTime {
                ids,
                ms: (whole_lo, whole_hi),
            }),
        );
    }
    Ok(Some(parts))
}

/// What one scan reads and how it keys rows.
struct Scan<'a> {
    group: Group,
    check: &'a RowCheck,
    local: &'a LocalAddrs,
}

impl Scan<'_> {
    /// Whether the addresses must be read (for the key or for the filter).
    fn needs_addresses(&self) -> bool {
        self.group != Group::Port || self.check.is_active()
    }

    /// Packets and bytes added up by SQLite (fewer columns cross into Rust), then the
    /// addresses, then what the group needs.
    fn columns(&self) -> String {
        let mut cols = vec![PACKETS_SQL, BYTES_SQL];
        if self.needs_addresses() {
            cols.extend(["src_ip", "dst_ip"]);
        }
        match self.group {
            Group::Port => cols.extend(["proto", "dst_port"]),
            Group::Process => cols.extend(["src_comm", "dst_comm"]),
            Group::Unit => cols.extend(["src_unit", "dst_unit"]),
            _ => {}
        }
        cols.join(", ")
    }

    /// Reads one part on its own connection and adds its rows up. `None`: a rollup part
    /// found the rollup moved on since the plan was made.
    fn run(&self, db: &Path, filter: &Filter, part: Part) -> Result<Option<Sums>, ExportError> {
        let conn = crate::store::open_for_reading(db)?;
        let query_err = ExportError::query(db);
        let (sql, params) = match part {
            Part::Rollup { days, state } => {
                return read_rollup(&conn, days, state).map_err(&query_err);
            }
            Part::RowsTime { ids, ms } => (
                format!(
                    "SELECT {} FROM flows WHERE id >= ? AND id < ? \
                     AND +first_seen_ms >= ? AND +first_seen_ms < ?",
                    self.columns()
                ),
                vec![
                    Value::Integer(ids.0),
                    Value::Integer(ids.1),
                    Value::Integer(ms.0),
                    Value::Integer(ms.1),
                ],
            ),
            Part::Rows(lo, hi) => {
                let (conds, mut params) = filter.sql(TimeAccess::Scan);
                params.splice(0..0, [Value::Integer(lo), Value::Integer(hi)]);
                let sql = format!(
                    "SELECT {} FROM flows WHERE id >= ? AND id < ?{conds}",
                    self.columns()
                );
                (sql, params)
            }
            Part::Time(lo, hi) => {
                let untimed = Filter {
                    since: None,
                    until: None,
                    ..filter.clone()
                };
                let (conds, mut params) = untimed.sql(TimeAccess::Index);
                params.splice(0..0, [Value::Integer(lo), Value::Integer(hi)]);
                let sql = format!(
                    "SELECT {} FROM flows WHERE first_seen_ms >= ? AND first_seen_ms < ?{conds}",
                    self.columns()
                );
                (sql, params)
            }
        };
        let mut stmt = conn.prepare(&sql).map_err(&query_err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(&query_err)?;
        let started = std::time::Instant::now();
        let local = self.local;
        let sums = match self.group {
            Group::RemoteIp | Group::Country | Group::Asn => {
                let mut sums = InlineSums::<{ ipinfo::KEY }>::new();
                self.each_row(&mut rows, |_, src, dst, t| {
                    sums.add(local.remote(src, dst), None, t);
                    Ok(())
                })
                .map_err(&query_err)?;
                sums.into_sums()
            }
            Group::Process => {
                let mut sums = InlineSums::<23>::new();
                self.each_row(&mut rows, |row, src, _, t| {
                    let comm = row.get_ref(if local.is_local(src) { 4 } else { 5 })?;
                    sums.add(text(comm).unwrap_or(b"-"), None, t);
                    Ok(())
                })
                .map_err(&query_err)?;
                sums.into_sums()
            }
            // As the process, with the local end's unit; most unit names fit inline, a
            // container's cgroup path may not.
            Group::Unit => {
                let mut sums = InlineSums::<63>::new();
                self.each_row(&mut rows, |row, src, _, t| {
                    let unit = row.get_ref(if local.is_local(src) { 4 } else { 5 })?;
                    sums.add(text(unit).unwrap_or(b"-"), None, t);
                    Ok(())
                })
                .map_err(&query_err)?;
                sums.into_sums()
            }
            Group::Pair => {
                let mut sums = InlineSums::<95>::new();
                self.each_row(&mut rows, |_, src, dst, t| {
                    sums.add(src, Some(dst), t);
                    Ok(())
                })
                .map_err(&query_err)?;
                sums.into_sums()
            }
            Group::Port => {
                let at = if self.needs_addresses() { 4 } else { 2 };
                let mut ports: HashMap<u32, Totals, foldhash::fast::RandomState> =
                    HashMap::default();
                self.each_row(&mut rows, |row, _, _, t| {
                    let proto = int(row.get_ref(at)?).unwrap_or(0) as u8;
                    let port = int(row.get_ref(at + 1)?).unwrap_or(0) as u16;
                    ports
                        .entry(u32::from(proto) << 16 | u32::from(port))
                        .or_default()
                        .add(t);
                    Ok(())
                })
                .map_err(&query_err)?;
                ports
                    .into_iter()
                    .map(|(k, v)| {
                        let [_, proto, hi, lo] = k.to_be_bytes();
                        (Box::from(&[proto, hi, lo][..]), v)
                    })
                    .collect()
            }
        };
        tracing::debug!(
            ?part,
            keys = sums.len(),
            secs = started.elapsed().as_secs_f64(),
            "top: part read"
        );
        Ok(Some(sums))
    }

    /// Calls `add` with each row that passes the filter, its addresses (empty when not
    /// read) and its totals.
    fn each_row(
        &self,
        rows: &mut rusqlite::Rows<'_>,
        mut add: impl FnMut(&rusqlite::Row<'_>, &[u8], &[u8], &Totals) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        let addresses = self.needs_addresses();
        let check = self.check.is_active().then_some(self.check);
        while let Some(row) = rows.next()? {
            let (src, dst) = if addresses {
                (
                    text(row.get_ref(2)?).unwrap_or_default(),
                    text(row.get_ref(3)?).unwrap_or_default(),
                )
            } else {
                (&b""[..], &b""[..])
            };
            if let Some(check) = check
                && !check.matches(src, dst)
            {
                continue;
            }
            let t = Totals {
                flows: 1,
                packets: int(row.get_ref(0)?).unwrap_or(0).max(0) as u64,
                bytes: int(row.get_ref(1)?).unwrap_or(0).max(0) as u64,
            };
            add(row, src, dst, &t)?;
        }
        Ok(())
    }
}

/// The rollup's sums for `days` by remote address, in one snapshot that must still show
/// the rollup at `state` (else `None`: the plan is stale).
fn read_rollup(
    conn: &rusqlite::Connection,
    days: (i64, i64),
    state: rollup::RollupState,
) -> rusqlite::Result<Option<Sums>> {
    let started = std::time::Instant::now();
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        if rollup::state(conn)? != state {
            return Ok(None);
        }
        let mut stmt = conn.prepare(
            "SELECT remote, flows, packets, bytes FROM flow_rollup WHERE day >= ?1 AND day < ?2",
        )?;
        let mut rows = stmt.query([days.0, days.1])?;
        let mut sums = InlineSums::<{ ipinfo::KEY }>::new();
        while let Some(row) = rows.next()? {
            let t = Totals {
                flows: int(row.get_ref(1)?).unwrap_or(0).max(0) as u64,
                packets: int(row.get_ref(2)?).unwrap_or(0).max(0) as u64,
                bytes: int(row.get_ref(3)?).unwrap_or(0).max(0) as u64,
            };
            sums.add(text(row.get_ref(0)?).unwrap_or_default(), None, &t);
        }
        Ok(Some(sums.into_sums()))
    })();
    conn.execute_batch("COMMIT")?;
    tracing::debug!(
        ?days,
        secs = started.elapsed().as_secs_f64(),
        "top: rollup read"
    );
    result
}

fn int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    }
}

fn text(v: ValueRef<'_>) -> Option<&[u8]> {
    match v {
        ValueRef::Text(t) => Some(t),
        _ => None,
    }
}

/// The group each summed key belongs to.
fn group_key(group: Group, key: &[u8], info: &InfoMap) -> GroupKey {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match group {
        Group::RemoteIp | Group::Process | Group::Unit => GroupKey::Text(text(key)),
        Group::Country => GroupKey::Text(
            info.get(key)
                .and_then(|i| i.country.as_deref())
                .unwrap_or("-")
                .to_string(),
        ),
        Group::Asn => GroupKey::Asn(info.get(key).and_then(|i| i.asn).unwrap_or(0)),
        Group::Port => GroupKey::Port {
            proto: key[0],
            port: u16::from_be_bytes([key[1], key[2]]),
        },
        Group::Pair => {
            let at = key.iter().position(|b| *b == 0).unwrap_or(key.len());
            let dst = key.get(at + 1..).unwrap_or_default();
            GroupKey::Text(format!("{} → {}", text(&key[..at]), text(dst)))
        }
    }
}

/// How often a plan made on the rollup is made again when the writer moved the rollup on
/// while it was being read, before reading every flow instead.
const ROLLUP_TRIES: usize = 3;

/// Adds up the flows in `db` that pass `filter` by `group`, largest `by` first (ties by
/// the key, ascending).
///
/// With `use_rollup`, when the group derives from the remote address (remote-ip, country,
/// asn) and the filter bounds only the time, whole days come from `flow_rollup` (see
/// [`crate::store::rollup`]); the answer is the same as reading every flow, except that
/// rolled-up flows keep the remote end given by the host's addresses when they were
/// rolled up.
pub fn rank(
    db: &Path,
    group: Group,
    by: By,
    filter: &Filter,
    local: &LocalAddrs,
    use_rollup: bool,
) -> Result<(Ranking, InfoMap), ExportError> {
    let conn = crate::store::open_for_reading(db)?;
    let query_err = ExportError::query(db);
    let by_remote = matches!(group, Group::RemoteIp | Group::Country | Group::Asn);
    let info = if filter.needs_info() || by_remote {
        ipinfo::load(&conn).map_err(&query_err)?
    } else {
        InfoMap::default()
    };
    let check = filter.row_check(&info);
    let scan = Scan {
        group,
        check: &check,
        local,
    };
    let mut sums = None;
    if use_rollup && by_remote && only_time(filter) {
        for _ in 0..ROLLUP_TRIES {
            let Some(parts) = plan_rollup(&conn, filter).map_err(&query_err)? else {
                break;
            };
            sums = read_parts(db, filter, &scan, &parts)?;
            if sums.is_some() {
                break;
            }
            tracing::debug!("top: the rollup moved on while read; again");
        }
    }
    let sums = match sums {
        Some(s) => s,
        None => {
            let parts = plan(&conn, filter).map_err(&query_err)?;
            // Parts of `flows` are never stale.
            read_parts(db, filter, &scan, &parts)?.unwrap_or_default()
        }
    };
    drop(conn);
    let mut groups: HashMap<GroupKey, Totals> = HashMap::new();
    let mut total = Totals::default();
    for (k, v) in &sums {
        total.add(v);
        groups.entry(group_key(group, k, &info)).or_default().add(v);
    }
    let mut rows: Vec<(GroupKey, Totals)> = groups.into_iter().collect();
    rows.sort_by(|a, b| {
        by_total(&b.1, by)
            .cmp(&by_total(&a.1, by))
            .then_with(|| a.0.cmp(&b.0))
    });
    Ok((Ranking { rows, total }, info))
}

/// Reads the parts, a thread each, and adds them up; `None` when a rollup part found the
/// plan stale.
fn read_parts(
    db: &Path,
    filter: &Filter,
    scan: &Scan<'_>,
    parts: &[Part],
) -> Result<Option<Sums>, ExportError> {
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|&part| {
                let scan = &scan;
                s.spawn(move || scan.run(db, filter, part))
            })
            .collect();
        let mut all = Sums::default();
        let mut stale = false;
        for h in handles {
            let Some(mut part) = h.join().map_err(|_| ExportError::ReaderPanicked)?? else {
                stale = true;
                continue;
            };
            // Fold the smaller map into the larger.
            if part.len() > all.len() {
                std::mem::swap(&mut all, &mut part);
            }
            for (k, v) in part {
                all.entry(k).or_default().add(&v);
            }
        }
        Ok((!stale).then_some(all))
    })
}

/// Bytes for people: 1 kB = 1000 B.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if b < 1000 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `part` of `total` in percent, two decimals.
fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (part as f64 * 10_000.0 / total as f64).round() / 100.0
}

/// The output columns of a group, before flows, packets, bytes and share_pct.
fn key_columns(group: Group) -> &'static [&'static str] {
    match group {
        Group::RemoteIp => &["remote_ip", "hostname", "country", "asn"],
        Group::Country => &["country"],
        Group::Asn => &["asn", "as_org"],
        Group::Process => &["process"],
        Group::Unit => &["unit"],
        Group::Port => &["port"],
        Group::Pair => &["pair"],
    }
}

/// The AS organisation of each ASN (the smallest name when addresses disagree).
fn as_orgs(info: &InfoMap) -> HashMap<i64, &str> {
    let mut orgs: HashMap<i64, &str> = HashMap::new();
    for i in info.values() {
        if let (Some(asn), Some(org)) = (i.asn, i.as_org.as_deref()) {
            orgs.entry(asn)
                .and_modify(|o| *o = (*o).min(org))
                .or_insert(org);
        }
    }
    orgs
}

/// The key columns of a row, as cells (shared by all formats).
fn key_cells<'a>(
    group: Group,
    key: &'a GroupKey,
    info: &'a InfoMap,
    orgs: &HashMap<i64, &'a str>,
) -> Vec<Cell<'a>> {
    match (group, key) {
        (Group::RemoteIp, GroupKey::Text(ip)) => {
            let i = info.get(ip.as_bytes());
            vec![
                Cell::Text(ip.as_bytes()),
                i.and_then(|i| i.hostname.as_deref()).into(),
                i.and_then(|i| i.country.as_deref()).into(),
                i.and_then(|i| i.asn).map_or(Cell::Null, Cell::Int),
            ]
        }
        (Group::Asn, GroupKey::Asn(a)) => vec![Cell::Int(*a), orgs.get(a).copied().into()],
        (_, GroupKey::Text(t)) => vec![Cell::Text(t.as_bytes())],
        (_, GroupKey::Asn(a)) => vec![Cell::Int(*a)],
        // Labelled by the caller, which owns the text.
        (_, GroupKey::Port { .. }) => vec![],
    }
}

/// Runs `sensor top` and writes its answer to `out`.
pub fn top(
    db: &Path,
    opts: &TopOptions,
    local: &LocalAddrs,
    out: impl Write,
) -> Result<(), ExportError> {
    let (ranking, info) = rank(db, opts.group, opts.by, &opts.filter, local, opts.rollup)?;
    let mut out = BufWriter::new(out);
    let total = by_total(&ranking.total, opts.by);
    let shown = if opts.limit == 0 {
        ranking.rows.len()
    } else {
        opts.limit.min(ranking.rows.len())
    };
    let orgs = if opts.group == Group::Asn {
        as_orgs(&info)
    } else {
        HashMap::new()
    };
    let mut columns = vec!["rank"];
    columns.extend(key_columns(opts.group));
    columns.extend(["flows", "packets", "bytes", "share_pct"]);
    let rows = ranking.rows.iter().take(shown).enumerate();
    match opts.format {
        TopFormat::Csv | TopFormat::Json => {
            let mut w: Box<dyn RowWriter> = match opts.format {
                TopFormat::Csv => Box::new(super::csv::CsvWriter::new(&mut out)),
                _ => Box::new(super::json::JsonWriter::new(&mut out, true)),
            };
            w.begin(&columns)?;
            for (i, (key, t)) in rows {
                // A port's label ("tcp/443") is made here; other keys are borrowed.
                let port = matches!(key, GroupKey::Port { .. }).then(|| key.to_string());
                let mut cells = vec![Cell::Int(i as i64 + 1)];
                match &port {
                    Some(label) => cells.push(Cell::Text(label.as_bytes())),
                    None => cells.extend(key_cells(opts.group, key, &info, &orgs)),
                }
                cells.extend([
                    Cell::Int(t.flows as i64),
                    Cell::Int(t.packets as i64),
                    Cell::Int(t.bytes as i64),
                    Cell::Real(share(by_total(t, opts.by), total)),
                ]);
                w.row(&cells)?;
            }
            w.finish()?;
        }
        TopFormat::Table => {
            let cell_text = |c: &Cell<'_>| match c {
                Cell::Null => "-".to_string(),
                Cell::Int(v) => v.to_string(),
                Cell::Real(v) => v.to_string(),
                Cell::Text(t) => String::from_utf8_lossy(t).into_owned(),
            };
            let mut header: Vec<&str> = columns.clone();
            header.pop();
            header.extend(["size", "share"]);
            let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
            for (i, (key, t)) in rows {
                let mut line = vec![(i + 1).to_string()];
                match key {
                    GroupKey::Port { .. } => line.push(key.to_string()),
                    _ => line.extend(
                        key_cells(opts.group, key, &info, &orgs)
                            .iter()
                            .map(cell_text),
                    ),
                }
                line.extend([
                    t.flows.to_string(),
                    t.packets.to_string(),
                    t.bytes.to_string(),
                    human_bytes(t.bytes),
                    format!("{:.2}%", share(by_total(t, opts.by), total)),
                ]);
                table.push(line);
            }
            write_table(&mut out, &table, |col| {
                let name = header[col];
                name == "rank" || name == "asn" || !key_columns(opts.group).contains(&name)
            })?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Columns padded to their widest cell (counted in characters), numbers to the right.
fn write_table(
    out: &mut impl Write,
    table: &[Vec<String>],
    right: impl Fn(usize) -> bool,
) -> io::Result<()> {
    let cols = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in table {
        let mut s = String::new();
        for (c, cell) in line.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c > 0 {
                s.push_str("  ");
            }
            if right(c) {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if c + 1 < cols {
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        s.push('\n');
        out.write_all(s.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_bytes(999_990), "1.0 MB");
        assert_eq!(human_bytes(1_200_000_000), "1.2 GB");
        assert_eq!(human_bytes(u64::MAX), "18.4 EB");
    }

    #[test]
    fn loopback_and_interface_addresses_are_local() {
        let l = LocalAddrs::from_addrs([
            "192.168.1.5".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
        ]);
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "192.168.1.5", "10.0.0.1"] {
            assert!(l.is_local(ip.as_bytes()), "{ip}");
        }
        for ip in ["192.168.1.50", "8.8.8.8", "::2", "1270::1"] {
            assert!(!l.is_local(ip.as_bytes()), "{ip}");
        }
    }

    #[test]
    fn ranges_split_into_parts_that_cover_them() {
        for (lo, hi, n) in [(1, 101, 2), (5, 6, 4), (0, 7, 3), (-10, 10, 8)] {
            let parts: Vec<_> = split(lo, hi, n).collect();
            assert_eq!(parts.first().unwrap().0, lo);
            assert_eq!(parts.last().unwrap().1, hi);
            assert!(parts.windows(2).all(|w| w[0].1 == w[1].0), "{parts:?}");
            assert!(parts.len() <= n);
        }
    }

    #[test]
    fn shares_are_percent_with_two_decimals() {
        assert_eq!(share(1, 3), 33.33);
        assert_eq!(share(2, 3), 66.67);
        assert_eq!(share(5, 0), 0.0);
        assert_eq!(share(7, 7), 100.0);
    }

    /// A database of flows between 127.0.0.1 (local) and 192.0.2.x (remote), each local
    /// end with the unit given, the remote end with none (the local end initiates when
    /// `out`); one flow per entry, of `bytes` payload bytes.
    fn unit_db(name: &str, flows: &[(Option<&str>, bool, i64)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sensor-top-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("flows.db");
        let conn = crate::store::open_for_writing(&db).unwrap();
        for (i, (unit, out, bytes)) in flows.iter().enumerate() {
            let (local, remote) = ("127.0.0.1", format!("192.0.2.{}", i + 1));
            let (src, dst) = if *out {
                (local, remote.as_str())
            } else {
                (remote.as_str(), local)
            };
            let (src_unit, dst_unit) = if *out { (*unit, None) } else { (None, *unit) };
            // The remote end's unit column holds a decoy: it must never be counted.
            let decoy = Some("remote.service");
            conn.execute(
                "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port, \
                 dst_ip, dst_port, src_payload_bytes, end_reason, sources, src_unit, \
                 dst_unit) VALUES (?1, ?1, 6, ?2, 40000, ?3, 443, ?4, 'fin', 'kernel', ?5, ?6)",
                rusqlite::params![
                    1_000 + i as i64,
                    src,
                    dst,
                    bytes,
                    src_unit.or(if *out { None } else { decoy }),
                    dst_unit.or(if *out { decoy } else { None }),
                ],
            )
            .unwrap();
        }
        db
    }

    #[test]
    fn units_group_by_the_local_end_and_filter_either_end() {
        let db = unit_db(
            "unit",
            &[
                (Some("nginx.service"), false, 100),
                (Some("nginx.service"), false, 50),
                (Some("user@1000.service/app.scope"), true, 120),
                (Some("/mytest/client"), true, 10),
                (None, true, 5),
            ],
        );
        let local = LocalAddrs::from_addrs([]);
        let key = |s: &str| GroupKey::Text(s.into());
        let (r, _) = rank(
            &db,
            Group::Unit,
            By::Bytes,
            &Filter::default(),
            &local,
            true,
        )
        .unwrap();
        let got: Vec<(GroupKey, u64, u64)> = r
            .rows
            .iter()
            .map(|(k, t)| (k.clone(), t.flows, t.bytes))
            .collect();
        assert_eq!(
            got,
            [
                (key("nginx.service"), 2, 150),
                (key("user@1000.service/app.scope"), 1, 120),
                (key("/mytest/client"), 1, 10),
                (key("-"), 1, 5),
            ]
        );
        assert_eq!(r.total.flows, 5);
        // --unit matches either end, the remote's decoy included.
        let only = |u: &str| Filter {
            unit: Some(u.into()),
            ..Filter::default()
        };
        let (r, _) = rank(
            &db,
            Group::Unit,
            By::Flows,
            &only("nginx.service"),
            &local,
            true,
        )
        .unwrap();
        assert_eq!(
            r.rows,
            [(
                key("nginx.service"),
                Totals {
                    flows: 2,
                    packets: 0,
                    bytes: 150
                }
            )]
        );
        let (r, _) = rank(
            &db,
            Group::Unit,
            By::Flows,
            &only("remote.service"),
            &local,
            true,
        )
        .unwrap();
        assert_eq!(
            r.total.flows, 5,
            "every flow has the decoy at its remote end"
        );
        assert!(r.rows.iter().all(|(k, _)| *k != key("remote.service")));
        let (r, _) = rank(
            &db,
            Group::RemoteIp,
            By::Flows,
            &only("/mytest/client"),
            &local,
            true,
        )
        .unwrap();
        assert_eq!(
            r.rows.len(),
            1,
            "a unit filter is no time-only filter: no rollup"
        );
        assert_eq!(r.rows[0].0, key("192.0.2.4"));
        let _ = std::fs::remove_dir_all(db.parent().unwrap());
    }

    #[test]
    fn ports_print_with_their_protocol() {
        assert_eq!(
            GroupKey::Port {
                proto: 6,
                port: 443
            }
            .to_string(),
            "tcp/443"
        );
        assert_eq!(
            GroupKey::Port {
                proto: 58,
                port: 32768
            }
            .to_string(),
            "icmpv6/32768"
        );
        assert_eq!(
            GroupKey::Port {
                proto: 132,
                port: 9
            }
            .to_string(),
            "132/9"
        );
    }
}
