//! mm-tui: the live dashboard. One workload runs on the host kernel under
//! mm-probe's eBPF programs and on mm-core's engine under a chosen fault
//! strategy; HOST and ENGINE columns show the same rows in the same units.

mod app;
mod model;
mod sources;
mod ui;

use std::{
    collections::{BTreeSet, VecDeque},
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use app::{Action, App, ProcRow};
use clap::Parser;
use mm_core::{shared_mm::FaultStrategy, stats::Drops};
use ratatui::crossterm::event::{self, Event};
use sources::{Engine, Host, load_plan};

/// The workload when none is given.
const DEFAULT_WORKLOAD: &str = "fault-vs-munmap";

#[derive(Parser, Debug)]
#[command(
    name = "mm-tui",
    version,
    about = "Live dashboard: the host kernel's mmap_lock contention and page faults next to \
             mm-core's engine, on the same workload",
    long_about = "Live dashboard: the host kernel's mmap_lock contention and page faults next \
                  to mm-core's engine, on the same workload.\n\n\
                  With no arguments it runs the `fault-vs-munmap` workload on the host (a \
                  child process measured by mm-probe's eBPF programs) and on the engine, and \
                  shows them side by side: lock acquisitions per second with their history, \
                  contended share, wait and hold histograms, faults by kind, per-VMA lock \
                  outcomes, write holds by syscall and lost events.\n\n\
                  The host side needs root (CAP_BPF and CAP_PERFMON); without it the engine \
                  column runs and the host column says what is missing.\n\n\
                  Keys: q quit, p pause, s engine strategy, w workload, Tab views, / filter, \
                  arrows or j/k move, left/right sort, r reset, ? help.",
    after_help = "Examples:\n  sudo mm-tui\n  sudo mm-tui --workload guard-storm --strategy classic\n  \
                  sudo mm-tui --workload ./my-spec.toml --refresh 500ms\n  \
                  sudo mm-tui --pid 1234 --pid 5678\n  sudo mm-tui -- ./my-program args"
)]
struct Cli {
    /// The workload both sides run: a preset name or a spec file
    /// (docs/workloads.md). Default: fault-vs-munmap, or none on the
    /// engine when following --pid or a command.
    #[arg(long, short, value_name = "PRESET|FILE")]
    workload: Option<String>,
    /// Follow this existing host process in the HOST column (repeat for
    /// several); the workload is not run on the host.
    #[arg(long = "pid", value_name = "PID", conflicts_with = "command")]
    pids: Vec<u32>,
    /// The engine's fault strategy: per-vma (Linux 6.4+), classic (every
    /// fault takes mmap_lock) or speculative (seq-count validated faults).
    #[arg(long, default_value = "per-vma", value_name = "STRATEGY", value_parser = parse_strategy)]
    strategy: FaultStrategy,
    /// How often the screen refreshes, e.g. 1s, 500ms (at least 100ms).
    #[arg(long, default_value = "1s", value_name = "DUR", value_parser = parse_refresh)]
    refresh: Duration,
    /// Where a command's stdout and stderr go (the screen is the
    /// dashboard's). Default: mm-tui-PID.log in the temporary directory.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Internal: be the workload's host process.
    #[arg(long, hide = true, value_name = "PRESET|FILE")]
    host_runner: Option<String>,
    /// A command to run on the host and follow in the HOST column.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_strategy(s: &str) -> Result<FaultStrategy, String> {
    s.parse::<FaultStrategy>().map_err(|e| e.to_string())
}

