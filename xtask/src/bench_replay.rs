//! `cargo xtask bench-replay`: how much faster than it was recorded an op
//! trace replays on the engine. As root it builds the release mm-probe
//! (with its eBPF object), records the fault-vs-munmap preset with
//! `mm-probe record` (long enough for a million records or more), then
//! replays the trace with `--speed max` under each fault strategy a few
//! times and prints, per strategy, the median replay time (the engine's
//! run, from the report) and the median time of the whole command
//! (reading and parsing the trace included), each with its ratio to the
//! recorded span. With `--trace FILE` it replays that trace instead and
//! needs no root.
//!
//! Then, per strategy, one more replay with `--critical-path` (timing
//! every record, so not among the timed rounds) gives a model of how fast
//! the replay could go: the longest chain of records that wait for one
//! another (the replay's ordering rules), each record costing its time
//! measured in that replay, or the mean of its kind; and the work (all
//! the records' costs), which bounds the replay from below at work / CPUs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build_ebpf,
    exec::{exec, is_root, output},
    install, workspace_root,
};

#[derive(Args)]
pub struct Options {
    /// Replay this trace instead of recording one (no root needed).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// How long to run the recorded workload.
    #[arg(long, default_value = "3s")]
    pub duration: String,
    /// Replays per strategy (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

const STRATEGIES: [&str; 3] = ["classic", "speculative", "per-vma"];

/// The requirement: a trace of at least this many records...
const MIN_RECORDS: u64 = 1_000_000;
/// ...replays at least this many times faster than it was recorded.
const TARGET_RATIO: f64 = 10.0;

/// Build the release mm-probe (not the rest of the workspace); returns
/// its path.
fn build_probe(with_ebpf: bool) -> Result<PathBuf> {
    if with_ebpf {
        build_ebpf::run(build_ebpf::Options::default())?;
    }
    install::build_packages(&["mm-probe"])?;
    Ok(install::release_bin("mm-probe"))
}

/// One replay: (engine replay ns, read ns, whole command ns, recorded
/// span ns, records, calls differing, accesses ending in SIGSEGV).
struct Run {
    replay_ns: u64,
    read_ns: u64,
    command_ns: u64,
    recorded_ns: u64,
    records: u64,
    differing: usize,
    segv: u64,
}

fn replay_once(probe: &Path, trace: &Path, strategy: &str) -> Result<Run> {
    let t = Instant::now();
    let out = output(Command::new(probe).arg("replay").arg(trace).args([
        "--speed",
        "max",
        "--strategy",
        strategy,
        "--format",
        "json",
    ]))?;
    let command_ns = t.elapsed().as_nanos() as u64;
    let v: serde_json::Value =
        serde_json::from_str(&out).context("mm-probe replay printed no JSON report")?;
    let r = &v["replays"][0];
    let num = |x: &serde_json::Value, what: &str| {
        x.as_u64()
            .with_context(|| format!("the replay report has no {what}"))
    };
    let differing = r["calls"].as_array().map_or(0, |calls| {
        calls
            .iter()
            .filter(|c| c["recorded"] != c["replayed"])
            .count()
    });
    Ok(Run {
        replay_ns: num(&r["elapsed_ns"], "elapsed_ns")?,
        read_ns: num(&v["read_ns"], "read_ns")?,
        command_ns,
        recorded_ns: num(&r["recorded_ns"], "recorded_ns")?,
        records: num(&r["records"], "records")?,
        differing,
        segv: num(&r["segv"], "segv")?,
    })
}

/// A `--critical-path` replay's model, ns.
struct Model {
    /// The path with per-record costs, with per-kind mean costs, with
    /// per-kind median costs.
    path: u64,
    path_mean: u64,
    path_median: u64,
    /// The work with per-record costs, with per-kind median costs.
    work: u64,
    work_median: u64,
}

fn critical_path_once(probe: &Path, trace: &Path, strategy: &str) -> Result<Model> {
    let out = output(Command::new(probe).arg("replay").arg(trace).args([
        "--speed",
        "max",
        "--strategy",
        strategy,
        "--critical-path",
        "--format",
        "json",
    ]))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).context("mm-probe replay printed no JSON report")?;
    let cp = &v["replays"][0]["critical_path"];
    let num = |what: &str| {
        cp[what]
            .as_u64()
            .with_context(|| format!("the replay report has no critical_path.{what}"))
    };
    Ok(Model {
        path: num("path_ns")?,
        path_mean: num("path_mean_ns")?,
        path_median: num("path_median_ns")?,
        work: num("work_ns")?,
        work_median: num("work_median_ns")?,
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

pub fn run(o: Options) -> Result<()> {
    if o.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let (probe, trace) = match &o.trace {
        Some(t) => (build_probe(false)?, t.clone()),
        None => {
            if !is_root() {
                bail!(
                    "recording a trace loads eBPF programs: run as root \
                     (sudo -E cargo xtask bench-replay), or replay an existing trace \
                     with --trace FILE"
                );
            }
            let probe = build_probe(true)?;
            let dir = workspace_root().join("target/bench");
            std::fs::create_dir_all(&dir)?;
            let trace = dir.join("replay.trace");
            eprintln!(
                "xtask: recording fault-vs-munmap for {} into {}",
                o.duration,
                trace.display()
            );
            exec(
                Command::new(&probe)
                    .arg("record")
                    .arg("--out")
                    .arg(&trace)
                    .arg("--")
                    .arg(&probe)
                    .args(["workload", "run", "fault-vs-munmap", "--duration"])
                    .arg(&o.duration),
            )?;
            (probe, trace)
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "replay benchmark: {} on {cpus} CPUs, median of {} replays per strategy, taken in turn (--speed max)",
        trace.display(),
        o.rounds
    );
    let mut worst: Option<f64> = None;
    let mut meeting: Vec<String> = Vec::new();
    let mut first = true;
    let mut recorded_span = 0;
    // Round-robin over the strategies, so that a change in the machine's
    // speed during the benchmark touches them alike.
    let mut all: Vec<Vec<Run>> = STRATEGIES.iter().map(|_| Vec::new()).collect();
    for _ in 0..o.rounds {
        for (s, runs) in STRATEGIES.iter().zip(&mut all) {
            runs.push(replay_once(&probe, &trace, s)?);
        }
    }
    for (s, runs) in STRATEGIES.into_iter().zip(all) {
        let (recorded, records) = (runs[0].recorded_ns, runs[0].records);
        recorded_span = recorded;
        if first {
            println!(
                "trace: {records} records over a recorded span of {}{}",
                secs(recorded),
                if records < MIN_RECORDS {
                    format!(" (fewer than {MIN_RECORDS}: record longer with --duration)")
                } else {
                    String::new()
                }
            );
            println!(
                "{:<12} {:>12} {:>8} {:>14} {:>16} {:>8} {:>9} {:>6}",
                "strategy",
                "replay",
                "ratio",
                "read+parse",
                "whole command",
                "ratio",
                "differing",
                "segv"
            );
            first = false;
        }
        let replay = median(runs.iter().map(|r| r.replay_ns).collect());
        let read = median(runs.iter().map(|r| r.read_ns).collect());
        let command = median(runs.iter().map(|r| r.command_ns).collect());
        let ratio = recorded as f64 / replay.max(1) as f64;
        let ratio_all = recorded as f64 / command.max(1) as f64;
        worst = Some(worst.map_or(ratio, |w: f64| w.min(ratio)));
        if ratio >= TARGET_RATIO {
            meeting.push(s.to_string());
        }
        println!(
            "{s:<12} {:>12} {:>7.1}x {:>14} {:>16} {:>7.1}x {:>9} {:>6}",
            secs(replay),
            ratio,
            secs(read),
            secs(command),
            ratio_all,
            runs[0].differing,
            runs[0].segv
        );
    }
    if let Some(w) = worst {
        println!(
            "slowest strategy replays {w:.1}x faster than recorded (target: {TARGET_RATIO:.0}x): {}",
            if w >= TARGET_RATIO { "met" } else { "NOT met" }
        );
        println!(
            "strategies at {TARGET_RATIO:.0}x or more: {}",
            if meeting.is_empty() {
                "none".to_string()
            } else {
                meeting.join(", ")
            }
        );
    }
    println!(
        "critical path (a model, from one more replay per strategy with --critical-path: \
         the longest chain of records waiting for one another, each costing its time \
         measured in that replay, or its kind's mean or median; it assumes a core per \
         replay thread; the work, all records' costs, / {cpus} CPUs bounds the replay \
         from below too; measured times include engine lock waits and preemption):"
    );
    println!(
        "{:<12} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "strategy", "path", "path (means)", "path (medians)", "work/CPUs", "(medians)"
    );
    let both = |ns: u64| {
        format!(
            "{} {:>5.1}x",
            secs(ns),
            recorded_span as f64 / ns.max(1) as f64
        )
    };
    for s in STRATEGIES {
        let m = critical_path_once(&probe, &trace, s)?;
        println!(
            "{s:<12} {:>16} {:>16} {:>16} {:>16} {:>16}",
            both(m.path),
            both(m.path_mean),
            both(m.path_median),
            both(m.work / cpus as u64),
            both(m.work_median / cpus as u64)
        );
    }
    Ok(())
}
