//! `sensor replay` against tshark, the independent judge: for every capture, the same set of
//! TCP and UDP conversations (unordered 5-tuples; ICMP per address pair) and, per
//! conversation, the same packets and IP-layer bytes each way. Rows are judged too, not only
//! sums: per TCP 5-tuple as many rows as tshark has `tcp.stream`s (records cut by the active
//! timeout aside), and the SYN's sender as each row's source.
//!
//! tshark dissects each frame (`-T fields`); this test only adds up its answers. IPv4
//! fragments are attributed to their datagram's conversation by (src, dst, proto, id), as
//! IPFIX counts them (tshark's reassembly is turned off so every fragment is a frame).
//!
//! Tunnels: the outer conversations above are compared with the sensor's outer flows
//! (`tunnel IS NULL`) on every capture, tunnels included; on the captures under
//! `data/tunnels/` the inner conversations (tshark's second IP layer inside a tunnel) must
//! equal the sensor's inner flows too, with the tunnel's kind, id and outer addresses.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    sensor_bin, skip, temp_dir,
    tshark::{
        identity_problems, sensor_convs, sensor_inner_convs, tshark_convs, tshark_inner_convs,
    },
};

fn captures_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            captures_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
            out.push(p);
        }
    }
}

/// Compares every capture under `root`; returns how many matched.
fn compare_all(root: &Path, name: &str) -> usize {
    let mut files = Vec::new();
    captures_under(root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no captures under {}", root.display());
    let dir = temp_dir(name);
    let mut failures = Vec::new();
    let (mut connections, mut identity) = (0, Vec::new());
    for file in &files {
        let want = tshark_convs(file);
        let db = dir.join(format!(
            "{}.db",
            file.file_name().expect("name").to_string_lossy()
        ));
        let out = Command::new(sensor_bin())
            .args(["replay", "--no-enrich", "--db"])
            .arg(&db)
            .arg(file)
            .output()
            .expect("run sensor replay");
        // 0, or 65 when the parser gave up on some packet (counted in the summary line).
        let err = String::from_utf8_lossy(&out.stderr);
        let malformed = !err.contains("malformed=0");
        assert!(
            out.status.code() == Some(if malformed { 65 } else { 0 }),
            "sensor replay on {}: {:?}: {err}",
            file.display(),
            out.status
        );
        let (n, problems) = identity_problems(file, &db);
        connections += n;
        identity.extend(
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", file.display())),
        );
        let got = sensor_convs(&db);
        if want != got {
            let missing: Vec<_> = want
                .keys()
                .filter(|k| !got.contains_key(k))
                .take(3)
                .collect();
            let extra: Vec<_> = got
                .keys()
                .filter(|k| !want.contains_key(k))
                .take(3)
                .collect();
            let differing: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
                .take(3)
                .map(|(k, v)| format!("{k:?}: tshark {v:?} sensor {:?}", got[k]))
                .collect();
            failures.push(format!(
                "{}: {} conversations in tshark, {} in sensor; missing {missing:?}; extra \
                 {extra:?}; differing {differing:?}",
                file.display(),
                want.len(),
                got.len()
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "identity: {connections} TCP connections in {} captures, {} problems",
        files.len(),
        identity.len()
    );
    assert!(
        identity.is_empty(),
        "{} of {connections} TCP connections are not exactly one row with the SYN sender as \
         source:\n{}",
        identity.len(),
        identity.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {} captures differ from tshark:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    files.len()
}

/// Replays `file` into `db` with `extra` arguments; panics naming the file on failure.
fn replay(db: &Path, file: &Path, extra: &[&str]) {
    let out = Command::new(sensor_bin())
        .args(["replay", "--no-enrich"])
        .args(extra)
        .arg("--db")
        .arg(db)
        .arg(file)
        .output()
        .expect("run sensor replay");
    assert!(
        out.status.success(),
        "sensor replay failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tunnel_captures() -> Vec<PathBuf> {
    let mut files = Vec::new();
    captures_under(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tunnels"),
        &mut files,
    );
    files.sort();
    assert!(
        files.len() >= 10,
        "the tunnel captures are missing: {files:?}"
    );
    files
}

#[test]
fn tunnel_inner_flows_match_tshark() {
    if !have_tshark() {
        skip(
            "tunnel_inner_flows_match_tshark",
            "tshark is not installed (cargo xtask setup installs it)",
        );
        return;
    }
    let dir = temp_dir("tshark-inner");
    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for file in tunnel_captures() {
        let want = tshark_inner_convs(&file);
        assert!(
            !want.is_empty(),
            "{}: tshark sees no tunnel in it",
            file.display()
        );
        let db = dir.join(format!(
            "{}.db",
            file.file_name().expect("name").to_string_lossy()
        ));
        replay(&db, &file, &[]);
        let got = sensor_inner_convs(&db);
        kinds.extend(got.keys().map(|k| k.0.clone()));
        if want != got {
            failures.push(format!(
                "{}:\n  tshark {want:?}\n  sensor {got:?}",
                file.display()
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for kind in [
        "vxlan", "geneve", "gre", "gtpu", "ipip", "6in4", "4in6", "6in6", "teredo",
    ] {
        assert!(kinds.contains(kind), "no {kind} flow among {kinds:?}");
    }
}

/// `--no-decap`: the same outer flows, and not one inner flow.
#[test]
fn decap_off_keeps_outer_flows_only() {
    let dir = temp_dir("no-decap");
    for file in tunnel_captures() {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let (on, off) = (
            dir.join(format!("{name}.on.db")),
            dir.join(format!("{name}.off.db")),
        );
        replay(&on, &file, &[]);
        replay(&off, &file, &["--no-decap"]);
        assert_eq!(sensor_convs(&on), sensor_convs(&off), "{name}");
        assert!(!sensor_inner_convs(&on).is_empty(), "{name}: no inner flow");
        let conn = rusqlite::Connection::open(&off).expect("open");
        let inner: i64 = conn
            .query_row(
                "SELECT count(*) FROM flows WHERE tunnel IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(inner, 0, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn have_tshark() -> bool {
    Command::new("tshark").arg("--version").output().is_ok()
}

#[test]
fn committed_captures_match_tshark() {
    if !have_tshark() {
        skip(
            "committed_captures_match_tshark",
            "tshark is not installed (cargo xtask setup installs it)",
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let n = compare_all(&root, "tshark-committed");
    eprintln!("{n} committed captures match tshark");
}

#[test]
fn shared_dev_captures_match_tshark() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/pcap/dev");
    if !root.is_dir() {
        skip(
            "shared_dev_captures_match_tshark",
            "../shared/data/pcap/dev is absent",
        );
        return;
    }
    if !have_tshark() {
        skip(
            "shared_dev_captures_match_tshark",
            "tshark is not installed (cargo xtask setup installs it)",
        );
        return;
    }
    let n = compare_all(&root, "tshark-dev");
    eprintln!("{n} shared dev captures match tshark");
}
