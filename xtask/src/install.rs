//! `cargo xtask install`: mm-probe, with the eBPF object embedded, where
//! `sudo mm-probe` finds it.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build_ebpf,
    exec::{cargo, exec, is_root},
    toolchain::command_exists,
    workspace_root,
};

#[derive(Args)]
pub struct Options {
    /// Install prefix: the binary goes to PREFIX/bin/mm-probe. The default
    /// is on sudo's secure_path.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
}

/// Build the release binary of mm-probe (embedding a fresh eBPF object).
pub fn build_release() -> Result<PathBuf> {
    build_ebpf::run(build_ebpf::Options::default())?;
    exec(cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "--locked",
        "--package",
        "mm-probe",
    ]))?;
    Ok(workspace_root().join("target/release/mm-probe"))
}

pub fn run(o: Options) -> Result<()> {
    let bin = build_release()?;
    let dir = o.prefix.join("bin");
    let dst = dir.join("mm-probe");
    let direct = std::fs::create_dir_all(&dir).and_then(|()| {
        // Copy next to the target and rename, so a running mm-probe is not
        // overwritten in place.
        let tmp = dir.join(".mm-probe.new");
        std::fs::copy(&bin, &tmp)?;
        std::fs::rename(&tmp, &dst)
    });
    match direct {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !is_root() => {
            if !command_exists("sudo") {
                bail!("cannot write {}: {e}; run as root", dst.display());
            }
            eprintln!(
                "xtask: {} is not writable; installing with sudo",
                dir.display()
            );
            exec(
                Command::new("sudo")
                    .args(["install", "-D", "-m", "0755"])
                    .arg(&bin)
                    .arg(&dst),
            )?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot install {}", dst.display())),
    }
    eprintln!(
        "xtask: installed {} (eBPF object embedded); try: sudo mm-probe doctor",
        dst.display()
    );
    Ok(())
}
