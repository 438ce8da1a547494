//! `cargo xtask run`: the main job. Until the dashboard (mm-tui) exists this
//! is the live probe on the built-in contention workload.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    exec::{exec, is_root},
    install::build_release,
    toolchain::command_exists,
};

#[derive(Args)]
pub struct Options {
    /// Arguments for `mm-probe run` (after `--`), e.g. `-- --duration 30s`
    /// or `-- -- ./my-program`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(o: Options) -> Result<()> {
    let bin = build_release()?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if command_exists("sudo") {
        eprintln!("xtask: mm-probe needs root to load eBPF programs; running it with sudo");
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    } else {
        bail!("mm-probe needs root to load eBPF programs and sudo is not installed: run as root");
    };
    cmd.arg("run").args(&o.args);
    exec(&mut cmd)
}
