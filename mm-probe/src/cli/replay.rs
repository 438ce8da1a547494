//! `mm-probe replay`: an op trace on the engine, under one fault strategy
//! or all three: what this program's mmap_lock would have looked like.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use mm_core::{
    replay::{ReplayOptions, ReplayReport, replay, replay_with_critical_path},
    trace,
};
use serde::Serialize;

use super::{Format, Strategies, parse_strategies};
use crate::report::format_ns;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    sudo mm-probe record --out app.trace -- ./app\n  \
    mm-probe replay app.trace --strategy all\n  \
    mm-probe replay app.trace --speed max --maps\n\n\
    The trace format is in docs/trace-format.md.")]
pub struct ReplayArgs {
    /// The trace (from `mm-probe record`).
    #[arg(value_name = "FILE")]
    trace: PathBuf,
    /// Fault strategy: classic, speculative, per-vma, or all.
    #[arg(long, default_value = "all", value_parser = parse_strategies)]
    strategy: Strategies,
    /// Recorded time per replayed time: 1 keeps each thread's gaps, 10
    /// replays ten times faster, `max` ignores the gaps (order only).
    #[arg(long, default_value = "1", value_parser = parse_speed)]
    speed: Speed,
    /// Also print the final /proc/PID/maps and every call's recorded and
    /// replayed result.
    #[arg(long)]
    maps: bool,
    /// Also time each record and report the critical path of the
    /// replay's ordering constraints (a model: the longest chain of
    /// records that wait for one another, each costing its measured time;
    /// JSON field `critical_path`). The timing slows the replay a little.
    #[arg(long)]
    critical_path: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// `--speed`.
#[derive(Clone, Copy, Debug)]
pub struct Speed(Option<f64>);

fn parse_speed(s: &str) -> Result<Speed, String> {
    if s == "max" {
        return Ok(Speed(None));
    }
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Speed(Some(v))),
        _ => Err(format!("`{s}`: a positive number or `max`")),
    }
}

/// The JSON report (docs/json-report.md).
#[derive(Serialize)]
struct JsonOut<'a> {
    comm: &'a str,
    drops: u64,
    pid: u32,
    read_ns: u64,
    replays: &'a [ReplayReport],
    trace: &'a std::path::Path,
}

pub fn run(a: &ReplayArgs) -> Result<i32> {
    let started = std::time::Instant::now();
    let bytes =
        std::fs::read(&a.trace).with_context(|| format!("cannot open {}", a.trace.display()))?;
    let t =
        trace::parse_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", a.trace.display()))?;
    drop(bytes);
    let read_ns = started.elapsed().as_nanos() as u64;
    let reports: Vec<ReplayReport> = a
        .strategy
        .0
        .iter()
        .map(|s| {
            let opts = ReplayOptions {
                strategy: *s,
                speed: a.speed.0,
            };
            if a.critical_path {
                replay_with_critical_path(&t, opts)
            } else {
                replay(&t, opts)
            }
        })
        .collect();
    match a.format {
        Format::Json => {
            // Written as it is serialized (a report holds every call's
            // results: building a JSON value first took as long as a
            // fifth of a replay).
            let out = JsonOut {
                comm: &t.header.comm,
                drops: t.drops,
                pid: t.header.pid,
                read_ns,
                replays: &reports,
                trace: &a.trace,
            };
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            serde_json::to_writer(&mut w, &out)?;
            writeln!(w)?;
            w.flush()?;
        }
        Format::Table => print!("{}", table(&t, &reports, a.maps, read_ns)),
    }
    Ok(0)
}

