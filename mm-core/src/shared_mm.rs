//! The address space shared by threads: `struct mm_struct` as the kernel
//! locks it (include/linux/mm_types.h, include/linux/mmap_lock.h,
//! mm/mmap_lock.c, arch/x86/mm/fault.c `do_user_addr_fault`).
//!
//! [`SharedMm`] runs system calls and memory accesses from many threads on
//! one [`Mm`] with the kernel's locking:
//! - System calls take mmap_lock ([`MmapLock`]) in the mode the kernel
//!   takes it (write for mmap, munmap, mprotect, mremap, mlock,
//!   clear_refs; read for the madvise advices that do not change VMAs),
//!   write-lock (vma_start_write) every VMA whose page tables they may
//!   change before changing anything, and, before releasing mmap_lock,
//!   publish the changed part of the VMA tree: VMAs that changed shape are
//!   detached and their objects go back to the type-stable pool, new ones
//!   are allocated from it (write-locked until mmap_write_unlock).
//! - Faults follow the configured [`FaultStrategy`]: every fault under
//!   mmap_lock for read (classic), speculatively without any lock with the
//!   VMA sequence count validated under the PTE lock (seed 000), or under a
//!   per-VMA lock taken by lock_vma_under_rcu() (seed 002, today's kernel),
//!   falling back to mmap_lock when those cannot serve the fault.
//! - Page tables have split PTE locks ([`PageTables`]).
//!
//! The system-call side of the address space (the VMA tree, counters,
//! files) is the single-threaded engine [`Mm`] behind a mutex that plays
//! the part of the parts of mm_struct that mmap_lock and
//! `mm->page_table_lock` protect; fault paths never take it, except to
//! allocate an anon_vma under mmap_lock for read, as anon_vma_prepare()
//! takes `page_table_lock`. Two system calls that both hold mmap_lock for
//! read (two MADV_DONTNEEDs) therefore run one after the other here, where
//! the kernel would run them in parallel.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    addr::PAGE_SIZE,
    apply::Files,
    fault::{
        Access, AccessError, FaultEnv, FaultResult, SegvCode, access_error, fault_result,
        hardware_access, hardware_access_with, needs_anon_vma, pf,
    },
    lockdep::{Held, LockClass, Lockdep, Mode},
    mm::{Mm, MmConfig},
    mmap_lock::{LockSite, MmapLock},
    op::{Op, Outcome},
    percpu::PerCpuCounters,
    pgtable::PageTables,
    stats::{FaultCounts, FaultKind, FaultStats, ProcessStats},
    sync::{Arc, Mutex},
    uapi::{madv, map, mremap as mremap_flags},
    vma::Vma,
    vma_lock::{
        MmId, PublishedTree, RcuChecks, RcuLock, VmaLockCounters, VmaLockStats, VmaObject, VmaPool,
        VmaTreeSnapshot, lock_vma_under_rcu,
    },
};

/// How page faults are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultStrategy {
    /// Every fault takes mmap_lock for read (Linux before 6.4).
    Classic,
    /// Speculative page faults (seed 000): no lock; a copy of the VMA
    /// validated by its sequence count under the PTE lock; mmap_lock when
    /// the VMA changed or the fault cannot be finished speculatively.
    Speculative,
    /// Per-VMA locks (seed 002, Linux 6.4 and later): lock_vma_under_rcu();
    /// mmap_lock when it fails or the handler needs it.
    PerVma,
}

impl FaultStrategy {
    /// All strategies.
    pub const ALL: [Self; 3] = [Self::Classic, Self::Speculative, Self::PerVma];

    /// "classic", "speculative" or "per-vma".
    pub const fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Speculative => "speculative",
            Self::PerVma => "per-vma",
        }
    }
}

impl std::str::FromStr for FaultStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!("unknown fault strategy {s:?} (classic, speculative or per-vma)")
            })
    }
}

/// How /proc/PID/clear_refs takes mmap_lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClearRefsLocking {
    /// For write, always (Linux 5.11 and later, "mm: fix clear_refs_write
    /// locking").
    #[default]
    Write,
    /// Seed 001's scheme (Linux 3.18 to 5.10): for read; a soft-dirty
    /// clear that finds a VMA with VM_SOFTDIRTY set, whose flags it must
    /// change, gives up (-EAGAIN inside the kernel) and starts again with
    /// the lock held for write.
    ReadThenWrite,
}

/// Switches that break or stress the protocols on purpose, for the model
/// checking tests: each broken variant is a test that expects the checker
/// to find the interleaving the protocol exists for. The default is the
/// real protocol.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelKnobs {
    /// lock_vma_under_rcu()'s checks.
    pub rcu: RcuChecks,
    /// In-place VMA updates write the flags through a transient value
    /// without access bits first (seed 000's question).
    pub transient_flag_writes: bool,
    /// Broken: the speculative path trusts its VMA copy without checking
    /// the sequence count after reading it, and raises SIGSEGV itself.
    pub spf_signal_unvalidated: bool,
    /// Broken: the speculative path does not validate the sequence count
    /// under the PTE lock before committing.
    pub spf_skip_commit_validation: bool,
}

impl Default for ModelKnobs {
    fn default() -> Self {
        Self {
            rcu: RcuChecks::ALL,
            transient_flag_writes: false,
            spf_signal_unvalidated: false,
            spf_skip_commit_validation: false,
        }
    }
}

