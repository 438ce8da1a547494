//! Per-VMA locks and type-stable VMA objects: `vm_refcnt` and
//! `vm_lock_seq` with vma_start_read(), vma_end_read(), vma_start_write()
//! and vma_mark_detached() (include/linux/mmap_lock.h, mm/mmap_lock.c of
//! 6.15 and later), lock_vma_under_rcu() (mm/mmap_lock.c), and the
//! `vm_area_cachep` slab created with SLAB_TYPESAFE_BY_RCU (mm/vma_init.c).
//!
//! The protocol (seed 002, "per-VMA locks"):
//! - A VMA object is *attached* while it is in an mm's tree (`vm_refcnt`
//!   1 plus one per reader) and *detached* when removed (`vm_refcnt` 0).
//! - A writer holds mmap_lock for write and write-locks each VMA it
//!   changes by waiting for its readers to leave and setting
//!   `vm_lock_seq` to the mm's `mm_lock_seq`; every such lock is released
//!   at once when mmap_write_unlock bumps `mm_lock_seq`.
//! - A fault looks the address up locklessly in the published tree
//!   ([`VmaTreeSnapshot`], the maple tree read under RCU), read-locks what
//!   it found by incrementing `vm_refcnt` unless it is zero (detached) or a
//!   writer is entering (`VMA_LOCK_OFFSET` added), and re-checks
//!   `vm_lock_seq` against `mm_lock_seq`.
//! - Objects are recycled at once ([`VmaPool`]): between the lookup and the
//!   lock, the object found may have been freed and reused for another
//!   range of the same mm or for another mm. Hence the checks after
//!   locking: the object must belong to this mm (`vm_mm`), be attached, and
//!   contain the address. [`RcuChecks`] can switch them off, so that the
//!   model checker shows what each one prevents.
//!
//! Each object also carries the sequence count of the speculative page
//! fault design (seed 000, `vm_sequence`): it changes whenever the VMA is
//! write-locked, changed in place, detached or reused, and never goes back,
//! so a speculative fault that read it before and finds it unchanged under
//! the PTE lock knows its copy of the VMA is still right.

use std::time::Instant;

use crate::{
    sync::{Arc, AtomicU32, AtomicU64, Mutex, Ordering, RwLock, cpu_relax, thread},
    vma::Vma,
};

/// Added to `vm_refcnt` by a writer waiting for readers to leave; readers
/// refuse to enter above [`VMA_REF_LIMIT`].
pub const VMA_LOCK_OFFSET: u32 = 0x4000_0000;
/// The largest `vm_refcnt` a reader may increment.
pub const VMA_REF_LIMIT: u32 = VMA_LOCK_OFFSET - 1;
/// `vm_lock_seq` of an object never write-locked.
const UNLOCKED_SEQ: u64 = u64::MAX;

/// An identity of an address space, as `vma->vm_mm` is its pointer. Zero
/// is no mm.
pub type MmId = u64;

/// One `struct vm_area_struct` slot of the type-stable pool.
#[derive(Debug)]
pub struct VmaObject {
    slot: usize,
    /// `vm_refcnt`: 0 detached, 1 attached, +1 per reader, plus
    /// [`VMA_LOCK_OFFSET`] while a writer waits for readers.
    refcnt: AtomicU32,
    /// `vm_lock_seq`: the `mm_lock_seq` of the write session that last
    /// write-locked this VMA.
    lock_seq: AtomicU64,
    /// The speculative-fault sequence count (`vm_sequence`).
    seq: AtomicU64,
    /// `vm_mm`.
    mm: AtomicU64,
    /// `vm_start` and `vm_end`.
    start: AtomicU64,
    end: AtomicU64,
    /// Times this slot was given out by the pool.
    generation: AtomicU64,
    /// The rest of the VMA (flags, file, offset, anon_vma), read by fault
    /// handlers; replaced as a whole.
    data: RwLock<Option<std::sync::Arc<Vma>>>,
}

