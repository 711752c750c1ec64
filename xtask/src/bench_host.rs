//! `cargo xtask bench --only host-cost` (as root): what watching the network costs the host
//! it watches, in one run, with rounds that cycle through every mode (each round in another
//! order) and medians over the rounds.
//!
//! 1. **Connection rate on loopback.** `connrate` (tests/src/bin) makes `HOST_COST_CONNS`
//!    connections one after another (connect, a byte each way, close) with no monitor, with
//!    `sensor run --no-capture` (kernel hooks only, attribution hooks included), with
//!    `sensor run --no-capture --no-attribution` (the flow hooks alone), with
//!    `sensor run --no-capture --hooks sock-ops` (the cgroup fallback hook), with
//!    `sensor run --interface lo`, with `sensor run --interface lo --no-attribution`, with
//!    `tcpdump -i lo -w /dev/null` and with `nfpcapd -i lo` (Debian `nfdump`, installed
//!    here when missing). For each: connections a second, the ratio to no monitor, and the
//!    monitor's own CPU (utime + stime from /proc/PID/stat, its children's included) per
//!    connection and as a share of one core. Every monitored run is bracketed by runs with
//!    no monitor, and the bars are judged on these paired ratios, each with a bootstrap
//!    interval that says whether the run resolved it (this VM's speed wanders by ±15%
//!    from one run to the next, more than the 3% the bars ask about).
//! 2. **Live capture throughput.** Two network namespaces joined by a veth pair; `pktgen`
//!    (tests/src/bin) sends UDP frames from one end, two threads pinned to CPUs 0 and 1, at a
//!    few offered rates;
//!    the sensor (`--hooks none --interface hcv-cap`) or tcpdump captures the other end,
//!    pinned to CPU 1. Packets captured a second, drops (the sensor's metrics, tcpdump's exit
//!    summary), and CPU per captured packet.
//!
//! Smaller runs: `HOST_COST_ROUNDS` (connection rounds, default 20: with fewer, the
//! intervals are too wide to judge a 3% bar), `HOST_COST_CONNS` (per round, default 20000), `HOST_COST_CAPTURE_ROUNDS` (default 3), `HOST_COST_CAPTURE_SECS`
//! (each capture run, default 3), `HOST_COST_RATES` (offered packets a second,
//! comma-separated, `max` for unpaced, `none` for no capture runs; default `50000,200000,max`),
//! `HOST_COST_MODES` (the connection modes to run, comma-separated keys: `full`,
//! `full-no-attribution`, `no-capture`, `flow-hooks`, `sock-ops`, `tcpdump`, `nfpcapd`;
//! default all), `HOST_COST_MAX_STEAL_PCT`
//! (a connection run during which the hypervisor stole more than this share of a core is
//! run again; default 5).
//!
//! Every process started here is stopped with SIGTERM and waited for ([`Proc`]'s drop), and
//! the namespaces are deleted ([`Veth`]'s drop), on errors too.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{cargo, measure::http_get, run};

const DIR: &str = "target/bench/host-cost";
const SENSOR: &str = "target/release/sensor";
const CONNRATE: &str = "target/release/connrate";
/// Tries a connection run gets before a stolen one is kept anyway (and said so).
const MAX_TRIES: usize = 6;
const PKTGEN: &str = "target/release/pktgen";
/// Inside the capture namespace, where nothing else listens.
const NS_METRICS_ADDR: &str = "127.0.0.1:19464";

struct Settings {
    rounds: usize,
    conns: u64,
    capture_rounds: usize,
    capture_secs: f64,
    /// A connection run during which the hypervisor took more than this share of a core is
    /// run again, up to [`MAX_TRIES`] times: steal is noise from outside the machine.
    max_steal: f64,
    /// Offered packets a second; 0 is unpaced.
    rates: Vec<u64>,
    /// `HOST_COST_MODES`: the connection modes to run (by [`ConnMode::key`]); all when
    /// unset. No monitor always runs.
    modes: Option<Vec<ConnMode>>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v}: not a number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Self> {
        let rates = std::env::var("HOST_COST_RATES").unwrap_or("50000,200000,max".into());
        let rates = rates
            .split(',')
            .filter(|r| r.trim() != "none")
            .map(|r| match r.trim() {
                "max" => Ok(0),
                n => n
                    .parse()
                    .map_err(|_| anyhow!("HOST_COST_RATES: {n} is not a number or max")),
            })
            .collect::<Result<Vec<u64>>>()?;
        let s = Self {
            rounds: env_or("HOST_COST_ROUNDS", 20)?,
            conns: env_or("HOST_COST_CONNS", 20_000)?,
            capture_rounds: env_or("HOST_COST_CAPTURE_ROUNDS", 3)?,
            capture_secs: env_or("HOST_COST_CAPTURE_SECS", 3.0)?,
            max_steal: env_or("HOST_COST_MAX_STEAL_PCT", 5.0)? / 100.0,
            rates,
            modes: match std::env::var("HOST_COST_MODES") {
                Ok(list) => Some(
                    list.split(',')
                        .map(|k| {
                            CONN_MODES
                                .into_iter()
                                .find(|m| m.key() == k.trim())
                                .ok_or_else(|| {
                                    anyhow!(
                                        "HOST_COST_MODES: {k} is none of {}",
                                        CONN_MODES.map(|m| m.key()).join(", ")
                                    )
                                })
                        })
                        .collect::<Result<_>>()?,
                ),
                Err(_) => None,
            },
        };
        if s.rounds == 0 || s.conns == 0 || s.capture_rounds == 0 || s.capture_secs <= 0.0 {
            bail!("HOST_COST_* must be positive");
        }
        Ok(s)
    }
}

