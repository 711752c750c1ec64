//! The flow filters `export` and `top` share. What SQLite can answer from the row (time,
//! port, protocol, process, unit) becomes bound-parameter SQL, the time range on the indexed
//! `first_seen_ms`; what needs parsing or `ip_info` (address and network, country, ASN,
//! threat lists) is checked in Rust on the rows read, against the preloaded `ip_info`.
use std::{collections::HashMap, net::IpAddr};

use ipnet::{IpNet, Ipv4Net};
use rusqlite::types::Value;

use crate::store::inline::Inline;

use super::{
    ipinfo::{Info, InfoMap},
    time::TimeError,
};

/// A filter value that does not parse; clap names the flag and the value beside it.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error(transparent)]
    Time(#[from] TimeError),
    #[error("expected an IP address or a CIDR network (10.0.0.0/8, 2001:db8::/32)")]
    Address,
    #[error("expected tcp, udp, icmp, icmpv6 or a protocol number 0-255")]
    Proto,
    #[error("expected a two-letter country code (DE, US)")]
    Country,
    #[error("expected an AS number (13335 or AS13335)")]
    Asn,
    #[error("expected a process name")]
    Process,
    #[error("expected a unit name (nginx.service) or a cgroup path (/mytest/client)")]
    Unit,
}

/// Filters that parse one by one but make no sense together.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("--since {since} is not before --until {until}: no flow can match")]
    EmptyRange { since: String, until: String },
}

/// A time from the command line: what was typed (for messages) and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeArg {
    pub text: String,
    pub ms: i64,
}

pub fn parse_time(s: &str) -> Result<TimeArg, ValueError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Ok(TimeArg {
        text: s.to_string(),
        ms: super::time::parse_at(s, now_ms)?,
    })
}

/// An address (a network of one) or a CIDR network; IPv4-mapped IPv6 is taken as the IPv4
/// it maps, as the sensor stores it.
pub fn parse_net(s: &str) -> Result<IpNet, ValueError> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => IpNet::from(s.parse::<IpAddr>().map_err(|_| ValueError::Address)?),
    };
    Ok(match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).expect("<= 32")),
            None => net,
        },
        _ => net,
    })
}

pub fn parse_proto(s: &str) -> Result<u8, ValueError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        "icmpv6" | "ipv6-icmp" => Ok(58),
        n => n.parse().map_err(|_| ValueError::Proto),
    }
}

/// ISO 3166 alpha-2, upper case as `ip_info` has it.
pub fn parse_country(s: &str) -> Result<String, ValueError> {
    let s = s.trim();
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(ValueError::Country)
    }
}

pub fn parse_asn(s: &str) -> Result<u32, ValueError> {
    let s = s.trim();
    let digits = s
        .strip_prefix("AS")
        .or_else(|| s.strip_prefix("as"))
        .unwrap_or(s);
    digits.parse().map_err(|_| ValueError::Asn)
}

/// The kernel keeps 15 bytes of a process name (`comm`); a longer name matches its first 15.
pub fn parse_process(s: &str) -> Result<String, ValueError> {
    if s.is_empty() {
        return Err(ValueError::Process);
    }
    let mut end = s.len().min(15);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Ok(s[..end].to_string())
}

/// A unit as stored: a systemd unit (`nginx.service`, `user@1000.service/app.scope`) or a
/// cgroup path; matched exactly, as the comm is.
pub fn parse_unit(s: &str) -> Result<String, ValueError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ValueError::Unit);
    }
    Ok(s.to_string())
}

/// Which flows to read. Each filter matches either end of a flow; filters combine with AND.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only flows that started at or after TIME (by first_seen_ms, which is indexed: a
    /// narrow range reads only its flows). RFC 3339 (2026-11-24T10:00:00Z) or that long
    /// before now (90s, 30m, 1h, 2d).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<TimeArg>,
    /// Only flows that started before TIME (first_seen_ms; same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<TimeArg>,
    /// Only flows with either end in this address or CIDR network (IPv4 or IPv6).
    #[arg(long, value_name = "IP|CIDR", value_parser = parse_net)]
    pub ip: Option<IpNet>,
    /// Only flows with this port at either end (for ICMP the destination "port" is
    /// type << 8 | code).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only flows of this protocol: tcp, udp, icmp, icmpv6 or its number.
    #[arg(long, value_name = "PROTO", value_parser = parse_proto)]
    pub proto: Option<u8>,
    /// Only flows with either end in this country (ISO code, from enrichment: ip_info).
    #[arg(long, value_name = "CC", value_parser = parse_country)]
    pub country: Option<String>,
    /// Only flows with either end in this autonomous system (from enrichment: ip_info).
    #[arg(long, value_name = "N", value_parser = parse_asn)]
    pub asn: Option<u32>,
    /// Only flows with this process name (comm) at either end.
    #[arg(long, value_name = "COMM", value_parser = parse_process)]
    pub process: Option<String>,
    /// Only flows with this unit at either end: the systemd unit (nginx.service,
    /// user@1000.service/app.scope) or, where there is none, the cgroup path.
    #[arg(long, value_name = "UNIT", value_parser = parse_unit)]
    pub unit: Option<String>,
    /// Only flows with either end on a threat list (ip_info.threat set).
    #[arg(long)]
    pub threat: bool,
}

