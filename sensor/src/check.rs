//! `sensor check`: probes this host for what `sensor run` needs and says, check by check,
//! what works, what is degraded and what would stop it, before an install finds out at
//! start. Each hook is loaded and attached for real, then detached; nothing is left
//! attached, mounted or created (the database is only probed, never opened for writing).
use std::{
    ffi::CStr,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    capture::live,
    config::{Config, HookMode},
    enrich::{
        geo::{self, GeoDbs, GeoError},
        threat::ThreatLists,
    },
    kernel::{
        self,
        btf::{KernelBtf, sock_offsets},
        caps::{Cap, CapSet},
        cgroup::find_cgroup2_root,
        loader::{
            ATTRIBUTION_HOOKS, HOOK_SOCK_OPS, HOOK_TRACEPOINT, HOOK_TRACEPOINT_CLASSIC, HookStatus,
            try_hook,
        },
        tracefs,
    },
    store::schema::SCHEMA_VERSION,
};

/// A check's outcome: `Fail` on a required check stops `sensor run` (exit 1, or 77 for
/// capabilities); `Warn` is a degraded but working sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "warn")]
    Warn,
    #[serde(rename = "FAIL")]
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One line of the report (one JSON object with `--format json`).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
}

fn row(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Row {
    Row {
        check: check.into(),
        verdict,
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and a summary line.
    #[default]
    Table,
    /// One array of {check, verdict, detail}.
    Json,
}

/// Every check's row, and the capabilities `sensor run` would lack.
#[derive(Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    pub missing_capabilities: Vec<Cap>,
}

impl Report {
    /// 77 (EX_NOPERM) without the needed capabilities, as `sensor run` would exit; 1 when
    /// another required check fails; 0 otherwise, warnings included.
    pub fn exit_code(&self) -> u8 {
        if !self.missing_capabilities.is_empty() {
            77
        } else if self.count(Verdict::Fail) > 0 {
            1
        } else {
            0
        }
    }

    fn count(&self, v: Verdict) -> usize {
        self.rows.iter().filter(|r| r.verdict == v).count()
    }

    pub fn summary(&self) -> String {
        let counts = format!(
            "{} checks: {} ok, {} warnings, {} failed",
            self.rows.len(),
            self.count(Verdict::Ok),
            self.count(Verdict::Warn),
            self.count(Verdict::Fail)
        );
        match self.exit_code() {
            0 => format!("{counts}: ready for `sensor run`"),
            77 => format!(
                "{counts}: not ready, missing {} (run as root or grant them)",
                names(&self.missing_capabilities)
            ),
            _ => format!("{counts}: not ready"),
        }
    }

    pub fn write(&self, format: Format, mut w: impl Write) -> io::Result<()> {
        match format {
            Format::Table => self.write_table(&mut w),
            Format::Json => {
                serde_json::to_writer_pretty(&mut w, &self.rows)?;
                writeln!(w)
            }
        }
    }

    fn write_table(&self, w: &mut impl Write) -> io::Result<()> {
        let width = self
            .rows
            .iter()
            .map(|r| r.check.chars().count())
            .chain(["CHECK".len()])
            .max()
            .unwrap_or(0);
        writeln!(w, "{:width$}  {:7}  DETAIL", "CHECK", "VERDICT")?;
        for r in &self.rows {
            writeln!(
                w,
                "{:width$}  {:7}  {}",
                r.check,
                r.verdict.as_str(),
                r.detail
            )?;
        }
        writeln!(w, "\n{}", self.summary())
    }
}

/// Runs every check against `cfg` (its hooks, interfaces, database, metrics address and
/// enrichment sources).
pub fn check(cfg: &Config) -> Report {
    let mut rows = vec![kernel_version(), btf(), cgroup(cfg)];
    let needed = kernel::needed_capabilities(cfg.hooks, !cfg.interfaces.is_empty());
    let (caps_row, have) = capabilities(&needed);
    let missing_capabilities = match have {
        Some(have) => have.missing(&needed),
        None => needed.clone(),
    };
    rows.push(caps_row);
    rows.extend(hooks(cfg, have));
    rows.extend(attribution_hooks(cfg, have));
    rows.push(capture(cfg));
    rows.push(process_owners(cfg, have));
    rows.push(database(&cfg.db_path));
    rows.push(metrics(&cfg.metrics_addr));
    rows.extend(mmdb(cfg));
    rows.push(threat_lists(cfg));
    Report {
        rows,
        missing_capabilities,
    }
}

fn names(caps: &[Cap]) -> String {
    kernel::caps::names(caps, ", ")
}

fn kernel_version() -> Row {
    const CHECK: &str = "kernel";
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return row(
            CHECK,
            Verdict::Fail,
            format!("uname: {}", io::Error::last_os_error()),
        );
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates every field within its array.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    let (release, machine) = (field(&u.release), field(&u.machine));
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let detail = format!("Linux {release} {machine}");
    if version >= (5, 8) {
        row(CHECK, Verdict::Ok, detail)
    } else {
        row(
            CHECK,
            Verdict::Fail,
            format!("{detail}: older than 5.8, which the BPF ring buffer and CAP_BPF need"),
        )
    }
}

fn btf() -> Row {
    const CHECK: &str = "BTF";
    let result = KernelBtf::from_sys_fs().and_then(|b| sock_offsets(&b).map(|_| ()));
    match result {
        Ok(()) => {
            let kib = fs::metadata(KernelBtf::VMLINUX).map_or(0, |m| m.len() / 1024);
            row(
                CHECK,
                Verdict::Ok,
                format!(
                    "{} ({kib} KiB) parsed; struct sock offsets found",
                    KernelBtf::VMLINUX
                ),
            )
        }
        Err(e) => row(
            CHECK,
            Verdict::Fail,
            format!("{e}: the BTF tracepoint and the kernel's byte counters need it"),
        ),
    }
}

fn cgroup(cfg: &Config) -> Row {
    const CHECK: &str = "cgroup v2";
    match (&cfg.cgroup_path, find_cgroup2_root()) {
        (Some(p), _) if p.is_dir() => {
            row(CHECK, Verdict::Ok, format!("{} (configured)", p.display()))
        }
        (Some(p), _) => row(
            CHECK,
            Verdict::Warn,
            format!("configured cgroup_path {} is not a directory", p.display()),
        ),
        (None, Some(p)) => row(CHECK, Verdict::Ok, format!("mounted at {}", p.display())),
        (None, None) => row(
            CHECK,
            Verdict::Warn,
            "no cgroup2 mount: sock_ops cannot attach; the tracepoints take over",
        ),
    }
}

fn capabilities(needed: &[Cap]) -> (Row, Option<CapSet>) {
    const CHECK: &str = "capabilities";
    let have = match CapSet::current() {
        Ok(h) => h,
        Err(e) => {
            let detail = format!("reading /proc/self/status: {e}");
            return (row(CHECK, Verdict::Fail, detail), None);
        }
    };
    let missing = have.missing(needed);
    let r = if needed.is_empty() {
        row(CHECK, Verdict::Ok, "none needed (no hooks, no capture)")
    } else if missing.is_empty() {
        row(CHECK, Verdict::Ok, format!("effective: {}", names(needed)))
    } else {
        row(
            CHECK,
            Verdict::Fail,
            format!(
                "missing {} (sensor run needs {})",
                names(&missing),
                names(needed)
            ),
        )
    };
    (r, Some(have))
}

/// Each hook alone, attached for real and detached. A hook that fails is a warning while
/// another hook the configured mode would use attaches, else a failure.
fn hooks(cfg: &Config, have: Option<CapSet>) -> Vec<Row> {
    let all = [HOOK_SOCK_OPS, HOOK_TRACEPOINT, HOOK_TRACEPOINT_CLASSIC];
    if cfg.hooks == HookMode::None {
        return all
            .iter()
            .map(|h| row(format!("hook {h}"), Verdict::Ok, "not used (hooks = none)"))
            .collect();
    }
    let used: &[&str] = match cfg.hooks {
        HookMode::Auto => &all,
        HookMode::SockOps => &[HOOK_SOCK_OPS],
        HookMode::Tracepoint => &[HOOK_TRACEPOINT, HOOK_TRACEPOINT_CLASSIC],
        HookMode::TracepointClassic | HookMode::None => &[HOOK_TRACEPOINT_CLASSIC],
    };
    let results: Vec<HookStatus> = all
        .iter()
        .map(|&hook| {
            let mode = if hook == HOOK_SOCK_OPS {
                HookMode::SockOps
            } else {
                HookMode::Tracepoint
            };
            let needed = kernel::needed_capabilities(mode, false);
            let missing = have.map_or_else(|| needed.clone(), |h| h.missing(&needed));
            if !missing.is_empty() {
                return HookStatus {
                    name: hook,
                    attached: false,
                    detail: format!("not tried without {}", names(&missing)),
                };
            }
            if hook == HOOK_TRACEPOINT_CLASSIC {
                classic_tracepoint(cfg)
            } else {
                try_hook(cfg, hook)
            }
        })
        .collect();
    let usable = results.iter().any(|r| r.attached && used.contains(&r.name));
    results
        .into_iter()
        .map(|r| {
            let unused = if used.contains(&r.name) {
                String::new()
            } else {
                let mode = clap::ValueEnum::to_possible_value(&cfg.hooks)
                    .map_or_else(|| format!("{:?}", cfg.hooks), |v| v.get_name().to_string());
                format!(" (not used with --hooks {mode})")
            };
            if r.attached {
                let detail = format!("attached and detached: {}{unused}", r.detail);
                row(format!("hook {}", r.name), Verdict::Ok, detail)
            } else {
                let verdict = if usable || !unused.is_empty() {
                    Verdict::Warn
                } else {
                    Verdict::Fail
                };
                row(
                    format!("hook {}", r.name),
                    verdict,
                    format!("{}{unused}", r.detail),
                )
            }
        })
        .collect()
}

/// Each attribution hook alone, attached for real and detached: what it gives when it
/// loads, and what stands in (with the kernel's reason) when it does not. Never a failure:
/// flows are recorded without them, with fewer processes named.
fn attribution_hooks(cfg: &Config, have: Option<CapSet>) -> Vec<Row> {
    ATTRIBUTION_HOOKS
        .iter()
        .map(|&(hook, gives)| {
            let name = format!("hook {hook}");
            if cfg.hooks == HookMode::None || !cfg.attribution {
                return row(
                    name,
                    Verdict::Ok,
                    "not used (hooks = none or attribution = false)",
                );
            }
            let needed = kernel::needed_capabilities(HookMode::Auto, false);
            let missing = have.map_or_else(|| needed.clone(), |h| h.missing(&needed));
            if !missing.is_empty() {
                return row(
                    name,
                    Verdict::Warn,
                    format!("not tried without {}", names(&missing)),
                );
            }
            let (what, fallback) = gives
                .split_once("; without it, ")
                .unwrap_or((gives, "none"));
            let r = try_hook(cfg, hook);
            if r.attached {
                row(
                    name,
                    Verdict::Ok,
                    format!("attached and detached: {}; gives {what}", r.detail),
                )
            } else {
                row(
                    name,
                    Verdict::Warn,
                    format!("fell back to {fallback}: {}", r.detail),
                )
            }
        })
        .collect()
}

/// Where tracefs is mounted for the probe when it is nowhere yet (fresh machines).
const TRACEFS_DIR: &CStr = c"/sys/kernel/tracing";

/// The classic tracepoint reads its record layout from tracefs: mounted for the probe when
/// it isn't (CAP_SYS_ADMIN), and unmounted again.
fn classic_tracepoint(cfg: &Config) -> HookStatus {
    let failed = |detail: String| HookStatus {
        name: HOOK_TRACEPOINT_CLASSIC,
        attached: false,
        detail,
    };
    if tracefs::tracefs_root().is_some() {
        return try_hook(cfg, HOOK_TRACEPOINT_CLASSIC);
    }
    if let Some(at) = tracefs::tracefs_mount() {
        return failed(format!(
            "tracefs at {} is not readable by this user (it is root's, mode 0700: needs \
             CAP_DAC_READ_SEARCH)",
            at.display()
        ));
    }
    let target = TRACEFS_DIR;
    let dir = target.to_string_lossy();
    // SAFETY: NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return failed(format!(
            "tracefs is not mounted, and mounting it at {dir} failed: {e} (needs \
             CAP_SYS_ADMIN; or mount -t tracefs nodev {dir})"
        ));
    }
    let mut status = try_hook(cfg, HOOK_TRACEPOINT_CLASSIC);
    // SAFETY: NUL-terminated path; the probe's files are closed by now.
    let unmounted = unsafe { libc::umount2(target.as_ptr(), 0) } == 0
        // SAFETY: as above; lazily, should something still hold it.
        || unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0;
    status.detail.push_str(if unmounted {
        "; tracefs mounted for the probe, then unmounted"
    } else {
        "; tracefs mounted for the probe and NOT unmounted"
    });
    status
}

