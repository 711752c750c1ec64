//! The sensor refuses cleanly when it cannot work: missing capabilities, an unwritable
//! database path, a bad config. Each refusal names the problem and attaches nothing.
mod common;

use std::process::{Command, Output};

use common::{is_root, sensor_bin, temp_dir};

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.env("SENSOR_LOG", "info").output().expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("stderr: {stderr}");
    (out, stderr)
}

/// Runs `sensor run` with some capabilities dropped: through setpriv as root, or as we are
/// when not root (then every capability is missing anyway).
fn sensor_without(caps_to_drop: &str, db: &str) -> (Output, String) {
    if is_root() {
        run(Command::new("setpriv")
            .args([
                &format!("--bounding-set={caps_to_drop}"),
                &format!("--inh-caps={caps_to_drop}"),
                "--",
            ])
            .arg(sensor_bin())
            .args(["run", "--db", db]))
    } else {
        run(Command::new(sensor_bin()).args(["run", "--db", db]))
    }
}

#[test]
fn refuses_without_capabilities_and_names_them() {
    let dir = temp_dir("nocaps");
    let db = dir.join("f.db");
    let (out, err) = sensor_without("-all", db.to_str().unwrap());
    assert_eq!(out.status.code(), Some(77), "EX_NOPERM");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert!(err.contains(cap), "names {cap}: {err}");
    }
    assert!(err.contains("root"), "says how to run it: {err}");
    assert!(!err.contains("attached"), "nothing attached: {err}");
    assert!(!db.exists(), "refused before touching the database");
}

#[test]
fn names_the_one_missing_capability() {
    if !is_root() {
        common::skip(
            "names_the_one_missing_capability",
            "needs root to drop a single capability with setpriv",
        );
        return;
    }
    let dir = temp_dir("nonetadmin");
    let db = dir.join("f.db");
    let (out, err) = sensor_without("-net_admin", db.to_str().unwrap());
    assert_eq!(out.status.code(), Some(77));
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(
        !err.contains("CAP_BPF,") && !err.contains("CAP_PERFMON,"),
        "{err}"
    );
}

#[test]
fn unwritable_db_path_is_named_before_attaching() {
    if !is_root() {
        common::skip(
            "unwritable_db_path_is_named_before_attaching",
            "the capability check comes first without root",
        );
        return;
    }
    // A directory that is a regular file: not writable even for root.
    let dir = temp_dir("baddb");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let db = file.join("flows.db");
    let (out, err) = run(Command::new(sensor_bin()).args(["run", "--db", db.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains(db.to_str().unwrap()), "names the path: {err}");
    assert!(err.contains("not writable"), "{err}");
    assert!(!err.contains("attached"), "nothing attached: {err}");
}

#[test]
fn bad_config_names_key_and_line() {
    let dir = temp_dir("badcfg");
    let cfg = dir.join("sensor.toml");
    std::fs::write(&cfg, "db_path = \"/tmp/x.db\"\n\nflush_msec = 10\n").unwrap();
    let (out, err) =
        run(Command::new(sensor_bin()).args(["run", "--config", cfg.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("flush_msec"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn export_of_missing_db_names_it() {
    let (out, err) = run(Command::new(sensor_bin()).args([
        "export",
        "--db",
        "/nonexistent/flows.db",
        "--format",
        "csv",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("/nonexistent/flows.db"), "{err}");
}
