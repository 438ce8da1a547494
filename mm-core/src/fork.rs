//! fork(2)'s copy of the address space (kernel/fork.c dup_mmap; mm/memory.c
//! copy_page_range, vma_needs_copy, copy_present_ptes, copy_pte_marker;
//! mm/rmap.c anon_vma_fork).
//!
//! The child gets every VMA but the VM_DONTCOPY ones, without mlock
//! flags. A VMA with an anon_vma gets a new one in the child whose chain
//! links it to the parent's, which makes the child's VMA a "fork child"
//! for merging. Page tables are copied only where a lazy refault would not
//! do (the VMA has an anon_vma, maps raw PFNs, or, with VM_MAYBE_GUARD,
//! may hold guard markers); VM_WIPEONFORK VMAs start empty. Private
//! writable pages become read-only in both processes, so the first write
//! on either side copies (or reuses, once the other side is gone).
//!
//! Not modelled: DMA-pinned pages (copied at fork), userfaultfd, hugetlb.

use crate::{
    addr::PAGE_SIZE,
    mm::Mm,
    pgtable::{PageTables, Pte},
    vm_flags::VmFlags,
    vma::{AnonVma, Vma, VmaTree},
};

impl Mm {
    /// dup_mmap(): the child's address space. The parent's private
    /// writable PTEs are write-protected.
    pub fn fork(&mut self) -> Mm {
        let mut child = Mm::new(self.config.clone());
        child.start_brk = self.start_brk;
        child.brk = self.brk;
        let mut vmas = VmaTree::new();
        let pt = PageTables::new();
        let parents: Vec<Vma> = self.vmas.iter().cloned().collect();
        for vma in parents {
            if vma.flags.contains(VmFlags::DONTCOPY) {
                continue;
            }
            let mut tmp = vma.clone();
            tmp.flags = tmp.flags.without(VmFlags::LOCKED_MASK);
            let wipe = vma.flags.contains(VmFlags::WIPEONFORK);
            if wipe {
                tmp.anon_vma = None;
                tmp.fork_child = false;
            } else if vma.anon_vma.is_some() {
                // anon_vma_fork(): a new anon_vma chained to the parent's.
                tmp.anon_vma = Some(AnonVma::new());
                tmp.fork_child = true;
            }
            if !wipe && self.vma_needs_copy(&vma) {
                self.copy_page_range(&vma, &pt);
            }
            vmas.insert(tmp);
        }
        child.vmas = vmas;
        child.pt = std::sync::Arc::new(pt);
        child.counters.hiwater_rss = child.rss();
        child
    }

    /// vma_needs_copy(): whether the child needs the page tables now
    /// rather than refaulting them.
    fn vma_needs_copy(&self, vma: &Vma) -> bool {
        let mut copy_on_fork = VmFlags::PFNMAP | VmFlags::MIXEDMAP | VmFlags::UFFD_WP;
        if self.config.maybe_guard_flag {
            copy_on_fork = copy_on_fork | VmFlags::MAYBE_GUARD;
        }
        vma.flags.intersects(copy_on_fork) || vma.anon_vma.is_some()
    }

    /// copy_page_range() for one VMA into the child's tables: guard markers
    /// are copied; present pages are shared (an anonymous page stops being
    /// exclusive), made old in the child, clean in a shared child mapping,
    /// and write-protected on both sides in a COW mapping.
    fn copy_page_range(&mut self, vma: &Vma, child: &PageTables) {
        let cow = vma.flags & (VmFlags::SHARED | VmFlags::MAYWRITE) == VmFlags::MAYWRITE;
        let shared = vma.flags.contains(VmFlags::SHARED);
        let shmem = vma.is_shmem();
        let entries = self.pt.range(vma.start / PAGE_SIZE, vma.end / PAGE_SIZE);
        for (vpn, pte) in entries {
            match pte {
                Pte::None => {}
                Pte::Marker(m) => {
                    child.set(vpn, Pte::Marker(m), shmem);
                }
                Pte::Present(mut p) => {
                    if p.page.is_anon() {
                        p.page.set_anon_exclusive(false);
                    }
                    if cow && p.write {
                        self.pt.update(vpn, |e| e.write = false);
                        p.write = false;
                    }
                    if shared {
                        p.dirty = false;
                    }
                    p.young = false;
                    child.set(vpn, Pte::Present(p), shmem);
                }
            }
        }
    }
}