fn capture(cfg: &Config) -> Row {
    const CHECK: &str = "packet capture";
    if cfg.interfaces.is_empty() {
        return row(CHECK, Verdict::Ok, "off (interfaces = [])");
    }
    let ifaces = match live::resolve(&cfg.interfaces) {
        Ok(i) => i,
        Err(e) => return row(CHECK, Verdict::Fail, e.to_string()),
    };
    let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            " (needs CAP_NET_RAW)"
        } else {
            ""
        };
        return row(
            CHECK,
            Verdict::Fail,
            format!("opening an AF_PACKET socket: {e}{hint}"),
        );
    }
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    let detail = if names.is_empty() {
        "AF_PACKET socket opens, but no interface is up".to_string()
    } else {
        format!(
            "AF_PACKET socket opens; would capture on {}",
            names.join(", ")
        )
    };
    row(CHECK, Verdict::Ok, detail)
}

/// Whether the sockets of every process can be tied to it through `/proc/<pid>/fd`, which
/// names the owners of listeners and connections older than the sensor.
fn process_owners(cfg: &Config, have: Option<CapSet>) -> Row {
    const CHECK: &str = "process owners";
    if cfg.hooks == HookMode::None {
        return row(CHECK, Verdict::Ok, "not used (hooks = none)");
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return row(CHECK, Verdict::Warn, "/proc is not readable");
    };
    let mut readable = 0usize;
    let mut hidden: Vec<u32> = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Kernel threads (and zombies) have an empty command line and no sockets.
        if fs::read(entry.path().join("cmdline")).map_or(true, |c| c.is_empty()) {
            continue;
        }
        let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
        match fs::read_dir(entry.path().join("fd")) {
            Err(e) if denied(&e) => hidden.push(pid),
            Err(_) => {}
            Ok(mut fds) => match fds.next() {
                Some(Ok(fd)) => match fs::read_link(fd.path()) {
                    Err(e) if denied(&e) => hidden.push(pid),
                    _ => readable += 1,
                },
                _ => readable += 1,
            },
        }
    }
    let total = readable + hidden.len();
    let missing = have.map_or_else(
        || kernel::PROC_OWNER_CAPABILITIES.to_vec(),
        |h| h.missing(&kernel::PROC_OWNER_CAPABILITIES),
    );
    if hidden.is_empty() {
        row(
            CHECK,
            Verdict::Ok,
            format!("sockets of all {total} processes readable in /proc"),
        )
    } else if missing.is_empty() {
        // Refused despite the capabilities (an LSM, or a process of another user namespace):
        // nothing the operator can grant.
        let pids: Vec<String> = hidden.iter().take(5).map(u32::to_string).collect();
        row(
            CHECK,
            Verdict::Ok,
            format!(
                "sockets of {readable} of {total} processes readable in /proc (the kernel \
                 refuses pid {})",
                pids.join(", ")
            ),
        )
    } else {
        row(
            CHECK,
            Verdict::Warn,
            format!(
                "sockets of {} of {total} processes unreadable: their listeners and \
                 connections older than the sensor get no process (needs {})",
                hidden.len(),
                names(&missing)
            ),
        )
    }
}