impl VmaObject {
    fn new(slot: usize) -> Self {
        Self {
            slot,
            refcnt: AtomicU32::new(0),
            lock_seq: AtomicU64::new(UNLOCKED_SEQ),
            seq: AtomicU64::new(0),
            mm: AtomicU64::new(0),
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            data: RwLock::new(None),
        }
    }

    /// The pool slot (the object's "address").
    pub const fn slot(&self) -> usize {
        self.slot
    }

    /// How many times the slot was allocated.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `vm_mm`.
    pub fn mm(&self) -> MmId {
        self.mm.load(Ordering::Acquire)
    }

    /// `[vm_start, vm_end)`.
    pub fn range(&self) -> (u64, u64) {
        (
            self.start.load(Ordering::Acquire),
            self.end.load(Ordering::Acquire),
        )
    }

    /// Whether the object is detached (`vm_refcnt` 0).
    pub fn is_detached(&self) -> bool {
        self.refcnt.load(Ordering::Acquire) == 0
    }

    /// `vm_refcnt` (for tests and assertions).
    pub fn refcnt(&self) -> u32 {
        self.refcnt.load(Ordering::Acquire)
    }

    /// The speculative-fault sequence count.
    pub fn sequence(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Whether the write session `mm_lock_seq` holds this VMA's write lock.
    pub fn is_write_locked(&self, mm_lock_seq: u64) -> bool {
        self.lock_seq.load(Ordering::Acquire) == mm_lock_seq
    }

    /// A copy of the VMA's fields.
    pub fn vma(&self) -> Option<std::sync::Arc<Vma>> {
        self.data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Run `f` on the VMA's fields, borrowed under the object's data lock
    /// (no copy of the reference: for the MMU's per-access lookup). `f`
    /// must not take locks a writer of the object may hold; writers hold
    /// the data lock only to swap the fields.
    pub fn with_vma<R>(&self, f: impl FnOnce(Option<&Vma>) -> R) -> R {
        f(self
            .data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_deref())
    }

    /// Replace the VMA's fields in place. The caller holds the VMA's write
    /// lock (or the object is not attached yet).
    pub fn set_vma(&self, vma: Vma) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.start.store(vma.start, Ordering::Release);
        self.end.store(vma.end, Ordering::Release);
        *self
            .data
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::sync::Arc::new(vma));
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Change only the flags word in place, in two steps through a
    /// transient value, as a writer that clears and sets flags separately
    /// does (`vm_flags_clear` then `vm_flags_set`): the value a speculative
    /// fault may read in between is `transient`. Seed 000 asks whether such
    /// a read can cause a spurious SIGSEGV. The caller holds the VMA's
    /// write lock.
    pub fn set_flags_via(&self, transient: crate::vm_flags::VmFlags, vma: Vma) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        {
            let mut d = self
                .data
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(old) = d.as_ref() {
                let mut t = (**old).clone();
                t.flags = transient;
                *d = Some(std::sync::Arc::new(t));
            }
        }
        thread::yield_now();
        self.start.store(vma.start, Ordering::Release);
        self.end.store(vma.end, Ordering::Release);
        *self
            .data
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::sync::Arc::new(vma));
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// vma_mark_attached(): insert into an mm (the object is new from the
    /// pool, so no reader holds it).
    fn mark_attached(&self) {
        self.refcnt.store(1, Ordering::Release);
    }

