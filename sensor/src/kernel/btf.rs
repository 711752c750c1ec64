//! Minimal reader for the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF tracepoint program reads `struct sock` / `struct tcp_sock` fields with
//! `bpf_probe_read_kernel` at byte offsets; finding those offsets here, at load time, keeps the
//! eBPF object independent of one kernel build. aya keeps its BTF type accessors crate-private
//! and we avoid LGPL parsers, so this parses only what member lookup needs.

use std::ops::Range;
use std::path::PathBuf;

use sensor_common::{AcceptOffsets, SockOffsets};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF at byte {offset}: {what}")]
    Malformed { offset: usize, what: String },
    #[error("BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("struct {struct_name} has no member {member} in this kernel's BTF")]
    NoMember { struct_name: String, member: String },
    #[error("{struct_name}.{member} is a bitfield; cannot read it at a byte offset")]
    Bitfield { struct_name: String, member: String },
    #[error("{struct_name}.{member} is {actual} bytes, expected {expected}")]
    UnexpectedSize {
        struct_name: String,
        member: String,
        actual: u32,
        expected: u32,
    },
}

/// A member's position: byte offset from the outermost struct and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

const HDR_LEN: usize = 24;
const MAGIC: u16 = 0xeb9f;
const INT: u8 = 1;
const PTR: u8 = 2;
const ARRAY: u8 = 3;
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const ENUM: u8 = 6;
const FLOAT: u8 = 16;
const ENUM64: u8 = 19;
/// Kinds that only qualify or rename another type: followed through `size_or_type`.
const ALIASES: [u8; 5] = [8, 9, 10, 11, 18]; // TYPEDEF VOLATILE CONST RESTRICT TYPE_TAG
/// Longest alias/array/anonymous-member chain followed before calling the data looped.
const MAX_DEPTH: usize = 64;

struct Type {
    /// Byte offset of the `btf_type` in the blob, for error messages.
    pos: usize,
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    size_or_type: u32,
    /// INT: encoding word; ARRAY: element type.
    extra: u32,
    /// ARRAY: element count.
    nelems: u32,
    /// STRUCT/UNION: range into `KernelBtf::members`.
    members: Range<usize>,
}

struct RawMember {
    pos: usize,
    name_off: u32,
    type_id: u32,
    offset: u32,
}

/// A member found by name: bit offset from the struct searched, its type, bitfield flag.
struct Found {
    bit_off: u64,
    type_id: u32,
    pos: usize,
    bitfield: bool,
}

/// Parsed BTF types (id `n` is `types[n - 1]`) and the string section.
pub struct KernelBtf {
    types: Vec<Type>,
    members: Vec<RawMember>,
    strings: Vec<u8>,
}

fn malformed(offset: usize, what: impl Into<String>) -> BtfError {
    let what = what.into();
    BtfError::Malformed { offset, what }
}

fn u32_at(data: &[u8], off: usize) -> Result<u32, BtfError> {
    let bytes = data
        .get(off..off.saturating_add(4))
        .and_then(|b| b.try_into().ok());
    bytes
        .map(u32::from_le_bytes)
        .ok_or_else(|| malformed(off, "truncated"))
}

