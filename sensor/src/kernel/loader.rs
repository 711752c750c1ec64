//! Loads the embedded eBPF object and attaches the hooks this kernel accepts.
//!
//! The BTF-typed `inet_sock_set_state` tracepoint (attached by name from
//! `/sys/kernel/btf/vmlinux`, so it needs no tracefs) is the primary hook: it runs only on
//! state changes, for every TCP socket including those older than the sensor, and reads the
//! kernel's counters at offsets from the running kernel's BTF. `sock_ops` on the cgroup v2
//! root, with a stable context but some 18 callbacks a loopback connection (most of them
//! ones no program can turn off), is the fallback where it cannot load; the classic
//! tracepoint through tracefs the last. Each hook that fails is reported with the kernel's
//! reason; the run goes on with the others.
use std::{fs::File, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, SockOps,
        TracePoint,
    },
};

use super::{
    KernelError,
    btf::{KernelBtf, accept_offsets, sock_offsets},
    cgroup::find_cgroup2_root,
    error_chain,
};
use crate::config::{Config, HookMode};

/// The eBPF object built by build.rs, embedded so the binary is all there is to install.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

/// One hook and whether it runs.
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub name: &'static str,
    pub attached: bool,
    /// Where it attached, or why not (the kernel's reason).
    pub detail: String,
}

pub const HOOK_SOCK_OPS: &str = "sock_ops";
pub const HOOK_TRACEPOINT: &str = "tp_btf/inet_sock_set_state";
pub const HOOK_TRACEPOINT_CLASSIC: &str = "tracepoint/sock/inet_sock_set_state";
/// Attribution hooks: they name processes; the flows come from the hooks above.
pub const HOOK_ACCEPT: &str = "tp_btf/sock_recv_length+sock_send_length (accept side)";
pub const HOOK_SOCK_CREATE: &str = "cgroup/sock_create";
pub const HOOK_DGRAM_EGRESS: &str = "cgroup_skb/egress";
pub const HOOK_DGRAM_INGRESS: &str = "cgroup_skb/ingress";
/// What each attribution hook gives, and what stands in where it does not load.
pub const ATTRIBUTION_HOOKS: [(&str, &str); 4] = [
    (
        HOOK_ACCEPT,
        "the accepting process of each TCP connection; without it, the listener's maker",
    ),
    (
        HOOK_SOCK_CREATE,
        "the maker of each datagram socket; without it, UDP/ICMP flows have no process",
    ),
    (
        HOOK_DGRAM_EGRESS,
        "the sending process of UDP/ICMP flows; without it, none",
    ),
    (
        HOOK_DGRAM_INGRESS,
        "the receiving process of UDP/ICMP flows; without it, none",
    ),
];

/// The loaded programs and the maps the agent reads.
pub struct Probe {
    /// Owns the programs and their links; dropping it detaches them.
    ebpf: Option<Ebpf>,
    events: Option<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    produced: PerCpuArray<MapData, u64>,
    /// Starts of connection ends the programs keep until their close.
    open: HashMap<MapData, u64, sensor_common::SockEvent>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub hooks: Vec<HookStatus>,
}

