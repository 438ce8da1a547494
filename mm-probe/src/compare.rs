//! `mm-probe compare`: one workload on the host kernel under the probe and
//! on the engine, side by side.
//!
//! The host runs first, in a child process (`mm-probe workload run
//! --gated`), measured between its `ready` and `done` lines; the engine
//! then runs the same plan with each thread making exactly as many
//! iterations as the host thread did, so that the counts are comparable
//! one for one. Rows marked as gated must agree within the tolerance (2%
//! by default); the others are shown for information (timings depend on
//! the machine, and some read acquisitions on choices the engine does not
//! model, see docs/workloads.md).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use mm_core::{
    shared_mm::FaultStrategy,
    stats::{FaultKind, LockMode, ProcessStats},
    workload::{Plan, engine::EngineRun},
};
use serde::Serialize;

use crate::{
    probe::{Probe, ProbeOptions},
    session::Session,
    spec_runner::HostRun,
};

/// The host side of a comparison.
#[derive(Clone, Debug, Serialize)]
pub struct HostSide {
    /// What the runner did.
    pub run: HostRun,
    /// What the probe measured over the loops.
    pub stats: ProcessStats,
    /// Kernel release.
    pub kernel: String,
}

/// Run `workload` (a preset name or a spec path) on the host under the
/// probe. `duration` overrides the spec's.
pub fn run_host(workload: &str, duration: Option<Duration>) -> Result<HostSide> {
    let exe = std::env::current_exe().context("cannot find the mm-probe executable")?;
    let probe = Probe::load(&ProbeOptions {
        pids: Some(Vec::new()),
        ..ProbeOptions::default()
    })
    .context("cannot load the probe (run as root, or see `mm-probe doctor`)")?;
    let mut session = Session::new(probe);
    let mut cmd = Command::new(&exe);
    cmd.args(["workload", "run", workload, "--gated"]);
    if let Some(d) = duration {
        cmd.arg("--duration")
            .arg(format!("{}ms", d.as_millis().max(1)));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut line = String::new();
    let mut expect = |want: &str, line: &mut String| -> Result<()> {
        line.clear();
        out.read_line(line)?;
        if line.trim() != want {
            bail!(
                "the host runner said {:?} instead of `{want}` (see its error above)",
                line.trim()
            );
        }
        Ok(())
    };
    if let Err(e) = expect("ready", &mut line) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    session.probe_mut().allow_pid(pid)?;
    session.reset()?;
    writeln!(stdin, "go")?;
    stdin.flush()?;
    expect("done", &mut line)?;
    let tick = session.tick()?;
    writeln!(stdin, "exit")?;
    stdin.flush()?;
    line.clear();
    out.read_line(&mut line)?;
    let status = child.wait()?;
    let run: HostRun = serde_json::from_str(line.trim())
        .with_context(|| format!("the host runner ended ({status}) without its result line"))?;
    if let Some(e) = &run.error {
        bail!("the workload failed on the host: {e}");
    }
    let mut stats = tick.interval.process(pid).cloned().unwrap_or_default();
    stats.pid = pid;
    Ok(HostSide {
        run,
        stats,
        kernel: tick.interval.kernel.clone(),
    })
}

/// Run the same work on the engine: each thread makes as many iterations
/// as its host counterpart.
pub fn run_engine(plan: &Plan, host: &HostRun, strategy: FaultStrategy) -> Result<EngineRun> {
    let iters: Vec<u64> = host.threads.iter().map(|t| t.iterations).collect();
    let plan = plan.clone().with_iterations(&iters);
    mm_core::workload::engine::run(&plan, strategy)
        .map_err(|e| anyhow::anyhow!("the workload failed on the engine: {e}"))
}

/// One row of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What is compared.
    pub name: String,
    /// Host value.
    pub host: f64,
    /// Engine values, one per strategy run.
    pub engine: Vec<f64>,
    /// Unit: "" (a count), "ns" or "%".
    pub unit: &'static str,
    /// Whether this row must agree (the acceptance rows).
    pub gated: bool,
    /// For gated rows: whether the first engine value agrees.
    pub agrees: Option<bool>,
}

/// A whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Workload name.
    pub workload: String,
    /// Kernel release of the host.
    pub kernel: String,
    /// Tolerance of gated rows, percent.
    pub tolerance_pct: f64,
    /// The host side.
    pub host: HostSide,
    /// The engine runs.
    pub engine: Vec<EngineRun>,
    /// Rows.
    pub rows: Vec<Row>,
    /// Every gated row agrees.
    pub agreement: bool,
}

/// Differences of at most this many are forgiven: the host runner's own
/// stray faults (a code page first executed, or a data page first touched,
/// during the loops; 1 to 3 per run measured on 6.18) and the fallbacks
/// they cause.
pub const SLACK: f64 = 4.0;

