#![cfg(any(feature = "loom", feature = "shuttle"))]
//! Model checking of mmap_lock (src/mmap_lock.rs) with loom (every
//! interleaving up to a preemption bound, weak memory) or shuttle (random
//! and PCT schedules), whichever feature is on:
//!
//! ```text
//! cargo test -p mm-core --release --features loom --test model_mmap_lock
//! cargo test -p mm-core --release --features shuttle --test model_mmap_lock
//! ```
//!
//! Each scenario is written once against `mm_core::sync` and run by both
//! checkers. The checkers report deadlocks (a lost wake-up) themselves; the
//! scenarios assert mutual exclusion, that each holder sees the previous
//! write sessions' Relaxed stores whole (the lock's happens-before edges;
//! only loom explores weak memory), writer exclusion across a downgrade,
//! the parity of `mm_lock_seq` inside critical sections, that trylocks
//! never wait, and the statistics afterwards. The `broken_*` scenarios are
//! known-bad protocols the checkers must catch.

use mm_core::{
    mmap_lock::{LockSite, MmapLock},
    sync::{Arc, AtomicU64, Condvar, Mutex, Ordering, cpu_relax, thread},
};

/// `Inside` counts a writer as this much, readers as 1 each.
const WRITER_IN: u64 = 1 << 32;

/// Who is inside the critical section, as the threads say. Relaxed
/// read-modify-writes: they always see the latest count (so an overlap is
/// seen), yet add no happens-before edge that could hide a missing one in
/// the lock.
struct Inside(AtomicU64);

impl Inside {
    fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    fn enter_write(&self) {
        let prev = self.0.fetch_add(WRITER_IN, Ordering::Relaxed);
        assert_eq!(prev, 0, "a writer overlaps another holder");
    }

    fn leave_write(&self) {
        self.0.fetch_sub(WRITER_IN, Ordering::Relaxed);
    }

    fn enter_read(&self) {
        let prev = self.0.fetch_add(1, Ordering::Relaxed);
        assert!(prev < WRITER_IN, "a reader overlaps a writer");
    }

    fn leave_read(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Data the lock protects, as Relaxed atomics: only the lock's own
/// Acquire/Release orders a writer's stores before a later holder's loads,
/// so loom, which lets a Relaxed load return any store not yet ordered
/// before it, catches a missing happens-before edge.
struct Protected {
    /// Written first by each write session.
    a: AtomicU64,
    /// Written second.
    b: AtomicU64,
}

impl Protected {
    fn new() -> Self {
        Self {
            a: AtomicU64::new(0),
            b: AtomicU64::new(0),
        }
    }

    /// Under the write lock: a non-atomic increment of both.
    fn write(&self) {
        let a = self.a.load(Ordering::Relaxed);
        self.a.store(a + 1, Ordering::Relaxed);
        let b = self.b.load(Ordering::Relaxed);
        self.b.store(b + 1, Ordering::Relaxed);
    }

    /// Under a read lock: the sessions that happened before are all
    /// visible, whole.
    fn check(&self) {
        let b = self.b.load(Ordering::Relaxed);
        let a = self.a.load(Ordering::Relaxed);
        assert_eq!(a, b, "a write session's stores are half visible");
    }

    /// After all threads are joined.
    fn sessions(&self) -> u64 {
        self.check();
        self.a.load(Ordering::Relaxed)
    }
}

/// The state the threads of a scenario share.
struct Shared {
    lock: MmapLock,
    inside: Inside,
    data: Protected,
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        lock: MmapLock::new(),
        inside: Inside::new(),
        data: Protected::new(),
    })
}

/// One write critical section: exclusive, sees the previous sessions'
/// stores, with an odd `mm_lock_seq` equal to the session's. The protected
/// data comes first, before the checks' own loads could order anything.
fn write_section(s: &Shared, site: LockSite) -> u64 {
    let w = s.lock.write_lock(site);
    s.data.write();
    s.inside.enter_write();
    assert!(s.lock.is_write_locked());
    let seq = s.lock.mm_lock_seq();
    assert_eq!(seq % 2, 1, "mm_lock_seq even inside a write session");
    assert_eq!(seq, w.seq());
    s.inside.leave_write();
    drop(w);
    seq
}

/// One read critical section: shared with readers only, sees whole write
/// sessions, even `mm_lock_seq`.
fn read_section(s: &Shared) {
    let r = s.lock.read_lock(LockSite::Fault);
    s.data.check();
    s.inside.enter_read();
    assert!(!s.lock.is_write_locked());
    let seq = s.lock.mm_lock_seq();
    assert_eq!(seq % 2, 0, "mm_lock_seq odd under a read hold");
    s.inside.leave_read();
    drop(r);
}

fn assert_idle(l: &MmapLock) {
    assert_eq!(l.readers(), 0);
    assert!(!l.is_write_locked());
    assert!(!l.has_waiting_writer());
}

// ---- scenarios ------------------------------------------------------------