impl KernelBtf {
    pub const VMLINUX: &'static str = "/sys/kernel/btf/vmlinux";

    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = PathBuf::from(Self::VMLINUX);
        let data = std::fs::read(&path).map_err(|source| BtfError::Read { path, source })?;
        Self::parse(&data)
    }

    /// Parses little-endian raw BTF; anything out of bounds is `Malformed`, never a panic.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < HDR_LEN {
            return Err(malformed(data.len(), "truncated header"));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic == MAGIC.swap_bytes() {
            return Err(malformed(0, "big-endian BTF is not supported"));
        } else if magic != MAGIC {
            return Err(malformed(0, format!("bad magic {magic:#06x}")));
        }
        if data[2] != 1 {
            return Err(malformed(2, format!("unsupported version {}", data[2])));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        if !(HDR_LEN..=data.len()).contains(&hdr_len) {
            return Err(malformed(4, format!("bad header length {hdr_len}")));
        }
        // Offsets in the header are relative to the end of the header.
        let section = |field: usize| -> Result<Range<usize>, BtfError> {
            let start = hdr_len.saturating_add(u32_at(data, field)? as usize);
            let end = start.saturating_add(u32_at(data, field + 4)? as usize);
            match end <= data.len() {
                true => Ok(start..end),
                false => Err(malformed(
                    field,
                    format!("section ends at {end}, past the blob"),
                )),
            }
        };
        let (type_sec, str_sec) = (section(8)?, section(16)?);
        let strings = data[str_sec.clone()].to_vec();
        let check_name = |off: u32, pos| match (off as usize) < strings.len().max(1) {
            true => Ok(off),
            false => Err(malformed(
                pos,
                format!("name offset {off} past string section"),
            )),
        };
        let (mut types, mut members) = (Vec::new(), Vec::new());
        let mut pos = type_sec.start;
        while pos < type_sec.end {
            let word = |i: usize| u32_at(&data[..type_sec.end], pos + 4 * i);
            let (name_off, info, size_or_type) = (check_name(word(0)?, pos)?, word(1)?, word(2)?);
            let (vlen, kind) = ((info & 0xffff) as usize, ((info >> 24) & 0x1f) as u8);
            let mut ty = Type {
                pos,
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra: 0,
                nelems: 0,
                members: 0..0,
            };
            let extra_len = match kind {
                INT => {
                    ty.extra = word(3)?;
                    4
                }
                ARRAY => {
                    (ty.extra, ty.nelems) = (word(3)?, word(5)?);
                    12
                }
                STRUCT | UNION => {
                    let first = members.len();
                    for i in 0..vlen {
                        let m = pos + 12 + 12 * i;
                        let w = |j: usize| u32_at(&data[..type_sec.end], m + 4 * j);
                        let (name_off, type_id, offset) = (check_name(w(0)?, m)?, w(1)?, w(2)?);
                        members.push(RawMember {
                            pos: m,
                            name_off,
                            type_id,
                            offset,
                        });
                    }
                    ty.members = first..members.len();
                    12 * vlen
                }
                ENUM | 13 => 8 * vlen,    // ENUM, FUNC_PROTO
                15 | ENUM64 => 12 * vlen, // DATASEC, ENUM64
                14 | 17 => 4,             // VAR, DECL_TAG
                PTR | 7 | 8..=12 | FLOAT | 18 => 0,
                _ => return Err(malformed(pos + 4, format!("unknown type kind {kind}"))),
            };
            types.push(ty);
            pos += 12 + extra_len;
        }
        if pos != type_sec.end {
            return Err(malformed(
                type_sec.end,
                "last type runs past the type section",
            ));
        }
        Ok(Self {
            types,
            members,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        s.split(|&b| b == 0).next().unwrap_or_default()
    }

    /// The type `id`, following aliases; `from` is the referencing byte offset, for errors.
    fn resolve(&self, mut id: u32, from: usize) -> Result<&Type, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = (id as usize)
                .checked_sub(1)
                .and_then(|i| self.types.get(i))
                .ok_or_else(|| malformed(from, format!("bad type id {id}")))?;
            if !ALIASES.contains(&t.kind) {
                return Ok(t);
            }
            id = t.size_or_type;
        }
        Err(malformed(from, "typedef/qualifier chain loops"))
    }

    fn size(&self, id: u32, from: usize, depth: usize) -> Result<u32, BtfError> {
        let t = self.resolve(id, from)?;
        match t.kind {
            INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => Ok(t.size_or_type),
            PTR => Ok(8),
            ARRAY if depth < MAX_DEPTH => t
                .nelems
                .checked_mul(self.size(t.extra, t.pos, depth + 1)?)
                .ok_or_else(|| malformed(t.pos, "array size overflows u32")),
            ARRAY => Err(malformed(t.pos, "array nesting too deep")),
            k => Err(malformed(t.pos, format!("type kind {k} has no size"))),
        }
    }

    /// Finds `name` in struct/union `id` or, recursively, in its anonymous struct/union members.
    fn find(
        &self,
        id: u32,
        name: &[u8],
        from: usize,
        depth: usize,
    ) -> Result<Option<Found>, BtfError> {
        let t = self.resolve(id, from)?;
        for m in &self.members[t.members.clone()] {
            let (bit_off, bf_size) = match t.kind_flag {
                true => (m.offset & 0xff_ffff, m.offset >> 24),
                false => (m.offset, 0),
            };
            let m_name = self.name(m.name_off);
            if m_name == name && !name.is_empty() {
                let (type_id, pos, bitfield) = (m.type_id, m.pos, bf_size != 0);
                return Ok(Some(Found {
                    bit_off: bit_off.into(),
                    type_id,
                    pos,
                    bitfield,
                }));
            }
            if m_name.is_empty()
                && depth < MAX_DEPTH
                && let Some(mut f) = self.find(m.type_id, name, m.pos, depth + 1)?
            {
                f.bit_off += u64::from(bit_off);
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// First STRUCT named `name` with members, else the first STRUCT of that name at all.
    fn find_struct(&self, name: &str) -> Result<(u32, usize), BtfError> {
        let mut fallback = None;
        for (i, t) in self.types.iter().enumerate() {
            if t.kind == STRUCT && self.name(t.name_off) == name.as_bytes() {
                let id = (i + 1) as u32;
                if !t.members.is_empty() {
                    return Ok((id, t.pos));
                }
                fallback.get_or_insert((id, t.pos));
            }
        }
        fallback.ok_or_else(|| BtfError::NoStruct { name: name.into() })
    }

    /// Offset of a member of struct `struct_name`. `path` is dot-separated
    /// ("__sk_common.skc_daddr"); each component is searched in the current struct/union and,
    /// recursively, inside its anonymous struct/union members (kernel structs hide many fields
    /// in anonymous unions).
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member, BtfError> {
        let names = || (struct_name.to_owned(), path.to_owned());
        let no_member = || {
            let (struct_name, member) = names();
            BtfError::NoMember {
                struct_name,
                member,
            }
        };
        let (mut id, mut from) = self.find_struct(struct_name)?;
        let (mut bit_off, mut bitfield) = (0u64, false);
        for comp in path.split('.') {
            let f = self
                .find(id, comp.as_bytes(), from, 0)?
                .ok_or_else(no_member)?;
            (id, from, bit_off, bitfield) = (f.type_id, f.pos, bit_off + f.bit_off, f.bitfield);
        }
        let t = self.resolve(id, from)?;
        // Without kind_flag, an INT narrower than its storage (or shifted within it) is a bitfield.
        let (nr_bits, int_shift) = (t.extra & 0xff, (t.extra >> 16) & 0xff);
        let narrow_int = t.kind == INT
            && (u64::from(nr_bits) != 8 * u64::from(t.size_or_type) || int_shift != 0);
        if bitfield || narrow_int || bit_off % 8 != 0 {
            let (struct_name, member) = names();
            return Err(BtfError::Bitfield {
                struct_name,
                member,
            });
        }
        let offset = u32::try_from(bit_off / 8)
            .map_err(|_| malformed(from, "member offset overflows u32"))?;
        let size = self.size(id, from, 0)?;
        Ok(Member { offset, size })
    }
}

/// Where the first-I/O hooks find a socket's protocol and cookie in `struct sock`.
pub fn accept_offsets(btf: &KernelBtf) -> Result<AcceptOffsets, BtfError> {
    let off = |s: &str, m: &str| btf.member(s, m).map(|m| m.offset);
    Ok(AcceptOffsets {
        valid: 1,
        by_cookie: 0,
        sk_cookie: off("sock", "__sk_common.skc_cookie")?,
        sk_protocol: off("sock", "sk_protocol")?,
    })
}

/// Fills every `SockOffsets` field (valid = 1) from the kernel's BTF, checking field sizes so a
/// changed layout fails loudly instead of reading garbage. `tcp_sock` starts with
/// `inet_connection_sock` -> `inet_sock` -> `sock`, so its offsets are from the `sock` pointer.
pub fn sock_offsets(btf: &KernelBtf) -> Result<SockOffsets, BtfError> {
    let get = |struct_name: &str, member: &str, expected: u32| {
        let m = btf.member(struct_name, member)?;
        if m.size != expected {
            let (struct_name, member, actual) = (struct_name.into(), member.into(), m.size);
            let err = BtfError::UnexpectedSize {
                struct_name,
                member,
                actual,
                expected,
            };
            return Err(err);
        }
        Ok(m.offset)
    };
    let sk = |member: &str, size| get("sock", member, size);
    let tp = |member: &str, size| get("tcp_sock", member, size);
    Ok(SockOffsets {
        valid: 1,
        family: sk("__sk_common.skc_family", 2)?,
        protocol: sk("sk_protocol", 2)?,
        rcv_saddr: sk("__sk_common.skc_rcv_saddr", 4)?,
        daddr: sk("__sk_common.skc_daddr", 4)?,
        sport: get("inet_sock", "inet_sport", 2)?,
        dport: sk("__sk_common.skc_dport", 2)?,
        v6_rcv_saddr: sk("__sk_common.skc_v6_rcv_saddr", 16)?,
        v6_daddr: sk("__sk_common.skc_v6_daddr", 16)?,
        bytes_acked: tp("bytes_acked", 8)?,
        bytes_received: tp("bytes_received", 8)?,
        segs_in: tp("segs_in", 4)?,
        segs_out: tp("segs_out", 4)?,
        srtt_us: tp("srtt_us", 4)?,
        total_retrans: tp("total_retrans", 4)?,
        sk_flags: sk("__sk_common.skc_flags", 8)?,
        sk_err: sk("sk_err", 4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds raw BTF: `ty` appends one type (ids from 1), `comp` a struct/union.
    struct Blob {
        types: Vec<u32>,
        strs: Vec<u8>,
    }

    impl Blob {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strs: vec![0],
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strs.len() as u32;
            self.strs.extend_from_slice(name.as_bytes());
            self.strs.push(0);
            off
        }
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]) {
            let name = self.s(name);
            self.types.extend([name, kind << 24 | vlen, size_or_type]);
            self.types.extend_from_slice(extra);
        }
        fn comp(
            &mut self,
            name: &str,
            kind: u32,
            kflag: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) {
            let extra: Vec<u32> = members
                .iter()
                .flat_map(|&(n, t, o)| [self.s(n), t, o])
                .collect();
            let kind = kind | u32::from(kflag) << 7;
            self.ty(name, kind, members.len() as u32, size, &extra);
        }
        fn finish(self) -> Vec<u8> {
            let type_len = 4 * self.types.len() as u32;
            let header = [24, 0, type_len, type_len, self.strs.len() as u32];
            let mut out = vec![0x9f, 0xeb, 1, 0];
            out.extend(header.iter().flat_map(|w| w.to_le_bytes()));
            out.extend(self.types.iter().flat_map(|w| w.to_le_bytes()));
            out.extend(self.strs);
            out
        }
    }

    fn synthetic() -> Vec<u8> {
        let mut b = Blob::new();
        b.ty("unsigned char", 1, 0, 1, &[8]); // 1
        b.ty("unsigned short", 1, 0, 2, &[16]); // 2
        b.ty("__u16", 8, 0, 2, &[]); // 3: typedef
        b.ty("unsigned int", 1, 0, 4, &[32]); // 4
        b.ty("", 3, 0, 0, &[1, 4, 16]); // 5: u8[16]
        b.comp("", 4, false, 8, &[("a", 4, 0), ("b", 3, 32)]); // 6: anon struct
        b.comp("", 5, false, 16, &[("", 6, 0), ("arr", 5, 0)]); // 7: anon union
        let flags = 3 << 24 | 192; // 3-bit bitfield at byte 24
        b.comp(
            "outer",
            4,
            true,
            32,
            &[("x", 2, 0), ("", 7, 64), ("flags", 4, flags), ("y", 9, 224)],
        ); // 8
        b.ty("", 10, 0, 3, &[]); // 9: const __u16
        let inner = [
            ("nested", 8, 0),
            ("old_bf", 11, 256),
            ("odd", 1, 268),
            ("p", 12, 320),
            ("loop", 13, 384),
        ];
        b.comp("inner_ref", 4, false, 56, &inner); // 10
        b.ty("u3", 1, 0, 4, &[3]); // 11: old-style bitfield int
        b.ty("", 2, 0, 8, &[]); // 12: pointer to outer
        b.ty("l1", 8, 0, 14, &[]); // 13: typedef loop
        b.ty("l2", 8, 0, 13, &[]); // 14
        b.finish()
    }

    #[test]
    fn synthetic_members() {
        let btf = KernelBtf::parse(&synthetic()).expect("parse");
        let m = |s: &str, p: &str| btf.member(s, p);
        assert_eq!(m("outer", "x").unwrap(), Member { offset: 0, size: 2 });
        assert_eq!(m("outer", "a").unwrap(), Member { offset: 8, size: 4 });
        assert_eq!(
            m("outer", "b").unwrap(),
            Member {
                offset: 12,
                size: 2
            }
        );
        assert_eq!(
            m("outer", "arr").unwrap(),
            Member {
                offset: 8,
                size: 16
            }
        );
        assert_eq!(
            m("outer", "y").unwrap(),
            Member {
                offset: 28,
                size: 2
            }
        );
        assert_eq!(
            m("inner_ref", "nested.b").unwrap(),
            Member {
                offset: 12,
                size: 2
            }
        );
        assert_eq!(
            m("inner_ref", "p").unwrap(),
            Member {
                offset: 40,
                size: 8
            }
        );
        for (s, p) in [
            ("outer", "flags"),
            ("inner_ref", "old_bf"),
            ("inner_ref", "odd"),
        ] {
            assert!(matches!(m(s, p), Err(BtfError::Bitfield { .. })), "{s}.{p}");
        }
        assert!(matches!(m("nope", "x"), Err(BtfError::NoStruct { .. })));
        for p in ["zz", "x.y", "", "nested.", "nested.zz"] {
            assert!(
                matches!(m("inner_ref", p), Err(BtfError::NoMember { .. })),
                "{p:?}"
            );
        }
        assert!(matches!(
            m("inner_ref", "loop"),
            Err(BtfError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_input() {
        let blob = synthetic();
        for cut in [0, 10, 30, blob.len() - 1] {
            let err = KernelBtf::parse(&blob[..cut])
                .err()
                .expect("truncated blob must fail");
            assert!(
                matches!(err, BtfError::Malformed { .. }),
                "cut {cut}: {err}"
            );
            assert!(err.to_string().contains("at byte"), "{err}");
        }
        let mut be = blob.clone();
        be.swap(0, 1);
        let err = KernelBtf::parse(&be).err().expect("big-endian must fail");
        assert!(err.to_string().contains("big-endian"), "{err}");
        let mut bad_kind = blob;
        bad_kind[24 + 7] = 30; // kind byte of type 1
        let err = KernelBtf::parse(&bad_kind)
            .err()
            .expect("bad kind must fail");
        assert!(err.to_string().contains("at byte 28"), "{err}");
    }

    #[test]
    fn running_kernel_sock_offsets() {
        if !std::path::Path::new(KernelBtf::VMLINUX).exists() {
            eprintln!(
                "\n!!!!! SKIPPED: no {} — kernel BTF test did not run !!!!!\n",
                KernelBtf::VMLINUX
            );
            return;
        }
        let btf = KernelBtf::from_sys_fs().expect("parse vmlinux BTF");
        let o = sock_offsets(&btf).expect("sock offsets");
        eprintln!("{o:?}");
        assert_eq!(o.valid, 1);
        // sock_common opens with addrpair (8), hash (4), portpair (4) unions, then skc_family.
        assert_eq!(o.family, 16);
        assert_eq!((o.daddr, o.rcv_saddr, o.dport), (0, 4, 12));
        let all = [
            o.family,
            o.protocol,
            o.rcv_saddr,
            o.daddr,
            o.sport,
            o.dport,
            o.v6_rcv_saddr,
            o.v6_daddr,
            o.bytes_acked,
            o.bytes_received,
            o.segs_in,
            o.segs_out,
            o.srtt_us,
            o.total_retrans,
        ];
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "offsets must be distinct: {all:?}");
        let reuse = btf.member("sock", "__sk_common.skc_reuse");
        assert!(matches!(reuse, Err(BtfError::Bitfield { .. })), "{reuse:?}");
        assert_eq!(
            btf.member("tcp_sock", "inet_conn.icsk_inet.sk")
                .unwrap()
                .offset,
            0
        );
    }
}
