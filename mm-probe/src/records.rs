//! Decoding the records of the `EVENTS` ring buffer.
//!
//! The buffer carries two record types of different sizes, [`Event`] (faults
//! and mmap_lock events) and [`SyscallEvent`] (mm system calls). Both start
//! with an [`EventHeader`]; a reader reads the header, dispatches on its
//! `kind` and then checks that the record is as long as that kind's type.

use mm_ebpf::{Event, EventHeader, SyscallEvent, event_kind};
use thiserror::Error;

/// One decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// A fault or an mmap_lock event.
    Event(Event),
    /// A completed mm system call.
    Syscall(SyscallEvent),
}

impl Record {
    /// The common header fields.
    pub const fn header(&self) -> EventHeader {
        match self {
            Self::Event(e) => EventHeader {
                ts_ns: e.ts_ns,
                tgid: e.tgid,
                tid: e.tid,
                kind: e.kind,
                flags: e.flags,
                nr: e.nr,
            },
            Self::Syscall(s) => EventHeader {
                ts_ns: s.ts_ns,
                tgid: s.tgid,
                tid: s.tid,
                kind: s.kind,
                flags: s.flags,
                nr: s.nr,
            },
        }
    }

    /// CLOCK_MONOTONIC time of the record (a syscall's: its return).
    pub const fn ts_ns(&self) -> u64 {
        self.header().ts_ns
    }
}

/// A ring-buffer record that cannot be decoded (a mismatch between the
/// embedded eBPF object and this build).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Shorter than the common header.
    #[error("ring-buffer record of {len} bytes is shorter than the {min}-byte header")]
    Short {
        /// Record length.
        len: usize,
        /// Header length.
        min: usize,
    },
    /// The length does not match the kind's record type.
    #[error("ring-buffer record of kind {kind} has {len} bytes, expected {expected}")]
    Length {
        /// The kind in the header.
        kind: u16,
        /// Record length.
        len: usize,
        /// That kind's size.
        expected: usize,
    },
    /// An unknown kind.
    #[error("ring-buffer record of unknown kind {kind} ({len} bytes)")]
    Kind {
        /// The kind in the header.
        kind: u16,
        /// Record length.
        len: usize,
    },
}

/// Read a `T` from the start of `bytes`, which must be at least that long.
fn read<T: Copy>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: the length is checked above; the record types are plain
    // integers (every bit pattern is valid); read_unaligned copes with the
    // ring buffer's 8-byte alignment and with any slice.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
}

/// Decode one record. The ring buffer rounds records up to 8 bytes, which
/// both sizes already are, so the length must match exactly.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let min = size_of::<EventHeader>();
    if bytes.len() < min {
        return Err(DecodeError::Short {
            len: bytes.len(),
            min,
        });
    }
    let header: EventHeader = read(bytes);
    let expected = match header.kind {
        event_kind::SYSCALL => size_of::<SyscallEvent>(),
        event_kind::FAULT | event_kind::LOCK_RELEASE | event_kind::LOCK_FAILED => {
            size_of::<Event>()
        }
        kind => {
            return Err(DecodeError::Kind {
                kind,
                len: bytes.len(),
            });
        }
    };
    if bytes.len() != expected {
        return Err(DecodeError::Length {
            kind: header.kind,
            len: bytes.len(),
            expected,
        });
    }
    Ok(if header.kind == event_kind::SYSCALL {
        Record::Syscall(read(bytes))
    } else {
        Record::Event(read(bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-integer #[repr(C)] value
        // without padding.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn fault() -> Event {
        Event {
            ts_ns: 1_000,
            tgid: 10,
            tid: 11,
            kind: event_kind::FAULT,
            flags: mm_ebpf::event_flags::USER,
            nr: 0,
            a: 0x7f00_0000_1000,
            b: 6,
        }
    }

    fn syscall() -> SyscallEvent {
        SyscallEvent {
            ts_ns: 2_000,
            tgid: 10,
            tid: 12,
            kind: event_kind::SYSCALL,
            flags: 0,
            nr: 9,
            enter_ns: 1_500,
            args: [0, 0x10000, 3, 0x22, u64::MAX, 0],
            ret: 0x7f00_0000_0000,
        }
    }

    #[test]
    fn both_record_sizes_decode() {
        let f = fault();
        assert_eq!(decode(&bytes_of(&f)), Ok(Record::Event(f)));
        let s = syscall();
        let r = decode(&bytes_of(&s)).unwrap();
        assert_eq!(r, Record::Syscall(s));
        assert_eq!(r.ts_ns(), 2_000);
        assert_eq!(r.header().tid, 12);
        assert_eq!(r.header().nr, 9);
        let mut failed = syscall();
        failed.ret = -22;
        match decode(&bytes_of(&failed)).unwrap() {
            Record::Syscall(s) => assert_eq!((s.ret, s.args[4]), (-22, u64::MAX)),
            other => panic!("{other:?}"),
        }
        let mut release = fault();
        release.kind = event_kind::LOCK_RELEASE;
        assert_eq!(decode(&bytes_of(&release)), Ok(Record::Event(release)));
    }

    #[test]
    fn decoding_reads_unaligned_slices() {
        let s = syscall();
        let mut buf = vec![0u8; 1];
        buf.extend(bytes_of(&s));
        assert_eq!(decode(&buf[1..]), Ok(Record::Syscall(s)));
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Short { len: 8, min: 24 }));
        // A syscall kind in an Event-sized record, and the reverse.
        let mut f = fault();
        f.kind = event_kind::SYSCALL;
        assert_eq!(
            decode(&bytes_of(&f)),
            Err(DecodeError::Length {
                kind: event_kind::SYSCALL,
                len: 40,
                expected: 88
            })
        );
        let mut s = syscall();
        s.kind = event_kind::FAULT;
        assert_eq!(
            decode(&bytes_of(&s)),
            Err(DecodeError::Length {
                kind: event_kind::FAULT,
                len: 88,
                expected: 40
            })
        );
        let mut f = fault();
        f.kind = 99;
        assert_eq!(
            decode(&bytes_of(&f)),
            Err(DecodeError::Kind { kind: 99, len: 40 })
        );
    }
}
