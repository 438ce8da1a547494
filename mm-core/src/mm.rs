//! The address space: `struct mm_struct` (include/linux/mm_types.h) with its
//! VMA tree, page tables, brk area and counters. The system calls are
//! implemented in one module each (`mmap.rs`, `munmap.rs`, `mprotect.rs`,
//! ...), as `impl Mm` blocks.
//!
//! This is the single-threaded engine: every operation takes `&mut self`,
//! which plays the part of holding mmap_lock for write (or, for faults,
//! of holding whatever lock the fault path needs).

use crate::{
    addr::{PAGE_SIZE, TASK_SIZE},
    errno::{Errno, KResult},
    pgtable::PageTables,
    stats::{FaultCounts, FaultKind},
    vm_flags::VmFlags,
    vma::{Vma, VmaTree},
};

/// A populate walk queued by [`Mm::populate`] (see `queued_walks`): fault
/// in `[start, end)` of `vma` for writing or not.
#[derive(Debug)]
pub(crate) struct QueuedWalk {
    pub vma: crate::vma::Vma,
    pub start: u64,
    pub end: u64,
    pub write: bool,
}

/// Kernel configuration and tunables the engine models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmConfig {
    /// CONFIG_MEM_SOFT_DIRTY: new VMAs get VM_SOFTDIRTY, PTEs track
    /// soft-dirty, clear_refs 4 write-protects (seed 001).
    pub soft_dirty: bool,
    /// Reproduce the soft-dirty bug fixed in 2014 (seed 001, "mm:
    /// softdirty: enable write notifications on VMAs after VM_SOFTDIRTY
    /// cleared"): after clear_refs 4, a read fault on a shared writable
    /// mapping installs a writable PTE, so the following write is not seen
    /// as soft-dirty. Off: today's behaviour (the PTE is write-protected
    /// and the write faults and sets soft-dirty).
    pub softdirty_writenotify_bug: bool,
    /// VM_MAYBE_GUARD ("gu" in smaps, 6.19 and 6.18.y): MADV_GUARD_INSTALL
    /// marks the whole VMA; the flag is sticky, ignored by merges, and makes
    /// fork copy the VMA's page tables.
    pub maybe_guard_flag: bool,
    /// PKU hardware: PROT_EXEC-only mappings get the execute-only
    /// protection key (1), so reads and writes of them fault.
    pub exec_only_pkey: bool,
    /// vm.max_map_count.
    pub max_map_count: usize,
    /// Highest address + 1 of user mappings (TASK_SIZE).
    pub task_size: u64,
    /// Top of the top-down mmap area (mm->mmap_base).
    pub mmap_base: u64,
    /// Start of the brk area (mm->start_brk).
    pub start_brk: u64,
    /// vm.overcommit_memory = 0 (heuristic): a single charge of more
    /// pages than RAM plus swap fails with ENOMEM (mm/util.c
    /// __vm_enough_memory). `u64::MAX` disables the check.
    pub overcommit_limit_pages: u64,
}

impl Default for MmConfig {
    /// A typical distribution kernel of today (6.18.y): soft-dirty
    /// compiled in, VM_MAYBE_GUARD, the default map count limit.
    fn default() -> Self {
        Self {
            soft_dirty: true,
            softdirty_writenotify_bug: false,
            maybe_guard_flag: true,
            exec_only_pkey: true,
            max_map_count: 65530,
            task_size: TASK_SIZE,
            mmap_base: 0x7fff_f7ff_f000,
            start_brk: 0x5555_5600_0000,
            // A 24 GiB machine without swap.
            overcommit_limit_pages: 24 << 18,
        }
    }
}

/// Counters of the address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmCounters {
    /// Faults by kind, user mode (every engine access is a user access).
    pub faults: FaultCounts,
    /// Faults that ended in SIGSEGV.
    pub segv: u64,
    /// Peak RSS in pages (hiwater_rss).
    pub hiwater_rss: u64,
}

/// An address space.
#[derive(Debug)]
pub struct Mm {
    pub(crate) config: MmConfig,
    pub(crate) vmas: VmaTree,
    /// Shared with the concurrent engine's fault paths, which reach the
    /// page tables without the rest of the address space.
    pub(crate) pt: std::sync::Arc<PageTables>,
    pub(crate) start_brk: u64,
    pub(crate) brk: u64,
    pub(crate) counters: MmCounters,
    /// Leave mmap's populate (MAP_POPULATE, MAP_LOCKED) to the caller,
    /// which runs it after dropping mmap_lock for write, as
    /// vm_mmap_pgoff() does: set by the concurrent engine.
    pub(crate) defer_populate: bool,
    /// The range a deferred populate is owed for.
    pub(crate) deferred_populate: Option<(u64, u64)>,
    /// When set, populating an anonymous VMA only prepares it and queues
    /// its page-table walk here, for the concurrent engine to make
    /// without holding the address space's mutex (GUP walks under
    /// mmap_lock for read and the PTE locks, nothing else).
    pub(crate) queued_walks: Option<Vec<QueuedWalk>>,
}

