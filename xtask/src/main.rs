//! `cargo xtask <command>`: the project's developer commands. Each command is
//! a module with an `Options` struct and a `run` function.

mod bench;
mod bench_replay;
mod build_ebpf;
mod exec;
mod install;
mod run;
mod test;
mod toolchain;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer commands for the mmlock toolkit",
    long_about = "Developer commands for the mmlock toolkit.\n\n\
                  Every command installs what it needs (rust-src, a project-local bpf-linker \
                  in .tools/, Debian packages) before it runs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (installs rust-src and bpf-linker if missing).
    BuildEbpf(build_ebpf::Options),
    /// Build mm-probe with the eBPF object embedded and install it where
    /// `sudo mm-probe` finds it (default /usr/local/bin).
    Install(install::Options),
    /// Run the whole test suite: lints, unit tests, live eBPF tests, install check.
    Test(test::Options),
    /// Run the main job: the live dashboard (mm-tui) on the built-in default workload.
    Run(run::Options),
    /// Measure probe overhead on a page-fault-heavy workload vs no probe and vs bpftrace.
    BenchOverhead(bench::Options),
    /// Record a fault-heavy preset and measure how much faster than it was
    /// recorded it replays on the engine (or replay --trace FILE).
    BenchReplay(bench_replay::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(o) => build_ebpf::run(o).map(|_| ()),
        Command::Install(o) => install::run(o),
        Command::Test(o) => test::run(o),
        Command::Run(o) => run::run(o),
        Command::BenchOverhead(o) => bench::run(o),
        Command::BenchReplay(o) => bench_replay::run(o),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
