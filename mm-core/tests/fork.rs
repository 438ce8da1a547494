//! fork(): what the child inherits, copy-on-write on both sides, and how
//! the child's VMAs merge (their anon_vmas are chained to the parent's).
//! Layout expectations were measured on the 6.18 host.

mod common;

use common::*;
use mm_core::{
    file::File,
    proc::pm,
    uapi::{madv, map},
};

#[test]
fn child_sees_parent_memory_and_writes_are_private() {
    let mut parent = mm();
    anon(&mut parent, 0, 4, RW);
    for i in 0..4 {
        parent.write(pg(i), 10 + i as u8).unwrap();
    }
    let mut child = parent.fork();
    for i in 0..4 {
        assert_eq!(child.read(pg(i)), Ok(10 + i as u8));
    }
    // Shared after fork: not exclusive on either side.
    assert!(!pagemap_has(&parent, pg(0), pm::MMAP_EXCLUSIVE));
    assert!(!pagemap_has(&child, pg(0), pm::MMAP_EXCLUSIVE));
    child.write(pg(0), 99).unwrap();
    parent.write(pg(1), 77).unwrap();
    assert_eq!((parent.read(pg(0)), child.read(pg(0))), (Ok(10), Ok(99)));
    assert_eq!((parent.read(pg(1)), child.read(pg(1))), (Ok(77), Ok(11)));
    // The writer got its own page.
    assert!(pagemap_has(&child, pg(0), pm::MMAP_EXCLUSIVE));
    assert!(pagemap_has(&parent, pg(1), pm::MMAP_EXCLUSIVE));
}

#[test]
fn last_sharer_reuses_the_page() {
    let mut parent = mm();
    anon(&mut parent, 0, 1, RW);
    parent.write(pg(0), 1).unwrap();
    let pfn = parent.pagemap(pg(0)) & pm::PFRAME_MASK;
    let child = parent.fork();
    drop(child);
    // The child is gone (its mapping too): the write reuses the page.
    parent.write(pg(0), 2).unwrap();
    assert_eq!(parent.pagemap(pg(0)) & pm::PFRAME_MASK, pfn);
}

#[test]
fn shared_mappings_stay_shared() {
    let mut parent = mm();
    parent
        .mmap(
            pg(0),
            PS,
            RW,
            map::SHARED | map::ANONYMOUS | map::FIXED,
            None,
            0,
        )
        .unwrap();
    let f = File::memfd("fork", PS);
    parent
        .mmap(pg(1), PS, RW, map::SHARED | map::FIXED, Some(&f), 0)
        .unwrap();
    let mut child = parent.fork();
    child.write(pg(0), 5).unwrap();
    child.write(pg(1), 6).unwrap();
    assert_eq!(parent.read(pg(0)), Ok(5));
    assert_eq!(parent.read(pg(1)), Ok(6));
}

#[test]
fn dontfork_wipeonfork_and_mlock() {
    let mut parent = mm();
    anon(&mut parent, 0, 6, RW);
    for i in 0..6 {
        parent.write(pg(i), 1).unwrap();
    }
    parent.madvise(pg(0), 2 * PS, madv::DONTFORK).unwrap();
    parent.madvise(pg(2), 2 * PS, madv::WIPEONFORK).unwrap();
    parent.mlock(pg(4), 2 * PS).unwrap();
    let mut child = parent.fork();
    assert_eq!(layout(&child, 0, 6), "..AABB");
    assert_eq!(child.read(pg(2)), Ok(0), "wiped");
    assert!(has_vm_flag(&child, pg(2), "wf"));
    assert_eq!(child.read(pg(4)), Ok(1));
    assert!(!has_vm_flag(&child, pg(4), "lo"), "mlock is not inherited");
    assert!(has_vm_flag(&parent, pg(4), "lo"));
}

