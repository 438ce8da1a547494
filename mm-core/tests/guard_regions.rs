//! The cases of tools/testing/selftests/mm/guard-regions.c (fixture
//! `guard_regions`) that apply to the engine, with the selftest's names:
//! the anonymous variant of each, and the shmem variant where the file
//! behaviour differs (`_shmem` suffix). Not mirrored: `process_madvise`
//! (no process_madvise), `uffd`, `pagemap_scan` (no PAGEMAP_SCAN ioctl),
//! `collapse` (no THP), `truncation` and `memfd_write_seal` (no ftruncate
//! or seals), `readonly_file` (file variant only).

mod common;

use common::*;
use mm_core::{
    Errno, Mm,
    file::File,
    proc::pm,
    uapi::{madv, map, mremap, prot},
};

/// The selftest's region: 10 pages.
const N: u64 = 10;

fn install(mm: &mut Mm, first: u64, pages: u64) -> Result<(), Errno> {
    mm.madvise(pg(first), pages * PS, madv::GUARD_INSTALL)
}

fn remove(mm: &mut Mm, first: u64, pages: u64) -> Result<(), Errno> {
    mm.madvise(pg(first), pages * PS, madv::GUARD_REMOVE)
}

fn fill(mm: &mut Mm, first: u64, pages: u64, value: u8) {
    for i in first..first + pages {
        mm.write(pg(i), value).expect("writable");
    }
}

/// A 10-page shared mapping of a 100-page memfd (the `shmem` variant).
fn shmem(mm: &mut Mm) -> mm_core::file::FileRef {
    let f = File::memfd("guard-regions", 100 * PS);
    mm.mmap(pg(0), N * PS, RW, map::SHARED | map::FIXED, Some(&f), 0)
        .expect("shmem mmap");
    f
}

