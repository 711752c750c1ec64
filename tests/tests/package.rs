//! The Debian package on this machine: `dpkg -i` installs the binary, unit, config and
//! user; `sensor check` passes; `dpkg -r` keeps the data and the config; `dpkg --purge`
//! removes everything. The package is built by `cargo xtask test` (`cargo xtask deb
//! --debug`) before the tests run.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{is_root, skip};

fn deb() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/deb"));
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: `cargo xtask deb --debug` builds it (`cargo xtask test` does)",
                dir.display()
            )
        })
}

fn dpkg(args: &[&str]) -> String {
    let out = Command::new("dpkg").args(args).output().expect("dpkg");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dpkg {args:?}: {text}");
    text
}

fn user_exists() -> bool {
    Command::new("getent")
        .args(["passwd", "sensor"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn deb_installs_checks_removes_and_purges() {
    let name = "deb_installs_checks_removes_and_purges";
    if !is_root() {
        skip(name, "needs root: installs a package with dpkg");
        return;
    }
    let status = Command::new("dpkg")
        .args(["-s", "sensor"])
        .output()
        .unwrap();
    if status.status.success() {
        skip(
            name,
            "a `sensor` package is already installed on this host: left alone",
        );
        return;
    }
    let deb = deb();
    let info = dpkg(&["--info", deb.to_str().unwrap()]);
    assert!(info.contains("Package: sensor"), "{info}");
    dpkg(&["-i", deb.to_str().unwrap()]);
    for p in [
        "/usr/bin/sensor",
        "/lib/systemd/system/sensor.service",
        "/etc/sensor/sensor.toml",
        "/usr/share/sensor/wireshark/sensor-ipfix.lua",
    ] {
        assert!(Path::new(p).exists(), "{p} installed");
    }
    assert!(user_exists(), "the sensor user was created");
    let unit = std::fs::read_to_string("/lib/systemd/system/sensor.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/sensor run"), "{unit}");

    let check = Command::new("/usr/bin/sensor")
        .arg("check")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "sensor check failed:\n{report}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Remove keeps the data and the operator's config.
    std::fs::create_dir_all("/var/lib/sensor").unwrap();
    std::fs::write("/var/lib/sensor/keep.me", "flows").unwrap();
    dpkg(&["-r", "sensor"]);
    assert!(!Path::new("/usr/bin/sensor").exists());
    assert!(Path::new("/var/lib/sensor/keep.me").exists(), "data kept");
    assert!(Path::new("/etc/sensor/sensor.toml").exists(), "config kept");

    // Purge removes everything.
    dpkg(&["--purge", "sensor"]);
    assert!(!Path::new("/var/lib/sensor").exists(), "data purged");
    assert!(
        !Path::new("/etc/sensor/sensor.toml").exists(),
        "config purged"
    );
    assert!(!user_exists(), "user removed");
    let left = Command::new("dpkg")
        .args(["-s", "sensor"])
        .output()
        .unwrap();
    assert!(!left.status.success(), "package gone");
}
