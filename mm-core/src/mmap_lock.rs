//! mmap_lock: the address space's reader/writer semaphore (`mm->mmap_lock`)
//! for the concurrent engine, where real threads run page faults and system
//! calls on one address space. Follows include/linux/mmap_lock.h,
//! mm/mmap_lock.c and kernel/locking/rwsem.c.
//!
//! Semantics kept from the kernel's rwsem, because they shape contention:
//!
//! - Readers share, a writer is exclusive.
//! - Writer preference: once a writer waits, new readers wait behind it
//!   (`read_lock` sleeps, `read_trylock` fails), so a stream of faults
//!   cannot starve munmap. Readers already asleep are not starved either:
//!   the next write unlock (or downgrade) hands the lock to all of them at
//!   once, before the next writer gets it. (`rwsem_mark_wake()` wakes all
//!   queued readers like this when the first waiter is a reader and hands
//!   over to a first-queued writer otherwise; the engine alternates
//!   phases instead of keeping one FIFO queue.)
//! - A waiter spins before it sleeps (`rwsem_optimistic_spin()`), for a
//!   bounded number of checks where the kernel spins while the owner runs
//!   on a CPU: a writer that gets the lock while spinning, before writers
//!   asleep, is not contended (the kernel's `contention_begin` comes
//!   after the spin); a reader that could not have it at once is.
//! - `mmap_write_downgrade()` ([`MmapWriteGuard::downgrade`]) turns the
//!   write hold into a read hold atomically: sleeping readers come in with
//!   it, a waiting writer keeps waiting until every reader has left.
//! - `mm->mm_lock_seq` (6.12+): taking the lock for write makes the count
//!   odd (`mm_lock_seqcount_begin()`); unlocking or downgrading makes it even
//!   again (`vma_end_write_all()` -> `mm_lock_seqcount_end()`), before the
//!   semaphore is released. A VMA write-locked in a session carries that
//!   session's odd value (`vma->vm_lock_seq`), so ending the session releases
//!   every VMA write lock taken in it at once. See [`MmapLock::mm_lock_seq`].
//!
//! The lock is one atomic state word (reader count, writer bit, "writer
//! waiting" and "reader waiting" bits): uncontended acquisitions and
//! releases are a single compare-and-swap or fetch-and-sub. Sleepers go
//! through a slow path (a mutex, which only guards the waiter counts, and
//! one condition variable per mode); every state change a sleeper waits
//! for is either made under that mutex or followed by taking it to notify,
//! and a sleeper publishes its waiting bit with a compare-and-swap against
//! the state it checked, so no wake-up is lost.
//!
//! Every acquisition and release is counted in the schema of the host probe
//! ([`MmapLockStats`], [`ContextStats`]; see `mm-ebpf`): the counters are
//! per ([`LockSite`], mode) and per CPU stripe ([`crate::percpu`]), with
//! no lock of their own, so instrumenting the lock does not serialize its
//! users. A thread that owns its stripe adds with plain stores (as
//! `this_cpu_add()` does), so the counters only grow and a reset takes a
//! baseline; an acquisition granted at once is one addition; the clock is
//! [`crate::sched_clock`] (the TSC where the host keeps time with it); an
//! acquisition, its wait and its hold are recorded after the release, so
//! recording adds nothing to the time the lock is held.
//!
//! All synchronisation goes through [`crate::sync`], so the loom and shuttle
//! runs (tests/model_mmap_lock.rs) check this very code.

use std::{fmt, mem::ManuallyDrop, sync::PoisonError};

use crate::{
    stats::{
        BUCKETS, ContextStats, LockContext, LockMode, LockModeStats, Log2Histogram, MmapLockStats,
        bucket_index,
    },
    sync::{AtomicU64, Condvar, Mutex, MutexGuard, Ordering, cpu_relax},
};

// ---- lock sites -----------------------------------------------------------

/// Where the lock is taken: the context the probe attributes an acquisition
/// to (the system call the thread is in, or a page fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockSite {
    /// A page fault (mmap_lock fallback of the per-VMA lock path).
    Fault,
    /// mmap(2).
    Mmap,
    /// munmap(2).
    Munmap,
    /// mprotect(2).
    Mprotect,
    /// mremap(2).
    Mremap,
    /// madvise(2).
    Madvise,
    /// brk(2).
    Brk,
    /// fork(2) (dup_mmap).
    Fork,
    /// A write(2) to /proc/PID/clear_refs.
    ClearRefs,
    /// A read(2) of /proc/PID/maps, smaps, pagemap...
    ProcRead,
    /// mlock2(2).
    Mlock,
    /// munlock(2).
    Munlock,
    /// Anything else.
    Other,
}

impl LockSite {
    /// All sites, in index order.
    pub const ALL: [Self; 13] = [
        Self::Fault,
        Self::Mmap,
        Self::Munmap,
        Self::Mprotect,
        Self::Mremap,
        Self::Madvise,
        Self::Brk,
        Self::Fork,
        Self::ClearRefs,
        Self::ProcRead,
        Self::Mlock,
        Self::Munlock,
        Self::Other,
    ];

    /// Index into [`Self::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The context the probe reports for this site: the x86_64 system call
    /// (number and name), a fault, or other.
    pub fn context(self) -> LockContext {
        let (nr, name) = match self {
            Self::Fault => return LockContext::Fault,
            Self::Other => return LockContext::Other,
            Self::ProcRead => (0, "read"),
            Self::ClearRefs => (1, "write"),
            Self::Mmap => (9, "mmap"),
            Self::Mprotect => (10, "mprotect"),
            Self::Munmap => (11, "munmap"),
            Self::Brk => (12, "brk"),
            Self::Mremap => (25, "mremap"),
            Self::Madvise => (28, "madvise"),
            Self::Fork => (57, "fork"),
            Self::Munlock => (151, "munlock"),
            Self::Mlock => (325, "mlock2"),
        };
        LockContext::Syscall {
            nr,
            name: name.to_owned(),
        }
    }
}

// ---- atomic statistics ----------------------------------------------------

