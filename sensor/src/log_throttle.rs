//! Repeated warnings, rate-limited: a source that fails the same way for every packet (a
//! DNS server answering garbage, a corrupt database hit by every lookup) would otherwise
//! write one line per packet and bury everything else in the log.
//!
//! Policy: for the noisy targets ([`is_throttled`]: the resolver's crates and the
//! enrichment sources), each call site — one source and one kind of failure — shows at
//! most one WARN/ERROR line per [`WINDOW`]. What it holds back is counted, and
//! [`report`] (called every second by the enrichment worker and at the end of
//! `sensor enrich`) says "N more like this" for every call site whose window has passed.
//! Nothing is lost silently: the counts are in the log, and the failures themselves in
//! `sensor_enrich_lookups_total`.
use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// At most one line per call site in this long.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A call site: the event's target and its name (file:line).
type Key = (&'static str, &'static str);

#[derive(Debug)]
struct Entry {
    shown_at: Instant,
    held: u64,
}

/// The pure core: which events to show, and what was held back.
#[derive(Debug)]
pub struct Throttle<K> {
    window: Duration,
    seen: HashMap<K, Entry>,
}

impl<K: std::hash::Hash + Eq + Clone> Throttle<K> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
        }
    }

    /// Whether an event of `key` at `now` is shown; one that isn't is counted (and stays
    /// counted, for [`Throttle::due`], when a later one is shown).
    pub fn admit(&mut self, key: K, now: Instant) -> bool {
        match self.seen.get_mut(&key) {
            Some(e) if now.duration_since(e.shown_at) < self.window => {
                e.held += 1;
                false
            }
            Some(e) => {
                e.shown_at = now;
                true
            }
            None => {
                self.seen.insert(
                    key,
                    Entry {
                        shown_at: now,
                        held: 0,
                    },
                );
                true
            }
        }
    }

    /// The keys with events held back whose window has passed (every one with `all`),
    /// with their counts; each starts a new window.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<(K, u64)> {
        let mut out = Vec::new();
        for (k, e) in &mut self.seen {
            if e.held > 0 && (all || now.duration_since(e.shown_at) >= self.window) {
                out.push((k.clone(), e.held));
                e.held = 0;
                e.shown_at = now;
            }
        }
        out
    }
}

fn global() -> &'static Mutex<Throttle<Key>> {
    static T: OnceLock<Mutex<Throttle<Key>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(Throttle::new(WINDOW)))
}

/// The targets whose warnings are rate-limited: the resolver's crates and the sources'
/// lookups (not, say, the bad lines of `sensor enrich`'s input, each of which is news).
pub fn is_throttled(target: &str) -> bool {
    target.starts_with("hickory")
        || [
            "sensor::enrich::rdns",
            "sensor::enrich::cymru",
            "sensor::enrich::cascade",
            "sensor::enrich::geo",
        ]
        .contains(&target)
}

/// The `tracing` layer that applies the policy (add it before the formatting layer).
pub struct ThrottleLayer;

impl<S: Subscriber> Layer<S> for ThrottleLayer {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || !is_throttled(meta.target()) {
            return true;
        }
        global().lock().map_or(true, |mut t| {
            t.admit((meta.target(), meta.name()), Instant::now())
        })
    }
}

/// Logs "N more like this" for the call sites whose window has passed (all of them with
/// `all`, at the end of a run).
pub fn report(all: bool) {
    let due = match global().lock() {
        Ok(mut t) => t.due(Instant::now(), all),
        Err(_) => return,
    };
    for ((target, name), n) in due {
        tracing::warn!(
            target: "sensor::log",
            "{n} more like this from {target} ({name}) (at most one line per {} s)",
            WINDOW.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_window_and_the_rest_counted() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(t.admit("dns", t0));
        // 215 more in 9 s: none shown, all counted.
        for i in 0..215 {
            assert!(!t.admit("dns", t0 + Duration::from_millis(40 * i)));
        }
        // Another kind is not held back by the first.
        assert!(t.admit("cymru", t0));
        assert!(t.due(t0 + Duration::from_secs(9), false).is_empty());
        assert_eq!(
            t.due(t0 + Duration::from_secs(10), false),
            vec![("dns", 215)]
        );
        // The summary started a new window: the next one is held back, then reported.
        assert!(!t.admit("dns", t0 + Duration::from_secs(11)));
        assert_eq!(t.due(t0 + Duration::from_secs(12), true), vec![("dns", 1)]);
        // Quiet for a window: shown again.
        assert!(t.admit("dns", t0 + Duration::from_secs(30)));
        assert!(t.due(t0 + Duration::from_secs(60), true).is_empty());
    }
}
