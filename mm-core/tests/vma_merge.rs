//! VMA merging: the applicable cases of tools/testing/selftests/mm/merge.c
//! (fixtures `merge` and `merge_with_fork`, names kept; the uprobe, KSM and
//! mseal tests need features the engine does not have), and of the
//! in-kernel tools/testing/vma/vma.c merge tests expressed as system calls
//! (`vma_` prefix; the `vm_ops->close`, VM_SPECIAL and allocation-failure
//! cases cannot be expressed that way). Expectations are the 6.18.8+
//! behaviour, which the 6.18.44 host has.

mod common;

use common::*;
use mm_core::{
    Mm,
    uapi::{map, mremap as mr, prot},
};

const RWX: u64 = prot::READ | prot::WRITE | prot::EXEC;

/// The `merge` fixture: a 30-page PROT_NONE carveout at page 0.
fn carveout() -> Mm {
    let mut mm = mm();
    anon(&mut mm, 0, 30, prot::NONE);
    mm
}

fn noreserve(mm: &mut Mm, first: u64, pages: u64, prot_bits: u64) {
    mm.mmap(
        pg(first),
        pages * PS,
        prot_bits,
        map::PRIVATE | map::ANONYMOUS | map::FIXED | map::NORESERVE,
        None,
        0,
    )
    .unwrap();
}

fn mprotect(mm: &mut Mm, first: u64, pages: u64, prot_bits: u64) {
    mm.mprotect(pg(first), pages * PS, prot_bits).unwrap();
}

/// A same-size MAYMOVE|FIXED move of `pages` pages.
fn mv(mm: &mut Mm, from: u64, pages: u64, to: u64) {
    assert_eq!(
        mm.mremap(
            pg(from),
            pages * PS,
            pages * PS,
            mr::MAYMOVE | mr::FIXED,
            pg(to)
        ),
        Ok(pg(to))
    );
}

/// The VMA containing page `p`, as page numbers.
fn vma(mm: &Mm, p: u64) -> (u64, u64) {
    let v = mm.vma_at(pg(p)).expect("a VMA");
    ((v.start - BASE) / PS, (v.end - BASE) / PS)
}

fn write(mm: &mut Mm, p: u64) {
    mm.write(pg(p), b'x').unwrap();
}

// merge.c, fixture `merge`

#[test]
fn mprotect_unfaulted_left() {
    let mut mm = carveout();
    noreserve(&mut mm, 1, 10, RW);
    mprotect(&mut mm, 1, 5, RO);
    write(&mut mm, 6);
    mprotect(&mut mm, 6, 5, RO);
    assert_eq!(vma(&mm, 1), (1, 11));
}

#[test]
fn mprotect_unfaulted_right() {
    let mut mm = carveout();
    noreserve(&mut mm, 1, 10, RW);
    mprotect(&mut mm, 6, 5, RO);
    write(&mut mm, 1);
    mprotect(&mut mm, 1, 5, RO);
    assert_eq!(vma(&mm, 1), (1, 11));
}

#[test]
fn mprotect_unfaulted_both() {
    let mut mm = carveout();
    noreserve(&mut mm, 2, 9, RW);
    mprotect(&mut mm, 2, 3, RO);
    mprotect(&mut mm, 8, 3, RO);
    write(&mut mm, 5);
    mprotect(&mut mm, 5, 3, RO);
    assert_eq!(vma(&mm, 2), (2, 11));
}

#[test]
fn mprotect_faulted_left_unfaulted_right() {
    let mut mm = carveout();
    noreserve(&mut mm, 2, 9, RW);
    mprotect(&mut mm, 8, 3, RO);
    write(&mut mm, 2);
    mprotect(&mut mm, 2, 3, RO);
    mprotect(&mut mm, 5, 3, RO);
    assert_eq!(vma(&mm, 2), (2, 11));
}

