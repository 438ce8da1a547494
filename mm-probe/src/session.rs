//! A measuring session: periodic snapshots of the probe turned into interval
//! reports (what happened since the last one) and cumulative reports (since
//! attach), with exited processes kept until the final summary.
//!
//! Exit handling: the kernel marks a process exited at
//! `sched_process_exit`, which (since 6.16) fires before `exit_mm()` tears
//! the address space down, and that teardown still takes mmap_lock. So an
//! exited process is reported in the tick that first sees it exited and
//! dropped from the kernel maps one tick later, after a last reading.

use std::collections::BTreeMap;

use mm_core::stats::{Drops, ProcessStats, Report, ReportKind, Source};

use crate::{
    convert,
    probe::{Probe, ProbeError, RawSnapshot},
    procfs,
};

/// The two views of one snapshot.
pub struct Tick {
    /// Activity since the previous tick.
    pub interval: Report,
    /// Totals since the start of the session.
    pub cumulative: Report,
    /// Processes first seen exited in this tick.
    pub newly_exited: Vec<u32>,
}

/// See the module documentation.
pub struct Session {
    probe: Probe,
    kernel: String,
    start_ns: u64,
    prev_ns: u64,
    prev: BTreeMap<u32, ProcessStats>,
    prev_drops: Drops,
    /// Subtracted from cumulative totals (set by [`Session::reset`]).
    baseline: BTreeMap<u32, ProcessStats>,
    baseline_drops: Drops,
    departed: Vec<ProcessStats>,
    exited_pending: Vec<u32>,
    comms: BTreeMap<u32, String>,
}

impl Session {
    /// Start measuring with a loaded probe.
    pub fn new(probe: Probe) -> Self {
        let now = procfs::monotonic_ns();
        Self {
            probe,
            kernel: procfs::kernel_release(),
            start_ns: now,
            prev_ns: now,
            prev: BTreeMap::new(),
            prev_drops: Drops::default(),
            baseline: BTreeMap::new(),
            baseline_drops: Drops::default(),
            departed: Vec::new(),
            exited_pending: Vec::new(),
            comms: BTreeMap::new(),
        }
    }

    /// The probe.
    pub const fn probe(&self) -> &Probe {
        &self.probe
    }

    /// The probe, mutably (to add pids).
    pub const fn probe_mut(&mut self) -> &mut Probe {
        &mut self.probe
    }

    /// Forget everything counted so far: the next reports start from zero.
    pub fn reset(&mut self) -> Result<(), ProbeError> {
        let snap = self.probe.snapshot()?;
        let cumulative = self.cumulative(&snap);
        self.start_ns = snap.taken_ns;
        self.prev_ns = snap.taken_ns;
        self.prev_drops = convert::drops(&snap.counters);
        self.baseline_drops = self.prev_drops;
        self.prev = cumulative.into_iter().map(|p| (p.pid, p)).collect();
        self.baseline = self.prev.clone();
        self.departed.clear();
        Ok(())
    }

    fn comm(&mut self, pid: u32, kernel: Option<&String>) -> String {
        if let Some(c) = kernel {
            return c.clone();
        }
        self.comms
            .entry(pid)
            .or_insert_with(|| procfs::comm(pid).unwrap_or_else(|| "?".into()))
            .clone()
    }

    fn cumulative(&mut self, snap: &RawSnapshot) -> Vec<ProcessStats> {
        snap.processes
            .values()
            .map(|raw| {
                let comm = self.comm(raw.tgid, raw.comm.as_ref());
                convert::process_stats(raw, comm, snap.taken_ns)
            })
            .collect()
    }

    fn envelope(&self, kind: ReportKind, snap: &RawSnapshot) -> Report {
        let mut r = Report::new(kind, Source::Host, self.kernel.clone());
        r.timestamp_unix_ms = procfs::unix_ms();
        r.elapsed_ns = snap.taken_ns.saturating_sub(self.start_ns);
        r.unavailable = self.probe.unavailable().to_vec();
        r
    }

    /// Take a snapshot and produce both views of it.
    pub fn tick(&mut self) -> Result<Tick, ProbeError> {
        let snap = self.probe.snapshot()?;
        let cumulative_now = self.cumulative(&snap);
        let drops_now = convert::drops(&snap.counters);

        let mut interval = self.envelope(ReportKind::Interval, &snap);
        interval.interval_ns = snap.taken_ns.saturating_sub(self.prev_ns);
        interval.drops = drops_now.since(&self.prev_drops);
        let empty = ProcessStats::default();
        interval.processes = cumulative_now
            .iter()
            .map(|p| p.since(self.prev.get(&p.pid).unwrap_or(&empty)))
            .filter(|p| !p.is_idle() || (p.exited && !self.exited_pending.contains(&p.pid)))
            .collect();
        sort_busiest_first(&mut interval.processes);

        // Processes that exited at the previous tick: final reading, then
        // drop them from the kernel maps.
        let pending = std::mem::take(&mut self.exited_pending);
        for pid in &pending {
            if let Some(p) = cumulative_now.iter().find(|p| p.pid == *pid) {
                let total = self.since_baseline(p);
                self.departed.push(total);
            }
            self.probe.forget(*pid)?;
            self.comms.remove(pid);
        }
        let newly_exited: Vec<u32> = cumulative_now
            .iter()
            .filter(|p| p.exited && !pending.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        self.exited_pending.clone_from(&newly_exited);

        let mut cumulative = self.envelope(ReportKind::Final, &snap);
        cumulative.interval_ns = cumulative.elapsed_ns;
        cumulative.drops = drops_now.since(&self.baseline_drops);
        cumulative.processes = self.totals(&cumulative_now, &pending);

        self.prev = cumulative_now
            .into_iter()
            .filter(|p| !pending.contains(&p.pid))
            .map(|p| (p.pid, p))
            .collect();
        self.prev_ns = snap.taken_ns;
        self.prev_drops = drops_now;
        Ok(Tick {
            interval,
            cumulative,
            newly_exited,
        })
    }

    /// Live processes (minus those just moved to `departed`) plus departed
    /// ones, relative to the session start, without idle processes.
    fn totals(&self, live: &[ProcessStats], just_departed: &[u32]) -> Vec<ProcessStats> {
        let mut all: Vec<ProcessStats> = live
            .iter()
            .filter(|p| !just_departed.contains(&p.pid))
            .map(|p| self.since_baseline(p))
            .chain(self.departed.iter().cloned())
            .filter(|p| !p.is_idle())
            .collect();
        sort_busiest_first(&mut all);
        all
    }

    fn since_baseline(&self, p: &ProcessStats) -> ProcessStats {
        match self.baseline.get(&p.pid) {
            Some(b) => p.since(b),
            None => p.clone(),
        }
    }

    /// The final summary: totals since the start.
    pub fn finish(&mut self) -> Result<Report, ProbeError> {
        Ok(self.tick()?.cumulative)
    }
}

/// Most mmap_lock wait first, then most lock traffic, then most faults.
pub fn sort_busiest_first(p: &mut [ProcessStats]) {
    p.sort_by(|a, b| {
        let key = |p: &ProcessStats| {
            (
                p.total_wait_ns(),
                p.mmap_lock.read.acquisitions + p.mmap_lock.write.acquisitions,
                p.faults.total(),
            )
        };
        key(b).cmp(&key(a)).then(a.pid.cmp(&b.pid))
    });
}
