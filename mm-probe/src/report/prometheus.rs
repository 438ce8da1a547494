//! Prometheus text exposition (format 0.0.4) of a cumulative report.
//!
//! Histograms are in seconds with cumulative `le` buckets at powers of two
//! of nanoseconds from 2^10 ns (about 1 µs) to 2^35 ns (about 34 s), plus
//! `+Inf`, `_sum` and `_count`. A kernel bucket `[2^i, 2^(i+1))` ns lies
//! wholly below `le = 2^(i+1)` ns, so each cumulative count is exact.

use std::fmt::Write as _;

use mm_core::stats::{FaultKind, LockMode, Log2Histogram, ProcessStats, Report};

/// The `le` bounds, as powers of two of nanoseconds.
const LE_POW2: std::ops::RangeInclusive<u32> = 10..=35;

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    lines: String,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            lines: String::new(),
        }
    }

    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.lines, "{}{suffix}", self.name);
        if !labels.is_empty() {
            self.lines.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.lines.push(',');
                }
                let _ = write!(self.lines, "{k}=\"{}\"", escape(v));
            }
            self.lines.push('}');
        }
        let _ = writeln!(self.lines, " {value}");
    }

    fn histogram(&mut self, labels: &[(&str, &str)], h: &Log2Histogram) {
        let mut cumulative = 0u64;
        let buckets = h.buckets();
        let mut next = 0usize;
        for pow in LE_POW2 {
            // kernel buckets 0..pow hold values < 2^pow
            while next < pow as usize {
                cumulative += buckets[next];
                next += 1;
            }
            let le = format_seconds((1u64 << pow) as f64 / 1e9);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample("_bucket", &l, cumulative);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample("_bucket", &l, h.count());
        self.sample("_sum", labels, format_seconds(h.sum() as f64 / 1e9));
        self.sample("_count", labels, h.count());
    }

    fn write_to(&self, out: &mut String) {
        if self.lines.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        out.push_str(&self.lines);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_seconds(s: f64) -> String {
    // Enough digits to keep powers of two of nanoseconds distinct.
    let text = format!("{s:.9e}");
    // "1.024000000e-6" -> "1.024e-6"
    match text.split_once('e') {
        Some((mantissa, exp)) => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exp}")
        }
        None => text,
    }
}

