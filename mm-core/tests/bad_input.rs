//! Bad input: unaligned addresses, zero or overflowing lengths, unknown
//! flags and advice values, ranges with holes. The engine returns the
//! kernel's errno, never panics, and leaves the address space as the
//! kernel does: unchanged for every argument error found before any work.

mod common;

use common::*;
use mm_core::{
    Errno, Mm, MmConfig,
    apply::Process,
    file::File,
    op::{Op, Outcome},
    uapi::{madv, map, mlock, mremap, prot},
};
use proptest::prelude::*;

/// A layout with a hole, private and shared, faulted and not.
fn populated() -> Mm {
    let mut mm = mm();
    anon(&mut mm, 0, 4, RW);
    mm.write(pg(1), 7).unwrap();
    mm.mmap(
        pg(6),
        2 * PS,
        RO,
        map::SHARED | map::ANONYMOUS | map::FIXED,
        None,
        0,
    )
    .unwrap();
    let read_only = File::regular("read-only", PS, false);
    mm.mmap(pg(8), PS, RO, map::SHARED | map::FIXED, Some(&read_only), 0)
        .unwrap();
    mm
}

fn snapshot(mm: &Mm) -> (String, Vec<u64>) {
    (mm.smaps(), (0..10).map(|i| mm.pagemap(pg(i))).collect())
}

