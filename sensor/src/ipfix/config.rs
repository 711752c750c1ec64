//! `[ipfix]`: where finished flows are exported, and the exporters' bounds.
use serde::Deserialize;

/// IPFIX export: where to, and the exporter's bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpfixConfig {
    /// `udp://HOST:PORT` or `tcp://HOST:PORT`, each a collector of its own (`--ipfix` adds).
    pub collectors: Vec<String>,
    /// The observation domain id in every message header.
    pub observation_domain: u32,
    /// Enterprise number of the sensor's own elements (pid, comm, uid, unit); 32473 is
    /// RFC 5612's number for documentation: use your organisation's.
    pub enterprise_number: u32,
    /// Path MTU: messages are at most this less the IP and transport headers.
    pub mtu_bytes: usize,
    /// UDP: templates are sent again this often...
    pub template_refresh_s: u64,
    /// ...and after this many messages.
    pub template_every_messages: u64,
    /// Flows waiting for each collector; when full, new flows are dropped for that
    /// collector and counted.
    pub queue_records: usize,
    /// A partly filled message goes out after this long.
    pub flush_ms: u64,
    /// TCP: the socket's send buffer. What sits in it when a collector goes away is lost
    /// without the exporter knowing (TCP carries no application acknowledgement), so it is
    /// bounded; a collector that stops reading fills it, the write times out and the
    /// exporter reconnects, dropping (and counting) meanwhile.
    pub tcp_send_buffer_bytes: usize,
}

impl Default for IpfixConfig {
    fn default() -> Self {
        Self {
            collectors: Vec::new(),
            observation_domain: 1,
            enterprise_number: super::encode::DEFAULT_PEN,
            mtu_bytes: 1400,
            template_refresh_s: 60,
            template_every_messages: 100,
            queue_records: 65_536,
            flush_ms: 500,
            tcp_send_buffer_bytes: 262_144,
        }
    }
}
