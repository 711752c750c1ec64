//! The floor under `sensor top` and `sensor export`: SQLite handing over the same columns
//! the same way (read-only connections, one per core for `top`, index order for
//! `export`), with nothing done to them. Whatever the commands add on top is theirs;
//! this part only a different schema could shrink.
//!
//! `cargo xtask bench --only top|export` runs it on its databases:
//! `QUERY_FLOOR_DB=/absolute/path QUERY_FLOOR=top|export cargo bench -p sensor --bench
//! query_floor` (benches run in `sensor/`).
//! Prints the median of three in seconds.
use std::{path::Path, time::Instant};

use rusqlite::{OpenFlags, types::ValueRef};
use sensor::export::{csv::FLOW_SQL, top};

/// Reads `sql` (with `?` for the part's bounds when given) and touches every value.
fn drain(db: &Path, sql: &str, bounds: Option<(i64, i64)>) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open");
    let mut stmt = conn.prepare(sql).expect("prepare");
    let n = stmt.column_count();
    let mut rows = match bounds {
        Some((lo, hi)) => stmt.query([lo, hi]),
        None => stmt.query([]),
    }
    .expect("query");
    let mut acc = 0u64;
    while let Some(r) = rows.next().expect("step") {
        for i in 0..n {
            acc = acc.wrapping_add(match r.get_ref(i).expect("column") {
                ValueRef::Integer(v) => v as u64,
                ValueRef::Text(t) => t.len() as u64,
                _ => 1,
            });
        }
    }
    acc
}

fn top_floor(db: &Path) {
    let conn =
        rusqlite::Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let (lo, hi): (i64, i64) = conn
        .query_row("SELECT min(id), max(id) + 1 FROM flows", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("ids");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let sql = format!(
        "SELECT {}, {}, src_ip, dst_ip FROM flows WHERE id >= ? AND id < ?",
        top::PACKETS_SQL,
        top::BYTES_SQL
    );
    let step = (hi - lo) / threads + 1;
    std::thread::scope(|s| {
        for t in 0..threads {
            let sql = &sql;
            let part = (lo + t * step, (lo + (t + 1) * step).min(hi));
            s.spawn(move || std::hint::black_box(drain(db, sql, Some(part))));
        }
    });
}

fn export_floor(db: &Path) {
    let sql = format!(
        "SELECT {} FROM flows ORDER BY first_seen_ms, id",
        FLOW_SQL.join(", ")
    );
    std::hint::black_box(drain(db, &sql, None));
}

fn main() {
    let Some(db) = std::env::var_os("QUERY_FLOOR_DB") else {
        eprintln!("query_floor: set QUERY_FLOOR_DB (cargo xtask bench --only top|export does)");
        return;
    };
    let db = Path::new(&db);
    let what = std::env::var("QUERY_FLOOR").unwrap_or_else(|_| "top".into());
    let mut secs: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            match what.as_str() {
                "export" => export_floor(db),
                _ => top_floor(db),
            }
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    println!("{:.3}", secs[1]);
}
