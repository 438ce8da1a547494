//! mremap(2), as in Linux 6.18 (mm/mremap.c: do_mremap,
//! check_mremap_params, check_prep_vma, remap_move, mremap_to, mremap_at,
//! expand_vma, move_vma, dontunmap_complete, unmap_source_vma; mm/vma.c:
//! copy_vma, vma_merge_extend).
//!
//! The checks run in the kernel's order. Some steps of a move are
//! destructive before a later step can fail (a FIXED move unmaps the
//! destination, a shrinking move unmaps the source's tail), and a
//! multi-VMA move keeps the pieces it already moved; the engine keeps those
//! partial effects too.
//!
//! Not modelled: RLIMIT_MEMLOCK / RLIMIT_AS / overcommit (the engine runs
//! as root with no limits), mseal, hugetlb, userfaultfd, and the
//! locked_vm/total_vm counters.

use crate::{
    addr::{PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, page_align_wrapping},
    errno::{Errno, KResult},
    mm::Mm,
    pgtable::Pte,
    uapi::mremap as flag,
    vm_flags::VmFlags,
    vma::Vma,
    vma_merge::Proposal,
};

/// What the call asks of the range (enum mremap_type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RemapType {
    NoResize,
    Shrink,
    Expand,
}

/// struct vma_remap_struct: the parameters of one (piece of a) remap.
#[derive(Clone, Copy, Debug)]
struct Remap {
    addr: u64,
    old_len: u64,
    new_len: u64,
    flags: u64,
    new_addr: u64,
    kind: RemapType,
    /// VM_LOCKED and growing: populate the new part afterwards.
    populate_expand: bool,
}

impl Remap {
    /// vrm_implies_new_addr(): FIXED or DONTUNMAP.
    const fn implies_new_addr(&self) -> bool {
        self.flags & (flag::FIXED | flag::DONTUNMAP) != 0
    }

    const fn delta(&self) -> u64 {
        self.old_len.abs_diff(self.new_len)
    }
}

