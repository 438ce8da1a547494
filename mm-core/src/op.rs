//! Operations on an address space, as data: one mm system call or memory
//! access with its arguments, and what it returned. The engine and the host
//! runner execute the same [`Op`]s; the differential tests and op traces
//! are sequences of them.

use serde::{Deserialize, Serialize};

use crate::errno::Errno;

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// mmap(addr, len, prot, flags, fd, offset); `file` names a file the
    /// runner created with [`Op::CreateFile`] (None: fd -1).
    Mmap {
        /// Address (hint, or fixed with MAP_FIXED*).
        addr: u64,
        /// Length.
        len: u64,
        /// PROT_* bits.
        prot: u64,
        /// MAP_* flags.
        flags: u64,
        /// File id, for file mappings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<u32>,
        /// File offset.
        #[serde(default)]
        offset: u64,
    },
    /// munmap(addr, len).
    Munmap {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// mprotect(addr, len, prot).
    Mprotect {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
        /// PROT_* bits.
        prot: u64,
    },
    /// mremap(old_addr, old_len, new_len, flags, new_addr).
    Mremap {
        /// Old address.
        old_addr: u64,
        /// Old length.
        old_len: u64,
        /// New length.
        new_len: u64,
        /// MREMAP_* flags.
        flags: u64,
        /// New address (MREMAP_FIXED).
        new_addr: u64,
    },
    /// madvise(addr, len, advice).
    Madvise {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
        /// MADV_* value.
        advice: i32,
    },
    /// mlock2(addr, len, flags).
    Mlock {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
        /// MLOCK_* flags.
        flags: u64,
    },
    /// munlock(addr, len).
    Munlock {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Write `kind` to /proc/self/clear_refs.
    ClearRefs {
        /// 1-5.
        kind: u32,
    },
    /// fork(): execution continues in the child, while the parent waits
    /// (keeping its address space, so pages stay shared).
    Fork,
    /// Create file `id` of `size` bytes, filled with `fill` (for file
    /// mappings).
    CreateFile {
        /// Id used by [`Op::Mmap`].
        id: u32,
        /// Size in bytes.
        size: u64,
        /// Byte every position holds.
        fill: u8,
    },
    /// Read the byte at `addr`.
    Read {
        /// Address.
        addr: u64,
    },
    /// Write `value` at `addr`.
    Write {
        /// Address.
        addr: u64,
        /// Byte.
        value: u8,
    },
    /// Execute at `addr` (the byte there must be a `ret`, 0xc3, or the
    /// access must fault).
    Exec {
        /// Address.
        addr: u64,
    },
}

impl Op {
    /// Whether this is a memory access rather than a system call.
    pub const fn is_access(&self) -> bool {
        matches!(
            self,
            Self::Read { .. } | Self::Write { .. } | Self::Exec { .. }
        )
    }
}

/// What an operation returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "value", rename_all = "snake_case")]
pub enum Outcome {
    /// A system call succeeded with this value (0, or an address).
    Ok(u64),
    /// A system call failed.
    Err(Errno),
    /// An access completed; for reads, the byte read.
    Value(u8),
    /// An access raised SIGSEGV.
    Segv,
    /// An access raised SIGBUS (beyond the end of a file).
    Bus,
}

impl Outcome {
    /// From a system call result.
    pub fn from_result(r: Result<u64, Errno>) -> Self {
        match r {
            Ok(v) => Self::Ok(v),
            Err(e) => Self::Err(e),
        }
    }
}

impl Serialize for Errno {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Errno::ALL
            .iter()
            .copied()
            .find(|e| e.name() == s)
            .ok_or_else(|| serde::de::Error::custom(format_args!("unknown errno `{s}`")))
    }
}

/// One line of /proc/PID/maps reduced to what the differential tests
/// compare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapsEntry {
    /// Start.
    pub start: u64,
    /// End.
    pub end: u64,
    /// "rw-p" etc.
    pub perms: String,
    /// File offset column.
    pub offset: u64,
    /// The pathname column (`/dev/zero (deleted)`, `/memfd:NAME
    /// (deleted)`, `[heap]`...), empty for anonymous memory.
    #[serde(default)]
    pub name: String,
}

/// The state of a window of the address space after an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// VMAs intersecting the window, clipped to it.
    pub maps: Vec<MapsEntry>,
    /// pagemap entries of the window's pages, flag bits only (bits 55-63).
    pub pagemap: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_outcomes_serialize_compactly() {
        let op = Op::Mmap {
            addr: 0x1000,
            len: 0x2000,
            prot: 3,
            flags: 0x22,
            file: None,
            offset: 0,
        };
        let s = serde_json::to_string(&op).unwrap();
        assert_eq!(
            s,
            r#"{"op":"mmap","addr":4096,"len":8192,"prot":3,"flags":34,"offset":0}"#
        );
        assert_eq!(serde_json::from_str::<Op>(&s).unwrap(), op);
        let o = Outcome::Err(Errno::EINVAL);
        let s = serde_json::to_string(&o).unwrap();
        assert_eq!(s, r#"{"outcome":"err","value":"EINVAL"}"#);
        assert_eq!(serde_json::from_str::<Outcome>(&s).unwrap(), o);
        assert_eq!(
            serde_json::to_string(&Outcome::Segv).unwrap(),
            r#"{"outcome":"segv"}"#
        );
        assert!(serde_json::from_str::<Outcome>(r#"{"outcome":"err","value":"ENOPE"}"#).is_err());
    }
}