/// Add `n` to a counter of this thread's stripe: with a plain load and
/// store when the thread owns the stripe (no other thread writes it, as
/// with `this_cpu_add()`), atomically when the stripe is shared.
#[inline]
fn bump(c: &AtomicU64, n: u64, owned: bool) {
    if owned {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    } else {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A [`Log2Histogram`] of one stripe: one atomic per bucket, an atomic
/// sum and an atomic maximum. Same bucket layout. Its buckets and sum only
/// grow (a reset takes a baseline, see [`MmapLock::reset_stats`]); the
/// maximum is reset to 0.
pub(crate) struct AtomicLog2Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
    max: AtomicU64,
}

impl AtomicLog2Histogram {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Record one value (the sum wraps only after 584 years of
    /// nanoseconds); `owned`: see [`bump`].
    #[inline]
    pub(crate) fn record(&self, v: u64, owned: bool) {
        bump(&self.buckets[bucket_index(v)], 1, owned);
        if v != 0 {
            bump(&self.sum, v, owned);
        }
        // fetch_max is a compare-and-swap loop; most values are no new
        // maximum, and a load tells. (Atomic even on an owned stripe: a
        // reset writes the maximum.)
        if v > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// The values recorded so far, plus `zeros` values of 0. Each part is
    /// exact; taken while others record, the parts may be from slightly
    /// different instants.
    pub(crate) fn snapshot(&self, zeros: u64) -> Log2Histogram {
        let mut buckets: [u64; BUCKETS] =
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        buckets[bucket_index(0)] += zeros;
        Log2Histogram::from_parts(
            buckets,
            self.sum.load(Ordering::Relaxed),
            self.max.load(Ordering::Relaxed),
        )
    }
}

/// Counters of one (site, mode) on one stripe. They only grow: a reset
/// takes a baseline instead of writing them, so that the thread owning
/// the stripe may add to them with plain stores.
struct SiteModeCounters {
    /// Blocking acquisitions granted at once: each is also an acquisition
    /// and a wait of 0 ns (added to those when read), so that the
    /// commonest acquisition costs one addition.
    immediate: AtomicU64,
    /// Other successful acquisitions, blocking and trylock (not
    /// downgrades).
    acquisitions: AtomicU64,
    /// Of `acquisitions`, those by a successful trylock.
    trylock_acquisitions: AtomicU64,
    /// Trylocks that failed.
    trylock_failures: AtomicU64,
    /// Blocking acquisitions that could not be granted at once and queued
    /// as waiters (the rwsem slow path's `contention_begin`).
    contended: AtomicU64,
    /// Nanoseconds from asking to getting, for every blocking acquisition
    /// but the `immediate` ones; never for trylocks.
    wait: AtomicLog2Histogram,
    /// Nanoseconds from acquisition (or downgrade, for the read hold that
    /// follows one) to release (or downgrade, for the write hold).
    hold: AtomicLog2Histogram,
}

impl SiteModeCounters {
    fn new() -> Self {
        Self {
            immediate: AtomicU64::new(0),
            acquisitions: AtomicU64::new(0),
            trylock_acquisitions: AtomicU64::new(0),
            trylock_failures: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            wait: AtomicLog2Histogram::new(),
            hold: AtomicLog2Histogram::new(),
        }
    }

    /// Count a blocking acquisition and its wait, after the release (see
    /// [`Waited`]).
    #[inline]
    fn count_blocking(&self, waited: Waited, owned: bool) {
        if !waited.contended && waited.ns == 0 {
            bump(&self.immediate, 1, owned);
            return;
        }
        bump(&self.acquisitions, 1, owned);
        if waited.contended {
            bump(&self.contended, 1, owned);
        }
        self.wait.record(waited.ns, owned);
    }

    /// Zero the maxima (the rest is reset by a baseline).
    fn reset_max(&self) {
        self.wait.max.store(0, Ordering::Relaxed);
        self.hold.max.store(0, Ordering::Relaxed);
    }

    /// Everything counted since the stripe was made.
    fn mode_stats(&self) -> LockModeStats {
        let immediate = self.immediate.load(Ordering::Relaxed);
        LockModeStats {
            acquisitions: self.acquisitions.load(Ordering::Relaxed) + immediate,
            trylock_acquisitions: self.trylock_acquisitions.load(Ordering::Relaxed),
            trylock_failures: self.trylock_failures.load(Ordering::Relaxed),
            lock_failures: 0,
            contended: self.contended.load(Ordering::Relaxed),
            remote: 0,
            wait: self.wait.snapshot(immediate),
            hold: self.hold.snapshot(0),
        }
    }
}

/// Number of (site, mode) counter sets.
const SLOTS: usize = LockSite::ALL.len() * 2;

const fn slot(site: LockSite, mode: LockMode) -> usize {
    site.index() * 2
        + match mode {
            LockMode::Read => 0,
            LockMode::Write => 1,
        }
}

/// The clock of the wait and hold times: [`crate::sched_clock`]
/// (monotonic nanoseconds, from the TSC where the host keeps time with
/// it). Under a model checker every duration is 0 instead: loom replays
/// schedules and needs each replay to take the same branches, which a
/// real duration (choosing the histogram bucket, hence the atomic)
/// breaks; shuttle's failing schedules stay replayable too. Counts are
/// unchanged.
mod clock {
    #[cfg(not(any(feature = "loom", feature = "shuttle")))]
    pub(super) use crate::sched_clock::{Stamp, now, ns_between};

    /// A point in time under a model checker: they all coincide.
    #[cfg(any(feature = "loom", feature = "shuttle"))]
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Stamp;

    /// Nanoseconds from `from` to `to`: 0.
    #[cfg(any(feature = "loom", feature = "shuttle"))]
    pub(super) const fn ns_between(_: Stamp, _: Stamp) -> u64 {
        0
    }

    /// Nanoseconds since `t`.
    pub(super) fn ns_since(t: Stamp) -> u64 {
        ns_between(t, now())
    }

    /// Now.
    #[cfg(any(feature = "loom", feature = "shuttle"))]
    pub(super) const fn now() -> Stamp {
        Stamp
    }
}

use clock::{Stamp, now, ns_between, ns_since};

// ---- the lock ---------------------------------------------------------------

/// The lock is held for write.
const WRITER: u64 = 1 << 0;
/// At least one writer is queued in the slow path: new readers must wait.
const WRITER_WAITING: u64 = 1 << 1;
/// At least one reader sleeps in the slow path: the write unlock (or
/// downgrade) must take the slow path and hand it the lock.
const READER_WAITING: u64 = 1 << 2;
/// One reader in the reader count (the bits above the flags).
const READER: u64 = 1 << 3;
/// The reader count.
const READERS_MASK: u64 = !(READER - 1);

/// The slow path's bookkeeping, under [`MmapLock::slow`]. Invariants:
/// `READER_WAITING` is set iff `waiting_readers > 0`; `WRITER_WAITING` is
/// set only while `waiting_writers > 0` (from the first time a queued
/// writer had to sleep until the last queued writer takes the lock).
#[derive(Debug, Default)]
struct Waiters {
    /// Readers asleep, waiting for a grant.
    waiting_readers: u64,
    /// Writers in the slow path (asleep or about to re-check).
    waiting_writers: u64,
    /// Bumped by every grant; a sleeping reader is granted when it changes.
    grant_epoch: u64,
}

/// `mm->mmap_lock` with `mm->mm_lock_seq`. Send + Sync; share it by
/// reference (e.g. in an `Arc`).
pub struct MmapLock {
    /// Reader count and flag bits (see the constants above).
    state: AtomicU64,
    /// `mm->mm_lock_seq`: odd while a write session is in progress.
    seq: AtomicU64,
    /// The slow path: waiter counts; sleepers wait on the condvars with it.
    slow: Mutex<Waiters>,
    /// Sleeping readers.
    readers_cv: Condvar,
    /// Sleeping writers.
    writers_cv: Condvar,
    /// Counters per (site, mode), see [`slot`]: one set per "CPU"
    /// ([`crate::percpu`]), made when a thread of that CPU first counts,
    /// so that threads taking the lock do not also share the counters'
    /// cache lines (a reader's acquisition and release would otherwise
    /// bounce them between CPUs), and the thread owning the CPU adds with
    /// plain stores; one shared set under a model checker. Boxed (a few
    /// thousand atomics, too many for a model checker's stack).
    counters: Box<[std::sync::OnceLock<Box<[SiteModeCounters]>>]>,
    /// Per (site, mode): the counters' sums at the last reset, taken off
    /// what they count.
    baseline: Mutex<Vec<LockModeStats>>,
    /// Write locks downgraded to read.
    downgrades: AtomicU64,
}

impl Default for MmapLock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MmapLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("MmapLock")
            .field("readers", &(s >> READER.trailing_zeros()))
            .field("writer", &(s & WRITER != 0))
            .field("writer_waiting", &(s & WRITER_WAITING != 0))
            .field("reader_waiting", &(s & READER_WAITING != 0))
            .field("mm_lock_seq", &self.seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Checks of the lock word a waiter makes before it sleeps (about 3 µs
/// of `pause`s on x86): a writer holds the engine's lock for about a
/// microsecond, a sleep and wake-up costs several. One under a model
/// checker, so that taking the lock while spinning is explored.
const SPIN_CHECKS: u32 = if crate::sync::MODEL_CHECKING { 1 } else { 64 };

fn lock_slow(m: &Mutex<Waiters>) -> MutexGuard<'_, Waiters> {
    // Nothing panics while holding it; tolerate poisoning all the same.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MmapLock {
    /// An unlocked lock with `mm_lock_seq` 0 (`mmap_init_lock()`).
    pub fn new() -> Self {
        let lock = Self {
            state: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            slow: Mutex::new(Waiters::default()),
            readers_cv: Condvar::new(),
            writers_cv: Condvar::new(),
            counters: (0..crate::percpu::STRIPES)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            baseline: Mutex::new(vec![LockModeStats::default(); SLOTS]),
            downgrades: AtomicU64::new(0),
        };
        if crate::sync::MODEL_CHECKING {
            // The model checker's one set, made before any thread uses
            // it (a set made by a thread that races another to make it
            // would be published through a lock the checker cannot see).
            let _ = lock.counters();
        } else {
            crate::sched_clock::init();
        }
        lock
    }

    // ---- acquisition --------------------------------------------------------

    /// `mmap_read_lock()`: waits while a writer holds the lock or is queued.
    pub fn read_lock(&self, site: LockSite) -> MmapReadGuard<'_> {
        // A reader that cannot have the lock at once is contended (the
        // kernel's reader queues: trace_contention_begin), whether the
        // holder lets go while it spins or it sleeps. One that can waited
        // 0 ns (a clock read would cost more than the acquisition).
        let at_once = self.try_read_fast();
        let start = (!at_once).then(now);
        if !at_once && !self.read_spin() {
            self.read_slow();
        }
        let acquired = now();
        let ns = start.map_or(0, |s| ns_between(s, acquired));
        MmapReadGuard {
            lock: self,
            site,
            since: acquired,
            waited: Some(Waited {
                contended: !at_once,
                ns,
            }),
        }
    }

    /// `mmap_read_trylock()`: fails at once if a writer holds the lock or is
    /// queued.
    pub fn read_trylock(&self, site: LockSite) -> Option<MmapReadGuard<'_>> {
        let ok = self.try_read_fast();
        self.count_trylock(site, LockMode::Read, ok);
        ok.then(|| MmapReadGuard {
            lock: self,
            site,
            since: now(),
            waited: None,
        })
    }

    /// `mmap_write_lock()`: waits until no one holds the lock; from then
    /// on until it gets it, new readers wait too.
    pub fn write_lock(&self, site: LockSite) -> MmapWriteGuard<'_> {
        // A writer that gets the lock while spinning is not contended
        // (rwsem_down_write_slowpath() marks contention only after
        // rwsem_optimistic_spin() fails). One that gets it at once waited
        // 0 ns.
        let at_once = self.try_write_fast();
        let start = (!at_once).then(now);
        let contended = !at_once && !self.write_spin() && self.write_slow();
        let seq = self.seq_begin();
        let acquired = now();
        let ns = start.map_or(0, |s| ns_between(s, acquired));
        MmapWriteGuard {
            lock: self,
            site,
            since: acquired,
            seq,
            waited: Some(Waited { contended, ns }),
        }
    }

    /// `mmap_write_trylock()`: fails at once if anyone holds the lock or a
    /// writer is queued.
    pub fn write_trylock(&self, site: LockSite) -> Option<MmapWriteGuard<'_>> {
        let ok = self.try_write_fast();
        self.count_trylock(site, LockMode::Write, ok);
        ok.then(|| {
            let seq = self.seq_begin();
            MmapWriteGuard {
                lock: self,
                site,
                since: now(),
                seq,
                waited: None,
            }
        })
    }

    // ---- observation --------------------------------------------------------

    /// `mm->mm_lock_seq` (Acquire): odd while a write session is in
    /// progress, even otherwise; +2 per write session. A VMA whose
    /// `vm_lock_seq` equals it is write-locked.
    pub fn mm_lock_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Whether the lock is held for write (by someone: for assertions by the
    /// holder, like `mmap_assert_write_locked()`).
    pub fn is_write_locked(&self) -> bool {
        self.state.load(Ordering::Acquire) & WRITER != 0
    }

    /// Whether a writer is queued, so that new readers wait (or fail).
    pub fn has_waiting_writer(&self) -> bool {
        self.state.load(Ordering::Acquire) & WRITER_WAITING != 0
    }

    /// Number of read holds right now.
    pub fn readers(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> READER.trailing_zeros()
    }

    // ---- statistics ---------------------------------------------------------

    /// Both modes' statistics, all sites together. `lock_failures` and
    /// `remote` are always 0: the engine has no fatal signals and no remote
    /// mm users. Read hold records include the read holds that followed a
    /// downgrade, which are not acquisitions.
    pub fn stats(&self) -> MmapLockStats {
        let mut s = MmapLockStats {
            downgrades: self.downgrades.load(Ordering::Relaxed),
            ..MmapLockStats::default()
        };
        for site in LockSite::ALL {
            s.read.merge(&self.mode_stats(slot(site, LockMode::Read)));
            s.write.merge(&self.mode_stats(slot(site, LockMode::Write)));
        }
        s
    }

    /// This thread's counter sets, and whether the thread owns them (see
    /// [`bump`]).
    fn counters(&self) -> (&[SiteModeCounters], bool) {
        let (cpu, owned) = if crate::sync::MODEL_CHECKING {
            (0, false)
        } else {
            crate::percpu::this_cpu()
        };
        let set = self.counters[cpu]
            .get_or_init(|| (0..SLOTS).map(|_| SiteModeCounters::new()).collect());
        (set, owned)
    }

    /// Counter set `slot`, summed over the CPUs, since it was made.
    fn raw_mode_stats(&self, slot: usize) -> LockModeStats {
        let mut m = LockModeStats::default();
        for c in self.counters.iter().filter_map(|c| c.get()) {
            m.merge(&c[slot].mode_stats());
        }
        m
    }

    /// Counter set `slot`, summed over the CPUs, since the last reset.
    fn mode_stats(&self, slot: usize) -> LockModeStats {
        let raw = self.raw_mode_stats(slot);
        let baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        raw.since(&baseline[slot])
    }

    /// Per-context statistics: the (site, mode) pairs with any acquisition
    /// or wait/hold record, sorted by (mode, context) as the probe's are.
    pub fn context_stats(&self) -> Vec<ContextStats> {
        let mut v = Vec::new();
        for site in LockSite::ALL {
            for mode in [LockMode::Read, LockMode::Write] {
                let m = self.mode_stats(slot(site, mode));
                if m.acquisitions == 0 && m.wait.is_empty() && m.hold.is_empty() {
                    continue;
                }
                v.push(ContextStats {
                    context: site.context(),
                    mode,
                    remote: false,
                    acquisitions: m.acquisitions,
                    contended: m.contended,
                    wait: m.wait,
                    hold: m.hold,
                });
            }
        }
        v.sort_by(|a, b| (a.mode, &a.context, a.remote).cmp(&(b.mode, &b.context, b.remote)));
        v
    }

    /// Zero all statistics: what is counted from now on. A record made
    /// concurrently may count or not; a maximum recorded concurrently may
    /// be lost.
    pub fn reset_stats(&self) {
        let mut baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        for (slot, b) in baseline.iter_mut().enumerate() {
            *b = self.raw_mode_stats(slot);
        }
        for c in self.counters.iter().filter_map(|c| c.get()).flatten() {
            c.reset_max();
        }
        self.downgrades.store(0, Ordering::Relaxed);
    }

    fn count_trylock(&self, site: LockSite, mode: LockMode, ok: bool) {
        let (set, owned) = self.counters();
        let c = &set[slot(site, mode)];
        if ok {
            bump(&c.acquisitions, 1, owned);
            bump(&c.trylock_acquisitions, 1, owned);
        } else {
            bump(&c.trylock_failures, 1, owned);
        }
    }

    /// Count a hold that ended, and the blocking acquisition that began
    /// it, if any.
    fn count_hold(&self, site: LockSite, mode: LockMode, hold_ns: u64, waited: Option<Waited>) {
        let (set, owned) = self.counters();
        let c = &set[slot(site, mode)];
        if let Some(w) = waited {
            c.count_blocking(w, owned);
        }
        c.hold.record(hold_ns, owned);
    }

    // ---- mm_lock_seq ----------------------------------------------------------

    /// `mm_lock_seqcount_begin()`, with the write lock just taken: returns
    /// the session's (odd) value.
    fn seq_begin(&self) -> u64 {
        // Only the write holder changes the count, so the value is known.
        // AcqRel: the kernel's smp_wmb() after the increment orders it
        // before the session's stores for readers that check it again.
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// `mm_lock_seqcount_end()` (`vma_end_write_all()`), still holding the
    /// write lock: the session's stores happen before the even value.
    fn seq_end(&self) {
        self.seq.fetch_add(1, Ordering::Release);
    }

    // ---- the protocol ---------------------------------------------------------

    /// One attempt at a read hold without sleeping: fails iff a writer
    /// holds the lock or is queued. Retries only when the word changed
    /// under it (another reader came or went), so it never waits on anyone.
    fn try_read_fast(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & (WRITER | WRITER_WAITING) != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                s,
                s + READER,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => {
                    s = now;
                    cpu_relax();
                }
            }
        }
    }

    /// A write hold from a free, uncontended lock (no holder, no waiter).
    fn try_write_fast(&self) -> bool {
        self.state
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// A reader's bounded spin before it sleeps: whether it got the lock.
    /// (Since 5.15 the kernel's readers do not spin, but a sleeping
    /// reader's wake-up there costs far less than a futex round trip here,
    /// and a writer holds the engine's lock for about a microsecond.)
    fn read_spin(&self) -> bool {
        for _ in 0..SPIN_CHECKS {
            cpu_relax();
            if self.state.load(Ordering::Relaxed) & (WRITER | WRITER_WAITING) == 0
                && self.try_read_fast()
            {
                return true;
            }
        }
        false
    }

    /// `rwsem_optimistic_spin()`: a writer spins while the lock is held,
    /// for a bounded number of checks (the kernel spins while the owner
    /// runs on a CPU), and takes it as soon as it is free, before writers
    /// queued asleep (the waiting bit is kept for them): whether it got
    /// the lock.
    fn write_spin(&self) -> bool {
        for _ in 0..SPIN_CHECKS {
            cpu_relax();
            let s = self.state.load(Ordering::Relaxed);
            if s & (WRITER | READERS_MASK) == 0
                && self
                    .state
                    .compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// `rwsem_down_read_slowpath()`: returns whether it had to sleep.
    fn read_slow(&self) -> bool {
        let mut w = lock_slow(&self.slow);
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & (WRITER | WRITER_WAITING) == 0 {
                match self.state.compare_exchange(
                    s,
                    s + READER,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return false,
                    Err(now) => s = now,
                }
                continue;
            }
            // Publish "a reader sleeps" only if the state is still the one
            // that blocks us: a writer's unlock that cleared WRITER in
            // between makes this fail, and we look again.
            if s & READER_WAITING == 0 {
                if let Err(now) = self.state.compare_exchange(
                    s,
                    s | READER_WAITING,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    s = now;
                    continue;
                }
            }
            break;
        }
        // Queued: whoever clears WRITER (or the queued writer, later) sees
        // READER_WAITING and must take the mutex, hence wait for us to sleep.
        w.waiting_readers += 1;
        let epoch = w.grant_epoch;
        while w.grant_epoch == epoch {
            w = self
                .readers_cv
                .wait(w)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // Granted: the granter counted us as a reader, under the mutex we
        // now hold (which orders its critical section before ours).
        true
    }

    /// `rwsem_down_write_slowpath()`: returns whether it had to sleep.
    fn write_slow(&self) -> bool {
        let mut w = lock_slow(&self.slow);
        w.waiting_writers += 1;
        let mut slept = false;
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & (WRITER | READERS_MASK) == 0 {
                // Free. The last queued writer takes the waiting bit off.
                let new = if w.waiting_writers == 1 {
                    (s | WRITER) & !WRITER_WAITING
                } else {
                    s | WRITER
                };
                match self
                    .state
                    .compare_exchange(s, new, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(now) => s = now,
                }
                continue;
            }
            // Held. Publish "a writer waits" against the state we checked:
            // from now on new readers stay out, and the last reader's (or the
            // writer's) unlock takes the mutex to wake us.
            if s & WRITER_WAITING == 0 {
                if let Err(now) = self.state.compare_exchange(
                    s,
                    s | WRITER_WAITING,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    s = now;
                    continue;
                }
            }
            slept = true;
            w = self
                .writers_cv
                .wait(w)
                .unwrap_or_else(PoisonError::into_inner);
            s = self.state.load(Ordering::Relaxed);
        }
        w.waiting_writers -= 1;
        slept
    }

    /// `up_read()`.
    fn read_unlock(&self) {
        let prev = self.state.fetch_sub(READER, Ordering::Release);
        if prev & READERS_MASK == READER && prev & WRITER_WAITING != 0 {
            // Last reader out with a writer queued: wake one.
            let _w = lock_slow(&self.slow);
            self.writers_cv.notify_one();
        }
    }

    /// `up_write()`, or `downgrade_write()` when `downgrade`: sleeping
    /// readers get the lock with us (and the downgrader keeps a read hold);
    /// with none and a writer queued, one writer is woken.
    fn write_release(&self, downgrade: bool) {
        let keep = if downgrade { READER } else { 0 };
        if self
            .state
            .compare_exchange(WRITER, keep, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        // Someone waits (the flags only change under the mutex while we hold
        // WRITER, and no one else can take the lock, so the word is stable).
        let mut w = lock_slow(&self.slow);
        let grant = w.waiting_readers;
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let mut new = (s & !WRITER) + keep;
            if grant > 0 {
                new = (new & !READER_WAITING) + grant * READER;
            }
            match self
                .state
                .compare_exchange(s, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        if grant > 0 {
            w.waiting_readers = 0;
            w.grant_epoch = w.grant_epoch.wrapping_add(1);
            self.readers_cv.notify_all();
        } else if !downgrade && w.waiting_writers > 0 {
            self.writers_cv.notify_one();
        }
    }
}

// ---- guards ---------------------------------------------------------------

/// How a blocking acquisition went: counted when the hold ends, after
/// the release, so that the statistics (shared counters, written by every
/// thread) add nothing to the time the lock is held.
#[derive(Clone, Copy, Debug)]
struct Waited {
    /// It could not be granted at once.
    contended: bool,
    /// From asking to getting.
    ns: u64,
}

/// A read hold of [`MmapLock`]; `mmap_read_unlock()` on drop.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct MmapReadGuard<'a> {
    lock: &'a MmapLock,
    site: LockSite,
    since: Stamp,
    /// The blocking acquisition, not counted yet (None: a trylock's or a
    /// downgrade's hold).
    waited: Option<Waited>,
}

impl MmapReadGuard<'_> {
    /// The lock held.
    pub const fn lock(&self) -> &MmapLock {
        self.lock
    }

    /// Where it was taken.
    pub const fn site(&self) -> LockSite {
        self.site
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        let hold = ns_since(self.since);
        self.lock.read_unlock();
        self.lock
            .count_hold(self.site, LockMode::Read, hold, self.waited);
    }
}

/// A write hold of [`MmapLock`]; `mmap_write_unlock()` on drop.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct MmapWriteGuard<'a> {
    lock: &'a MmapLock,
    site: LockSite,
    since: Stamp,
    seq: u64,
    waited: Option<Waited>,
}

impl<'a> MmapWriteGuard<'a> {
    /// The lock held.
    pub const fn lock(&self) -> &MmapLock {
        self.lock
    }

    /// Where it was taken.
    pub const fn site(&self) -> LockSite {
        self.site
    }

    /// This write session's `mm_lock_seq` (odd): what `vma_start_write()`
    /// stores in `vma->vm_lock_seq`.
    pub const fn seq(&self) -> u64 {
        self.seq
    }

    /// `mmap_write_downgrade()`: ends the write session (`mm_lock_seq`
    /// becomes even, releasing the session's VMA write locks) and turns the
    /// hold into a read hold, atomically: no writer can come in between.
    /// Sleeping readers come in too; queued writers keep waiting.
    pub fn downgrade(self) -> MmapReadGuard<'a> {
        let this = ManuallyDrop::new(self);
        let (lock, site) = (this.lock, this.site);
        let hold = ns_since(this.since);
        lock.seq_end();
        lock.write_release(true);
        let since = now();
        lock.downgrades.fetch_add(1, Ordering::Relaxed);
        lock.count_hold(site, LockMode::Write, hold, this.waited);
        MmapReadGuard {
            lock,
            site,
            since,
            waited: None,
        }
    }
}

