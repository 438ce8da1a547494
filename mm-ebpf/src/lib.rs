//! The kernel/user ABI of mm-probe's eBPF programs: map names, map keys and
//! values, ring-buffer records and the load-time globals.
//!
//! Everything here is `#[repr(C)]` and `no_std` so that the same definitions
//! compile into the eBPF object (`src/main.rs`, target `bpfel-unknown-none`)
//! and into mm-probe on the host. With the `user` feature the types implement
//! [`aya::Pod`] so that mm-probe can read them out of maps.
//!
//! The raw values are cumulative and per CPU; mm-probe sums the CPUs and turns
//! them into `mm_core::stats` types, which is the schema both the host probe
//! and the engine report in.
#![no_std]

/// Number of log2 buckets in a [`RawHist`]. Bucket 0 counts values 0 and 1;
/// bucket `i >= 1` counts values in `[2^i, 2^(i+1))`. 64 buckets cover every
/// `u64`, so no value is ever clamped.
pub const HIST_BUCKETS: usize = 64;

/// Fault kinds, indexed as `access * 2 + present` where access is 0 read,
/// 1 write, 2 instruction fetch, and present is bit 0 of the x86 error code
/// (0: the page was not present, 1: a protection fault on a present page).
pub const FAULT_KINDS: usize = 6;

/// [`ContextKey::nr`] for a lock taken while the thread is handling a user
/// page fault (the per-VMA lock fell back to mmap_lock).
pub const CONTEXT_FAULT: i32 = -1;
/// [`ContextKey::nr`] for a lock taken outside any system call or user fault
/// (kernel threads such as khugepaged, task work, exit paths).
pub const CONTEXT_OTHER: i32 = -2;

/// Lock mode indices into [`RawProcStats::modes`].
pub const MODE_READ: usize = 0;
/// Lock mode indices into [`RawProcStats::modes`].
pub const MODE_WRITE: usize = 1;

/// Map names, as the loader finds them in the object.
pub mod maps {
    /// `PerCpuHashMap<u32 /* tgid */, RawProcStats>`
    pub const STATS: &str = "STATS";
    /// `PerCpuHashMap<ContextKey, RawContextStats>`
    pub const CONTEXTS: &str = "CONTEXTS";
    /// `LruHashMap<u32 /* tgid */, u8>`: the filter set and cached verdicts.
    pub const ALLOWED: &str = "ALLOWED";
    /// `LruHashMap<u32 /* owner tgid */, WriteHolder>`
    pub const HOLDERS: &str = "HOLDERS";
    /// `LruHashMap<u32 /* tgid */, [u8; 16]>`
    pub const COMMS: &str = "COMMS";
    /// `LruHashMap<u32 /* tgid */, u64 /* exit time, ns */>`
    pub const EXITED: &str = "EXITED";
    /// `PerCpuArray<u64>`, indexed by [`super::counters`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `RingBuf` of [`super::Event`] and [`super::SyscallEvent`] records
    /// (tell them apart by [`super::EventHeader::kind`]).
    pub const EVENTS: &str = "EVENTS";
    /// `LruHashMap<u32 /* tid */, ThreadState>`: kernel-only (holds mm
    /// pointers); mm-probe never reads it.
    pub const THREADS: &str = "THREADS";
    /// `PerCpuArray<FaultSlot>`, one entry: see [`super::FaultSlot`].
    pub const FAULT_SLOTS: &str = "FAULT_SLOTS";
    /// `Array<u64>`, one entry: bumped whenever a process's traced verdict
    /// may have changed (exit, exec, a pid added to the filter).
    pub const EPOCH: &str = "EPOCH";
    /// `LruHashMap<u32 /* tid */, SyscallEntry>`: kernel-only; the mm
    /// syscall each thread is in, with its arguments (only with
    /// [`super::event_mask::SYSCALLS`]).
    pub const SYSCALL_ENTRIES: &str = "SYSCALL_ENTRIES";
}

