//! Running a [`Plan`] on the engine: a [`SharedMm`] under the chosen fault
//! strategy, one real thread per plan thread, the same steps the host
//! runner makes with system calls. At most as many of them run steps at
//! once as the machine has CPUs, switching only between steps
//! ([`crate::cpus`]), as the kernel does not preempt a fault or an mm
//! system call in the middle.
//!
//! The statistics are reset when the setup is done (files created, shared
//! regions mapped, each thread's setup steps made), so that they cover
//! the measured loops only, as the host side's do.

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{AccessKind, OpCounts, Plan, PlanThread, Rng, Step, touch_pages};
use crate::{
    Errno, MmConfig,
    cpus::Cpus,
    fault::{Access, AccessError},
    op::{Op, Outcome},
    shared_mm::{EngineStats, FaultStrategy, SharedMm},
    uapi::madv,
};

/// What one thread did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadResult {
    /// Plan thread name.
    pub name: String,
    /// Loop iterations completed.
    pub iterations: u64,
    /// Steps made in the loop.
    pub ops: OpCounts,
}

/// A finished engine run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineRun {
    /// Workload name.
    pub workload: String,
    /// Fault strategy.
    pub strategy: FaultStrategy,
    /// Wall time of the loops.
    pub elapsed_ns: u64,
    /// Per thread.
    pub threads: Vec<ThreadResult>,
    /// The engine's statistics over the loops.
    pub stats: EngineStats,
}

impl EngineRun {
    /// Steps of all threads.
    pub fn ops(&self) -> OpCounts {
        let mut c = OpCounts::default();
        for t in &self.threads {
            c.add(&t.ops);
        }
        c
    }
}

/// A step the engine refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("thread {thread}: {step} failed: {what}")]
pub struct StepError {
    /// Plan thread.
    pub thread: String,
    /// The step.
    pub step: String,
    /// errno or signal.
    pub what: String,
}

/// A plan running on the engine.
pub struct Running {
    mm: Arc<SharedMm>,
    stop: Arc<AtomicBool>,
    start: Instant,
    handles: Vec<JoinHandle<Result<ThreadResult, StepError>>>,
    workload: String,
    strategy: FaultStrategy,
    deadline: Option<Instant>,
}

fn fail(thread: &str, step: &Step, what: impl Into<String>) -> StepError {
    StepError {
        thread: thread.into(),
        step: step.to_string(),
        what: what.into(),
    }
}

/// Execute one step; `Ok(false)` for a tolerated failure (guard install's
/// EAGAIN, counted as an error).
fn step(mm: &SharedMm, s: &Step, rng: &mut Rng, name: &str) -> Result<bool, StepError> {
    let syscall = |op: Op| match mm.apply(&op) {
        Outcome::Ok(_) => Ok(true),
        Outcome::Err(Errno::EAGAIN) if matches!(op, Op::Madvise { advice, .. } if advice == madv::GUARD_INSTALL) => {
            Ok(false)
        }
        o => Err(fail(name, s, format!("{o:?}"))),
    };
    match *s {
        Step::Mmap {
            addr,
            len,
            prot,
            flags,
            file,
        } => syscall(Op::Mmap {
            addr,
            len,
            prot,
            flags,
            file,
            offset: 0,
        }),
        Step::Munmap { addr, len } => syscall(Op::Munmap { addr, len }),
        Step::Mprotect { addr, len, prot } => syscall(Op::Mprotect { addr, len, prot }),
        Step::Madvise { addr, len, advice } => syscall(Op::Madvise { addr, len, advice }),
        Step::ClearRefs { kind } => syscall(Op::ClearRefs { kind }),
        Step::Fork => syscall(Op::Fork),
        Step::Sleep { us } => {
            std::thread::sleep(Duration::from_micros(us));
            Ok(true)
        }
        Step::Touch { access, .. } => {
            let (a, v) = match access {
                AccessKind::Read => (Access::Read, 0),
                AccessKind::Write => (Access::Write, 1),
            };
            let mut err = None;
            touch_pages(s, rng, |addr| {
                if err.is_none() {
                    if let Err(e) = mm.access(addr, a, v) {
                        err = Some(match e {
                            AccessError::Segv(_) => format!("SIGSEGV at {addr:#x}"),
                            AccessError::Bus => format!("SIGBUS at {addr:#x}"),
                        });
                    }
                }
            });
            match err {
                None => Ok(true),
                Some(e) => Err(fail(name, s, e)),
            }
        }
        Step::Pagemap { addr, len } => {
            std::hint::black_box(mm.proc_pagemap(addr, len));
            Ok(true)
        }
        Step::Maps => {
            let text = mm.proc_maps();
            std::hint::black_box(text.len());
            Ok(true)
        }
    }
}

