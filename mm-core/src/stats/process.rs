//! Per-process mmap_lock and page-fault statistics.
//!
//! The counters follow the kernel's own instrumentation points:
//! `include/trace/events/mmap_lock.h` (start_locking, acquire_returned,
//! released), `arch/x86/mm/fault.c` (page_fault_user/kernel and the x86 error
//! code), and the per-VMA lock fallback of `do_user_addr_fault()`.

use serde::{Deserialize, Serialize};

use super::histogram::Log2Histogram;

/// mmap_lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// `mmap_read_lock()` and friends.
    Read,
    /// `mmap_write_lock()` and friends.
    Write,
}

impl LockMode {
    /// "read" or "write".
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// Statistics of one mode of one process's mmap_lock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "LockModeStatsRepr", from = "LockModeStatsRepr")]
pub struct LockModeStats {
    /// Successful acquisitions (blocking and trylock).
    pub acquisitions: u64,
    /// Of those, by a successful trylock (no wait recorded).
    pub trylock_acquisitions: u64,
    /// Trylocks that failed.
    pub trylock_failures: u64,
    /// Blocking (killable) acquisitions that gave up.
    pub lock_failures: u64,
    /// Acquisitions that had to wait in the rwsem slow path.
    pub contended: u64,
    /// Acquisitions by a task of another process.
    pub remote: u64,
    /// Time from asking for the lock to getting it (blocking acquisitions).
    pub wait: Log2Histogram,
    /// Time from getting the lock to releasing (or downgrading) it.
    pub hold: Log2Histogram,
}

/// Serialized form of [`LockModeStats`], with the derived share.
#[derive(Serialize, Deserialize)]
struct LockModeStatsRepr {
    acquisitions: u64,
    trylock_acquisitions: u64,
    trylock_failures: u64,
    lock_failures: u64,
    contended: u64,
    #[serde(default)]
    contended_share: f64,
    remote: u64,
    wait: Log2Histogram,
    hold: Log2Histogram,
}

impl From<LockModeStats> for LockModeStatsRepr {
    fn from(s: LockModeStats) -> Self {
        Self {
            contended_share: s.contended_share(),
            acquisitions: s.acquisitions,
            trylock_acquisitions: s.trylock_acquisitions,
            trylock_failures: s.trylock_failures,
            lock_failures: s.lock_failures,
            contended: s.contended,
            remote: s.remote,
            wait: s.wait,
            hold: s.hold,
        }
    }
}

impl From<LockModeStatsRepr> for LockModeStats {
    fn from(r: LockModeStatsRepr) -> Self {
        Self {
            acquisitions: r.acquisitions,
            trylock_acquisitions: r.trylock_acquisitions,
            trylock_failures: r.trylock_failures,
            lock_failures: r.lock_failures,
            contended: r.contended,
            remote: r.remote,
            wait: r.wait,
            hold: r.hold,
        }
    }
}

impl LockModeStats {
    /// Share of acquisitions that were contended, 0.0 when there were none.
    pub fn contended_share(&self) -> f64 {
        share(self.contended, self.acquisitions)
    }

    /// What was counted since `e` was taken from the same counters.
    pub fn since(&self, e: &Self) -> Self {
        Self {
            acquisitions: self.acquisitions.saturating_sub(e.acquisitions),
            trylock_acquisitions: self
                .trylock_acquisitions
                .saturating_sub(e.trylock_acquisitions),
            trylock_failures: self.trylock_failures.saturating_sub(e.trylock_failures),
            lock_failures: self.lock_failures.saturating_sub(e.lock_failures),
            contended: self.contended.saturating_sub(e.contended),
            remote: self.remote.saturating_sub(e.remote),
            wait: self.wait.since(&e.wait),
            hold: self.hold.since(&e.hold),
        }
    }

