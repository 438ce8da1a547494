//! `cargo xtask test`: the whole suite, as CI runs it.
//!
//! Lints (rustfmt, clippy on the host crates and on the eBPF crate for its
//! own target), every crate's tests including the live eBPF tests (which
//! need root; under `CI=true` a skipped live test fails), the model
//! checking of mm-core's locking protocols (loom and shuttle, each its own
//! build of mm-core with that checker's primitives), and a check that the
//! installed binary works outside the repository.

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
        toolchain::ensure_components(&["rustfmt", "clippy", "rust-src"])?;
        // The dashboard's end-to-end test drives it in tmux.
        toolchain::ensure_debian_packages(&[("tmux", "tmux")])
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
        for checker in MODEL_CHECKERS {
            step(
                &format!("clippy (mm-core with {})", checker.feature),
                || {
                    exec(cargo().current_dir(&root).args([
                        "clippy",
                        "-p",
                        "mm-core",
                        "--all-targets",
                        "--locked",
                        "--features",
                        checker.feature,
                        "--",
                        "-D",
                        "warnings",
                    ]))
                },
            )?;
        }
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
    for checker in MODEL_CHECKERS {
        step(&format!("model checking ({})", checker.feature), || {
            let mut c = cargo();
            c.current_dir(&root).args([
                "test",
                "-p",
                "mm-core",
                "--release",
                "--locked",
                "--features",
                checker.feature,
            ]);
            for t in checker.tests {
                c.args(["--test", t]);
            }
            exec(&mut c)
        })?;
    }
    step("install and run outside the repository", || {
        let prefix = root.join("target/xtask-install");
        install::run(install::Options {
            prefix: prefix.clone(),
        })?;
        check_installed(&prefix.join("bin/mm-probe"))?;
        exec(
            Command::new(prefix.join("bin/mm-tui"))
                .arg("--version")
                .current_dir("/"),
        )
    })?;
    eprintln!(
        "\nxtask test: all steps passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A model checker and the test files it runs.
struct ModelChecker {
    feature: &'static str,
    tests: &'static [&'static str],
}

/// loom for the small protocols (exhaustive up to a preemption bound),
/// shuttle for the whole engine (randomised and PCT schedules).
const MODEL_CHECKERS: [ModelChecker; 2] = [
    ModelChecker {
        feature: "loom",
        tests: &["model_vma_lock", "model_mmap_lock"],
    },
    ModelChecker {
        feature: "shuttle",
        tests: &["model_engine", "model_mmap_lock"],
    },
];

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
