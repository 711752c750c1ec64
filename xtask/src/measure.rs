//! What the benchmarks share: the median of timed rounds, and a GET of the metrics page.
use std::time::Instant;

use anyhow::Result;

/// Rounds a median is taken of.
pub const ROUNDS: usize = 3;

/// The median wall time, in seconds, of [`ROUNDS`] calls of `f`.
pub fn median_secs(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// HTTP/1.0 GET of `path` on `addr`; the body.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    Ok(raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string())
}
