//! madvise(2) (mm/madvise.c: do_madvise, madvise_walk_vmas,
//! madvise_vma_behavior, madvise_update_vma, madvise_dontneed_free,
//! madvise_populate, madvise_guard_install/remove; 6.18 with the
//! VM_MAYBE_GUARD backport).
//!
//! Holes in the range never stop the walk: every mapped part gets the
//! advice and the call then fails with ENOMEM. An error on one VMA stops
//! the walk at once (earlier VMAs stay changed) and wins over ENOMEM. The
//! populate advices are different: they stop at the first hole or bad VMA.

use crate::{
    addr::{PAGE_SIZE, is_page_aligned, page_align},
    errno::{Errno, KResult},
    fault::{EXEC_ONLY_PKEY, FaultResult},
    mm::Mm,
    pgtable::{Marker, Pte},
    uapi::madv,
    vm_flags::VmFlags,
};

/// VM_DROPPABLE (MAP_DROPPABLE, 64-bit).
const VM_DROPPABLE: VmFlags = VmFlags(1 << 40);

/// Whether the kernel knows this advice (madvise_behavior_valid; x86_64
/// with KSM and THP, without CONFIG_MEMORY_FAILURE).
const fn valid_advice(a: i32) -> bool {
    matches!(a, 0..=4 | 8..=25 | madv::GUARD_INSTALL | madv::GUARD_REMOVE)
}

impl Mm {
    /// madvise(addr, len, advice).
    pub fn madvise(&mut self, start: u64, len_in: u64, advice: i32) -> KResult<()> {
        if !valid_advice(advice) {
            return Err(Errno::EINVAL);
        }
        if !is_page_aligned(start) {
            return Err(Errno::EINVAL);
        }
        let len = match page_align(len_in) {
            Some(l) => l,
            None => return Err(Errno::EINVAL),
        };
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if len_in == 0 {
            return Ok(());
        }
        match advice {
            madv::POPULATE_READ => self.madvise_populate(start, end, false),
            madv::POPULATE_WRITE => self.madvise_populate(start, end, true),
            _ => self.madvise_walk(start, end, advice),
        }
    }

    /// madvise_walk_vmas().
    fn madvise_walk(&mut self, start: u64, end: u64, advice: i32) -> KResult<()> {
        let mut unmapped = false;
        let mut at = start;
        loop {
            let Some(v) = self.vmas.find(at) else {
                return Err(Errno::ENOMEM);
            };
            if at < v.start {
                unmapped = true;
                at = v.start;
                if at >= end {
                    break;
                }
            }
            let sub_end = v.end.min(end);
            let vma_end = self.madvise_vma(at, sub_end, advice)?;
            let sub_end = sub_end.max(vma_end);
            if sub_end >= end {
                break;
            }
            at = sub_end;
        }
        if unmapped { Err(Errno::ENOMEM) } else { Ok(()) }
    }

