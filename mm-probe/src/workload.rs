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
    fn timed_workloads_do_work() {
        let r = fault_loop(2, Duration::from_millis(50), 1, false).unwrap();
        assert_eq!(r.threads, 2);
        assert!(r.pages_touched >= 256, "{r:?}");
        assert_eq!(r.pages_touched, r.mmaps * 256);
        let r = fault_vs_munmap(2, Duration::from_millis(50), 1, false).unwrap();
        assert!(r.mmaps >= 2 && r.pages_touched >= 64, "{r:?}");
    }
}
