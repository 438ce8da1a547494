//! mmap(2) (mm/mmap.c do_mmap, mm/vma.c mmap_region/__mmap_region), address
//! selection (arch/x86/kernel/sys_x86_64.c arch_get_unmapped_area_topdown,
//! mm/vma.c unmapped_area_topdown, mm/huge_memory.c
//! __thp_get_unmapped_area) and populate (mm/gup.c __mm_populate).
//!
//! The checks run in the kernel's order, so that when several errors apply
//! the same errno wins.

use std::ops::ControlFlow;

use crate::{
    addr::{MMAP_MIN_ADDR, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, is_page_aligned, page_align},
    errno::{Errno, KResult},
    fault::{EXEC_ONLY_PKEY, FaultEnv, FaultResult, allows, needs_anon_vma},
    file::{File, FileRef},
    mm::Mm,
    pgtable::Pte,
    uapi::{map, prot},
    vm_flags::VmFlags,
    vma::{Vma, VmaTree},
    vma_merge::Proposal,
};

/// LEGACY_MAP_MASK (x86_64): the flags MAP_SHARED_VALIDATE accepts.
const LEGACY_MAP_MASK: u64 = 0x7C07_F9F3;
/// Size of a PMD-mapped huge page.
const PMD_SIZE: u64 = 2 << 20;
/// MAX_LFS_FILESIZE.
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

