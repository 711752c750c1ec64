//! The database as users meet it: another program's SQLite file given as `--db` is refused
//! and left untouched; a database on a read-only mount can still be exported and ranked.
mod common;

use std::{path::Path, process::Command};

use common::{is_root, sensor_bin, skip, temp_dir};

fn capture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/http_ip4and6.pcapng")
}

#[test]
fn a_foreign_sqlite_file_is_refused_untouched() {
    let dir = temp_dir("foreign-db");
    let db = dir.join("app.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO customers (name) VALUES ('ada'), ('grace');",
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    for args in [
        vec!["replay", "--no-enrich", "--db"],
        vec!["export", "--db"],
        vec!["top", "--db"],
    ] {
        let mut cmd = Command::new(sensor_bin());
        cmd.args(&args).arg(&db);
        if args[0] == "replay" {
            cmd.arg(capture());
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail: {err}");
        assert!(
            err.contains("is not the sensor's") && err.contains("customers"),
            "{args:?} names the problem: {err}"
        );
    }
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file is untouched");
    for ext in ["-wal", "-shm", "-journal"] {
        assert!(
            !Path::new(&format!("{}{ext}", db.display())).exists(),
            "no {ext} file was made"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn export_and_top_read_a_database_on_a_read_only_mount() {
    if !is_root() {
        skip(
            "export_and_top_read_a_database_on_a_read_only_mount",
            "needs root to mount and remount a tmpfs read-only",
        );
        return;
    }
    let dir = temp_dir("ro-db");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = |opts: &str| {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount {opts}");
    };
    mount("size=8m");
    let db = mnt.join("flows.db");
    let out = Command::new(sensor_bin())
        .args(["replay", "--no-enrich", "--db"])
        .arg(&db)
        .arg(capture())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
        .unwrap();
    assert!(rows > 0);
    let st = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "remount read-only");
    let export = Command::new(sensor_bin())
        .args(["export", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let top = Command::new(sensor_bin())
        .args(["top", "--by", "flows", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(
        export.status.success(),
        "export: {}",
        String::from_utf8_lossy(&export.stderr)
    );
    let lines = String::from_utf8_lossy(&export.stdout).lines().count() as i64;
    assert_eq!(lines, rows + 1, "a header and every row");
    assert!(
        top.status.success(),
        "top: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    let text = String::from_utf8_lossy(&top.stdout);
    let header: Vec<&str> = text.lines().next().unwrap_or("").split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "flows")
        .expect("a flows column");
    let flows: i64 = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(col)?.parse::<i64>().ok())
        .sum();
    assert_eq!(flows, rows, "top counts every flow");
    let _ = std::fs::remove_dir_all(&dir);
}
