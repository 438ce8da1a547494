//! The `mm-probe` command line.

mod events;
mod live;
mod prometheus;
mod record;
mod replay;

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    doctor,
    probe::{Probe, ProbeOptions},
    procfs,
    session::Session,
    spawn::GatedChild,
    workload,
};

const ABOUT: &str = "Live mmap_lock contention and page-fault probe for Linux";

const LONG_ABOUT: &str = "\
Live mmap_lock contention and page-fault probe for Linux.

mm-probe loads eBPF programs on the kernel's mmap_lock, page-fault, syscall and
scheduler tracepoints and reports, per process: mmap_lock acquisitions by mode,
wait and hold times (p50/p99/max), contended share, failed trylocks, page faults
by kind, faults served under a per-VMA lock vs those that fell back to mmap_lock,
and which syscall held the lock for write and for how long.

Aggregation happens in the kernel (per-CPU maps, log2 histograms); mm-probe reads
the maps once per interval, so its cost does not grow with the event rate.

It needs root (or CAP_BPF and CAP_PERFMON). `mm-probe doctor` checks the machine.";

#[derive(Parser)]
#[command(name = "mm-probe", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace running processes (or all of them) and report each interval.
    Attach(AttachArgs),
    /// Run a command, or a built-in workload, under the probe; exit with its code.
    Run(RunArgs),
    /// Record one process's mm system calls and page faults into a trace file.
    Record(record::RecordArgs),
    /// Check what this machine allows, with a fix for each problem.
    Doctor(DoctorArgs),
    /// Built-in workloads with a known mm footprint (demos, tests, benchmarks).
    Workload(WorkloadArgs),
    /// Replay a recorded trace on the engine under each fault strategy.
    Replay(replay::ReplayArgs),
    /// Run a workload on the host under the probe and on the engine, and
    /// print both side by side with an agreement column.
    Compare(CompareArgs),
}

/// Report format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table per interval and a summary at the end.
    Table,
    /// One JSON object per line per interval, and a final one
    /// (schema: docs/json-report.md).
    Json,
}

#[derive(Args, Clone)]
struct OutputArgs {
    /// Time between reports (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    interval: Duration,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write reports to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    prometheus: Option<SocketAddr>,
    /// Also write one JSON line per fault and per mmap_lock release to FILE
    /// (from the ring buffer; losses are counted in every report).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Processes given a detail block in table reports.
    #[arg(long, default_value_t = 3, value_name = "N")]
    detail: usize,
    /// Do not attach a group of tracepoints (repeatable); its metrics are
    /// reported unavailable. `syscalls` saves two map updates per syscall on
    /// syscall-heavy hosts, at the price of attributing locks to "other".
    #[arg(long, value_enum, value_name = "GROUP")]
    skip: Vec<crate::probe::SkipGroup>,
}

#[derive(Args)]
struct AttachArgs {
    /// Trace only this process (repeatable). Ends when all of them exit.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace only processes with this command name (15 bytes at most).
    #[arg(long, value_name = "NAME")]
    comm: Option<String>,
    /// Trace only processes in this cgroup v2 or below it (a path under
    /// /sys/fs/cgroup, or relative to it).
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_positive_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    sudo mm-probe run -- ./my-program --its-flags\n  \
    sudo mm-probe run --workload fault-vs-munmap --duration 5s\n  \
    sudo mm-probe run --format json --output report.jsonl -- make -j2")]
struct RunArgs {
    /// Built-in workload to run when no command is given.
    #[arg(long, value_enum, default_value_t = Builtin::FaultVsMunmap)]
    workload: Builtin,
    /// For a built-in workload: how long it runs (default 10s). For a
    /// command: send it SIGTERM after this long.
    #[arg(long, value_parser = parse_positive_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    output: OutputArgs,
    /// The command to run, with its arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Builtin {
    /// Threads fault small regions while one thread unmaps large populated ones.
    FaultVsMunmap,
    /// Each thread maps 128 MiB, writes every page, unmaps, in a loop.
    FaultLoop,
}

impl Builtin {
    const fn name(self) -> &'static str {
        match self {
            Self::FaultVsMunmap => "fault-vs-munmap",
            Self::FaultLoop => "fault-loop",
        }
    }
}

