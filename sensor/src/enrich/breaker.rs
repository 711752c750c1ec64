//! A circuit breaker for a network source: after enough failures in a row (timeouts,
//! garbage) the source is taken to be down, and lookups are shed at once instead of each
//! waiting out its timeout — 10,000 addresses behind a hung DNS server would otherwise
//! cost 10,000 / concurrency timeouts, and hold every slot the whole time.
//!
//! While open, one probe is let through per cool-down (which doubles after each failed
//! probe, up to [`MAX_COOLDOWN`]); an answer closes the breaker again. Shed lookups are
//! counted by the caller (`sensor_enrich_lookups_total{result="shed"}`) and asked again
//! after the source's retry interval. Pure: handed `now`, no clock of its own.
use std::time::{Duration, Instant};

/// Failures in a row that open the breaker, by default.
pub const THRESHOLD: u32 = 8;
/// The first cool-down; it doubles on each failed probe.
pub const MIN_COOLDOWN: Duration = Duration::from_secs(5);
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    failures: u32,
    /// While open: when the next probe may go, and the cool-down after that one.
    open: Option<(Instant, Duration)>,
    probing: bool,
}

/// What the caller may do with one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Ask the source.
    Ask,
    /// Ask it: this lookup is the probe of an open breaker.
    Probe,
    /// Don't: the source is down.
    Shed,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    pub fn new() -> Self {
        Self::with_threshold(THRESHOLD)
    }

    /// Opens after `threshold` failures in a row (at least 1).
    pub fn with_threshold(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: 0,
            open: None,
            probing: false,
        }
    }

    /// Failures since the last answer.
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Whether [`Breaker::admit`] would shed now (without taking the probe).
    pub fn sheds(&self, now: Instant) -> bool {
        match self.open {
            None => false,
            Some((at, _)) => now < at || self.probing,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.open {
            None => Admit::Ask,
            Some((at, _)) if now >= at && !self.probing => {
                self.probing = true;
                Admit::Probe
            }
            Some(_) => Admit::Shed,
        }
    }

    /// The source answered (a name, "no name", an error code from a live server).
    pub fn success(&mut self) {
        self.failures = 0;
        self.open = None;
        self.probing = false;
    }

    /// The source did not answer usefully. Returns true when this opened the breaker (to
    /// log once).
    pub fn failure(&mut self, now: Instant, probe: bool) -> bool {
        self.failures = self.failures.saturating_add(1);
        match self.open {
            Some((_, cooldown)) if probe => {
                let next = (cooldown * 2).min(MAX_COOLDOWN);
                self.open = Some((now + cooldown, next));
                self.probing = false;
                false
            }
            Some(_) => false,
            None if self.failures >= self.threshold => {
                self.open = Some((now + MIN_COOLDOWN, MIN_COOLDOWN * 2));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_probes_with_backoff() {
        let t0 = Instant::now();
        let mut b = Breaker::new();
        for _ in 0..THRESHOLD - 1 {
            assert_eq!(b.admit(t0), Admit::Ask);
            assert!(!b.failure(t0, false));
        }
        // An answer in between starts the count again.
        b.success();
        for _ in 0..THRESHOLD - 1 {
            b.failure(t0, false);
        }
        assert!(!b.is_open());
        assert!(b.failure(t0, false), "the threshold-th failure opens it");
        assert_eq!(b.admit(t0), Admit::Shed);
        assert_eq!(
            b.admit(t0 + MIN_COOLDOWN - Duration::from_millis(1)),
            Admit::Shed
        );
        // One probe per cool-down, not two.
        let t1 = t0 + MIN_COOLDOWN;
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::Shed);
        // Lookups that were in flight when it opened don't extend it.
        assert!(!b.failure(t1, false));
        // The probe failed: the next waits twice as long.
        b.failure(t1, true);
        assert_eq!(b.admit(t1 + MIN_COOLDOWN), Admit::Shed);
        let t2 = t1 + MIN_COOLDOWN * 2;
        assert_eq!(b.admit(t2), Admit::Probe);
        b.success();
        assert_eq!(b.admit(t2), Admit::Ask);
        assert!(!b.is_open());
    }

    #[test]
    fn the_cooldown_is_bounded() {
        let mut now = Instant::now();
        let mut b = Breaker::new();
        for _ in 0..THRESHOLD {
            b.failure(now, false);
        }
        for _ in 0..20 {
            now += MAX_COOLDOWN;
            assert_eq!(b.admit(now), Admit::Probe);
            b.failure(now, true);
        }
        assert_eq!(b.admit(now + MAX_COOLDOWN), Admit::Probe);
    }
}
