//! Replaying an op trace ([`crate::trace`]) on the engine: one thread per
//! recorded thread, each making its records in order, under a chosen
//! fault strategy, to answer "what would this program's mmap_lock have
//! looked like under classic / speculative / per-VMA faults".
//!
//! Order across threads: system calls happen one at a time in recorded
//! order; an access waits for every system call recorded before it (so it
//! sees the mappings the host's access saw), and a system call waits for
//! the earlier accesses of other threads to the pages it changes (so it
//! does not take their pages away first). Otherwise threads run
//! concurrently: faults with faults, and faults with system calls on
//! other pages, as they did on the host.
//! With a speed, each record also waits for its recorded time (scaled),
//! so that the gaps between a thread's records are kept.
//!
//! Replayed calls: an mmap that succeeded on the host is made at the
//! address the host returned (MAP_FIXED), file mappings map a file of zero
//! bytes-worth of content standing in for the recorded descriptor's file;
//! an mremap that moved moves to the same place (MREMAP_FIXED). The trace's
//! initial VMAs are mapped first, as anonymous memory with their
//! permissions. Calls without an op form (brk, clone...) are counted and
//! skipped.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    MmConfig,
    fault::{Access, AccessError},
    op::{Op, Outcome},
    shared_mm::{EngineStats, FaultStrategy, SharedMm},
    trace::{Event, Trace},
    uapi::{map, mremap, prot},
};

/// How to replay.
#[derive(Clone, Copy, Debug)]
pub struct ReplayOptions {
    /// Fault strategy.
    pub strategy: FaultStrategy,
    /// Recorded time per replayed time (1.0 keeps the gaps; None: as fast
    /// as possible, order only).
    pub speed: Option<f64>,
}

/// One system call's recorded and replayed results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallResult {
    /// Index of the record in the trace.
    pub record: usize,
    /// Thread.
    pub tid: u32,
    /// The call as replayed (trace syntax).
    pub op: String,
    /// What the host returned.
    pub recorded: Outcome,
    /// What the engine returned.
    pub replayed: Outcome,
}

impl CallResult {
    /// Whether the engine did what the host did.
    pub fn matches(&self) -> bool {
        self.recorded == self.replayed
    }
}

/// A finished replay.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// Strategy.
    pub strategy: FaultStrategy,
    /// Wall time of the replay.
    pub elapsed_ns: u64,
    /// Time span of the recording.
    pub recorded_ns: u64,
    /// Records replayed.
    pub records: u64,
    /// System calls replayed.
    pub syscalls: u64,
    /// Faults replayed (as accesses).
    pub faults: u64,
    /// Replayed faults that ended in SIGSEGV (or SIGBUS) on the engine.
    pub segv: u64,
    /// The first of those: (record index, address).
    pub segv_first: Vec<(usize, u64)>,
    /// Calls without an op form, skipped.
    pub skipped: u64,
    /// Every system call's results, in trace order.
    pub calls: Vec<CallResult>,
    /// The engine's statistics.
    pub stats: EngineStats,
    /// /proc/PID/maps at the end.
    pub maps: String,
}

impl ReplayReport {
    /// Calls whose replayed result differs from the recorded one.
    pub fn mismatches(&self) -> impl Iterator<Item = &CallResult> {
        self.calls.iter().filter(|c| !c.matches())
    }
}

/// The size the initial stack is mapped at.
const STACK_SIZE: u64 = 8 << 20;

fn prot_of(perms: &str) -> u64 {
    let b = perms.as_bytes();
    let mut p = prot::NONE;
    if b.first() == Some(&b'r') {
        p |= prot::READ;
    }
    if b.get(1) == Some(&b'w') {
        p |= prot::WRITE;
    }
    if b.get(2) == Some(&b'x') {
        p |= prot::EXEC;
    }
    p
}

/// The op to replay for a recorded call, and the file it needs.
fn replay_op(op: &Op, result: &Outcome, file_id: u32) -> (Op, Option<(u32, u64)>) {
    match (op, result) {
        (
            Op::Mmap {
                len,
                prot,
                flags,
                file,
                offset,
                ..
            },
            Outcome::Ok(at),
        ) => {
            let flags = (flags & !map::FIXED_NOREPLACE) | map::FIXED;
            let f = file.map(|_| (file_id, offset + len));
            (
                Op::Mmap {
                    addr: *at,
                    len: *len,
                    prot: *prot,
                    flags,
                    file: f.map(|(id, _)| id),
                    offset: *offset,
                },
                f,
            )
        }
        (
            Op::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                ..
            },
            Outcome::Ok(at),
        ) if *at != *old_addr => (
            Op::Mremap {
                old_addr: *old_addr,
                old_len: *old_len,
                new_len: *new_len,
                flags: flags | mremap::MAYMOVE | mremap::FIXED,
                new_addr: *at,
            },
            None,
        ),
        (Op::Mmap { len, offset, .. }, _) => {
            // A failed mmap is replayed as recorded; its file (if any) is
            // a stand-in like the others.
            let mut op = op.clone();
            if let Op::Mmap { file, .. } = &mut op {
                if file.is_some() {
                    *file = Some(file_id);
                    return (op, Some((file_id, offset + len)));
                }
            }
            (op, None)
        }
        _ => (op.clone(), None),
    }
}

