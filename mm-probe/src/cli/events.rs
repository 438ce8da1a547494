//! `--events FILE`: per-event records from the ring buffer as JSON lines.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use mm_core::stats::FaultKind;
use mm_ebpf::{Event, SyscallEvent, event_flags, event_kind};
use serde_json::json;
use tokio::{io::unix::AsyncFd, sync::watch, task::JoinHandle};

use crate::{
    convert::{lock_context, syscall_name},
    records::{Record, decode},
};

/// The running writer.
pub struct Writer {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<u64>>,
}

impl Writer {
    /// Start draining `rb` into `path`.
    pub fn start(rb: RingBuf<MapData>, path: &Path) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let (stop, rx) = watch::channel(false);
        // SAFETY: the ring buffer owns its map fd for its whole life and
        // `as_raw_fd` always returns that fd.
        let fd = unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
        let task = tokio::spawn(drain_until_stopped(fd, BufWriter::new(file), rx));
        Ok(Self { stop, task })
    }

    /// Drain what is left, flush, and return the number of events written.
    pub async fn stop(self) -> Result<u64> {
        let _ = self.stop.send(true);
        self.task.await.context("the event writer failed")?
    }
}

async fn drain_until_stopped(
    mut fd: AsyncFd<RingBuf<MapData>>,
    mut out: BufWriter<File>,
    mut stop: watch::Receiver<bool>,
) -> Result<u64> {
    let mut written = 0u64;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                written += drain(guard.get_inner_mut(), &mut out)?;
                guard.clear_ready();
            }
            _ = stop.changed() => {
                written += drain(fd.get_mut(), &mut out)?;
                out.flush()?;
                return Ok(written);
            }
        }
    }
}

fn drain(rb: &mut RingBuf<MapData>, out: &mut BufWriter<File>) -> Result<u64> {
    let mut n = 0;
    while let Some(item) = rb.next() {
        let line = match decode(&item) {
            Ok(Record::Event(e)) => to_json(&e),
            Ok(Record::Syscall(s)) => syscall_to_json(&s),
            // A record this build does not know: skip it.
            Err(_) => continue,
        };
        writeln!(out, "{line}")?;
        n += 1;
    }
    Ok(n)
}

/// The JSON form of one event (documented in docs/json-report.md).
pub fn to_json(e: &Event) -> serde_json::Value {
    let flag = |f: u16| e.flags & f != 0;
    match e.kind {
        event_kind::FAULT => json!({
            "kind": "fault",
            "ts_ns": e.ts_ns,
            "pid": e.tgid,
            "tid": e.tid,
            "user": flag(event_flags::USER),
            "address": format!("{:#x}", e.a),
            "error_code": e.b,
            "fault": FaultKind::from_x86_error_code(e.b).as_str(),
        }),
        k => json!({
            "kind": if k == event_kind::LOCK_RELEASE { "lock_release" } else { "lock_failed" },
            "ts_ns": e.ts_ns,
            "pid": e.tgid,
            "tid": e.tid,
            "mode": if flag(event_flags::WRITE) { "write" } else { "read" },
            "context": lock_context(e.nr).name(),
            "wait_ns": e.a,
            "hold_ns": e.b,
            "contended": flag(event_flags::CONTENDED),
            "remote": flag(event_flags::REMOTE),
            "trylock": flag(event_flags::TRYLOCK),
        }),
    }
}

/// The JSON form of an mm system call record (documented in
/// docs/json-report.md).
pub fn syscall_to_json(s: &SyscallEvent) -> serde_json::Value {
    json!({
        "kind": "syscall",
        "ts_ns": s.ts_ns,
        "pid": s.tgid,
        "tid": s.tid,
        "nr": s.nr,
        "name": syscall_name(s.nr as u32),
        "args": s.args.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>(),
        "ret": s.ret,
        "dur_ns": s.ts_ns.saturating_sub(s.enter_ns),
    })
}