#[test]
fn unfaulted_vmas_are_not_copied() {
    let mut parent = mm();
    anon(&mut parent, 0, 2, RO);
    assert_eq!(parent.read(pg(0)), Ok(0));
    assert!(present(&parent, pg(0)), "zero page mapped");
    let child = parent.fork();
    // No anon_vma: the child refaults instead.
    assert!(!present(&child, pg(0)));
    // After a write the VMA has an anon_vma: zero-page PTEs are copied.
    anon(&mut parent, 10, 2, RW);
    assert_eq!(parent.read(pg(10)), Ok(0));
    parent.write(pg(11), 1).unwrap();
    let child = parent.fork();
    assert!(present(&child, pg(10)) && present(&child, pg(11)));
}

// Merging in the child (experiments e, e2, e3 of the host study).

#[test]
fn child_split_of_a_faulted_vma_remerges() {
    let mut parent = mm();
    anon(&mut parent, 0, 6, RW);
    parent.write(pg(0), 1).unwrap();
    let mut child = parent.fork();
    child.mprotect(pg(2), 2 * PS, RO).unwrap();
    assert_eq!(layout(&child, 0, 6), "AABBCC");
    child.mprotect(pg(2), 2 * PS, RW).unwrap();
    assert_eq!(layout(&child, 0, 6), "AAAAAA");
}

#[test]
fn child_new_mapping_next_to_faulted_vma_does_not_merge() {
    let mut parent = mm();
    anon(&mut parent, 20, 2, RW);
    parent.write(pg(20), 1).unwrap();
    anon(&mut parent, 10, 6, RW);
    let mut child = parent.fork();
    anon(&mut child, 22, 2, RW);
    assert_eq!(layout(&child, 20, 4), "AABB", "Case 2 blocked in the child");
    anon(&mut child, 8, 2, RW);
    assert_eq!(span(&child, pg(8)), 8, "unfaulted VMAs merge as usual");
    anon(&mut parent, 22, 2, RW);
    assert_eq!(span(&parent, pg(20)), 4, "the parent is unaffected");
    // MAP_FIXED over the middle of a fork-child VMA leaves three.
    let mut child2 = parent.fork();
    anon(&mut child2, 21, 2, RW);
    assert_eq!(layout(&child2, 20, 4), "ABBC");
}

#[test]
fn child_faulted_vma_does_not_merge_into_unfaulted_neighbour() {
    // MAP_NORESERVE keeps VM_ACCOUNT out of the picture.
    let noreserve = |mm: &mut mm_core::Mm, first: u64, prot_bits: u64| {
        mm.mmap(
            pg(first),
            2 * PS,
            prot_bits,
            map::PRIVATE | map::ANONYMOUS | map::FIXED | map::NORESERVE,
            None,
            0,
        )
        .unwrap();
    };
    let mut parent = mm();
    noreserve(&mut parent, 0, RW);
    parent.write(pg(0), 1).unwrap();
    let mut child = parent.fork();
    noreserve(&mut child, 2, RO);
    child.mprotect(pg(0), 2 * PS, RO).unwrap();
    assert_eq!(layout(&child, 0, 4), "AABB", "Case 1 blocked");
    noreserve(&mut parent, 2, RO);
    parent.mprotect(pg(0), 2 * PS, RO).unwrap();
    assert_eq!(layout(&parent, 0, 4), "AAAA");
}

#[test]
fn pieces_split_before_fork_never_remerge_in_the_child() {
    let mut parent = mm();
    anon(&mut parent, 0, 6, RW);
    parent.write(pg(0), 1).unwrap();
    parent.mprotect(pg(2), 2 * PS, RO).unwrap();
    let mut child = parent.fork();
    child.mprotect(pg(2), 2 * PS, RW).unwrap();
    assert_eq!(layout(&child, 0, 6), "AABBCC");
    parent.mprotect(pg(2), 2 * PS, RW).unwrap();
    assert_eq!(layout(&parent, 0, 6), "AAAAAA");
}

#[test]
fn child_pieces_unfaulted_in_the_parent_merge_with_each_other() {
    let mut parent = mm();
    anon(&mut parent, 10, 6, RW);
    parent.mprotect(pg(12), 2 * PS, RO).unwrap();
    parent.write(pg(10), 1).unwrap();
    let mut child = parent.fork();
    child.mprotect(pg(12), 2 * PS, RW).unwrap();
    assert_eq!(layout(&child, 10, 6), "AABBBB");
}
