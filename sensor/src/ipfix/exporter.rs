//! One exporter stage per collector: a bounded queue of finished flows, a thread that packs
//! them into IPFIX messages and sends them over UDP or TCP.
//!
//! Full-queue policy: [`Sender::offer`] never waits; when a collector's queue is full the
//! flow is dropped for that collector alone and counted
//! (`sensor_ipfix_dropped_records_total{collector,reason="queue"}`), so a slow or dead
//! collector never holds back the pipeline or another collector. Flows that cannot be sent
//! (TCP not connected, a send that fails or times out) are counted with `reason="send"`.
//!
//! UDP: templates (and the options record with the exporter's counts) go first, then again
//! every `template_refresh_s` and every `template_every_messages` messages, so a collector
//! restarted mid-stream learns them soon. TCP: templates at every connection; a lost
//! connection is retried with backoff (250 ms doubling to 30 s); a write that does not
//! finish within 1 s (the collector stopped reading) closes the connection, since a
//! half-written message cannot be resumed.
use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    sync::{
        Arc,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounter, IntGauge};

use super::config::IpfixConfig;
use super::datagrams;
use super::encode::{Encoder, ExporterCounts, Message};
use crate::enrich::tags::Tagger;
use crate::flow::unit::SharedUnits;
use crate::{flow::FlowRecord, gate::Gate, metrics::Metrics};

/// Where to send: `udp://HOST:PORT` or `tcp://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    pub tcp: bool,
    pub addr: SocketAddr,
    /// As written, for logs and the `collector` label.
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IpfixError {
    #[error("ipfix collector {url:?}: {why} (expected udp://HOST:PORT or tcp://HOST:PORT)")]
    BadUrl { url: String, why: String },
    #[error("ipfix collector {url}: {detail}")]
    Socket { url: String, detail: String },
    #[error(
        "ipfix collector {url}: opening the enrichment sources its records are tagged from: {detail}"
    )]
    Tags { url: String, detail: String },
}

impl Collector {
    /// Parses and resolves `udp://HOST:PORT` / `tcp://HOST:PORT` (HOST a name, an IPv4
    /// address or a bracketed IPv6 one).
    pub fn parse(url: &str) -> Result<Self, IpfixError> {
        let bad = |why: &str| IpfixError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tcp = match scheme {
            "udp" => false,
            "tcp" => true,
            _ => return Err(bad("the scheme must be udp or tcp")),
        };
        let addr = rest
            .to_socket_addrs()
            .map_err(|e| bad(&format!("address: {e}")))?
            .next()
            .ok_or_else(|| bad("the host has no address"))?;
        Ok(Self {
            tcp,
            addr,
            url: url.to_string(),
        })
    }
}

/// Counters of one collector, resolved once.
#[derive(Clone)]
struct Counters {
    sent: IntCounter,
    dropped_queue: IntCounter,
    dropped_send: IntCounter,
    dropped_too_big: IntCounter,
    messages: IntCounter,
    templates: IntCounter,
    connects_ok: IntCounter,
    connects_failed: IntCounter,
    queued: IntGauge,
}

impl Counters {
    fn new(m: &Metrics, c: &str) -> Self {
        Self {
            sent: m.ipfix_sent_records.with_label_values(&[c]),
            dropped_queue: m.ipfix_dropped_records.with_label_values(&[c, "queue"]),
            dropped_send: m.ipfix_dropped_records.with_label_values(&[c, "send"]),
            dropped_too_big: m.ipfix_dropped_records.with_label_values(&[c, "too_big"]),
            messages: m.ipfix_messages.with_label_values(&[c, "data"]),
            templates: m.ipfix_messages.with_label_values(&[c, "template"]),
            connects_ok: m.ipfix_connects.with_label_values(&[c, "ok"]),
            connects_failed: m.ipfix_connects.with_label_values(&[c, "failed"]),
            queued: m.ipfix_queued_records.with_label_values(&[c]),
        }
    }
}

/// What the exporter's queue carries: one flow (live), or a chunk of them (replay), so a
/// replay and the exporter wake each other once a chunk, not once a flow.
#[expect(
    clippy::large_enum_variant,
    reason = "live flows are nearly every item; boxing them would allocate once a flow"
)]
enum Item {
    One(FlowRecord),
    Many(Vec<FlowRecord>),
}

/// Flows a replay hands over at once.
const CHUNK: usize = 256;

/// The pipeline's side of one collector's queue, bounded in flows by its gate.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Item>,
    gate: Arc<Gate>,
    dropped: IntCounter,
    queued: IntGauge,
}