fn parse_refresh(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (try 1s or 500ms)"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("`{s}` is too short: at least 100ms"));
    }
    if d > Duration::from_secs(3600) {
        return Err(format!("`{s}` is too long: at most 1h"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(w) = &cli.host_runner {
        return host_runner(w);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mm-tui: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The gate of the workload's host process: `ready`, then wait for the
/// go-ahead; the end is not gated (the dashboard kills the process, and
/// a process whose workload failed must exit to say so).
struct RunnerGate;

impl mm_probe::spec_runner::Gate for RunnerGate {
    fn wait(&self, what: &str) -> std::io::Result<()> {
        if what == "ready" {
            mm_probe::spec_runner::StdioGate.wait(what)
        } else {
            Ok(())
        }
    }
}

fn host_runner(workload: &str) -> ExitCode {
    let plan = match load_plan(workload) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let name = std::ffi::CString::new(sources::RUNNER_COMM).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    match mm_probe::spec_runner::run(&plan, &RunnerGate) {
        Ok(r) => match r.error {
            Some(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
            None => ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The dashboard's own CPU use: this thread does all of its work (reading
/// the probe, drawing, keys); the engine runs on threads of its own.
struct CpuMeter {
    samples: VecDeque<(Instant, u64)>,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl CpuMeter {
    /// Percent of one core over the last ten readings.
    fn update(&mut self) -> Option<f64> {
        if self.samples.len() == 11 {
            self.samples.pop_front();
        }
        self.samples.push_back((Instant::now(), thread_cpu_ns()));
        let (&(t0, c0), &(t1, c1)) = (self.samples.front()?, self.samples.back()?);
        let wall = t1.duration_since(t0).as_nanos() as f64;
        (wall > 0.0).then(|| (c1 - c0) as f64 / wall * 100.0)
    }
}

/// Everything the loop drives.
struct Dashboard {
    app: App,
    host: Host,
    engine: Engine,
    start: Instant,
}

fn next_strategy(s: FaultStrategy) -> FaultStrategy {
    match s {
        FaultStrategy::PerVma => FaultStrategy::Classic,
        FaultStrategy::Classic => FaultStrategy::Speculative,
        FaultStrategy::Speculative => FaultStrategy::PerVma,
    }
}

impl Dashboard {
    fn sample(&mut self) {
        let app = &mut self.app;
        app.now = self.start.elapsed();
        let now_ns = mm_probe::procfs::monotonic_ns();
        match self.host.sample() {
            Ok(Some(s)) => {
                let pids = self.host.pids();
                app.host.title = self.host.title(&s.target);
                app.host.model.update(now_ns, s.target, s.drops);
                app.host.message = s.note.into_iter().collect();
                if pids.is_empty() {
                    app.host.message =
                        vec!["The host runs no workload: press w to choose one.".into()];
                }
                let mut seen = BTreeSet::new();
                for p in s.processes {
                    seen.insert(p.pid);
                    let row = app.procs.entry(p.pid).or_insert_with(|| ProcRow {
                        pid: p.pid,
                        ..ProcRow::default()
                    });
                    row.comm.clone_from(&p.comm);
                    row.exited = p.exited;
                    row.model.update(now_ns, p, Drops::default());
                }
                app.procs.retain(|pid, _| seen.contains(pid));
            }
            Ok(None) => {}
            Err(e) => app.host.message = vec![format!("{e:#}")],
        }
        if let Some(stats) = self.engine.sample() {
            app.engine.model.update(now_ns, stats, Drops::default());
        }
        app.engine.title = match &app.workload {
            Some(w) => format!("{} · {w}", self.engine.strategy.name()),
            None => self.engine.strategy.name().to_string(),
        };
        app.engine.message.clone_from(&self.engine.message);
        app.probe = self.host.status.clone();
        app.target = self.host.describe();
    }

    fn clear_counts(&mut self) {
        let app = &mut self.app;
        app.host.model.clear();
        app.engine.model.clear();
        app.procs.clear();
        app.selected = 0;
        app.counting_since = self.start.elapsed();
    }

    fn act(&mut self, a: Action) -> bool {
        self.app.now = self.start.elapsed();
        match a {
            Action::Quit => return false,
            Action::Pause(paused) => {
                if !paused {
                    // Rates after a pause cover the time since it ended.
                    self.app.host.model.resync();
                    self.app.engine.model.resync();
                    self.app.procs.values_mut().for_each(|p| p.model.resync());
                }
            }
            Action::CycleStrategy => {
                let s = next_strategy(self.engine.strategy);
                self.engine.restart(s);
                self.app.strategy = s;
                self.app.strategy_changed = Some(self.app.now);
                self.app.engine.model.clear();
                match &self.app.workload {
                    Some(w) => self
                        .app
                        .say(format!("the engine restarted {w} under {}", s.name())),
                    None => self.app.say(format!(
                        "engine strategy {}; it runs no workload (press w to choose one)",
                        s.name()
                    )),
                }
            }
            Action::Workload(w) => match load_plan(&w) {
                Err(e) => self.app.say(format!("{e:#}")),
                Ok(plan) => {
                    if let Err(e) = self.host.run_workload(&w) {
                        self.app.host.message = vec![format!("{e:#}")];
                    }
                    self.engine.run(plan);
                    self.app
                        .say(format!("running {w} on the host and the engine"));
                    self.app.workload = Some(w);
                    self.clear_counts();
                }
            },
            Action::Reset => {
                if let Err(e) = self.host.reset() {
                    self.app.say(format!("{e:#}"));
                }
                self.engine.reset();
                self.clear_counts();
                self.app.say("counters reset");
            }
        }
        true
    }
}

fn run(cli: Cli) -> Result<()> {
    for &pid in &cli.pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("--pid {pid}: no such process");
        }
    }
    let following = !cli.pids.is_empty() || !cli.command.is_empty();
    let workload = match (&cli.workload, following) {
        (Some(w), _) => Some(w.clone()),
        (None, false) => Some(DEFAULT_WORKLOAD.to_string()),
        (None, true) => None,
    };
    let plan = match &workload {
        Some(w) => Some(load_plan(w).with_context(|| format!("--workload {w}"))?),
        None => None,
    };

    eprintln!("mm-tui: loading the probe…");
    let mut host = Host::attach(!cli.command.is_empty());
    let mut app = App::new(
        mm_probe::procfs::kernel_release(),
        cli.strategy,
        cli.refresh,
    );
    if let Some(w) = &workload
        && !app.workloads.contains(w)
    {
        app.workloads.push(w.clone());
    }
    if host.is_live() {
        if !cli.command.is_empty() {
            let log = cli.log.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("mm-tui-{}.log", std::process::id()))
            });
            host.run_command(&cli.command, log)?;
        } else if !cli.pids.is_empty() {
            host.follow(cli.pids.clone());
        } else if let Some(w) = &workload {
            host.run_workload(w)?;
        }
    } else {
        let mut msg = vec!["The host is not measured.".to_string()];
        msg.extend(host.status.error.iter().cloned());
        msg.push("The engine column runs on its own; nothing was started on the host.".to_string());
        app.host.message = msg;
    }
    let engine = match plan {
        Some(plan) => {
            let mut e = Engine::idle(cli.strategy, Vec::new());
            e.run(plan);
            e
        }
        None => Engine::idle(
            cli.strategy,
            vec![
                "The engine runs no workload:".into(),
                "it cannot run an arbitrary process. Press w to run a workload on both sides, \
                 or record the process (mm-probe record) and replay it (mm-probe replay)."
                    .into(),
            ],
        ),
    };
    app.workload.clone_from(&workload);
    if let Some(log) = &host.log {
        app.say(format!("the command's output goes to {}", log.display()));
    }

    let quit = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&quit))
            .context("cannot install a signal handler")?;
    }
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    // ratatui's hook restores the terminal and prints the panic. A panic on
    // an engine thread must do neither while the dashboard goes on: the
    // engine column reports the failed thread.
    let restore_and_print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            restore_and_print(info);
        }
    }));
    let mut d = Dashboard {
        app,
        host,
        engine,
        start: Instant::now(),
    };
    let result = event_loop(&mut terminal, &mut d, &quit);
    ratatui::restore();
    d.host.stop();
    d.engine.stop();
    result
}