/// Outcomes of speculative faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeculativeStats {
    /// Faults completed without any lock.
    pub success: u64,
    /// Faults that gave up (VMA changing, changed before the commit, not
    /// found, or an outcome the speculative path may not decide alone,
    /// such as SIGSEGV) and went to mmap_lock.
    pub abort: u64,
}

/// Everything the engine counted, in the probe's schema plus the
/// engine-only per-VMA and speculative counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    /// The strategy in force.
    pub strategy: Option<FaultStrategy>,
    /// Faults and mmap_lock, as the probe reports a process.
    pub process: ProcessStats,
    /// /proc/vmstat's vma_lock_* events.
    pub vma_lock: VmaLockStats,
    /// Speculative fault outcomes.
    pub speculative: SpeculativeStats,
    /// Faults that ended in SIGSEGV.
    pub segv: u64,
}

/// Fault counters: the six kinds, then these.
const FALLBACKS: usize = 6;
const SEGV: usize = 7;
const SPF_SUCCESS: usize = 8;
const SPF_ABORT: usize = 9;
/// Kernel-mode faults: the six kinds from here.
const KERNEL: usize = 10;

#[derive(Debug, Default)]
struct FaultCounters(PerCpuCounters<16>);

const KINDS: [FaultKind; 6] = [
    FaultKind::ReadNotPresent,
    FaultKind::ReadProtection,
    FaultKind::WriteNotPresent,
    FaultKind::WriteProtection,
    FaultKind::ExecNotPresent,
    FaultKind::ExecProtection,
];

impl FaultCounters {
    fn count(&self, kind: FaultKind, kernel: bool) {
        let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.0.add(if kernel { KERNEL + i } else { i }, 1);
    }

    fn add(&self, i: usize) {
        self.0.add(i, 1);
    }

    fn get(&self, i: usize) -> u64 {
        self.0.sum(i)
    }

    fn counts(&self, kernel: bool) -> FaultCounts {
        let base = if kernel { KERNEL } else { 0 };
        let mut c = FaultCounts::default();
        for (i, k) in KINDS.iter().enumerate() {
            c.add(*k, self.0.sum(base + i));
        }
        c
    }

    fn reset(&self) {
        self.0.reset();
    }
}

/// The system-call side of the address space.
#[derive(Debug)]
struct Inner {
    mm: Mm,
    files: Files,
}

static NEXT_MM_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An address space shared by threads. See the module documentation.
#[derive(Debug)]
pub struct SharedMm {
    id: MmId,
    config: MmConfig,
    strategy: FaultStrategy,
    knobs: ModelKnobs,
    lock: MmapLock,
    inner: Mutex<Inner>,
    pt: std::sync::Arc<PageTables>,
    tree: PublishedTree,
    pool: Arc<VmaPool>,
    vma_lock: VmaLockCounters,
    faults: FaultCounters,
    lockdep: Option<std::sync::Arc<Lockdep>>,
    clear_refs_locking: ClearRefsLocking,
}

/// Which mmap_lock mode a system call takes, and which page tables it may
/// change (their VMAs are write-locked first).
struct SyscallLocking {
    site: LockSite,
    write: bool,
    /// `[start, end)` ranges whose VMAs' page tables may change.
    ranges: Vec<(u64, u64)>,
}

fn span(addr: u64, len: u64) -> (u64, u64) {
    (addr, addr.saturating_add(len))
}

fn locking(op: &Op) -> SyscallLocking {
    let all = vec![(0, u64::MAX)];
    let (site, write, ranges) = match *op {
        Op::Mmap {
            addr, len, flags, ..
        } => {
            // MAP_FIXED replaces (unmaps) what was there.
            let fixed = flags & (map::FIXED | map::FIXED_NOREPLACE) != 0;
            let r = if fixed { vec![span(addr, len)] } else { vec![] };
            (LockSite::Mmap, true, r)
        }
        Op::Munmap { addr, len } => (LockSite::Munmap, true, vec![span(addr, len)]),
        Op::Mprotect { addr, len, .. } => (LockSite::Mprotect, true, vec![span(addr, len)]),
        Op::Madvise { addr, len, advice } => {
            // madvise_need_mmap_write(): these advices only walk or zap
            // page tables (and set VM_MAYBE_GUARD atomically).
            let read = matches!(
                advice,
                madv::REMOVE
                    | madv::WILLNEED
                    | madv::DONTNEED
                    | madv::DONTNEED_LOCKED
                    | madv::COLD
                    | madv::PAGEOUT
                    | madv::FREE
                    | madv::POPULATE_READ
                    | madv::POPULATE_WRITE
                    | madv::GUARD_INSTALL
                    | madv::GUARD_REMOVE
            );
            (LockSite::Madvise, !read, vec![span(addr, len)])
        }
        Op::Mlock { addr, len, .. } => (LockSite::Mlock, true, vec![span(addr, len)]),
        Op::Munlock { addr, len } => (LockSite::Munlock, true, vec![span(addr, len)]),
        Op::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            new_addr,
        } => {
            let mut r = vec![span(old_addr, old_len.max(new_len))];
            if flags & mremap_flags::FIXED != 0 {
                r.push(span(new_addr, new_len));
            }
            (LockSite::Mremap, true, r)
        }
        // clear_refs_write() takes mmap_lock for write (5.11 and later)
        // and walks every VMA with PGWALK_WRLOCK.
        Op::ClearRefs { .. } => (LockSite::ClearRefs, true, all),
        Op::Fork => (LockSite::Fork, true, all),
        Op::CreateFile { .. } | Op::Read { .. } | Op::Write { .. } | Op::Exec { .. } => {
            (LockSite::Other, false, vec![])
        }
    };
    SyscallLocking {
        site,
        write,
        ranges,
    }
}

