//! mremap(2): the cases of tools/testing/selftests/mm/mremap_test.c and
//! mremap_dontunmap.c that apply (their names kept), and the order of the
//! argument checks, as measured on 6.18.

mod common;

use common::*;
use mm_core::{
    Errno,
    file::File,
    uapi::{map, mremap::*},
};

#[test]
fn mremap_expand_merge() {
    let mut mm = mm();
    anon(&mut mm, 0, 3, RW);
    mm.munmap(pg(1), PS).unwrap();
    assert_eq!(mm.mremap(pg(0), PS, 2 * PS, 0, 0), Ok(pg(0)));
    assert_eq!(span(&mm, pg(0)), 3);
}

#[test]
fn mremap_expand_merge_offset() {
    let mut mm = mm();
    anon(&mut mm, 0, 3, RW);
    mm.munmap(pg(2), PS).unwrap();
    assert_eq!(mm.mremap(pg(1), PS, 2 * PS, 0, 0), Ok(pg(1)));
    assert_eq!(span(&mm, pg(0)), 3);
}

#[test]
fn mremap_move_within_range() {
    // 20 MiB, faulted; 1 MiB from the second 2 MiB block of the source
    // moves 2 MiB down inside the same VMA, keeping its data.
    let mb = 256; // pages per MiB
    let mut mm = mm();
    anon(&mut mm, 0, 20 * mb, RW);
    for i in 0..20 * mb {
        mm.write(pg(i), 0).unwrap();
    }
    let src = 6 * mb;
    let dest = src - 2 * mb;
    for i in 0..2 * mb {
        mm.write(pg(src + i), (i % 251) as u8).unwrap();
    }
    let to = mm
        .mremap(
            pg(src + mb),
            mb * PS,
            mb * PS,
            MAYMOVE | FIXED,
            pg(dest + mb),
        )
        .unwrap();
    assert_eq!(to, pg(dest + mb));
    for i in 0..mb {
        assert_eq!(mm.read(pg(src + i)), Ok((i % 251) as u8), "page {i}");
        assert_eq!(mm.read(pg(dest + mb + i)), Ok(((mb + i) % 251) as u8));
    }
    // The moved part keeps its old pgoff: it does not merge back.
    let l = layout(&mm, 0, 20 * mb);
    let runs: Vec<usize> = l
        .as_bytes()
        .chunk_by(|a, b| a == b)
        .map(<[u8]>::len)
        .collect();
    assert_eq!(runs, vec![5 * 256, 256, 256, 256, 12 * 256]);
    assert_eq!(&l[7 * 256..7 * 256 + 1], ".");
}

#[test]
fn mremap_shrink_multiple_vmas_inplace() {
    let mut mm = mm();
    anon(&mut mm, 0, 10, RW);
    for i in [1, 3, 5, 7, 9] {
        mm.munmap(pg(i), PS).unwrap();
    }
    assert_eq!(mm.mremap(pg(0), 10 * PS, PS, 0, 0), Ok(pg(0)));
    assert_eq!(layout(&mm, 0, 10), "A.........");
}

#[test]
fn mremap_shrink_multiple_vmas() {
    let mut mm = mm();
    anon(&mut mm, 0, 10, RW);
    for i in [1, 3, 5, 7, 9] {
        mm.munmap(pg(i), PS).unwrap();
    }
    assert_eq!(
        mm.mremap(pg(0), 10 * PS, PS, MAYMOVE | FIXED, pg(20)),
        Ok(pg(20))
    );
    assert_eq!(layout(&mm, 0, 21), ".".repeat(20) + "A");
}

fn move_multiple_vmas(dont_unmap: bool) {
    let fl = MAYMOVE | FIXED | if dont_unmap { DONTUNMAP } else { 0 };
    let mut mm = mm();
    anon(&mut mm, 0, 11, RW);
    for i in [1, 3, 7, 9] {
        mm.munmap(pg(i), PS).unwrap();
    }
    let pattern = |i: u64| b'a' + i as u8;
    for i in [0, 2, 4, 5, 6, 8, 10] {
        mm.write(pg(i), pattern(i)).unwrap();
    }
    let check = |mm: &mut mm_core::Mm, at: u64| {
        for i in [0, 2, 4, 5, 6, 8, 10] {
            assert_eq!(mm.read(pg(at + i)), Ok(pattern(i)), "page {i} at {at}");
        }
    };
    let tgt = 100;
    assert_eq!(mm.mremap(pg(0), 11 * PS, 11 * PS, fl, pg(tgt)), Ok(pg(tgt)));
    check(&mut mm, tgt);
    assert_eq!(layout(&mm, tgt, 11), "A.B.CCC.D.E");
    // Next to itself.
    assert_eq!(
        mm.mremap(pg(tgt), 11 * PS, 11 * PS, fl, pg(tgt + 11)),
        Ok(pg(tgt + 11))
    );
    check(&mut mm, tgt + 11);
    // Back over a PROT_NONE mapping: its pages in the gaps stay.
    anon(&mut mm, tgt, 11, 0);
    assert_eq!(
        mm.mremap(pg(tgt + 11), 11 * PS, 11 * PS, fl, pg(tgt)),
        Ok(pg(tgt))
    );
    check(&mut mm, tgt);
    for i in [1, 3, 7, 9] {
        assert!(mm.vma_at(pg(tgt + i)).is_some(), "PROT_NONE page {i} kept");
    }
    if dont_unmap {
        // The sources stay, emptied.
        assert_eq!(layout(&mm, 0, 11), "A.B.CCC.D.E");
        assert_eq!(mm.read(pg(0)), Ok(0));
    } else {
        assert_eq!(layout(&mm, 0, 11), "...........");
    }
}

