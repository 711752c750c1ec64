//! A loopback stand-in for Team Cymru's bulk whois (`whois.cymru.com:43`), answering in the
//! genuine format, so tests and benchmarks of the sensor's Cymru client never touch the
//! real service.
//!
//! `cymru-replay [--listen 127.0.0.1:0] [--mode replay|hang|close-mid|garbage] [--data DIR]`
//! prints `listening on ADDR` on stdout (and nothing else there; logs go to stderr), then
//! serves connections concurrently until killed.
//!
//! The answers come from the recorded replies in DIR (default `$SENSOR_SHARED_DATA/cymru`,
//! else `../shared/data/cymru` from the current directory): every file whose first line is
//! a `Bulk mode; whois.cymru.com [time]` header, keyed by the IP column; when several files
//! answer an IP, the one with the newest header time wins.
//!
//! Protocol: `begin`, optionally `verbose` (ignored: answers are always verbose), one
//! address a line, `end`. The reply is the header
//! `Bulk mode; whois.cymru.com [YYYY-MM-DD HH:MM:SS +0000]` (now), then one line per asked
//! line, in order:
//! - a recorded address: its recorded line, verbatim;
//! - a private or special-purpose address: the service's
//!   `NA | <ip> | NA |    | other |            | NA`;
//! - any other address: a SYNTHETIC line in the genuine padding. Its prefix is the
//!   address's /24 (IPv4) or /48 (IPv6); its AS is `64512 + FNV-1a(prefix bits) % 1000`
//!   (private-use ASNs, the same for every address of a prefix, the same on every run);
//!   CC `ZZ`, registry `other`, no allocation date, name `SYNTHETIC-<asn>, ZZ`;
//! - a line that is not an address: `Error: no ASN or IP match on line N.`, N counting
//!   every request line from 1 (`begin` is line 1), as the service does.
//!
//! Then the connection is closed. Like the service, a connection asking more than 500
//! addresses is closed without an answer; a connection not starting with `begin` too.
//!
//! Modes: `replay` as above; `hang` reads the request but never answers (the socket stays
//! open until the client closes it); `close-mid` sends the header and the first half of
//! the answer lines, then closes; `garbage` sends the header, then `this is not whois` for
//! every asked line.
use std::{
    collections::HashMap,
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

/// The service's limit per connection.
const MAX_PER_CONNECTION: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replay,
    Hang,
    CloseMid,
    Garbage,
}

struct Args {
    listen: String,
    mode: Mode,
    data: PathBuf,
}

const USAGE: &str = "usage: cymru-replay [--listen 127.0.0.1:0] [--mode replay|hang|close-mid|garbage] [--data DIR]";

fn parse_args() -> Result<Args, String> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut mode = Mode::Replay;
    let mut data = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value("--listen")?,
            "--mode" => {
                mode = match value("--mode")?.as_str() {
                    "replay" => Mode::Replay,
                    "hang" => Mode::Hang,
                    "close-mid" => Mode::CloseMid,
                    "garbage" => Mode::Garbage,
                    other => return Err(format!("unknown mode {other:?}")),
                }
            }
            "--data" => data = Some(PathBuf::from(value("--data")?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let data = data.unwrap_or_else(|| match std::env::var_os("SENSOR_SHARED_DATA") {
        Some(dir) => Path::new(&dir).join("cymru"),
        None => PathBuf::from("../shared/data/cymru"),
    });
    Ok(Args { listen, mode, data })
}

/// Recorded answer lines by IP; the newest reply (by its header's time) wins.
fn load(dir: &Path) -> io::Result<HashMap<IpAddr, String>> {
    let mut replies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut lines = text.lines();
        let Some(time) = lines
            .next()
            .and_then(|h| h.strip_prefix("Bulk mode; whois.cymru.com ["))
            .and_then(|h| h.strip_suffix(']'))
        else {
            continue;
        };
        let answers: Vec<String> = lines
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        // `YYYY-MM-DD HH:MM:SS +0000` sorts as text.
        replies.push((time.to_string(), path, answers));
    }
    replies.sort();
    let mut by_ip = HashMap::new();
    for (_, path, answers) in replies {
        for line in answers {
            match line.split('|').nth(1).map(|f| f.trim().parse::<IpAddr>()) {
                Some(Ok(ip)) => {
                    by_ip.insert(ip, line);
                }
                _ => eprintln!("cymru-replay: {}: skipping {line:?}", path.display()),
            }
        }
    }
    Ok(by_ip)
}

