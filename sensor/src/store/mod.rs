//! Store: finished flows into SQLite, from a writer on its own thread.
pub mod alerts;
pub mod amend;
pub mod info;
pub mod inline;
pub mod ip_info;
pub mod retention;
pub mod rollup;
pub mod schema;
pub mod sums;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

pub use writer::{StoreStats, Writer, WriterConfig, WriterHandle};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {what}: {source}")]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} is not writable: {source}")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this sensor supports \
         ({supported}); use a newer sensor or another --db"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "database {path} is not the sensor's (it holds other tables: {tables}); it was left \
         untouched: use another --db"
    )]
    Foreign { path: PathBuf, tables: String },
}

impl StoreError {
    pub(crate) fn sqlite(path: &Path, what: &'static str, source: rusqlite::Error) -> Self {
        Self::Sqlite {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
}

/// Opens the database for writing, creating it and its directory, in WAL mode with the
/// current schema. Fails early with the path when it cannot be written.
pub fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::NotWritable {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // A read-only file or directory shows up here, before any hook is attached. A new file
    // is made 0640 (SQLite gives its -wal and -shm the same mode), group `sensor` where that
    // group exists: flows name hosts and processes, not for every local user to read.
    let existed = path.exists();
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(DB_MODE)
            .open(path)
            .map_err(|source| StoreError::NotWritable {
                path: path.to_path_buf(),
                source,
            })?
    };
    if !existed {
        use std::os::unix::fs::PermissionsExt as _;
        // The umask may have taken bits off; the mode is ours to set on a file we made.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(DB_MODE));
        if let Some(gid) = sensor_group() {
            let _ = std::os::unix::fs::fchown(&file, None, Some(gid));
        }
    }
    drop(file);
    let mut conn = Connection::open(path).map_err(|e| StoreError::sqlite(path, "opening", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| StoreError::sqlite(path, "setting busy timeout", e))?;
    // A newer schema is refused before anything (journal mode included) is changed.
    schema::refuse_newer(&conn, path)?;
    // Lets retention give pages back. Only a new, empty database takes it (and setting it
    // on a live one would wait on its writer's lock for nothing).
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite(path, "reading the schema", e))?;
    if tables == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(|e| StoreError::sqlite(path, "setting auto_vacuum", e))?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite(path, "enabling WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "database is not in WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| StoreError::sqlite(path, "setting synchronous", e))?;
    // Fewer, larger checkpoints (each ends with an fsync), and a page cache that holds the
    // index's hot end: both matter at 10⁵ rows a second.
    conn.pragma_update(None, "wal_autocheckpoint", 4_000)
        .map_err(|e| StoreError::sqlite(path, "setting wal_autocheckpoint", e))?;
    conn.pragma_update(None, "cache_size", -16_384)
        .map_err(|e| StoreError::sqlite(path, "setting cache_size", e))?;
    schema::migrate(&mut conn, path)?;
    Ok(conn)
}

/// Mode of a new database file (and so of its -wal and -shm).
pub const DB_MODE: u32 = 0o640;

/// The `sensor` group's id, when the host has one (the package and `xtask install` make it).
fn sensor_group() -> Option<u32> {
    let name = c"sensor";
    // SAFETY: `group` is plain C data (integers and pointers); all-zero is a valid value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf`, both valid for the sizes given.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// Opens an existing database read-only (export). Never blocks the writer: WAL readers see
/// the last committed state.
pub fn open_for_reading(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::sqlite(path, "opening read-only", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| StoreError::sqlite(path, "setting busy timeout", e))?;
    let conn = match schema::refuse_newer(&conn, path) {
        Ok(_) => conn,
        // A WAL database in a read-only directory or mount, closed cleanly (no -wal file
        // left): SQLite cannot create the -shm it wants, but with no WAL there is nothing
        // beyond the main file, which can then be read as immutable.
        Err(StoreError::Sqlite { source, .. }) if !wal_has_frames(path) => {
            tracing::debug!(path = %path.display(), "read-only location: reading as immutable ({source})");
            let conn = Connection::open_with_flags(
                immutable_uri(path),
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(|e| StoreError::sqlite(path, "opening read-only", e))?;
            schema::refuse_newer(&conn, path)?;
            conn
        }
        Err(e) => return Err(e),
    };
    Ok(conn)
}

/// Whether `path`'s write-ahead log holds anything (it exists and is not empty).
fn wal_has_frames(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).is_ok_and(|m| m.len() > 0)
}

/// `file:PATH?immutable=1`, the path percent-encoded where a URI needs it.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' | 0x80.. => uri.push_str(&format!("%{b:02X}")),
            _ => uri.push(char::from(*b)),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_new_database_and_its_wal_are_0640() {
        let dir = std::env::temp_dir().join(format!("sensor-db-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("flows.db");
        let conn = super::open_for_writing(&path).unwrap();
        conn.execute("DELETE FROM flows", []).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o640);
        let wal = dir.join("flows.db-wal");
        assert!(wal.exists(), "a write makes the WAL");
        assert_eq!(mode(&wal), 0o640);
        drop(conn);
        let _ = std::fs::remove_dir_all(dir);
    }
}