impl Default for Mm {
    fn default() -> Self {
        Self::new(MmConfig::default())
    }
}

impl Mm {
    /// An empty address space.
    pub fn new(config: MmConfig) -> Self {
        let start_brk = config.start_brk;
        Self {
            config,
            vmas: VmaTree::new(),
            pt: std::sync::Arc::new(PageTables::new()),
            start_brk,
            brk: start_brk,
            counters: MmCounters::default(),
            defer_populate: false,
            deferred_populate: None,
            queued_walks: None,
        }
    }

    /// The configuration.
    pub const fn config(&self) -> &MmConfig {
        &self.config
    }

    /// The VMAs.
    pub const fn vmas(&self) -> &VmaTree {
        &self.vmas
    }

    /// The page tables.
    pub fn page_tables(&self) -> &PageTables {
        &self.pt
    }

    /// Counters.
    pub const fn counters(&self) -> &MmCounters {
        &self.counters
    }

    /// mm->map_count.
    pub fn map_count(&self) -> usize {
        self.vmas.len()
    }

    /// Current RSS in pages.
    pub fn rss(&self) -> u64 {
        let r = self.pt.rss();
        r.anon + r.file + r.shmem
    }

    pub(crate) fn count_fault(&mut self, kind: FaultKind) {
        self.counters.faults.add(kind, 1);
    }

    pub(crate) fn update_hiwater(&mut self) {
        let rss = self.rss();
        if rss > self.counters.hiwater_rss {
            self.counters.hiwater_rss = rss;
        }
    }

    /// __vm_enough_memory() under the heuristic overcommit policy: may
    /// `pages` more pages be committed?
    pub(crate) fn vm_enough_memory(&self, pages: u64) -> KResult<()> {
        if pages > self.config.overcommit_limit_pages {
            Err(Errno::ENOMEM)
        } else {
            Ok(())
        }
    }

    /// The flags a new VMA gets on top of its access flags
    /// (VM_SOFTDIRTY when soft-dirty is compiled in).
    pub(crate) fn new_vma_flags(&self) -> VmFlags {
        if self.config.soft_dirty {
            VmFlags::SOFTDIRTY
        } else {
            VmFlags::NONE
        }
    }

    /// Flags ignored when deciding whether two VMAs merge
    /// (VM_IGNORE_MERGE = VM_SOFTDIRTY | VM_STICKY).
    pub(crate) fn ignore_merge(&self) -> VmFlags {
        VmFlags::SOFTDIRTY | self.sticky()
    }

    /// Sticky flags, OR-ed into a merged VMA (VM_STICKY).
    pub(crate) fn sticky(&self) -> VmFlags {
        let mut s = VmFlags::NONE;
        if self.config.maybe_guard_flag {
            s = s | VmFlags::MAYBE_GUARD;
        }
        if self.config.soft_dirty && self.config.maybe_guard_flag {
            s = s | VmFlags::SOFTDIRTY;
        }
        s
    }

    /// Whether `[start, end)` is entirely covered by VMAs, without holes.
    pub fn fully_mapped(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for v in self.vmas.range(start, end) {
            if v.start > at {
                return false;
            }
            at = v.end;
        }
        at >= end
    }

    /// Check the engine's invariants: the VMA tree is well formed, every
    /// non-empty PTE lies inside a VMA, present PTEs are no more permissive
    /// than their VMA allows, and counters agree with the page tables.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.vmas.check()?;
        for (vpn, pte) in self.pt.range(0, self.config.task_size / PAGE_SIZE) {
            let addr = vpn * PAGE_SIZE;
            let Some(vma) = self.vmas.lookup(addr) else {
                return Err(format!("PTE {pte:?} at {addr:#x} outside any VMA"));
            };
            if let Some(p) = pte.present() {
                if p.write && !vma.flags.contains(VmFlags::WRITE) {
                    return Err(format!("writable PTE at {addr:#x} in {vma:?}"));
                }
                if p.write && p.page.is_zero_page() {
                    return Err(format!("writable zero-page PTE at {addr:#x}"));
                }
            }
        }
        Ok(())
    }

    /// The VMA containing `addr`.
    pub fn vma_at(&self, addr: u64) -> Option<&Vma> {
        self.vmas.lookup(addr)
    }
}
