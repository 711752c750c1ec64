//! The flow rollup: flows, packets and bytes added up per UTC day and remote address, so
//! `sensor top` by remote address, country or ASN reads a few rows a day instead of every
//! flow.
//!
//! Invariant: for every day after `rollup_state.pruned_day`, `flow_rollup` holds the sums
//! of exactly the flows of that day with `id <= rollup_state.max_id`. Days up to
//! `pruned_day` (days retention has deleted flows from) are never rolled up: `top` reads
//! them from `flows`, as it reads every flow with `id > max_id`.
//!
//! The writer thread rolls up in the background when it has nothing to write, one
//! transaction of at most [`STEP_IDS`] ids at a time ([`step`]). Retention keeps the
//! invariant in the transaction that deletes ([`after_prune`]).
//!
//! "Remote" is `top`'s rule (the end that is not an address of this host), applied with
//! the host's addresses *when the flow is rolled up*. If the host's addresses change,
//! flows rolled up before the change keep the remote they were given then, while a raw
//! scan (`top --no-rollup`) applies today's addresses to every flow.
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::sums::{ADDR_KEY, BYTES_SQL, InlineSums, LocalAddrs, PACKETS_SQL, Totals};

/// Milliseconds in a UTC day: `day = first_seen_ms.div_euclid(DAY_MS)`.
pub const DAY_MS: i64 = 86_400_000;
/// Ids read per step: a few tens of milliseconds of work.
pub const STEP_IDS: i64 = 50_000;

/// The UTC day of a time in milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Where the rollup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RollupState {
    /// Every flow with an id up to this (of a day after `pruned_day`) is rolled up.
    pub max_id: i64,
    /// The last day retention deleted flows from; it and earlier days are not rolled up.
    pub pruned_day: Option<i64>,
}