#[derive(PartialEq, Eq)]
enum Input {
    Ready,
    Timeout,
    HungUp,
}

/// Wait for the terminal to have input, at most `timeout`. The terminal
/// hanging up (its window closed) ends the dashboard: crossterm's own
/// poll would spin reading end-of-file.
fn wait_for_input(timeout: Duration) -> Input {
    let mut pfd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: isatty and poll are given a valid fd and one valid pollfd.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        // crossterm reads /dev/tty then; let its poll wait.
        return match event::poll(timeout) {
            Ok(true) => Input::Ready,
            Ok(false) => Input::Timeout,
            Err(_) => Input::HungUp,
        };
    }
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Input::HungUp
    } else if n > 0 {
        Input::Ready
    } else {
        // A signal (EINTR) or the timeout: the loop checks the quit flag.
        Input::Timeout
    }
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    d: &mut Dashboard,
    quit: &AtomicBool,
) -> Result<()> {
    let mut cpu = CpuMeter {
        samples: VecDeque::new(),
    };
    let mut next_tick = Instant::now();
    let mut dirty = true;
    while !quit.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_tick {
            if !d.app.paused {
                d.sample();
            }
            d.app.now = d.start.elapsed();
            d.app.ui_cpu = cpu.update();
            next_tick = now + d.app.refresh;
            dirty = true;
        }
        if dirty {
            terminal
                .draw(|f| ui::draw(f, &d.app))
                .context("cannot draw")?;
            dirty = false;
        }
        let timeout = next_tick
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        if wait_for_input(timeout) == Input::HungUp {
            break;
        }
        while event::poll(Duration::ZERO).context("cannot read the terminal")? {
            match event::read().context("cannot read the terminal")? {
                Event::Key(k) => {
                    if let Some(a) = d.app.on_key(k)
                        && !d.act(a)
                    {
                        return Ok(());
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}
