//! Differential testing against the running kernel: the same seeded random
//! sequence of mm operations runs on the host (real system calls, in a
//! runner process, inside a reserved window of its address space) and on
//! the engine. After every step the op's outcome, the window's VMAs (start,
//! end, permissions, offset) and its pagemap bits must agree. A divergence
//! is shrunk to a minimal sequence, which the failure message prints.
//!
//! Host features the comparison depends on (guard regions, soft-dirty,
//! protection keys) are detected at run time and reported; a missing one
//! disables the ops or bits it concerns, never silently.

use std::path::PathBuf;

use mm_core::{
    Mm, MmConfig,
    addr::PAGE_SIZE,
    apply::Process,
    host::{DEFAULT_WINDOW, client::RemoteHost, runner::Features},
    op::{Op, Outcome, WindowState},
    pgtable::Pte,
    proc::pm,
    uapi::{madv, map},
    vm_flags::VmFlags,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PAGES: u64 = 64;
const BASE: u64 = DEFAULT_WINDOW;
const FILE_PAGES: u64 = 16;

fn runner() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mm-host-runner"))
}

fn pku() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "ospke"))
    })
}

/// RAM plus swap in pages: the heuristic overcommit limit (MemTotal is
/// totalram_pages).
fn overcommit_limit() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let kb = |key: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
    };
    (kb("MemTotal:") + kb("SwapTotal:")) / 4
}

fn engine_config(f: Features) -> MmConfig {
    MmConfig {
        soft_dirty: f.soft_dirty,
        exec_only_pkey: pku(),
        overcommit_limit_pages: overcommit_limit(),
        ..MmConfig::default()
    }
}

/// The pagemap bits compared: everything but soft-dirty where the host
/// has no soft-dirty.
fn mask(f: Features) -> u64 {
    if f.soft_dirty {
        pm::FLAGS
    } else {
        pm::FLAGS & !pm::SOFT_DIRTY
    }
}

struct Gen {
    rng: ChaCha8Rng,
    features: Features,
}

