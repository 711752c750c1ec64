//! The classic tracepoint's record layout, from tracefs. Used only where the BTF-typed
//! tracepoint cannot load; tracefs must be mounted (it is not on a fresh machine of some
//! distributions, and mounting it needs CAP_SYS_ADMIN).
use std::path::{Path, PathBuf};

use sensor_common::TpFormat;

/// Where tracefs is mounted, if anywhere (the same places aya looks).
pub fn tracefs_root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Where tracefs is mounted according to this process's mount table, whether or not this
/// process may read it (unlike [`tracefs_root`]).
pub fn tracefs_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    super::cgroup::mounts(&info).find_map(|m| (m.fstype == "tracefs").then(|| m.point.into()))
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")]
    NoTracefs,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no field {field}")]
    MissingField { path: PathBuf, field: &'static str },
}

/// Reads `events/sock/inet_sock_set_state/format` under the tracefs root.
pub fn inet_sock_set_state_format() -> Result<TpFormat, FormatError> {
    let root = tracefs_root().ok_or(FormatError::NoTracefs)?;
    let path = root.join("events/sock/inet_sock_set_state/format");
    let text = std::fs::read_to_string(&path).map_err(|source| FormatError::Read {
        path: path.clone(),
        source,
    })?;
    parse_format(&text, &path)
}

fn parse_format(text: &str, path: &Path) -> Result<TpFormat, FormatError> {
    // Lines look like: "\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;"
    let offset_of = |field: &'static str| -> Result<u32, FormatError> {
        text.lines()
            .find_map(|line| {
                let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
                let name = decl.split_whitespace().last()?;
                let name = name.split('[').next()?;
                if name != field {
                    return None;
                }
                let off = line.split("offset:").nth(1)?.split(';').next()?;
                off.trim().parse().ok()
            })
            .ok_or(FormatError::MissingField {
                path: path.to_path_buf(),
                field,
            })
    };
    Ok(TpFormat {
        valid: 1,
        skaddr: offset_of("skaddr")?,
        oldstate: offset_of("oldstate")?,
        newstate: offset_of("newstate")?,
        sport: offset_of("sport")?,
        dport: offset_of("dport")?,
        family: offset_of("family")?,
        protocol: offset_of("protocol")?,
        saddr: offset_of("saddr")?,
        daddr: offset_of("daddr")?,
        saddr_v6: offset_of("saddr_v6")?,
        daddr_v6: offset_of("daddr_v6")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of Linux 6.x, as tracefs prints it.
    const FORMAT: &str = "name: inet_sock_set_state
ID: 1422
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_the_kernel_format() {
        let f = parse_format(FORMAT, Path::new("format")).unwrap();
        assert_eq!(
            (
                f.skaddr, f.oldstate, f.sport, f.protocol, f.saddr, f.daddr_v6
            ),
            (8, 16, 24, 30, 32, 56)
        );
    }

    #[test]
    fn names_a_missing_field() {
        let err = parse_format("format:\n", Path::new("/x/format")).unwrap_err();
        assert_eq!(err.to_string(), "/x/format: no field skaddr");
    }
}