/// How a query should treat the time range: through the index, or as a plain comparison on
/// rows it reads anyway (`+column` keeps SQLite from choosing the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeAccess {
    Index,
    Scan,
}

impl Filter {
    /// Refuses a combination no flow can match.
    pub fn validate(&self) -> Result<(), FilterError> {
        if let (Some(s), Some(u)) = (&self.since, &self.until)
            && s.ms >= u.ms
        {
            return Err(FilterError::EmptyRange {
                since: s.text.clone(),
                until: u.text.clone(),
            });
        }
        Ok(())
    }

    /// The SQL conditions (each starting with ` AND `) with their `?` parameters in order.
    pub fn sql(&self, time: TimeAccess) -> (String, Vec<Value>) {
        let col = match time {
            TimeAccess::Index => "first_seen_ms",
            TimeAccess::Scan => "+first_seen_ms",
        };
        let mut sql = String::new();
        let mut params = Vec::new();
        if let Some(t) = &self.since {
            sql.push_str(&format!(" AND {col} >= ?"));
            params.push(Value::Integer(t.ms));
        }
        if let Some(t) = &self.until {
            sql.push_str(&format!(" AND {col} < ?"));
            params.push(Value::Integer(t.ms));
        }
        if let Some(p) = self.port {
            sql.push_str(" AND (src_port = ? OR dst_port = ?)");
            params.extend([Value::Integer(p.into()), Value::Integer(p.into())]);
        }
        if let Some(p) = self.proto {
            sql.push_str(" AND proto = ?");
            params.push(Value::Integer(p.into()));
        }
        if let Some(c) = &self.process {
            sql.push_str(" AND (src_comm = ? OR dst_comm = ?)");
            params.extend([Value::Text(c.clone()), Value::Text(c.clone())]);
        }
        if let Some(u) = &self.unit {
            sql.push_str(" AND (src_unit = ? OR dst_unit = ?)");
            params.extend([Value::Text(u.clone()), Value::Text(u.clone())]);
        }
        (sql, params)
    }

    /// Whether the checks left for Rust read `ip_info` (country, ASN, threat lists).
    pub fn needs_info(&self) -> bool {
        self.country.is_some() || self.asn.is_some() || self.threat
    }

    /// The checks left for Rust, on each row's addresses; what they need from `info` is
    /// worked out once per address here, not per row.
    pub fn row_check(&self, info: &InfoMap) -> RowCheck {
        let mut required = 0;
        for (on, bit) in [
            (self.country.is_some(), COUNTRY),
            (self.asn.is_some(), ASN),
            (self.threat, THREAT),
        ] {
            if on {
                required |= bit;
            }
        }
        let mut marks = HashMap::default();
        if required != 0 {
            for (ip, i) in info.iter() {
                let mark = self.marks(i);
                if mark != 0
                    && let Some(k) = Inline::new(ip, None)
                {
                    marks.insert(k, mark);
                }
            }
        }
        RowCheck {
            net: self.ip.map(|net| {
                if net.prefix_len() == net.max_prefix_len() {
                    NetMatch::Exact(net.addr().to_string().into_bytes().into_boxed_slice())
                } else {
                    NetMatch::Net(net)
                }
            }),
            required,
            marks,
        }
    }

    /// Which of the `ip_info` filters an address passes, as bits.
    fn marks(&self, i: &Info) -> u8 {
        let mut m = 0;
        if self
            .country
            .as_deref()
            .is_some_and(|c| i.country.as_deref() == Some(c))
        {
            m |= COUNTRY;
        }
        if self.asn.is_some_and(|a| i.asn == Some(i64::from(a))) {
            m |= ASN;
        }
        if self.threat && i.threat.is_some() {
            m |= THREAT;
        }
        m
    }
}

/// The `ip_info` filters, as bits: a flow passes when its two ends together have every
/// bit the filter asks for (each filter may be met by either end).
const COUNTRY: u8 = 1;
const ASN: u8 = 2;
const THREAT: u8 = 4;

#[derive(Debug, Clone)]
enum NetMatch {
    /// One address: its text as stored, compared without parsing.
    Exact(Box<[u8]>),
    Net(IpNet),
}

impl NetMatch {
    fn matches(&self, ip: &[u8]) -> bool {
        match self {
            Self::Exact(text) => **text == *ip,
            Self::Net(net) => std::str::from_utf8(ip)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .is_some_and(|a| net.contains(&a.to_canonical())),
        }
    }
}

/// The part of a [`Filter`] checked on rows in Rust.
#[derive(Debug, Clone)]
pub struct RowCheck {
    net: Option<NetMatch>,
    /// The `ip_info` filters' bits, all of which a flow's ends must have between them.
    required: u8,
    /// The addresses that have any of those bits (few: a miss is quick).
    marks: HashMap<Inline<{ super::ipinfo::KEY }>, u8, foldhash::fast::RandomState>,
}

