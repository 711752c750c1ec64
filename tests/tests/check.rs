//! `sensor check`: as root on this machine every hook attaches (and is detached again) and
//! the exit status is 0; an unwritable database is a failure (1); without capabilities it
//! is 77 and names them; `--format json` is one object per check.
mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{is_root, sensor_bin, services::shared_data, skip, temp_dir};

/// A config beside the test's files: an ephemeral metrics port (tests may run beside a real
/// sensor), MaxMind's test databases and the real threat lists.
fn config(dir: &Path) -> PathBuf {
    let mmdb = shared_data().join("mmdb/maxmind-test");
    let path = dir.join("sensor.toml");
    std::fs::write(
        &path,
        format!(
            "metrics_addr = \"127.0.0.1:0\"\n[enrich]\nmmdb_paths = [\"{}\", \"{}\"]\n\
             threat_dir = \"{}\"\n",
            mmdb.join("GeoIP2-City-Test.mmdb").display(),
            mmdb.join("GeoLite2-ASN-Test.mmdb").display(),
            shared_data().join("threat-intel").display()
        ),
    )
    .unwrap();
    path
}

fn output(cmd: &mut Command) -> (Output, String) {
    let out = cmd.env("SENSOR_LOG", "warn").output().expect("spawn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, stdout)
}

fn check(args: &[&str]) -> (Output, String) {
    output(Command::new(sensor_bin()).arg("check").args(args))
}

/// `sensor check` as nobody without any capability when root (through setpriv), else as
/// we are (every capability is missing anyway).
fn check_without_capabilities(args: &[&str]) -> (Output, String) {
    if !is_root() {
        return check(args);
    }
    output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(sensor_bin())
            .arg("check")
            .args(args),
    )
}

/// A temp dir anyone may write, for runs as nobody.
fn open_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir(name);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The table's rows as (check, verdict, detail), cut at the header's columns; and the
/// summary line.
fn parse_table(text: &str) -> (Vec<(String, String, String)>, String) {
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    let verdict_at = header.find("VERDICT").expect("VERDICT column");
    let detail_at = header.find("DETAIL").expect("DETAIL column");
    let mut rows = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        rows.push((
            line[..verdict_at].trim_end().to_string(),
            line[verdict_at..detail_at].trim_end().to_string(),
            line[detail_at..].to_string(),
        ));
    }
    let summary = lines.next().expect("summary line").to_string();
    (rows, summary)
}

fn by_check(rows: &[(String, String, String)]) -> BTreeMap<&str, (&str, &str)> {
    rows.iter()
        .map(|(c, v, d)| (c.as_str(), (v.as_str(), d.as_str())))
        .collect()
}

/// The tests that load programs as root run one at a time: the leftover check counts every
/// `sensor_*` program loaded after its start, so another `sensor check` beside it would be
/// counted as a leak.
static LOADS: Mutex<()> = Mutex::new(());

/// IDs of the loaded BPF programs named `sensor_*` (bpftool truncates names to 15 bytes).
fn sensor_programs() -> Option<Vec<u64>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .ok()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        progs
            .as_array()?
            .iter()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("sensor_")))
            .filter_map(|p| p["id"].as_u64())
            .collect(),
    )
}

fn tracefs_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - tracefs "))
        .count()
}

#[test]
fn as_root_every_hook_attaches_and_nothing_is_left_behind() {
    let name = "as_root_every_hook_attaches_and_nothing_is_left_behind";
    if !is_root() {
        skip(name, "needs root to load and attach the hooks");
        return;
    }
    let _serial = LOADS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("checkroot");
    let cfg = config(&dir);
    let db = dir.join("flows.db");
    let before = sensor_programs();
    let tracefs_before = tracefs_mounts();
    let (out, text) = check(&[
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{text}");

    let (rows, summary) = parse_table(&text);
    let rows = by_check(&rows);
    for hook in [
        "hook sock_ops",
        "hook tp_btf/inet_sock_set_state",
        "hook tracepoint/sock/inet_sock_set_state",
    ] {
        let (verdict, detail) = rows[hook];
        assert_eq!(verdict, "ok", "{hook}: {detail}");
        assert!(
            detail.starts_with("attached and detached"),
            "{hook}: {detail}"
        );
    }
    for (check, (verdict, detail)) in &rows {
        assert_ne!(*verdict, "FAIL", "{check}: {detail}");
    }
    for check in [
        "kernel",
        "BTF",
        "cgroup v2",
        "capabilities",
        "packet capture",
        "database",
    ] {
        assert_eq!(rows[check].0, "ok", "{check}: {}", rows[check].1);
    }
    let mmdb: Vec<_> = rows.keys().filter(|c| c.starts_with("mmdb ")).collect();
    assert_eq!(mmdb.len(), 2, "one row per configured file: {rows:?}");
    assert!(rows[*mmdb[0]].1.contains("verified"), "{rows:?}");
    assert!(rows["threat lists"].1.contains(" lists, "), "{rows:?}");
    assert!(summary.contains("ready for `sensor run`"), "{summary}");

    // Nothing attached, mounted or created.
    match (before, sensor_programs()) {
        (Some(before), Some(after)) => {
            // The kernel frees a closed program after an RCU grace period, so one may still
            // be listed for a moment after `sensor check` has exited: a leak is one that
            // stays.
            let max = before.iter().copied().max().unwrap_or(0);
            let newer =
                |ids: Vec<u64>| -> Vec<u64> { ids.into_iter().filter(|id| *id > max).collect() };
            let mut new = newer(after);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !new.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                new = newer(sensor_programs().unwrap_or_default());
            }
            assert!(new.is_empty(), "programs left loaded by check: {new:?}");
        }
        _ => skip(name, "bpftool is missing: programs left loaded not checked"),
    }
    assert_eq!(tracefs_mounts(), tracefs_before, "tracefs mounts unchanged");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec!["sensor.toml"],
        "database only probed, probe file removed"
    );
}

