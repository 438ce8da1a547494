//! munmap(2) and the unmapping every other operation uses
//! (mm/vma.c: do_vmi_munmap, vms_gather_munmap_vmas, and the zap of the
//! page tables in vms_complete_munmap_vmas).

use crate::{
    addr::{PAGE_SIZE, is_page_aligned, page_align},
    errno::{Errno, KResult},
    mm::Mm,
};

impl Mm {
    /// munmap(addr, len).
    pub fn munmap(&mut self, addr: u64, len: u64) -> KResult<()> {
        let (start, end) = self.munmap_range(addr, len)?;
        self.do_munmap(start, end)
    }

    /// munmap()'s argument checks: the page-aligned range to unmap.
    pub(crate) fn munmap_range(&self, addr: u64, len: u64) -> KResult<(u64, u64)> {
        let task = self.config.task_size;
        if !is_page_aligned(addr) || addr > task || len > task - addr {
            return Err(Errno::EINVAL);
        }
        let end = addr + page_align(len).ok_or(Errno::EINVAL)?;
        if end == addr {
            return Err(Errno::EINVAL);
        }
        Ok((addr, end))
    }

    /// Remove every VMA in `[start, end)` (page aligned), splitting the
    /// ones that straddle the edges, and clear their page tables. Only a
    /// split that cuts one VMA in three checks the map count.
    pub(crate) fn do_munmap(&mut self, start: u64, end: u64) -> KResult<()> {
        self.munmap_gather(start, end)?;
        self.munmap_complete(start, end);
        Ok(())
    }

    /// vms_gather_munmap_vmas(): split the VMAs straddling the edges of
    /// `[start, end)`. Splits stay made even if the caller then gives up
    /// (mmap's vms_abort_munmap_vmas only puts the VMAs back).
    pub(crate) fn munmap_gather(&mut self, start: u64, end: u64) -> KResult<()> {
        let Some(first) = self.vmas.find(start).filter(|v| v.start < end) else {
            return Ok(());
        };
        let (fstart, fend) = (first.start, first.end);
        if start > fstart {
            if end < fend && self.vmas.len() >= self.config.max_map_count {
                return Err(Errno::ENOMEM);
            }
            self.vmas.split(start);
        }
        if self.vmas.lookup(end).is_some_and(|v| v.start < end) {
            self.vmas.split(end);
        }
        Ok(())
    }

    /// vms_complete_munmap_vmas(): remove the VMAs inside `[start, end)`
    /// (already split at its edges) and clear their page tables.
    pub(crate) fn munmap_complete(&mut self, start: u64, end: u64) {
        let detached = self.munmap_detach(start, end);
        zap_detached(&self.pt, &detached, start, end);
    }

    /// The first half of vms_complete_munmap_vmas(): take the VMAs inside
    /// `[start, end)` out of the tree; returns what the zap needs. The
    /// concurrent engine downgrades mmap_lock between this and
    /// [`zap_detached`], as the kernel does for munmap(2).
    pub(crate) fn munmap_detach(&mut self, start: u64, end: u64) -> Vec<(u64, u64, bool)> {
        self.vmas
            .starts_in(start, end)
            .into_iter()
            .map(|s| {
                let v = self.vmas.remove(s).expect("listed");
                (v.start, v.end, v.is_shmem())
            })
            .collect()
    }

    /// Clear the PTEs of `[start, end)`; markers too when `markers`.
    pub(crate) fn zap_range(&mut self, start: u64, end: u64, shmem: bool, markers: bool) {
        let _ = self
            .pt
            .walk(start / PAGE_SIZE, end / PAGE_SIZE, false, |_, slot| {
                let pte = slot.get();
                if pte.present().is_some() || (markers && !pte.is_none()) {
                    slot.set(crate::pgtable::Pte::None, shmem);
                }
                std::ops::ControlFlow::Continue(())
            });
    }
}

/// The second half of vms_complete_munmap_vmas(): clear the page tables of
/// detached VMAs (markers too) and free the page-table pages left empty.
pub(crate) fn zap_detached(
    pt: &crate::pgtable::PageTables,
    detached: &[(u64, u64, bool)],
    start: u64,
    end: u64,
) {
    for &(s, e, shmem) in detached {
        pt.clear_range(s / PAGE_SIZE, e / PAGE_SIZE, shmem);
    }
    pt.free_empty(start / PAGE_SIZE, end / PAGE_SIZE);
}
