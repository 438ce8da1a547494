//! Loading, attaching and reading the eBPF programs of mm-ebpf.
//!
//! The object is embedded at build time (see build.rs). Before loading,
//! the few kernel struct offsets the programs need are read from the
//! kernel's BTF and written into the object's `.rodata` globals together
//! with the filter, so the verifier sees them as constants. Each program is
//! then loaded and attached on its own: a tracepoint this kernel lacks (or
//! refuses) disables only the metrics it feeds, and [`Probe::unavailable`]
//! says which and why.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProgramError, RawTracePoint},
};
use mm_core::stats::Unavailable;
use mm_ebpf::{
    ContextKey, FaultSlot, OFFSET_UNKNOWN, RawContextStats, RawHist, RawModeStats, RawProcStats,
    WriteHolder, counters, event_mask, filter, globals, maps, verdict,
};
use thiserror::Error;

use crate::{
    btf::{Btf, BtfError},
    caps,
};

/// The eBPF object built by `cargo xtask build-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mm-ebpf.o"));

/// Errors loading or reading the probe.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Not root and without the needed capabilities.
    #[error("mm-probe needs {missing} to load eBPF programs: {fix}", missing = .missing.join(" and "), fix = caps::FIX)]
    Privilege {
        /// Missing capability names.
        missing: Vec<&'static str>,
    },
    /// The kernel's BTF could not be read.
    #[error(
        "cannot read the kernel's BTF ({source}): mm-probe needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (check with `mm-probe doctor`)"
    )]
    Btf {
        /// Why.
        #[source]
        source: BtfError,
    },
    /// A struct member the programs need is not in the BTF.
    #[error("this kernel's `struct {strukt}` has no `{member}` member, which mm-probe needs")]
    MissingField {
        /// Struct name.
        strukt: &'static str,
        /// Member name.
        member: &'static str,
    },
    /// The bpf() system call was refused.
    #[error(
        "the kernel refused to load eBPF programs ({source}): check `mm-probe doctor` \
         (kernel lockdown, seccomp, or missing capabilities)"
    )]
    Load {
        /// Why.
        #[source]
        source: aya::EbpfError,
    },
    /// The object lacks something this build expects (a build mix-up).
    #[error(
        "the embedded eBPF object has no {what} `{name}`: rebuild with `cargo xtask build-ebpf`"
    )]
    ObjectMismatch {
        /// "map" or "program".
        what: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// A map could not be read or written.
    #[error("eBPF map `{map}`: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// Not one tracepoint could be attached.
    #[error("no tracepoint could be attached: {0}")]
    NothingAttached(String),
    /// Syscall events were asked for, but this kernel or this set of
    /// options cannot produce them.
    #[error("cannot record system calls: {0}")]
    SyscallEvents(String),
    /// `--cgroup` does not name a usable cgroup.
    #[error("--cgroup `{path}`: {reason}")]
    Cgroup {
        /// What the user gave.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// What to trace and what to record.
#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Only these processes (tgids), plus any added later with
    /// [`Probe::allow_pid`]; `None` for all processes.
    pub pids: Option<Vec<u32>>,
    /// Only processes with this comm (at most 15 bytes; longer is truncated).
    pub comm: Option<String>,
    /// Only processes in this cgroup v2 (or below it).
    pub cgroup: Option<PathBuf>,
    /// Also trace children forked by traced processes.
    pub follow_forks: bool,
    /// Send a record per fault to the ring buffer.
    pub fault_events: bool,
    /// Send a record per mmap_lock release/failure to the ring buffer.
    pub lock_events: bool,
    /// Send a record per completed mm system call (arguments and result,
    /// see [`mm_ebpf::is_mm_syscall`]) to the ring buffer. x86_64 only;
    /// needs the sys_enter and sys_exit tracepoints.
    pub syscall_events: bool,
    /// Groups of tracepoints not to attach (their metrics are reported
    /// unavailable), e.g. to save the per-syscall cost of syscall tracking.
    pub skip: Vec<SkipGroup>,
}

/// Tracepoints that can be left out, as a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SkipGroup {
    /// sys_enter and sys_exit (saves two map updates per syscall): a lock's
    /// syscall is then read from the task's saved registers, which can take
    /// a fault that migrated CPUs for a syscall.
    Syscalls,
    /// page_fault_user and page_fault_kernel: no fault counts and no
    /// per-VMA lock fallback counts.
    Faults,
    /// contention_begin: no contended counts.
    Contention,
    /// The three mmap_lock tracepoints: no lock statistics at all.
    MmapLock,
}