/// Writable (a probe file in the directory, removed at once) and of a schema this sensor
/// supports; the database itself is only read.
fn database(path: &Path) -> Row {
    let check = "database";
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    if path.is_dir() {
        return row(
            check,
            Verdict::Fail,
            format!("{} is a directory", path.display()),
        );
    }
    // The nearest existing ancestor is where `sensor run` creates what is missing.
    let mut existing = dir.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return row(
            check,
            Verdict::Fail,
            format!(
                "{} is not writable: {} is not a directory",
                path.display(),
                existing.display()
            ),
        );
    }
    let probe = existing.join(format!(".sensor-check-{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
        }
        Err(e) => {
            return row(
                check,
                Verdict::Fail,
                format!(
                    "{} is not writable: creating a file in {}: {e}",
                    path.display(),
                    existing.display()
                ),
            );
        }
    }
    if !path.exists() {
        let created = if existing == dir {
            String::new()
        } else {
            format!(" with {}", dir.display())
        };
        return row(
            check,
            Verdict::Ok,
            format!(
                "{} will be created{created} (schema {SCHEMA_VERSION})",
                path.display()
            ),
        );
    }
    if let Err(e) = fs::OpenOptions::new().append(true).open(path) {
        return row(
            check,
            Verdict::Fail,
            format!("{} is not writable: {e}", path.display()),
        );
    }
    let version = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)));
    let size = fs::metadata(path).map_or(0, |m| m.len());
    let size = format!("{:.1} MB", size as f64 / 1e6);
    match version {
        Err(e) => row(
            check,
            Verdict::Fail,
            format!("{}: not a readable SQLite database: {e}", path.display()),
        ),
        Ok(v) if v > SCHEMA_VERSION => row(
            check,
            Verdict::Fail,
            format!(
                "{}: schema version {v}, newer than this sensor supports ({SCHEMA_VERSION})",
                path.display()
            ),
        ),
        Ok(0) => row(
            check,
            Verdict::Ok,
            format!(
                "{} writable, {size}; no schema yet, created at start",
                path.display()
            ),
        ),
        Ok(v) if v < SCHEMA_VERSION => row(
            check,
            Verdict::Ok,
            format!(
                "{} writable, {size}; schema version {v}, upgraded to {SCHEMA_VERSION} at start",
                path.display()
            ),
        ),
        Ok(_) => row(
            check,
            Verdict::Ok,
            format!(
                "{} writable, {size}; schema version {SCHEMA_VERSION}",
                path.display()
            ),
        ),
    }
}