/// Whether two counts agree: within `tol_pct` percent of the larger, or
/// within [`SLACK`].
pub fn agrees(h: f64, e: f64, tol_pct: f64) -> bool {
    let d = (h - e).abs();
    d <= SLACK || d <= tol_pct / 100.0 * h.max(e)
}

fn pct(h: &ProcessStats) -> f64 {
    h.mmap_lock.contended_share() * 100.0
}

fn q(h: &mm_core::stats::Log2Histogram, p: f64) -> f64 {
    h.quantile(p).unwrap_or(0) as f64
}

/// Build the rows.
pub fn compare(
    workload: &str,
    host: HostSide,
    engine: Vec<EngineRun>,
    tolerance_pct: f64,
) -> Comparison {
    let mut rows = Vec::new();
    let hops = host.run.ops();
    let eops: Vec<_> = engine.iter().map(EngineRun::ops).collect();
    rows_ops(
        &mut rows,
        hops.calls() as f64,
        eops.iter().map(|o| o.calls() as f64).collect(),
        "operations (calls)",
    );
    rows_ops(
        &mut rows,
        hops.touches as f64,
        eops.iter().map(|o| o.touches as f64).collect(),
        "page touches",
    );
    let e: Vec<&ProcessStats> = engine.iter().map(|r| &r.stats.process).collect();
    let h = host.stats.clone();
    let mut row =
        |name: String, unit: &'static str, gated: bool, f: &dyn Fn(&ProcessStats) -> f64| {
            let hv = f(&h);
            let ev: Vec<f64> = e.iter().map(|p| f(p)).collect();
            let agrees =
                gated.then(|| agrees(hv, ev.first().copied().unwrap_or(0.0), tolerance_pct));
            rows.push(Row {
                name,
                host: hv,
                engine: ev,
                unit,
                gated,
                agrees,
            });
        };
    row("faults".into(), "", true, &|p| p.faults.total() as f64);
    for k in FaultKind::ALL {
        let any = h.faults.user.get(k) + e.iter().map(|p| p.faults.user.get(k)).sum::<u64>() > 0;
        if any {
            row(format!("  {}", k.as_str()), "", false, &move |p| {
                p.faults.user.get(k) as f64
            });
        }
    }
    row("faults via mmap_lock (fallbacks)".into(), "", true, &|p| {
        p.faults.mmap_lock_fallbacks as f64
    });
    row("mmap_lock write acquisitions".into(), "", true, &|p| {
        p.mmap_lock.write.acquisitions as f64
    });
    row("mmap_lock read acquisitions".into(), "", false, &|p| {
        p.mmap_lock.read.acquisitions as f64
    });
    row("  of which by faults".into(), "", true, &|p| {
        fault_reads(p) as f64
    });
    for n in context_names(&h, &e, LockMode::Read) {
        if n == "fault" {
            continue;
        }
        row(format!("  of which by {n}"), "", false, &|p| {
            p.contexts
                .iter()
                .filter(|c| c.mode == LockMode::Read && c.context.name() == n)
                .map(|c| c.acquisitions as f64)
                .sum()
        });
    }
    row("downgrades".into(), "", false, &|p| {
        p.mmap_lock.downgrades as f64
    });
    // Write holds by syscall.
    for n in context_names(&h, &e, LockMode::Write) {
        let get = |p: &ProcessStats, f: &dyn Fn(&mm_core::stats::ContextStats) -> f64| {
            p.contexts
                .iter()
                .filter(|c| c.mode == LockMode::Write && c.context.name() == n)
                .map(f)
                .sum::<f64>()
        };
        row(format!("write holds: {n}"), "", false, &|p| {
            get(p, &|c| c.acquisitions as f64)
        });
        row("  hold p99".into(), "ns", false, &|p| {
            get(p, &|c| q(&c.hold, 0.99))
        });
    }
    row("contended share".into(), "%", false, &pct);
    row("read wait p50".into(), "ns", false, &|p| {
        q(&p.mmap_lock.read.wait, 0.5)
    });
    row("read wait p99".into(), "ns", false, &|p| {
        q(&p.mmap_lock.read.wait, 0.99)
    });
    row("write wait p99".into(), "ns", false, &|p| {
        q(&p.mmap_lock.write.wait, 0.99)
    });
    row("read hold p50".into(), "ns", false, &|p| {
        q(&p.mmap_lock.read.hold, 0.5)
    });
    row("read hold p99".into(), "ns", false, &|p| {
        q(&p.mmap_lock.read.hold, 0.99)
    });
    row("write hold p50".into(), "ns", false, &|p| {
        q(&p.mmap_lock.write.hold, 0.5)
    });
    row("write hold p99".into(), "ns", false, &|p| {
        q(&p.mmap_lock.write.hold, 0.99)
    });
    let agreement = rows.iter().all(|r| r.agrees != Some(false));
    Comparison {
        workload: workload.into(),
        kernel: host.kernel.clone(),
        tolerance_pct,
        host,
        engine,
        rows,
        agreement,
    }
}

