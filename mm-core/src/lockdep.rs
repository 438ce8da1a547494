//! A lock-order checker for the concurrent engine, after the kernel's
//! lockdep (kernel/locking/lockdep.c): every thread's held engine locks
//! are recorded as it takes them; each acquisition adds "held, then taken"
//! edges between lock classes, and the checker reports
//! - an inversion: taking B while holding A when some thread has taken A
//!   while holding B (an ABBA deadlock waiting to happen);
//! - recursion: taking a rwsem class already held by the same thread (with
//!   a writer queued in between, even read-after-read deadlocks, because
//!   a waiting writer blocks new readers);
//! - a page fault with mmap_lock held for write: the fault handler's
//!   mmap_read_lock would wait for the faulting thread itself (the
//!   deadlock of seed 003's original MPX design).
//!
//! Reports are collected; with `panic_on_report` the offending thread
//! panics at once instead of deadlocking, as a kernel with lockdep would
//! print a splat (and a test can expect it).

use std::{
    cell::RefCell,
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Lock classes the checker knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockClass {
    /// `mm->mmap_lock`.
    MmapLock,
    /// The companion-table (MPX bounds directory) lock, `mm->bd_sem`.
    BdSem,
}

/// Lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Shared.
    Read,
    /// Exclusive.
    Write,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (checker, class, mode) of every tracked lock this thread holds, in
    /// acquisition order.
    static HELD: RefCell<Vec<(u64, LockClass, Mode)>> = const { RefCell::new(Vec::new()) };
}

/// The checker; one per address space.
#[derive(Debug)]
pub struct Lockdep {
    id: u64,
    panic_on_report: bool,
    edges: Mutex<BTreeMap<(LockClass, LockClass), String>>,
    reports: Mutex<Vec<String>>,
}

/// A held lock, released from the checker's record when dropped.
#[derive(Debug)]
#[must_use]
pub struct Held {
    dep: Option<Arc<Lockdep>>,
    class: LockClass,
}

impl Held {
    /// A token for an untracked lock.
    pub const fn untracked(class: LockClass) -> Self {
        Self { dep: None, class }
    }

    /// The lock was downgraded from write to read.
    pub fn downgrade(&self) {
        if let Some(d) = &self.dep {
            d.set_mode(self.class, Mode::Read);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(d) = &self.dep {
            d.release(self.class);
        }
    }
}

impl Lockdep {
    /// A checker.
    pub fn new(panic_on_report: bool) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            panic_on_report,
            edges: Mutex::new(BTreeMap::new()),
            reports: Mutex::new(Vec::new()),
        })
    }

    fn held(&self) -> Vec<(LockClass, Mode)> {
        HELD.with(|h| {
            h.borrow()
                .iter()
                .filter(|e| e.0 == self.id)
                .map(|e| (e.1, e.2))
                .collect()
        })
    }

    fn report(&self, msg: String) {
        self.reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(msg.clone());
        if self.panic_on_report {
            panic!("lockdep: {msg}");
        }
    }

    /// Record that this thread is about to take `class` in `mode` at
    /// `site` (a description such as "munmap"); checks first, so a
    /// panicking checker stops the thread before it would deadlock.
    pub fn acquire(self: &Arc<Self>, class: LockClass, mode: Mode, site: &str) -> Held {
        for (h, hm) in self.held() {
            if h == class {
                self.report(format!(
                    "recursive {class:?}: {mode:?} wanted at {site} while holding it for {hm:?}"
                ));
                continue;
            }
            let mut edges = self
                .edges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            edges.entry((h, class)).or_insert_with(|| site.to_string());
            if let Some(other) = edges.get(&(class, h)).cloned() {
                drop(edges);
                self.report(format!(
                    "lock inversion: {class:?} taken under {h:?} at {site}, \
                     but {h:?} taken under {class:?} at {other}"
                ));
            }
        }
        HELD.with(|h| h.borrow_mut().push((self.id, class, mode)));
        Held {
            dep: Some(Arc::clone(self)),
            class,
        }
    }

    fn release(&self, class: LockClass) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|e| e.0 == self.id && e.1 == class) {
                h.remove(i);
            }
        });
    }

    fn set_mode(&self, class: LockClass, mode: Mode) {
        HELD.with(|h| {
            if let Some(e) = h
                .borrow_mut()
                .iter_mut()
                .rev()
                .find(|e| e.0 == self.id && e.1 == class)
            {
                e.2 = mode;
            }
        });
    }

    /// A page fault is about to be handled by this thread at `site`.
    pub fn fault(&self, site: &str) {
        if self.held().contains(&(LockClass::MmapLock, Mode::Write)) {
            self.report(format!(
                "page fault at {site} with mmap_lock held for write: the fault \
                 handler's mmap_read_lock would wait for this thread"
            ));
        }
    }

    /// Everything reported so far.
    pub fn reports(&self) -> Vec<String> {
        self.reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The lock-order edges seen: (held, then taken).
    pub fn edges(&self) -> Vec<(LockClass, LockClass)> {
        self.edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inversion_between_threads_is_reported() {
        let d = Lockdep::new(false);
        {
            let _a = d.acquire(LockClass::BdSem, Mode::Write, "pre_unmap");
            let _b = d.acquire(LockClass::MmapLock, Mode::Read, "pre_unmap");
        }
        assert!(d.reports().is_empty());
        let d2 = Arc::clone(&d);
        std::thread::spawn(move || {
            let _a = d2.acquire(LockClass::MmapLock, Mode::Write, "munmap");
            let _b = d2.acquire(LockClass::BdSem, Mode::Write, "free tables");
        })
        .join()
        .unwrap();
        let r = d.reports();
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("lock inversion"), "{r:?}");
    }

    #[test]
    fn recursion_and_fault_under_write_are_reported() {
        let d = Lockdep::new(false);
        let w = d.acquire(LockClass::MmapLock, Mode::Write, "munmap");
        d.fault("free tables");
        w.downgrade();
        d.fault("after downgrade");
        let _r = d.acquire(LockClass::MmapLock, Mode::Read, "fault");
        let r = d.reports();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains("page fault at free tables"));
        assert!(r[1].contains("recursive MmapLock"));
    }

    #[test]
    #[should_panic(expected = "lockdep: page fault")]
    fn panicking_checker_stops_the_thread() {
        let d = Lockdep::new(true);
        let _w = d.acquire(LockClass::MmapLock, Mode::Write, "munmap");
        d.fault("x");
    }
}