impl SkipGroup {
    /// The tracepoints of the group.
    pub const fn tracepoints(self) -> &'static [&'static str] {
        match self {
            Self::Syscalls => &["sys_enter", "sys_exit"],
            Self::Faults => &["page_fault_user", "page_fault_kernel"],
            Self::Contention => &["contention_begin"],
            Self::MmapLock => &[
                "mmap_lock_start_locking",
                "mmap_lock_acquire_returned",
                "mmap_lock_released",
            ],
        }
    }

    /// As given on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Syscalls => "syscalls",
            Self::Faults => "faults",
            Self::Contention => "contention",
            Self::MmapLock => "mmap-lock",
        }
    }
}

/// One eBPF program and the tracepoint it attaches to.
struct ProgramSpec {
    name: &'static str,
    tracepoint: &'static str,
    /// Metrics that go missing without it.
    feeds: &'static str,
}

/// Attach order: bookkeeping first, so that the lock programs find the
/// thread state they consult already maintained.
const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: "sched_process_exit",
        tracepoint: "sched_process_exit",
        feeds: "exit detection",
    },
    ProgramSpec {
        name: "sched_process_fork",
        tracepoint: "sched_process_fork",
        feeds: "tracing of child processes",
    },
    ProgramSpec {
        name: "sched_process_exec",
        tracepoint: "sched_process_exec",
        feeds: "comm updates at exec",
    },
    ProgramSpec {
        name: "sys_enter",
        tracepoint: "sys_enter",
        feeds: "exact per-syscall attribution",
    },
    ProgramSpec {
        name: "sys_exit",
        tracepoint: "sys_exit",
        feeds: "exact per-syscall attribution",
    },
    ProgramSpec {
        name: "page_fault_user",
        tracepoint: "page_fault_user",
        feeds: "user faults and per-VMA lock fallbacks",
    },
    ProgramSpec {
        name: "page_fault_kernel",
        tracepoint: "page_fault_kernel",
        feeds: "kernel-mode faults on user addresses",
    },
    ProgramSpec {
        name: "contention_begin",
        tracepoint: "contention_begin",
        feeds: "contended acquisitions",
    },
    ProgramSpec {
        name: "mmap_lock_released",
        tracepoint: "mmap_lock_released",
        feeds: "mmap_lock hold times",
    },
    ProgramSpec {
        name: "mmap_lock_acquire_returned",
        tracepoint: "mmap_lock_acquire_returned",
        feeds: "mmap_lock acquisitions and waits",
    },
    ProgramSpec {
        name: "mmap_lock_start_locking",
        tracepoint: "mmap_lock_start_locking",
        feeds: "mmap_lock waits",
    },
];

/// The loaded, attached probe. Dropping it detaches every program.
pub struct Probe {
    // Declared first so that the maps below are dropped after the links.
    _ebpf: Ebpf,
    stats: PerCpuHashMap<MapData, u32, RawProcStats>,
    contexts: PerCpuHashMap<MapData, ContextKey, RawContextStats>,
    allowed: HashMap<MapData, u32, u8>,
    holders: HashMap<MapData, u32, WriteHolder>,
    comms: HashMap<MapData, u32, [u8; 16]>,
    exited: HashMap<MapData, u32, u64>,
    counters: PerCpuArray<MapData, u64>,
    fault_slots: PerCpuArray<MapData, FaultSlot>,
    epoch: Array<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    attached: Vec<&'static str>,
    unavailable: Vec<Unavailable>,
}