enum Work {
    Call {
        op: Op,
    },
    Brk {
        addr: u64,
    },
    Access {
        addr: u64,
        access: Access,
        user: bool,
    },
    Skip,
}

struct Item {
    index: usize,
    t_ns: u64,
    /// System calls recorded before this record.
    calls_before: usize,
    /// (thread, items of it that must be done first): earlier accesses of
    /// other threads to the pages this call changes.
    deps: Vec<(usize, usize)>,
    work: Work,
}

/// The address ranges a call may change.
fn op_ranges(op: &Op) -> Vec<(u64, u64)> {
    let span = |a: u64, l: u64| (a, a.saturating_add(l));
    match *op {
        Op::Mmap { addr, len, .. } => vec![span(addr, len)],
        Op::Munmap { addr, len }
        | Op::Mprotect { addr, len, .. }
        | Op::Madvise { addr, len, .. }
        | Op::Mlock { addr, len, .. }
        | Op::Munlock { addr, len } => vec![span(addr, len)],
        Op::Mremap {
            old_addr,
            old_len,
            new_len,
            new_addr,
            ..
        } => vec![
            span(old_addr, old_len.max(new_len)),
            span(new_addr, new_len),
        ],
        _ => vec![(0, u64::MAX)],
    }
}

fn access_of(code: u64) -> Access {
    if code & 0x10 != 0 {
        Access::Exec
    } else if code & 0x2 != 0 {
        Access::Write
    } else {
        Access::Read
    }
}