pub fn state(conn: &Connection) -> rusqlite::Result<RollupState> {
    Ok(conn
        .query_row("SELECT max_id, pruned_day FROM rollup_state", [], |r| {
            Ok(RollupState {
                max_id: r.get(0)?,
                pruned_day: r.get(1)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Rolls up the flows with ids in `(max_id, max_id + STEP_IDS]`, in one transaction.
/// Returns how many ids the watermark moved (0: caught up).
pub fn step(conn: &mut Connection, local: &LocalAddrs) -> rusqlite::Result<i64> {
    step_below(conn, local, None)
}

/// [`step`], taking no id at or past `below` (rows that may still change).
pub fn step_below(
    conn: &mut Connection,
    local: &LocalAddrs,
    below: Option<i64>,
) -> rusqlite::Result<i64> {
    let tx = conn.transaction()?;
    let st = state(&tx)?;
    let Some(last) = tx.query_row("SELECT max(id) FROM flows", [], |r| {
        r.get::<_, Option<i64>>(0)
    })?
    else {
        return Ok(0);
    };
    let last = below.map_or(last, |b| last.min(b - 1));
    if last <= st.max_id {
        return Ok(0);
    }
    let to = last.min(st.max_id.saturating_add(STEP_IDS));
    // By day, then by remote address, inline (no allocation a row).
    let mut sums: HashMap<i64, InlineSums<ADDR_KEY>> = HashMap::new();
    {
        let mut stmt = tx.prepare(&format!(
            "SELECT first_seen_ms, src_ip, dst_ip, {PACKETS_SQL}, {BYTES_SQL} \
             FROM flows WHERE id > ?1 AND id <= ?2"
        ))?;
        let mut rows = stmt.query(params![st.max_id, to])?;
        while let Some(row) = rows.next()? {
            let day = day_of(row.get(0)?);
            if st.pruned_day.is_some_and(|p| day <= p) {
                continue;
            }
            let src = row.get_ref(1)?.as_bytes().unwrap_or_default();
            let dst = row.get_ref(2)?.as_bytes().unwrap_or_default();
            let t = Totals {
                flows: 1,
                packets: row.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
                bytes: row.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
            };
            sums.entry(day)
                .or_default()
                .add(local.remote(src, dst), None, &t);
        }
    }
    {
        let mut up = tx.prepare(
            "INSERT INTO flow_rollup (day, remote, flows, packets, bytes) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (day, remote) DO UPDATE SET flows = flows + excluded.flows, \
             packets = packets + excluded.packets, bytes = bytes + excluded.bytes",
        )?;
        for (day, by_remote) in sums {
            for (remote, t) in by_remote.into_sums() {
                // Stored as text, as flows stores addresses.
                let remote = std::str::from_utf8(&remote).unwrap_or_default();
                let [f, p, b] = [t.flows, t.packets, t.bytes].map(|v| v as i64);
                up.execute(params![day, remote, f, p, b])?;
            }
        }
    }
    tx.execute("UPDATE rollup_state SET max_id = ?1", [to])?;
    tx.commit()?;
    Ok(to - st.max_id)
}

/// Steps until caught up; returns the ids rolled up.
pub fn catch_up(conn: &mut Connection, local: &LocalAddrs) -> rusqlite::Result<i64> {
    let mut total = 0;
    loop {
        let n = step(conn, local)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// Keeps the invariant after retention deleted flows, the latest of which started at
/// `deleted_max_ms`, in the deleting transaction: that day and every earlier one leave the
/// rollup (they are read from `flows` from now on), and the watermark comes down to the
/// largest id left, so an id SQLite hands out again is never taken as rolled up.
pub fn after_prune(tx: &Transaction<'_>, deleted_max_ms: i64) -> rusqlite::Result<()> {
    let day = day_of(deleted_max_ms);
    tx.execute(
        "UPDATE rollup_state SET pruned_day = max(ifnull(pruned_day, ?1), ?1), \
         max_id = min(max_id, ifnull((SELECT max(id) FROM flows), 0))",
        [day],
    )?;
    tx.execute(
        "DELETE FROM flow_rollup WHERE day <= (SELECT pruned_day FROM rollup_state)",
        [],
    )?;
    Ok(())
}

/// Opens `db` for writing and rolls up every flow not rolled up yet (`sensor rollup`).
pub fn catch_up_db(db: &std::path::Path, local: &LocalAddrs) -> Result<i64, super::StoreError> {
    let mut conn = super::open_for_writing(db)?;
    catch_up(&mut conn, local).map_err(|e| super::StoreError::sqlite(db, "rolling up flows", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{
        filter::{Filter, TimeArg},
        top::{By, Group, rank},
    };
    use crate::store::retention::{Pruned, Retention};

    fn db(name: &str) -> (std::path::PathBuf, Connection) {
        let dir = std::env::temp_dir().join(format!("sensor-rollup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conn = crate::store::open_for_writing(&dir.join("f.db")).unwrap();
        (dir, conn)
    }

    /// `n` flows from `first_ms`, `gap_ms` apart, between this host (10.0.0.1) and 16
    /// remotes, both ways round, some kernel-only.
    fn insert(conn: &mut Connection, n: i64, first_ms: i64, gap_ms: i64) {
        let tx = conn.transaction().unwrap();
        for i in 0..n {
            let remote = format!("198.51.100.{}", (i * 7) % 16);
            let (src, dst) = if i % 3 == 0 {
                (remote.as_str(), "10.0.0.1")
            } else {
                ("10.0.0.1", remote.as_str())
            };
            let packets = (i % 4 != 0).then_some(i % 11 + 1);
            tx.execute(
                "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port, dst_ip,
                 dst_port, src_payload_bytes, dst_payload_bytes, src_packets, src_bytes,
                 end_reason, sources) VALUES (?1, ?1, 6, ?2, 1, ?3, 2, ?4, 5, ?5, ?6, 'fin', 'file')",
                params![
                    first_ms + i * gap_ms,
                    src,
                    dst,
                    i % 97,
                    packets,
                    packets.map(|p| p * 60)
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn local() -> LocalAddrs {
        LocalAddrs::from_addrs(["10.0.0.1".parse().unwrap()])
    }

    /// Rollup and raw scan agree for every remote-derived group and some ranges.
    fn agree(dir: &std::path::Path, stage: &str) {
        let path = dir.join("f.db");
        let at = |ms: i64| {
            Some(TimeArg {
                text: ms.to_string(),
                ms,
            })
        };
        let ranges = [
            (None, None),
            (at(3 * DAY_MS + 5_000_000), None),
            (None, at(8 * DAY_MS + 123)),
            (at(2 * DAY_MS + 1), at(9 * DAY_MS - 1)),
        ];
        for (since, until) in ranges {
            let filter = Filter {
                since,
                until,
                ..Filter::default()
            };
            for group in [Group::RemoteIp, Group::Country, Group::Asn] {
                let (with, _) = rank(&path, group, By::Bytes, &filter, &local(), true).unwrap();
                let (without, _) = rank(&path, group, By::Bytes, &filter, &local(), false).unwrap();
                assert_eq!(with.rows, without.rows, "{stage}: {group:?} {filter:?}");
                assert_eq!(with.total, without.total, "{stage}: {group:?} {filter:?}");
            }
        }
    }

    #[test]
    fn retention_keeps_the_rollup_exact() {
        let (dir, mut conn) = db("prune");
        // Ten days, a flow every 5 minutes.
        insert(&mut conn, 10 * 288, 0, 300_000);
        assert_eq!(catch_up(&mut conn, &local()).unwrap(), 10 * 288);
        agree(&dir, "rolled up");
        // Prune to mid-day 3 (age), in chunks, with flows added in between.
        let r = Retention {
            max_age: Some(std::time::Duration::from_millis(10 * DAY_MS as u64)),
            max_bytes: None,
        };
        let now = 13 * DAY_MS + 3_600_000;
        insert(&mut conn, 100, 9 * DAY_MS + 17, 60_000);
        while let Some((why, _)) = r.step(&mut conn, now).unwrap() {
            assert_eq!(why, Pruned::Age);
        }
        let st = state(&conn).unwrap();
        assert_eq!(st.pruned_day, Some(3));
        let below: i64 = conn
            .query_row("SELECT count(*) FROM flow_rollup WHERE day <= 3", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(below, 0);
        agree(&dir, "pruned, new flows not rolled up");
        catch_up(&mut conn, &local()).unwrap();
        agree(&dir, "pruned and rolled up");
        // Late flows of a pruned day are read from flows, not rolled up.
        insert(&mut conn, 50, 3 * DAY_MS + 80_000_000, 1_000);
        catch_up(&mut conn, &local()).unwrap();
        agree(&dir, "late flows of a pruned day");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ids_handed_out_again_after_everything_is_pruned_are_not_taken_as_rolled_up() {
        let (dir, mut conn) = db("reuse");
        insert(&mut conn, 500, DAY_MS, 60_000);
        catch_up(&mut conn, &local()).unwrap();
        let r = Retention {
            max_age: Some(std::time::Duration::from_secs(1)),
            max_bytes: None,
        };
        while r.step(&mut conn, 100 * DAY_MS).unwrap().is_some() {}
        assert_eq!(state(&conn).unwrap().max_id, 0);
        // SQLite starts the ids again at 1.
        insert(&mut conn, 300, 50 * DAY_MS, 60_000);
        let first: i64 = conn
            .query_row("SELECT min(id) FROM flows", [], |r| r.get(0))
            .unwrap();
        assert_eq!(first, 1);
        agree(&dir, "ids again, not rolled up");
        catch_up(&mut conn, &local()).unwrap();
        agree(&dir, "ids again, rolled up");
        let _ = std::fs::remove_dir_all(dir);
    }
}