/// Per-process raw values, summed over CPUs.
#[derive(Clone, Debug)]
pub struct RawProcess {
    /// Process id.
    pub tgid: u32,
    /// Aggregates.
    pub stats: RawProcStats,
    /// Per-context aggregates.
    pub contexts: Vec<(ContextKey, RawContextStats)>,
    /// Comm recorded by the kernel, if any.
    pub comm: Option<String>,
    /// Current write holder.
    pub holder: Option<WriteHolder>,
    /// The process has exited (its thread group is dead).
    pub exited: bool,
}

/// One reading of all maps.
#[derive(Clone, Debug)]
pub struct RawSnapshot {
    /// CLOCK_MONOTONIC at the reading, ns.
    pub taken_ns: u64,
    /// By tgid.
    pub processes: BTreeMap<u32, RawProcess>,
    /// Indexed by [`mm_ebpf::counters`].
    pub counters: [u64; counters::COUNT as usize],
}

/// Offsets and prototype facts read from BTF.
struct KernelLayout {
    task_mm: u64,
    task_tgid: u64,
    task_pid: u64,
    mm_owner: u64,
    mm_mmap_lock: u64,
    regs_syscall_nr: u64,
    /// The mmap_lock events pass `memcg_path` second (before 6.14).
    mmap_lock_memcg_path: bool,
    exit_has_group_dead: u32,
    /// Tracepoints with their argument counts (None: absent).
    tracepoints: BTreeMap<&'static str, Option<usize>>,
}

impl KernelLayout {
    fn read(btf: &Btf) -> Result<Self, ProbeError> {
        let required = |strukt: &'static str, member: &'static str| {
            btf.member_offset(strukt, member)
                .map(|m| m.offset)
                .ok_or(ProbeError::MissingField { strukt, member })
        };
        let optional = |strukt: &str, member: &str| {
            btf.member_offset(strukt, member)
                .map_or(OFFSET_UNKNOWN, |m| m.offset)
        };
        let tracepoints: BTreeMap<_, _> = PROGRAMS
            .iter()
            .map(|p| (p.tracepoint, btf.tracepoint_args(p.tracepoint)))
            .collect();
        // (mm, write) since 6.14; (mm, memcg_path, write) before.
        let mmap_lock_memcg_path = tracepoints["mmap_lock_start_locking"] == Some(3);
        let exit_has_group_dead = u32::from(tracepoints["sched_process_exit"] == Some(2));
        Ok(Self {
            task_mm: required("task_struct", "mm")?,
            task_tgid: required("task_struct", "tgid")?,
            task_pid: required("task_struct", "pid")?,
            mm_owner: optional("mm_struct", "owner"),
            mm_mmap_lock: optional("mm_struct", "mmap_lock"),
            // x86 names it orig_ax; arm64 syscallno.
            regs_syscall_nr: match optional("pt_regs", "orig_ax") {
                OFFSET_UNKNOWN => optional("pt_regs", "syscallno"),
                off => off,
            },
            mmap_lock_memcg_path,
            exit_has_group_dead,
            tracepoints,
        })
    }
}

/// Resolve `--cgroup` to (cgroup id, level below the cgroup2 root).
fn resolve_cgroup(path: &Path) -> Result<(u64, u32), ProbeError> {
    use std::os::unix::fs::MetadataExt;
    let err = |reason: String| ProbeError::Cgroup {
        path: path.display().to_string(),
        reason,
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| err(format!("cannot read /proc/self/mountinfo: {e}")))?;
    // mountinfo: id parent major:minor root mount-point options ... - fstype source
    let root = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .ok_or_else(|| {
            err("no cgroup v2 filesystem is mounted (cgroup v1 is not supported)".into())
        })?;
    let full = if path.starts_with(&root) {
        path.to_path_buf()
    } else {
        root.join(path.strip_prefix("/").unwrap_or(path))
    };
    let meta = std::fs::metadata(&full).map_err(|e| err(format!("{}: {e}", full.display())))?;
    if !meta.is_dir() {
        return Err(err(format!("{} is not a cgroup directory", full.display())));
    }
    let level = full
        .strip_prefix(&root)
        .map(|rel| rel.components().count() as u32)
        .unwrap_or(0);
    Ok((meta.ino(), level))
}

fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let b = comm.as_bytes();
    let n = b.len().min(15);
    out[..n].copy_from_slice(&b[..n]);
    out
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, ProbeError> {
    let map = ebpf
        .take_map(name)
        .ok_or(ProbeError::ObjectMismatch { what: "map", name })?;
    convert(map).map_err(|source| ProbeError::Map { map: name, source })
}

/// One line out of an aya program error, keeping the verifier's last words.
fn describe_program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if std::env::var_os("MM_PROBE_VERIFIER_LOG").is_some() {
                eprintln!("{log}");
            }
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("rejected ({io_error}): {}", tail.join(" | "))
        }
        other => other.to_string(),
    }
}

impl Probe {
    /// Check privileges, load the object and attach every program this
    /// kernel supports.
    pub fn load(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        let mut flags = 0u32;
        if opts.pids.is_some() {
            flags |= filter::PIDS;
        }
        let comm = opts.comm.as_deref().map(comm_bytes).unwrap_or([0; 16]);
        if opts.comm.is_some() {
            flags |= filter::COMM;
        }
        let (cgroup_id, cgroup_level) = match &opts.cgroup {
            Some(p) => {
                flags |= filter::CGROUP;
                resolve_cgroup(p)?
            }
            None => (0, 0),
        };
        if opts.follow_forks {
            flags |= filter::FOLLOW_FORKS;
        }
        let mut events = 0u32;
        if opts.fault_events {
            events |= event_mask::FAULTS;
        }
        if opts.lock_events {
            events |= event_mask::LOCKS;
        }
        if opts.syscall_events {
            if opts.skip.contains(&SkipGroup::Syscalls) {
                return Err(ProbeError::SyscallEvents(
                    "recording system calls needs sys_enter and sys_exit (drop --skip syscalls)"
                        .into(),
                ));
            }
            events |= event_mask::SYSCALLS;
        }

        let syscalls_tracked = u32::from(!opts.skip.contains(&SkipGroup::Syscalls));

        // Bad input first, then privileges, then the kernel.
        let missing = caps::missing_for_probe(caps::effective());
        if !missing.is_empty() {
            return Err(ProbeError::Privilege { missing });
        }
        let btf = Btf::from_sys_fs().map_err(|source| ProbeError::Btf { source })?;
        let layout = KernelLayout::read(&btf)?;
        if opts.syscall_events {
            check_syscall_arg_regs(&btf)?;
        }

        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::FILTER, &flags, true)
            .override_global(globals::FILTER_COMM, &comm, true)
            .override_global(globals::FILTER_CGROUP_ID, &cgroup_id, true)
            .override_global(globals::FILTER_CGROUP_LEVEL, &cgroup_level, true)
            .override_global(globals::EVENT_MASK, &events, true)
            .override_global(globals::OFF_TASK_MM, &layout.task_mm, true)
            .override_global(globals::OFF_TASK_TGID, &layout.task_tgid, true)
            .override_global(globals::OFF_TASK_PID, &layout.task_pid, true)
            .override_global(globals::OFF_MM_OWNER, &layout.mm_owner, true)
            .override_global(globals::OFF_MM_MMAP_LOCK, &layout.mm_mmap_lock, true)
            .override_global(globals::OFF_REGS_SYSCALL_NR, &layout.regs_syscall_nr, true)
            .override_global(globals::SYSCALLS_TRACKED, &syscalls_tracked, true)
            .override_global(
                globals::EXIT_HAS_GROUP_DEAD,
                &layout.exit_has_group_dead,
                true,
            );
        if events == 0 {
            // Keep the ring buffer at its minimum (one page) when unused.
            loader.map_max_entries(maps::EVENTS, page_size());
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|source| ProbeError::Load { source })?;
        if opts.syscall_events && ebpf.map(maps::SYSCALL_ENTRIES).is_none() {
            // An object built before syscall records would ignore the bit.
            return Err(ProbeError::ObjectMismatch {
                what: "map",
                name: maps::SYSCALL_ENTRIES,
            });
        }

