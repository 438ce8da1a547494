//! Model checking of the per-VMA lock protocol (seed 002) with loom: every
//! interleaving of a fault's lock_vma_under_rcu() against a writer that
//! unmaps the VMA and hands its object to another range or another mm, up
//! to a preemption bound. With all of lock_vma_under_rcu()'s checks the
//! fault only ever holds the VMA it asked for; with any one check removed,
//! loom finds the interleaving where it locks and acts on the wrong one
//! (those runs are `should_panic`).
//!
//! Run: `cargo test -p mm-core --release --features loom --test model_vma_lock`
//! (`cargo xtask test` does).

#![cfg(feature = "loom")]

use loom::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};
use mm_core::{
    vm_flags::VmFlags,
    vma::Vma,
    vma_lock::{
        PublishedTree, RcuChecks, RcuLock, VmaLockCounters, VmaPool, VmaTreeSnapshot,
        lock_vma_under_rcu, tree_lookup, vma_start_read,
    },
};

const A: u64 = 1;
const B: u64 = 2;
const ADDR: u64 = 0x1800;

fn vma(start: u64, end: u64) -> Vma {
    Vma::new(
        start,
        end,
        VmFlags::READ | VmFlags::WRITE,
        start >> 12,
        None,
    )
}

/// How the writer reuses the unmapped VMA's object.
#[derive(Clone, Copy)]
enum Reuse {
    /// Not at all: the object stays detached in the pool.
    None,
    /// For another range of the same mm.
    SameMmOtherRange,
    /// For the same range of another mm.
    OtherMm,
}

/// Run `f` under loom with a preemption bound of 3; returns how many
/// interleavings were explored.
fn explore(f: impl Fn() + Sync + Send + 'static) -> usize {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = std::sync::Arc::clone(&runs);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    let n = runs.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("loom explored {n} interleavings");
    n
}

fn model(reuse: Reuse, checks: RcuChecks) {
    let runs = explore(move || {
        let pool = Arc::new(VmaPool::new());
        // mm A: one VMA [0x1000, 0x2000), created in write session 1 and
        // unlocked (mm_lock_seq 2).
        let seq_a = Arc::new(AtomicU64::new(2));
        let tree_a = Arc::new(PublishedTree::default());
        let x = pool.alloc(A, vma(0x1000, 0x2000), 1);
        tree_a.publish(VmaTreeSnapshot::new(&pool).with_entry(0x1000, 0x2000, &x));

        let fault = {
            let (pool, seq_a, tree_a) =
                (Arc::clone(&pool), Arc::clone(&seq_a), Arc::clone(&tree_a));
            thread::spawn(move || {
                let _ = &pool;
                let counters = VmaLockCounters::default();
                let seq = || seq_a.load(Ordering::Acquire);
                if let RcuLock::Locked(g) =
                    lock_vma_under_rcu(&tree_a, &pool, A, &seq, ADDR, checks, &counters)
                {
                    // The fault acts on the VMA it holds: it must be mm A's
                    // VMA for ADDR, still in A's tree, unchanged.
                    let obj = g.object();
                    assert_eq!(obj.mm(), A, "locked another mm's VMA");
                    let (s, e) = obj.range();
                    assert!(s <= ADDR && ADDR < e, "locked a VMA of another range");
                    let now = tree_lookup(&tree_a.load(), ADDR);
                    assert!(
                        now.is_some_and(|o| std::ptr::eq(&*o, obj)),
                        "locked a VMA that is no longer mapped"
                    );
                }
            })
        };

        // The writer: munmap(0x1000, 0x1000) in A, then maybe reuse.
        seq_a.store(3, Ordering::Release); // mmap_write_lock(A)
        x.start_write(3);
        tree_a.publish(VmaTreeSnapshot::new(&pool));
        pool.free(Arc::clone(&x));
        match reuse {
            Reuse::None => {}
            Reuse::SameMmOtherRange => {
                let y = pool.alloc(A, vma(0x5000, 0x6000), 3);
                tree_a.publish(VmaTreeSnapshot::new(&pool).with_entry(0x5000, 0x6000, &y));
            }
            Reuse::OtherMm => {
                // mm B's own write session 1; its lock_seq never equals
                // A's.
                let _y = pool.alloc(B, vma(0x1000, 0x2000), 1);
            }
        }
        seq_a.store(4, Ordering::Release); // mmap_write_unlock(A)
        fault.join().unwrap();
    });
    // The exploration is real: the fault's lookup, lock and checks
    // interleave with every step of the writer.
    assert!(runs > 100, "only {runs} interleavings explored");
}

#[test]
fn all_checks_no_reuse() {
    model(Reuse::None, RcuChecks::ALL);
}

#[test]
fn all_checks_reuse_in_same_mm() {
    model(Reuse::SameMmOtherRange, RcuChecks::ALL);
}

#[test]
fn all_checks_reuse_by_other_mm() {
    model(Reuse::OtherMm, RcuChecks::ALL);
}

#[test]
#[should_panic(expected = "locked another mm's VMA")]
fn without_vm_mm_check_a_fault_locks_another_mms_vma() {
    model(
        Reuse::OtherMm,
        RcuChecks {
            vm_mm: false,
            ..RcuChecks::ALL
        },
    );
}

#[test]
#[should_panic(expected = "locked a VMA of another range")]
fn without_range_check_a_fault_locks_a_reused_vma_of_another_range() {
    model(
        Reuse::SameMmOtherRange,
        RcuChecks {
            range: false,
            ..RcuChecks::ALL
        },
    );
}

#[test]
#[should_panic(expected = "no longer mapped")]
fn without_detached_check_a_fault_locks_an_unmapped_vma() {
    model(
        Reuse::None,
        RcuChecks {
            detached: false,
            ..RcuChecks::ALL
        },
    );
}

/// vma_start_write() excludes readers from the moment it returns until
/// mmap_write_unlock bumps mm_lock_seq, and waits for readers already
/// inside; readers never see the writer's critical section.
#[test]
fn vma_start_write_excludes_vma_readers_until_unlock() {
    let runs = explore(|| {
        let pool = VmaPool::new();
        let seq = Arc::new(AtomicU64::new(2));
        let x = pool.alloc(A, vma(0x1000, 0x2000), 1);
        let writing = Arc::new(AtomicBool::new(false));
        let reader = {
            let (x, seq, writing) = (Arc::clone(&x), Arc::clone(&seq), Arc::clone(&writing));
            thread::spawn(move || {
                let cur = || seq.load(Ordering::Acquire);
                if let Ok(g) = vma_start_read(&x, A, &cur, RcuChecks::ALL) {
                    assert!(
                        !writing.load(Ordering::SeqCst),
                        "a reader got in while the VMA was write-locked"
                    );
                    drop(g);
                }
            })
        };
        seq.store(3, Ordering::Release); // mmap_write_lock
        x.start_write(3);
        writing.store(true, Ordering::SeqCst);
        // (A racing reader may hold a transient reference here that it
        // drops when it sees vm_lock_seq; it never proceeds.)
        writing.store(false, Ordering::SeqCst);
        seq.store(4, Ordering::Release); // mmap_write_unlock releases it
        reader.join().unwrap();
        // Released by the unlock alone: a new reader gets in.
        let cur = || seq.load(Ordering::Acquire);
        assert!(vma_start_read(&x, A, &cur, RcuChecks::ALL).is_ok());
    });
    assert!(runs > 50, "only {runs} interleavings explored");
}
