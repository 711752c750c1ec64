//! Threat-intel lists (FireHOL netsets/ipsets, IPsum, plain IP/CIDR files) loaded from one
//! directory, answering "which lists hold this address, and with which entry" by
//! longest-prefix match.
//!
//! The lookup runs for every new remote address, so all lists share one structure: per
//! address family, one hash map per prefix length that occurs in any list, keyed by the
//! masked address, valued by the set of lists holding that exact prefix. A lookup probes
//! only the lengths present, longest first, so the first hit per list is its most specific
//! entry. Sets of lists are interned: a map value is a `u32` index, which keeps IPsum's
//! 120k single addresses at a few bytes each.

use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::BitAnd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use foldhash::HashMap;
use ipnet::{IpNet, Ipv4Net};

use super::ThreatHit;

#[derive(Debug, thiserror::Error)]
pub enum ThreatError {
    #[error("reading threat-list directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("threat list {path}: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading threat list {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One loaded list, for logs and `sensor check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInfo {
    /// The file name without its extension (`firehol_level1`).
    pub name: String,
    pub path: PathBuf,
    /// Distinct entries, after normalising CIDRs to their network.
    pub entries: usize,
    /// Lines that were neither blank, a comment, nor an address or CIDR.
    pub bad_lines: usize,
    /// Now − the file's mtime, in seconds.
    pub age_s: u64,
}

/// Threat lists loaded from a directory. Cheap to query from many threads (`Send + Sync`,
/// lookups take `&self`).
pub struct ThreatLists {
    /// `None` for [`ThreatLists::empty`], which has nothing to reload.
    dir: Option<PathBuf>,
    /// What the lists were loaded from, to notice changes without re-reading the files.
    stamps: Vec<FileStamp>,
    /// Sorted by name; a list's id is its index, so hits sorted by id are sorted by name.
    lists: Vec<List>,
    /// Interned sets of list ids (each sorted ascending), indexed by the maps' values.
    sets: Vec<Box<[u32]>>,
    /// Longest prefix first; only lengths that occur.
    v4: Vec<Table<u32>>,
    v6: Vec<Table<u128>>,
}

struct List {
    name: String,
    path: PathBuf,
    entries: usize,
    bad_lines: usize,
    mtime: SystemTime,
}

/// A list file as last seen: a change in any of these (or in the set of files) triggers a
/// reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    mtime: SystemTime,
}

/// All entries of one prefix length.
struct Table<K> {
    len: u8,
    mask: K,
    /// Masked address → index into `ThreatLists::sets`.
    map: HashMap<K, u32>,
}

/// An address family's integer form, so the tables and the probe are written once.
trait Key: Copy + Eq + Hash + BitAnd<Output = Self> {
    const BITS: u8;
    fn mask(len: u8) -> Self;
    fn net(self, len: u8) -> IpNet;
}

impl Key for u32 {
    const BITS: u8 = 32;
    fn mask(len: u8) -> Self {
        u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0)
    }
    fn net(self, len: u8) -> IpNet {
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(self), len))
    }
}

impl Key for u128 {
    const BITS: u8 = 128;
    fn mask(len: u8) -> Self {
        u128::MAX.checked_shl(u32::from(128 - len)).unwrap_or(0)
    }
    fn net(self, len: u8) -> IpNet {
        IpNet::V6(ipnet::Ipv6Net::new_assert(Ipv6Addr::from(self), len))
    }
}

impl ThreatLists {
    /// Loads every list file in `dir`: FireHOL `.netset` / `.ipset`, and plain IP/CIDR files
    /// (`.txt`, `.list`, `.cidr`, or no extension). Hidden files, README/LICENSE-like files,
    /// other extensions and subdirectories are skipped.
    ///
    /// One address or CIDR per line, the first whitespace-separated field (IPsum's
    /// `IP<TAB>count`); `#` and `;` start comments. Lines that don't parse are counted per
    /// file and the first one is logged; the file's other entries are kept.
    pub fn load(dir: &Path) -> Result<Self, ThreatError> {
        let stamps = scan(dir)?;
        Self::build(dir, stamps)
    }

