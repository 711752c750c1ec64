//! `beacon`, scored as RITA scores beacons: the connections from one host to one service
//! (address, protocol, port) within `beacon_window_ms`, once there are
//! `beacon_min_connections` of them, get a score from 0 to 1, the mean of
//! - the intervals' regularity: 1 − |Bowley skewness| and 1 − 2·MADM/median of the gaps
//!   between connection starts (RITA's 1 − MADM/median, made stricter so that random
//!   starts score low), and
//! - the sizes' regularity: 1 − |Bowley skewness| and 1 − MADM/median of the bytes each
//!   connection sent.
//!
//! A pair beacons from `beacon_score`. Gaps under [`MIN_GAP_MS`] (a burst, a retry loop)
//! are not a schedule, and a pair whose median gap is that short is not scored.
use std::{collections::VecDeque, net::IpAddr};

use super::{
    alert::{AlertKey, Alerts, Evidence, FlowId, Kind, Port},
    config::DetectConfig,
    facts,
    tracked::Tracked,
};
use crate::flow::FlowRecord;

/// The shortest median gap that is a schedule rather than a burst.
pub const MIN_GAP_MS: i64 = 1_000;

/// One connection of a pair: 16 bytes, its flow rebuilt from the pair when named.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub start_ms: i64,
    /// Bytes the source sent (saturated: only their regularity matters).
    pub bytes: u32,
    /// The source's port, to name the flow.
    pub src_port: u16,
}

struct Samples {
    /// The newest connections, in arrival order: by start too while `sorted` (records
    /// come in end order, mostly the same), sorted before anything reads their order.
    conns: VecDeque<Conn>,
    /// The latest and earliest start in `conns`: kept here, beside the key, so that a
    /// connection in order is taken without reading the samples (a cache miss a flow).
    newest_ms: i64,
    oldest_ms: i64,
    sorted: bool,
    /// Connections since the pair was last scored, and how many it waits for now.
    unscored: u32,
    rescore: u32,
    /// An alert was raised for the pair (it may have ended since).
    alerted: bool,
}

/// A pair is scored when it first has enough connections, then every this many, twice as
/// many after each score below the bar up to [`RESCORE_MAX`]: scoring sorts its samples,
/// too much for every flow of every pair (a pair that turns into a beacon later is found
/// within that many connections).
const RESCORE: u32 = 8;
const RESCORE_MAX: u32 = 64;

pub struct Beacon {
    window_ms: i64,
    min: usize,
    score: f64,
    max_samples: usize,
    /// By [`pair_key`]: the largest of the detectors' maps, so its keys are 8 bytes.
    pairs: Tracked<u64, Samples>,
    /// Scratch space for scoring, kept to score without allocating.
    scratch: Vec<f64>,
}

