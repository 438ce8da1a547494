//! Merging and splitting VMAs (mm/vma.c: is_mergeable_vma,
//! is_mergeable_anon_vma, can_vma_merge_left/right, vma_merge_new_range,
//! vma_merge_existing_range, vma_modify_flags, split_vma; mm/rmap.c:
//! find_mergeable_anon_vma), as in 6.18 with the sticky-flag backport.
//!
//! Two adjacent VMAs merge when all their flags match except the ignored
//! ones (VM_SOFTDIRTY and the sticky VM_MAYBE_GUARD), they map the same
//! open file (or none), their page offsets are contiguous (anonymous VMAs
//! too: a fresh anonymous VMA's pgoff is its address in pages), and their
//! anon_vmas are compatible: both absent, the same, or one absent while the
//! other's owner is not a fork child.

use std::sync::Arc;

use crate::{
    addr::PAGE_SHIFT,
    errno::{Errno, KResult},
    file::FileRef,
    mm::Mm,
    vm_flags::VmFlags,
    vma::{AnonVma, AnonVmaRef, Vma, VmaName},
};

/// A proposed range and its attributes (`struct vma_merge_struct`).
#[derive(Clone, Debug)]
pub(crate) struct Proposal {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub flags: VmFlags,
    pub file: Option<FileRef>,
    pub anon_vma: Option<AnonVmaRef>,
    pub name: Option<VmaName>,
    /// vmg.middle is a fork child (modifications).
    pub middle_fork_child: bool,
    /// vmg.copied_from is a fork child (mremap).
    pub copied_from_fork_child: bool,
}

impl Proposal {
    /// A new mapping: no anon_vma, no name.
    pub fn new(start: u64, end: u64, pgoff: u64, flags: VmFlags, file: Option<FileRef>) -> Self {
        Self {
            start,
            end,
            pgoff,
            flags,
            file,
            anon_vma: None,
            name: None,
            middle_fork_child: false,
            copied_from_fork_child: false,
        }
    }

    fn pages(&self) -> u64 {
        (self.end - self.start) >> PAGE_SHIFT
    }
}