    /// No lists: every lookup misses. For running without a threat-list directory.
    pub fn empty() -> Self {
        ThreatLists {
            dir: None,
            stamps: Vec::new(),
            lists: Vec::new(),
            sets: Vec::new(),
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }

    /// Every list containing `ip`, one hit per list with that list's most specific entry
    /// (single addresses shown without `/32` or `/128`), sorted by list name. An
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) matches IPv4 entries.
    pub fn lookup(&self, ip: IpAddr) -> Vec<ThreatHit> {
        // (list id, entry); stays unallocated on a miss, the common case.
        let mut found: Vec<(u32, IpNet)> = Vec::new();
        match ip.to_canonical() {
            IpAddr::V4(a) => probe(&self.v4, u32::from(a), &self.sets, &mut found),
            IpAddr::V6(a) => probe(&self.v6, u128::from(a), &self.sets, &mut found),
        }
        if found.is_empty() {
            return Vec::new();
        }
        found.sort_unstable_by_key(|&(id, _)| id);
        let now = SystemTime::now();
        found
            .into_iter()
            .map(|(id, net)| {
                let list = &self.lists[id as usize];
                ThreatHit {
                    list: list.name.clone(),
                    age_s: age_s(now, list.mtime),
                    entry: entry_text(net),
                }
            })
            .collect()
    }

    /// Re-reads the directory when a list file's size or mtime changed, or list files were
    /// added or removed. `Ok(true)` when reloaded. On error the previous lists stay in place
    /// (a half-written update must not blank the verdicts) and the error is returned.
    pub fn reload_if_changed(&mut self) -> Result<bool, ThreatError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let stamps = scan(dir)?;
        if stamps == self.stamps {
            return Ok(false);
        }
        *self = Self::build(dir, stamps)?;
        Ok(true)
    }

    /// One entry per list, sorted by name.
    pub fn lists(&self) -> Vec<ListInfo> {
        let now = SystemTime::now();
        self.lists
            .iter()
            .map(|l| ListInfo {
                name: l.name.clone(),
                path: l.path.clone(),
                entries: l.entries,
                bad_lines: l.bad_lines,
                age_s: age_s(now, l.mtime),
            })
            .collect()
    }

    /// True when no list holds any entry, so callers can skip the lookup.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Reads the files in `stamps` (sorted by path) into a new set of lists.
    fn build(dir: &Path, stamps: Vec<FileStamp>) -> Result<Self, ThreatError> {
        // Several files can map to one name (`x.netset`, `x.txt`); the first (by file name)
        // wins so names, and hits, stay unique.
        let mut named: Vec<(String, FileStamp)> = Vec::with_capacity(stamps.len());
        for stamp in &stamps {
            let name = list_name(&stamp.path);
            if let Some((_, first)) = named.iter().find(|(n, _)| *n == name) {
                tracing::warn!(
                    path = %stamp.path.display(),
                    kept = %first.path.display(),
                    "threat list skipped: another file has the same list name {name:?}"
                );
                continue;
            }
            named.push((name, stamp.clone()));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));

        let mut builder = Builder::default();
        let mut lists = Vec::with_capacity(named.len());
        let mut vanished = Vec::new();
        for (name, stamp) in named {
            let bytes = match std::fs::read(&stamp.path) {
                Ok(b) => b,
                // Removed since the scan (an updater replacing it): left out of the stamps,
                // so the next check notices when it is back.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    vanished.push(stamp.path);
                    continue;
                }
                Err(source) => {
                    return Err(ThreatError::Read {
                        path: stamp.path,
                        source,
                    });
                }
            };
            let id = lists.len() as u32;
            let (entries, bad_lines) = builder.add_file(id, &stamp.path, &bytes);
            lists.push(List {
                name,
                path: stamp.path,
                entries,
                bad_lines,
                mtime: stamp.mtime,
            });
        }
        // Files skipped for a duplicate name stay in: they are seen, just not used.
        let mut stamps = stamps;
        stamps.retain(|s| !vanished.contains(&s.path));

        let Builder { sets, v4, v6 } = builder;
        Ok(ThreatLists {
            dir: Some(dir.to_path_buf()),
            stamps,
            lists,
            sets: sets.sets,
            v4: finish(v4),
            v6: finish(v6),
        })
    }
}