impl Beacon {
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            window_ms: cfg.beacon_window_ms as i64,
            min: cfg.beacon_min_connections as usize,
            score: cfg.beacon_score,
            max_samples: cfg
                .beacon_max_samples
                .max(cfg.beacon_min_connections as usize),
            pairs: Tracked::new(cfg.max_tracked),
            scratch: Vec::new(),
        }
    }

    pub fn tracked(&self) -> usize {
        self.pairs.len()
    }

    pub fn evictions(&self) -> u64 {
        self.pairs.evictions()
    }

    /// Takes `f` unless it is a `probe` ([`facts::is_probe`]).
    pub fn flow(&mut self, f: &FlowRecord, probe: bool, alerts: &mut Alerts) {
        // Connections that were made: a probe is the scan detector's.
        if !facts::is_whole(f) || !matches!(f.proto, facts::TCP | facts::UDP) || probe {
            return;
        }
        let id = FlowId::of(f);
        let (src, dst) = (f.src.ip(), f.dst.ip());
        let k = pair_key(src, dst, f.proto, f.dst.port());
        let now = f.first_seen_ms;
        let s = self.pairs.get_or_insert_with(k, || Samples {
            conns: VecDeque::new(),
            newest_ms: now,
            oldest_ms: now,
            sorted: true,
            unscored: 0,
            rescore: RESCORE,
            alerted: false,
        });
        s.unscored += 1;
        let c = Conn {
            start_ms: now,
            bytes: facts::bytes_out(f).min(u64::from(u32::MAX)) as u32,
            src_port: f.src.port(),
        };
        // A pair starts with its first connection, and trimming keeps the newest: never
        // empty, so the bounds are always those of `conns`.
        if now < s.newest_ms {
            s.sorted = false;
        }
        s.newest_ms = s.newest_ms.max(now);
        s.oldest_ms = s.oldest_ms.min(now);
        s.conns.push_back(c);
        // The oldest go first: past the window, or past the samples kept.
        let newest = s.newest_ms;
        if s.conns.len() > self.max_samples || newest - s.oldest_ms > self.window_ms {
            s.sort();
            while s.conns.len() > self.max_samples
                || s.conns
                    .front()
                    .is_some_and(|c| newest - c.start_ms > self.window_ms)
            {
                s.conns.pop_front();
            }
            s.oldest_ms = s.conns.front().map_or(newest, |c| c.start_ms);
        }
        if s.conns.len() < self.min {
            return;
        }
        let key = AlertKey {
            kind: Kind::Beacon,
            src,
            dst: Some(dst),
            proto: f.proto,
            port: f.dst.port(),
        };
        let ev = Evidence {
            flow: id,
            target: dst,
            port: Port::of(&id),
            owner: f.src_owner.as_ref(),
        };
        // Only a pair that raised one looks for its alert (a lookup in another map).
        let active = s.alerted && alerts.update(&key, &ev);
        s.alerted = active;
        if s.unscored < s.rescore && s.conns.len() != self.min {
            return;
        }
        s.unscored = 0;
        s.sort();
        let need = if active { 0.0 } else { self.score };
        let Some(score) = score_at_least(&s.conns, &mut self.scratch, need) else {
            s.rescore = (s.rescore * 2).min(RESCORE_MAX);
            return;
        };
        let n = s.conns.len();
        let span_s = (newest - s.conns.front().map_or(newest, |c| c.start_ms)) / 1000;
        let median_gap = median_gap_ms(&s.conns, &mut self.scratch);
        let (min, threshold, port) = (self.min, self.score, ev.port);
        let detail = move || {
            format!(
                "{n} connections to {port} over {span_s} s, every {:.1} s (median), score \
                 {score:.2} (rule: from {min} connections, score at least {threshold})",
                median_gap as f64 / 1000.0,
            )
        };
        if active {
            alerts.describe(&key, score, detail);
            return;
        }
        if score < threshold {
            s.rescore = (s.rescore * 2).min(RESCORE_MAX);
            return;
        }
        s.alerted = true;
        s.rescore = RESCORE;
        // The oldest connection kept, named by its start and port.
        let first = s.conns.front().map_or(id, |c| FlowId {
            start_ms: c.start_ms,
            src: std::net::SocketAddr::new(src, c.src_port),
            ..id
        });
        let owner = f.src_owner.as_ref();
        let evidence = [first, id].into_iter().map(|id| Evidence {
            flow: id,
            target: dst,
            port: Port::of(&id),
            owner,
        });
        let text = detail();
        alerts.raise(key, evidence, (n as u64).saturating_sub(2), score, text);
    }

    pub fn sweep(&mut self, now_ms: i64) {
        let w = self.window_ms;
        self.pairs.retain(|_, s| now_ms - s.newest_ms <= w);
    }
}

impl Samples {
    /// Puts `conns` in start order (stable: ties keep their arrival order).
    fn sort(&mut self) {
        if !self.sorted {
            self.conns.make_contiguous().sort_by_key(|c| c.start_ms);
            self.sorted = true;
        }
    }
}

/// A pair (source, destination, protocol, port) as 64 bits of a fixed-seed hash: keys of
/// 8 bytes instead of 40 keep more of the map in cache. Two pairs share a key with odds of
/// about n²/2^65 (under 10^-8 at the 250,000 pairs `max_tracked` allows); they would then
/// share samples, and an alert, whose parties are the flow's own, would still name a
/// real pair.
fn pair_key(src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> u64 {
    use std::hash::BuildHasher as _;
    static SEED: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5e17_50b5);
    SEED.hash_one((src, dst, proto, port))
}

