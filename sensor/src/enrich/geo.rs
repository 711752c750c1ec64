//! The MaxMind databases: geo (City or Country) and ASN (GeoLite2-ASN or GeoIP2-ISP) of an
//! address, answered in memory from memory-mapped `.mmdb` files.
//!
//! Each file's kind comes from its metadata (`database_type`), not its name, so renamed or
//! third-party files in the GeoLite2 schemas (DB-IP, ip-location-db) work too. Several files
//! of a kind form a cascade: City before Country, then in the order given; an address one
//! file has nothing for falls through to the next.
//!
//! The files are mapped, not read: the page cache holds one copy however many processes use
//! them. Opening probes the file with lookups across the address space (see [`probe`]), so
//! a corrupt file is refused when it is opened, at start or reload, rather than answering
//! nothing lookup after lookup. The price is that a mapped file must never be rewritten in
//! place (`cp new.mmdb GeoLite2-City.mmdb` truncates it under the mapping: the sensor could
//! read garbage or die of SIGBUS). Replace files by renaming over them, as `geoipupdate` does;
//! [`GeoDbs::reload_changed`] then maps the new file and the old mapping lives until the
//! last lookup using it is done.
use std::{
    fmt,
    fs::{self, File},
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use maxminddb::{MaxMindDbError, Mmap, Reader};
use serde::Deserialize;

use super::{Asn, Geo};

/// Where `geoipupdate` puts the databases (its compiled-in default, then the older one).
pub const DEFAULT_DIRS: &[&str] = &["/var/lib/GeoIP", "/usr/share/GeoIP"];

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: not a valid MaxMind database: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: MaxMindDbError,
    },
    #[error(
        "{path}: database type {database_type:?} is none of City, Country, ASN or ISP; \
         the sensor has no use for it"
    )]
    UnknownKind {
        path: PathBuf,
        database_type: String,
    },
    #[error("no usable MaxMind database (*.mmdb) in {}", list_dirs(.dirs))]
    NoneFound { dirs: Vec<PathBuf> },
}

fn list_dirs(dirs: &[PathBuf]) -> String {
    let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    names.join(", ")
}

/// What a file can answer; the order is the cascade's (City before Country).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    City,
    Country,
    Asn,
}

impl Kind {
    /// By the metadata's `database_type`, as the MaxMind readers do. Enterprise is the City
    /// schema plus confidences; GeoIP2-ISP carries the GeoLite2-ASN fields.
    fn of(database_type: &str) -> Option<Kind> {
        let t = database_type;
        if t.contains("City") || t.contains("Enterprise") {
            Some(Kind::City)
        } else if t.contains("Country") {
            Some(Kind::Country)
        } else if t.contains("ASN") || t.contains("ISP") {
            Some(Kind::Asn)
        } else {
            None
        }
    }

    fn is_geo(self) -> bool {
        matches!(self, Kind::City | Kind::Country)
    }
}

/// A file's identity and version: a rename over it changes the inode, a rewrite in place
/// the size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_s: i64,
    mtime_ns: i64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_s: m.mtime(),
            mtime_ns: m.mtime_nsec(),
        }
    }
}

/// One open file.
#[derive(Clone)]
struct Db {
    path: PathBuf,
    kind: Kind,
    /// IPv4-only files refuse IPv6 lookups with an error; we skip them instead.
    ipv6: bool,
    /// Shared so a [`GeoDbs`] clone is cheap: callers reload a clone off the lock.
    reader: Arc<Reader<Mmap>>,
    /// The file as last seen by [`GeoDbs::reload_changed`] (None: missing). A change that
    /// failed to load is remembered too, so it is reported once, not on every check.
    seen: Option<Stamp>,
    /// Lookups that failed (a damaged search tree or data section), for
    /// `sensor_enrich_lookups_total{source="mmdb",result="error"}`.
    errors: Arc<AtomicU64>,
}

/// The fields of a City or Country record we keep; serde skips the rest (names in eight
/// languages, subdivisions, …) without decoding them, and strings stay borrowed from the map.
#[derive(Deserialize)]
struct GeoRecord<'a> {
    #[serde(borrow)]
    country: Option<CountryRecord<'a>>,
    #[serde(borrow)]
    city: Option<CityRecord<'a>>,
    location: Option<LocationRecord>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow)]
    names: Option<EnglishName<'a>>,
}