#[test]
fn mprotect_unfaulted_left_faulted_right() {
    let mut mm = carveout();
    noreserve(&mut mm, 2, 9, RW);
    mprotect(&mut mm, 2, 3, RO);
    write(&mut mm, 5);
    mprotect(&mut mm, 8, 3, RO);
    mprotect(&mut mm, 5, 3, RO);
    assert_eq!(vma(&mm, 2), (2, 11));
}

#[test]
fn forked_target_vma() {
    let mut mm = carveout();
    anon(&mut mm, 1, 5, RW);
    write(&mut mm, 1);
    let mut child = mm.fork();
    // Un-COWing every page does not make the chain singular again.
    for p in 1..6 {
        write(&mut child, p);
    }
    anon(&mut child, 6, 5, RW);
    assert_eq!(vma(&child, 1), (1, 6));
}

#[test]
fn forked_source_vma() {
    let mut mm = carveout();
    noreserve(&mut mm, 1, 5, RW);
    write(&mut mm, 1);
    let mut child = mm.fork();
    for p in 1..6 {
        write(&mut child, p);
    }
    noreserve(&mut child, 6, 5, RWX);
    assert_eq!(vma(&child, 6), (6, 11));
    mprotect(&mut child, 1, 5, RWX);
    assert_eq!(vma(&child, 6), (6, 11));
}

#[test]
fn mremap_unfaulted_to_faulted() {
    let mut mm = carveout();
    anon(&mut mm, 1, 5, RW);
    anon(&mut mm, 7, 5, RW);
    mv(&mut mm, 7, 5, 1007);
    write(&mut mm, 1);
    mv(&mut mm, 1007, 5, 6);
    assert_eq!(vma(&mm, 1), (1, 11));
}

#[test]
fn mremap_unfaulted_behind_faulted() {
    let mut mm = carveout();
    anon(&mut mm, 6, 5, RW);
    anon(&mut mm, 14, 5, RW);
    mv(&mut mm, 14, 5, 1014);
    write(&mut mm, 6);
    mv(&mut mm, 1014, 5, 1);
    assert_eq!(vma(&mm, 1), (1, 11));
}

#[test]
fn mremap_unfaulted_between_faulted() {
    let mut mm = carveout();
    anon(&mut mm, 1, 5, RW);
    anon(&mut mm, 7, 5, RW);
    anon(&mut mm, 14, 5, RW);
    mv(&mut mm, 14, 5, 2014);
    mv(&mut mm, 7, 5, 1007);
    write(&mut mm, 1);
    write(&mut mm, 2014);
    mv(&mut mm, 2014, 5, 11);
    mv(&mut mm, 1007, 5, 6);
    assert_eq!(vma(&mm, 1), (1, 11));
    assert_eq!(vma(&mm, 11), (11, 16));
}

#[test]
fn mremap_unfaulted_between_faulted_unfaulted() {
    let mut mm = carveout();
    anon(&mut mm, 1, 5, RW);
    anon(&mut mm, 7, 5, RW);
    anon(&mut mm, 14, 5, RW);
    mv(&mut mm, 14, 5, 2014);
    mv(&mut mm, 7, 5, 1007);
    write(&mut mm, 1);
    mv(&mut mm, 2014, 5, 11);
    mv(&mut mm, 1007, 5, 6);
    assert_eq!(vma(&mm, 1), (1, 16));
}

#[test]
fn mremap_unfaulted_between_correctly_placed_faulted() {
    let mut mm = carveout();
    anon(&mut mm, 1, 15, RW);
    write(&mut mm, 1);
    mm.munmap(pg(6), 5 * PS).unwrap();
    anon(&mut mm, 20, 5, RW);
    mv(&mut mm, 20, 5, 6);
    assert_eq!(vma(&mm, 1), (1, 16));
}