impl Drop for MmapWriteGuard<'_> {
    fn drop(&mut self) {
        let hold = ns_since(self.since);
        self.lock.seq_end();
        self.lock.write_release(false);
        self.lock
            .count_hold(self.site, LockMode::Write, hold, self.waited);
    }
}

// Under a model checker the crate::sync types only work inside a model run
// (tests/model_mmap_lock.rs); these tests use real threads.
#[cfg(all(test, not(any(feature = "loom", feature = "shuttle"))))]
mod tests {
    use std::{
        sync::Arc,
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    /// Spin (sleeping a little) until `f` holds; panics after 10 s.
    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "timeout: {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MmapLock>();
        check::<MmapReadGuard<'_>>();
        check::<MmapWriteGuard<'_>>();
    }

    #[test]
    fn readers_share() {
        let l = MmapLock::new();
        let a = l.read_lock(LockSite::Fault);
        let b = l.read_lock(LockSite::Mmap);
        let c = l.read_trylock(LockSite::Fault).expect("shared");
        assert_eq!(l.readers(), 3);
        assert!(!l.is_write_locked());
        drop((a, b, c));
        assert_eq!(l.readers(), 0);
    }

    #[test]
    fn trylocks_fail_on_the_other_mode() {
        let l = MmapLock::new();
        let r = l.read_lock(LockSite::Fault);
        assert!(l.write_trylock(LockSite::Mmap).is_none());
        drop(r);
        let w = l.write_lock(LockSite::Mmap);
        assert!(l.is_write_locked());
        assert!(l.read_trylock(LockSite::Fault).is_none());
        assert!(l.write_trylock(LockSite::Munmap).is_none());
        drop(w);
        assert!(!l.is_write_locked());
        assert!(l.write_trylock(LockSite::Munmap).is_some());
        assert!(l.read_trylock(LockSite::Fault).is_some());
    }