impl Mm {
    /// mmap(addr, len, prot, flags, file, offset); `file` is the open file
    /// for a file mapping (None stands for fd -1).
    pub fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot_bits: u64,
        flags: u64,
        file: Option<&FileRef>,
        offset: u64,
    ) -> KResult<u64> {
        if offset & !PAGE_MASK != 0 {
            return Err(Errno::EINVAL);
        }
        let anonymous = flags & map::ANONYMOUS != 0;
        let file = if anonymous { None } else { file };
        if !anonymous && file.is_none() {
            return Err(Errno::EBADF);
        }
        if flags & map::HUGETLB != 0 {
            // No hugetlbfs files, and no huge pages reserved.
            return Err(if anonymous {
                Errno::ENOMEM
            } else {
                Errno::EINVAL
            });
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let mut flags = flags;
        if flags & map::FIXED_NOREPLACE != 0 {
            flags |= map::FIXED;
        }
        let fixed = flags & map::FIXED != 0;
        let mut addr = addr;
        if !fixed {
            addr &= PAGE_MASK;
            if addr != 0 && addr < MMAP_MIN_ADDR {
                addr = MMAP_MIN_ADDR;
            }
        }
        let len = page_align(len).filter(|&l| l != 0).ok_or(Errno::ENOMEM)?;
        let mut pgoff = offset >> PAGE_SHIFT;
        if self.vmas.len() > self.config.max_map_count {
            return Err(Errno::ENOMEM);
        }
        let mut vm_flags =
            VmFlags::from_prot(prot_bits) | VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC;
        if prot_bits & 0x7 == prot::EXEC && self.config.exec_only_pkey {
            vm_flags = vm_flags.with_pkey(EXEC_ONLY_PKEY);
        }
        if flags & map::GROWSDOWN != 0 {
            vm_flags = vm_flags | VmFlags::GROWSDOWN;
        }
        if flags & map::LOCKED != 0 {
            vm_flags = vm_flags | VmFlags::LOCKED;
        }
        if flags & map::SYNC != 0 {
            vm_flags = vm_flags | VmFlags::SYNC;
        }
        if flags & map::STACK != 0 {
            vm_flags = vm_flags | VmFlags::NOHUGEPAGE;
        }

        // __get_unmapped_area
        let task = self.config.task_size;
        if len > task {
            return Err(Errno::ENOMEM);
        }
        let addr = if fixed {
            addr
        } else {
            self.get_unmapped_area(addr, len, anonymous && flags & map::SHARED == 0)?
        };
        if addr > task - len {
            return Err(Errno::ENOMEM);
        }
        if !is_page_aligned(addr) {
            return Err(Errno::EINVAL);
        }
        let end = addr + len;
        if flags & map::FIXED_NOREPLACE != 0 && !self.vmas.is_free(addr, end) {
            return Err(Errno::EEXIST);
        }

        let mut shmem_file = None;
        if let Some(f) = file {
            if len > MAX_LFS_FILESIZE || pgoff > (MAX_LFS_FILESIZE - len) >> PAGE_SHIFT {
                return Err(Errno::EOVERFLOW);
            }
            match flags & map::TYPE {
                map::SHARED | map::SHARED_VALIDATE => {
                    let f2 = if flags & map::TYPE == map::SHARED {
                        flags & LEGACY_MAP_MASK
                    } else {
                        flags
                    };
                    if f2 & !LEGACY_MAP_MASK != 0 {
                        return Err(Errno::EOPNOTSUPP);
                    }
                    if prot_bits & prot::WRITE != 0 && !f.writable() {
                        return Err(Errno::EACCES);
                    }
                    vm_flags = vm_flags | VmFlags::SHARED | VmFlags::MAYSHARE;
                    if !f.writable() {
                        vm_flags = vm_flags.without(VmFlags::MAYWRITE | VmFlags::SHARED);
                    }
                    if vm_flags.contains(VmFlags::GROWSDOWN) {
                        return Err(Errno::EINVAL);
                    }
                }
                map::PRIVATE => {
                    if vm_flags.contains(VmFlags::GROWSDOWN) {
                        return Err(Errno::EINVAL);
                    }
                }
                _ => return Err(Errno::EINVAL),
            }
        } else {
            match flags & map::TYPE {
                map::SHARED => {
                    if vm_flags.contains(VmFlags::GROWSDOWN) {
                        return Err(Errno::EINVAL);
                    }
                    pgoff = 0;
                    vm_flags = vm_flags | VmFlags::SHARED | VmFlags::MAYSHARE;
                    shmem_file = Some(File::shared_anon(len));
                }
                map::PRIVATE => pgoff = addr >> PAGE_SHIFT,
                _ => return Err(Errno::EINVAL),
            }
        }
        if flags & map::NORESERVE != 0 {
            vm_flags = vm_flags | VmFlags::NORESERVE;
        }

        // __mmap_region: split what MAP_FIXED overlaps (a 3-way split at
        // the map count limit fails first), charge the commit, and only
        // then remove the old VMAs (a failed charge leaves the splits).
        let overlaps = !self.vmas.is_free(addr, end);
        if overlaps {
            self.munmap_gather(addr, end)?;
        }
        let accountable = vm_flags & (VmFlags::NORESERVE | VmFlags::SHARED | VmFlags::WRITE);
        if accountable == VmFlags::WRITE {
            // What the mapping replaces was charged already.
            let replaced: u64 = self
                .vmas
                .range(addr, end)
                .filter(|v| v.flags.contains(VmFlags::ACCOUNT))
                .map(|v| (v.end.min(end) - v.start.max(addr)) >> PAGE_SHIFT)
                .sum();
            self.vm_enough_memory((len >> PAGE_SHIFT) - replaced)?;
            vm_flags = vm_flags | VmFlags::ACCOUNT;
        }
        if overlaps {
            self.munmap_complete(addr, end);
        }
        // shmem_zero_setup(): a shared anonymous mapping charges its whole
        // size unless MAP_NORESERVE. This comes after the old mappings'
        // page tables were cleared, so a failure leaves a gap there
        // (vms_abort_munmap_vmas).
        if shmem_file.is_some() && !vm_flags.contains(VmFlags::NORESERVE) {
            self.vm_enough_memory(len >> PAGE_SHIFT)?;
        }

        let file = shmem_file.or_else(|| file.cloned());
        let p = Proposal::new(addr, end, pgoff, vm_flags, file.clone());
        let target = match self.merge_new_range(&p, false) {
            Some(t) => t,
            None => {
                self.vmas.insert(Vma::new(addr, end, vm_flags, pgoff, file));
                addr
            }
        };
        // __mmap_complete: every new or expanded VMA is soft-dirty.
        let new_flags = self.new_vma_flags();
        let mut v = self.vmas.get_mut(target).expect("just placed");
        v.flags = v.flags | new_flags;
        if v.flags.intersects(VmFlags::SPECIAL) {
            v.flags = v.flags.without(VmFlags::LOCKED_MASK);
        }
        drop(v);

        let locked = vm_flags.contains(VmFlags::LOCKED);
        if locked || flags & (map::POPULATE | map::NONBLOCK) == map::POPULATE {
            if self.defer_populate {
                self.deferred_populate = Some((addr, end));
            } else {
                let _ = self.populate(addr, end, true);
            }
        }
        Ok(addr)
    }

    /// Placement of a non-fixed mapping: the hint if the range is free,
    /// else the highest gap below mmap_base (2 MiB aligned for anonymous
    /// private mappings whose length is a multiple of 2 MiB).
    pub(crate) fn get_unmapped_area(
        &self,
        hint: u64,
        len: u64,
        thp_candidate: bool,
    ) -> KResult<u64> {
        let task = self.config.task_size;
        if hint != 0 && hint <= task - len {
            let fits = match self.vmas.find(hint) {
                None => true,
                Some(v) => hint + len <= VmaTree::start_gap(v),
            };
            if fits {
                return Ok(hint);
            }
        }
        if thp_candidate && hint == 0 && len.is_multiple_of(PMD_SIZE) {
            if let Some(ret) = self.topdown(len + PMD_SIZE) {
                let off_sub = 0u64.wrapping_sub(ret) & (PMD_SIZE - 1);
                return Ok(if off_sub == 0 {
                    ret + PMD_SIZE
                } else {
                    ret + off_sub
                });
            }
        }
        self.topdown(len)
            .or_else(|| self.bottomup(len))
            .ok_or(Errno::ENOMEM)
    }

    /// unmapped_area_topdown(): the highest address in
    /// `[max(PAGE_SIZE, mmap_min_addr), mmap_base)` with `len` free bytes
    /// (and clear of a stack's guard gap). The gap straddling mmap_base is
    /// tried first, then the gap index gives the highest big enough gap
    /// below it in O(log n).
    fn topdown(&self, len: u64) -> Option<u64> {
        let low = PAGE_SIZE.max(MMAP_MIN_ADDR);
        let high = self.config.mmap_base;
        let gap_end = self.vmas.next_of(high).map_or(u64::MAX, VmaTree::start_gap);
        let Some(top) = self.vmas.rev_below(high).next() else {
            return Self::fit_top(low, gap_end.min(high), len);
        };
        if let Some(a) = Self::fit_top(top.end.max(low), gap_end.min(high), len) {
            return Some(a);
        }
        let w = self.vmas.highest_gap_below(top.start, len)?;
        let prev_end = self.vmas.prev_of(w.start).map_or(0, |p| p.end);
        // If the gap only fits unclipped, it straddles `low`: every lower
        // gap lies entirely below `low`.
        Self::fit_top(prev_end.max(low), VmaTree::start_gap(w).min(high), len)
    }

    /// The highest `len`-byte range inside `[start, end)`, if it fits.
    fn fit_top(start: u64, end: u64, len: u64) -> Option<u64> {
        (end > start && end - start >= len).then(|| (end - len) & PAGE_MASK)
    }

    /// unmapped_area(): the lowest fit from TASK_UNMAPPED_BASE up.
    fn bottomup(&self, len: u64) -> Option<u64> {
        let mut at = page_align(self.config.task_size / 3)?;
        for v in self.vmas.iter() {
            if v.end <= at {
                continue;
            }
            if VmaTree::start_gap(v) >= at + len {
                return Some(at);
            }
            at = at.max(v.end);
        }
        (at + len <= self.config.task_size).then_some(at)
    }

    /// __mm_populate(start, end): fault in the pages of the range as GUP
    /// does (writes for private writable VMAs, reads otherwise). With
    /// `ignore_errors` (mmap, mlockall, brk) a failing VMA is skipped;
    /// otherwise the first error stops (EFAULT for inaccessible VMAs,
    /// guard markers and pages beyond the end of a file).
    pub(crate) fn populate(&mut self, start: u64, end: u64, ignore_errors: bool) -> KResult<()> {
        let mut at = start;
        while at < end {
            let Some(v) = self.vmas.find(at).filter(|v| v.start < end).cloned() else {
                break;
            };
            at = at.max(v.start);
            let vend = v.end.min(end);
            let r = self.populate_vma(&v, at, vend);
            if let Err(e) = r {
                if !ignore_errors {
                    return Err(e);
                }
            }
            at = vend;
        }
        Ok(())
    }

    /// populate_vma_page_range() for `[start, end)` inside `v`.
    fn populate_vma(&mut self, v: &Vma, start: u64, end: u64) -> KResult<()> {
        if v.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
            return Ok(());
        }
        if v.flags.contains(VmFlags::LOCKONFAULT) {
            return Ok(());
        }
        if !v.flags.intersects(VmFlags::ACCESS) || !v.flags.contains(VmFlags::MAYREAD) {
            return Err(Errno::EFAULT);
        }
        // GUP is a data access: protection keys apply even with FOLL_FORCE
        // (check_vma_flags -> arch_vma_access_permitted).
        if self.config.exec_only_pkey && v.flags.pkey() == EXEC_ONLY_PKEY {
            return Err(Errno::EFAULT);
        }
        let write = v.flags & (VmFlags::WRITE | VmFlags::SHARED) == VmFlags::WRITE;
        self.fault_in(start, end, write)
    }

    /// Fault in `[start, end)` (one VMA) for reading or writing, skipping
    /// pages whose PTE already allows it. Guard markers stop it (EFAULT).
    pub(crate) fn fault_in(&mut self, start: u64, end: u64, write: bool) -> KResult<()> {
        if start >= end {
            return Ok(());
        }
        if self.vmas.lookup(start).is_some_and(Vma::is_anonymous) {
            return self.fault_in_anon(start, end, write);
        }
        let mut a = start;
        while a < end {
            let ok = match self.pt.get(a / PAGE_SIZE) {
                Pte::Present(p) => !write || p.write,
                _ => false,
            };
            if !ok {
                match self.handle_mm_fault(a, write) {
                    FaultResult::Done | FaultResult::Retry => {}
                    FaultResult::Segv | FaultResult::Bus => return Err(Errno::EFAULT),
                }
            }
            a += PAGE_SIZE;
        }
        Ok(())
    }

    /// [`Self::fault_in`] for an anonymous VMA, a page-table page at a
    /// time: the same faults, in the same order, as one
    /// [`Self::handle_mm_fault`] per page that needs one.
    fn fault_in_anon(&mut self, start: u64, end: u64, write: bool) -> KResult<()> {
        let v = self.vmas.lookup(start).expect("checked");
        if needs_anon_vma(v, write) {
            // The first fault prepares the anon_vma: is there one?
            let mut ok = 0;
            let _ = self
                .pt
                .walk(start / PAGE_SIZE, end / PAGE_SIZE, false, |_, slot| {
                    ok += u64::from(allows(slot.get(), write));
                    ControlFlow::Continue(())
                });
            if ok < (end - start) / PAGE_SIZE {
                let vstart = v.start;
                self.anon_vma_prepare(vstart);
            }
        }
        let vma = self.vmas.lookup(start).expect("checked").clone();
        if let Some(q) = &mut self.queued_walks {
            q.push(crate::mm::QueuedWalk {
                vma,
                start,
                end,
                write,
            });
            return Ok(());
        }
        let env = FaultEnv {
            pt: &self.pt,
            config: &self.config,
            vma: &vma,
            validate: &|| true,
        };
        let mut done = false;
        let r = env.fault_in_anon(start, end, write, |_| done = true);
        if done {
            // Faulting pages in only adds to the RSS: its high-water mark
            // is reached at the end.
            self.update_hiwater();
        }
        match r {
            FaultResult::Done | FaultResult::Retry => Ok(()),
            FaultResult::Segv | FaultResult::Bus => Err(Errno::EFAULT),
        }
    }
}