#[test]
fn mremap_correct_placed_faulted() {
    let mut mm = carveout();
    anon(&mut mm, 1, 15, RW);
    write(&mut mm, 1);
    mv(&mut mm, 11, 5, 2011);
    mv(&mut mm, 6, 5, 1006);
    mv(&mut mm, 1006, 5, 6);
    assert_eq!(vma(&mm, 1), (1, 11));
    mv(&mut mm, 1, 5, 1001);
    mv(&mut mm, 1001, 5, 1);
    assert_eq!(vma(&mm, 1), (1, 11));
    mv(&mut mm, 1, 5, 1001);
    mv(&mut mm, 2011, 5, 11);
    assert_eq!(vma(&mm, 6), (6, 16));
    mv(&mut mm, 1001, 5, 1);
    assert_eq!(vma(&mm, 1), (1, 16));
    mv(&mut mm, 6, 5, 1006);
    mv(&mut mm, 1006, 5, 6);
    assert_eq!(vma(&mm, 1), (1, 16));
    mv(&mut mm, 11, 5, 1011);
    mv(&mut mm, 1011, 5, 11);
    assert_eq!(vma(&mm, 1), (1, 16));
}

// merge.c, fixture `merge_with_fork`: each test runs unforked and forked
// (everything after the first write happens in the child).

fn dontunmap(mm: &mut Mm, from: u64, pages: u64, to: u64) {
    assert_eq!(
        mm.mremap(
            pg(from),
            pages * PS,
            pages * PS,
            mr::MAYMOVE | mr::FIXED | mr::DONTUNMAP,
            pg(to)
        ),
        Ok(pg(to))
    );
}

fn maybe_fork(mm: Mm, forked: bool) -> (Mm, Option<Mm>) {
    let mut mm = mm;
    if forked {
        let child = mm.fork();
        (child, Some(mm))
    } else {
        (mm, None)
    }
}

fn faulted_to_unfaulted_prev(forked: bool) -> (u64, u64) {
    let mut mm = carveout();
    anon(&mut mm, 4, 3, RW);
    write(&mut mm, 4);
    let (mut mm, _parent) = maybe_fork(mm, forked);
    mv(&mut mm, 4, 3, 20);
    anon(&mut mm, 1, 3, RW);
    dontunmap(&mut mm, 20, 3, 4);
    vma(&mm, 1)
}

#[test]
fn mremap_faulted_to_unfaulted_prev() {
    assert_eq!(faulted_to_unfaulted_prev(false), (1, 7));
    assert_eq!(faulted_to_unfaulted_prev(true), (1, 4));
}

fn faulted_to_unfaulted_next(forked: bool) -> (u64, u64) {
    let mut mm = carveout();
    anon(&mut mm, 1, 3, RW);
    write(&mut mm, 1);
    let (mut mm, _parent) = maybe_fork(mm, forked);
    mv(&mut mm, 1, 3, 20);
    anon(&mut mm, 4, 3, RW);
    dontunmap(&mut mm, 20, 3, 1);
    vma(&mm, 1)
}

#[test]
fn mremap_faulted_to_unfaulted_next() {
    assert_eq!(faulted_to_unfaulted_next(false), (1, 7));
    assert_eq!(faulted_to_unfaulted_next(true), (1, 4));
}

fn faulted_to_unfaulted_prev_unfaulted_next(forked: bool) -> ((u64, u64), (u64, u64)) {
    let mut mm = carveout();
    anon(&mut mm, 4, 3, RW);
    write(&mut mm, 4);
    let (mut mm, _parent) = maybe_fork(mm, forked);
    mv(&mut mm, 4, 3, 20);
    anon(&mut mm, 1, 3, RW);
    anon(&mut mm, 7, 3, RW);
    dontunmap(&mut mm, 20, 3, 4);
    (vma(&mm, 1), vma(&mm, 4))
}

#[test]
fn mremap_faulted_to_unfaulted_prev_unfaulted_next() {
    assert_eq!(faulted_to_unfaulted_prev_unfaulted_next(false).0, (1, 10));
    assert_eq!(
        faulted_to_unfaulted_prev_unfaulted_next(true),
        ((1, 4), (4, 7))
    );
}

