//! Memory accesses and page faults (arch/x86/mm/fault.c do_user_addr_fault,
//! access_error; mm/memory.c handle_mm_fault, do_anonymous_page, do_fault,
//! do_read_fault/do_cow_fault/do_shared_fault, do_wp_page).
//!
//! An access first meets the "hardware": a present PTE whose permissions
//! allow it completes (setting young, and dirty for writes; the hardware
//! never sets soft-dirty). Otherwise the access faults with an x86 error
//! code, the fault is counted by kind, and the fault handler either
//! installs or upgrades the PTE (and the access is retried) or reports
//! SIGSEGV/SIGBUS to the caller.

use crate::{
    addr::PAGE_SIZE,
    mm::Mm,
    page::Page,
    pgtable::{Marker, PresentPte, Pte},
    stats::FaultKind,
    vm_flags::VmFlags,
    vma::Vma,
};

/// x86 page-fault error code bits (arch/x86/include/asm/trap_pf.h).
pub mod pf {
    /// Protection violation (0: the page was not present).
    pub const PROT: u64 = 1;
    /// Write access.
    pub const WRITE: u64 = 2;
    /// User-mode access.
    pub const USER: u64 = 4;
    /// Instruction fetch.
    pub const INSTR: u64 = 0x10;
    /// Protection-key violation.
    pub const PK: u64 = 0x20;
}

/// The execute-only protection key (x86 `execute_only_pkey()`).
pub const EXEC_ONLY_PKEY: u64 = 1;

/// Fault-around window (fault_around_bytes default, 64 KiB).
const FAULT_AROUND_PAGES: u64 = 16;

/// Kind of memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Load.
    Read,
    /// Store.
    Write,
    /// Instruction fetch.
    Exec,
}

/// Why SIGSEGV was raised (si_code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegvCode {
    /// No mapping (or a guard marker).
    MapErr,
    /// The mapping does not allow the access.
    AccErr,
    /// A protection key does not allow it.
    PkuErr,
}

/// An access that did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// SIGSEGV.
    Segv(SegvCode),
    /// SIGBUS (a file page beyond the end of the file).
    Bus,
}

/// What handle_mm_fault() returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultResult {
    /// The PTE now allows the access (or will after a retry).
    Done,
    /// VM_FAULT_SIGSEGV.
    Segv,
    /// VM_FAULT_SIGBUS.
    Bus,
}

impl Mm {
    /// Read the byte at `addr`.
    pub fn read(&mut self, addr: u64) -> Result<u8, AccessError> {
        self.access(addr, Access::Read, 0)
    }

    /// Write `value` at `addr`.
    pub fn write(&mut self, addr: u64, value: u8) -> Result<(), AccessError> {
        self.access(addr, Access::Write, value).map(|_| ())
    }

    /// Fetch an instruction at `addr`; returns the byte there.
    pub fn exec(&mut self, addr: u64) -> Result<u8, AccessError> {
        self.access(addr, Access::Exec, 0)
    }

    /// Whether protection keys deny `access` to this VMA (the execute-only
    /// key denies data accesses).
    fn pkey_denies(&self, vma: &Vma, access: Access) -> bool {
        self.config.exec_only_pkey && vma.flags.pkey() == EXEC_ONLY_PKEY && access != Access::Exec
    }

    /// One access, with as many faults as it takes (at most three: e.g.
    /// an exec of an absent page of a non-executable VMA maps the page,
    /// then faults on NX).
    pub fn access(&mut self, addr: u64, access: Access, value: u8) -> Result<u8, AccessError> {
        for _ in 0..4 {
            let code = match self.hardware(addr, access) {
                Ok(()) => return Ok(self.complete(addr, access, value)),
                Err(code) => code,
            };
            self.count_fault(FaultKind::from_x86_error_code(code));
            if let Err(e) = self.do_user_addr_fault(addr, code) {
                self.counters.segv += u64::from(matches!(e, AccessError::Segv(_)));
                return Err(e);
            }
        }
        unreachable!("a fault handler that succeeded leaves a usable PTE")
    }

    /// The MMU's verdict: Ok, or the error code of the fault it raises.
    fn hardware(&self, addr: u64, access: Access) -> Result<(), u64> {
        let mut code = pf::USER;
        match access {
            Access::Read => {}
            Access::Write => code |= pf::WRITE,
            Access::Exec => code |= pf::INSTR,
        }
        let Pte::Present(p) = self.pt.get(addr / PAGE_SIZE) else {
            return Err(code);
        };
        code |= pf::PROT;
        let vma = self.vmas.lookup(addr).expect("present PTE inside a VMA");
        if self.pkey_denies(vma, access) {
            return Err(code | pf::PK);
        }
        // PROT_NONE PTEs are present but inaccessible (_PAGE_PROTNONE).
        if !vma.flags.intersects(VmFlags::ACCESS) {
            return Err(code);
        }
        match access {
            Access::Write if !p.write => Err(code),
            Access::Exec if !vma.flags.contains(VmFlags::EXEC) => Err(code),
            _ => Ok(()),
        }
    }

