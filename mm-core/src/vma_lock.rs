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
/// drop (vma_end_read()). It borrows the object from its pool, where
/// objects stay (type-stable) while the pool lives.
#[derive(Debug)]
pub struct VmaReadGuard<'a> {
    obj: &'a VmaObject,
}

impl<'a> VmaReadGuard<'a> {
    /// The locked object.
    pub const fn object(&self) -> &'a VmaObject {
        self.obj
    }
}

impl Drop for VmaReadGuard<'_> {
    fn drop(&mut self) {
        self.obj.refcnt.fetch_sub(1, Ordering::AcqRel);
    }
}

/// vma_start_read(): try to read-lock `obj` for a fault of mm `mm` whose
/// current `mm_lock_seq` is read by `mm_lock_seq`.
pub fn vma_start_read<'a>(
    obj: &'a VmaObject,
    mm: MmId,
    mm_lock_seq: &dyn Fn() -> u64,
    checks: RcuChecks,
) -> Result<VmaReadGuard<'a>, StartReadError> {
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

/// A VMA object's number in its pool ([`VmaPool::get`]).
pub type VmaSlot = u32;

/// The published VMA tree: start → (end, object). Immutable once
/// published; writers publish a new one (sharing structure) before they
/// release mmap_lock, and readers that still hold the old one see old
/// objects, which may meanwhile be detached or reused — exactly what RCU
/// readers of the maple tree see.
///
/// The tree holds the objects' slot numbers in the mm's pool, not
/// references: a new version copies the nodes it changes, and copying a
/// node of references would touch every object in it (a reference count
/// each), objects that faulting threads are reading on other CPUs.
#[derive(Clone, Debug, Default)]
pub struct VmaTreeSnapshot {
    map: imbl::OrdMap<u64, (u64, VmaSlot)>,
    /// Where the slots are (None only for a tree that never held one).
    pool: Option<Arc<VmaPool>>,
}

impl VmaTreeSnapshot {
    /// An empty tree of objects from `pool`.
    pub fn new(pool: &Arc<VmaPool>) -> Self {
        Self {
            map: imbl::OrdMap::new(),
            pool: Some(Arc::clone(pool)),
        }
    }

    fn object(&self, slot: VmaSlot) -> &Arc<VmaObject> {
        self.pool
            .as_ref()
            .expect("a tree with entries has a pool")
            .get(slot)
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Insert (or replace) the VMA `[start, end)` held by `obj`, an object
    /// of this tree's pool.
    pub fn insert(&mut self, start: u64, end: u64, obj: &VmaObject) {
        debug_assert!(
            self.pool
                .as_ref()
                .is_some_and(|p| std::ptr::eq(&**p.get(obj.slot() as VmaSlot), obj)),
            "an object of another pool"
        );
        self.map.insert(start, (end, obj.slot() as VmaSlot));
    }

    /// [`Self::insert`], returning the tree.
    pub fn with_entry(mut self, start: u64, end: u64, obj: &VmaObject) -> Self {
        self.insert(start, end, obj);
        self
    }

    /// Remove the VMA starting at `start`.
    pub fn remove(&mut self, start: u64) {
        self.map.remove(&start);
    }

    /// mas_walk(): the slot of the object holding `addr`.
    pub fn lookup_slot(&self, addr: u64) -> Option<VmaSlot> {
        self.entry(addr).map(|(_, _, slot)| slot)
    }

    /// mas_walk(): the VMA holding `addr`, as (start, end, object).
    pub fn lookup(&self, addr: u64) -> Option<(u64, u64, &Arc<VmaObject>)> {
        self.entry(addr)
            .map(|(start, end, slot)| (start, end, self.object(slot)))
    }

    /// The entry holding `addr`: (start, end, slot).
    fn entry(&self, addr: u64) -> Option<(u64, u64, VmaSlot)> {
        let (start, (end, slot)) = self.map.range(..=addr).next_back()?;
        (addr < *end).then_some((*start, *end, *slot))
    }

    /// The VMAs in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &Arc<VmaObject>)> {
        self.map
            .iter()
            .map(|(s, (e, slot))| (*s, *e, self.object(*slot)))
    }

    /// The VMAs meeting `[lo, hi)`, in address order.
    pub fn overlapping(&self, lo: u64, hi: u64) -> Vec<&Arc<VmaObject>> {
        let mut out: Vec<&Arc<VmaObject>> = self
            .map
            .range(..hi)
            .rev()
            .take_while(|(_, (end, _))| *end > lo)
            .map(|(_, (_, slot))| self.object(*slot))
            .collect();
        out.reverse();
        out
    }
}

