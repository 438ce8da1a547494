//! `cargo xtask build-ebpf`: build mm-ebpf's programs for bpfel-unknown-none.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::{exec::exec, toolchain, workspace_root};

#[derive(Args, Default)]
pub struct Options {}

/// Where the object lands; mm-probe's build script embeds it from here.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/mm-ebpf")
}

/// Build the object and return its path.
pub fn run(_opts: Options) -> Result<PathBuf> {
    let root = workspace_root();
    toolchain::ensure_components(&["rust-src"])?;
    let linker = toolchain::ensure_bpf_linker(&root)?;
    exec(&mut bpf_cargo(&linker, "build")?)?;
    let obj = object_path();
    if !obj.exists() {
        bail!("the build succeeded but {} is missing", obj.display());
    }
    eprintln!(
        "xtask: eBPF object {} ({} bytes)",
        obj.display(),
        obj.metadata()?.len()
    );
    Ok(obj)
}

/// `cargo <subcommand>` for mm-ebpf on the BPF target, with the environment
/// the toolchain notes call for.
pub fn bpf_cargo(linker: &toolchain::BpfLinker, subcommand: &str) -> Result<std::process::Command> {
    let root = workspace_root();
    let mut cmd = crate::exec::cargo();
    cmd.current_dir(&root)
        .args([
            subcommand,
            "--package",
            "mm-ebpf",
            "--bin",
            "mm-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--locked",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf"))
        // Unstable -Z build-std on the stable toolchain (see toolchain.rs).
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", linker.path_env()?)
        .env("LD_LIBRARY_PATH", linker.ld_library_path_env()?)
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf",
        );
    Ok(cmd)
}
