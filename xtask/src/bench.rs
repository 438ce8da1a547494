//! `cargo xtask bench-overhead`: the cost of the probe on a page-fault-heavy
//! workload (each of 2 threads maps 128 MiB, writes every page, unmaps, in
//! a loop), against no tracing and against bpftrace running an equivalent
//! script (wait and hold histograms from the three mmap_lock tracepoints
//! plus a page-fault count per process). Runs are interleaved, round by
//! round, in one session, so that drift on a noisy machine hits every mode.
//!
//! It also checks event loss: the probe's count of the workload's
//! write-not-present faults must cover every page the workload touched.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{exec::is_root, install::build_release, toolchain, workspace_root};

#[derive(Args)]
pub struct Options {
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds (each round runs every mode once).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Workload threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// MiB each thread maps per iteration.
    #[arg(long, default_value_t = 128)]
    pub size_mib: u32,
    /// Leave bpftrace out (it is installed from Debian's packages otherwise).
    #[arg(long)]
    pub no_bpftrace: bool,
}

const BPFTRACE_SCRIPT: &str = r#"
tracepoint:mmap_lock:mmap_lock_start_locking { @start[tid] = nsecs; }
tracepoint:mmap_lock:mmap_lock_acquire_returned /@start[tid]/ {
  @wait[args->write] = hist(nsecs - @start[tid]); delete(@start[tid]); @acq[tid] = nsecs;
}
tracepoint:mmap_lock:mmap_lock_acquire_returned /!@start[tid]/ { @acq[tid] = nsecs; }
tracepoint:mmap_lock:mmap_lock_released /@acq[tid]/ {
  @hold[args->write] = hist(nsecs - @acq[tid]); delete(@acq[tid]);
}
tracepoint:exceptions:page_fault_user { @faults[pid] = count(); }
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    None,
    ProbeAll,
    ProbeRun,
    Bpftrace,
}

impl Mode {
    const fn name(self) -> &'static str {
        match self {
            Self::None => "no tracing",
            Self::ProbeAll => "mm-probe attach (all processes)",
            Self::ProbeRun => "mm-probe run (pid filter)",
            Self::Bpftrace => "bpftrace (equivalent script)",
        }
    }
}

struct Sample {
    /// Runs with the same pair id ran back to back (a traced mode and its
    /// own untraced run).
    pair: u32,
    mode: Mode,
    pages_per_sec: f64,
    /// CPU ns (user + system) the workload spent per page.
    cpu_ns_per_page: f64,
    /// Cycles and instructions (user + kernel) per page, from perf stat:
    /// counted only while the workload runs, so time stolen by other
    /// guests does not show; the most repeatable measure on a shared VM.
    cycles_per_page: f64,
    instructions_per_page: f64,
    pages_touched: u64,
    /// Write-not-present faults the tracer counted for the workload.
    faults_counted: Option<u64>,
    /// Aggregate losses the probe reported.
    probe_losses: Option<u64>,
}

/// Spawn with stderr piped and wait until a line contains `needle`; the
/// rest of stderr is drained by a thread.
fn spawn_until_ready(cmd: &mut Command, needle: &'static str) -> Result<Child> {
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(needle) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        bail!("{cmd:?} did not become ready");
    }
    Ok(child)
}

fn stdout_until_ready(
    cmd: &mut Command,
    needle: &'static str,
) -> Result<(Child, std::sync::mpsc::Receiver<String>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(needle) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = out_tx.send(all);
    });
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        bail!("{cmd:?} did not become ready");
    }
    Ok((child, out_rx))
}