fn context_names(h: &ProcessStats, e: &[&ProcessStats], mode: LockMode) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in std::iter::once(h).chain(e.iter().copied()) {
        for c in &p.contexts {
            if c.mode == mode && !names.iter().any(|n| n == c.context.name()) {
                names.push(c.context.name().to_string());
            }
        }
    }
    names.sort();
    names
}

fn rows_ops(rows: &mut Vec<Row>, h: f64, e: Vec<f64>, name: &str) {
    rows.push(Row {
        name: name.into(),
        host: h,
        engine: e,
        unit: "",
        gated: false,
        agrees: None,
    });
}

/// Read acquisitions made by the fault path.
pub fn fault_reads(p: &ProcessStats) -> u64 {
    p.contexts
        .iter()
        .filter(|c| c.mode == LockMode::Read && c.context.name() == "fault" && !c.remote)
        .map(|c| c.acquisitions)
        .sum()
}

fn fmt_value(v: f64, unit: &str) -> String {
    let v = v + 0.0; // no "-0"
    match unit {
        "%" => format!("{v:.1}%"),
        "ns" => crate::report::format_ns(v as u64),
        _ => format!("{v:.0}"),
    }
}

fn verdict(r: &Row, tol: f64) -> String {
    match r.agrees {
        Some(true) => "ok".into(),
        Some(false) => {
            let e = r.engine.first().copied().unwrap_or(0.0);
            let d = if r.host > 0.0 {
                (e - r.host) / r.host * 100.0
            } else {
                f64::INFINITY
            };
            format!("DIFFERS {d:+.1}% (> {tol}%)")
        }
        None => {
            let e = r.engine.first().copied().unwrap_or(0.0);
            if r.host > 0.0 && e > 0.0 {
                format!("x{:.2}", e / r.host)
            } else {
                String::new()
            }
        }
    }
}

/// The comparison as a table.
pub fn table(c: &Comparison) -> String {
    use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_BORDERS_ONLY};
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let mut header = vec![Cell::new(""), Cell::new("HOST")];
    for r in &c.engine {
        header.push(Cell::new(format!("ENGINE {}", r.strategy.name())));
    }
    header.push(Cell::new("agreement"));
    t.set_header(header);
    for r in &c.rows {
        let mut cells = vec![
            Cell::new(&r.name),
            Cell::new(fmt_value(r.host, r.unit)).set_alignment(CellAlignment::Right),
        ];
        for v in &r.engine {
            cells.push(Cell::new(fmt_value(*v, r.unit)).set_alignment(CellAlignment::Right));
        }
        cells.push(Cell::new(verdict(r, c.tolerance_pct)));
        t.add_row(cells);
    }
    let h = &c.host.run;
    let secs = h.elapsed_ns as f64 / 1e9;
    let iters: Vec<String> = h
        .threads
        .iter()
        .map(|t| format!("{} {}", t.name, t.iterations))
        .collect();
    let mut s = format!(
        "workload {} on {} (host pid {}, {:.2} s; iterations: {})\n",
        c.workload,
        c.kernel,
        h.pid,
        secs,
        iters.join(", ")
    );
    for e in &c.engine {
        s.push_str(&format!(
            "engine {}: the same iterations in {:.2} s\n",
            e.strategy.name(),
            e.elapsed_ns as f64 / 1e9
        ));
    }
    s.push_str(&t.to_string());
    s.push('\n');
    let first = c.engine.first().map_or("?", |e| e.strategy.name());
    s.push_str(&if c.agreement {
        format!(
            "agreement: every gated row of ENGINE {first} is within {}% of the host\n",
            c.tolerance_pct
        )
    } else {
        format!(
            "agreement: NO: rows marked DIFFERS are more than {}% apart (docs/workloads.md explains known differences)\n",
            c.tolerance_pct
        )
    });
    s
}

/// Run a whole comparison.
pub fn run(
    workload: &str,
    strategies: &[FaultStrategy],
    duration: Option<Duration>,
    tolerance_pct: f64,
) -> Result<Comparison> {
    let (_, plan) = mm_core::workload::Spec::load(workload)?;
    let host = run_host(workload, duration)?;
    let engine = strategies
        .iter()
        .map(|s| run_engine(&plan, &host.run, *s))
        .collect::<Result<Vec<_>>>()?;
    Ok(compare(workload, host, engine, tolerance_pct))
}
