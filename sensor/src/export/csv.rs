//! `sensor export --format csv`: a header row, then one flow a line, streamed row by row.
use std::{io::Write, path::Path};

use rusqlite::types::ValueRef;

use super::ExportError;

/// The CSV's columns, in order, with the SQL that reads each from `flows`. Scripts rely on
/// the names and the order; new columns go at the end.
pub const COLUMNS: &[(&str, &str)] = &[
    ("first_seen_ms", "first_seen_ms"),
    ("last_seen_ms", "last_seen_ms"),
    ("proto", "proto"),
    ("src_ip", "src_ip"),
    ("src_port", "src_port"),
    ("dst_ip", "dst_ip"),
    ("dst_port", "dst_port"),
    ("src_payload_bytes", "src_payload_bytes"),
    ("dst_payload_bytes", "dst_payload_bytes"),
    ("src_pid", "src_pid"),
    ("src_comm", "src_comm"),
    ("dst_pid", "dst_pid"),
    ("dst_comm", "dst_comm"),
    ("end_reason", "end_reason"),
    ("srtt_us", "srtt_us"),
    ("retransmits", "retransmits"),
    ("src_packets", "src_packets"),
    ("dst_packets", "dst_packets"),
    ("src_bytes", "src_bytes"),
    ("dst_bytes", "dst_bytes"),
    (
        "tcp_flags",
        "CASE WHEN src_tcp_flags IS NULL AND dst_tcp_flags IS NULL THEN NULL \
         ELSE ifnull(src_tcp_flags, 0) | ifnull(dst_tcp_flags, 0) END",
    ),
    ("src_tcp_flags", "src_tcp_flags"),
    ("dst_tcp_flags", "dst_tcp_flags"),
    ("capture", "sources"),
    // Enrichment of both ends, joined from ip_info at export time.
    ("src_country", "s.country"),
    ("src_city", "s.city"),
    ("src_asn", "s.asn"),
    ("src_as_org", "s.as_org"),
    ("src_hostname", "s.hostname"),
    ("src_threat", "s.threat"),
    ("dst_country", "d.country"),
    ("dst_city", "d.city"),
    ("dst_asn", "d.asn"),
    ("dst_as_org", "d.as_org"),
    ("dst_hostname", "d.hostname"),
    ("dst_threat", "d.threat"),
];

/// The flows with each end's enrichment (`s`, `d`); addresses never enriched get NULLs.
pub const FROM: &str = "flows LEFT JOIN ip_info s ON s.ip = flows.src_ip \
    LEFT JOIN ip_info d ON d.ip = flows.dst_ip";

/// Writes every flow in `db` to `out`, oldest first. Returns the number of rows.
pub fn export(db: &Path, out: impl Write) -> Result<u64, ExportError> {
    let conn = crate::store::open_for_reading(db)?;
    let query_err = |source| ExportError::Query {
        path: db.to_path_buf(),
        source,
    };
    let select: Vec<&str> = COLUMNS.iter().map(|(_, sql)| *sql).collect();
    let sql = format!(
        "SELECT {} FROM {FROM} ORDER BY flows.first_seen_ms, flows.id",
        select.join(", ")
    );
    let mut stmt = conn.prepare(&sql).map_err(query_err)?;
    let mut rows = stmt.query([]).map_err(query_err)?;
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record(COLUMNS.iter().map(|(name, _)| *name))?;
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
