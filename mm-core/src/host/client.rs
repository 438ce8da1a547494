//! Driving an `mm-host-runner` process: one op per line in, one reply per
//! line out.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use super::runner::{Features, Reply};
use crate::op::Op;

/// A runner process with its window.
pub struct RemoteHost {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    features: Features,
}

fn broken(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

impl RemoteHost {
    /// Start `bin` on the window `[base, base + pages * PAGE_SIZE)`.
    pub fn spawn(bin: &Path, base: u64, pages: u64) -> std::io::Result<Self> {
        let mut child = Command::new(bin)
            .args([
                "--base",
                &format!("{base:#x}"),
                "--pages",
                &pages.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| broken("no stdin"))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or_else(|| broken("no stdout"))?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let hello: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| broken(format!("runner said {line:?}: {e}")))?;
        if let Some(err) = hello.get("error") {
            return Err(broken(format!("runner failed: {err}")));
        }
        let features = serde_json::from_value(hello["features"].clone())
            .map_err(|e| broken(format!("runner said {line:?}: {e}")))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            features,
        })
    }

    /// What the host supports.
    pub const fn features(&self) -> Features {
        self.features
    }

    /// Execute one op on the host.
    pub fn exec(&mut self, op: &Op) -> std::io::Result<Reply> {
        let text = serde_json::to_string(op).map_err(broken)?;
        writeln!(self.stdin, "{text}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            return Err(broken(format!(
                "the runner died ({status}) executing {text}"
            )));
        }
        serde_json::from_str(&line).map_err(|e| broken(format!("bad reply {line:?}: {e}")))
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