/// Global variables (`.rodata`) the loader sets before the programs are
/// verified. Frozen after load, so the verifier sees them as constants and
/// prunes the branches they switch off.
pub mod globals {
    /// `u32`: bit set of [`super::filter`] flags; 0 traces every process.
    pub const FILTER: &str = "FILTER";
    /// `[u8; 16]`: the comm to match when `filter::COMM` is set (NUL padded).
    pub const FILTER_COMM: &str = "FILTER_COMM";
    /// `u64`: cgroup v2 id (inode number of the cgroup directory).
    pub const FILTER_CGROUP_ID: &str = "FILTER_CGROUP_ID";
    /// `u32`: depth of that cgroup below the root (root is 0).
    pub const FILTER_CGROUP_LEVEL: &str = "FILTER_CGROUP_LEVEL";
    /// `u32`: bit set of [`super::event_mask`] kinds sent to the ring buffer.
    pub const EVENT_MASK: &str = "EVENT_MASK";
    /// `u64`: `offsetof(struct task_struct, mm)`.
    pub const OFF_TASK_MM: &str = "OFF_TASK_MM";
    /// `u64`: `offsetof(struct task_struct, tgid)`.
    pub const OFF_TASK_TGID: &str = "OFF_TASK_TGID";
    /// `u64`: `offsetof(struct task_struct, pid)`.
    pub const OFF_TASK_PID: &str = "OFF_TASK_PID";
    /// `u64`: `offsetof(struct mm_struct, owner)`, or [`super::OFFSET_UNKNOWN`]
    /// on kernels without `CONFIG_MEMCG`.
    pub const OFF_MM_OWNER: &str = "OFF_MM_OWNER";
    /// `u64`: `offsetof(struct mm_struct, mmap_lock)`, or
    /// [`super::OFFSET_UNKNOWN`].
    pub const OFF_MM_MMAP_LOCK: &str = "OFF_MM_MMAP_LOCK";
    /// `u64`: offset in `struct pt_regs` of the syscall number of a task in
    /// a system call (`orig_ax` on x86), or [`super::OFFSET_UNKNOWN`].
    pub const OFF_REGS_SYSCALL_NR: &str = "OFF_REGS_SYSCALL_NR";
    /// `u32`: 1 when sys_enter/sys_exit are attached (syscall tracking);
    /// otherwise contexts come from the tasks' saved registers.
    pub const SYSCALLS_TRACKED: &str = "SYSCALLS_TRACKED";
    /// `u32`: 1 when `sched_process_exit` carries `bool group_dead` (6.16+).
    pub const EXIT_HAS_GROUP_DEAD: &str = "EXIT_HAS_GROUP_DEAD";
}

/// Value of an `OFF_*` global whose field does not exist on this kernel.
pub const OFFSET_UNKNOWN: u64 = u64::MAX;

/// Flags of the `FILTER` global.
pub mod filter {
    /// Only tgids with a non-zero verdict in `ALLOWED` are traced. Set for
    /// `--pid` (userspace fills `ALLOWED`) and implied by the flags below.
    pub const PIDS: u32 = 1;
    /// The process comm must equal `FILTER_COMM`.
    pub const COMM: u32 = 2;
    /// The process must be in the cgroup `FILTER_CGROUP_ID` or below it.
    pub const CGROUP: u32 = 4;
    /// A traced process's children are traced too (`mm-probe run`).
    pub const FOLLOW_FORKS: u32 = 8;
}

/// Values in the `ALLOWED` map.
pub mod verdict {
    /// Computed in the kernel from comm/cgroup: not traced.
    pub const DENIED: u8 = 0;
    /// Put there by userspace (`--pid`) or inherited at fork: traced.
    pub const EXPLICIT: u8 = 1;
    /// Computed in the kernel from comm/cgroup: traced. Recomputed at exec.
    pub const COMPUTED: u8 = 2;
}

/// Bits of the `EVENT_MASK` global.
pub mod event_mask {
    /// One [`super::Event`] per page fault.
    pub const FAULTS: u32 = 1;
    /// One [`super::Event`] per mmap_lock release or failed acquisition.
    pub const LOCKS: u32 = 2;
    /// One [`super::SyscallEvent`] per completed mm system call (see
    /// [`super::is_mm_syscall`]), with its arguments and return value.
    /// Needs the sys_enter and sys_exit programs.
    pub const SYSCALLS: u32 = 4;
}

