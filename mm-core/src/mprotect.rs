//! mprotect(2) (mm/mprotect.c do_mprotect_pkey, mprotect_fixup,
//! change_protection, can_change_pte_writable).
//!
//! VMAs are changed one by one from the start of the range; an error (a
//! hole, EACCES) stops the loop and leaves the VMAs already changed as they
//! are, as the kernel does.

use crate::{
    addr::{PAGE_SHIFT, PAGE_SIZE, is_page_aligned, page_align},
    errno::{Errno, KResult},
    fault::EXEC_ONLY_PKEY,
    mm::Mm,
    pgtable::Pte,
    uapi::prot,
    vm_flags::VmFlags,
};

impl Mm {
    /// mprotect(addr, len, prot).
    pub fn mprotect(&mut self, start: u64, len: u64, prot_bits: u64) -> KResult<()> {
        let grows = prot_bits & (prot::GROWSDOWN | prot::GROWSUP);
        let prot_bits = prot_bits & !grows;
        if grows == prot::GROWSDOWN | prot::GROWSUP {
            return Err(Errno::EINVAL);
        }
        if !is_page_aligned(start) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = start.wrapping_add(len);
        if end <= start {
            return Err(Errno::ENOMEM);
        }
        if prot_bits & !(prot::READ | prot::WRITE | prot::EXEC | prot::SEM) != 0 {
            return Err(Errno::EINVAL);
        }
        let prot_bits = prot_bits & 0x7;
        let Some(first) = self.vmas.find(start).filter(|v| v.start < end) else {
            return Err(Errno::ENOMEM);
        };
        let mut start = start;
        if grows & prot::GROWSDOWN != 0 {
            start = first.start;
            if !first.flags.contains(VmFlags::GROWSDOWN) {
                return Err(Errno::EINVAL);
            }
        } else if first.start > start {
            return Err(Errno::ENOMEM);
        }
        if grows & prot::GROWSUP != 0 {
            return Err(Errno::EINVAL);
        }

        // As do_mprotect_pkey(): `tmp` is where the next VMA must start,
        // `nstart` where the change starts inside it.
        let mut tmp = self.vmas.find(start).expect("found above").start;
        let mut nstart = start;
        while tmp < end {
            let Some(v) = self.vmas.find(tmp).filter(|v| v.start < end) else {
                break;
            };
            if v.start != tmp {
                return Err(Errno::ENOMEM);
            }
            let old_key = v.flags.pkey();
            let key = if prot_bits == prot::EXEC && self.config.exec_only_pkey {
                EXEC_ONLY_PKEY
            } else if old_key == EXEC_ONLY_PKEY && self.config.exec_only_pkey {
                0
            } else {
                old_key
            };
            let newflags = (VmFlags::from_prot(prot_bits)
                | v.flags.without(VmFlags::ACCESS | VmFlags::PKEY_BITS))
            .with_pkey(key);
            if (newflags.0 & !(newflags.0 >> 4)) & VmFlags::ACCESS.0 != 0 {
                return Err(Errno::EACCES);
            }
            let seg_end = v.end.min(end);
            tmp = self.mprotect_fixup(nstart, seg_end, newflags)?;
            nstart = tmp;
        }
        if tmp < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// mprotect_fixup() for `[start, end)` inside one VMA; returns the end
    /// of the VMA now covering the range (the loop continues there).
    fn mprotect_fixup(&mut self, start: u64, end: u64, newflags: VmFlags) -> KResult<u64> {
        let v = self.vmas.lookup(start).expect("caller found it").clone();
        let old = v.flags;
        if newflags == old {
            return Ok(v.end);
        }
        let mut newflags = newflags;
        if newflags.contains(VmFlags::WRITE) {
            if !old.intersects(
                VmFlags::ACCOUNT
                    | VmFlags::WRITE
                    | VmFlags::HUGETLB
                    | VmFlags::SHARED
                    | VmFlags::NORESERVE,
            ) {
                self.vm_enough_memory((end - start) >> PAGE_SHIFT)?;
                newflags = newflags | VmFlags::ACCOUNT;
            }
        } else if old.contains(VmFlags::ACCOUNT) && v.is_anonymous() && v.anon_vma.is_none() {
            newflags = newflags.without(VmFlags::ACCOUNT);
        }
        let target = self.modify_flags(start, end, newflags)?;
        self.change_protection(start, end);
        let target_end = self.vmas.get(target).expect("covers the range").end;
        // A private locked VMA becoming writable is pre-COWed.
        if newflags.contains(VmFlags::LOCKED)
            && newflags.contains(VmFlags::WRITE)
            && !old.intersects(VmFlags::WRITE | VmFlags::SHARED)
        {
            let _ = self.populate(start, end, true);
        }
        Ok(target_end)
    }

    /// change_protection(): rewrite the present PTEs of `[start, end)` for
    /// the VMA's new flags. Dropping write takes it away at once; adding it
    /// makes a PTE writable at once only where no fault is needed to learn
    /// about the first write (can_change_pte_writable).
    pub(crate) fn change_protection(&mut self, start: u64, end: u64) {
        let v = self.vmas.lookup(start).expect("covers the range").clone();
        let writable = v.flags.contains(VmFlags::WRITE);
        let shared = v.flags.contains(VmFlags::SHARED);
        let writenotify = self.wants_writenotify(&v);
        let tracking = self.config.soft_dirty && !v.flags.contains(VmFlags::SOFTDIRTY);
        for vpn in self.pt.occupied(start / PAGE_SIZE, end / PAGE_SIZE) {
            let Pte::Present(p) = self.pt.get(vpn).clone() else {
                continue;
            };
            // pte_modify() with the new vm_page_prot: only a shared
            // writable VMA without write-notify carries the write bit.
            let mut new_write = writable && shared && !writenotify;
            // MM_CP_TRY_CHANGE_WRITABLE for private writable VMAs and
            // write-notify shared ones: can_change_pte_writable().
            if !new_write && writable && (!shared || writenotify) {
                let needs_sd_wp = tracking && !p.soft_dirty;
                new_write = !needs_sd_wp
                    && if shared {
                        p.dirty
                    } else {
                        p.page.is_anon() && p.page.anon_exclusive()
                    };
            }
            if new_write != p.write {
                self.pt.update(vpn, |e| e.write = new_write);
            }
        }
    }
}
