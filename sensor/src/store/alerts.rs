//! The `alerts` table: what the detectors found, one row per alert. An alert is written
//! when it is raised and rewritten (same `key`) while it stays active, so a scan that goes
//! on is one row whose count grows, not a row per probe.
use rusqlite::{Connection, Transaction, params};

/// One alert as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AlertRow {
    /// `port_scan`, `brute_force`, `exfiltration`, `beacon`, `threat_contact`.
    pub kind: &'static str,
    /// What makes the alert one: its kind, its source and target, and its first flow's
    /// start. The same capture replayed again rewrites the same rows.
    pub key: String,
    /// The first and the latest flow counted (their start, unix ms).
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The address the alert is about: the scanner, the guesser, the uploader, the
    /// beaconing host, the local end that met a listed address.
    pub src_ip: String,
    /// Addresses it went to, comma-separated (the first ones; `+N` says how many more).
    pub targets: String,
    /// Ports it went to, the same way (`proto/port`).
    pub ports: String,
    /// Flows counted.
    pub count: u64,
    /// How sure: 0..1 (the beacon score; for threshold rules 1).
    pub score: f64,
    /// The process and unit of the source, where a local process was seen.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub unit: Option<String>,
    /// The rule and the figures that met it, in words.
    pub detail: String,
    /// The first flows counted, a JSON array of `{"start_ms","proto","src","dst"}`: each
    /// names one row of `flows` (first_seen_ms and the 5-tuple).
    pub evidence: String,
}

/// Writes `rows` in `tx`: new alerts are inserted, known keys updated in place.
pub fn upsert(tx: &Transaction<'_>, rows: &[AlertRow]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO alerts (key, kind, first_seen_ms, last_seen_ms, src_ip, targets, ports,
             count, score, pid, comm, unit, detail, evidence)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (key) DO UPDATE SET
             last_seen_ms = excluded.last_seen_ms, targets = excluded.targets,
             ports = excluded.ports, count = excluded.count, score = excluded.score,
             pid = coalesce(excluded.pid, pid), comm = coalesce(excluded.comm, comm),
             unit = coalesce(excluded.unit, unit), detail = excluded.detail,
             evidence = excluded.evidence",
    )?;
    for r in rows {
        stmt.execute(params![
            r.key,
            r.kind,
            r.first_seen_ms,
            r.last_seen_ms,
            r.src_ip,
            r.targets,
            r.ports,
            r.count as i64,
            r.score,
            r.pid,
            r.comm,
            r.unit,
            r.detail,
            r.evidence,
        ])?;
    }
    Ok(())
}

/// Which alerts to read.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Alerts active at or after this (last_seen_ms), unix ms.
    pub since_ms: Option<i64>,
    pub kind: Option<String>,
}

/// A stored alert, as read back.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredAlert {
    pub id: i64,
    pub kind: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub src_ip: String,
    pub targets: String,
    pub ports: String,
    pub count: i64,
    pub score: f64,
    pub pid: Option<i64>,
    pub comm: Option<String>,
    pub unit: Option<String>,
    pub detail: String,
    pub evidence: String,
}

/// Column names, in the order [`StoredAlert`] has them (the CSV header).
pub const COLUMNS: &[&str] = &[
    "id",
    "kind",
    "first_seen_ms",
    "last_seen_ms",
    "src_ip",
    "targets",
    "ports",
    "count",
    "score",
    "pid",
    "comm",
    "unit",
    "detail",
    "evidence",
];

/// The alerts `q` selects, oldest first.
pub fn read(conn: &Connection, q: &AlertQuery) -> rusqlite::Result<Vec<StoredAlert>> {
    let mut stmt = conn.prepare(
        "SELECT id, kind, first_seen_ms, last_seen_ms, src_ip, targets, ports, count, score,
                pid, comm, unit, detail, evidence
         FROM alerts
         WHERE last_seen_ms >= ?1 AND (?2 IS NULL OR kind = ?2)
         ORDER BY first_seen_ms, id",
    )?;
    let rows = stmt.query_map(params![q.since_ms.unwrap_or(i64::MIN), q.kind], |r| {
        Ok(StoredAlert {
            id: r.get(0)?,
            kind: r.get(1)?,
            first_seen_ms: r.get(2)?,
            last_seen_ms: r.get(3)?,
            src_ip: r.get(4)?,
            targets: r.get(5)?,
            ports: r.get(6)?,
            count: r.get(7)?,
            score: r.get(8)?,
            pid: r.get(9)?,
            comm: r.get(10)?,
            unit: r.get(11)?,
            detail: r.get(12)?,
            evidence: r.get(13)?,
        })
    })?;
    rows.collect()
}