    /// Add another's counts into this one.
    pub fn merge(&mut self, o: &Self) {
        self.acquisitions += o.acquisitions;
        self.trylock_acquisitions += o.trylock_acquisitions;
        self.trylock_failures += o.trylock_failures;
        self.lock_failures += o.lock_failures;
        self.contended += o.contended;
        self.remote += o.remote;
        self.wait.merge(&o.wait);
        self.hold.merge(&o.hold);
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One process's mmap_lock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "MmapLockStatsRepr", from = "MmapLockStatsRepr")]
pub struct MmapLockStats {
    /// Read mode.
    pub read: LockModeStats,
    /// Write mode.
    pub write: LockModeStats,
    /// `mmap_write_downgrade()` calls.
    pub downgrades: u64,
}

/// Serialized form of [`MmapLockStats`], with the derived share.
#[derive(Serialize, Deserialize)]
struct MmapLockStatsRepr {
    read: LockModeStats,
    write: LockModeStats,
    downgrades: u64,
    #[serde(default)]
    contended_share: f64,
}

impl From<MmapLockStats> for MmapLockStatsRepr {
    fn from(s: MmapLockStats) -> Self {
        Self {
            contended_share: s.contended_share(),
            read: s.read,
            write: s.write,
            downgrades: s.downgrades,
        }
    }
}

impl From<MmapLockStatsRepr> for MmapLockStats {
    fn from(r: MmapLockStatsRepr) -> Self {
        Self {
            read: r.read,
            write: r.write,
            downgrades: r.downgrades,
        }
    }
}

impl MmapLockStats {
    /// The stats of one mode.
    pub const fn mode(&self, mode: LockMode) -> &LockModeStats {
        match mode {
            LockMode::Read => &self.read,
            LockMode::Write => &self.write,
        }
    }

    /// Share of all acquisitions (both modes) that were contended.
    pub fn contended_share(&self) -> f64 {
        share(
            self.read.contended + self.write.contended,
            self.read.acquisitions + self.write.acquisitions,
        )
    }

    fn since(&self, e: &Self) -> Self {
        Self {
            read: self.read.since(&e.read),
            write: self.write.since(&e.write),
            downgrades: self.downgrades.saturating_sub(e.downgrades),
        }
    }
}

/// Kind of page fault, from the access and whether the page was present
/// (x86 error code bits P, W and I; `arch/x86/include/asm/trap_pf.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Read of a page that was not present.
    ReadNotPresent,
    /// Read refused on a present page (PROT_NONE, guard).
    ReadProtection,
    /// Write to a page that was not present.
    WriteNotPresent,
    /// Write to a present, read-only page (copy-on-write, write-notify).
    WriteProtection,
    /// Instruction fetch from a page that was not present.
    ExecNotPresent,
    /// Instruction fetch refused on a present page.
    ExecProtection,
}

impl FaultKind {
    /// All kinds, in index order.
    pub const ALL: [Self; 6] = [
        Self::ReadNotPresent,
        Self::ReadProtection,
        Self::WriteNotPresent,
        Self::WriteProtection,
        Self::ExecNotPresent,
        Self::ExecProtection,
    ];

    /// The kind of an x86 page-fault error code.
    pub const fn from_x86_error_code(code: u64) -> Self {
        let present = code & 1 != 0;
        match (code & 0x10 != 0, code & 0x2 != 0, present) {
            (true, _, false) => Self::ExecNotPresent,
            (true, _, true) => Self::ExecProtection,
            (false, true, false) => Self::WriteNotPresent,
            (false, true, true) => Self::WriteProtection,
            (false, false, false) => Self::ReadNotPresent,
            (false, false, true) => Self::ReadProtection,
        }
    }

    /// Index into [`FaultCounts`] (the kernel programs' order).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// snake_case name, as in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReadNotPresent => "read_not_present",
            Self::ReadProtection => "read_protection",
            Self::WriteNotPresent => "write_not_present",
            Self::WriteProtection => "write_protection",
            Self::ExecNotPresent => "exec_not_present",
            Self::ExecProtection => "exec_protection",
        }
    }
}

/// Fault counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "FaultCountsRepr", from = "FaultCountsRepr")]
pub struct FaultCounts {
    /// Reads of pages that were not present.
    pub read_not_present: u64,
    /// Reads refused on present pages.
    pub read_protection: u64,
    /// Writes to pages that were not present.
    pub write_not_present: u64,
    /// Writes to present read-only pages.
    pub write_protection: u64,
    /// Instruction fetches from pages that were not present.
    pub exec_not_present: u64,
    /// Instruction fetches refused on present pages.
    pub exec_protection: u64,
}

