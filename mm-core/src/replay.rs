//! Replaying an op trace ([`crate::trace`]) on the engine: one thread per
//! recorded thread, each making its records in order, under a chosen
//! fault strategy, to answer "what would this program's mmap_lock have
//! looked like under classic / speculative / per-VMA faults".
//!
//! Order across threads (docs/trace-format.md, "Replay", has the exact
//! rules): a system call waits for the earlier-recorded calls whose range
//! ([`op_ranges`]), widened by a page on each side, overlaps its own
//! widened range, and for the earlier accesses of other threads to the
//! pages it changes (so it does not take their pages away first); a call
//! whose range is not known is a barrier, ordered with every call before
//! and after it. An access waits for the last earlier-recorded call that
//! may change its page (so it sees the mappings the host's access saw).
//! So every page sees its calls and accesses in recorded order, and
//! neither calls nor accesses are held up by calls elsewhere. Otherwise
//! threads run concurrently: faults with faults, and faults and calls
//! with calls on other pages, as they did on the host. Every wait is for
//! a record recorded earlier, so the replay cannot deadlock.
//! With a speed, each record also waits for its recorded time (scaled),
//! so that the gaps between a thread's records are kept.
//!
//! Replayed calls: an mmap that succeeded on the host is made at the
//! address the host returned (MAP_FIXED), file mappings map a file of zero
//! bytes-worth of content standing in for the recorded descriptor's file;
//! an mremap that moved moves to the same place (MREMAP_FIXED). The trace's
//! initial VMAs are mapped first, as anonymous memory with their
//! permissions. brk is replayed; other calls without an op form (clone,
//! fork...) are counted and skipped, but ordered as barriers.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    MmConfig,
    cpus::{Cpus, OnCpu},
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
    /// The critical-path model, when asked for
    /// ([`replay_with_critical_path`]).
    pub critical_path: Option<CriticalPath>,
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

/// The whole address space: the range of a call whose effect cannot be
/// bounded.
const EVERYWHERE: (u64, u64) = (0, u64::MAX);

/// The address ranges a replayed call may change (the pages whose
/// accesses it is ordered with); [`EVERYWHERE`] where that cannot be
/// bounded from the call alone: calls without an op form, an mprotect
/// with PROT_GROWSDOWN or PROT_GROWSUP, and an mmap or mremap that would
/// choose its own address (they are replayed that way only where the
/// host's call failed, but if the engine's succeeded its mapping could be
/// anywhere).
fn op_ranges(op: &Op) -> Vec<(u64, u64)> {
    let span = |a: u64, l: u64| (a, a.saturating_add(l));
    match *op {
        Op::Mmap {
            addr, len, flags, ..
        } if flags & (map::FIXED | map::FIXED_NOREPLACE) != 0 => vec![span(addr, len)],
        // PROT_GROWSDOWN / PROT_GROWSUP carry the change to the VMA's
        // edge, which the call does not name.
        Op::Mprotect { addr, len, prot } if prot & (prot::GROWSDOWN | prot::GROWSUP) == 0 => {
            vec![span(addr, len)]
        }
        Op::Munmap { addr, len }
        | Op::Madvise { addr, len, .. }
        | Op::Mlock { addr, len, .. }
        | Op::Munlock { addr, len } => vec![span(addr, len)],
        // In place (new_addr is ignored).
        Op::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            ..
        } if flags & mremap::MAYMOVE == 0 => vec![span(old_addr, old_len.max(new_len))],
        // Moved to new_addr, or kept in place.
        Op::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            new_addr,
        } if flags & mremap::FIXED != 0 => vec![
            span(old_addr, old_len.max(new_len)),
            span(new_addr, new_len),
        ],
        _ => vec![EVERYWHERE],
    }
}

/// Which call last changed each page, as disjoint page ranges.
#[derive(Default)]
struct LastCall {
    /// start page -> (end page, the number of the last call on the range
    /// plus one).
    ranges: std::collections::BTreeMap<u64, (u64, usize)>,
    /// The number of the last barrier (a call whose range is not known)
    /// plus one, 0 if none: it is on every page not in `ranges`, and every
    /// call in `ranges` comes after it.
    floor: usize,
}

impl LastCall {
    /// Calls `n` (the calls recorded so far, this one included) change
    /// pages `ps..pe`.
    fn paint(&mut self, ps: u64, pe: u64, n: usize) {
        if ps >= pe {
            return;
        }
        // A range starting before `ps` and reaching into it: keep its
        // head, and its tail beyond `pe`.
        if let Some((&s, &(e, v))) = self.ranges.range(..ps).next_back() {
            if e > ps {
                self.ranges.insert(s, (ps, v));
                if e > pe {
                    self.ranges.insert(pe, (e, v));
                }
            }
        }
        // Ranges starting inside: drop them, keeping a tail beyond `pe`.
        let inside: Vec<u64> = self.ranges.range(ps..pe).map(|(s, _)| *s).collect();
        for s in inside {
            let (e, v) = self.ranges.remove(&s).expect("listed above");
            if e > pe {
                self.ranges.insert(pe, (e, v));
            }
        }
        self.ranges.insert(ps, (pe, n));
    }

    /// Call `n - 1` is a barrier: it is now the last call on every page.
    fn barrier(&mut self, n: usize) {
        self.floor = n;
        self.ranges.clear();
    }