/// The RCU-published pointer to an mm's current [`VmaTreeSnapshot`].
///
/// A reader must not write a cache line that other readers or the writer
/// share (rcu_dereference() does not), and a fault reads the tree once or
/// twice. So each thread keeps the last tree it read, with the version it
/// read it at: while the version (one shared counter, written only by
/// publications) is unchanged, the kept tree is still the current one and
/// reading it costs one load. After a publication, the first read on each
/// thread takes the new tree under a read lock. A publication stores the
/// tree before it moves the version on, so a tree kept at version `v` is
/// never older than the one published as `v` (a reader that sees `v`
/// during the next publication reads as if it had come just before it).
///
/// Under the model checkers, whose threads are not the operating system's,
/// nothing is kept: every read takes the lock.
#[derive(Debug)]
pub struct PublishedTree {
    /// Tells trees apart in the threads' kept copies.
    id: u64,
    /// Publications so far.
    version: AtomicU64,
    current: RwLock<std::sync::Arc<VmaTreeSnapshot>>,
}

impl Default for PublishedTree {
    fn default() -> Self {
        Self::with_tree(VmaTreeSnapshot::default())
    }
}

/// A thread's last tree read: (tree id, version, tree).
type KeptTree = Option<(u64, u64, std::sync::Arc<VmaTreeSnapshot>)>;

thread_local! {
    static KEPT: std::cell::RefCell<KeptTree> = const { std::cell::RefCell::new(None) };
}

impl PublishedTree {
    /// An empty tree of objects from `pool`.
    pub fn new(pool: &Arc<VmaPool>) -> Self {
        Self::with_tree(VmaTreeSnapshot::new(pool))
    }

    fn with_tree(tree: VmaTreeSnapshot) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            version: AtomicU64::new(0),
            current: RwLock::new(std::sync::Arc::new(tree)),
        }
    }

    /// rcu_dereference() inside rcu_read_lock(): run `f` on the current
    /// tree.
    pub fn with<R>(&self, f: impl FnOnce(&VmaTreeSnapshot) -> R) -> R {
        if crate::sync::MODEL_CHECKING {
            return f(&self.load());
        }
        let version = self.version.load(Ordering::Acquire);
        let mut f = Some(f);
        // The kept tree, borrowed for `f` (a nested read on this thread
        // borrows it again, or reads without keeping).
        let r = KEPT.with(|k| {
            let k = k.try_borrow().ok()?;
            match (&*k, f.take()) {
                (Some((id, v, tree)), Some(f)) if *id == self.id && *v == version => Some(f(tree)),
                (_, g) => {
                    f = g;
                    None
                }
            }
        });
        let Some(f) = f else {
            return r.expect("f ran on the kept tree");
        };
        let tree = self.load();
        KEPT.with(|k| {
            if let Ok(mut k) = k.try_borrow_mut() {
                *k = Some((self.id, version, std::sync::Arc::clone(&tree)));
            }
        });
        f(&tree)
    }

    /// The current tree, kept.
    pub fn load(&self) -> std::sync::Arc<VmaTreeSnapshot> {
        std::sync::Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// rcu_assign_pointer(): publish a new tree.
    pub fn publish(&self, tree: VmaTreeSnapshot) {
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            std::sync::Arc::new(tree),
        );
        self.version.fetch_add(1, Ordering::Release);
        // The old tree goes when its last reader lets go (the RCU grace
        // period), here or later.
        drop(old);
    }
}

/// mas_walk(): the entry of `tree` whose range holds `addr`.
pub fn tree_lookup(tree: &VmaTreeSnapshot, addr: u64) -> Option<Arc<VmaObject>> {
    tree.lookup(addr).map(|(_, _, obj)| Arc::clone(obj))
}

/// The outcome of [`lock_vma_under_rcu`].
#[derive(Debug)]
pub enum RcuLock<'a> {
    /// The VMA holding the address, read-locked.
    Locked(VmaReadGuard<'a>),
    /// Give up: take mmap_lock (counted as `vma_lock_abort`).
    Abort,
}