    /// The access completes: young (and dirty for a store, set by the
    /// hardware, so not soft-dirty), then the data.
    fn complete(&mut self, addr: u64, access: Access, value: u8) -> u8 {
        let vpn = addr / PAGE_SIZE;
        let off = addr & (PAGE_SIZE - 1);
        self.pt.update(vpn, |p| {
            p.young = true;
            if access == Access::Write {
                p.dirty = true;
            }
        });
        let page = self
            .pt
            .get(vpn)
            .present()
            .expect("just checked")
            .page
            .clone();
        match access {
            Access::Write => {
                page.write(off, value);
                0
            }
            _ => page.read(off),
        }
    }

    /// do_user_addr_fault(): find the VMA, check the access, handle.
    fn do_user_addr_fault(&mut self, addr: u64, code: u64) -> Result<(), AccessError> {
        let Some(vma) = self.vmas.lookup(addr) else {
            return Err(AccessError::Segv(SegvCode::MapErr));
        };
        if let Some(c) = self.access_error(code, vma) {
            return Err(AccessError::Segv(c));
        }
        let write = code & pf::WRITE != 0;
        match self.handle_mm_fault(addr, write) {
            FaultResult::Done => Ok(()),
            FaultResult::Segv => Err(AccessError::Segv(SegvCode::MapErr)),
            FaultResult::Bus => Err(AccessError::Bus),
        }
    }

    /// access_error() (arch/x86/mm/fault.c).
    fn access_error(&self, code: u64, vma: &Vma) -> Option<SegvCode> {
        if code & pf::PK != 0 {
            return Some(SegvCode::PkuErr);
        }
        let access = if code & pf::WRITE != 0 {
            Access::Write
        } else if code & pf::INSTR != 0 {
            Access::Exec
        } else {
            Access::Read
        };
        if self.pkey_denies(vma, access) {
            return Some(SegvCode::PkuErr);
        }
        if code & pf::WRITE != 0 {
            return (!vma.flags.contains(VmFlags::WRITE)).then_some(SegvCode::AccErr);
        }
        if code & pf::PROT != 0 {
            return Some(SegvCode::AccErr);
        }
        (!vma.flags.intersects(VmFlags::ACCESS)).then_some(SegvCode::AccErr)
    }

    /// Whether a shared writable VMA wants write notifications
    /// (vma_wants_writenotify): its PTEs are then installed read-only so
    /// that the first write faults.
    pub(crate) fn wants_writenotify(&self, vma: &Vma) -> bool {
        if !vma.flags.contains(VmFlags::WRITE | VmFlags::SHARED) {
            return false;
        }
        // Soft-dirty tracking is active while VM_SOFTDIRTY is clear; the
        // pre-2014 kernel forgot to ask for write notifications then.
        if self.config.soft_dirty
            && !vma.flags.contains(VmFlags::SOFTDIRTY)
            && !self.config.softdirty_writenotify_bug
        {
            return true;
        }
        // Regular files can write back (page_mkwrite); shmem cannot.
        vma.file
            .as_ref()
            .is_some_and(|f| *f.kind() == crate::file::FileKind::Regular)
    }

    /// Whether a new PTE of this VMA for a read fault is writable
    /// (vm_page_prot of a shared writable mapping without write-notify).
    fn read_fault_pte_writable(&self, vma: &Vma) -> bool {
        vma.flags.contains(VmFlags::WRITE | VmFlags::SHARED) && !self.wants_writenotify(vma)
    }

    /// handle_mm_fault() for `addr` in a VMA whose access was already
    /// checked. Also used by populate (GUP), which does not count faults.
    pub(crate) fn handle_mm_fault(&mut self, addr: u64, write: bool) -> FaultResult {
        let vpn = addr / PAGE_SIZE;
        match self.pt.get(vpn).clone() {
            Pte::None => {
                let vma = self.vmas.lookup(addr).expect("checked").clone();
                if vma.is_anonymous() {
                    self.do_anonymous_page(&vma, addr, write)
                } else {
                    self.do_fault(&vma, addr, write)
                }
            }
            Pte::Marker(Marker::Guard) => FaultResult::Segv,
            Pte::Present(p) => {
                if write && !p.write {
                    let vma = self.vmas.lookup(addr).expect("checked").clone();
                    self.do_wp_page(&vma, addr, &p);
                } else if write {
                    self.pt.update(vpn, |e| e.dirty = true);
                }
                self.pt.update(vpn, |e| e.young = true);
                FaultResult::Done
            }
        }
    }

    /// A new PTE for a fault that dirties the page (pte_mkdirty also sets
    /// the soft-dirty bit).
    fn dirty_pte(page: crate::page::PageRef, write: bool) -> Pte {
        Pte::Present(PresentPte {
            page,
            write,
            dirty: true,
            young: true,
            soft_dirty: true,
        })
    }

    fn clean_pte(page: crate::page::PageRef, write: bool) -> Pte {
        Pte::Present(PresentPte {
            page,
            write,
            dirty: false,
            young: true,
            soft_dirty: false,
        })
    }

