//! What `sensor top` and the rollup add up, shared by both: per-flow totals, the rule for
//! a flow's remote end, and sums under inline keys. Here, below both, so that the store's
//! rollup does not reach up into the exports.
use std::{collections::HashMap, net::IpAddr};

use super::inline::Inline;

/// Per-thread sums, keyed by the group's bytes as read (remote address, comm, pair, or
/// protocol and port packed in three bytes).
pub type Sums = HashMap<Box<[u8]>, Totals, foldhash::fast::RandomState>;

/// Addresses as text (as `flows` stores them: rows are looked up without parsing) fit in
/// this many bytes; a longer key cannot be an address.
pub const ADDR_KEY: usize = 47;

/// Flows, packets and bytes added up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.flows += o.flows;
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// This host's addresses as `flows` stores them (text, IPv4-mapped as IPv4), plus
/// loopback. Few enough on most hosts that a linear search beats hashing.
#[derive(Debug, Clone, Default)]
pub struct LocalAddrs(Vec<Box<[u8]>>);

impl LocalAddrs {
    /// The addresses of every interface now.
    pub fn of_this_host() -> Self {
        Self::from_addrs(
            pnet_datalink::interfaces()
                .iter()
                .flat_map(|i| i.ips.iter().map(|n| n.ip())),
        )
    }

    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut v: Vec<Box<[u8]>> = addrs
            .into_iter()
            .map(|a| a.to_canonical().to_string().into_bytes().into_boxed_slice())
            .collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    pub fn is_local(&self, ip: &[u8]) -> bool {
        ip.starts_with(b"127.") || ip == b"::1" || self.0.iter().any(|a| **a == *ip)
    }

    /// The remote end of a flow: the source when only the destination is local, else the
    /// destination.
    pub fn remote<'a>(&self, src: &'a [u8], dst: &'a [u8]) -> &'a [u8] {
        if self.is_local(dst) && !self.is_local(src) {
            src
        } else {
            dst
        }
    }
}

/// Sums under inline keys, with the rare key too long to inline (a long process name, say)
/// kept apart.
pub struct InlineSums<const N: usize> {
    inline: HashMap<Inline<N>, Totals, foldhash::fast::RandomState>,
    long: Sums,
}

impl<const N: usize> Default for InlineSums<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> InlineSums<N> {
    pub fn new() -> Self {
        Self {
            inline: HashMap::default(),
            long: Sums::default(),
        }
    }

    pub fn add(&mut self, a: &[u8], b: Option<&[u8]>, t: &Totals) {
        match Inline::new(a, b) {
            Some(k) => self.inline.entry(k).or_default().add(t),
            None => {
                let mut k = a.to_vec();
                if let Some(b) = b {
                    k.push(0);
                    k.extend_from_slice(b);
                }
                self.long.entry(k.into()).or_default().add(t);
            }
        }
    }

    pub fn into_sums(self) -> Sums {
        let mut sums = self.long;
        for (k, v) in self.inline {
            sums.entry(k.as_slice().into()).or_default().add(&v);
        }
        sums
    }
}

/// A flow's packets both ways, 0 when not counted.
pub const PACKETS_SQL: &str = "ifnull(src_packets, 0) + ifnull(dst_packets, 0)";
/// A flow's IP-layer bytes both ways when a packet view counted it, else (kernel-only
/// flows) its payload bytes both ways.
pub const BYTES_SQL: &str = "CASE WHEN src_bytes IS NULL AND dst_bytes IS NULL \
    THEN ifnull(src_payload_bytes, 0) + ifnull(dst_payload_bytes, 0) \
    ELSE ifnull(src_bytes, 0) + ifnull(dst_bytes, 0) END";
