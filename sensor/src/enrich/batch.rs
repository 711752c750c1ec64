//! `sensor enrich FILE|-`: the batch job for a list of addresses. Every distinct address
//! goes through the cascade once; one JSON object a line comes out, in input order.
use std::{
    collections::HashMap,
    io::{BufRead, IsTerminal, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{
    EnrichError, Source,
    cascade::{IpInfo, Progress, Sources},
};
use crate::{enrich::config::EnrichConfig, metrics::Metrics};

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sources(#[from] EnrichError),
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
}

/// Lines longer than this are not addresses: skipped unread (so one line without a
/// newline can't take the memory), reported.
pub const MAX_LINE_BYTES: usize = 4096;

/// Why a line of the input was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    NotAnAddress,
    NotUtf8,
    TooLong,
}

impl BadKind {
    fn what(self) -> &'static str {
        match self {
            BadKind::NotAnAddress => "not an IP address",
            BadKind::NotUtf8 => "not UTF-8",
            BadKind::TooLong => "longer than 4096 bytes",
        }
    }
}

/// A line of the input that is not an address; reported, skipped.
#[derive(Debug)]
pub struct BadLine {
    pub line: usize,
    pub kind: BadKind,
    /// The line (lossy UTF-8, at most 80 characters of it).
    pub text: String,
}

/// Reads one line into `buf` (without its newline), at most [`MAX_LINE_BYTES`] of it; the
/// rest of a longer line is skipped. Returns None at the end, else whether it was cut.
fn next_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    use std::io::Read;
    buf.clear();
    let n = (&mut *r)
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(false));
    }
    if buf.len() <= MAX_LINE_BYTES {
        return Ok(Some(false)); // the last line, without a newline
    }
    // Too long: skip to the end of the line, a buffer at a time.
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                break;
            }
            None => {
                let len = chunk.len();
                r.consume(len);
            }
        }
    }
    buf.truncate(MAX_LINE_BYTES);
    Ok(Some(true))
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(80).collect()
}

/// The addresses of a list: one a line, the first whitespace-separated field; blank lines
/// and `#` comments skipped. Lines that are not addresses, not UTF-8 or too long are
/// returned beside them (the rest are still read: bad input never aborts good input).
pub fn read_list(path: &Path) -> Result<(Vec<IpAddr>, Vec<BadLine>), BatchError> {
    let read_err = |source| BatchError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(read_err)?,
        ))
    };
    let mut ips = Vec::new();
    let mut bad = Vec::new();
    let mut buf = Vec::with_capacity(256);
    let mut number = 0;
    while let Some(cut) = next_line(&mut reader, &mut buf).map_err(read_err)? {
        number += 1;
        let bad_line = |kind| BadLine {
            line: number,
            kind,
            text: snippet(&buf),
        };
        if cut {
            bad.push(bad_line(BadKind::TooLong));
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            bad.push(bad_line(BadKind::NotUtf8));
            continue;
        };
        let field = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        let Some(field) = field else { continue };
        match field.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip.to_canonical()),
            Err(_) => bad.push(bad_line(BadKind::NotAnAddress)),
        }
    }
    Ok((ips, bad))
}

/// One output line.
#[derive(Serialize)]
struct Record<'a> {
    ip: String,
    country: Option<&'a str>,
    city: Option<&'a str>,
    lat: Option<f64>,
    lon: Option<f64>,
    asn: Option<u32>,
    as_org: Option<&'a str>,
    hostname: Option<&'a str>,
    /// Names of the threat lists that hold the address; null when none.
    threat: Option<Vec<&'a str>>,
    /// Which source answered each field that has a value.
    source: HashMap<&'static str, &'static str>,
    /// Reverse DNS outcome: found, not_found, timeout...; null when not asked (not public,
    /// or --no-rdns).
    rdns: Option<&'a str>,
    bgp_prefix: Option<&'a str>,
    threat_detail: Vec<Hit<'a>>,
}

#[derive(Serialize)]
struct Hit<'a> {
    list: &'a str,
    entry: &'a str,
    age_s: u64,
}

fn record(info: &IpInfo) -> Record<'_> {
    let geo = info.geo.as_ref();
    let mut source = HashMap::new();
    if let Some(g) = geo {
        for (field, present) in [
            ("country", g.country.is_some()),
            ("city", g.city.is_some()),
            ("lat", g.lat.is_some()),
            ("lon", g.lon.is_some()),
        ] {
            if present {
                source.insert(field, Source::Mmdb.as_str());
            }
        }
    }
    if let (Some(asn), Some(src)) = (&info.asn, info.asn_source) {
        source.insert("asn", src.as_str());
        if asn.org.is_some() {
            source.insert("as_org", src.as_str());
        }
    }
    if info.hostname.is_some() {
        source.insert("hostname", Source::Rdns.as_str());
    }
    if !info.threat.is_empty() {
        source.insert("threat", Source::Threat.as_str());
    }
    Record {
        ip: info.ip.to_string(),
        country: geo.and_then(|g| g.country.as_deref()),
        city: geo.and_then(|g| g.city.as_deref()),
        lat: geo.and_then(|g| g.lat),
        lon: geo.and_then(|g| g.lon),
        asn: info.asn.as_ref().map(|a| a.asn),
        as_org: info.asn.as_ref().and_then(|a| a.org.as_deref()),
        hostname: info.hostname.as_deref(),
        threat: (!info.threat.is_empty())
            .then(|| info.threat.iter().map(|h| h.list.as_str()).collect()),
        source,
        rdns: info.rdns_status.as_deref(),
        bgp_prefix: info.bgp_prefix.as_deref(),
        threat_detail: info
            .threat
            .iter()
            .map(|h| Hit {
                list: &h.list,
                entry: &h.entry,
                age_s: h.age_s,
            })
            .collect(),
    }
}

