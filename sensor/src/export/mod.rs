//! Export and `top`: flows out of the database for people and scripts, read in constant
//! memory (with respect to the flows) over read-only connections that never block the
//! writer.
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

/// The SELECT of every export column from `flows`, filtered, in index order.
fn export_sql(filter: &Filter) -> (String, Vec<rusqlite::types::Value>) {
    let (conds, params) = filter.sql(filter::TimeAccess::Index);
    let sql = format!(
        "SELECT {} FROM flows WHERE 1{conds} ORDER BY first_seen_ms, id",
        csv::FLOW_SQL.join(", ")
    );
    (sql, params)
}

fn export_with(db: &Path, filter: &Filter, mut w: impl RowWriter) -> Result<u64, ExportError> {
    let conn = crate::store::open_for_reading(db)?;
    let query_err = ExportError::query(db);
    // One snapshot for ip_info and the flows; in WAL mode the writer goes on meanwhile.
    conn.execute_batch("BEGIN").map_err(&query_err)?;
    let info = ipinfo::load(&conn).map_err(&query_err)?;
    let (sql, params) = export_sql(filter);
    let mut stmt = conn.prepare(&sql).map_err(&query_err)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(&query_err)?;
    let check = filter.row_check();
    let n_flow = csv::FLOW_SQL.len();
    let (src_col, dst_col) = (3, 5);
    debug_assert_eq!(csv::COLUMNS[src_col], "src_ip");
    debug_assert_eq!(csv::COLUMNS[dst_col], "dst_ip");
    w.begin(&csv::COLUMNS)?;
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(&query_err)? {
        let text = |i| match row.get_ref(i) {
            Ok(ValueRef::Text(t)) => Ok(t),
            Ok(_) => Ok(&b""[..]),
            Err(e) => Err(e),
        };
        let (src, dst) = (
            text(src_col).map_err(&query_err)?,
            text(dst_col).map_err(&query_err)?,
        );
        let (si, di) = (info.get(src), info.get(dst));
        if check.is_active() && !check.matches(src, dst, si, di) {
            continue;
        }
        let mut cells = [Cell::Null; csv::COLUMNS.len()];
        for (i, cell) in cells[..n_flow].iter_mut().enumerate() {
            *cell = row.get_ref(i).map_err(&query_err)?.into();
        }
        for (end, info) in [si, di].into_iter().enumerate() {
            let at = n_flow + end * 6;
            let cells = &mut cells[at..at + 6];
            match info {
                None => cells.fill(Cell::Null),
                Some(i) => {
                    cells[0] = i.country.as_deref().into();
                    cells[1] = i.city.as_deref().into();
                    cells[2] = i.asn.map_or(Cell::Null, Cell::Int);
                    cells[3] = i.as_org.as_deref().into();
                    cells[4] = i.hostname.as_deref().into();
                    cells[5] = i.threat.as_deref().into();
                }
            }
        }
        w.row(&cells)?;
        n += 1;
    }
    w.finish()?;
    Ok(n)
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
            let (sql, params) = export_sql(f);
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
}