/// lock_vma_under_rcu() (mm/mmap_lock.c): find and read-lock the VMA
/// holding `addr` in mm `mm` without mmap_lock. Counts miss and abort.
/// `pool` is the pool of the tree's objects.
pub fn lock_vma_under_rcu<'a>(
    tree: &PublishedTree,
    pool: &'a VmaPool,
    mm: MmId,
    mm_lock_seq: &dyn Fn() -> u64,
    addr: u64,
    checks: RcuChecks,
    counters: &VmaLockCounters,
) -> RcuLock<'a> {
    loop {
        // The object's slot: the object stays in the pool whatever
        // happens to the tree (SLAB_TYPESAFE_BY_RCU), so it is taken from
        // there, without a reference count.
        let Some(slot) = tree.with(|t| {
            debug_assert!(
                t.pool.as_deref().is_none_or(|p| std::ptr::eq(p, pool)),
                "the tree's objects are from another pool"
            );
            t.lookup_slot(addr)
        }) else {
            counters.abort();
            return RcuLock::Abort;
        };
        match vma_start_read(pool.get(slot), mm, mm_lock_seq, checks) {
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
///
/// Objects are numbered by slot and found by number without a lock
/// ([`Self::get`]): chunk `k` of the pool holds `FIRST_CHUNK << k` slots,
/// allocated on first use and kept until the pool goes.
#[derive(Debug)]
pub struct VmaPool {
    /// Slots of freed objects, the most recently freed last.
    free: Mutex<Vec<VmaSlot>>,
    slots: AtomicU64,
    chunks: Box<[Chunk]>,
}

/// A chunk of a pool's objects.
type Chunk = std::sync::OnceLock<Box<[std::sync::OnceLock<Arc<VmaObject>>]>>;

/// Slots in a pool's first chunk (few under a model checker, whose
/// objects are costly).
const FIRST_CHUNK: usize = if crate::sync::MODEL_CHECKING { 4 } else { 64 };
/// Chunks: room for every slot number (`FIRST_CHUNK << CHUNKS` slots,
/// more than 2^32).
const CHUNKS: usize = (u32::BITS - FIRST_CHUNK.trailing_zeros() + 1) as usize;

/// The chunk holding `slot`, and its index there.
fn chunk_of(slot: VmaSlot) -> (usize, usize) {
    let slot = slot as usize;
    let k = (slot / FIRST_CHUNK + 1).ilog2() as usize;
    (k, slot - FIRST_CHUNK * ((1 << k) - 1))
}

impl Default for VmaPool {
    fn default() -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            slots: AtomicU64::new(0),
            chunks: (0..CHUNKS).map(|_| Chunk::new()).collect(),
        }
    }
}