/// Progress bars, one a pass, on a terminal; a log line per finished pass otherwise.
struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<&'static str, (ProgressBar, Instant)>>,
}

impl Progress for Bars {
    fn pass(&self, name: &'static str, total: u64) {
        let bar = match &self.multi {
            Some(m) => {
                let b = m.add(ProgressBar::new(total));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} {elapsed}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(name);
                b
            }
            None => ProgressBar::hidden(),
        };
        bar.set_length(total);
        self.bars
            .lock()
            .expect("bars")
            .insert(name, (bar, Instant::now()));
    }
    fn inc(&self, name: &'static str, n: u64) {
        if let Some((b, _)) = self.bars.lock().expect("bars").get(name) {
            b.inc(n);
        }
    }
    fn done(&self, name: &'static str) {
        if let Some((b, started)) = self.bars.lock().expect("bars").get(name) {
            b.finish();
            tracing::info!(
                pass = name,
                addresses = b.length().unwrap_or(0),
                seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
                "pass done"
            );
        }
    }
}

/// What the job did.
#[derive(Debug, Default)]
pub struct BatchSummary {
    pub lines: usize,
    pub distinct: usize,
    pub bad_lines: usize,
    /// Network lookups not made (the source was down, see [`super::breaker`]): those
    /// answers are incomplete.
    pub shed_lookups: u64,
    pub seconds: f64,
}

/// Enriches the addresses of `input` and writes one JSON object a line to `out`.
pub async fn run(
    cfg: &EnrichConfig,
    input: &Path,
    out: impl Write,
    metrics: Arc<Metrics>,
) -> Result<BatchSummary, BatchError> {
    let started = Instant::now();
    let (ips, bad) = read_list(input)?;
    for b in bad.iter().take(20) {
        tracing::warn!(
            "{}:{}: {}, skipped: {:?}",
            input.display(),
            b.line,
            b.kind.what(),
            b.text
        );
    }
    if bad.len() > 20 {
        tracing::warn!(
            "{}: {} more bad lines skipped",
            input.display(),
            bad.len() - 20
        );
    }
    let sources = Sources::from_config(cfg, Some(Arc::clone(&metrics)))?;
    let mut seen = std::collections::HashSet::with_capacity(ips.len());
    let distinct: Vec<IpAddr> = ips.iter().copied().filter(|ip| seen.insert(*ip)).collect();
    let bars = Bars {
        multi: std::io::stderr().is_terminal().then(MultiProgress::new),
        bars: Mutex::new(HashMap::new()),
    };
    let answers = sources.enrich(&distinct, &HashMap::new(), &bars).await;
    let by_ip: HashMap<IpAddr, &IpInfo> = answers.iter().map(|a| (a.ip, a)).collect();
    let mut out = std::io::BufWriter::new(out);
    for ip in &ips {
        let info = by_ip[ip];
        serde_json::to_writer(&mut out, &record(info)).map_err(|e| BatchError::Write(e.into()))?;
        out.write_all(b"\n").map_err(BatchError::Write)?;
    }
    out.flush().map_err(BatchError::Write)?;
    crate::log_throttle::report(true);
    let shed_lookups = [Source::Rdns, Source::Cymru]
        .iter()
        .map(|s| {
            metrics
                .enrich_lookups
                .with_label_values(&[s.as_str(), "shed"])
                .get()
        })
        .sum();
    Ok(BatchSummary {
        lines: ips.len(),
        distinct: distinct.len(),
        bad_lines: bad.len(),
        shed_lookups,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bytes_and_long_lines_are_skipped_and_the_rest_read() {
        let dir = std::env::temp_dir().join(format!("sensor-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ips.txt");
        let mut data = b"1.2.3.4\n\xff\xfe9.9.9.9\n".to_vec();
        data.extend(std::iter::repeat_n(b'7', 10_000));
        data.extend(b"\n8.8.8.8\r\n::1 # v6\nnope\n");
        data.extend(std::iter::repeat_n(b'x', 5000)); // the last line, too long, no newline
        std::fs::write(&path, &data).unwrap();
        let (ips, bad) = read_list(&path).unwrap();
        let want: Vec<IpAddr> = ["1.2.3.4", "8.8.8.8", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        let got: Vec<(usize, BadKind)> = bad.iter().map(|b| (b.line, b.kind)).collect();
        assert_eq!(
            got,
            vec![
                (2, BadKind::NotUtf8),
                (3, BadKind::TooLong),
                (6, BadKind::NotAnAddress),
                (7, BadKind::TooLong),
            ]
        );
        assert!(bad[1].text.len() <= 80);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