/// Whether two copies of a VMA are the same for fault handlers.
fn same_vma(a: &Vma, b: &Vma) -> bool {
    a.start == b.start
        && a.end == b.end
        && a.flags == b.flags
        && a.pgoff == b.pgoff
        && a.fork_child == b.fork_child
        && match (&a.file, &b.file) {
            (None, None) => true,
            (Some(x), Some(y)) => std::sync::Arc::ptr_eq(x, y),
            _ => false,
        }
        && match (&a.anon_vma, &b.anon_vma) {
            (None, None) => true,
            (Some(x), Some(y)) => x.id() == y.id(),
            _ => false,
        }
}

/// What a fault handler returns besides success: the result of the access
/// it made again before dropping its lock, if it did (see
/// [`SharedMm::access`]).
type Retried = Option<Result<u8, u64>>;

fn access_of(code: u64) -> bool {
    code & pf::WRITE != 0
}

impl SharedMm {
    /// An empty address space with its own VMA pool.
    pub fn new(config: MmConfig, strategy: FaultStrategy) -> Self {
        Self::with_pool(config, strategy, Arc::new(VmaPool::new()))
    }

    /// An empty address space whose VMA objects come from `pool`, which
    /// other address spaces may share (as they share the kernel's slab).
    pub fn with_pool(config: MmConfig, strategy: FaultStrategy, pool: Arc<VmaPool>) -> Self {
        let mut mm = Mm::new(config.clone());
        mm.defer_populate = true;
        let pt = std::sync::Arc::clone(&mm.pt);
        Self {
            id: NEXT_MM_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config,
            strategy,
            knobs: ModelKnobs::default(),
            lock: MmapLock::new(),
            inner: Mutex::new(Inner {
                mm,
                files: Files::new(),
            }),
            pt,
            tree: PublishedTree::new(&pool),
            pool,
            vma_lock: VmaLockCounters::default(),
            faults: FaultCounters::default(),
            lockdep: None,
            clear_refs_locking: ClearRefsLocking::default(),
        }
    }

    /// Break the protocols on purpose, to show in tests what each part
    /// prevents. Never for real use.
    #[doc(hidden)]
    pub fn set_model_knobs(&mut self, knobs: ModelKnobs) {
        self.knobs = knobs;
    }

    /// Choose how clear_refs locks.
    pub fn set_clear_refs_locking(&mut self, l: ClearRefsLocking) {
        self.clear_refs_locking = l;
    }

    /// Check lock ordering from now on (see [`Lockdep`]); with
    /// `panic_on_report`, a thread about to deadlock panics instead.
    pub fn enable_lockdep(&mut self, panic_on_report: bool) -> std::sync::Arc<Lockdep> {
        let d = Lockdep::new(panic_on_report);
        self.lockdep = Some(std::sync::Arc::clone(&d));
        d
    }

    /// The lock checker, if enabled.
    pub fn lockdep(&self) -> Option<&std::sync::Arc<Lockdep>> {
        self.lockdep.as_ref()
    }

    /// Tell the lock checker about a lock this thread is about to take.
    pub(crate) fn ld(&self, class: LockClass, mode: Mode, site: &str) -> Held {
        match &self.lockdep {
            Some(d) => d.acquire(class, mode, site),
            None => Held::untracked(class),
        }
    }

    fn ld_mmap(&self, mode: Mode, site: LockSite) -> Held {
        if self.lockdep.is_none() {
            return Held::untracked(LockClass::MmapLock);
        }
        self.ld(LockClass::MmapLock, mode, site.context().name())
    }

    /// The mm's identity (`vma->vm_mm` of its VMAs).
    pub const fn id(&self) -> MmId {
        self.id
    }

    /// The fault strategy.
    pub const fn strategy(&self) -> FaultStrategy {
        self.strategy
    }

    /// The mmap_lock.
    pub const fn mmap_lock(&self) -> &MmapLock {
        &self.lock
    }

    /// The page tables.
    pub fn page_tables(&self) -> &PageTables {
        &self.pt
    }

    /// The VMA pool.
    pub fn pool(&self) -> &Arc<VmaPool> {
        &self.pool
    }

    fn inner(&self) -> crate::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `f` on the system-call side of the address space under
    /// mmap_lock for read (as /proc readers do): the VMAs, maps text,
    /// invariant checks.
    pub fn with_mm<R>(&self, site: LockSite, f: impl FnOnce(&Mm) -> R) -> R {
        let _ld = self.ld_mmap(Mode::Read, site);
        let _g = self.lock.read_lock(site);
        f(&self.inner().mm)
    }

    /// One operation: a system call, or an access with its faults.
    /// [`Op::Fork`] forks a child that exits at once ([`Self::fork`]).
    pub fn apply(&self, op: &Op) -> Outcome {
        let r = match *op {
            Op::Read { addr } => self.access(addr, Access::Read, 0),
            Op::Write { addr, value } => self.access(addr, Access::Write, value).map(|_| 0),
            Op::Exec { addr } => self.access(addr, Access::Exec, 0).map(|_| 0),
            Op::Fork => return self.fork(),
            Op::Munmap { addr, len } => return self.munmap(addr, len),
            _ => return self.syscall(op),
        };
        match r {
            Ok(v) => Outcome::Value(v),
            Err(AccessError::Segv(_)) => Outcome::Segv,
            Err(AccessError::Bus) => Outcome::Bus,
        }
    }