/// Not globally routable: the service answers these with its `NA ... other` line.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_special_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_special_v4(v4),
            None => is_special_v6(a),
        },
    }
}

fn is_special_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    a.is_unspecified()
        || a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_documentation()
        || a.is_multicast()
        || a.is_broadcast()
        || o0 == 0
        || o0 >= 240
        || (o0 == 100 && (64..128).contains(&o1)) // CGNAT
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
        || (o0 == 198 && (o1 == 18 || o1 == 19)) // benchmarking
}

fn is_special_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    // Outside global unicast 2000::/3, or documentation 2001:db8::/32.
    (s[0] & 0xe000) != 0x2000 || (s[0] == 0x2001 && s[1] == 0x0db8)
}

/// FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One answer line in the service's padding: AS 8 wide, IP 16 (IPv4) or 40 (IPv6),
/// prefix 20 (and no space before its `|`), CC 2, registry 8, allocated 10.
fn format_line(
    asn: &str,
    ip: IpAddr,
    prefix: &str,
    cc: &str,
    registry: &str,
    allocated: &str,
    name: &str,
) -> String {
    let ip_text = ip.to_string();
    let width = if ip.is_ipv4() { 16 } else { 40 };
    format!(
        "{asn:<8}| {ip_text:<width$} | {prefix:<20}| {cc:<2} | {registry:<8} | {allocated:<10} | {name}"
    )
}

/// The made-up answer for an address nobody recorded (see the module docs).
fn synthesize(ip: IpAddr) -> String {
    let (bytes, prefix) = match ip {
        IpAddr::V4(a) => {
            let net = Ipv4Addr::from_bits(a.to_bits() & 0xffff_ff00);
            (net.octets().to_vec(), format!("{net}/24"))
        }
        IpAddr::V6(a) => {
            let net = Ipv6Addr::from_bits(a.to_bits() & (u128::MAX << 80));
            (net.octets().to_vec(), format!("{net}/48"))
        }
    };
    let asn = 64512 + fnv1a(&bytes) % 1000;
    format_line(
        &asn.to_string(),
        ip,
        &prefix,
        "ZZ",
        "other",
        "",
        &format!("SYNTHETIC-{asn}, ZZ"),
    )
}

/// One asked line of a request.
enum Query {
    Ip(IpAddr),
    /// Not an address; the request line number.
    Bad(usize),
}

fn answer(q: &Query, recorded: &HashMap<IpAddr, String>) -> String {
    match *q {
        Query::Bad(n) => format!("Error: no ASN or IP match on line {n}."),
        Query::Ip(ip) => match recorded.get(&ip) {
            Some(line) => line.clone(),
            None if is_special(ip) => format_line("NA", ip, "NA", "", "other", "", "NA"),
            None => synthesize(ip),
        },
    }
}

