//! A reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`), just enough to
//! find struct member offsets and tracepoint prototypes
//! (`include/uapi/linux/btf.h`, Documentation/bpf/btf.rst).
//!
//! The eBPF programs cannot carry CO-RE relocations (Rust does not emit
//! them), so mm-probe resolves the few offsets they need here, at load time,
//! and passes them in as constants.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

/// Errors reading BTF.
#[derive(Debug, Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF or is truncated.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
}

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type record, with the offset of its kind-specific data.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Byte offset of the data following the common header.
    extra: usize,
}

/// Parsed BTF.
pub struct Btf {
    data: Vec<u8>,
    strings: usize,
    strings_len: usize,
    /// Index 0 is `void`; type ids are indices.
    types: Vec<Type>,
    /// Named types, name -> ids (a name can belong to several kinds).
    by_name: HashMap<String, Vec<u32>>,
}

/// A struct member found by [`Btf::member_offset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the outermost struct.
    pub offset: u64,
    /// Size of the member in bytes (0 when not a sized type).
    pub size: u64,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parse raw (little-endian) BTF.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |d: &[u8], o: usize| -> Option<u16> {
            d.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        if u16_at(&data, 0) != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = read_u32(&data, 4).ok_or(BtfError::Malformed("short header"))? as usize;
        let field = |i: usize| read_u32(&data, 8 + 4 * i).map(|v| v as usize);
        let (Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (field(0), field(1), field(2), field(3))
        else {
            return Err(BtfError::Malformed("short header"));
        };
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off;
        if types_end > data.len() || strings + str_len > data.len() {
            return Err(BtfError::Malformed("sections past the end of the data"));
        }

        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut pos = types_start;
        while pos < types_end {
            let (Some(name_off), Some(info), Some(size_or_type)) = (
                read_u32(&data, pos),
                read_u32(&data, pos + 4),
                read_u32(&data, pos + 8),
            ) else {
                return Err(BtfError::Malformed("truncated type"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = pos + 12;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                0..=19 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(Type {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 != 0,
                size_or_type,
                extra,
            });
            pos = extra + extra_len;
        }
        if pos != types_end {
            return Err(BtfError::Malformed("type section length mismatch"));
        }
        let mut btf = Self {
            data,
            strings,
            strings_len: str_len,
            types,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let name = btf.str_at(btf.types[id].name_off);
            if !name.is_empty() {
                btf.by_name
                    .entry(name.to_owned())
                    .or_default()
                    .push(id as u32);
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let start = self.strings + off as usize;
        let end = self.strings + self.strings_len;
        if start >= end {
            return "";
        }
        let bytes = &self.data[start..end];
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    fn named(&self, name: &str, kind: u32) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .copied()
            .find(|&id| self.ty(id).is_some_and(|t| t.kind == kind))
    }

    /// Follow typedef/const/volatile/restrict/type-tag to the real type.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(id),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> u64 {
        let Some(id) = self.resolve(id) else { return 0 };
        let Some(t) = self.ty(id) else { return 0 };
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => t.size_or_type.into(),
            KIND_PTR => 8,
            KIND_ARRAY => {
                let elem = read_u32(&self.data, t.extra).unwrap_or(0);
                let n = read_u32(&self.data, t.extra + 8).unwrap_or(0);
                self.size_of(elem) * u64::from(n)
            }
            _ => 0,
        }
    }

    /// The offset of member `member` of `struct name`, looking through
    /// anonymous struct and union members (as `mm_struct` nests its fields).
    /// `None` when the struct or the member does not exist.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<Member> {
        let id = self.named(name, KIND_STRUCT)?;
        self.find_member(id, member, 0, 0)
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u64, depth: u32) -> Option<Member> {
        if depth > 8 {
            return None;
        }
        let t = *self.ty(self.resolve(id)?)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return None;
        }
        for i in 0..t.vlen as usize {
            let m = t.extra + 12 * i;
            let (Some(name_off), Some(mtype), Some(moff)) = (
                read_u32(&self.data, m),
                read_u32(&self.data, m + 4),
                read_u32(&self.data, m + 8),
            ) else {
                return None;
            };
            let bits = if t.kind_flag {
                u64::from(moff & 0x00ff_ffff)
            } else {
                u64::from(moff)
            };
            let name = self.str_at(name_off);
            if name == member {
                return Some(Member {
                    offset: (base_bits + bits) / 8,
                    size: self.size_of(mtype),
                });
            }
            if name.is_empty() {
                if let Some(found) = self.find_member(mtype, member, base_bits + bits, depth + 1) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// Number of arguments of tracepoint `name` as passed to BPF (the
    /// `btf_trace_<name>` prototype minus its leading `void *data`), or `None`
    /// when this kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let typedef = self.named(&format!("btf_trace_{name}"), KIND_TYPEDEF)?;
        let ptr = self.ty(typedef)?.size_or_type;
        let ptr_t = self.ty(ptr)?;
        if ptr_t.kind != KIND_PTR {
            return None;
        }
        let proto = self.ty(ptr_t.size_or_type)?;
        if proto.kind != KIND_FUNC_PROTO {
            return None;
        }
        (proto.vlen as usize).checked_sub(1)
    }
}

fn read_u32(d: &[u8], o: usize) -> Option<u32> {
    d.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob built by hand: `struct s { int a; union { long b; }; }`
    /// plus `typedef void (*btf_trace_t)(void *, int)`.
    fn tiny() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0long\0btf_trace_t\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: long (8 bytes)
        push(&[s("long"), KIND_INT << 24, 8, 64]);
        // 3: anonymous union { long b; } at bit 0
        push(&[0, (KIND_UNION << 24) | 1, 8, s("b"), 2, 0]);
        // 4: struct s { int a; <anon union> at bit 64 }
        push(&[s("s"), (KIND_STRUCT << 24) | 2, 16, s("a"), 1, 0, 0, 3, 64]);
        // 5: func proto (void *, int) -> void
        push(&[0, (KIND_FUNC_PROTO << 24) | 2, 0, 0, 6, 0, 1]);
        // 6: ptr to 7 (void) -- use 0 as void
        push(&[0, KIND_PTR << 24, 0]);
        // 7: ptr to func proto 5
        push(&[0, KIND_PTR << 24, 5]);
        // 8: typedef btf_trace_t -> 7
        push(&[s("btf_trace_t"), KIND_TYPEDEF << 24, 7]);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(1);
        out.push(0);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(tiny()).unwrap();
        assert_eq!(
            btf.member_offset("s", "a"),
            Some(Member { offset: 0, size: 4 })
        );
        assert_eq!(
            btf.member_offset("s", "b"),
            Some(Member { offset: 8, size: 8 })
        );
        assert_eq!(btf.member_offset("s", "nope"), None);
        assert_eq!(btf.member_offset("nope", "a"), None);
        assert_eq!(btf.tracepoint_args("t"), Some(1));
        assert_eq!(btf.tracepoint_args("missing"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(vec![1, 2, 3]),
            Err(BtfError::Malformed(_))
        ));
        let mut truncated = tiny();
        truncated.truncate(40);
        assert!(matches!(Btf::parse(truncated), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn host_kernel_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipping: no /sys/kernel/btf/vmlinux on this host");
            return;
        };
        let mm = btf
            .member_offset("task_struct", "mm")
            .expect("task_struct.mm");
        assert_eq!(mm.size, 8);
        let tgid = btf
            .member_offset("task_struct", "tgid")
            .expect("task_struct.tgid");
        assert_eq!(tgid.size, 4);
        let pid = btf
            .member_offset("task_struct", "pid")
            .expect("task_struct.pid");
        assert_eq!(pid.size, 4);
        // pid and tgid are adjacent in every kernel since 2.6
        assert_eq!(tgid.offset, pid.offset + 4);
        let lock = btf
            .member_offset("mm_struct", "mmap_lock")
            .expect("mm_struct.mmap_lock");
        assert!(lock.size >= 32, "rw_semaphore is larger: {lock:?}");
        assert!(btf.tracepoint_args("page_fault_user") == Some(3));
    }
}