#[derive(Deserialize)]
struct EnglishName<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRecord {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// The GeoLite2-ASN fields, which GeoIP2-ISP shares.
#[derive(Deserialize)]
struct AsnRecord<'a> {
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

impl Db {
    fn open(path: &Path) -> Result<Db, GeoError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        // The stamp of the file we map, not of whatever the path names a moment later.
        let meta = file.metadata().map_err(|e| io_error(path, e))?;
        if !meta.is_file() {
            return Err(GeoError::NotAFile { path: path.into() });
        }
        // SAFETY: the mapping is only read. It stays valid as long as the file is replaced
        // by rename (geoipupdate's way), not rewritten in place — see the module docs.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
        let reader = Reader::from_source(map).map_err(|source| GeoError::Invalid {
            path: path.into(),
            source,
        })?;
        let database_type = &reader.metadata().database_type;
        let Some(kind) = Kind::of(database_type) else {
            return Err(GeoError::UnknownKind {
                path: path.into(),
                database_type: database_type.clone(),
            });
        };
        // Opening checks the metadata and layout only (a truncated file fails there);
        // damage inside the tree or the data would make lookups fail one by one, silently
        // empty. Probe it across the address space so such a file is refused here.
        let ipv6 = reader.metadata().ip_version == 6;
        probe(&reader, kind, ipv6).map_err(|source| GeoError::Invalid {
            path: path.into(),
            source,
        })?;
        Ok(Db {
            path: path.into(),
            kind,
            ipv6,
            reader: Arc::new(reader),
            seen: Some(Stamp::of(&meta)),
            errors: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The record for `ip` decoded as `T`; None when the file has nothing for it.
    #[inline]
    fn record<'a, T: Deserialize<'a>>(&'a self, ip: IpAddr) -> Option<T> {
        if ip.is_ipv6() && !self.ipv6 {
            return None;
        }
        let found = match self.reader.lookup(ip) {
            Ok(found) => found,
            Err(error) => {
                // Counted, and rate-limited (log_throttle): a damaged file fails often.
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %self.path.display(), %ip, %error, "mmdb lookup failed");
                return None;
            }
        };
        match found.decode::<T>() {
            Ok(record) => record,
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %self.path.display(), %ip, %error, "mmdb record undecodable");
                None
            }
        }
    }

    fn geo(&self, ip: IpAddr) -> Option<Geo> {
        let r: GeoRecord = self.record(ip)?;
        let country = r.country.and_then(|c| c.iso_code);
        let city = r.city.and_then(|c| c.names).and_then(|n| n.en);
        let (lat, lon) = r
            .location
            .map_or((None, None), |l| (l.latitude, l.longitude));
        if country.is_none() && city.is_none() && lat.is_none() && lon.is_none() {
            // An empty record (some blocks have only `registered_country`): let the next file try.
            return None;
        }
        Some(Geo {
            country: country.map(str::to_owned),
            city: city.map(str::to_owned),
            lat,
            lon,
        })
    }

    fn asn(&self, ip: IpAddr) -> Option<Asn> {
        let r: AsnRecord = self.record(ip)?;
        // AS 0 means "not routed" (RFC 7607): no answer, so Cymru may still give one.
        let asn = r.autonomous_system_number.filter(|&n| n != 0)?;
        Some(Asn {
            asn,
            org: r.autonomous_system_organization.map(str::to_owned),
        })
    }
}

/// Lookups spread over the whole address space (256 IPv4 addresses, one in each /8, and 64
/// IPv6 ones across 2000::/3), each record decoded as lookups decode it. Every lookup
/// passes through the top of the search tree, so damage there, or to the records most
/// addresses share, fails this; damage deeper down is left to the full walk of
/// `sensor check` ([`GeoDbs::verify`], seconds per file) and to the lookups' error count.
fn probe(reader: &Reader<Mmap>, kind: Kind, ipv6: bool) -> Result<(), MaxMindDbError> {
    let v4 = (0u32..256).map(|i| {
        let low = i.wrapping_mul(0x9E37_79B9) >> 8;
        IpAddr::V4(std::net::Ipv4Addr::from((i << 24) | low))
    });
    let v6 = (0u128..64).map(|i| {
        let low = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & ((1 << 116) - 1);
        IpAddr::V6(std::net::Ipv6Addr::from(
            (0x2u128 << 124) | (i << 118) | low,
        ))
    });
    for ip in v4.chain(v6.take(if ipv6 { 64 } else { 0 })) {
        let found = reader.lookup(ip)?;
        if kind.is_geo() {
            found.decode::<GeoRecord>()?;
        } else {
            found.decode::<AsnRecord>()?;
        }
    }
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> GeoError {
    if source.kind() == io::ErrorKind::NotFound {
        GeoError::NotFound { path: path.into() }
    } else {
        GeoError::Open {
            path: path.into(),
            source,
        }
    }
}

/// The open MaxMind databases. Cloning is cheap (the mappings are shared), so a caller can
/// reload a clone and swap it in without holding up lookups.
#[derive(Clone, Default)]
pub struct GeoDbs {
    /// In cascade order: geo files City first, each kind in the order given.
    dbs: Vec<Db>,
}

impl fmt::Debug for GeoDbs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: Vec<_> = self
            .dbs
            .iter()
            .map(|d| (d.path.display(), &d.reader.metadata().database_type))
            .collect();
        f.debug_struct("GeoDbs").field("files", &files).finish()
    }
}