/// x86_64 numbers of the system calls that [`event_mask::SYSCALLS`]
/// records: the ones that change or lock an address space, and the ones
/// that create one (clone and fork copy or share it).
pub mod mm_syscalls {
    /// mmap(2)
    pub const MMAP: i64 = 9;
    /// mprotect(2)
    pub const MPROTECT: i64 = 10;
    /// munmap(2)
    pub const MUNMAP: i64 = 11;
    /// brk(2)
    pub const BRK: i64 = 12;
    /// mremap(2)
    pub const MREMAP: i64 = 25;
    /// madvise(2)
    pub const MADVISE: i64 = 28;
    /// clone(2)
    pub const CLONE: i64 = 56;
    /// fork(2)
    pub const FORK: i64 = 57;
    /// vfork(2)
    pub const VFORK: i64 = 58;
    /// mlock(2)
    pub const MLOCK: i64 = 149;
    /// munlock(2)
    pub const MUNLOCK: i64 = 150;
    /// mlockall(2)
    pub const MLOCKALL: i64 = 151;
    /// munlockall(2)
    pub const MUNLOCKALL: i64 = 152;
    /// mlock2(2)
    pub const MLOCK2: i64 = 325;
    /// clone3(2)
    pub const CLONE3: i64 = 435;
    /// process_madvise(2)
    pub const PROCESS_MADVISE: i64 = 440;
    /// Bit `n` set for each of the above below 64.
    pub const LOW_MASK: u64 = (1 << MMAP)
        | (1 << MPROTECT)
        | (1 << MUNMAP)
        | (1 << BRK)
        | (1 << MREMAP)
        | (1 << MADVISE)
        | (1 << CLONE)
        | (1 << FORK)
        | (1 << VFORK);
}

/// Whether `nr` is one of the [`mm_syscalls`]. Written for the eBPF hot
/// path: a syscall below 64 (most of the frequent ones) costs one compare
/// and one bit test.
#[inline(always)]
pub const fn is_mm_syscall(nr: i64) -> bool {
    use mm_syscalls::*;
    if (nr as u64) < 64 {
        return (LOW_MASK >> nr) & 1 != 0;
    }
    (nr >= MLOCK && nr <= MUNLOCKALL) || nr == MLOCK2 || nr == CLONE3 || nr == PROCESS_MADVISE
}

/// Byte offsets in x86_64's `struct pt_regs` (arch/x86/include/asm/ptrace.h)
/// of the six system call argument registers, in argument order: di, si,
/// dx, r10, r8, r9. mm-probe checks them against the kernel's BTF before it
/// enables [`event_mask::SYSCALLS`].
pub const X86_64_SYSCALL_ARG_OFFSETS: [u64; 6] = [112, 104, 96, 56, 72, 64];
/// Names of those registers, as BTF spells the members.
pub const X86_64_SYSCALL_ARG_REGS: [&str; 6] = ["di", "si", "dx", "r10", "r8", "r9"];
/// The argument registers lie in `pt_regs` bytes
/// `[REGS_ARGS_START, REGS_ARGS_START + 8 * REGS_ARGS_WORDS)`; the programs
/// read that span with one helper call.
pub const REGS_ARGS_START: u64 = 56;
/// See [`REGS_ARGS_START`].
pub const REGS_ARGS_WORDS: usize = 8;

/// Indices into the `COUNTERS` per-CPU array. Every one of these is reported
/// by mm-probe; the ones marked "lost" mean an event was not aggregated.
pub mod counters {
    /// Lost: the ring buffer was full, a per-event record was dropped.
    pub const EVENTS_DROPPED: u32 = 0;
    /// Lost: `STATS` was full, an event of a new process was not counted.
    pub const STATS_FULL: u32 = 1;
    /// Lost: `CONTEXTS` was full, a per-syscall update was not counted.
    pub const CONTEXTS_FULL: u32 = 2;
    /// A release whose acquisition was not seen (held since before attach,
    /// or its thread's entry was evicted from the bounded LRU map).
    pub const UNMATCHED_RELEASES: u32 = 3;
    /// A remote acquisition whose mm owner could not be resolved.
    pub const UNKNOWN_OWNER: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// A log2 histogram of nanoseconds, as aggregated in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHist {
    /// See [`HIST_BUCKETS`] for the bucket bounds.
    pub buckets: [u64; HIST_BUCKETS],
    /// Sum of all recorded values.
    pub sum: u64,
    /// Largest recorded value (exact).
    pub max: u64,
}