    /// vma_start_write(): under mmap_lock for write (session
    /// `mm_lock_seq`), wait for the VMA's readers to leave and write-lock
    /// it until the session ends. Returns how long it waited. Locking a
    /// VMA twice in one session is free.
    pub fn start_write(&self, mm_lock_seq: u64) -> std::time::Duration {
        if self.lock_seq.load(Ordering::Acquire) == mm_lock_seq {
            return std::time::Duration::ZERO;
        }
        let t = Instant::now();
        // __vma_enter_locked(): announce the writer, then wait until only
        // the tree's reference and ours remain.
        let old = self.refcnt.fetch_add(VMA_LOCK_OFFSET, Ordering::AcqRel);
        if old != 0 {
            wait_until(|| self.refcnt.load(Ordering::Acquire) == VMA_LOCK_OFFSET + 1);
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.lock_seq.store(mm_lock_seq, Ordering::Release);
        self.refcnt.fetch_sub(VMA_LOCK_OFFSET, Ordering::AcqRel);
        t.elapsed()
    }

    /// vma_mark_detached(): the VMA, write-locked, leaves its tree. Readers
    /// that raced in (and will fail their `vm_lock_seq` check) are waited
    /// for.
    fn mark_detached(&self) {
        loop {
            if self
                .refcnt
                .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break;
            }
            cpu_relax();
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
    }
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins += 1;
        if spins < 64 {
            cpu_relax();
        } else {
            thread::yield_now();
        }
    }
}

/// Why vma_start_read() failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartReadError {
    /// The VMA is write-locked (or a writer is entering): fall back to
    /// mmap_lock.
    Locked,
    /// `vm_refcnt` was 0: the object was detached after the lookup; look up
    /// again (-EAGAIN).
    Detached,
    /// The object now belongs to another mm.
    OtherMm,
}

/// A read lock on a VMA object (held `vm_refcnt` reference); released on
/// drop (vma_end_read()).
#[derive(Debug)]
pub struct VmaReadGuard {
    obj: Arc<VmaObject>,
}

impl VmaReadGuard {
    /// The locked object.
    pub fn object(&self) -> &Arc<VmaObject> {
        &self.obj
    }
}

impl Drop for VmaReadGuard {
    fn drop(&mut self) {
        self.obj.refcnt.fetch_sub(1, Ordering::AcqRel);
    }
}

/// vma_start_read(): try to read-lock `obj` for a fault of mm `mm` whose
/// current `mm_lock_seq` is read by `mm_lock_seq`.
pub fn vma_start_read(
    obj: &Arc<VmaObject>,
    mm: MmId,
    mm_lock_seq: &dyn Fn() -> u64,
    checks: RcuChecks,
) -> Result<VmaReadGuard, StartReadError> {
    start_read(Arc::clone(obj), mm, mm_lock_seq, checks)
}

/// [`vma_start_read`] on a reference the caller gives up (the guard keeps
/// it).
fn start_read(
    obj: Arc<VmaObject>,
    mm: MmId,
    mm_lock_seq: &dyn Fn() -> u64,
    checks: RcuChecks,
) -> Result<VmaReadGuard, StartReadError> {
    if obj.lock_seq.load(Ordering::Acquire) == mm_lock_seq() {
        return Err(StartReadError::Locked);
    }
    // __refcount_inc_not_zero_limited_acquire()
    let mut cur = obj.refcnt.load(Ordering::Acquire);
    loop {
        if cur == 0 && checks.detached {
            return Err(StartReadError::Detached);
        }
        if cur > VMA_REF_LIMIT {
            return Err(StartReadError::Locked);
        }
        match obj
            .refcnt
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
    let guard = VmaReadGuard { obj };
    let obj = &guard.obj;
    if checks.vm_mm && obj.mm() != mm {
        return Err(StartReadError::OtherMm);
    }
    // A writer may have locked it between the first check and the
    // increment; mm_lock_seq changes invalidate every older lock.
    if obj.lock_seq.load(Ordering::Acquire) == mm_lock_seq() {
        return Err(StartReadError::Locked);
    }
    Ok(guard)
}

/// Which of lock_vma_under_rcu()'s safety checks run. The engine always
/// uses [`RcuChecks::ALL`]; the model-checking tests turn one off to show
/// the interleaving it exists for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RcuChecks {
    /// After locking: the object belongs to the faulting mm.
    pub vm_mm: bool,
    /// `vm_refcnt` 0 (detached) refuses the lock.
    pub detached: bool,
    /// After locking: the address lies inside the object's range.
    pub range: bool,
}