    /// madvise_vma_behavior() for `[start, end)` inside one VMA; returns the
    /// end of the VMA now covering the range.
    fn madvise_vma(&mut self, start: u64, end: u64, advice: i32) -> KResult<u64> {
        let v = self.vmas.lookup(start).expect("walk found it").clone();
        let f = v.flags;
        let new = match advice {
            madv::NORMAL => f.without(VmFlags::SEQ_READ | VmFlags::RAND_READ),
            madv::SEQUENTIAL => f.without(VmFlags::RAND_READ) | VmFlags::SEQ_READ,
            madv::RANDOM => f.without(VmFlags::SEQ_READ) | VmFlags::RAND_READ,
            madv::DONTFORK => f | VmFlags::DONTCOPY,
            madv::DOFORK => {
                if f.contains(VmFlags::IO) {
                    return Err(Errno::EINVAL);
                }
                f.without(VmFlags::DONTCOPY)
            }
            madv::WIPEONFORK => {
                if v.file.is_some() || f.contains(VmFlags::SHARED) {
                    return Err(Errno::EINVAL);
                }
                f | VmFlags::WIPEONFORK
            }
            madv::KEEPONFORK => {
                if f.contains(VM_DROPPABLE) {
                    return Err(Errno::EINVAL);
                }
                f.without(VmFlags::WIPEONFORK)
            }
            madv::DONTDUMP => f | VmFlags::DONTDUMP,
            madv::DODUMP => {
                if (!f.contains(VmFlags::HUGETLB) && f.intersects(VmFlags::SPECIAL))
                    || f.contains(VM_DROPPABLE)
                {
                    return Err(Errno::EINVAL);
                }
                f.without(VmFlags::DONTDUMP)
            }
            madv::HUGEPAGE => f.without(VmFlags::NOHUGEPAGE) | VmFlags::HUGEPAGE,
            madv::NOHUGEPAGE => f.without(VmFlags::HUGEPAGE) | VmFlags::NOHUGEPAGE,
            madv::MERGEABLE => {
                if f.intersects(VmFlags::SPECIAL | VmFlags::HUGETLB) {
                    f
                } else {
                    f | VmFlags::MERGEABLE
                }
            }
            madv::UNMERGEABLE => f.without(VmFlags::MERGEABLE),
            madv::DONTNEED | madv::DONTNEED_LOCKED | madv::FREE => {
                let locked_ok = advice == madv::DONTNEED_LOCKED;
                if f.contains(VmFlags::PFNMAP)
                    || (f.contains(VmFlags::LOCKED) && !locked_ok)
                    || f.contains(VmFlags::HUGETLB)
                {
                    return Err(Errno::EINVAL);
                }
                if advice == madv::FREE {
                    if !v.is_anonymous() {
                        return Err(Errno::EINVAL);
                    }
                    self.lazyfree(start, end);
                } else {
                    self.zap_range(start, end, v.is_shmem(), false);
                }
                return Ok(v.end);
            }
            madv::WILLNEED => return Ok(v.end),
            madv::REMOVE => {
                if f.contains(VmFlags::LOCKED) || v.file.is_none() {
                    return Err(Errno::EINVAL);
                }
                if !f.contains(VmFlags::SHARED | VmFlags::MAYWRITE) {
                    return Err(Errno::EACCES);
                }
                self.zap_range(start, end, v.is_shmem(), false);
                let file = v.file.clone().expect("checked");
                let (first, last) = (v.page_index(start), v.page_index(end - PAGE_SIZE));
                for index in first..=last {
                    file.punch(index);
                }
                self.unmap_mapping_range(&file, first, last);
                return Ok(v.end);
            }
            madv::COLD | madv::PAGEOUT => {
                if f.intersects(VmFlags::LOCKED | VmFlags::PFNMAP | VmFlags::HUGETLB) {
                    return Err(Errno::EINVAL);
                }
                return Ok(v.end);
            }
            madv::COLLAPSE => return Err(Errno::EINVAL),
            madv::GUARD_INSTALL => {
                self.guard_install(start, end)?;
                return Ok(self.vmas.lookup(start).expect("unchanged").end);
            }
            madv::GUARD_REMOVE => {
                if f.intersects(VmFlags::SPECIAL | VmFlags::HUGETLB) {
                    return Err(Errno::EINVAL);
                }
                for vpn in self.pt.occupied(start / PAGE_SIZE, end / PAGE_SIZE) {
                    if self.pt.get(vpn).is_guard() {
                        self.pt.take(vpn, false);
                    }
                }
                return Ok(v.end);
            }
            _ => return Err(Errno::EINVAL),
        };
        // madvise_update_vma(): unchanged flags never split or merge; a
        // failed split is reported as EAGAIN.
        if new == f {
            return Ok(v.end);
        }
        let target = self
            .modify_flags(start, end, new)
            .map_err(|e| if e == Errno::ENOMEM { Errno::EAGAIN } else { e })?;
        Ok(self.vmas.get(target).expect("covers the range").end)
    }

    /// unmap_mapping_range(mapping, first, last, even_cows = 0): unmap the
    /// page-cache pages of `file` with indices `first..=last` from every
    /// VMA of this address space that maps them; private copy-on-write
    /// copies and guard markers stay. (Other address spaces sharing the
    /// file, after fork, are not visited: the engine keeps no global
    /// reverse map.)
    pub(crate) fn unmap_mapping_range(
        &mut self,
        file: &crate::file::FileRef,
        first: u64,
        last: u64,
    ) {
        let vmas: Vec<_> = self
            .vmas
            .iter()
            .filter(|v| {
                v.file
                    .as_ref()
                    .is_some_and(|f| std::sync::Arc::ptr_eq(f, file))
            })
            .map(|v| (v.start, v.end, v.pgoff, v.is_shmem()))
            .collect();
        for (vstart, vend, pgoff, shmem) in vmas {
            let vfirst = pgoff;
            let vlast = pgoff + (vend - vstart) / PAGE_SIZE - 1;
            if vlast < first || vfirst > last {
                continue;
            }
            let from = vstart + (first.max(vfirst) - pgoff) * PAGE_SIZE;
            let to = vstart + (last.min(vlast) - pgoff + 1) * PAGE_SIZE;
            for vpn in self.pt.occupied(from / PAGE_SIZE, to / PAGE_SIZE) {
                let is_cache_page = self
                    .pt
                    .get(vpn)
                    .present()
                    .is_some_and(|p| !p.page.is_anon() && !p.page.is_zero_page());
                if is_cache_page {
                    self.pt.take(vpn, shmem);
                }
            }
        }
    }