impl Sender {
    /// Queues copies of `flows`, waiting while the queue is full.
    pub fn send_many_blocking(&self, flows: &[FlowRecord]) {
        for chunk in flows.chunks(CHUNK) {
            let n = chunk.len();
            self.gate.reserve_blocking(n);
            match self.tx.send(Item::Many(chunk.to_vec())) {
                Ok(()) => self.queued.add(n as i64),
                Err(_) => {
                    self.gate.taken(n);
                    self.dropped.inc_by(n as u64);
                }
            }
        }
    }

    /// Queues a copy of `f` without waiting; counts it as dropped when the queue is full.
    pub fn offer(&self, f: &FlowRecord) {
        if !self.gate.try_reserve() {
            self.dropped.inc();
            return;
        }
        match self.tx.send(Item::One(f.clone())) {
            Ok(()) => self.queued.inc(),
            Err(_) => {
                self.gate.taken(1);
                self.dropped.inc();
            }
        }
    }
}

/// A running exporter: its sender, and the thread to join after the senders are dropped.
pub struct Exporter {
    pub sender: Sender,
    pub thread: JoinHandle<()>,
}

/// Starts the exporter thread for `collector`. Fails only when the socket cannot be made.
pub fn spawn(
    collector: Collector,
    cfg: &IpfixConfig,
    tags: Tagger,
    units: Option<SharedUnits>,
    metrics: &Metrics,
) -> Result<Exporter, IpfixError> {
    let counters = Counters::new(metrics, &collector.url);
    let transport = Transport::new(&collector)?;
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Gate::new(cfg.queue_records));
    let sender = Sender {
        tx,
        gate: Arc::clone(&gate),
        dropped: counters.dropped_queue.clone(),
        queued: counters.queued.clone(),
    };
    let header =
        if collector.addr.is_ipv6() { 40 } else { 20 } + if collector.tcp { 20 } else { 8 };
    let encoder = Encoder::new(
        cfg.observation_domain,
        cfg.enterprise_number,
        cfg.mtu_bytes.saturating_sub(header),
        tags.is_on(),
    );
    let cfg = cfg.clone();
    let thread = std::thread::Builder::new()
        .name("sensor-ipfix".into())
        .spawn(move || {
            Stage {
                collector,
                cfg,
                encoder,
                transport,
                counters,
                tags,
                units,
                init_ms: unix_ms(),
                sequence: 0,
                exported: 0,
                dropped: 0,
                messages_since_templates: 0,
                templates_at: None,
            }
            .run(rx, &gate)
        })
        .map_err(|e| IpfixError::Socket {
            url: String::new(),
            detail: format!("spawning the exporter thread: {e}"),
        })?;
    Ok(Exporter { sender, thread })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Transport {
    Udp(UdpSocket),
    Tcp {
        addr: SocketAddr,
        stream: Option<TcpStream>,
        backoff: Duration,
        next_try: Instant,
    },
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

impl Transport {
    fn new(c: &Collector) -> Result<Self, IpfixError> {
        if c.tcp {
            return Ok(Self::Tcp {
                addr: c.addr,
                stream: None,
                backoff: BACKOFF_MIN,
                next_try: Instant::now(),
            });
        }
        let local: SocketAddr = if c.addr.is_ipv6() {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        let err = |e: std::io::Error| IpfixError::Socket {
            url: c.url.clone(),
            detail: e.to_string(),
        };
        let s = UdpSocket::bind(local).map_err(err)?;
        s.connect(c.addr).map_err(err)?;
        Ok(Self::Udp(s))
    }
}

struct Stage {
    collector: Collector,
    cfg: IpfixConfig,
    encoder: Encoder,
    transport: Transport,
    counters: Counters,
    tags: Tagger,
    /// Owners' units from their cgroup ids, as the store names them (live runs).
    units: Option<SharedUnits>,
    init_ms: u64,
    /// Data records sent (options records included): the next message's sequence number.
    /// Messages are numbered as they go, so one that could not be sent leaves no gap
    /// (RFC 7011 §3.1 counts the records sent); its records count as dropped.
    sequence: u32,
    exported: u64,
    dropped: u64,
    messages_since_templates: u64,
    templates_at: Option<Instant>,
}

impl Stage {
    fn run(mut self, rx: Receiver<Item>, gate: &Gate) {
        let flush = Duration::from_millis(self.cfg.flush_ms.max(1));
        let mut batch: Vec<FlowRecord> = Vec::with_capacity(64);
        let mut oldest: Option<Instant> = None;
        loop {
            let wait = oldest.map_or(flush, |t| flush.saturating_sub(t.elapsed()));
            match rx.recv_timeout(wait) {
                Ok(item) => {
                    let n = match item {
                        Item::One(f) => {
                            batch.push(f);
                            1
                        }
                        Item::Many(v) => {
                            let n = v.len();
                            batch.extend(v);
                            n
                        }
                    };
                    gate.taken(n);
                    self.counters.queued.sub(n as i64);
                    oldest.get_or_insert_with(Instant::now);
                    // Enough for a few full messages: send without waiting for the timer.
                    if batch.len() >= 64 {
                        self.send_flows(&mut batch);
                        oldest = None;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.send_flows(&mut batch);
                    oldest = None;
                    self.refresh_templates();
                    self.tags.reload_if_due();
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.send_flows(&mut batch);
        let counts = self.counts();
        let mut m = self.encoder.stats(now_s(), counts);
        self.send(&mut m, 0);
        tracing::info!(
            collector = %self.collector.url,
            exported = self.exported,
            dropped = self.dropped,
            "ipfix exporter stopped"
        );
    }

    fn counts(&self) -> ExporterCounts {
        ExporterCounts {
            init_ms: self.init_ms,
            exported: self.exported,
            dropped: self.dropped + self.counters.dropped_queue.get(),
        }
    }

    /// UDP: templates when due (period or message count).
    fn refresh_templates(&mut self) {
        if matches!(self.transport, Transport::Tcp { .. }) {
            return;
        }
        let due = self
            .templates_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.template_refresh_s.max(1)))
            || self.messages_since_templates >= self.cfg.template_every_messages.max(1);
        if due {
            self.send_templates();
        }
    }

    fn send_templates(&mut self) {
        let mut t = self.encoder.templates(now_s());
        let counts = self.counts();
        let mut s = self.encoder.stats(now_s(), counts);
        self.templates_at = Some(Instant::now());
        self.messages_since_templates = 0;
        if self.write(&mut t) {
            self.counters.templates.inc();
            self.write(&mut s);
        }
    }

    fn send_flows(&mut self, batch: &mut Vec<FlowRecord>) {
        if batch.is_empty() {
            return;
        }
        self.refresh_templates();
        if let Some(u) = &self.units {
            u.fill(batch);
        }
        let (msgs, too_big) = self.encoder.flows(now_s(), batch.iter(), &mut self.tags);
        self.counters.dropped_too_big.inc_by(too_big);
        self.dropped += too_big;
        batch.clear();
        if let Transport::Udp(sock) = &self.transport {
            let records: Vec<u32> = msgs.iter().map(|m| m.records).collect();
            let mut bytes: Vec<Vec<u8>> = msgs.into_iter().map(|m| m.bytes).collect();
            let mut fates = Vec::with_capacity(bytes.len());
            datagrams::send_all(
                sock,
                &mut bytes,
                &records,
                &mut self.sequence,
                super::encode::set_sequence,
                |i, ok| fates.push((i, ok)),
            );
            for (i, ok) in fates {
                self.account(records[i], ok);
            }
        } else {
            for mut m in msgs {
                let records = m.records;
                self.send(&mut m, records);
            }
        }
        // After the batch, not among its messages: one sendmmsg call sends them all.
        if matches!(self.transport, Transport::Udp(_))
            && self.messages_since_templates >= self.cfg.template_every_messages.max(1)
        {
            self.send_templates();
        }
    }

    /// Sends one message; counts its records sent or dropped.
    fn send(&mut self, m: &mut Message, records: u32) {
        let ok = self.write(m);
        self.account(records, ok);
    }

    /// Counts one message of `records` data records sent (`ok`) or dropped.
    fn account(&mut self, records: u32, ok: bool) {
        if ok {
            self.messages_since_templates += 1;
            self.counters.messages.inc();
            self.counters.sent.inc_by(u64::from(records));
            self.exported += u64::from(records);
        } else {
            self.counters.dropped_send.inc_by(u64::from(records));
            self.dropped += u64::from(records);
        }
    }

    /// Writes one whole message, numbered now; false when it could not be sent.
    fn write(&mut self, m: &mut Message) -> bool {
        // A new connection's templates and counts go first, and count.
        if matches!(self.transport, Transport::Tcp { .. }) && !self.tcp_connected() {
            return false;
        }
        super::encode::set_sequence(&mut m.bytes, self.sequence);
        let bytes = m.bytes.as_slice();
        let ok = match &mut self.transport {
            Transport::Udp(s) => s.send(bytes).is_ok(),
            Transport::Tcp { .. } => {
                let Transport::Tcp {
                    stream,
                    next_try,
                    backoff,
                    ..
                } = &mut self.transport
                else {
                    unreachable!("tcp")
                };
                let s = stream.as_mut().expect("connected");
                if let Err(e) = s.write_all(bytes) {
                    tracing::warn!(collector = %self.collector.url, "ipfix: write failed, reconnecting: {e}");
                    *stream = None;
                    *next_try = Instant::now() + *backoff;
                    return false;
                }
                true
            }
        };
        if ok {
            self.sequence = self.sequence.wrapping_add(m.records);
        }
        ok
    }

    /// Connects when not connected and the backoff allows; sends the templates first.
    fn tcp_connected(&mut self) -> bool {
        let Transport::Tcp {
            addr,
            stream,
            backoff,
            next_try,
        } = &mut self.transport
        else {
            return true;
        };
        if stream.is_some() {
            return true;
        }
        if Instant::now() < *next_try {
            return false;
        }
        match TcpStream::connect_timeout(addr, Duration::from_secs(1)) {
            Ok(s) => {
                let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                set_send_buffer(&s, self.cfg.tcp_send_buffer_bytes);
                let _ = s.set_nodelay(true);
                *stream = Some(s);
                *backoff = BACKOFF_MIN;
                self.counters.connects_ok.inc();
                tracing::info!(collector = %self.collector.url, "ipfix: connected");
                let mut t = self.encoder.templates(now_s());
                let counts = self.counts();
                let mut o = self.encoder.stats(now_s(), counts);
                super::encode::set_sequence(&mut t.bytes, self.sequence);
                super::encode::set_sequence(&mut o.bytes, self.sequence);
                let Transport::Tcp { stream, .. } = &mut self.transport else {
                    unreachable!("tcp")
                };
                let s = stream.as_mut().expect("just connected");
                if s.write_all(&t.bytes)
                    .and_then(|()| s.write_all(&o.bytes))
                    .is_err()
                {
                    *stream = None;
                    return false;
                }
                self.sequence = self.sequence.wrapping_add(o.records);
                self.counters.templates.inc();
                true
            }
            Err(e) => {
                self.counters.connects_failed.inc();
                tracing::debug!(collector = %self.collector.url, "ipfix: connect failed: {e}");
                *next_try = Instant::now() + *backoff;
                *backoff = (*backoff * 2).min(BACKOFF_MAX);
                false
            }
        }
    }
}

/// `SO_SNDBUF` (the kernel keeps twice this, for its own bookkeeping).
fn set_send_buffer(s: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd as _;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("ipfix: SO_SNDBUF: {}", std::io::Error::last_os_error());
    }
}

fn now_s() -> u32 {
    (unix_ms() / 1000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_collector_urls() {
        let c = Collector::parse("udp://127.0.0.1:4739").unwrap();
        assert!(!c.tcp);
        assert_eq!(c.addr, "127.0.0.1:4739".parse().unwrap());
        let c = Collector::parse("tcp://[::1]:4739").unwrap();
        assert!(c.tcp && c.addr.is_ipv6());
        for bad in ["127.0.0.1:4739", "sctp://127.0.0.1:4739", "udp://127.0.0.1"] {
            let e = Collector::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    fn cfg() -> IpfixConfig {
        IpfixConfig {
            queue_records: 4,
            flush_ms: 20,
            ..IpfixConfig::default()
        }
    }

    /// Over UDP to a socket of this test: templates first, then every flow, each message
    /// within the MTU; a full queue drops and counts, never waits.
    #[test]
    fn udp_sends_templates_then_flows_and_counts_a_full_queue() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let url = format!("udp://{}", sink.local_addr().unwrap());
        let m = Metrics::new();
        let ex = spawn(
            Collector::parse(&url).unwrap(),
            &cfg(),
            Tagger::off(),
            None,
            &m,
        )
        .unwrap();
        let f = FlowRecord::new(
            17,
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
            "file",
        );
        // More than the queue holds, offered at once: some are dropped, none waited on.
        for _ in 0..100 {
            ex.sender.offer(&f);
        }
        drop(ex.sender);
        ex.thread.join().unwrap();
        sink.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut sets = Vec::new();
        while let Ok(n) = sink.recv(&mut buf) {
            assert!(n <= 1400 - 28, "{n} bytes");
            assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), 10);
            assert_eq!(usize::from(u16::from_be_bytes([buf[2], buf[3]])), n);
            sets.push(u16::from_be_bytes([buf[16], buf[17]]));
        }
        assert_eq!(sets.first(), Some(&2), "templates first: {sets:?}");
        let sent = m.ipfix_sent_records.with_label_values(&[&url]).get();
        let dropped = m
            .ipfix_dropped_records
            .with_label_values(&[&url, "queue"])
            .get();
        assert_eq!(sent + dropped, 100, "every flow sent or counted");
        assert!(dropped > 0, "a queue of 4 cannot hold 100 at once");
        assert!(sets.contains(&256), "flows: {sets:?}");
        assert_eq!(
            sets.last(),
            Some(&258),
            "the exporter's counts last: {sets:?}"
        );
    }
}