fn faulted_to_unfaulted_prev_faulted_next(forked: bool) -> ((u64, u64), (u64, u64)) {
    let mut mm = carveout();
    anon(&mut mm, 4, 6, RW);
    write(&mut mm, 4);
    let (mut mm, _parent) = maybe_fork(mm, forked);
    mv(&mut mm, 4, 3, 20);
    anon(&mut mm, 1, 3, RW);
    dontunmap(&mut mm, 20, 3, 4);
    (vma(&mm, 1), vma(&mm, 4))
}

#[test]
fn mremap_faulted_to_unfaulted_prev_faulted_next() {
    assert_eq!(faulted_to_unfaulted_prev_faulted_next(false).0, (1, 10));
    assert_eq!(faulted_to_unfaulted_prev_faulted_next(true).1, (4, 10));
    assert_eq!(faulted_to_unfaulted_prev_faulted_next(true).0, (1, 4));
}

// tools/testing/vma/vma.c, as system calls. The in-kernel tests have no
// VM_ACCOUNT; where an mprotect would leave it set on one side only (a
// faulted private writable VMA made read-only keeps it), the mappings are
// MAP_NORESERVE, as merge.c does.

#[test]
fn vma_simple_merge() {
    let mut mm = mm();
    anon(&mut mm, 0, 1, RW);
    anon(&mut mm, 2, 1, RW);
    anon(&mut mm, 1, 1, RW);
    assert_eq!(vma(&mm, 0), (0, 3));
    assert_eq!(mm.vma_at(pg(0)).unwrap().pgoff, pg(0) / PS);
}

#[test]
fn vma_simple_modify() {
    let mut mm = mm();
    anon(&mut mm, 0, 3, RW);
    mprotect(&mut mm, 1, 1, RO);
    assert_eq!(layout(&mm, 0, 3), "ABC");
    for p in 0..3 {
        assert_eq!(mm.vma_at(pg(p)).unwrap().pgoff, pg(p) / PS);
    }
}

#[test]
fn vma_simple_expand() {
    let mut mm = mm();
    anon(&mut mm, 0, 1, RW);
    assert_eq!(mm.mremap(pg(0), PS, 3 * PS, 0, 0), Ok(pg(0)));
    assert_eq!(vma(&mm, 0), (0, 3));
}

#[test]
fn vma_simple_shrink() {
    let mut mm = mm();
    anon(&mut mm, 0, 3, RW);
    assert_eq!(mm.mremap(pg(0), 3 * PS, PS, 0, 0), Ok(pg(0)));
    assert_eq!(layout(&mm, 0, 3), "A..");
}

#[test]
fn vma_merge_new() {
    let mut mm = mm();
    anon(&mut mm, 0, 2, RW);
    anon(&mut mm, 3, 1, RW);
    write(&mut mm, 3);
    let x = mm.vma_at(pg(3)).unwrap().anon_vma.clone().unwrap();
    anon(&mut mm, 0xb, 1, RW);
    anon(&mut mm, 7, 2, RW);
    assert_eq!(mm.map_count(), 4);
    anon(&mut mm, 2, 1, RW);
    assert_eq!((vma(&mm, 0), mm.map_count()), ((0, 4), 3));
    anon(&mut mm, 4, 1, RW);
    assert_eq!((vma(&mm, 0), mm.map_count()), ((0, 5), 3));
    anon(&mut mm, 6, 1, RW);
    assert_eq!((vma(&mm, 6), mm.map_count()), ((6, 9), 3));
    anon(&mut mm, 5, 1, RW);
    assert_eq!((vma(&mm, 0), mm.map_count()), ((0, 9), 2));
    anon(&mut mm, 0xa, 1, RW);
    assert_eq!((vma(&mm, 0xa), mm.map_count()), ((0xa, 0xc), 2));
    anon(&mut mm, 9, 1, RW);
    assert_eq!((vma(&mm, 0), mm.map_count()), ((0, 0xc), 1));
    let merged = mm.vma_at(pg(0)).unwrap().anon_vma.clone().unwrap();
    assert_eq!(merged.id(), x.id(), "the faulted VMA's anon_vma survives");
}

