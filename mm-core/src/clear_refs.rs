//! Writes to /proc/PID/clear_refs (fs/proc/task_mmu.c: clear_refs_write,
//! clear_refs_pte_range, clear_soft_dirty, reset_mm_hiwater_rss).
//!
//! * 1, 2, 3: clear the accessed (young) bit of the present pages of all,
//!   anonymous-only or file-backed VMAs (the zero page is left alone).
//! * 4: soft-dirty: every VMA loses VM_SOFTDIRTY (which re-enables write
//!   notification for shared writable VMAs, vma_set_page_prot), and every
//!   present PTE is write-protected and loses its soft-dirty bit, so the
//!   next write faults and marks it again. Without CONFIG_MEM_SOFT_DIRTY it
//!   does nothing.
//! * 5: the peak RSS is reset to the current RSS.

use crate::{
    addr::PAGE_SIZE,
    errno::{Errno, KResult},
    mm::Mm,
    pgtable::Pte,
    uapi::clear_refs as kind,
    vm_flags::VmFlags,
};

impl Mm {
    /// `echo KIND > /proc/PID/clear_refs`.
    pub fn clear_refs(&mut self, kind: u32) -> KResult<()> {
        match kind {
            kind::MM_HIWATER_RSS => {
                self.counters.hiwater_rss = self.rss();
                Ok(())
            }
            kind::SOFT_DIRTY => {
                if self.config.soft_dirty {
                    self.clear_soft_dirty();
                }
                Ok(())
            }
            kind::ALL | kind::ANON | kind::MAPPED => {
                self.clear_young(kind);
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// The soft-dirty clear (the mmap write lock is held throughout).
    fn clear_soft_dirty(&mut self) {
        let starts: Vec<u64> = self.vmas.iter().map(|v| v.start).collect();
        for s in starts {
            let mut v = self.vmas.get_mut(s).expect("listed");
            // The pre-3.18 kernel cleared the flag too, but left the
            // page protection writable: `softdirty_writenotify_bug` makes
            // the fault path ignore the cleared flag.
            v.flags = v.flags.without(VmFlags::SOFTDIRTY);
            if v.flags.contains(VmFlags::PFNMAP) {
                continue;
            }
            let (a, b) = (v.start / PAGE_SIZE, v.end / PAGE_SIZE);
            let present: Vec<u64> = self
                .pt
                .range(a, b)
                .into_iter()
                .filter(|(_, p)| matches!(p, Pte::Present(_)))
                .map(|(vpn, _)| vpn)
                .collect();
            for vpn in present {
                self.pt.update(vpn, |e| {
                    e.write = false;
                    e.soft_dirty = false;
                });
            }
        }
    }

    /// Types 1-3: clear young on normal pages of the selected VMAs.
    fn clear_young(&mut self, which: u32) {
        let starts: Vec<(u64, u64)> = self
            .vmas
            .iter()
            .filter(|v| !v.flags.contains(VmFlags::PFNMAP))
            .filter(|v| match which {
                kind::ANON => v.file.is_none(),
                kind::MAPPED => v.file.is_some(),
                _ => true,
            })
            .map(|v| (v.start, v.end))
            .collect();
        for (s, e) in starts {
            let present: Vec<u64> = self
                .pt
                .range(s / PAGE_SIZE, e / PAGE_SIZE)
                .into_iter()
                .filter(|(_, p)| p.present().is_some_and(|p| !p.page.is_zero_page()))
                .map(|(vpn, _)| vpn)
                .collect();
            for vpn in present {
                self.pt.update(vpn, |e| e.young = false);
            }
        }
    }
}
