//! Replaying an op trace ([`crate::trace`]) on the engine: one thread per
//! recorded thread, each making its records in order, under a chosen
//! fault strategy, to answer "what would this program's mmap_lock have
//! looked like under classic / speculative / per-VMA faults".
//!
//! Order across threads: system calls happen one at a time in recorded
//! order; an access waits for the system calls recorded before it that may
//! change its page (those whose address range covers the page, and those
//! whose range is not known: see [`op_ranges`]), so it sees the mappings
//! the host's access saw; and a system call waits for the earlier accesses
//! of other threads to the pages it changes (so it does not take their
//! pages away first). So every page sees its calls and accesses in
//! recorded order, and an access is not held up by calls elsewhere.
//! Otherwise threads run concurrently: faults with faults, and faults with
//! system calls on other pages, as they did on the host.
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
    collections::HashMap,
    sync::{
        OnceLock,
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

/// Which call last changed each page, as disjoint page ranges: what an
/// access must wait for.
#[derive(Default)]
struct LastCall {
    /// start page -> (end page, calls that must be done: the number of
    /// the last call on the range + 1).
    ranges: std::collections::BTreeMap<u64, (u64, usize)>,
    /// Calls every access must wait for (the last call whose range is
    /// not known, + 1).
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

    /// Every access waits for calls `n`.
    fn barrier(&mut self, n: usize) {
        self.floor = n;
        self.ranges.clear();
    }

    /// Calls that must be done before an access to page `p`.
    fn before(&self, p: u64) -> usize {
        match self.ranges.range(..=p).next_back() {
            Some((_, &(e, v))) if e > p => v.max(self.floor),
            _ => self.floor,
        }
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
    /// A system call (or brk): the next in the calls' order.
    Call,
    /// An access at `Step::addr`, by the user or by the kernel.
    Access(Access, bool),
    /// A call without an op form.
    Skip,
}

/// One record of a thread's part of the trace, with its ordering
/// constraints.
#[derive(Clone, Copy, Debug)]
struct Step {
    /// Index of the record in the trace.
    index: usize,
    /// System calls that must be done before this step: for a call, its
    /// number in the calls' order (all earlier calls); for an access, the
    /// calls up to the last one recorded before it that may change its
    /// page.
    calls_before: usize,
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
    /// The system calls in recorded order.
    calls: Vec<Call>,
    /// (thread, steps of it that must be done first), by call.
    deps: Vec<(usize, usize)>,
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
        let mut last_call = LastCall::default();
        let mut next_file = 0u32;
        for (index, r) in trace.records.iter().enumerate() {
            let calls_before = calls.len();
            let me = thread_of[&r.tid];
            let pos = threads[me].len();
            let mut step = Step {
                index,
                calls_before,
                addr: 0,
                kind: Kind::Skip,
                publish: false,
            };
            let call = |op: CallOp, recorded: Outcome, deps: std::ops::Range<usize>| Call {
                record: index,
                tid: r.tid,
                op,
                recorded,
                deps,
            };
            match &r.event {
                Event::Syscall { op, result, .. } => {
                    let (op, file) = replay_op(op, result, next_file);
                    let first = deps.len();
                    for (s, e) in op_ranges(&op) {
                        let (ps, pe) = (s / 4096, e.div_ceil(4096));
                        if (s, e) == EVERYWHERE {
                            last_call.barrier(calls_before + 1);
                        } else {
                            last_call.paint(ps, pe, calls_before + 1);
                        }
                        wait_for_accesses(&mut touched, me, ps, pe, &mut deps, first);
                    }
                    for &(t, n) in &deps[first..] {
                        threads[t][n - 1].publish = true;
                    }
                    if let Some((id, size)) = file {
                        next_file += 1;
                        mm.apply(&Op::CreateFile {
                            id,
                            size: size.div_ceil(4096) * 4096,
                            fill: 0,
                        });
                    }
                    calls.push(call(CallOp::Op(op), *result, first..deps.len()));
                    step.kind = Kind::Call;
                }
                Event::Fault { addr, code, user } => {
                    touched[me].insert(addr / 4096, pos + 1);
                    step.calls_before = last_call.before(addr / 4096);
                    step.addr = *addr;
                    step.kind = Kind::Access(access_of(*code), *user);
                }
                Event::Raw {
                    nr: crate::trace::nr::BRK,
                    args,
                    ret,
                    ..
                } => {
                    // brk moves the heap's end from where the engine has
                    // it: a call of unknown range, ordered with every
                    // access.
                    let first = deps.len();
                    wait_for_accesses(&mut touched, me, 0, u64::MAX, &mut deps, first);
                    for &(t, n) in &deps[first..] {
                        threads[t][n - 1].publish = true;
                    }
                    last_call.barrier(calls_before + 1);
                    calls.push(call(
                        CallOp::Brk(args[0]),
                        Outcome::Ok(*ret as u64),
                        first..deps.len(),
                    ));
                    step.kind = Kind::Call;
                }
                Event::Raw { .. } => {
                    // Not replayed, so nothing on the engine to wait for;
                    // still a barrier: accesses recorded after it wait for
                    // every call recorded before it.
                    last_call.barrier(calls_before);
                    step.calls_before = 0;
                }
            }
            threads[me].push(step);
        }
        Self {
            tids,
            threads,
            calls,
            deps,
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
    /// Calls done.
    done: Padded<AtomicUsize>,
    /// Per thread: steps done (published where another thread waits).
    progress: Vec<Padded<AtomicUsize>>,
    /// Per thread: what it sleeps on, or is about to.
    sleep: Vec<Padded<Sleeper>>,
    /// Per thread: its handle, for waking it.
    handles: Vec<OnceLock<std::thread::Thread>>,
}

/// A sleeping thread's condition: counter `counter` (0: none, 1: calls
/// done, 2 + t: thread t's progress) at least `value`.
#[derive(Default)]
struct Sleeper {
    counter: AtomicUsize,
    value: AtomicUsize,
}

/// Checks of a condition before a waiter sleeps (about a microsecond):
/// with more replay threads than cores, longer spins take the CPU from
/// the thread being waited for.
const SPINS: u32 = 50;

/// [`Sleeper::counter`] of the calls-done counter.
const DONE: usize = 1;

impl Gate {
    fn new(threads: usize) -> Self {
        Self {
            done: Padded::default(),
            progress: (0..threads).map(|_| Padded::default()).collect(),
            sleep: (0..threads).map(|_| Padded::default()).collect(),
            handles: (0..threads).map(|_| OnceLock::new()).collect(),
        }
    }

    fn counter(&self, c: usize) -> &AtomicUsize {
        if c == DONE {
            &self.done.0
        } else {
            &self.progress[c - 2].0
        }
    }

    /// Wait, as thread `me`, until counter `c` is at least `value`.
    fn wait(&self, me: usize, c: usize, value: usize) {
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
        let s = &self.sleep[me].0;
        s.value.store(value, Ordering::Relaxed);
        // Announce the sleep before the last check; a thread that moves
        // the counter after the check sees the announcement (both sides
        // are sequentially consistent) and wakes us.
        s.counter.store(c, Ordering::SeqCst);
        while counter.load(Ordering::SeqCst) < value {
            std::thread::park();
        }
        s.counter.store(0, Ordering::Relaxed);
    }

    /// Wake the threads sleeping on counter `c` whose condition now holds.
    fn wake(&self, c: usize, now: usize) {
        for (t, s) in self.sleep.iter().enumerate() {
            if s.0.counter.load(Ordering::SeqCst) == c && s.0.value.load(Ordering::Relaxed) <= now {
                if let Some(h) = self.handles[t].get() {
                    h.unpark();
                }
            }
        }
    }

    fn call_done(&self) {
        let now = self.done.0.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake(DONE, now);
    }

    fn publish(&self, me: usize, steps: usize) {
        self.progress[me].0.store(steps, Ordering::SeqCst);
        self.wake(2 + me, steps);
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
}

/// Play thread `me`'s steps.
fn run_thread(
    me: usize,
    plan: &Plan,
    trace: &Trace,
    mm: &SharedMm,
    gate: &Gate,
    opts: ReplayOptions,
    start: Instant,
) -> ThreadResult {
    let _ = gate.handles[me].set(std::thread::current());
    let mut out = ThreadResult::default();
    for (pos, st) in plan.threads[me].iter().enumerate() {
        if let Some(speed) = opts.speed {
            let t_ns = trace.records[st.index].t_ns;
            let due = start + Duration::from_nanos((t_ns as f64 / speed) as u64);
            wait_until(due);
        }
        gate.wait(me, DONE, st.calls_before);
        match st.kind {
            Kind::Call => {
                let call = &plan.calls[st.calls_before];
                for &(t, n) in &plan.deps[call.deps.clone()] {
                    gate.wait(me, 2 + t, n);
                }
                let res = match &call.op {
                    CallOp::Op(op) => mm.apply(op),
                    CallOp::Brk(addr) => Outcome::Ok(mm.brk(*addr)),
                };
                gate.call_done();
                out.calls.push((st.calls_before, res));
            }
            Kind::Access(access, user) => {
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
            Kind::Skip => out.skipped += 1,
        }
        if st.publish {
            gate.publish(me, pos + 1);
        }
    }
    out
}

/// Replay a trace.
pub fn replay(trace: &Trace, opts: ReplayOptions) -> ReplayReport {
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
    let gate = Gate::new(plan.tids.len());
    let start = Instant::now();
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..plan.tids.len())
            .map(|me| {
                let (plan, mm, gate) = (&plan, &mm, &gate);
                s.spawn(move || run_thread(me, plan, trace, mm, gate, opts, start))
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
    for r in results {
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
        .map(|(c, o)| CallResult {
            record: c.record,
            tid: c.tid,
            op: match &c.op {
                CallOp::Op(op) => crate::trace::format_op(op),
                CallOp::Brk(addr) => format!("brk addr={addr:#x}"),
            },
            recorded: c.recorded,
            replayed: o.expect("every call is replayed"),
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

    /// The calls that must be done before record `index` runs.
    fn waits_for(plan: &Plan, index: usize) -> usize {
        plan.threads
            .iter()
            .flatten()
            .find(|s| s.index == index)
            .expect("a step per record")
            .calls_before
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
        // Calls still wait for every call before them.
        assert_eq!(waits_for(&plan, 4), 3);
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