impl Probe {
    /// Loads the object and attaches according to `cfg.hooks`. Fails only when no hook at
    /// all could be attached.
    pub fn load(cfg: &Config) -> Result<Self, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::Load {
                detail: "this binary was built without its eBPF programs (AYA_BUILD_SKIP)".into(),
            });
        }
        let mut types = KernelTypes::default();
        let (sk_off, io_off) = types.object_offsets();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", cfg.ringbuf_bytes)
            .override_global("SK_OFF", &sk_off, true)
            .override_global("IO_OFF", &io_off, true)
            .load(OBJECT)
            .map_err(|e| KernelError::Load {
                detail: error_chain(&e),
            })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("eBPF log channel unavailable: {}", error_chain(&e));
                None
            }
        };

        let mut hooks = Vec::new();
        if matches!(cfg.hooks, HookMode::Auto | HookMode::Tracepoint) {
            hooks.push(attach_tracepoint(&mut ebpf, &mut types));
        }
        let tracepoint_ok = hooks.iter().any(|h| h.attached);
        if cfg.hooks == HookMode::SockOps || (cfg.hooks == HookMode::Auto && !tracepoint_ok) {
            hooks.push(attach_sock_ops(&mut ebpf, cfg.cgroup_path.clone()));
        }
        let sock_ops_ok = hooks.iter().any(|h| h.attached && h.name == HOOK_SOCK_OPS);
        if cfg.hooks == HookMode::TracepointClassic
            || (matches!(cfg.hooks, HookMode::Auto | HookMode::Tracepoint)
                && !sock_ops_ok
                && !tracepoint_ok)
        {
            hooks.push(attach_classic_tracepoint(&mut ebpf, &mut types));
        }
        if !hooks.iter().any(|h| h.attached) {
            return Err(KernelError::NothingAttached {
                reasons: hooks
                    .iter()
                    .map(|h| format!("{}: {}", h.name, h.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }

        if cfg.attribution {
            let by_cookie = hooks.iter().any(|h| h.attached && h.name == HOOK_SOCK_OPS);
            hooks.push(attach_accept(&mut ebpf, &mut types, by_cookie));
        }
        // Datagram flows come from the packet view alone: the datagram hooks only name
        // their processes, so without capture they would run on every packet of the host
        // (TCP's too) for nothing.
        if cfg.attribution && !cfg.interfaces.is_empty() {
            let cgroup = cfg.cgroup_path.clone();
            hooks.push(attach_sock_create(&mut ebpf, cgroup.clone()));
            hooks.push(attach_dgram(
                &mut ebpf,
                cgroup.clone(),
                CgroupSkbAttachType::Egress,
            ));
            hooks.push(attach_dgram(
                &mut ebpf,
                cgroup,
                CgroupSkbAttachType::Ingress,
            ));
        }

        let events = take_map(&mut ebpf, "EVENTS")?;
        let drops = take_map(&mut ebpf, "DROPS")?;
        let produced = take_map(&mut ebpf, "PRODUCED")?;
        let open = take_map(&mut ebpf, "OPEN")?;
        Ok(Self {
            ebpf: Some(ebpf),
            events: Some(events),
            drops,
            produced,
            open,
            logger,
            hooks,
        })
    }

    /// The ring buffer, for the reader. Call once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Events the kernel could not put in the ring buffer (it was full), all CPUs.
    pub fn ringbuf_drops(&self) -> Result<u64, KernelError> {
        per_cpu_total(&self.drops, "DROPS")
    }

    /// Events the programs tried to put in the ring buffer (read + dropped), all CPUs.
    pub fn ringbuf_produced(&self) -> Result<u64, KernelError> {
        per_cpu_total(&self.produced, "PRODUCED")
    }

    /// The starts the programs still keep: connection ends not closed yet (each as the
    /// `CONNECT` or `ACTIVE_ESTABLISHED` event it would have been). Read after
    /// [`Self::detach`], when nothing changes them any more.
    pub fn open_sockets(&self) -> Vec<sensor_common::SockEvent> {
        self.open
            .iter()
            .filter_map(Result::ok)
            .map(|(_, ev)| ev)
            .collect()
    }

    /// (program, run count, run time ns) of every loaded program; zeros unless
    /// `kernel.bpf_stats_enabled` is on.
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        let Some(ebpf) = &self.ebpf else {
            return Vec::new();
        };
        ebpf.programs()
            .filter_map(|(name, prog)| {
                let fd = prog.fd().ok()?;
                let (runs, ns) = super::progstats::run_stats(fd).ok()?;
                Some((name.to_string(), runs, ns))
            })
            .collect()
    }

    /// Detaches every program; the maps stay readable so the last events can be drained.
    pub fn detach(&mut self) {
        self.ebpf.take();
    }

    pub fn attached_names(&self) -> String {
        let names: Vec<&str> = self
            .hooks
            .iter()
            .filter(|h| h.attached)
            .map(|h| h.name)
            .collect();
        names.join(",")
    }
}

/// Loads the object afresh and attaches `hook` (one of the `HOOK_*` names) alone, then
/// drops everything, which detaches it: for `sensor check`, which must leave nothing
/// attached. The detail says where it attached, or the kernel's reason.
pub fn try_hook(cfg: &Config, hook: &'static str) -> HookStatus {
    if OBJECT.is_empty() {
        return status(
            hook,
            Err("this binary was built without its eBPF programs (AYA_BUILD_SKIP)".into()),
        );
    }
    let mut types = KernelTypes::default();
    let (sk_off, io_off) = types.object_offsets();
    let mut ebpf = match EbpfLoader::new()
        .map_max_entries("EVENTS", cfg.ringbuf_bytes)
        .override_global("SK_OFF", &sk_off, true)
        .override_global("IO_OFF", &io_off, true)
        .load(OBJECT)
    {
        Ok(e) => e,
        Err(e) => {
            return status(
                hook,
                Err(format!("loading the object: {}", error_chain(&e))),
            );
        }
    };
    match hook {
        HOOK_SOCK_OPS => attach_sock_ops(&mut ebpf, cfg.cgroup_path.clone()),
        HOOK_TRACEPOINT => attach_tracepoint(&mut ebpf, &mut types),
        HOOK_TRACEPOINT_CLASSIC => attach_classic_tracepoint(&mut ebpf, &mut types),
        HOOK_ACCEPT => attach_accept(&mut ebpf, &mut types, true),
        HOOK_SOCK_CREATE => attach_sock_create(&mut ebpf, cfg.cgroup_path.clone()),
        HOOK_DGRAM_EGRESS => attach_dgram(
            &mut ebpf,
            cfg.cgroup_path.clone(),
            CgroupSkbAttachType::Egress,
        ),
        HOOK_DGRAM_INGRESS => attach_dgram(
            &mut ebpf,
            cfg.cgroup_path.clone(),
            CgroupSkbAttachType::Ingress,
        ),
        _ => status(hook, Err("no such hook".into())),
    }
    // `ebpf` drops here: links closed, programs and maps freed.
}

/// Slot 0 of a per-CPU counter map, added up over the CPUs.
fn per_cpu_total(map: &PerCpuArray<MapData, u64>, name: &'static str) -> Result<u64, KernelError> {
    let values = map.get(&0, 0).map_err(|e| KernelError::Map {
        name,
        detail: error_chain(&e),
    })?;
    Ok(values.iter().sum())
}

/// Takes a map out of the object as its typed wrapper, so it outlives the programs.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::MissingMap { name })?;
    T::try_from(map).map_err(|e| KernelError::Map {
        name,
        detail: error_chain(&e),
    })
}