fn interrupt_and_wait(child: &mut Child) -> Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc_kill(child.id() as i32, 2) };
    child.wait()?;
    Ok(())
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn json_field(line: &str, key: &str) -> Option<u64> {
    let i = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    line[i..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

struct Workload {
    pid: u64,
    pages: u64,
    elapsed_ns: u64,
    cpu_ns: u64,
}

fn read_workload(path: &Path) -> Result<Workload> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the workload left no result in {}", path.display()))?;
    Ok(Workload {
        pid: json_field(&text, "pid").context("no pid")?,
        pages: json_field(&text, "pages_touched").context("no pages_touched")?,
        elapsed_ns: json_field(&text, "elapsed_ns").context("no elapsed_ns")?,
        cpu_ns: json_field(&text, "cpu_ns").context("no cpu_ns")?,
    })
}

/// The workload's write-not-present user faults in the probe's final report.
fn probe_faults(report_path: &Path, pid: u64) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(report_path)?;
    let last = text
        .lines()
        .rfind(|l| l.contains("\"kind\":\"final\""))
        .context("no final report")?;
    let losses = json_field(last, "stats_full").unwrap_or(0)
        + json_field(last, "contexts_full").unwrap_or(0);
    let at = last
        .find(&format!("\"pid\":{pid},"))
        .context("the workload is missing from the probe's report")?;
    let faults = json_field(&last[at..], "write_not_present").context("no fault counts")?;
    Ok((faults, losses))
}