    fn syscall(&self, op: &Op) -> Outcome {
        let mut l = locking(op);
        if let Op::ClearRefs { kind } = *op {
            if self.clear_refs_locking == ClearRefsLocking::ReadThenWrite {
                let _ld = self.ld_mmap(Mode::Read, l.site);
                let _g = self.lock.read_lock(l.site);
                let mut inner = self.inner();
                let needs_write = kind == crate::uapi::clear_refs::SOFT_DIRTY
                    && inner
                        .mm
                        .vmas
                        .iter()
                        .any(|v| v.flags.contains(crate::vm_flags::VmFlags::SOFTDIRTY));
                if !needs_write {
                    // Only page tables change: the walk runs under the
                    // read lock, PTE locks serialising it with faults.
                    let Inner { mm, files } = &mut *inner;
                    let out = mm.apply(op, files);
                    self.publish(mm, None);
                    return out;
                }
                // -EAGAIN: drop the read lock, retry for write below.
            }
            l.write = true;
        }
        if matches!(op, Op::CreateFile { .. }) {
            let mut inner = self.inner();
            let Inner { mm, files } = &mut *inner;
            return mm.apply(op, files);
        }
        if l.write {
            let _ld = self.ld_mmap(Mode::Write, l.site);
            let g = self.lock.write_lock(l.site);
            let seq = g.seq();
            let mut inner = self.inner();
            // vma_start_write() on every VMA whose page tables may change.
            let tree = self.tree.load();
            for (s, e) in &l.ranges {
                for obj in tree.overlapping(*s, *e) {
                    obj.start_write(seq);
                }
            }
            let Inner { mm, files } = &mut *inner;
            let out = mm.apply(op, files);
            self.publish(mm, Some(seq));
            let populate = mm.deferred_populate.take();
            drop(inner);
            drop(g);
            if let Some((start, end)) = populate {
                // vm_mmap_pgoff(): mm_populate() after mmap_write_unlock(),
                // under mmap_lock for read (__mm_populate).
                let _ld = self.ld_mmap(Mode::Read, l.site);
                let _g = self.lock.read_lock(l.site);
                // The VMAs are prepared (anon_vma) under the address
                // space's mutex; their pages are faulted in without it, as
                // GUP holds nothing but mmap_lock and the PTE locks (so a
                // fault's anon_vma_prepare elsewhere does not wait for it).
                let walks = {
                    let mut inner = self.inner();
                    inner.mm.queued_walks = Some(Vec::new());
                    let _ = inner.mm.populate(start, end, true);
                    self.publish(&mut inner.mm, None);
                    inner.mm.queued_walks.take().unwrap_or_default()
                };
                let mut done = false;
                for w in &walks {
                    // Errors are ignored, as mmap's populate does.
                    let _ = FaultEnv {
                        pt: &self.pt,
                        config: &self.config,
                        vma: &w.vma,
                        validate: &|| true,
                    }
                    .fault_in_anon(w.start, w.end, w.write, |_| done = true);
                }
                if done {
                    // Faulting pages in only adds to the RSS: its
                    // high-water mark is reached at the end.
                    self.inner().mm.update_hiwater();
                }
            }
            out
        } else {
            let _ld = self.ld_mmap(Mode::Read, l.site);
            let _g = self.lock.read_lock(l.site);
            let mut inner = self.inner();
            let Inner { mm, files } = &mut *inner;
            let out = mm.apply(op, files);
            self.publish(mm, None);
            out
        }
    }

    /// brk(2) (mm/mmap.c): mmap_lock for write; the VMAs between the old
    /// and the new break are write-locked. Returns the new break (or the
    /// old one when it cannot move).
    pub fn brk(&self, addr: u64) -> u64 {
        let _ld = self.ld_mmap(Mode::Write, LockSite::Brk);
        let g = self.lock.write_lock(LockSite::Brk);
        let seq = g.seq();
        let mut inner = self.inner();
        let old = inner.mm.brk_value();
        let (lo, hi) = (
            old.min(addr) & !4095,
            old.max(addr).saturating_add(4095) & !4095,
        );
        for obj in self.tree.load().overlapping(lo.saturating_sub(4096), hi) {
            obj.start_write(seq);
        }
        let r = inner.mm.brk(addr);
        self.publish(&mut inner.mm, Some(seq));
        r
    }

    /// Place the brk area (mm->start_brk and mm->brk), e.g. where a
    /// recorded process had it. Only before anything is mapped there.
    pub fn set_brk_area(&self, start_brk: u64, brk: u64) {
        let mut inner = self.inner();
        inner.mm.start_brk = start_brk;
        inner.mm.brk = brk;
    }

    /// fork(2) by one thread, the child exiting at once (kernel/fork.c
    /// dup_mmap): mmap_lock for write and every VMA write-locked while the
    /// address space is copied; the parent's private writable PTEs become
    /// read-only, so its next writes to them are copy-on-write faults
    /// (which reuse the page once the child is gone).
    pub fn fork(&self) -> Outcome {
        let _ld = self.ld_mmap(Mode::Write, LockSite::Fork);
        let g = self.lock.write_lock(LockSite::Fork);
        let seq = g.seq();
        for obj in self.tree.load().overlapping(0, u64::MAX) {
            obj.start_write(seq);
        }
        let mut inner = self.inner();
        let child = inner.mm.fork();
        self.publish(&mut inner.mm, Some(seq));
        drop(inner);
        drop(g);
        // The child's exit_mmap(): its own lock, not the parent's.
        drop(child);
        Outcome::Ok(0)
    }

