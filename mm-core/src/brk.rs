//! brk(2) (mm/mmap.c: SYSCALL_DEFINE1(brk), check_brk_limits; mm/vma.c:
//! do_brk_flags).
//!
//! brk never returns an error: on any failure it returns the old break.
//! Growing extends the VMA just below the old break when it is compatible
//! (not in a forked child, whose heap anon_vma is shared), otherwise adds
//! a new anonymous VMA; at least one free page must remain between the new
//! break and the next VMA (plus the stack guard gap below a stack).
//! Shrinking unmaps whatever lies in the released range.
//!
//! Not modelled: RLIMIT_DATA / RLIMIT_AS, overcommit, mlockall(MCL_FUTURE).

use crate::{
    addr::{PAGE_SHIFT, PAGE_SIZE, page_align_wrapping},
    mm::Mm,
    vm_flags::VmFlags,
    vma::{STACK_GUARD_GAP, Vma, VmaTree},
    vma_merge::Proposal,
};

impl Mm {
    /// The current program break (mm->brk).
    pub const fn brk_value(&self) -> u64 {
        self.brk
    }

    /// brk(addr): the new break, or the old one if it cannot be moved.
    pub fn brk(&mut self, brk: u64) -> u64 {
        let origbrk = self.brk;
        if brk < self.start_brk {
            return origbrk;
        }
        let newbrk = page_align_wrapping(brk);
        let oldbrk = page_align_wrapping(self.brk);
        if newbrk == oldbrk {
            self.brk = brk;
            return brk;
        }
        if brk <= self.brk {
            // Shrink: the range must still hold a VMA.
            if self.vmas.find(newbrk).is_none_or(|v| v.start >= oldbrk) {
                return origbrk;
            }
            self.brk = brk;
            if self.do_munmap(newbrk, oldbrk).is_err() {
                self.brk = origbrk;
                return origbrk;
            }
            return brk;
        }
        // check_brk_limits(): get_unmapped_area(MAP_FIXED) on the growth.
        let task = self.config.task_size;
        let len = newbrk.wrapping_sub(oldbrk);
        if len > task || oldbrk > task - len {
            return origbrk;
        }
        // Keep a page (and a stack's guard gap) free below the next VMA.
        let limit = newbrk.saturating_add(PAGE_SIZE + STACK_GUARD_GAP);
        if let Some(next) = self.vmas.find(oldbrk).filter(|v| v.start < limit) {
            if newbrk + PAGE_SIZE > VmaTree::start_gap(next) {
                return origbrk;
            }
        }
        if !self.do_brk_flags(oldbrk, len) {
            return origbrk;
        }
        self.brk = brk;
        brk
    }

    /// do_brk_flags(): map `[addr, addr + len)` as heap, expanding the VMA
    /// that ends at `addr` (if it lies above start_brk) or adding a new one.
    fn do_brk_flags(&mut self, addr: u64, len: u64) -> bool {
        if self.vmas.len() > self.config.max_map_count
            || self.vm_enough_memory(len >> PAGE_SHIFT).is_err()
        {
            return false;
        }
        let flags = VmFlags::READ
            | VmFlags::WRITE
            | VmFlags::MAYREAD
            | VmFlags::MAYWRITE
            | VmFlags::MAYEXEC
            | VmFlags::ACCOUNT;
        let end = addr + len;
        // vma_prev_limit(vmi, start_brk): the VMA below the old break.
        let expandable =
            addr > self.start_brk && self.vmas.prev_of(addr).is_some_and(|v| v.end == addr);
        let p = Proposal::new(addr, end, addr >> PAGE_SHIFT, flags, None);
        let target = match expandable.then(|| self.merge_new_range(&p, true)).flatten() {
            Some(t) => t,
            None => {
                self.vmas
                    .insert(Vma::new(addr, end, flags, addr >> PAGE_SHIFT, None));
                addr
            }
        };
        let soft_dirty = self.new_vma_flags();
        let mut v = self.vmas.get_mut(target).expect("just placed");
        v.flags = v.flags | soft_dirty;
        true
    }
}