pub fn host_cost() -> Result<()> {
    if !crate::setup::is_root() {
        eprintln!(
            "xtask: *** SKIPPED host cost: needs root (kernel hooks, packet capture, \
             namespaces) ***"
        );
        return Ok(());
    }
    let settings = Settings::from_env()?;
    run(cargo().args(["build", "--release", "-p", "sensor", "-p", "sensor-tests"]))?;
    std::fs::create_dir_all(DIR)?;
    // An empty config: the defaults, whatever /etc/sensor holds.
    std::fs::write(config_path(), "")?;
    let nfpcapd = match crate::setup::ensure_commands(&[("nfpcapd", "nfdump")]) {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("could not install nfdump: {e:#}")),
    };
    if let Err(why) = &nfpcapd {
        eprintln!("\nxtask: *** nfpcapd WILL NOT RUN: {why} ***\n");
    }
    let conn = connection_rate(&settings, nfpcapd)?;
    // Printed at once: a later part that fails must not take this one with it.
    println!("\n{conn}");
    // Both flow hooks, so the cheaper one is shown in one run, and the full sensor with its
    // datagram hooks.
    let mut programs = String::new();
    for args in [
        &["--no-capture"][..],
        &["--no-capture", "--hooks", "sock-ops"],
        &["--interface", "lo"],
    ] {
        match kernel_programs(&settings, args) {
            Ok(t) => programs.push_str(&t),
            Err(e) => programs.push_str(&format!(
                "\n*** Kernel programs ({}): NOT MEASURED: {e:#} ***\n",
                args.join(" ")
            )),
        }
        programs.push('\n');
    }
    println!("{programs}");
    let capture = if settings.rates.is_empty() {
        "Live capture: not run (HOST_COST_RATES=none).\n".to_string()
    } else {
        capture_throughput(&settings)?
    };
    println!("{capture}");
    Ok(())
}

fn config_path() -> PathBuf {
    Path::new(DIR).join("empty.toml")
}

// ---------------------------------------------------------------------------------------
// Processes

/// A process this bench started; dropping it sends SIGTERM and waits (SIGKILL after 20 s).
/// Its stderr is kept, line by line.
struct Proc {
    name: String,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("stderr")?;
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until a line of its stderr contains `needle`; fails if it exits first.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            if let Some(st) = self.exited() {
                bail!(
                    "{} exited ({st}) before saying {needle:?}:\n{}",
                    self.name,
                    self.log().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not say {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits; the exit status and every line of stderr.
    fn stop(mut self) -> Result<(ExitStatus, Vec<String>)> {
        let child = self.child.take().context("stopped twice")?;
        let st = terminate(child)?;
        // The reader thread ends at EOF; give it a moment to push the last lines.
        std::thread::sleep(Duration::from_millis(50));
        Ok((st, self.log()))
    }
}

fn terminate(mut child: Child) -> Result<ExitStatus> {
    if let Some(st) = child.try_wait()? {
        return Ok(st);
    }
    // SAFETY: plain kill(2) of our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "xtask: pid {} ignored SIGTERM for 20 s: SIGKILL",
        child.id()
    );
    child.kill()?;
    Ok(child.wait()?)
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = terminate(child);
        }
    }
}

/// Runs a helper to its end (its own bounds stop it); its stdout.
fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number after `key` in a line like `SENT 10 SECS 1.5`.
fn field(text: &str, key: &str) -> Result<f64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == key)
        .and_then(|w| w[1].parse().ok())
        .with_context(|| format!("no {key} in {text:?}"))
}

// ---------------------------------------------------------------------------------------
// CPU time from /proc

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// /proc/PID/stat's numeric fields from the ppid on: [0] is the ppid (field 4), [10..14]
/// utime, stime, cutime, cstime (fields 14 to 17).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU seconds of `pid` and its descendants: each one's utime + stime, plus what its reaped
/// children used (cutime + cstime).
fn tree_cpu_secs(pid: u32) -> Result<f64> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in std::fs::read_dir("/proc")? {
        let Ok(p) = e?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(f) = stat_fields(p) {
            children.entry(f[0] as u32).or_default().push(p);
        }
    }
    let mut ticks = 0u64;
    let mut todo = vec![pid];
    let mut found = false;
    while let Some(p) = todo.pop() {
        let Some(f) = stat_fields(p) else { continue };
        found |= p == pid;
        ticks += f[10..14].iter().sum::<u64>();
        todo.extend(children.get(&p).into_iter().flatten());
    }
    if !found {
        bail!("process {pid} is gone");
    }
    Ok(ticks as f64 / clock_ticks())
}

/// CPU seconds the hypervisor has given to other guests while this one wanted to run.
/// On these shared machines it is the main noise: a round with steal ran slower for
/// reasons outside the machine, so it is run again (see `Settings::max_steal`).
fn machine_steal_secs() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let steal: u64 = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat: no cpu line")?
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .context("/proc/stat: no steal field")?;
    Ok(steal as f64 / clock_ticks())
}

/// CPU seconds the whole machine has spent busy (neither idle nor waiting for I/O).
fn machine_busy_secs() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<u64> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat: no cpu line")?
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = cpu.iter().take(8).sum::<u64>() - cpu[3] - cpu[4];
    Ok(busy as f64 / clock_ticks())
}

/// What the rest of the machine does meanwhile: its busy CPU outside this process and its
/// descendants (interrupt and softirq time that no process is charged with counts here
/// too). Another build on the host shows here; a run it disturbs says so.
struct Others {
    busy: f64,
    steal: f64,
    ours: f64,
    at: Instant,
    /// Monitors this bench did not start, running at the start: their hooks and packet
    /// sockets see this bench's traffic too.
    foreign: Vec<String>,
}

/// `pid comm` of every sensor, tcpdump or nfpcapd that is not this process's descendant.
fn foreign_monitors() -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if !matches!(comm, "sensor" | "tcpdump" | "nfpcapd") {
            continue;
        }
        // Walk up the parents: ours if we meet this process.
        let (mut p, mut ours) = (pid, false);
        for _ in 0..64 {
            match stat_fields(p) {
                Some(f) if f[0] as u32 == me => {
                    ours = true;
                    break;
                }
                Some(f) if f[0] > 1 => p = f[0] as u32,
                _ => break,
            }
        }
        if !ours {
            found.push(format!("{pid} {comm}"));
        }
    }
    found
}

impl Others {
    fn start() -> Result<Self> {
        Ok(Self {
            busy: machine_busy_secs()?,
            steal: machine_steal_secs()?,
            ours: tree_cpu_secs(std::process::id())?,
            at: Instant::now(),
            foreign: foreign_monitors(),
        })
    }

    /// Cores the rest of the machine kept busy, on average, since `start`.
    fn cores(&self) -> Result<f64> {
        let busy = machine_busy_secs()? - self.busy;
        let ours = tree_cpu_secs(std::process::id())? - self.ours;
        Ok(((busy - ours) / self.at.elapsed().as_secs_f64()).max(0.0))
    }

    /// Cores' worth of time the hypervisor took away since `start`.
    fn stolen(&self) -> Result<f64> {
        Ok(((machine_steal_secs()? - self.steal) / self.at.elapsed().as_secs_f64()).max(0.0))
    }
}