#[test]
fn basic() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 0, 1).unwrap();
    assert!(guarded(&mut mm, pg(0)));
    for i in 1..N {
        assert!(readable(&mut mm, pg(i)) && mm.write(pg(i), b'x').is_ok());
    }
    install(&mut mm, N - 1, 1).unwrap();
    assert!(guarded(&mut mm, pg(N - 1)));
    remove(&mut mm, 0, 1).unwrap();
    remove(&mut mm, N - 1, 1).unwrap();
    assert!(readable(&mut mm, pg(0)) && readable(&mut mm, pg(N - 1)));
    // Page 0 is populated now; installing over it zaps it.
    mm.write(pg(0), b'x').unwrap();
    install(&mut mm, 0, 3).unwrap();
    for i in 0..3 {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
    for i in 3..N {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
    remove(&mut mm, 0, N).unwrap();
    fill(&mut mm, 0, N, b'x');
    // Removing where there are no guards leaves populated pages alone.
    remove(&mut mm, 0, N).unwrap();
    for i in 0..N {
        assert_eq!(mm.read(pg(i)), Ok(b'x'), "page {i}");
    }
}

#[test]
fn multi_vma() {
    let mut mm = mm();
    anon(&mut mm, 0, 10, RW);
    anon(&mut mm, 50, 5, RW);
    anon(&mut mm, 80, 20, RW);
    // Holes: every mapped page is guarded, and the call reports ENOMEM.
    assert_eq!(install(&mut mm, 0, 100), Err(Errno::ENOMEM));
    for i in (0..10).chain(50..55).chain(80..100) {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
    assert_eq!(remove(&mut mm, 0, 100), Err(Errno::ENOMEM));
    for i in (0..10).chain(50..55).chain(80..100) {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
    // Fill the holes with unmergeable (RWX) VMAs: no holes, no error.
    let rwx = prot::READ | prot::WRITE | prot::EXEC;
    anon(&mut mm, 10, 40, rwx);
    anon(&mut mm, 55, 25, rwx);
    assert_eq!(layout(&mm, 0, 100).chars().filter(|c| *c == '.').count(), 0);
    install(&mut mm, 0, 100).unwrap();
    for i in 0..100 {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
    remove(&mut mm, 0, 100).unwrap();
    for i in 0..100 {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
}

#[test]
fn munmap() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 0, 1).unwrap();
    install(&mut mm, N - 1, 1).unwrap();
    mm.munmap(pg(0), PS).unwrap();
    mm.munmap(pg(N - 1), PS).unwrap();
    anon(&mut mm, 0, 1, RW);
    anon(&mut mm, N - 1, 1, RW);
    assert!(readable(&mut mm, pg(0)) && readable(&mut mm, pg(N - 1)));
}

#[test]
fn mprotect() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 5, 2).unwrap();
    assert!(guarded(&mut mm, pg(5)) && guarded(&mut mm, pg(6)));
    mm.mprotect(pg(5), 2 * PS, RO).unwrap();
    assert!(!readable(&mut mm, pg(5)) && !readable(&mut mm, pg(6)));
    // Installing again over existing guards is fine.
    install(&mut mm, 5, 2).unwrap();
    assert!(!readable(&mut mm, pg(5)));
    remove(&mut mm, 0, N).unwrap();
    for i in 0..N {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
}

#[test]
fn split_merge() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 0, N).unwrap();
    for i in [2, 5, 8] {
        mm.munmap(pg(i), PS).unwrap();
    }
    assert_eq!(layout(&mm, 0, N), "AA.BB.CC.D");
    for i in [0, 1, 3, 4, 6, 7, 9] {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
    // Fresh pages refill the holes and merge back (same anon_vma,
    // contiguous pgoff); only they are accessible.
    for i in [2, 5, 8] {
        anon(&mut mm, i, 1, RW);
    }
    assert_eq!(layout(&mm, 0, N), "AAAAAAAAAA");
    for i in 0..N {
        assert_eq!(guarded(&mut mm, pg(i)), ![2, 5, 8].contains(&i), "page {i}");
    }
    install(&mut mm, 0, N).unwrap();
    mm.mprotect(pg(0), 3 * PS, RO).unwrap();
    mm.mprotect(pg(7), 3 * PS, RO).unwrap();
    assert_eq!(layout(&mm, 0, N), "AAABBBBCCC");
    for i in 0..N {
        assert!(!readable(&mut mm, pg(i)), "page {i}");
    }
    mm.mprotect(pg(0), N * PS, RW).unwrap();
    assert_eq!(layout(&mm, 0, N), "AAAAAAAAAA");
    for i in 0..N {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
    mm.mprotect(pg(0), 3 * PS, RO).unwrap();
    mm.mprotect(pg(7), 3 * PS, RO).unwrap();
    remove(&mut mm, 0, N).unwrap();
    for i in 0..N {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
    mm.mprotect(pg(0), N * PS, RW).unwrap();
    assert_eq!(layout(&mm, 0, N), "AAAAAAAAAA");
    for i in 0..N {
        assert!(mm.write(pg(i), b'z').is_ok() && mm.read(pg(i)) == Ok(b'z'));
    }
}

#[test]
fn dontneed() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    fill(&mut mm, 0, N, b'y');
    for i in (0..N).step_by(2) {
        install(&mut mm, i, 1).unwrap();
    }
    mm.madvise(pg(0), N * PS, madv::DONTNEED).unwrap();
    for i in 0..N {
        if i % 2 == 0 {
            assert!(guarded(&mut mm, pg(i)), "page {i}");
        } else {
            // Anonymous memory was dropped: the zero page.
            assert_eq!(mm.read(pg(i)), Ok(0), "page {i}");
        }
    }
}

#[test]
fn dontneed_shmem() {
    let mut mm = mm();
    shmem(&mut mm);
    fill(&mut mm, 0, N, b'y');
    for i in (0..N).step_by(2) {
        install(&mut mm, i, 1).unwrap();
    }
    mm.madvise(pg(0), N * PS, madv::DONTNEED).unwrap();
    for i in 0..N {
        if i % 2 == 0 {
            assert!(guarded(&mut mm, pg(i)), "page {i}");
        } else {
            // The page cache keeps the data.
            assert_eq!(mm.read(pg(i)), Ok(b'y'), "page {i}");
        }
    }
}

#[test]
fn mlock() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    fill(&mut mm, 0, N, b'x');
    mm.mlock(pg(0), N * PS).unwrap();
    assert_eq!(install(&mut mm, 0, N), Err(Errno::EINVAL));
    mm.munlock(pg(0), N * PS).unwrap();
    install(&mut mm, 0, 5).unwrap();
    for i in 0..N {
        if i < 5 {
            assert!(guarded(&mut mm, pg(i)), "page {i}");
        } else {
            assert_eq!(mm.read(pg(i)), Ok(b'x'), "page {i}");
        }
    }
    mm.mlock(pg(5), 5 * PS).unwrap();
    // Removal is allowed over locked memory.
    remove(&mut mm, 0, N).unwrap();
    for i in 0..N {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
}

#[test]
fn mremap_move() {
    let mut mm = mm();
    anon(&mut mm, 0, 5, RW);
    install(&mut mm, 0, 1).unwrap();
    install(&mut mm, 4, 1).unwrap();
    anon(&mut mm, 20, 5, prot::NONE);
    let to = mm
        .mremap(
            pg(0),
            5 * PS,
            5 * PS,
            mremap::MAYMOVE | mremap::FIXED,
            pg(20),
        )
        .unwrap();
    assert_eq!(to, pg(20));
    assert!(guarded(&mut mm, pg(20)) && guarded(&mut mm, pg(24)));
    for i in 21..24 {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
    assert_eq!(layout(&mm, 0, 25), ".".repeat(20) + "AAAAA");
}

#[test]
fn mremap_expand() {
    let mut mm = mm();
    anon(&mut mm, 0, 10, RW);
    mm.munmap(pg(5), 5 * PS).unwrap();
    install(&mut mm, 0, 1).unwrap();
    install(&mut mm, 4, 1).unwrap();
    assert_eq!(mm.mremap(pg(0), 5 * PS, 10 * PS, 0, 0), Ok(pg(0)));
    assert!(guarded(&mut mm, pg(0)) && guarded(&mut mm, pg(4)));
    anon(&mut mm, 30, 20, prot::NONE);
    let to = mm
        .mremap(
            pg(0),
            10 * PS,
            20 * PS,
            mremap::MAYMOVE | mremap::FIXED,
            pg(30),
        )
        .unwrap();
    assert_eq!(to, pg(30));
    assert!(guarded(&mut mm, pg(30)) && guarded(&mut mm, pg(34)));
    for i in (31..34).chain(35..50) {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
}

#[test]
fn mremap_shrink() {
    let mut mm = mm();
    anon(&mut mm, 0, 5, RW);
    install(&mut mm, 0, 1).unwrap();
    install(&mut mm, 4, 1).unwrap();
    assert_eq!(
        mm.mremap(pg(0), 5 * PS, 3 * PS, mremap::MAYMOVE, 0),
        Ok(pg(0))
    );
    assert!(guarded(&mut mm, pg(0)));
    assert!(readable(&mut mm, pg(1)) && readable(&mut mm, pg(2)));
    // The marker in the dropped tail is gone for good.
    assert_eq!(
        mm.mremap(pg(0), 3 * PS, 5 * PS, mremap::MAYMOVE, 0),
        Ok(pg(0))
    );
    assert!(guarded(&mut mm, pg(0)));
    for i in 1..5 {
        assert!(readable(&mut mm, pg(i)), "page {i}");
    }
}

#[test]
fn fork() {
    let mut parent = mm();
    anon(&mut parent, 0, N, RW);
    install(&mut parent, 0, 5).unwrap();
    let mut child = parent.fork();
    for i in 0..N {
        assert_eq!(guarded(&mut child, pg(i)), i < 5, "child page {i}");
    }
    remove(&mut child, 0, N).unwrap();
    for i in 0..N {
        assert!(readable(&mut child, pg(i)), "child page {i}");
    }
    for i in 0..5 {
        assert!(guarded(&mut parent, pg(i)), "parent page {i}");
    }
}

#[test]
fn fork_cow() {
    let mut parent = mm();
    anon(&mut parent, 0, N, RW);
    for i in 0..N {
        parent.write(pg(i), b'a' + i as u8).unwrap();
    }
    let mut child = parent.fork();
    for i in 0..N {
        assert_eq!(child.read(pg(i)), Ok(b'a' + i as u8), "child page {i}");
    }
    // Installing zaps the child's copies; removing does not bring them
    // back: the child sees fresh zero pages.
    install(&mut child, 0, N).unwrap();
    remove(&mut child, 0, N).unwrap();
    for i in 0..N {
        assert_eq!(child.read(pg(i)), Ok(0), "child page {i}");
        assert_eq!(parent.read(pg(i)), Ok(b'a' + i as u8), "parent page {i}");
    }
}

#[test]
fn fork_wipeonfork() {
    let mut parent = mm();
    anon(&mut parent, 0, N, RW);
    parent.madvise(pg(0), N * PS, madv::WIPEONFORK).unwrap();
    install(&mut parent, 0, 5).unwrap();
    let mut child = parent.fork();
    for i in 0..N {
        assert!(readable(&mut child, pg(i)), "child page {i}");
    }
    for i in 0..5 {
        assert!(guarded(&mut parent, pg(i)), "parent page {i}");
    }
}

#[test]
fn lazyfree() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 0, N).unwrap();
    mm.madvise(pg(0), N * PS, madv::FREE).unwrap();
    for i in 0..N {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
}

#[test]
fn populate() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 0, N).unwrap();
    assert_eq!(
        mm.madvise(pg(0), N * PS, madv::POPULATE_READ),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        mm.madvise(pg(0), N * PS, madv::POPULATE_WRITE),
        Err(Errno::EFAULT)
    );
}

#[test]
fn cold_pageout() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 0, N).unwrap();
    mm.madvise(pg(0), N * PS, madv::COLD).unwrap();
    for i in 0..N {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
    mm.madvise(pg(0), N * PS, madv::PAGEOUT).unwrap();
    for i in 0..N {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
}

#[test]
fn anon_zeropage() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RO);
    for i in (0..N).step_by(2) {
        install(&mut mm, i, 1).unwrap();
    }
    for i in 0..N {
        if i % 2 == 0 {
            assert!(mm.read(pg(i)).is_err(), "page {i}");
        } else {
            assert_eq!(mm.read(pg(i)), Ok(0), "page {i}");
        }
    }
    remove(&mut mm, 0, N).unwrap();
    for i in 0..N {
        assert_eq!(mm.read(pg(i)), Ok(0), "page {i}");
    }
}

