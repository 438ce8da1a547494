//! `mm-probe record`: one process's mm system calls and page faults, with
//! arguments and results, into an op trace (`mm_core::trace`, see
//! docs/trace-format.md).
//!
//! The probe is filtered to the one process (its children are not
//! followed) and sends a ring-buffer record per fault and per mm system
//! call; the locks are aggregated as usual but not recorded.
//!
//! The trace starts with the process's VMAs, so that replaying its records
//! from them rebuilds its address space. For `-- CMD` the child is stopped
//! with ptrace at the end of its exec: its maps are read and its pid put
//! into the filter before it runs its first instruction, so the VMAs and the
//! records meet exactly. Where ptrace is refused, the pid goes into the
//! filter before the exec and the maps are read as soon as the exec is seen
//! (best effort). For `--pid` the maps are read once the probe is attached;
//! records older than that reading are left out (their effect is in the
//! maps), and a call still running during it may appear in both.

use std::{
    ffi::OsString,
    fs::File,
    io::BufWriter,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use clap::{ArgGroup, Args};
use mm_core::{op::MapsEntry, trace::Header};
use mm_ebpf::counters;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::{live::gone, parse_positive_duration, validate_pids};
use crate::{
    probe::{Probe, ProbeOptions},
    procfs,
    record::{SORT_WINDOW_NS, SinkStats, TraceSink, read_maps},
    records::decode,
    spawn::{Child, ExecStop, GatedChild},
};

/// `source` of the traces this command writes.
pub const SOURCE: &str = "mm-probe-record";

#[derive(Args)]
#[command(
    group(ArgGroup::new("target").required(true).args(["pid", "command"])),
    after_help = "Examples:\n  \
    sudo mm-probe record --out app.trace -- ./app --its-flags\n  \
    sudo mm-probe record --pid 4242 --duration 10s --out app.trace"
)]
pub(super) struct RecordArgs {
    /// Record this running process (until it exits, --duration or Ctrl-C).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// The trace file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Stop recording after this long (a command is then sent SIGTERM).
    #[arg(long, value_parser = parse_positive_duration)]
    duration: Option<Duration>,
    /// The command to run and record, with its arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Why recording stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The process exited (for a command: with this code).
    Exited(Option<i32>),
    /// --duration.
    Duration,
    /// SIGINT or SIGTERM.
    Signal(i32),
}

/// The recorded process, as the trace starts.
struct Target {
    pid: u32,
    comm: String,
    vmas: Vec<MapsEntry>,
    /// Records before this (CLOCK_MONOTONIC) are left out.
    start_ns: u64,
    /// For `-- CMD`.
    child: Option<Child>,
    /// For `-- CMD`: it ended before it could be recorded.
    ended: Option<i32>,
}