    /// The last call on page `p`, + 1 (0: none).
    fn before(&self, p: u64) -> usize {
        match self.ranges.range(..=p).next_back() {
            Some((_, &(e, v))) if e > p => v.max(self.floor),
            _ => self.floor,
        }
    }

    /// Add to `out` the last calls (their numbers) on pages `ps..pe`, the
    /// last barrier included: waiting for them is waiting for every
    /// earlier call on those pages, as each waited for the earlier calls
    /// on its pages and the barrier for every call before it.
    fn last_calls(&self, ps: u64, pe: u64, out: &mut Vec<u32>) {
        if self.floor > 0 {
            out.push((self.floor - 1) as u32);
        }
        if let Some((_, &(e, v))) = self.ranges.range(..ps).next_back() {
            if e > ps {
                out.push((v - 1) as u32);
            }
        }
        out.extend(self.ranges.range(ps..pe).map(|(_, &(_, v))| (v - 1) as u32));
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

/// What a replay thread does for one record.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A system call (or brk, or a barrier standing for a call that is not
    /// replayed): [`Plan::calls`]`[Step::call]`.
    Call,
    /// An access at `Step::addr`, by the user or by the kernel.
    Access(Access, bool),
}

/// One record of a thread's part of the trace, with its ordering
/// constraints.
#[derive(Clone, Copy, Debug)]
struct Step {
    /// Index of the record in the trace.
    index: usize,
    /// For a call, its number in [`Plan::calls`]; for an access, the
    /// number of the call it waits for (the last one recorded before it
    /// that may change its page) + 1, or 0.
    call: usize,
    /// The address of an access.
    addr: u64,
    kind: Kind,
    /// Another thread's call waits until this step is done: publish the
    /// thread's progress after it.
    publish: bool,
}

/// A system call as replayed.
#[derive(Clone, Debug)]
enum CallOp {
    Op(Op),
    Brk(u64),
    /// A call without an op form: not replayed, but ordered as a barrier.
    Skip,
}

/// One system call of the trace, in recorded order.
#[derive(Debug)]
struct Call {
    record: usize,
    tid: u32,
    op: CallOp,
    recorded: Outcome,
    /// The range of [`Plan::deps`] this call waits for.
    deps: std::ops::Range<usize>,
    /// The range of [`Plan::call_deps`] this call waits for.
    after: std::ops::Range<usize>,
}

/// A hasher for page numbers (Fibonacci hashing): the page index sees
/// millions of lookups, where SipHash would cost more than the work.
#[derive(Default, Clone, Copy)]
struct PageHasher(u64);

impl std::hash::Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type PageMap = HashMap<u64, usize, std::hash::BuildHasherDefault<PageHasher>>;

/// Add to `deps[first..]` (thread, steps) the accesses of threads other
/// than `me` to pages `ps..pe` since a call last changed them, which a
/// call on those pages waits for; forget them (the call is now the
/// pages' last change).
fn wait_for_accesses(
    touched: &mut [PageMap],
    me: usize,
    ps: u64,
    pe: u64,
    deps: &mut Vec<(usize, usize)>,
    first: usize,
) {
    for (t, pages) in touched.iter_mut().enumerate() {
        let mut last = 0;
        if pe - ps <= pages.len() as u64 {
            for p in ps..pe {
                if let Some(n) = pages.remove(&p) {
                    last = last.max(n);
                }
            }
        } else {
            pages.retain(|p, n| {
                let inside = (ps..pe).contains(p);
                if inside {
                    last = last.max(*n);
                }
                !inside
            });
        }
        if t == me || last == 0 {
            continue;
        }
        match deps[first..].iter_mut().find(|d| d.0 == t) {
            Some(d) => d.1 = d.1.max(last),
            None => deps.push((t, last)),
        }
    }
}

/// The trace split by thread, with the ordering constraints worked out.
struct Plan {
    /// Recorded thread ids, sorted: replay thread `i` plays `tids[i]`.
    tids: Vec<u32>,
    /// Each thread's steps.
    threads: Vec<Vec<Step>>,
    /// The system calls in recorded order (with the barriers standing for
    /// calls that are not replayed).
    calls: Vec<Call>,
    /// (thread, steps of it that must be done first), by call.
    deps: Vec<(usize, usize)>,
    /// Earlier calls that must be done first, by call.
    call_deps: Vec<u32>,
}

/// The pages of `s..e` and one more on each side: the pages whose calls a
/// call on `s..e` is ordered with (a VMA merge or split at an edge of the
/// range involves the VMA beyond it).
fn widened(s: u64, e: u64) -> (u64, u64) {
    (
        (s / 4096).saturating_sub(1),
        e.div_ceil(4096).saturating_add(1),
    )
}

impl Plan {
    /// Split the trace; creates the stand-in files of file mappings on
    /// `mm` as it goes.
    fn new(trace: &Trace, mm: &SharedMm) -> Self {
        let tids: Vec<u32> = {
            let mut v: Vec<u32> = trace.records.iter().map(|r| r.tid).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut thread_of: HashMap<u32, usize> = HashMap::with_capacity(tids.len());
        for (i, t) in tids.iter().enumerate() {
            thread_of.insert(*t, i);
        }
        let mut threads: Vec<Vec<Step>> = vec![Vec::new(); tids.len()];
        // Per thread, per page: its steps up to the last access to the page
        // since a call last changed it.
        let mut touched: Vec<PageMap> = vec![PageMap::default(); tids.len()];
        let mut calls: Vec<Call> = Vec::new();
        let mut deps: Vec<(usize, usize)> = Vec::new();
        let mut call_deps: Vec<u32> = Vec::new();
        // The last call that may change each page: what an access waits for.
        let mut last_call = LastCall::default();
        // The last call on each page of the calls' widened ranges: what a
        // call waits for.
        let mut last_wide = LastCall::default();
        let mut next_file = 0u32;
        for (index, r) in trace.records.iter().enumerate() {
            let n = calls.len();
            let me = thread_of[&r.tid];
            let pos = threads[me].len();
            let mut step = Step {
                index,
                call: n,
                addr: 0,
                kind: Kind::Call,
                publish: false,
            };
            // The call's ranges (None: a barrier), and whether it is
            // replayed (ordered with accesses).
            let (op, recorded, ranges) = match &r.event {
                Event::Syscall { op, result, .. } => {
                    let (op, file) = replay_op(op, result, next_file);
                    if let Some((id, size)) = file {
                        next_file += 1;
                        mm.apply(&Op::CreateFile {
                            id,
                            size: size.div_ceil(4096) * 4096,
                            fill: 0,
                        });
                    }
                    let ranges = op_ranges(&op);
                    let ranges = (!ranges.contains(&EVERYWHERE)).then_some(ranges);
                    (CallOp::Op(op), *result, ranges)
                }
                Event::Fault { addr, code, user } => {
                    touched[me].insert(addr / 4096, pos + 1);
                    step.call = last_call.before(addr / 4096);
                    step.addr = *addr;
                    step.kind = Kind::Access(access_of(*code), *user);
                    threads[me].push(step);
                    continue;
                }
                // brk moves the heap's end from where the engine has it: a
                // call of unknown range.
                Event::Raw {
                    nr: crate::trace::nr::BRK,
                    args,
                    ret,
                    ..
                } => (CallOp::Brk(args[0]), Outcome::Ok(*ret as u64), None),
                // Not replayed, so nothing on the engine to wait for; still
                // a barrier (clone, fork...).
                Event::Raw { ret, .. } => (CallOp::Skip, Outcome::Ok(*ret as u64), None),
            };
            let first = deps.len();
            let first_call = call_deps.len();
            match &ranges {
                Some(ranges) => {
                    for &(s, e) in ranges {
                        let (ws, we) = widened(s, e);
                        last_wide.last_calls(ws, we, &mut call_deps);
                    }
                    for &(s, e) in ranges {
                        let (ws, we) = widened(s, e);
                        last_wide.paint(ws, we, n + 1);
                        let (ps, pe) = (s / 4096, e.div_ceil(4096));
                        last_call.paint(ps, pe, n + 1);
                        wait_for_accesses(&mut touched, me, ps, pe, &mut deps, first);
                    }
                }
                None => {
                    last_wide.last_calls(0, u64::MAX, &mut call_deps);
                    last_wide.barrier(n + 1);
                    last_call.barrier(n + 1);
                    if !matches!(op, CallOp::Skip) {
                        wait_for_accesses(&mut touched, me, 0, u64::MAX, &mut deps, first);
                    }
                }
            }
            let mut after = call_deps.split_off(first_call);
            after.sort_unstable();
            after.dedup();
            call_deps.extend(after);
            for &(t, n) in &deps[first..] {
                threads[t][n - 1].publish = true;
            }
            calls.push(Call {
                record: index,
                tid: r.tid,
                op,
                recorded,
                deps: first..deps.len(),
                after: first_call..call_deps.len(),
            });
            threads[me].push(step);
        }
        Self {
            tids,
            threads,
            calls,
            deps,
            call_deps,
        }
    }
}

/// A counter on its own cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// How replay threads wait for each other: spin briefly, then sleep
/// (park) until the thread that moves the awaited counter far enough
/// wakes them. Threads that only wait use no CPU, which matters when
/// there are more recorded threads than cores, and only the thread whose
/// condition holds is woken.
struct Gate {
    /// Per call: 1 once done.
    done: Vec<AtomicUsize>,
    /// Per thread: steps done (published where another thread waits).
    progress: Vec<Padded<AtomicUsize>>,
    /// Per thread: what it sleeps on, or is about to.
    sleep: Vec<Padded<Sleeper>>,
    /// The CPUs records are made on (with each thread's handle, for
    /// waking it).
    cpus: Cpus,
}

/// A sleeping thread's condition: counter `counter` (0: none, 1 + t:
/// thread t's progress, 1 + threads + k: call k done) at least `value`.
#[derive(Default)]
struct Sleeper {
    counter: AtomicUsize,
    value: AtomicUsize,
}

/// Checks of a condition before a waiter sleeps (about a microsecond):
/// with more replay threads than cores, longer spins take the CPU from
/// the thread being waited for.
const SPINS: u32 = 50;

impl Gate {
    fn new(threads: usize, calls: usize) -> Self {
        Self {
            done: (0..calls).map(|_| AtomicUsize::new(0)).collect(),
            progress: (0..threads).map(|_| Padded::default()).collect(),
            sleep: (0..threads).map(|_| Padded::default()).collect(),
            cpus: Cpus::of_this_machine(threads),
        }
    }

