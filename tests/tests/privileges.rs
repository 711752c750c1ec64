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
    // 73 (EX_CANTCREAT): one the unit does not restart on (RestartPreventExitStatus).
    assert_eq!(out.status.code(), Some(73), "{err}");
    assert!(err.contains(db.to_str().unwrap()), "names the path: {err}");
    assert!(err.contains("not writable"), "{err}");
    assert!(!err.contains("attached"), "nothing attached: {err}");
    assert_unit_does_not_restart_on(73);
}

/// The unit's `RestartPreventExitStatus=` holds `code`.
fn assert_unit_does_not_restart_on(code: i32) {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sensor.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find(|l| l.starts_with("RestartPreventExitStatus="))
        .expect("RestartPreventExitStatus in the unit");
    assert!(
        line.split(['=', ' ']).any(|w| w == code.to_string()),
        "{code} in {line}"
    );
}

#[test]
fn a_missing_interface_is_a_config_error_the_unit_does_not_restart_on() {
    if !is_root() {
        common::skip(
            "a_missing_interface_is_a_config_error_the_unit_does_not_restart_on",
            "the capability check comes first without root",
        );
        return;
    }
    let dir = temp_dir("noiface");
    let db = dir.join("flows.db");
    let (out, err) = run(Command::new(sensor_bin()).args([
        "run",
        "--db",
        db.to_str().unwrap(),
        "--hooks",
        "none",
        "--interface",
        "nosuch0",
    ]));
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {err}");
    assert!(err.contains("nosuch0"), "names the interface: {err}");
    assert_unit_does_not_restart_on(78);
    assert_unit_does_not_restart_on(77);
    assert_unit_does_not_restart_on(2);
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

/// The capabilities deploy/sensor.service grants, from its `CapabilityBoundingSet=` and
/// `AmbientCapabilities=` (which must agree): the test follows the unit, not a copy of it.
fn unit_capabilities() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sensor.service");
    let unit = std::fs::read_to_string(path).expect("deploy/sensor.service");
    let set = |key: &str| -> Vec<String> {
        let mut caps: Vec<String> = unit
            .lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();
        caps.sort();
        caps
    };
    let bounding = set("CapabilityBoundingSet=");
    assert!(!bounding.is_empty(), "the unit bounds the capabilities");
    assert_eq!(bounding, set("AmbientCapabilities="), "bounding = ambient");
    bounding
}

/// `setpriv` running the sensor as nobody (65534) holding exactly `caps` (CAP_ names) as
/// ambient capabilities, as systemd does for `User=` with `AmbientCapabilities=`.
fn as_nobody_with(caps: &[String]) -> Command {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--no-new-privs",
    ])
    .arg(format!("--inh-caps=-all{list}"))
    .arg(format!("--ambient-caps=-all{list}"))
    .arg(format!("--bounding-set=-all{list}"))
    .arg("--")
    .arg(sensor_bin());
    cmd
}

/// A temp dir nobody can write: the database and the (empty, so default) config.
fn nobody_dir(name: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    // SAFETY: chown(2) on a NUL-terminated path we just created.
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, 65534) }, 0);
    std::fs::write(dir.join("sensor.toml"), "").unwrap();
    dir
}

#[test]
fn runs_as_an_unprivileged_user_with_the_units_capabilities() {
    let name = "runs_as_an_unprivileged_user_with_the_units_capabilities";
    if !is_root() {
        common::skip(
            name,
            "needs root to start the sensor as another user with setpriv",
        );
        return;
    }
    let caps = unit_capabilities();
    let dir = nobody_dir("unitcaps");
    let db = dir.join("flows.db");
    let cfg = dir.join("sensor.toml");
    let sensor = common::Sensor::start_with(
        as_nobody_with(&caps),
        &[
            "--db",
            db.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let log = sensor.log.join("\n");
    // A BTF-typed program and the cgroup ones (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN).
    for hook in [
        "hook=\"tp_btf/inet_sock_set_state\"",
        "hook=\"cgroup/sock_create\"",
        "hook=\"cgroup_skb/egress\"",
    ] {
        assert!(
            sensor
                .log
                .iter()
                .any(|l| l.contains("attached:") && l.contains(hook)),
            "{hook} attached as nobody with {caps:?}:\n{log}"
        );
    }
    assert!(log.contains("capturing packets"), "{log}");
    let ports = tcp_traffic(5);
    let (status, log) = sensor.stop();
    assert!(status.success(), "{status:?}:\n{}", log.join("\n"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |filter: &str| -> i64 {
        let sql = format!(
            "SELECT count(*) FROM flows WHERE proto = 6 AND dst_port IN ({}, {}) {filter}",
            ports.0, ports.1
        );
        conn.query_row(&sql, [], |r| r.get(0)).unwrap()
    };
    assert_eq!(count(""), 10, "each of the 10 connections is one row");
    assert_eq!(
        count("AND src_comm = 'tl-client' AND dst_comm = 'tl-server'"),
        10,
        "both processes of each"
    );
    assert_eq!(
        count("AND sources = 'kernel,capture'"),
        10,
        "seen by the hooks and by the capture"
    );
}

/// `per_family` connections each over 127.0.0.1 and ::1 (`tcpload`); returns the server's
/// two ports, so rows of other traffic on this host are told apart.
fn tcp_traffic(per_family: usize) -> (u16, u16) {
    use std::io::BufRead as _;
    let mut server = Command::new(common::tcpload_bin())
        .args(["server", "--conns", &(2 * per_family).to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("server");
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut listen = String::new();
    out.read_line(&mut listen).unwrap();
    let a: Vec<&str> = listen.split_whitespace().collect();
    let port = |addr: &str| addr.parse::<std::net::SocketAddr>().unwrap().port();
    let client = Command::new(common::tcpload_bin())
        .args(["client", "--v4", a[1], "--v6", a[2]])
        .args(["--per-family", &per_family.to_string(), "--threads", "1"])
        .output()
        .expect("client");
    assert!(client.status.success(), "{client:?}");
    assert!(server.wait().unwrap().success());
    (port(a[1]), port(a[2]))
}

#[test]
fn each_of_the_units_capabilities_is_required_and_named() {
    let name = "each_of_the_units_capabilities_is_required_and_named";
    if !is_root() {
        common::skip(
            name,
            "needs root to start the sensor as another user with setpriv",
        );
        return;
    }
    let caps = unit_capabilities();
    for dropped in &caps {
        let kept: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let dir = nobody_dir("dropone");
        let db = dir.join("flows.db");
        let (out, err) = run(as_nobody_with(&kept).args([
            "run",
            "--db",
            db.to_str().unwrap(),
            "--config",
            dir.join("sensor.toml").to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ]));
        assert_eq!(out.status.code(), Some(77), "without {dropped}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("missing capabilities"))
            .unwrap_or_else(|| panic!("without {dropped}: no refusal line: {err}"));
        assert!(line.contains(dropped.as_str()), "names {dropped}: {line}");
        for other in &kept {
            assert!(
                !line.contains(other.as_str()),
                "only {dropped} missing: {line}"
            );
        }
        assert!(!err.contains("attached"), "nothing attached: {err}");
        assert!(!db.exists(), "refused before touching the database");
    }
}
