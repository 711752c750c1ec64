//! deploy/sensor.service passes systemd's own checks: `systemd-analyze verify` says nothing,
//! `systemd-analyze security` rates its exposure at most 2.0, and it declares what the
//! sensor relies on. Both commands work offline (no running systemd needed).
mod common;

use std::{path::PathBuf, process::Command};

use common::{sensor_bin, skip, temp_dir};

fn unit_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/sensor.service"
    ))
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).expect("deploy/sensor.service")
}

/// The value of every `Key=` line, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .collect()
}

fn have_systemd_analyze(test: &str) -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(
            test,
            "systemd-analyze is not installed (apt-get install systemd)",
        );
    }
    found
}

/// Straight to file descriptor 2, past libtest's capture: the figure shows in every run.
fn say(line: &str) {
    let loud = format!("\n{line}\n");
    // SAFETY: write(2) of a valid buffer to the process's stderr.
    unsafe { libc::write(2, loud.as_ptr().cast(), loud.len()) };
}

#[test]
fn unit_verifies_without_a_word() {
    if !have_systemd_analyze("unit_verifies_without_a_word") {
        return;
    }
    // verify insists that ExecStart's program exists. Rather than put a binary in /usr/bin,
    // a copy of the unit names the one just built: that one line is all that differs.
    let text = unit();
    let bin = sensor_bin();
    let copy = text.replace(
        "ExecStart=/usr/bin/sensor ",
        &format!("ExecStart={} ", bin.display()),
    );
    let changed = text
        .lines()
        .zip(copy.lines())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(changed, 1, "exactly the ExecStart line is rewritten");
    let dir = temp_dir("unitverify");
    let path = dir.join("sensor.service");
    std::fs::write(&path, copy).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    // Unknown keys and bad values are only warnings to verify: any output is a failure.
    assert_eq!(
        said.trim(),
        "",
        "systemd-analyze verify had something to say"
    );
}

#[test]
fn unit_security_exposure_is_at_most_2() {
    if !have_systemd_analyze("unit_security_exposure_is_at_most_2") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for sensor.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure line:\n{text}"));
    say(&format!(
        "deploy/sensor.service: systemd-analyze security exposure {exposure:.1} (at most 2.0)"
    ));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
}

#[test]
fn unit_declares_what_the_sensor_relies_on() {
    let unit = unit();
    let one = |key: &str| -> String {
        let v = values(&unit, key);
        assert_eq!(v.len(), 1, "one {key}= line: {v:?}");
        v[0].to_string()
    };
    assert_eq!(one("Type"), "notify");
    assert!(one("WatchdogSec").parse::<u32>().is_ok_and(|s| s > 0));
    assert_eq!(one("ExecStart"), "/usr/bin/sensor run");
    assert!(one("ExecReload").ends_with("kill -HUP $MAINPID"));
    assert_eq!(one("User"), "sensor");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");

    // The sensor's defaults live where systemd creates the directories.
    let help = Command::new(sensor_bin())
        .args(["run", "--help"])
        .output()
        .expect("sensor run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let db = format!("/var/lib/{}/flows.db", one("StateDirectory"));
    let config = format!("/etc/{}/sensor.toml", one("ConfigurationDirectory"));
    assert!(help.contains(&db), "default db {db}: {help}");
    assert!(help.contains(&config), "default config {config}: {help}");

    // What a tighter score would tempt one to take away, and the sensor cannot do without.
    let families = one("RestrictAddressFamilies");
    for family in ["AF_PACKET", "AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{family}: {families}"
        );
    }
    let filters = values(&unit, "SystemCallFilter");
    assert!(
        filters
            .iter()
            .any(|f| !f.starts_with('~') && f.split_whitespace().any(|s| s == "bpf")),
        "bpf() allowed: {filters:?}"
    );
    assert!(
        !values(&unit, "ProcSubset").contains(&"pid"),
        "/proc/net/tcp stays visible"
    );
}