    /// munmap(2) as 6.18 runs it (mm/vma.c do_vmi_align_munmap with
    /// `unlock`): split and detach the VMAs under mmap_lock for write,
    /// publish, downgrade to read, and zap the page tables under the read
    /// lock, so that faults elsewhere proceed during the zap.
    pub fn munmap(&self, addr: u64, len: u64) -> Outcome {
        let ld = self.ld_mmap(Mode::Write, LockSite::Munmap);
        let g = self.lock.write_lock(LockSite::Munmap);
        let seq = g.seq();
        let mut inner = self.inner();
        let (start, end) = match inner.mm.munmap_range(addr, len) {
            Ok(r) => r,
            Err(e) => return Outcome::Err(e),
        };
        let tree = self.tree.load();
        for obj in tree.overlapping(start, end) {
            obj.start_write(seq);
        }
        if let Err(e) = inner.mm.munmap_gather(start, end) {
            self.publish(&mut inner.mm, Some(seq));
            return Outcome::Err(e);
        }
        let detached = inner.mm.munmap_detach(start, end);
        self.publish(&mut inner.mm, Some(seq));
        drop(inner);
        ld.downgrade();
        let _r = g.downgrade();
        crate::munmap::zap_detached(&self.pt, &detached, start, end);
        Outcome::Ok(0)
    }

    /// Bring the published tree up to date with the VMAs changed since the
    /// last publication. `seq` is the write session (None under mmap_lock
    /// for read, where VMAs only change in place).
    fn publish(&self, mm: &mut Mm, seq: Option<u64>) {
        let Some((lo, hi)) = mm.vmas.take_touched() else {
            return;
        };
        let old = self.tree.load();
        let mut tree: VmaTreeSnapshot = (*old).clone();
        let old = old.overlapping(lo, hi);
        let mut news: HashMap<u64, &Vma> = mm.vmas.range(lo, hi).map(|v| (v.start, v)).collect();
        let mut changed = false;
        for obj in old {
            let (s, e) = obj.range();
            match news.get(&s) {
                Some(v) if v.end == e => {
                    if !obj.vma().is_some_and(|cur| same_vma(&cur, v)) {
                        if let Some(seq) = seq {
                            obj.start_write(seq);
                        }
                        if self.knobs.transient_flag_writes {
                            let transient = v.flags.without(crate::vm_flags::VmFlags::ACCESS);
                            obj.set_flags_via(transient, (*v).clone());
                        } else {
                            obj.set_vma((*v).clone());
                        }
                    }
                    news.remove(&s);
                }
                _ => {
                    let seq = seq.unwrap_or_else(|| self.lock.mm_lock_seq());
                    obj.start_write(seq);
                    tree.remove(s);
                    self.pool.free(Arc::clone(obj));
                    changed = true;
                }
            }
        }
        let seq = seq.unwrap_or_else(|| self.lock.mm_lock_seq());
        for v in news.into_values() {
            let obj = self.pool.alloc(self.id, v.clone(), seq);
            tree.insert(v.start, v.end, &obj);
            changed = true;
        }
        if changed {
            self.tree.publish(tree);
        }
    }

    /// The MMU on the published VMA tree: the access completes, or the
    /// error code of the fault it raises.
    ///
    /// The VMA is looked up under the PTE lock, and only for a present PTE
    /// (an absent one faults whatever the VMA says); if that lookup would
    /// have to wait for a writer's publication, the PTE lock is dropped and
    /// the access made again with the VMA found first.
    fn mmu(&self, addr: u64, access: Access, value: u8) -> Result<u8, u64> {
        if let Some(r) =
            hardware_access_with(&self.pt, &self.config, addr, access, value, |check| {
                // try_rcu_vma(), with the VMA borrowed rather than copied.
                self.tree.with(|tree| {
                    let Some((start, end, obj)) = tree.lookup(addr) else {
                        return Some(check(None));
                    };
                    obj.with_vma(|v| {
                        v.filter(|v| (v.start, v.end) == (start, end) && obj.mm() == self.id)
                            .map(|v| check(Some(v)))
                    })
                })
            })
        {
            return r;
        }
        let vma = self.rcu_vma(addr);
        hardware_access(&self.pt, &self.config, vma.as_deref(), addr, access, value)
    }

    /// One access, with as many faults as it takes.
    ///
    /// The access that follows a fault handled under a VMA's lock (or
    /// mmap_lock) is made before that lock is dropped, with the VMA the
    /// handler used, rather than after a new lookup of the VMA tree: the
    /// lock keeps the VMA from changing in between, so the MMU sees the
    /// same VMA either way. The page-table entry is read again under its
    /// own lock, so an entry taken away by another thread in between
    /// (MADV_DONTNEED, reclaim) still faults again.
    pub fn access(&self, addr: u64, access: Access, value: u8) -> Result<u8, AccessError> {
        let mut code = match self.mmu(addr, access, value) {
            Ok(v) => return Ok(v),
            Err(code) => code,
        };
        for _ in 0..8 {
            self.faults
                .count(FaultKind::from_x86_error_code(code), false);
            match self.do_user_addr_fault(addr, code, (access, value)) {
                Ok(Some(Ok(v))) => return Ok(v),
                Ok(Some(Err(c))) => code = c,
                Ok(None) => match self.mmu(addr, access, value) {
                    Ok(v) => return Ok(v),
                    Err(c) => code = c,
                },
                Err(e) => {
                    if matches!(e, AccessError::Segv(_)) {
                        self.faults.add(SEGV);
                    }
                    return Err(e);
                }
            }
        }
        // Eight faults in a row on one access: the PTE keeps being taken
        // away by other threads. The kernel would keep retrying; report
        // the last state instead of spinning.
        self.mmu(addr, access, value)
            .map_err(|_| AccessError::Segv(SegvCode::MapErr))
    }

