//! Helpers shared by the engine's conformance tests: a fixed test window,
//! short names for common calls, and a one-character-per-page picture of
//! the window's VMAs, so that a layout is asserted as a string such as
//! `"AAA.BB"` (each letter one VMA, `.` unmapped).

#![allow(dead_code)]

use mm_core::{
    Errno, Mm, MmConfig,
    fault::AccessError,
    proc::pm,
    uapi::{map, prot},
};

/// Page size.
pub const PS: u64 = 4096;
/// Base of the test window (free in a default engine).
pub const BASE: u64 = 0x1000_0000_0000;

/// Address of page `i` of the window.
pub const fn pg(i: u64) -> u64 {
    BASE + i * PS
}

/// The default engine: 6.18 with soft-dirty tracking and VM_MAYBE_GUARD.
pub fn mm() -> Mm {
    Mm::new(MmConfig::default())
}

/// An engine with a configuration.
pub fn mm_with(config: MmConfig) -> Mm {
    Mm::new(config)
}

/// PROT_READ | PROT_WRITE.
pub const RW: u64 = prot::READ | prot::WRITE;
/// PROT_READ.
pub const RO: u64 = prot::READ;

/// mmap `[pg(first), pg(first + pages))` private anonymous, MAP_FIXED.
pub fn anon(mm: &mut Mm, first: u64, pages: u64, prot_bits: u64) -> u64 {
    mm.mmap(
        pg(first),
        pages * PS,
        prot_bits,
        map::PRIVATE | map::ANONYMOUS | map::FIXED,
        None,
        0,
    )
    .expect("anonymous mmap")
}

/// One character per page of `[pg(first), pg(first + pages))`: `.` for
/// no VMA, else a letter per VMA in address order (`A` for the first VMA
/// that appears in the window).
pub fn layout(mm: &Mm, first: u64, pages: u64) -> String {
    let mut out = String::new();
    let mut letters: Vec<u64> = Vec::new();
    for i in first..first + pages {
        match mm.vma_at(pg(i)) {
            None => out.push('.'),
            Some(v) => {
                let n = match letters.iter().position(|s| *s == v.start) {
                    Some(n) => n,
                    None => {
                        letters.push(v.start);
                        letters.len() - 1
                    }
                };
                out.push(char::from(b'A' + (n % 26) as u8));
            }
        }
    }
    out
}

/// The number of pages of the VMA containing `addr`, asserting it starts
/// there (the selftests' "spans N").
pub fn span(mm: &Mm, addr: u64) -> u64 {
    let v = mm.vma_at(addr).expect("a VMA at addr");
    assert_eq!(
        v.start, addr,
        "the VMA at {addr:#x} starts at {:#x}",
        v.start
    );
    (v.end - v.start) / PS
}

/// Both a read and a write of the page raise SIGSEGV (a guard region).
pub fn guarded(mm: &mut Mm, addr: u64) -> bool {
    matches!(mm.read(addr), Err(AccessError::Segv(_)))
        && matches!(mm.write(addr, 1), Err(AccessError::Segv(_)))
}

/// Reads succeed.
pub fn readable(mm: &mut Mm, addr: u64) -> bool {
    mm.read(addr).is_ok()
}

/// The pagemap bit `bit` of the page at `addr`.
pub fn pagemap_has(mm: &Mm, addr: u64, bit: u64) -> bool {
    mm.pagemap(addr) & bit != 0
}

/// Soft-dirty as pagemap reports it.
pub fn soft_dirty(mm: &Mm, addr: u64) -> bool {
    pagemap_has(mm, addr, pm::SOFT_DIRTY)
}

/// Present as pagemap reports it.
pub fn present(mm: &Mm, addr: u64) -> bool {
    pagemap_has(mm, addr, pm::PRESENT)
}

/// The error of a failed call.
pub fn err<T: std::fmt::Debug>(r: Result<T, Errno>) -> Errno {
    r.expect_err("the call should fail")
}

/// The VmFlags line of the smaps entry starting at `addr`.
pub fn vm_flags_line(mm: &Mm, addr: u64) -> String {
    let head = format!("{addr:x}-");
    mm.smaps()
        .split('\n')
        .skip_while(|l| !l.starts_with(&head))
        .find(|l| l.starts_with("VmFlags:"))
        .unwrap_or_default()
        .to_string()
}

/// Whether the smaps VmFlags of the VMA at `addr` include `mnemonic`.
pub fn has_vm_flag(mm: &Mm, addr: u64, mnemonic: &str) -> bool {
    vm_flags_line(mm, addr)
        .split_whitespace()
        .any(|f| f == mnemonic)
}
