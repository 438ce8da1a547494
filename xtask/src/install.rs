//! `cargo xtask install`: mm-probe and mm-tui, with the eBPF object
//! embedded, where `sudo mm-probe` and `sudo mm-tui` find them.

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

/// The binaries `install` puts in PREFIX/bin.
pub const BINARIES: [&str; 2] = ["mm-probe", "mm-tui"];

/// Build the release binaries of mm-probe and mm-tui (embedding a fresh
/// eBPF object); returns mm-probe's path (mm-tui's is next to it, see
/// [`release_bin`]).
pub fn build_release() -> Result<PathBuf> {
    build_ebpf::run(build_ebpf::Options::default())?;
    build_packages(&BINARIES)?;
    Ok(release_bin("mm-probe"))
}

/// `cargo build --release --locked` of `packages`.
pub fn build_packages(packages: &[&str]) -> Result<()> {
    let mut c = cargo();
    c.current_dir(workspace_root())
        .args(["build", "--release", "--locked"]);
    for p in packages {
        c.args(["--package", p]);
    }
    exec(&mut c)
}

/// A release binary's path (under `CARGO_TARGET_DIR` when it is set, as
/// cargo puts it there).
pub fn release_bin(name: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("release")
        .join(name)
}

pub fn run(o: Options) -> Result<()> {
    build_release()?;
    for name in BINARIES {
        install_one(&release_bin(name), &o.prefix.join("bin"), name)?;
    }
    eprintln!(
        "xtask: installed {} in {} (eBPF object embedded); try: sudo mm-probe doctor, sudo mm-tui",
        BINARIES.join(" and "),
        o.prefix.join("bin").display()
    );
    Ok(())
}

fn install_one(bin: &std::path::Path, dir: &std::path::Path, name: &str) -> Result<()> {
    let dst = dir.join(name);
    let direct = std::fs::create_dir_all(dir).and_then(|()| {
        // Copy next to the target and rename, so a running mm-probe is not
        // overwritten in place.
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::copy(bin, &tmp)?;
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
                    .arg(bin)
                    .arg(&dst),
            )?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot install {}", dst.display())),
    }
    Ok(())
}