/// Lines saying how busy the rest of the machine was during the rounds and which other
/// monitors ran, loud when that may have moved the figures.
fn others_note(v: &[f64], foreign: &[&[String]]) -> String {
    let (_, hi) = min_max(v);
    let med = median(v);
    let line = format!(
        "the rest of the machine kept {:.0}% of a core busy per run (median; max {:.0}%)",
        med * 100.0,
        hi * 100.0
    );
    let mut out = if med > 0.1 {
        format!("*** DISTURBED: {line}: other work ran during the benchmark ***")
    } else {
        line
    };
    let mut seen: Vec<&String> = foreign.iter().flat_map(|f| f.iter()).collect();
    seen.sort();
    seen.dedup();
    if !seen.is_empty() {
        let runs = foreign.iter().filter(|f| !f.is_empty()).count();
        out.push_str(&format!(
            "\n*** DISTURBED: in {runs} of {} runs another monitor was running (pid comm: {}); \
             its hooks or packet sockets saw this traffic too ***",
            foreign.len(),
            seen.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Statistics and tables

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The 5th and 95th percentiles of `median(a) / median(b)` (of `median(a)` when `b` is
/// empty) over samples drawn again with replacement, each vector on its own, 4000 draws
/// from a fixed seed: how far this run's noise leaves the ratio uncertain.
fn ratio_interval(a: &[f64], b: &[f64]) -> (f64, f64) {
    if a.len() < 2 || b.len() == 1 {
        return (f64::NAN, f64::NAN);
    }
    // xorshift64*: reproducible, and good enough to draw indexes.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize
    };
    let mut draw = |v: &[f64]| {
        let again: Vec<f64> = (0..v.len()).map(|_| v[next() % v.len()]).collect();
        median(&again)
    };
    let mut ratios: Vec<f64> = (0..4000)
        .map(|_| {
            let x = draw(a);
            if b.is_empty() { x } else { x / draw(b) }
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.05), at(0.95))
}

/// "0.902 (90% interval 0.851–0.990): not resolved" for a ratio against a bar it should reach.
fn against_bar(ratio: f64, (lo, hi): (f64, f64), bar: f64) -> String {
    let verdict = if lo >= bar {
        "met"
    } else if hi < bar {
        "NOT met"
    } else {
        "not resolved by this run (the interval holds the bar)"
    };
    format!("{ratio:.3} (90% interval {lo:.3}–{hi:.3}; bar {bar}): {verdict}")
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// "1234567" as "1,234,567".
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n|", head.join(" | "));
    for _ in head {
        out.push_str("---|");
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text; an error when
/// the series is absent, so that a renamed metric fails here instead of reading as zero.
fn metric(text: &str, series: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .with_context(|| format!("no series {series} in the sensor's metrics"))
}

// ---------------------------------------------------------------------------------------
// 1. Connection rate on loopback

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ConnMode {
    NoMonitor,
    SensorCapture,
    /// `--interface lo --no-attribution`: capture and the flow hooks without the
    /// attribution hooks (first I/O, and the datagram hooks that attach only with capture),
    /// to show what attribution costs a full sensor.
    SensorCaptureFlowHooks,
    SensorNoCapture,
    /// `--no-capture --no-attribution`: the flow hooks alone, to show the attribution
    /// hooks' own cost.
    SensorFlowHooks,
    /// `--no-capture --hooks sock-ops`: the cgroup `sock_ops` fallback instead of the BTF
    /// tracepoint (auto mode's hook before), to compare the two flow hooks in one run.
    SensorSockOps,
    Tcpdump,
    Nfpcapd,
}

const CONN_MODES: [ConnMode; 8] = [
    ConnMode::NoMonitor,
    ConnMode::SensorCapture,
    ConnMode::SensorCaptureFlowHooks,
    ConnMode::SensorNoCapture,
    ConnMode::SensorFlowHooks,
    ConnMode::SensorSockOps,
    ConnMode::Tcpdump,
    ConnMode::Nfpcapd,
];

impl ConnMode {
    fn label(self) -> &'static str {
        match self {
            Self::NoMonitor => "no sensor",
            Self::SensorCapture => "`sensor run` (capture on lo)",
            Self::SensorCaptureFlowHooks => "`sensor run --no-attribution` (capture on lo)",
            Self::SensorNoCapture => "`sensor run --no-capture`",
            Self::SensorFlowHooks => "`sensor run --no-capture --no-attribution`",
            Self::SensorSockOps => "`sensor run --no-capture --hooks sock-ops`",
            Self::Tcpdump => "`tcpdump -i lo -w /dev/null`",
            Self::Nfpcapd => "`nfpcapd -i lo`",
        }
    }

    /// The mode's name in `HOST_COST_MODES`.
    fn key(self) -> &'static str {
        match self {
            Self::NoMonitor => "none",
            Self::SensorCapture => "full",
            Self::SensorCaptureFlowHooks => "full-no-attribution",
            Self::SensorNoCapture => "no-capture",
            Self::SensorFlowHooks => "flow-hooks",
            Self::SensorSockOps => "sock-ops",
            Self::Tcpdump => "tcpdump",
            Self::Nfpcapd => "nfpcapd",
        }
    }

    fn is_sensor(self) -> bool {
        !matches!(self, Self::NoMonitor | Self::Tcpdump | Self::Nfpcapd)
    }

    fn captures(self) -> bool {
        matches!(self, Self::SensorCapture | Self::SensorCaptureFlowHooks)
    }
}

/// One connection round of one mode.
struct ConnSample {
    rate: f64,
    /// The monitor's CPU seconds while the connections ran, and that window's length.
    cpu_secs: f64,
    wall_secs: f64,
    conns: f64,
    /// What the monitor says it lost (the sensor's drop counters, tcpdump's kernel drops).
    dropped: f64,
    /// Cores the rest of the machine kept busy meanwhile.
    others: f64,
    /// Cores' worth of time the hypervisor took away meanwhile.
    stolen: f64,
    /// Monitors this bench did not start, running at the round's start.
    foreign: Vec<String>,
    /// connrate's own CPU seconds: the kernel's work for the hooks is charged here.
    load_cpu_secs: f64,
    /// The rate over the mean rate of the runs with no monitor just before and after it
    /// (NaN for those runs themselves).
    paired: f64,
}

/// A free TCP port on 127.0.0.1 for the sensor's metrics.
fn free_addr() -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

fn remove_db(db: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

fn sensor_cmd(db: &Path, metrics_addr: &str) -> Command {
    let mut c = Command::new(SENSOR);
    c.arg("run")
        .arg("--config")
        .arg(config_path())
        .arg("--db")
        .arg(db)
        .args(["--metrics-addr", metrics_addr]);
    c
}

/// The sensor's drop counters, summed: ring buffer, capture (kernel and queue), store.
fn sensor_drops(text: &str, capture: bool) -> Result<f64> {
    let mut d = metric(text, "sensor_ringbuf_dropped_events_total")?
        + metric(text, "sensor_store_dropped_rows_total")?
        + metric(text, "sensor_merge_dropped_flows_total")?;
    if capture {
        d += metric(
            text,
            "sensor_capture_dropped_packets_total{reason=\"kernel\"}",
        )? + metric(
            text,
            "sensor_capture_dropped_packets_total{reason=\"queue\"}",
        )?;
    }
    Ok(d)
}

/// "N packets dropped by kernel" and the like, from tcpdump's exit summary.
/// `what` names the plural ("packets ..."); tcpdump writes "1 packet ..." for one.
fn tcpdump_count(log: &[String], what: &str) -> Result<f64> {
    let one = what.replacen("packets", "packet", 1);
    log.iter()
        .find_map(|l| {
            l.strip_suffix(what)
                .or_else(|| l.strip_suffix(one.as_str()))
                .and_then(|n| n.trim().parse().ok())
        })
        .with_context(|| format!("tcpdump printed no \"{what}\":\n{}", log.join("\n")))
}

fn conn_round(mode: ConnMode, s: &Settings) -> Result<ConnSample> {
    let db = Path::new(DIR).join("conn.db");
    let metrics_addr = free_addr()?;
    let mut monitor = match mode {
        ConnMode::NoMonitor => None,
        ConnMode::SensorCapture
        | ConnMode::SensorCaptureFlowHooks
        | ConnMode::SensorNoCapture
        | ConnMode::SensorFlowHooks
        | ConnMode::SensorSockOps => {
            remove_db(&db);
            let mut c = sensor_cmd(&db, &metrics_addr);
            match mode {
                ConnMode::SensorCapture => c.args(["--interface", "lo"]),
                ConnMode::SensorCaptureFlowHooks => {
                    c.args(["--interface", "lo", "--no-attribution"])
                }
                ConnMode::SensorNoCapture => c.arg("--no-capture"),
                ConnMode::SensorSockOps => c.args(["--no-capture", "--hooks", "sock-ops"]),
                _ => c.args(["--no-capture", "--no-attribution"]),
            };
            let mut p = Proc::spawn("sensor", &mut c)?;
            p.wait_for("sensor ready", Duration::from_secs(60))?;
            Some(p)
        }
        ConnMode::Tcpdump => {
            let mut p = Proc::spawn(
                "tcpdump",
                Command::new("tcpdump").args(["-n", "-i", "lo", "-w", "/dev/null"]),
            )?;
            p.wait_for("listening on", Duration::from_secs(10))?;
            Some(p)
        }
        ConnMode::Nfpcapd => {
            let dir = Path::new(DIR).join("nfpcapd");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let mut p = Proc::spawn(
                "nfpcapd",
                Command::new("nfpcapd").args(["-i", "lo", "-l"]).arg(&dir),
            )?;
            // nfpcapd logs to syslog, not stderr: give it a moment, then see it still runs.
            std::thread::sleep(Duration::from_millis(1500));
            if let Some(st) = p.exited() {
                bail!("nfpcapd exited at start ({st}): {}", p.log().join("\n"));
            }
            Some(p)
        }
    };
    // Let a starting monitor finish its own start-up work before the window opens.
    std::thread::sleep(Duration::from_millis(300));
    let cpu = |m: &Option<Proc>| m.as_ref().map_or(Ok(0.0), |p| tree_cpu_secs(p.pid()));
    let cpu0 = cpu(&monitor)?;
    let others = Others::start()?;
    let t0 = Instant::now();
    let out = output(
        Command::new(CONNRATE).args(["--conns", &s.conns.to_string(), "--max-secs", "120"]),
        "connrate",
    )?;
    let wall_secs = t0.elapsed().as_secs_f64();
    let cpu_secs = cpu(&monitor)? - cpu0;
    let foreign = others.foreign.clone();
    let stolen = others.stolen()?;
    let others = others.cores()?;
    let dropped = if mode.is_sensor() {
        let text = http_get(&metrics_addr, "/metrics")?;
        sensor_drops(&text, mode.captures())?
    } else {
        0.0
    };
    let mut dropped_by_kernel = 0.0;
    if let Some(p) = monitor.take() {
        let (st, log) = p.stop()?;
        match mode {
            ConnMode::Tcpdump => {
                dropped_by_kernel = tcpdump_count(&log, " packets dropped by kernel")?;
            }
            m if m.is_sensor() && !st.success() => {
                bail!("the sensor exited with {st}:\n{}", log.join("\n"))
            }
            ConnMode::Nfpcapd if !st.success() => {
                eprintln!("xtask: nfpcapd exited with {st} when stopped");
            }
            _ => {}
        }
    }
    Ok(ConnSample {
        rate: field(&out, "RATE")?,
        cpu_secs,
        wall_secs,
        conns: field(&out, "CONNS")?,
        dropped: dropped + dropped_by_kernel,
        others,
        stolen,
        foreign,
        load_cpu_secs: field(&out, "CPU")?,
        paired: f64::NAN,
    })
}

fn connection_rate(s: &Settings, nfpcapd: Result<(), String>) -> Result<String> {
    let mut failed: HashMap<ConnMode, String> = HashMap::new();
    if let Err(why) = nfpcapd {
        failed.insert(ConnMode::Nfpcapd, why);
    }
    let mut samples: HashMap<ConnMode, Vec<ConnSample>> = HashMap::new();
    let mut reruns: HashMap<ConnMode, usize> = HashMap::new();
    // One run of `mode`, run again while the hypervisor steals too much; None when a mode
    // that may fail (nfpcapd) could not run.
    let mut measure = |mode: ConnMode,
                       round: usize,
                       failed: &mut HashMap<ConnMode, String>|
     -> Result<Option<ConnSample>> {
        let mut tries = 0;
        let got = loop {
            tries += 1;
            match conn_round(mode, s) {
                Ok(x) if x.stolen > s.max_steal && tries < MAX_TRIES => {
                    eprintln!(
                        "xtask: host-cost round {}/{} {}: {:.0} conn/s with {:.0}% of a \
                         core stolen by the hypervisor: run again",
                        round + 1,
                        s.rounds,
                        mode.label(),
                        x.rate,
                        x.stolen * 100.0
                    );
                    *reruns.entry(mode).or_default() += 1;
                }
                other => break other,
            }
        };
        match got {
            Ok(x) => {
                eprintln!(
                    "xtask: host-cost round {}/{} {}: {:.0} conn/s, monitor {:.2} CPU s \
                     in {:.2} s, rest of the machine {:.0}% of a core",
                    round + 1,
                    s.rounds,
                    mode.label(),
                    x.rate,
                    x.cpu_secs,
                    x.wall_secs,
                    x.others * 100.0
                );
                Ok(Some(x))
            }
            Err(e) if mode == ConnMode::Nfpcapd => {
                eprintln!("\nxtask: *** nfpcapd CANNOT RUN, left out: {e:#} ***\n");
                failed.insert(mode, format!("{e:#}"));
                Ok(None)
            }
            Err(e) => Err(e.context(format!("connection rate, {}", mode.label()))),
        }
    };
    // Every monitored run is bracketed by runs with no monitor, a few seconds apart: its
    // paired ratio is its rate over the mean of those two, which cancels the machine's
    // drifts slower than that (this VM's speed wanders by a tenth within a minute).
    let monitored: Vec<ConnMode> = CONN_MODES
        .into_iter()
        .filter(|m| *m != ConnMode::NoMonitor && s.modes.as_ref().is_none_or(|k| k.contains(m)))
        .collect();
    let mut before = f64::NAN;
    let mut waiting: Option<(ConnMode, usize)> = None;
    // A run with no monitor: kept, and it closes the bracket of the run waiting for it.
    let bracket = |none: ConnSample,
                   samples: &mut HashMap<ConnMode, Vec<ConnSample>>,
                   waiting: &mut Option<(ConnMode, usize)>,
                   before: &mut f64| {
        let after = none.rate;
        samples.entry(ConnMode::NoMonitor).or_default().push(none);
        if let Some((m, at)) = waiting.take() {
            let x = &mut samples.get_mut(&m).expect("sampled")[at];
            x.paired = x.rate / ((*before + after) / 2.0);
        }
        *before = after;
    };
    for round in 0..s.rounds {
        for i in 0..monitored.len() {
            // Each round starts one mode later, so no mode always follows the same one.
            let mode = monitored[(round + i) % monitored.len()];
            if failed.contains_key(&mode) {
                continue;
            }
            if let Some(none) = measure(ConnMode::NoMonitor, round, &mut failed)? {
                bracket(none, &mut samples, &mut waiting, &mut before);
            }
            if let Some(x) = measure(mode, round, &mut failed)? {
                let v = samples.entry(mode).or_default();
                v.push(x);
                waiting = Some((mode, v.len() - 1));
            }
        }
    }
    if let Some(none) = measure(ConnMode::NoMonitor, s.rounds - 1, &mut failed)? {
        bracket(none, &mut samples, &mut waiting, &mut before);
    }
    let base = samples.get(&ConnMode::NoMonitor).map_or(f64::NAN, |v| {
        median(&v.iter().map(|x| x.rate).collect::<Vec<_>>())
    });
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for mode in CONN_MODES {
        if mode != ConnMode::NoMonitor && !monitored.contains(&mode) {
            continue; // left out by HOST_COST_MODES
        }
        let Some(v) = samples.get(&mode) else {
            let why = failed.get(&mode).map_or("no samples", String::as_str);
            rows.push(vec![
                mode.label().into(),
                "DID NOT RUN".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            notes.push(format!("{}: did not run: {why}", mode.label()));
            continue;
        };
        let rates: Vec<f64> = v.iter().map(|x| x.rate).collect();
        let rate = median(&rates);
        let (lo, hi) = min_max(&rates);
        let cpu = if mode == ConnMode::NoMonitor {
            "-".to_string()
        } else {
            let per_conn = median(
                &v.iter()
                    .map(|x| x.cpu_secs / x.conns * 1e6)
                    .collect::<Vec<_>>(),
            );
            let share = median(
                &v.iter()
                    .map(|x| x.cpu_secs / x.wall_secs * 100.0)
                    .collect::<Vec<_>>(),
            );
            if per_conn > 0.0 {
                format!("{per_conn:.1} µs/conn ({share:.0}% of a core)")
            } else {
                format!(
                    "< {:.1} µs/conn (under one clock tick a round)",
                    1e6 / clock_ticks() / s.conns as f64
                )
            }
        };
        let dropped: f64 = v.iter().map(|x| x.dropped).sum();
        if dropped > 0.0 {
            notes.push(format!(
                "{}: reported {} lost (events, packets or rows) over its {} rounds",
                mode.label(),
                thousands(dropped),
                v.len()
            ));
        }
        let load = median(
            &v.iter()
                .map(|x| x.load_cpu_secs / x.conns * 1e6)
                .collect::<Vec<_>>(),
        );
        rows.push(vec![
            mode.label().into(),
            thousands(rate),
            format!("{:.2}", rate / base),
            cpu,
            format!("{load:.1} µs/conn"),
            format!("{}–{}", thousands(lo), thousands(hi)),
        ]);
    }
    let mut out = format!(
        "Connection rate on loopback: {} sequential connections a round (connect, 1 byte each \
         way, close), {} rounds cycling through the modes, medians; CPU = the monitor's \
         utime+stime (children included) while the connections ran. The kernel's work for \
         a monitor (eBPF programs, copies to packet sockets) runs in the connecting \
         processes' context and shows in their rate and in connrate's own CPU (client and \
         server, getrusage), not in the monitor's.\n\n",
        thousands(s.conns as f64),
        s.rounds
    );
    out.push_str(&table(
        &[
            "mode",
            "conn/s",
            "ratio to no sensor",
            "monitor's own CPU",
            "connrate's own CPU",
            "conn/s range",
        ],
        &rows,
    ));
    for n in notes {
        out.push_str(&format!("\n*** {n}"));
    }
    let paired_of = |m: ConnMode| -> Vec<f64> {
        samples.get(&m).map_or(Vec::new(), |v| {
            v.iter()
                .map(|x| x.paired)
                .filter(|r| r.is_finite())
                .collect()
        })
    };
    // Against no sensor: the median paired ratio. Between two monitors: the ratio of their
    // median paired ratios.
    let bar = |a: ConnMode, b: Option<ConnMode>, bar: f64| {
        let x = paired_of(a);
        let y = b.map_or(Vec::new(), paired_of);
        if x.is_empty() || (b.is_some() && y.is_empty()) {
            return "not run (HOST_COST_MODES)".to_string();
        }
        let r = if y.is_empty() {
            median(&x)
        } else {
            median(&x) / median(&y)
        };
        against_bar(r, ratio_interval(&x, &y), bar)
    };
    out.push_str(&format!(
        "\nPaired ratios: each monitored run over the mean of the runs with no monitor just \
         before and after it, medians; the 90% interval is a bootstrap over the runs (what \
         this run's noise leaves uncertain).\n\n\
         - kernel hooks alone (`--no-capture`, attribution included) against no sensor: \
         {}\n\
         - full sensor against no sensor: {}; tcpdump against no sensor: {}\n\
         - full sensor against tcpdump: {}\n\
         - attribution hooks, without capture (`--no-capture` against `--no-capture \
         --no-attribution`): {}\n\
         - attribution hooks with capture (`sensor run` against `sensor run \
         --no-attribution`, the datagram hooks included): {}\n",
        bar(ConnMode::SensorNoCapture, None, 0.97),
        bar(ConnMode::SensorCapture, None, 0.97),
        bar(ConnMode::Tcpdump, None, 0.97),
        bar(ConnMode::SensorCapture, Some(ConnMode::Tcpdump), 1.0),
        bar(
            ConnMode::SensorNoCapture,
            Some(ConnMode::SensorFlowHooks),
            0.97
        ),
        bar(
            ConnMode::SensorCapture,
            Some(ConnMode::SensorCaptureFlowHooks),
            0.97
        ),
    ));
    let all: Vec<&ConnSample> = samples.values().flatten().collect();
    let rerun: usize = reruns.values().sum();
    let kept_stolen = all.iter().filter(|x| x.stolen > s.max_steal).count();
    out.push_str(&format!(
        "\nSteal: {rerun} runs were run again because the hypervisor took more than {:.0}% of \
         a core while they ran (up to {MAX_TRIES} tries a run); {kept_stolen} of the {} runs \
         kept were still above it.",
        s.max_steal * 100.0,
        all.len()
    ));
    let others: Vec<f64> = all.iter().map(|x| x.others).collect();
    let foreign: Vec<&[String]> = all.iter().map(|x| x.foreign.as_slice()).collect();
    out.push_str(&format!("\n{}", others_note(&others, &foreign)));
    out.push('\n');
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// 1b. What each kernel program costs a connection

/// `(name, run_cnt, run_time_ns)` of every loaded program named `sensor_*`, from
/// `bpftool prog show` (the kernel counts while `kernel.bpf_stats_enabled` is 1).
fn program_stats() -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new("bpftool").args(["prog", "show"]).output()?;
    if !out.status.success() {
        bail!(
            "bpftool prog show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let Some(name) = after("name").filter(|n| n.starts_with("sensor_")) else {
            continue;
        };
        let num = |key: &str| after(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        found.push((name.to_string(), num("run_cnt"), num("run_time_ns")));
    }
    Ok(found)
}

/// Sets `kernel.bpf_stats_enabled` and puts it back to 0 on drop.
struct BpfStats;

impl BpfStats {
    fn enable() -> Result<Self> {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

/// One more run with the sensor's arguments `args`, apart from the timed rounds (the
/// kernel's counting adds two clock reads a program run): how often each program ran a
/// connection and for how long. This is the kernel-side CPU a connection pays, charged to
/// the connecting processes, which the monitor's own CPU above leaves out.
fn kernel_programs(s: &Settings, args: &[&str]) -> Result<String> {
    crate::setup::ensure_commands(&[("bpftool", "bpftool")])?;
    let db = Path::new(DIR).join("programs.db");
    remove_db(&db);
    let metrics_addr = free_addr()?;
    let mut c = sensor_cmd(&db, &metrics_addr);
    c.args(args);
    let mut p = Proc::spawn("sensor", &mut c)?;
    p.wait_for("sensor ready", Duration::from_secs(60))?;
    let stats = BpfStats::enable()?;
    let mut tries = 0;
    let (before, after, out, stolen) = loop {
        tries += 1;
        let before = program_stats()?;
        let others = Others::start()?;
        let out = output(
            Command::new(CONNRATE).args(["--conns", &s.conns.to_string(), "--max-secs", "120"]),
            "connrate",
        )?;
        let after = program_stats()?;
        let stolen = others.stolen()?;
        if stolen <= s.max_steal || tries >= MAX_TRIES {
            break (before, after, out, stolen);
        }
    };
    drop(stats);
    drop(p);
    let conns = field(&out, "CONNS")?;
    let mut rows = Vec::new();
    let (mut total_runs, mut total_ns) = (0.0, 0.0);
    for (name, cnt, ns) in &after {
        let (c0, n0) = before
            .iter()
            .find(|(b, ..)| b == name)
            .map_or((0, 0), |(_, c, n)| (*c, *n));
        let (runs, time) = ((cnt - c0) as f64, (ns - n0) as f64);
        total_runs += runs;
        total_ns += time;
        rows.push(vec![
            format!("`{name}`"),
            format!("{:.1}", runs / conns),
            if runs > 0.0 {
                format!("{:.0}", time / runs)
            } else {
                "-".into()
            },
            format!("{:.2}", time / conns / 1000.0),
        ]);
    }
    rows.push(vec![
        "all".into(),
        format!("{:.1}", total_runs / conns),
        "-".into(),
        format!("{:.2}", total_ns / conns / 1000.0),
    ]);
    Ok(format!(
        "Kernel programs, `sensor run {}`, one run of {} connections apart from the \
         rounds (kernel.bpf_stats_enabled, {:.0}% of a core stolen meanwhile): the CPU the \
         hooks take from the connecting processes.\n\n{}",
        args.join(" "),
        thousands(conns),
        stolen * 100.0,
        table(
            &[
                "program",
                "runs a connection",
                "ns a run",
                "µs a connection"
            ],
            &rows
        )
    ))
}

// ---------------------------------------------------------------------------------------
// 2. Live capture throughput on a veth pair

/// Two namespaces joined by a veth pair (`hcv-gen` in one, `hcv-cap` in the other),
/// IPv6 off so that nothing but the generator's frames crosses; deleted on drop.
struct Veth {
    gen_ns: String,
    cap_ns: String,
}

const GEN_DEV: &str = "hcv-gen";
const CAP_DEV: &str = "hcv-cap";

impl Veth {
    fn create() -> Result<Self> {
        let id = std::process::id();
        let v = Self {
            gen_ns: format!("hc-gen-{id}"),
            cap_ns: format!("hc-cap-{id}"),
        };
        // From here on, drop deletes whatever was made.
        for ns in [&v.gen_ns, &v.cap_ns] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
            run(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]))?;
        }
        run(Command::new("ip").args([
            "link", "add", GEN_DEV, "netns", &v.gen_ns, "type", "veth", "peer", "name", CAP_DEV,
            "netns", &v.cap_ns,
        ]))?;
        for (ns, dev, addr) in [
            (&v.gen_ns, GEN_DEV, "10.204.0.1/24"),
            (&v.cap_ns, CAP_DEV, "10.204.0.2/24"),
        ] {
            run(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        Ok(v)
    }

    /// `ip netns exec NS taskset -c CPU PROGRAM`: pinned, in the namespace (both exec, so
    /// the child's pid is the program's).
    fn exec(ns: &str, cpu: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            ns,
            "taskset",
            "-c",
            &cpu.to_string(),
            program,
        ]);
        c
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for ns in [&self.gen_ns, &self.cap_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `f` on a thread that has joined namespace `ns`'s network (setns is per thread).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on a namespace file we hold open; it moves this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("the thread in {ns} panicked"))?
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum CapMode {
    /// The generator alone: what the link and CPU 0 can offer.
    Nothing,
    Sensor,
    Tcpdump,
}

impl CapMode {
    fn label(self) -> &'static str {
        match self {
            Self::Nothing => "nothing (generator alone)",
            Self::Sensor => "`sensor run --hooks none`",
            Self::Tcpdump => "`tcpdump -w /dev/null`",
        }
    }
}

struct CapSample {
    offered_pps: f64,
    sent: f64,
    captured: f64,
    captured_pps: f64,
    dropped: f64,
    cpu_secs: f64,
    busy_secs: f64,
    /// Cores the rest of the machine kept busy meanwhile.
    others: f64,
    /// Monitors this bench did not start, running at the run's start.
    foreign: Vec<String>,
    /// pktgen's own CPU seconds, the kernel's delivery to packet sockets included.
    sender_cpu_secs: f64,
}

/// After the generator stops, waits until the monitor is idle again (less than one clock
/// tick of CPU in 200 ms; at most 5 s): it has read what its buffer held. The monitor's CPU
/// seconds then, and when it went idle.
fn wait_idle(pid: u32) -> Result<(f64, Instant)> {
    let tick = 1.0 / clock_ticks();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = tree_cpu_secs(pid)?;
    let mut at = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = tree_cpu_secs(pid)?;
        if now - last < tick * 1.5 || Instant::now() > deadline {
            return Ok((now, at));
        }
        last = now;
        at = Instant::now();
    }
}

fn capture_round(v: &Veth, mode: CapMode, rate: u64, s: &Settings) -> Result<CapSample> {
    let db = Path::new(DIR).join("capture.db");
    let final_metrics = Path::new(DIR).join("capture-metrics.txt");
    let _ = std::fs::remove_file(&final_metrics);
    let mut monitor = match mode {
        CapMode::Nothing => None,
        CapMode::Sensor => {
            remove_db(&db);
            let sensor = std::fs::canonicalize(SENSOR)?;
            let mut c = Veth::exec(&v.cap_ns, 1, &sensor.to_string_lossy());
            c.arg("run")
                .arg("--config")
                .arg(config_path())
                .arg("--db")
                .arg(&db)
                .args(["--hooks", "none", "--interface", CAP_DEV])
                .args(["--metrics-addr", NS_METRICS_ADDR])
                .arg("--metrics-on-exit")
                .arg(&final_metrics);
            let mut p = Proc::spawn("sensor", &mut c)?;
            p.wait_for("sensor ready", Duration::from_secs(60))?;
            Some(p)
        }
        CapMode::Tcpdump => {
            let mut c = Veth::exec(&v.cap_ns, 1, "tcpdump");
            c.args(["-n", "-i", CAP_DEV, "-w", "/dev/null"]);
            let mut p = Proc::spawn("tcpdump", &mut c)?;
            p.wait_for("listening on", Duration::from_secs(10))?;
            Some(p)
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = if mode == CapMode::Sensor {
        let text = in_netns(&v.cap_ns, || http_get(NS_METRICS_ADDR, "/metrics"))?;
        metric(&text, "sensor_capture_packets_total")?
    } else {
        0.0
    };
    let pid = monitor.as_ref().map_or(0, Proc::pid);
    let cpu0 = if pid == 0 { 0.0 } else { tree_cpu_secs(pid)? };
    let others = Others::start()?;
    let t0 = Instant::now();
    let packets = if rate == 0 {
        50_000_000
    } else {
        (rate as f64 * s.capture_secs) as u64
    };
    let pktgen = std::fs::canonicalize(PKTGEN)?;
    let out = output(
        Veth::exec(&v.gen_ns, 0, &pktgen.to_string_lossy()).args([
            "--interface",
            GEN_DEV,
            // Two sending threads, one a core: one core alone offers only ~700k frames/s
            // through veth (the peer's receive path runs in the sender's softirq). The
            // monitor shares CPU 1 with the second thread.
            "--threads",
            "2",
            "--cpus",
            "0,1",
            "--packets",
            &packets.to_string(),
            "--rate",
            &rate.to_string(),
            // Unpaced runs last the run's time; paced ones may take a little longer when
            // the sender cannot keep the pace.
            "--max-secs",
            &format!(
                "{}",
                if rate == 0 {
                    s.capture_secs
                } else {
                    s.capture_secs + 2.0
                }
            ),
        ]),
        "pktgen",
    )?;
    let gen_end = Instant::now();
    let sent = field(&out, "SENT")?;
    let gen_secs = field(&out, "SECS")?;
    let (cpu1, idle_at) = if pid == 0 {
        (0.0, Instant::now())
    } else {
        wait_idle(pid)?
    };
    let busy_secs = idle_at.duration_since(t0).as_secs_f64().max(gen_secs);
    let foreign = others.foreign.clone();
    let others = others.cores()?;
    // tcpdump reads the kernel's ring a block at a time; a partly filled block is handed
    // over at the block timeout. Both monitors get the same grace before SIGTERM.
    if let Some(rest) = Duration::from_millis(1500).checked_sub(gen_end.elapsed()) {
        std::thread::sleep(rest);
    }
    let (captured, dropped) = match monitor.take() {
        None => (0.0, 0.0),
        Some(p) => {
            let (st, log) = p.stop()?;
            match mode {
                CapMode::Sensor => {
                    if !st.success() {
                        bail!("the sensor exited with {st}:\n{}", log.join("\n"));
                    }
                    let text = std::fs::read_to_string(&final_metrics).with_context(|| {
                        format!("reading the sensor's {}", final_metrics.display())
                    })?;
                    (
                        metric(&text, "sensor_capture_packets_total")? - before,
                        sensor_drops(&text, true)?,
                    )
                }
                _ => (
                    tcpdump_count(&log, " packets captured")?,
                    tcpdump_count(&log, " packets dropped by kernel")?,
                ),
            }
        }
    };
    Ok(CapSample {
        offered_pps: sent / gen_secs,
        sent,
        captured,
        captured_pps: captured / gen_secs,
        dropped,
        cpu_secs: cpu1 - cpu0,
        busy_secs,
        others,
        foreign,
        sender_cpu_secs: field(&out, "CPU")?,
    })
}

fn capture_throughput(s: &Settings) -> Result<String> {
    let veth = Veth::create()?;
    let modes = [CapMode::Nothing, CapMode::Sensor, CapMode::Tcpdump];
    let mut samples: HashMap<(u64, CapMode), Vec<CapSample>> = HashMap::new();
    let mut k = 0usize;
    for round in 0..s.capture_rounds {
        for &rate in &s.rates {
            for i in 0..modes.len() {
                let mode = modes[(k + i) % modes.len()];
                let x = capture_round(&veth, mode, rate, s)
                    .with_context(|| format!("capture at {rate} pkt/s, {}", mode.label()))?;
                eprintln!(
                    "xtask: host-cost capture round {}/{} offered {} pkt/s {}: sent {} at {:.0}/s, \
                     captured {} dropped {}, monitor {:.2} CPU s, rest of the machine {:.0}% \
                     of a core",
                    round + 1,
                    s.capture_rounds,
                    rate_label(rate),
                    mode.label(),
                    thousands(x.sent),
                    x.offered_pps,
                    thousands(x.captured),
                    thousands(x.dropped),
                    x.cpu_secs,
                    x.others * 100.0
                );
                samples.entry((rate, mode)).or_default().push(x);
            }
            k += 1;
        }
    }
    drop(veth);
    let mut rows = Vec::new();
    for &rate in &s.rates {
        for mode in modes {
            let v = &samples[&(rate, mode)];
            let m = |f: &dyn Fn(&CapSample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
            let offered = m(&|x| x.offered_pps);
            if mode == CapMode::Nothing {
                rows.push(vec![
                    rate_label(rate),
                    mode.label().into(),
                    thousands(offered),
                    format!("{:.0} ns", m(&|x| x.sender_cpu_secs / x.sent * 1e9)),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                continue;
            }
            let lost = m(&|x| x.dropped / x.sent * 100.0);
            let unseen = m(&|x| (x.sent - x.captured - x.dropped) / x.sent * 100.0);
            let per_packet = m(&|x| x.cpu_secs / x.captured * 1e9);
            let per_packet = if per_packet > 0.0 {
                format!("{per_packet:.0} ns")
            } else {
                format!(
                    "< {:.0} ns (under one clock tick)",
                    1e9 / clock_ticks() / m(&|x| x.captured)
                )
            };
            rows.push(vec![
                rate_label(rate),
                mode.label().into(),
                thousands(offered),
                format!("{:.0} ns", m(&|x| x.sender_cpu_secs / x.sent * 1e9)),
                thousands(m(&|x| x.captured_pps)),
                format!("{lost:.1}% (+{unseen:.1}% unseen)"),
                format!("{:.1}%", m(&|x| x.cpu_secs / x.busy_secs * 100.0)),
                per_packet,
            ]);
        }
    }
    let mut out = format!(
        "Live capture on a veth pair between two namespaces: pktgen on CPU 0 sends 128-byte \
         UDP frames (64 flows) for {} s a run, the monitor captures the other end pinned to \
         CPU 1; {} rounds, medians. Dropped: the monitor's own count (the sensor: kernel + \
         queue; tcpdump: by kernel) of the frames sent; unseen: sent but neither captured \
         nor counted as dropped. CPU share over the time the monitor was busy. The kernel's \
         copy of each frame to a packet socket runs in the sender's softirq on CPU 0 and is \
         charged to pktgen, not to the monitor: it shows in the sender's CPU per packet and \
         as a lower sent rate than with nothing capturing.\n\n",
        s.capture_secs, s.capture_rounds
    );
    out.push_str(&table(
        &[
            "offered",
            "monitor",
            "sent pkt/s",
            "sender CPU per packet",
            "captured pkt/s",
            "dropped",
            "monitor CPU (of one core)",
            "CPU per captured packet",
        ],
        &rows,
    ));
    let all: Vec<&CapSample> = samples.values().flatten().collect();
    let others: Vec<f64> = all.iter().map(|x| x.others).collect();
    let foreign: Vec<&[String]> = all.iter().map(|x| x.foreign.as_slice()).collect();
    out.push_str(&format!("\n{}\n", others_note(&others, &foreign)));
    Ok(out)
}

fn rate_label(rate: u64) -> String {
    if rate == 0 {
        "max".into()
    } else {
        thousands(rate as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_counts_one_packet_and_many() {
        let log: Vec<String> = ["12 packets captured", "1 packet dropped by kernel"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(tcpdump_count(&log, " packets captured").unwrap(), 12.0);
        assert_eq!(
            tcpdump_count(&log, " packets dropped by kernel").unwrap(),
            1.0
        );
        assert!(tcpdump_count(&log, " packets received by filter").is_err());
    }

    #[test]
    fn the_interval_holds_the_median_and_narrows_with_less_noise() {
        let noisy = [0.80, 0.95, 1.10, 0.90, 1.05, 0.85, 1.00, 0.97];
        let (lo, hi) = ratio_interval(&noisy, &[]);
        let m = median(&noisy);
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        let calm: Vec<f64> = noisy.iter().map(|x| 0.96 + (x - 0.96) / 10.0).collect();
        let (clo, chi) = ratio_interval(&calm, &[]);
        assert!(
            chi - clo < (hi - lo) / 5.0,
            "{clo}..{chi} against {lo}..{hi}"
        );
        // A vector against itself: the ratio's interval holds 1.
        let (slo, shi) = ratio_interval(&noisy, &noisy);
        assert!(slo < 1.0 && shi > 1.0);
        assert!(against_bar(0.99, (0.98, 1.0), 0.97).ends_with(": met"));
        assert!(against_bar(0.9, (0.85, 0.95), 0.97).ends_with("NOT met"));
        assert!(against_bar(0.96, (0.9, 1.0), 0.97).contains("not resolved"));
    }
}
