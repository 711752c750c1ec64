//! Who listens where: the accepting process of a connection.
//!
//! The accept side's kernel callbacks run in softirq, where the current pid belongs to
//! whoever happened to be running. The process that called `listen()` on the local address
//! and port is the one that accepts, so the table maps (address, port) to it: filled from
//! `listen()` events as they happen and, for listeners older than the sensor, from
//! `/proc/net/tcp{,6}` and `/proc/<pid>/fd`.
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::record::Owner;

#[derive(Debug, Default)]
pub struct Listeners {
    by_addr: HashMap<(IpAddr, u16), Owner>,
}

impl Listeners {
    pub fn insert(&mut self, addr: IpAddr, port: u16, owner: Owner) {
        self.by_addr.insert((addr, port), owner);
    }

    /// Keeps an existing entry: events are newer than a /proc scan.
    pub fn insert_if_absent(&mut self, addr: IpAddr, port: u16, owner: Owner) {
        self.by_addr.entry((addr, port)).or_insert(owner);
    }

    pub fn remove(&mut self, addr: IpAddr, port: u16) {
        self.by_addr.remove(&(addr, port));
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The owner of a listener that accepts on `addr:port`: an exact bind first, then a
    /// wildcard bind of the same family, then a dual-stack `[::]` bind for IPv4.
    pub fn owner_of(&self, addr: IpAddr, port: u16) -> Option<&Owner> {
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let candidates: &[IpAddr] = match addr {
            IpAddr::V4(v4) => &[addr, any4, IpAddr::V6(v4.to_ipv6_mapped()), any6],
            IpAddr::V6(_) => &[addr, any6],
        };
        candidates
            .iter()
            .find_map(|a| self.by_addr.get(&(*a, port)))
    }

    /// Adds the listeners that exist now, from /proc. Errors reading single processes are
    /// skipped (they exit while we look); returns how many listeners were found.
    pub fn scan_proc(&mut self) -> usize {
        let mut inodes: HashMap<u64, (IpAddr, u16)> = HashMap::new();
        for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
            if let Ok(text) = fs::read_to_string(file) {
                for (inode, addr, port) in parse_proc_net_listeners(&text, v6) {
                    inodes.insert(inode, (addr, port));
                }
            }
        }
        if inodes.is_empty() {
            return 0;
        }
        let mut found = 0;
        let Ok(procs) = fs::read_dir("/proc") else {
            return 0;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let mut comm: Option<String> = None;
            for fd in fds.flatten() {
                let Ok(target) = fs::read_link(fd.path()) else {
                    continue;
                };
                let Some(inode) = socket_inode(target.to_str().unwrap_or("")) else {
                    continue;
                };
                if let Some(&(addr, port)) = inodes.get(&inode) {
                    let comm = comm.get_or_insert_with(|| {
                        fs::read_to_string(entry.path().join("comm"))
                            .map(|s| s.trim_end().to_string())
                            .unwrap_or_default()
                    });
                    self.insert_if_absent(
                        addr,
                        port,
                        Owner {
                            pid,
                            comm: comm.clone(),
                        },
                    );
                    found += 1;
                }
            }
        }
        found
    }
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Parses `/proc/net/tcp` or `tcp6`, returning (inode, local address, port) of LISTEN rows.
fn parse_proc_net_listeners(text: &str, v6: bool) -> Vec<(u64, IpAddr, u16)> {
    const TCP_LISTEN: &str = "0A";
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != TCP_LISTEN {
            continue;
        }
        let Some((addr_hex, port_hex)) = cols[1].split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port_hex, 16), cols[9].parse::<u64>())
        else {
            continue;
        };
        if let Some(addr) = parse_proc_addr(addr_hex, v6) {
            out.push((inode, addr, port));
        }
    }
    out
}

/// The kernel prints each 32-bit word of the address with `%08X` as the host reads it, so
/// on little-endian hosts each word's bytes come out reversed.
fn parse_proc_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    let words = if v6 { 4 } else { 1 };
    if hex.len() != words * 8 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for w in 0..words {
        let word = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16).ok()?;
        bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some(if v6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_listen_rows() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n";
        let rows = parse_proc_net_listeners(text, false);
        assert_eq!(rows, vec![(12345, IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)]);
    }

    #[test]
    fn parses_proc_net_tcp6_loopback() {
        let a = parse_proc_addr("00000000000000000000000001000000", true).unwrap();
        assert_eq!(a, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn dual_stack_listener_owns_ipv4() {
        let mut l = Listeners::default();
        let owner = Owner {
            pid: 7,
            comm: "srv".into(),
        };
        l.insert(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80, owner.clone());
        assert_eq!(
            l.owner_of(IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
            Some(&owner)
        );
        assert_eq!(l.owner_of(IpAddr::V4(Ipv4Addr::LOCALHOST), 81), None);
    }

    #[test]
    fn scan_finds_our_own_listener() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let mut l = Listeners::default();
        assert!(l.scan_proc() >= 1);
        let owner = l.owner_of(IpAddr::V4(Ipv4Addr::LOCALHOST), port).unwrap();
        assert_eq!(owner.pid, std::process::id());
    }
}
