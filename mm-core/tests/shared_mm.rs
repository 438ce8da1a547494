//! The concurrent engine ([`SharedMm`]): the same results as the
//! single-threaded engine, the lock and fault statistics each strategy
//! must produce, and a multi-threaded stress run with invariant and
//! no-lost-write checks.

use std::{
    collections::HashMap,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use mm_core::{
    Mm, MmConfig,
    mmap_lock::LockSite,
    op::{Op, Outcome},
    shared_mm::{FaultStrategy, SharedMm},
    uapi::{madv, map, mremap, prot},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PS: u64 = 4096;
const RW: u64 = prot::READ | prot::WRITE;

fn mmap_anon(addr: u64, pages: u64, prot_bits: u64, fixed: bool) -> Op {
    let mut flags = map::PRIVATE | map::ANONYMOUS;
    if fixed {
        flags |= map::FIXED;
    }
    Op::Mmap {
        addr,
        len: pages * PS,
        prot: prot_bits,
        flags,
        file: None,
        offset: 0,
    }
}

fn addr_of(o: &Outcome) -> u64 {
    match o {
        Outcome::Ok(a) => *a,
        other => panic!("expected an address, got {other:?}"),
    }
}

/// A script touching every path: faults of each kind, guard markers,
/// mprotect splits and merges, DONTNEED, mremap, clear_refs, munmap.
fn script() -> Vec<Op> {
    let b = 0x2000_0000_0000;
    let mut ops = vec![
        mmap_anon(b, 16, RW, true),
        Op::Read { addr: b },
        Op::Write {
            addr: b + PS,
            value: 7,
        },
        Op::Write { addr: b, value: 9 },
        Op::Mprotect {
            addr: b + 4 * PS,
            len: 4 * PS,
            prot: prot::READ,
        },
        Op::Write {
            addr: b + 5 * PS,
            value: 1,
        },
        Op::Read { addr: b + 5 * PS },
        Op::Mprotect {
            addr: b + 4 * PS,
            len: 4 * PS,
            prot: RW,
        },
        Op::Write {
            addr: b + 5 * PS,
            value: 2,
        },
        Op::Madvise {
            addr: b + 8 * PS,
            len: 2 * PS,
            advice: madv::GUARD_INSTALL,
        },
        Op::Read { addr: b + 8 * PS },
        Op::Write {
            addr: b + 10 * PS,
            value: 3,
        },
        Op::Madvise {
            addr: b,
            len: 2 * PS,
            advice: madv::DONTNEED,
        },
        Op::Read { addr: b + PS },
        Op::ClearRefs { kind: 4 },
        Op::Write {
            addr: b + 10 * PS,
            value: 4,
        },
        Op::Mremap {
            old_addr: b + 12 * PS,
            old_len: 4 * PS,
            new_len: 4 * PS,
            flags: mremap::MAYMOVE | mremap::FIXED,
            new_addr: b + 32 * PS,
        },
        Op::Write {
            addr: b + 33 * PS,
            value: 5,
        },
        Op::Read { addr: b + 13 * PS },
        Op::Munmap {
            addr: b + 2 * PS,
            len: PS,
        },
        Op::Read { addr: b + 2 * PS },
        Op::Exec { addr: b },
        mmap_anon(0, 8, RW, false),
    ];
    for i in 0..16 {
        ops.push(Op::Read { addr: b + i * PS });
    }
    // MAP_POPULATE, writable and read-only: the pages are there before
    // the accesses (which then do not fault), and the RSS peak counts
    // them.
    let p = 0x2100_0000_0000;
    for (at, prot_bits) in [(p, RW), (p + 64 * PS, prot::READ)] {
        ops.push(Op::Mmap {
            addr: at,
            len: 40 * PS,
            prot: prot_bits,
            flags: map::PRIVATE | map::ANONYMOUS | map::FIXED | map::POPULATE,
            file: None,
            offset: 0,
        });
    }
    ops.extend([
        Op::Write {
            addr: p + 5 * PS,
            value: 3,
        },
        Op::Read { addr: p + 39 * PS },
        Op::Read { addr: p + 70 * PS },
        Op::Munmap {
            addr: p,
            len: 40 * PS,
        },
    ]);
    ops
}

#[test]
fn same_results_and_maps_as_the_single_threaded_engine() {
    let mut files = Default::default();
    let mut mm = Mm::new(MmConfig::default());
    let expected: Vec<Outcome> = script().iter().map(|op| mm.apply(op, &mut files)).collect();
    assert!(expected.contains(&Outcome::Segv));
    for strategy in FaultStrategy::ALL {
        let s = SharedMm::new(MmConfig::default(), strategy);
        let got: Vec<Outcome> = script().iter().map(|op| s.apply(op)).collect();
        assert_eq!(got, expected, "{strategy:?}");
        assert_eq!(
            s.with_mm(LockSite::ProcRead, Mm::maps),
            mm.maps(),
            "{strategy:?}"
        );
        assert_eq!(
            s.stats().process.faults.user,
            mm.counters().faults,
            "{strategy:?}"
        );
        assert_eq!(
            s.with_mm(LockSite::ProcRead, |m| (m.rss(), m.counters().hiwater_rss)),
            (mm.rss(), mm.counters().hiwater_rss),
            "{strategy:?}"
        );
        s.check().unwrap_or_else(|e| panic!("{strategy:?}: {e}"));
    }
}

/// Touch `pages` pages of a fresh VMA for write; return the stats.
fn touch(strategy: FaultStrategy, pages: u64) -> mm_core::shared_mm::EngineStats {
    let s = SharedMm::new(MmConfig::default(), strategy);
    let a = addr_of(&s.apply(&mmap_anon(0, pages, RW, false)));
    s.reset_stats();
    for i in 0..pages {
        assert_eq!(
            s.apply(&Op::Write {
                addr: a + i * PS,
                value: 1
            }),
            Outcome::Value(0)
        );
    }
    s.stats()
}

#[test]
fn fault_strategies_count_like_the_kernel() {
    let n = 64;
    let classic = touch(FaultStrategy::Classic, n);
    assert_eq!(classic.process.faults.user.write_not_present, n);
    assert_eq!(classic.process.faults.mmap_lock_fallbacks, n);
    assert_eq!(classic.process.mmap_lock.read.acquisitions, n);
    assert_eq!(classic.process.mmap_lock.write.acquisitions, 0);
    assert_eq!(classic.vma_lock, Default::default());

    // Per-VMA: the first write needs an anon_vma, so it is retried under
    // mmap_lock (vma_lock_retry); the others are served by the VMA lock.
    let per_vma = touch(FaultStrategy::PerVma, n);
    assert_eq!(per_vma.process.faults.user.write_not_present, n);
    assert_eq!(per_vma.process.faults.mmap_lock_fallbacks, 1);
    assert_eq!(per_vma.process.faults.served_without_mmap_lock(), n - 1);
    assert_eq!(per_vma.process.mmap_lock.read.acquisitions, 1);
    assert_eq!(
        (
            per_vma.vma_lock.success,
            per_vma.vma_lock.retry,
            per_vma.vma_lock.abort,
            per_vma.vma_lock.miss
        ),
        (n - 1, 1, 0, 0)
    );
    let fault_ctx = per_vma
        .process
        .contexts
        .iter()
        .find(|c| c.context.name() == "fault")
        .expect("fault context");
    assert_eq!(fault_ctx.acquisitions, 1);

    let spf = touch(FaultStrategy::Speculative, n);
    assert_eq!(spf.process.faults.mmap_lock_fallbacks, 1);
    assert_eq!((spf.speculative.success, spf.speculative.abort), (n - 1, 1));
    assert_eq!(spf.process.mmap_lock.read.acquisitions, 1);
}

#[test]
fn write_locked_vma_sends_faults_to_mmap_lock() {
    // A VMA created in a write session stays write-locked until
    // mmap_write_unlock: a fault racing mmap is an abort; afterwards the
    // VMA lock serves it.
    let s = SharedMm::new(MmConfig::default(), FaultStrategy::PerVma);
    let a = addr_of(&s.apply(&mmap_anon(0, 4, RW, false)));
    s.apply(&Op::Write { addr: a, value: 1 });
    s.reset_stats();
    s.apply(&Op::Read { addr: a + PS });
    assert_eq!(s.stats().vma_lock.success, 1);
    // munmap of another range does not disturb this VMA's faults.
    let b = addr_of(&s.apply(&mmap_anon(0, 4, prot::READ, false)));
    s.apply(&Op::Munmap { addr: b, len: PS });
    s.apply(&Op::Read { addr: a + 2 * PS });
    let st = s.stats();
    assert_eq!((st.vma_lock.success, st.vma_lock.abort), (2, 0));
    // Faults on unmapped addresses abort to mmap_lock and get SIGSEGV.
    assert_eq!(s.apply(&Op::Read { addr: b }), Outcome::Segv);
    let st = s.stats();
    assert_eq!((st.vma_lock.abort, st.segv), (1, 1));
}

/// What a stress thread expects its own region to hold.
struct Region {
    addr: u64,
    pages: u64,
    writable: bool,
    values: HashMap<u64, u8>,
}

fn stress(strategy: FaultStrategy, threads: usize, run_for: Duration, seed: u64) {
    let s = Arc::new(SharedMm::new(MmConfig::default(), strategy));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let s = Arc::clone(&s);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed * 1000 + t as u64);
                let mut regions: Vec<Region> = Vec::new();
                let mut ops = 0u64;
                barrier.wait();
                let start = Instant::now();
                while start.elapsed() < run_for {
                    ops += 1;
                    let choice = rng.random_range(0..100);
                    if regions.is_empty() || (choice < 8 && regions.len() < 6) {
                        let pages = rng.random_range(1..24);
                        let a = addr_of(&s.apply(&mmap_anon(0, pages, RW, false)));
                        regions.push(Region {
                            addr: a,
                            pages,
                            writable: true,
                            values: HashMap::new(),
                        });
                        continue;
                    }
                    let i = rng.random_range(0..regions.len());
                    let r = &mut regions[i];
                    let page = rng.random_range(0..r.pages);
                    let addr = r.addr + page * PS + rng.random_range(0..PS);
                    match choice {
                        8..=11 => {
                            let r = regions.swap_remove(i);
                            let out = s.apply(&Op::Munmap {
                                addr: r.addr,
                                len: r.pages * PS,
                            });
                            assert_eq!(out, Outcome::Ok(0));
                        }
                        12..=17 => {
                            r.writable = !r.writable;
                            let p = if r.writable { RW } else { prot::READ };
                            let out = s.apply(&Op::Mprotect {
                                addr: r.addr,
                                len: r.pages * PS,
                                prot: p,
                            });
                            assert_eq!(out, Outcome::Ok(0));
                        }
                        18..=21 => {
                            let out = s.apply(&Op::Madvise {
                                addr: r.addr + page * PS,
                                len: PS,
                                advice: madv::DONTNEED,
                            });
                            assert_eq!(out, Outcome::Ok(0));
                            r.values.retain(|a, _| a / PS != r.addr / PS + page);
                        }
                        22..=24 => {
                            // Grow or move: the contents move with it.
                            let out = s.apply(&Op::Mremap {
                                old_addr: r.addr,
                                old_len: r.pages * PS,
                                new_len: (r.pages + 2) * PS,
                                flags: mremap::MAYMOVE,
                                new_addr: 0,
                            });
                            let new = addr_of(&out);
                            let old = r.addr;
                            r.values = r.values.drain().map(|(a, v)| (a - old + new, v)).collect();
                            r.addr = new;
                            r.pages += 2;
                        }
                        25..=60 => {
                            let v = rng.random_range(1..=255u8);
                            let out = s.apply(&Op::Write { addr, value: v });
                            if r.writable {
                                assert_eq!(out, Outcome::Value(0), "write {addr:#x}");
                                r.values.insert(addr, v);
                            } else {
                                assert_eq!(out, Outcome::Segv, "write to read-only {addr:#x}");
                            }
                        }
                        _ => {
                            let want = r.values.get(&addr).copied().unwrap_or(0);
                            assert_eq!(
                                s.apply(&Op::Read { addr }),
                                Outcome::Value(want),
                                "lost write at {addr:#x}"
                            );
                        }
                    }
                }
                // Every value written and not unmapped reads back.
                for r in &regions {
                    for (a, v) in &r.values {
                        assert_eq!(
                            s.apply(&Op::Read { addr: *a }),
                            Outcome::Value(*v),
                            "{a:#x}"
                        );
                    }
                }
                ops
            })
        })
        .collect();
    let total: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("stress thread"))
        .sum();
    s.check().unwrap_or_else(|e| panic!("{strategy:?}: {e}"));
    let st = s.stats();
    assert!(total > 1000, "{strategy:?}: only {total} operations");
    assert!(st.process.faults.total() > 0);
    assert!(st.process.mmap_lock.write.acquisitions > 0);
    if strategy == FaultStrategy::PerVma {
        assert!(st.vma_lock.success > 0, "{st:?}");
    }
}

