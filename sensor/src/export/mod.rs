//! Export and `top`: flows out of the database for people and scripts, read in constant
//! memory (with respect to the flows) over read-only connections that never block the
//! writer.
pub mod alerts;
pub mod csv;
pub mod filter;
pub mod ipinfo;
pub mod json;
pub mod time;
pub mod top;

use std::{
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use rusqlite::types::ValueRef;

pub use filter::{Filter, FilterError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("database {path}: reading flows: {source}")]
    Query {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("writing output: {0}")]
    Io(#[from] io::Error),
    #[error("reading flows: a reader thread panicked")]
    ReaderPanicked,
}

impl ExportError {
    /// The reader went away (`| head`): not an error worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    pub(crate) fn query(path: &Path) -> impl Fn(rusqlite::Error) -> Self + '_ {
        |source| Self::Query {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A header row, then one flow a line.
    Csv,
    /// One JSON array of objects (keys as the CSV header), written as it goes.
    Json,
    /// One JSON object a line.
    Ndjson,
}

/// One output field, borrowed from SQLite's row or from `ip_info`.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
}

impl<'a> From<ValueRef<'a>> for Cell<'a> {
    fn from(v: ValueRef<'a>) -> Self {
        match v {
            ValueRef::Null => Self::Null,
            ValueRef::Integer(i) => Self::Int(i),
            ValueRef::Real(f) => Self::Real(f),
            ValueRef::Text(t) | ValueRef::Blob(t) => Self::Text(t),
        }
    }
}

impl<'a> From<Option<&'a str>> for Cell<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Self::Null, |s| Self::Text(s.as_bytes()))
    }
}