        let mut attached = Vec::new();
        let mut unavailable = Vec::new();
        let mut failures = Vec::new();
        for spec in PROGRAMS {
            if let Some(group) = opts
                .skip
                .iter()
                .find(|g| g.tracepoints().contains(&spec.tracepoint))
            {
                let reason = if *group == SkipGroup::Syscalls {
                    format!(
                        "tracepoint `{}` not attached (--skip syscalls): syscalls are read from \
                         saved registers, a fault that migrated CPUs can count as a syscall",
                        spec.tracepoint
                    )
                } else {
                    format!(
                        "tracepoint `{}` not attached (--skip {})",
                        spec.tracepoint,
                        group.name()
                    )
                };
                unavailable.push(Unavailable {
                    metric: spec.feeds.into(),
                    reason,
                });
                continue;
            }
            if layout.tracepoints[spec.tracepoint].is_none() {
                unavailable.push(Unavailable {
                    metric: spec.feeds.into(),
                    reason: format!(
                        "tracepoint `{}` does not exist in this kernel",
                        spec.tracepoint
                    ),
                });
                continue;
            }
            let name = if layout.mmap_lock_memcg_path && spec.name.starts_with("mmap_lock_") {
                memcg_path_variant(spec.name)
            } else {
                spec.name
            };
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(ProbeError::ObjectMismatch {
                    what: "program",
                    name,
                })?
                .try_into()
                .map_err(|_| ProbeError::ObjectMismatch {
                    what: "raw tracepoint program",
                    name,
                })?;
            let result = program
                .load()
                .and_then(|()| program.attach(spec.tracepoint).map(|_| ()));
            match result {
                Ok(()) => attached.push(spec.tracepoint),
                Err(e) => {
                    let why = describe_program_error(&e);
                    failures.push(format!("{}: {why}", spec.tracepoint));
                    unavailable.push(Unavailable {
                        metric: spec.feeds.into(),
                        reason: format!("attaching to `{}` failed: {why}", spec.tracepoint),
                    });
                }
            }
        }
        if attached.is_empty() {
            return Err(ProbeError::NothingAttached(failures.join("; ")));
        }
        if opts.syscall_events
            && !(attached.contains(&"sys_enter") && attached.contains(&"sys_exit"))
        {
            return Err(ProbeError::SyscallEvents(format!(
                "sys_enter and sys_exit could not both be attached: {}",
                failures.join("; ")
            )));
        }
        // Two tracepoints feeding one metric report it once.
        unavailable.dedup_by(|a, b| {
            a.metric == b.metric && a.reason.split('`').next() == b.reason.split('`').next()
        });
        if layout.mm_owner == OFFSET_UNKNOWN {
            unavailable.push(Unavailable {
                metric: "remote mmap_lock attribution".into(),
                reason: "`mm_struct` has no `owner` (kernel without CONFIG_MEMCG): \
                         locks taken on another process's mm are not counted"
                    .into(),
            });
        }
        if layout.mm_mmap_lock == OFFSET_UNKNOWN {
            unavailable.push(Unavailable {
                metric: "contended acquisitions".into(),
                reason: "`mm_struct` has no `mmap_lock` member in BTF".into(),
            });
        }

