//! `cargo xtask run`: the main job, the live dashboard (mm-tui) on the
//! built-in default workload (fault-vs-munmap), host and engine side by
//! side.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::{
    exec::{exec, is_root},
    install::{build_release, release_bin},
    toolchain::command_exists,
};

#[derive(Args)]
pub struct Options {
    /// Arguments for `mm-tui` (after `--`), e.g. `-- --workload guard-storm`
    /// or `-- --strategy classic`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(o: Options) -> Result<()> {
    build_release()?;
    let bin = release_bin("mm-tui");
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if command_exists("sudo") {
        eprintln!("xtask: the dashboard's host side loads eBPF programs; running mm-tui with sudo");
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    } else {
        eprintln!(
            "xtask: not root and no sudo: the dashboard runs the engine only; \
             run as root for the host side"
        );
        Command::new(&bin)
    };
    cmd.args(&o.args);
    exec(&mut cmd)
}