#[test]
fn pagemap() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    for i in 0..N {
        assert!(!pagemap_has(&mm, pg(i), pm::GUARD_REGION), "page {i}");
    }
    for i in (0..N).step_by(2) {
        install(&mut mm, i, 1).unwrap();
    }
    for i in 0..N {
        assert_eq!(
            pagemap_has(&mm, pg(i), pm::GUARD_REGION),
            i % 2 == 0,
            "page {i}"
        );
    }
}

#[test]
fn smaps() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    assert!(!has_vm_flag(&mm, pg(0), "gu"));
    install(&mut mm, 0, 1).unwrap();
    assert!(has_vm_flag(&mm, pg(0), "gu"));
    remove(&mut mm, 0, 1).unwrap();
    assert!(has_vm_flag(&mm, pg(0), "gu"), "the flag is sticky");
    install(&mut mm, 0, N).unwrap();
    mm.munmap(pg(4), PS).unwrap();
    assert!(has_vm_flag(&mm, pg(0), "gu") && has_vm_flag(&mm, pg(5), "gu"));
    anon(&mut mm, 4, 1, RW);
    assert_eq!(span(&mm, pg(0)), N);
    assert!(has_vm_flag(&mm, pg(0), "gu"));
}

#[test]
fn hole_punch_shmem() {
    let mut mm = mm();
    shmem(&mut mm);
    fill(&mut mm, 0, N, b'p');
    install(&mut mm, 3, 4).unwrap();
    mm.madvise(pg(3), 4 * PS, madv::REMOVE).unwrap();
    for i in 3..7 {
        assert!(guarded(&mut mm, pg(i)), "page {i}");
    }
    remove(&mut mm, 3, 4).unwrap();
    for i in 0..N {
        let want = if (3..7).contains(&i) { 0 } else { b'p' };
        assert_eq!(mm.read(pg(i)), Ok(want), "page {i}");
    }
}

