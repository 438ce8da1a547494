//! Built-in workloads: small programs with a known mm footprint, for demos
//! (`mm-probe run` with no command), for the live tests and for the
//! overhead benchmark. Each prints one JSON summary line when it ends.
//!
//! A workload can be gated: it maps what it needs, prints `ready` on stdout
//! and waits for a line on stdin before doing the measured work, so that a
//! test can attach the probe in between.

use std::{
    io::{BufRead as _, Write as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Page size assumed for touching (x86_64 base pages).
pub const PAGE: usize = 4096;

/// An anonymous private mapping, unmapped on drop.
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value.
unsafe impl Send for Region {}

impl Region {
    /// mmap(PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS[|MAP_POPULATE]).
    pub fn map(len: usize, populate: bool) -> std::io::Result<Self> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if populate {
            flags |= libc::MAP_POPULATE;
        }
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Write one byte in every page; returns the number of pages.
    pub fn touch_all(&self) -> u64 {
        let pages = self.len / PAGE;
        for i in 0..pages {
            // SAFETY: inside the mapping, which is writable.
            unsafe { std::ptr::write_volatile(self.ptr.add(i * PAGE), 1) };
        }
        pages as u64
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What a workload did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkloadResult {
    /// Workload name.
    pub workload: String,
    /// Its process id.
    pub pid: u32,
    /// Threads that did the work.
    pub threads: u32,
    /// Wall time of the measured part.
    pub elapsed_ns: u64,
    /// CPU time (user + system, all threads) of the measured part: unlike
    /// wall time it is not inflated by time stolen by other guests.
    #[serde(default)]
    pub cpu_ns: u64,
    /// Pages written for the first time (each one a fault).
    pub pages_touched: u64,
    /// mmap calls.
    pub mmaps: u64,
    /// munmap calls.
    pub munmaps: u64,
}

/// Print `ready` and wait for a line on stdin.
pub fn gate() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

/// CPU time (user + system) this process has used, ns.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[derive(Default)]
struct Counters {
    pages: AtomicU64,
    mmaps: AtomicU64,
    munmaps: AtomicU64,
}

impl Counters {
    fn result(
        &self,
        workload: &str,
        threads: u32,
        elapsed: Duration,
        cpu_ns: u64,
    ) -> WorkloadResult {
        WorkloadResult {
            workload: workload.into(),
            pid: std::process::id(),
            threads,
            elapsed_ns: elapsed.as_nanos() as u64,
            cpu_ns,
            pages_touched: self.pages.load(Ordering::Relaxed),
            mmaps: self.mmaps.load(Ordering::Relaxed),
            munmaps: self.munmaps.load(Ordering::Relaxed),
        }
    }

    /// mmap, touch every page, munmap.
    fn map_touch_unmap(&self, len: usize) -> std::io::Result<()> {
        let r = Region::map(len, false)?;
        self.mmaps.fetch_add(1, Ordering::Relaxed);
        self.pages.fetch_add(r.touch_all(), Ordering::Relaxed);
        drop(r);
        self.munmaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Touch `pages` fresh anonymous pages once.
pub fn touch(pages: usize, gated: bool) -> std::io::Result<WorkloadResult> {
    let c = Counters::default();
    let r = Region::map(pages * PAGE, false)?;
    c.mmaps.fetch_add(1, Ordering::Relaxed);
    if gated {
        gate()?;
    }
    let (start, cpu) = (Instant::now(), process_cpu_ns());
    c.pages.fetch_add(r.touch_all(), Ordering::Relaxed);
    let (elapsed, cpu) = (start.elapsed(), process_cpu_ns() - cpu);
    drop(r);
    c.munmaps.fetch_add(1, Ordering::Relaxed);
    Ok(c.result("touch", 1, elapsed, cpu))
}

/// `pairs` times: mmap `pages` pages and munmap them, untouched.
pub fn mmap_munmap(pairs: u64, pages: usize, gated: bool) -> std::io::Result<WorkloadResult> {
    if gated {
        gate()?;
    }
    let c = Counters::default();
    let (start, cpu) = (Instant::now(), process_cpu_ns());
    for _ in 0..pairs {
        let r = Region::map(pages * PAGE, false)?;
        c.mmaps.fetch_add(1, Ordering::Relaxed);
        drop(r);
        c.munmaps.fetch_add(1, Ordering::Relaxed);
    }
    Ok(c.result("mmap-munmap", 1, start.elapsed(), process_cpu_ns() - cpu))
}

/// Run `body` on `threads` threads until `duration` has passed; returns
/// the wall time and the process's CPU time over that span.
fn for_duration(
    threads: u32,
    duration: Duration,
    body: impl Fn(u32, &AtomicBool) -> std::io::Result<()> + Send + Sync + 'static,
) -> std::io::Result<(Duration, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let body = Arc::new(body);
    let (start, cpu) = (Instant::now(), process_cpu_ns());
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let body = Arc::clone(&body);
            std::thread::spawn(move || body(i, &stop))
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| std::io::Error::other("a workload thread panicked"))??;
    }
    Ok((start.elapsed(), process_cpu_ns() - cpu))
}

/// The classic mmap_lock contention case: thread 0 maps `region_mib` MiB
/// populated and unmaps it, over and over (long write holds under munmap);
/// the other threads map small regions, fault them in and unmap them (read
/// acquisitions on the per-VMA lock fallback of each first fault, and short
/// write acquisitions), so they queue behind the unmapper.
pub fn fault_vs_munmap(
    threads: u32,
    duration: Duration,
    region_mib: usize,
    gated: bool,
) -> std::io::Result<WorkloadResult> {
    if gated {
        gate()?;
    }
    let threads = threads.max(2);
    let c = Arc::new(Counters::default());
    let c2 = Arc::clone(&c);
    let (elapsed, cpu) = for_duration(threads, duration, move |i, stop| {
        while !stop.load(Ordering::Relaxed) {
            if i == 0 {
                let r = Region::map(region_mib << 20, true)?;
                c2.mmaps.fetch_add(1, Ordering::Relaxed);
                drop(r);
                c2.munmaps.fetch_add(1, Ordering::Relaxed);
            } else {
                c2.map_touch_unmap(64 * PAGE)?;
            }
        }
        Ok(())
    })?;
    Ok(c.result("fault-vs-munmap", threads, elapsed, cpu))
}

/// The overhead benchmark's load: each thread maps `size_mib` MiB, writes
/// every page and unmaps it, in a loop. Almost all its kernel time is page
/// faults served under per-VMA locks.
pub fn fault_loop(
    threads: u32,
    duration: Duration,
    size_mib: usize,
    gated: bool,
) -> std::io::Result<WorkloadResult> {
    if gated {
        gate()?;
    }
    let threads = threads.max(1);
    let c = Arc::new(Counters::default());
    let c2 = Arc::clone(&c);
    let (elapsed, cpu) = for_duration(threads, duration, move |_, stop| {
        while !stop.load(Ordering::Relaxed) {
            c2.map_touch_unmap(size_mib << 20)?;
        }
        Ok(())
    })?;
    Ok(c.result("fault-loop", threads, elapsed, cpu))
}

/// One system call `record-demo` made, as it made it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DemoOp {
    /// Syscall name.
    pub name: String,
    /// x86_64 syscall number.
    pub nr: i64,
    /// The arguments as passed (the unused ones 0).
    pub args: [u64; 6],
    /// The return value, or `-errno`.
    pub result: i64,
}

/// What `record-demo` did and what its region looked like at the end.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordDemo {
    /// Always "record-demo".
    pub workload: String,
    /// Process id.
    pub pid: u32,
    /// The (only) thread that did everything.
    pub tid: u32,
    /// Start of the 16-page region.
    pub region: u64,
    /// Its length.
    pub len: u64,
    /// The system calls on the region, in order.
    pub ops: Vec<DemoOp>,
    /// The pages written (each one a write fault on a not-present page), in
    /// order.
    pub touched: Vec<u64>,
    /// The /proc/self/maps lines intersecting the region at the end.
    pub maps: Vec<String>,
}

/// Pages in `record-demo`'s region.
pub const DEMO_PAGES: usize = 16;

fn demo_call(ops: &mut Vec<DemoOp>, name: &str, nr: i64, args: [u64; 6], ret: i64) -> i64 {
    let result = if ret == -1 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        ret
    };
    ops.push(DemoOp {
        name: name.into(),
        nr,
        args,
        result,
    });
    result
}

/// A single-threaded, known sequence of mm system calls and faults for
/// `mm-probe record` to record: mmap 16 pages rw, write 8 of them, mprotect 4
/// of those read-only, install guards on 2 untouched pages, munmap 4 pages,
/// and an mprotect of the hole that fails with ENOMEM.
pub fn record_demo(gated: bool) -> std::io::Result<RecordDemo> {
    if gated {
        gate()?;
    }
    let len = DEMO_PAGES * PAGE;
    let page = PAGE as u64;
    let mut ops = Vec::new();
    let fd_none = -1i64 as u64;
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let ret = if ptr == libc::MAP_FAILED {
        -1
    } else {
        ptr as i64
    };
    let prot_rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let r = demo_call(
        &mut ops,
        "mmap",
        libc::SYS_mmap,
        [0, len as u64, prot_rw, flags, fd_none, 0],
        ret,
    );
    if r < 0 {
        return Err(std::io::Error::from_raw_os_error(-r as i32));
    }
    let base = r as u64;
    let mut touched = Vec::new();
    for i in 0..DEMO_PAGES / 2 {
        let p = base + i as u64 * page;
        // SAFETY: inside the fresh writable mapping.
        unsafe { std::ptr::write_volatile(p as *mut u8, 1) };
        touched.push(p);
    }
    let at = |i: u64| base + i * page;
    let prot_r = libc::PROT_READ as u64;
    // SAFETY (all below): system calls on this workload's own region, whose
    // pages nothing else uses.
    let ret = unsafe { libc::mprotect(at(4) as *mut _, 4 * PAGE, libc::PROT_READ) };
    demo_call(
        &mut ops,
        "mprotect",
        libc::SYS_mprotect,
        [at(4), 4 * page, prot_r, 0, 0, 0],
        ret.into(),
    );
    const MADV_GUARD_INSTALL: i32 = 102;
    let ret = unsafe { libc::madvise(at(12) as *mut _, 2 * PAGE, MADV_GUARD_INSTALL) };
    demo_call(
        &mut ops,
        "madvise",
        libc::SYS_madvise,
        [at(12), 2 * page, MADV_GUARD_INSTALL as u64, 0, 0, 0],
        ret.into(),
    );
    let ret = unsafe { libc::munmap(at(8) as *mut _, 4 * PAGE) };
    demo_call(
        &mut ops,
        "munmap",
        libc::SYS_munmap,
        [at(8), 4 * page, 0, 0, 0, 0],
        ret.into(),
    );
    // The hole just made: ENOMEM.
    let ret = unsafe { libc::mprotect(at(8) as *mut _, 4 * PAGE, libc::PROT_READ) };
    demo_call(
        &mut ops,
        "mprotect",
        libc::SYS_mprotect,
        [at(8), 4 * page, prot_r, 0, 0, 0],
        ret.into(),
    );
    let maps = std::fs::read_to_string("/proc/self/maps")?
        .lines()
        .filter(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
            let s = u64::from_str_radix(s, 16).unwrap_or(0);
            let e = u64::from_str_radix(e, 16).unwrap_or(0);
            s < base + len as u64 && e > base
        })
        .map(str::to_owned)
        .collect();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    Ok(RecordDemo {
        workload: "record-demo".into(),
        pid: std::process::id(),
        tid,
        region: base,
        len: len as u64,
        ops,
        touched,
        maps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_counts_pages() {
        let r = touch(10, false).unwrap();
        assert_eq!(r.pages_touched, 10);
        assert_eq!((r.mmaps, r.munmaps), (1, 1));
    }

    #[test]
    fn mmap_munmap_counts_pairs() {
        let r = mmap_munmap(7, 2, false).unwrap();
        assert_eq!((r.mmaps, r.munmaps, r.pages_touched), (7, 7, 0));
    }

    #[test]
    fn record_demo_does_what_it_says() {
        let d = record_demo(false).unwrap();
        let names: Vec<&str> = d.ops.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["mmap", "mprotect", "madvise", "munmap", "mprotect"]);
        assert_eq!(d.ops[0].result as u64, d.region);
        assert_eq!(d.ops[1].result, 0);
        assert_eq!(d.ops[3].result, 0);
        assert_eq!(d.ops[4].result, -i64::from(libc::ENOMEM));
        assert_eq!(d.touched.len(), 8);
        // rw- pages 0-3, r-- 4-7, a hole, rw- 12-15 (guards are not VMAs).
        // Other tests of this process may map things into the hole or next
        // to the region (and merge with it): look for the region's own
        // boundaries only.
        let p = |i: u64| d.region + i * 4096;
        let has = |s: String| d.maps.iter().any(|l| l.contains(&s));
        assert!(has(format!("-{:x} rw-p", p(4))), "{:?}", d.maps);
        assert!(has(format!("{:x}-{:x} r--p", p(4), p(8))), "{:?}", d.maps);
        assert!(
            has(format!("{:x}-", p(12))) || d.maps.iter().any(|l| l.contains(" rw-p ")),
            "{:?}",
            d.maps
        );
        assert!(!has(format!("{:x}-{:x}", p(8), p(12))), "{:?}", d.maps);
        // The region stays mapped (the process ends soon; tests run it once).
    }

    #[test]
    fn timed_workloads_do_work() {
        let r = fault_loop(2, Duration::from_millis(50), 1, false).unwrap();
        assert_eq!(r.threads, 2);
        assert!(r.pages_touched >= 256, "{r:?}");
        assert_eq!(r.pages_touched, r.mmaps * 256);
        let r = fault_vs_munmap(2, Duration::from_millis(50), 1, false).unwrap();
        assert!(r.mmaps >= 2 && r.pages_touched >= 64, "{r:?}");
    }
}