/// Two readers and a writer: the writer is never inside with anyone, seq
/// parity holds in every section, and the counts add up.
fn mutual_exclusion() {
    let s = shared();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            thread::spawn(move || read_section(&s))
        })
        .collect();
    let seq = write_section(&s, LockSite::Mmap);
    assert_eq!(seq, 1);
    for r in readers {
        r.join().unwrap();
    }
    let l = &s.lock;
    assert_idle(l);
    assert_eq!(l.mm_lock_seq(), 2);
    assert_eq!(s.data.sessions(), 1);
    let st = l.stats();
    assert_eq!((st.read.acquisitions, st.write.acquisitions), (2, 1));
    assert_eq!((st.read.hold.count(), st.write.hold.count()), (2, 1));
    assert_eq!((st.read.wait.count(), st.write.wait.count()), (2, 1));
    assert!(st.read.contended <= 2 && st.write.contended <= 1);
}

/// Two writers and a reader: each write session gets its own odd value
/// (1 and 3), the reader sees an even one, and they never overlap.
fn writers_and_seq() {
    let s = shared();
    let w2 = {
        let s = Arc::clone(&s);
        thread::spawn(move || write_section(&s, LockSite::Munmap))
    };
    let r = {
        let s = Arc::clone(&s);
        thread::spawn(move || read_section(&s))
    };
    let a = write_section(&s, LockSite::Mmap);
    let b = w2.join().unwrap();
    r.join().unwrap();
    assert_eq!(a.min(b), 1);
    assert_eq!(a.max(b), 3);
    assert_idle(&s.lock);
    assert_eq!(s.lock.mm_lock_seq(), 4);
    assert_eq!(s.data.sessions(), 2, "a write session's update was lost");
}

/// A writer downgrades while another writer and a reader try to get in:
/// the downgraded hold admits the reader but never the writer; no deadlock.
fn downgrade() {
    let s = shared();
    let w = s.lock.write_lock(LockSite::Munmap);
    s.inside.enter_write();
    s.data.write();
    let w2 = {
        let s = Arc::clone(&s);
        thread::spawn(move || write_section(&s, LockSite::Mmap))
    };
    let r = {
        let s = Arc::clone(&s);
        thread::spawn(move || read_section(&s))
    };
    assert_eq!(w.seq(), 1);
    s.inside.leave_write();
    let d = w.downgrade();
    s.data.check();
    s.inside.enter_read();
    assert!(!s.lock.is_write_locked());
    assert_eq!(s.lock.mm_lock_seq() % 2, 0);
    s.inside.leave_read();
    drop(d);
    assert_eq!(w2.join().unwrap(), 3);
    r.join().unwrap();
    let l = &s.lock;
    assert_idle(l);
    assert_eq!(l.mm_lock_seq(), 4);
    assert_eq!(s.data.sessions(), 2);
    let st = l.stats();
    assert_eq!(st.downgrades, 1);
    assert_eq!((st.read.acquisitions, st.write.acquisitions), (1, 2));
    // the reader's and the downgraded hold; both write holds
    assert_eq!((st.read.hold.count(), st.write.hold.count()), (2, 2));
}

/// Trylocks return at once: a thread trying while the lock is held for
/// write (or held for read with a writer queued) is joined by the holder
/// without releasing; a trylock that waited would deadlock the model.
fn trylock_never_blocks() {
    let l = Arc::new(MmapLock::new());
    {
        let w = l.write_lock(LockSite::Mprotect);
        let t = {
            let l = Arc::clone(&l);
            thread::spawn(move || {
                assert!(l.read_trylock(LockSite::Fault).is_none());
                assert!(l.write_trylock(LockSite::Mmap).is_none());
            })
        };
        t.join().unwrap();
        drop(w);
    }
    let r = l.read_lock(LockSite::Fault);
    let writer = {
        let l = Arc::clone(&l);
        thread::spawn(move || drop(l.write_lock(LockSite::Munmap)))
    };
    let t = {
        let l = Arc::clone(&l);
        thread::spawn(move || {
            // Shared with `r` unless the writer is queued by now.
            let queued = l.has_waiting_writer();
            let got = l.read_trylock(LockSite::ProcRead).is_some();
            assert!(!(queued && got), "read_trylock got in past a queued writer");
            assert!(l.write_trylock(LockSite::Mmap).is_none());
        })
    };
    t.join().unwrap();
    drop(r);
    writer.join().unwrap();
    assert_idle(&l);
    let s = l.stats();
    assert_eq!(s.write.trylock_failures, 2);
    assert_eq!(s.write.acquisitions, 2);
    assert_eq!(s.read.trylock_failures + s.read.trylock_acquisitions, 2);
}

// ---- known-bad protocols: the checkers must catch these -----------------------

/// An rwlock whose readers do not look at the writer bit.
struct BrokenRw(AtomicU64);

impl BrokenRw {
    fn read(&self) {
        self.0.fetch_add(2, Ordering::Acquire);
    }

    fn read_unlock(&self) {
        self.0.fetch_sub(2, Ordering::Release);
    }

