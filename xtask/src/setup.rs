//! `cargo xtask setup`: everything the build and the tests need that cargo cannot fetch by
//! itself. Each step checks first and does nothing when already done, so a warm run takes
//! well under a second.
//!
//! bpf-linker is cached outside the work tree, in `$SENSOR_TOOLS_DIR` (default
//! `~/.cache/sensor-tools`), under a directory named for its version and the LLVM it links,
//! so fresh clones on the same machine (CI) reuse it; `sensor/build.rs` looks there too.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::run;

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";
/// Must match `sensor/build.rs`.
const BPF_LINKER_DIR: &str = "bpf-linker-0.13.0-llvm22";

/// Debian packages the tests drive, by the command they provide.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("setpriv", "util-linux"),
    ("tshark", "tshark"),
    ("mergecap", "wireshark-common"),
    ("tcpdump", "tcpdump"),
    ("ping", "iputils-ping"),
    ("ip", "iproute2"),
    ("promtool", "prometheus"),
    ("dnsmasq", "dnsmasq-base"),
    ("mkfs.ext4", "e2fsprogs"),
    ("bpftool", "bpftool"),
    // IPFIX collectors the interoperability tests export to.
    ("nfcapd", "nfdump"),
    ("nfacctd", "pmacct"),
    // The scanner the detection tests scan with.
    ("nmap", "nmap"),
];

/// Python modules the tests import, by the Debian package that provides them: a module
/// provides no command, so each is checked by importing it.
const TEST_PYTHON_MODULES: &[(&str, &str)] = &[
    // The FTP server the brute-force detection test guesses passwords against.
    ("pyftpdlib", "python3-pyftpdlib"),
];

/// Whether `python3` on PATH or the system's `/usr/bin/python3` (where Debian's python3-*
/// packages install to, when PATH's is another, e.g. pyenv's) imports `module`.
fn python_has(module: &str) -> bool {
    ["python3", "/usr/bin/python3"]
        .iter()
        .any(|py| succeeds(Command::new(py).args(["-c", &format!("import {module}")])))
}

pub struct Tools {
    bpf_linker_bin: PathBuf,
}

impl Tools {
    /// PATH with the cached bpf-linker first.
    pub fn path_with_bpf_linker(&self) -> OsString {
        let mut dirs = vec![self.bpf_linker_bin.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(dirs).expect("PATH entries without ':'")
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn tools_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SENSOR_TOOLS_DIR") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set SENSOR_TOOLS_DIR")?;
    Ok(PathBuf::from(home).join(".cache/sensor-tools"))
}

pub(crate) fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        || Path::new("/usr/sbin").join(cmd).is_file()
        || Path::new("/sbin").join(cmd).is_file()
}

/// `apt-get install` the packages, running `apt-get update` first (once per setup).
fn apt_install(packages: &[&str], updated: &mut bool) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "installing {} needs root: run `sudo cargo xtask setup` (or install them yourself)",
            packages.join(" ")
        );
    }
    if !*updated {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        *updated = true;
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs, with apt-get, the Debian packages of the `(command, package)` pairs whose
/// command is not on PATH; nothing when every command is there.
pub fn ensure_commands(commands: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = commands
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    apt_install(&missing, &mut false)?;
    if let Some((cmd, pkg)) = commands.iter().find(|(cmd, _)| !on_path(cmd)) {
        bail!("{pkg} is installed but {cmd} is not on PATH");
    }
    Ok(())
}

pub fn setup() -> Result<Tools> {
    let start = Instant::now();
    let mut apt_updated = false;

    // 1. The nightly toolchain and its standard library source (for -Z build-std=core).
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // 2. bpf-linker, built against LLVM 22 (the nightly's LLVM), cached by version.
    let dir = tools_dir()?.join(BPF_LINKER_DIR);
    let bin_dir = dir.join("bin");
    let linker = bin_dir.join("bpf-linker");
    if !succeeds(Command::new(&linker).arg("--version")) {
        let llvm_bin = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin"));
        if !llvm_bin.join("llvm-config").is_file() {
            apt_install(&[&format!("llvm-{LLVM_MAJOR}-dev")], &mut apt_updated)?;
        }
        let mut path = vec![llvm_bin];
        if let Some(p) = std::env::var_os("PATH") {
            path.extend(std::env::split_paths(&p));
        }
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
                "--root",
            ])
            .arg(&dir)
            .env("PATH", std::env::join_paths(path)?)
            // Its own target dir: never the workspace's, never shared with a build running.
            .env("CARGO_TARGET_DIR", tools_dir()?.join("build")))?;
        if !succeeds(Command::new(&linker).arg("--version")) {
            bail!(
                "bpf-linker was installed to {} but does not run",
                linker.display()
            );
        }
    }

    // 3. Programs the tests drive.
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .chain(
            TEST_PYTHON_MODULES
                .iter()
                .filter(|(module, _)| !python_has(module))
                .map(|(_, pkg)| *pkg),
        )
        .collect();
    apt_install(&missing, &mut apt_updated)?;
    if let Some((module, pkg)) = TEST_PYTHON_MODULES.iter().find(|(m, _)| !python_has(m)) {
        bail!("{pkg} is installed but python3 cannot import {module}");
    }

    eprintln!(
        "xtask: setup complete in {:.1} s (bpf-linker: {})",
        start.elapsed().as_secs_f64(),
        linker.display()
    );
    Ok(Tools {
        bpf_linker_bin: bin_dir,
    })
}