pub(crate) fn same_file(a: &Option<FileRef>, b: &Option<FileRef>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

pub(crate) fn same_anon(a: &Option<AnonVmaRef>, b: &Option<AnonVmaRef>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

fn pages(v: &Vma) -> u64 {
    (v.end - v.start) >> PAGE_SHIFT
}

impl Mm {
    /// is_mergeable_vma(): flags (but the ignored ones), file and name.
    fn is_mergeable_vma(&self, cand: &Vma, p: &Proposal) -> bool {
        (cand.flags.0 ^ p.flags.0) & !self.ignore_merge().0 == 0
            && same_file(&cand.file, &p.file)
            && cand.name == p.name
    }

    /// is_mergeable_anon_vma() (the three cases of 6.16+).
    fn is_mergeable_anon_vma(cand: &Vma, p: &Proposal) -> bool {
        match (&cand.anon_vma, &p.anon_vma) {
            (None, Some(_)) => !p.middle_fork_child && !p.copied_from_fork_child,
            (Some(_), None) => !cand.fork_child,
            (a, b) => same_anon(a, b),
        }
    }

    /// can_vma_merge_left(): the VMA ending at p.start, if it can absorb p.
    fn merge_left_candidate(&self, p: &Proposal) -> Option<u64> {
        let prev = self.vmas.prev_of(p.start).filter(|v| v.end == p.start)?;
        (self.is_mergeable_vma(prev, p)
            && Self::is_mergeable_anon_vma(prev, p)
            && prev.pgoff + pages(prev) == p.pgoff)
            .then_some(prev.start)
    }

    /// can_vma_merge_right(): the VMA starting at p.end, if it can absorb p
    /// (and, when merging both ways, if prev and next agree).
    fn merge_right_candidate(&self, p: &Proposal, left: Option<u64>) -> Option<u64> {
        let next = self.vmas.get(p.end)?;
        let ok = self.is_mergeable_vma(next, p)
            && Self::is_mergeable_anon_vma(next, p)
            && next.pgoff == p.pgoff + p.pages();
        if !ok {
            return None;
        }
        if let Some(l) = left {
            let prev = self.vmas.get(l).expect("left candidate exists");
            if prev.anon_vma.is_some()
                && next.anon_vma.is_some()
                && !same_anon(&prev.anon_vma, &next.anon_vma)
            {
                return None;
            }
        }
        Some(next.start)
    }

    /// Adopt `from`'s anon_vma into the VMA at `target` if it has none
    /// (dup_anon_vma).
    fn adopt_anon(&mut self, target: u64, from: Option<(AnonVmaRef, bool)>) {
        let mut t = self.vmas.get_mut(target).expect("target exists");
        if t.anon_vma.is_none() {
            if let Some((a, fork_child)) = from {
                t.anon_vma = Some(a);
                t.fork_child = fork_child;
            }
        }
    }

    /// vma_merge_new_range(): try to place the proposal by expanding a
    /// neighbour (mmap, brk, mremap). Returns the start of the VMA now
    /// covering the range, or None when a new VMA is needed. `just_expand`
    /// (brk) only extends the previous VMA.
    pub(crate) fn merge_new_range(&mut self, p: &Proposal, just_expand: bool) -> Option<u64> {
        if p.flags.intersects(VmFlags::SPECIAL) {
            return None;
        }
        let left = self.merge_left_candidate(p);
        let right = if just_expand {
            None
        } else {
            self.merge_right_candidate(p, left)
        };
        let sticky = self.sticky();
        let src_anon = p.anon_vma.clone().map(|a| (a, p.copied_from_fork_child));
        match (left, right) {
            (Some(l), Some(r)) => {
                let next = self.vmas.remove(r).expect("right candidate");
                let mut prev = self.vmas.get_mut(l).expect("left candidate");
                prev.end = next.end;
                prev.flags = prev.flags | ((next.flags | p.flags) & sticky);
                drop(prev);
                let next_anon = next.anon_vma.clone().map(|a| (a, next.fork_child));
                self.adopt_anon(l, next_anon);
                self.adopt_anon(l, src_anon);
                Some(l)
            }
            (Some(l), None) => {
                let mut prev = self.vmas.get_mut(l).expect("left candidate");
                prev.end = p.end;
                prev.flags = prev.flags | (p.flags & sticky);
                drop(prev);
                self.adopt_anon(l, src_anon);
                Some(l)
            }
            (None, Some(r)) => {
                let mut next = self.vmas.remove(r).expect("right candidate");
                next.start = p.start;
                next.pgoff = p.pgoff;
                next.flags = next.flags | (p.flags & sticky);
                self.vmas.insert(next);
                self.adopt_anon(p.start, src_anon);
                Some(p.start)
            }
            (None, None) => None,
        }
    }

    /// Split the VMA containing `addr` at `addr`, as split_vma(): fails with
    /// ENOMEM when the map count is at the limit.
    pub(crate) fn split_checked(&mut self, addr: u64) -> KResult<()> {
        if self.vmas.len() >= self.config.max_map_count {
            return Err(Errno::ENOMEM);
        }
        self.vmas.split(addr);
        Ok(())
    }

    /// vma_modify_flags(): give `[start, end)` (inside the VMA containing
    /// `start`) the flags `new_flags`, merging with a neighbour when the
    /// range touches the VMA's edge and the result is compatible, splitting
    /// otherwise. Returns the start of the VMA that now covers the range
    /// (which may extend beyond it after a merge).
    pub(crate) fn modify_flags(
        &mut self,
        start: u64,
        end: u64,
        new_flags: VmFlags,
    ) -> KResult<u64> {
        let middle = self.vmas.lookup(start).expect("caller checked").clone();
        debug_assert!(end <= middle.end);
        let p = Proposal {
            start,
            end,
            pgoff: middle.pgoff + ((start - middle.start) >> PAGE_SHIFT),
            flags: new_flags,
            file: middle.file.clone(),
            anon_vma: middle.anon_vma.clone(),
            name: middle.name.clone(),
            middle_fork_child: middle.fork_child,
            copied_from_fork_child: false,
        };
        let left_side = start == middle.start;
        let right_side = end == middle.end;
        let sticky = self.sticky();
        if !new_flags.intersects(VmFlags::SPECIAL) && (left_side || right_side) {
            let left = if left_side {
                self.merge_left_candidate(&p)
            } else {
                None
            };
            let right = if right_side {
                self.merge_right_candidate(&p, left)
            } else {
                None
            };
            let middle_anon = middle.anon_vma.clone().map(|a| (a, middle.fork_child));
            let remove_middle = left_side && right_side;
            match (left, right) {
                (Some(l), Some(r)) => {
                    self.vmas.remove(middle.start);
                    let next = self.vmas.remove(r).expect("right candidate");
                    let mut prev = self.vmas.get_mut(l).expect("left candidate");
                    prev.end = next.end;
                    prev.flags = new_flags | ((prev.flags | next.flags | middle.flags) & sticky);
                    drop(prev);
                    let next_anon = next.anon_vma.clone().map(|a| (a, next.fork_child));
                    self.adopt_anon(l, next_anon);
                    self.adopt_anon(l, middle_anon);
                    return Ok(l);
                }
                (Some(l), None) => {
                    let mut mid = self.vmas.remove(middle.start).expect("middle");
                    let mut prev = self.vmas.get_mut(l).expect("left candidate");
                    prev.end = end;
                    prev.flags = new_flags | ((prev.flags | middle.flags) & sticky);
                    drop(prev);
                    if !remove_middle {
                        mid.pgoff += (end - mid.start) >> PAGE_SHIFT;
                        mid.start = end;
                        self.vmas.insert(mid);
                    }
                    self.adopt_anon(l, middle_anon);
                    return Ok(l);
                }
                (None, Some(r)) => {
                    let mut next = self.vmas.remove(r).expect("right candidate");
                    if remove_middle {
                        self.vmas.remove(middle.start);
                    } else {
                        self.vmas.get_mut(middle.start).expect("middle").end = start;
                    }
                    next.pgoff -= (next.start - start) >> PAGE_SHIFT;
                    next.start = start;
                    next.flags = new_flags | ((next.flags | middle.flags) & sticky);
                    self.vmas.insert(next);
                    self.adopt_anon(start, middle_anon);
                    return Ok(start);
                }
                (None, None) => {}
            }
        }
        if middle.start < start {
            self.split_checked(start)?;
        }
        if middle.end > end {
            self.split_checked(end)?;
        }
        let mut v = self.vmas.get_mut(start).expect("split to start");
        v.flags = new_flags | (v.flags & sticky);
        Ok(start)
    }

    /// anon_vma_prepare(): give the VMA at `vma_start` an anon_vma, reusing
    /// a compatible neighbour's (next first, then prev) when that one is not
    /// a fork child (find_mergeable_anon_vma).
    pub(crate) fn anon_vma_prepare(&mut self, vma_start: u64) {
        let v = self.vmas.get(vma_start).expect("VMA exists");
        if v.anon_vma.is_some() {
            return;
        }
        let compatible = |a: &Vma, b: &Vma| {
            a.end == b.start
                && same_file(&a.file, &b.file)
                && (a.flags.0 ^ b.flags.0) & !(VmFlags::ACCESS.0 | self.ignore_merge().0) == 0
                && b.pgoff == a.pgoff + pages(a)
        };
        let reusable = |old: &Vma| old.anon_vma.clone().filter(|_| !old.fork_child);
        let from_next = self
            .vmas
            .get(v.end)
            .filter(|n| compatible(v, n))
            .and_then(reusable);
        let from_prev = || {
            self.vmas
                .prev_of(v.start)
                .filter(|p| compatible(p, v))
                .and_then(reusable)
        };
        let anon = from_next.or_else(from_prev).unwrap_or_else(AnonVma::new);
        let mut v = self.vmas.get_mut(vma_start).expect("VMA exists");
        v.anon_vma = Some(anon);
        v.fork_child = false;
    }
}