/// Replay a trace.
pub fn replay(trace: &Trace, opts: ReplayOptions) -> ReplayReport {
    let mm = Arc::new(SharedMm::new(MmConfig::default(), opts.strategy));
    // The brk area: the heap's place, or the first brk(0)'s answer.
    let first_brk = trace.records.iter().find_map(|r| match r.event {
        Event::Raw {
            nr: crate::trace::nr::BRK,
            args,
            ret,
            ..
        } if args[0] == 0 => Some(ret as u64),
        _ => None,
    });
    if let Some(h) = trace.initial_vmas.iter().find(|v| v.name == "[heap]") {
        mm.set_brk_area(h.start, first_brk.unwrap_or(h.end));
    } else if let Some(b) = first_brk {
        mm.set_brk_area(b, b);
    }
    for v in &trace.initial_vmas {
        let shared = v.perms.ends_with('s');
        // The stack grows on faults below it, which the engine does not
        // model: map it at its full size (RLIMIT_STACK, 8 MiB) instead.
        let start = if v.name == "[stack]" {
            v.start.min(v.end.saturating_sub(STACK_SIZE))
        } else {
            v.start
        };
        mm.apply(&Op::Mmap {
            addr: start,
            len: v.end - start,
            prot: prot_of(&v.perms),
            flags: map::FIXED | map::ANONYMOUS | if shared { map::SHARED } else { map::PRIVATE },
            file: None,
            offset: 0,
        });
    }
    // Split the records by thread, with their ordering constraints.
    let mut per_thread: BTreeMap<u32, Vec<Item>> = BTreeMap::new();
    let tids: Vec<u32> = {
        let mut v: Vec<u32> = trace.records.iter().map(|r| r.tid).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let thread_of = |tid: u32| tids.binary_search(&tid).expect("collected above");
    // Per page: (thread, its items up to the last access to the page).
    let mut touched: BTreeMap<u64, Vec<(usize, usize)>> = BTreeMap::new();
    let mut calls = 0usize;
    let mut next_file = 0u32;
    let mut recorded: Vec<(usize, u32, Outcome)> = Vec::new();
    for (index, r) in trace.records.iter().enumerate() {
        let calls_before = calls;
        let me = thread_of(r.tid);
        let pos = per_thread.get(&r.tid).map_or(0, Vec::len);
        let mut deps: Vec<(usize, usize)> = Vec::new();
        let work = match &r.event {
            Event::Syscall { op, result, .. } => {
                let (op, file) = replay_op(op, result, next_file);
                for (s, e) in op_ranges(&op) {
                    let pages: Vec<u64> = touched
                        .range(s / 4096..e.div_ceil(4096))
                        .map(|(p, _)| *p)
                        .collect();
                    for p in pages {
                        for (t, n) in touched.remove(&p).unwrap_or_default() {
                            if t == me {
                                continue;
                            }
                            match deps.iter_mut().find(|d| d.0 == t) {
                                Some(d) => d.1 = d.1.max(n),
                                None => deps.push((t, n)),
                            }
                        }
                    }
                }
                if let Some((id, size)) = file {
                    next_file += 1;
                    mm.apply(&Op::CreateFile {
                        id,
                        size: size.div_ceil(4096) * 4096,
                        fill: 0,
                    });
                }
                calls += 1;
                recorded.push((index, r.tid, *result));
                Work::Call { op }
            }
            Event::Fault { addr, code, user } => {
                let e = touched.entry(addr / 4096).or_default();
                match e.iter_mut().find(|x| x.0 == me) {
                    Some(x) => x.1 = pos + 1,
                    None => e.push((me, pos + 1)),
                }
                Work::Access {
                    addr: *addr,
                    access: access_of(*code),
                    user: *user,
                }
            }
            Event::Raw {
                nr: crate::trace::nr::BRK,
                args,
                ret,
                ..
            } => {
                calls += 1;
                recorded.push((index, r.tid, Outcome::Ok(*ret as u64)));
                Work::Brk { addr: args[0] }
            }
            Event::Raw { .. } => Work::Skip,
        };
        per_thread.entry(r.tid).or_default().push(Item {
            index,
            t_ns: r.t_ns,
            calls_before,
            deps,
            work,
        });
    }
    mm.reset_stats();
    let done = Arc::new(AtomicUsize::new(0));
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..tids.len()).map(|_| AtomicUsize::new(0)).collect());
    let start = Instant::now();
    let handles: Vec<_> = per_thread
        .into_iter()
        .map(|(tid, items)| {
            let (mm, done, progress) = (mm.clone(), done.clone(), progress.clone());
            let me = thread_of(tid);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut segv_at = Vec::new();
                let (mut faults, mut segv, mut skipped) = (0u64, 0u64, 0u64);
                for it in items {
                    if let Some(speed) = opts.speed {
                        let due = start + Duration::from_nanos((it.t_ns as f64 / speed) as u64);
                        wait_until(due);
                    }
                    while done.load(Ordering::Acquire) < it.calls_before
                        || it
                            .deps
                            .iter()
                            .any(|(t, n)| progress[*t].load(Ordering::Acquire) < *n)
                    {
                        std::thread::yield_now();
                    }
                    match it.work {
                        Work::Call { op } => {
                            let res = mm.apply(&op);
                            done.fetch_add(1, Ordering::AcqRel);
                            out.push((it.index, tid, crate::trace::format_op(&op), res));
                        }
                        Work::Brk { addr } => {
                            let res = Outcome::Ok(mm.brk(addr));
                            done.fetch_add(1, Ordering::AcqRel);
                            out.push((it.index, tid, format!("brk addr={addr:#x}"), res));
                        }
                        Work::Access { addr, access, user } => {
                            faults += 1;
                            let v = u8::from(access == Access::Write);
                            let r = if user {
                                mm.access(addr, access, v)
                            } else {
                                mm.access_kernel(addr, access, v)
                            };
                            if matches!(r, Err(AccessError::Segv(_) | AccessError::Bus)) {
                                segv += 1;
                                if segv_at.len() < 16 {
                                    segv_at.push((it.index, addr));
                                }
                            }
                        }
                        Work::Skip => skipped += 1,
                    }
                    progress[me].fetch_add(1, Ordering::Release);
                }
                (out, faults, segv, skipped, segv_at)
            })
        })
        .collect();
    let mut results = Vec::new();
    let (mut faults, mut segv, mut skipped) = (0, 0, 0);
    let mut segv_first = Vec::new();
    for h in handles {
        let (o, f, s, k, at) = h.join().expect("a replay thread panicked");
        results.extend(o);
        segv_first.extend(at);
        faults += f;
        segv += s;
        skipped += k;
    }
    let elapsed = start.elapsed();
    results.sort_by_key(|r| r.0);
    let calls: Vec<CallResult> = results
        .into_iter()
        .zip(recorded)
        .map(|((index, tid, op, replayed), (_, _, rec))| CallResult {
            record: index,
            tid,
            op,
            recorded: rec,
            replayed,
        })
        .collect();
    ReplayReport {
        strategy: opts.strategy,
        elapsed_ns: elapsed.as_nanos() as u64,
        recorded_ns: trace.records.last().map_or(0, |r| r.t_ns),
        records: trace.records.len() as u64,
        syscalls: calls.len() as u64,
        faults,
        segv,
        segv_first: {
            segv_first.sort_unstable();
            segv_first.truncate(16);
            segv_first
        },
        skipped,
        calls,
        stats: mm.stats(),
        maps: mm.proc_maps(),
    }
}

fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(200) {
            std::thread::sleep(left - Duration::from_micros(100));
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Errno,
        trace::{Header, Record, nr, syscall_event},
    };

    fn rec(t: u64, tid: u32, event: Event) -> Record {
        Record {
            t_ns: t,
            tid,
            event,
        }
    }

    #[test]
    fn replays_calls_at_recorded_addresses_and_reports_mismatches() {
        let base = 0x7f00_0000_0000u64;
        let trace = Trace {
            header: Header::default(),
            initial_vmas: vec![],
            records: vec![
                rec(
                    0,
                    1,
                    syscall_event(nr::MMAP, [0, 0x10000, 3, 0x22, u64::MAX, 0], base as i64, 1),
                ),
                rec(
                    10,
                    2,
                    Event::Fault {
                        addr: base,
                        code: 6,
                        user: true,
                    },
                ),
                rec(
                    11,
                    2,
                    Event::Fault {
                        addr: base + 0x1000,
                        code: 4,
                        user: true,
                    },
                ),
                rec(
                    20,
                    1,
                    syscall_event(nr::MPROTECT, [base, 0x4000, 1, 0, 0, 0], 0, 1),
                ),
                rec(
                    30,
                    1,
                    syscall_event(nr::MADVISE, [base + 0x8000, 0x2000, 102, 0, 0, 0], 0, 1),
                ),
                rec(
                    40,
                    1,
                    syscall_event(nr::MUNMAP, [base + 0xc000, 0x4000, 0, 0, 0, 0], 0, 1),
                ),
                // Recorded as failing, but the engine accepts it: a mismatch.
                rec(
                    50,
                    1,
                    syscall_event(nr::MUNMAP, [base, 0x1000, 0, 0, 0, 0], -12, 1),
                ),
                rec(
                    60,
                    1,
                    syscall_event(nr::MUNMAP, [base + 1, 0x1000, 0, 0, 0, 0], -22, 1),
                ),
                rec(70, 1, syscall_event(nr::MLOCKALL, [1, 0, 0, 0, 0, 0], 0, 1)),
            ],
            drops: 0,
        };
        for strategy in FaultStrategy::ALL {
            let r = replay(
                &trace,
                ReplayOptions {
                    strategy,
                    speed: None,
                },
            );
            assert_eq!((r.syscalls, r.faults, r.skipped, r.segv), (6, 2, 1, 0));
            let bad: Vec<_> = r.mismatches().collect();
            assert_eq!(bad.len(), 1, "{bad:?}");
            assert_eq!(bad[0].record, 6);
            assert_eq!(bad[0].recorded, Outcome::Err(Errno::ENOMEM));
            assert_eq!(bad[0].replayed, Outcome::Ok(0));
            assert_eq!(r.calls[0].replayed, Outcome::Ok(base));
            let p = &r.stats.process;
            assert_eq!(p.faults.user.total(), 2);
            assert_eq!(p.mmap_lock.write.acquisitions, 5, "{strategy:?}");
            assert_eq!(
                r.maps
                    .lines()
                    .map(|l| l.split(' ').next().unwrap())
                    .collect::<Vec<_>>(),
                ["7f0000001000-7f0000004000", "7f0000004000-7f000000c000"],
                "{}",
                r.maps
            );
        }
    }

    #[test]
    fn speed_keeps_the_gaps() {
        let trace = Trace {
            records: vec![
                rec(
                    0,
                    1,
                    syscall_event(nr::MUNMAP, [0x10000, 0x1000, 0, 0, 0, 0], 0, 1),
                ),
                rec(
                    30_000_000,
                    1,
                    syscall_event(nr::MUNMAP, [0x10000, 0x1000, 0, 0, 0, 0], 0, 1),
                ),
            ],
            ..Trace::default()
        };
        let r = replay(
            &trace,
            ReplayOptions {
                strategy: FaultStrategy::PerVma,
                speed: Some(1.0),
            },
        );
        assert!(r.elapsed_ns >= 30_000_000, "{}", r.elapsed_ns);
        let r = replay(
            &trace,
            ReplayOptions {
                strategy: FaultStrategy::PerVma,
                speed: None,
            },
        );
        assert!(r.elapsed_ns < 30_000_000, "{}", r.elapsed_ns);
    }
}