    #[test]
    fn queued_writer_blocks_new_readers() {
        let l = Arc::new(MmapLock::new());
        let r = l.read_lock(LockSite::Fault);
        let w = {
            let l = Arc::clone(&l);
            thread::spawn(move || {
                let g = l.write_lock(LockSite::Munmap);
                assert_eq!(l.readers(), 0);
                g.seq()
            })
        };
        wait_until("writer queued", || l.has_waiting_writer());
        assert!(l.read_trylock(LockSite::Fault).is_none());
        assert!(l.write_trylock(LockSite::Mmap).is_none());
        // A blocking reader queues behind the writer, and gets in after it.
        let r2 = {
            let l = Arc::clone(&l);
            thread::spawn(move || {
                let g = l.read_lock(LockSite::Fault);
                assert!(!l.is_write_locked());
                drop(g);
            })
        };
        wait_until("reader queued", || {
            l.state.load(Ordering::Relaxed) & READER_WAITING != 0
        });
        assert_eq!(l.readers(), 1);
        drop(r);
        assert_eq!(w.join().unwrap(), 1);
        r2.join().unwrap();
        assert!(!l.has_waiting_writer());
        assert_eq!(l.state.load(Ordering::Relaxed), 0);
        let s = l.stats();
        assert_eq!(s.write.contended, 1);
        assert_eq!(s.read.contended, 1);
        assert_eq!(s.read.trylock_failures, 1);
        assert_eq!(s.write.trylock_failures, 1);
    }

