//! Per-CPU counters (include/linux/percpu_counter.h, and the per-CPU
//! event counters of mm/vmstat.c): each thread adds to its own stripe, on
//! its own cache lines, and a read sums the stripes. Fault paths count
//! every fault, so a single shared counter would make faulting threads
//! contend on its cache line where the kernel's do not.

use crate::sync::{AtomicU64, Ordering};

/// Stripes; threads are spread over them round-robin.
const STRIPES: usize = 16;

#[derive(Debug)]
#[repr(align(128))]
struct Stripe<const N: usize>([AtomicU64; N]);

/// `N` counters, striped.
#[derive(Debug)]
pub struct PerCpuCounters<const N: usize> {
    stripes: Box<[Stripe<N>]>,
}

impl<const N: usize> Default for PerCpuCounters<N> {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

/// This thread's stripe ("CPU").
fn this_cpu() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static CPU: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES;
    }
    CPU.with(|c| *c)
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
        self.stripes[this_cpu()].0[i].fetch_add(n, Ordering::Relaxed);
    }

    /// The value of counter `i` (the wrapping sum over stripes).
    pub fn sum(&self, i: usize) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.0[i].load(Ordering::Relaxed)))
    }

    /// Zero every counter.
    pub fn reset(&self) {
        for s in self.stripes.iter() {
            for c in &s.0 {
                c.store(0, Ordering::Relaxed);
            }
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
}
