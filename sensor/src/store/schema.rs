//! The flow database's schema. `PRAGMA user_version` is the schema version: an older
//! database is upgraded in place, a newer one is refused rather than misread.
use rusqlite::Connection;

use super::StoreError;

/// The version this build writes: one per step of [`MIGRATIONS`].
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const V1: &str = "
CREATE TABLE flows (
    id                INTEGER PRIMARY KEY,
    first_seen_ms     INTEGER NOT NULL,
    last_seen_ms      INTEGER NOT NULL,
    proto             INTEGER NOT NULL,
    src_ip            TEXT    NOT NULL,
    src_port          INTEGER NOT NULL,
    dst_ip            TEXT    NOT NULL,
    dst_port          INTEGER NOT NULL,
    src_payload_bytes INTEGER,
    dst_payload_bytes INTEGER,
    src_pid           INTEGER,
    src_comm          TEXT,
    dst_pid           INTEGER,
    dst_comm          TEXT,
    srtt_us           INTEGER,
    retransmits       INTEGER,
    end_reason        TEXT    NOT NULL,
    sources           TEXT    NOT NULL
);
CREATE INDEX flows_first_seen ON flows (first_seen_ms);

-- One row per `sensor run`: what it attached and what it lost.
CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY,
    started_ms         INTEGER NOT NULL,
    ended_ms           INTEGER,
    hooks              TEXT    NOT NULL,
    events             INTEGER,
    ringbuf_dropped    INTEGER,
    store_dropped      INTEGER,
    flows              INTEGER
);
";

/// Version 2: what packet views (live capture, capture files) count.
const V2: &str = "
ALTER TABLE flows ADD COLUMN src_packets   INTEGER;
ALTER TABLE flows ADD COLUMN dst_packets   INTEGER;
ALTER TABLE flows ADD COLUMN src_bytes     INTEGER;
ALTER TABLE flows ADD COLUMN dst_bytes     INTEGER;
ALTER TABLE flows ADD COLUMN src_tcp_flags INTEGER;
ALTER TABLE flows ADD COLUMN dst_tcp_flags INTEGER;
ALTER TABLE runs ADD COLUMN capture_dropped INTEGER;
";

/// Version 3: what enrichment knows per address, joined with flows at query time.
const V3: &str = "
CREATE TABLE ip_info (
    ip             TEXT    PRIMARY KEY,
    country        TEXT,
    city           TEXT,
    lat            REAL,
    lon            REAL,
    asn            INTEGER,
    as_org         TEXT,
    asn_source     TEXT,
    bgp_prefix     TEXT,
    hostname       TEXT,
    rdns_status    TEXT,
    threat         TEXT,
    threat_detail  TEXT,
    checked_ms     INTEGER NOT NULL,
    cymru_due_ms   INTEGER,
    rdns_due_ms    INTEGER
) WITHOUT ROWID;
";

/// Version 4: flows added up per UTC day and remote address, for `sensor top` (see
/// [`super::rollup`]).
const V4: &str = "
CREATE TABLE flow_rollup (
    day     INTEGER NOT NULL,
    remote  TEXT    NOT NULL,
    flows   INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    PRIMARY KEY (day, remote)
) WITHOUT ROWID;
CREATE TABLE rollup_state (
    max_id     INTEGER NOT NULL,
    pruned_day INTEGER
);
INSERT INTO rollup_state (max_id, pruned_day) VALUES (0, NULL);
";

/// Version 5: the tunnel an inner flow was carried in (NULL for every other flow): its kind
/// (`vxlan`, `geneve`, `gre`, `gtpu`, `ipip`, `6in4`, `4in6`, `6in6`, `teredo`), the outer
/// addresses oriented like the flow, and the VNI / TEID / GRE key.
const V5: &str = "
ALTER TABLE flows ADD COLUMN tunnel        TEXT;
ALTER TABLE flows ADD COLUMN tunnel_src_ip TEXT;
ALTER TABLE flows ADD COLUMN tunnel_dst_ip TEXT;
ALTER TABLE flows ADD COLUMN tunnel_id     INTEGER;
";

/// Version 6: each local end's uid, its unit (the systemd unit, else the cgroup path; see
/// [`crate::flow::unit`]) and how its owner was found (`connect`, `accept`, `listener`,
/// `proc-scan`, `send`, `recv`). NULL where the end has no owner or the field is unknown.
/// The rollup keeps no owner columns, so only `flows` changes.
const V6: &str = "
ALTER TABLE flows ADD COLUMN src_uid  INTEGER;
ALTER TABLE flows ADD COLUMN src_unit TEXT;
ALTER TABLE flows ADD COLUMN dst_uid  INTEGER;
ALTER TABLE flows ADD COLUMN dst_unit TEXT;
ALTER TABLE flows ADD COLUMN src_attr TEXT;
ALTER TABLE flows ADD COLUMN dst_attr TEXT;
";

/// Version 7: the detectors' alerts (see [`super::alerts`]), one row per alert, rewritten
/// by `key` while it stays active.
const V7: &str = "
CREATE TABLE alerts (
    id            INTEGER PRIMARY KEY,
    key           TEXT    NOT NULL UNIQUE,
    kind          TEXT    NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    src_ip        TEXT    NOT NULL,
    targets       TEXT    NOT NULL,
    ports         TEXT    NOT NULL,
    count         INTEGER NOT NULL,
    score         REAL    NOT NULL,
    pid           INTEGER,
    comm          TEXT,
    unit          TEXT,
    detail        TEXT    NOT NULL,
    evidence      TEXT    NOT NULL
);
CREATE INDEX alerts_last_seen ON alerts (last_seen_ms);
";

