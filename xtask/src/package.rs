//! Installing the sensor as a service: `cargo xtask install` (binary, unit, config, user
//! on this host) and `cargo xtask deb` (a Debian package built with dpkg-deb from the same
//! staged tree, with maintainer scripts: the user is created at install, the service
//! started where systemd runs, and data kept on remove, deleted on purge).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo, run,
    setup::{output, succeeds},
};

const UNIT: &str = "deploy/sensor.service";
const CONFIG: &str = "deploy/sensor.toml";
/// Wireshark's description of the sensor's IPFIX elements, for collectors' operators.
const WIRESHARK: &str = "deploy/wireshark/sensor-ipfix.lua";

/// The unit with `ExecStart`/`ExecReload` pointing at `bin`.
fn unit_for(bin: &str) -> Result<String> {
    let text = std::fs::read_to_string(UNIT).with_context(|| format!("reading {UNIT}"))?;
    Ok(text
        .lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("ExecStart=")
                && let Some((_, args)) = rest.split_once("sensor ")
            {
                format!("ExecStart={bin} {args}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Lays out the installed files under `root`: `{prefix}/bin/sensor`, the unit in
/// `unit_dir`, `/etc/sensor/sensor.toml` (unless one is there: it is the operator's), the
/// licence and README in `{prefix}/share/doc/sensor`, the Wireshark description in
/// `{prefix}/share/sensor/wireshark`.
fn stage(root: &Path, prefix: &str, unit_dir: &str, binary: &Path) -> Result<()> {
    let rel = |p: &str| root.join(p.trim_start_matches('/'));
    let bin = format!("{prefix}/bin/sensor");
    write(&rel(&bin), &std::fs::read(binary)?, 0o755)?;
    write(
        &rel(&format!("{unit_dir}/sensor.service")),
        unit_for(&bin)?.as_bytes(),
        0o644,
    )?;
    let config = rel("/etc/sensor/sensor.toml");
    if !config.exists() {
        write(&config, &std::fs::read(CONFIG)?, 0o644)?;
    }
    let doc = format!("{prefix}/share/doc/sensor");
    write(
        &rel(&format!("{doc}/README.md")),
        &std::fs::read("README.md")?,
        0o644,
    )?;
    write(
        &rel(&format!("{prefix}/share/sensor/wireshark/sensor-ipfix.lua")),
        &std::fs::read(WIRESHARK).with_context(|| format!("reading {WIRESHARK}"))?,
        0o644,
    )?;
    write(
        &rel(&format!("{doc}/copyright")),
        b"sensor: MIT OR Apache-2.0\n",
        0o644,
    )?;
    Ok(())
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Creates the `sensor` system user unless it exists.
fn ensure_user() -> Result<()> {
    if !succeeds(Command::new("getent").args(["passwd", "sensor"])) {
        run(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/sensor",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "sensor",
        ]))?;
    }
    Ok(())
}

/// `cargo xtask install`: release build, then the binary in /usr/local/bin, the unit in
/// /etc/systemd/system, the config in /etc/sensor (kept if present), the user.
pub fn install() -> Result<()> {
    if !crate::setup::is_root() {
        bail!("cargo xtask install writes to /usr/local, /etc and creates a user: run it as root");
    }
    crate::build_release()?;
    stage(
        Path::new("/"),
        "/usr/local",
        "/etc/systemd/system",
        Path::new("target/release/sensor"),
    )?;
    ensure_user()?;
    if systemd_running() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    eprintln!(
        "xtask: installed /usr/local/bin/sensor, /etc/systemd/system/sensor.service, \
         /etc/sensor/sensor.toml; check the host with `sensor check`, then \
         `systemctl enable --now sensor`"
    );
    Ok(())
}

/// `cargo xtask uninstall [--purge]`: undoes `install`: stops and disables the service,
/// removes the binary and the unit. The flows (/var/lib/sensor), the config (/etc/sensor)
/// and the `sensor` user stay unless `purge`, as with the Debian package's remove / purge.
pub fn uninstall(purge: bool) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("cargo xtask uninstall removes files from /usr/local and /etc: run it as root");
    }
    if systemd_running() {
        // Not loaded or not running is fine: there is nothing to stop.
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "sensor.service"])
            .status();
    }
    for file in [
        "/usr/local/bin/sensor",
        "/etc/systemd/system/sensor.service",
    ] {
        match std::fs::remove_file(file) {
            Ok(()) => eprintln!("xtask: removed {file}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("removing {file}: {e}"),
        }
    }
    if systemd_running() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    if purge {
        for dir in ["/var/lib/sensor", "/etc/sensor"] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => eprintln!("xtask: removed {dir}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("removing {dir}: {e}"),
            }
        }
        if crate::setup::succeeds(Command::new("getent").args(["passwd", "sensor"])) {
            run(Command::new("userdel").arg("sensor"))?;
        }
        if crate::setup::succeeds(Command::new("getent").args(["group", "sensor"])) {
            run(Command::new("groupdel").arg("sensor"))?;
        }
    } else {
        eprintln!(
            "xtask: kept /var/lib/sensor (the flows), /etc/sensor and the sensor user; \
             `cargo xtask uninstall --purge` removes them too"
        );
    }
    Ok(())
}

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd sensor >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/sensor --no-create-home \
            --shell /usr/sbin/nologin sensor
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        systemctl enable sensor.service || true
        systemctl restart sensor.service || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop sensor.service || true
    systemctl disable sensor.service || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    # The flows and the user go only on purge; remove keeps them.
    rm -rf /var/lib/sensor
    if getent passwd sensor >/dev/null; then
        userdel sensor || true
    fi
    if getent group sensor >/dev/null; then
        groupdel sensor || true
    fi
    rmdir /etc/sensor 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
"#;

/// The package architecture; a failing dpkg is an error, not an empty name.
fn arch() -> Result<String> {
    Ok(output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string())
}

/// `cargo xtask deb [--debug]`: the package in target/deb/. Returns its path.
pub fn deb(debug: bool) -> Result<PathBuf> {
    let bin = if debug {
        run(cargo().args(["build", "-p", "sensor"]))?;
        "target/debug/sensor"
    } else {
        crate::build_release()?;
        "target/release/sensor"
    };
    let version = env!("CARGO_PKG_VERSION");
    let arch = arch()?;
    let name = format!("sensor_{version}_{arch}");
    let root = PathBuf::from("target/deb").join(&name);
    let _ = std::fs::remove_dir_all(&root);
    stage(&root, "/usr", "/lib/systemd/system", Path::new(bin))?;
    let size_kb = dir_size(&root)? / 1024;
    let control = format!(
        "Package: sensor\nVersion: {version}\nArchitecture: {arch}\n\
         Maintainer: sensor developers <sensor@localhost>\nSection: net\nPriority: optional\n\
         Installed-Size: {size_kb}\nDepends: libc6, passwd\n\
         Description: network flow sensor (eBPF connections, packet capture, SQLite)\n \
         Records every TCP connection through eBPF and counts packets and bytes through\n \
         packet capture, enriches remote addresses, keeps flows in SQLite and serves\n \
         Prometheus metrics.\n"
    );
    write(&root.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &root.join("DEBIAN/conffiles"),
        b"/etc/sensor/sensor.toml\n",
        0o644,
    )?;
    write(&root.join("DEBIAN/postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&root.join("DEBIAN/prerm"), PRERM.as_bytes(), 0o755)?;
    write(&root.join("DEBIAN/postrm"), POSTRM.as_bytes(), 0o755)?;
    let out = PathBuf::from("target/deb").join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&out))?;
    eprintln!("xtask: built {}", out.display());
    Ok(out)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}
