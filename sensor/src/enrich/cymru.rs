//! Team Cymru's IP-to-ASN bulk whois (TCP port 43 of `whois.cymru.com`): the origin AS, BGP
//! prefix and registry of addresses the MaxMind databases don't know.
//!
//! The service's etiquette shapes this module: bulk mode only, at most
//! [`MAX_PER_CONNECTION`] addresses per connection, few connections at once. Its data is
//! refreshed every 4 hours and an answer holds for the whole BGP prefix it names, so
//! [`PrefixCache`] keys answers by prefix: one lookup answers every address the prefix
//! covers. The CC column is the registry's country for the prefix, not where the address is.
//!
//! Callers filter with [`super::scope::is_public`] first; this client sends whatever it is
//! given.
use std::{
    fmt::{self, Write as _},
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use ipnet::IpNet;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    task::JoinSet,
};

use super::breaker::{Admit, Breaker};

/// The public service.
pub const DEFAULT_SERVER: &str = "whois.cymru.com:43";

/// The service asks bulk clients for at most this many addresses per connection.
pub const MAX_PER_CONNECTION: usize = 500;

/// Connections [`CymruClient::lookup`] keeps open at once: enough to overlap one chunk's
/// round trip with the next, few enough to stay a polite client.
pub const MAX_CONNECTIONS: usize = 2;

/// Longest answer line accepted; genuine lines are under 200 bytes, so more means the peer
/// is not the service (and must not make us buffer without bound).
const MAX_LINE: usize = 4096;

/// Request lines before the first address (`begin`, `verbose`). The service's
/// `Error: no ASN or IP match on line N.` counts every request line from 1, so the first
/// address is line 3.
const LINES_BEFORE_ADDRESSES: usize = 2;

/// What the service says about one address. `None` where it says `NA` or leaves the column
/// empty.
#[derive(Debug, Clone, PartialEq)]
pub struct CymruAnswer {
    /// The address asked about.
    pub ip: IpAddr,
    /// Origin AS of the covering BGP prefix; `None` when the address is not routed.
    pub asn: Option<u32>,
    /// The covering BGP prefix: the answer holds for every address inside it.
    pub prefix: Option<IpNet>,
    /// ISO 3166 code of the registry's country for the prefix — not geolocation.
    pub cc: Option<String>,
    /// Regional registry (`arin`, `ripencc`, `apnic`, `lacnic`, `afrinic`, `other`).
    pub registry: Option<String>,
    /// Allocation date, `YYYY-MM-DD`.
    pub allocated: Option<String>,
    /// AS description (`GOOGLE, US`).
    pub as_name: Option<String>,
}

impl CymruAnswer {
    /// The answer for an address the service had no match for.
    fn unknown(ip: IpAddr) -> Self {
        CymruAnswer {
            ip,
            asn: None,
            prefix: None,
            cc: None,
            registry: None,
            allocated: None,
            as_name: None,
        }
    }
}

/// A column of an answer line, named as in the service's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    As,
    Ip,
    BgpPrefix,
    Cc,
    Registry,
    Allocated,
    AsName,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::As => "AS",
            Field::Ip => "IP",
            Field::BgpPrefix => "BGP Prefix",
            Field::Cc => "CC",
            Field::Registry => "Registry",
            Field::Allocated => "Allocated",
            Field::AsName => "AS Name",
        })
    }
}

/// Why one answer line is not a valid answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("expected 7 `|`-separated fields, found {found}")]
    FieldCount { found: usize },
    #[error("{field} field {value:?} {reason}")]
    Field {
        field: Field,
        value: String,
        reason: &'static str,
    },
}

/// Why a line of the service's reply was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BadLine {
    #[error("the header does not start with `Bulk mode;`")]
    Header,
    #[error(transparent)]
    Answer(#[from] ParseError),
    /// Answers are matched to the request by their IP column; an address we didn't ask
    /// about means the reply is not for this request.
    #[error("answers {ip}, which was not asked")]
    NotAsked { ip: IpAddr },
    #[error("reports an error on request line {request_line}, which held no address")]
    NoSuchRequestLine { request_line: usize },
    #[error("longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// A failed chunk of a lookup (one connection). Answers read before it are kept.
#[derive(Debug, thiserror::Error)]
pub enum CymruError {
    #[error("connecting to {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: io::Error,
    },
    #[error("{server}: no full reply within {after_ms} ms ({answered} of {asked} answered)")]
    Timeout {
        server: String,
        after_ms: u64,
        answered: usize,
        asked: usize,
    },
    #[error("{server} closed the connection after {answered} of {asked} answers")]
    Closed {
        server: String,
        answered: usize,
        asked: usize,
    },
    #[error("{server}: reply line {line_no} {line:?}: {reason}")]
    Parse {
        server: String,
        /// 1-based; line 1 is the `Bulk mode;` header.
        line_no: usize,
        line: String,
        #[source]
        reason: BadLine,
    },
    #[error("talking to {server}: {source}")]
    Io {
        server: String,
        #[source]
        source: io::Error,
    },
    /// Not asked: the server has not been answering (its breaker is open).
    #[error("{server} is not answering: {asked} addresses not asked")]
    Shed { server: String, asked: usize },
}

/// `NA` and empty both mean the service has no value.
fn present(s: &str) -> Option<&str> {
    (!s.is_empty() && s != "NA").then_some(s)
}