fn status(name: &'static str, r: Result<String, String>) -> HookStatus {
    match r {
        Ok(detail) => HookStatus {
            name,
            attached: true,
            detail,
        },
        Err(detail) => HookStatus {
            name,
            attached: false,
            detail,
        },
    }
}

/// The cgroup v2 directory the cgroup programs attach to (the hierarchy's root unless
/// configured), opened.
fn cgroup_dir(cgroup: Option<PathBuf>) -> Result<(PathBuf, File), String> {
    let cgroup = cgroup
        .or_else(find_cgroup2_root)
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_string())?;
    let dir = File::open(&cgroup).map_err(|e| format!("opening {}: {e}", cgroup.display()))?;
    Ok((cgroup, dir))
}

/// The running kernel's BTF, read and parsed at most once per load however many hooks need
/// it: ours for struct offsets, aya's for the BTF-typed programs.
#[derive(Default)]
struct KernelTypes {
    offsets: Option<Result<KernelBtf, String>>,
    programs: Option<Result<Btf, String>>,
}

impl KernelTypes {
    fn offsets(&mut self) -> Result<&KernelBtf, String> {
        self.offsets
            .get_or_insert_with(|| KernelBtf::from_sys_fs().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The offsets written into the object before it loads, as constants the verifier
    /// knows: zeros (`valid == 0`: the BTF-typed programs do nothing) when the kernel's BTF
    /// cannot be read, and then those hooks fail to attach with the reason.
    fn object_offsets(&mut self) -> (sensor_common::SockOffsets, sensor_common::AcceptOffsets) {
        match self.offsets() {
            Ok(btf) => (
                sock_offsets(btf).unwrap_or(sensor_common::SockOffsets::ZERO),
                accept_offsets(btf).unwrap_or(sensor_common::AcceptOffsets::ZERO),
            ),
            Err(_) => (
                sensor_common::SockOffsets::ZERO,
                sensor_common::AcceptOffsets::ZERO,
            ),
        }
    }

    fn programs(&mut self) -> Result<&Btf, String> {
        self.programs
            .get_or_insert_with(|| {
                Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {}", error_chain(&e)))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The accept hook, given where to find the returned socket. `by_cookie`: the closes come
/// from `sock_ops`, which names sockets by cookie.
fn attach_accept(ebpf: &mut Ebpf, types: &mut KernelTypes, by_cookie: bool) -> HookStatus {
    let r = (|| {
        let mut offsets = accept_offsets(types.offsets()?).map_err(|e| e.to_string())?;
        offsets.by_cookie = u32::from(by_cookie);
        let btf = types.programs()?;
        for (name, tracepoint) in [
            ("sensor_sock_recv", "sock_recv_length"),
            ("sensor_sock_send", "sock_send_length"),
        ] {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} missing from the object"))?
                .try_into()
                .map_err(|e| error_chain(&e))?;
            prog.load(tracepoint, btf)
                .map_err(|e| format!("load {tracepoint}: {}", error_chain(&e)))?;
            prog.attach()
                .map_err(|e| format!("attach {tracepoint}: {}", error_chain(&e)))?;
        }
        // Written last: a valid entry makes accepted connections wait for an owner, which
        // only the programs just attached take out.
        map_set_accept(ebpf, offsets)?;
        Ok("first read/write of each accepted socket; offsets from kernel BTF".to_string())
    })();
    status(HOOK_ACCEPT, r)
}

fn map_set_accept(ebpf: &mut Ebpf, offsets: sensor_common::AcceptOffsets) -> Result<(), String> {
    let mut map: Array<_, sensor_common::AcceptOffsets> = ebpf
        .map_mut("ACCEPT_OFFSETS")
        .ok_or("map ACCEPT_OFFSETS missing from the object")?
        .try_into()
        .map_err(|e| error_chain(&e))?;
    map.set(0, offsets, 0)
        .map_err(|e| format!("writing offsets: {}", error_chain(&e)))
}

/// Loads program `name` of type `P` and attaches it to the cgroup v2 directory (the
/// hierarchy's root unless configured) with `attach`: the one way every cgroup hook goes in.
fn attach_to_cgroup<P>(
    ebpf: &mut Ebpf,
    hook: &'static str,
    name: &str,
    cgroup: Option<PathBuf>,
    load: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
    attach: impl FnOnce(&mut P, File) -> Result<(), aya::programs::ProgramError>,
) -> HookStatus
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let r = (|| {
        let (cgroup, dir) = cgroup_dir(cgroup)?;
        let prog: &mut P = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e| error_chain(&e))?;
        load(prog).map_err(|e| format!("load: {}", error_chain(&e)))?;
        attach(prog, dir)
            .map_err(|e| format!("attach to {}: {}", cgroup.display(), error_chain(&e)))?;
        Ok(format!("cgroup {}", cgroup.display()))
    })();
    status(hook, r)
}

fn attach_sock_create(ebpf: &mut Ebpf, cgroup: Option<PathBuf>) -> HookStatus {
    attach_to_cgroup(
        ebpf,
        HOOK_SOCK_CREATE,
        "sensor_sock_create",
        cgroup,
        CgroupSock::load,
        |p: &mut CgroupSock, dir| p.attach(dir, CgroupAttachMode::Single).map(drop),
    )
}

fn attach_dgram(ebpf: &mut Ebpf, cgroup: Option<PathBuf>, dir: CgroupSkbAttachType) -> HookStatus {
    let (hook, name) = match dir {
        CgroupSkbAttachType::Egress => (HOOK_DGRAM_EGRESS, "sensor_dgram_out"),
        CgroupSkbAttachType::Ingress => (HOOK_DGRAM_INGRESS, "sensor_dgram_in"),
    };
    attach_to_cgroup(
        ebpf,
        hook,
        name,
        cgroup,
        CgroupSkb::load,
        |p: &mut CgroupSkb, fd| p.attach(fd, dir, CgroupAttachMode::Single).map(drop),
    )
}

fn attach_sock_ops(ebpf: &mut Ebpf, cgroup: Option<PathBuf>) -> HookStatus {
    // On kernels with BPF links (5.7+) aya attaches through a link, which always shares
    // the cgroup with other programs and takes no flags: "Single" here means flags 0.
    attach_to_cgroup(
        ebpf,
        HOOK_SOCK_OPS,
        "sensor_sock_ops",
        cgroup,
        SockOps::load,
        |p: &mut SockOps, dir| p.attach(dir, CgroupAttachMode::Single).map(drop),
    )
}

/// Gives the classic tracepoint the kernel struct offsets from the running kernel's BTF.
fn load_sock_offsets(ebpf: &mut Ebpf, types: &mut KernelTypes) -> Result<(), String> {
    let offsets = sock_offsets(types.offsets()?).map_err(|e| e.to_string())?;
    let mut map: Array<_, sensor_common::SockOffsets> = ebpf
        .map_mut("OFFSETS")
        .ok_or("map OFFSETS missing from the object")?
        .try_into()
        .map_err(|e| error_chain(&e))?;
    map.set(0, offsets, 0)
        .map_err(|e| format!("writing offsets: {}", error_chain(&e)))
}

fn attach_classic_tracepoint(ebpf: &mut Ebpf, types: &mut KernelTypes) -> HookStatus {
    let r = (|| {
        let format = super::tracefs::inet_sock_set_state_format().map_err(|e| e.to_string())?;
        let mut map: Array<_, sensor_common::TpFormat> = ebpf
            .map_mut("TP_FORMAT")
            .ok_or("map TP_FORMAT missing from the object")?
            .try_into()
            .map_err(|e| error_chain(&e))?;
        map.set(0, format, 0)
            .map_err(|e| format!("writing the format: {}", error_chain(&e)))?;
        // Without BTF the hook still sees connections, but not their byte counters.
        let counters = match load_sock_offsets(ebpf, types) {
            Ok(()) => "with counters (offsets from kernel BTF)".to_string(),
            Err(e) => {
                tracing::warn!("classic tracepoint without byte counters: {e}");
                "without counters".to_string()
            }
        };
        let prog: &mut TracePoint = ebpf
            .program_mut("sensor_set_state_classic")
            .ok_or("program sensor_set_state_classic missing from the object")?
            .try_into()
            .map_err(|e| error_chain(&e))?;
        prog.load()
            .map_err(|e| format!("load: {}", error_chain(&e)))?;
        prog.attach("sock", "inet_sock_set_state")
            .map_err(|e| format!("attach: {}", error_chain(&e)))?;
        Ok(format!("record layout from tracefs, {counters}"))
    })();
    status(HOOK_TRACEPOINT_CLASSIC, r)
}

fn attach_tracepoint(ebpf: &mut Ebpf, types: &mut KernelTypes) -> HookStatus {
    let r = (|| {
        // The program's offsets were written into the object before it loaded
        // (`object_offsets`): without them it would see nothing, so it is not attached.
        sock_offsets(types.offsets()?).map_err(|e| e.to_string())?;
        let btf = types.programs()?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut("sensor_set_state")
            .ok_or("program sensor_set_state missing from the object")?
            .try_into()
            .map_err(|e| error_chain(&e))?;
        prog.load("inet_sock_set_state", btf)
            .map_err(|e| format!("load: {}", error_chain(&e)))?;
        prog.attach()
            .map_err(|e| format!("attach: {}", error_chain(&e)))?;
        Ok("struct offsets from kernel BTF".to_string())
    })();
    status(HOOK_TRACEPOINT, r)
}
