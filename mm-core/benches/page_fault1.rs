//! A page_fault1-shaped loop (will-it-scale): map 128 MiB of private
//! anonymous memory, write one byte to every page, unmap. The engine and
//! the host kernel run it alternately in the same process, and the
//! median faults per second of each, and their ratio, are printed. The
//! target: the engine at least as fast as the host.
//!
//! Run: `cargo bench -p mm-core --bench page_fault1`

use std::time::Instant;

use mm_core::{
    Mm,
    uapi::{map, prot},
};

const LEN: u64 = 128 << 20;
const PS: u64 = 4096;
const PAGES: u64 = LEN / PS;
const ROUNDS: usize = 11;

fn engine(mm: &mut Mm) -> f64 {
    let t = Instant::now();
    let a = mm
        .mmap(
            0,
            LEN,
            prot::READ | prot::WRITE,
            map::PRIVATE | map::ANONYMOUS,
            None,
            0,
        )
        .expect("engine mmap");
    for i in 0..PAGES {
        mm.write(a + i * PS, 1).expect("engine write");
    }
    mm.munmap(a, LEN).expect("engine munmap");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(mm.rss(), 0);
    PAGES as f64 / secs
}

fn host() -> f64 {
    let t = Instant::now();
    // SAFETY: a fresh private anonymous mapping, written within bounds and
    // unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            LEN as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "host mmap");
        let base = p.cast::<u8>();
        for i in 0..PAGES as usize {
            base.add(i * PS as usize).write_volatile(1);
        }
        assert_eq!(libc::munmap(p, LEN as usize), 0, "host munmap");
    }
    PAGES as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with no `--bench`: one quick round.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        ROUNDS
    } else {
        1
    };
    let mut mm = Mm::default();
    let (mut e, mut h) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        e.push(engine(&mut mm));
        h.push(host());
    }
    let (e, h) = (median(e), median(h));
    let faults = mm.counters().faults;
    println!("page_fault1: 128 MiB, {PAGES} pages per round, {rounds} rounds (median)");
    println!("  engine {:>12.0} faults/s", e);
    println!("  host   {:>12.0} faults/s", h);
    println!("  engine/host {:.2}", e / h);
    println!("  engine fault counters: {faults:?}");
}