impl GeoDbs {
    /// Opens the given files, all or nothing: a path that was named and doesn't work is a
    /// configuration error. Each file's kind comes from its metadata `database_type`.
    pub fn open(paths: &[PathBuf]) -> Result<Self, GeoError> {
        let dbs = paths
            .iter()
            .map(|p| Db::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_dbs(dbs))
    }

    /// Opens what [`discover`](Self::discover) finds in `dirs`, skipping files that don't
    /// work (returned beside the set, to log: a directory may well hold databases of other
    /// kinds, e.g. GeoIP2-Anonymous-IP). An error only when nothing usable is there.
    pub fn open_dirs(dirs: &[&Path]) -> Result<(Self, Vec<(PathBuf, GeoError)>), GeoError> {
        let mut dbs = Vec::new();
        let mut skipped = Vec::new();
        for path in Self::discover(dirs) {
            match Db::open(&path) {
                Ok(db) => dbs.push(db),
                Err(e) => skipped.push((path, e)),
            }
        }
        if dbs.is_empty() {
            return Err(GeoError::NoneFound {
                dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            });
        }
        Ok((Self::from_dbs(dbs), skipped))
    }

    /// The `*.mmdb` files in `dirs`; missing dirs are skipped. In each dir, GeoIP2-* (the
    /// paid editions) come before GeoLite2-*, then the rest by name, so the better file of a
    /// kind is asked first. A name already found in an earlier dir is skipped: the same
    /// database twice would only double the work for addresses it doesn't know.
    pub fn discover(dirs: &[&Path]) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut here: Vec<(u8, String, PathBuf)> = entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let path = e.path();
                    let name = e.file_name().into_string().ok()?;
                    let is_mmdb = path.extension().is_some_and(|x| x == "mmdb");
                    // fs::metadata follows symlinks: a link to a database counts.
                    (is_mmdb && fs::metadata(&path).is_ok_and(|m| m.is_file()))
                        .then(|| (name_rank(&name), name, path))
                })
                .collect();
            here.sort();
            for (_, name, path) in here {
                if !found.iter().any(|p| p.file_name() == Some(name.as_ref())) {
                    found.push(path);
                }
            }
        }
        found
    }

    /// No databases: every lookup answers nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    fn from_dbs(mut dbs: Vec<Db>) -> Self {
        dbs.sort_by_key(|d| d.kind); // stable: the given order within a kind
        GeoDbs { dbs }
    }

    pub fn has_geo(&self) -> bool {
        self.dbs.iter().any(|d| d.kind.is_geo())
    }

    /// Lookups that failed so far, over every open file (compare before and after).
    pub fn errors(&self) -> u64 {
        self.dbs
            .iter()
            .map(|d| d.errors.load(Ordering::Relaxed))
            .sum()
    }

    pub fn has_asn(&self) -> bool {
        self.dbs.iter().any(|d| d.kind == Kind::Asn)
    }

    /// Geo and ASN of one address; None where no database has anything. IPv4-mapped IPv6
    /// addresses are looked up as IPv4 (IPv4-only files can't take them, and the IPv6
    /// files' `::ffff:0:0/96` alias isn't guaranteed).
    pub fn lookup(&self, ip: IpAddr) -> (Option<Geo>, Option<Asn>) {
        let ip = ip.to_canonical();
        let mut geo = None;
        let mut asn = None;
        for db in &self.dbs {
            if db.kind.is_geo() {
                if geo.is_none() {
                    geo = db.geo(ip);
                }
            } else if asn.is_none() {
                asn = db.asn(ip);
            }
        }
        (geo, asn)
    }

    /// Checks each file's identity, size and mtime; re-opens changed ones. A file that fails
    /// to re-open (corrupt, half-written, gone) keeps the previous database, and is not tried
    /// again until it changes again. Returns the outcome per changed file, to log and count.
    pub fn reload_changed(&mut self) -> Vec<(PathBuf, Result<(), GeoError>)> {
        let mut outcomes = Vec::new();
        let mut kinds_changed = false;
        for db in &mut self.dbs {
            let now = fs::metadata(&db.path).ok().map(|m| Stamp::of(&m));
            if now == db.seen {
                continue;
            }
            let outcome = match Db::open(&db.path) {
                Ok(new) => {
                    kinds_changed |= new.kind != db.kind;
                    *db = new;
                    Ok(())
                }
                Err(e) => {
                    db.seen = now;
                    Err(e)
                }
            };
            outcomes.push((db.path.clone(), outcome));
        }
        if kinds_changed {
            self.dbs.sort_by_key(|d| d.kind);
        }
        outcomes
    }

    /// (path, database_type, build epoch) of each open file, in cascade order, for logs and
    /// `sensor check`.
    pub fn files(&self) -> Vec<(PathBuf, String, u64)> {
        self.dbs
            .iter()
            .map(|d| {
                let m = d.reader.metadata();
                (d.path.clone(), m.database_type.clone(), m.build_epoch)
            })
            .collect()
    }

    /// Walks every file's whole search tree and data section (MaxMind's `verify`). Opening
    /// checks only the metadata and layout, which catches truncated and half-written files;
    /// this also catches damage inside. About a second per GeoLite2-City in a release build,
    /// so it is for `sensor check`, not for every open.
    pub fn verify(&self) -> Vec<(PathBuf, Result<(), GeoError>)> {
        self.dbs
            .iter()
            .map(|d| {
                let outcome = d.reader.verify().map_err(|source| GeoError::Invalid {
                    path: d.path.clone(),
                    source,
                });
                (d.path.clone(), outcome)
            })
            .collect()
    }
}