/// `YYYY-MM-DD HH:MM:SS +0000` for now (UTC).
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads one request and answers it as `mode` says.
fn serve(stream: TcpStream, mode: Mode, recorded: &HashMap<IpAddr, String>) -> io::Result<String> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut queries = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(format!(
                "closed by the client after {line_no} lines, before `end`"
            ));
        }
        line_no += 1;
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim();
        if line_no == 1 {
            if line != "begin" {
                return Ok(format!("refused: first line {line:?} is not `begin`"));
            }
            continue;
        }
        match line {
            "end" => break,
            "verbose" | "" => continue,
            _ => {}
        }
        if queries.len() == MAX_PER_CONNECTION {
            return Ok(format!("refused: more than {MAX_PER_CONNECTION} addresses"));
        }
        queries.push(match line.parse::<IpAddr>() {
            Ok(ip) => Query::Ip(ip),
            Err(_) => Query::Bad(line_no),
        });
    }

    let mut reply = format!("Bulk mode; whois.cymru.com [{}]\n", timestamp());
    let lines = match mode {
        Mode::Hang => {
            // Hold the socket open until the client gives up.
            io::copy(&mut reader, &mut io::sink())?;
            return Ok(format!("hung on {} addresses", queries.len()));
        }
        Mode::Replay => queries.len(),
        Mode::CloseMid => queries.len() / 2,
        Mode::Garbage => {
            for _ in &queries {
                reply.push_str("this is not whois\n");
            }
            0
        }
    };
    for q in &queries[..lines] {
        reply.push_str(&answer(q, recorded));
        reply.push('\n');
    }
    writer.write_all(reply.as_bytes())?;
    Ok(format!("answered {lines} of {} lines", queries.len()))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cymru-replay: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let recorded = match load(&args.data) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("cymru-replay: reading {}: {e}", args.data.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "cymru-replay: {} recorded addresses from {}, mode {:?}",
        recorded.len(),
        args.data.display(),
        args.mode
    );
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cymru-replay: binding {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cymru-replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = io::stdout().lock();
    if writeln!(out, "listening on {addr}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(out);
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cymru-replay: accept: {e}");
                continue;
            }
        };
        let recorded = recorded.clone();
        let mode = args.mode;
        std::thread::spawn(move || {
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            match serve(stream, mode, &recorded) {
                Ok(what) => eprintln!("cymru-replay: {peer}: {what}"),
                Err(e) => eprintln!("cymru-replay: {peer}: {e}"),
            }
        });
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_matches_the_genuine_lines() {
        // From ipwhois-EXPERIMENTAL-2024-10-15.txt.
        let v4 = "15169   | 74.125.225.229   | 74.125.225.0/24     | US | arin     | 2007-03-13 | GOOGLE, US";
        let v6 = "15169   | 2001:4860:4860::8888                     | 2001:4860::/32      | US | arin     | 2005-03-14 | GOOGLE, US";
        let ip4: IpAddr = "74.125.225.229".parse().unwrap();
        let ip6: IpAddr = "2001:4860:4860::8888".parse().unwrap();
        let f =
            |ip, prefix, date| format_line("15169", ip, prefix, "US", "arin", date, "GOOGLE, US");
        assert_eq!(f(ip4, "74.125.225.0/24", "2007-03-13"), v4);
        assert_eq!(f(ip6, "2001:4860::/32", "2005-03-14"), v6);
        let private = format_line(
            "NA",
            "10.0.0.1".parse().unwrap(),
            "NA",
            "",
            "other",
            "",
            "NA",
        );
        assert_eq!(
            private,
            "NA      | 10.0.0.1         | NA                  |    | other    |            | NA"
        );
    }

    #[test]
    fn synthetic_answers_are_per_prefix() {
        let a = synthesize("11.22.33.44".parse().unwrap());
        let b = synthesize("11.22.33.200".parse().unwrap());
        assert!(a.contains("| 11.22.33.0/24 "), "{a}");
        assert_eq!(a.split('|').next(), b.split('|').next());
        let v6 = synthesize("2a00:1450:4001:81c::200e".parse().unwrap());
        assert!(v6.contains("| 2a00:1450:4001::/48 "), "{v6}");
        let asn: u32 = v6.split('|').next().unwrap().trim().parse().unwrap();
        assert!((64512..65512).contains(&asn));
        assert!(v6.ends_with(&format!("| SYNTHETIC-{asn}, ZZ")));
    }

    #[test]
    fn timestamp_has_the_service_format() {
        let t = timestamp();
        assert_eq!(t.len(), 25, "{t}");
        assert!(t.ends_with(" +0000") && t.starts_with("20"), "{t}");
    }
}