    /// An acquisition, its wait and its hold are counted once the hold
    /// ends (after the release), so counting adds nothing to the hold.
    #[test]
    fn acquisitions_are_counted_when_their_hold_ends() {
        let l = MmapLock::new();
        let w = l.write_lock(LockSite::Mmap);
        assert_eq!(l.stats().write.acquisitions, 0);
        let r = w.downgrade();
        let s = l.stats();
        assert_eq!(
            (s.write.acquisitions, s.write.hold.count(), s.downgrades),
            (1, 1, 1)
        );
        assert_eq!((s.read.acquisitions, s.read.hold.count()), (0, 0));
        let r2 = l.read_lock(LockSite::Fault);
        let t = l.read_trylock(LockSite::Fault).expect("shared");
        assert_eq!(l.stats().read.acquisitions, 1, "the trylock counts at once");
        drop((r, r2, t));
        let s = l.stats();
        assert_eq!(
            (
                s.read.acquisitions,
                s.read.wait.count(),
                s.read.hold.count()
            ),
            (2, 1, 3)
        );
        assert_eq!((s.write.contended, s.read.contended), (0, 0));
    }

    #[test]
    fn downgrade_admits_readers_not_writers() {
        let l = MmapLock::new();
        let w = l.write_lock(LockSite::Munmap);
        assert_eq!(w.seq(), 1);
        let r = w.downgrade();
        assert_eq!(l.mm_lock_seq(), 2);
        assert!(!l.is_write_locked());
        assert_eq!(l.readers(), 1);
        let r2 = l.read_trylock(LockSite::Fault).expect("readers enter");
        assert!(l.write_trylock(LockSite::Mmap).is_none());
        drop(r);
        assert!(l.write_trylock(LockSite::Mmap).is_none());
        drop(r2);
        assert!(l.write_trylock(LockSite::Mmap).is_some());
    }