#[test]
fn vma_merge_existing() {
    // (a) merge right, partial: N takes V's anon_vma.
    let mut mm = mm();
    noreserve(&mut mm, 2, 7, RW);
    mprotect(&mut mm, 6, 3, RO);
    write(&mut mm, 2);
    mprotect(&mut mm, 3, 3, RO);
    assert_eq!((vma(&mm, 2), vma(&mm, 3)), ((2, 3), (3, 9)));
    let v = mm.vma_at(pg(2)).unwrap().anon_vma.clone().unwrap();
    let n = mm.vma_at(pg(3)).unwrap().anon_vma.clone().unwrap();
    assert_eq!(v.id(), n.id());
    assert_eq!(mm.vma_at(pg(3)).unwrap().pgoff, pg(3) / PS);
    // (b) merge right, full span.
    let mut mm = mm_core::Mm::default();
    noreserve(&mut mm, 2, 7, RW);
    mprotect(&mut mm, 6, 3, RO);
    write(&mut mm, 2);
    mprotect(&mut mm, 2, 4, RO);
    assert_eq!(vma(&mm, 2), (2, 9));
    // (c) merge left, partial, and (d) full span.
    for (len, want) in [(3, [(0, 6), (6, 7)]), (4, [(0, 7), (0, 7)])] {
        let mut mm = mm_core::Mm::default();
        noreserve(&mut mm, 0, 7, RW);
        mprotect(&mut mm, 0, 3, RO);
        write(&mut mm, 3);
        mprotect(&mut mm, 3, len, RO);
        assert_eq!([vma(&mm, 0), vma(&mm, 6)], want, "left merge of {len}");
    }
    // (e) merge both.
    let mut mm = mm_core::Mm::default();
    noreserve(&mut mm, 0, 9, RW);
    mprotect(&mut mm, 0, 3, RO);
    mprotect(&mut mm, 7, 2, RO);
    write(&mut mm, 3);
    mprotect(&mut mm, 3, 4, RO);
    assert_eq!(vma(&mm, 0), (0, 9));
    // (f) ranges that do not touch V's edges split it in three.
    for (first, len) in [(4, 1), (5, 1), (6, 1), (4, 3), (4, 2)] {
        let mut mm = mm_core::Mm::default();
        noreserve(&mut mm, 0, 10, RW);
        mprotect(&mut mm, 0, 3, RO);
        mprotect(&mut mm, 8, 2, RO);
        mprotect(&mut mm, first, len, RO);
        assert_eq!(mm.map_count(), 5, "range {first}+{len}");
    }
}

#[test]
fn vma_anon_vma_non_mergeable() {
    // (a) modify: V merges with P only (P and N have different
    // anon_vmas).
    let mut mm = mm();
    anon(&mut mm, 0, 3, RW);
    anon(&mut mm, 3, 4, RO);
    anon(&mut mm, 7, 2, RW);
    write(&mut mm, 0);
    write(&mut mm, 7);
    mprotect(&mut mm, 3, 4, RW);
    assert_eq!((vma(&mm, 0), vma(&mm, 7)), ((0, 7), (7, 9)));
    // (b) new VMA.
    let mut mm = mm_core::Mm::default();
    anon(&mut mm, 0, 3, RW);
    write(&mut mm, 0);
    anon(&mut mm, 7, 2, RW);
    write(&mut mm, 7);
    anon(&mut mm, 3, 4, RW);
    assert_eq!((vma(&mm, 0), vma(&mm, 7)), ((0, 7), (7, 9)));
}