fn bad(field: Field, value: &str, reason: &'static str) -> ParseError {
    ParseError::Field {
        field,
        value: value.to_string(),
        reason,
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) {
        return false;
    }
    if !digits(5..7) || !digits(8..10) {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// Strict parse of one verbose answer line
/// (`AS | IP | BGP Prefix | CC | Registry | Allocated | AS Name`, fields trimmed): a reply
/// that doesn't look like the service's is a wrong peer or a changed format, and must not
/// end up in the database. `NA` and empty mean `None`, except in CC, where `NA` is
/// Namibia (the service leaves an unknown CC empty).
pub fn parse_line(line: &str) -> Result<CymruAnswer, ParseError> {
    let mut fields = [""; 7];
    let mut found = 0;
    for f in line.trim_end_matches(['\r', '\n']).split('|') {
        if let Some(slot) = fields.get_mut(found) {
            *slot = f.trim();
        }
        found += 1;
    }
    if found != fields.len() {
        return Err(ParseError::FieldCount { found });
    }
    let [asn, ip, prefix, cc, registry, allocated, as_name] = fields;

    let asn = match present(asn) {
        None => None,
        Some(s) => {
            let n = s
                .bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse::<u32>().ok())
                .flatten();
            Some(n.ok_or_else(|| bad(Field::As, s, "is not NA or a 32-bit AS number"))?)
        }
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| bad(Field::Ip, ip, "is not an IP address"))?;
    let prefix = match present(prefix) {
        None => None,
        Some(s) => {
            let net: IpNet = s
                .parse()
                .map_err(|_| bad(Field::BgpPrefix, s, "is not NA or a CIDR prefix"))?;
            // A prefix that doesn't cover the address would be cached for the wrong ones.
            if !net.contains(&ip) {
                return Err(bad(Field::BgpPrefix, s, "does not contain the IP"));
            }
            Some(net)
        }
    };
    let cc = match cc {
        "" => None,
        s if s.len() == 2 && s.bytes().all(|c| c.is_ascii_alphabetic()) => Some(s.to_string()),
        s => return Err(bad(Field::Cc, s, "is not empty or a 2-letter country code")),
    };
    let allocated = match present(allocated) {
        None => None,
        Some(s) if is_date(s) => Some(s.to_string()),
        Some(s) => return Err(bad(Field::Allocated, s, "is not empty or YYYY-MM-DD")),
    };
    Ok(CymruAnswer {
        ip,
        asn,
        prefix,
        cc,
        registry: present(registry).map(str::to_string),
        allocated,
        as_name: present(as_name).map(str::to_string),
    })
}

/// A client of the bulk whois service.
/// Connections in a row that got nothing (each costs the timeout) before chunks are shed.
const BREAKER_THRESHOLD: u32 = 2;

#[derive(Debug, Clone)]
pub struct CymruClient {
    /// `host:port`.
    server: String,
    /// Deadline of one connection: connect, send and read the whole reply.
    timeout: Duration,
    /// Opened by chunks that got no answer at all (hung, refused, garbage): further chunks
    /// are shed at once instead of each waiting out the timeout.
    breaker: Arc<Mutex<Breaker>>,
}

impl CymruClient {
    /// `server` is `host:port` ([`DEFAULT_SERVER`] for the public service).
    pub fn new(server: impl Into<String>, timeout: Duration) -> Self {
        CymruClient {
            server: server.into(),
            timeout,
            breaker: Arc::new(Mutex::new(Breaker::with_threshold(BREAKER_THRESHOLD))),
        }
    }

    /// Looks up `ips` in chunks of at most [`MAX_PER_CONNECTION`], one TCP connection per
    /// chunk and at most [`MAX_CONNECTIONS`] at once, each chunk within the client's
    /// timeout (connect + send + read everything). Returns the answers in the order asked,
    /// and one error per failed chunk; answers read before a chunk failed are kept.
    ///
    /// Duplicates are asked once and answered once. IPv4-mapped IPv6 addresses are asked
    /// in their IPv4 form (what the service routes); answers carry the address as passed.
    /// Answers are matched to the request by their IP column. An
    /// `Error: no ASN or IP match on line N.` line is recorded as an answer with every
    /// field `None` for the address on request line N, so the caller knows the service
    /// was asked and had nothing. When the service lists several origins for one address,
    /// the first wins.
    pub async fn lookup(&self, ips: &[IpAddr]) -> (Vec<CymruAnswer>, Vec<CymruError>) {
        let mut seen = HashSet::with_capacity(ips.len());
        let asked: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| seen.insert(ip.to_canonical()))
            .collect();
        let mut chunks = asked
            .chunks(MAX_PER_CONNECTION)
            .map(<[IpAddr]>::to_vec)
            .enumerate();
        let mut tasks = JoinSet::new();
        let mut done = Vec::new();
        // After a failed chunk, the others in flight report before another starts: they
        // began together and are likely failing too, so the breaker must see them all
        // first, or a dead server costs one more timeout than the breaker allows.
        let mut failed_in_flight = false;
        loop {
            if tasks.is_empty() {
                failed_in_flight = false;
            }
            while tasks.len() < MAX_CONNECTIONS && !failed_in_flight {
                let Some((i, chunk)) = chunks.next() else {
                    break;
                };
                let admit = self.breaker.lock().expect("breaker").admit(Instant::now());
                if admit == Admit::Shed {
                    let shed = CymruError::Shed {
                        server: self.server.clone(),
                        asked: chunk.len(),
                    };
                    done.push((i, (Vec::new(), Some(shed))));
                    continue;
                }
                let (server, timeout) = (self.server.clone(), self.timeout);
                let breaker = Arc::clone(&self.breaker);
                tasks.spawn(async move {
                    let (answers, error) = lookup_chunk(&server, timeout, &chunk).await;
                    let mut b = breaker.lock().expect("breaker");
                    if answers.is_empty() && error.is_some() {
                        if b.failure(Instant::now(), admit == Admit::Probe) {
                            tracing::warn!(
                                server,
                                "Team Cymru is not answering ({} failed connections in a \
                                 row): lookups are shed until a probe is answered",
                                BREAKER_THRESHOLD
                            );
                        }
                    } else {
                        b.success();
                    }
                    drop(b);
                    (i, (answers, error))
                });
            }
            match tasks.join_next().await {
                None => break,
                Some(Ok(result)) => {
                    failed_in_flight |= result.1.1.is_some();
                    done.push(result);
                }
                // Never aborted, so only a panic lands here: pass it on.
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        done.sort_unstable_by_key(|(i, _)| *i);
        let mut answers = Vec::with_capacity(asked.len());
        let mut errors = Vec::new();
        for (_, (a, e)) in done {
            answers.extend(a);
            errors.extend(e);
        }
        (answers, errors)
    }
}

/// One connection's worth: the answers it got, and why it stopped early if it did.
async fn lookup_chunk(
    server: &str,
    timeout: Duration,
    chunk: &[IpAddr],
) -> (Vec<CymruAnswer>, Option<CymruError>) {
    let mut answers = Vec::with_capacity(chunk.len());
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, exchange(server, chunk, &mut answers)).await;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(CymruError::Timeout {
            server: server.to_string(),
            after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            answered: answers.len(),
            asked: chunk.len(),
        }),
    };
    match &error {
        None => tracing::debug!(
            server,
            asked = chunk.len(),
            ms = started.elapsed().as_millis(),
            "cymru chunk answered"
        ),
        Some(e) => tracing::debug!(server, error = %e, "cymru chunk failed"),
    }
    (answers, error)
}