    /// MADV_FREE: anonymous pages mapped only here become lazily freeable
    /// (clean and old); their data stays until reclaim, which the engine
    /// does not model, or until the next write re-dirties them.
    fn lazyfree(&mut self, start: u64, end: u64) {
        for vpn in self.pt.occupied(start / PAGE_SIZE, end / PAGE_SIZE) {
            let Pte::Present(p) = self.pt.get(vpn) else {
                continue;
            };
            if p.page.is_anon() && p.page.mapcount() == 1 {
                self.pt.update(vpn, |e| {
                    e.dirty = false;
                    e.young = false;
                });
            }
        }
    }

    /// MADV_GUARD_INSTALL on `[start, end)` inside one VMA: mark the VMA
    /// (VM_MAYBE_GUARD, sticky, no split), prepare its anon_vma before any
    /// marker exists, then install markers optimistically: the walk puts a
    /// marker in every empty entry and stops at the first populated one;
    /// then the range is zapped (markers stay) and walked once more. A
    /// fault that repopulates the range between the zap and the second
    /// walk makes the call fail with EAGAIN, for the caller to retry (seed
    /// 004's design; 6.18 walks up to three times and then restarts the
    /// system call itself). Single-threaded, the second walk always
    /// completes.
    fn guard_install(&mut self, start: u64, end: u64) -> KResult<()> {
        let v = self.vmas.lookup(start).expect("walk found it").clone();
        if v.flags
            .intersects(VmFlags::SPECIAL | VmFlags::HUGETLB | VmFlags::LOCKED)
        {
            return Err(Errno::EINVAL);
        }
        if self.config.maybe_guard_flag {
            // 6.19 (and 6.18.y with the backport): the sticky flag makes
            // fork copy the page tables, so only anonymous VMAs still need
            // an anon_vma. Before, every VMA got one.
            let mut m = self.vmas.get_mut(v.start).expect("exists");
            m.flags = m.flags | VmFlags::MAYBE_GUARD;
            drop(m);
            if v.is_anonymous() {
                self.anon_vma_prepare(v.start);
            }
        } else {
            self.anon_vma_prepare(v.start);
        }
        for attempt in 0..2 {
            if self.guard_install_walk(start, end) {
                return Ok(());
            }
            if attempt == 0 {
                self.zap_range(start, end, v.is_shmem(), false);
            }
        }
        Err(Errno::EAGAIN)
    }

    /// One walk of guard_install_walk_ops: a marker in each empty entry,
    /// decided under the PTE lock; false at the first populated entry.
    fn guard_install_walk(&self, start: u64, end: u64) -> bool {
        (start / PAGE_SIZE..end / PAGE_SIZE).all(|vpn| {
            self.pt
                .with_pte(vpn, true, |slot| match slot.get() {
                    Pte::None => {
                        slot.set(Pte::Marker(Marker::Guard), false);
                        true
                    }
                    Pte::Marker(Marker::Guard) => true,
                    Pte::Present(_) => false,
                })
                .expect("allocated")
        })
    }

    /// MADV_POPULATE_READ/WRITE: fault in page by page, stopping at the
    /// first hole (ENOMEM), unsuitable VMA (EINVAL) or failing fault
    /// (EFAULT).
    fn madvise_populate(&mut self, start: u64, end: u64, write: bool) -> KResult<()> {
        let mut a = start;
        while a < end {
            let Some(v) = self.vmas.lookup(a) else {
                return Err(Errno::ENOMEM);
            };
            let f = v.flags;
            let pkey_denies = self.config.exec_only_pkey && f.pkey() == EXEC_ONLY_PKEY;
            if f.intersects(VmFlags::IO | VmFlags::PFNMAP)
                || !f.intersects(VmFlags::ACCESS)
                || (write && !f.contains(VmFlags::WRITE))
                || (!write && !f.contains(VmFlags::READ))
                || pkey_denies
            {
                return Err(Errno::EINVAL);
            }
            let satisfied = match self.pt.get(a / PAGE_SIZE) {
                Pte::Present(p) => !write || p.write,
                _ => false,
            };
            if !satisfied {
                match self.handle_mm_fault(a, write) {
                    FaultResult::Done | FaultResult::Retry => {}
                    FaultResult::Segv | FaultResult::Bus => return Err(Errno::EFAULT),
                }
            }
            a += PAGE_SIZE;
        }
        Ok(())
    }
}