impl Default for ThreatLists {
    fn default() -> Self {
        Self::empty()
    }
}

/// The maps are large; show what was loaded instead.
impl fmt::Debug for ThreatLists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreatLists")
            .field("dir", &self.dir)
            .field("lists", &self.lists())
            .finish_non_exhaustive()
    }
}

/// Records into `found` each list not yet there that holds a prefix of `addr`; tables are
/// longest first, so each list's first record is its longest match.
fn probe<K: Key>(tables: &[Table<K>], addr: K, sets: &[Box<[u32]>], found: &mut Vec<(u32, IpNet)>) {
    for t in tables {
        let key = addr & t.mask;
        let Some(&set) = t.map.get(&key) else {
            continue;
        };
        for &id in sets[set as usize].iter() {
            if !found.iter().any(|&(f, _)| f == id) {
                found.push((id, key.net(t.len)));
            }
        }
    }
}

/// The list files in `dir` with their size and mtime, sorted by path.
fn scan(dir: &Path) -> Result<Vec<FileStamp>, ThreatError> {
    let read_dir_err = |source| ThreatError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut stamps = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_err)? {
        let entry = entry.map_err(read_dir_err)?;
        let path = entry.path();
        if !is_list_file_name(&path) {
            continue;
        }
        // Follows symlinks: a link to a list file is a list file.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Gone since read_dir, or a dangling link: nothing to load.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ThreatError::Metadata { path, source }),
        };
        // Directories, FIFOs (reading one would block), sockets, devices.
        if !meta.is_file() {
            continue;
        }
        let mtime = match meta.modified() {
            Ok(t) => t,
            Err(source) => return Err(ThreatError::Metadata { path, source }),
        };
        stamps.push(FileStamp {
            path,
            len: meta.len(),
            mtime,
        });
    }
    stamps.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(stamps)
}

/// Whether a directory entry's name looks like a list: not hidden, an allowed extension
/// (or none), and not documentation shipped beside the lists.
fn is_list_file_name(path: &Path) -> bool {
    const EXTENSIONS: [&str; 5] = ["netset", "ipset", "txt", "list", "cidr"];
    const NOT_LISTS: [&str; 7] = [
        "readme",
        "license",
        "licence",
        "copying",
        "notice",
        "changelog",
        "authors",
    ];
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let ext_ok = match path.extension().and_then(|e| e.to_str()) {
        None => true,
        Some(ext) => EXTENSIONS.iter().any(|x| ext.eq_ignore_ascii_case(x)),
    };
    let stem = list_name(path).to_ascii_lowercase();
    ext_ok && !NOT_LISTS.iter().any(|x| stem.starts_with(x))
}

/// The file name without its extension.
fn list_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Parses one line: `Ok(None)` for blank and comment lines, `Err` for anything else that is
/// not an address or CIDR. CIDRs come back normalised to their network, and IPv4-mapped
/// IPv6 entries as IPv4 (which is what lookups use for such addresses).
#[expect(
    clippy::result_unit_err,
    reason = "public for the fuzzer; the caller names the file and line"
)]
pub fn parse_line(line: &str) -> Result<Option<IpNet>, ()> {
    let text = line.split(['#', ';']).next().unwrap_or("");
    let Some(field) = text.split_whitespace().next() else {
        return Ok(None);
    };
    let net = if field.contains('/') {
        field.parse::<IpNet>().map_err(drop)?
    } else {
        IpNet::from(field.parse::<IpAddr>().map_err(drop)?)
    };
    let net = match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(a) => IpNet::V4(Ipv4Net::new_assert(a, n.prefix_len() - 96)),
            None => net,
        },
        _ => net,
    };
    Ok(Some(net.trunc()))
}

