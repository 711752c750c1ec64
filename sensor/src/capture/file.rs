//! Capture files: pcap (micro- and nanosecond) and pcapng, read as a stream in constant
//! memory. Each packet goes to a callback with its timestamp, link type and bytes.
//!
//! A damaged file stops at the damage with an error naming the file and the byte offset of
//! the first bad block; everything before it has already been handed over.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use pcap_parser::{
    PcapBlockOwned, PcapError, create_reader,
    pcapng::{Block, build_ts_resolution},
};

use super::parse::LinkType;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a pcap or pcapng file (bad magic at byte 0)")]
    NotACapture { path: PathBuf },
    #[error("{path}: damaged at byte {offset}: {what}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{path}: truncated: the block at byte {offset} ends past the end of the file")]
    Truncated { path: PathBuf, offset: u64 },
    /// Packets on an interface whose link type the parser does not decode: the file was
    /// read to its end (packets of other interfaces counted) but is not what it seemed.
    #[error("{path}: link type {} is not decoded: {packets} packets skipped", describe_linktype(*.linktype))]
    UnsupportedLink {
        path: PathBuf,
        /// The pcap LINKTYPE_ number (of the first such interface).
        linktype: u32,
        packets: u64,
    },
}

/// `147`, or `105 (IEEE802_11)` when the number has a well-known name.
fn describe_linktype(n: u32) -> String {
    match super::parse::linktype_name(n) {
        Some(name) => format!("{n} ({name})"),
        None => n.to_string(),
    }
}

/// What reading one file found, beside the packets.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStats {
    pub packets: u64,
    pub bytes_read: u64,
    /// Packets on interfaces whose link type we do not decode.
    pub unsupported_link: u64,
    /// The link type number of the first of those packets.
    pub unsupported_linktype: Option<u32>,
}

/// One interface of a pcapng section (or the whole of a pcap file).
#[derive(Debug, Clone, Copy)]
struct Iface {
    link: Option<LinkType>,
    /// The LINKTYPE_ number, for the report when `link` is None.
    linktype: u32,
    /// Timestamp units per second.
    resolution: u64,
    offset_s: i64,
}

const BUFFER: usize = 1 << 20;

/// Reads `path`, calling `on_packet(ts_ns, link, frame)` for each packet.
pub fn read(
    path: &Path,
    on_packet: impl FnMut(u64, LinkType, &[u8]),
) -> Result<FileStats, FileError> {
    let file = File::open(path).map_err(|source| FileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    read_from(path, file, on_packet)
}

/// Reads a capture from `input` as [`read`] does; `path` names it in errors (and lets the
/// fuzzer feed bytes without a file).
pub fn read_from(
    path: &Path,
    input: impl std::io::Read + Send,
    mut on_packet: impl FnMut(u64, LinkType, &[u8]),
) -> Result<FileStats, FileError> {
    let mut reader = match create_reader(BUFFER, input) {
        Ok(r) => r,
        Err(PcapError::HeaderNotRecognized) => {
            return Err(FileError::NotACapture {
                path: path.to_path_buf(),
            });
        }
        Err(PcapError::Eof) | Err(PcapError::Incomplete(_)) | Err(PcapError::UnexpectedEof) => {
            return Err(FileError::Truncated {
                path: path.to_path_buf(),
                offset: 0,
            });
        }
        Err(e) => {
            return Err(FileError::Damaged {
                path: path.to_path_buf(),
                offset: 0,
                what: format!("{e:?}"),
            });
        }
    };
    let mut stats = FileStats::default();
    let mut ifaces: Vec<Iface> = Vec::new();
    // Consumed bytes before the reader's current buffer position.
    let mut offset: u64 = 0;
    let mut stalled = false;
    loop {
        match reader.next() {
            Ok((len, block)) => {
                stalled = false;
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        ifaces = vec![Iface {
                            link: LinkType::from_linktype(h.network.0 as u32),
                            linktype: h.network.0 as u32,
                            resolution: if h.is_nanosecond_precision() {
                                1_000_000_000
                            } else {
                                1_000_000
                            },
                            offset_s: 0,
                        }];
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let iface = ifaces.first().copied();
                        deliver(
                            iface,
                            |res| {
                                u64::from(b.ts_sec) * 1_000_000_000
                                    + u64::from(b.ts_usec) * (1_000_000_000 / res)
                            },
                            b.data,
                            &mut stats,
                            &mut on_packet,
                        );
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => ifaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        ifaces.push(Iface {
                            link: LinkType::from_linktype(idb.linktype.0 as u32),
                            linktype: idb.linktype.0 as u32,
                            resolution: build_ts_resolution(idb.if_tsresol).unwrap_or(1_000_000),
                            offset_s: idb.if_tsoffset,
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let iface = ifaces.get(epb.if_id as usize).copied();
                        let caplen = (epb.caplen as usize).min(epb.data.len());
                        let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                        deliver(
                            iface,
                            |res| {
                                let off = iface.map_or(0, |i| i.offset_s);
                                let secs = (ts / res) as i64 + off;
                                secs.max(0) as u64 * 1_000_000_000
                                    + (ts % res) * 1_000_000_000 / res
                            },
                            &epb.data[..caplen],
                            &mut stats,
                            &mut on_packet,
                        );
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        // No timestamp in a simple packet block: time 0.
                        let iface = ifaces.first().copied();
                        deliver(iface, |_| 0, spb.data, &mut stats, &mut on_packet);
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                offset += len as u64;
                reader.consume(len);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if stalled {
                    return Err(FileError::Truncated {
                        path: path.to_path_buf(),
                        offset,
                    });
                }
                stalled = true;
                if let Err(e) = reader.refill() {
                    return Err(FileError::Damaged {
                        path: path.to_path_buf(),
                        offset,
                        what: format!("reading: {e:?}"),
                    });
                }
            }
            Err(PcapError::UnexpectedEof) => {
                return Err(FileError::Truncated {
                    path: path.to_path_buf(),
                    offset,
                });
            }
            Err(PcapError::BufferTooSmall) => {
                // A block larger than the buffer: grow once, generously, then give up.
                if !reader.grow(64 << 20) {
                    return Err(FileError::Damaged {
                        path: path.to_path_buf(),
                        offset,
                        what: "a block larger than 64 MiB".into(),
                    });
                }
            }
            Err(e) => {
                return Err(FileError::Damaged {
                    path: path.to_path_buf(),
                    offset,
                    what: describe(&e),
                });
            }
        }
    }
    stats.bytes_read = offset;
    Ok(stats)
}

fn describe(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("unparsable block ({kind:?})")
        }
        other => format!("{other:?}"),
    }
}

fn deliver(
    iface: Option<Iface>,
    ts_ns: impl FnOnce(u64) -> u64,
    data: &[u8],
    stats: &mut FileStats,
    on_packet: &mut impl FnMut(u64, LinkType, &[u8]),
) {
    stats.packets += 1;
    match iface.and_then(|i| i.link.map(|l| (l, i.resolution))) {
        Some((link, res)) => on_packet(ts_ns(res.max(1)), link, data),
        None => {
            stats.unsupported_link += 1;
            if stats.unsupported_linktype.is_none() {
                stats.unsupported_linktype = iface.map(|i| i.linktype);
            }
        }
    }
}