    fn counter(&self, c: usize) -> &AtomicUsize {
        match c.checked_sub(1 + self.progress.len()) {
            Some(k) => &self.done[k],
            None => &self.progress[c - 1].0,
        }
    }

    /// [`Self::wait`]'s counter of thread `t`'s progress.
    fn thread(t: usize) -> usize {
        1 + t
    }

    /// [`Self::wait`]'s counter of call `k`.
    fn call(&self, k: usize) -> usize {
        1 + self.progress.len() + k
    }

    /// Wait, as thread `me`, until counter `c` is at least `value`: spin
    /// briefly, then give up the CPU and sleep.
    fn wait(&self, me: usize, cpu: &mut OnCpu<'_>, c: usize, value: usize) {
        let counter = self.counter(c);
        if counter.load(Ordering::Acquire) >= value {
            return;
        }
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if counter.load(Ordering::Acquire) >= value {
                return;
            }
        }
        cpu.off_cpu(|| {
            let s = &self.sleep[me].0;
            s.value.store(value, Ordering::Relaxed);
            // Announce the sleep before the last check; a thread that
            // moves the counter after the check sees the announcement
            // (both sides are sequentially consistent) and wakes us.
            s.counter.store(c, Ordering::SeqCst);
            while counter.load(Ordering::SeqCst) < value {
                std::thread::park();
            }
            s.counter.store(0, Ordering::Relaxed);
        });
    }