/// The gaps between the starts of `conns`, into `scratch`.
fn gaps_into(conns: &VecDeque<Conn>, scratch: &mut Vec<f64>) {
    scratch.clear();
    scratch.extend(
        conns
            .iter()
            .zip(conns.iter().skip(1))
            .map(|(a, b)| (b.start_ms - a.start_ms) as f64),
    );
}

fn median_gap_ms(conns: &VecDeque<Conn>, scratch: &mut Vec<f64>) -> i64 {
    gaps_into(conns, scratch);
    scratch.sort_unstable_by(f64::total_cmp);
    quantile(scratch, 0.5) as i64
}

/// The score of `conns` (sorted by start), or None when its gaps are a burst.
pub fn score(conns: &VecDeque<Conn>, scratch: &mut Vec<f64>) -> Option<f64> {
    score_at_least(conns, scratch, 0.0)
}

/// [`score`], or None as soon as the intervals alone show it stays under `need` (the
/// sizes are not scored then).
fn score_at_least(conns: &VecDeque<Conn>, scratch: &mut Vec<f64>, need: f64) -> Option<f64> {
    gaps_into(conns, scratch);
    let gaps = regularity(scratch, MIN_GAP_MS as f64, 2.0)?;
    if (gaps + 1.0) / 2.0 < need {
        return None;
    }
    scratch.clear();
    scratch.extend(conns.iter().map(|c| f64::from(c.bytes)));
    let sizes = regularity(scratch, 0.0, 1.0).unwrap_or(0.0);
    Some((gaps + sizes) / 2.0)
}

/// The mean of 1 − |Bowley skewness| and 1 − `spread` × MADM/median of `v` (sorted here),
/// each in 0..1; None when the median is below `min_median` (or not positive). Gaps are
/// judged with `spread` 2: random starts (a Poisson stream's MADM is half its median)
/// must not pass for a schedule, while ±10% of jitter costs a tenth.
fn regularity(v: &mut [f64], min_median: f64, spread: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(f64::total_cmp);
    let (q1, q2, q3) = (quantile(v, 0.25), quantile(v, 0.5), quantile(v, 0.75));
    if q2 < min_median || q2 <= 0.0 {
        return None;
    }
    let skew = if q3 - q1 > 0.0 {
        (q1 + q3 - 2.0 * q2) / (q3 - q1)
    } else {
        0.0
    };
    for x in v.iter_mut() {
        *x = (*x - q2).abs();
    }
    v.sort_unstable_by(f64::total_cmp);
    let madm = quantile(v, 0.5);
    let skew_score = 1.0 - skew.abs().min(1.0);
    let madm_score = (1.0 - spread * madm / q2).max(0.0);
    Some((skew_score + madm_score) / 2.0)
}

/// The `q` quantile of sorted `v`, interpolated.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(gaps: impl Iterator<Item = i64>, size: impl Fn(usize) -> u64) -> VecDeque<Conn> {
        let mut t = 0;
        let mut out = VecDeque::new();
        for (i, g) in gaps.enumerate() {
            t += g;
            out.push_back(Conn {
                start_ms: t,
                bytes: size(i) as u32,
                src_port: 0,
            });
        }
        out
    }

    #[test]
    fn a_steady_schedule_scores_high_and_noise_low() {
        let mut s = Vec::new();
        // Every 5 s ± 10%, same size.
        let jitter = [0, 300, -200, 450, -500, 100, -350, 250, -50, 400];
        let steady = conns((0..24).map(|i| 5_000 + jitter[i % 10]), |_| 300);
        let steady_score = score(&steady, &mut s).unwrap();
        assert!(steady_score > 0.9, "{steady_score}");
        // Gaps from 1 s to 60 s and sizes all over the place.
        let noisy = conns(
            (0..24).map(|i| [1_000, 60_000, 3_000, 17_000, 2_000, 45_000][i % 6]),
            |i| [100, 90_000, 2_000, 15, 600_000][i % 5],
        );
        let noisy_score = score(&noisy, &mut s).unwrap();
        assert!(noisy_score < 0.6, "{noisy_score}");
        // A burst is no schedule.
        let burst = conns((0..24).map(|_| 20), |_| 300);
        assert!(score(&burst, &mut s).is_none());
    }
}