#[test]
fn mremap_move_multiple_vmas() {
    move_multiple_vmas(false);
}

#[test]
fn mremap_move_multiple_vmas_dontunmap() {
    move_multiple_vmas(true);
}

fn move_multiple_vmas_split(dont_unmap: bool) {
    let fl = MAYMOVE | FIXED | if dont_unmap { DONTUNMAP } else { 0 };
    let mut mm = mm();
    anon(&mut mm, 0, 10, RW);
    mm.munmap(pg(5), PS).unwrap();
    for i in 0..10 {
        if i != 5 {
            mm.write(pg(i), b'a' + i as u8).unwrap();
        }
    }
    assert_eq!(mm.mremap(pg(2), 7 * PS, 7 * PS, fl, pg(20)), Ok(pg(20)));
    for (t, s) in [(0, 2), (1, 3), (2, 4), (4, 6), (5, 7), (6, 8)] {
        assert_eq!(mm.read(pg(20 + t)), Ok(b'a' + s as u8), "target page {t}");
    }
    assert!(mm.vma_at(pg(23)).is_none(), "the gap is kept");
    if dont_unmap {
        assert_eq!(layout(&mm, 0, 10), "AAAAA.BBBB");
    } else {
        assert_eq!(layout(&mm, 0, 10), "AA.......B");
    }
}

#[test]
fn mremap_move_multiple_vmas_split() {
    move_multiple_vmas_split(false);
}

#[test]
fn mremap_move_multiple_vmas_split_dontunmap() {
    move_multiple_vmas_split(true);
}