/// Serialized form of [`FaultCounts`], with the total.
#[derive(Serialize, Deserialize)]
struct FaultCountsRepr {
    #[serde(default)]
    total: u64,
    read_not_present: u64,
    read_protection: u64,
    write_not_present: u64,
    write_protection: u64,
    exec_not_present: u64,
    exec_protection: u64,
}

impl From<FaultCounts> for FaultCountsRepr {
    fn from(c: FaultCounts) -> Self {
        Self {
            total: c.total(),
            read_not_present: c.read_not_present,
            read_protection: c.read_protection,
            write_not_present: c.write_not_present,
            write_protection: c.write_protection,
            exec_not_present: c.exec_not_present,
            exec_protection: c.exec_protection,
        }
    }
}

impl From<FaultCountsRepr> for FaultCounts {
    fn from(r: FaultCountsRepr) -> Self {
        Self {
            read_not_present: r.read_not_present,
            read_protection: r.read_protection,
            write_not_present: r.write_not_present,
            write_protection: r.write_protection,
            exec_not_present: r.exec_not_present,
            exec_protection: r.exec_protection,
        }
    }
}

impl FaultCounts {
    /// From counts indexed by [`FaultKind::index`].
    pub const fn from_array(a: [u64; 6]) -> Self {
        Self {
            read_not_present: a[0],
            read_protection: a[1],
            write_not_present: a[2],
            write_protection: a[3],
            exec_not_present: a[4],
            exec_protection: a[5],
        }
    }

    /// Counts indexed by [`FaultKind::index`].
    pub const fn to_array(&self) -> [u64; 6] {
        [
            self.read_not_present,
            self.read_protection,
            self.write_not_present,
            self.write_protection,
            self.exec_not_present,
            self.exec_protection,
        ]
    }

    /// Count of one kind.
    pub const fn get(&self, kind: FaultKind) -> u64 {
        self.to_array()[kind.index()]
    }

    /// Count one fault.
    pub fn add(&mut self, kind: FaultKind, n: u64) {
        let mut a = self.to_array();
        a[kind.index()] += n;
        *self = Self::from_array(a);
    }

    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.to_array().iter().sum()
    }

    fn since(&self, e: &Self) -> Self {
        let (a, b) = (self.to_array(), e.to_array());
        Self::from_array(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
    }
}

/// A process's page faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "FaultStatsRepr", from = "FaultStatsRepr")]
pub struct FaultStats {
    /// Faults raised in user mode.
    pub user: FaultCounts,
    /// Faults on user addresses raised in kernel mode (inside system calls,
    /// e.g. copy_to_user); these always take mmap_lock.
    pub kernel: FaultCounts,
    /// User faults that took mmap_lock for read because the per-VMA lock
    /// could not serve them.
    pub mmap_lock_fallbacks: u64,
}

/// Serialized form of [`FaultStats`], with the derived totals.
#[derive(Serialize, Deserialize)]
struct FaultStatsRepr {
    #[serde(default)]
    total: u64,
    user: FaultCounts,
    kernel: FaultCounts,
    mmap_lock_fallbacks: u64,
    #[serde(default)]
    served_without_mmap_lock: u64,
}

impl From<FaultStats> for FaultStatsRepr {
    fn from(f: FaultStats) -> Self {
        Self {
            total: f.total(),
            served_without_mmap_lock: f.served_without_mmap_lock(),
            user: f.user,
            kernel: f.kernel,
            mmap_lock_fallbacks: f.mmap_lock_fallbacks,
        }
    }
}

impl From<FaultStatsRepr> for FaultStats {
    fn from(r: FaultStatsRepr) -> Self {
        Self {
            user: r.user,
            kernel: r.kernel,
            mmap_lock_fallbacks: r.mmap_lock_fallbacks,
        }
    }
}

impl FaultStats {
    /// All faults.
    pub fn total(&self) -> u64 {
        self.user.total() + self.kernel.total()
    }

    /// User faults served under a per-VMA lock, without mmap_lock.
    pub fn served_without_mmap_lock(&self) -> u64 {
        self.user.total().saturating_sub(self.mmap_lock_fallbacks)
    }

    fn since(&self, e: &Self) -> Self {
        Self {
            user: self.user.since(&e.user),
            kernel: self.kernel.since(&e.kernel),
            mmap_lock_fallbacks: self
                .mmap_lock_fallbacks
                .saturating_sub(e.mmap_lock_fallbacks),
        }
    }
}

