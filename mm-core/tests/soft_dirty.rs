//! Soft-dirty tracking (seed 001): the cases of
//! tools/testing/selftests/mm/soft-dirty.c with the selftest's names
//! (`test_hugepage` needs THP and is not mirrored), the seed's reproducer
//! with and without the 2014 fix, and clear_refs types 1-5.

mod common;

use common::*;
use mm_core::{
    Errno, Mm, MmConfig,
    file::File,
    pgtable::Pte,
    uapi::{clear_refs, madv, map, mremap, prot},
};

const ITERATIONS: usize = 10_000;

fn clear_softdirty(mm: &mut Mm) {
    mm.clear_refs(clear_refs::SOFT_DIRTY).unwrap();
}

fn young(mm: &Mm, addr: u64) -> bool {
    match mm.page_tables().get(addr / PS) {
        Pte::Present(p) => p.young,
        other => panic!("no present PTE at {addr:#x}: {other:?}"),
    }
}

#[test]
fn test_simple() {
    let mut mm = mm();
    anon(&mut mm, 0, 1, RW);
    clear_softdirty(&mut mm);
    let mut v = 0u8;
    for i in 0..ITERATIONS {
        assert!(
            !soft_dirty(&mm, pg(0)),
            "iteration {i}: dirty before the write"
        );
        clear_softdirty(&mut mm);
        v = v.wrapping_add(1);
        mm.write(pg(0), v).unwrap();
        assert!(
            soft_dirty(&mm, pg(0)),
            "iteration {i}: clean after the write"
        );
        clear_softdirty(&mut mm);
    }
}

#[test]
fn test_vma_reuse() {
    let mut mm = mm();
    anon(&mut mm, 0, 1, RW);
    // The kernel always marks new regions soft-dirty.
    assert!(soft_dirty(&mm, pg(0)));
    clear_softdirty(&mut mm);
    mm.munmap(pg(0), PS).unwrap();
    anon(&mut mm, 0, 1, RW);
    assert!(soft_dirty(&mm, pg(0)), "reused address, new VMA");
}

fn check_mprotect(mm: &mut Mm) {
    mm.write(pg(0), 1).unwrap();
    assert!(soft_dirty(mm, pg(0)), "new written page");
    clear_softdirty(mm);
    assert!(!soft_dirty(mm, pg(0)), "after clear_refs");
    mm.mprotect(pg(0), PS, RO).unwrap();
    assert!(!soft_dirty(mm, pg(0)), "after marking RO");
    mm.mprotect(pg(0), PS, RW).unwrap();
    assert!(!soft_dirty(mm, pg(0)), "after marking RW");
    mm.write(pg(0), 2).unwrap();
    assert!(soft_dirty(mm, pg(0)), "after rewritten");
}

#[test]
fn test_mprotect_anon() {
    let mut mm = mm();
    anon(&mut mm, 0, 1, RW);
    check_mprotect(&mut mm);
}

#[test]
fn test_mprotect_file() {
    let mut mm = mm();
    let f = File::regular("./soft-dirty-test-file", PS, true);
    mm.mmap(pg(0), PS, RW, map::SHARED | map::FIXED, Some(&f), 0)
        .unwrap();
    check_mprotect(&mut mm);
}

#[test]
fn test_merge() {
    let mut mm = mm();
    // Reserve [0,5), keep page 4 as padding.
    anon(&mut mm, 0, 5, prot::NONE);
    mm.munmap(pg(0), 4 * PS).unwrap();
    anon(&mut mm, 1, 1, RW);
    clear_softdirty(&mut mm);
    anon(&mut mm, 3, 1, RW);
    // Moving the soft-dirty VMA next to the clean one merges them, and
    // the merged VMA is soft-dirty as a whole (VM_SOFTDIRTY is sticky).
    let to = mm
        .mremap(pg(3), PS, PS, mremap::FIXED | mremap::MAYMOVE, pg(2))
        .unwrap();
    assert_eq!(to, pg(2));
    assert_eq!(span(&mm, pg(1)), 2);
    assert!(soft_dirty(&mm, pg(1)), "remap merge, 1st page");
    assert!(soft_dirty(&mm, pg(2)), "remap merge, 2nd page");
    mm.munmap(pg(1), 2 * PS).unwrap();

    anon(&mut mm, 1, 1, RW);
    clear_softdirty(&mut mm);
    anon(&mut mm, 2, 1, prot::READ | prot::WRITE | prot::EXEC);
    assert_eq!(layout(&mm, 1, 2), "AB");
    mm.mprotect(pg(1), PS, prot::READ | prot::WRITE | prot::EXEC)
        .unwrap();
    assert_eq!(span(&mm, pg(1)), 2);
    assert!(soft_dirty(&mm, pg(1)), "mprotect merge, 1st page");
    assert!(soft_dirty(&mm, pg(2)), "mprotect merge, 2nd page");
}