/// mlock needs CAP_IPC_LOCK to ignore RLIMIT_MEMLOCK; the engine models
/// root.
fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Gen {
    fn page(&mut self) -> u64 {
        BASE + self.rng.random_range(0..PAGES) * PAGE_SIZE
    }

    fn len(&mut self) -> u64 {
        match self.rng.random_range(0..100) {
            0 => 0,
            1 => u64::MAX - 0xfff,
            2 => self.rng.random_range(1..PAGE_SIZE),
            3..=9 => self.rng.random_range(1..4 * PAGE_SIZE),
            _ => self.rng.random_range(1..=8) * PAGE_SIZE,
        }
    }

    fn addr(&mut self) -> u64 {
        let a = self.page();
        if self.rng.random_range(0..50) == 0 {
            a + 1
        } else {
            a
        }
    }

    fn prot(&mut self) -> u64 {
        match self.rng.random_range(0..20) {
            0 => 0x10 | 3,
            1 => 4, // exec-only
            _ => [0, 1, 3, 3, 3, 5, 7, 1][self.rng.random_range(0..8)],
        }
    }

    fn advice(&mut self) -> i32 {
        const COMMON: &[i32] = &[
            madv::DONTNEED,
            madv::DONTNEED,
            madv::FREE,
            madv::WILLNEED,
            madv::POPULATE_READ,
            madv::POPULATE_WRITE,
            madv::GUARD_INSTALL,
            madv::GUARD_INSTALL,
            madv::GUARD_REMOVE,
            madv::GUARD_REMOVE,
            madv::WIPEONFORK,
            madv::KEEPONFORK,
            madv::DONTFORK,
            madv::DOFORK,
            madv::HUGEPAGE,
            madv::NOHUGEPAGE,
            madv::SEQUENTIAL,
            madv::RANDOM,
            madv::NORMAL,
            madv::DONTDUMP,
            madv::DODUMP,
            madv::DONTNEED_LOCKED,
            madv::REMOVE,
            madv::COLD,
        ];
        match self.rng.random_range(0..40) {
            0 => [5, 7, 99, 100, 101, 26, -1][self.rng.random_range(0..7)],
            _ => {
                let a = COMMON[self.rng.random_range(0..COMMON.len())];
                if !self.features.guard_regions && a >= madv::GUARD_INSTALL {
                    madv::DONTNEED
                } else {
                    a
                }
            }
        }
    }

    /// A free range in the window of `pages` pages, per the engine.
    fn free_range(&mut self, mm: &Mm, pages: u64) -> Option<u64> {
        for _ in 0..8 {
            let p = self.rng.random_range(0..=PAGES - pages);
            let a = BASE + p * PAGE_SIZE;
            if mm.vmas().is_free(a, a + pages * PAGE_SIZE) {
                return Some(a);
            }
        }
        None
    }

    /// Whether executing at `a` is safe on the host: it faults, or the byte
    /// there is a `ret` (0xc3).
    fn exec_safe(mm: &Mm, a: u64) -> bool {
        let Some(v) = mm.vma_at(a) else { return true };
        if !v.flags.contains(VmFlags::EXEC) {
            return true; // faults on NX (or earlier)
        }
        match mm.page_tables().get(a / PAGE_SIZE) {
            Pte::Present(p) => p.page.read(a & (PAGE_SIZE - 1)) == 0xc3,
            Pte::Marker(_) => true,
            Pte::None => v.file.as_ref().is_some_and(|f| {
                f.read_at(v.page_index(a) * PAGE_SIZE + (a & (PAGE_SIZE - 1))) == 0xc3
            }),
        }
    }

    fn op(&mut self, proc: &Process) -> Op {
        let (mm, files) = (proc.mm(), proc.files());
        let r = self.rng.random_range(0..111);
        match r {
            0..=24 => {
                let pages = self.rng.random_range(1..=6);
                let mut flags = map::ANONYMOUS;
                let mut file = None;
                let mut offset = 0;
                match self.rng.random_range(0..10) {
                    0 => flags |= map::SHARED,
                    1 | 2 if !files.is_empty() => {
                        flags = if self.rng.random_bool(0.5) {
                            map::SHARED
                        } else {
                            map::PRIVATE
                        };
                        file = Some(self.rng.random_range(0..files.len() as u32));
                        offset = self.rng.random_range(0..FILE_PAGES) * PAGE_SIZE;
                    }
                    3 if self.rng.random_bool(0.1) => flags |= map::SHARED_VALIDATE,
                    _ => flags |= map::PRIVATE,
                }
                let (addr, placement) = match self.rng.random_range(0..10) {
                    0..=5 => (self.addr(), map::FIXED),
                    6 | 7 => (self.page(), map::FIXED_NOREPLACE),
                    _ => match self.free_range(mm, pages) {
                        Some(a) => (a, 0),
                        None => (self.page(), map::FIXED),
                    },
                };
                flags |= placement;
                if self.rng.random_range(0..8) == 0 {
                    flags |= map::POPULATE;
                }
                if self.rng.random_range(0..20) == 0 {
                    flags |= map::NORESERVE;
                }
                let len = match self.rng.random_range(0..200) {
                    // Larger than RAM: the overcommit heuristic refuses it
                    // where it would be charged (never populated).
                    0 => {
                        flags &= !map::POPULATE;
                        1 << 36
                    }
                    1..=6 => self.len(),
                    _ => pages * PAGE_SIZE,
                };
                Op::Mmap {
                    addr,
                    len,
                    prot: self.prot(),
                    flags,
                    file,
                    offset,
                }
            }
            25..=31 => Op::Munmap {
                addr: self.addr(),
                len: self.len(),
            },
            32..=43 => Op::Mprotect {
                addr: self.addr(),
                len: self.len(),
                prot: self.prot(),
            },
            44..=55 => Op::Madvise {
                addr: self.addr(),
                len: self.len(),
                advice: self.advice(),
            },
            56..=59 if !privileged() => Op::Read { addr: self.page() },
            56..=59 => {
                let flags = match self.rng.random_range(0..10) {
                    0 => 2,
                    1..=3 => 1,
                    _ => 0,
                };
                if self.rng.random_range(0..3) == 0 {
                    Op::Munlock {
                        addr: self.addr(),
                        len: self.len(),
                    }
                } else {
                    Op::Mlock {
                        addr: self.addr(),
                        len: self.len(),
                        flags,
                    }
                }
            }
            60..=69 => Op::Read {
                addr: self.page() + self.rng.random_range(0..4),
            },
            70..=89 => Op::Write {
                addr: self.page() + self.rng.random_range(0..4),
                value: if self.rng.random_bool(0.6) {
                    0xc3
                } else {
                    self.rng.random()
                },
            },
            90..=99 => {
                for _ in 0..8 {
                    let a = self.page();
                    if Self::exec_safe(mm, a) {
                        return Op::Exec { addr: a };
                    }
                }
                Op::Read { addr: self.page() }
            }
            100..=107 => self.mremap(mm),
            110 if proc.generation() < 3 && self.rng.random_range(0..3) == 0 => Op::Fork,
            110 => Op::Read { addr: self.page() },
            _ => Op::ClearRefs {
                kind: if self.rng.random_range(0..10) == 0 {
                    [0, 6, 99][self.rng.random_range(0..3)]
                } else {
                    self.rng.random_range(1..=5)
                },
            },
        }
    }

    /// An mremap, mostly of a VMA (or part of one) in the window, to a
    /// destination in the window.
    fn mremap(&mut self, mm: &Mm) -> Op {
        use mm_core::uapi::mremap::{DONTUNMAP, FIXED, MAYMOVE};
        let vmas: Vec<(u64, u64)> = mm
            .vmas()
            .range(BASE, BASE + PAGES * PAGE_SIZE)
            .map(|v| (v.start.max(BASE), v.end.min(BASE + PAGES * PAGE_SIZE)))
            .collect();
        // The source: a VMA's start, a page inside one, or anywhere.
        let old_addr = match (vmas.is_empty(), self.rng.random_range(0..10)) {
            (false, 0..=5) => vmas[self.rng.random_range(0..vmas.len())].0,
            (false, 6..=8) => {
                let (s, e) = vmas[self.rng.random_range(0..vmas.len())];
                s + self.rng.random_range(0..(e - s) / PAGE_SIZE) * PAGE_SIZE
            }
            _ => self.addr(),
        };
        let pages = |g: &mut Self| g.rng.random_range(1..=6) * PAGE_SIZE;
        let (old_len, new_len, flags, new_addr) = match self.rng.random_range(0..20) {
            // Resize in place (or move when growing with MAYMOVE).
            0..=5 => {
                let flags = if self.rng.random_bool(0.5) {
                    MAYMOVE
                } else {
                    0
                };
                (pages(self), pages(self), flags, 0)
            }
            // Move-only FIXED, possibly across several VMAs.
            6..=10 => {
                let l = pages(self);
                let extra = if self.rng.random_range(0..5) == 0 {
                    DONTUNMAP
                } else {
                    0
                };
                (l, l, MAYMOVE | FIXED | extra, self.page())
            }
            // FIXED with a resize.
            11..=13 => (pages(self), pages(self), MAYMOVE | FIXED, self.page()),
            // DONTUNMAP to a hint.
            14 | 15 => {
                let l = pages(self);
                let hint = self
                    .free_range(mm, l / PAGE_SIZE)
                    .unwrap_or_else(|| self.page());
                (l, l, MAYMOVE | DONTUNMAP, hint)
            }
            // Duplicate a shared mapping (old_len 0).
            16 => {
                let flags = if self.rng.random_bool(0.5) {
                    MAYMOVE | FIXED
                } else {
                    MAYMOVE
                };
                (0, pages(self), flags, self.page())
            }
            // Odd values.
            _ => (
                self.len(),
                self.len(),
                self.rng.random_range(0..16),
                self.addr(),
            ),
        };
        Op::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            new_addr,
        }
    }
}

