//! Capabilities the agent needs, checked before anything is loaded so a missing one is
//! named instead of surfacing as a bare EPERM from the bpf() syscall.
use std::fmt;

/// A Linux capability by number (`include/uapi/linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub bit: u32,
    pub name: &'static str,
}

/// One `pub const` per capability, named as the kernel names it.
macro_rules! caps {
    ($($name:ident = $bit:literal),* $(,)?) => {
        $(pub const $name: Cap = Cap { bit: $bit, name: stringify!($name) };)*
    };
}

caps! {
    CAP_DAC_OVERRIDE = 1,
    CAP_DAC_READ_SEARCH = 2,
    CAP_NET_ADMIN = 12,
    CAP_NET_RAW = 13,
    CAP_SYS_PTRACE = 19,
    CAP_SYS_ADMIN = 21,
    CAP_PERFMON = 38,
    CAP_BPF = 39,
}

/// The capabilities' names, joined by `sep`.
pub fn names(caps: &[Cap], sep: &str) -> String {
    let names: Vec<&str> = caps.iter().map(|c| c.name).collect();
    names.join(sep)
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The effective capability set of this process, from `/proc/self/status`.
#[derive(Debug, Clone, Copy)]
pub struct CapSet(u64);

impl CapSet {
    pub fn current() -> std::io::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Self::parse_status(&status).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no CapEff line in /proc/self/status",
            )
        })
    }

    fn parse_status(status: &str) -> Option<Self> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(hex.trim(), 16).ok().map(Self)
    }

    pub fn has(&self, cap: Cap) -> bool {
        self.0 & (1 << cap.bit) != 0
    }

    /// Which of `needed` are missing. CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON,
    /// and CAP_DAC_OVERRIDE for CAP_DAC_READ_SEARCH, as they do in the kernel.
    pub fn missing(&self, needed: &[Cap]) -> Vec<Cap> {
        needed
            .iter()
            .copied()
            .filter(|&c| {
                let covered = ((c == CAP_BPF || c == CAP_PERFMON) && self.has(CAP_SYS_ADMIN))
                    || (c == CAP_DAC_READ_SEARCH && self.has(CAP_DAC_OVERRIDE));
                !self.has(c) && !covered
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_missing() {
        let root = CapSet::parse_status("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert!(
            root.missing(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN])
                .is_empty()
        );
        let none = CapSet::parse_status("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(
            none.missing(&[CAP_BPF, CAP_NET_ADMIN]),
            vec![CAP_BPF, CAP_NET_ADMIN]
        );
        // CAP_SYS_ADMIN alone covers BPF and PERFMON but not NET_ADMIN.
        let sysadmin = CapSet(1 << 21);
        assert_eq!(
            sysadmin.missing(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]),
            vec![CAP_NET_ADMIN]
        );
        // CAP_DAC_OVERRIDE covers CAP_DAC_READ_SEARCH, not CAP_SYS_PTRACE.
        let dac = CapSet(1 << 1);
        assert_eq!(
            dac.missing(&[CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE]),
            vec![CAP_SYS_PTRACE]
        );
    }
}