/// remap_region's failure cases: an overlapping destination, a
/// misaligned destination.
#[test]
fn remap_region_invalid() {
    let mut mm = mm();
    anon(&mut mm, 0, 4, RW);
    assert_eq!(
        mm.mremap(pg(0), 4 * PS, 4 * PS, MAYMOVE | FIXED, pg(2)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        mm.mremap(pg(0), 4 * PS, 4 * PS, MAYMOVE | FIXED, pg(10) + 1024),
        Err(Errno::EINVAL)
    );
    assert_eq!(layout(&mm, 0, 4), "AAAA");
}

// mremap_dontunmap.c

#[test]
fn simple() {
    let mut mm = mm();
    anon(&mut mm, 0, 5, RW);
    for i in 0..5 {
        mm.write(pg(i), b'a').unwrap();
    }
    let to = mm
        .mremap(pg(0), 5 * PS, 5 * PS, DONTUNMAP | MAYMOVE, 0)
        .unwrap();
    assert_ne!(to, pg(0));
    for i in 0..5 {
        assert_eq!(mm.read(to + i * PS), Ok(b'a'));
        assert_eq!(mm.read(pg(i)), Ok(0), "the source reads as new memory");
    }
}

#[test]
fn simple_shmem() {
    let mut mm = mm();
    let f = File::memfd("dontunmap", 5 * PS);
    mm.mmap(pg(0), 5 * PS, RW, map::SHARED | map::FIXED, Some(&f), 0)
        .unwrap();
    for i in 0..5 {
        mm.write(pg(i), b'a').unwrap();
    }
    let to = mm
        .mremap(pg(0), 5 * PS, 5 * PS, DONTUNMAP | MAYMOVE, 0)
        .unwrap();
    for i in 0..5 {
        assert_eq!(mm.read(to + i * PS), Ok(b'a'));
        assert_eq!(mm.read(pg(i)), Ok(b'a'), "shared memory shows at both");
    }
}

#[test]
fn simple_fixed() {
    let mut mm = mm();
    anon(&mut mm, 0, 5, RW);
    anon(&mut mm, 10, 5, RW);
    for i in 0..5 {
        mm.write(pg(i), b'a').unwrap();
        mm.write(pg(10 + i), b'X').unwrap();
    }
    assert_eq!(
        mm.mremap(pg(0), 5 * PS, 5 * PS, DONTUNMAP | FIXED | MAYMOVE, pg(10)),
        Ok(pg(10))
    );
    for i in 0..5 {
        assert_eq!(mm.read(pg(10 + i)), Ok(b'a'));
        assert_eq!(mm.read(pg(i)), Ok(0));
    }
}

#[test]
fn partial_mapping() {
    let mut mm = mm();
    anon(&mut mm, 0, 10, RW);
    for i in 0..10 {
        mm.write(pg(i), b'a').unwrap();
    }
    let to = mm
        .mremap(pg(5), 5 * PS, 5 * PS, DONTUNMAP | MAYMOVE, 0)
        .unwrap();
    for i in 0..10 {
        assert_eq!(mm.read(pg(i)), Ok(if i < 5 { b'a' } else { 0 }), "page {i}");
    }
    for i in 0..5 {
        assert_eq!(mm.read(to + i * PS), Ok(b'a'));
    }
    // The source VMA was not split.
    assert_eq!(span(&mm, pg(0)), 10);
}

#[test]
fn partial_mapping_overwrite() {
    let mut mm = mm();
    anon(&mut mm, 0, 5, RW);
    anon(&mut mm, 10, 10, RW);
    for i in 0..5 {
        mm.write(pg(i), b'a').unwrap();
    }
    for i in 10..20 {
        mm.write(pg(i), b'X').unwrap();
    }
    assert_eq!(
        mm.mremap(pg(0), 5 * PS, 5 * PS, DONTUNMAP | FIXED | MAYMOVE, pg(10)),
        Ok(pg(10))
    );
    for i in 10..20 {
        assert_eq!(
            mm.read(pg(i)),
            Ok(if i < 15 { b'a' } else { b'X' }),
            "page {i}"
        );
    }
    for i in 0..5 {
        assert_eq!(mm.read(pg(i)), Ok(0));
    }
}

/// DONTUNMAP leaves the whole old VMA mapped but no longer mlocked.
#[test]
fn dontunmap_unlocks_the_old_vma() {
    let mut mm = mm();
    anon(&mut mm, 0, 4, RW);
    mm.mlock(pg(0), 4 * PS).unwrap();
    let to = mm
        .mremap(pg(0), 2 * PS, 2 * PS, DONTUNMAP | MAYMOVE | FIXED, pg(10))
        .unwrap();
    assert_eq!(to, pg(10));
    assert_eq!(span(&mm, pg(0)), 4);
    assert!(!has_vm_flag(&mm, pg(0), "lo"));
    assert!(has_vm_flag(&mm, pg(10), "lo"));
    assert!(has_vm_flag(&mm, pg(0), "ac"), "6.18 keeps VM_ACCOUNT");
}

// Argument checks, in the kernel's order (measured on 6.18).

#[test]
fn checks_before_the_vma_lookup() {
    let mut mm = mm();
    anon(&mut mm, 0, 4, RW);
    let e = |r| err(r);
    assert_eq!(
        e(mm.mremap(pg(0), PS, PS, 8, 0)),
        Errno::EINVAL,
        "unknown flag"
    );
    assert_eq!(
        e(mm.mremap(pg(0) + 1, PS, PS, 0, 0)),
        Errno::EINVAL,
        "unaligned"
    );
    assert_eq!(e(mm.mremap(pg(0), PS, 0, 0, 0)), Errno::EINVAL, "new_len 0");
    assert_eq!(
        e(mm.mremap(pg(0), PS, u64::MAX, 0, 0)),
        Errno::EINVAL,
        "wraps to 0"
    );
    assert_eq!(
        e(mm.mremap(pg(0), PS, 1 << 48, 0, 0)),
        Errno::EINVAL,
        "> TASK_SIZE"
    );
    assert_eq!(
        e(mm.mremap(pg(0), PS, PS, FIXED, pg(10))),
        Errno::EINVAL,
        "FIXED without MAYMOVE"
    );
    assert_eq!(
        e(mm.mremap(pg(0), PS, 2 * PS, DONTUNMAP | MAYMOVE, 0)),
        Errno::EINVAL,
        "DONTUNMAP with a resize"
    );
    assert_eq!(
        e(mm.mremap(pg(0), PS, PS, FIXED | MAYMOVE, pg(10) + 8)),
        Errno::EINVAL,
        "unaligned new_addr"
    );
    // An unmapped source onto an overlapping destination: the overlap is
    // seen first (6.17+).
    assert_eq!(
        e(mm.mremap(pg(50), 2 * PS, 2 * PS, FIXED | MAYMOVE, pg(51))),
        Errno::EINVAL
    );
    assert_eq!(
        e(mm.mremap(pg(50), 2 * PS, 2 * PS, FIXED | MAYMOVE, pg(60))),
        Errno::EFAULT,
        "no VMA at the source"
    );
    assert_eq!(layout(&mm, 0, 4), "AAAA");
}

#[test]
fn checks_against_the_vma() {
    let mut mm = mm();
    anon(&mut mm, 0, 4, RW);
    anon(&mut mm, 4, 2, RO);
    // Growing needs the range to lie inside one VMA.
    assert_eq!(
        err(mm.mremap(pg(2), 4 * PS, 5 * PS, MAYMOVE, 0)),
        Errno::EFAULT
    );
    // Growing in place needs the room after it.
    assert_eq!(err(mm.mremap(pg(0), 4 * PS, 5 * PS, 0, 0)), Errno::ENOMEM);
    // Growing a range that stops short of the VMA's end cannot be done
    // in place.
    assert_eq!(err(mm.mremap(pg(0), PS, 2 * PS, 0, 0)), Errno::ENOMEM);
    // Duplicating a private mapping is refused.
    assert_eq!(err(mm.mremap(pg(0), 0, PS, MAYMOVE, 0)), Errno::EINVAL);
    // An in-place shrink or no-op checks nothing more: it crosses VMAs
    // and holes.
    assert_eq!(mm.mremap(pg(0), 99 * PS, 99 * PS, 0, 0), Ok(pg(0)));
    assert_eq!(layout(&mm, 0, 6), "AAAABB");
    assert_eq!(mm.mremap(pg(0), 10 * PS, 3 * PS, 0, 0), Ok(pg(0)));
    assert_eq!(layout(&mm, 0, 6), "AAA...");
}

#[test]
fn shrink_splits_in_the_middle() {
    let mut mm = mm();
    anon(&mut mm, 0, 10, RW);
    assert_eq!(mm.mremap(pg(2), 4 * PS, 2 * PS, 0, 0), Ok(pg(2)));
    assert_eq!(layout(&mm, 0, 10), "AAAA..BBBB");
}

#[test]
fn grow_by_moving_splits_the_source() {
    let mut mm = mm();
    anon(&mut mm, 0, 4, RW);
    let to = mm.mremap(pg(1), PS, 3 * PS, MAYMOVE, 0).unwrap();
    assert!(to >= pg(64), "moved away");
    assert_eq!(layout(&mm, 0, 4), "A.BB");
}

/// Duplicating a shared mapping (old_len 0) maps the same object again.
#[test]
fn duplicate_shared_mapping() {
    let mut mm = mm();
    let f = File::memfd("dup", 4 * PS);
    mm.mmap(pg(10), 2 * PS, RW, map::SHARED | map::FIXED, Some(&f), 0)
        .unwrap();
    mm.write(pg(11), b'd').unwrap();
    assert_eq!(
        mm.mremap(pg(11), 0, 3 * PS, FIXED | MAYMOVE, pg(30)),
        Ok(pg(30))
    );
    assert_eq!(mm.read(pg(30)), Ok(b'd'));
    assert_eq!(mm.vma_at(pg(30)).unwrap().pgoff, 1);
    assert_eq!(layout(&mm, 10, 2), "AA", "the source stays");
    // The same call with new_addr == addr unmaps the source first and
    // then cannot find it.
    assert_eq!(
        mm.mremap(pg(11), 0, 2 * PS, FIXED | MAYMOVE, pg(11)),
        Err(Errno::EFAULT)
    );
    assert_eq!(layout(&mm, 10, 3), "A..");
}

/// Moving an unfaulted anonymous VMA re-bases its offset so it merges
/// where it lands; a faulted one keeps its offset and does not.
#[test]
fn moved_vma_merges_only_if_unfaulted() {
    let mut mm = mm();
    anon(&mut mm, 0, 2, RW);
    anon(&mut mm, 20, 2, RW);
    assert_eq!(
        mm.mremap(pg(0), 2 * PS, 2 * PS, MAYMOVE | FIXED, pg(22)),
        Ok(pg(22))
    );
    assert_eq!(span(&mm, pg(20)), 4);
    anon(&mut mm, 40, 2, RW);
    anon(&mut mm, 0, 2, RW);
    mm.write(pg(0), 1).unwrap();
    assert_eq!(
        mm.mremap(pg(0), 2 * PS, 2 * PS, MAYMOVE | FIXED, pg(42)),
        Ok(pg(42))
    );
    assert_eq!(layout(&mm, 40, 4), "AABB");
    // Moved back next to where it came from, it merges again.
    anon(&mut mm, 60, 6, RW);
    mm.write(pg(60), 1).unwrap();
    mm.mremap(pg(62), 2 * PS, 2 * PS, MAYMOVE | FIXED, pg(80))
        .unwrap();
    assert_eq!(layout(&mm, 60, 6), "AA..BB");
    mm.mremap(pg(80), 2 * PS, 2 * PS, MAYMOVE | FIXED, pg(62))
        .unwrap();
    assert_eq!(span(&mm, pg(60)), 6);
}