/// One step where the engine and the host disagreed.
#[derive(Debug)]
struct Divergence {
    step: usize,
    op: Op,
    engine: (Outcome, WindowState),
    host: (Outcome, WindowState),
}

fn masked(mut s: WindowState, m: u64) -> WindowState {
    for e in &mut s.pagemap {
        *e &= m;
    }
    s
}

fn in_window(a: u64) -> bool {
    (BASE..BASE + PAGES * PAGE_SIZE).contains(&a)
}

/// Outcomes agree. A non-fixed mmap whose hint was taken is placed top-down
/// from mmap_base, which differs between the engine and the host: both
/// landing outside the window counts as agreement (the window is unchanged
/// on both sides, and that is checked).
fn same_outcome(op: &Op, e: Outcome, h: Outcome) -> bool {
    match (op, e, h) {
        (Op::Mmap { .. } | Op::Mremap { .. }, Outcome::Ok(a), Outcome::Ok(b))
            if !in_window(a) && !in_window(b) =>
        {
            true
        }
        _ => e == h,
    }
}

/// An mremap that moved pages out of the window (growth with MAYMOVE, or
/// DONTUNMAP with a taken hint) lands where each side's own layout puts it,
/// and the two differ. Pages there may still be shared with the window
/// (page-cache pages, whose mapcount shows in pagemap), and faults there
/// (fault-around, populate) depend on the address: so each side unmaps
/// what it moved out, at its own address.
fn evict(op: &Op, out: Outcome) -> Option<Op> {
    match (op, out) {
        (Op::Mremap { new_len, .. }, Outcome::Ok(a)) if !in_window(a) => Some(Op::Munmap {
            addr: a,
            len: *new_len,
        }),
        _ => None,
    }
}

