//! Ingest from the kernel: the eBPF programs, their loading, and the capabilities they need.
pub mod btf;
pub mod caps;
pub mod cgroup;
pub mod loader;
pub mod progstats;
pub mod tracefs;

pub use loader::{HookStatus, Probe};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "missing capabilities: {missing}. Run as root (sudo sensor run ...) or grant them, \
         e.g. AmbientCapabilities={missing_plain} in the systemd unit"
    )]
    MissingCapabilities {
        missing: String,
        missing_plain: String,
    },
    #[error("reading this process's capabilities: {0}")]
    Capabilities(#[source] std::io::Error),
    #[error("loading the eBPF object: {detail}")]
    Load { detail: String },
    #[error("no kernel hook could be attached ({reasons})")]
    NothingAttached { reasons: String },
    #[error("eBPF map {name} missing from the object")]
    MissingMap { name: &'static str },
    #[error("eBPF map {name}: {detail}")]
    Map { name: &'static str, detail: String },
    #[error("ring buffer: {0}")]
    RingBuf(#[source] std::io::Error),
}

/// An error and all its sources on one line: aya's top-level messages ("the BPF_PROG_LOAD
/// syscall failed") hide the kernel's reason in the source chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s
}

/// The capabilities `sensor run` needs for these hooks and capture, measured as an
/// unprivileged user holding only these (see deploy/sensor.service): every program needs
/// CAP_BPF for its maps and CAP_PERFMON from the verifier (tp_btf reads kernel memory, and
/// `sock_ops` is refused pointer arithmetic on its ring-buffer record without it);
/// `sock_ops` needs CAP_NET_ADMIN to load and attach to a cgroup; packet sockets need
/// CAP_NET_RAW.
pub fn needed_capabilities(mode: crate::config::HookMode, capture: bool) -> Vec<caps::Cap> {
    use crate::config::HookMode;
    use caps::{CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON};
    let mut needed = match mode {
        HookMode::Tracepoint | HookMode::TracepointClassic => vec![CAP_BPF, CAP_PERFMON],
        HookMode::None => vec![],
        HookMode::Auto | HookMode::SockOps => vec![CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN],
    };
    if capture {
        needed.push(CAP_NET_RAW);
    }
    needed
}

/// Not required, but without them the owners of other users' sockets older than the
/// sensor stay unknown (`/proc/<pid>/fd` is mode 0500 and its links need ptrace access),
/// and a tracefs that only root may read hides the classic tracepoint.
pub const PROC_OWNER_CAPABILITIES: [caps::Cap; 2] =
    [caps::CAP_DAC_READ_SEARCH, caps::CAP_SYS_PTRACE];

/// Checks the capabilities the chosen hooks need; names every missing one.
pub fn require_capabilities(
    mode: crate::config::HookMode,
    capture: bool,
) -> Result<(), KernelError> {
    let needed = needed_capabilities(mode, capture);
    let have = caps::CapSet::current().map_err(KernelError::Capabilities)?;
    let missing = have.missing(&needed);
    if missing.is_empty() {
        return Ok(());
    }
    Err(KernelError::MissingCapabilities {
        missing: caps::names(&missing, ", "),
        missing_plain: caps::names(&missing, " "),
    })
}
