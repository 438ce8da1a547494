//! Raw map values (mm_ebpf) to the shared schema (mm_core::stats).

use mm_core::stats::{
    ContextStats, Drops, FaultCounts, FaultStats, LockContext, LockMode, LockModeStats,
    Log2Histogram, MmapLockStats, ProcessDrops, ProcessStats, WriteHolder,
};
use mm_ebpf::{
    CONTEXT_FAULT, CONTEXT_OTHER, MODE_READ, MODE_WRITE, RawHist, RawModeStats, counters,
};

use crate::probe::RawProcess;

/// The context of a `ContextKey::nr` / `Inflight::nr` value.
pub fn lock_context(nr: i32) -> LockContext {
    match nr {
        CONTEXT_FAULT => LockContext::Fault,
        n if n >= 0 => LockContext::Syscall {
            nr: n as u32,
            name: syscall_name(n as u32),
        },
        // CONTEXT_OTHER and anything unexpected
        _ => {
            debug_assert!(nr == CONTEXT_OTHER || nr < 0);
            LockContext::Other
        }
    }
}

/// The x86_64 name of a syscall number, or `syscall_<nr>`.
pub fn syscall_name(nr: u32) -> String {
    syscalls::Sysno::new(nr as usize)
        .map(|s| s.name().to_owned())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

/// A kernel histogram as an mm-core histogram.
pub fn histogram(raw: &RawHist) -> Log2Histogram {
    Log2Histogram::from_parts(raw.buckets, raw.sum, raw.max)
}

fn mode(raw: &RawModeStats) -> LockModeStats {
    LockModeStats {
        acquisitions: raw.acquisitions,
        trylock_acquisitions: raw.trylock_acquisitions,
        trylock_failures: raw.trylock_failures,
        lock_failures: raw.lock_failures,
        contended: raw.contended,
        remote: raw.remote,
        wait: histogram(&raw.wait),
        hold: histogram(&raw.hold),
    }
}

/// One process's cumulative statistics. `now_ns` (CLOCK_MONOTONIC) dates
/// the write holder's hold.
pub fn process_stats(raw: &RawProcess, comm: String, now_ns: u64) -> ProcessStats {
    let s = &raw.stats;
    let mut contexts: Vec<ContextStats> = raw
        .contexts
        .iter()
        .map(|(key, v)| ContextStats {
            context: lock_context(key.nr),
            mode: if key.write != 0 {
                LockMode::Write
            } else {
                LockMode::Read
            },
            remote: key.remote != 0,
            acquisitions: v.acquisitions,
            contended: v.contended,
            wait: histogram(&v.wait),
            hold: histogram(&v.hold),
        })
        .collect();
    contexts.sort_by(|a, b| (a.mode, &a.context, a.remote).cmp(&(b.mode, &b.context, b.remote)));
    ProcessStats {
        pid: raw.tgid,
        comm,
        exited: raw.exited,
        faults: FaultStats {
            user: FaultCounts::from_array(s.user_faults),
            kernel: FaultCounts::from_array(s.kernel_faults),
            mmap_lock_fallbacks: s.fault_fallbacks,
        },
        mmap_lock: MmapLockStats {
            read: mode(&s.modes[MODE_READ]),
            write: mode(&s.modes[MODE_WRITE]),
            downgrades: s.downgrades,
        },
        contexts,
        drops: ProcessDrops {
            events_dropped: s.events_dropped,
            unmatched_releases: s.unmatched_releases,
        },
        write_holder: raw.holder.map(|h| WriteHolder {
            tid: h.tid,
            pid: h.tgid,
            context: lock_context(h.nr),
            held_ns: now_ns.saturating_sub(h.since_ns),
        }),
    }
}

/// The loss counters.
pub const fn drops(c: &[u64; counters::COUNT as usize]) -> Drops {
    Drops {
        events_dropped: c[counters::EVENTS_DROPPED as usize],
        stats_full: c[counters::STATS_FULL as usize],
        contexts_full: c[counters::CONTEXTS_FULL as usize],
        unmatched_releases: c[counters::UNMATCHED_RELEASES as usize],
        unknown_owner: c[counters::UNKNOWN_OWNER as usize],
    }
}

#[cfg(test)]
mod tests {
    use mm_ebpf::{ContextKey, RawContextStats, RawProcStats, WriteHolder as RawHolder};

    use super::*;

    #[test]
    fn contexts_are_named() {
        assert_eq!(lock_context(CONTEXT_FAULT), LockContext::Fault);
        assert_eq!(lock_context(CONTEXT_OTHER), LockContext::Other);
        assert_eq!(
            lock_context(11),
            LockContext::Syscall {
                nr: 11,
                name: "munmap".into()
            }
        );
        assert_eq!(syscall_name(9), "mmap");
        assert_eq!(syscall_name(10), "mprotect");
        assert_eq!(syscall_name(25), "mremap");
        assert_eq!(syscall_name(28), "madvise");
        assert_eq!(syscall_name(12), "brk");
        assert_eq!(syscall_name(99_999), "syscall_99999");
    }

    #[test]
    fn raw_process_converts() {
        let mut stats = RawProcStats::ZERO;
        stats.user_faults = [1, 2, 3, 4, 5, 6];
        stats.fault_fallbacks = 2;
        stats.modes[MODE_WRITE].acquisitions = 4;
        stats.modes[MODE_WRITE].hold.buckets[10] = 4;
        stats.modes[MODE_WRITE].hold.sum = 4 * 1500;
        stats.modes[MODE_WRITE].hold.max = 1900;
        let mut ctx = RawContextStats::ZERO;
        ctx.acquisitions = 4;
        let raw = RawProcess {
            tgid: 42,
            stats,
            contexts: vec![(
                ContextKey {
                    tgid: 42,
                    nr: 11,
                    write: 1,
                    remote: 0,
                    pad: [0; 2],
                },
                ctx,
            )],
            comm: Some("x".into()),
            holder: Some(RawHolder {
                since_ns: 1_000,
                tid: 43,
                tgid: 42,
                nr: 11,
                pad: 0,
            }),
            exited: false,
        };
        let p = process_stats(&raw, "x".into(), 5_000);
        assert_eq!(p.faults.user.total(), 21);
        assert_eq!(p.faults.user.write_protection, 4);
        assert_eq!(p.faults.served_without_mmap_lock(), 19);
        assert_eq!(p.mmap_lock.write.acquisitions, 4);
        assert_eq!(p.mmap_lock.write.hold.count(), 4);
        assert_eq!(p.mmap_lock.write.hold.quantile(0.99), Some(1900));
        assert_eq!(p.contexts[0].context.name(), "munmap");
        assert_eq!(p.contexts[0].mode, LockMode::Write);
        let h = p.write_holder.unwrap();
        assert_eq!((h.tid, h.held_ns, h.context.name()), (43, 4_000, "munmap"));
    }
}
