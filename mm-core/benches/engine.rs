//! Cost per operation at 100, 10,000 and 100,000 VMAs: it must grow
//! logarithmically with the number of VMAs, not linearly.
//!
//! The VMAs are one-page mappings packed right below mmap_base with
//! alternating protections (so they do not merge): the layout where a
//! linear walk of the gaps would be slowest, since a new mapping has to
//! go below all of them.
//!
//! Also a 16 MiB populate and zap, whose cost per page matters to
//! replays (it is on their critical path).
//!
//! Run: `cargo bench -p mm-core --bench engine`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mm_core::{
    Mm, MmConfig,
    uapi::{madv, map, prot},
};

const PS: u64 = 4096;
const RW: u64 = prot::READ | prot::WRITE;
const ANON: u64 = map::PRIVATE | map::ANONYMOUS;
/// A 1024-page read-write VMA for the fault and mprotect benchmarks.
const WORK: u64 = 0x1000_0000_0000;
const WORK_PAGES: u64 = 1024;
const SIZES: [u64; 3] = [100, 10_000, 100_000];

fn space(n: u64) -> Mm {
    let config = MmConfig {
        max_map_count: 200_000,
        ..MmConfig::default()
    };
    let top = config.mmap_base;
    let mut mm = Mm::new(config);
    for i in 0..n {
        let p = if i % 2 == 0 { RW } else { prot::READ };
        mm.mmap(top - (i + 1) * PS, PS, p, ANON | map::FIXED, None, 0)
            .expect("packed VMA");
    }
    mm.mmap(WORK, WORK_PAGES * PS, RW, ANON | map::FIXED, None, 0)
        .expect("work VMA");
    assert_eq!(mm.map_count() as u64, n + 1);
    mm
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    for n in SIZES {
        let mut mm = space(n);
        for i in 0..WORK_PAGES {
            mm.write(WORK + i * PS, 1).unwrap();
        }
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("access_present", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % WORK_PAGES;
                black_box(mm.read(WORK + i * PS).unwrap())
            });
        });
        // A write fault on an absent anonymous page (allocation), and the
        // MADV_DONTNEED that makes it absent again.
        g.bench_with_input(BenchmarkId::new("fault_absent", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % WORK_PAGES;
                let a = WORK + i * PS;
                mm.write(a, 2).unwrap();
                mm.madvise(a, PS, madv::DONTNEED).unwrap();
            });
        });
        // mmap(NULL) of one page (top-down search below all the VMAs),
        // then munmap.
        g.bench_with_input(BenchmarkId::new("mmap_munmap", n), &n, |b, _| {
            b.iter(|| {
                let a = mm.mmap(0, PS, RW, ANON, None, 0).unwrap();
                mm.munmap(black_box(a), PS).unwrap();
            });
        });
        // mprotect of one page in the middle of a VMA (split in three),
        // and back (merge into one).
        g.bench_with_input(BenchmarkId::new("mprotect_split_merge", n), &n, |b, _| {
            b.iter(|| {
                let a = WORK + (WORK_PAGES / 2) * PS;
                mm.mprotect(a, PS, prot::READ).unwrap();
                mm.mprotect(a, PS, RW).unwrap();
            });
        });
        assert_eq!(
            mm.map_count() as u64,
            n + 1,
            "benchmarks left the layout as found"
        );
    }
    g.finish();
    // A 16 MiB MAP_POPULATE mapping and its munmap (fault-vs-munmap's
    // unmapper): 4096 pages populated and zapped, under mmap_lock, on
    // every replay's critical path. Divide by 4096 for the cost per page.
    let mut g = c.benchmark_group("engine");
    let mut mm = space(100);
    let big = 16 << 20;
    g.bench_function("populate_zap_16MiB", |b| {
        b.iter(|| {
            let a = mm.mmap(0, big, RW, ANON | map::POPULATE, None, 0).unwrap();
            mm.munmap(black_box(a), big).unwrap();
        });
    });
    assert_eq!(mm.map_count(), 101, "populate_zap left the layout as found");
    g.finish();
}

criterion_group! {
    name = engine;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(engine);