pub(super) fn record(r: RecordArgs) -> Result<i32> {
    if let Some(pid) = r.pid {
        validate_pids(&[pid])?;
        if pid == std::process::id() {
            bail!("mm-probe cannot record itself");
        }
    }
    // Created first, so that a bad path fails before anything starts.
    let file =
        File::create(&r.out).with_context(|| format!("cannot create {}", r.out.display()))?;
    let started = start(&r);
    let (mut probe, target) = match started {
        Ok(s) => s,
        Err(e) => {
            // Leave no empty trace behind.
            drop(file);
            let _ = std::fs::remove_file(&r.out);
            return Err(e);
        }
    };
    let rb = probe
        .take_events()
        .expect("the probe has a ring buffer when events are asked for");
    let header = Header {
        pid: target.pid,
        comm: target.comm.clone(),
        kernel: procfs::kernel_release(),
        source: SOURCE.into(),
    };
    let sink = TraceSink::new(
        BufWriter::new(file),
        &header,
        &target.vmas,
        target.pid,
        target.start_ns,
    )
    .with_context(|| format!("cannot write {}", r.out.display()))?;
    eprintln!(
        "mm-probe: recording pid {} ({}) into {}",
        target.pid,
        target.comm,
        r.out.display()
    );
    for u in probe.unavailable() {
        eprintln!("mm-probe: unavailable: {}: {}", u.metric, u.reason);
    }

    let runtime = super::runtime()?;
    let (stop, sink, undecodable, waiter) = match target.ended {
        Some(code) => (Stop::Exited(Some(code)), sink, 0, None),
        None => runtime.block_on(drain(rb, sink, target.pid, r.duration, target.child))?,
    };
    let drops = probe
        .snapshot()
        .context("reading the probe's maps")?
        .counters[counters::EVENTS_DROPPED as usize];
    drop(probe);
    let (_, stats) = sink
        .finish(drops)
        .with_context(|| format!("cannot write {}", r.out.display()))?;
    summarize(&r.out, &stats, drops, undecodable);

    // A command still running when recording stopped: pass the signal on
    // (SIGTERM after --duration), as `run` does, and exit with its code.
    match (stop, waiter) {
        (Stop::Exited(code), _) => Ok(code.unwrap_or(0)),
        (why, Some(waiter)) => {
            let sig = match why {
                Stop::Signal(sig) => sig,
                _ => libc::SIGTERM,
            };
            eprintln!(
                "mm-probe: recording stopped; sending {} to {}",
                signal_name(sig),
                target.pid
            );
            // SAFETY: kill has no memory-safety preconditions; the child is
            // not reaped until the waiter returns, so the pid is still its.
            unsafe { libc::kill(target.pid as i32, sig) };
            runtime
                .block_on(waiter)
                .context("waiting for the command")?
                .context("waiting for the command")
        }
        (_, None) => Ok(0),
    }
}

/// Load the probe and set the target up.
fn start(r: &RecordArgs) -> Result<(Probe, Target)> {
    let opts = ProbeOptions {
        pids: Some(r.pid.into_iter().collect()),
        fault_events: true,
        syscall_events: true,
        ..Default::default()
    };
    let mut probe = Probe::load(&opts).context("cannot start the probe")?;
    let target = match r.pid {
        Some(pid) => Target {
            pid,
            comm: procfs::comm(pid).unwrap_or_else(|| "?".into()),
            // Records from here on are newer than the maps read next.
            start_ns: procfs::monotonic_ns(),
            vmas: read_maps(pid).with_context(|| format!("cannot read /proc/{pid}/maps"))?,
            child: None,
            ended: None,
        },
        None => start_command(&mut probe, &r.command)?,
    };
    Ok((probe, target))
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        _ => "SIGTERM",
    }
}

fn summarize(out: &Path, s: &SinkStats, drops: u64, undecodable: u64) {
    eprintln!(
        "mm-probe: wrote {} records to {} ({drops} lost to a full ring buffer)",
        s.written,
        out.display()
    );
    if s.reordered > 0 {
        eprintln!(
            "mm-probe: warning: {} records arrived more than {} ms late and carry the time of \
             the record before them",
            s.reordered,
            SORT_WINDOW_NS / 1_000_000
        );
    }
    if s.unrepresentable > 0 {
        eprintln!(
            "mm-probe: note: {} faults on kernel addresses (SIGSEGV) were left out",
            s.unrepresentable
        );
    }
    if s.raw_fallbacks > 0 {
        eprintln!(
            "mm-probe: note: {} calls with arguments beyond the user address range were written \
             as raw records",
            s.raw_fallbacks
        );
    }
    if undecodable > 0 {
        eprintln!(
            "mm-probe: warning: {undecodable} ring-buffer records could not be decoded (an eBPF \
             object from another build?)"
        );
    }
}