/// The context a lock was taken in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LockContext {
    /// Inside a system call.
    Syscall {
        /// Its number on the traced architecture.
        nr: u32,
        /// Its name ("munmap"), or "syscall_<nr>" when unknown.
        name: String,
    },
    /// Handling a user page fault (per-VMA lock fallback, stack expansion).
    Fault,
    /// Anything else: kernel threads (khugepaged), task work, exit.
    Other,
}

impl LockContext {
    /// Short name: the syscall name, "fault" or "other".
    pub fn name(&self) -> &str {
        match self {
            Self::Syscall { name, .. } => name,
            Self::Fault => "fault",
            Self::Other => "other",
        }
    }
}

/// mmap_lock acquisitions of one process's lock in one context and mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextStats {
    /// Where the lock was taken.
    pub context: LockContext,
    /// Mode.
    pub mode: LockMode,
    /// Taken by a task of another process (a remote reader of the mm).
    pub remote: bool,
    /// Successful acquisitions.
    pub acquisitions: u64,
    /// Of those, contended.
    pub contended: u64,
    /// Wait of blocking acquisitions.
    pub wait: Log2Histogram,
    /// Hold times.
    pub hold: Log2Histogram,
}

impl ContextStats {
    /// Whether `other` counts the same context, mode and locality.
    pub fn same_key(&self, other: &Self) -> bool {
        self.context == other.context && self.mode == other.mode && self.remote == other.remote
    }

    fn since(&self, e: &Self) -> Self {
        Self {
            context: self.context.clone(),
            mode: self.mode,
            remote: self.remote,
            acquisitions: self.acquisitions.saturating_sub(e.acquisitions),
            contended: self.contended.saturating_sub(e.contended),
            wait: self.wait.since(&e.wait),
            hold: self.hold.since(&e.hold),
        }
    }
}

/// Who holds a process's mmap_lock for write right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteHolder {
    /// Holding thread.
    pub tid: u32,
    /// Process of the holding thread.
    pub pid: u32,
    /// What it is doing.
    pub context: LockContext,
    /// How long it has held the lock when the snapshot was taken.
    pub held_ns: u64,
}

/// Losses that belong to one process (table-full losses have no process
/// entry to land in and are only in the report's [`super::Drops`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDrops {
    /// Per-event records of this process lost to a full ring buffer.
    pub events_dropped: u64,
    /// Releases of this process whose acquisition was not seen (held since
    /// before attach, or evicted from the bounded per-thread map).
    pub unmatched_releases: u64,
}

impl ProcessDrops {
    fn since(&self, e: &Self) -> Self {
        Self {
            events_dropped: self.events_dropped.saturating_sub(e.events_dropped),
            unmatched_releases: self.unmatched_releases.saturating_sub(e.unmatched_releases),
        }
    }
}

/// Everything known about one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Process id (tgid).
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// The process has exited; these are its final numbers.
    #[serde(default)]
    pub exited: bool,
    /// Page faults.
    pub faults: FaultStats,
    /// mmap_lock.
    pub mmap_lock: MmapLockStats,
    /// mmap_lock acquisitions by context, sorted by context, mode, remote.
    pub contexts: Vec<ContextStats>,
    /// This process's losses.
    #[serde(default)]
    pub drops: ProcessDrops,
    /// Current write holder, if the lock was write-held at the snapshot.
    #[serde(default)]
    pub write_holder: Option<WriteHolder>,
}

impl ProcessStats {
    /// The activity between `earlier` (a previous snapshot of the same
    /// process) and this snapshot. Identity, `exited` and `write_holder` are
    /// this snapshot's.
    pub fn since(&self, earlier: &Self) -> Self {
        let contexts = self
            .contexts
            .iter()
            .map(|c| match earlier.contexts.iter().find(|e| e.same_key(c)) {
                Some(e) => c.since(e),
                None => c.clone(),
            })
            .filter(|c| c.acquisitions > 0 || !c.hold.is_empty() || !c.wait.is_empty())
            .collect();
        Self {
            pid: self.pid,
            comm: self.comm.clone(),
            exited: self.exited,
            faults: self.faults.since(&earlier.faults),
            mmap_lock: self.mmap_lock.since(&earlier.mmap_lock),
            contexts,
            drops: self.drops.since(&earlier.drops),
            write_holder: self.write_holder.clone(),
        }
    }