impl RawHist {
    /// An empty histogram.
    pub const ZERO: Self = Self {
        buckets: [0; HIST_BUCKETS],
        sum: 0,
        max: 0,
    };
}

/// mmap_lock statistics of one mode (read or write) of one process's lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawModeStats {
    /// Successful acquisitions, blocking and trylock.
    pub acquisitions: u64,
    /// Of `acquisitions`, those by a successful trylock (no wait).
    pub trylock_acquisitions: u64,
    /// Trylocks that failed.
    pub trylock_failures: u64,
    /// Blocking (killable) acquisitions that gave up.
    pub lock_failures: u64,
    /// Acquisitions that entered the rwsem slow path (`lock:contention_begin`).
    pub contended: u64,
    /// Acquisitions by a task of another process (remote readers of the mm).
    pub remote: u64,
    /// start_locking to acquire_returned, blocking acquisitions only.
    pub wait: RawHist,
    /// acquire_returned to released (or to a downgrade, for write).
    pub hold: RawHist,
}

impl RawModeStats {
    /// All zero.
    pub const ZERO: Self = Self {
        acquisitions: 0,
        trylock_acquisitions: 0,
        trylock_failures: 0,
        lock_failures: 0,
        contended: 0,
        remote: 0,
        wait: RawHist::ZERO,
        hold: RawHist::ZERO,
    };
}

/// Per-process (per owning tgid) statistics; value of the `STATS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawProcStats {
    /// Indexed by [`MODE_READ`] and [`MODE_WRITE`].
    pub modes: [RawModeStats; 2],
    /// Write locks downgraded to read (`mmap_write_downgrade`).
    pub downgrades: u64,
    /// Faults raised in user mode (`exceptions:page_fault_user`), by kind.
    pub user_faults: [u64; FAULT_KINDS],
    /// Faults on user addresses raised in kernel mode, inside a system call
    /// (`exceptions:page_fault_kernel`), by kind.
    pub kernel_faults: [u64; FAULT_KINDS],
    /// User faults that took mmap_lock for read: the per-VMA lock fell back.
    pub fault_fallbacks: u64,
    /// This process's per-event records lost to a full ring buffer.
    pub events_dropped: u64,
    /// This process's releases whose acquisition was not seen.
    pub unmatched_releases: u64,
}

impl RawProcStats {
    /// All zero.
    pub const ZERO: Self = Self {
        modes: [RawModeStats::ZERO; 2],
        downgrades: 0,
        user_faults: [0; FAULT_KINDS],
        kernel_faults: [0; FAULT_KINDS],
        fault_fallbacks: 0,
        events_dropped: 0,
        unmatched_releases: 0,
    };
}

/// Key of the `CONTEXTS` map: one process's lock, taken in one context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextKey {
    /// Owner of the mm whose lock was taken.
    pub tgid: u32,
    /// Syscall number, or [`CONTEXT_FAULT`] / [`CONTEXT_OTHER`].
    pub nr: i32,
    /// 1 for the write lock.
    pub write: u8,
    /// 1 when taken by a task of another process.
    pub remote: u8,
    /// Zero.
    pub pad: [u8; 2],
}

/// Value of the `CONTEXTS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawContextStats {
    /// Successful acquisitions.
    pub acquisitions: u64,
    /// Of those, contended ones.
    pub contended: u64,
    /// Wait of blocking acquisitions.
    pub wait: RawHist,
    /// Hold times.
    pub hold: RawHist,
}

impl RawContextStats {
    /// All zero.
    pub const ZERO: Self = Self {
        acquisitions: 0,
        contended: 0,
        wait: RawHist::ZERO,
        hold: RawHist::ZERO,
    };
}

/// An acquisition in progress or a lock held, in one of the two slots of a
/// thread's [`ThreadState`] (a thread holds at most two mmap_locks: fork
/// write-locks the parent's and the child's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflight {
    /// `struct mm_struct *` whose lock this is; 0 for a free slot. Never
    /// leaves the kernel.
    pub mm: u64,
    /// `mmap_lock_start_locking` time; 0 for a trylock.
    pub start_ns: u64,
    /// `mmap_lock_acquire_returned` time; 0 while still waiting.
    pub acquired_ns: u64,
    /// Owner tgid of the mm.
    pub owner: u32,
    /// Context, as in [`ContextKey::nr`].
    pub nr: i32,
    /// 1 for write.
    pub write: u8,
    /// 1 once `lock:contention_begin` was seen for this acquisition.
    pub contended: u8,
    /// 1 when the locking task belongs to another process.
    pub remote: u8,
    /// 1 when acquired by trylock.
    pub trylock: u8,
    /// Zero.
    pub pad: u32,
}