    #[test]
    fn downgrade_wakes_sleeping_readers_and_keeps_the_writer_waiting() {
        let l = Arc::new(MmapLock::new());
        let w = l.write_lock(LockSite::Munmap);
        let reader = {
            let l = Arc::clone(&l);
            thread::spawn(move || {
                let g = l.read_lock(LockSite::Fault);
                // in together with the downgraded holder
                assert_eq!(l.mm_lock_seq() % 2, 0);
                g.lock().readers()
            })
        };
        wait_until("reader queued", || {
            l.state.load(Ordering::Relaxed) & READER_WAITING != 0
        });
        let writer = {
            let l = Arc::clone(&l);
            thread::spawn(move || l.write_lock(LockSite::Mmap).seq())
        };
        wait_until("writer queued", || l.has_waiting_writer());
        let r = w.downgrade();
        // in with the downgraded holder, while the writer waits
        assert_eq!(reader.join().unwrap(), 2);
        assert!(l.has_waiting_writer());
        assert!(!l.is_write_locked());
        drop(r);
        assert_eq!(writer.join().unwrap(), 3);
        assert_eq!(l.mm_lock_seq(), 4);
        assert_eq!(l.stats().downgrades, 1);
    }

    #[test]
    fn mm_lock_seq_is_odd_only_in_write_sessions() {
        let l = MmapLock::new();
        assert_eq!(l.mm_lock_seq(), 0);
        for session in 0..3u64 {
            let w = l.write_lock(LockSite::Mprotect);
            assert_eq!(l.mm_lock_seq(), 4 * session + 1);
            assert_eq!(w.seq(), l.mm_lock_seq());
            drop(w);
            assert_eq!(l.mm_lock_seq(), 4 * session + 2);
            let w = l.write_trylock(LockSite::Mremap).expect("free");
            assert_eq!(w.seq(), 4 * session + 3);
            assert_eq!(w.seq(), l.mm_lock_seq());
            let r = w.downgrade();
            assert_eq!(l.mm_lock_seq(), 4 * session + 4);
            drop(r);
        }
        let r = l.read_lock(LockSite::Fault);
        assert_eq!(l.mm_lock_seq(), 12);
        drop(r);
    }