/// An output format: columns first, then rows, then the end.
pub trait RowWriter {
    fn begin(&mut self, columns: &[&str]) -> io::Result<()>;
    fn row(&mut self, cells: &[Cell<'_>]) -> io::Result<()>;
    fn finish(&mut self) -> io::Result<()>;
}

/// Output is written in large blocks; rows are never collected.
const OUT_BUFFER: usize = 256 * 1024;

/// Writes the flows in `db` that pass `filter` to `out`, oldest first (by `first_seen_ms`,
/// then `id`: the order of the index, so nothing is sorted). Returns the number of rows.
pub fn export(
    db: &Path,
    filter: &Filter,
    format: Format,
    out: impl Write,
) -> Result<u64, ExportError> {
    let out = BufWriter::with_capacity(OUT_BUFFER, out);
    match format {
        Format::Csv => export_with(db, filter, csv::CsvWriter::new(out)),
        Format::Json => export_with(db, filter, json::JsonWriter::new(out, true)),
        Format::Ndjson => export_with(db, filter, json::JsonWriter::new(out, false)),
    }
}

/// The SELECT of every export column from `flows`, filtered, in index order. A column
/// `flows` does not have (`present` says no) is read as NULL: a database of an older schema
/// (one a sensor not yet restarted after an upgrade still writes, or a copy opened
/// read-only) exports with its newer columns empty.
fn export_sql(
    filter: &Filter,
    present: impl Fn(&str) -> bool,
) -> (String, Vec<rusqlite::types::Value>) {
    let (conds, params) = filter.sql(filter::TimeAccess::Index);
    let cols: Vec<&str> = csv::FLOW_SQL
        .iter()
        .map(|&c| {
            let plain = c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if plain && !present(c) { "NULL" } else { c }
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM flows WHERE 1{conds} ORDER BY first_seen_ms, id",
        cols.join(", ")
    );
    (sql, params)
}

/// The names of the columns `flows` has.
fn flow_columns(
    conn: &rusqlite::Connection,
) -> rusqlite::Result<std::collections::HashSet<String>> {
    conn.prepare("SELECT name FROM pragma_table_info('flows')")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// Rows go from the thread reading SQLite to the thread writing output in batches of this
/// many; at most [`BATCHES`] wait at a time, so memory stays a few megabytes whatever the
/// number of flows. Reading and formatting then take a core each.
const BATCH_ROWS: usize = 1024;
const BATCHES: usize = 4;

/// A value of a row, its text in the batch's buffer.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Null,
    Int(i64),
    Real(f64),
    Text { at: u32, len: u32 },
}

/// Rows read and filtered, on their way to be written.
#[derive(Default)]
struct Batch {
    rows: usize,
    text: Vec<u8>,
    /// `FLOW_SQL.len()` a row.
    slots: Vec<Slot>,
}

impl Batch {
    fn clear(&mut self) {
        self.rows = 0;
        self.text.clear();
        self.slots.clear();
    }

    fn push(&mut self, v: ValueRef<'_>) {
        self.slots.push(match v {
            ValueRef::Null => Slot::Null,
            ValueRef::Integer(i) => Slot::Int(i),
            ValueRef::Real(f) => Slot::Real(f),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                let at = self.text.len() as u32;
                self.text.extend_from_slice(t);
                Slot::Text {
                    at,
                    len: t.len() as u32,
                }
            }
        });
    }

    fn cell(&self, s: Slot) -> Cell<'_> {
        match s {
            Slot::Null => Cell::Null,
            Slot::Int(i) => Cell::Int(i),
            Slot::Real(f) => Cell::Real(f),
            Slot::Text { at, len } => Cell::Text(&self.text[at as usize..(at + len) as usize]),
        }
    }
}

/// Where the source and destination addresses are among the columns.
const SRC_COL: usize = csv::column("src_ip");
const DST_COL: usize = csv::column("dst_ip");
/// `tcp_flags` is both ends' flags together, made from the two columns after it.
const TCP_FLAGS_COL: usize = csv::column("tcp_flags");

/// The reading half: runs the query on `conn` and sends the rows that pass, in batches.
fn read_batches(
    conn: rusqlite::Connection,
    db: &Path,
    filter: &Filter,
    info: &ipinfo::InfoMap,
    full: std::sync::mpsc::SyncSender<Batch>,
    empty: std::sync::mpsc::Receiver<Batch>,
) -> Result<(), ExportError> {
    let query_err = ExportError::query(db);
    let present = flow_columns(&conn).map_err(&query_err)?;
    let (sql, params) = export_sql(filter, |c| present.contains(c));
    let mut stmt = conn.prepare(&sql).map_err(&query_err)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(&query_err)?;
    let check = filter.row_check(info);
    let mut batch = Batch::default();
    while let Some(row) = rows.next().map_err(&query_err)? {
        // The addresses are read here only for the filter; their ip_info is looked up by
        // the writing half, which has time to spare.
        if check.is_active() {
            let text = |i| match row.get_ref(i) {
                Ok(ValueRef::Text(t)) => Ok(t),
                Ok(_) => Ok(&b""[..]),
                Err(e) => Err(query_err(e)),
            };
            if !check.matches(text(SRC_COL)?, text(DST_COL)?) {
                continue;
            }
        }
        for i in 0..csv::FLOW_SQL.len() {
            if i == TCP_FLAGS_COL {
                batch.slots.push(Slot::Null);
            } else {
                batch.push(row.get_ref(i).map_err(&query_err)?);
            }
        }
        batch.rows += 1;
        if batch.rows == BATCH_ROWS {
            let mut next = empty.try_recv().unwrap_or_default();
            next.clear();
            if full.send(std::mem::replace(&mut batch, next)).is_err() {
                // The writing half stopped (and says why).
                return Ok(());
            }
        }
    }
    if batch.rows > 0 {
        let _ = full.send(batch);
    }
    Ok(())
}

fn export_with(db: &Path, filter: &Filter, mut w: impl RowWriter) -> Result<u64, ExportError> {
    let conn = crate::store::open_for_reading(db)?;
    let query_err = ExportError::query(db);
    // One snapshot for ip_info and the flows; in WAL mode the writer goes on meanwhile.
    conn.execute_batch("BEGIN").map_err(&query_err)?;
    let info = ipinfo::load(&conn).map_err(&query_err)?;
    debug_assert_eq!(csv::COLUMNS[SRC_COL], "src_ip");
    debug_assert_eq!(csv::COLUMNS[DST_COL], "dst_ip");
    debug_assert_eq!(
        csv::COLUMNS[TCP_FLAGS_COL..][..3],
        ["tcp_flags", "src_tcp_flags", "dst_tcp_flags"]
    );
    debug_assert_eq!(csv::COLUMNS[csv::FLOW_HEAD], "src_country");
    debug_assert_eq!(csv::COLUMNS[csv::TAIL_AT], "tunnel");
    std::thread::scope(|s| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel(BATCHES);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel(BATCHES + 2);
        let info = &info;
        let reader = s.spawn(move || read_batches(conn, db, filter, info, full_tx, empty_rx));
        let written = (|| {
            w.begin(&csv::COLUMNS)?;
            let n_flow = csv::FLOW_SQL.len();
            let mut n = 0u64;
            for batch in &full_rx {
                for r in 0..batch.rows {
                    let mut cells = [Cell::Null; csv::COLUMNS.len()];
                    let slots = &batch.slots[r * n_flow..(r + 1) * n_flow];
                    let (head, tail) = slots.split_at(csv::FLOW_HEAD);
                    for (cell, slot) in cells.iter_mut().zip(head) {
                        *cell = batch.cell(*slot);
                    }
                    for (cell, slot) in cells[csv::TAIL_AT..].iter_mut().zip(tail) {
                        *cell = batch.cell(*slot);
                    }
                    cells[TCP_FLAGS_COL] =
                        match (slots[TCP_FLAGS_COL + 1], slots[TCP_FLAGS_COL + 2]) {
                            (Slot::Int(s), Slot::Int(d)) => Cell::Int(s | d),
                            (Slot::Int(f), _) | (_, Slot::Int(f)) => Cell::Int(f),
                            _ => Cell::Null,
                        };
                    let ip = |c: &Cell<'_>| match c {
                        Cell::Text(t) => info.get(t),
                        _ => None,
                    };
                    let ends = [ip(&cells[SRC_COL]), ip(&cells[DST_COL])];
                    for (end, info) in ends.iter().enumerate() {
                        let at = csv::FLOW_HEAD + end * 6;
                        if let Some(i) = info {
                            cells[at] = i.country.as_deref().into();
                            cells[at + 1] = i.city.as_deref().into();
                            cells[at + 2] = i.asn.map_or(Cell::Null, Cell::Int);
                            cells[at + 3] = i.as_org.as_deref().into();
                            cells[at + 4] = i.hostname.as_deref().into();
                            cells[at + 5] = i.threat.as_deref().into();
                        }
                    }
                    w.row(&cells)?;
                    n += 1;
                }
                // Back to the reader for reuse; it makes a new one when none is back yet.
                let _ = empty_tx.try_send(batch);
            }
            w.finish()?;
            Ok::<_, ExportError>(n)
        })();
        // On a write error the channels close here and the reader stops at its next batch.
        drop(full_rx);
        drop(empty_tx);
        let read = reader.join().map_err(|_| ExportError::ReaderPanicked)?;
        let n = written?;
        read.map(|()| n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every filter's query walks the first_seen_ms index: no sort, so memory does not
    /// grow with the flows.
    #[test]
    fn export_queries_stream_in_index_order() {
        let dir = std::env::temp_dir().join(format!("sensor-export-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("flows.db");
        drop(crate::store::open_for_writing(&db).unwrap());
        let conn = crate::store::open_for_reading(&db).unwrap();
        let t = |s: &str| Some(filter::parse_time(s).unwrap());
        let filters = [
            Filter::default(),
            Filter {
                since: t("1h"),
                ..Filter::default()
            },
            Filter {
                since: t("2026-11-24T10:00:00Z"),
                until: t("2026-11-25T10:00:00Z"),
                port: Some(443),
                proto: Some(6),
                process: Some("curl".into()),
                ..Filter::default()
            },
        ];
        for f in &filters {
            let (sql, params) = export_sql(f, |_| true);
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains("flows_first_seen"), "{f:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{f:?}: {plan}");
        }
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A database of schema v5 (before the owner columns), opened read-only and not
    /// upgraded, exports every column: those it lacks empty.
    #[test]
    fn an_older_schema_exports_with_its_newer_columns_empty() {
        let dir = std::env::temp_dir().join(format!("sensor-export-v5-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("flows.db");
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("PRAGMA journal_mode = WAL").unwrap();
            let conn = crate::store::open_for_writing(&db).unwrap();
            conn.execute(
                "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port, \
                 dst_ip, dst_port, src_comm, end_reason, sources, src_unit) \
                 VALUES (1, 2, 6, '127.0.0.1', 1000, '192.0.2.1', 80, 'curl', 'fin', \
                 'kernel', 'x.service')",
                [],
            )
            .unwrap();
            drop(conn);
            // Back to v5: the owner columns go, as if never added.
            for col in [
                "src_uid", "src_unit", "dst_uid", "dst_unit", "src_attr", "dst_attr",
            ] {
                c.execute_batch(&format!("ALTER TABLE flows DROP COLUMN {col}"))
                    .unwrap();
            }
            c.pragma_update(None, "user_version", 5).unwrap();
        }
        let mut out = Vec::new();
        let n = export(&db, &Filter::default(), Format::Ndjson, &mut out).unwrap();
        assert_eq!(n, 1);
        let row: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(row["src_comm"], "curl");
        assert!(
            row["src_unit"].is_null() && row["dst_attr"].is_null(),
            "{row}"
        );
        assert_eq!(row.as_object().unwrap().len(), csv::COLUMNS.len());
        let v: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 5, "export does not upgrade");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