fn run_thread(
    mm: &SharedMm,
    t: &PlanThread,
    (cpus, me): (&Cpus, usize),
    start: &Barrier,
    ready: &Barrier,
    stop: &AtomicBool,
) -> Result<ThreadResult, StepError> {
    let mut rng = Rng::new(t.seed);
    let mut setup_err = None;
    for s in &t.setup {
        if let Err(e) = step(mm, s, &mut rng, &t.name) {
            setup_err = Some(e);
            break;
        }
    }
    // Everyone waits here even after a failure, so nobody hangs.
    ready.wait();
    start.wait();
    if let Some(e) = setup_err {
        return Err(e);
    }
    let mut r = ThreadResult {
        name: t.name.clone(),
        ..ThreadResult::default()
    };
    let mut cpu = cpus.enter(me);
    loop {
        if let Some(n) = t.iterations {
            if r.iterations >= n {
                break;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for s in &t.body {
            cpu.tick();
            r.ops.count(s);
            if !step(mm, s, &mut rng, &t.name)? {
                r.ops.errors += 1;
            }
        }
        r.iterations += 1;
    }
    Ok(r)
}

/// Start a plan on a fresh engine address space. Returns once every
/// thread's setup is done and the loops have begun.
pub fn start(plan: &Plan, strategy: FaultStrategy) -> Result<Running, StepError> {
    let mm = Arc::new(SharedMm::new(MmConfig::default(), strategy));
    let mut rng = Rng::new(0);
    for f in &plan.files {
        let op = Op::CreateFile {
            id: f.id,
            size: f.size,
            fill: 0,
        };
        mm.apply(&op);
    }
    for s in &plan.shared {
        step(&mm, s, &mut rng, "setup")?;
    }
    let n = plan.threads.len();
    let ready = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = Arc::new(Cpus::of_this_machine(n));
    let handles = plan
        .threads
        .iter()
        .cloned()
        .enumerate()
        .map(|(me, t)| {
            let (mm, ready, go, stop) = (mm.clone(), ready.clone(), go.clone(), stop.clone());
            let cpus = cpus.clone();
            std::thread::Builder::new()
                .name(format!("engine-{}", t.name))
                .spawn(move || run_thread(&mm, &t, (&cpus, me), &go, &ready, &stop))
                .expect("spawning an engine thread")
        })
        .collect();
    ready.wait();
    mm.reset_stats();
    let start = Instant::now();
    go.wait();
    Ok(Running {
        mm,
        stop,
        start,
        handles,
        workload: plan.name.clone(),
        strategy,
        deadline: (!plan.is_counted()).then(|| start + plan.duration),
    })
}

impl Running {
    /// The statistics so far.
    pub fn stats(&self) -> EngineStats {
        self.mm.stats()
    }

    /// The address space.
    pub fn mm(&self) -> &Arc<SharedMm> {
        &self.mm
    }

    /// Time since the loops began.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether every thread has finished.
    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(JoinHandle::is_finished)
    }

    /// Ask the loops to stop after their current iteration.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Wait for the plan's end (its iterations, or its duration), then
    /// collect the results.
    pub fn wait(self) -> Result<EngineRun, StepError> {
        if let Some(d) = self.deadline {
            while Instant::now() < d && !self.is_finished() {
                std::thread::sleep((d - Instant::now()).min(Duration::from_millis(10)));
            }
            self.stop();
        }
        self.join()
    }

    /// Stop now and collect the results.
    pub fn finish(self) -> Result<EngineRun, StepError> {
        self.stop();
        self.join()
    }

    fn join(self) -> Result<EngineRun, StepError> {
        let mut threads = Vec::new();
        let mut first_err = None;
        for h in self.handles {
            match h.join() {
                Ok(Ok(r)) => threads.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(StepError {
                        thread: "?".into(),
                        step: "?".into(),
                        what: "an engine thread panicked".into(),
                    });
                }
            }
        }
        let elapsed = self.start.elapsed();
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(EngineRun {
            workload: self.workload,
            strategy: self.strategy,
            elapsed_ns: elapsed.as_nanos() as u64,
            threads,
            stats: self.mm.stats(),
        })
    }
}

/// Run a plan to its end.
pub fn run(plan: &Plan, strategy: FaultStrategy) -> Result<EngineRun, StepError> {
    start(plan, strategy)?.wait()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Spec;

    #[test]
    fn page_fault1_counts_are_exact() {
        let (_, plan) = Spec::load("page-fault1").unwrap();
        let plan = plan.with_iterations(&[3, 2]);
        for strategy in FaultStrategy::ALL {
            let r = run(&plan, strategy).unwrap();
            let pages = 4096; // 16 MiB
            assert_eq!(r.threads[0].iterations, 3);
            assert_eq!(r.ops().mmap, 5);
            assert_eq!(r.ops().touches, 5 * pages);
            let p = &r.stats.process;
            assert_eq!(p.faults.user.total(), 5 * pages, "{strategy:?}");
            // mmap and munmap: one write acquisition each.
            assert_eq!(p.mmap_lock.write.acquisitions, 10, "{strategy:?}");
            let fault_reads = match strategy {
                FaultStrategy::Classic => 5 * pages,
                // The first fault of each fresh VMA has no anon_vma yet.
                FaultStrategy::PerVma => 5,
                // The speculative path prepares it under mmap_lock too.
                FaultStrategy::Speculative => 5,
            };
            assert_eq!(p.faults.mmap_lock_fallbacks, fault_reads, "{strategy:?}");
        }
    }

    #[test]
    fn every_preset_runs_on_the_engine() {
        for name in super::super::presets::NAMES {
            let (_, plan) = Spec::load(name).unwrap();
            let n = plan.threads.len();
            let plan = plan.with_iterations(&vec![2; n]);
            let r = run(&plan, FaultStrategy::PerVma).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(r.threads.iter().all(|t| t.iterations == 2), "{name}");
            assert!(
                r.stats.process.mmap_lock.write.acquisitions > 0
                    || r.stats.process.faults.user.total() > 0,
                "{name} did nothing"
            );
        }
    }

    #[test]
    fn duration_runs_stop() {
        let (_, plan) = Spec::load("mmap1").unwrap();
        let plan = plan.with_duration(Duration::from_millis(100));
        let r = run(&plan, FaultStrategy::PerVma).unwrap();
        assert!(r.elapsed_ns >= 100_000_000);
        assert!(r.threads.iter().all(|t| t.iterations > 0));
    }
}
