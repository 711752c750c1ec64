//! Project chores: `cargo xtask setup | build | run | lint | test | bench | install |
//! uninstall | deb | fuzz`.
//!
//! The ordinary build is plain cargo (`cargo build --release`): `sensor/build.rs` builds the
//! eBPF object with the nightly. What cargo cannot do is install the tools that build needs,
//! and the programs the tests drive; `setup` does that, idempotently and quickly when done.
mod bench;
mod bench_enrich;
mod bench_host;
mod bench_query;
mod bench_store;
mod measure;
mod package;
mod setup;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build and the tests need (rust-src, LLVM 22, bpf-linker, ...).
    Setup,
    /// Set up, then build the release binary (target/release/sensor).
    Build,
    /// Set up, build, and run the sensor (`sensor run ARGS`; needs root).
    Run {
        /// Arguments for `sensor run`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt check, clippy on the workspace and, separately, on the eBPF crate.
    Lint,
    /// Set up, lint, build, and run every test (privileged ones need root).
    Test,
    /// Benchmarks: the flow table alone, close-to-row latency, replay against tshark on one
    /// large capture, enrichment of 10,000 addresses, and what monitoring costs the host
    /// (connection rate under each monitor, live capture throughput).
    Bench {
        /// Copies of the dev captures in the large capture.
        #[arg(long, default_value_t = 3)]
        copies: usize,
        /// Run only this one: flow-table, latency, replay, enrich, persist, export, top or
        /// host-cost.
        #[arg(long)]
        only: Option<String>,
    },
    /// As root: build, then install the binary (/usr/local/bin), the systemd unit, the
    /// config (/etc/sensor, kept if present) and the `sensor` user.
    Install,
    /// As root: undo `install` (service stopped and disabled, binary and unit removed);
    /// the flows, the config and the user stay unless `--purge`.
    Uninstall {
        /// Also remove /var/lib/sensor, /etc/sensor and the `sensor` user and group.
        #[arg(long)]
        purge: bool,
    },
    /// Build the Debian package (target/deb/sensor_VERSION_ARCH.deb) with dpkg-deb.
    Deb {
        /// Package the debug build (faster; for tests).
        #[arg(long)]
        debug: bool,
    },
    /// Fuzz the parsers with libFuzzer (cargo-fuzz, nightly): the packet parser, the
    /// pcap/pcapng reader, the Cymru answer parser, the config loader, the threat-list
    /// parser; each target in turn.
    Fuzz {
        /// How long to run each target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Only this target (default: all of them).
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup::setup().map(|_| ()),
        Cmd::Build => {
            setup::setup()?;
            build_release()
        }
        Cmd::Run { args } => {
            setup::setup()?;
            build_release()?;
            let bin = root.join("target/release/sensor");
            eprintln!("xtask: running {} run {}", bin.display(), args.join(" "));
            let status = Command::new(&bin).arg("run").args(&args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Lint => {
            let tools = setup::setup()?;
            lint(&tools)
        }
        Cmd::Test => {
            let tools = setup::setup()?;
            lint(&tools)?;
            test()
        }
        Cmd::Bench { copies, only } => {
            setup::setup()?;
            bench::bench(copies, only.as_deref())
        }
        Cmd::Install => {
            setup::setup()?;
            package::install()
        }
        Cmd::Uninstall { purge } => package::uninstall(purge),
        Cmd::Deb { debug } => {
            setup::setup()?;
            package::deb(debug).map(|_| ())
        }
        Cmd::Fuzz { seconds, target } => {
            setup::setup()?;
            let targets: Vec<&str> = match &target {
                Some(t) if FUZZ_TARGETS.contains(&t.as_str()) => vec![t.as_str()],
                Some(t) => bail!("--target {t}: one of {}", FUZZ_TARGETS.join(", ")),
                None => FUZZ_TARGETS.to_vec(),
            };
            fuzz(&targets, seconds)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, echoing it, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let mut shown = format!("{cmd:?}").replace('"', "");
    if shown.len() > 300 {
        let cut = shown
            .char_indices()
            .nth(300)
            .map_or(shown.len(), |(i, _)| i);
        shown = format!(
            "{} ... ({} arguments)",
            &shown[..cut],
            cmd.get_args().count()
        );
    }
    eprintln!("xtask: $ {shown}");
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    eprintln!("xtask:   done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn build_release() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "sensor"]))
}

fn lint(tools: &setup::Tools) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate only builds for the BPF target, with the nightly's build-std.
    let mut ebpf = Command::new("rustup");
    ebpf.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "-p",
        "sensor-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--target-dir",
        "target/ebpf-lint",
        "--",
        "-D",
        "warnings",
    ])
    .env("PATH", tools.path_with_bpf_linker())
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("CARGO");
    run(&mut ebpf)
}

/// The fuzz targets in `fuzz/fuzz_targets/`.
const FUZZ_TARGETS: &[&str] = &[
    "parse_packet",
    "pcap_file",
    "cymru_line",
    "config_toml",
    "threat_line",
];

/// Runs each of `targets` for `seconds` with libFuzzer; fails on the first finding (its
/// input is left in `fuzz/artifacts/TARGET/`).
fn fuzz(targets: &[&str], seconds: u64) -> Result<()> {
    if !setup::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in targets {
        let corpus = PathBuf::from("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        // The fuzzer never loads eBPF: skip building the object (an empty one is embedded).
        run(Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(corpus.strip_prefix("fuzz").expect("under fuzz/"))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .current_dir("fuzz")
            .env("AYA_BUILD_SKIP", "1")
            .env_remove("RUSTC")
            .env_remove("CARGO"))?;
    }
    Ok(())
}

fn test() -> Result<()> {
    if !setup::is_root() {
        eprintln!(
            "\nxtask: *** not root: the tests that load eBPF or drop capabilities will say \
             SKIPPED. Run as root (CI does) to run them. ***\n"
        );
    }
    // The end-to-end tests run the sensor binary from the same target directory.
    run(cargo().args(["build", "-p", "sensor", "--bins"]))?;
    // The package test installs this with dpkg.
    package::deb(true)?;
    let skip_log = std::env::temp_dir().join(format!("sensor-skips-{}", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let mut cmd = cargo();
    cmd.args(["test", "--no-fail-fast"])
        .env("SENSOR_SKIP_LOG", &skip_log)
        .stdout(Stdio::piped());
    eprintln!("xtask: $ cargo test --no-fail-fast");
    let mut child = cmd.spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let _ = std::fs::remove_file(&skip_log);
    let skipped = skips.lines().count() as u64;
    for line in skips.lines() {
        eprintln!("xtask: *** {line}");
    }
    // Skipped tests return early and count as passed in libtest; report them apart.
    println!(
        "tests: {} passed, {failed} failed, {skipped} skipped",
        passed.saturating_sub(skipped)
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    // In CI every tool a test needs is installed and the run is root: a skip there is a
    // test that did not run, which must not pass as green.
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if skipped > 0 && ci {
        bail!("{skipped} tests skipped with CI=true (named above): a skip in CI is a failure");
    }
    // A short run of every fuzz target in CI (`cargo xtask fuzz` runs them for longer): a
    // parser change that panics on its seed corpus fails here.
    if ci {
        fuzz(FUZZ_TARGETS, CI_FUZZ_SECONDS)?;
    }
    Ok(())
}

/// Each fuzz target's run in CI.
const CI_FUZZ_SECONDS: u64 = 15;

/// In "ok. 19 passed; 0 failed; ...", the number before `what`.
fn count_before(s: &str, what: &str) -> u64 {
    s.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what.trim_start())
                .map(str::trim)
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