/// Run `ops` on a fresh engine and a fresh host runner; the first
/// divergence, if any.
/// Outcomes seen, by op kind: (successes, errors, faults).
type Coverage = std::collections::BTreeMap<&'static str, (u64, u64, u64)>;

fn kind(op: &Op) -> &'static str {
    match op {
        Op::Mmap { .. } => "mmap",
        Op::Munmap { .. } => "munmap",
        Op::Mprotect { .. } => "mprotect",
        Op::Mremap { .. } => "mremap",
        Op::Madvise { advice, .. } => match *advice {
            madv::GUARD_INSTALL => "madvise(guard_install)",
            madv::GUARD_REMOVE => "madvise(guard_remove)",
            madv::DONTNEED => "madvise(dontneed)",
            madv::POPULATE_READ | madv::POPULATE_WRITE => "madvise(populate)",
            _ => "madvise(other)",
        },
        Op::Mlock { .. } => "mlock",
        Op::Munlock { .. } => "munlock",
        Op::ClearRefs { .. } => "clear_refs",
        Op::CreateFile { .. } => "create_file",
        Op::Fork => "fork",
        Op::Read { .. } => "read",
        Op::Write { .. } => "write",
        Op::Exec { .. } => "exec",
    }
}

fn tally(cov: &mut Coverage, op: &Op, out: Outcome) {
    let e = cov.entry(kind(op)).or_default();
    match out {
        Outcome::Ok(_) | Outcome::Value(_) => e.0 += 1,
        Outcome::Err(_) => e.1 += 1,
        Outcome::Segv | Outcome::Bus => e.2 += 1,
    }
}

fn run(ops: &[Op], features: Features) -> Result<Option<Divergence>, String> {
    run_counting(ops, features, &mut Coverage::new())
}

fn run_counting(
    ops: &[Op],
    features: Features,
    cov: &mut Coverage,
) -> Result<Option<Divergence>, String> {
    let mut host = RemoteHost::spawn(&runner(), BASE, PAGES).map_err(|e| e.to_string())?;
    let mut proc = Process::new(engine_config(features));
    let m = mask(features);
    for (step, op) in ops.iter().enumerate() {
        if let Op::Exec { addr } = op {
            if !Gen::exec_safe(proc.mm(), *addr) {
                // Only reachable in a shrinking candidate that dropped the
                // write of the `ret`: not a valid reproduction.
                return Err(format!("step {step}: unsafe exec at {addr:#x}"));
            }
        }
        let e_out = proc.apply(op);
        let e_state = masked(proc.mm().window(BASE, PAGES), m);
        let reply = host
            .exec(op)
            .map_err(|e| format!("step {step} {op:?}: {e}"))?;
        let h_state = masked(reply.state, m);
        tally(cov, op, e_out);
        let (e_state, h_state) = match (evict(op, e_out), evict(op, reply.outcome)) {
            (Some(e_unmap), Some(h_unmap)) => {
                proc.apply(&e_unmap);
                let r = host
                    .exec(&h_unmap)
                    .map_err(|e| format!("step {step} {h_unmap:?}: {e}"))?;
                (masked(proc.mm().window(BASE, PAGES), m), masked(r.state, m))
            }
            _ => (e_state, h_state),
        };
        if !same_outcome(op, e_out, reply.outcome) || e_state != h_state {
            return Ok(Some(Divergence {
                step,
                op: op.clone(),
                engine: (e_out, e_state),
                host: (reply.outcome, h_state),
            }));
        }
        if let Err(e) = proc.mm().check_invariants() {
            return Err(format!(
                "engine invariant broken after step {step} {op:?}: {e}"
            ));
        }
    }
    Ok(None)
}

