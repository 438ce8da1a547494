//! Model checking of the concurrent engine's speculative fault path
//! (seed 000) with shuttle: the whole [`SharedMm`] (mmap_lock, VMA pool,
//! published tree, split PTE locks) runs under shuttle's scheduler, which
//! tries thousands of random and PCT-prioritised interleavings of a
//! speculative fault against mprotect, munmap and an in-place flags change.
//!
//! Run: `cargo test -p mm-core --release --features shuttle --test model_engine`
//! (`cargo xtask test` does).

#![cfg(feature = "shuttle")]

use mm_core::{
    MmConfig,
    op::{Op, Outcome},
    shared_mm::{FaultStrategy, ModelKnobs, SharedMm},
    uapi::{madv, map, prot},
};
use shuttle::{sync::Arc, thread};

const PS: u64 = 4096;
const BASE: u64 = 0x1000_0000_0000;
const ITERATIONS: usize = 3000;

fn setup(knobs: ModelKnobs) -> Arc<SharedMm> {
    let mut s = SharedMm::new(MmConfig::default(), FaultStrategy::Speculative);
    s.set_model_knobs(knobs);
    let out = s.apply(&Op::Mmap {
        addr: BASE,
        len: 4 * PS,
        prot: prot::READ | prot::WRITE,
        flags: map::PRIVATE | map::ANONYMOUS | map::FIXED,
        file: None,
        offset: 0,
    });
    assert_eq!(out, Outcome::Ok(BASE));
    // The VMA gets its anon_vma, so later write faults can be speculative.
    assert_eq!(
        s.apply(&Op::Write {
            addr: BASE,
            value: 1
        }),
        Outcome::Value(0)
    );
    Arc::new(s)
}

/// A speculative write fault on page 1 against `other` in a second thread;
/// returns the fault's outcome after both finished and the engine's
/// invariants were checked.
fn race(s: &Arc<SharedMm>, other: Op) -> Outcome {
    let t = {
        let s = Arc::clone(s);
        thread::spawn(move || {
            s.apply(&Op::Write {
                addr: BASE + PS,
                value: 5,
            })
        })
    };
    let o = s.apply(&other);
    assert_eq!(o, Outcome::Ok(0), "{other:?}");
    let out = t.join().unwrap();
    if let Err(e) = s.check() {
        panic!("invariant broken: {e}");
    }
    out
}

fn both(f: impl Fn() + Send + Sync + 'static) {
    let f = std::sync::Arc::new(f);
    let g = std::sync::Arc::clone(&f);
    shuttle::check_random(move || f(), ITERATIONS);
    shuttle::check_pct(move || g(), ITERATIONS, 3);
}

/// An in-place flags change (MADV_RANDOM) written through a transient
/// value without access bits never makes a speculative fault raise
/// SIGSEGV: the fault validates its copy of the VMA, and leaves every
/// signal to the locked path.
#[test]
fn transient_vm_flags_never_cause_a_spurious_sigsegv() {
    both(|| {
        let s = transient_flags_race(false);
        assert_eq!(s.apply(&Op::Read { addr: BASE + PS }), Outcome::Value(5));
    });
}

/// A speculative write fault against MADV_RANDOM written through
/// transient flags; the fault must complete.
fn transient_flags_race(spf_signal_unvalidated: bool) -> Arc<SharedMm> {
    let s = setup(ModelKnobs {
        transient_flag_writes: true,
        spf_signal_unvalidated,
        ..ModelKnobs::default()
    });
    let out = race(
        &s,
        Op::Madvise {
            addr: BASE,
            len: 4 * PS,
            advice: madv::RANDOM,
        },
    );
    assert_eq!(out, Outcome::Value(0), "spurious SIGSEGV");
    s
}

/// The broken design: a speculative fault that trusts an unvalidated VMA
/// copy and signals by itself. Shuttle finds the transient flags.
#[test]
#[should_panic(expected = "spurious SIGSEGV")]
fn unvalidated_speculative_fault_raises_spurious_sigsegv() {
    both(|| {
        transient_flags_race(true);
    });
}