/// Seed 001 (Peter Feiner's reproducer): a shared anonymous mapping,
/// clear_refs, a read fault, then a write. Before the fix the read fault
/// installed a writable PTE (vm_page_prot was not updated to ask for
/// write notification), so the write set no soft-dirty bit and was lost.
fn feiner(bug: bool) -> (bool, bool) {
    let mut mm = mm_with(MmConfig {
        softdirty_writenotify_bug: bug,
        ..MmConfig::default()
    });
    mm.mmap(
        pg(0),
        PS,
        RW,
        map::SHARED | map::ANONYMOUS | map::FIXED,
        None,
        0,
    )
    .unwrap();
    clear_softdirty(&mut mm);
    assert_eq!(mm.read(pg(0)), Ok(0));
    let writable_after_read =
        matches!(mm.page_tables().get(pg(0) / PS), Pte::Present(p) if p.write);
    mm.write(pg(0), 1).unwrap();
    (writable_after_read, soft_dirty(&mm, pg(0)))
}

#[test]
fn seed_001_write_after_read_fault_is_soft_dirty() {
    assert_eq!(feiner(false), (false, true));
}

#[test]
fn seed_001_pre_fix_kernel_loses_the_write() {
    assert_eq!(feiner(true), (true, false));
}

/// The same write is seen when the page was zapped (not present) at the
/// time of the clear, and after an mprotect round trip, which keeps
/// write notification.
#[test]
fn seed_001_mprotect_keeps_write_notify() {
    let mut mm = mm();
    mm.mmap(
        pg(0),
        2 * PS,
        RW,
        map::SHARED | map::ANONYMOUS | map::FIXED,
        None,
        0,
    )
    .unwrap();
    mm.write(pg(0), 1).unwrap();
    mm.write(pg(1), 1).unwrap();
    mm.madvise(pg(1), PS, madv::DONTNEED).unwrap();
    clear_softdirty(&mut mm);
    mm.mprotect(pg(0), 2 * PS, RO).unwrap();
    mm.mprotect(pg(0), 2 * PS, RW).unwrap();
    for i in 0..2 {
        assert_eq!(mm.read(pg(i)), Ok(1));
        assert!(!soft_dirty(&mm, pg(i)), "page {i} after the read");
        mm.write(pg(i), 2).unwrap();
        assert!(soft_dirty(&mm, pg(i)), "page {i} after the write");
    }
}

/// Without CONFIG_MEM_SOFT_DIRTY, type 4 is accepted and does nothing.
#[test]
fn clear_refs_soft_dirty_without_the_config() {
    let mut mm = mm_with(MmConfig {
        soft_dirty: false,
        ..MmConfig::default()
    });
    anon(&mut mm, 0, 1, RW);
    mm.write(pg(0), 1).unwrap();
    assert!(!soft_dirty(&mm, pg(0)));
    clear_softdirty(&mut mm);
    assert!(matches!(mm.page_tables().get(pg(0) / PS), Pte::Present(p) if p.write));
}

#[test]
fn clear_refs_young_by_type() {
    let mut mm = mm();
    anon(&mut mm, 0, 1, RW);
    let f = File::memfd("young", PS);
    mm.mmap(pg(1), PS, RW, map::SHARED | map::FIXED, Some(&f), 0)
        .unwrap();
    let touch = |mm: &mut Mm| {
        mm.write(pg(0), 1).unwrap();
        mm.write(pg(1), 1).unwrap();
    };
    touch(&mut mm);
    assert!(young(&mm, pg(0)) && young(&mm, pg(1)));
    mm.clear_refs(clear_refs::ANON).unwrap();
    assert_eq!((young(&mm, pg(0)), young(&mm, pg(1))), (false, true));
    touch(&mut mm);
    mm.clear_refs(clear_refs::MAPPED).unwrap();
    assert_eq!((young(&mm, pg(0)), young(&mm, pg(1))), (true, false));
    touch(&mut mm);
    mm.clear_refs(clear_refs::ALL).unwrap();
    assert_eq!((young(&mm, pg(0)), young(&mm, pg(1))), (false, false));
    // Type 4 leaves the accessed bits alone.
    touch(&mut mm);
    clear_softdirty(&mut mm);
    assert!(young(&mm, pg(0)) && young(&mm, pg(1)));
}

#[test]
fn clear_refs_resets_peak_rss() {
    let mut mm = mm();
    anon(&mut mm, 0, 8, RW);
    for i in 0..8 {
        mm.write(pg(i), 1).unwrap();
    }
    mm.madvise(pg(0), 6 * PS, madv::DONTNEED).unwrap();
    assert_eq!(mm.counters().hiwater_rss, 8);
    assert_eq!(mm.rss(), 2);
    mm.clear_refs(clear_refs::MM_HIWATER_RSS).unwrap();
    assert_eq!(mm.counters().hiwater_rss, 2);
}

#[test]
fn clear_refs_rejects_unknown_types() {
    let mut mm = mm();
    for kind in [0, 6, 99] {
        assert_eq!(mm.clear_refs(kind), Err(Errno::EINVAL), "type {kind}");
    }
}