/// MaxMind's paid editions first, then the free ones, then other vendors' files.
fn name_rank(name: &str) -> u8 {
    if name.starts_with("GeoIP2-") {
        0
    } else if name.starts_with("GeoLite2-") {
        1
    } else {
        2
    }
}

/// Lookups run on a worker pool sharing one set.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<GeoDbs>();
};

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        sync::atomic::{AtomicU32, Ordering},
        time::{Duration, SystemTime},
    };

    use super::*;

    const TEST_DATA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/mmdb/maxmind-test"
    );
    const REAL_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/mmdb");

    fn test_db(name: &str) -> PathBuf {
        Path::new(TEST_DATA).join(name)
    }

    fn open(names: &[&str]) -> GeoDbs {
        let paths: Vec<PathBuf> = names.iter().map(|n| test_db(n)).collect();
        match GeoDbs::open(&paths) {
            Ok(dbs) => dbs,
            Err(e) => panic!("opening {names:?}: {e}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn geo(country: Option<&str>, city: Option<&str>, lat: f64, lon: f64) -> Geo {
        Geo {
            country: country.map(str::to_owned),
            city: city.map(str::to_owned),
            lat: Some(lat),
            lon: Some(lon),
        }
    }

    fn asn(asn: u32, org: Option<&str>) -> Asn {
        Asn {
            asn,
            org: org.map(str::to_owned),
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("sensor-geo-test-{}-{tag}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("creating temp dir");
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Replaces `path` the safe way (write a sibling, rename over), as geoipupdate does,
    /// with an mtime that differs from the old file's.
    fn replace(path: &Path, contents: &[u8]) {
        let tmp = path.with_extension("new");
        fs::write(&tmp, contents).expect("writing replacement");
        let later = SystemTime::now() + Duration::from_secs(10);
        File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(later))
            .expect("bumping mtime");
        fs::rename(&tmp, path).expect("renaming replacement");
    }

    fn assert_error_names(err: &GeoError, path: &Path) {
        let shown = err.to_string();
        assert!(
            shown.contains(&path.display().to_string()),
            "error {shown:?} does not name {}",
            path.display()
        );
    }

    #[test]
    fn city_known_answers_ipv4() {
        let dbs = open(&["GeoIP2-City-Test.mmdb"]);
        assert!(dbs.has_geo());
        assert!(!dbs.has_asn());
        let london = geo(Some("GB"), Some("London"), 51.5142, -0.0931);
        assert_eq!(dbs.lookup(ip("81.2.69.142")), (Some(london), None));
        let boxford = geo(Some("GB"), Some("Boxford"), 51.75, -1.25);
        assert_eq!(dbs.lookup(ip("2.125.160.216")), (Some(boxford), None));
        // Non-ASCII names come through intact.
        let linkoping = geo(Some("SE"), Some("Linköping"), 58.4167, 15.6167);
        assert_eq!(dbs.lookup(ip("89.160.20.128")).0, Some(linkoping));
        // A country without a city (214.78.124.0/24 has only country and location).
        let us = geo(Some("US"), None, 36.7783, -119.4179);
        assert_eq!(dbs.lookup(ip("214.78.124.1")).0, Some(us));
    }

    #[test]
    fn city_known_answer_ipv6() {
        let san_diego = geo(Some("US"), Some("San Diego"), 32.7203, -117.1552);
        for name in ["GeoIP2-City-Test.mmdb", "GeoLite2-City-Test.mmdb"] {
            let dbs = open(&[name]);
            assert_eq!(
                dbs.lookup(ip("2001:480:10::1")).0,
                Some(san_diego.clone()),
                "{name}"
            );
        }
    }

    #[test]
    fn country_db_gives_country_only() {
        let dbs = open(&["GeoLite2-Country-Test.mmdb"]);
        assert!(dbs.has_geo());
        let gb = Geo {
            country: Some("GB".into()),
            ..Geo::default()
        };
        assert_eq!(dbs.lookup(ip("81.2.69.142")), (Some(gb), None));
        let gi = dbs
            .lookup(ip("217.65.48.1"))
            .0
            .expect("217.65.48.0/29 is GI");
        assert_eq!(gi.country.as_deref(), Some("GI"));
        assert_eq!((gi.city, gi.lat, gi.lon), (None, None, None));
    }

    #[test]
    fn asn_db_gives_number_and_org() {
        let dbs = open(&["GeoLite2-ASN-Test.mmdb"]);
        assert!(dbs.has_asn());
        assert!(!dbs.has_geo());
        let telstra = asn(1221, Some("Telstra Pty Ltd"));
        assert_eq!(dbs.lookup(ip("1.128.0.0")), (None, Some(telstra.clone())));
        assert_eq!(dbs.lookup(ip("2001:8000::1")).1, Some(telstra));
        // A record with a number and no organization.
        assert_eq!(dbs.lookup(ip("12.81.96.1")).1, Some(asn(7018, None)));
    }

    #[test]
    fn isp_db_counts_as_asn() {
        let dbs = open(&["GeoIP2-ISP-Test.mmdb"]);
        assert!(dbs.has_asn());
        let telstra = asn(1221, Some("Telstra Pty Ltd"));
        assert_eq!(dbs.lookup(ip("1.128.0.0")).1, Some(telstra));
        // 1.0.128.0/17 has an ISP but no AS number: no ASN answer.
        assert_eq!(dbs.lookup(ip("1.0.128.1")), (None, None));
    }

    #[test]
    fn combined_set_gives_both() {
        let dbs = open(&["GeoLite2-ASN-Test.mmdb", "GeoLite2-City-Test.mmdb"]);
        assert!(dbs.has_geo() && dbs.has_asn());
        let linkoping = geo(Some("SE"), Some("Linköping"), 58.4167, 15.6167);
        let bredband = asn(29518, Some("Bredband2 AB"));
        assert_eq!(
            dbs.lookup(ip("89.160.20.130")),
            (Some(linkoping), Some(bredband))
        );
        // Only one of the two knows 1.128.0.0.
        assert_eq!(
            dbs.lookup(ip("1.128.0.0")),
            (None, Some(asn(1221, Some("Telstra Pty Ltd"))))
        );
    }

    #[test]
    fn city_wins_over_country_and_country_fills_in() {
        // Country given first: City is still asked first.
        let dbs = open(&["GeoLite2-Country-Test.mmdb", "GeoLite2-City-Test.mmdb"]);
        let london = geo(Some("GB"), Some("London"), 51.5142, -0.0931);
        assert_eq!(dbs.lookup(ip("81.2.69.142")).0, Some(london));
        // 217.65.48.0/29 is only in the Country file.
        let gi = dbs
            .lookup(ip("217.65.48.1"))
            .0
            .expect("Country file answers");
        assert_eq!((gi.country.as_deref(), gi.city), (Some("GI"), None));
        let types: Vec<String> = dbs.files().into_iter().map(|(_, t, _)| t).collect();
        assert_eq!(types, ["GeoLite2-City", "GeoLite2-Country"]);
    }

    #[test]
    fn empty_record_falls_through() {
        // GeoIP2-City-Test has a record for 214.1.1.0/24 with nothing in it.
        let dbs = open(&["GeoIP2-City-Test.mmdb", "GeoLite2-ASN-Test.mmdb"]);
        assert_eq!(
            dbs.lookup(ip("214.1.1.1")),
            (None, Some(asn(721, Some("DoD Network Information Center"))))
        );
    }

    #[test]
    fn absent_address_is_none() {
        let dbs = open(&[
            "GeoIP2-City-Test.mmdb",
            "GeoLite2-Country-Test.mmdb",
            "GeoLite2-ASN-Test.mmdb",
        ]);
        for a in [
            "10.0.0.1",
            "127.0.0.1",
            "192.0.2.1",
            "::1",
            "fe80::1",
            "2001:db8::1",
        ] {
            assert_eq!(dbs.lookup(ip(a)), (None, None), "{a}");
        }
        let none = GeoDbs::empty();
        assert!(!none.has_geo() && !none.has_asn());
        assert!(none.files().is_empty());
        assert_eq!(none.lookup(ip("81.2.69.142")), (None, None));
    }

    #[test]
    fn ipv4_mapped_is_looked_up_as_ipv4() {
        let dbs = open(&["GeoLite2-City-Test.mmdb", "GeoLite2-ASN-Test.mmdb"]);
        for a in ["81.2.69.142", "89.160.20.130", "1.128.0.0", "10.0.0.1"] {
            let v4: Ipv4Addr = a.parse().expect("test address");
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            assert_eq!(dbs.lookup(mapped), dbs.lookup(IpAddr::V4(v4)), "{mapped}");
        }
        assert!(dbs.lookup(ip("::ffff:81.2.69.142")).0.is_some());
    }

    #[test]
    fn ipv4_only_file_skips_ipv6() {
        // No IPv4-only test file exists; flip the flag on an IPv6 one. An IPv6 address is
        // then "nothing" without asking the reader (which would return an error).
        let mut dbs = open(&["GeoLite2-City-Test.mmdb"]);
        dbs.dbs[0].ipv6 = false;
        assert_eq!(dbs.lookup(ip("2001:480:10::1")), (None, None));
        assert!(dbs.lookup(ip("81.2.69.142")).0.is_some());
        assert!(dbs.lookup(ip("::ffff:81.2.69.142")).0.is_some());
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_path() {
        let tmp = TempDir::new("corrupt");
        let good = fs::read(test_db("GeoLite2-City-Test.mmdb")).expect("reading test db");

        let truncated = tmp.path("truncated.mmdb");
        fs::write(&truncated, &good[..good.len() / 2]).expect("writing");
        let garbled_tail = tmp.path("garbled.mmdb");
        let mut garbled = good.clone();
        let n = garbled.len();
        for b in &mut garbled[n - 300..] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        fs::write(&garbled_tail, &garbled).expect("writing");
        let garbage = tmp.path("garbage.mmdb");
        fs::write(&garbage, b"not a maxmind database\n".repeat(100)).expect("writing");
        let empty = tmp.path("empty.mmdb");
        fs::write(&empty, b"").expect("writing");

        for bad in [&truncated, &garbled_tail, &garbage, &empty] {
            let paths = [test_db("GeoLite2-ASN-Test.mmdb"), bad.clone()];
            let err = GeoDbs::open(&paths).expect_err("a corrupt file must not open");
            assert!(matches!(err, GeoError::Invalid { .. }), "{err:?}");
            assert_error_names(&err, bad);
        }

        let missing = tmp.path("missing.mmdb");
        let err = GeoDbs::open(std::slice::from_ref(&missing)).expect_err("missing");
        assert!(matches!(err, GeoError::NotFound { .. }), "{err:?}");
        assert_error_names(&err, &missing);

        let err = GeoDbs::open(std::slice::from_ref(&tmp.0)).expect_err("a directory");
        assert!(matches!(err, GeoError::NotAFile { .. }), "{err:?}");
        assert_error_names(&err, &tmp.0);

        // MaxMind's bad-data corpus, where present: each file fails to open or to verify.
        let bad_dir = Path::new(TEST_DATA).join("bad-data");
        let mut bad_files = Vec::new();
        collect_files(&bad_dir, &mut bad_files);
        for bad in bad_files {
            match GeoDbs::open(std::slice::from_ref(&bad)) {
                Err(err) => assert_error_names(&err, &bad),
                Ok(dbs) => {
                    for (_, outcome) in dbs.verify() {
                        let err = outcome.expect_err("bad-data file must fail verification");
                        assert_error_names(&err, &bad);
                    }
                }
            }
        }
    }

    fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                collect_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "mmdb") {
                out.push(p);
            }
        }
    }

    #[test]
    fn unknown_kind_is_an_error() {
        // The ASN test database with its type renamed in the metadata (same length).
        let tmp = TempDir::new("kind");
        let mut bytes = fs::read(test_db("GeoLite2-ASN-Test.mmdb")).expect("reading");
        let from = b"GeoLite2-ASN";
        let at = bytes
            .windows(from.len())
            .rposition(|w| w == from)
            .expect("database_type in metadata");
        bytes[at..at + from.len()].copy_from_slice(b"GeoLite2-Foo");
        let path = tmp.path("foo.mmdb");
        fs::write(&path, &bytes).expect("writing");
        let err = GeoDbs::open(std::slice::from_ref(&path)).expect_err("unknown kind");
        match &err {
            GeoError::UnknownKind { database_type, .. } => {
                assert_eq!(database_type, "GeoLite2-Foo")
            }
            other => panic!("{other:?}"),
        }
        assert_error_names(&err, &path);
    }

    #[test]
    fn files_report_type_and_build_epoch() {
        let dbs = open(&["GeoLite2-ASN-Test.mmdb", "GeoIP2-City-Test.mmdb"]);
        let files = dbs.files();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, test_db("GeoIP2-City-Test.mmdb"));
        assert_eq!(files[0].1, "GeoIP2-City");
        assert_eq!(files[1].1, "GeoLite2-ASN");
        assert!(files.iter().all(|(_, _, epoch)| *epoch > 1_500_000_000));
        assert!(dbs.verify().iter().all(|(_, r)| r.is_ok()));
        assert!(format!("{dbs:?}").contains("GeoIP2-City"));
    }

    #[test]
    fn discover_finds_mmdb_files_in_order() {
        let a = TempDir::new("discover-a");
        let b = TempDir::new("discover-b");
        for (dir, name, src) in [
            (&a, "GeoLite2-City.mmdb", "GeoLite2-City-Test.mmdb"),
            (&a, "GeoIP2-City.mmdb", "GeoIP2-City-Test.mmdb"),
            (&a, "dbip-asn.mmdb", "GeoLite2-ASN-Test.mmdb"),
            (&b, "GeoLite2-City.mmdb", "GeoLite2-Country-Test.mmdb"),
            (&b, "GeoLite2-ASN.mmdb", "GeoLite2-ASN-Test.mmdb"),
        ] {
            fs::copy(test_db(src), dir.path(name)).expect("copying");
        }
        fs::write(a.path("README.txt"), b"x").expect("writing");
        fs::write(a.path("GeoLite2-Country.mmdb.temp"), b"x").expect("writing");
        fs::create_dir(a.path("dir.mmdb")).expect("mkdir");
        let missing = a.path("no-such-dir");

        let found = GeoDbs::discover(&[&missing, &a.0, &b.0]);
        assert_eq!(
            found,
            [
                a.path("GeoIP2-City.mmdb"),
                a.path("GeoLite2-City.mmdb"),
                a.path("dbip-asn.mmdb"),
                b.path("GeoLite2-ASN.mmdb"),
            ]
        );
        assert!(GeoDbs::discover(&[&missing]).is_empty());

        let (dbs, skipped) = GeoDbs::open_dirs(&[&a.0, &b.0]).expect("opening dirs");
        assert!(skipped.is_empty(), "{skipped:?}");
        assert!(dbs.has_geo() && dbs.has_asn());
        assert_eq!(dbs.files()[0].0, a.path("GeoIP2-City.mmdb"));
    }

    #[test]
    fn open_dirs_skips_bad_files_and_fails_on_none() {
        let tmp = TempDir::new("open-dirs");
        let err = GeoDbs::open_dirs(&[&tmp.0]).expect_err("empty dir");
        assert!(matches!(err, GeoError::NoneFound { .. }), "{err:?}");
        assert_error_names(&err, &tmp.0);

        fs::write(tmp.path("broken.mmdb"), b"garbage").expect("writing");
        assert!(matches!(
            GeoDbs::open_dirs(&[&tmp.0]),
            Err(GeoError::NoneFound { .. })
        ));

        fs::copy(
            test_db("GeoLite2-Country-Test.mmdb"),
            tmp.path("GeoLite2-Country.mmdb"),
        )
        .expect("copying");
        let (dbs, skipped) = GeoDbs::open_dirs(&[&tmp.0]).expect("one good file");
        assert!(dbs.has_geo());
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, tmp.path("broken.mmdb"));
        assert!(matches!(skipped[0].1, GeoError::Invalid { .. }));
    }

    #[test]
    fn reload_picks_up_replaced_files_and_keeps_old_on_failure() {
        let tmp = TempDir::new("reload");
        let path = tmp.path("GeoLite2-City.mmdb");
        fs::copy(test_db("GeoIP2-City-Test.mmdb"), &path).expect("copying");
        let mut dbs = GeoDbs::open(std::slice::from_ref(&path)).expect("opening copy");
        let london = geo(Some("GB"), Some("London"), 51.5142, -0.0931);
        assert_eq!(dbs.lookup(ip("81.2.69.142")).0, Some(london));
        assert!(dbs.reload_changed().is_empty(), "nothing changed yet");

        // A new database of another kind: reloaded, new answers.
        let country = fs::read(test_db("GeoLite2-Country-Test.mmdb")).expect("reading");
        replace(&path, &country);
        let outcomes = dbs.reload_changed();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].0, path);
        assert!(outcomes[0].1.is_ok(), "{outcomes:?}");
        let gb_only = Geo {
            country: Some("GB".into()),
            ..Geo::default()
        };
        assert_eq!(dbs.lookup(ip("81.2.69.142")).0, Some(gb_only.clone()));
        assert_eq!(dbs.files()[0].1, "GeoLite2-Country");
        assert!(dbs.reload_changed().is_empty());

        // A clone taken now keeps answering from its own mapping whatever happens next.
        let before = dbs.clone();

        // Garbage: reported once, the old database stays.
        replace(&path, b"half a database");
        let outcomes = dbs.reload_changed();
        assert_eq!(outcomes.len(), 1);
        let err = outcomes[0].1.as_ref().expect_err("garbage must not load");
        assert!(matches!(err, GeoError::Invalid { .. }), "{err:?}");
        assert_error_names(err, &path);
        assert_eq!(dbs.lookup(ip("81.2.69.142")).0, Some(gb_only.clone()));
        assert!(
            dbs.reload_changed().is_empty(),
            "a failure is reported once"
        );

        // Gone: reported once, the old database stays.
        fs::remove_file(&path).expect("removing");
        let outcomes = dbs.reload_changed();
        assert!(
            matches!(outcomes[..], [(_, Err(GeoError::NotFound { .. }))]),
            "{outcomes:?}"
        );
        assert!(dbs.reload_changed().is_empty());
        assert_eq!(dbs.lookup(ip("81.2.69.142")).0, Some(gb_only.clone()));

        // Back as a City database (a kind change that reorders the cascade).
        let city = fs::read(test_db("GeoLite2-City-Test.mmdb")).expect("reading");
        replace(&path, &city);
        let outcomes = dbs.reload_changed();
        assert!(matches!(outcomes[..], [(_, Ok(()))]), "{outcomes:?}");
        assert_eq!(
            dbs.lookup(ip("81.2.69.142")).0.and_then(|g| g.city),
            Some("London".into())
        );
        assert_eq!(before.lookup(ip("81.2.69.142")).0, Some(gb_only));
    }

    #[test]
    fn reload_reorders_when_a_file_changes_kind() {
        let tmp = TempDir::new("reorder");
        let first = tmp.path("a.mmdb");
        let second = tmp.path("b.mmdb");
        fs::copy(test_db("GeoLite2-City-Test.mmdb"), &first).expect("copying");
        fs::copy(test_db("GeoLite2-Country-Test.mmdb"), &second).expect("copying");
        let mut dbs = GeoDbs::open(&[first.clone(), second.clone()]).expect("opening");
        // `second` becomes the City file, `first` the Country one.
        let city = fs::read(test_db("GeoIP2-City-Test.mmdb")).expect("reading");
        let country = fs::read(test_db("GeoIP2-Country-Test.mmdb")).expect("reading");
        replace(&second, &city);
        replace(&first, &country);
        let outcomes = dbs.reload_changed();
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        let files: Vec<_> = dbs.files().into_iter().map(|(p, t, _)| (p, t)).collect();
        assert_eq!(
            files,
            [
                (second, "GeoIP2-City".to_string()),
                (first, "GeoIP2-Country".to_string())
            ]
        );
        assert_eq!(
            dbs.lookup(ip("81.2.69.142")).0.and_then(|g| g.city),
            Some("London".into())
        );
    }

    #[test]
    fn real_databases_sanity() {
        let city = Path::new(REAL_DATA).join("GeoLite2-City-20191224.mmdb");
        let asn_db = Path::new(REAL_DATA).join("ip-location-db-asn.mmdb");
        if !city.is_file() || !asn_db.is_file() {
            eprintln!(
                "SKIP: real_databases_sanity: {} or {} is missing",
                city.display(),
                asn_db.display()
            );
            return;
        }
        let dbs = GeoDbs::open(&[city, asn_db]).expect("opening the real databases");
        let (g, a) = dbs.lookup(ip("8.8.8.8"));
        assert_eq!(g.and_then(|g| g.country).as_deref(), Some("US"));
        assert_eq!(a.map(|a| a.asn), Some(15169));
        let (g, a) = dbs.lookup(ip("2001:4860:4860::8888"));
        assert_eq!(g.and_then(|g| g.country).as_deref(), Some("US"));
        assert_eq!(a.map(|a| a.asn), Some(15169));
        assert_eq!(dbs.lookup(ip("10.1.2.3")), (None, None));
    }
}
