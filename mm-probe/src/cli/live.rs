//! The live loop shared by `attach` and `run`: a report each interval, a
//! summary at the end (Ctrl-C, SIGTERM, --duration, the traced processes
//! exiting, or the child of `run` exiting), Prometheus and event output on
//! the side. Dropping the session at the end detaches every program.

use std::{
    fs::File,
    io::{BufWriter, Write},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use mm_core::stats::Report;
use tokio::signal::unix::{SignalKind, signal};

use super::{Format, OutputArgs, events, prometheus};
use crate::{
    probe::Probe,
    report::{json_line, table},
    session::Session,
    spawn::Child,
};

/// What the loop does besides ticking.
pub struct Config {
    interval: Duration,
    duration: Option<Duration>,
    format: Format,
    out: Box<dyn Write + Send>,
    prometheus: Option<std::net::SocketAddr>,
    events: Option<std::path::PathBuf>,
    detail: usize,
    /// attach --pid: end when all of these have exited.
    watched: Vec<u32>,
    /// run --duration with a command: SIGTERM it after this long.
    pub kill_after: Option<Duration>,
}

impl Config {
    pub(super) fn new(
        o: &OutputArgs,
        duration: Option<Duration>,
        watched: Vec<u32>,
    ) -> Result<Self> {
        let out: Box<dyn Write + Send> = match &o.output {
            Some(p) => Box::new(BufWriter::new(
                File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        };
        Ok(Self {
            interval: o.interval,
            duration,
            format: o.format,
            out,
            prometheus: o.prometheus,
            events: o.events.clone(),
            detail: o.detail,
            watched,
            kill_after: None,
        })
    }

    fn emit(&mut self, report: &Report) -> Result<()> {
        match self.format {
            Format::Json => writeln!(self.out, "{}", json_line(report)),
            Format::Table => writeln!(
                self.out,
                "{}",
                table::render(
                    report,
                    table::TableOptions {
                        detail: self.detail,
                        ..Default::default()
                    }
                )
            ),
        }
        .and_then(|()| self.out.flush())
        .context("cannot write the report")
    }
}

/// Tell the user on stderr what is attached and what is not.
pub fn announce(probe: &Probe, what: &str) {
    eprintln!(
        "mm-probe: attached to {} tracepoints, tracing {what}",
        probe.attached().len()
    );
    for u in probe.unavailable() {
        eprintln!("mm-probe: unavailable: {}: {}", u.metric, u.reason);
    }
}

pub(super) fn gone(pid: u32) -> bool {
    // A zombie has exited too; its parent just has not reaped it yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Run until the end; returns the exit code.
pub async fn run(mut session: Session, mut cfg: Config, child: Option<Child>) -> Result<i32> {
    let prom_text = Arc::new(RwLock::new(String::new()));
    let server = match cfg.prometheus {
        Some(addr) => {
            let first = session.tick().context("reading the probe's maps")?;
            *prom_text.write().expect("not poisoned") =
                crate::report::prometheus::render(&first.cumulative);
            Some(prometheus::serve(addr, Arc::clone(&prom_text)).await?)
        }
        None => None,
    };
    let events = match cfg.events.take() {
        Some(path) => match session.probe_mut().take_events() {
            Some(rb) => Some(events::Writer::start(rb, &path)?),
            None => None,
        },
        None => None,
    };

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval_at(start + cfg.interval, cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(cfg.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let kill_at = tokio::time::sleep(cfg.kill_after.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(kill_at);
    let child_pid = child.as_ref().map(Child::pid);
    let mut waiter = child.map(|c| {
        let pid = c.pid();
        (pid, tokio::task::spawn_blocking(move || c.wait()))
    });

    let mut exit_code = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let tick = session.tick().context("reading the probe's maps")?;
                cfg.emit(&tick.interval)?;
                *prom_text.write().expect("not poisoned") =
                    crate::report::prometheus::render(&tick.cumulative);
                if !cfg.watched.is_empty() && cfg.watched.iter().all(|&p| gone(p)) {
                    eprintln!("mm-probe: every traced process has exited");
                    break;
                }
            }
            () = &mut deadline, if cfg.duration.is_some() => break,
            () = &mut kill_at, if cfg.kill_after.is_some() && child_pid.is_some() => {
                if let Some(pid) = child_pid {
                    eprintln!("mm-probe: --duration reached, sending SIGTERM to {pid}");
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                cfg.kill_after = None;
            }
            r = async { (&mut waiter.as_mut().expect("guarded").1).await }, if waiter.is_some() => {
                exit_code = r.context("waiting for the command")?.context("waiting for the command")?;
                waiter = None;
                break;
            }
            _ = sigint.recv() => {
                match child_pid {
                    // The terminal sent it to the child too; wait for it.
                    Some(pid) => unsafe { libc::kill(pid as i32, libc::SIGINT); },
                    None => break,
                }
            }
            _ = sigterm.recv() => {
                match child_pid {
                    Some(pid) => unsafe { libc::kill(pid as i32, libc::SIGTERM); },
                    None => break,
                }
            }
        }
    }
    drop(waiter);

    let summary = session.finish().context("reading the probe's maps")?;
    *prom_text.write().expect("not poisoned") = crate::report::prometheus::render(&summary);
    cfg.emit(&summary)?;
    if let Some(w) = events {
        let n = w.stop().await?;
        eprintln!("mm-probe: wrote {n} events");
    }
    if summary.drops.aggregate_losses() > 0 {
        eprintln!(
            "mm-probe: warning: {} events were not aggregated (maps full); see `drops`",
            summary.drops.aggregate_losses()
        );
    }
    if let Some(s) = server {
        s.abort();
    }
    drop(session);
    Ok(exit_code)
}