    #[test]
    fn site_contexts() {
        assert_eq!(LockSite::ALL.len(), 13);
        for (i, s) in LockSite::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        assert_eq!(LockSite::Fault.context(), LockContext::Fault);
        assert_eq!(LockSite::Other.context(), LockContext::Other);
        let sys = |nr, name: &str| LockContext::Syscall {
            nr,
            name: name.to_owned(),
        };
        assert_eq!(LockSite::ProcRead.context(), sys(0, "read"));
        assert_eq!(LockSite::ClearRefs.context(), sys(1, "write"));
        assert_eq!(LockSite::Mmap.context(), sys(9, "mmap"));
        assert_eq!(LockSite::Mprotect.context(), sys(10, "mprotect"));
        assert_eq!(LockSite::Munmap.context(), sys(11, "munmap"));
        assert_eq!(LockSite::Brk.context(), sys(12, "brk"));
        assert_eq!(LockSite::Mremap.context(), sys(25, "mremap"));
        assert_eq!(LockSite::Madvise.context(), sys(28, "madvise"));
        assert_eq!(LockSite::Fork.context(), sys(57, "fork"));
        assert_eq!(LockSite::Munlock.context(), sys(151, "munlock"));
        assert_eq!(LockSite::Mlock.context(), sys(325, "mlock2"));
    }

