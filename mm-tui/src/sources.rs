//! Where the two columns' numbers come from.
//!
//! * [`Host`]: mm-probe's eBPF programs, attached system-wide (so the
//!   process view sees everyone), read once per refresh through a
//!   [`Session`]; the HOST column follows the workload's host process (this
//!   binary re-run as `--host-runner`, see `mm_probe::spec_runner`), a
//!   command, or the `--pid`s.
//! * [`Engine`]: the same workload plan on `mm_core`'s `SharedMm` under a
//!   fault strategy, in this process (`mm_core::workload::engine::start`).

use std::{
    ffi::OsString,
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use mm_core::{
    shared_mm::FaultStrategy,
    stats::{Drops, ProcessStats},
    workload::{Plan, Spec, engine::Running},
};
use mm_probe::{
    probe::{Probe, ProbeError, ProbeOptions},
    session::Session,
};

use crate::app::ProbeStatus;

/// How long a workload runs when nobody stops it: the dashboard stops it.
pub const UNTIL_STOPPED: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The process name of the workload's host process.
pub const RUNNER_COMM: &str = "mm-tui-host";

/// Load a workload (a preset name or a spec file) for the dashboard: it
/// runs until stopped.
pub fn load_plan(workload: &str) -> Result<Plan> {
    let (_, plan) = Spec::load(workload).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(plan.with_duration(UNTIL_STOPPED))
}

/// Kill on parent death: the workload must not outlive the dashboard, even
/// if the dashboard is killed.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The workload's host process: gated (`ready`, then `go` on stdin), runs
/// until killed.
struct Runner {
    child: Child,
    _stdin: ChildStdin,
    stderr: Option<std::process::ChildStderr>,
}

impl Runner {
    fn start(workload: &str) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find the mm-tui executable")?;
        let mut cmd = Command::new(&exe);
        cmd.args(["--host-runner", workload])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut stderr = child.stderr.take();
        let mut line = String::new();
        out.read_line(&mut line).ok();
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            bail!(
                "the host workload did not start: {}",
                err.lines().last().unwrap_or("no message")
            );
        }
        writeln!(stdin, "go").context("cannot start the host workload")?;
        stdin.flush()?;
        Ok(Self {
            child,
            _stdin: stdin,
            stderr,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(why)` once it has ended.
    fn ended(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Some(match err.lines().last() {
            Some(l) => format!("the host workload ended ({status}): {l}"),
            None => format!("the host workload ended ({status})"),
        })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user's command run on the host (`mm-tui -- CMD`), its output in a
/// log, traced with its descendants from its first instruction.
struct UserCommand {
    pid: u32,
    done: Option<String>,
}

impl UserCommand {
    /// `Some(why)` once it has ended (reaped here).
    fn try_wait(&mut self) -> Option<String> {
        if self.done.is_some() {
            return self.done.clone();
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, without blocking.
        let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
        if r == self.pid as i32 {
            let how = if libc::WIFEXITED(status) {
                format!("exit code {}", libc::WEXITSTATUS(status))
            } else {
                format!("signal {}", libc::WTERMSIG(status))
            };
            self.done = Some(format!("the command ended ({how}); its figures are final"));
        }
        self.done.clone()
    }
}

impl Drop for UserCommand {
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
    }
}

/// Run `f` with stdin from /dev/null and stdout and stderr into `log`, so
/// that a child forked inside inherits them; ours are put back after.
fn with_redirected_stdio<T>(log: &File, f: impl FnOnce() -> T) -> Result<T> {
    let null = File::open("/dev/null").context("cannot open /dev/null")?;
    let fds = [
        (libc::STDIN_FILENO, null.as_raw_fd()),
        (libc::STDOUT_FILENO, log.as_raw_fd()),
        (libc::STDERR_FILENO, log.as_raw_fd()),
    ];
    let mut saved = Vec::new();
    for (fd, _) in fds {
        // SAFETY: duplicating a standard descriptor we own.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if d < 0 {
            bail!(
                "cannot save descriptor {fd}: {}",
                std::io::Error::last_os_error()
            );
        }
        saved.push((fd, d));
    }
    for (fd, src) in fds {
        // SAFETY: both descriptors are open.
        unsafe { libc::dup2(src, fd) };
    }
    let r = f();
    for (fd, d) in saved {
        // SAFETY: restoring the saved descriptor, then closing the copy.
        unsafe {
            libc::dup2(d, fd);
            libc::close(d);
        }
    }
    Ok(r)
}

/// What the HOST column follows.
enum Target {
    Workload(Runner),
    Command(UserCommand),
    Pids(Vec<u32>),
    Nothing,
}

/// One reading of the host.
pub struct HostSample {
    /// The followed processes, merged; totals since the counters started.
    pub target: ProcessStats,
    /// Every traced process, totals since the counters started.
    pub processes: Vec<ProcessStats>,
    /// Losses since the counters started.
    pub drops: Drops,
    /// A note for the HOST column (a workload or command that ended).
    pub note: Option<String>,
}

/// The host side.
pub struct Host {
    session: Option<Session>,
    target: Target,
    /// What to show in the header.
    pub status: ProbeStatus,
    /// Where the command's output goes.
    pub log: Option<PathBuf>,
}

/// The capability error as the dashboard's user should read it.
fn explain(e: &ProbeError) -> Vec<String> {
    match e {
        ProbeError::Privilege { missing } => vec![
            format!("needs {} to load eBPF programs", missing.join(" and ")),
            "Run it as root: sudo mm-tui (or: cargo xtask run), or grant them: \
             sudo setcap cap_bpf,cap_perfmon+ep $(command -v mm-tui)"
                .into(),
        ],
        other => vec![
            other.to_string(),
            "`sudo mm-probe doctor` checks everything the probe needs, with a fix for each.".into(),
        ],
    }
}

impl Host {
    /// Load the probe: system-wide, or (`command`) for a command and its
    /// descendants only. A failure is not an error: the column says what
    /// is missing.
    pub fn attach(command: bool) -> Self {
        let opts = if command {
            ProbeOptions {
                pids: Some(Vec::new()),
                follow_forks: true,
                ..ProbeOptions::default()
            }
        } else {
            ProbeOptions::default()
        };
        match Probe::load(&opts) {
            Ok(probe) => {
                let status = ProbeStatus {
                    attached: probe.attached().len(),
                    unavailable: probe
                        .unavailable()
                        .iter()
                        .map(|u| (u.metric.clone(), u.reason.clone()))
                        .collect(),
                    error: Vec::new(),
                };
                Self {
                    session: Some(Session::new(probe)),
                    target: Target::Nothing,
                    status,
                    log: None,
                }
            }
            Err(e) => Self {
                session: None,
                target: Target::Nothing,
                status: ProbeStatus {
                    attached: 0,
                    unavailable: Vec::new(),
                    error: explain(&e),
                },
                log: None,
            },
        }
    }

    /// Whether the probe is attached.
    pub const fn is_live(&self) -> bool {
        self.session.is_some()
    }

    /// What the column follows, for the header.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Workload(r) => format!("the workload's host process (pid {})", r.pid()),
            Target::Command(c) => format!("the command (pid {}) and its children", c.pid),
            Target::Pids(p) => {
                let p: Vec<String> = p.iter().map(u32::to_string).collect();
                format!("pid {}", p.join(", "))
            }
            Target::Nothing => "nothing".into(),
        }
    }

    /// The HOST column's title for a sample's merged figures.
    pub fn title(&self, merged: &ProcessStats) -> String {
        match &self.target {
            Target::Workload(r) => format!("pid {} {RUNNER_COMM}", r.pid()),
            Target::Command(c) => match merged.comm.as_str() {
                "" => format!("pid {} and children", c.pid),
                comm => format!("pid {} {comm} and children", c.pid),
            },
            Target::Pids(p) if p.len() == 1 && !merged.comm.is_empty() => {
                format!("pid {} {}", p[0], merged.comm)
            }
            _ => self.describe(),
        }
    }

    /// The pids the column follows.
    pub fn pids(&self) -> Vec<u32> {
        match &self.target {
            Target::Workload(r) => vec![r.pid()],
            Target::Command(c) => vec![c.pid],
            Target::Pids(p) => p.clone(),
            Target::Nothing => Vec::new(),
        }
    }

    /// The workload's host process, if one runs.
    pub fn runner_pid(&self) -> Option<u32> {
        match &self.target {
            Target::Workload(r) => Some(r.pid()),
            _ => None,
        }
    }

    /// Zero the counters.
    pub fn reset(&mut self) -> Result<()> {
        if let Some(s) = &mut self.session {
            s.reset().context("cannot read the probe's maps")?;
        }
        Ok(())
    }

    /// Run `workload` on the host (stopping what ran before) and zero the
    /// counters when its loops start. Does nothing without the probe.
    pub fn run_workload(&mut self, workload: &str) -> Result<()> {
        self.target = Target::Nothing;
        if self.session.is_none() {
            return Ok(());
        }
        let runner = Runner::start(workload)?;
        if let Some(s) = &mut self.session {
            // Needed when the probe follows a command only.
            s.probe_mut()
                .allow_pid(runner.pid())
                .context("cannot trace the workload's host process")?;
        }
        self.reset()?;
        self.target = Target::Workload(runner);
        Ok(())
    }

    /// Run a user's command, its stdout and stderr into `log`, traced from
    /// its first instruction with everything it forks.
    pub fn run_command(&mut self, argv: &[String], log: PathBuf) -> Result<()> {
        let Some(session) = &mut self.session else {
            return Ok(());
        };
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let args: Vec<OsString> = argv[1..].iter().map(OsString::from).collect();
        let gated = with_redirected_stdio(&out, || {
            mm_probe::spawn::GatedChild::spawn(argv[0].as_ref(), &args)
        })??;
        session
            .probe_mut()
            .allow_pid(gated.pid())
            .context("cannot trace the command")?;
        session.reset().context("cannot read the probe's maps")?;
        let child = gated.release()?;
        self.target = Target::Command(UserCommand {
            pid: child.pid(),
            done: None,
        });
        self.log = Some(log);
        Ok(())
    }

    /// Follow existing processes.
    pub fn follow(&mut self, pids: Vec<u32>) {
        self.target = Target::Pids(pids);
    }

    /// Read the probe. `None` without the probe.
    pub fn sample(&mut self) -> Result<Option<HostSample>> {
        let Some(session) = &mut self.session else {
            return Ok(None);
        };
        let tick = session.tick().context("cannot read the probe's maps")?;
        let note = match &mut self.target {
            Target::Workload(r) => r.ended(),
            Target::Command(c) => c.try_wait(),
            Target::Pids(p) => p
                .iter()
                .all(|&pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
                .then(|| "every followed process has exited".to_string()),
            Target::Nothing => None,
        };
        // A command's probe traces only it and its descendants: the column
        // shows them all.
        let pids = match &self.target {
            Target::Command(_) => tick.cumulative.processes.iter().map(|p| p.pid).collect(),
            _ => self.pids(),
        };
        let mut processes = tick.cumulative.processes;
        // The probe names a process after its executable when it first
        // sees it, before the runner renames itself.
        if let Some(pid) = self.runner_pid() {
            for p in processes.iter_mut().filter(|p| p.pid == pid) {
                p.comm = RUNNER_COMM.into();
            }
        }
        let mut target = ProcessStats::default();
        let lead = self.pids().first().copied();
        for p in processes.iter().filter(|p| pids.contains(&p.pid)) {
            if Some(p.pid) == lead {
                target.pid = p.pid;
                target.comm.clone_from(&p.comm);
            }
            target.merge(p);
        }
        Ok(Some(HostSample {
            target,
            processes,
            drops: tick.cumulative.drops,
            note,
        }))
    }

    /// Stop the workload or command.
    pub fn stop(&mut self) {
        self.target = Target::Nothing;
    }
}

/// The engine side.
pub struct Engine {
    plan: Option<Plan>,
    /// Fault strategy.
    pub strategy: FaultStrategy,
    running: Option<Running>,
    /// Why it is not running, or how it ended.
    pub message: Vec<String>,
}

impl Engine {
    /// An engine with nothing to run; `why` says so in its column.
    pub fn idle(strategy: FaultStrategy, why: Vec<String>) -> Self {
        Self {
            plan: None,
            strategy,
            running: None,
            message: why,
        }
    }

    /// Run `plan` (stopping what ran before).
    pub fn run(&mut self, plan: Plan) {
        self.stop();
        self.plan = Some(plan);
        self.start();
    }

    fn start(&mut self) {
        self.message.clear();
        if let Some(plan) = &self.plan {
            match mm_core::workload::engine::start(plan, self.strategy) {
                Ok(r) => self.running = Some(r),
                Err(e) => self.message = vec![format!("the workload failed on the engine: {e}")],
            }
        }
    }

    /// Restart the workload under another strategy.
    pub fn restart(&mut self, strategy: FaultStrategy) {
        self.stop();
        self.strategy = strategy;
        self.start();
    }

    /// Zero the counters.
    pub fn reset(&self) {
        if let Some(r) = &self.running {
            r.mm().reset_stats();
        }
    }

    /// Totals since the loops started (or the last reset); `None` when
    /// nothing runs.
    pub fn sample(&mut self) -> Option<ProcessStats> {
        let r = self.running.as_ref()?;
        let mut stats = r.stats().process;
        if r.is_finished() {
            let r = self.running.take()?;
            let end = match r.finish() {
                Ok(run) => format!(
                    "the engine's workload ended after {:?}",
                    Duration::from_nanos(run.elapsed_ns)
                ),
                Err(e) => format!("the workload failed on the engine: {e}"),
            };
            self.message = vec![end];
        }
        stats.comm = "engine".into();
        Some(stats)
    }

    /// Stop the workload.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.finish();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