#[test]
fn argument_errors_change_nothing() {
    const HUGE: u64 = u64::MAX - PS + 2;
    type Call = fn(&mut Mm) -> Result<u64, Errno>;
    let cases: Vec<(&str, Call, Errno)> = vec![
        (
            "mmap len 0",
            |m| m.mmap(0, 0, RW, map::PRIVATE | map::ANONYMOUS, None, 0),
            Errno::EINVAL,
        ),
        (
            "mmap no type",
            |m| m.mmap(0, PS, RW, map::ANONYMOUS, None, 0),
            Errno::EINVAL,
        ),
        (
            "mmap unaligned offset",
            |m| m.mmap(0, PS, RW, map::PRIVATE | map::ANONYMOUS, None, 1),
            Errno::EINVAL,
        ),
        (
            "mmap unaligned fixed",
            |m| {
                m.mmap(
                    pg(0) + 1,
                    PS,
                    RW,
                    map::PRIVATE | map::ANONYMOUS | map::FIXED,
                    None,
                    0,
                )
            },
            Errno::EINVAL,
        ),
        (
            "mmap len overflows",
            |m| m.mmap(0, u64::MAX, RW, map::PRIVATE | map::ANONYMOUS, None, 0),
            Errno::ENOMEM,
        ),
        (
            "mmap no file",
            |m| m.mmap(0, PS, RW, map::PRIVATE, None, 0),
            Errno::EBADF,
        ),
        (
            "mmap noreplace over a VMA",
            |m| {
                m.mmap(
                    pg(2),
                    PS,
                    RW,
                    map::PRIVATE | map::ANONYMOUS | map::FIXED_NOREPLACE,
                    None,
                    0,
                )
            },
            Errno::EEXIST,
        ),
        (
            "mmap beyond TASK_SIZE",
            |m| {
                m.mmap(
                    1 << 47,
                    PS,
                    RW,
                    map::PRIVATE | map::ANONYMOUS | map::FIXED,
                    None,
                    0,
                )
            },
            Errno::ENOMEM,
        ),
        (
            "munmap unaligned",
            |m| m.munmap(pg(0) + 8, PS).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "munmap len 0",
            |m| m.munmap(pg(0), 0).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "munmap len overflows",
            |m| m.munmap(pg(0), HUGE).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "mprotect unaligned",
            |m| m.mprotect(pg(0) + 1, PS, RO).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "mprotect unknown prot",
            |m| m.mprotect(pg(0), PS, 0x40).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "mprotect both grows",
            |m| {
                m.mprotect(pg(0), PS, RO | prot::GROWSDOWN | prot::GROWSUP)
                    .map(|()| 0)
            },
            Errno::EINVAL,
        ),
        (
            "mprotect len overflows",
            |m| m.mprotect(pg(0), HUGE, RO).map(|()| 0),
            Errno::ENOMEM,
        ),
        (
            "mprotect from a hole",
            |m| m.mprotect(pg(4), PS, RO).map(|()| 0),
            Errno::ENOMEM,
        ),
        (
            "mprotect growsdown on a plain VMA",
            |m| m.mprotect(pg(0), PS, RO | prot::GROWSDOWN).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "mprotect write on a read-only shared file",
            |m| m.mprotect(pg(8), PS, RW).map(|()| 0),
            Errno::EACCES,
        ),
        (
            "madvise unknown advice",
            |m| m.madvise(pg(0), PS, 99).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "madvise negative advice",
            |m| m.madvise(pg(0), PS, -1).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "madvise unaligned",
            |m| m.madvise(pg(0) + 1, PS, madv::DONTNEED).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "madvise len overflows",
            |m| m.madvise(pg(0), u64::MAX, madv::DONTNEED).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "mlock2 unknown flag",
            |m| m.mlock2(pg(0), PS, 2).map(|()| 0),
            Errno::EINVAL,
        ),
        (
            "mlock from a hole",
            |m| m.mlock2(pg(4), PS, mlock::ONFAULT).map(|()| 0),
            Errno::ENOMEM,
        ),
        (
            "mremap unknown flag",
            |m| m.mremap(pg(0), PS, PS, 8, 0),
            Errno::EINVAL,
        ),
        (
            "mremap unaligned",
            |m| m.mremap(pg(0) + 1, PS, PS, 0, 0),
            Errno::EINVAL,
        ),
        (
            "mremap new_len 0",
            |m| m.mremap(pg(0), PS, 0, 0, 0),
            Errno::EINVAL,
        ),
        (
            "mremap FIXED without MAYMOVE",
            |m| m.mremap(pg(0), PS, PS, mremap::FIXED, pg(20)),
            Errno::EINVAL,
        ),
        (
            "mremap overlapping move",
            |m| {
                m.mremap(
                    pg(0),
                    2 * PS,
                    2 * PS,
                    mremap::FIXED | mremap::MAYMOVE,
                    pg(1),
                )
            },
            Errno::EINVAL,
        ),
        (
            "mremap from a hole",
            |m| m.mremap(pg(4), PS, 2 * PS, mremap::MAYMOVE, 0),
            Errno::EFAULT,
        ),
        (
            "mremap growth across VMAs",
            |m| m.mremap(pg(0), 8 * PS, 9 * PS, mremap::MAYMOVE, 0),
            Errno::EFAULT,
        ),
        (
            "mremap no room, no move",
            |m| m.mremap(pg(0), 4 * PS, 7 * PS, 0, 0),
            Errno::ENOMEM,
        ),
        (
            "mremap duplicate a private mapping",
            |m| m.mremap(pg(0), 0, PS, mremap::MAYMOVE, 0),
            Errno::EINVAL,
        ),
        (
            "clear_refs 0",
            |m| m.clear_refs(0).map(|()| 0),
            Errno::EINVAL,
        ),
    ];
    for (what, call, want) in cases {
        let mut mm = populated();
        let before = snapshot(&mm);
        assert_eq!(call(&mut mm), Err(want), "{what}");
        assert_eq!(snapshot(&mm), before, "{what}: the address space changed");
        mm.check_invariants().unwrap();
    }
}

#[test]
fn holes_apply_to_the_mapped_parts() {
    // madvise and mprotect over a hole: the kernel changes what it can
    // reach and reports ENOMEM.
    let mut mm = populated();
    assert_eq!(
        mm.madvise(pg(0), 8 * PS, madv::DONTNEED),
        Err(Errno::ENOMEM)
    );
    assert_eq!(mm.read(pg(1)), Ok(0), "DONTNEED reached the first VMA");
    assert_eq!(mm.mprotect(pg(0), 8 * PS, RO), Err(Errno::ENOMEM));
    assert!(mm.write(pg(0), 1).is_err(), "made read-only up to the hole");
}

/// Length values that stress the arithmetic.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(PS - 1),
        Just(u64::MAX),
        Just(u64::MAX - PS + 1),
        Just(1 << 47),
        Just(1 << 63),
        (1u64..16).prop_map(|n| n * PS),
        1u64..(16 * PS),
    ]
}

fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..16).prop_map(pg),
        1 => (0u64..16).prop_map(|i| pg(i) + 1),
        1 => Just(0),
        1 => Just(!(PS - 1)),
        1 => Just(1 << 47),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (address(), length(), 0u64..16, any::<u16>()).prop_map(|(addr, len, prot, f)| Op::Mmap {
            addr,
            len,
            prot,
            flags: u64::from(f) & !(map::POPULATE | map::LOCKED) | map::ANONYMOUS,
            file: None,
            offset: 0,
        }),
        (address(), length()).prop_map(|(addr, len)| Op::Munmap { addr, len }),
        (address(), length(), 0u64..16).prop_map(|(addr, len, prot)| Op::Mprotect {
            addr,
            len,
            prot
        }),
        (address(), length(), -2i32..110).prop_map(|(addr, len, advice)| Op::Madvise {
            addr,
            len,
            advice
        }),
        (address(), length(), 0u64..4).prop_map(|(addr, len, flags)| Op::Mlock {
            addr,
            len,
            flags
        }),
        (address(), length()).prop_map(|(addr, len)| Op::Munlock { addr, len }),
        (address(), length(), length(), 0u64..16, address()).prop_map(
            |(old_addr, old_len, new_len, flags, new_addr)| Op::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                new_addr,
            }
        ),
        (0u32..8).prop_map(|kind| Op::ClearRefs { kind }),
        address().prop_map(|addr| Op::Read { addr }),
        (address(), any::<u8>()).prop_map(|(addr, value)| Op::Write { addr, value }),
        Just(Op::Fork),
    ]
}

/// Whether an op may fault in every page of its range (the engine, like
/// the kernel, would then touch terabytes).
fn populates(op: &Op, mm: &Mm) -> bool {
    let big = |len: u64| len > 64 * PS;
    match *op {
        Op::Madvise { len, advice, .. } => {
            big(len) && matches!(advice, madv::POPULATE_READ | madv::POPULATE_WRITE)
        }
        Op::Mlock { len, flags, .. } => big(len) && flags & mlock::ONFAULT == 0,
        Op::Mprotect { addr, len, .. } => {
            big(len)
                && mm
                    .vmas()
                    .range(addr, addr.saturating_add(len))
                    .next()
                    .is_some()
        }
        Op::Mremap { new_len, .. } => big(new_len),
        _ => false,
    }
}

proptest! {
    /// Any sequence of calls with any arguments: no panic, the invariants
    /// hold after each, and an EINVAL from mmap, munmap, mprotect, mlock,
    /// munlock or a non-FIXED mremap changed nothing.
    #[test]
    fn arbitrary_calls_never_panic(ops in prop::collection::vec(op(), 1..40)) {
        let mut p = Process::new(MmConfig { overcommit_limit_pages: 1 << 20, ..MmConfig::default() });
        anon_op(&mut p);
        for op in ops {
            if populates(&op, p.mm()) {
                continue;
            }
            let before = p.mm().smaps();
            let out = p.apply(&op);
            if let Err(e) = p.mm().check_invariants() {
                return Err(TestCaseError::fail(format!("{op:?}: {e}")));
            }
            // (A FIXED mremap unmaps its destination before the shrink of
            // the source can fail with EINVAL, as the kernel does.)
            let validated_first = match op {
                Op::Mremap { flags, .. } => flags & mremap::FIXED == 0,
                Op::Mmap { .. } | Op::Munmap { .. } | Op::Mprotect { .. } | Op::Mlock { .. }
                    | Op::Munlock { .. } => true,
                _ => false,
            };
            if validated_first && out == Outcome::Err(Errno::EINVAL) {
                prop_assert_eq!(before, p.mm().smaps(), "{:?} failed with EINVAL but changed the layout", op);
            }
        }
    }
}

fn anon_op(p: &mut Process) {
    let out = p.apply(&Op::Mmap {
        addr: pg(0),
        len: 8 * PS,
        prot: RW,
        flags: map::PRIVATE | map::ANONYMOUS | map::FIXED,
        file: None,
        offset: 0,
    });
    assert_eq!(out, Outcome::Ok(pg(0)));
}