impl VmaPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The object in `slot`, which was allocated.
    pub fn get(&self, slot: VmaSlot) -> &Arc<VmaObject> {
        let (k, i) = chunk_of(slot);
        self.chunks[k]
            .get()
            .and_then(|c| c[i].get())
            .expect("a slot the pool gave out")
    }

    /// The object in a new slot.
    fn create(&self, slot: VmaSlot) -> &Arc<VmaObject> {
        let (k, i) = chunk_of(slot);
        let chunk = self.chunks[k].get_or_init(|| {
            (0..FIRST_CHUNK << k)
                .map(|_| std::sync::OnceLock::new())
                .collect()
        });
        chunk[i].get_or_init(|| Arc::new(VmaObject::new(slot as usize)))
    }

    /// vm_area_alloc() + fields + vma_mark_attached(), write-locked in the
    /// session `mm_lock_seq` (a new VMA is not usable by per-VMA-lock
    /// readers until mmap_write_unlock). Reuses the most recently freed
    /// object first, as a slab's per-CPU freelist does.
    pub fn alloc(&self, mm: MmId, vma: Vma, mm_lock_seq: u64) -> Arc<VmaObject> {
        let free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let obj = match free {
            Some(slot) => self.get(slot),
            None => {
                let slot = self.slots.fetch_add(1, Ordering::Relaxed);
                self.create(VmaSlot::try_from(slot).expect("fewer than 2^32 VMA objects"))
            }
        };
        obj.generation.fetch_add(1, Ordering::AcqRel);
        obj.lock_seq.store(mm_lock_seq, Ordering::Release);
        obj.mm.store(mm, Ordering::Release);
        obj.set_vma(vma);
        obj.mark_attached();
        Arc::clone(obj)
    }

    /// vma_mark_detached() + vm_area_free(): the object, write-locked by
    /// the caller, leaves its tree and goes back to the pool at once.
    pub fn free(&self, obj: Arc<VmaObject>) {
        obj.mark_detached();
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(obj.slot() as VmaSlot);
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
    fn pool_slots_span_chunks_and_freed_slots_come_back_last_in_first_out() {
        assert_eq!(chunk_of(0), (0, 0));
        assert_eq!(chunk_of(63), (0, 63));
        assert_eq!(chunk_of(64), (1, 0));
        assert_eq!(chunk_of(191), (1, 127));
        assert_eq!(chunk_of(192), (2, 0));
        assert_eq!(chunk_of(u32::MAX).0, CHUNKS - 1);
        let pool = VmaPool::new();
        let objs: Vec<Arc<VmaObject>> = (0..300u64)
            .map(|i| pool.alloc(1, vma(i << 20, (i << 20) + 0x1000), 1))
            .collect();
        assert_eq!(pool.slots(), 300);
        for (i, o) in objs.iter().enumerate() {
            assert_eq!(o.slot(), i);
            assert!(Arc::ptr_eq(pool.get(i as VmaSlot), o));
            assert_eq!(o.range(), ((i as u64) << 20, ((i as u64) << 20) + 0x1000));
        }
        pool.free(Arc::clone(&objs[70]));
        pool.free(Arc::clone(&objs[250]));
        assert!(objs[70].is_detached());
        let again = pool.alloc(2, vma(0x1000, 0x2000), 3);
        assert_eq!((again.slot(), again.generation(), again.mm()), (250, 2, 2));
        assert_eq!(pool.alloc(2, vma(0x3000, 0x4000), 3).slot(), 70);
        assert_eq!(pool.alloc(2, vma(0x5000, 0x6000), 3).slot(), 300);
    }

    /// Each read sees the last publication, also on a thread that kept
    /// an older tree, and reads of two trees on one thread do not mix.
    #[test]
    fn published_tree_reads_see_every_publication() {
        let pool = Arc::new(VmaPool::new());
        let (a, b) = (PublishedTree::new(&pool), PublishedTree::new(&pool));
        let x = pool.alloc(1, vma(0x1000, 0x2000), 0);
        let y = pool.alloc(1, vma(0x5000, 0x7000), 0);
        assert!(a.with(|t| t.is_empty()));
        a.publish(VmaTreeSnapshot::new(&pool).with_entry(0x1000, 0x2000, &x));
        b.publish(VmaTreeSnapshot::new(&pool).with_entry(0x5000, 0x7000, &y));
        for _ in 0..2 {
            assert_eq!(a.with(|t| t.lookup_slot(0x1800)), Some(x.slot() as VmaSlot));
            assert_eq!(b.with(|t| t.lookup_slot(0x1800)), None);
            assert_eq!(
                b.with(|t| t.lookup(0x6fff).map(|e| (e.0, e.1))),
                Some((0x5000, 0x7000))
            );
        }
        // A read inside a read (of the same tree, then of a newer one).
        let nested = a.with(|t| (t.len(), a.with(|u| u.len())));
        assert_eq!(nested, (1, 1));
        let grown = (*a.load()).clone().with_entry(0x5000, 0x7000, &y);
        a.publish(grown);
        assert_eq!(a.with(|t| t.len()), 2);
        assert_eq!(
            a.with(|t| t
                .iter()
                .map(|(s, e, o)| (s, e, o.slot()))
                .collect::<Vec<_>>()),
            vec![(0x1000, 0x2000, x.slot()), (0x5000, 0x7000, y.slot())]
        );
        assert_eq!(a.load().overlapping(0x1fff, 0x5001).len(), 2);
        assert_eq!(a.load().overlapping(0x2000, 0x5000).len(), 0);
        a.publish(VmaTreeSnapshot::new(&pool));
        assert_eq!(a.with(|t| t.lookup_slot(0x1800)), None);
        // Another thread sees the same.
        let a = &a;
        std::thread::scope(|s| {
            s.spawn(move || assert!(a.with(|t| t.is_empty())));
        });
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
        let pool = Arc::new(VmaPool::new());
        let tree = PublishedTree::default();
        let counters = VmaLockCounters::default();
        let seq = || 10;
        let a = pool.alloc(1, vma(0x1000, 0x2000), 0);
        tree.publish(VmaTreeSnapshot::new(&pool).with_entry(0x1000, 0x2000, &a));
        match lock_vma_under_rcu(&tree, &pool, 1, &seq, 0x1800, RcuChecks::ALL, &counters) {
            RcuLock::Locked(g) => assert_eq!(g.object().slot(), a.slot()),
            RcuLock::Abort => panic!("should lock"),
        }
        // Not mapped.
        assert!(matches!(
            lock_vma_under_rcu(&tree, &pool, 1, &seq, 0x5000, RcuChecks::ALL, &counters),
            RcuLock::Abort
        ));
        // Reused by another mm for another range: the stale tree still
        // points at it.
        a.start_write(10);
        pool.free(Arc::clone(&a));
        let b = pool.alloc(2, vma(0x1000, 0x2000), 0);
        assert_eq!(b.slot(), a.slot());
        assert!(matches!(
            lock_vma_under_rcu(&tree, &pool, 1, &seq, 0x1800, RcuChecks::ALL, &counters),
            RcuLock::Abort
        ));
        // Without the vm_mm check, mm 1 locks mm 2's VMA.
        let broken = RcuChecks {
            vm_mm: false,
            ..RcuChecks::ALL
        };
        assert!(matches!(
            lock_vma_under_rcu(&tree, &pool, 1, &seq, 0x1800, broken, &counters),
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
