//! `sensor alerts`: the `alerts` table as a table, CSV, a JSON array or NDJSON. The CSV
//! header and the JSON keys are the column names of [`COLUMNS`]; missing values are empty
//! (CSV) or null (JSON).
use std::{io::Write, path::Path};

use super::ExportError;
use crate::{
    detect::Kind,
    store::{
        self,
        alerts::{AlertQuery, COLUMNS, StoredAlert},
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlertFormat {
    /// Aligned columns: the alert's id, kind, first and last seen (UTC), source, targets,
    /// ports, count, score, process and detail.
    Table,
    /// A header row, then one alert a line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object a line.
    Ndjson,
}

/// `--kind`: the detectors' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum KindArg {
    PortScan,
    BruteForce,
    Exfiltration,
    Beacon,
    ThreatContact,
}

impl KindArg {
    pub fn as_str(self) -> &'static str {
        match self {
            KindArg::PortScan => Kind::PortScan,
            KindArg::BruteForce => Kind::BruteForce,
            KindArg::Exfiltration => Kind::Exfiltration,
            KindArg::Beacon => Kind::Beacon,
            KindArg::ThreatContact => Kind::ThreatContact,
        }
        .as_str()
    }
}

/// Writes the alerts `q` selects from `db` to `out`.
pub fn alerts(
    db: &Path,
    q: &AlertQuery,
    format: AlertFormat,
    mut out: impl Write,
) -> Result<usize, ExportError> {
    let conn = store::open_for_reading(db)?;
    let rows = store::alerts::read(&conn, q).map_err(|e| ExportError::Query {
        path: db.to_path_buf(),
        source: e,
    })?;
    match format {
        AlertFormat::Table => table(&rows, &mut out)?,
        AlertFormat::Csv => {
            writeln!(out, "{}", COLUMNS.join(","))?;
            for r in &rows {
                writeln!(out, "{}", csv_line(r))?;
            }
        }
        AlertFormat::Json => {
            let text = serde_json::to_string(&rows).map_err(std::io::Error::other)?;
            writeln!(out, "{text}")?;
        }
        AlertFormat::Ndjson => {
            for r in &rows {
                let text = serde_json::to_string(r).map_err(std::io::Error::other)?;
                writeln!(out, "{text}")?;
            }
        }
    }
    out.flush()?;
    Ok(rows.len())
}

/// One alert as a CSV line, fields quoted as the flow export quotes them.
fn csv_line(r: &StoredAlert) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let fields = [
        r.id.to_string(),
        r.kind.clone(),
        r.first_seen_ms.to_string(),
        r.last_seen_ms.to_string(),
        r.src_ip.clone(),
        r.targets.clone(),
        r.ports.clone(),
        r.count.to_string(),
        format!("{:.3}", r.score),
        r.pid.map(|p| p.to_string()).unwrap_or_default(),
        opt(&r.comm),
        opt(&r.unit),
        r.detail.clone(),
        r.evidence.clone(),
    ];
    let mut line = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        super::csv::push_text(&mut line, f.as_bytes());
    }
    String::from_utf8(line).expect("UTF-8 in, UTF-8 out")
}

fn utc(ms: i64) -> String {
    super::time::rfc3339_of_ms(ms)
}

fn table(rows: &[StoredAlert], out: &mut impl Write) -> std::io::Result<()> {
    let head = [
        "id",
        "kind",
        "first_seen",
        "last_seen",
        "src_ip",
        "targets",
        "ports",
        "count",
        "score",
        "comm",
        "detail",
    ];
    let cells: Vec<[String; 11]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.kind.clone(),
                utc(r.first_seen_ms),
                utc(r.last_seen_ms),
                r.src_ip.clone(),
                r.targets.clone(),
                r.ports.clone(),
                r.count.to_string(),
                format!("{:.2}", r.score),
                r.comm.clone().unwrap_or_else(|| "-".into()),
                r.detail.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |vals: &[&str]| {
        let mut s = String::new();
        for (i, v) in vals.iter().enumerate() {
            if i + 1 == vals.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}  ", w = width[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(&head))?;
    for c in &cells {
        let vals: Vec<&str> = c.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&vals))?;
    }
    writeln!(out, "{} alerts", rows.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_is_rfc3339() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