/// Sends one bulk request and reads its reply into `answers` until every address is
/// answered. Stops there rather than at the server's close: nothing after is needed.
async fn exchange(
    server: &str,
    chunk: &[IpAddr],
    answers: &mut Vec<CymruAnswer>,
) -> Result<(), CymruError> {
    let io_err = |source| CymruError::Io {
        server: server.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|source| CymruError::Connect {
            server: server.to_string(),
            source,
        })?;

    let mut request = String::with_capacity(32 + chunk.len() * 40);
    request.push_str("begin\nverbose\n");
    for ip in chunk {
        let _ = writeln!(request, "{}", ip.to_canonical());
    }
    request.push_str("end\n");
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;

    let index: HashMap<IpAddr, usize> = chunk
        .iter()
        .enumerate()
        .map(|(i, ip)| (ip.to_canonical(), i))
        .collect();
    let mut answered = vec![false; chunk.len()];
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0;
    while line_no == 0 || answers.len() < chunk.len() {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(io_err)?;
        if n == 0 {
            return Err(CymruError::Closed {
                server: server.to_string(),
                answered: answers.len(),
                asked: chunk.len(),
            });
        }
        line_no += 1;
        // No newline: the line was cut, by the length limit or by the server closing.
        let cut = buf.last() != Some(&b'\n');
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\r', '\n']);
        let parse_error = |reason| CymruError::Parse {
            server: server.to_string(),
            line_no,
            line: line.to_string(),
            reason,
        };
        if cut && buf.len() > MAX_LINE {
            return Err(parse_error(BadLine::TooLong { limit: MAX_LINE }));
        }
        // A last line without its newline is kept if it is whole; if it doesn't parse,
        // the server closed mid-line, which is a close, not garbage.
        let answered_before = answers.len();
        let reject = |reason| {
            if cut {
                CymruError::Closed {
                    server: server.to_string(),
                    answered: answered_before,
                    asked: chunk.len(),
                }
            } else {
                parse_error(reason)
            }
        };
        if line_no == 1 {
            if !line.starts_with("Bulk mode;") {
                return Err(reject(BadLine::Header));
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(request_line) = no_match_line(line) {
            let slot = request_line
                .checked_sub(LINES_BEFORE_ADDRESSES + 1)
                .filter(|&i| i < chunk.len() && !answered[i]);
            let Some(i) = slot else {
                return Err(reject(BadLine::NoSuchRequestLine { request_line }));
            };
            answered[i] = true;
            answers.push(CymruAnswer::unknown(chunk[i]));
            continue;
        }
        let mut answer = parse_line(line).map_err(|e| reject(BadLine::Answer(e)))?;
        let Some(&i) = index.get(&answer.ip.to_canonical()) else {
            return Err(reject(BadLine::NotAsked { ip: answer.ip }));
        };
        if answered[i] {
            // Several origins for one address (MOAS): keep the first.
            continue;
        }
        answered[i] = true;
        answer.ip = chunk[i];
        answers.push(answer);
    }
    Ok(())
}

/// The request line number of `Error: no ASN or IP match on line N.`.
fn no_match_line(line: &str) -> Option<usize> {
    line.trim()
        .strip_prefix("Error: no ASN or IP match on line ")?
        .strip_suffix('.')?
        .parse()
        .ok()
}

#[derive(Debug)]
struct Entry {
    answer: CymruAnswer,
    expires_at: Instant,
}

/// Answers cached by the BGP prefix they name: one answer holds for every address inside
/// its prefix, so a busy /16 costs one lookup, not thousands. Lookups take the longest
/// cached prefix containing the address, as routing does. Entries expire (the service
/// refreshes every 4 hours).
#[derive(Debug)]
pub struct PrefixCache {
    /// Indexed by prefix length; keyed by the network address's bits.
    v4: Vec<HashMap<u32, Entry>>,
    v6: Vec<HashMap<u128, Entry>>,
    len: usize,
}

impl Default for PrefixCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The first `len` bits of `bits` (`len` ≤ 32).
fn mask_v4(bits: u32, len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0) & bits
}

/// The first `len` bits of `bits` (`len` ≤ 128).
fn mask_v6(bits: u128, len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0) & bits
}