/// Fork the command, stop it at the end of its exec, read its maps, put it
/// in the filter, let it run.
fn start_command(probe: &mut Probe, command: &[OsString]) -> Result<Target> {
    let (program, args) = command.split_first().expect("clap requires the command");
    let gated = GatedChild::spawn(program, args)?;
    let pid = gated.pid();
    let traced = match gated.stop_at_exec() {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "mm-probe: note: cannot stop the command at its exec ({e}): its initial VMAs are \
                 read as soon as the exec is seen (best effort)"
            );
            false
        }
    };
    if traced {
        let child = gated.release()?;
        match child
            .wait_exec_stop()
            .context("waiting for the command's exec")?
        {
            ExecStop::Stopped => {}
            ExecStop::Exited(code) => {
                return Ok(Target {
                    pid,
                    comm: program.to_string_lossy().into_owned(),
                    vmas: Vec::new(),
                    start_ns: 0,
                    child: None,
                    ended: Some(code),
                });
            }
        }
        let vmas = read_maps(pid);
        let comm = procfs::comm(pid).unwrap_or_else(|| "?".into());
        // Nothing of the new program has run: trace it from its first
        // instruction.
        let allowed = probe.allow_pid(pid);
        child.detach().context("cannot let the command run")?;
        allowed?;
        return Ok(Target {
            pid,
            comm,
            vmas: vmas.with_context(|| format!("cannot read /proc/{pid}/maps"))?,
            start_ns: 0,
            child: Some(child),
            ended: None,
        });
    }
    // No ptrace: trace from before the exec, keep records from the release
    // on (the child cannot exec before), read the maps once the exec shows.
    probe.allow_pid(pid)?;
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let before = exe(pid);
    let start_ns = procfs::monotonic_ns();
    let child = gated.release()?;
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    while exe(pid) == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let vmas = read_maps(pid).unwrap_or_default();
    let comm = procfs::comm(pid).unwrap_or_else(|| {
        Path::new(program)
            .file_name()
            .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
            .unwrap_or_else(|| "?".into())
    });
    Ok(Target {
        pid,
        comm,
        vmas,
        start_ns,
        child: Some(child),
        ended: None,
    })
}

/// Waits for the command in a blocking thread: its exit code.
type Waiter = tokio::task::JoinHandle<std::io::Result<i32>>;

type Drained = (Stop, TraceSink<BufWriter<File>>, u64, Option<Waiter>);

/// Move records from the ring buffer into the sink until the process exits,
/// --duration passes or a signal arrives. Returns why it stopped, the sink,
/// the number of undecodable records, and the waiter of a command that is
/// still running.
async fn drain(
    rb: RingBuf<MapData>,
    mut sink: TraceSink<BufWriter<File>>,
    pid: u32,
    duration: Option<Duration>,
    child: Option<Child>,
) -> Result<Drained> {
    // SAFETY: the ring buffer owns its map fd for its whole life and
    // `as_raw_fd` always returns that fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut waiter: Option<Waiter> = child.map(|c| tokio::task::spawn_blocking(move || c.wait()));
    let mut undecodable = 0u64;
    let stop = loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                undecodable += pump(guard.get_inner_mut(), &mut sink)?;
                guard.clear_ready();
                sink.flush_before(procfs::monotonic_ns().saturating_sub(SORT_WINDOW_NS))?;
            }
            _ = ticker.tick() => {
                sink.flush_before(procfs::monotonic_ns().saturating_sub(SORT_WINDOW_NS))?;
                if waiter.is_none() && gone(pid) {
                    break Stop::Exited(None);
                }
            }
            () = &mut deadline, if duration.is_some() => break Stop::Duration,
            _ = sigint.recv() => break Stop::Signal(libc::SIGINT),
            _ = sigterm.recv() => break Stop::Signal(libc::SIGTERM),
            r = async { waiter.as_mut().expect("guarded").await }, if waiter.is_some() => {
                waiter = None;
                let code = r.context("waiting for the command")?.context("waiting for the command")?;
                break Stop::Exited(Some(code));
            }
        }
    };
    // Everything the process did is in the buffer by now (it has exited, or
    // recording stops here).
    undecodable += pump(fd.get_mut(), &mut sink)?;
    Ok((stop, sink, undecodable, waiter))
}

/// Move what the ring buffer holds into the sink; returns the number of
/// records that could not be decoded.
fn pump(rb: &mut RingBuf<MapData>, sink: &mut TraceSink<BufWriter<File>>) -> Result<u64> {
    let mut bad = 0;
    while let Some(item) = rb.next() {
        match decode(&item) {
            Ok(rec) => sink.push(&rec)?,
            Err(_) => bad += 1,
        }
    }
    Ok(bad)
}