impl RcuChecks {
    /// Every check, as in the kernel.
    pub const ALL: Self = Self {
        vm_mm: true,
        detached: true,
        range: true,
    };
}

/// The per-VMA lock events of `/proc/vmstat` (VMA_LOCK_SUCCESS,
/// VMA_LOCK_ABORT, VMA_LOCK_RETRY, VMA_LOCK_MISS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmaLockStats {
    /// `vma_lock_success`: faults completed under a per-VMA lock.
    pub success: u64,
    /// `vma_lock_abort`: lock_vma_under_rcu() gave up (no VMA, VMA
    /// write-locked, reused, or not covering the address): mmap_lock.
    pub abort: u64,
    /// `vma_lock_retry`: the handler returned VM_FAULT_RETRY under the VMA
    /// lock (here: no anon_vma yet): mmap_lock.
    pub retry: u64,
    /// `vma_lock_miss`: the VMA found was detached; the lookup was
    /// repeated.
    pub miss: u64,
}

/// Per-CPU [`VmaLockStats`] counters.
#[derive(Debug, Default)]
pub struct VmaLockCounters(crate::percpu::PerCpuCounters<4>);

impl VmaLockCounters {
    /// Count a success.
    pub fn success(&self) {
        self.0.add(0, 1);
    }

    /// Count an abort.
    pub fn abort(&self) {
        self.0.add(1, 1);
    }

    /// Count a retry.
    pub fn retry(&self) {
        self.0.add(2, 1);
    }

    /// Count a miss.
    pub fn miss(&self) {
        self.0.add(3, 1);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> VmaLockStats {
        VmaLockStats {
            success: self.0.sum(0),
            abort: self.0.sum(1),
            retry: self.0.sum(2),
            miss: self.0.sum(3),
        }
    }

    /// Zero the counters.
    pub fn reset(&self) {
        self.0.reset();
    }
}

/// The published VMA tree: start → (end, object). Immutable once
/// published; writers publish a new one (sharing structure) before they
/// release mmap_lock, and readers that still hold the old one see old
/// objects, which may meanwhile be detached or reused — exactly what RCU
/// readers of the maple tree see.
pub type VmaTreeSnapshot = imbl::OrdMap<u64, (u64, Arc<VmaObject>)>;

/// The RCU-published pointer to an mm's current [`VmaTreeSnapshot`]:
/// an `ArcSwap`, whose loads write no shared cache line (as
/// rcu_dereference does not); a lock under the model checkers, which must
/// see every synchronisation.
#[derive(Debug, Default)]
pub struct PublishedTree {
    #[cfg(not(any(feature = "loom", feature = "shuttle")))]
    current: arc_swap::ArcSwap<VmaTreeSnapshot>,
    #[cfg(any(feature = "loom", feature = "shuttle"))]
    current: RwLock<std::sync::Arc<VmaTreeSnapshot>>,
}

impl PublishedTree {
    /// rcu_dereference() inside rcu_read_lock(): run `f` on the current
    /// tree.
    pub fn with<R>(&self, f: impl FnOnce(&VmaTreeSnapshot) -> R) -> R {
        #[cfg(not(any(feature = "loom", feature = "shuttle")))]
        {
            f(&self.current.load())
        }
        #[cfg(any(feature = "loom", feature = "shuttle"))]
        {
            f(&self.load())
        }
    }