/// Against mprotect(PROT_READ): the write either completed before (and
/// its value is there, behind a write-protected PTE) or raised SIGSEGV
/// after; never a writable PTE in a read-only VMA (checked by `race`).
#[test]
fn speculative_fault_vs_mprotect_completes_or_falls_back() {
    both(|| {
        let s = setup(ModelKnobs::default());
        let out = race(
            &s,
            Op::Mprotect {
                addr: BASE,
                len: 4 * PS,
                prot: prot::READ,
            },
        );
        match out {
            Outcome::Value(0) => {
                assert_eq!(s.apply(&Op::Read { addr: BASE + PS }), Outcome::Value(5));
            }
            Outcome::Segv => {
                assert_eq!(s.apply(&Op::Read { addr: BASE + PS }), Outcome::Value(0));
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// Against munmap: the write completed before the unmap or raised
/// SIGSEGV after it; no page is left mapped outside a VMA.
#[test]
fn speculative_fault_vs_munmap_leaves_no_stray_pte() {
    both(|| {
        let s = setup(ModelKnobs::default());
        let out = race(
            &s,
            Op::Munmap {
                addr: BASE,
                len: 4 * PS,
            },
        );
        assert!(matches!(out, Outcome::Value(0) | Outcome::Segv), "{out:?}");
    });
}

/// The broken design: no sequence-count validation under the PTE lock.
/// A speculative fault that read the VMA before munmap commits its PTE
/// after munmap zapped the range.
#[test]
#[should_panic(expected = "invariant broken")]
fn speculative_fault_without_commit_validation_leaves_a_stray_pte() {
    both(|| {
        let s = setup(ModelKnobs {
            spf_skip_commit_validation: true,
            ..ModelKnobs::default()
        });
        race(
            &s,
            Op::Munmap {
                addr: BASE,
                len: 4 * PS,
            },
        );
    });
}

/// Seed 004: MADV_GUARD_INSTALL racing a thread that keeps faulting the
/// range in. The install either completes, and then every page of the
/// range is a guard marker (later faults get SIGSEGV), or fails with
/// EAGAIN because a fault repopulated a page between the zap and the
/// second walk; shuttle finds both outcomes.
#[test]
fn guard_install_vs_faults_completes_or_fails_with_eagain() {
    for strategy in [FaultStrategy::PerVma, FaultStrategy::Classic] {
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new([0usize; 2]));
        let seen = std::sync::Arc::clone(&outcomes);
        let run = move || {
            let s = SharedMm::new(MmConfig::default(), strategy);
            s.apply(&Op::Mmap {
                addr: BASE,
                len: 4 * PS,
                prot: prot::READ | prot::WRITE,
                flags: map::PRIVATE | map::ANONYMOUS | map::FIXED,
                file: None,
                offset: 0,
            });
            // Page 0 populated: the first walk stops there and zaps.
            s.apply(&Op::Write {
                addr: BASE,
                value: 1,
            });
            let s = Arc::new(s);
            let t = {
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    for _ in 0..4 {
                        let o = s.apply(&Op::Write {
                            addr: BASE + 2 * PS,
                            value: 2,
                        });
                        assert!(matches!(o, Outcome::Value(0) | Outcome::Segv), "{o:?}");
                    }
                })
            };
            let out = s.apply(&Op::Madvise {
                addr: BASE,
                len: 4 * PS,
                advice: madv::GUARD_INSTALL,
            });
            t.join().unwrap();
            match out {
                Outcome::Ok(0) => {
                    for i in 0..4 {
                        assert!(
                            s.page_tables().get((BASE + i * PS) / PS).is_guard(),
                            "page {i} is not a guard page after a successful install"
                        );
                    }
                    seen.lock().unwrap()[0] += 1;
                }
                Outcome::Err(mm_core::Errno::EAGAIN) => seen.lock().unwrap()[1] += 1,
                other => panic!("guard install: {other:?}"),
            }
            if let Err(e) = s.check() {
                panic!("invariant broken: {e}");
            }
        };
        let run = std::sync::Arc::new(run);
        let r2 = std::sync::Arc::clone(&run);
        shuttle::check_random(move || run(), ITERATIONS);
        shuttle::check_pct(move || r2(), ITERATIONS, 3);
        let [ok, eagain] = *outcomes.lock().unwrap();
        eprintln!("{strategy:?}: guard install ok {ok}, EAGAIN {eagain}");
        assert!(
            ok > 0 && eagain > 0,
            "{strategy:?}: ok {ok}, EAGAIN {eagain}"
        );
    }
}