/// Render the exposition text of a (cumulative) report.
pub fn render(report: &Report) -> String {
    let mut faults = Family::new(
        "mm_probe_page_faults_total",
        "counter",
        "Page faults by origin (user or kernel mode) and kind.",
    );
    let mut fallbacks = Family::new(
        "mm_probe_fault_mmap_lock_fallbacks_total",
        "counter",
        "User faults the per-VMA lock could not serve, which took mmap_lock for read.",
    );
    let mut vma_locked = Family::new(
        "mm_probe_faults_served_without_mmap_lock_total",
        "counter",
        "User faults served under a per-VMA lock, without mmap_lock.",
    );
    let mut acquisitions = Family::new(
        "mm_probe_mmap_lock_acquisitions_total",
        "counter",
        "Successful mmap_lock acquisitions (blocking and trylock).",
    );
    let mut trylock_ok = Family::new(
        "mm_probe_mmap_lock_trylock_acquisitions_total",
        "counter",
        "mmap_lock acquisitions by a successful trylock.",
    );
    let mut trylock_failures = Family::new(
        "mm_probe_mmap_lock_trylock_failures_total",
        "counter",
        "mmap_lock trylocks that failed.",
    );
    let mut lock_failures = Family::new(
        "mm_probe_mmap_lock_lock_failures_total",
        "counter",
        "Blocking (killable) mmap_lock acquisitions that gave up.",
    );
    let mut contended = Family::new(
        "mm_probe_mmap_lock_contended_total",
        "counter",
        "mmap_lock acquisitions that waited in the rwsem slow path.",
    );
    let mut remote = Family::new(
        "mm_probe_mmap_lock_remote_acquisitions_total",
        "counter",
        "mmap_lock acquisitions by a task of another process.",
    );
    let mut downgrades = Family::new(
        "mm_probe_mmap_lock_downgrades_total",
        "counter",
        "mmap_lock write locks downgraded to read.",
    );
    let mut wait = Family::new(
        "mm_probe_mmap_lock_wait_seconds",
        "histogram",
        "Time from asking for mmap_lock to getting it (blocking acquisitions).",
    );
    let mut hold = Family::new(
        "mm_probe_mmap_lock_hold_seconds",
        "histogram",
        "Time mmap_lock was held.",
    );
    let mut ctx_acq = Family::new(
        "mm_probe_mmap_lock_context_acquisitions_total",
        "counter",
        "mmap_lock acquisitions by the syscall (or fault/other) that took the lock.",
    );
    let mut ctx_hold = Family::new(
        "mm_probe_mmap_lock_context_hold_seconds",
        "histogram",
        "mmap_lock hold time by the syscall (or fault/other) that took the lock.",
    );
    let mut holder = Family::new(
        "mm_probe_mmap_lock_write_held_seconds",
        "gauge",
        "How long the current write holder has held mmap_lock (0: not write-held).",
    );
    let mut drops = Family::new(
        "mm_probe_dropped_events_total",
        "counter",
        "Events lost or not attributed, by reason.",
    );
    let mut process_drops = Family::new(
        "mm_probe_process_dropped_events_total",
        "counter",
        "A process's event records lost to a full ring buffer, and its releases without a seen acquisition.",
    );
    let mut unavailable = Family::new(
        "mm_probe_metric_unavailable",
        "gauge",
        "1 for each metric this kernel cannot provide.",
    );

    for p in &report.processes {
        write_process(
            p,
            &mut faults,
            &mut fallbacks,
            &mut vma_locked,
            [
                &mut acquisitions,
                &mut trylock_ok,
                &mut trylock_failures,
                &mut lock_failures,
                &mut contended,
                &mut remote,
            ],
            &mut downgrades,
            &mut wait,
            &mut hold,
            &mut ctx_acq,
            &mut ctx_hold,
            &mut holder,
        );
        let pid = p.pid.to_string();
        for (reason, v) in [
            ("ring_buffer_full", p.drops.events_dropped),
            ("unmatched_release", p.drops.unmatched_releases),
        ] {
            process_drops.sample(
                "",
                &[("pid", &pid), ("comm", &p.comm), ("reason", reason)],
                v,
            );
        }
    }
    let d = &report.drops;
    for (reason, v) in [
        ("ring_buffer_full", d.events_dropped),
        ("process_table_full", d.stats_full),
        ("context_table_full", d.contexts_full),
        ("unmatched_release", d.unmatched_releases),
        ("unknown_owner", d.unknown_owner),
    ] {
        drops.sample("", &[("reason", reason)], v);
    }
    for u in &report.unavailable {
        unavailable.sample("", &[("metric", &u.metric)], 1);
    }

    let mut out = String::new();
    for f in [
        &faults,
        &fallbacks,
        &vma_locked,
        &acquisitions,
        &trylock_ok,
        &trylock_failures,
        &lock_failures,
        &contended,
        &remote,
        &downgrades,
        &wait,
        &hold,
        &ctx_acq,
        &ctx_hold,
        &holder,
        &drops,
        &process_drops,
        &unavailable,
    ] {
        f.write_to(&mut out);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn write_process(
    p: &ProcessStats,
    faults: &mut Family,
    fallbacks: &mut Family,
    vma_locked: &mut Family,
    counters: [&mut Family; 6],
    downgrades: &mut Family,
    wait: &mut Family,
    hold: &mut Family,
    ctx_acq: &mut Family,
    ctx_hold: &mut Family,
    holder: &mut Family,
) {
    let pid = p.pid.to_string();
    let base = [("pid", pid.as_str()), ("comm", p.comm.as_str())];
    for kind in FaultKind::ALL {
        for (origin, counts) in [("user", &p.faults.user), ("kernel", &p.faults.kernel)] {
            let mut l = base.to_vec();
            l.push(("origin", origin));
            l.push(("kind", kind.as_str()));
            faults.sample("", &l, counts.get(kind));
        }
    }
    fallbacks.sample("", &base, p.faults.mmap_lock_fallbacks);
    vma_locked.sample("", &base, p.faults.served_without_mmap_lock());
    let [acq, try_ok, try_fail, lock_fail, cont, rem] = counters;
    for mode in [LockMode::Read, LockMode::Write] {
        let s = p.mmap_lock.mode(mode);
        let mut l = base.to_vec();
        l.push(("mode", mode.as_str()));
        acq.sample("", &l, s.acquisitions);
        try_ok.sample("", &l, s.trylock_acquisitions);
        try_fail.sample("", &l, s.trylock_failures);
        lock_fail.sample("", &l, s.lock_failures);
        cont.sample("", &l, s.contended);
        rem.sample("", &l, s.remote);
        wait.histogram(&l, &s.wait);
        hold.histogram(&l, &s.hold);
    }
    downgrades.sample("", &base, p.mmap_lock.downgrades);
    for c in &p.contexts {
        let mut l = base.to_vec();
        l.push(("context", c.context.name()));
        l.push(("mode", c.mode.as_str()));
        l.push(("remote", if c.remote { "true" } else { "false" }));
        ctx_acq.sample("", &l, c.acquisitions);
        ctx_hold.histogram(&l, &c.hold);
    }
    let held = p.write_holder.as_ref().map_or(0, |h| h.held_ns);
    holder.sample("", &base, format_seconds(held as f64 / 1e9));
}

#[cfg(test)]
mod tests {
    use mm_core::stats::{ReportKind, Source};

    use super::*;

    #[test]
    fn seconds_are_compact() {
        assert_eq!(format_seconds(1024.0 / 1e9), "1.024e-6");
        assert_eq!(format_seconds(0.0), "0e0");
        assert_eq!(format_seconds(2.5), "2.5e0");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut p = ProcessStats {
            pid: 1,
            comm: "a \"quoted\" name".into(),
            ..Default::default()
        };
        p.mmap_lock.write.acquisitions = 3;
        for v in [500, 3_000, 3_000_000] {
            p.mmap_lock.write.hold.record(v);
        }
        let mut r = Report::new(ReportKind::Final, Source::Host, "6.18");
        r.processes.push(p);
        let text = render(&r);
        let bucket = |le: &str| {
            let needle = format!(
                "mm_probe_mmap_lock_hold_seconds_bucket{{pid=\"1\",comm=\"a \\\"quoted\\\" name\",mode=\"write\",le=\"{le}\"}} "
            );
            let line = text
                .lines()
                .find(|l| l.starts_with(&needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"));
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        assert_eq!(bucket("1.024e-6"), 1); // 500 ns
        assert_eq!(bucket("4.096e-6"), 2); // + 3 us
        assert_eq!(bucket("2.097152e-3"), 2);
        assert_eq!(bucket("4.194304e-3"), 3); // + 3 ms
        assert_eq!(bucket("+Inf"), 3);
        assert!(text.contains("# TYPE mm_probe_mmap_lock_hold_seconds histogram"));
        assert_eq!(
            text.matches("# TYPE mm_probe_mmap_lock_hold_seconds ")
                .count(),
            1
        );
        assert!(text.contains("mm_probe_dropped_events_total{reason=\"ring_buffer_full\"} 0"));
    }
}
