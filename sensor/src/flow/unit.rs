//! From a task's cgroup id to the unit it ran in, for the `src_unit` / `dst_unit` columns.
//!
//! The kernel hooks record `bpf_get_current_cgroup_id()`: the inode number of the task's
//! cgroup directory in the cgroup v2 hierarchy (kernfs gives each cgroup a 64-bit id that is
//! never reused while the system runs). [`UnitResolver`] walks the cgroup2 mount
//! (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts; see
//! [`crate::kernel::cgroup::find_cgroup2_root`]) and maps each directory's inode to its path
//! below the mount, then to a unit by [`unit_of_path`]:
//!
//! - the root cgroup `/` is `/`;
//! - below a user manager (a component `user@N.service`): `user@N.service/` and the deepest
//!   component under it that ends in `.service` or `.scope`
//!   (`/user.slice/user-1000.slice/user@1000.service/app.slice/app.scope` is
//!   `user@1000.service/app.scope`), or `user@N.service` alone when there is none;
//! - else the deepest component ending in `.service` or `.scope` (`/system.slice/nginx.service`
//!   is `nginx.service`, a session is `session-3.scope`, a delegated subtree such as
//!   `/system.slice/foo.service/payload` is `foo.service`);
//! - else the whole cgroup path (`/mytest/client` for a cgroup a test made, `/docker/<id>`
//!   for a container under the cgroupfs driver): the path names it.
//!
//! No systemd is needed: the rule reads names only, so it holds where systemd is not pid 1.
//! The ids are the host's: a sensor in a cgroup namespace (a container) sees only its own
//! subtree, and the ids of tasks outside it stay unresolved.
//!
//! Lookups are a hash map. An id not in it makes the resolver walk the tree again, at most
//! once per [`RESCAN_EVERY`] whatever the number of misses, so a flood of unknown ids (a
//! cgroup removed before its flows were written) costs one walk a second, not one a flow.
//! An id still unknown after that is counted in `sensor_attr_unresolved_cgroups_total` and
//! its end's unit stays NULL. Cgroups removed stay known (their flows may come later), so
//! what is lost is a cgroup made and removed between two walks, before its flow was
//! written: a client in a transient scope that exits at once. Naming those needs the
//! cgroup's path at the event (the `cgroup:cgroup_mkdir` tracepoint carries id and path).
use std::{
    collections::HashMap,
    os::unix::fs::DirEntryExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{FlowRecord, Owner};

/// The least time between two walks of the cgroup tree.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Entries kept across walks (cgroups since removed) up to this many; beyond it a walk
/// keeps only the cgroups that exist, so churn (a container a minute) cannot grow the map
/// without bound.
const MAX_ENTRIES: usize = 100_000;

/// A cgroup's path below the root and its unit.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    unit: String,
}

/// Cgroup ids to units, read from the cgroup2 file system (see the module doc).
#[derive(Debug, Clone)]
pub struct UnitResolver {
    root: PathBuf,
    by_id: HashMap<u64, Entry>,
    last_scan: Option<Instant>,
    /// Where misses after a walk are counted (`sensor run`), besides [`Self::unresolved`].
    counter: Option<prometheus::IntCounter>,
    unresolved: u64,
    scans: u64,
}