    /// The VMA holding `addr` as the MMU sees it (its permissions stand
    /// for the PTE's): a lockless read of the published tree.
    ///
    /// The engine keeps a PTE's permissions in its VMA, so this lookup must
    /// see the VMA the PTE was made for: an object found through a tree
    /// that is being replaced may already have been reused for another
    /// range, and is then skipped until the writer has published the new
    /// tree (a few microseconds; the writer holds mmap_lock meanwhile).
    fn rcu_vma(&self, addr: u64) -> Option<std::sync::Arc<Vma>> {
        loop {
            if let Some(found) = self.try_rcu_vma(addr) {
                return found;
            }
            crate::sync::thread::yield_now();
        }
    }

    /// One look at the published tree for [`Self::rcu_vma`]; None: the
    /// object found is being replaced (look again later).
    fn try_rcu_vma(&self, addr: u64) -> Option<Option<std::sync::Arc<Vma>>> {
        self.tree.with(|tree| {
            let Some((start, end, obj)) = tree.lookup(addr) else {
                return Some(None);
            };
            obj.vma()
                .filter(|v| (v.start, v.end) == (start, end) && obj.mm() == self.id)
                .map(Some)
        })
    }

    /// An access by the kernel to user memory (copy_to_user and friends,
    /// e.g. writing a bounds-directory entry): its faults are kernel-mode
    /// faults, which never use a per-VMA lock or speculation
    /// (do_user_addr_fault goes straight to lock_mm_and_find_vma), and
    /// which deadlock if the thread holds mmap_lock for write (the lock
    /// checker reports that).
    pub fn access_kernel(&self, addr: u64, access: Access, value: u8) -> Result<u8, AccessError> {
        for _ in 0..8 {
            let code = match self.mmu(addr, access, value) {
                Ok(v) => return Ok(v),
                Err(code) => code & !pf::USER,
            };
            if let Some(d) = &self.lockdep {
                d.fault("kernel access to user memory");
            }
            self.faults
                .count(FaultKind::from_x86_error_code(code), true);
            self.fault_mmap_locked(addr, code, None)?;
        }
        Err(AccessError::Segv(SegvCode::MapErr))
    }

    /// The same access with page faults disabled (pagefault_disable(),
    /// `copy_*_nofault`): it fails instead of faulting.
    pub fn access_nofault(&self, addr: u64, access: Access, value: u8) -> Result<u8, AccessError> {
        self.mmu(addr, access, value)
            .map_err(|_| AccessError::Segv(SegvCode::MapErr))
    }

    /// Run `f` on the address space under mmap_lock held for write, with
    /// every VMA write-locked, and publish what it changed (a kernel path
    /// that holds the lock across several steps, as the original MPX
    /// design's munmap did).
    pub fn write_locked<R>(&self, site: LockSite, f: impl FnOnce(&mut Mm) -> R) -> R {
        let _ld = self.ld_mmap(Mode::Write, site);
        let g = self.lock.write_lock(site);
        let seq = g.seq();
        for obj in self.tree.load().overlapping(0, u64::MAX) {
            obj.start_write(seq);
        }
        let mut inner = self.inner();
        let r = f(&mut inner.mm);
        self.publish(&mut inner.mm, Some(seq));
        r
    }

    /// do_user_addr_fault(). `retry` is the access to make again once the
    /// fault is handled: a handler that holds a lock on the VMA makes it
    /// before letting go, and its result is returned (see
    /// [`Self::access`]); None: the caller makes it.
    fn do_user_addr_fault(
        &self,
        addr: u64,
        code: u64,
        retry: (Access, u8),
    ) -> Result<Retried, AccessError> {
        if let Some(d) = &self.lockdep {
            d.fault("user fault");
        }
        match self.strategy {
            FaultStrategy::Classic => {}
            FaultStrategy::PerVma => {
                if let Some(r) = self.fault_vma_locked(addr, code, retry) {
                    return r;
                }
            }
            FaultStrategy::Speculative => {
                if let Some(r) = self.fault_speculative(addr, code, retry) {
                    self.faults.add(SPF_SUCCESS);
                    return r;
                }
                self.faults.add(SPF_ABORT);
            }
        }
        self.faults.add(FALLBACKS);
        self.fault_mmap_locked(addr, code, Some(retry))
    }

