//! mm-probe's eBPF programs (target `bpfel-unknown-none`; build with
//! `cargo xtask build-ebpf`). On any other target this file is an empty
//! program so that `cargo build --workspace` works without the eBPF toolchain.
//!
//! All programs are raw tracepoints: the tracepoint's arguments arrive as
//! they were passed to `trace_*()`, without the record assembly that classic
//! (perf) tracepoints do. For the mmap_lock events that also skips the memcg
//! lookup the classic event's `TP_fast_assign` performs on every lock.
//!
//! | tracepoint (kernel source) | program | what it does |
//! |---|---|---|
//! | `mmap_lock_start_locking` (mm/mmap_lock.c) | [`mmap_lock_start_locking`] | opens an in-flight acquisition |
//! | `mmap_lock_acquire_returned` | [`mmap_lock_acquire_returned`] | wait time, trylocks, downgrades |
//! | `mmap_lock_released` | [`mmap_lock_released`] | hold time |
//! | `contention_begin` (kernel/locking/rwsem.c) | [`contention_begin`] | marks an acquisition contended |
//! | `page_fault_user`, `page_fault_kernel` (arch/x86/mm/fault.c) | [`page_fault_user`], [`page_fault_kernel`] | faults by kind; marks the CPU "in a user fault" |
//! | `sys_enter`, `sys_exit` | [`sys_enter`], [`sys_exit`] | the syscall each thread is in; mm syscall records (arguments, result) |
//! | `sched_process_fork`, `_exec`, `_exit` | [`sched_process_fork`] ... | filter inheritance, comm, exit |
//!
//! Attribution: an mmap_lock event is keyed by the process that owns the mm
//! (the current process, or `mm->owner`'s tgid for a remote locker such as a
//! reader of /proc/PID/maps or khugepaged). The mm pointer stays inside the
//! kernel-only `THREADS` map; nothing userspace reads contains it.
//!
//! Per-VMA lock fallback: a fault served under a per-VMA lock never touches
//! mmap_lock. A fault that falls back takes mmap_lock for read between the
//! `page_fault_user` event and the return to user mode, without sleeping in
//! between, on the same CPU. `page_fault_user` therefore stamps a per-CPU
//! mark with the thread id; a read acquisition by a thread that is not in a
//! system call and finds its own mark is a fallback (counted once per fault).
//! A syscall entry clears the mark.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
            generated::{
                bpf_get_current_ancestor_cgroup_id, bpf_get_current_task_btf, bpf_ktime_get_ns,
                bpf_task_pt_regs,
            },
        },
        macros::{map, raw_tracepoint},
        maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
        programs::RawTracePointContext,
    };
    use mm_ebpf::{
        CONTEXT_FAULT, CONTEXT_OTHER, ContextKey, Event, FAULT_KINDS, FaultSlot, HIST_BUCKETS,
        Inflight, MODE_READ, MODE_WRITE, NOT_IN_SYSCALL, OFFSET_UNKNOWN, REGS_ARGS_START,
        REGS_ARGS_WORDS, RawContextStats, RawHist, RawProcStats, SyscallEntry, SyscallEvent,
        ThreadState, WriteHolder, X86_64_SYSCALL_ARG_OFFSETS, counters, event_flags, event_kind,
        event_mask, fault_kind_index, filter, is_mm_syscall, log2_bucket, verdict,
    };

    // ---- load-time globals (see mm_ebpf::globals) -------------------------

    #[unsafe(no_mangle)]
    static FILTER: u32 = 0;
    #[unsafe(no_mangle)]
    static FILTER_COMM: [u8; 16] = [0; 16];
    #[unsafe(no_mangle)]
    static FILTER_CGROUP_ID: u64 = 0;
    #[unsafe(no_mangle)]
    static FILTER_CGROUP_LEVEL: u32 = 0;
    #[unsafe(no_mangle)]
    static EVENT_MASK: u32 = 0;
    #[unsafe(no_mangle)]
    static OFF_TASK_MM: u64 = OFFSET_UNKNOWN;
    #[unsafe(no_mangle)]
    static OFF_TASK_TGID: u64 = OFFSET_UNKNOWN;
    #[unsafe(no_mangle)]
    static OFF_TASK_PID: u64 = OFFSET_UNKNOWN;
    #[unsafe(no_mangle)]
    static OFF_MM_OWNER: u64 = OFFSET_UNKNOWN;
    #[unsafe(no_mangle)]
    static OFF_MM_MMAP_LOCK: u64 = OFFSET_UNKNOWN;
    #[unsafe(no_mangle)]
    static EXIT_HAS_GROUP_DEAD: u32 = 0;
    #[unsafe(no_mangle)]
    static OFF_REGS_SYSCALL_NR: u64 = OFFSET_UNKNOWN;
    #[unsafe(no_mangle)]
    static SYSCALLS_TRACKED: u32 = 1;

    #[inline(always)]
    fn global<T: Copy>(v: &T) -> T {
        // SAFETY: reading a static; volatile so that the compiler does not
        // fold the placeholder value. The loader rewrites it before load.
        unsafe { core::ptr::read_volatile(v) }
    }

    // ---- maps (see mm_ebpf::maps) -----------------------------------------

    #[map]
    static STATS: PerCpuHashMap<u32, RawProcStats> =
        PerCpuHashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);
    #[map]
    static CONTEXTS: PerCpuHashMap<ContextKey, RawContextStats> =
        PerCpuHashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);
    #[map]
    static ALLOWED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(32768, 0);
    #[map]
    static HOLDERS: LruHashMap<u32, WriteHolder> = LruHashMap::with_max_entries(8192, 0);
    #[map]
    static COMMS: LruHashMap<u32, [u8; 16]> = LruHashMap::with_max_entries(8192, 0);
    #[map]
    static EXITED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);
    #[map]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
    /// Per thread: syscall and the mmap_locks in flight or held. Bounded:
    /// the least recently used entry is evicted when full, and a thread's
    /// entry is deleted when it exits.
    #[map]
    static THREADS: LruHashMap<u32, ThreadState> = LruHashMap::with_max_entries(32768, 0);
    /// Per CPU: the fault counters of the last process that faulted here,
    /// and the per-VMA lock fallback mark (see mm_ebpf::FaultSlot).
    #[map]
    static FAULT_SLOTS: PerCpuArray<FaultSlot> = PerCpuArray::with_max_entries(1, 0);
    /// Bumped when a verdict may have changed; slots re-check on a new epoch.
    #[map]
    static EPOCH: Array<u64> = Array::with_max_entries(1, 0);
    /// Per thread: the mm syscall it is in, with its arguments (only with
    /// the SYSCALLS event mask). Updated in place; `enter_ns == 0` marks an
    /// entry sys_exit has consumed.
    #[map]
    static SYSCALL_ENTRIES: LruHashMap<u32, SyscallEntry> = LruHashMap::with_max_entries(8192, 0);
    /// Zero templates for creating map entries too large for the BPF stack.
    #[map]
    static ZERO_PROC: Array<RawProcStats> = Array::with_max_entries(1, 0);
    #[map]
    static ZERO_CONTEXT: Array<RawContextStats> = Array::with_max_entries(1, 0);

    // ---- small helpers ------------------------------------------------------

    #[inline(always)]
    fn now() -> u64 {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    }

    #[inline(always)]
    fn bump(counter: u32) {
        if let Some(c) = COUNTERS.get_ptr_mut(counter) {
            // SAFETY: per-CPU value; tracepoint programs run with preemption
            // disabled, so nothing else on this CPU updates it meanwhile.
            unsafe { *c += 1 };
        }
    }

    #[inline(always)]
    fn hist_add(h: &mut RawHist, v: u64) {
        let i = log2_bucket(v) & (HIST_BUCKETS - 1);
        h.buckets[i] += 1;
        h.sum += v;
        if v > h.max {
            h.max = v;
        }
    }

    #[inline(always)]
    fn read_kernel<T>(addr: u64) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel handles invalid addresses.
        unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
    }

    // ---- filtering ----------------------------------------------------------

    /// Whether the current task's process is traced (its own mm's events).
    #[inline(always)]
    fn traced_local(tgid: u32) -> bool {
        let f = global(&FILTER);
        if f == 0 {
            return true;
        }
        // SAFETY: value of a hash map; read once.
        if let Some(v) = unsafe { ALLOWED.get(tgid) } {
            return *v != verdict::DENIED;
        }
        if f & (filter::COMM | filter::CGROUP) == 0 {
            return false; // pid set only: ALLOWED is the whole answer
        }
        let mut ok = f & filter::PIDS == 0; // with a pid set, unknown = out
        if ok && f & filter::COMM != 0 {
            ok = match bpf_get_current_comm() {
                Ok(comm) => comm == global(&FILTER_COMM),
                Err(_) => false,
            };
        }
        if ok && f & filter::CGROUP != 0 {
            // SAFETY: helper with a scalar argument.
            let id =
                unsafe { bpf_get_current_ancestor_cgroup_id(global(&FILTER_CGROUP_LEVEL) as i32) };
            ok = id == global(&FILTER_CGROUP_ID);
        }
        let v = if ok {
            verdict::COMPUTED
        } else {
            verdict::DENIED
        };
        let _ = ALLOWED.insert(tgid, v, 0);
        ok
    }

    /// Whether events on the mm of process `owner`, caused by a task of
    /// another process, are traced.
    #[inline(always)]
    fn traced_remote(owner: u32) -> bool {
        if global(&FILTER) == 0 {
            return true;
        }
        // SAFETY: as above.
        matches!(unsafe { ALLOWED.get(owner) }, Some(v) if *v != verdict::DENIED)
    }

    // ---- per-process statistics --------------------------------------------

    #[inline(always)]
    fn proc_stats(tgid: u32, local: bool) -> Option<&'static mut RawProcStats> {
        if let Some(p) = STATS.get_ptr_mut(tgid) {
            // SAFETY: per-CPU map value, valid for the program's run.
            return Some(unsafe { &mut *p });
        }
        let zero = ZERO_PROC.get(0)?;
        let _ = STATS.insert(tgid, zero, BPF_NOEXIST as u64);
        match STATS.get_ptr_mut(tgid) {
            Some(p) => {
                if local {
                    if let Ok(comm) = bpf_get_current_comm() {
                        let _ = COMMS.insert(tgid, comm, 0);
                    }
                }
                // SAFETY: as above.
                Some(unsafe { &mut *p })
            }
            None => {
                bump(counters::STATS_FULL);
                None
            }
        }
    }

    #[inline(always)]
    fn context_stats(key: &ContextKey) -> Option<&'static mut RawContextStats> {
        if let Some(p) = CONTEXTS.get_ptr_mut(key) {
            // SAFETY: per-CPU map value, valid for the program's run.
            return Some(unsafe { &mut *p });
        }
        let zero = ZERO_CONTEXT.get(0)?;
        let _ = CONTEXTS.insert(key, zero, BPF_NOEXIST as u64);
        match CONTEXTS.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(p) => Some(unsafe { &mut *p }),
            None => {
                bump(counters::CONTEXTS_FULL);
                None
            }
        }
    }

    // ---- page faults -------------------------------------------------------

    #[raw_tracepoint(tracepoint = "page_fault_user")]
    pub fn page_fault_user(ctx: RawTracePointContext) -> i32 {
        on_fault(&ctx, true);
        0
    }

    #[raw_tracepoint(tracepoint = "page_fault_kernel")]
    pub fn page_fault_kernel(ctx: RawTracePointContext) -> i32 {
        on_fault(&ctx, false);
        0
    }

    #[inline(always)]
    fn epoch() -> u64 {
        EPOCH.get(0).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn bump_epoch() {
        if let Some(e) = EPOCH.get_ptr_mut(0) {
            // A lost concurrent increment still changes the value, which is
            // all the slots look at.
            // SAFETY: a map value valid for the program's run.
            unsafe { *e += 1 };
        }
    }

    /// Move a slot's counts into its process's `STATS` entry (if it still
    /// has one: after userspace forgot an exited process they are dropped).
    #[inline(always)]
    fn flush(slot: &mut FaultSlot) {
        if slot.traced != 0 {
            if let Some(p) = STATS.get_ptr_mut(slot.tgid) {
                // SAFETY: per-CPU map value, valid for the program's run.
                let stats = unsafe { &mut *p };
                for i in 0..FAULT_KINDS {
                    stats.user_faults[i] += slot.user_faults[i];
                    stats.kernel_faults[i] += slot.kernel_faults[i];
                }
            }
        }
        slot.user_faults = [0; FAULT_KINDS];
        slot.kernel_faults = [0; FAULT_KINDS];
        slot.generation += 1;
    }

    /// `trace_page_fault_{user,kernel}(address, regs, error_code)`.
    ///
    /// The hot path: one per-CPU array access when the same process keeps
    /// faulting on this CPU.
    #[inline(always)]
    fn on_fault(ctx: &RawTracePointContext, user: bool) {
        let address: u64 = ctx.arg(0);
        let error_code: u64 = ctx.arg(2);
        if !user && address >> 63 != 0 {
            return; // a kernel-mode fault on a kernel address: not an mm fault
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        let tid = pid_tgid as u32;
        let Some(slot) = FAULT_SLOTS.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: per-CPU value; tracepoint programs run with preemption
        // disabled, so nothing else on this CPU touches it meanwhile.
        let slot = unsafe { &mut *slot };
        let now_epoch = epoch();
        if slot.tgid != tgid || slot.epoch != now_epoch {
            flush(slot);
            slot.tgid = tgid;
            slot.epoch = now_epoch;
            // Creating the STATS entry now, while current is the process,
            // also records its comm.
            slot.traced = u32::from(traced_local(tgid) && proc_stats(tgid, true).is_some());
        }
        if slot.traced == 0 {
            return;
        }
        let kind = fault_kind_index(error_code);
        if kind < FAULT_KINDS {
            if user {
                slot.user_faults[kind] += 1;
            } else {
                slot.kernel_faults[kind] += 1;
            }
        }
        if user {
            slot.mark_tid = tid;
            slot.mark_counted = 0;
        }
        if global(&EVENT_MASK) & event_mask::FAULTS != 0 {
            emit(Event {
                ts_ns: now(),
                tgid,
                tid,
                kind: event_kind::FAULT,
                flags: if user { event_flags::USER } else { 0 },
                nr: 0,
                a: address,
                b: error_code,
            });
        }
    }

    #[inline(always)]
    fn emit(event: Event) {
        output(&event, event.tgid);
    }

    /// Send a ring-buffer record of `tgid`, counting it when it is dropped.
    #[inline(always)]
    fn output<T>(record: &T, tgid: u32) {
        if EVENTS.output::<T>(record, 0).is_err() {
            bump(counters::EVENTS_DROPPED);
            if let Some(p) = STATS.get_ptr_mut(tgid) {
                // SAFETY: per-CPU map value.
                unsafe { (*p).events_dropped += 1 };
            }
        }
    }

    // ---- system calls --------------------------------------------------------

    /// `trace_sys_enter(regs, id)`
    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tid = pid_tgid as u32;
        if !traced_local((pid_tgid >> 32) as u32) {
            return 0;
        }
        let id: i64 = ctx.arg(1);
        // Updated in place: an LRU insert per syscall costs several times more.
        if let Some(t) = thread_state(tid) {
            t.nr = id as i32;
        }
        // A frozen global: without SYSCALLS the verifier drops this branch,
        // and with it other syscalls pay one compare and a bit test.
        if global(&EVENT_MASK) & event_mask::SYSCALLS != 0 && is_mm_syscall(id) {
            save_syscall_entry(ctx.arg(0), tid, id as i32);
        }
        if let Some(slot) = FAULT_SLOTS.get_ptr_mut(0) {
            // SAFETY: per-CPU value.
            unsafe {
                if (*slot).mark_tid == tid {
                    (*slot).mark_tid = 0;
                }
            }
        }
        0
    }

    /// Remember an mm syscall's arguments until its sys_exit: the six
    /// argument registers, read from the entry `pt_regs` in one helper call.
    #[inline(always)]
    fn save_syscall_entry(regs: u64, tid: u32, nr: i32) {
        let Some(words) = read_kernel::<[u64; REGS_ARGS_WORDS]>(regs + REGS_ARGS_START) else {
            return;
        };
        let mut args = [0u64; 6];
        for (i, off) in X86_64_SYSCALL_ARG_OFFSETS.iter().enumerate() {
            args[i] = words[((*off - REGS_ARGS_START) / 8) as usize];
        }
        let entry = SyscallEntry {
            enter_ns: now(),
            args,
            nr,
            pad: 0,
        };
        match SYSCALL_ENTRIES.get_ptr_mut(tid) {
            // SAFETY: this thread's own entry.
            Some(e) => unsafe { *e = entry },
            None => {
                let _ = SYSCALL_ENTRIES.insert(tid, entry, 0);
            }
        }
    }

    /// `trace_sys_exit(regs, ret)`
    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tid = pid_tgid as u32;
        let Some(t) = THREADS.get_ptr_mut(tid) else {
            return 0;
        };
        // SAFETY: this thread's own entry.
        let nr = unsafe { core::mem::replace(&mut (*t).nr, NOT_IN_SYSCALL) };
        if global(&EVENT_MASK) & event_mask::SYSCALLS != 0 && is_mm_syscall(nr as i64) {
            emit_syscall(&ctx, tid, (pid_tgid >> 32) as u32, nr);
        }
        0
    }

    /// The record of an mm syscall that returns, from the entry saved at
    /// sys_enter. A new thread or process returning from clone/fork has no
    /// entry of its own (entries are per thread id), so only the caller's
    /// return is recorded.
    #[inline(always)]
    fn emit_syscall(ctx: &RawTracePointContext, tid: u32, tgid: u32, nr: i32) {
        let Some(e) = SYSCALL_ENTRIES.get_ptr_mut(tid) else {
            return;
        };
        // SAFETY: this thread's own entry.
        let e = unsafe { &mut *e };
        if e.enter_ns == 0 || e.nr != nr {
            return;
        }
        let ret: i64 = ctx.arg(1);
        let event = SyscallEvent {
            ts_ns: now(),
            tgid,
            tid,
            kind: event_kind::SYSCALL,
            flags: 0,
            nr,
            enter_ns: e.enter_ns,
            args: e.args,
            ret,
        };
        e.enter_ns = 0;
        output(&event, tgid);
    }

    // ---- mmap_lock -----------------------------------------------------------

    /// Owner tgid of `mm`, whether the current task is remote to it, and
    /// whether the current task is a user task (has an mm of its own).
    #[inline(always)]
    fn resolve_owner(mm: u64, tgid: u32) -> Option<(u32, bool, bool)> {
        // current->mm as a direct, BTF-checked load: the offset is a frozen
        // .rodata constant, so the verifier checks it against task_struct
        // and the JIT emits one exception-handled load instead of a helper.
        // SAFETY: the current task is always valid; the offset is that of
        // task_struct.mm, read from this kernel's BTF.
        let own_mm = unsafe {
            let task = bpf_get_current_task_btf() as *const u8;
            core::ptr::read_volatile(task.add(global(&OFF_TASK_MM) as usize) as *const u64)
        };
        if own_mm == mm {
            return Some((tgid, false, true));
        }
        let off_owner = global(&OFF_MM_OWNER);
        if off_owner == OFFSET_UNKNOWN {
            bump(counters::UNKNOWN_OWNER);
            return None;
        }
        let owner_task: u64 = read_kernel(mm + off_owner).unwrap_or(0);
        if owner_task == 0 {
            // No owner: the mm has no user but the task locking it. Seen on
            // this kernel for exec's new mm while it is set up (before
            // exec_mmap() makes it current->mm) and on the exit path
            // (exit_mm() clears current->mm and mm->owner, then exit_mmap()
            // locks the mm). Both are the locking process's own lock.
            return Some((tgid, false, own_mm != 0));
        }
        let owner: u32 = read_kernel(owner_task + global(&OFF_TASK_TGID)).unwrap_or(0);
        if owner == 0 {
            bump(counters::UNKNOWN_OWNER);
            return None;
        }
        // exec builds the new mm with mm->owner == current before switching
        // to it: that is still the process's own lock.
        Some((owner, owner != tgid, own_mm != 0))
    }

    /// This thread's state, created on first use.
    #[inline(always)]
    fn thread_state(tid: u32) -> Option<&'static mut ThreadState> {
        if let Some(p) = THREADS.get_ptr_mut(tid) {
            // SAFETY: this thread's own entry, valid for the program's run.
            return Some(unsafe { &mut *p });
        }
        let _ = THREADS.insert(tid, ThreadState::NEW, BPF_NOEXIST as u64);
        // SAFETY: as above.
        THREADS.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
    }

    /// The slot of `mm` in this thread's state.
    #[inline(always)]
    fn find_slot(t: &mut ThreadState, mm: u64) -> Option<&mut Inflight> {
        t.held.iter_mut().find(|h| h.mm == mm)
    }

    /// The slot of `mm`, or a free one.
    #[inline(always)]
    fn slot_for(t: &mut ThreadState, mm: u64) -> Option<&mut Inflight> {
        let i = if t.held[0].mm == mm {
            0
        } else if t.held[1].mm == mm {
            1
        } else if t.held[0].mm == 0 {
            0
        } else if t.held[1].mm == 0 {
            1
        } else {
            return None; // already two in flight: this one goes untimed
        };
        Some(&mut t.held[i])
    }

    /// Lock context of the current thread; the bool is "in a user fault".
    /// `remote_user` is set for a user task locking another process's mm,
    /// `user_task` for any task with an mm of its own.
    #[inline(always)]
    fn lock_context(t: &ThreadState, tid: u32, remote_user: bool, user_task: bool) -> (i32, bool) {
        let tracked = global(&SYSCALLS_TRACKED) != 0;
        if tracked && t.nr != NOT_IN_SYSCALL {
            return (t.nr, false);
        }
        if remote_user {
            // An untraced process reading a traced one's mm (a reader of
            // /proc/PID/smaps, process_vm_readv): sys_enter does not track
            // untraced threads, so take the syscall number from the task's
            // saved user registers. Rare, so the extra reads are cheap.
            return (syscall_from_regs(), false);
        }
        if !user_task {
            return (CONTEXT_OTHER, false); // kernel threads
        }
        // A user task outside any tracked syscall: in a user fault (the
        // per-VMA lock fell back) if this CPU's mark is this thread's and
        // the task is in an exception, not a syscall: x86's idtentry sets
        // the saved orig_ax to -1 after taking the error code out of it.
        let orig_ax = regs_syscall_word();
        if let Some(slot) = FAULT_SLOTS.get(0) {
            if slot.mark_tid == tid && orig_ax == Some(-1) {
                return (CONTEXT_FAULT, true);
            }
        }
        if !tracked {
            if let Some(nr) = orig_ax.filter(|nr| (0..4096).contains(nr)) {
                return (nr as i32, false);
            }
        }
        (CONTEXT_OTHER, false)
    }

    /// `task_pt_regs(current)->orig_ax` (x86): the syscall number inside a
    /// syscall, -1 inside an exception or interrupt.
    #[inline(always)]
    fn regs_syscall_word() -> Option<i64> {
        let off = global(&OFF_REGS_SYSCALL_NR);
        if off == OFFSET_UNKNOWN {
            return None;
        }
        // SAFETY: helpers on the current task, which is always valid.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
        read_kernel::<i64>(regs + off)
    }

    /// The syscall number from the saved registers, if they hold one.
    #[inline(always)]
    fn syscall_from_regs() -> i32 {
        match regs_syscall_word() {
            Some(nr) if (0..4096).contains(&nr) => nr as i32,
            _ => CONTEXT_OTHER,
        }
    }

    /// Count a per-VMA lock fallback once per fault.
    #[inline(always)]
    fn count_fallback(stats: &mut RawProcStats) {
        if let Some(slot) = FAULT_SLOTS.get_ptr_mut(0) {
            // SAFETY: per-CPU value.
            unsafe {
                if (*slot).mark_counted == 0 {
                    (*slot).mark_counted = 1;
                    stats.fault_fallbacks += 1;
                }
            }
        }
    }

    /// The `write` argument of the mmap_lock events. `SHIFT` is 1 for the
    /// pre-6.14 prototypes that pass `const char *memcg_path` second. The
    /// offset must be a compile-time constant: the verifier rejects
    /// variable-offset context reads, and the kernel refuses to attach a
    /// program that reads past the tracepoint's arity, so each prototype
    /// gets its own program (see the `_memcg_path` entry points).
    #[inline(always)]
    fn mmap_lock_write_arg<const SHIFT: usize>(ctx: &RawTracePointContext) -> bool {
        let w: u64 = ctx.arg(1 + SHIFT);
        w & 0xff != 0
    }

    /// `success` of mmap_lock_acquire_returned.
    #[inline(always)]
    fn mmap_lock_success_arg<const SHIFT: usize>(ctx: &RawTracePointContext) -> bool {
        let v: u64 = ctx.arg(2 + SHIFT);
        v & 0xff != 0
    }

    /// Resolve the owner, apply the filter, find the context: the common
    /// start of a new acquisition (blocking or trylock). Returns the
    /// acquisition and this thread's state.
    #[inline(always)]
    fn begin(
        mm: u64,
        write: bool,
        start_ns: u64,
        trylock: bool,
    ) -> Option<(Inflight, &'static mut ThreadState)> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        let tid = pid_tgid as u32;
        let (owner, remote, user_task) = resolve_owner(mm, tgid)?;
        let traced = if remote {
            traced_remote(owner)
        } else {
            traced_local(tgid)
        };
        if !traced {
            return None;
        }
        let t = thread_state(tid)?;
        let (nr, in_fault) = lock_context(t, tid, remote && user_task, user_task);
        if in_fault && !write && !remote {
            if let Some(stats) = proc_stats(owner, true) {
                count_fallback(stats);
            }
        }
        let inflight = Inflight {
            mm,
            start_ns,
            acquired_ns: 0,
            owner,
            nr,
            write: write as u8,
            contended: 0,
            remote: remote as u8,
            trylock: trylock as u8,
            pad: 0,
        };
        Some((inflight, t))
    }

    /// `trace_mmap_lock_start_locking(mm, write)` (6.14+)
    #[raw_tracepoint(tracepoint = "mmap_lock_start_locking")]
    pub fn mmap_lock_start_locking(ctx: RawTracePointContext) -> i32 {
        start_locking::<0>(&ctx)
    }

    /// `trace_mmap_lock_start_locking(mm, memcg_path, write)` (before 6.14)
    #[raw_tracepoint(tracepoint = "mmap_lock_start_locking")]
    pub fn mmap_lock_start_locking_memcg_path(ctx: RawTracePointContext) -> i32 {
        start_locking::<1>(&ctx)
    }

    #[inline(always)]
    fn start_locking<const SHIFT: usize>(ctx: &RawTracePointContext) -> i32 {
        let mm: u64 = ctx.arg(0);
        let write = mmap_lock_write_arg::<SHIFT>(ctx);
        let ts = now();
        if let Some((inflight, t)) = begin(mm, write, ts, false) {
            if let Some(slot) = slot_for(t, mm) {
                *slot = inflight;
            }
        }
        0
    }

    /// `trace_mmap_lock_acquire_returned(mm, write, success)` (6.14+)
    #[raw_tracepoint(tracepoint = "mmap_lock_acquire_returned")]
    pub fn mmap_lock_acquire_returned(ctx: RawTracePointContext) -> i32 {
        acquire_returned::<0>(&ctx)
    }

    /// `trace_mmap_lock_acquire_returned(mm, memcg_path, write, success)`
    #[raw_tracepoint(tracepoint = "mmap_lock_acquire_returned")]
    pub fn mmap_lock_acquire_returned_memcg_path(ctx: RawTracePointContext) -> i32 {
        acquire_returned::<1>(&ctx)
    }

    #[inline(always)]
    fn acquire_returned<const SHIFT: usize>(ctx: &RawTracePointContext) -> i32 {
        let mm: u64 = ctx.arg(0);
        let write = mmap_lock_write_arg::<SHIFT>(ctx);
        let success = mmap_lock_success_arg::<SHIFT>(ctx);
        let ts = now();
        let pid_tgid = bpf_get_current_pid_tgid();
        let tid = pid_tgid as u32;

        if let Some(p) = THREADS.get_ptr_mut(tid) {
            // SAFETY: this thread's own entry.
            let t = unsafe { &mut *p };
            if let Some(slot) = find_slot(t, mm) {
                if slot.acquired_ns == 0 && slot.start_ns != 0 {
                    blocking_acquired(slot, success, ts, tid, (pid_tgid >> 32) as u32);
                    return 0;
                }
                if slot.acquired_ns != 0 && slot.write != 0 && !write && success {
                    downgraded(slot, ts, tid);
                    return 0;
                }
                // Anything else means a release was missed: start over.
            }
        }
        // No start_locking seen: a trylock.
        let Some((mut inflight, t)) = begin(mm, write, 0, true) else {
            return 0;
        };
        let Some(stats) = proc_stats(inflight.owner, inflight.remote == 0) else {
            return 0;
        };
        let mode = &mut stats.modes[if write { MODE_WRITE } else { MODE_READ }];
        if !success {
            mode.trylock_failures += 1;
            if global(&EVENT_MASK) & event_mask::LOCKS != 0 {
                emit(lock_event(
                    event_kind::LOCK_FAILED,
                    &inflight,
                    tid,
                    ts,
                    0,
                    0,
                ));
            }
            return 0;
        }
        mode.acquisitions += 1;
        mode.trylock_acquisitions += 1;
        if inflight.remote != 0 {
            mode.remote += 1;
        }
        inflight.acquired_ns = ts;
        if let Some(c) = context_stats(&context_key(&inflight)) {
            c.acquisitions += 1;
        }
        if write {
            set_holder(&inflight, ts, tid, (pid_tgid >> 32) as u32);
        }
        if let Some(slot) = slot_for(t, mm) {
            *slot = inflight;
        }
        0
    }

    #[inline(always)]
    fn context_key(inflight: &Inflight) -> ContextKey {
        ContextKey {
            tgid: inflight.owner,
            nr: inflight.nr,
            write: inflight.write,
            remote: inflight.remote,
            pad: [0; 2],
        }
    }

    #[inline(always)]
    fn lock_event(kind: u16, inflight: &Inflight, tid: u32, ts: u64, a: u64, b: u64) -> Event {
        let mut flags = 0;
        if inflight.write != 0 {
            flags |= event_flags::WRITE;
        }
        if inflight.contended != 0 {
            flags |= event_flags::CONTENDED;
        }
        if inflight.remote != 0 {
            flags |= event_flags::REMOTE;
        }
        if inflight.trylock != 0 {
            flags |= event_flags::TRYLOCK;
        }
        Event {
            ts_ns: ts,
            tgid: inflight.owner,
            tid,
            kind,
            flags,
            nr: inflight.nr,
            a,
            b,
        }
    }

    /// The per-event record of a hold that ended (release or downgrade).
    #[inline(always)]
    fn emit_release(held: &Inflight, tid: u32, ts: u64, hold: u64) {
        if global(&EVENT_MASK) & event_mask::LOCKS != 0 {
            let wait = if held.start_ns != 0 {
                held.acquired_ns - held.start_ns
            } else {
                0
            };
            emit(lock_event(
                event_kind::LOCK_RELEASE,
                held,
                tid,
                ts,
                wait,
                hold,
            ));
        }
    }

    /// Record the write holder, in place after the process's first write.
    #[inline(always)]
    fn set_holder(inflight: &Inflight, ts: u64, tid: u32, tgid: u32) {
        let holder = WriteHolder {
            since_ns: ts,
            tid,
            tgid,
            nr: inflight.nr,
            pad: 0,
        };
        match HOLDERS.get_ptr_mut(inflight.owner) {
            // SAFETY: map value; one writer holds this lock at a time.
            Some(h) => unsafe { *h = holder },
            None => {
                let _ = HOLDERS.insert(inflight.owner, holder, 0);
            }
        }
    }

    #[inline(always)]
    fn clear_holder(owner: u32, tid: u32) {
        if let Some(h) = HOLDERS.get_ptr_mut(owner) {
            // SAFETY: map value; only the holder clears it.
            unsafe {
                if (*h).tid == tid {
                    (*h).tid = 0;
                }
            }
        }
    }

    #[inline(always)]
    fn blocking_acquired(slot: &mut Inflight, success: bool, ts: u64, tid: u32, tgid: u32) {
        let wait = ts.saturating_sub(slot.start_ns);
        let Some(stats) = proc_stats(slot.owner, slot.remote == 0) else {
            slot.mm = 0;
            return;
        };
        let mode = &mut stats.modes[if slot.write != 0 {
            MODE_WRITE
        } else {
            MODE_READ
        }];
        if !success {
            // A killable wait interrupted by a fatal signal.
            mode.lock_failures += 1;
            if global(&EVENT_MASK) & event_mask::LOCKS != 0 {
                emit(lock_event(event_kind::LOCK_FAILED, slot, tid, ts, wait, 0));
            }
            slot.mm = 0;
            return;
        }
        mode.acquisitions += 1;
        if slot.contended != 0 {
            mode.contended += 1;
        }
        if slot.remote != 0 {
            mode.remote += 1;
        }
        hist_add(&mut mode.wait, wait);
        if let Some(c) = context_stats(&context_key(slot)) {
            c.acquisitions += 1;
            if slot.contended != 0 {
                c.contended += 1;
            }
            hist_add(&mut c.wait, wait);
        }
        slot.acquired_ns = ts;
        if slot.write != 0 {
            set_holder(slot, ts, tid, tgid);
        }
    }

    /// `mmap_write_downgrade()`: acquire_returned(read, success) while this
    /// thread holds the write lock, with no release in between. The write
    /// hold ends and a read hold begins; no wait and no new acquisition.
    #[inline(always)]
    fn downgraded(slot: &mut Inflight, ts: u64, tid: u32) {
        let hold = ts.saturating_sub(slot.acquired_ns);
        if let Some(stats) = proc_stats(slot.owner, slot.remote == 0) {
            stats.downgrades += 1;
            hist_add(&mut stats.modes[MODE_WRITE].hold, hold);
        }
        if let Some(c) = context_stats(&context_key(slot)) {
            hist_add(&mut c.hold, hold);
        }
        emit_release(slot, tid, ts, hold);
        clear_holder(slot.owner, tid);
        slot.write = 0;
        slot.acquired_ns = ts;
        slot.start_ns = 0;
        slot.contended = 0;
    }

    /// `trace_mmap_lock_released(mm, write)`
    #[raw_tracepoint(tracepoint = "mmap_lock_released")]
    pub fn mmap_lock_released(ctx: RawTracePointContext) -> i32 {
        let mm: u64 = ctx.arg(0);
        let ts = now();
        let pid_tgid = bpf_get_current_pid_tgid();
        let tid = pid_tgid as u32;
        let mut held = None;
        if let Some(p) = THREADS.get_ptr_mut(tid) {
            // SAFETY: this thread's own entry.
            let t = unsafe { &mut *p };
            if let Some(slot) = find_slot(t, mm) {
                held = Some(*slot);
                slot.mm = 0;
            }
        }
        let Some(inflight) = held.filter(|i| i.acquired_ns != 0) else {
            // Only a traced process's release is a miss; untraced ones were
            // never tracked.
            let tgid = (pid_tgid >> 32) as u32;
            if traced_local(tgid) {
                bump(counters::UNMATCHED_RELEASES);
                if let Some(stats) = proc_stats(tgid, true) {
                    stats.unmatched_releases += 1;
                }
            }
            return 0;
        };
        let hold = ts.saturating_sub(inflight.acquired_ns);
        if let Some(stats) = proc_stats(inflight.owner, inflight.remote == 0) {
            let mode = if inflight.write != 0 {
                MODE_WRITE
            } else {
                MODE_READ
            };
            hist_add(&mut stats.modes[mode].hold, hold);
        }
        if let Some(c) = context_stats(&context_key(&inflight)) {
            hist_add(&mut c.hold, hold);
        }
        if inflight.write != 0 {
            clear_holder(inflight.owner, tid);
        }
        emit_release(&inflight, tid, ts, hold);
        0
    }

    /// `trace_contention_begin(lock, flags)` from the rwsem slow paths
    /// (include/trace/events/lock.h: LCB_F_SPIN 1, READ 2, WRITE 4, RT 8,
    /// PERCPU 16, MUTEX 32). Only a sleeping rwsem wait on an mm's mmap_lock
    /// by a thread with an acquisition in flight on that mm counts.
    #[raw_tracepoint(tracepoint = "contention_begin")]
    pub fn contention_begin(ctx: RawTracePointContext) -> i32 {
        let flags: u64 = ctx.arg(1);
        if flags & (1 | 8 | 16 | 32) != 0 || flags & (2 | 4) == 0 {
            return 0;
        }
        let off = global(&OFF_MM_MMAP_LOCK);
        if off == OFFSET_UNKNOWN {
            return 0;
        }
        let lock: u64 = ctx.arg(0);
        let mm = lock.wrapping_sub(off);
        let tid = bpf_get_current_pid_tgid() as u32;
        if let Some(p) = THREADS.get_ptr_mut(tid) {
            // SAFETY: this thread's own entry.
            let t = unsafe { &mut *p };
            if let Some(slot) = find_slot(t, mm) {
                if slot.acquired_ns == 0 {
                    slot.contended = 1;
                }
            }
        }
        0
    }

    // ---- process lifecycle ---------------------------------------------------

    /// `trace_sched_process_fork(parent, child)`: with FOLLOW_FORKS, a
    /// traced process's new child processes are traced too.
    #[raw_tracepoint(tracepoint = "sched_process_fork")]
    pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
        if global(&FILTER) & filter::FOLLOW_FORKS == 0 {
            return 0;
        }
        let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
        // SAFETY: value read once.
        match unsafe { ALLOWED.get(parent) } {
            Some(v) if *v != verdict::DENIED => {}
            _ => return 0,
        }
        let child: u64 = ctx.arg(1);
        let pid: u32 = read_kernel(child + global(&OFF_TASK_PID)).unwrap_or(0);
        let tgid: u32 = read_kernel(child + global(&OFF_TASK_TGID)).unwrap_or(0);
        if pid != 0 && pid == tgid {
            let _ = ALLOWED.insert(tgid, verdict::EXPLICIT, 0);
        }
        0
    }

    /// `trace_sched_process_exec(p, old_pid, bprm)`: the comm changed.
    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // A computed comm/cgroup verdict is recomputed for the new image.
        // SAFETY: value read once.
        if let Some(v) = unsafe { ALLOWED.get(tgid) } {
            if *v != verdict::EXPLICIT {
                let _ = ALLOWED.remove(tgid);
            }
        }
        if STATS.get_ptr(tgid).is_some() {
            if let Ok(comm) = bpf_get_current_comm() {
                let _ = COMMS.insert(tgid, comm, 0);
            }
        }
        if global(&FILTER) & (filter::COMM | filter::CGROUP) != 0 {
            bump_epoch(); // fault slots re-check the verdict
        }
        0
    }

    /// `trace_sched_process_exit(p, group_dead)`
    #[raw_tracepoint(tracepoint = "sched_process_exit")]
    pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tid = pid_tgid as u32;
        let tgid = (pid_tgid >> 32) as u32;
        let _ = THREADS.remove(tid);
        if global(&EVENT_MASK) & event_mask::SYSCALLS != 0 {
            // A thread killed inside an mm syscall never reaches sys_exit.
            let _ = SYSCALL_ENTRIES.remove(tid);
        }
        let group_dead = if global(&EXIT_HAS_GROUP_DEAD) != 0 {
            let g: u64 = ctx.arg(1);
            g & 0xff != 0
        } else {
            // Older kernels: approximate with the main thread's exit.
            tid == tgid
        };
        if group_dead {
            if STATS.get_ptr(tgid).is_some() {
                let _ = EXITED.insert(tgid, now(), 0);
            }
            // The pid may be reused by an unrelated process.
            let _ = ALLOWED.remove(tgid);
            bump_epoch();
        }
        0
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program in which a panic is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

/// GPL-compatible, as the probe_read and ktime helpers require.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