    /// do_anonymous_page(): reads map the zero page read-only; writes get a
    /// new exclusive page (and the VMA an anon_vma).
    fn do_anonymous_page(&mut self, vma: &Vma, addr: u64, write: bool) -> FaultResult {
        let vpn = addr / PAGE_SIZE;
        if !write {
            self.pt
                .set(vpn, Self::clean_pte(Page::zero(), false), false);
            return FaultResult::Done;
        }
        self.anon_vma_prepare(vma.start);
        let writable = vma.flags.contains(VmFlags::WRITE);
        let pte = if writable {
            Self::dirty_pte(Page::new_anon(), true)
        } else {
            Self::clean_pte(Page::new_anon(), false)
        };
        self.pt.set(vpn, pte, false);
        self.update_hiwater();
        FaultResult::Done
    }

    /// do_fault(): a file (or shmem) page.
    fn do_fault(&mut self, vma: &Vma, addr: u64, write: bool) -> FaultResult {
        let file = vma.file.clone().expect("file VMA");
        let index = vma.page_index(addr);
        let vpn = addr / PAGE_SIZE;
        let shmem = vma.is_shmem();
        let shared = vma.flags.contains(VmFlags::SHARED);
        if !write {
            // do_read_fault: map the cached pages around first; the
            // target page may still be beyond the end of the file.
            self.fault_around(vma, addr);
            if !file.has_page(index) {
                return FaultResult::Bus;
            }
            if self.pt.get(vpn).is_none() {
                let page = file.page(index);
                self.pt.set(
                    vpn,
                    Self::clean_pte(page, self.read_fault_pte_writable(vma)),
                    shmem,
                );
            }
        } else if !shared {
            // do_cow_fault: vmf_anon_prepare() comes before __do_fault()
            // finds the page missing, so even a SIGBUS leaves the VMA
            // with an anon_vma (which decides later merges).
            self.anon_vma_prepare(vma.start);
            if !file.has_page(index) {
                return FaultResult::Bus;
            }
            let copy = Page::copy_of(&file.page(index));
            let writable = vma.flags.contains(VmFlags::WRITE);
            self.pt.set(vpn, Self::dirty_pte(copy, writable), false);
        } else if !file.has_page(index) {
            return FaultResult::Bus;
        } else {
            // do_shared_fault: the page-cache page itself, dirty.
            self.pt
                .set(vpn, Self::dirty_pte(file.page(index), true), shmem);
        }
        self.update_hiwater();
        FaultResult::Done
    }

    /// do_fault_around(): map the already cached pages of a 16-page window
    /// around `addr`, skipping entries that are not empty. The window
    /// starts at the fault's PTE index aligned down to 16, or at the VMA's
    /// start if that is later, and stops at the VMA's end and the end of
    /// the page table (mm/memory.c).
    fn fault_around(&mut self, vma: &Vma, addr: u64) {
        let file = vma.file.clone().expect("file VMA");
        let ptrs = crate::addr::PTRS_PER_PTE;
        let vpn = addr / PAGE_SIZE;
        let table_base = vpn - vpn % ptrs;
        let pte_off = vpn % ptrs;
        let vma_off = (addr - vma.start) / PAGE_SIZE;
        let vma_pages = (vma.end - vma.start) / PAGE_SIZE;
        let from = (pte_off & !(FAULT_AROUND_PAGES - 1)).max(pte_off - pte_off.min(vma_off));
        let to = (from + FAULT_AROUND_PAGES)
            .min(ptrs)
            .min(pte_off + vma_pages - vma_off);
        let writable = self.read_fault_pte_writable(vma);
        let shmem = vma.is_shmem();
        for off in from..to {
            let v = table_base + off;
            let a = v * PAGE_SIZE;
            if v == vpn || !self.pt.get(v).is_none() {
                continue;
            }
            let index = vma.page_index(a);
            if !file.has_page(index) {
                continue;
            }
            if let Some(page) = file.cached(index) {
                self.pt.set(v, Self::clean_pte(page, writable), shmem);
            }
        }
    }

    /// do_wp_page(): a write to a present read-only PTE of a writable VMA.
    fn do_wp_page(&mut self, vma: &Vma, addr: u64, pte: &PresentPte) {
        let vpn = addr / PAGE_SIZE;
        let page = &pte.page;
        let reuse = |e: &mut PresentPte| {
            e.write = true;
            e.dirty = true;
            e.soft_dirty = true;
            e.young = true;
        };
        if vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) {
            // Shared mappings are never copied: write-notify done, reuse.
            self.pt.update(vpn, reuse);
            return;
        }
        if page.is_anon() && (page.anon_exclusive() || page.mapcount() == 1) {
            page.set_anon_exclusive(true);
            self.pt.update(vpn, reuse);
            return;
        }
        // wp_page_copy: the zero page, a page-cache page, or an anon page
        // still shared after fork.
        self.anon_vma_prepare(vma.start);
        let new = if page.is_zero_page() {
            Page::new_anon()
        } else {
            Page::copy_of(page)
        };
        self.pt.set(vpn, Self::dirty_pte(new, true), vma.is_shmem());
        self.update_hiwater();
    }
}