    fn write(&self) {
        while self
            .0
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            cpu_relax();
        }
    }

    fn write_unlock(&self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

fn broken_reader_ignores_writer() {
    let l = Arc::new(BrokenRw(AtomicU64::new(0)));
    let inside = Arc::new(Inside::new());
    let r = {
        let (l, inside) = (Arc::clone(&l), Arc::clone(&inside));
        thread::spawn(move || {
            l.read();
            inside.enter_read();
            inside.leave_read();
            l.read_unlock();
        })
    };
    l.write();
    inside.enter_write();
    inside.leave_write();
    l.write_unlock();
    r.join().unwrap();
}

/// A correct exclusion protocol with a Relaxed acquire: the next holder
/// may see the previous one's stores half done. (Shuttle explores
/// sequentially consistent executions only, so this is loom's to catch.)
#[cfg(feature = "loom")]
fn broken_relaxed_acquire() {
    let l = Arc::new(AtomicU64::new(0));
    let data = Arc::new(Protected::new());
    let lock = |l: &AtomicU64| {
        while l
            .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            cpu_relax();
        }
    };
    let t = {
        let (l, data) = (Arc::clone(&l), Arc::clone(&data));
        thread::spawn(move || {
            lock(&l);
            data.write();
            l.store(0, Ordering::Release);
        })
    };
    lock(&l);
    data.check();
    l.store(0, Ordering::Release);
    t.join().unwrap();
}

/// A sleeper checks the condition under the mutex, but the waker changes it
/// and notifies without taking the mutex: the wake-up can be lost.
fn broken_lost_wakeup() {
    let m = Arc::new((Mutex::new(()), Condvar::new(), AtomicU64::new(0)));
    let waker = {
        let m = Arc::clone(&m);
        thread::spawn(move || {
            m.2.store(1, Ordering::SeqCst);
            m.1.notify_one();
        })
    };
    let mut g = m.0.lock().unwrap();
    if m.2.load(Ordering::SeqCst) == 0 {
        g = m.1.wait(g).unwrap();
    }
    drop(g);
    waker.join().unwrap();
}

// ---- loom -------------------------------------------------------------------

#[cfg(feature = "loom")]
mod loom_runs {
    use std::process::Command;

    /// Every interleaving with up to `preemptions` preemptions (unless
    /// LOOM_MAX_PREEMPTIONS says otherwise).
    fn model(preemptions: usize, f: fn()) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = b.preemption_bound.or(Some(preemptions));
        // Snapshotting the statistics loads a few thousand atomics.
        b.max_branches = b.max_branches.max(100_000);
        b.check(f);
    }

    // Bound 2: 4 s; bound 3 (LOOM_MAX_PREEMPTIONS=3) passes too, in 55 s.
    #[test]
    fn mutual_exclusion() {
        model(2, super::mutual_exclusion);
    }

    #[test]
    fn writers_and_seq() {
        model(3, super::writers_and_seq);
    }

    #[test]
    fn downgrade() {
        model(3, super::downgrade);
    }

    #[test]
    fn trylock_never_blocks() {
        model(3, super::trylock_never_blocks);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn broken_reader_ignores_writer() {
        model(2, super::broken_reader_ignores_writer);
    }

    #[test]
    #[should_panic(expected = "half visible")]
    fn broken_relaxed_acquire() {
        model(2, super::broken_relaxed_acquire);
    }

    /// loom reports the deadlock, then aborts the process while unwinding
    /// the blocked thread (a panic in a destructor); so the model runs in a
    /// child process, which must die reporting the deadlock.
    #[test]
    fn broken_lost_wakeup() {
        const CHILD: &str = "MM_CORE_MODEL_MMAP_LOCK_CHILD";
        if std::env::var_os(CHILD).is_some() {
            model(2, super::broken_lost_wakeup);
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = Command::new(exe)
            .args([
                "--exact",
                "loom_runs::broken_lost_wakeup",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the lost wake-up went unnoticed");
        assert!(stderr.contains("deadlock;"), "child's stderr: {stderr}");
    }
}

// ---- shuttle ----------------------------------------------------------------

#[cfg(feature = "shuttle")]
mod shuttle_runs {
    /// Random schedules, then PCT schedules (which find bugs needing a few
    /// ordered preemptions with a known probability).
    fn model(f: fn()) {
        shuttle::check_random(f, 5000);
        shuttle::check_pct(f, 5000, 3);
    }

    #[test]
    fn mutual_exclusion() {
        model(super::mutual_exclusion);
    }

    #[test]
    fn writers_and_seq() {
        model(super::writers_and_seq);
    }

    #[test]
    fn downgrade() {
        model(super::downgrade);
    }

    #[test]
    fn trylock_never_blocks() {
        model(super::trylock_never_blocks);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn broken_reader_ignores_writer() {
        shuttle::check_random(super::broken_reader_ignores_writer, 2000);
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn broken_lost_wakeup() {
        shuttle::check_random(super::broken_lost_wakeup, 2000);
    }
}
