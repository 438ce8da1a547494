//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Mutex, MutexGuard},
};

use mm_probe::workload::WorkloadResult;

/// The mm-probe binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mm-probe");

static LIVE: Mutex<()> = Mutex::new(());

/// Gate for tests that load eBPF programs. Returns a guard that serializes
/// them, or `None` (after printing why) when this environment cannot run
/// them. Under `CI=true` a skip is a failure.
pub fn live() -> Option<MutexGuard<'static, ()>> {
    let guard = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let missing = mm_probe::caps::missing_for_probe(mm_probe::caps::effective());
    let reason = if !missing.is_empty() {
        Some(format!("needs {} (run as root)", missing.join(" and ")))
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("needs a kernel with BTF (/sys/kernel/btf/vmlinux)".to_owned())
    } else {
        None
    };
    match reason {
        None => Some(guard),
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("live eBPF test cannot run: {why}; under CI=true a skip is a failure")
        }
        Some(why) => {
            eprintln!("SKIPPED live eBPF test: {why}");
            None
        }
    }
}

/// A built-in workload started with `--gated`: it has mapped what it needs
/// and waits for [`Gated::go`].
pub struct Gated {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Gated {
    pub fn start(args: &[&str]) -> Self {
        Self::start_program(BIN, args)
    }

    /// As [`Gated::start`], running the binary under another path (a
    /// symlink gives the process another comm).
    pub fn start_program(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .arg("workload")
            .args(args)
            .arg("--gated")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "workload did not get ready");
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go() once");
        writeln!(stdin, "go").unwrap();
    }

    /// Wait for the end and return the workload's own account.
    pub fn wait(mut self) -> WorkloadResult {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "workload failed: {status}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad workload output {line:?}: {e}"))
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