impl UnitResolver {
    /// A resolver of the cgroup2 hierarchy mounted at `root`; nothing is read until the
    /// first lookup.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            last_scan: None,
            counter: None,
            unresolved: 0,
            scans: 0,
        }
    }

    /// Counts ids that stay unknown in `counter` too.
    pub fn with_counter(mut self, counter: prometheus::IntCounter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Lookups that found no cgroup, even after a walk (or with a walk not yet allowed).
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }

    /// How many times the tree was walked.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// The path below the root of the cgroup with this id (`/` for the root itself).
    pub fn resolve(&mut self, cgroup_id: u64) -> Option<&str> {
        self.entry(cgroup_id).map(|e| e.path.as_str())
    }

    /// The unit of the cgroup with this id ([`unit_of_path`] of its path).
    pub fn unit(&mut self, cgroup_id: u64) -> Option<&str> {
        self.entry(cgroup_id).map(|e| e.unit.as_str())
    }

    /// Sets `owner.unit` from `owner.cgroup_id`, unless the owner has a unit already or no
    /// cgroup id (replay, `/proc` scans).
    pub fn fill(&mut self, owner: &mut Owner) {
        if owner.unit.is_some() {
            return;
        }
        if let Some(id) = owner.cgroup_id {
            owner.unit = self.unit(id).map(str::to_owned);
        }
    }

    /// [`Self::fill`] for both ends of a flow.
    pub fn fill_units(&mut self, flow: &mut FlowRecord) {
        for owner in [&mut flow.src_owner, &mut flow.dst_owner]
            .into_iter()
            .flatten()
        {
            self.fill(owner);
        }
    }

    fn entry(&mut self, id: u64) -> Option<&Entry> {
        if !self.by_id.contains_key(&id) {
            let due = self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
            if due {
                self.rescan();
            }
            if !self.by_id.contains_key(&id) {
                self.unresolved += 1;
                if let Some(c) = &self.counter {
                    c.inc();
                }
                return None;
            }
        }
        self.by_id.get(&id)
    }

    /// Walks the tree and adds every cgroup in it. A tree that cannot be read (gone,
    /// permissions) adds nothing; what was known stays.
    fn rescan(&mut self) {
        let started = Instant::now();
        self.last_scan = Some(started);
        self.scans += 1;
        let found = scan(&self.root);
        tracing::debug!(
            root = %self.root.display(),
            cgroups = found.len(),
            secs = started.elapsed().as_secs_f64(),
            "cgroup tree read"
        );
        if self.by_id.len() + found.len() > MAX_ENTRIES {
            self.by_id.clear();
        }
        for (id, path) in found {
            let unit = unit_of_path(&path).into_owned();
            self.by_id.insert(id, Entry { path, unit });
        }
    }
}

/// One resolver for every sink that writes units (the store, each IPFIX exporter, the
/// detectors), so they name an owner alike and walk the tree once between them. Each fills
/// on its own thread, a batch under one lock: a walk (on a miss, at most once per
/// [`RESCAN_EVERY`]) holds back only those workers, never capture or the ring reader.
#[derive(Debug, Clone)]
pub struct SharedUnits(std::sync::Arc<std::sync::Mutex<UnitResolver>>);

impl SharedUnits {
    pub fn new(resolver: UnitResolver) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(resolver)))
    }

    /// [`UnitResolver::fill_units`] for every flow of `flows`.
    pub fn fill(&self, flows: &mut [FlowRecord]) {
        let needs = |f: &FlowRecord| {
            [&f.src_owner, &f.dst_owner]
                .into_iter()
                .flatten()
                .any(|o| o.unit.is_none() && o.cgroup_id.is_some())
        };
        if !flows.iter().any(needs) {
            return;
        }
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        flows.iter_mut().for_each(|f| r.fill_units(f));
    }
}

/// Every cgroup directory below `root` (itself included, as `/`) by inode number. The
/// inode comes from the directory entry (kernfs reports the same number as `stat`), so a
/// walk reads directories and stats nothing.
fn scan(root: &Path) -> Vec<(u64, String)> {
    let mut found = Vec::new();
    let Ok(meta) = std::fs::metadata(root) else {
        return found;
    };
    found.push((std::os::unix::fs::MetadataExt::ino(&meta), "/".to_string()));
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        // A cgroup removed during the walk is skipped.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let path = format!("{rel}/{name}");
            found.push((e.ino(), path.clone()));
            stack.push((e.path(), path));
        }
    }
    found
}

fn is_unit(component: &str) -> bool {
    component.ends_with(".service") || component.ends_with(".scope")
}