impl RowCheck {
    /// Whether any row can fail the check (else it need not run).
    pub fn is_active(&self) -> bool {
        self.net.is_some() || self.required != 0
    }

    fn mark(&self, ip: &[u8]) -> u8 {
        Inline::new(ip, None)
            .and_then(|k| self.marks.get(&k).copied())
            .unwrap_or(0)
    }

    /// Whether a flow between `src` and `dst` (addresses as stored) passes.
    pub fn matches(&self, src: &[u8], dst: &[u8]) -> bool {
        if let Some(net) = &self.net
            && !net.matches(src)
            && !net.matches(dst)
        {
            return false;
        }
        self.required == 0 || (self.mark(src) | self.mark(dst)) & self.required == self.required
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_to_what_they_mean() {
        assert_eq!(parse_proto("TCP").unwrap(), 6);
        assert_eq!(parse_proto("icmpv6").unwrap(), 58);
        assert_eq!(parse_proto("132").unwrap(), 132);
        assert!(parse_proto("256").is_err());
        assert!(parse_proto("tcpx").is_err());
        assert_eq!(parse_country("de").unwrap(), "DE");
        assert!(parse_country("DEU").is_err());
        assert!(parse_country("1A").is_err());
        assert_eq!(parse_asn("AS13335").unwrap(), 13335);
        assert_eq!(parse_asn("15169").unwrap(), 15169);
        assert!(parse_asn("ASx").is_err());
        assert_eq!(
            parse_process("systemd-resolved").unwrap(),
            "systemd-resolve"
        );
        assert_eq!(parse_process("nginx").unwrap(), "nginx");
        assert_eq!(parse_unit(" nginx.service ").unwrap(), "nginx.service");
        assert_eq!(parse_unit("/mytest/client").unwrap(), "/mytest/client");
        assert!(parse_unit(" ").is_err());
        assert_eq!(
            parse_net("10.1.2.3/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("::ffff:10.0.0.0/104").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("2001:DB8::1").unwrap(),
            "2001:db8::1/128".parse::<IpNet>().unwrap()
        );
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }

    /// `f` on a flow between `src` and `dst`, with `ip_info` holding `infos`.
    fn check(f: &Filter, src: &str, dst: &str, infos: &[(&str, &Info)]) -> bool {
        let mut map = InfoMap::default();
        for (ip, i) in infos {
            map.insert(ip.as_bytes(), (*i).clone());
        }
        f.row_check(&map).matches(src.as_bytes(), dst.as_bytes())
    }

    #[test]
    fn addresses_match_either_end() {
        let f = Filter {
            ip: Some(parse_net("2001:db8::/32").unwrap()),
            ..Filter::default()
        };
        assert!(check(&f, "2001:db8::5", "::1", &[]));
        assert!(check(&f, "::1", "2001:db8:ffff::1", &[]));
        assert!(!check(&f, "2001:db9::1", "10.0.0.1", &[]));
        let f = Filter {
            ip: Some(parse_net("::FFFF:192.0.2.7").unwrap()),
            ..Filter::default()
        };
        assert!(check(&f, "10.0.0.1", "192.0.2.7", &[]));
        assert!(!check(&f, "10.0.0.1", "192.0.2.70", &[]));
    }

    #[test]
    fn enrichment_filters_need_an_end_that_has_it() {
        let de = Info {
            country: Some("DE".into()),
            asn: Some(3320),
            ..Info::default()
        };
        let listed = Info {
            threat: Some("spamhaus_drop".into()),
            ..Info::default()
        };
        let f = Filter {
            country: Some("DE".into()),
            asn: Some(3320),
            ..Filter::default()
        };
        assert!(check(&f, "a", "b", &[("b", &de)]));
        assert!(!check(&f, "a", "b", &[("a", &listed)]));
        // Each filter may be met by a different end.
        let de_other = Info {
            asn: Some(64500),
            ..de.clone()
        };
        let as3320 = Info {
            asn: Some(3320),
            ..Info::default()
        };
        assert!(check(&f, "a", "b", &[("a", &de_other), ("b", &as3320)]));
        assert!(!check(&f, "a", "b", &[("a", &de_other)]));
        let f = Filter {
            threat: true,
            ..Filter::default()
        };
        assert!(check(&f, "a", "b", &[("a", &listed), ("b", &de)]));
        assert!(!check(&f, "a", "b", &[("a", &de)]));
        assert!(!check(&f, "a", "b", &[]));
    }

    #[test]
    fn an_inverted_range_is_refused_naming_both() {
        let t = |s: &str| Some(parse_time(s).unwrap());
        let f = Filter {
            since: t("2026-11-24T10:00:00Z"),
            until: t("2026-11-24T09:00:00Z"),
            ..Filter::default()
        };
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("--since 2026-11-24T10:00:00Z"), "{e}");
        assert!(e.contains("--until 2026-11-24T09:00:00Z"), "{e}");
        let f = Filter {
            since: t("2h"),
            until: t("1h"),
            ..Filter::default()
        };
        assert!(f.validate().is_ok());
    }
}