    /// Wake the threads sleeping on counter `c` whose condition now holds.
    fn wake(&self, c: usize, now: usize) {
        for (t, s) in self.sleep.iter().enumerate() {
            if s.0.counter.load(Ordering::SeqCst) == c && s.0.value.load(Ordering::Relaxed) <= now {
                if let Some(h) = self.cpus.handle(t) {
                    h.unpark();
                }
            }
        }
    }

    fn call_done(&self, k: usize) {
        self.done[k].store(1, Ordering::SeqCst);
        self.wake(self.call(k), 1);
    }

    fn publish(&self, me: usize, steps: usize) {
        self.progress[me].0.store(steps, Ordering::SeqCst);
        self.wake(Self::thread(me), steps);
    }
}

/// What one replay thread found.
#[derive(Default)]
struct ThreadResult {
    /// (call number, what the engine returned).
    calls: Vec<(usize, Outcome)>,
    faults: u64,
    segv: u64,
    skipped: u64,
    segv_at: Vec<(usize, u64)>,
    /// When measuring: each step's time, its waits left out (ns).
    costs: Vec<u64>,
}

/// Play thread `me`'s steps; with `measure`, time each one.
#[allow(clippy::too_many_arguments)]
fn run_thread(
    me: usize,
    plan: &Plan,
    trace: &Trace,
    mm: &SharedMm,
    gate: &Gate,
    opts: ReplayOptions,
    start: Instant,
    measure: bool,
) -> ThreadResult {
    let mut out = ThreadResult::default();
    if measure {
        out.costs.reserve_exact(plan.threads[me].len());
    }
    let mut cpu = gate.cpus.enter(me);
    for (pos, st) in plan.threads[me].iter().enumerate() {
        if let Some(speed) = opts.speed {
            let t_ns = trace.records[st.index].t_ns;
            let due = start + Duration::from_nanos((t_ns as f64 / speed) as u64);
            if Instant::now() < due {
                cpu.off_cpu(|| wait_until(due));
            }
        }
        if pos % 16 == 0 {
            cpu.tick();
        }
        let mut began = None;
        match st.kind {
            Kind::Call => {
                let call = &plan.calls[st.call];
                for &k in &plan.call_deps[call.after.clone()] {
                    gate.wait(me, &mut cpu, gate.call(k as usize), 1);
                }
                for &(t, n) in &plan.deps[call.deps.clone()] {
                    gate.wait(me, &mut cpu, Gate::thread(t), n);
                }
                if measure {
                    began = Some(Instant::now());
                }
                let res = match &call.op {
                    CallOp::Op(op) => Some(mm.apply(op)),
                    CallOp::Brk(addr) => Some(Outcome::Ok(mm.brk(*addr))),
                    CallOp::Skip => None,
                };
                gate.call_done(st.call);
                match res {
                    Some(res) => out.calls.push((st.call, res)),
                    None => out.skipped += 1,
                }
            }
            Kind::Access(access, user) => {
                if st.call > 0 {
                    gate.wait(me, &mut cpu, gate.call(st.call - 1), 1);
                }
                if measure {
                    began = Some(Instant::now());
                }
                out.faults += 1;
                // The value written is not recorded; zero keeps the
                // engine's sparse page contents empty.
                let r = if user {
                    mm.access(st.addr, access, 0)
                } else {
                    mm.access_kernel(st.addr, access, 0)
                };
                if matches!(r, Err(AccessError::Segv(_) | AccessError::Bus)) {
                    out.segv += 1;
                    if out.segv_at.len() < 16 {
                        out.segv_at.push((st.index, st.addr));
                    }
                }
            }
        }
        if st.publish {
            gate.publish(me, pos + 1);
        }
        if let Some(b) = began {
            out.costs.push(b.elapsed().as_nanos() as u64);
        }
    }
    drop(cpu);
    out
}

/// A model of how fast a replay could go: the longest chain of its
/// ordering constraints.
#[derive(Clone, Debug, Serialize)]
pub struct CriticalPath {
    /// What the figures are.
    pub model: &'static str,
    /// The records' costs added up: the replay's work (on N cores it takes
    /// at least work / N).
    pub work_ns: u64,
    /// The longest path through the dependency graph (program order, a
    /// call's waits for earlier calls and for other threads' accesses, an
    /// access's wait for a call), each record costing its time measured
    /// in this replay.
    pub path_ns: u64,
    /// The same, each record costing the mean measured cost of its kind.
    pub path_mean_ns: u64,
    /// The same, each record costing the median measured cost of its kind
    /// (which leaves out most of the time records spent waiting for the
    /// engine's locks or for a CPU).
    pub path_median_ns: u64,
    /// The work with each record costing the median of its kind.
    pub work_median_ns: u64,
    /// The measured costs by kind of record.
    pub kinds: Vec<KindCost>,
}

/// The measured cost of one kind of record.
#[derive(Clone, Debug, Serialize)]
pub struct KindCost {
    /// An op's name, brk, skipped (a call not replayed), or an access's
    /// kind.
    pub kind: String,
    /// Records of the kind.
    pub count: u64,
    /// Their mean cost.
    pub mean_ns: u64,
    /// Their median cost.
    pub median_ns: u64,
}

const MODEL: &str = "model: each record costs its time measured in this replay, its waits left \
                     out (the engine's own lock waits included); the path assumes as many cores \
                     as threads";

/// The kind of a step, for its mean cost.
fn kind_name(plan: &Plan, st: &Step) -> String {
    match st.kind {
        Kind::Access(a, user) => format!("{} {a:?}", if user { "user" } else { "kernel" }),
        Kind::Call => match &plan.calls[st.call].op {
            CallOp::Op(op) => {
                let s = crate::trace::format_op(op);
                s.split(' ').next().unwrap_or_default().to_owned()
            }
            CallOp::Brk(_) => "brk".to_owned(),
            CallOp::Skip => "skipped".to_owned(),
        },
    }
}

/// The longest path through the plan's dependency graph, step `(t, pos)`
/// costing `cost(t, pos)`.
fn longest_path(plan: &Plan, cost: impl Fn(usize, usize) -> u64) -> u64 {
    let n: usize = plan.threads.iter().map(Vec::len).sum();
    let mut at = vec![(0u32, 0u32); n];
    for (t, steps) in plan.threads.iter().enumerate() {
        for (pos, st) in steps.iter().enumerate() {
            at[st.index] = (t as u32, pos as u32);
        }
    }
    // By record: when it is done.
    let mut fin = vec![0u64; n];
    for i in 0..n {
        let (t, pos) = (at[i].0 as usize, at[i].1 as usize);
        let steps = &plan.threads[t];
        let st = &steps[pos];
        let mut ready = if pos > 0 {
            fin[steps[pos - 1].index]
        } else {
            0
        };
        match st.kind {
            Kind::Call => {
                let call = &plan.calls[st.call];
                for &k in &plan.call_deps[call.after.clone()] {
                    ready = ready.max(fin[plan.calls[k as usize].record]);
                }
                for &(u, m) in &plan.deps[call.deps.clone()] {
                    ready = ready.max(fin[plan.threads[u][m - 1].index]);
                }
            }
            Kind::Access(..) if st.call > 0 => {
                ready = ready.max(fin[plan.calls[st.call - 1].record]);
            }
            Kind::Access(..) => {}
        }
        fin[i] = ready + cost(t, pos);
    }
    fin.into_iter().max().unwrap_or(0)
}

/// The critical path of `plan` with the per-step costs measured
/// (`costs[t][pos]`).
fn critical_path(plan: &Plan, costs: &[Vec<u64>]) -> CriticalPath {
    // Kinds, by name; each step's kind; each kind's costs.
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut of_kind: Vec<Vec<u64>> = Vec::new();
    let kind_of: Vec<Vec<u32>> = plan
        .threads
        .iter()
        .enumerate()
        .map(|(t, steps)| {
            steps
                .iter()
                .enumerate()
                .map(|(pos, st)| {
                    let next = names.len();
                    let id = *names.entry(kind_name(plan, st)).or_insert(next);
                    if id == of_kind.len() {
                        of_kind.push(Vec::new());
                    }
                    of_kind[id].push(costs[t][pos]);
                    id as u32
                })
                .collect()
        })
        .collect();
    let mean: Vec<u64> = of_kind
        .iter()
        .map(|c| c.iter().sum::<u64>() / c.len().max(1) as u64)
        .collect();
    let median: Vec<u64> = of_kind
        .iter_mut()
        .map(|c| {
            let mid = c.len() / 2;
            *c.select_nth_unstable(mid).1
        })
        .collect();
    let mut kinds: Vec<KindCost> = names
        .into_iter()
        .map(|(kind, id)| KindCost {
            kind,
            count: of_kind[id].len() as u64,
            mean_ns: mean[id],
            median_ns: median[id],
        })
        .collect();
    kinds.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.kind.cmp(&b.kind)));
    CriticalPath {
        model: MODEL,
        work_ns: costs.iter().flatten().sum(),
        path_ns: longest_path(plan, |t, pos| costs[t][pos]),
        path_mean_ns: longest_path(plan, |t, pos| mean[kind_of[t][pos] as usize]),
        path_median_ns: longest_path(plan, |t, pos| median[kind_of[t][pos] as usize]),
        work_median_ns: kinds.iter().map(|k| k.count * k.median_ns).sum(),
        kinds,
    }
}