/// Delta debugging: the smallest sub-sequence (in a bounded number of
/// attempts) that still diverges.
fn shrink(mut ops: Vec<Op>, features: Features) -> Vec<Op> {
    let mut attempts = 0;
    let mut chunk = ops.len() / 2;
    while chunk >= 1 && attempts < 400 {
        let mut i = 0;
        let mut removed = false;
        while i < ops.len() && attempts < 400 {
            let mut candidate = ops.clone();
            let end = (i + chunk).min(candidate.len());
            candidate.drain(i..end);
            attempts += 1;
            if matches!(run(&candidate, features), Ok(Some(_))) {
                ops = candidate;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if !removed {
            chunk /= 2;
        }
    }
    ops
}

fn describe(ops: &[Op], d: &Divergence) -> String {
    let mut s = String::from("minimal diverging sequence:\n");
    for (i, op) in ops.iter().enumerate() {
        s.push_str(&format!(
            "  {i:>3}: {}\n",
            serde_json::to_string(op).unwrap()
        ));
    }
    s.push_str(&format!(
        "diverges at step {} ({:?}):\n  engine: {:?}\n          {:?}\n  host:   {:?}\n          {:?}\n",
        d.step, d.op, d.engine.0, d.engine.1, d.host.0, d.host.1
    ));
    s
}

fn sequence(seed: u64, steps: usize, features: Features) -> Vec<Op> {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        features,
    };
    let mut proc = Process::new(engine_config(features));
    let mut ops = Vec::with_capacity(steps);
    // Two files to map: one zero-filled, one full of `ret`s.
    for (id, fill) in [(0u32, 0u8), (1, 0xc3)] {
        let op = Op::CreateFile {
            id,
            size: FILE_PAGES * PAGE_SIZE,
            fill,
        };
        proc.apply(&op);
        ops.push(op);
    }
    while ops.len() < steps {
        let op = g.op(&proc);
        let out = proc.apply(&op);
        if let Some(unmap) = evict(&op, out) {
            proc.apply(&unmap);
        }
        ops.push(op);
    }
    ops
}

#[test]
fn engine_matches_host_kernel() {
    let probe = RemoteHost::spawn(&runner(), BASE, PAGES).expect("start the host runner");
    let features = probe.features();
    drop(probe);
    eprintln!(
        "host features: guard regions {}, soft-dirty {}, protection keys {}",
        features.guard_regions,
        features.soft_dirty,
        pku()
    );
    if !privileged() {
        eprintln!(
            "SKIPPED mlock and munlock: not root, so RLIMIT_MEMLOCK applies on the host (run as root to include them)"
        );
    }
    if !features.soft_dirty {
        eprintln!(
            "SKIPPED comparison of pagemap soft-dirty bits: the host kernel lacks CONFIG_MEM_SOFT_DIRTY"
        );
    }
    let total: usize = std::env::var("MM_DIFF_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let per_seq = 500;
    let base_seed: u64 = std::env::var("MM_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut done = 0;
    let mut seq = 0;
    let mut cov = Coverage::new();
    while done < total {
        let seed = base_seed + seq;
        let ops = sequence(seed, per_seq, features);
        match run_counting(&ops, features, &mut cov) {
            Ok(None) => {}
            Ok(Some(d)) => {
                let prefix = ops[..=d.step].to_vec();
                let small = shrink(prefix.clone(), features);
                match run(&small, features) {
                    Ok(Some(d2)) => panic!(
                        "seed {seed}: engine and host diverge\n{}",
                        describe(&small, &d2)
                    ),
                    // Shrinking lost it: show the whole prefix instead.
                    _ => panic!(
                        "seed {seed}: engine and host diverge (not reproduced when shrunk)\n{}",
                        describe(&prefix, &d)
                    ),
                }
            }
            Err(e) => panic!("seed {seed}: {e}"),
        }
        done += ops.len();
        seq += 1;
    }
    eprintln!("{done} steps in {seq} sequences, no divergence");
    for (k, (ok, err, fault)) in &cov {
        eprintln!("  {k:<24} ok {ok:>6}  errno {err:>6}  fault {fault:>6}");
    }
    // The comparison means something only if every kind of operation
    // really did things on both sides: minimum successes (and faults) per
    // 10,000 steps.
    let per_10k = |n: u64| n * done as u64 / 10_000;
    let mut wanted: Vec<(&str, u64)> = vec![
        ("mmap", 500),
        ("munmap", 200),
        ("mprotect", 200),
        ("madvise(dontneed)", 15),
        ("madvise(populate)", 5),
        ("madvise(other)", 100),
        ("read", 200),
        ("write", 200),
        ("exec", 5),
        ("mremap", 150),
        ("clear_refs", 10),
        ("fork", 10),
    ];
    if privileged() {
        wanted.push(("mlock", 30));
        wanted.push(("munlock", 20));
    }
    if features.guard_regions {
        wanted.push(("madvise(guard_install)", 15));
        wanted.push(("madvise(guard_remove)", 15));
    }
    for (k, min) in wanted {
        let (ok, _, _) = cov.get(k).copied().unwrap_or_default();
        assert!(
            ok >= per_10k(min),
            "only {ok} successful {k} in {done} steps"
        );
    }
    for k in ["read", "write", "exec"] {
        let (_, _, fault) = cov.get(k).copied().unwrap_or_default();
        assert!(
            fault >= per_10k(100),
            "only {fault} faulting {k} in {done} steps"
        );
    }
}