    /// A read of /proc/PID/maps. Under per-VMA locks this is 6.17's
    /// lock-free reader (fs/proc/task_mmu.c lock_next_vma): each VMA of
    /// the RCU-published tree is read-locked in turn with
    /// vma_start_read(); one that is being written (or was replaced) makes
    /// the reader take mmap_lock for read for the rest. The other
    /// strategies (kernels before per-VMA locks) hold mmap_lock for read.
    pub fn proc_maps(&self) -> String {
        if self.strategy == FaultStrategy::PerVma {
            let tree = self.tree.load();
            let seq = || self.lock.mm_lock_seq();
            let mut out = String::new();
            let mut clean = true;
            for (start, end, obj) in tree.iter() {
                let Ok(_guard) =
                    crate::vma_lock::vma_start_read(obj, self.id, &seq, self.knobs.rcu)
                else {
                    clean = false;
                    break;
                };
                match obj.vma() {
                    Some(v) if (v.start, v.end) == (start, end) => {
                        out.push_str(&crate::proc::maps_line(
                            &v,
                            self.config.start_brk,
                            self.config.start_brk,
                        ));
                    }
                    _ => {
                        clean = false;
                        break;
                    }
                }
            }
            if clean {
                return out;
            }
        }
        self.with_mm(LockSite::ProcRead, Mm::maps)
    }

    /// A read of /proc/PID/pagemap for `[addr, addr + len)` (pagemap_read):
    /// mmap_lock for read once to untag the address, then once per
    /// PMD-sized, PMD-aligned chunk of the range. Returns the entries.
    pub fn proc_pagemap(&self, addr: u64, len: u64) -> Vec<u64> {
        const WALK: u64 = 2 << 20;
        self.with_mm(LockSite::ProcRead, |_| ());
        let end = addr + len;
        let mut out = Vec::with_capacity((len / 4096) as usize);
        let mut a = addr;
        while a < end {
            let chunk_end = ((a + WALK) & !(WALK - 1)).min(end);
            self.with_mm(LockSite::ProcRead, |m| {
                let mut p = a;
                while p < chunk_end {
                    out.push(m.pagemap(p));
                    p += 4096;
                }
            });
            a = chunk_end;
        }
        out
    }

    /// The per-VMA lock path; None: go to mmap_lock.
    fn fault_vma_locked(
        &self,
        addr: u64,
        code: u64,
        retry: (Access, u8),
    ) -> Option<Result<Retried, AccessError>> {
        let seq = || self.lock.mm_lock_seq();
        let RcuLock::Locked(guard) = lock_vma_under_rcu(
            &self.tree,
            &self.pool,
            self.id,
            &seq,
            addr,
            self.knobs.rcu,
            &self.vma_lock,
        ) else {
            return None;
        };
        // The VMA's fields are borrowed, not copied: no writer changes
        // them while the VMA is read-locked.
        // None: the object holds no VMA; Some(None): VM_FAULT_RETRY.
        let r = guard.object().with_vma(|vma| {
            let vma = vma?;
            if let Some(c) = access_error(&self.config, code, vma) {
                return Some(Some(Err(AccessError::Segv(c))));
            }
            let write = access_of(code);
            if needs_anon_vma(vma, write) {
                // vmf_anon_prepare() under a VMA lock: VM_FAULT_RETRY.
                return Some(None);
            }
            let (r, retried) = self.handle_then(vma, addr, write, Some(retry));
            Some(Some(fault_result(r).map(|()| retried)))
        })?;
        drop(guard);
        match r {
            Some(_) => self.vma_lock.success(),
            None => self.vma_lock.retry(),
        }
        r
    }

    /// handle_mm_fault() under a lock that keeps `vma` as it is, and the
    /// access made again before that lock is dropped, if the fault
    /// completed (see [`Self::access`]).
    fn handle_then(
        &self,
        vma: &Vma,
        addr: u64,
        write: bool,
        retry: Option<(Access, u8)>,
    ) -> (FaultResult, Retried) {
        self.fault_env(vma, &|| true)
            .handle_mm_fault_then(addr, write, retry)
    }

    /// The speculative path (seed 000); None: go to mmap_lock. Only a
    /// completed fault is decided here: anything else (no VMA, an access
    /// the VMA copy does not allow, a guard marker, SIGBUS) is left to the
    /// locked path, so a VMA caught in the middle of a change never causes
    /// a spurious signal.
    ///
    /// The object is borrowed from the pool, where it stays whatever
    /// happens to it (its sequence count tells whether it changed). A
    /// completed fault makes the access again (`retry`) with its VMA copy
    /// if the copy is still valid, as the MMU's lookup of the published
    /// tree would find the same VMA; else the caller makes it.
    fn fault_speculative(
        &self,
        addr: u64,
        code: u64,
        (access, value): (Access, u8),
    ) -> Option<Result<Retried, AccessError>> {
        let obj: &VmaObject = self.pool.get(self.tree.with(|t| t.lookup_slot(addr))?);
        let seq = obj.sequence();
        let valid = |obj: &VmaObject| {
            obj.sequence() == seq
                && !obj.is_write_locked(self.lock.mm_lock_seq())
                && obj.mm() == self.id
                && !obj.is_detached()
        };
        if seq % 2 == 1 || !valid(obj) {
            return None;
        }
        let vma = obj.vma()?;
        if self.knobs.spf_signal_unvalidated {
            if let Some(c) = access_error(&self.config, code, &vma) {
                return Some(Err(AccessError::Segv(c)));
            }
        }
        if !vma.contains(addr) || !valid(obj) {
            return None;
        }
        let write = access_of(code);
        if access_error(&self.config, code, &vma).is_some() || needs_anon_vma(&vma, write) {
            return None;
        }
        let skip = self.knobs.spf_skip_commit_validation;
        let validate = || skip || valid(obj);
        match self.fault_env(&vma, &validate).handle_mm_fault(addr, write) {
            FaultResult::Done => Some(Ok(valid(obj).then(|| {
                hardware_access(&self.pt, &self.config, Some(&vma), addr, access, value)
            }))),
            FaultResult::Retry | FaultResult::Segv | FaultResult::Bus => None,
        }
    }