/// Builds the shared tables one file at a time, in list-id order.
#[derive(Default)]
struct Builder {
    sets: Interner,
    v4: HashMap<u8, HashMap<u32, u32>>,
    v6: HashMap<u8, HashMap<u128, u32>>,
}

impl Builder {
    /// Adds one file's entries as list `id`; returns (distinct entries, bad lines).
    fn add_file(&mut self, id: u32, path: &Path, bytes: &[u8]) -> (usize, usize) {
        let mut entries = 0;
        let mut bad_lines = 0;
        let mut first_bad: Option<(usize, String)> = None;
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let parsed = std::str::from_utf8(raw)
                .map_err(drop)
                .and_then(|line| parse_line(line.trim_start_matches('\u{feff}')));
            let new = match parsed {
                Ok(None) => continue,
                Ok(Some(IpNet::V4(n))) => {
                    let map = self.v4.entry(n.prefix_len()).or_default();
                    add_entry(&mut self.sets, map, u32::from(n.addr()), id)
                }
                Ok(Some(IpNet::V6(n))) => {
                    let map = self.v6.entry(n.prefix_len()).or_default();
                    add_entry(&mut self.sets, map, u128::from(n.addr()), id)
                }
                Err(()) => {
                    bad_lines += 1;
                    if first_bad.is_none() {
                        first_bad = Some((i + 1, snippet(raw)));
                    }
                    continue;
                }
            };
            entries += usize::from(new);
        }
        if let Some((line, text)) = first_bad {
            tracing::warn!(
                path = %path.display(),
                line,
                text = %text,
                bad_lines,
                "threat list: skipped lines that are not an address or CIDR"
            );
        }
        (entries, bad_lines)
    }
}

/// Adds list `id` to the entry `key`; false when the list already had it (a duplicate line).
fn add_entry<K: Key>(sets: &mut Interner, map: &mut HashMap<K, u32>, key: K, id: u32) -> bool {
    match map.entry(key) {
        Entry::Vacant(v) => {
            v.insert(sets.with(None, id));
            true
        }
        Entry::Occupied(mut o) => {
            let cur = *o.get();
            if sets.sets[cur as usize].last() == Some(&id) {
                return false;
            }
            o.insert(sets.with(Some(cur), id));
            true
        }
    }
}

/// Interned sets of list ids. Ids are added in ascending order, so a set is always an
/// existing set plus a larger id, and `(set, id)` names the result uniquely.
#[derive(Default)]
struct Interner {
    sets: Vec<Box<[u32]>>,
    /// (set or `u32::MAX` for the empty set, added id) → resulting set.
    grown: HashMap<(u32, u32), u32>,
}

impl Interner {
    fn with(&mut self, set: Option<u32>, id: u32) -> u32 {
        let key = (set.unwrap_or(u32::MAX), id);
        if let Some(&s) = self.grown.get(&key) {
            return s;
        }
        let mut ids = set
            .map(|s| self.sets[s as usize].to_vec())
            .unwrap_or_default();
        ids.push(id);
        let s = self.sets.len() as u32;
        self.sets.push(ids.into_boxed_slice());
        self.grown.insert(key, s);
        s
    }
}

/// The per-length maps as tables, longest prefix first.
fn finish<K: Key>(maps: HashMap<u8, HashMap<K, u32>>) -> Vec<Table<K>> {
    let mut tables: Vec<Table<K>> = maps
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(len, mut map)| {
            map.shrink_to_fit();
            Table {
                len,
                mask: K::mask(len),
                map,
            }
        })
        .collect();
    tables.sort_by_key(|t| std::cmp::Reverse(t.len));
    debug_assert!(tables.iter().all(|t| t.len <= K::BITS));
    tables
}

