//! brk(2): the results measured on the 6.18 host (b0 is the initial
//! break), and the `[heap]` label in /proc/PID/maps.

mod common;

use common::*;
use mm_core::{Mm, uapi::map, uapi::prot};

fn b0(mm: &Mm) -> u64 {
    mm.config().start_brk
}

fn heap_lines(mm: &Mm) -> Vec<String> {
    mm.maps()
        .lines()
        .filter(|l| l.ends_with("[heap]"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn queries_return_the_current_break() {
    let mut mm = mm();
    let b0 = b0(&mm);
    for q in [0, 1, b0 - PS] {
        assert_eq!(mm.brk(q), b0, "brk({q:#x})");
    }
    assert!(heap_lines(&mm).is_empty());
}

#[test]
fn grow_and_shrink() {
    let mut mm = mm();
    let b0 = b0(&mm);
    assert_eq!(mm.brk(b0 + 1), b0 + 1);
    assert_eq!(
        heap_lines(&mm),
        vec![format!(
            "{b0:x}-{:x} rw-p 00000000 00:00 0                          [heap]",
            b0 + PS
        )]
    );
    assert_eq!(mm.brk(b0 + 3 * PS + 5), b0 + 3 * PS + 5);
    assert_eq!(span(&mm, b0), 4);
    assert_eq!(mm.brk(b0 + PS + 7), b0 + PS + 7);
    assert_eq!(span(&mm, b0), 2);
    assert_eq!(mm.brk(b0), b0);
    assert!(mm.vma_at(b0).is_none());
    assert!(heap_lines(&mm).is_empty());
}

#[test]
fn absurd_requests_fail_with_the_old_break() {
    let mut mm = mm();
    let b0 = b0(&mm);
    for q in [u64::MAX, mm.config().task_size, b0 + (1 << 47)] {
        assert_eq!(mm.brk(q), b0, "brk({q:#x})");
    }
    assert_eq!(mm.map_count(), 0);
}

#[test]
fn keeps_a_page_free_below_the_next_mapping() {
    let mut mm = mm();
    let b0 = b0(&mm);
    mm.mmap(
        b0 + 8 * PS,
        PS,
        prot::READ,
        map::PRIVATE | map::ANONYMOUS | map::FIXED,
        None,
        0,
    )
    .unwrap();
    assert_eq!(mm.brk(b0 + 8 * PS), b0);
    assert_eq!(mm.brk(b0 + 7 * PS + 1), b0);
    assert_eq!(mm.brk(b0 + 7 * PS), b0 + 7 * PS);
}

#[test]
fn keeps_the_stack_guard_gap_free() {
    let mut mm = mm();
    let b0 = b0(&mm);
    mm.mmap(
        b0 + 0x200 * PS,
        PS,
        RW,
        map::PRIVATE | map::ANONYMOUS | map::FIXED | map::GROWSDOWN,
        None,
        0,
    )
    .unwrap();
    assert_eq!(mm.brk(b0 + 0x101 * PS), b0);
    assert_eq!(mm.brk(b0 + 0xff * PS), b0 + 0xff * PS);
}

#[test]
fn heap_grows_in_place_or_beside_an_incompatible_heap() {
    let mut mm = mm();
    let b0 = b0(&mm);
    mm.brk(b0 + 2 * PS);
    mm.mprotect(b0, 2 * PS, RO).unwrap();
    // Not compatible any more: a second VMA.
    mm.brk(b0 + 4 * PS);
    assert_eq!(span(&mm, b0), 2);
    assert_eq!(span(&mm, b0 + 2 * PS), 2);
    assert_eq!(heap_lines(&mm).len(), 2);
    mm.mprotect(b0, 2 * PS, RW).unwrap();
    assert_eq!(span(&mm, b0), 4);
}

#[test]
fn child_heap_is_not_expanded() {
    let mut parent = mm();
    let b0 = b0(&parent);
    parent.brk(b0 + 2 * PS);
    parent.write(b0, 1).unwrap();
    let mut child = parent.fork();
    child.brk(b0 + 4 * PS);
    assert_eq!(span(&child, b0), 2, "a fork child's heap gets a new VMA");
    assert_eq!(span(&child, b0 + 2 * PS), 2);
    parent.brk(b0 + 4 * PS);
    assert_eq!(span(&parent, b0), 4);
}