#[test]
fn stress_one_thread() {
    stress(FaultStrategy::Classic, 1, Duration::from_millis(300), 9);
}

#[test]
fn stress_classic() {
    stress(FaultStrategy::Classic, 4, Duration::from_millis(1500), 1);
}

#[test]
fn stress_speculative() {
    stress(
        FaultStrategy::Speculative,
        4,
        Duration::from_millis(1500),
        2,
    );
}

#[test]
fn stress_per_vma() {
    stress(FaultStrategy::PerVma, 4, Duration::from_millis(1500), 3);
}

/// clear_refs under seed 001's scheme: the soft-dirty clear that must
/// change VM_SOFTDIRTY starts under the read lock and retries for write;
/// once no VMA has the flag, it runs under the read lock alone. Today's
/// kernel takes the write lock every time. Both leave the same state.
#[test]
fn clear_refs_read_then_write_retry() {
    use mm_core::shared_mm::ClearRefsLocking;
    let mut results = Vec::new();
    for locking in [ClearRefsLocking::Write, ClearRefsLocking::ReadThenWrite] {
        let mut s = SharedMm::new(MmConfig::default(), FaultStrategy::PerVma);
        s.set_clear_refs_locking(locking);
        let a = addr_of(&s.apply(&mmap_anon(0, 4, RW, false)));
        s.apply(&Op::Write { addr: a, value: 1 });
        let mut locks = Vec::new();
        for _ in 0..2 {
            s.reset_stats();
            assert_eq!(s.apply(&Op::ClearRefs { kind: 4 }), Outcome::Ok(0));
            let st = s.stats().process.mmap_lock;
            locks.push((st.read.acquisitions, st.write.acquisitions));
        }
        // The write after the clear faults (write-protected) and marks
        // the page soft-dirty again.
        s.reset_stats();
        s.apply(&Op::Write { addr: a, value: 2 });
        assert_eq!(s.stats().process.faults.user.write_protection, 1);
        let pte = s.page_tables().get(a / PS);
        assert!(pte.present().is_some_and(|p| p.soft_dirty && p.write));
        s.check().unwrap();
        results.push((locks, s.with_mm(LockSite::ProcRead, Mm::maps)));
    }
    assert_eq!(results[0].0, vec![(0, 1), (0, 1)], "5.11+: write each time");
    assert_eq!(
        results[1].0,
        vec![(1, 1), (1, 0)],
        "seed 001: read, retry for write; then read only"
    );
    assert_eq!(results[0].1, results[1].1);
}
