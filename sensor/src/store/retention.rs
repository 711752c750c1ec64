//! Retention: flows older than a maximum age, and the oldest flows while the database is
//! over a maximum size, are deleted by the writer thread in small transactions between its
//! batches, so a prune never holds the write lock for long. Alerts go by age too, once
//! quiet (their last flow) for longer than the maximum age: their evidence is gone by then.
use std::time::Duration;

use rusqlite::Connection;

/// Rows deleted per transaction: a few milliseconds of work.
pub const CHUNK_ROWS: usize = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Flows that started longer ago than this are deleted.
    pub max_age: Option<Duration>,
    /// While the data in the file (pages in use) is larger than this, the oldest flows
    /// are deleted.
    pub max_bytes: Option<u64>,
}

/// Why rows were pruned (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    Age,
    Size,
    /// Alerts, by age.
    AlertAge,
}

impl Pruned {
    pub fn as_str(self) -> &'static str {
        match self {
            Pruned::Age => "age",
            Pruned::Size => "size",
            Pruned::AlertAge => "alert_age",
        }
    }
}

/// Bytes of the database in use: pages minus free pages.
pub fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * page) as u64)
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.max_age.is_none() && self.max_bytes.is_none()
    }

    /// One step: deletes at most [`CHUNK_ROWS`] flows in one transaction. Returns what was
    /// deleted and why; `None` when nothing is due.
    pub fn step(
        &self,
        conn: &mut Connection,
        now_ms: i64,
    ) -> rusqlite::Result<Option<(Pruned, u64)>> {
        if let Some(age) = self.max_age {
            let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            let n = delete_chunk(conn, "WHERE first_seen_ms < ?1", cutoff)?;
            if n > 0 {
                return Ok(Some((Pruned::Age, n)));
            }
            let n = conn.execute(
                &format!(
                    "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts \
                     WHERE last_seen_ms < ?1 LIMIT {CHUNK_ROWS})"
                ),
                [cutoff],
            )? as u64;
            if n > 0 {
                return Ok(Some((Pruned::AlertAge, n)));
            }
        }
        if let Some(max) = self.max_bytes
            && used_bytes(conn)? > max
        {
            let n = delete_chunk(conn, "", 0)?;
            // Give the freed pages back to the file system where the database allows it
            // (new databases are created with auto_vacuum = INCREMENTAL).
            conn.execute_batch("PRAGMA incremental_vacuum")?;
            if n > 0 {
                return Ok(Some((Pruned::Size, n)));
            }
        }
        Ok(None)
    }
}

/// Deletes the oldest CHUNK_ROWS flows matching `filter` (`?1` bound to `arg`).
fn delete_chunk(conn: &mut Connection, filter: &str, arg: i64) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let sql = format!(
        "DELETE FROM flows WHERE id IN (SELECT id FROM flows {filter} \
         ORDER BY first_seen_ms LIMIT {CHUNK_ROWS}) RETURNING first_seen_ms"
    );
    // The latest start among the deleted flows: the rollup must give up its day.
    let mut latest: Option<i64> = None;
    let mut n = 0u64;
    {
        let mut stmt = tx.prepare(&sql)?;
        let mut rows = if filter.is_empty() {
            stmt.query([])?
        } else {
            stmt.query([arg])?
        };
        while let Some(row) = rows.next()? {
            let ms: i64 = row.get(0)?;
            latest = Some(latest.map_or(ms, |l| l.max(ms)));
            n += 1;
        }
    }
    if let Some(ms) = latest {
        super::rollup::after_prune(&tx, ms)?;
    }
    tx.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(name: &str) -> (std::path::PathBuf, Connection) {
        let dir = std::env::temp_dir().join(format!("sensor-ret-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("f.db");
        let conn = crate::store::open_for_writing(&path).unwrap();
        (dir, conn)
    }

    fn insert(conn: &mut Connection, n: i64, first_ms: i64) {
        let tx = conn.transaction().unwrap();
        for i in 0..n {
            tx.execute(
                "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port, dst_ip,
                 dst_port, end_reason, sources) VALUES (?1, ?1, 6, '10.0.0.1', 1, '10.0.0.2', 2,
                 'fin', 'file')",
                [first_ms + i],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn old_flows_go_in_chunks_and_recent_ones_stay() {
        let (dir, mut conn) = db("age");
        let now = 10_000_000_000i64;
        insert(&mut conn, 12_000, now - 3_600_000 - 20_000); // older than an hour
        insert(&mut conn, 100, now - 1_000);
        let r = Retention {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: None,
        };
        let mut steps = Vec::new();
        while let Some((why, n)) = r.step(&mut conn, now).unwrap() {
            assert_eq!(why, Pruned::Age);
            steps.push(n);
        }
        assert_eq!(steps, vec![5_000, 5_000, 2_000]);
        assert_eq!(count(&conn), 100);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Alerts quiet for longer than the age go, in chunks; those seen since stay.
    #[test]
    fn old_alerts_go_by_their_last_flow() {
        let (dir, mut conn) = db("alerts");
        let now = 10_000_000_000i64;
        let old = now - 3_600_000 - 1;
        for (i, last) in [(0, old), (1, old), (2, now - 10)] {
            conn.execute(
                "INSERT INTO alerts (key, kind, first_seen_ms, last_seen_ms, src_ip, targets, \
                 ports, count, score, detail, evidence) \
                 VALUES (?1, 'port_scan', ?2, ?2, '10.0.0.1', '', '', 1, 1.0, '', '[]')",
                rusqlite::params![format!("k{i}"), last],
            )
            .unwrap();
        }
        let r = Retention {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: None,
        };
        assert_eq!(r.step(&mut conn, now).unwrap(), Some((Pruned::AlertAge, 2)));
        assert_eq!(r.step(&mut conn, now).unwrap(), None);
        let left: Vec<String> = conn
            .prepare("SELECT key FROM alerts")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(left, ["k2"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn size_bound_deletes_oldest_until_under_and_shrinks_the_file() {
        let (dir, mut conn) = db("size");
        insert(&mut conn, 50_000, 1_000);
        let before = used_bytes(&conn).unwrap();
        let max = before / 2;
        let r = Retention {
            max_age: None,
            max_bytes: Some(max),
        };
        while r.step(&mut conn, 0).unwrap().is_some() {}
        let after = used_bytes(&conn).unwrap();
        assert!(after <= max, "{after} > {max}");
        let left = count(&conn);
        assert!(left > 0 && left < 50_000, "{left}");
        // The oldest went first.
        let oldest: i64 = conn
            .query_row("SELECT min(first_seen_ms) FROM flows", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest, 1_000 + 50_000 - left);
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let file = std::fs::metadata(dir.join("f.db")).unwrap().len();
        assert!(
            file <= before,
            "auto_vacuum gave pages back: {file} vs {before}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