fn bpftrace_faults(output: &str, pid: u64) -> Option<u64> {
    let key = format!("@faults[{pid}]: ");
    output
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

fn run_once(o: &Options, mode: Mode, probe: &Path, dir: &Path, n: usize) -> Result<Sample> {
    let result = dir.join(format!("workload-{n}.json"));
    let report = dir.join(format!("probe-{n}.jsonl"));
    let perf_out = dir.join(format!("perf-{n}.csv"));
    // perf stat -- mm-probe workload ...: perf counts only the workload.
    let workload = |c: &mut Command| {
        c.args(["stat", "-x,", "-e", "cycles,instructions", "-o"])
            .arg(&perf_out)
            .arg("--")
            .arg(probe);
        c.args(["workload", "fault-loop", "--threads"])
            .arg(o.threads.to_string())
            .arg("--size-mib")
            .arg(o.size_mib.to_string())
            .arg("--duration")
            .arg(format!("{}s", o.seconds))
            .arg("--output")
            .arg(&result);
    };
    let mut faults_counted = None;
    let mut probe_losses = None;
    match mode {
        Mode::None => {
            let mut c = Command::new("perf");
            workload(&mut c);
            crate::exec::exec(&mut c)?;
        }
        Mode::ProbeAll => {
            let mut tracer = spawn_until_ready(
                Command::new(probe)
                    .args(["attach", "--interval", "1s", "--format", "json", "--output"])
                    .arg(&report),
                "attached to",
            )?;
            let mut c = Command::new("perf");
            workload(&mut c);
            crate::exec::exec(&mut c)?;
            interrupt_and_wait(&mut tracer)?;
            let w = read_workload(&result)?;
            let (f, l) = probe_faults(&report, w.pid)?;
            faults_counted = Some(f);
            probe_losses = Some(l);
        }
        Mode::ProbeRun => {
            let mut c = Command::new(probe);
            c.args(["run", "--interval", "1s", "--format", "json", "--output"])
                .arg(&report)
                .args(["--", "perf"]);
            workload(&mut c);
            crate::exec::exec(&mut c)?;
            let w = read_workload(&result)?;
            let (f, l) = probe_faults(&report, w.pid)?;
            faults_counted = Some(f);
            probe_losses = Some(l);
        }
        Mode::Bpftrace => {
            let (mut tracer, output) = stdout_until_ready(
                Command::new("bpftrace").arg("-e").arg(BPFTRACE_SCRIPT),
                "Attaching",
            )?;
            // bpftrace prints "Attaching N probes..." before attaching the
            // last ones; give it a moment.
            std::thread::sleep(Duration::from_millis(500));
            let mut c = Command::new("perf");
            workload(&mut c);
            crate::exec::exec(&mut c)?;
            interrupt_and_wait(&mut tracer)?;
            let text = output
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_default();
            let w = read_workload(&result)?;
            faults_counted = bpftrace_faults(&text, w.pid);
        }
    }
    let w = read_workload(&result)?;
    let (cycles, instructions) = read_perf(&perf_out)?;
    let pages = w.pages.max(1) as f64;
    Ok(Sample {
        pair: 0,
        mode,
        cycles_per_page: cycles / pages,
        instructions_per_page: instructions / pages,
        pages_per_sec: w.pages as f64 / (w.elapsed_ns as f64 / 1e9),
        cpu_ns_per_page: w.cpu_ns as f64 / w.pages.max(1) as f64,
        pages_touched: w.pages,
        faults_counted,
        probe_losses,
    })
}

/// (cycles, instructions) from `perf stat -x,` output.
fn read_perf(path: &Path) -> Result<(f64, f64)> {
    let text = std::fs::read_to_string(path)?;
    let field = |event: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.split(',').nth(2).is_some_and(|e| e.starts_with(event)))
            .and_then(|l| l.split(',').next()?.parse().ok())
            .with_context(|| format!("perf counted no {event} (is the PMU available?): {text}"))
    };
    Ok((field("cycles")?, field("instructions")?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(o: Options) -> Result<()> {
    if !is_root() {
        bail!(
            "the overhead benchmark loads eBPF programs: run it as root (sudo -E cargo xtask bench-overhead)"
        );
    }
    toolchain::ensure_debian_packages(&[("perf", "linux-perf")])?;
    if !o.no_bpftrace {
        toolchain::ensure_debian_packages(&[("bpftrace", "bpftrace")])?;
        // bpftrace's classic tracepoints need tracefs.
        if !Path::new("/sys/kernel/tracing/events").exists() {
            crate::exec::exec(Command::new("mount").args([
                "-t",
                "tracefs",
                "nodev",
                "/sys/kernel/tracing",
            ]))?;
        }
    }
    let probe = build_release()?;
    let dir: PathBuf = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut modes = vec![Mode::None, Mode::ProbeAll, Mode::ProbeRun];
    if !o.no_bpftrace {
        modes.push(Mode::Bpftrace);
    }
    let mut samples = Vec::new();
    let mut n = 0;
    let mut pair = 0;
    let traced: Vec<Mode> = modes.iter().copied().filter(|&m| m != Mode::None).collect();
    for round in 0..o.rounds {
        // Rotate the order of the traced modes, and give each its own
        // untraced run right before or after it (alternating), so that each
        // comparison is between two runs seconds apart.
        let k = round as usize % traced.len();
        let order: Vec<Mode> = traced[k..].iter().chain(&traced[..k]).copied().collect();
        for (j, mode) in order.into_iter().enumerate() {
            pair += 1;
            let runs = if (round as usize + j).is_multiple_of(2) {
                [Mode::None, mode]
            } else {
                [mode, Mode::None]
            };
            for m in runs {
                n += 1;
                let mut s = run_once(&o, m, &probe, &dir, n)?;
                s.pair = pair;
                eprintln!(
                    "round {} {:<34} {:>10.0} pages/s {:>7.1} cpu-ns/page {:>6.0} cycles/page  touched {:>10}  counted {}",
                    round + 1,
                    m.name(),
                    s.pages_per_sec,
                    s.cpu_ns_per_page,
                    s.cycles_per_page,
                    s.pages_touched,
                    s.faults_counted
                        .map_or_else(|| "-".into(), |f| f.to_string())
                );
                samples.push(s);
            }
        }
    }

    let med = |m: Mode, f: fn(&Sample) -> f64| {
        median(samples.iter().filter(|s| s.mode == m).map(f).collect())
    };
    let tput = |s: &Sample| s.pages_per_sec;
    let cpu = |s: &Sample| s.cpu_ns_per_page;
    let cyc = |s: &Sample| s.cycles_per_page;
    let ins = |s: &Sample| s.instructions_per_page;
    let (base_tput, base_cpu) = (med(Mode::None, tput), med(Mode::None, cpu));
    let (base_cyc, base_ins) = (med(Mode::None, cyc), med(Mode::None, ins));
    println!(
        "\nprobe overhead: {} threads x {} MiB map/touch/unmap loop, {} rounds x {}s, medians",
        o.threads, o.size_mib, o.rounds, o.seconds
    );
    println!(
        "{:<34} {:>10} {:>9} {:>12} {:>8} {:>11} {:>8} {:>11} {:>8}",
        "mode",
        "pages/s",
        "slowdown",
        "cpu-ns/page",
        "cost",
        "cycles/page",
        "cost",
        "instr/page",
        "cost"
    );
    let mut cost = std::collections::BTreeMap::new();
    for &m in &modes {
        let (t, c, y, i) = (med(m, tput), med(m, cpu), med(m, cyc), med(m, ins));
        let pct = |v: f64, base: f64| (v / base - 1.0) * 100.0;
        let row = (
            (1.0 - t / base_tput) * 100.0,
            pct(c, base_cpu),
            pct(y, base_cyc),
            pct(i, base_ins),
        );
        cost.insert(m.name(), row);
        println!(
            "{:<34} {:>10.0} {:>8.2}% {:>12.1} {:>7.2}% {:>11.0} {:>7.2}% {:>11.0} {:>7.2}%",
            m.name(),
            t,
            row.0,
            c,
            row.1,
            y,
            row.2,
            i,
            row.3
        );
    }
    // Paired: each run against its own untraced run, seconds apart, which
    // cancels the drift of a shared machine.
    let paired = |m: Mode, f: fn(&Sample) -> f64| {
        let ratios: Vec<f64> = samples
            .iter()
            .filter(|s| s.mode == m)
            .filter_map(|s| {
                let base = samples
                    .iter()
                    .find(|b| b.mode == Mode::None && b.pair == s.pair)?;
                Some(f(s) / f(base))
            })
            .collect();
        median(ratios)
    };
    println!("\npaired (median over rounds of run / its adjacent untraced run):");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "mode", "slowdown", "cycles", "instr"
    );
    for &m in modes.iter().filter(|&&m| m != Mode::None) {
        println!(
            "{:<34} {:>9.2}% {:>9.2}% {:>9.2}%",
            m.name(),
            (1.0 - paired(m, tput)) * 100.0,
            (paired(m, cyc) - 1.0) * 100.0,
            (paired(m, ins) - 1.0) * 100.0
        );
    }
    if !o.no_bpftrace {
        let p = cost[Mode::ProbeAll.name()];
        let b = cost[Mode::Bpftrace.name()];
        println!(
            "mm-probe (all processes) / bpftrace cost ratio: throughput {:.2}, cpu time {:.2}, \
             cycles {:.2}, instructions {:.2}",
            p.0 / b.0,
            p.1 / b.1,
            p.2 / b.2,
            p.3 / b.3
        );
    }
    let mut missed = 0u64;
    let mut losses = 0u64;
    for s in samples
        .iter()
        .filter(|s| matches!(s.mode, Mode::ProbeAll | Mode::ProbeRun))
    {
        missed += s
            .pages_touched
            .saturating_sub(s.faults_counted.unwrap_or(0));
        losses += s.probe_losses.unwrap_or(0);
    }
    println!(
        "event loss (aggregate mode): {missed} touched pages without a counted fault, \
         {losses} aggregate losses reported, over {} probe runs",
        samples
            .iter()
            .filter(|s| matches!(s.mode, Mode::ProbeAll | Mode::ProbeRun))
            .count()
    );
    if missed > 0 || losses > 0 {
        bail!("the probe lost events");
    }
    Ok(())
}
