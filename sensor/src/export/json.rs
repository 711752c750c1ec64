//! `--format json` (one array, written as it goes: `[`, the objects, `]`) and `ndjson` (one
//! object a line). Keys are the CSV header's; numbers are numbers, missing values null.
use std::io::{self, Write};

use super::{Cell, RowWriter};

pub struct JsonWriter<W: Write> {
    out: W,
    /// Each column's `"name":`, escaped once.
    keys: Vec<Vec<u8>>,
    /// One array, or one object a line.
    array: bool,
    rows: u64,
    line: Vec<u8>,
    ints: itoa::Buffer,
}

impl<W: Write> JsonWriter<W> {
    /// `array`: `--format json`; else `ndjson`.
    pub fn new(out: W, array: bool) -> Self {
        Self {
            out,
            keys: Vec::new(),
            array,
            rows: 0,
            line: Vec::with_capacity(1024),
            ints: itoa::Buffer::new(),
        }
    }
}

/// Appends `text` as a JSON string. Text that is not UTF-8 (SQLite does not check) gets
/// U+FFFD in place of the bad bytes rather than making the output unreadable.
pub fn push_string(line: &mut Vec<u8>, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    line.push(b'"');
    for &b in text.as_bytes() {
        match b {
            b'"' => line.extend_from_slice(b"\\\""),
            b'\\' => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            b'\t' => line.extend_from_slice(b"\\t"),
            0..0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                line.extend_from_slice(b"\\u00");
                line.push(HEX[usize::from(b >> 4)]);
                line.push(HEX[usize::from(b & 15)]);
            }
            _ => line.push(b),
        }
    }
    line.push(b'"');
}

impl<W: Write> RowWriter for JsonWriter<W> {
    fn begin(&mut self, columns: &[&str]) -> io::Result<()> {
        self.keys = columns
            .iter()
            .map(|c| {
                let mut k = Vec::new();
                push_string(&mut k, c.as_bytes());
                k.push(b':');
                k
            })
            .collect();
        if self.array {
            self.out.write_all(b"[")?;
        }
        Ok(())
    }

    fn row(&mut self, cells: &[Cell<'_>]) -> io::Result<()> {
        self.line.clear();
        if self.array {
            self.line
                .extend_from_slice(if self.rows == 0 { b"\n" } else { b",\n" });
        }
        self.line.push(b'{');
        for (i, (cell, key)) in cells.iter().zip(&self.keys).enumerate() {
            if i > 0 {
                self.line.push(b',');
            }
            self.line.extend_from_slice(key);
            match *cell {
                Cell::Null => self.line.extend_from_slice(b"null"),
                Cell::Int(v) => self.line.extend_from_slice(self.ints.format(v).as_bytes()),
                Cell::Real(v) if v.is_finite() => write!(self.line, "{v}")?,
                Cell::Real(_) => self.line.extend_from_slice(b"null"),
                Cell::Text(t) => push_string(&mut self.line, t),
            }
        }
        self.line.push(b'}');
        if !self.array {
            self.line.push(b'\n');
        }
        self.rows += 1;
        self.out.write_all(&self.line)
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.array {
            self.out
                .write_all(if self.rows == 0 { b"]\n" } else { b"\n]\n" })?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(array: bool, rows: &[&[Cell<'_>]]) -> String {
        let mut w = JsonWriter::new(Vec::new(), array);
        w.begin(&["n", "s", "x", "f"]).unwrap();
        for r in rows {
            w.row(r).unwrap();
        }
        w.finish().unwrap();
        String::from_utf8(w.out).unwrap()
    }

    #[test]
    fn output_is_json_with_typed_values() {
        let tricky = "a\"b\\c\nd\u{1}e\u{7f}ü";
        let rows: &[&[Cell<'_>]] = &[
            &[
                Cell::Int(-7),
                Cell::Text(tricky.as_bytes()),
                Cell::Null,
                Cell::Real(1.5),
            ],
            &[
                Cell::Int(i64::MIN),
                Cell::Text(b"\xffbad"),
                Cell::Null,
                Cell::Real(f64::NAN),
            ],
        ];
        let array: serde_json::Value = serde_json::from_str(&write(true, rows)).unwrap();
        let ndjson: Vec<serde_json::Value> = write(false, rows)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(array.as_array().unwrap(), &ndjson);
        assert_eq!(ndjson[0]["n"], -7);
        assert_eq!(ndjson[0]["s"], tricky);
        assert!(ndjson[0]["x"].is_null());
        assert_eq!(ndjson[0]["f"], 1.5);
        assert_eq!(ndjson[1]["n"], i64::MIN);
        assert_eq!(ndjson[1]["s"], "\u{fffd}bad");
        assert!(ndjson[1]["f"].is_null());
        let empty: serde_json::Value = serde_json::from_str(&write(true, &[])).unwrap();
        assert_eq!(empty, serde_json::json!([]));
        assert_eq!(write(false, &[]), "");
    }
}