impl PrefixCache {
    pub fn new() -> Self {
        PrefixCache {
            v4: (0..=32).map(|_| HashMap::new()).collect(),
            v6: (0..=128).map(|_| HashMap::new()).collect(),
            len: 0,
        }
    }

    /// Caches `answer` for its prefix until `expires_at`, replacing what that prefix held.
    /// Answers without a prefix, or whose prefix doesn't contain their address, are not
    /// cached: there is nothing they could answer for other addresses.
    pub fn insert(&mut self, answer: &CymruAnswer, expires_at: Instant) {
        let Some(prefix) = answer.prefix else { return };
        if !prefix.contains(&answer.ip) {
            return;
        }
        let entry = Entry {
            answer: answer.clone(),
            expires_at,
        };
        let len = prefix.prefix_len();
        let old = match prefix.network() {
            IpAddr::V4(a) => self.v4[usize::from(len)].insert(mask_v4(a.to_bits(), len), entry),
            IpAddr::V6(a) => self.v6[usize::from(len)].insert(mask_v6(a.to_bits(), len), entry),
        };
        if old.is_none() {
            self.len += 1;
        }
    }

    /// The answer of the longest cached prefix containing `ip`, with `.ip` set to `ip`.
    /// `None` if that prefix has expired, even when a shorter one hasn't: the longer prefix
    /// was the more specific route, and the shorter one's AS may not originate `ip`.
    pub fn get(&self, ip: IpAddr, now: Instant) -> Option<CymruAnswer> {
        let entry = match ip.to_canonical() {
            IpAddr::V4(a) => {
                let bits = a.to_bits();
                (0..=32u8).rev().find_map(|len| {
                    let map = &self.v4[usize::from(len)];
                    if map.is_empty() {
                        return None;
                    }
                    map.get(&mask_v4(bits, len))
                })
            }
            IpAddr::V6(a) => {
                let bits = a.to_bits();
                (0..=128u8).rev().find_map(|len| {
                    let map = &self.v6[usize::from(len)];
                    if map.is_empty() {
                        return None;
                    }
                    map.get(&mask_v6(bits, len))
                })
            }
        }?;
        (now < entry.expires_at).then(|| CymruAnswer {
            ip,
            ..entry.answer.clone()
        })
    }

