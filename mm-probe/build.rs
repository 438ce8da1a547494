//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is looked up at `MM_EBPF_OBJECT` if set, else at
//! `<workspace>/target/ebpf/bpfel-unknown-none/release/mm-ebpf`.

use std::{env, fs, path::PathBuf, process::exit};

fn main() {
    println!("cargo:rerun-if-env-changed=MM_EBPF_OBJECT");
    let object = env::var_os("MM_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
                .join("../target/ebpf/bpfel-unknown-none/release/mm-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("mm-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        eprintln!(
            "error: the eBPF object {} is missing ({e}): run `cargo xtask build-ebpf` first",
            object.display()
        );
        exit(1);
    }
}