#[derive(Args)]
struct WorkloadArgs {
    #[command(subcommand)]
    which: WorkloadCommand,
    /// Write the JSON summary to this file instead of standard output.
    #[arg(long, global = true, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Map first, print `ready`, and wait for a line on stdin before the
    /// measured work (so that a probe can be attached in between).
    #[arg(long, global = true)]
    gated: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    sudo mm-probe compare --workload fault-vs-munmap\n  \
    sudo mm-probe compare --workload page-fault1 --strategy all --duration 1s\n  \
    sudo mm-probe compare --workload my-spec.toml --format json --check\n\n\
    Presets: page-fault1 page-fault2 page-fault3 mmap1 mmap2 fault-vs-munmap\n\
    fault-vs-mprotect guard-storm softdirty-tracker maps-reader (workloads/*.toml;\n\
    the spec format is in docs/workloads.md).")]
struct CompareArgs {
    /// A preset name or a workload spec file (TOML).
    #[arg(long, default_value = "fault-vs-munmap", value_name = "PRESET|FILE")]
    workload: String,
    /// The engine's fault strategy; `all` runs the three, the first
    /// (per-vma) being the one the agreement column judges.
    #[arg(long, default_value = "per-vma", value_parser = parse_strategies)]
    strategy: Strategies,
    /// How long the host runs its loops (default: the spec's duration).
    #[arg(long, value_parser = parse_positive_duration)]
    duration: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Largest difference, in percent, for gated rows to agree.
    #[arg(long, default_value_t = 2.0, value_name = "PCT")]
    tolerance: f64,
    /// Exit with status 1 when a gated row disagrees.
    #[arg(long)]
    check: bool,
}

/// Fault strategies to run, in order.
#[derive(Clone, Debug)]
pub struct Strategies(pub Vec<mm_core::shared_mm::FaultStrategy>);

/// `classic`, `speculative`, `per-vma` or `all` (per-vma first).
pub fn parse_strategies(s: &str) -> Result<Strategies, String> {
    use mm_core::shared_mm::FaultStrategy as F;
    if s == "all" {
        return Ok(Strategies(vec![F::PerVma, F::Classic, F::Speculative]));
    }
    s.parse::<F>()
        .map(|f| Strategies(vec![f]))
        .map_err(|_| format!("`{s}`: use classic, speculative, per-vma or all"))
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Run a workload spec (a preset name or a TOML file) with real threads
    /// and system calls; print what each thread did as JSON.
    Run {
        /// A preset name or a spec file.
        #[arg(value_name = "PRESET|FILE")]
        spec: String,
        /// Run the loops this long (default: the spec's).
        #[arg(long, value_parser = parse_positive_duration)]
        duration: Option<Duration>,
        /// Iterations per loop, for every thread (overrides the duration).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Write to N fresh anonymous pages once: N write faults.
    Touch {
        /// Pages to touch.
        #[arg(long, default_value_t = 1000)]
        pages: usize,
    },
    /// K times: mmap P pages and munmap them: 2K mmap_lock write acquisitions.
    MmapMunmap {
        /// mmap+munmap pairs.
        #[arg(long, default_value_t = 100)]
        pairs: u64,
        /// Pages per mapping.
        #[arg(long, default_value_t = 1)]
        pages: usize,
    },
    /// One thread maps and unmaps large populated regions (long write holds)
    /// while the others map, fault and unmap small ones and queue behind it.
    FaultVsMunmap {
        /// Threads in all (one unmapper, the rest fault).
        #[arg(long, default_value_t = 4)]
        threads: u32,
        /// How long.
        #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
        duration: Duration,
        /// Size of the unmapper's regions, MiB.
        #[arg(long, default_value_t = 64)]
        region_mib: usize,
    },
    /// Each thread maps SIZE MiB, writes every page, unmaps, in a loop.
    FaultLoop {
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// How long.
        #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
        duration: Duration,
        /// Region size per thread, MiB.
        #[arg(long, default_value_t = 128)]
        size_mib: usize,
    },
    /// One thread: mmap 16 pages, write 8, mprotect 4, guard 2, munmap 4,
    /// one failing mprotect; prints the calls it made and its maps.
    #[command(hide = true)]
    RecordDemo,
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (try 500ms, 2s, 1m)"))?;
    if d.is_zero() {
        return Err(format!("`{s}`: must be greater than zero"));
    }
    Ok(d)
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                };
            }
            // One line: clap's first line names the problem.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("mm-probe: error: {first} (see `mm-probe --help`)");
            return 2;
        }
    };
    let result = match cli.command {
        Command::Attach(a) => attach(a),
        Command::Run(r) => run(r),
        Command::Record(r) => record::record(r),
        Command::Doctor(d) => doctor_cmd(&d),
        Command::Workload(w) => workload_cmd(w),
        Command::Compare(c) => compare_cmd(&c),
        Command::Replay(r) => replay::run(&r),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mm-probe: error: {e:#}");
            // As a shell would: 127 when the command to run does not exist.
            match e.downcast_ref::<crate::spawn::SpawnError>() {
                Some(crate::spawn::SpawnError::NotFound(_)) => 127,
                _ => 1,
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn validate_pids(pids: &[u32]) -> Result<()> {
    for &pid in pids {
        if pid == 0 || !procfs::pid_exists(pid) {
            bail!("no process with pid {pid}: check it with `ps -p {pid}`");
        }
        if !procfs::is_thread_group_leader(pid) {
            bail!(
                "{pid} is a thread, not a process: pass the process id (`ps -o tgid= -p {pid}` \
                 prints it)"
            );
        }
    }
    Ok(())
}

fn attach(a: AttachArgs) -> Result<i32> {
    validate_pids(&a.pids)?;
    if let Some(c) = &a.comm {
        if c.is_empty() {
            bail!("--comm needs a non-empty name");
        }
        if c.len() > 15 {
            let mut end = 15;
            while !c.is_char_boundary(end) {
                end -= 1;
            }
            eprintln!(
                "mm-probe: note: the kernel keeps 15 bytes of a command name; matching `{}`",
                &c[..end]
            );
        }
    }
    let opts = ProbeOptions {
        pids: (!a.pids.is_empty()).then(|| a.pids.clone()),
        comm: a.comm.clone(),
        cgroup: a.cgroup.clone(),
        follow_forks: false,
        fault_events: a.output.events.is_some(),
        lock_events: a.output.events.is_some(),
        syscall_events: false,
        skip: a.output.skip.clone(),
    };
    let probe = Probe::load(&opts).context("cannot start the probe")?;
    let session = Session::new(probe);
    live::announce(session.probe(), &describe_filter(&a));
    let cfg = live::Config::new(&a.output, a.duration, a.pids.clone())?;
    runtime()?.block_on(live::run(session, cfg, None))
}

fn describe_filter(a: &AttachArgs) -> String {
    let mut parts = Vec::new();
    if !a.pids.is_empty() {
        let p: Vec<String> = a.pids.iter().map(u32::to_string).collect();
        parts.push(format!("pid {}", p.join(",")));
    }
    if let Some(c) = &a.comm {
        parts.push(format!("comm {c}"));
    }
    if let Some(c) = &a.cgroup {
        parts.push(format!("cgroup {}", c.display()));
    }
    if parts.is_empty() {
        "all processes".into()
    } else {
        parts.join(", ")
    }
}

fn run(r: RunArgs) -> Result<i32> {
    // A built-in workload writes its own account to a file, summarised on
    // stderr at the end, so that stdout carries only the reports.
    let mut workload_result = None;
    let (program, args, kill_after) = if r.command.is_empty() {
        let exe = std::env::current_exe().context("cannot find mm-probe's own executable")?;
        let duration = r.duration.unwrap_or(Duration::from_secs(10));
        let result =
            std::env::temp_dir().join(format!("mm-probe-workload-{}.json", std::process::id()));
        let args: Vec<OsString> = vec![
            "workload".into(),
            r.workload.name().into(),
            "--duration".into(),
            humantime::format_duration(duration).to_string().into(),
            "--output".into(),
            result.clone().into_os_string(),
        ];
        workload_result = Some(result);
        (exe.into_os_string(), args, None)
    } else {
        (r.command[0].clone(), r.command[1..].to_vec(), r.duration)
    };
    let opts = ProbeOptions {
        pids: Some(Vec::new()),
        follow_forks: true,
        fault_events: r.output.events.is_some(),
        lock_events: r.output.events.is_some(),
        skip: r.output.skip.clone(),
        ..Default::default()
    };
    let mut probe = Probe::load(&opts).context("cannot start the probe")?;
    let gated = GatedChild::spawn(&program, &args)?;
    probe.allow_pid(gated.pid())?;
    let session = Session::new(probe);
    let child = gated.release()?;
    live::announce(
        session.probe(),
        &format!(
            "pid {} ({}) and its children",
            child.pid(),
            program.to_string_lossy()
        ),
    );
    let mut cfg = live::Config::new(&r.output, None, Vec::new())?;
    cfg.kill_after = kill_after;
    let code = runtime()?.block_on(live::run(session, cfg, Some(child)))?;
    if let Some(path) = workload_result {
        if let Some(w) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<workload::WorkloadResult>(&t).ok())
        {
            eprintln!(
                "mm-probe: workload {} (pid {}, {} threads): {} mmap and {} munmap calls, {} pages \
                 touched in {}",
                w.workload,
                w.pid,
                w.threads,
                w.mmaps,
                w.munmaps,
                w.pages_touched,
                crate::report::format_ns(w.elapsed_ns)
            );
        }
        let _ = std::fs::remove_file(path);
    }
    Ok(code)
}

fn doctor_cmd(d: &DoctorArgs) -> Result<i32> {
    let checks = doctor::run(true);
    match d.format {
        Format::Table => println!("{}", doctor::render(&checks)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
    }
    let failed = checks.iter().any(|c| c.status == doctor::Status::Fail);
    Ok(i32::from(failed))
}

fn spec_run(
    spec: &str,
    duration: Option<Duration>,
    iterations: Option<u64>,
    gated: bool,
    output: Option<PathBuf>,
) -> Result<i32> {
    let (_, mut plan) = mm_core::workload::Spec::load(spec)?;
    if let Some(d) = duration {
        plan = plan.with_duration(d);
    }
    if let Some(n) = iterations {
        let all = vec![n; plan.threads.len()];
        plan = plan.with_iterations(&all);
    }
    let gate: &dyn crate::spec_runner::Gate = if gated {
        &crate::spec_runner::StdioGate
    } else {
        &crate::spec_runner::NoGate
    };
    let r = crate::spec_runner::run(&plan, gate).map_err(|e| anyhow::anyhow!(e))?;
    let line = serde_json::to_string(&r)?;
    match output {
        Some(path) => std::fs::write(&path, format!("{line}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{line}"),
    }
    if let Some(e) = &r.error {
        eprintln!("mm-probe: error: {e}");
        return Ok(1);
    }
    Ok(0)
}

fn compare_cmd(a: &CompareArgs) -> Result<i32> {
    let c = crate::compare::run(&a.workload, &a.strategy.0, a.duration, a.tolerance)?;
    match a.format {
        Format::Table => print!("{}", crate::compare::table(&c)),
        Format::Json => println!("{}", serde_json::to_string(&c)?),
    }
    Ok(if a.check && !c.agreement { 1 } else { 0 })
}

fn workload_cmd(w: WorkloadArgs) -> Result<i32> {
    let result = match w.which {
        WorkloadCommand::RecordDemo => {
            let demo = workload::record_demo(w.gated).context("the workload failed")?;
            return write_workload_line(w.output.as_deref(), &serde_json::to_string(&demo)?);
        }
        WorkloadCommand::Run {
            spec,
            duration,
            iterations,
        } => return spec_run(&spec, duration, iterations, w.gated, w.output),
        WorkloadCommand::Touch { pages } => workload::touch(pages, w.gated),
        WorkloadCommand::MmapMunmap { pairs, pages } => {
            workload::mmap_munmap(pairs, pages, w.gated)
        }
        WorkloadCommand::FaultVsMunmap {
            threads,
            duration,
            region_mib,
        } => workload::fault_vs_munmap(threads, duration, region_mib, w.gated),
        WorkloadCommand::FaultLoop {
            threads,
            duration,
            size_mib,
        } => workload::fault_loop(threads, duration, size_mib, w.gated),
    }
    .context("the workload failed")?;
    write_workload_line(w.output.as_deref(), &serde_json::to_string(&result)?)
}

fn write_workload_line(output: Option<&std::path::Path>, line: &str) -> Result<i32> {
    match output {
        Some(path) => std::fs::write(path, format!("{line}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{line}"),
    }
    Ok(0)
}