/// [`ThreadState::nr`] of a thread that is not in a system call.
pub const NOT_IN_SYSCALL: i32 = -1;

/// The per-CPU fault slot: fault counters of the last process that faulted
/// on this CPU, so that the fault path increments a per-CPU array entry (a
/// lookup the verifier inlines) instead of looking the process up in the
/// `STATS` hash on every fault. When a different process faults on the CPU,
/// the counts are flushed into its `STATS` entry and `generation` is bumped.
///
/// Readers must read `STATS` first and the slots second: a flush in between
/// is then missed, never double counted, and a changed `generation` across
/// the read tells them to read again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultSlot {
    /// Process being counted (0: none).
    pub tgid: u32,
    /// 1 when `tgid` is traced (it then has a `STATS` entry).
    pub traced: u32,
    /// Bumped by every flush.
    pub generation: u64,
    /// `EPOCH` when the verdict was taken; a newer epoch forces a re-check.
    pub epoch: u64,
    /// Unflushed user-mode faults of `tgid`, by kind.
    pub user_faults: [u64; FAULT_KINDS],
    /// Unflushed kernel-mode faults of `tgid`, by kind.
    pub kernel_faults: [u64; FAULT_KINDS],
    /// Thread whose user fault is being handled on this CPU (the per-VMA
    /// lock fallback mark), 0 when none.
    pub mark_tid: u32,
    /// 1 once that fault's fallback has been counted.
    pub mark_counted: u32,
}

impl FaultSlot {
    /// An empty slot.
    pub const ZERO: Self = Self {
        tgid: 0,
        traced: 0,
        generation: 0,
        epoch: 0,
        user_faults: [0; FAULT_KINDS],
        kernel_faults: [0; FAULT_KINDS],
        mark_tid: 0,
        mark_counted: 0,
    };
}

impl Inflight {
    /// A free slot.
    pub const FREE: Self = Self {
        mm: 0,
        start_ns: 0,
        acquired_ns: 0,
        owner: 0,
        nr: 0,
        write: 0,
        contended: 0,
        remote: 0,
        trylock: 0,
        pad: 0,
    };
}

/// Per-thread state, updated in place (an LRU insert or delete per event
/// would cost several times the rest of the program).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadState {
    /// Syscall number, or [`NOT_IN_SYSCALL`].
    pub nr: i32,
    /// Zero.
    pub pad: u32,
    /// mmap_lock acquisitions in flight or held by this thread.
    pub held: [Inflight; 2],
}

impl ThreadState {
    /// A thread outside any syscall, holding nothing.
    pub const NEW: Self = Self {
        nr: NOT_IN_SYSCALL,
        pad: 0,
        held: [Inflight::FREE; 2],
    };
}

/// Current write holder of a process's mmap_lock; value of `HOLDERS`,
/// updated in place: `tid == 0` when the lock is not write-held.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteHolder {
    /// Acquisition time (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub since_ns: u64,
    /// Holding thread.
    pub tid: u32,
    /// Process of the holding thread (differs from the owner when remote).
    pub tgid: u32,
    /// Context, as in [`ContextKey::nr`].
    pub nr: i32,
    /// Zero.
    pub pad: u32,
}

/// Kinds of [`Event`].
pub mod event_kind {
    /// A page fault: `a` = address, `b` = x86 error code, flags bit 0 = user mode.
    pub const FAULT: u16 = 1;
    /// A released mmap_lock: `a` = wait ns (0 for trylock), `b` = hold ns.
    pub const LOCK_RELEASE: u16 = 2;
    /// A failed acquisition: `a` = wait ns (0 for trylock).
    pub const LOCK_FAILED: u16 = 3;
    /// A completed mm system call: the record is a [`super::SyscallEvent`].
    pub const SYSCALL: u16 = 4;
}