    /// The classic path: lock_mm_and_find_vma() under mmap_lock for read.
    fn fault_mmap_locked(
        &self,
        addr: u64,
        code: u64,
        retry: Option<(Access, u8)>,
    ) -> Result<Retried, AccessError> {
        let _ld = self.ld_mmap(Mode::Read, LockSite::Fault);
        let _g = self.lock.read_lock(LockSite::Fault);
        // Under mmap_lock the tree does not change: the object is the
        // VMA's, borrowed from the pool, and its fields are borrowed under
        // its data lock (only anon_vma_prepare changes them meanwhile, and
        // it is done outside that lock).
        let Some(slot) = self.tree.with(|t| t.lookup_slot(addr)) else {
            return Err(AccessError::Segv(SegvCode::MapErr));
        };
        let obj = self.pool.get(slot);
        let write = access_of(code);
        let fault = |vma: &Vma| {
            let (r, retried) = self.handle_then(vma, addr, write, retry);
            fault_result(r).map(|()| retried)
        };
        // None: the anon_vma must be prepared first.
        let done = obj.with_vma(|vma| {
            let Some(vma) = vma else {
                return Some(Err(AccessError::Segv(SegvCode::MapErr)));
            };
            if let Some(c) = access_error(&self.config, code, vma) {
                return Some(Err(AccessError::Segv(c)));
            }
            (!needs_anon_vma(vma, write)).then(|| fault(vma))
        });
        if let Some(r) = done {
            return r;
        }
        {
            // anon_vma_prepare() under mm->page_table_lock.
            let start = obj.range().0;
            let mut inner = self.inner();
            inner.mm.anon_vma_prepare(start);
            let v = inner.mm.vmas.get(start).expect("mapped").clone();
            obj.set_vma(v);
        }
        obj.with_vma(|vma| fault(vma.expect("just set")))
    }

    /// The fault handlers on this mm's tables for `vma` (see
    /// [`FaultEnv`]).
    fn fault_env<'a>(&'a self, vma: &'a Vma, validate: &'a dyn Fn() -> bool) -> FaultEnv<'a> {
        FaultEnv {
            pt: &self.pt,
            config: &self.config,
            vma,
            validate,
        }
    }

    /// The counters, in the probe's schema.
    pub fn stats(&self) -> EngineStats {
        let user = self.faults.counts(false);
        EngineStats {
            strategy: Some(self.strategy),
            process: ProcessStats {
                pid: 0,
                comm: format!("engine:{}", self.strategy.name()),
                faults: FaultStats {
                    user,
                    kernel: self.faults.counts(true),
                    mmap_lock_fallbacks: self.faults.get(FALLBACKS),
                },
                mmap_lock: self.lock.stats(),
                contexts: self.lock.context_stats(),
                ..ProcessStats::default()
            },
            vma_lock: self.vma_lock.snapshot(),
            speculative: SpeculativeStats {
                success: self.faults.get(SPF_SUCCESS),
                abort: self.faults.get(SPF_ABORT),
            },
            segv: self.faults.get(SEGV),
        }
    }

    /// Zero every counter.
    pub fn reset_stats(&self) {
        self.lock.reset_stats();
        self.vma_lock.reset();
        self.faults.reset();
    }

    /// Check, under mmap_lock for write, that the published tree and the
    /// VMA objects agree with the address space, and the address space's
    /// own invariants: VMAs ordered and disjoint, every present PTE inside
    /// a VMA that allows its write bit. Returns the first violation.
    pub fn check(&self) -> Result<(), String> {
        let _ld = self.ld_mmap(Mode::Write, LockSite::Other);
        let _g = self.lock.write_lock(LockSite::Other);
        let inner = self.inner();
        inner.mm.vmas.check()?;
        let tree = self.tree.load();
        if tree.len() != inner.mm.vmas.len() {
            return Err(format!(
                "published tree has {} VMAs, the address space {}",
                tree.len(),
                inner.mm.vmas.len()
            ));
        }
        for (v, (s, e, obj)) in inner.mm.vmas.iter().zip(tree.iter()) {
            let cur = obj.vma().ok_or("published object without a VMA")?;
            if (v.start, v.end) != (s, e) || obj.range() != (s, e) || !same_vma(v, &cur) {
                return Err(format!(
                    "VMA {:#x}-{:#x} published as {s:#x}-{e:#x} ({:#x?})",
                    v.start,
                    v.end,
                    obj.range()
                ));
            }
            if obj.mm() != self.id || obj.is_detached() {
                return Err(format!("VMA {s:#x}-{e:#x}: object not attached to this mm"));
            }
        }
        for (vpn, pte) in self.pt.range(0, self.config.task_size / PAGE_SIZE) {
            let addr = vpn * PAGE_SIZE;
            let Some(v) = inner.mm.vmas.lookup(addr) else {
                return Err(format!("PTE at {addr:#x} outside every VMA"));
            };
            if let Some(p) = pte.present() {
                if p.write && !v.flags.contains(crate::vm_flags::VmFlags::WRITE) {
                    return Err(format!(
                        "writable PTE at {addr:#x} in a VMA without VM_WRITE"
                    ));
                }
            }
        }
        Ok(())
    }
}