#[test]
fn map_private_shmem() {
    let mut mm = mm();
    let f = shmem(&mut mm);
    fill(&mut mm, 0, N, b's');
    mm.mmap(pg(20), N * PS, RW, map::PRIVATE | map::FIXED, Some(&f), 0)
        .unwrap();
    for i in 0..N {
        install(&mut mm, if i % 2 == 0 { i } else { 20 + i }, 1).unwrap();
    }
    for i in 0..N {
        // Guards in one mapping do not show in the other.
        assert_eq!(guarded(&mut mm, pg(i)), i % 2 == 0, "shared page {i}");
        assert_eq!(guarded(&mut mm, pg(20 + i)), i % 2 == 1, "private page {i}");
    }
    remove(&mut mm, 0, N).unwrap();
    remove(&mut mm, 20, N).unwrap();
    // Private COW copies are discarded by an install and revert to the
    // file's data after the removal.
    for i in 0..N {
        mm.write(pg(20 + i), b'c').unwrap();
    }
    install(&mut mm, 20, N).unwrap();
    remove(&mut mm, 20, N).unwrap();
    for i in 0..N {
        assert_eq!(mm.read(pg(20 + i)), Ok(b's'), "private page {i}");
    }
}

#[test]
fn fault_around_shmem() {
    let mut mm = mm();
    shmem(&mut mm);
    fill(&mut mm, 0, N, b'f');
    // Start from empty page tables, with the pages still cached.
    mm.madvise(pg(0), N * PS, madv::DONTNEED).unwrap();
    for i in (0..N).step_by(2) {
        install(&mut mm, i, 1).unwrap();
    }
    for i in (1..N).step_by(2) {
        assert_eq!(mm.read(pg(i)), Ok(b'f'), "page {i}");
    }
    // Fault-around mapped the odd pages but left the markers alone.
    for i in 0..N {
        assert_eq!(guarded(&mut mm, pg(i)), i % 2 == 0, "page {i}");
    }
}

/// Remove never populates: an unpopulated range stays unpopulated.
#[test]
fn remove_never_populates() {
    let mut mm = mm();
    anon(&mut mm, 0, N, RW);
    install(&mut mm, 0, N).unwrap();
    remove(&mut mm, 0, N).unwrap();
    for i in 0..N {
        assert!(!present(&mm, pg(i)), "page {i}");
    }
}