/// Each step takes the schema from its index (plus one) to the next version.
const MIGRATIONS: &[(&str, &str)] = &[
    ("creating schema v1", V1),
    ("upgrading to schema v2", V2),
    ("upgrading to schema v3", V3),
    ("upgrading to schema v4", V4),
    ("upgrading to schema v5", V5),
    ("upgrading to schema v6", V6),
    ("upgrading to schema v7", V7),
];

/// The database's schema version; an error when it is newer than this build knows, or
/// when the file is another program's SQLite database (tables, but no sensor version).
pub fn refuse_newer(conn: &Connection, path: &std::path::Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite(path, "reading schema version", e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    // Version 0 with tables in it is somebody else's database: never add ours to it.
    if version == 0 {
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| StoreError::sqlite(path, "reading the schema", e))?;
        if !tables.is_empty() {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
                tables: tables.join(", "),
            });
        }
    }
    Ok(version)
}

/// Creates or upgrades the schema.
pub fn migrate(conn: &mut Connection, path: &std::path::Path) -> Result<(), StoreError> {
    let version = refuse_newer(conn, path)?;
    for (i, (what, sql)) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn
            .transaction()
            .map_err(|e| StoreError::sqlite(path, "starting migration", e))?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", i as i64 + 1))
            .and_then(|()| tx.commit())
            .map_err(|e| StoreError::sqlite(path, what, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sensor-schema-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("f.db")
    }

    /// A database written by the first release (schema v1, with a flow) opens, is upgraded
    /// step by step, and keeps its rows.
    #[test]
    fn a_version_1_database_is_upgraded_in_place() {
        let path = temp("v1");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(V1).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port,
                 dst_ip, dst_port, src_payload_bytes, end_reason, sources)
                 VALUES (1, 2, 6, '10.0.0.1', 1000, '10.0.0.2', 80, 42, 'fin', 'kernel')",
                [],
            )
            .unwrap();
        }
        let conn = crate::store::open_for_writing(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let (bytes, packets): (i64, Option<i64>) = conn
            .query_row(
                "SELECT src_payload_bytes, src_packets FROM flows",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((bytes, packets), (42, None));
        let tunnel: (Option<String>, Option<String>, Option<String>, Option<i64>) = conn
            .query_row(
                "SELECT tunnel, tunnel_src_ip, tunnel_dst_ip, tunnel_id FROM flows",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            tunnel,
            (None, None, None, None),
            "an old flow is no tunnel's"
        );
        let n: i64 = conn
            .query_row("SELECT count(*) FROM ip_info", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(owner_columns(&conn), [None, None, None, None, None, None]);
        // Opening again changes nothing.
        drop(conn);
        crate::store::open_for_writing(&path).unwrap();
    }

    /// The owner columns of schema v6 of the one flow in `conn`.
    fn owner_columns(conn: &Connection) -> [Option<String>; 6] {
        conn.query_row(
            "SELECT CAST(src_uid AS TEXT), src_unit, CAST(dst_uid AS TEXT), dst_unit, \
             src_attr, dst_attr FROM flows",
            [],
            |r| {
                Ok([
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ])
            },
        )
        .unwrap()
    }

    /// A database of the last release before owners had uids and units (schema v5, with a
    /// flow that has processes) is upgraded in place: the row stays, its new columns NULL,
    /// and new rows can fill them.
    #[test]
    fn a_version_5_database_gains_the_owner_columns_in_place() {
        let path = temp("v5");
        {
            let mut c = Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            for (_, sql) in &MIGRATIONS[..5] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 5).unwrap();
            tx.commit().unwrap();
            c.execute(
                "INSERT INTO flows (first_seen_ms, last_seen_ms, proto, src_ip, src_port,
                 dst_ip, dst_port, src_pid, src_comm, dst_pid, dst_comm, end_reason, sources,
                 tunnel)
                 VALUES (1, 2, 6, '10.0.0.1', 1000, '10.0.0.2', 80, 7, 'curl', 8, 'nginx',
                 'fin', 'kernel', NULL)",
                [],
            )
            .unwrap();
            let cols: i64 = c
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('flows') WHERE name = 'src_unit'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(cols, 0, "v5 has no unit column");
        }
        let conn = crate::store::open_for_writing(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let comms: (String, String) = conn
            .query_row("SELECT src_comm, dst_comm FROM flows", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(comms, ("curl".into(), "nginx".into()));
        assert_eq!(owner_columns(&conn), [None, None, None, None, None, None]);
        conn.execute(
            "UPDATE flows SET src_uid = 1000, src_unit = 'user@1000.service/app.scope', \
             src_attr = 'connect', dst_attr = 'accept'",
            [],
        )
        .unwrap();
        assert_eq!(
            owner_columns(&conn),
            [
                Some("1000".into()),
                Some("user@1000.service/app.scope".into()),
                None,
                None,
                Some("connect".into()),
                Some("accept".into()),
            ]
        );
        drop(conn);
        crate::store::open_for_writing(&path).unwrap();
    }

    #[test]
    fn a_newer_database_is_refused_naming_both_versions() {
        let path = temp("new");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE future (x)").unwrap();
            c.pragma_update(None, "user_version", SCHEMA_VERSION + 7)
                .unwrap();
        }
        for err in [
            crate::store::open_for_writing(&path).unwrap_err(),
            crate::store::open_for_reading(&path).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(matches!(err, StoreError::TooNew { .. }), "{msg}");
            assert!(
                msg.contains(&format!("schema version {}", SCHEMA_VERSION + 7)),
                "{msg}"
            );
            assert!(msg.contains(&format!("({SCHEMA_VERSION})")), "{msg}");
            assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        }
        // Refused, not touched.
        let c = Connection::open(&path).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION + 7);
    }
}