/// Bits of [`Event::flags`] for lock events.
pub mod event_flags {
    /// Write mode.
    pub const WRITE: u16 = 1;
    /// Went through the rwsem slow path.
    pub const CONTENDED: u16 = 2;
    /// Taken by another process's task.
    pub const REMOTE: u16 = 4;
    /// Taken (or attempted) by trylock.
    pub const TRYLOCK: u16 = 8;
    /// For faults: raised in user mode.
    pub const USER: u16 = 16;
}

/// A per-event record in the `EVENTS` ring buffer (optional).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Process the event is attributed to (the mm owner for lock events).
    pub tgid: u32,
    /// Thread that caused it.
    pub tid: u32,
    /// One of [`event_kind`].
    pub kind: u16,
    /// Bits of [`event_flags`].
    pub flags: u16,
    /// Context, as in [`ContextKey::nr`].
    pub nr: i32,
    /// Kind-specific.
    pub a: u64,
    /// Kind-specific.
    pub b: u64,
}

/// The first 24 bytes of every ring-buffer record: [`Event`] and
/// [`SyscallEvent`] both start with exactly these fields, so a reader can
/// read this prefix, dispatch on `kind`, and then read the whole record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// As [`Event::ts_ns`].
    pub ts_ns: u64,
    /// As [`Event::tgid`].
    pub tgid: u32,
    /// As [`Event::tid`].
    pub tid: u32,
    /// One of [`event_kind`]: [`event_kind::SYSCALL`] for a
    /// [`SyscallEvent`], anything else for an [`Event`].
    pub kind: u16,
    /// As [`Event::flags`].
    pub flags: u16,
    /// As [`Event::nr`].
    pub nr: i32,
}

/// A completed mm system call, in the `EVENTS` ring buffer (with
/// [`event_mask::SYSCALLS`]). Starts with an [`EventHeader`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    /// Time of sys_exit (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Process.
    pub tgid: u32,
    /// Thread that made the call.
    pub tid: u32,
    /// [`event_kind::SYSCALL`].
    pub kind: u16,
    /// Zero.
    pub flags: u16,
    /// The x86_64 system call number (one of [`mm_syscalls`]).
    pub nr: i32,
    /// Time of sys_enter.
    pub enter_ns: u64,
    /// The six argument registers at entry.
    pub args: [u64; 6],
    /// The return value (`-errno` on failure).
    pub ret: i64,
}