#[test]
fn mounts_tracefs_for_the_probe_and_unmounts_it() {
    let name = "mounts_tracefs_for_the_probe_and_unmounts_it";
    if !is_root() {
        skip(name, "needs root for a private mount namespace");
        return;
    }
    let _serial = LOADS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("checktracefs");
    let cfg = config(&dir);
    let db = dir.join("flows.db");
    // In a private mount namespace, so the host's tracefs stays as it is for other tests.
    let script = format!(
        "for m in $(grep ' - tracefs ' /proc/self/mountinfo | cut -d' ' -f5); do umount $m; done\n\
         grep -c ' - tracefs ' /proc/self/mountinfo\n\
         {} check --config {} --db {}\n\
         echo \"exit $?\"\n\
         grep -c ' - tracefs ' /proc/self/mountinfo\n\
         true\n",
        sensor_bin().display(),
        cfg.display(),
        db.display()
    );
    let (out, text) = output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script),
    );
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "tracefs unmounted first: {text}");
    assert_eq!(lines.last(), Some(&"0"), "and not mounted after: {text}");
    assert!(lines.contains(&"exit 0"), "{text}");
    let classic = lines
        .iter()
        .find(|l| l.starts_with("hook tracepoint/sock/inet_sock_set_state"))
        .expect("classic tracepoint row");
    assert!(
        classic.contains(" ok ") && classic.contains("mounted for the probe, then unmounted"),
        "{classic}"
    );
}

#[test]
fn unwritable_database_fails() {
    let name = "unwritable_database_fails";
    if !is_root() {
        skip(
            name,
            "without root the missing capabilities come first (exit 77)",
        );
        return;
    }
    let _serial = LOADS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("checkbaddb");
    let cfg = config(&dir);
    // A parent that is a regular file: not writable even for root.
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let db = file.join("flows.db");
    let (out, text) = check(&[
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let (rows, summary) = parse_table(&text);
    let (verdict, detail) = by_check(&rows)["database"];
    assert_eq!(verdict, "FAIL", "{detail}");
    assert!(detail.contains("not a directory"), "{detail}");
    assert!(summary.contains("not ready"), "{summary}");

    // A read-only file system, mounted in a private namespace.
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let script = format!(
        "mount -t tmpfs -o ro tmpfs {ro} && {bin} check --config {cfg} --db {ro}/flows.db; \
         echo \"exit $?\"",
        ro = ro.display(),
        bin = sensor_bin().display(),
        cfg = cfg.display()
    );
    let (_, text) = output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script),
    );
    assert!(text.lines().any(|l| l == "exit 1"), "{text}");
    let (rows, _) = parse_table(&text);
    let (verdict, detail) = by_check(&rows)["database"];
    assert_eq!(verdict, "FAIL", "{detail}");
    assert!(detail.contains("Read-only file system"), "{detail}");
}

#[test]
fn without_capabilities_exits_77_and_names_them() {
    let dir = open_dir("checknocaps");
    let cfg = config(&dir);
    let db = dir.join("flows.db");
    let (out, text) = check_without_capabilities(&[
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(77), "EX_NOPERM: {text}");
    let (rows, summary) = parse_table(&text);
    let rows = by_check(&rows);
    let (verdict, detail) = rows["capabilities"];
    assert_eq!(verdict, "FAIL");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW"] {
        assert!(detail.contains(cap), "names {cap}: {detail}");
        assert!(summary.contains(cap), "summary names {cap}: {summary}");
    }
    let (verdict, detail) = rows["hook sock_ops"];
    assert_eq!(verdict, "FAIL");
    assert!(detail.contains("not tried"), "{detail}");
    assert_eq!(
        rows["packet capture"].0, "FAIL",
        "{:?}",
        rows["packet capture"]
    );
    // The checks that need no privileges still ran.
    assert_eq!(rows["database"].0, "ok", "{:?}", rows["database"]);
    assert_eq!(rows["kernel"].0, "ok");
    assert!(!db.exists(), "nothing created");
}

#[test]
fn json_is_one_object_per_check() {
    let dir = open_dir("checkjson");
    let cfg = config(&dir);
    let db = dir.join("flows.db");
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ];
    let (_, table) = check_without_capabilities(&args);
    let (out, text) = check_without_capabilities(&[&args[..], &["--format", "json"]].concat());
    assert_eq!(
        out.status.code(),
        Some(77),
        "the same exit status as the table's"
    );
    let value: serde_json::Value = serde_json::from_str(&text).expect("one JSON document");
    let objects = value.as_array().expect("an array");
    let (rows, _) = parse_table(&table);
    assert_eq!(objects.len(), rows.len(), "one object per table row");
    for (o, (check, verdict, detail)) in objects.iter().zip(&rows) {
        let o = o.as_object().expect("objects");
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["check", "detail", "verdict"]);
        assert_eq!(o["check"], check.as_str());
        assert_eq!(o["verdict"], verdict.as_str());
        assert!(["ok", "warn", "FAIL"].contains(&o["verdict"].as_str().unwrap()));
        // Details that depend on the moment (the process count) may differ between runs.
        if check != "process owners" {
            assert_eq!(o["detail"], detail.as_str());
        }
    }
}