    /// The current tree, kept.
    pub fn load(&self) -> std::sync::Arc<VmaTreeSnapshot> {
        #[cfg(not(any(feature = "loom", feature = "shuttle")))]
        {
            self.current.load_full()
        }
        #[cfg(any(feature = "loom", feature = "shuttle"))]
        {
            std::sync::Arc::clone(
                &self
                    .current
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        }
    }

    /// rcu_assign_pointer(): publish a new tree.
    pub fn publish(&self, tree: VmaTreeSnapshot) {
        #[cfg(not(any(feature = "loom", feature = "shuttle")))]
        {
            self.current.store(std::sync::Arc::new(tree));
        }
        #[cfg(any(feature = "loom", feature = "shuttle"))]
        {
            *self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(tree);
        }
    }
}

/// mas_walk(): the entry of `tree` whose range holds `addr`.
pub fn tree_lookup(tree: &VmaTreeSnapshot, addr: u64) -> Option<Arc<VmaObject>> {
    tree.range(..=addr)
        .next_back()
        .filter(|(_, (end, _))| addr < *end)
        .map(|(_, (_, obj))| Arc::clone(obj))
}

/// The outcome of [`lock_vma_under_rcu`].
#[derive(Debug)]
pub enum RcuLock {
    /// The VMA holding the address, read-locked.
    Locked(VmaReadGuard),
    /// Give up: take mmap_lock (counted as `vma_lock_abort`).
    Abort,
}

/// lock_vma_under_rcu() (mm/mmap_lock.c): find and read-lock the VMA
/// holding `addr` in mm `mm` without mmap_lock. Counts miss and abort.
pub fn lock_vma_under_rcu(
    tree: &PublishedTree,
    mm: MmId,
    mm_lock_seq: &dyn Fn() -> u64,
    addr: u64,
    checks: RcuChecks,
    counters: &VmaLockCounters,
) -> RcuLock {
    loop {
        let Some(obj) = tree.with(|t| tree_lookup(t, addr)) else {
            counters.abort();
            return RcuLock::Abort;
        };
        match start_read(obj, mm, mm_lock_seq, checks) {
            Ok(guard) => {
                // The object is stable now; is it the right one?
                let (start, end) = guard.obj.range();
                if checks.range && !(start <= addr && addr < end) {
                    counters.abort();
                    return RcuLock::Abort;
                }
                return RcuLock::Locked(guard);
            }
            Err(StartReadError::Detached) => {
                // Replaced after we found it: look again.
                counters.miss();
            }
            Err(StartReadError::Locked | StartReadError::OtherMm) => {
                counters.abort();
                return RcuLock::Abort;
            }
        }
    }
}

/// The VMA slab (`vm_area_cachep`, SLAB_TYPESAFE_BY_RCU): objects are
/// never freed, only recycled, so a lockless reader always finds a VMA
/// object where it looked, though perhaps not the VMA it looked for. One
/// pool may serve several mms, as the slab does.
#[derive(Debug, Default)]
pub struct VmaPool {
    free: Mutex<Vec<Arc<VmaObject>>>,
    slots: AtomicU64,
}

impl VmaPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// vm_area_alloc() + fields + vma_mark_attached(), write-locked in the
    /// session `mm_lock_seq` (a new VMA is not usable by per-VMA-lock
    /// readers until mmap_write_unlock). Reuses the most recently freed
    /// object first, as a slab's per-CPU freelist does.
    pub fn alloc(&self, mm: MmId, vma: Vma, mm_lock_seq: u64) -> Arc<VmaObject> {
        let obj = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| {
                let slot = self.slots.fetch_add(1, Ordering::Relaxed) as usize;
                Arc::new(VmaObject::new(slot))
            });
        obj.generation.fetch_add(1, Ordering::AcqRel);
        obj.lock_seq.store(mm_lock_seq, Ordering::Release);
        obj.mm.store(mm, Ordering::Release);
        obj.set_vma(vma);
        obj.mark_attached();
        obj
    }

    /// vma_mark_detached() + vm_area_free(): the object, write-locked by
    /// the caller, leaves its tree and goes back to the pool at once.
    pub fn free(&self, obj: Arc<VmaObject>) {
        obj.mark_detached();
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(obj);
    }

    /// Objects ever created.
    pub fn slots(&self) -> u64 {
        self.slots.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(any(feature = "loom", feature = "shuttle"))))]
mod tests {
    use super::*;
    use crate::vm_flags::VmFlags;

    fn vma(start: u64, end: u64) -> Vma {
        Vma::new(
            start,
            end,
            VmFlags::READ | VmFlags::WRITE,
            start >> 12,
            None,
        )
    }

