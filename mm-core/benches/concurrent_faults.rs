//! Fault throughput of the concurrent engine under each fault strategy,
//! with 1, 2, 4 and 8 faulting threads on disjoint VMAs, alone and with
//! one thread doing mmap/munmap churn (the per-VMA lock series' own
//! benchmark shape). Each faulting thread write-faults the pages of its
//! own large VMA in order, one fault per page, with no system calls, as
//! will-it-scale's page_fault1 does between its munmaps.
//!
//! `cargo bench -p mm-core --bench concurrent_faults [-- SECONDS]`
//!
//! Prints, per strategy and thread count: faults/s alone and under churn,
//! the ratio, and the engine's mmap_lock contended share and read-wait p99
//! under churn. Runs are interleaved (alone, churn, alone, ...) and each
//! figure is the median of three, because this machine is noisy.

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mm_core::{
    MmConfig,
    op::{Op, Outcome},
    shared_mm::{FaultStrategy, SharedMm},
    uapi::{map, prot},
};

const PS: u64 = 4096;
/// Pages of each faulting thread's VMA (16 GiB: more than a run faults).
const PAGES: u64 = 1 << 22;

fn mmap(s: &SharedMm, pages: u64) -> u64 {
    match s.apply(&Op::Mmap {
        addr: 0,
        len: pages * PS,
        prot: prot::READ | prot::WRITE,
        flags: map::PRIVATE | map::ANONYMOUS,
        file: None,
        offset: 0,
    }) {
        Outcome::Ok(a) => a,
        o => panic!("mmap: {o:?}"),
    }
}

struct Run {
    faults_per_s: f64,
    contended_share: f64,
    read_wait_p99_ns: u64,
    /// Share of the faulting threads' time spent waiting for mmap_lock.
    fault_wait_share: f64,
}

fn run(strategy: FaultStrategy, threads: usize, churn: bool, dur: Duration) -> Run {
    let s = Arc::new(SharedMm::new(MmConfig::default(), strategy));
    // Each faulting thread's VMA, between PROT_NONE pages so that it never
    // merges with a neighbour (the churn thread's mappings land right
    // below the lowest one).
    let regions: Vec<u64> = (0..threads)
        .map(|_| {
            let a = mmap(&s, PAGES + 2);
            for guard in [a, a + (PAGES + 1) * PS] {
                s.apply(&Op::Mprotect {
                    addr: guard,
                    len: PS,
                    prot: prot::NONE,
                });
            }
            a + PS
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(threads + 1 + usize::from(churn)));
    let mut handles = Vec::new();
    for a in regions {
        let (s, stop, barrier) = (Arc::clone(&s), Arc::clone(&stop), Arc::clone(&barrier));
        handles.push(std::thread::spawn(move || {
            barrier.wait();
            let mut faults = 0u64;
            while !stop.load(Ordering::Relaxed) && faults < PAGES {
                s.apply(&Op::Write {
                    addr: a + faults * PS,
                    value: 1,
                });
                faults += 1;
            }
            assert!(faults < PAGES, "the run outlasted the region");
            faults
        }));
    }
    let churner = churn.then(|| {
        let (s, stop, barrier) = (Arc::clone(&s), Arc::clone(&stop), Arc::clone(&barrier));
        std::thread::spawn(move || {
            barrier.wait();
            while !stop.load(Ordering::Relaxed) {
                // fault-vs-munmap: populate a small region, unmap it.
                let a = mmap(&s, 16);
                for i in 0..16 {
                    s.apply(&Op::Write {
                        addr: a + i * PS,
                        value: 1,
                    });
                }
                s.apply(&Op::Munmap {
                    addr: a,
                    len: 16 * PS,
                });
            }
            0
        })
    });
    barrier.wait();
    s.reset_stats();
    let t = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let faults: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = t.elapsed().as_secs_f64();
    if let Some(c) = churner {
        c.join().unwrap();
    }
    let st = s.stats();
    let fault_wait_ns: u64 = st
        .process
        .contexts
        .iter()
        .filter(|c| c.context.name() == "fault")
        .map(|c| c.wait.sum())
        .sum();
    Run {
        fault_wait_share: fault_wait_ns as f64 / (threads as f64 * secs * 1e9),
        faults_per_s: faults as f64 / secs,
        contended_share: st.process.mmap_lock.contended_share(),
        read_wait_p99_ns: st.process.mmap_lock.read.wait.quantile(0.99).unwrap_or(0),
    }
}

fn parallelism() -> f64 {
    let spin = |n: u64| {
        let t = Instant::now();
        let hs: Vec<_> = (0..n)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut x = 0u64;
                    for i in 0..200_000_000u64 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                    }
                    std::hint::black_box(x)
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        t.elapsed().as_secs_f64()
    };
    let one = spin(1);
    2.0 * one / spin(2)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(0.4);
    let dur = Duration::from_secs_f64(secs);
    // Effective parallelism: how much faster two spinning threads finish
    // than one does the same work twice (2.0 on two free cores).
    let cores = parallelism();
    println!("effective cores: {cores:.2}");
    println!(
        "{:<12} {:>7} {:>11} {:>11} {:>6} {:>6} {:>9} {:>11} {:>9}",
        "strategy",
        "threads",
        "alone f/s",
        "churn f/s",
        "ratio",
        "norm",
        "contended",
        "rd wait p99",
        "flt wait"
    );
    for strategy in FaultStrategy::ALL {
        for threads in [1, 2, 4, 8] {
            let (mut alone, mut churn, mut share, mut p99, mut fw) =
                (vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..3 {
                alone.push(run(strategy, threads, false, dur).faults_per_s);
                let c = run(strategy, threads, true, dur);
                churn.push(c.faults_per_s);
                share.push(c.contended_share);
                p99.push(c.read_wait_p99_ns as f64);
                fw.push(c.fault_wait_share);
            }
            let (a, c) = (median(alone), median(churn));
            // The CPU share the faulting threads can get next to the
            // churn thread on this many effective cores.
            let n = threads as f64;
            let fair = (cores / (n + 1.0)).min(1.0) * n / (cores.min(n));
            println!(
                "{:<12} {:>7} {:>11.0} {:>11.0} {:>6.2} {:>6.2} {:>8.1}% {:>9.0}ns {:>8.1}%",
                strategy.name(),
                threads,
                a,
                c,
                c / a,
                c / a / fair,
                median(share) * 100.0,
                median(p99),
                median(fw) * 100.0
            );
        }
    }
}
