//! Kernel timestamps (`bpf_ktime_get_boot_ns`, CLOCK_BOOTTIME) to wall-clock time: the
//! clock packet timestamps (the capture ring's `tp_sec`/`tp_nsec`, CLOCK_REALTIME) are on, so the merge can compare
//! the two views' lifetimes.
use nix::time::{ClockId, clock_gettime};

/// Offset between CLOCK_REALTIME and CLOCK_BOOTTIME, taken when made. NTP slews both clocks
/// alike, so the offset only changes when the wall clock is stepped, and some hosts step it
/// all the time: a VM whose guest agent follows the host's clock was seen stepping it 5 ms
/// a second, more than the merge's 1 ms edge slack within a second. The sensor takes a new
/// offset at every read of the ring buffer (`TcpTracker::set_clock`: two vDSO calls, at
/// least every 50 ms), so kernel times follow the packets' to within a read's interval.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    realtime_minus_boot_ns: i128,
}

impl BootClock {
    pub fn now() -> Self {
        let ns = |id| {
            let t = clock_gettime(id).expect("clock_gettime on a standard clock");
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        let boot = ns(ClockId::CLOCK_BOOTTIME);
        let real = ns(ClockId::CLOCK_REALTIME);
        Self {
            realtime_minus_boot_ns: real - boot,
        }
    }

    /// A clock whose boot time 0 is unix time `offset_ns` (tests).
    pub fn fixed(offset_ns: i128) -> Self {
        Self {
            realtime_minus_boot_ns: offset_ns,
        }
    }

    pub fn unix_ms(&self, boot_ns: u64) -> i64 {
        ((i128::from(boot_ns) + self.realtime_minus_boot_ns) / 1_000_000) as i64
    }

    /// Unix nanoseconds (0 for a time before 1970, which a running kernel does not report).
    pub fn unix_ns(&self, boot_ns: u64) -> u64 {
        (i128::from(boot_ns) + self.realtime_minus_boot_ns).max(0) as u64
    }

    /// CLOCK_BOOTTIME now, in the kernel events' unit.
    pub fn boot_ns_now() -> u64 {
        let t = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_maps_to_current_wall_clock() {
        let c = BootClock::now();
        let ms = c.unix_ms(BootClock::boot_ns_now());
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((ms - wall).abs() < 1000, "{ms} vs {wall}");
    }
}