    #[test]
    fn read_lock_refused_while_write_locked_and_released_by_new_session() {
        let pool = VmaPool::new();
        let seq = AtomicU64::new(1); // write session 1 in progress
        let o = pool.alloc(7, vma(0x1000, 0x3000), 1);
        let cur = || seq.load(Ordering::Acquire);
        assert_eq!(
            vma_start_read(&o, 7, &cur, RcuChecks::ALL).unwrap_err(),
            StartReadError::Locked
        );
        seq.store(2, Ordering::Release); // mmap_write_unlock
        let g = vma_start_read(&o, 7, &cur, RcuChecks::ALL).expect("unlocked");
        assert_eq!(o.refcnt(), 2);
        drop(g);
        assert_eq!(o.refcnt(), 1);
        assert_eq!(
            vma_start_read(&o, 8, &cur, RcuChecks::ALL).unwrap_err(),
            StartReadError::OtherMm
        );
        assert_eq!(o.refcnt(), 1, "a failed check drops its reference");
    }

    #[test]
    fn writer_waits_for_reader_and_detached_objects_are_reused() {
        let pool = VmaPool::new();
        let seq = AtomicU64::new(2);
        let o = pool.alloc(1, vma(0x1000, 0x2000), 0);
        let g = vma_start_read(&o, 1, &|| seq.load(Ordering::Acquire), RcuChecks::ALL).unwrap();
        let o2 = Arc::clone(&o);
        let w = std::thread::spawn(move || o2.start_write(3));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!w.is_finished(), "the writer waits for the reader");
        let s0 = o.sequence();
        drop(g);
        w.join().unwrap();
        assert!(o.is_write_locked(3));
        assert!(o.sequence() > s0);
        pool.free(Arc::clone(&o));
        assert!(o.is_detached());
        let reused = pool.alloc(9, vma(0x8000, 0x9000), 3);
        assert_eq!(
            reused.slot(),
            o.slot(),
            "the slab hands the object out again"
        );
        assert_eq!((reused.mm(), reused.range()), (9, (0x8000, 0x9000)));
        assert_eq!(reused.generation(), 2);
        assert_eq!(pool.slots(), 1);
    }

    #[test]
    fn lookup_retries_on_detached_and_aborts_on_foreign_objects() {
        let pool = VmaPool::new();
        let tree = PublishedTree::default();
        let counters = VmaLockCounters::default();
        let seq = || 10;
        let a = pool.alloc(1, vma(0x1000, 0x2000), 0);
        tree.publish(VmaTreeSnapshot::new().update(0x1000, (0x2000, Arc::clone(&a))));
        match lock_vma_under_rcu(&tree, 1, &seq, 0x1800, RcuChecks::ALL, &counters) {
            RcuLock::Locked(g) => assert_eq!(g.object().slot(), a.slot()),
            RcuLock::Abort => panic!("should lock"),
        }
        // Not mapped.
        assert!(matches!(
            lock_vma_under_rcu(&tree, 1, &seq, 0x5000, RcuChecks::ALL, &counters),
            RcuLock::Abort
        ));
        // Reused by another mm for another range: the stale tree still
        // points at it.
        a.start_write(10);
        pool.free(Arc::clone(&a));
        let b = pool.alloc(2, vma(0x1000, 0x2000), 0);
        assert_eq!(b.slot(), a.slot());
        assert!(matches!(
            lock_vma_under_rcu(&tree, 1, &seq, 0x1800, RcuChecks::ALL, &counters),
            RcuLock::Abort
        ));
        // Without the vm_mm check, mm 1 locks mm 2's VMA.
        let broken = RcuChecks {
            vm_mm: false,
            ..RcuChecks::ALL
        };
        assert!(matches!(
            lock_vma_under_rcu(&tree, 1, &seq, 0x1800, broken, &counters),
            RcuLock::Locked(_)
        ));
        assert_eq!(
            counters.snapshot(),
            VmaLockStats {
                success: 0,
                abort: 2,
                retry: 0,
                miss: 0
            }
        );
    }
}