/// A list entry as text: single addresses without `/32` or `/128`.
fn entry_text(net: IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// A bad line for the log, cut short so a binary file can't flood it.
fn snippet(raw: &[u8]) -> String {
    const MAX: usize = 80;
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Seconds since `mtime`; 0 for a file from the future (clock steps).
fn age_s(now: SystemTime, mtime: SystemTime) -> u64 {
    now.duration_since(mtime).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const DATA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/threat-intel"
    );

    /// The real lists, loaded once for all tests.
    fn real() -> &'static ThreatLists {
        static LISTS: OnceLock<ThreatLists> = OnceLock::new();
        LISTS.get_or_init(|| ThreatLists::load(Path::new(DATA)).expect("load threat-intel lists"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// (list, entry) pairs of a lookup, for compact assertions.
    fn hits(lists: &ThreatLists, addr: &str) -> Vec<(String, String)> {
        lists
            .lookup(ip(addr))
            .into_iter()
            .map(|h| (h.list, h.entry))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("sensor-threat-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn loads_real_lists_with_names_and_counts() {
        let lists = real();
        let info = lists.lists();
        let names: Vec<&str> = info.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "et_compromised",
                "firehol_level1",
                "ipsum-20260822",
                "spamhaus_drop",
                "spamhaus_edrop",
                "tor_exits",
            ]
        );
        for l in &info {
            // Independent count: lines that are neither blank nor `#` comments. These files
            // have no duplicate entries, so it equals the distinct count.
            let text = std::fs::read_to_string(&l.path).unwrap();
            let expected = text
                .lines()
                .map(str::trim)
                .filter(|t| !t.is_empty() && !t.starts_with('#'))
                .count();
            assert!(expected > 0, "{}", l.name);
            assert_eq!(l.entries, expected, "{}", l.name);
            assert_eq!(l.bad_lines, 0, "{}", l.name);
        }
        assert!(!lists.is_empty());
        assert!(!info.iter().any(|l| l.name.starts_with("ipsum.")));
    }

    #[test]
    fn tor_exit_address_hits_tor_exits() {
        let h = hits(real(), "2.56.10.36");
        assert!(
            h.contains(&("tor_exits".into(), "2.56.10.36".into())),
            "{h:?}"
        );
    }

    #[test]
    fn address_in_firehol_slash16_hits_with_that_entry() {
        assert_eq!(
            hits(real(), "137.76.200.9"),
            pairs(&[("firehol_level1", "137.76.0.0/16")])
        );
    }

    #[test]
    fn address_in_spamhaus_and_firehol_gives_longest_entry_of_each() {
        // spamhaus_drop has 43.249.92.0/22, firehol_level1 the enclosing 43.249.88.0/21.
        assert_eq!(
            hits(real(), "43.249.93.1"),
            pairs(&[
                ("firehol_level1", "43.249.88.0/21"),
                ("spamhaus_drop", "43.249.92.0/22"),
            ])
        );
        // On five lists, sorted by name, single addresses without /32.
        assert_eq!(
            hits(real(), "77.90.185.20"),
            pairs(&[
                ("et_compromised", "77.90.185.20"),
                ("firehol_level1", "77.90.185.0/24"),
                ("ipsum-20260822", "77.90.185.20"),
                ("spamhaus_drop", "77.90.185.0/24"),
                ("spamhaus_edrop", "77.90.185.0/24"),
            ])
        );
    }

    #[test]
    fn address_on_no_list_is_empty() {
        let lists = real();
        for a in ["8.8.8.8", "1.1.1.1", "9.9.9.9", "2001:4860:4860::8888"] {
            assert!(lists.lookup(ip(a)).is_empty(), "{a}");
        }
    }

    #[test]
    fn ipsum_address_with_count_is_found() {
        // Last line of the file: `IP<TAB>count`.
        let text = std::fs::read_to_string(format!("{DATA}/ipsum-20260822.txt")).unwrap();
        let last = text.lines().rfind(|l| !l.starts_with('#')).unwrap();
        let (addr, count) = last.split_once('\t').unwrap();
        assert!(count.trim().parse::<u32>().is_ok(), "{last:?}");
        let h = real().lookup(ip(addr));
        let hit = h
            .iter()
            .find(|h| h.list == "ipsum-20260822")
            .expect("ipsum hit");
        assert_eq!(hit.entry, addr);
        assert!(hit.age_s > 0);
    }

    #[test]
    fn ipv6_entries() {
        let d = TempDir::new();
        d.write(
            "v6.cidr",
            "2001:db8::/32\n2001:db8:1::/48 ; more specific\n2001:db8:1:2::5\n",
        );
        d.write("other.list", "2001:db8:1:2::/64\n");
        let lists = ThreatLists::load(&d.0).unwrap();
        assert_eq!(
            hits(&lists, "2001:db8:1:2::5"),
            pairs(&[("other", "2001:db8:1:2::/64"), ("v6", "2001:db8:1:2::5")])
        );
        assert_eq!(
            hits(&lists, "2001:db8:1:3::1"),
            pairs(&[("v6", "2001:db8:1::/48")])
        );
        assert_eq!(
            hits(&lists, "2001:db8:ff::1"),
            pairs(&[("v6", "2001:db8::/32")])
        );
        assert!(hits(&lists, "2001:db9::1").is_empty());
        assert!(hits(&lists, "32.1.13.184").is_empty());
    }

    #[test]
    fn longest_prefix_within_one_list() {
        let d = TempDir::new();
        d.write("nets.txt", "10.0.0.0/8\n10.1.0.0/16\n");
        let lists = ThreatLists::load(&d.0).unwrap();
        assert_eq!(hits(&lists, "10.1.2.3"), pairs(&[("nets", "10.1.0.0/16")]));
        assert_eq!(hits(&lists, "10.2.0.1"), pairs(&[("nets", "10.0.0.0/8")]));
    }

    #[test]
    fn malformed_line_is_counted_and_others_kept() {
        let d = TempDir::new();
        d.write(
            "mixed",
            "# header\n\n1.2.3.4\nnot-an-address\n5.6.7.0/24 # trailing\n  9.9.9.9  extra  fields\n",
        );
        let lists = ThreatLists::load(&d.0).unwrap();
        let info = lists.lists();
        assert_eq!(info.len(), 1);
        assert_eq!((info[0].name.as_str(), info[0].entries), ("mixed", 3));
        assert_eq!(info[0].bad_lines, 1);
        assert_eq!(hits(&lists, "1.2.3.4"), pairs(&[("mixed", "1.2.3.4")]));
        assert_eq!(hits(&lists, "5.6.7.8"), pairs(&[("mixed", "5.6.7.0/24")]));
        assert_eq!(hits(&lists, "9.9.9.9"), pairs(&[("mixed", "9.9.9.9")]));
    }

    #[test]
    fn host_bits_normalised_and_duplicates_counted_once() {
        let d = TempDir::new();
        d.write(
            "x.netset",
            "1.2.3.4/24\n1.2.3.0/24\n::ffff:5.6.7.8\n::ffff:5.6.0.0/112\n",
        );
        let lists = ThreatLists::load(&d.0).unwrap();
        assert_eq!(lists.lists()[0].entries, 3);
        assert_eq!(hits(&lists, "1.2.3.200"), pairs(&[("x", "1.2.3.0/24")]));
        // IPv4-mapped entries are stored as IPv4.
        assert_eq!(hits(&lists, "5.6.7.8"), pairs(&[("x", "5.6.7.8")]));
        assert_eq!(hits(&lists, "5.6.1.1"), pairs(&[("x", "5.6.0.0/16")]));
    }

    #[test]
    fn skips_hidden_docs_other_extensions_and_subdirs() {
        let d = TempDir::new();
        d.write("a.ipset", "1.1.1.1\n");
        d.write("b", "1.1.1.1\n");
        d.write(".hidden.txt", "1.1.1.1\n");
        d.write("feed.LICENSE", "1.1.1.1\n");
        d.write("README.md", "1.1.1.1\n");
        d.write("README", "1.1.1.1\n");
        d.write("LICENSE.txt", "1.1.1.1\n");
        d.write("c.netset.tmp", "1.1.1.1\n");
        std::fs::create_dir(d.0.join("sub.netset")).unwrap();
        let lists = ThreatLists::load(&d.0).unwrap();
        assert_eq!(
            hits(&lists, "1.1.1.1"),
            pairs(&[("a", "1.1.1.1"), ("b", "1.1.1.1")])
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_entries() {
        let lists = real();
        assert_eq!(
            hits(lists, "::ffff:137.76.200.9"),
            pairs(&[("firehol_level1", "137.76.0.0/16")])
        );
        let h = hits(lists, "::ffff:2.56.10.36");
        assert!(
            h.contains(&("tor_exits".into(), "2.56.10.36".into())),
            "{h:?}"
        );
    }

    #[test]
    fn reload_picks_up_changes_and_keeps_lists_on_error() {
        let d = TempDir::new();
        let file = d.write("l.txt", "1.2.3.4\n");
        let mut lists = ThreatLists::load(&d.0).unwrap();
        assert_eq!(hits(&lists, "1.2.3.4"), pairs(&[("l", "1.2.3.4")]));
        assert!(!lists.reload_if_changed().unwrap());

        std::fs::write(&file, "5.6.7.8\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(lists.reload_if_changed().unwrap());
        assert!(hits(&lists, "1.2.3.4").is_empty());
        assert_eq!(hits(&lists, "5.6.7.8"), pairs(&[("l", "5.6.7.8")]));
        assert!(!lists.reload_if_changed().unwrap());

        // A new file is a change; an ignored one is not.
        d.write("m.list", "5.6.7.8\n");
        assert!(lists.reload_if_changed().unwrap());
        assert_eq!(
            hits(&lists, "5.6.7.8"),
            pairs(&[("l", "5.6.7.8"), ("m", "5.6.7.8")])
        );
        d.write("notes.md", "x\n");
        assert!(!lists.reload_if_changed().unwrap());

        std::fs::remove_dir_all(&d.0).unwrap();
        assert!(matches!(
            lists.reload_if_changed(),
            Err(ThreatError::ReadDir { .. })
        ));
        assert_eq!(
            hits(&lists, "5.6.7.8"),
            pairs(&[("l", "5.6.7.8"), ("m", "5.6.7.8")])
        );
    }

    #[test]
    fn duplicate_list_names_keep_the_first_file() {
        let d = TempDir::new();
        d.write("x.netset", "1.1.1.1\n");
        d.write("x.txt", "2.2.2.2\n");
        let mut lists = ThreatLists::load(&d.0).unwrap();
        assert_eq!(lists.lists().len(), 1);
        assert_eq!(hits(&lists, "1.1.1.1"), pairs(&[("x", "1.1.1.1")]));
        assert!(hits(&lists, "2.2.2.2").is_empty());
        assert!(!lists.reload_if_changed().unwrap());
    }

    #[test]
    fn empty_and_missing_dir() {
        let mut e = ThreatLists::empty();
        assert!(e.is_empty());
        assert!(e.lookup(ip("1.2.3.4")).is_empty());
        assert!(!e.reload_if_changed().unwrap());
        let missing =
            std::env::temp_dir().join(format!("sensor-threat-missing-{}", std::process::id()));
        assert!(matches!(
            ThreatLists::load(&missing),
            Err(ThreatError::ReadDir { .. })
        ));
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ThreatLists>();
    }

    /// `cargo test --release -p sensor --lib enrich::threat -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run with --release"]
    fn lookup_rate() {
        let lists = real();
        // A spread of addresses, mostly misses like real traffic; some hits.
        let mut addrs: Vec<IpAddr> = (0..1_000_000u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))))
            .collect();
        addrs.extend((0..100_000u128).map(|i| {
            IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ))
        }));
        let start = std::time::Instant::now();
        let mut n_hits = 0usize;
        for &a in &addrs {
            n_hits += lists.lookup(a).len();
        }
        let dt = start.elapsed();
        println!(
            "{} lookups in {dt:?}: {:.0}/s, {n_hits} hits",
            addrs.len(),
            addrs.len() as f64 / dt.as_secs_f64()
        );
    }
}