/// Replay a trace.
pub fn replay(trace: &Trace, opts: ReplayOptions) -> ReplayReport {
    replay_inner(trace, opts, false)
}

/// Replay a trace, timing each record, and report the replay's
/// [`CriticalPath`] (the timing slows the replay a little).
pub fn replay_with_critical_path(trace: &Trace, opts: ReplayOptions) -> ReplayReport {
    replay_inner(trace, opts, true)
}

fn replay_inner(trace: &Trace, opts: ReplayOptions, measure: bool) -> ReplayReport {
    let mm = SharedMm::new(MmConfig::default(), opts.strategy);
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
    let plan = Plan::new(trace, &mm);
    mm.reset_stats();
    let gate = Gate::new(plan.tids.len(), plan.calls.len());
    let start = Instant::now();
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..plan.tids.len())
            .map(|me| {
                let (plan, mm, gate) = (&plan, &mm, &gate);
                s.spawn(move || run_thread(me, plan, trace, mm, gate, opts, start, measure))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a replay thread panicked"))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut replayed: Vec<Option<Outcome>> = vec![None; plan.calls.len()];
    let (mut faults, mut segv, mut skipped) = (0, 0, 0);
    let mut segv_first = Vec::new();
    let mut costs = Vec::new();
    for r in results {
        costs.push(r.costs);
        for (c, o) in r.calls {
            replayed[c] = Some(o);
        }
        segv_first.extend(r.segv_at);
        faults += r.faults;
        segv += r.segv;
        skipped += r.skipped;
    }
    let calls: Vec<CallResult> = plan
        .calls
        .iter()
        .zip(replayed)
        .filter_map(|(c, o)| {
            Some(CallResult {
                record: c.record,
                tid: c.tid,
                op: match &c.op {
                    CallOp::Op(op) => crate::trace::format_op(op),
                    CallOp::Brk(addr) => format!("brk addr={addr:#x}"),
                    CallOp::Skip => return None,
                },
                recorded: c.recorded,
                replayed: o.expect("every call is replayed"),
            })
        })
        .collect();
    let critical_path = measure.then(|| critical_path(&plan, &costs));
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
        critical_path,
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

    fn fault(t: u64, tid: u32, addr: u64) -> Record {
        rec(
            t,
            tid,
            Event::Fault {
                addr,
                code: 6,
                user: true,
            },
        )
    }

    fn step(plan: &Plan, index: usize) -> Step {
        *plan
            .threads
            .iter()
            .flatten()
            .find(|s| s.index == index)
            .expect("a step per record")
    }

    /// The call an access (record `index`) waits for, + 1 (0: none).
    fn waits_for(plan: &Plan, index: usize) -> usize {
        let st = step(plan, index);
        assert!(matches!(st.kind, Kind::Access(..)));
        st.call
    }

    /// The earlier calls a call (record `index`) waits for.
    fn call_waits_for(plan: &Plan, index: usize) -> Vec<u32> {
        let st = step(plan, index);
        assert!(matches!(st.kind, Kind::Call));
        plan.call_deps[plan.calls[st.call].after.clone()].to_vec()
    }

    const A: u64 = 0x7f00_0000_0000;
    const B: u64 = 0x7f00_1000_0000;

    fn mmap_at(t: u64, tid: u32, addr: u64) -> Record {
        rec(
            t,
            tid,
            syscall_event(
                nr::MMAP,
                [addr, 0x10000, 3, 0x32, u64::MAX, 0],
                addr as i64,
                1,
            ),
        )
    }

    fn call_rec(t: u64, tid: u32, nr: i64, args: [u64; 6], ret: i64) -> Record {
        rec(t, tid, syscall_event(nr, args, ret, 1))
    }

    /// An anonymous MAP_FIXED mmap of `len` bytes at `addr`.
    fn mmap_len(t: u64, tid: u32, addr: u64, len: u64) -> Record {
        call_rec(
            t,
            tid,
            nr::MMAP,
            [addr, len, 3, 0x32, u64::MAX, 0],
            addr as i64,
        )
    }

    #[test]
    fn a_call_waits_only_for_earlier_calls_within_a_page_of_its_range() {
        let trace = Trace {
            records: vec![
                /* 0: call 0 */ mmap_len(0, 1, A, 0x10000),
                /* 1: call 1, far from call 0 */ mmap_len(10, 2, B, 0x10000),
                /* 2: call 2, one page after call 0's end */
                mmap_len(20, 2, A + 0x11000, 0x1000),
                /* 3: call 3, inside call 1's range */
                call_rec(30, 3, nr::MPROTECT, [B + 0x2000, 0x1000, 1, 0, 0, 0], 0),
                /* 4: call 4, far from every other */
                mmap_len(40, 3, A + 0x20000, 0x1000),
                /* 5: call 5, two pages after call 2's end */
                mmap_len(50, 1, A + 0x14000, 0x1000),
                /* 6: call 6, brk: a barrier */
                rec(
                    60,
                    1,
                    Event::Raw {
                        nr: nr::BRK,
                        args: [0, 0, 0, 0, 0, 0],
                        ret: 0x5000_0000,
                        dur_ns: 1,
                    },
                ),
                /* 7: call 7, far from every other */
                call_rec(70, 2, nr::MUNMAP, [B + 0x8000, 0x1000, 0, 0, 0, 0], 0),
                /* 8: call 8, a call not replayed: a barrier too */
                call_rec(80, 3, nr::MLOCKALL, [1, 0, 0, 0, 0, 0], 0),
                /* 9: call 9 */ mmap_len(90, 1, A + 0x100_000, 0x1000),
                /* 10 */ fault(100, 2, A + 0x3000),
                /* 11 */ fault(110, 3, A + 0x100_000),
            ],
            ..Trace::default()
        };
        let mm = SharedMm::new(MmConfig::default(), FaultStrategy::PerVma);
        let plan = Plan::new(&trace, &mm);
        let none: [u32; 0] = [];
        assert_eq!(call_waits_for(&plan, 0), none);
        // Another thread's call far away does not wait.
        assert_eq!(call_waits_for(&plan, 1), none);
        // Within one page of an earlier call's range: waits for it.
        assert_eq!(call_waits_for(&plan, 2), [0]);
        // Overlapping: waits.
        assert_eq!(call_waits_for(&plan, 3), [1]);
        assert_eq!(call_waits_for(&plan, 4), none);
        // Two pages away: does not wait.
        assert_eq!(call_waits_for(&plan, 5), none);
        // A barrier waits for every earlier call (each still the last
        // call on some page)...
        assert_eq!(call_waits_for(&plan, 6), [0, 1, 2, 3, 4, 5]);
        // ...and every later call waits for it.
        assert_eq!(call_waits_for(&plan, 7), [6]);
        // So does a call that is not replayed.
        assert_eq!(call_waits_for(&plan, 8), [6, 7]);
        assert_eq!(call_waits_for(&plan, 9), [8]);
        // Accesses wait for the last barrier, or a later call on their page.
        assert_eq!(waits_for(&plan, 10), 9);
        assert_eq!(waits_for(&plan, 11), 10);
        // Every wait is for something recorded earlier (no deadlock).
        for (k, c) in plan.calls.iter().enumerate() {
            assert!(
                plan.call_deps[c.after.clone()]
                    .iter()
                    .all(|&d| (d as usize) < k)
            );
        }
        for strategy in FaultStrategy::ALL {
            for _ in 0..20 {
                let r = replay(
                    &trace,
                    ReplayOptions {
                        strategy,
                        speed: None,
                    },
                );
                assert_eq!(
                    (
                        r.syscalls,
                        r.skipped,
                        r.faults,
                        r.segv,
                        r.mismatches().count()
                    ),
                    (9, 1, 2, 0, 0),
                    "{strategy:?}"
                );
            }
        }
        let r = replay_with_critical_path(
            &trace,
            ReplayOptions {
                strategy: FaultStrategy::PerVma,
                speed: None,
            },
        );
        let cp = r.critical_path.expect("asked for");
        assert!(cp.path_ns <= cp.work_ns && cp.path_mean_ns <= cp.work_ns.max(1) * 2);
        assert_eq!(cp.kinds.iter().map(|k| k.count).sum::<u64>(), 12);
    }

    #[test]
    fn an_access_does_not_wait_for_earlier_calls_elsewhere() {
        let trace = Trace {
            records: vec![
                /* 0: call 0 */ mmap_at(0, 1, A),
                /* 1: call 1 */ mmap_at(10, 1, B),
                /* 2 */ fault(20, 2, A + 0x3000),
                /* 3: call 2 */
                rec(
                    30,
                    1,
                    syscall_event(nr::MPROTECT, [B, 0x1000, 1, 0, 0, 0], 0, 1),
                ),
                /* 4: call 3 */
                rec(
                    40,
                    1,
                    syscall_event(nr::MUNMAP, [B + 0x8000, 0x8000, 0, 0, 0, 0], 0, 1),
                ),
                /* 5 */ fault(50, 2, A + 0xf000),
                /* 6 */ fault(60, 3, B + 0x2000),
            ],
            ..Trace::default()
        };
        let mm = SharedMm::new(MmConfig::default(), FaultStrategy::PerVma);
        let plan = Plan::new(&trace, &mm);
        // Faults on A wait for call 0 (A's mmap) only, not for the calls
        // on B recorded between.
        assert_eq!(waits_for(&plan, 2), 1);
        assert_eq!(waits_for(&plan, 5), 1);
        // A fault on B past the mprotect and outside the munmap waits for
        // B's mmap (call 1) only.
        assert_eq!(waits_for(&plan, 6), 2);
        // The munmap of B's end waits for B's mmap (call 1), not for the
        // mprotect of B's first page (call 2), more than a page away.
        assert_eq!(call_waits_for(&plan, 4), [1]);
        let r = replay(
            &trace,
            ReplayOptions {
                strategy: FaultStrategy::PerVma,
                speed: None,
            },
        );
        assert_eq!((r.segv, r.mismatches().count()), (0, 0));
    }

    #[test]
    fn an_access_waits_for_earlier_calls_on_its_page() {
        let trace = Trace {
            records: vec![
                /* 0: call 0 */ mmap_at(0, 1, A),
                /* 1: call 1 */
                rec(
                    10,
                    1,
                    syscall_event(nr::MPROTECT, [A + 0x2000, 0x2000, 1, 0, 0, 0], 0, 1),
                ),
                /* 2: call 2 */ mmap_at(20, 1, B),
                /* 3: a read of the page made read-only by call 1 */
                rec(
                    30,
                    2,
                    Event::Fault {
                        addr: A + 0x3010,
                        code: 4,
                        user: true,
                    },
                ),
                /* 4: call 3 */
                rec(
                    40,
                    1,
                    syscall_event(nr::MUNMAP, [A + 0x8000, 0x8000, 0, 0, 0, 0], 0, 1),
                ),
                /* 5: call 4, takes the page of 4 away */
                rec(
                    50,
                    1,
                    syscall_event(nr::MUNMAP, [A, 0x4000, 0, 0, 0, 0], 0, 1),
                ),
                /* 6: call 5 */ mmap_at(60, 1, A),
                /* 7 */ fault(70, 2, A + 0x3000),
                /* 8: an unbounded call: brk */
                rec(
                    80,
                    1,
                    Event::Raw {
                        nr: nr::BRK,
                        args: [0, 0, 0, 0, 0, 0],
                        ret: 0x5000_0000,
                        dur_ns: 1,
                    },
                ),
                /* 9: call 7 */ mmap_at(90, 1, B + 0x100_0000),
                /* 10 */ fault(100, 2, A + 0x1000),
            ],
            ..Trace::default()
        };
        let mm = SharedMm::new(MmConfig::default(), FaultStrategy::PerVma);
        let plan = Plan::new(&trace, &mm);
        // The read waits for the mprotect of its page (call 1), not for
        // the mmap of B after it.
        assert_eq!(waits_for(&plan, 3), 2);
        // The munmap of its page waits for it.
        let call = &plan.calls[4];
        assert_eq!(call.record, 5);
        assert_eq!(&plan.deps[call.deps.clone()], &[(1, 1)]);
        // After the page is unmapped and mapped again: the new mmap.
        assert_eq!(waits_for(&plan, 7), 6);
        // brk's range is not known: every later access waits for it (and
        // so for every call before it), but not for calls after it on
        // other pages.
        assert_eq!(waits_for(&plan, 10), 7);
        for strategy in FaultStrategy::ALL {
            let r = replay(
                &trace,
                ReplayOptions {
                    strategy,
                    speed: None,
                },
            );
            assert_eq!((r.faults, r.segv), (3, 0), "{strategy:?}");
        }
    }

    #[test]
    fn last_call_keeps_the_latest_call_per_page() {
        let mut l = LastCall::default();
        l.paint(0, 10, 1);
        l.paint(3, 5, 2);
        let at = |l: &LastCall| (0..14).map(|p| l.before(p)).collect::<Vec<_>>();
        assert_eq!(at(&l), [1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
        l.paint(4, 12, 3);
        assert_eq!(at(&l), [1, 1, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0]);
        l.paint(0, 4, 4);
        assert_eq!(at(&l), [4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0]);
        l.barrier(5);
        l.paint(6, 7, 6);
        assert_eq!(at(&l), [5, 5, 5, 5, 5, 5, 6, 5, 5, 5, 5, 5, 5, 5]);
    }

    #[test]
    fn call_ranges() {
        let mremap = |flags, new_addr| Op::Mremap {
            old_addr: A,
            old_len: 0x2000,
            new_len: 0x4000,
            flags,
            new_addr,
        };
        // In place: the old range, grown.
        assert_eq!(op_ranges(&mremap(0, 0)), [(A, A + 0x4000)]);
        // Moved to a fixed place: source and destination.
        assert_eq!(
            op_ranges(&mremap(mremap::MAYMOVE | mremap::FIXED, B)),
            [(A, A + 0x4000), (B, B + 0x4000)]
        );
        // Free to move anywhere: unbounded.
        assert_eq!(op_ranges(&mremap(mremap::MAYMOVE, 0)), [EVERYWHERE]);
        let mmap = |flags| Op::Mmap {
            addr: A,
            len: 0x1000,
            prot: prot::READ,
            flags,
            file: None,
            offset: 0,
        };
        assert_eq!(
            op_ranges(&mmap(map::PRIVATE | map::ANONYMOUS | map::FIXED)),
            [(A, A + 0x1000)]
        );
        assert_eq!(
            op_ranges(&mmap(map::PRIVATE | map::ANONYMOUS)),
            [EVERYWHERE]
        );
        assert_eq!(
            op_ranges(&Op::Mprotect {
                addr: B,
                len: 0x1000,
                prot: prot::READ | prot::GROWSDOWN
            }),
            [EVERYWHERE]
        );
        assert_eq!(
            op_ranges(&Op::Madvise {
                addr: B,
                len: 0x3000,
                advice: 4
            }),
            [(B, B + 0x3000)]
        );
    }
}
