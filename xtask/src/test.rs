//! `cargo xtask test`: the whole suite, as CI runs it.
//!
//! Lints (rustfmt, clippy on the host crates and on the eBPF crate for its
//! own target), every crate's tests including the live eBPF tests (which
//! need root; under `CI=true` a skipped live test fails), and a check that
//! the installed binary works outside the repository.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build_ebpf,
    exec::{cargo, exec, is_root},
    install, toolchain, workspace_root,
};

#[derive(Args)]
pub struct Options {
    /// Skip rustfmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for `cargo test`, after `--` (e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("\nxtask test: == {name}");
    let t = Instant::now();
    f().with_context(|| format!("step `{name}` failed"))?;
    eprintln!(
        "xtask test: == {name}: ok ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run(o: Options) -> Result<()> {
    let root = workspace_root();
    let start = Instant::now();
    if !is_root() {
        eprintln!(
            "xtask test: not root: the live eBPF tests will skip (they need root or \
             CAP_BPF+CAP_PERFMON); run `sudo -E cargo xtask test` to include them"
        );
    }
    step("toolchain", || {
        toolchain::ensure_components(&["rustfmt", "clippy", "rust-src"])
    })?;
    step("build-ebpf", || {
        build_ebpf::run(build_ebpf::Options::default()).map(|_| ())
    })?;
    if !o.no_lint {
        step("rustfmt", || {
            exec(
                cargo()
                    .current_dir(&root)
                    .args(["fmt", "--all", "--", "--check"]),
            )
        })?;
        step("clippy (host crates)", || {
            exec(cargo().current_dir(&root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
        step("clippy (eBPF crate, bpfel-unknown-none)", || {
            let linker = toolchain::ensure_bpf_linker(&root)?;
            exec(build_ebpf::bpf_cargo(&linker, "clippy")?.args(["--", "-D", "warnings"]))
        })?;
    }
    step("cargo test", || {
        exec(
            cargo()
                .current_dir(&root)
                .args(["test", "--workspace", "--locked"])
                .args(&o.cargo_test_args),
        )
    })?;
    step("install and run outside the repository", || {
        let prefix = root.join("target/xtask-install");
        install::run(install::Options {
            prefix: prefix.clone(),
        })?;
        check_installed(&prefix.join("bin/mm-probe"))
    })?;
    eprintln!(
        "\nxtask test: all steps passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The installed binary runs from `/` with nothing of the repository around.
fn check_installed(bin: &Path) -> Result<()> {
    exec(Command::new(bin).arg("--version").current_dir("/"))?;
    if is_root() {
        let out = Command::new(bin)
            .args(["doctor", "--format", "json"])
            .current_dir("/")
            .output()
            .context("running the installed mm-probe doctor")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("installed `mm-probe doctor` failed:\n{text}");
        }
        if !text.contains("\"load and attach\"") {
            bail!("installed `mm-probe doctor` did not try loading the probe:\n{text}");
        }
    }
    Ok(())
}