fn metrics(addr: &str) -> Row {
    const CHECK: &str = "metrics address";
    if addr.is_empty() {
        return row(CHECK, Verdict::Ok, "off (metrics_addr = \"\")");
    }
    let parsed: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => return row(CHECK, Verdict::Fail, format!("{addr}: {e}")),
    };
    match std::net::TcpListener::bind(parsed) {
        Ok(_) => row(CHECK, Verdict::Ok, format!("{addr} bindable")),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => row(
            CHECK,
            Verdict::Fail,
            format!("{addr}: {e} (is a sensor already running?)"),
        ),
        Err(e) => row(CHECK, Verdict::Fail, format!("{addr}: {e}")),
    }
}

/// The MaxMind files `sensor run` would open, each opened and verified (its whole tree and
/// data section; about a second for a GeoLite2-City in a release build).
fn mmdb(cfg: &Config) -> Vec<Row> {
    const CHECK: &str = "mmdb";
    if !cfg.enrich.enabled {
        return vec![row(
            CHECK,
            Verdict::Ok,
            "enrichment off (enrich.enabled = false)",
        )];
    }
    let mut rows = Vec::new();
    let dbs = if cfg.enrich.mmdb_paths.is_empty() {
        let dirs: Vec<&Path> = geo::DEFAULT_DIRS.iter().map(Path::new).collect();
        match GeoDbs::open_dirs(&dirs) {
            Ok((dbs, skipped)) => {
                for (path, e) in skipped {
                    rows.push(row(
                        file_check(&path),
                        Verdict::Warn,
                        format!("skipped: {e}"),
                    ));
                }
                dbs
            }
            Err(GeoError::NoneFound { .. }) => {
                return vec![row(
                    CHECK,
                    Verdict::Warn,
                    format!(
                        "none configured (enrich.mmdb_paths) or found in {}: no geo or ASN \
                         from databases",
                        geo::DEFAULT_DIRS.join(", ")
                    ),
                )];
            }
            Err(e) => return vec![row(CHECK, Verdict::Fail, e.to_string())],
        }
    } else {
        match GeoDbs::open(&cfg.enrich.mmdb_paths) {
            Ok(dbs) => dbs,
            Err(e) => {
                return vec![row(
                    CHECK,
                    Verdict::Fail,
                    format!("{e} (configured: sensor run refuses to start)"),
                )];
            }
        }
    };
    let verified = dbs.verify();
    for ((path, kind, epoch), (_, outcome)) in dbs.files().into_iter().zip(verified) {
        rows.push(match outcome {
            Ok(()) => row(
                file_check(&path),
                Verdict::Ok,
                format!(
                    "{kind}, built {}, verified: {}",
                    date(epoch),
                    path.display()
                ),
            ),
            Err(e) => row(file_check(&path), Verdict::Fail, format!("{kind}: {e}")),
        });
    }
    rows
}