        let stats = take_map(&mut ebpf, maps::STATS, PerCpuHashMap::try_from)?;
        let contexts = take_map(&mut ebpf, maps::CONTEXTS, PerCpuHashMap::try_from)?;
        let allowed = take_map(&mut ebpf, maps::ALLOWED, HashMap::try_from)?;
        let holders = take_map(&mut ebpf, maps::HOLDERS, HashMap::try_from)?;
        let comms = take_map(&mut ebpf, maps::COMMS, HashMap::try_from)?;
        let exited = take_map(&mut ebpf, maps::EXITED, HashMap::try_from)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS, PerCpuArray::try_from)?;
        let fault_slots = take_map(&mut ebpf, maps::FAULT_SLOTS, PerCpuArray::try_from)?;
        let epoch = take_map(&mut ebpf, maps::EPOCH, Array::try_from)?;
        let events = if events != 0 {
            Some(take_map(&mut ebpf, maps::EVENTS, RingBuf::try_from)?)
        } else {
            None
        };
        let mut probe = Self {
            _ebpf: ebpf,
            stats,
            contexts,
            allowed,
            holders,
            comms,
            exited,
            counters,
            fault_slots,
            epoch,
            events,
            attached,
            unavailable,
        };
        for &pid in opts.pids.iter().flatten() {
            probe.allow_pid(pid)?;
        }
        Ok(probe)
    }

    /// Add a process to the traced set (only meaningful with a pid filter).
    pub fn allow_pid(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.allowed
            .insert(pid, verdict::EXPLICIT, 0)
            .map_err(|source| ProbeError::Map {
                map: maps::ALLOWED,
                source,
            })?;
        // Fault slots that cached "not traced" for this pid re-check.
        let e = self.epoch.get(&0, 0).map_err(|source| ProbeError::Map {
            map: maps::EPOCH,
            source,
        })?;
        self.epoch
            .set(0, e.wrapping_add(1), 0)
            .map_err(|source| ProbeError::Map {
                map: maps::EPOCH,
                source,
            })
    }

    fn read_slots(&self) -> Result<Vec<FaultSlot>, ProbeError> {
        let values = self
            .fault_slots
            .get(&0, 0)
            .map_err(|source| ProbeError::Map {
                map: maps::FAULT_SLOTS,
                source,
            })?;
        Ok(values.iter().copied().collect())
    }

    /// Tracepoints attached.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Metrics that are not collected, and why.
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// The per-event ring buffer, if events were requested; can be taken once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Read every map once: a consistent view of the fault counts (see
    /// [`FaultSlot`]: maps first, then slots, again when a slot was flushed
    /// while reading).
    pub fn snapshot(&self) -> Result<RawSnapshot, ProbeError> {
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let before = self.read_slots()?;
            let mut snap = self.read_maps()?;
            let after = self.read_slots()?;
            let stable = before
                .iter()
                .zip(&after)
                .all(|(b, a)| b.generation == a.generation);
            if stable || attempt == ATTEMPTS {
                // After the last attempt a flush that raced the read is
                // missing from this snapshot (never double counted); the
                // next snapshot has it.
                for slot in after.iter().filter(|s| s.traced != 0) {
                    if let Some(p) = snap.processes.get_mut(&slot.tgid) {
                        for i in 0..mm_ebpf::FAULT_KINDS {
                            p.stats.user_faults[i] += slot.user_faults[i];
                            p.stats.kernel_faults[i] += slot.kernel_faults[i];
                        }
                    }
                }
                return Ok(snap);
            }
        }
        unreachable!("the last attempt returns")
    }

    fn read_maps(&self) -> Result<RawSnapshot, ProbeError> {
        let taken_ns = crate::procfs::monotonic_ns();
        let map_err = |map: &'static str| move |source| ProbeError::Map { map, source };

        let mut counters = [0u64; counters::COUNT as usize];
        for (i, c) in counters.iter_mut().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err(maps::COUNTERS))?;
            *c = values.iter().sum();
        }

        let mut processes = BTreeMap::new();
        for item in self.stats.iter() {
            // An entry removed while iterating is not an error.
            let Ok((tgid, per_cpu)) = item else { continue };
            let mut sum = RawProcStats::ZERO;
            for v in per_cpu.iter() {
                add_proc(&mut sum, v);
            }
            processes.insert(
                tgid,
                RawProcess {
                    tgid,
                    stats: sum,
                    contexts: Vec::new(),
                    comm: None,
                    holder: None,
                    exited: false,
                },
            );
        }
        for item in self.contexts.iter() {
            let Ok((key, per_cpu)) = item else { continue };
            let mut sum = RawContextStats::ZERO;
            for v in per_cpu.iter() {
                sum.acquisitions += v.acquisitions;
                sum.contended += v.contended;
                add_hist(&mut sum.wait, &v.wait);
                add_hist(&mut sum.hold, &v.hold);
            }
            if let Some(p) = processes.get_mut(&key.tgid) {
                p.contexts.push((key, sum));
            }
        }
        for item in self.comms.iter() {
            let Ok((tgid, comm)) = item else { continue };
            if let Some(p) = processes.get_mut(&tgid) {
                p.comm = Some(crate::procfs::comm_from_bytes(&comm));
            }
        }
        for item in self.holders.iter() {
            let Ok((tgid, holder)) = item else { continue };
            // Updated in place: tid 0 means not write-held now.
            if holder.tid == 0 {
                continue;
            }
            if let Some(p) = processes.get_mut(&tgid) {
                p.holder = Some(holder);
            }
        }
        for item in self.exited.iter() {
            let Ok((tgid, _)) = item else { continue };
            if let Some(p) = processes.get_mut(&tgid) {
                p.exited = true;
            }
        }
        Ok(RawSnapshot {
            taken_ns,
            processes,
            counters,
        })
    }

    /// Drop everything the kernel holds about an exited process (after its
    /// final numbers were taken), so that the maps do not fill up and a
    /// reused pid starts from zero.
    pub fn forget(&mut self, tgid: u32) -> Result<(), ProbeError> {
        let keys: Vec<ContextKey> = self
            .contexts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for k in keys {
            let _ = self.contexts.remove(&k);
        }
        let _ = self.stats.remove(&tgid);
        let _ = self.comms.remove(&tgid);
        let _ = self.holders.remove(&tgid);
        let _ = self.exited.remove(&tgid);
        Ok(())
    }
}

