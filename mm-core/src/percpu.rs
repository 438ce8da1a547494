//! Per-CPU counters (include/linux/percpu_counter.h, and the per-CPU
//! event counters of mm/vmstat.c): each thread adds to its own stripe, on
//! its own cache lines, and a read sums the stripes. Fault paths count
//! every fault, so a single shared counter would make faulting threads
//! contend on its cache line where the kernel's do not.
//!
//! A thread takes a stripe of its own while there are free ones, and
//! adds to it with a plain load and store, as `this_cpu_add()` does with
//! preemption off (an atomic read-modify-write costs more than the rest of
//! a fault's counting); readers still read each stripe atomically. Threads
//! beyond those share the remaining stripes with atomic additions. Under a
//! model checker every addition is atomic (its threads are not the
//! operating system's, so a stripe cannot be owned).

use crate::sync::{AtomicU64, Ordering};

/// Stripes: the first `OWNED` go to one thread each, the rest are shared
/// round-robin by the threads that found none free.
pub(crate) const STRIPES: usize = 24;
/// Stripes a thread may own.
const OWNED: usize = 16;

#[derive(Debug)]
#[repr(align(128))]
struct Stripe<const N: usize>([AtomicU64; N]);

/// `N` counters, striped.
#[derive(Debug)]
pub struct PerCpuCounters<const N: usize> {
    stripes: Box<[Stripe<N>]>,
    /// The sums at the last reset, taken off every reading (a reset
    /// writes nothing to the stripes, which their owners write without
    /// atomic read-modify-writes).
    base: Stripe<N>,
}

impl<const N: usize> Default for PerCpuCounters<N> {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            base: Stripe(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

/// Which stripes are owned by a live thread.
static CLAIMED: [std::sync::atomic::AtomicBool; OWNED] =
    [const { std::sync::atomic::AtomicBool::new(false) }; OWNED];

/// A thread's stripe ("CPU"): owned (released when the thread exits) or
/// shared.
struct Cpu {
    index: usize,
    owned: bool,
}

impl Cpu {
    fn claim() -> Self {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        if !crate::sync::MODEL_CHECKING {
            for (i, c) in CLAIMED.iter().enumerate() {
                if c.compare_exchange(false, true, Acquire, Relaxed).is_ok() {
                    return Self {
                        index: i,
                        owned: true,
                    };
                }
            }
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Self {
            index: OWNED + NEXT.fetch_add(1, Relaxed) % (STRIPES - OWNED),
            owned: false,
        }
    }
}

impl Drop for Cpu {
    fn drop(&mut self) {
        if self.owned {
            // Release: the next owner's plain additions come after ours.
            CLAIMED[self.index].store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

thread_local! {
    static CPU: Cpu = Cpu::claim();
}

/// This thread's stripe and whether it owns it.
pub(crate) fn this_cpu() -> (usize, bool) {
    // A thread whose thread-locals are being torn down adds atomically to
    // a shared stripe.
    CPU.try_with(|c| (c.index, c.owned))
        .unwrap_or((OWNED, false))
}

impl<const N: usize> PerCpuCounters<N> {
    /// `N` zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `n` to counter `i` (wrapping: adding `x as u64` for a negative
    /// `x` subtracts).
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        let (cpu, owned) = this_cpu();
        let c = &self.stripes[cpu].0[i];
        if owned {
            // Only this thread writes the stripe.
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The value of counter `i` (the wrapping sum over stripes, since the
    /// last reset).
    pub fn sum(&self, i: usize) -> u64 {
        self.total(i)
            .wrapping_sub(self.base.0[i].load(Ordering::Relaxed))
    }

    fn total(&self, i: usize) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.0[i].load(Ordering::Relaxed)))
    }

    /// Zero every counter. Additions made meanwhile may be kept or not.
    pub fn reset(&self) {
        for i in 0..N {
            self.base.0[i].store(self.total(i), Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(any(feature = "loom", feature = "shuttle"))))]
mod tests {
    use super::*;

    #[test]
    fn sums_over_threads() {
        let c = std::sync::Arc::new(PerCpuCounters::<3>::new());
        let hs: Vec<_> = (0..20)
            .map(|t| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(t % 3, 1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!((c.sum(0), c.sum(1), c.sum(2)), (7000, 7000, 6000));
        c.reset();
        assert_eq!(c.sum(0) + c.sum(1) + c.sum(2), 0);
    }

    /// More live threads than stripes to own: owners add with plain
    /// stores, the others share stripes atomically, and nothing is lost;
    /// a reset zeroes and later additions count from there.
    #[test]
    fn owned_and_shared_stripes_lose_nothing() {
        const THREADS: usize = 40;
        let c = std::sync::Arc::new(PerCpuCounters::<3>::new());
        c.add(0, 5);
        c.reset();
        let all_alive = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (c, all_alive) = (c.clone(), all_alive.clone());
                std::thread::spawn(move || {
                    let owner = this_cpu().1;
                    all_alive.wait();
                    for _ in 0..10_000 {
                        c.add(t % 3, 1);
                    }
                    owner
                })
            })
            .collect();
        let owners = hs
            .into_iter()
            .filter_map(|h| h.join().unwrap().then_some(()))
            .count();
        // (Threads of other tests may own stripes too.)
        assert!(owners <= OWNED, "{owners} owners");
        assert_eq!((c.sum(0), c.sum(1), c.sum(2)), (140_000, 130_000, 130_000));
        c.reset();
        c.add(2, 7);
        assert_eq!((c.sum(0), c.sum(1), c.sum(2)), (0, 0, 7));
    }
}
