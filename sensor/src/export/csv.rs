//! `--format csv`: a header row, then one row a line, quoted only where needed (as the
//! `csv` crate writes it: fields holding `,`, `"`, CR or LF), nothing built per field.
use std::io::{self, Write};

use super::{Cell, RowWriter};

/// The export's columns, in order. Scripts rely on the names and the order; new columns go
/// at the end. The first [`FLOW_HEAD`] come from `flows`, the next 12 from `ip_info`, the
/// last [`FLOW_TAIL`] from `flows` again ([`FLOW_SQL`] reads both parts from `flows`).
pub const COLUMNS: [&str; 46] = [
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
    "src_packets",
    "dst_packets",
    "src_bytes",
    "dst_bytes",
    "tcp_flags",
    "src_tcp_flags",
    "dst_tcp_flags",
    "capture",
    // Enrichment of both ends, from ip_info at export time.
    "src_country",
    "src_city",
    "src_asn",
    "src_as_org",
    "src_hostname",
    "src_threat",
    "dst_country",
    "dst_city",
    "dst_asn",
    "dst_as_org",
    "dst_hostname",
    "dst_threat",
    // The tunnel of an inner flow (schema v5), NULL for other flows.
    "tunnel",
    "tunnel_src_ip",
    "tunnel_dst_ip",
    "tunnel_id",
    // Each local end's uid, unit and how its owner was found (schema v6).
    "src_uid",
    "src_unit",
    "dst_uid",
    "dst_unit",
    "src_attr",
    "dst_attr",
];

/// How many columns at the start of [`COLUMNS`] come from `flows`.
pub const FLOW_HEAD: usize = 24;
/// How many columns at the end of [`COLUMNS`] come from `flows`.
pub const FLOW_TAIL: usize = 10;
/// Where the tail's columns start among [`COLUMNS`].
pub const TAIL_AT: usize = COLUMNS.len() - FLOW_TAIL;

/// The index of a column in [`COLUMNS`]; at compile time, fails to build for a name not there.
pub const fn column(name: &str) -> usize {
    const fn same(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    let mut i = 0;
    while i < COLUMNS.len() {
        if same(COLUMNS[i].as_bytes(), name.as_bytes()) {
            return i;
        }
        i += 1;
    }
    panic!("no such export column")
}

/// The SQL reading each column that comes from `flows` (the head's, then the tail's): the
/// column of the same name, but for the two below.
pub const FLOW_SQL: [&str; FLOW_HEAD + FLOW_TAIL] = {
    let mut sql = [""; FLOW_HEAD + FLOW_TAIL];
    let mut i = 0;
    while i < FLOW_HEAD {
        sql[i] = COLUMNS[i];
        i += 1;
    }
    while i < sql.len() {
        sql[i] = COLUMNS[TAIL_AT + i - FLOW_HEAD];
        i += 1;
    }
    // tcp_flags: src_tcp_flags | dst_tcp_flags (NULL when both are), worked out while
    // writing, off the reading thread.
    sql[column("tcp_flags")] = "NULL";
    sql[column("capture")] = "sources";
    sql
};

/// Writes rows as CSV; each row is assembled in one buffer and written at once.
pub struct CsvWriter<W: Write> {
    out: W,
    line: Vec<u8>,
    ints: itoa::Buffer,
}

impl<W: Write> CsvWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            line: Vec::with_capacity(512),
            ints: itoa::Buffer::new(),
        }
    }
}

/// Appends `text` as one CSV field (also `sensor alerts`' CSV).
pub(crate) fn push_text(line: &mut Vec<u8>, text: &[u8]) {
    if text
        .iter()
        .any(|&b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        line.push(b'"');
        for &b in text {
            if b == b'"' {
                line.push(b'"');
            }
            line.push(b);
        }
        line.push(b'"');
    } else {
        line.extend_from_slice(text);
    }
}

impl<W: Write> RowWriter for CsvWriter<W> {
    fn begin(&mut self, columns: &[&str]) -> io::Result<()> {
        self.line.clear();
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                self.line.push(b',');
            }
            push_text(&mut self.line, c.as_bytes());
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn row(&mut self, cells: &[Cell<'_>]) -> io::Result<()> {
        self.line.clear();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                self.line.push(b',');
            }
            match *cell {
                Cell::Null => {}
                Cell::Int(v) => self.line.extend_from_slice(self.ints.format(v).as_bytes()),
                Cell::Real(v) => write!(self.line, "{v}")?,
                Cell::Text(t) => push_text(&mut self.line, t),
            }
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_written_as_the_csv_crate_writes_them() {
        let texts: &[&[u8]] = &[
            b"plain",
            b"",
            b"with,comma",
            b"with \"quotes\"",
            b"line\nbreak",
            b"carriage\rreturn",
            b" spaces ",
            "ünïcødé".as_bytes(),
            b"'single'",
        ];
        let cells: Vec<Cell<'_>> = texts
            .iter()
            .map(|t| Cell::Text(t))
            .chain([
                Cell::Int(-42),
                Cell::Null,
                Cell::Int(i64::MAX),
                Cell::Real(0.25),
            ])
            .collect();
        let mut ours = CsvWriter::new(Vec::new());
        ours.begin(&["a", "b,c"]).unwrap();
        ours.row(&cells).unwrap();
        ours.finish().unwrap();

        let mut theirs = ::csv::WriterBuilder::new()
            .flexible(true)
            .from_writer(Vec::new());
        theirs.write_record(["a", "b,c"]).unwrap();
        let mut fields: Vec<Vec<u8>> = texts.iter().map(|t| t.to_vec()).collect();
        fields.extend([
            b"-42".to_vec(),
            Vec::new(),
            i64::MAX.to_string().into_bytes(),
            b"0.25".to_vec(),
        ]);
        theirs.write_record(&fields).unwrap();
        assert_eq!(
            String::from_utf8(ours.out).unwrap(),
            String::from_utf8(theirs.into_inner().unwrap()).unwrap()
        );
    }
}
