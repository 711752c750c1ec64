//! `sensor export --format csv`: a header row, then one flow a line, streamed row by row.
use std::{io::Write, path::Path};

use rusqlite::types::ValueRef;

use super::ExportError;

/// Column order of the CSV; the first fourteen are the interface scripts rely on.
pub const COLUMNS: &[&str] = &[
    "first_seen_ms",
    "last_seen_ms",
    "proto",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "src_payload_bytes",
    "dst_payload_bytes",
    "src_pid",
    "src_comm",
    "dst_pid",
    "dst_comm",
    "end_reason",
    "srtt_us",
    "retransmits",
    "sources",
];

/// Writes every flow in `db` to `out`, oldest first. Returns the number of rows.
pub fn export(db: &Path, out: impl Write) -> Result<u64, ExportError> {
    let conn = crate::store::open_for_reading(db)?;
    let query_err = |source| ExportError::Query {
        path: db.to_path_buf(),
        source,
    };
    let sql = format!(
        "SELECT {} FROM flows ORDER BY first_seen_ms, id",
        COLUMNS.join(", ")
    );
    let mut stmt = conn.prepare(&sql).map_err(query_err)?;
    let mut rows = stmt.query([]).map_err(query_err)?;
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record(COLUMNS)?;
    let mut n = 0u64;
    let mut fields: Vec<String> = Vec::with_capacity(COLUMNS.len());
    while let Some(row) = rows.next().map_err(query_err)? {
        fields.clear();
        for i in 0..COLUMNS.len() {
            fields.push(match row.get_ref(i).map_err(query_err)? {
                ValueRef::Null => String::new(),
                ValueRef::Integer(v) => v.to_string(),
                ValueRef::Real(v) => v.to_string(),
                ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
            });
        }
        w.write_record(&fields)?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}