/// The programs read the syscall arguments at x86_64's `pt_regs` offsets
/// (and decode x86_64 syscall numbers): check that this kernel agrees.
fn check_syscall_arg_regs(btf: &Btf) -> Result<(), ProbeError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(ProbeError::SyscallEvents(
            "system call records are implemented for x86_64 only".into(),
        ));
    }
    for (reg, want) in mm_ebpf::X86_64_SYSCALL_ARG_REGS
        .iter()
        .zip(mm_ebpf::X86_64_SYSCALL_ARG_OFFSETS)
    {
        match btf.member_offset("pt_regs", reg) {
            Some(m) if m.offset == want && m.size == 8 => {}
            found => {
                return Err(ProbeError::SyscallEvents(format!(
                    "this kernel's `struct pt_regs` has `{reg}` at {:?}, not at byte {want}",
                    found.map(|m| m.offset)
                )));
            }
        }
    }
    Ok(())
}

/// The program for the pre-6.14 prototype of an mmap_lock event.
fn memcg_path_variant(name: &'static str) -> &'static str {
    match name {
        "mmap_lock_start_locking" => "mmap_lock_start_locking_memcg_path",
        "mmap_lock_acquire_returned" => "mmap_lock_acquire_returned_memcg_path",
        // released(mm, memcg_path, write): only `mm` is read, at index 0.
        other => other,
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

fn add_hist(acc: &mut RawHist, v: &RawHist) {
    for (a, b) in acc.buckets.iter_mut().zip(v.buckets.iter()) {
        *a += b;
    }
    acc.sum += v.sum;
    acc.max = acc.max.max(v.max);
}

fn add_mode(acc: &mut RawModeStats, v: &RawModeStats) {
    acc.acquisitions += v.acquisitions;
    acc.trylock_acquisitions += v.trylock_acquisitions;
    acc.trylock_failures += v.trylock_failures;
    acc.lock_failures += v.lock_failures;
    acc.contended += v.contended;
    acc.remote += v.remote;
    add_hist(&mut acc.wait, &v.wait);
    add_hist(&mut acc.hold, &v.hold);
}

fn add_proc(acc: &mut RawProcStats, v: &RawProcStats) {
    for (a, b) in acc.modes.iter_mut().zip(v.modes.iter()) {
        add_mode(a, b);
    }
    acc.downgrades += v.downgrades;
    for (a, b) in acc.user_faults.iter_mut().zip(v.user_faults.iter()) {
        *a += b;
    }
    for (a, b) in acc.kernel_faults.iter_mut().zip(v.kernel_faults.iter()) {
        *a += b;
    }
    acc.fault_fallbacks += v.fault_fallbacks;
    acc.events_dropped += v.events_dropped;
    acc.unmatched_releases += v.unmatched_releases;
}
