//! Amendments: late packets of a TCP connection whose row is already written (the peer's
//! last ACK after a simultaneous close, a retransmitted FIN, a repeated RST) are added to
//! that row, so one connection stays one row and its counts stay exact.
//!
//! The writer remembers, for each row that may still be amended (a packet view's TCP record
//! that ended by FIN or RST), its identity (the unordered 5-tuple and the packet view's
//! start, in ns) and its row id. The packet table sends an amendment within `close_linger`
//! of the record (in the flows' own time), so an entry is forgotten once the flows reaching
//! the writer are `window` newer than it; a later amendment finds nothing and is counted
//! as missed. The rollup never takes a row that may still change ([`Amendable::oldest`]).
use std::{collections::VecDeque, net::SocketAddr};

// foldhash: every captured TCP row is remembered here (SipHash was a tenth of the writer).
use foldhash::HashMap;

use rusqlite::{Transaction, params};

use crate::flow::{EndReason, FlowRecord, record::PROTO_TCP};

/// The unordered 5-tuple (TCP) and the packet view's start.
type Identity = (SocketAddr, SocketAddr, u64);

fn identity(f: &FlowRecord) -> Option<Identity> {
    let start = f.packet_start_ns?;
    Some(if f.src <= f.dst {
        (f.src, f.dst, start)
    } else {
        (f.dst, f.src, start)
    })
}

/// Rows that may still be amended.
pub struct Amendable {
    /// Identity to (row id, the row's source).
    rows: HashMap<Identity, (i64, SocketAddr)>,
    /// In row order: (last_seen_ms, identity, row id), to forget the old ones.
    order: VecDeque<(i64, Identity, i64)>,
    /// How much newer than a row the flows reaching the writer get before it is forgotten.
    window_ms: i64,
    /// The latest `last_seen_ms` written: the flows' own clock.
    clock_ms: i64,
}

/// What became of an amendment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Its row was never written (dropped), pruned, or forgotten.
    Missed,
}

impl Amendable {
    pub fn new(window_ms: u64) -> Self {
        Self {
            rows: HashMap::default(),
            order: VecDeque::new(),
            window_ms: window_ms as i64,
            clock_ms: 0,
        }
    }

    /// Whether a record just inserted may get an amendment later.
    pub fn may_be_amended(f: &FlowRecord) -> bool {
        f.proto == PROTO_TCP
            && !f.amends
            && f.packet_start_ns.is_some()
            && matches!(f.end_reason, EndReason::Fin | EndReason::Rst)
    }

    /// Remembers rows committed (identity of each record and its row id).
    pub fn remember(
        &mut self,
        inserted: impl IntoIterator<Item = (Identity, SocketAddr, i64, i64)>,
    ) {
        for (id, src, row, last_seen_ms) in inserted {
            self.rows.insert(id, (row, src));
            self.order.push_back((last_seen_ms, id, row));
        }
    }

    /// Forgets the `n` rows remembered last (their transaction failed; they come again).
    pub fn forget_last(&mut self, n: usize) {
        for _ in 0..n {
            let Some((_, id, row)) = self.order.pop_back() else {
                return;
            };
            if self.rows.get(&id).is_some_and(|(r, _)| *r == row) {
                self.rows.remove(&id);
            }
        }
    }

    /// Advances the flows' clock and forgets rows past the window.
    pub fn tick(&mut self, last_seen_ms: i64) {
        self.clock_ms = self.clock_ms.max(last_seen_ms);
        while let Some(&(seen, id, row)) = self.order.front() {
            if self.clock_ms - seen <= self.window_ms {
                break;
            }
            self.order.pop_front();
            if self.rows.get(&id).is_some_and(|(r, _)| *r == row) {
                self.rows.remove(&id);
            }
        }
    }

    /// The smallest row id that may still change: the rollup stops before it.
    pub fn oldest(&self) -> Option<i64> {
        self.order.front().map(|&(_, _, row)| row)
    }

    /// Adds amendment `a` to its row, in `tx`.
    pub fn apply(&mut self, tx: &Transaction<'_>, a: &FlowRecord) -> rusqlite::Result<Outcome> {
        let Some(id) = identity(a) else {
            return Ok(Outcome::Missed);
        };
        let Some(&(row, src)) = self.rows.get(&id) else {
            return Ok(Outcome::Missed);
        };
        // The merged row may name the other end as source (the kernel's initiator).
        let same = src == a.src;
        let (sp, dp, sb, db, sf, df) = if same {
            (
                a.src_packets,
                a.dst_packets,
                a.src_bytes,
                a.dst_bytes,
                a.src_tcp_flags,
                a.dst_tcp_flags,
            )
        } else {
            (
                a.dst_packets,
                a.src_packets,
                a.dst_bytes,
                a.src_bytes,
                a.dst_tcp_flags,
                a.src_tcp_flags,
            )
        };
        let n = |v: Option<u64>| v.unwrap_or(0) as i64;
        let f = |v: Option<u8>| i64::from(v.unwrap_or(0));
        let changed = tx.prepare_cached(UPDATE)?.execute(params![
            n(sp),
            n(dp),
            n(sb),
            n(db),
            f(sf),
            f(df),
            a.last_seen_ms,
            row
        ])?;
        Ok(if changed == 1 {
            Outcome::Applied
        } else {
            Outcome::Missed
        })
    }

    /// Rows remembered.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The identity to remember for an inserted record, when it may be amended.
pub fn remembered(f: &FlowRecord, row: i64) -> Option<(Identity, SocketAddr, i64, i64)> {
    Amendable::may_be_amended(f)
        .then(|| identity(f).map(|id| (id, f.src, row, f.last_seen_ms)))
        .flatten()
}

const UPDATE: &str = "UPDATE flows SET
    src_packets = ifnull(src_packets, 0) + ?1, dst_packets = ifnull(dst_packets, 0) + ?2,
    src_bytes = ifnull(src_bytes, 0) + ?3, dst_bytes = ifnull(dst_bytes, 0) + ?4,
    src_tcp_flags = ifnull(src_tcp_flags, 0) | ?5, dst_tcp_flags = ifnull(dst_tcp_flags, 0) | ?6,
    last_seen_ms = max(last_seen_ms, ?7)
    WHERE id = ?8";