/// An mm system call in progress; value of `SYSCALL_ENTRIES` (kernel-only).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEntry {
    /// Time of sys_enter; 0 once sys_exit has used the entry.
    pub enter_ns: u64,
    /// Argument registers.
    pub args: [u64; 6],
    /// System call number.
    pub nr: i32,
    /// Zero.
    pub pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and
    // arrays of integers, and have no padding the kernel could leave undefined
    // (explicit `pad` fields are zeroed by the eBPF programs).
    unsafe impl aya::Pod for super::RawHist {}
    unsafe impl aya::Pod for super::RawModeStats {}
    unsafe impl aya::Pod for super::RawProcStats {}
    unsafe impl aya::Pod for super::ContextKey {}
    unsafe impl aya::Pod for super::RawContextStats {}
    unsafe impl aya::Pod for super::Inflight {}
    unsafe impl aya::Pod for super::ThreadState {}
    unsafe impl aya::Pod for super::WriteHolder {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::FaultSlot {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SyscallEvent {}
    unsafe impl aya::Pod for super::SyscallEntry {}
}

/// Index of a fault kind from an x86 page-fault error code
/// (`arch/x86/include/asm/trap_pf.h`: bit 0 P, bit 1 W, bit 4 I).
#[inline(always)]
pub const fn fault_kind_index(error_code: u64) -> usize {
    let access = if error_code & 0x10 != 0 {
        2
    } else if error_code & 0x2 != 0 {
        1
    } else {
        0
    };
    access * 2 + (error_code & 1) as usize
}

/// log2 bucket index of a value, as defined at [`HIST_BUCKETS`]. Written
/// without `leading_zeros` because BPF has no count-leading-zeros instruction.
#[inline(always)]
pub const fn log2_bucket(v: u64) -> usize {
    let mut v = v;
    let mut r = 0usize;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_bucket_matches_leading_zeros() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 0);
        for shift in 1..64 {
            let v = 1u64 << shift;
            assert_eq!(log2_bucket(v), shift);
            assert_eq!(log2_bucket(v - 1), shift - 1);
            assert_eq!(log2_bucket(v | (v - 1)), shift);
        }
        assert_eq!(log2_bucket(u64::MAX), 63);
    }

    #[test]
    fn fault_kinds_from_error_codes() {
        // read of a not-present page from user mode: U only
        assert_eq!(fault_kind_index(0x4), 0);
        // read of a present page (PROT_NONE or a guard): P|U
        assert_eq!(fault_kind_index(0x5), 1);
        // write to a not-present page: W|U
        assert_eq!(fault_kind_index(0x6), 2);
        // write to a read-only present page (copy-on-write): P|W|U
        assert_eq!(fault_kind_index(0x7), 3);
        // instruction fetch from a not-present page: I|U
        assert_eq!(fault_kind_index(0x14), 4);
        // instruction fetch from a non-executable present page: I|P|U
        assert_eq!(fault_kind_index(0x15), 5);
    }

    #[test]
    fn sizes_are_stable() {
        // The kernel side and the host side must agree; pin the sizes.
        assert_eq!(core::mem::size_of::<RawHist>(), 66 * 8);
        assert_eq!(core::mem::size_of::<RawModeStats>(), 6 * 8 + 2 * 66 * 8);
        assert_eq!(core::mem::size_of::<ContextKey>(), 12);
        assert_eq!(core::mem::size_of::<Inflight>(), 40);
        assert_eq!(core::mem::size_of::<ThreadState>(), 88);
        assert_eq!(core::mem::size_of::<Event>(), 40);
        assert_eq!(core::mem::size_of::<FaultSlot>(), 24 + 12 * 8 + 8);
        assert_eq!(core::mem::size_of::<EventHeader>(), 24);
        assert_eq!(core::mem::size_of::<SyscallEvent>(), 24 + 8 + 6 * 8 + 8);
        assert_eq!(core::mem::size_of::<SyscallEntry>(), 64);
    }

    #[test]
    fn records_share_the_header_layout() {
        use core::mem::offset_of;
        assert_eq!(offset_of!(Event, ts_ns), offset_of!(EventHeader, ts_ns));
        assert_eq!(offset_of!(Event, tgid), offset_of!(EventHeader, tgid));
        assert_eq!(offset_of!(Event, tid), offset_of!(EventHeader, tid));
        assert_eq!(offset_of!(Event, kind), offset_of!(EventHeader, kind));
        assert_eq!(offset_of!(Event, flags), offset_of!(EventHeader, flags));
        assert_eq!(offset_of!(Event, nr), offset_of!(EventHeader, nr));
        assert_eq!(offset_of!(Event, a), 24);
        assert_eq!(
            offset_of!(SyscallEvent, ts_ns),
            offset_of!(EventHeader, ts_ns)
        );
        assert_eq!(
            offset_of!(SyscallEvent, tgid),
            offset_of!(EventHeader, tgid)
        );
        assert_eq!(offset_of!(SyscallEvent, tid), offset_of!(EventHeader, tid));
        assert_eq!(
            offset_of!(SyscallEvent, kind),
            offset_of!(EventHeader, kind)
        );
        assert_eq!(
            offset_of!(SyscallEvent, flags),
            offset_of!(EventHeader, flags)
        );
        assert_eq!(offset_of!(SyscallEvent, nr), offset_of!(EventHeader, nr));
        assert_eq!(offset_of!(SyscallEvent, enter_ns), 24);
        assert_eq!(offset_of!(SyscallEvent, args), 32);
        assert_eq!(offset_of!(SyscallEvent, ret), 80);
    }

    #[test]
    fn mm_syscalls_are_recognised() {
        let mm = [
            9, 10, 11, 12, 25, 28, 56, 57, 58, 149, 150, 151, 152, 325, 435, 440,
        ];
        for nr in -2i64..1024 {
            assert_eq!(is_mm_syscall(nr), mm.contains(&nr), "syscall {nr}");
        }
        assert!(!is_mm_syscall(i64::MIN) && !is_mm_syscall(i64::MAX));
    }

    #[test]
    fn argument_registers_lie_in_the_span_read() {
        for off in X86_64_SYSCALL_ARG_OFFSETS {
            assert!(off >= REGS_ARGS_START);
            assert!(off + 8 <= REGS_ARGS_START + 8 * REGS_ARGS_WORDS as u64);
            assert_eq!(off % 8, 0);
        }
    }
}