fn table(t: &trace::Trace, reports: &[ReplayReport], maps: bool, read_ns: u64) -> String {
    use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_BORDERS_ONLY};
    let mut s = format!(
        "trace of pid {} ({}) on {}: {} records over {}, {} events lost (read in {})\n",
        t.header.pid,
        t.header.comm,
        t.header.kernel,
        t.records.len(),
        format_ns(t.records.last().map_or(0, |r| r.t_ns)),
        t.drops,
        format_ns(read_ns)
    );
    if t.drops > 0 {
        s.push_str("warning: the recorder lost events; the replay lacks them\n");
    }
    let mut tb = Table::new();
    tb.load_preset(UTF8_BORDERS_ONLY);
    let mut head = vec![Cell::new("")];
    head.extend(reports.iter().map(|r| Cell::new(r.strategy.name())));
    tb.set_header(head);
    type Get = dyn Fn(&ReplayReport) -> String;
    let mut rows: Vec<(&str, Box<Get>)> = vec![
        ("replay time", Box::new(|r| format_ns(r.elapsed_ns))),
        (
            "  recorded time / replay time",
            Box::new(|r| format!("{:.1}x", r.recorded_ns as f64 / r.elapsed_ns.max(1) as f64)),
        ),
        ("system calls", Box::new(|r| r.syscalls.to_string())),
        (
            "  results differing from the host",
            Box::new(|r| r.mismatches().count().to_string()),
        ),
        (
            "  skipped (no engine form)",
            Box::new(|r| r.skipped.to_string()),
        ),
        ("faults replayed", Box::new(|r| r.faults.to_string())),
        (
            "  engine faults",
            Box::new(|r| r.stats.process.faults.total().to_string()),
        ),
        (
            "  via mmap_lock",
            Box::new(|r| r.stats.process.faults.mmap_lock_fallbacks.to_string()),
        ),
        ("  ending in SIGSEGV", Box::new(|r| r.segv.to_string())),
        (
            "mmap_lock read acquisitions",
            Box::new(|r| r.stats.process.mmap_lock.read.acquisitions.to_string()),
        ),
        (
            "mmap_lock write acquisitions",
            Box::new(|r| r.stats.process.mmap_lock.write.acquisitions.to_string()),
        ),
        (
            "contended share",
            Box::new(|r| {
                format!(
                    "{:.1}%",
                    r.stats.process.mmap_lock.contended_share() * 100.0
                )
            }),
        ),
        (
            "read wait p99",
            Box::new(|r| {
                format_ns(
                    r.stats
                        .process
                        .mmap_lock
                        .read
                        .wait
                        .quantile(0.99)
                        .unwrap_or(0),
                )
            }),
        ),
        (
            "write wait p99",
            Box::new(|r| {
                format_ns(
                    r.stats
                        .process
                        .mmap_lock
                        .write
                        .wait
                        .quantile(0.99)
                        .unwrap_or(0),
                )
            }),
        ),
        (
            "write hold p99",
            Box::new(|r| {
                format_ns(
                    r.stats
                        .process
                        .mmap_lock
                        .write
                        .hold
                        .quantile(0.99)
                        .unwrap_or(0),
                )
            }),
        ),
    ];
    if reports.iter().any(|r| r.critical_path.is_some()) {
        let cp = |r: &ReplayReport, f: fn(&mm_core::replay::CriticalPath) -> u64| {
            r.critical_path
                .as_ref()
                .map_or(String::new(), |c| format_ns(f(c)))
        };
        let ratio = |r: &ReplayReport, f: fn(&mm_core::replay::CriticalPath) -> u64| {
            r.critical_path.as_ref().map_or(String::new(), |c| {
                format!("{:.1}x", r.recorded_ns as f64 / f(c).max(1) as f64)
            })
        };
        type Field = fn(&mm_core::replay::CriticalPath) -> u64;
        let figures: [(&str, Field, bool); 5] = [
            ("critical path (model, measured costs)", |c| c.path_ns, true),
            (
                "critical path (model, mean cost per kind)",
                |c| c.path_mean_ns,
                true,
            ),
            (
                "critical path (model, median cost per kind)",
                |c| c.path_median_ns,
                true,
            ),
            ("work (records' costs added up)", |c| c.work_ns, false),
            ("work (median cost per kind)", |c| c.work_median_ns, false),
        ];
        for (name, f, with_ratio) in figures {
            rows.push((name, Box::new(move |r| cp(r, f))));
            if with_ratio {
                rows.push((
                    "  recorded time / critical path",
                    Box::new(move |r| ratio(r, f)),
                ));
            }
        }
    }
    for (name, get) in rows {
        let mut cells = vec![Cell::new(name)];
        cells.extend(
            reports
                .iter()
                .map(|r| Cell::new(get(r)).set_alignment(CellAlignment::Right)),
        );
        tb.add_row(cells);
    }
    s.push_str(&tb.to_string());
    s.push('\n');
    if let Some(r) = reports.first() {
        for m in r.mismatches().take(20) {
            s.push_str(&format!(
                "differs: record {} (tid {}): {}: host {:?}, engine {:?}\n",
                m.record + 1,
                m.tid,
                m.op,
                m.recorded,
                m.replayed
            ));
        }
        if maps {
            s.push_str(&format!("\ncalls ({}):\n", r.strategy.name()));
            for c in &r.calls {
                s.push_str(&format!(
                    "record {} tid {}: {} = host {} engine {}{}\n",
                    c.record + 1,
                    c.tid,
                    c.op,
                    outcome(&c.recorded),
                    outcome(&c.replayed),
                    if c.matches() { "" } else { "  DIFFERS" }
                ));
            }
            s.push_str(&format!(
                "\n/proc/PID/maps ({}):\n{}",
                r.strategy.name(),
                r.maps
            ));
        }
    }
    s
}

fn outcome(o: &mm_core::op::Outcome) -> String {
    match o {
        mm_core::op::Outcome::Ok(v) if *v >= 4096 => format!("{v:#x}"),
        mm_core::op::Outcome::Ok(v) => v.to_string(),
        mm_core::op::Outcome::Err(e) => format!("-{}", e.name()),
        o => format!("{o:?}"),
    }
}
