//! Companion tables (seed 003) and the lock-order checker: the original
//! design deadlocks (a fault under mmap_lock held for write) or, with
//! faults disabled, leaks tables; the pre/post-unmap design frees every
//! table in the seed's four nesting scenarios, with no report, under
//! concurrency too.

use std::sync::Arc;

use mm_core::{
    MmConfig,
    lockdep::LockClass,
    mpx::{BT_COVER, Mpx, MpxDesign, MpxStats},
    op::{Op, Outcome},
    shared_mm::{FaultStrategy, SharedMm},
    uapi::{madv, map, prot},
};

const PS: u64 = 4096;
const DATA: u64 = 0x2000_0000_0000;

fn engine(panic_on_report: bool) -> SharedMm {
    let mut s = SharedMm::new(MmConfig::default(), FaultStrategy::PerVma);
    s.enable_lockdep(panic_on_report);
    s
}

fn map_data(s: &SharedMm, addr: u64, len: u64) {
    let out = s.apply(&Op::Mmap {
        addr,
        len,
        prot: prot::READ | prot::WRITE,
        flags: map::PRIVATE | map::ANONYMOUS | map::FIXED,
        file: None,
        offset: 0,
    });
    assert_eq!(out, Outcome::Ok(addr));
}

/// Zap the bounds directory, so that the next BD access faults.
fn evict_directory(s: &SharedMm, mpx: &Mpx) {
    let out = s.apply(&Op::Madvise {
        addr: mpx.directory(),
        len: 4 * PS,
        advice: madv::DONTNEED,
    });
    assert_eq!(out, Outcome::Ok(0));
}

fn mapped(s: &SharedMm, addr: u64) -> bool {
    s.with_mm(mm_core::mmap_lock::LockSite::ProcRead, |m| {
        m.vmas().lookup(addr).is_some()
    })
}

#[test]
#[should_panic(
    expected = "lockdep: page fault at kernel access to user memory with mmap_lock held for write"
)]
fn original_design_faults_under_mmap_lock_write() {
    let s = engine(true);
    let mpx = Mpx::enable(
        &s,
        MpxDesign::Original {
            pagefault_disable: false,
        },
        DATA,
    )
    .unwrap();
    map_data(&s, DATA, 2 * BT_COVER);
    mpx.bounds_store(&s, DATA).unwrap();
    evict_directory(&s, &mpx);
    // munmap frees the table at its end, with mmap_lock held for write:
    // clearing the BD entry faults, and the fault handler would wait for
    // this very thread.
    mpx.munmap(&s, DATA, 2 * BT_COVER);
}

#[test]
fn original_design_with_faults_disabled_leaks_tables() {
    let s = engine(true);
    let mpx = Mpx::enable(
        &s,
        MpxDesign::Original {
            pagefault_disable: true,
        },
        DATA,
    )
    .unwrap();
    map_data(&s, DATA, 2 * BT_COVER);
    let t0 = mpx.bounds_store(&s, DATA).unwrap();
    let t1 = mpx.bounds_store(&s, DATA + BT_COVER).unwrap();
    // With the BD page present the entry is cleared without a fault.
    assert_eq!(mpx.munmap(&s, DATA + BT_COVER, BT_COVER), Outcome::Ok(0));
    assert!(!mapped(&s, t1));
    // Absent: the table cannot be freed and stays mapped for nothing.
    evict_directory(&s, &mpx);
    assert_eq!(mpx.munmap(&s, DATA, BT_COVER), Outcome::Ok(0));
    assert!(mapped(&s, t0), "the table leaked");
    assert_eq!(
        mpx.stats(),
        MpxStats {
            allocated: 2,
            freed: 1,
            leaked: 1,
            lost_races: 0
        }
    );
    assert!(s.lockdep().unwrap().reports().is_empty());
}

#[test]
fn pre_post_unmap_design_runs_the_four_nestings_without_a_report() {
    let s = engine(true);
    // prctl enable: bd_sem write, then mmap_lock write (nesting 4).
    let mpx = Mpx::enable(&s, MpxDesign::PrePostUnmap, DATA).unwrap();
    map_data(&s, DATA, 3 * BT_COVER);
    // Directory entry allocation, its BD read and cmpxchg faulting:
    // bd_sem read, then mmap_lock read (1) and write (2).
    evict_directory(&s, &mpx);
    let t0 = mpx.bounds_store(&s, DATA).unwrap();
    let t1 = mpx.bounds_store(&s, DATA + BT_COVER + 5).unwrap();
    let t2 = mpx.bounds_store(&s, DATA + 2 * BT_COVER).unwrap();
    assert_eq!(
        mpx.bounds_store(&s, DATA + 100).unwrap(),
        t0,
        "one table per entry"
    );
    assert_eq!(mpx.tables().len(), 3);
    // Partial unmap of the first covered range: its table stays.
    assert_eq!(mpx.munmap(&s, DATA, BT_COVER / 2), Outcome::Ok(0));
    assert_eq!(mpx.table_of(DATA), Some(t0));
    // Directory entry removal with the BD page absent: bd_sem write,
    // then mmap_lock read for the fault (3) and write for the unmap (4).
    evict_directory(&s, &mpx);
    assert_eq!(mpx.munmap(&s, DATA, 2 * BT_COVER), Outcome::Ok(0));
    assert_eq!(mpx.table_of(DATA), None);
    assert_eq!(mpx.table_of(DATA + BT_COVER), None);
    assert!(!mapped(&s, t0) && !mapped(&s, t1));
    assert_eq!(mpx.table_of(DATA + 2 * BT_COVER), Some(t2));
    let st = s.stats();
    assert!(
        st.process.faults.kernel.total() >= 2,
        "the BD accesses faulted"
    );
    let dep = s.lockdep().unwrap();
    assert!(dep.reports().is_empty(), "{:?}", dep.reports());
    assert_eq!(dep.edges(), vec![(LockClass::BdSem, LockClass::MmapLock)]);
    assert_eq!(
        mpx.stats(),
        MpxStats {
            allocated: 3,
            freed: 2,
            leaked: 0,
            lost_races: 0
        }
    );
    s.check().unwrap();
}

#[test]
fn pre_post_unmap_design_under_concurrency() {
    let s = Arc::new(engine(true));
    let mpx = Arc::new(Mpx::enable(&s, MpxDesign::PrePostUnmap, DATA).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (s, mpx) = (Arc::clone(&s), Arc::clone(&mpx));
            std::thread::spawn(move || {
                // Threads 0/1 and 2/3 share a covered range.
                let base = DATA + (t / 2) * BT_COVER + (t % 2) * (BT_COVER / 2);
                for round in 0..30u64 {
                    map_data(&s, base, 16 * PS);
                    let a = base + (round % 16) * PS;
                    assert_eq!(s.apply(&Op::Write { addr: a, value: 1 }), Outcome::Value(0));
                    let table = mpx.bounds_store(&s, a).unwrap();
                    // Our data is mapped, so nobody may free its table.
                    assert_eq!(mpx.table_of(a), Some(table));
                    assert!(mapped(&s, table));
                    if round % 3 == 0 {
                        evict_directory(&s, &mpx);
                    }
                    assert_eq!(mpx.munmap(&s, base, 16 * PS), Outcome::Ok(0));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // All data is gone, so every table is too.
    assert_eq!(mpx.tables(), vec![]);
    let st = mpx.stats();
    assert_eq!(st.allocated, st.freed, "{st:?}");
    assert!(st.allocated >= 2);
    assert!(s.lockdep().unwrap().reports().is_empty());
    s.check().unwrap();
}