/// `user@N.service`: a user's service manager, whose units are named below it.
fn is_user_manager(component: &str) -> bool {
    component
        .strip_prefix("user@")
        .and_then(|c| c.strip_suffix(".service"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The unit of a cgroup path (relative to the cgroup2 root, starting with `/`), by the rule
/// in the module doc.
pub fn unit_of_path(path: &str) -> std::borrow::Cow<'_, str> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return "/".into();
    }
    if let Some(at) = parts.iter().position(|c| is_user_manager(c)) {
        return match parts[at + 1..].iter().rev().find(|c| is_unit(c)) {
            Some(unit) => format!("{}/{unit}", parts[at]).into(),
            None => parts[at].into(),
        };
    }
    match parts.iter().rev().find(|c| is_unit(c)) {
        Some(unit) => (*unit).into(),
        None => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_the_rule() {
        for (path, unit) in [
            ("/", "/"),
            ("", "/"),
            ("/system.slice/nginx.service", "nginx.service"),
            (
                "/system.slice/docker-0123abcd.scope",
                "docker-0123abcd.scope",
            ),
            ("/init.scope", "init.scope"),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                "session-3.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app.scope",
                "user@1000.service/app.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/\
                 app-org.gnome.Terminal.slice/vte-spawn-1.scope",
                "user@1000.service/vte-spawn-1.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                "user@1000.service/init.scope",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/session.slice/dbus.service",
                "user@1000.service/dbus.service",
            ),
            // A user manager's own cgroup, with no unit below it.
            (
                "/user.slice/user-1000.slice/user@1000.service",
                "user@1000.service",
            ),
            // A delegated subtree names the service that owns it.
            ("/system.slice/foo.service/payload", "foo.service"),
            (
                "/system.slice/containerd.service/k8s.io/0123abcd",
                "containerd.service",
            ),
            // The deepest unit wins.
            (
                "/system.slice/outer.service/inner.scope/leaf",
                "inner.scope",
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/\
                 cri-containerd-0123.scope",
                "cri-containerd-0123.scope",
            ),
            // No unit: the path itself.
            ("/mytest/client", "/mytest/client"),
            ("/docker/0123abcd", "/docker/0123abcd"),
            ("/system.slice", "/system.slice"),
            // Look-alikes are not units or user managers.
            ("/a.services/b", "/a.services/b"),
            ("/user@x.service/app.scope", "app.scope"),
            ("/user@.service", "user@.service"),
        ] {
            assert_eq!(unit_of_path(path), unit, "{path}");
        }
    }

    #[test]
    fn a_tree_resolves_by_inode_and_misses_rescan_at_most_once_a_second() {
        // Any directory tree stands in for the cgroup file system.
        let root = std::env::temp_dir().join(format!("sensor-unit-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let nginx = root.join("system.slice/nginx.service");
        std::fs::create_dir_all(&nginx).unwrap();
        std::fs::write(root.join("system.slice/cgroup.procs"), "").unwrap();
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let counter = prometheus::IntCounter::new("t_total", "t").unwrap();
        let mut r = UnitResolver::new(root.clone()).with_counter(counter.clone());
        assert_eq!(r.resolve(ino(&root)), Some("/"));
        assert_eq!(r.resolve(ino(&nginx)), Some("/system.slice/nginx.service"));
        assert_eq!(r.unit(ino(&nginx)), Some("nginx.service"));
        assert_eq!(
            r.unit(ino(&root.join("system.slice"))),
            Some("/system.slice")
        );
        assert_eq!(r.scans(), 1, "hits walk nothing");
        // A flood of unknown ids: one walk, each counted.
        let unknown = u64::MAX - 5;
        for i in 0..1000 {
            assert_eq!(r.unit(unknown - i), None);
        }
        assert_eq!(r.scans(), 1, "within the second, no walk again");
        assert_eq!(r.unresolved(), 1000);
        assert_eq!(counter.get(), 1000);
        // A cgroup made after the last walk resolves once a walk is allowed again.
        let late = root.join("mytest/client");
        std::fs::create_dir_all(&late).unwrap();
        assert_eq!(
            r.unit(ino(&late)),
            None,
            "not yet: the walk is rate-limited"
        );
        r.last_scan = Some(Instant::now() - RESCAN_EVERY);
        assert_eq!(r.unit(ino(&late)), Some("/mytest/client"));
        assert_eq!(r.scans(), 2);
        // Removed cgroups stay known (their flows may come later).
        std::fs::remove_dir(&late).unwrap();
        r.last_scan = Some(Instant::now() - RESCAN_EVERY);
        let mut owner = Owner {
            cgroup_id: Some(ino(&nginx)),
            ..Owner::default()
        };
        r.fill(&mut owner);
        assert_eq!(owner.unit.as_deref(), Some("nginx.service"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn fill_sets_each_end_with_a_cgroup_id_and_keeps_the_rest() {
        let root = std::env::temp_dir().join(format!("sensor-unit-fill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let app = root.join("user.slice/user-1000.slice/user@1000.service/app.slice/app.scope");
        std::fs::create_dir_all(&app).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&app).unwrap());
        let mut r = UnitResolver::new(root.clone());
        let mut f = FlowRecord::kernel(
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        f.src_owner = Some(Owner {
            cgroup_id: Some(ino),
            ..Owner::default()
        });
        f.dst_owner = Some(Owner {
            unit: Some("given.service".into()),
            cgroup_id: Some(ino),
            ..Owner::default()
        });
        r.fill_units(&mut f);
        assert_eq!(
            f.src_owner.unwrap().unit.as_deref(),
            Some("user@1000.service/app.scope")
        );
        assert_eq!(f.dst_owner.unwrap().unit.as_deref(), Some("given.service"));
        // No cgroup id (replay, /proc scans): nothing looked up.
        let mut o = Owner::default();
        r.fill(&mut o);
        assert_eq!((o.unit, r.unresolved()), (None, 0));
        let _ = std::fs::remove_dir_all(&root);
    }

    /// The real cgroup2 file system: a cgroup made here resolves to its path by the inode
    /// the kernel reports as its id. Needs root and a cgroup2 mount; skipped loudly
    /// without, and failed instead with `CI=true` (CI runs as root).
    #[test]
    fn a_cgroup_made_here_resolves_to_its_path() {
        let test = "a_cgroup_made_here_resolves_to_its_path";
        let skip = |why: &str| {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "{test}: {why} (CI=true: a skip is a failure)"
            );
            eprintln!("\n*** SKIPPED {test}: {why} ***\n");
            if let Some(path) = std::env::var_os("SENSOR_SKIP_LOG") {
                use std::io::Write as _;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    let _ = writeln!(f, "SKIPPED {test}: {why}");
                }
            }
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("needs root to make a cgroup");
        }
        let Some(root) = crate::kernel::cgroup::find_cgroup2_root() else {
            return skip("no cgroup2 mount");
        };
        let name = format!("sensor-unit-test-{}", std::process::id());
        let dir = root.join(&name);
        let child = dir.join("client");
        if let Err(e) = std::fs::create_dir_all(&child) {
            let _ = std::fs::remove_dir(&dir);
            return skip(&format!("cannot make a cgroup in {}: {e}", root.display()));
        }
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let mut r = UnitResolver::new(root.clone());
        let child_ino = ino(&child);
        let got = (
            r.resolve(child_ino).map(str::to_owned),
            r.unit(child_ino).map(str::to_owned),
            r.resolve(ino(&root)).map(str::to_owned),
        );
        let kernel_id = cgroup_id(&child);
        // Removed before asserting, so a failure leaves no cgroup behind.
        let removed = std::fs::remove_dir(&child).and_then(|()| std::fs::remove_dir(&dir));
        let path = format!("/{name}/client");
        assert_eq!(got, (Some(path.clone()), Some(path), Some("/".to_string())));
        // The kernel's id of the cgroup (what bpf_get_current_cgroup_id returns: its kernfs
        // id, which is also its file handle) is the inode the resolver keys by.
        match kernel_id {
            Some(id) => assert_eq!(id, child_ino, "cgroup id against inode"),
            None => eprintln!("{test}: cgroup2 gives no file handles here, id not compared"),
        }
        removed.unwrap();
    }

    /// A cgroup's id as the kernel reports it: the 8-byte kernfs file handle of its
    /// directory. None where cgroup2 gives no file handles.
    fn cgroup_id(dir: &Path) -> Option<u64> {
        #[repr(C)]
        struct Handle {
            bytes: libc::c_uint,
            kind: libc::c_int,
            id: u64,
        }
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        let mut h = Handle {
            bytes: 8,
            kind: 0,
            id: 0,
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `h` is a file_handle with room for the 8 bytes it declares; the path is
        // NUL-terminated, and both outlive the call.
        let rc = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                path.as_ptr(),
                (&raw mut h).cast::<libc::file_handle>(),
                &raw mut mount_id,
                0,
            )
        };
        (rc == 0 && h.bytes == 8).then_some(h.id)
    }
}
