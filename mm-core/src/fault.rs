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

use std::ops::ControlFlow;

use crate::{
    addr::PAGE_SIZE,
    mm::{Mm, MmConfig},
    page::{Page, PageRef},
    pgtable::{Marker, PageTables, PresentPte, Pte, PteSlot},
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
    /// VM_FAULT_RETRY: a speculative fault found its VMA changed under it
    /// and changed nothing; the caller retries under a lock.
    Retry,
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

    /// One access, with as many faults as it takes (at most three: e.g.
    /// an exec of an absent page of a non-executable VMA maps the page,
    /// then faults on NX).
    pub fn access(&mut self, addr: u64, access: Access, value: u8) -> Result<u8, AccessError> {
        for _ in 0..4 {
            let vma = self.vmas.lookup(addr);
            let code = match hardware_access(&self.pt, &self.config, vma, addr, access, value) {
                Ok(v) => return Ok(v),
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

    /// do_user_addr_fault(): find the VMA, check the access, handle.
    fn do_user_addr_fault(&mut self, addr: u64, code: u64) -> Result<(), AccessError> {
        let Some(vma) = self.vmas.lookup(addr) else {
            return Err(AccessError::Segv(SegvCode::MapErr));
        };
        if let Some(c) = access_error(&self.config, code, vma) {
            return Err(AccessError::Segv(c));
        }
        let write = code & pf::WRITE != 0;
        fault_result(self.handle_mm_fault(addr, write))
    }

    /// handle_mm_fault() for `addr` in a VMA whose access was already
    /// checked; prepares the anon_vma first if the fault needs one. Also
    /// used by populate (GUP), which does not count faults.
    pub(crate) fn handle_mm_fault(&mut self, addr: u64, write: bool) -> FaultResult {
        let v = self.vmas.lookup(addr).expect("checked");
        if needs_anon_vma(v, write) {
            let start = v.start;
            self.anon_vma_prepare(start);
        }
        let vma = self.vmas.lookup(addr).expect("checked").clone();
        let env = FaultEnv {
            pt: &self.pt,
            config: &self.config,
            vma: &vma,
            validate: &|| true,
        };
        let r = env.handle_mm_fault(addr, write);
        if r == FaultResult::Done {
            self.update_hiwater();
        }
        r
    }

    /// Whether a shared writable VMA wants write notifications
    /// (vma_wants_writenotify).
    pub(crate) fn wants_writenotify(&self, vma: &Vma) -> bool {
        wants_writenotify(&self.config, vma)
    }
}

/// Whether a PTE already allows an access (a read, or a write with
/// `write`) without a fault, as GUP checks before faulting a page in.
pub(crate) fn allows(pte: &Pte, write: bool) -> bool {
    matches!(pte, Pte::Present(p) if !write || p.write)
}

/// The signal an unsuccessful handle_mm_fault() raises.
pub(crate) const fn fault_result(r: FaultResult) -> Result<(), AccessError> {
    match r {
        FaultResult::Done | FaultResult::Retry => Ok(()),
        FaultResult::Segv => Err(AccessError::Segv(SegvCode::MapErr)),
        FaultResult::Bus => Err(AccessError::Bus),
    }
}

/// Whether protection keys deny `access` to this VMA (the execute-only
/// key denies data accesses).
fn pkey_denies(config: &MmConfig, vma: &Vma, access: Access) -> bool {
    config.exec_only_pkey && vma.flags.pkey() == EXEC_ONLY_PKEY && access != Access::Exec
}

/// The x86 error code bits of an access, before the PTE is looked at.
pub(crate) const fn access_code(access: Access) -> u64 {
    pf::USER
        | match access {
            Access::Read => 0,
            Access::Write => pf::WRITE,
            Access::Exec => pf::INSTR,
        }
}

/// The MMU: if the PTE of `addr` allows the access, complete it (young,
/// and dirty for a store, set by the hardware, so not soft-dirty; then the
/// data) and return the byte read; otherwise return the error code of the
/// fault it raises. `vma` is the VMA holding `addr`, whose flags stand for
/// the permission bits of a present PTE. An entry that is certainly
/// absent faults at once, without the PTE lock (as the hardware's walk
/// takes none: [`PageTables::may_be_present`]); otherwise check and access
/// happen under the PTE lock, so a concurrent zap is either before or
/// after the access.
pub(crate) fn hardware_access(
    pt: &PageTables,
    config: &MmConfig,
    vma: Option<&Vma>,
    addr: u64,
    access: Access,
    value: u8,
) -> Result<u8, u64> {
    hardware_access_with(pt, config, addr, access, value, |check| Some(check(vma)))
        .unwrap_or(Err(access_code(access)))
}

/// [`hardware_access`] where the VMA is found by `vma`, called under the
/// PTE lock and only if the PTE is present (an absent PTE faults whatever
/// the VMA): it passes the VMA it finds (borrowed) to the check it is
/// given and returns the check's answer, or None when it cannot tell
/// without waiting; then nothing was done and None is returned.
pub(crate) fn hardware_access_with(
    pt: &PageTables,
    config: &MmConfig,
    addr: u64,
    access: Access,
    value: u8,
    vma: impl FnOnce(&mut dyn FnMut(Option<&Vma>) -> Result<u8, u64>) -> Option<Result<u8, u64>>,
) -> Option<Result<u8, u64>> {
    let code = access_code(access);
    let vpn = addr / PAGE_SIZE;
    let r = pt.with_pte_if_present(vpn, |slot| {
        if !matches!(slot.get(), Pte::Present(_)) {
            return Some(Err(code));
        }
        vma(&mut |found| present_access(slot, config, found, addr, access, value))
    });
    r.unwrap_or(Some(Err(code)))
}

/// The MMU on a present PTE (in `slot`, locked) of `vma`, the VMA holding
/// `addr` (None: no VMA holds it).
fn present_access(
    slot: &mut PteSlot<'_>,
    config: &MmConfig,
    vma: Option<&Vma>,
    addr: u64,
    access: Access,
    value: u8,
) -> Result<u8, u64> {
    let code = access_code(access);
    let Pte::Present(p) = slot.get() else {
        return Err(code);
    };
    let Some(vma) = vma.filter(|v| v.contains(addr)) else {
        // A present PTE outside any VMA: only while a racing unmap is
        // between its VMA and page-table updates. Fault as if not
        // present; the fault handler decides under its lock.
        return Err(code);
    };
    let code = code | pf::PROT;
    if pkey_denies(config, vma, access) {
        return Err(code | pf::PK);
    }
    // PROT_NONE PTEs are present but inaccessible (_PAGE_PROTNONE).
    if !vma.flags.intersects(VmFlags::ACCESS) {
        return Err(code);
    }
    match access {
        Access::Write if !p.write => return Err(code),
        Access::Exec if !vma.flags.contains(VmFlags::EXEC) => return Err(code),
        _ => {}
    }
    slot.update(|p| {
        p.young = true;
        if access == Access::Write {
            p.dirty = true;
        }
    });
    let Pte::Present(p) = slot.get() else {
        unreachable!("checked above, under the PTE lock")
    };
    let off = addr & (PAGE_SIZE - 1);
    Ok(match access {
        Access::Write => {
            p.page.write(off, value);
            0
        }
        _ => p.page.read(off),
    })
}

/// access_error() (arch/x86/mm/fault.c).
pub(crate) fn access_error(config: &MmConfig, code: u64, vma: &Vma) -> Option<SegvCode> {
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
    if pkey_denies(config, vma, access) {
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

/// Whether the fault may need the VMA's anon_vma (vmf_anon_prepare(): a
/// write to a private mapping may create an anonymous page) and the VMA
/// has none yet. A fault under a per-VMA lock returns VM_FAULT_RETRY then
/// and is retried under mmap_lock, which may allocate it.
pub(crate) fn needs_anon_vma(vma: &Vma, write: bool) -> bool {
    write && !vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) && vma.anon_vma.is_none()
}

/// Whether a shared writable VMA wants write notifications
/// (vma_wants_writenotify): its PTEs are then installed read-only so
/// that the first write faults.
pub(crate) fn wants_writenotify(config: &MmConfig, vma: &Vma) -> bool {
    if !vma.flags.contains(VmFlags::WRITE | VmFlags::SHARED) {
        return false;
    }
    // Soft-dirty tracking is active while VM_SOFTDIRTY is clear; the
    // pre-2014 kernel forgot to ask for write notifications then.
    if config.soft_dirty
        && !vma.flags.contains(VmFlags::SOFTDIRTY)
        && !config.softdirty_writenotify_bug
    {
        return true;
    }
    // Regular files can write back (page_mkwrite); shmem cannot.
    vma.file
        .as_ref()
        .is_some_and(|f| *f.kind() == crate::file::FileKind::Regular)
}

/// A new PTE for a fault that dirties the page (pte_mkdirty also sets
/// the soft-dirty bit).
fn dirty_pte(page: PageRef, write: bool) -> Pte {
    Pte::Present(PresentPte {
        page,
        write,
        dirty: true,
        young: true,
        soft_dirty: true,
    })
}

fn clean_pte(page: PageRef, write: bool) -> Pte {
    Pte::Present(PresentPte {
        page,
        write,
        dirty: false,
        young: true,
        soft_dirty: false,
    })
}

/// What the fault handlers work on: the page tables, the configuration,
/// and the VMA (a copy of its fields, read under whichever lock the fault
/// path holds, or speculatively). Every PTE decision is made and committed
/// under the PTE lock, so concurrent faults on one page install it once
/// (the kernel's `vmf_pte_changed` checks), and `validate` is called under
/// that lock just before any change: a speculative fault (seed 000) checks
/// there that its VMA did not change, and `false` abandons the fault with
/// [`FaultResult::Retry`], having changed nothing.
pub(crate) struct FaultEnv<'a> {
    pub pt: &'a PageTables,
    pub config: &'a MmConfig,
    pub vma: &'a Vma,
    pub validate: &'a dyn Fn() -> bool,
}

/// A decision taken under the PTE lock.
enum Step {
    Result(FaultResult),
    /// The entry is empty in a file VMA: do_fault(), which looks at the
    /// page cache first.
    File,
}

impl FaultEnv<'_> {
    /// Whether a new PTE of this VMA for a read fault is writable
    /// (vm_page_prot of a shared writable mapping without write-notify).
    fn read_fault_pte_writable(&self) -> bool {
        self.vma.flags.contains(VmFlags::WRITE | VmFlags::SHARED)
            && !wants_writenotify(self.config, self.vma)
    }

    /// handle_mm_fault() for `addr` in a VMA whose access was already
    /// checked (and whose anon_vma exists if [`needs_anon_vma`] says so).
    pub(crate) fn handle_mm_fault(&self, addr: u64, write: bool) -> FaultResult {
        self.handle_mm_fault_then(addr, write, None).0
    }

    /// [`Self::handle_mm_fault`], then, if it completed and `retry` is
    /// given, the access made again by the MMU ([`hardware_access`]) with
    /// this VMA: under the same PTE lock hold where the fault was decided
    /// there (an anonymous page, or a present entry), as the hardware
    /// retries on the entry just made before anything can take it away;
    /// else under a new one.
    pub(crate) fn handle_mm_fault_then(
        &self,
        addr: u64,
        write: bool,
        retry: Option<(Access, u8)>,
    ) -> (FaultResult, Option<Result<u8, u64>>) {
        let vpn = addr / PAGE_SIZE;
        let (step, retried) = self
            .pt
            .with_pte(vpn, true, |slot| {
                let step = self.handle_pte(slot, write);
                let retried = match (&step, retry) {
                    (Step::Result(FaultResult::Done), Some((access, value))) => Some(
                        present_access(slot, self.config, Some(self.vma), addr, access, value),
                    ),
                    _ => None,
                };
                (step, retried)
            })
            .expect("allocated");
        let r = match step {
            Step::Result(r) => r,
            Step::File => self.do_fault(addr, write),
        };
        let retried = retried.or_else(|| match retry {
            Some((access, value)) if matches!(r, FaultResult::Done) => Some(hardware_access(
                self.pt,
                self.config,
                Some(self.vma),
                addr,
                access,
                value,
            )),
            _ => None,
        });
        (r, retried)
    }

    /// The part of handle_mm_fault() decided under the PTE lock.
    fn handle_pte(&self, slot: &mut PteSlot<'_>, write: bool) -> Step {
        match slot.get() {
            Pte::Marker(Marker::Guard) => Step::Result(FaultResult::Segv),
            Pte::None if !self.vma.is_anonymous() => Step::File,
            _ if !(self.validate)() => Step::Result(FaultResult::Retry),
            Pte::None => Step::Result(self.do_anonymous_page(slot, write)),
            Pte::Present(p) => {
                if write && !p.write {
                    let p = p.clone();
                    self.do_wp_page(slot, &p);
                } else if write {
                    slot.update(|e| e.dirty = true);
                }
                slot.update(|e| e.young = true);
                Step::Result(FaultResult::Done)
            }
        }
    }

    /// handle_mm_fault() for every page of `[start, end)` (inside this
    /// anonymous VMA) whose PTE does not allow the access yet, a
    /// page-table page at a time (the GUP walk of populate). Stops at the
    /// first fault that fails and returns it; `on_done` is called after
    /// each completed fault with the page's number.
    pub(crate) fn fault_in_anon(
        &self,
        start: u64,
        end: u64,
        write: bool,
        mut on_done: impl FnMut(u64),
    ) -> FaultResult {
        debug_assert!(self.vma.is_anonymous());
        let mut failed = FaultResult::Done;
        let _ = self
            .pt
            .walk(start / PAGE_SIZE, end / PAGE_SIZE, true, |vpn, slot| {
                if allows(slot.get(), write) {
                    return ControlFlow::Continue(());
                }
                match self.handle_pte(slot, write) {
                    Step::Result(FaultResult::Done) => on_done(vpn),
                    Step::Result(FaultResult::Retry) => {}
                    Step::Result(r) => {
                        failed = r;
                        return ControlFlow::Break(());
                    }
                    Step::File => unreachable!("an anonymous VMA"),
                }
                ControlFlow::Continue(())
            });
        failed
    }

    /// do_anonymous_page(): reads map the zero page read-only; writes get
    /// a new exclusive page.
    fn do_anonymous_page(&self, slot: &mut PteSlot<'_>, write: bool) -> FaultResult {
        if !write {
            slot.set(clean_pte(Page::zero(), false), false);
            return FaultResult::Done;
        }
        let pte = if self.vma.flags.contains(VmFlags::WRITE) {
            dirty_pte(Page::new_anon(), true)
        } else {
            clean_pte(Page::new_anon(), false)
        };
        slot.set(pte, false);
        FaultResult::Done
    }

    /// Install `pte` at `vpn` if the entry is still empty (finish_fault's
    /// vmf_pte_changed check); a racing fault that installed one first
    /// wins, and the access is retried on it.
    fn install_if_none(&self, vpn: u64, pte: impl FnOnce() -> Pte, shmem: bool) -> FaultResult {
        self.pt
            .with_pte(vpn, true, |slot| {
                if !slot.get().is_none() {
                    return FaultResult::Done;
                }
                if !(self.validate)() {
                    return FaultResult::Retry;
                }
                slot.set(pte(), shmem);
                FaultResult::Done
            })
            .expect("allocated")
    }

    /// do_fault(): a file (or shmem) page.
    fn do_fault(&self, addr: u64, write: bool) -> FaultResult {
        let vma = self.vma;
        let file = vma.file.clone().expect("file VMA");
        let index = vma.page_index(addr);
        let vpn = addr / PAGE_SIZE;
        let shmem = vma.is_shmem();
        let shared = vma.flags.contains(VmFlags::SHARED);
        if !write {
            // do_read_fault: map the cached pages around first; the
            // target page may still be beyond the end of the file.
            if self.fault_around(addr) == FaultResult::Retry {
                return FaultResult::Retry;
            }
            if !file.has_page(index) {
                return FaultResult::Bus;
            }
            let writable = self.read_fault_pte_writable();
            self.install_if_none(vpn, || clean_pte(file.page(index), writable), shmem)
        } else if !shared {
            // do_cow_fault: the anon_vma was prepared before __do_fault()
            // finds the page missing, so even a SIGBUS leaves the VMA
            // with an anon_vma (which decides later merges).
            if !file.has_page(index) {
                return FaultResult::Bus;
            }
            let writable = vma.flags.contains(VmFlags::WRITE);
            self.install_if_none(
                vpn,
                || dirty_pte(Page::copy_of(&file.page(index)), writable),
                false,
            )
        } else if !file.has_page(index) {
            FaultResult::Bus
        } else {
            // do_shared_fault: the page-cache page itself, dirty.
            self.install_if_none(vpn, || dirty_pte(file.page(index), true), shmem)
        }
    }

    /// do_fault_around(): map the already cached pages of a 16-page window
    /// around `addr`, skipping entries that are not empty. The window
    /// starts at the fault's PTE index aligned down to 16, or at the VMA's
    /// start if that is later, and stops at the VMA's end and the end of
    /// the page table (mm/memory.c).
    fn fault_around(&self, addr: u64) -> FaultResult {
        let vma = self.vma;
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
        let writable = self.read_fault_pte_writable();
        let shmem = vma.is_shmem();
        for off in from..to {
            let v = table_base + off;
            if v == vpn {
                continue;
            }
            let index = vma.page_index(v * PAGE_SIZE);
            if !file.has_page(index) {
                continue;
            }
            if let Some(page) = file.cached(index) {
                if self.install_if_none(v, || clean_pte(page, writable), shmem)
                    == FaultResult::Retry
                {
                    return FaultResult::Retry;
                }
            }
        }
        FaultResult::Done
    }

    /// do_wp_page(): a write to a present read-only PTE of a writable VMA,
    /// under the PTE lock.
    fn do_wp_page(&self, slot: &mut PteSlot<'_>, pte: &PresentPte) {
        let vma = self.vma;
        let page = &pte.page;
        let reuse = |e: &mut PresentPte| {
            e.write = true;
            e.dirty = true;
            e.soft_dirty = true;
            e.young = true;
        };
        if vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) {
            // Shared mappings are never copied: write-notify done, reuse.
            slot.update(reuse);
            return;
        }
        if page.is_anon() && (page.anon_exclusive() || page.mapcount() == 1) {
            page.set_anon_exclusive(true);
            slot.update(reuse);
            return;
        }
        // wp_page_copy: the zero page, a page-cache page, or an anon page
        // still shared after fork.
        let new = if page.is_zero_page() {
            Page::new_anon()
        } else {
            Page::copy_of(page)
        };
        slot.set(dirty_pte(new, true), vma.is_shmem());
    }
}