impl Mm {
    /// mremap(addr, old_len, new_len, flags, new_addr); returns the
    /// (possibly new) address of the mapping.
    pub fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
    ) -> KResult<u64> {
        let mut vrm = Remap {
            addr,
            old_len: page_align_wrapping(old_len),
            new_len: page_align_wrapping(new_len),
            flags,
            new_addr,
            kind: RemapType::NoResize,
            populate_expand: false,
        };
        self.check_mremap_params(&vrm)?;
        let res = if vrm.flags & flag::FIXED != 0 && vrm.old_len == vrm.new_len {
            self.remap_move(&mut vrm)
        } else {
            self.check_prep_vma(&mut vrm)?;
            if vrm.implies_new_addr() {
                self.mremap_to(&mut vrm)
            } else {
                self.mremap_at(&mut vrm)
            }
        }?;
        // VMA mlocked and grown: populate the new part (mm_populate).
        if vrm.populate_expand {
            let from = vrm.new_addr + vrm.old_len;
            let _ = self.populate(from, from + vrm.delta(), true);
        }
        Ok(res)
    }

    /// check_mremap_params(): the checks that need no VMA.
    fn check_mremap_params(&self, vrm: &Remap) -> KResult<()> {
        let task = self.config.task_size;
        if vrm.flags & !(flag::FIXED | flag::MAYMOVE | flag::DONTUNMAP) != 0 {
            return Err(Errno::EINVAL);
        }
        if vrm.addr & !PAGE_MASK != 0 || vrm.new_len == 0 || vrm.new_len > task {
            return Err(Errno::EINVAL);
        }
        if !vrm.implies_new_addr() {
            return Ok(());
        }
        if vrm.new_addr > task - vrm.new_len || vrm.new_addr & !PAGE_MASK != 0 {
            return Err(Errno::EINVAL);
        }
        if vrm.flags & flag::MAYMOVE == 0 {
            return Err(Errno::EINVAL);
        }
        if vrm.flags & flag::DONTUNMAP != 0 && vrm.old_len != vrm.new_len {
            return Err(Errno::EINVAL);
        }
        // vrm_overlaps(), with the kernel's unsigned arithmetic.
        let end_old = vrm.addr.wrapping_add(vrm.old_len);
        let end_new = vrm.new_addr.wrapping_add(vrm.new_len);
        if end_old > vrm.new_addr && end_new > vrm.addr {
            return Err(Errno::EINVAL);
        }
        // Both the source and the destination may be split in three.
        if self.vmas.len() + 2 >= self.config.max_map_count.saturating_sub(3) {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// check_prep_vma(): the checks against the VMA containing `addr`;
    /// sets the remap type (and, without FIXED/DONTUNMAP, new_addr = addr).
    fn check_prep_vma(&self, vrm: &mut Remap) -> KResult<()> {
        let vma = self.vmas.lookup(vrm.addr).ok_or(Errno::EFAULT)?;
        vrm.kind = match vrm.old_len.cmp(&vrm.new_len) {
            std::cmp::Ordering::Equal => RemapType::NoResize,
            std::cmp::Ordering::Greater => RemapType::Shrink,
            std::cmp::Ordering::Less => RemapType::Expand,
        };
        if !vrm.implies_new_addr() {
            vrm.new_addr = vrm.addr;
            // An in-place shrink or no-op checks nothing more: the range
            // may cross VMAs and holes.
            if vrm.kind != RemapType::Expand {
                return Ok(());
            }
        }
        if vrm.old_len == 0 && !vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) {
            return Err(Errno::EINVAL);
        }
        if vrm.flags & flag::DONTUNMAP != 0
            && vma.flags.intersects(VmFlags::DONTEXPAND | VmFlags::PFNMAP)
        {
            return Err(Errno::EINVAL);
        }
        // The range kept must lie inside this one VMA.
        let chk = if vrm.kind == RemapType::Shrink {
            vrm.new_len
        } else {
            vrm.old_len
        };
        if chk > vma.end - vrm.addr {
            return Err(Errno::EFAULT);
        }
        if vrm.new_len == chk {
            return Ok(());
        }
        if vma.flags.contains(VmFlags::LOCKED) {
            vrm.populate_expand = true;
        }
        let pgoff = vma.pgoff + ((vrm.addr - vma.start) >> PAGE_SHIFT);
        if pgoff.checked_add(vrm.new_len >> PAGE_SHIFT).is_none() {
            return Err(Errno::EINVAL);
        }
        if vma.flags.intersects(VmFlags::DONTEXPAND | VmFlags::PFNMAP) {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    /// remap_move(): a same-size FIXED move of every VMA in the range,
    /// keeping the gaps between them. The range may not start in a hole;
    /// pieces already moved stay moved when a later one fails.
    fn remap_move(&mut self, vrm: &mut Remap) -> KResult<u64> {
        let start = vrm.addr;
        // The kernel's end wraps; a wrapped range holds no VMA (EFAULT).
        let end = vrm.addr.wrapping_add(vrm.old_len);
        let mut target = vrm.new_addr;
        let mut res = Err(Errno::EFAULT);
        let mut last_end = 0;
        let mut seen = false;
        let mut cursor = start;
        while cursor < end {
            let Some(vma) = self.vmas.find(cursor).filter(|v| v.start < end) else {
                break;
            };
            let (vstart, vend) = (vma.start, vma.end);
            if !seen && start < vstart {
                return Err(Errno::EFAULT);
            }
            let piece = vstart.max(start);
            let len = end.min(vend) - piece;
            let offset = if seen { vstart - last_end } else { 0 };
            last_end = vend;
            let mut p = Remap {
                addr: piece,
                old_len: len,
                new_len: len,
                new_addr: target + offset,
                ..*vrm
            };
            self.check_prep_vma(&mut p)?;
            let r = self.mremap_to(&mut p)?;
            if !seen {
                res = Ok(r);
            }
            seen = true;
            target = r + len;
            cursor = piece + len;
        }
        res
    }

    /// mremap_to(): FIXED and/or DONTUNMAP. The destination is unmapped
    /// first, then a shrinking source's tail, before anything can fail.
    fn mremap_to(&mut self, vrm: &mut Remap) -> KResult<u64> {
        if vrm.flags & flag::FIXED != 0 {
            self.do_munmap(vrm.new_addr, vrm.new_addr + vrm.new_len)?;
            if self.vmas.lookup(vrm.addr).is_none() {
                return Err(Errno::EFAULT);
            }
        }
        if vrm.kind == RemapType::Shrink {
            self.munmap(vrm.addr + vrm.new_len, vrm.old_len - vrm.new_len)?;
            if self.vmas.lookup(vrm.addr).is_none() {
                return Err(Errno::EFAULT);
            }
            vrm.old_len = vrm.new_len;
        }
        self.set_new_addr(vrm)?;
        self.move_vma(vrm)
    }

    /// mremap_at(): no FIXED, no DONTUNMAP.
    fn mremap_at(&mut self, vrm: &mut Remap) -> KResult<u64> {
        match vrm.kind {
            RemapType::NoResize => Ok(vrm.addr),
            RemapType::Shrink => {
                self.munmap(vrm.addr + vrm.new_len, vrm.old_len - vrm.new_len)?;
                Ok(vrm.addr)
            }
            RemapType::Expand => self.expand_vma(vrm),
        }
    }

    /// expand_vma(): grow in place if the range ends at the VMA's end and
    /// the space after it is free, else move (with MAYMOVE).
    fn expand_vma(&mut self, vrm: &mut Remap) -> KResult<u64> {
        let vma = self.vmas.lookup(vrm.addr).expect("checked").clone();
        let delta = vrm.delta();
        let expandable = vma
            .end
            .checked_add(delta)
            .is_some_and(|end| end <= self.config.task_size && self.vmas.is_free(vma.end, end));
        if vrm.addr + vrm.old_len == vma.end && expandable {
            if vma.flags.contains(VmFlags::ACCOUNT) {
                self.vm_enough_memory(delta >> PAGE_SHIFT)?;
            }
            // vma_merge_extend(): merge [end, end + delta) into the VMA
            // (and the next one, if it now touches and is compatible).
            let p = Proposal {
                anon_vma: vma.anon_vma.clone(),
                name: vma.name.clone(),
                ..Proposal::new(
                    vma.end,
                    vma.end + delta,
                    vma.pgoff + (vma.len() >> PAGE_SHIFT),
                    vma.flags,
                    vma.file.clone(),
                )
            };
            self.merge_new_range(&p, false).ok_or(Errno::ENOMEM)?;
            return Ok(vrm.addr);
        }
        if vrm.flags & flag::MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        self.set_new_addr(vrm)?;
        self.move_vma(vrm)
    }

    /// vrm_set_new_addr(): the destination, through get_unmapped_area()
    /// (the given address for FIXED, a hint for DONTUNMAP, none when
    /// growing by a move).
    fn set_new_addr(&mut self, vrm: &mut Remap) -> KResult<()> {
        // FIXED: get_unmapped_area's bounds were checked with the
        // parameters (new_len <= TASK_SIZE, new_addr <= TASK_SIZE - new_len).
        if vrm.flags & flag::FIXED != 0 {
            return Ok(());
        }
        let vma = self.vmas.lookup(vrm.addr).expect("checked");
        let hint = if vrm.flags & flag::DONTUNMAP != 0 {
            vrm.new_addr
        } else {
            0
        };
        let thp = vma.file.is_none() && !vma.flags.contains(VmFlags::MAYSHARE);
        vrm.new_addr = self.get_unmapped_area(hint, vrm.new_len, thp)?;
        Ok(())
    }

    /// move_vma(): copy the VMA to the new address (merging there if it
    /// can), move the page-table entries, then unmap the source (or, with
    /// DONTUNMAP, leave it mapped and empty).
    fn move_vma(&mut self, vrm: &mut Remap) -> KResult<u64> {
        if self.vmas.len() >= self.config.max_map_count.saturating_sub(3) {
            return Err(Errno::ENOMEM);
        }
        let vma = self.vmas.lookup(vrm.addr).expect("checked").clone();
        if vma.flags.contains(VmFlags::ACCOUNT) {
            let charge = if vrm.flags & flag::DONTUNMAP != 0 {
                vrm.new_len
            } else {
                vrm.delta()
            };
            self.vm_enough_memory(charge >> PAGE_SHIFT)?;
        }
        let pgoff = vma.pgoff + ((vrm.addr - vma.start) >> PAGE_SHIFT);
        let new_start = self.copy_vma(&vma, vrm.new_addr, vrm.new_len, pgoff);
        self.move_page_tables(vrm.addr, vrm.new_addr, vrm.old_len, vma.is_shmem());
        if vrm.flags & flag::DONTUNMAP != 0 {
            self.dontunmap_complete(vrm, new_start);
        } else {
            self.unmap_source_vma(vrm);
        }
        Ok(vrm.new_addr)
    }

    /// copy_vma(): the destination VMA. An anonymous VMA that was never
    /// faulted is re-based (pgoff = new address) to help it merge; any
    /// other keeps its page offset. Returns the start of the VMA that now
    /// covers the destination.
    fn copy_vma(&mut self, vma: &Vma, addr: u64, len: u64, pgoff: u64) -> u64 {
        let pgoff = if vma.is_anonymous() && vma.anon_vma.is_none() {
            addr >> PAGE_SHIFT
        } else {
            pgoff
        };
        let p = Proposal {
            anon_vma: vma.anon_vma.clone(),
            name: vma.name.clone(),
            copied_from_fork_child: vma.fork_child,
            ..Proposal::new(addr, addr + len, pgoff, vma.flags, vma.file.clone())
        };
        if let Some(start) = self.merge_new_range(&p, false) {
            return start;
        }
        let mut new = vma.clone();
        new.start = addr;
        new.end = addr + len;
        new.pgoff = pgoff;
        self.vmas.insert(new);
        addr
    }

    /// move_page_tables(): every entry of `[from, from + len)` (present
    /// pages, guard markers) moves to the same offset at `to`; with
    /// soft-dirty tracking, a moved page becomes soft-dirty.
    fn move_page_tables(&mut self, from: u64, to: u64, len: u64, shmem: bool) {
        let (src, dst) = (from / PAGE_SIZE, to / PAGE_SIZE);
        for vpn in self.pt.occupied(src, src + len / PAGE_SIZE) {
            let mut pte = self.pt.take(vpn, shmem);
            if let Pte::Present(p) = &mut pte {
                p.soft_dirty |= self.config.soft_dirty;
            }
            self.pt.set(dst + (vpn - src), pte, shmem);
        }
    }

    /// dontunmap_complete(): the old VMA stays, unsplit and empty, and
    /// loses VM_LOCKED/VM_LOCKONFAULT (6.18 keeps VM_ACCOUNT); if the
    /// whole of it moved to another VMA it drops its anon_vma.
    fn dontunmap_complete(&mut self, vrm: &Remap, new_start: u64) {
        let (start, end) = (vrm.addr, vrm.addr + vrm.old_len);
        let mut old = self.vmas.lookup_mut(vrm.addr).expect("source kept");
        old.flags = old.flags.without(VmFlags::LOCKED_MASK);
        if old.start != new_start && old.start == start && old.end == end {
            old.anon_vma = None;
            old.fork_child = false;
        }
    }

    /// unmap_source_vma(): munmap the old range. VM_ACCOUNT is cleared on
    /// the source VMA first (the move was charged already) and given back
    /// to the parts of it that survive.
    fn unmap_source_vma(&mut self, vrm: &Remap) {
        let (addr, end) = (vrm.addr, vrm.addr + vrm.old_len);
        let Some(mut vma) = self.vmas.lookup_mut(addr) else {
            return;
        };
        let accountable = vma.flags.contains(VmFlags::ACCOUNT);
        let (vm_start, vm_end) = (vma.start, vma.end);
        if accountable {
            vma.flags = vma.flags.without(VmFlags::ACCOUNT);
        }
        drop(vma);
        if end == addr || self.do_munmap(addr, end).is_err() {
            // The kernel only fixes the accounting here; the flag stays
            // cleared on the unsplit source.
            return;
        }
        if accountable {
            if vm_start < addr {
                if let Some(mut prev) = self.vmas.lookup_mut(addr - PAGE_SIZE) {
                    prev.flags = prev.flags | VmFlags::ACCOUNT;
                }
            }
            if vm_end > end {
                if let Some(mut next) = self.vmas.lookup_mut(end) {
                    next.flags = next.flags | VmFlags::ACCOUNT;
                }
            }
        }
    }
}
