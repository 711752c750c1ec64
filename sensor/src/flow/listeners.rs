//! Who listens where: the accepting process of a connection.
//!
//! The accept side's kernel callbacks run in softirq, where the current pid belongs to
//! whoever happened to be running. The process that called `listen()` on the local address
//! and port is the one that accepts, so the table maps (address, port) to it: filled from
//! `listen()` events as they happen and, for listeners older than the sensor, from
//! `/proc/net/tcp{,6}` and `/proc/<pid>/fd`. The same scan remembers who owns the
//! connections already open when the sensor starts, whose closes arrive with no history.
use std::os::unix::fs::MetadataExt as _;
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::record::{Attr, Owner};

#[derive(Debug, Default)]
pub struct Listeners {
    by_addr: HashMap<(IpAddr, u16), Owner>,
    /// (local, remote) of connections open at the scan, to their owner.
    connections: HashMap<(SocketAddr, SocketAddr), Owner>,
    /// Bound UDP sockets at the scan (local address and port) to their owner.
    datagram: HashMap<(IpAddr, u16), Owner>,
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

    /// The owner of a connection that was open when /proc was scanned; forgotten once asked,
    /// since the connection is closing.
    /// The owners of the UDP sockets bound at the scan, for the datagram table.
    pub fn take_datagram_owners(&mut self) -> HashMap<(IpAddr, u16), Owner> {
        std::mem::take(&mut self.datagram)
    }

    pub fn take_connection_owner(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<Owner> {
        self.connections.remove(&(local, remote))
    }

    /// Adds the listeners (and open connections) that exist now, from /proc. Errors reading single processes are
    /// skipped (they exit while we look); returns how many listeners were found.
    pub fn scan_proc(&mut self) -> usize {
        let mut inodes: HashMap<u64, ProcSock> = HashMap::new();
        for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
            if let Ok(text) = fs::read_to_string(file) {
                for row in parse_proc_net(&text, v6) {
                    inodes.insert(row.inode, row);
                }
            }
        }
        // Bound datagram sockets (UDP, UDP-Lite): made before the hooks, so the kernel
        // does not know who made them.
        for (file, v6) in [
            ("/proc/net/udp", false),
            ("/proc/net/udp6", true),
            ("/proc/net/udplite", false),
            ("/proc/net/udplite6", true),
        ] {
            if let Ok(text) = fs::read_to_string(file) {
                for mut row in parse_proc_net_any(&text, v6) {
                    row.datagram = true;
                    inodes.insert(row.inode, row);
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
                if let Some(row) = inodes.get(&inode) {
                    let comm = comm.get_or_insert_with(|| {
                        fs::read_to_string(entry.path().join("comm"))
                            .map(|s| s.trim_end().to_string())
                            .unwrap_or_default()
                    });
                    let owner = Owner {
                        pid,
                        comm: comm.clone(),
                        uid: entry.metadata().ok().map(|m| m.uid()),
                        attr: Attr::ProcScan,
                        ..Default::default()
                    };
                    if row.datagram {
                        self.datagram
                            .entry((row.local.ip(), row.local.port()))
                            .or_insert(owner);
                    } else if row.listening {
                        self.insert_if_absent(row.local.ip(), row.local.port(), owner);
                        found += 1;
                    } else {
                        self.connections.insert((row.local, row.remote), owner);
                    }
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

/// One row of `/proc/net/tcp{,6}`.
#[derive(Debug, PartialEq, Eq)]
struct ProcSock {
    inode: u64,
    local: SocketAddr,
    remote: SocketAddr,
    listening: bool,
    /// A UDP socket (from `/proc/net/udp*`), bound to `local`.
    datagram: bool,
}

/// Parses `/proc/net/tcp` or `tcp6`: listeners, and connections with a peer. IPv4-mapped
/// addresses become IPv4, as in the flows.
fn parse_proc_net(text: &str, v6: bool) -> Vec<ProcSock> {
    parse_proc_net_any(text, v6)
        .into_iter()
        .filter(|r| r.listening || r.remote.port() != 0)
        .collect()
}

/// Every socket row of a `/proc/net/{tcp,udp}{,6}` file that a process owns.
fn parse_proc_net_any(text: &str, v6: bool) -> Vec<ProcSock> {
    const TCP_LISTEN: &str = "0A";
    let endpoint = |col: &str| -> Option<SocketAddr> {
        let (addr_hex, port_hex) = col.split_once(':')?;
        let port = u16::from_str_radix(port_hex, 16).ok()?;
        let ip = match parse_proc_addr(addr_hex, v6)? {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            v4 => v4,
        };
        Some(SocketAddr::new(ip, port))
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote), Ok(inode)) =
            (endpoint(cols[1]), endpoint(cols[2]), cols[9].parse::<u64>())
        else {
            continue;
        };
        let listening = cols[3] == TCP_LISTEN;
        // inode 0: TIME_WAIT and other sockets no process owns.
        if inode == 0 {
            continue;
        }
        out.push(ProcSock {
            inode,
            local,
            remote,
            listening,
            datagram: false,
        });
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
        let rows = parse_proc_net(text, false);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            ProcSock {
                inode: 12345,
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                listening: true,
                datagram: false,
            }
        );
        assert!(!rows[1].listening);
        assert_eq!(rows[1].remote, "127.0.0.1:40960".parse().unwrap());
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
            ..Default::default()
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

#[cfg(test)]
mod scan_connections {
    use super::*;

    #[test]
    fn scan_finds_our_own_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let mut t = Listeners::default();
        t.scan_proc();
        let owner = t
            .take_connection_owner(c.local_addr().unwrap(), c.peer_addr().unwrap())
            .expect("client end found");
        assert_eq!(owner.pid, std::process::id());
        assert!(
            t.take_connection_owner(c.peer_addr().unwrap(), c.local_addr().unwrap())
                .is_some(),
            "server end found"
        );
    }
}