/// The file's name: the row's detail has the whole path (or the error, which names it).
fn file_check(path: &Path) -> String {
    let name = path.file_name().unwrap_or(path.as_os_str());
    format!("mmdb {}", name.to_string_lossy())
}

/// `YYYY-MM-DD` of a Unix time (UTC), from days since the epoch.
fn date(epoch_s: u64) -> String {
    let (y, m, d) = crate::export::time::civil_from_days((epoch_s / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn threat_lists(cfg: &Config) -> Row {
    const CHECK: &str = "threat lists";
    if !cfg.enrich.enabled {
        return row(
            CHECK,
            Verdict::Ok,
            "enrichment off (enrich.enabled = false)",
        );
    }
    let Some(dir) = &cfg.enrich.threat_dir else {
        return row(CHECK, Verdict::Ok, "none configured (enrich.threat_dir)");
    };
    let lists = match ThreatLists::load(dir) {
        Ok(l) => l.lists(),
        Err(e) => return row(CHECK, Verdict::Fail, e.to_string()),
    };
    if lists.is_empty() {
        return row(
            CHECK,
            Verdict::Warn,
            format!("{}: no list files", dir.display()),
        );
    }
    let entries: usize = lists.iter().map(|l| l.entries).sum();
    let bad: usize = lists.iter().map(|l| l.bad_lines).sum();
    let detail = format!(
        "{} lists, {entries} entries in {}",
        lists.len(),
        dir.display()
    );
    if bad == 0 {
        row(CHECK, Verdict::Ok, detail)
    } else {
        let files: Vec<&str> = lists
            .iter()
            .filter(|l| l.bad_lines > 0)
            .map(|l| l.name.as_str())
            .collect();
        row(
            CHECK,
            Verdict::Warn,
            format!(
                "{detail}; {bad} lines are not addresses ({})",
                files.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::caps::CAP_BPF;

    #[test]
    fn dates_from_epoch() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_577_145_600), "2019-12-24");
        assert_eq!(date(951_782_400), "2000-02-29");
    }

    #[test]
    fn exit_code_prefers_missing_capabilities() {
        let mut r = Report {
            rows: vec![row("a", Verdict::Ok, ""), row("b", Verdict::Warn, "")],
            missing_capabilities: vec![],
        };
        assert_eq!(r.exit_code(), 0, "warnings pass");
        r.rows.push(row("c", Verdict::Fail, ""));
        assert_eq!(r.exit_code(), 1);
        r.missing_capabilities.push(CAP_BPF);
        assert_eq!(r.exit_code(), 77);
        assert!(r.summary().contains("missing CAP_BPF"), "{}", r.summary());
    }

    #[test]
    fn table_is_aligned() {
        let r = Report {
            rows: vec![
                row("kernel", Verdict::Ok, "Linux 6.18"),
                row("hook sock_ops", Verdict::Fail, "EPERM"),
            ],
            missing_capabilities: vec![],
        };
        let mut out = Vec::new();
        r.write(Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let col = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(col(lines[0], "VERDICT"), col(lines[1], "ok"));
        assert_eq!(col(lines[0], "VERDICT"), col(lines[2], "FAIL"));
        assert_eq!(col(lines[0], "DETAIL"), col(lines[2], "EPERM"));
        assert!(
            lines
                .last()
                .unwrap()
                .contains("2 checks: 1 ok, 0 warnings, 1 failed")
        );
    }

    #[test]
    fn database_row_verdicts() {
        let dir = std::env::temp_dir().join(format!("sensor-check-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        fs::write(&file, b"x").unwrap();
        let under_file = database(&file.join("flows.db"));
        assert_eq!(under_file.verdict, Verdict::Fail, "{}", under_file.detail);
        assert!(
            under_file.detail.contains("not a directory"),
            "{}",
            under_file.detail
        );
        let garbage = dir.join("garbage.db");
        fs::write(&garbage, vec![0x5a; 4096]).unwrap();
        let not_sqlite = database(&garbage);
        assert_eq!(not_sqlite.verdict, Verdict::Fail, "{}", not_sqlite.detail);
        assert!(not_sqlite.detail.contains("not a readable SQLite database"));
        fs::remove_file(&garbage).unwrap();
        let real = dir.join("real.db");
        drop(crate::store::open_for_writing(&real).unwrap());
        let current = database(&real);
        assert_eq!(current.verdict, Verdict::Ok, "{}", current.detail);
        assert!(
            current
                .detail
                .contains(&format!("schema version {SCHEMA_VERSION}"))
        );
        let newer = SCHEMA_VERSION + 1;
        rusqlite::Connection::open(&real)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        let too_new = database(&real);
        assert_eq!(too_new.verdict, Verdict::Fail, "{}", too_new.detail);
        assert!(
            too_new
                .detail
                .contains(&format!("schema version {newer}, newer"))
        );
        for f in ["real.db", "real.db-wal", "real.db-shm"] {
            let _ = fs::remove_file(dir.join(f));
        }
        let fresh = database(&dir.join("new/sub/flows.db"));
        assert_eq!(fresh.verdict, Verdict::Ok, "{}", fresh.detail);
        assert!(!dir.join("new").exists(), "only probed, nothing created");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("file")],
            "probe removed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