#[test]
fn vma_dup_anon_vma() {
    let anon_id = |mm: &Mm, p: u64| mm.vma_at(pg(p)).unwrap().anon_vma.as_ref().map(|a| a.id());
    // expand: P takes N's anon_vma.
    let mut mm = mm();
    noreserve(&mut mm, 0, 3, RW);
    noreserve(&mut mm, 4, 1, RW);
    write(&mut mm, 4);
    let n = anon_id(&mm, 4);
    noreserve(&mut mm, 3, 1, RW);
    assert_eq!((vma(&mm, 0), anon_id(&mm, 0)), ((0, 5), n));
    // next has anon.
    let mut mm = mm_core::Mm::default();
    noreserve(&mut mm, 0, 3, RW);
    noreserve(&mut mm, 3, 2, RO);
    noreserve(&mut mm, 5, 3, RW);
    write(&mut mm, 5);
    let n = anon_id(&mm, 5);
    mprotect(&mut mm, 3, 2, RW);
    assert_eq!((vma(&mm, 0), anon_id(&mm, 0)), ((0, 8), n));
    // vma has anon (both neighbours).
    let mut mm = mm_core::Mm::default();
    noreserve(&mut mm, 3, 2, RW);
    write(&mut mm, 3);
    mprotect(&mut mm, 3, 2, RO);
    let v = anon_id(&mm, 3);
    noreserve(&mut mm, 0, 3, RW);
    noreserve(&mut mm, 5, 3, RW);
    mprotect(&mut mm, 3, 2, RW);
    assert_eq!((vma(&mm, 0), anon_id(&mm, 0)), ((0, 8), v));
    // vma has anon, merged partially into prev.
    let mut mm = mm_core::Mm::default();
    noreserve(&mut mm, 0, 3, RO);
    noreserve(&mut mm, 3, 5, RW);
    write(&mut mm, 3);
    let v = anon_id(&mm, 3);
    mprotect(&mut mm, 3, 2, RO);
    assert_eq!((vma(&mm, 0), vma(&mm, 5)), ((0, 5), (5, 8)));
    assert_eq!(anon_id(&mm, 0), v);
    // vma has anon, merged partially into next.
    let mut mm = mm_core::Mm::default();
    noreserve(&mut mm, 0, 5, RW);
    write(&mut mm, 0);
    let v = anon_id(&mm, 0);
    noreserve(&mut mm, 5, 3, RO);
    mprotect(&mut mm, 3, 2, RO);
    assert_eq!((vma(&mm, 0), vma(&mm, 3)), ((0, 3), (3, 8)));
    assert_eq!(anon_id(&mm, 3), v);
}

#[test]
fn vma_merge_extend() {
    let mut mm = mm();
    anon(&mut mm, 0, 1, RW);
    anon(&mut mm, 3, 1, RW);
    assert_eq!(mm.mremap(pg(0), PS, 3 * PS, 0, 0), Ok(pg(0)));
    assert_eq!((vma(&mm, 0), mm.map_count()), ((0, 4), 1));
}

#[test]
fn vma_copy_vma() {
    // (a) moved backwards: re-based, no merge.
    let mut mm = mm();
    anon(&mut mm, 3, 2, RW);
    mv(&mut mm, 3, 2, 0);
    assert_eq!(vma(&mm, 0), (0, 2));
    assert_eq!(mm.vma_at(pg(0)).unwrap().pgoff, pg(0) / PS);
    assert_eq!(mm.map_count(), 1);
    // (b) moved next to another VMA: merged into it.
    let mut mm = mm_core::Mm::default();
    anon(&mut mm, 0, 2, RW);
    anon(&mut mm, 6, 2, RW);
    mv(&mut mm, 0, 2, 4);
    assert_eq!((vma(&mm, 4), mm.map_count()), ((4, 8), 1));
}

#[test]
fn vma_expand_only_mode() {
    let mut mm = mm();
    anon(&mut mm, 0, 2, RW);
    anon(&mut mm, 3, 2, RW);
    anon(&mut mm, 5, 4, RW);
    assert_eq!((vma(&mm, 0), vma(&mm, 3)), ((0, 2), (3, 9)));
}

#[test]
fn vma_mmap_region_basic() {
    let mut mm = mm();
    for p in [0x300, 0x250, 0x303, 0x24d] {
        anon(&mut mm, p, 3, RW);
    }
    assert_eq!(mm.map_count(), 2);
    assert_eq!(vma(&mm, 0x300), (0x300, 0x306));
    assert_eq!(vma(&mm, 0x24d), (0x24d, 0x253));
}