    #[test]
    fn stats_count_a_known_sequence() {
        let l = MmapLock::new();
        drop(l.read_lock(LockSite::Fault));
        drop(l.read_lock(LockSite::Fault));
        drop(l.read_trylock(LockSite::ProcRead).unwrap());
        let w = l.write_lock(LockSite::Munmap);
        assert!(l.read_trylock(LockSite::Fault).is_none());
        assert!(l.write_trylock(LockSite::Mmap).is_none());
        let r = w.downgrade();
        assert!(l.write_trylock(LockSite::Mmap).is_none());
        drop(r);
        drop(l.write_trylock(LockSite::Mmap).unwrap());

        let s = l.stats();
        assert_eq!(s.downgrades, 1);
        // read: 2 blocking + 1 trylock; holds: those 3 + the downgraded one
        assert_eq!(s.read.acquisitions, 3);
        assert_eq!(s.read.trylock_acquisitions, 1);
        assert_eq!(s.read.trylock_failures, 1);
        assert_eq!(s.read.contended, 0);
        assert_eq!(s.read.wait.count(), 2);
        assert_eq!(s.read.hold.count(), 4);
        // write: 1 blocking + 1 trylock; holds end at the downgrade and unlock
        assert_eq!(s.write.acquisitions, 2);
        assert_eq!(s.write.trylock_acquisitions, 1);
        assert_eq!(s.write.trylock_failures, 2);
        assert_eq!(s.write.contended, 0);
        assert_eq!(s.write.wait.count(), 1);
        assert_eq!(s.write.hold.count(), 2);
        assert_eq!((s.read.lock_failures, s.read.remote), (0, 0));
        assert_eq!((s.write.lock_failures, s.write.remote), (0, 0));

        let c = l.context_stats();
        let got: Vec<_> = c
            .iter()
            .map(|c| {
                (
                    c.mode,
                    c.context.name().to_owned(),
                    c.acquisitions,
                    c.wait.count(),
                    c.hold.count(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (LockMode::Read, "read".to_owned(), 1, 0, 1),
                (LockMode::Read, "munmap".to_owned(), 0, 0, 1),
                (LockMode::Read, "fault".to_owned(), 2, 2, 2),
                (LockMode::Write, "mmap".to_owned(), 1, 0, 1),
                (LockMode::Write, "munmap".to_owned(), 1, 1, 1),
            ]
        );
        assert!(c.iter().all(|c| !c.remote && c.contended == 0));

        l.reset_stats();
        assert_eq!(l.stats(), MmapLockStats::default());
        assert!(l.context_stats().is_empty());
    }

    #[test]
    fn counts_from_owned_and_shared_stripes_are_exact() {
        // 40 threads alive at once: 16 own a stripe (plain stores), the
        // rest share one (atomic additions).
        const THREADS: u64 = 40;
        let l = Arc::new(MmapLock::new());
        let all_in = Arc::new(std::sync::Barrier::new(THREADS as usize));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (l, all_in) = (Arc::clone(&l), Arc::clone(&all_in));
                thread::spawn(move || {
                    drop(l.read_lock(LockSite::Fault));
                    all_in.wait();
                    for _ in 1..500 {
                        drop(l.read_lock(LockSite::Fault));
                    }
                    drop(l.write_lock(LockSite::Mmap));
                    drop(l.read_trylock(LockSite::ProcRead));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = l.stats();
        assert_eq!(s.read.acquisitions, THREADS * 501 - s.read.trylock_failures);
        assert_eq!(
            s.read.trylock_acquisitions + s.read.trylock_failures,
            THREADS
        );
        assert_eq!(s.read.wait.count(), THREADS * 500);
        assert_eq!(s.read.hold.count(), s.read.acquisitions);
        assert_eq!(s.write.acquisitions, THREADS);
        assert_eq!(s.write.wait.count(), THREADS);
        assert_eq!(s.write.hold.count(), THREADS);
        // An acquisition granted at once waited 0 ns; one that was not is
        // contended and timed.
        let zero = s.read.wait.nonzero_buckets().find(|b| b.0 == 0);
        assert_eq!(
            zero.map_or(0, |b| b.2),
            s.read.wait.count() - s.read.contended,
            "{:?}",
            s.read.wait
        );
    }

    #[test]
    fn a_reset_while_a_thread_counts_keeps_what_came_after() {
        let l = Arc::new(MmapLock::new());
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = {
            let (l, done, stop) = (Arc::clone(&l), Arc::clone(&done), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    drop(l.read_lock(LockSite::Fault));
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        wait_until("counting", || done.load(Ordering::SeqCst) > 10_000);
        let before = done.load(Ordering::SeqCst);
        l.reset_stats();
        let after = done.load(Ordering::SeqCst);
        wait_until("counting on", || {
            done.load(Ordering::SeqCst) > after + 10_000
        });
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        let end = done.load(Ordering::SeqCst);
        let got = l.stats().read.acquisitions;
        // The reset fell between `before` and `after` (one acquisition may
        // have been counted but not yet announced).
        assert!(
            (end - after).saturating_sub(1) <= got && got <= end - before,
            "counted {got} since the reset; {before}..{after} done at the reset, {end} at the end"
        );
        l.reset_stats();
        assert_eq!(l.stats(), MmapLockStats::default());
    }

    #[test]
    fn a_forced_wait_is_contended_once() {
        let l = Arc::new(MmapLock::new());
        let r = l.read_lock(LockSite::Fault);
        let w = {
            let l = Arc::clone(&l);
            thread::spawn(move || drop(l.write_lock(LockSite::Mmap)))
        };
        wait_until("writer queued", || l.has_waiting_writer());
        thread::sleep(Duration::from_millis(5));
        drop(r);
        w.join().unwrap();
        let s = l.stats();
        assert_eq!(s.write.contended, 1);
        assert_eq!(s.read.contended, 0);
        assert!(s.write.wait.max() >= 5_000_000, "{:?}", s.write.wait);
        assert!(s.read.hold.max() >= 5_000_000, "{:?}", s.read.hold);
        let c = l.context_stats();
        let mmap = c
            .iter()
            .find(|c| c.mode == LockMode::Write)
            .expect("write context");
        assert_eq!(mmap.context.name(), "mmap");
        assert_eq!((mmap.acquisitions, mmap.contended), (1, 1));
    }

    #[test]
    fn threads_hammer_it() {
        let l = Arc::new(MmapLock::new());
        let inside = Arc::new(AtomicU64::new(0));
        const WRITER_IN: u64 = 1 << 32;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (l, inside) = (Arc::clone(&l), Arc::clone(&inside));
                thread::spawn(move || {
                    for i in 0..2000 {
                        if (i + t) % 5 == 0 {
                            let w = l.write_lock(LockSite::Mmap);
                            assert_eq!(inside.fetch_add(WRITER_IN, Ordering::SeqCst), 0);
                            assert_eq!(l.mm_lock_seq() % 2, 1);
                            inside.fetch_sub(WRITER_IN, Ordering::SeqCst);
                            if i % 2 == 0 {
                                let r = w.downgrade();
                                assert!(inside.fetch_add(1, Ordering::SeqCst) < WRITER_IN);
                                inside.fetch_sub(1, Ordering::SeqCst);
                                drop(r);
                            }
                        } else {
                            let r = l.read_lock(LockSite::Fault);
                            assert!(inside.fetch_add(1, Ordering::SeqCst) < WRITER_IN);
                            assert_eq!(l.mm_lock_seq() % 2, 0);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(r);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.state.load(Ordering::Relaxed), 0);
        let s = l.stats();
        assert_eq!(s.read.acquisitions + s.write.acquisitions, 4 * 2000);
        assert_eq!(s.write.acquisitions, 4 * 400);
        assert_eq!(s.downgrades, 4 * 200);
        assert_eq!(s.read.hold.count(), s.read.acquisitions + s.downgrades);
        assert_eq!(l.mm_lock_seq(), 2 * s.write.acquisitions);
    }
}
