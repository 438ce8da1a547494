//! The human-readable report: a one-line-per-process summary table, then a
//! detail block for the busiest processes.

use std::fmt::Write as _;

use comfy_table::{Cell, CellAlignment, Table, presets::NOTHING};
use mm_core::stats::{
    FaultKind, LockMode, LockModeStats, Log2Histogram, ProcessStats, Report, ReportKind,
};

use super::format_ns;

/// Rendering options.
#[derive(Clone, Copy, Debug)]
pub struct TableOptions {
    /// Processes given a detail block (the summary table lists all).
    pub detail: usize,
    /// Rows in the summary table.
    pub rows: usize,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            detail: 3,
            rows: 20,
        }
    }
}

fn plain_table() -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t
}

fn right(t: &mut Table, from: usize) {
    for i in from..t.column_count() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn q(h: &Log2Histogram, quantile: f64) -> String {
    h.quantile(quantile).map_or_else(|| "-".into(), format_ns)
}

fn triple(h: &Log2Histogram) -> String {
    if h.is_empty() {
        return "-".into();
    }
    format!("{}/{}/{}", q(h, 0.5), q(h, 0.99), format_ns(h.max()))
}

/// Render a report.
pub fn render(report: &Report, opts: TableOptions) -> String {
    let mut out = String::new();
    let title = match report.kind {
        ReportKind::Interval => format!(
            "interval {} (elapsed {})",
            format_ns(report.interval_ns),
            format_ns(report.elapsed_ns)
        ),
        ReportKind::Final => format!("summary over {}", format_ns(report.elapsed_ns)),
    };
    let d = &report.drops;
    let drops = if d.events_dropped + d.aggregate_losses() + d.unmatched_releases + d.unknown_owner
        == 0
    {
        "none".to_owned()
    } else {
        format!(
            "events {} stats-full {} contexts-full {} unmatched-releases {} unknown-owner {}",
            d.events_dropped, d.stats_full, d.contexts_full, d.unmatched_releases, d.unknown_owner
        )
    };
    let _ = writeln!(
        out,
        "== mm-probe {title}  kernel {}  drops: {drops}",
        report.kernel
    );
    for u in &report.unavailable {
        let _ = writeln!(out, "   unavailable: {}: {}", u.metric, u.reason);
    }
    if report.processes.is_empty() {
        let _ = writeln!(out, "   (no mmap_lock or fault activity)");
        return out;
    }

    let mut t = plain_table();
    t.set_header(vec![
        "PID",
        "COMM",
        "FAULTS",
        "VMA-LOCK",
        "FALLBACK",
        "READ",
        "WRITE",
        "CONT%",
        "WAIT p99",
        "WR-HOLD p99",
        "WR-HOLD max",
    ]);
    for p in report.processes.iter().take(opts.rows) {
        let l = &p.mmap_lock;
        let mut wait = l.read.wait.clone();
        wait.merge(&l.write.wait);
        let comm = if p.exited {
            format!("{} (exited)", p.comm)
        } else {
            p.comm.clone()
        };
        t.add_row(vec![
            Cell::new(p.pid),
            Cell::new(comm),
            Cell::new(p.faults.total()),
            Cell::new(p.faults.served_without_mmap_lock()),
            Cell::new(p.faults.mmap_lock_fallbacks),
            Cell::new(l.read.acquisitions),
            Cell::new(l.write.acquisitions),
            Cell::new(pct(l.contended_share())),
            Cell::new(q(&wait, 0.99)),
            Cell::new(q(&l.write.hold, 0.99)),
            Cell::new(if l.write.hold.is_empty() {
                "-".into()
            } else {
                format_ns(l.write.hold.max())
            }),
        ]);
    }
    right(&mut t, 2);
    let _ = writeln!(out, "{t}");
    if report.processes.len() > opts.rows {
        let _ = writeln!(
            out,
            "   ... and {} more processes",
            report.processes.len() - opts.rows
        );
    }
    for p in report.processes.iter().take(opts.detail) {
        out.push_str(&detail(p));
    }
    out
}

/// The detail block of one process.
pub fn detail(p: &ProcessStats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n-- pid {} ({}){}",
        p.pid,
        p.comm,
        if p.exited { ", exited" } else { "" }
    );
    let f = &p.faults;
    let kinds: Vec<String> = FaultKind::ALL
        .iter()
        .filter(|k| f.user.get(**k) + f.kernel.get(**k) > 0)
        .map(|k| format!("{} {}", k.as_str(), f.user.get(*k) + f.kernel.get(*k)))
        .collect();
    let _ = writeln!(
        out,
        "   faults {} (user {}, kernel {}){}{}",
        f.total(),
        f.user.total(),
        f.kernel.total(),
        if kinds.is_empty() { "" } else { ": " },
        kinds.join(", ")
    );
    let _ = writeln!(
        out,
        "   user faults served under a per-VMA lock {}, fell back to mmap_lock {}",
        f.served_without_mmap_lock(),
        f.mmap_lock_fallbacks
    );

    let mut t = plain_table();
    t.set_header(vec![
        "mmap_lock",
        "acquired",
        "trylock",
        "try-failed",
        "contended",
        "remote",
        "wait p50/p99/max",
        "hold p50/p99/max",
    ]);
    let row = |mode: &str, s: &LockModeStats| {
        vec![
            Cell::new(mode),
            Cell::new(s.acquisitions),
            Cell::new(s.trylock_acquisitions),
            Cell::new(s.trylock_failures),
            Cell::new(format!("{} ({})", s.contended, pct(s.contended_share()))),
            Cell::new(s.remote),
            Cell::new(triple(&s.wait)),
            Cell::new(triple(&s.hold)),
        ]
    };
    t.add_row(row("read", &p.mmap_lock.read));
    t.add_row(row("write", &p.mmap_lock.write));
    right(&mut t, 1);
    for line in t.to_string().lines() {
        let _ = writeln!(out, "   {line}");
    }
    if p.mmap_lock.downgrades > 0 {
        let _ = writeln!(
            out,
            "   write locks downgraded to read: {}",
            p.mmap_lock.downgrades
        );
    }

    if !p.contexts.is_empty() {
        let mut t = plain_table();
        t.set_header(vec![
            "by context",
            "mode",
            "acquired",
            "contended",
            "wait p99",
            "hold p50/p99/max",
            "hold total",
        ]);
        let mut rows: Vec<_> = p.contexts.iter().collect();
        // Writers first, then by total hold.
        rows.sort_by(|a, b| {
            (b.mode == LockMode::Write, b.hold.sum())
                .cmp(&(a.mode == LockMode::Write, a.hold.sum()))
        });
        for c in rows {
            let name = if c.remote {
                format!("{} (remote)", c.context.name())
            } else {
                c.context.name().to_owned()
            };
            t.add_row(vec![
                Cell::new(name),
                Cell::new(c.mode.as_str()),
                Cell::new(c.acquisitions),
                Cell::new(c.contended),
                Cell::new(q(&c.wait, 0.99)),
                Cell::new(triple(&c.hold)),
                Cell::new(format_ns(c.hold.sum())),
            ]);
        }
        right(&mut t, 2);
        for line in t.to_string().lines() {
            let _ = writeln!(out, "   {line}");
        }
    }
    if p.drops != mm_core::stats::ProcessDrops::default() {
        let _ = writeln!(
            out,
            "   drops: {} event records lost, {} releases without a seen acquisition",
            p.drops.events_dropped, p.drops.unmatched_releases
        );
    }
    if let Some(h) = &p.write_holder {
        let _ = writeln!(
            out,
            "   write lock held now by tid {} (pid {}) in {} for {}",
            h.tid,
            h.pid,
            h.context.name(),
            format_ns(h.held_ns)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use mm_core::stats::{ContextStats, LockContext, Source};

    use super::*;

    fn sample() -> Report {
        let mut p = ProcessStats {
            pid: 4242,
            comm: "faulter".into(),
            ..Default::default()
        };
        p.faults.user.add(FaultKind::WriteNotPresent, 1000);
        p.faults.mmap_lock_fallbacks = 10;
        p.mmap_lock.read.acquisitions = 10;
        p.mmap_lock.read.contended = 5;
        p.mmap_lock.read.wait.record(3_000_000);
        p.mmap_lock.write.acquisitions = 10;
        p.mmap_lock.write.hold.record(2_500_000);
        let mut hold = Log2Histogram::new();
        hold.record(2_500_000);
        p.contexts.push(ContextStats {
            context: LockContext::Syscall {
                nr: 11,
                name: "munmap".into(),
            },
            mode: LockMode::Write,
            remote: false,
            acquisitions: 10,
            contended: 0,
            wait: Log2Histogram::new(),
            hold,
        });
        let mut r = Report::new(ReportKind::Interval, Source::Host, "6.18.0");
        r.interval_ns = 1_000_000_000;
        r.elapsed_ns = 3_000_000_000;
        r.processes.push(p);
        r
    }

    #[test]
    fn renders_rows_and_detail() {
        let text = render(&sample(), TableOptions::default());
        assert!(text.contains("interval 1.00s (elapsed 3.00s)"), "{text}");
        assert!(text.contains("drops: none"), "{text}");
        let row = text.lines().find(|l| l.contains("4242")).unwrap();
        for cell in ["faulter", "1000", "990", "10", "25.0%", "2.50ms"] {
            assert!(row.contains(cell), "row lacks {cell}: {row}");
        }
        assert!(text.contains("fell back to mmap_lock 10"), "{text}");
        let munmap = text.lines().find(|l| l.contains("munmap")).unwrap();
        assert!(
            munmap.contains("write") && munmap.contains("2.50ms"),
            "{munmap}"
        );
    }

    #[test]
    fn empty_report_says_so() {
        let mut r = sample();
        r.processes.clear();
        assert!(render(&r, TableOptions::default()).contains("no mmap_lock or fault activity"));
    }
}