    /// Whether nothing at all was counted.
    pub fn is_idle(&self) -> bool {
        let l = &self.mmap_lock;
        self.faults.total() == 0
            && l.read.acquisitions == 0
            && l.write.acquisitions == 0
            && l.read.trylock_failures == 0
            && l.write.trylock_failures == 0
            && l.read.lock_failures == 0
            && l.write.lock_failures == 0
            && l.read.hold.is_empty()
            && l.write.hold.is_empty()
            && l.downgrades == 0
            && self.drops == ProcessDrops::default()
            && self.write_holder.is_none()
    }

    /// Total wait of all contended acquisitions in both modes, a sort key
    /// for "who suffers most from mmap_lock contention".
    pub fn total_wait_ns(&self) -> u64 {
        self.mmap_lock.read.wait.sum() + self.mmap_lock.write.wait.sum()
    }

    /// Add another process's counts into this one (to show several
    /// processes as one). Identity is this one's; contexts are merged by
    /// context, mode and locality and stay sorted; the write holder is
    /// kept if either has one.
    pub fn merge(&mut self, o: &Self) {
        let f = &mut self.faults;
        let (u, k) = (f.user.to_array(), f.kernel.to_array());
        let (ou, ok) = (o.faults.user.to_array(), o.faults.kernel.to_array());
        f.user = FaultCounts::from_array(std::array::from_fn(|i| u[i] + ou[i]));
        f.kernel = FaultCounts::from_array(std::array::from_fn(|i| k[i] + ok[i]));
        f.mmap_lock_fallbacks += o.faults.mmap_lock_fallbacks;
        self.mmap_lock.read.merge(&o.mmap_lock.read);
        self.mmap_lock.write.merge(&o.mmap_lock.write);
        self.mmap_lock.downgrades += o.mmap_lock.downgrades;
        for c in &o.contexts {
            match self.contexts.iter_mut().find(|m| m.same_key(c)) {
                Some(m) => {
                    m.acquisitions += c.acquisitions;
                    m.contended += c.contended;
                    m.wait.merge(&c.wait);
                    m.hold.merge(&c.hold);
                }
                None => self.contexts.push(c.clone()),
            }
        }
        self.contexts
            .sort_by(|a, b| (&a.context, a.mode, a.remote).cmp(&(&b.context, b.mode, b.remote)));
        self.drops.events_dropped += o.drops.events_dropped;
        self.drops.unmatched_releases += o.drops.unmatched_releases;
        if self.write_holder.is_none() {
            self.write_holder.clone_from(&o.write_holder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_from_error_code() {
        use FaultKind::*;
        assert_eq!(FaultKind::from_x86_error_code(0x4), ReadNotPresent);
        assert_eq!(FaultKind::from_x86_error_code(0x5), ReadProtection);
        assert_eq!(FaultKind::from_x86_error_code(0x6), WriteNotPresent);
        assert_eq!(FaultKind::from_x86_error_code(0x7), WriteProtection);
        assert_eq!(FaultKind::from_x86_error_code(0x14), ExecNotPresent);
        assert_eq!(FaultKind::from_x86_error_code(0x15), ExecProtection);
        // kernel-mode write to a user page (no U bit)
        assert_eq!(FaultKind::from_x86_error_code(0x2), WriteNotPresent);
        for (i, k) in FaultKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn fault_counts_and_fallbacks() {
        let mut f = FaultStats::default();
        f.user.add(FaultKind::WriteNotPresent, 10);
        f.user.add(FaultKind::ReadNotPresent, 2);
        f.kernel.add(FaultKind::WriteNotPresent, 3);
        f.mmap_lock_fallbacks = 4;
        assert_eq!(f.total(), 15);
        assert_eq!(f.user.get(FaultKind::WriteNotPresent), 10);
        assert_eq!(f.served_without_mmap_lock(), 8);
        let json = serde_json::to_value(f).unwrap();
        assert_eq!(json["user"]["write_not_present"], 10);
        assert_eq!(json["user"]["total"], 12);
        assert_eq!(json["total"], 15);
        assert_eq!(json["served_without_mmap_lock"], 8);
        assert_eq!(json["mmap_lock_fallbacks"], 4);
        let back: FaultStats = serde_json::from_value(json).unwrap();
        assert_eq!(back, f);
    }

    fn ctx(name: &str, nr: u32, mode: LockMode, acq: u64) -> ContextStats {
        let mut hold = Log2Histogram::new();
        for _ in 0..acq {
            hold.record(1000);
        }
        ContextStats {
            context: LockContext::Syscall {
                nr,
                name: name.into(),
            },
            mode,
            remote: false,
            acquisitions: acq,
            contended: 0,
            wait: Log2Histogram::new(),
            hold,
        }
    }

    #[test]
    fn since_subtracts_everything() {
        let mut a = ProcessStats {
            pid: 7,
            comm: "x".into(),
            ..Default::default()
        };
        a.mmap_lock.write.acquisitions = 3;
        a.mmap_lock.write.contended = 1;
        a.faults.user.add(FaultKind::WriteNotPresent, 5);
        a.contexts = vec![ctx("mmap", 9, LockMode::Write, 2)];
        let earlier = a.clone();
        a.mmap_lock.write.acquisitions = 10;
        a.mmap_lock.write.contended = 4;
        a.faults.user.add(FaultKind::WriteNotPresent, 7);
        a.contexts = vec![
            ctx("mmap", 9, LockMode::Write, 6),
            ctx("munmap", 11, LockMode::Write, 1),
        ];
        let d = a.since(&earlier);
        assert_eq!(d.mmap_lock.write.acquisitions, 7);
        assert_eq!(d.mmap_lock.write.contended, 3);
        assert_eq!(d.faults.user.write_not_present, 7);
        assert_eq!(d.contexts.len(), 2);
        assert_eq!(d.contexts[0].acquisitions, 4);
        assert_eq!(d.contexts[0].hold.count(), 4);
        assert_eq!(d.contexts[1].acquisitions, 1);
        // nothing new: the context rows disappear, the process is idle
        let none = a.since(&a);
        assert!(none.contexts.is_empty());
        assert!(none.is_idle());
    }

    #[test]
    fn merge_adds_and_keeps_contexts_sorted() {
        let mut a = ProcessStats {
            pid: 1,
            ..Default::default()
        };
        a.mmap_lock.read.acquisitions = 2;
        a.faults.user.add(FaultKind::ReadNotPresent, 3);
        a.faults.mmap_lock_fallbacks = 1;
        a.contexts = vec![ctx("munmap", 11, LockMode::Write, 2)];
        let mut b = ProcessStats {
            pid: 2,
            ..Default::default()
        };
        b.mmap_lock.read.acquisitions = 5;
        b.mmap_lock.write.contended = 1;
        b.faults.kernel.add(FaultKind::WriteNotPresent, 4);
        b.faults.mmap_lock_fallbacks = 2;
        b.contexts = vec![
            ctx("mmap", 9, LockMode::Write, 1),
            ctx("munmap", 11, LockMode::Write, 3),
        ];
        a.merge(&b);
        assert_eq!(a.pid, 1);
        assert_eq!(a.mmap_lock.read.acquisitions, 7);
        assert_eq!(a.mmap_lock.write.contended, 1);
        assert_eq!(a.faults.total(), 7);
        assert_eq!(a.faults.mmap_lock_fallbacks, 3);
        let names: Vec<(&str, u64)> = a
            .contexts
            .iter()
            .map(|c| (c.context.name(), c.acquisitions))
            .collect();
        assert_eq!(names, [("mmap", 1), ("munmap", 5)]);
        assert_eq!(a.contexts[1].hold.count(), 5);
    }

    #[test]
    fn contended_share() {
        let mut l = MmapLockStats::default();
        assert_eq!(l.contended_share(), 0.0);
        l.read.acquisitions = 6;
        l.read.contended = 1;
        l.write.acquisitions = 2;
        l.write.contended = 1;
        assert_eq!(l.contended_share(), 0.25);
        assert_eq!(l.write.contended_share(), 0.5);
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["contended_share"], 0.25);
        assert_eq!(json["write"]["contended_share"], 0.5);
        let back: MmapLockStats = serde_json::from_value(json).unwrap();
        assert_eq!(back, l);
    }
}
