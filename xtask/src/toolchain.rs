//! Installing what the build needs, idempotently: rustup components, a
//! project-local bpf-linker linked against the Rust toolchain's own libLLVM
//! (see ../shared/docs/ebpf-toolchain.md), and Debian packages.
//!
//! The eBPF crate is built with the same toolchain as the host crates, with
//! `RUSTC_BOOTSTRAP=1` for `-Z build-std=core`. That keeps the LLVM that
//! writes the bitcode and the LLVM inside bpf-linker the same library, which
//! a separately installed nightly would not guarantee.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{exec, is_root, output};

/// The pinned bpf-linker release.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The sysroot of the toolchain `rustc` resolves to here.
pub fn sysroot() -> Result<PathBuf> {
    let out = output(Command::new("rustc").args(["--print", "sysroot"]))
        .context("cannot find the Rust toolchain: is rustup installed?")?;
    Ok(PathBuf::from(out.trim()))
}

/// The rustup name of that toolchain (the sysroot directory's name).
fn toolchain_name(sysroot: &Path) -> Result<String> {
    sysroot
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("unexpected sysroot path {}", sysroot.display()))
}

/// Install rustup components that are missing.
pub fn ensure_components(components: &[&str]) -> Result<()> {
    let sysroot = sysroot()?;
    let toolchain = toolchain_name(&sysroot)?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &toolchain,
    ]))?;
    for component in components {
        let present = installed
            .lines()
            .any(|l| l == *component || l.starts_with(&format!("{component}-")));
        if !present {
            eprintln!("xtask: installing rustup component {component} for {toolchain}");
            exec(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                &toolchain,
            ]))?;
        }
    }
    Ok(())
}

/// The toolchain's libLLVM shared library and its major version.
fn toolchain_llvm(sysroot: &Path) -> Result<(PathBuf, u32)> {
    let lib = sysroot.join("lib");
    let mut found = None;
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // libLLVM.so.22.1-rust-1.95.0-stable
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            if name.contains("-rust-") {
                let major = rest
                    .split(['.', '-'])
                    .next()
                    .and_then(|m| m.parse::<u32>().ok());
                if let Some(major) = major {
                    found = Some((lib.join(&name), major));
                }
            }
        }
    }
    found.with_context(|| {
        format!(
            "no libLLVM.so.*-rust-* in {}: this Rust toolchain does not ship its LLVM as a \
             shared library, which bpf-linker needs",
            lib.display()
        )
    })
}

/// Paths and environment for running bpf-linker.
pub struct BpfLinker {
    /// Directory holding the `bpf-linker` binary (to put first on PATH).
    pub bin_dir: PathBuf,
    /// The toolchain's lib directory (bpf-linker has no rpath to libLLVM).
    pub llvm_lib_dir: PathBuf,
}

impl BpfLinker {
    /// PATH with bpf-linker's directory first.
    pub fn path_env(&self) -> Result<OsString> {
        let mut paths = vec![self.bin_dir.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        Ok(std::env::join_paths(paths)?)
    }

    /// LD_LIBRARY_PATH with the toolchain's lib directory first.
    pub fn ld_library_path_env(&self) -> Result<OsString> {
        let mut paths = vec![self.llvm_lib_dir.clone()];
        if let Some(p) = std::env::var_os("LD_LIBRARY_PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        Ok(std::env::join_paths(paths)?)
    }
}

/// Build bpf-linker into `<root>/.tools/bpf-linker` unless a build for this
/// toolchain's libLLVM is already there.
pub fn ensure_bpf_linker(root: &Path) -> Result<BpfLinker> {
    let sysroot = sysroot()?;
    let (libllvm, major) = toolchain_llvm(&sysroot)?;
    let tools = root.join(".tools");
    let install_root = tools.join("bpf-linker");
    let bin_dir = install_root.join("bin");
    let stamp_path = install_root.join("stamp");
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{major} {}\n",
        libllvm.display()
    );
    let linker = BpfLinker {
        bin_dir: bin_dir.clone(),
        llvm_lib_dir: sysroot.join("lib"),
    };
    let have = bin_dir.join("bpf-linker").exists()
        && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if have {
        return Ok(linker);
    }

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute, once)",
        libllvm.display()
    );
    let prefix = tools.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(&install_root)
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker failed; see the cargo output above")?;
    // Check that it runs before recording success.
    exec(
        Command::new(bin_dir.join("bpf-linker"))
            .arg("--version")
            .env("LD_LIBRARY_PATH", linker.ld_library_path_env()?),
    )?;
    fs::write(&stamp_path, stamp)?;
    Ok(linker)
}

/// Install Debian packages whose command is missing: `(command, package)`.
pub fn ensure_debian_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !command_exists(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else if command_exists("sudo") {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            bail!(
                "need root to install {}: run as root or install them yourself",
                missing.join(" ")
            );
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        exec(&mut cmd)
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    if apt(&install).is_err() {
        apt(&["update", "-q"])?;
        apt(&install)?;
    }
    Ok(())
}

/// Whether `cmd` is on PATH (or in the sbin directories root has).
pub fn command_exists(cmd: &str) -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.iter().any(|d| d.join(cmd).is_file())
}
