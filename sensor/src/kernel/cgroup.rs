//! Finds the cgroup v2 hierarchy's root, where `sock_ops` attaches to see every socket.
use std::path::PathBuf;

/// The first `cgroup2` mount in `/proc/self/mountinfo` (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn find_cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&info)
}

fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    mounts(info).find_map(|m| (m.fstype == "cgroup2" && m.root == "/").then(|| m.point.into()))
}

/// One line of `/proc/self/mountinfo`.
pub(crate) struct Mount<'a> {
    pub root: &'a str,
    pub point: &'a str,
    pub fstype: &'a str,
}

/// The mounts of a `/proc/self/mountinfo`, skipping lines that do not parse.
pub(crate) fn mounts(info: &str) -> impl Iterator<Item = Mount<'_>> {
    info.lines().filter_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
        let (left, right) = line.split_once(" - ")?;
        let mut left = left.split_whitespace().skip(3);
        Some(Mount {
            root: left.next()?,
            point: left.next()?,
            fstype: right.split_whitespace().next()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_unified_mount() {
        let info = "25 30 0:22 / /sys/fs/cgroup rw shared:5 - tmpfs tmpfs rw\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw shared:6 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