    /// Cached prefixes, expired ones included until [`PrefixCache::purge`].
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the entries expired at `now`.
    pub fn purge(&mut self, now: Instant) {
        let mut len = 0;
        for map in &mut self.v4 {
            map.retain(|_, e| now < e.expires_at);
            len += map.len();
        }
        for map in &mut self.v6 {
            map.retain(|_, e| now < e.expires_at);
            len += map.len();
        }
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader as StdBufReader, Read, Write},
        net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/cymru");

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The genuine replies: (file name, lines after the header).
    fn genuine() -> Vec<(String, Vec<String>)> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(DATA).expect("shared data dir") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("ipwhois-") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = text.lines();
            let header = lines.next().unwrap();
            assert!(header.starts_with("Bulk mode; whois.cymru.com ["), "{name}");
            files.push((name, lines.map(str::to_string).collect()));
        }
        files.sort();
        files
    }

    fn genuine_line(file_date: &str, ip_text: &str) -> String {
        genuine()
            .into_iter()
            .find(|(name, _)| name.contains(file_date))
            .unwrap()
            .1
            .into_iter()
            .find(|l| l.split('|').nth(1).unwrap().trim() == ip_text)
            .unwrap()
    }

    #[test]
    fn parses_every_genuine_line() {
        let files = genuine();
        assert_eq!(files.len(), 3);
        let mut n = 0;
        for (name, lines) in &files {
            for line in lines {
                let a = parse_line(line).unwrap_or_else(|e| panic!("{name}: {line:?}: {e}"));
                assert_eq!(a.ip.to_string(), line.split('|').nth(1).unwrap().trim());
                n += 1;
            }
        }
        assert_eq!(n, 36);
    }

    #[test]
    fn genuine_google_row() {
        let line = genuine_line("2020-09-15", "74.125.225.229");
        assert_eq!(
            line,
            "15169   | 74.125.225.229   | 74.125.225.0/24     | US | arin     | 2007-03-13 | GOOGLE, US"
        );
        assert_eq!(
            parse_line(&line).unwrap(),
            CymruAnswer {
                ip: ip("74.125.225.229"),
                asn: Some(15169),
                prefix: Some(net("74.125.225.0/24")),
                cc: Some("US".into()),
                registry: Some("arin".into()),
                allocated: Some("2007-03-13".into()),
                as_name: Some("GOOGLE, US".into()),
            }
        );
    }

    #[test]
    fn genuine_unrouted_row() {
        let line = genuine_line("2017-07-30", "2801:10:c000::");
        let a = parse_line(&line).unwrap();
        assert_eq!(
            a,
            CymruAnswer {
                ip: ip("2801:10:c000::"),
                asn: None,
                prefix: None,
                cc: Some("CO".into()),
                registry: Some("lacnic".into()),
                allocated: Some("2013-10-29".into()),
                as_name: None,
            }
        );
        // Routed by 2024.
        let later = parse_line(&genuine_line("2024-10-15", "2801:10:c000::")).unwrap();
        assert_eq!(later.asn, Some(264653));
        assert_eq!(later.prefix, Some(net("2801:10:c000::/48")));
    }

    #[test]
    fn genuine_empty_allocated_rows() {
        for (ip_text, asn, prefix) in [
            ("210.107.73.73", 3786, "210.107.0.0/17"),
            ("196.11.240.215", 12091, "196.11.240.0/24"),
            ("133.1.2.5", 4730, "133.1.0.0/16"),
        ] {
            let a = parse_line(&genuine_line("2017-07-30", ip_text)).unwrap();
            assert_eq!(a.allocated, None, "{ip_text}");
            assert_eq!(a.asn, Some(asn));
            assert_eq!(a.prefix, Some(net(prefix)));
            assert!(a.registry.is_some() && a.cc.is_some() && a.as_name.is_some());
        }
        let a = parse_line(&genuine_line("2017-07-30", "115.1.2.3")).unwrap();
        assert_eq!(
            a.as_name.as_deref(),
            Some("CHINANET-BACKBONE No.31,Jin-rong Street, CN")
        );
    }

    #[test]
    fn genuine_padded_ipv6_rows() {
        let line = genuine_line("2024-10-15", "2001:4860:4860::8888");
        assert_eq!(
            line.split('|').nth(1).unwrap().len(),
            1 + 40 + 1,
            "{line:?}"
        );
        let a = parse_line(&line).unwrap();
        assert_eq!(a.ip, ip("2001:4860:4860::8888"));
        assert_eq!(a.asn, Some(15169));
        assert_eq!(a.prefix, Some(net("2001:4860::/32")));
        let a = parse_line(&genuine_line("2024-10-15", "2a00:2381:ffff::1")).unwrap();
        assert_eq!(a.prefix, Some(net("2a00:2380::/25")));
        assert_eq!(a.registry.as_deref(), Some("ripencc"));
        assert_eq!(
            a.as_name.as_deref(),
            Some("BT-UK-AS BTnet UK Regional network, GB")
        );
    }

    #[test]
    fn private_address_row() {
        let a = parse_line(
            "NA      | 10.0.0.1         | NA                  |    | other    |            | NA",
        )
        .unwrap();
        assert_eq!(
            a,
            CymruAnswer {
                registry: Some("other".into()),
                ..CymruAnswer::unknown(ip("10.0.0.1"))
            }
        );
    }

    #[test]
    fn namibia_is_a_country_not_na() {
        let a = parse_line(
            "36996 | 41.182.0.1 | 41.182.0.0/16 | NA | afrinic | 2008-06-16 | TELECOM-NAMIBIA, NA",
        )
        .unwrap();
        assert_eq!(a.cc.as_deref(), Some("NA"));
    }

    fn field_error(line: &str) -> (Field, String) {
        match parse_line(line) {
            Err(ParseError::Field { field, value, .. }) => (field, value),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn garbage_lines_are_rejected_naming_the_field() {
        let good = "15169 | 74.125.225.229 | 74.125.225.0/24 | US | arin | 2007-03-13 | GOOGLE, US";
        assert!(parse_line(good).is_ok());
        for (line, found) in [
            ("this is not whois", 1),
            (
                "15169 | 74.125.225.229 | 74.125.225.0/24 | US | arin | 2007-03-13",
                6,
            ),
            (
                "15169 | 74.125.225.229 | 74.125.225.0/24 | US | arin | 2007-03-13 | A | B",
                8,
            ),
            ("", 1),
        ] {
            let e = parse_line(line).unwrap_err();
            assert_eq!(e, ParseError::FieldCount { found }, "{line:?}");
            assert!(e.to_string().contains("7 `|`-separated fields"));
        }
        // (field, its text in `good`, a bad value): the first occurrence is replaced (for
        // "US", the cc field rather than the AS name's).
        let cases = [
            (Field::As, "15169", "abc"),
            (Field::As, "15169", "-1"),
            (Field::As, "15169", "4294967296"),
            (Field::Ip, "74.125.225.229", "74.125.225.300"),
            (Field::Ip, "74.125.225.229", "NA"),
            (Field::BgpPrefix, "74.125.225.0/24", "74.125.225.0/33"),
            (Field::BgpPrefix, "74.125.225.0/24", "74.125.225.0"),
            (Field::BgpPrefix, "74.125.225.0/24", "74.125.226.0/24"),
            (Field::Cc, "US", "USA"),
            (Field::Cc, "US", "U1"),
            (Field::Allocated, "2007-03-13", "2007-13-03"),
            (Field::Allocated, "2007-03-13", "13/03/2007"),
            (Field::Allocated, "2007-03-13", "yesterday"),
        ];
        for (field, original, value) in cases {
            let line = good.replacen(original, value, 1);
            assert_eq!(field_error(&line), (field, value.to_string()), "{line:?}");
            let msg = parse_line(&line).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("{field} field")), "{msg}");
        }
    }

    fn answer(ip_text: &str, asn: u32, prefix: &str) -> CymruAnswer {
        CymruAnswer {
            asn: Some(asn),
            prefix: Some(net(prefix)),
            ..CymruAnswer::unknown(ip(ip_text))
        }
    }

    #[test]
    fn cache_answers_the_whole_prefix() {
        let now = Instant::now();
        let later = now + Duration::from_secs(3600);
        let mut c = PrefixCache::new();
        assert!(c.is_empty());
        c.insert(&answer("74.125.225.229", 15169, "74.125.225.0/24"), later);
        assert_eq!(c.len(), 1);
        let hit = c.get(ip("74.125.225.1"), now).unwrap();
        assert_eq!(hit.ip, ip("74.125.225.1"));
        assert_eq!(hit.asn, Some(15169));
        assert_eq!(hit.prefix, Some(net("74.125.225.0/24")));
        assert!(c.get(ip("74.125.225.255"), now).is_some());
        assert!(c.get(ip("74.125.226.1"), now).is_none());
        assert!(c.get(ip("74.125.224.255"), now).is_none());
        // The IPv4-mapped form is the same address.
        assert_eq!(
            c.get(ip("::ffff:74.125.225.9"), now).unwrap().ip,
            ip("::ffff:74.125.225.9")
        );

        c.insert(
            &answer("2001:4860:4860::8888", 15169, "2001:4860::/32"),
            later,
        );
        assert_eq!(c.len(), 2);
        assert!(c.get(ip("2001:4860:ffff::1"), now).is_some());
        assert!(c.get(ip("2001:4861::1"), now).is_none());
    }

    #[test]
    fn cache_skips_answers_without_a_usable_prefix() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut c = PrefixCache::new();
        c.insert(&CymruAnswer::unknown(ip("10.0.0.1")), later);
        c.insert(&answer("1.2.3.4", 1, "5.6.7.0/24"), later);
        assert!(c.is_empty());
    }

    #[test]
    fn cache_entries_expire() {
        let t0 = Instant::now();
        let mut c = PrefixCache::new();
        c.insert(
            &answer("62.239.237.1", 2856, "62.239.0.0/16"),
            t0 + Duration::from_secs(10),
        );
        c.insert(
            &answer("133.1.2.5", 4730, "133.1.0.0/16"),
            t0 + Duration::from_secs(30),
        );
        assert!(
            c.get(ip("62.239.1.1"), t0 + Duration::from_secs(9))
                .is_some()
        );
        assert!(
            c.get(ip("62.239.1.1"), t0 + Duration::from_secs(10))
                .is_none()
        );
        assert_eq!(c.len(), 2);
        c.purge(t0 + Duration::from_secs(10));
        assert_eq!(c.len(), 1);
        assert!(
            c.get(ip("133.1.9.9"), t0 + Duration::from_secs(10))
                .is_some()
        );
        c.purge(t0 + Duration::from_secs(30));
        assert!(c.is_empty());
    }

    #[test]
    fn cache_longest_prefix_wins() {
        let t0 = Instant::now();
        let mut c = PrefixCache::new();
        let later = t0 + Duration::from_secs(60);
        c.insert(&answer("115.1.2.3", 4766, "115.0.0.0/12"), later);
        c.insert(&answer("115.1.2.3", 4134, "115.0.0.0/14"), later);
        c.insert(&answer("115.1.2.3", 64500, "115.1.2.0/24"), later);
        c.insert(&answer("0.0.0.1", 64501, "0.0.0.0/0"), later);
        assert_eq!(c.len(), 4);
        assert_eq!(c.get(ip("115.1.2.200"), t0).unwrap().asn, Some(64500));
        assert_eq!(c.get(ip("115.1.3.1"), t0).unwrap().asn, Some(4134));
        assert_eq!(c.get(ip("115.8.0.1"), t0).unwrap().asn, Some(4766));
        assert_eq!(c.get(ip("8.8.8.8"), t0).unwrap().asn, Some(64501));
        // Re-inserting a prefix replaces it.
        c.insert(&answer("115.1.2.9", 64502, "115.1.2.0/24"), later);
        assert_eq!(c.len(), 4);
        assert_eq!(c.get(ip("115.1.2.1"), t0).unwrap().asn, Some(64502));

        c.insert(&answer("2001:240:10c:1::1", 2497, "2001:240::/32"), later);
        c.insert(
            &answer("2001:240:10c:1::1", 64503, "2001:240:10c::/48"),
            later,
        );
        c.insert(
            &answer("2001:240:10c:1::1", 64504, "2001:240:10c:1::1/128"),
            later,
        );
        assert_eq!(c.get(ip("2001:240:10c:1::1"), t0).unwrap().asn, Some(64504));
        assert_eq!(c.get(ip("2001:240:10c:1::2"), t0).unwrap().asn, Some(64503));
        assert_eq!(c.get(ip("2001:240:1::2"), t0).unwrap().asn, Some(2497));
        assert!(c.get(ip("2001:241::1"), t0).is_none());

        // An expired longer prefix is not covered for by a live shorter one.
        c.insert(&answer("115.1.2.3", 64505, "115.1.2.0/24"), t0);
        assert!(c.get(ip("115.1.2.3"), t0).is_none());
        assert_eq!(c.get(ip("115.1.3.1"), t0).unwrap().asn, Some(4134));
    }

    // ---- lookups against an in-process server speaking the bulk protocol ----

    /// The reply to one request (the asked lines, in order); `None` hangs: no reply, the
    /// socket kept open until the client goes.
    type Reply = dyn Fn(&[String]) -> Option<String> + Send + Sync;

    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: Mutex<Vec<Vec<String>>>,
    }

    const HEADER: &str = "Bulk mode; whois.cymru.com [2024-10-15 05:46:42 +0000]\n";

    /// A line in the genuine format, AS and /24 or /48 made up from the address.
    fn synth_line(ip_text: &str) -> String {
        let ip: IpAddr = ip_text.parse().unwrap();
        let (prefix, width) = match ip {
            IpAddr::V4(_) => (IpNet::new(ip, 24).unwrap().trunc(), 16),
            IpAddr::V6(_) => (IpNet::new(ip, 48).unwrap().trunc(), 40),
        };
        let asn = 64512 + (prefix.network().to_canonical().to_string().len() as u32);
        format!(
            "{asn:<8}| {ip_text:<width$} | {:<20}| ZZ | other    |            | SYNTHETIC-{asn}, ZZ\n",
            prefix.to_string()
        )
    }

    fn replay(asked: &[String]) -> Option<String> {
        let mut out = HEADER.to_string();
        for a in asked {
            out.push_str(&synth_line(a));
        }
        Some(out)
    }

    fn serve(reply: Arc<Reply>) -> (SocketAddr, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (reply, seen) = (reply.clone(), seen2.clone());
                seen.connections.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut reader = StdBufReader::new(conn.try_clone().unwrap());
                    let mut lines = Vec::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        match line.trim() {
                            "begin" | "verbose" => {}
                            "end" => break,
                            l => lines.push(l.to_string()),
                        }
                    }
                    seen.requests.lock().unwrap().push(lines.clone());
                    match reply(&lines) {
                        Some(text) => {
                            let _ = conn.write_all(text.as_bytes());
                        }
                        None => {
                            // Hang: hold the socket until the client closes it.
                            let _ = reader.read_to_end(&mut Vec::new());
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    fn many(n: usize) -> Vec<IpAddr> {
        (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1450, i as u16, 0, 0, 0, 0, 1))
                } else {
                    IpAddr::V4(Ipv4Addr::from_bits(0x0b00_0000 + (i as u32) * 257))
                }
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_1200_addresses_takes_three_connections() {
        let (addr, seen) = serve(Arc::new(replay));
        let ips = many(1200);
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&ips).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        let mut sizes: Vec<usize> = seen.requests.lock().unwrap().iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [200, 500, 500]);
        assert_eq!(answers.iter().map(|a| a.ip).collect::<Vec<_>>(), ips);
        for a in &answers {
            assert!(a.prefix.unwrap().contains(&a.ip));
            assert_eq!(a.cc.as_deref(), Some("ZZ"));
            assert_eq!(a.as_name, Some(format!("SYNTHETIC-{}, ZZ", a.asn.unwrap())));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_asks_each_address_once() {
        let (addr, seen) = serve(Arc::new(replay));
        let ips = [
            ip("1.2.3.4"),
            ip("::ffff:1.2.3.4"),
            ip("1.2.3.4"),
            ip("2001:4860::1"),
        ];
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&ips).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            *seen.requests.lock().unwrap(),
            [vec!["1.2.3.4".to_string(), "2001:4860::1".to_string()]]
        );
        let got: Vec<IpAddr> = answers.iter().map(|a| a.ip).collect();
        assert_eq!(got, [ip("1.2.3.4"), ip("2001:4860::1")]);
        assert!(client.lookup(&[]).await.0.is_empty());
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_hang_times_out_and_keeps_the_other_chunks() {
        let ips = many(1200);
        let hang_on = ips[500].to_string();
        let (addr, _seen) = serve(Arc::new(move |asked: &[String]| {
            if asked[0] == hang_on {
                None
            } else {
                replay(asked)
            }
        }));
        let timeout = Duration::from_millis(400);
        let client = CymruClient::new(addr.to_string(), timeout);
        let t0 = Instant::now();
        let (answers, errors) = client.lookup(&ips).await;
        let took = t0.elapsed();
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout + Duration::from_millis(500), "{took:?}");
        assert_eq!(answers.len(), 700);
        assert_eq!(
            answers[..500].iter().map(|a| a.ip).collect::<Vec<_>>(),
            ips[..500]
        );
        assert_eq!(
            answers[500..].iter().map(|a| a.ip).collect::<Vec<_>>(),
            ips[1000..]
        );
        match &errors[..] {
            [
                CymruError::Timeout {
                    server,
                    after_ms: 400,
                    answered: 0,
                    asked: 500,
                },
            ] => assert_eq!(*server, addr.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_keeps_at_most_two_connections_and_sheds_when_they_hang() {
        // Every connection hangs: 3 chunks, 2 at a time. The two hung connections open the
        // breaker, so the third chunk is shed instead of costing a second timeout.
        let (addr, seen) = serve(Arc::new(|_: &[String]| None));
        let timeout = Duration::from_millis(300);
        let client = CymruClient::new(addr.to_string(), timeout);
        let t0 = Instant::now();
        let (answers, errors) = client.lookup(&many(1200)).await;
        let took = t0.elapsed();
        assert!(answers.is_empty());
        match &errors[..] {
            [
                CymruError::Timeout { asked: 500, .. },
                CymruError::Timeout { asked: 500, .. },
                CymruError::Shed { asked: 200, .. },
            ] => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        assert!(took >= timeout, "{took:?}");
        assert!(took < 2 * timeout, "{took:?}");
        // Still down: the next lookup asks nothing until the cool-down allows a probe.
        let (answers, errors) = client.lookup(&many(10)).await;
        assert!(answers.is_empty());
        assert!(
            matches!(&errors[..], [CymruError::Shed { asked: 10, .. }]),
            "{errors:?}"
        );
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_close_mid_keeps_the_answers_before() {
        let (addr, _seen) = serve(Arc::new(|asked: &[String]| {
            let mut text = replay(&asked[..asked.len() / 2]).unwrap();
            // Half a line, then the close.
            text.push_str("64512   | 11.");
            Some(text)
        }));
        let ips = many(10);
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&ips).await;
        assert_eq!(answers.iter().map(|a| a.ip).collect::<Vec<_>>(), ips[..5]);
        match &errors[..] {
            [
                CymruError::Closed {
                    answered: 5,
                    asked: 10,
                    ..
                },
            ] => {}
            other => panic!("{other:?}"),
        }

        // A whole last line without its newline still counts.
        let (addr, _seen) = serve(Arc::new(|asked: &[String]| {
            Some(replay(asked).unwrap().trim_end().to_string())
        }));
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&ips).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(answers.len(), 10);

        let (addr, _seen) = serve(Arc::new(|asked: &[String]| {
            replay(&asked[..asked.len() / 2])
        }));
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&ips).await;
        assert_eq!(answers.iter().map(|a| a.ip).collect::<Vec<_>>(), ips[..5]);
        match &errors[..] {
            [
                CymruError::Closed {
                    answered: 5,
                    asked: 10,
                    ..
                },
            ] => {}
            other => panic!("{other:?}"),
        }
        assert!(errors[0].to_string().contains("after 5 of 10 answers"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_garbage_is_a_parse_error_naming_the_line() {
        let (addr, _seen) = serve(Arc::new(|asked: &[String]| {
            Some(HEADER.to_string() + &"this is not whois\n".repeat(asked.len()))
        }));
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&many(3)).await;
        assert!(answers.is_empty());
        match &errors[..] {
            [
                e @ CymruError::Parse {
                    line_no: 2,
                    line,
                    reason: BadLine::Answer(ParseError::FieldCount { found: 1 }),
                    ..
                },
            ] => {
                assert_eq!(line, "this is not whois");
                let msg = e.to_string();
                assert!(msg.contains("reply line 2 \"this is not whois\""), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_rejects_a_bad_header_and_unasked_answers() {
        let (addr, _seen) = serve(Arc::new(|asked: &[String]| {
            Some(replay(asked).unwrap().replacen("Bulk mode;", "Hello;", 1))
        }));
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (_, errors) = client.lookup(&many(2)).await;
        assert!(
            matches!(
                &errors[..],
                [CymruError::Parse {
                    line_no: 1,
                    reason: BadLine::Header,
                    ..
                }]
            ),
            "{errors:?}"
        );

        let (addr, _seen) = serve(Arc::new(|asked: &[String]| {
            Some(HEADER.to_string() + &synth_line(&asked[0]) + &synth_line("9.9.9.9"))
        }));
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&many(3)).await;
        assert_eq!(answers.len(), 1);
        match &errors[..] {
            [
                CymruError::Parse {
                    line_no: 3,
                    reason: BadLine::NotAsked { ip: unasked },
                    ..
                },
            ] => assert_eq!(*unasked, ip("9.9.9.9")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_records_no_match_lines_and_skips_extra_origins() {
        let (addr, _seen) = serve(Arc::new(|asked: &[String]| {
            let mut text = HEADER.to_string();
            text += &synth_line(&asked[0]);
            text += &synth_line(&asked[0]); // a second origin for the same address
            // The second address is on request line 4 (begin, verbose, first, second).
            text += "Error: no ASN or IP match on line 4.\n";
            text += &synth_line(&asked[2]);
            Some(text)
        }));
        let ips = many(3);
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (answers, errors) = client.lookup(&ips).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(answers.iter().map(|a| a.ip).collect::<Vec<_>>(), ips);
        assert_eq!(answers[1], CymruAnswer::unknown(ips[1]));
        assert!(answers[0].asn.is_some() && answers[2].asn.is_some());

        let (addr, _seen) = serve(Arc::new(|_: &[String]| {
            Some(HEADER.to_string() + "Error: no ASN or IP match on line 9.\n")
        }));
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(10));
        let (_, errors) = client.lookup(&ips).await;
        assert!(
            matches!(
                &errors[..],
                [CymruError::Parse {
                    reason: BadLine::NoSuchRequestLine { request_line: 9 },
                    ..
                }]
            ),
            "{errors:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lookup_reports_a_refused_connection() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let client = CymruClient::new(addr.to_string(), Duration::from_secs(5));
        let (answers, errors) = client.lookup(&many(2)).await;
        assert!(answers.is_empty());
        match &errors[..] {
            [CymruError::Connect { server, .. }] => assert_eq!(*server, addr.to_string()),
            other => panic!("{other:?}"),
        }
    }
}
