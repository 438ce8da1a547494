//! The host runner of workload specs (mm_core::workload): the plan's steps
//! made with real system calls and memory accesses, one real thread per
//! plan thread, in this process (so that the probe can filter to it).
//!
//! Gated protocol (`mm-probe workload run --gated`), for a measurer that
//! wants to cover the loops only: the runner creates its files, maps the
//! shared regions, starts its threads and lets them make their setup
//! steps, then prints `ready` and waits for a line on stdin; the loops
//! run; when they are over the threads wait (alive, nothing unmapped) while
//! the runner prints `done` and waits for another line; then everything is
//! torn down and the JSON result is printed. Nothing in the loops
//! allocates memory, so the loops' mm activity is the plan's alone.

use std::{
    io::{BufRead as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mm_core::workload::{
    AccessKind, OpCounts, Plan, PlanThread, Rng, Step, engine::ThreadResult, touch_pages,
};
use serde::{Deserialize, Serialize};

use crate::workload::process_cpu_ns;

/// What a host run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostRun {
    /// Workload name.
    pub workload: String,
    /// This process.
    pub pid: u32,
    /// Wall time of the loops.
    pub elapsed_ns: u64,
    /// CPU time of the process over the loops.
    pub cpu_ns: u64,
    /// Per thread.
    pub threads: Vec<ThreadResult>,
    /// The first step that failed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HostRun {
    /// Steps of all threads.
    pub fn ops(&self) -> OpCounts {
        let mut c = OpCounts::default();
        for t in &self.threads {
            c.add(&t.ops);
        }
        c
    }
}

/// Resources a thread's steps use, opened before the loops.
struct Env {
    /// memfd per plan file id.
    files: Vec<OwnedFd>,
    clear_refs: Option<OwnedFd>,
    pagemap: Option<OwnedFd>,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn open_proc(path: &std::ffi::CStr, flags: i32) -> Result<OwnedFd, String> {
    // SAFETY: a valid C string; the fd is owned from here on.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(&format!("open {}", path.to_string_lossy())));
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Env {
    fn new(plan: &Plan) -> Result<Self, String> {
        let mut files = Vec::new();
        for f in &plan.files {
            let name = c"mm-workload";
            // SAFETY: valid name; the fd is owned from here on.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(os_err("memfd_create"));
            }
            // SAFETY: fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: plain syscall on our fd.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), f.size as i64) } != 0 {
                return Err(os_err("ftruncate"));
            }
            files.push(fd);
        }
        let all = plan
            .threads
            .iter()
            .flat_map(|t| t.setup.iter().chain(&t.body));
        let (mut cr, mut pm) = (false, false);
        for s in all {
            cr |= matches!(s, Step::ClearRefs { .. });
            pm |= matches!(s, Step::Pagemap { .. });
        }
        Ok(Self {
            files,
            clear_refs: if cr {
                Some(open_proc(c"/proc/self/clear_refs", libc::O_WRONLY)?)
            } else {
                None
            },
            pagemap: if pm {
                Some(open_proc(c"/proc/self/pagemap", libc::O_RDONLY)?)
            } else {
                None
            },
        })
    }
}

/// Per-thread buffers, allocated and touched before the loops.
struct Buffers {
    pagemap: Vec<u64>,
    maps: Vec<u8>,
}

impl Buffers {
    fn for_thread(t: &PlanThread) -> Self {
        let mut pages = 0;
        let mut maps = false;
        for s in t.setup.iter().chain(&t.body) {
            match s {
                Step::Pagemap { len, .. } => pages = pages.max(len / 4096),
                Step::Maps => maps = true,
                _ => {}
            }
        }
        // Filled now, so that the loops do not fault on them.
        Self {
            pagemap: vec![1; pages as usize],
            maps: vec![1; if maps { 1 << 20 } else { 0 }],
        }
    }
}

/// One step; `Ok(false)` for a tolerated failure (guard install's EAGAIN).
fn step(env: &Env, buf: &mut Buffers, s: &Step, rng: &mut Rng) -> Result<bool, String> {
    // The step's name is formatted only on failure: the loops must not
    // allocate (a thread's first mallocs would fault in its arena).
    let check = |r: i64| -> Result<bool, String> {
        if r == 0 {
            Ok(true)
        } else {
            Err(os_err(&s.to_string()))
        }
    };
    match *s {
        Step::Mmap {
            addr,
            len,
            prot,
            flags,
            file,
        } => {
            let fd = match file {
                Some(id) => env.files[id as usize].as_raw_fd(),
                None => -1,
            };
            // SAFETY: a fresh mapping at a place the plan reserved for it
            // (MAP_FIXED_NOREPLACE: nothing existing is replaced).
            let p = unsafe {
                libc::mmap(
                    addr as *mut libc::c_void,
                    len as usize,
                    prot as i32,
                    flags as i32,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(os_err(&s.to_string()));
            }
            if p as u64 != addr {
                return Err(format!("{s}: mapped at {:#x} instead", p as u64));
            }
            Ok(true)
        }
        // SAFETY (the four calls below): they act on the plan's own
        // regions, which no Rust object refers to.
        Step::Munmap { addr, len } => check(i64::from(unsafe {
            libc::munmap(addr as *mut _, len as usize)
        })),
        Step::Mprotect { addr, len, prot } => check(i64::from(unsafe {
            libc::mprotect(addr as *mut _, len as usize, prot as i32)
        })),
        Step::Madvise { addr, len, advice } => {
            let r = unsafe { libc::madvise(addr as *mut _, len as usize, advice) };
            if r != 0
                && advice == mm_core::uapi::madv::GUARD_INSTALL
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
            {
                return Ok(false);
            }
            check(i64::from(r))
        }
        Step::Touch { access, .. } => {
            touch_pages(s, rng, |a| match access {
                // SAFETY: the plan checked that the page is mapped and
                // allows this access.
                AccessKind::Read => unsafe {
                    std::ptr::read_volatile(a as *const u8);
                },
                AccessKind::Write => unsafe { std::ptr::write_volatile(a as *mut u8, 1) },
            });
            Ok(true)
        }
        Step::ClearRefs { kind } => {
            let fd = env.clear_refs.as_ref().expect("opened for the plan");
            let b = [b'0' + kind as u8];
            // SAFETY: writes one byte from a valid buffer.
            let r = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), 1) };
            if r != 1 {
                return Err(os_err("write /proc/self/clear_refs"));
            }
            Ok(true)
        }
        Step::Pagemap { addr, len } => {
            let fd = env.pagemap.as_ref().expect("opened for the plan");
            let n = (len / 4096) as usize;
            let b = &mut buf.pagemap[..n];
            // SAFETY: reads into a buffer of exactly that many bytes.
            let r = unsafe {
                libc::pread(
                    fd.as_raw_fd(),
                    b.as_mut_ptr().cast(),
                    n * 8,
                    (addr / 4096 * 8) as i64,
                )
            };
            if r != (n * 8) as isize {
                return Err(os_err("read /proc/self/pagemap"));
            }
            Ok(true)
        }
        Step::Maps => {
            let fd = open_proc(c"/proc/self/maps", libc::O_RDONLY)?;
            loop {
                // SAFETY: reads into the buffer's bytes.
                let r = unsafe {
                    libc::read(fd.as_raw_fd(), buf.maps.as_mut_ptr().cast(), buf.maps.len())
                };
                if r < 0 {
                    return Err(os_err("read /proc/self/maps"));
                }
                if r == 0 {
                    break;
                }
            }
            Ok(true)
        }
        Step::Sleep { us } => {
            std::thread::sleep(Duration::from_micros(us));
            Ok(true)
        }
        Step::Fork => {
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(os_err("fork"));
            }
            if pid == 0 {
                // SAFETY: async-signal-safe exit of the child.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Ok(true)
        }
    }
}

/// Touch 64 KiB of this thread's stack below the current frame, so that
/// the loops do not fault in stack pages.
#[inline(never)]
fn prefault_stack() {
    let mut a = [0u8; 64 << 10];
    for i in (0..a.len()).step_by(4096) {
        // SAFETY: inside the array.
        unsafe { std::ptr::write_volatile(a.as_mut_ptr().add(i), 1) };
    }
    std::hint::black_box(&mut a);
}

/// Where the gated protocol's lines go and come from.
pub trait Gate: Send + Sync {
    /// Say `what` and wait for the go-ahead.
    fn wait(&self, what: &str) -> std::io::Result<()>;
}

/// No gate: run straight through.
pub struct NoGate;

impl Gate for NoGate {
    fn wait(&self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
}

/// The gated protocol on stdin/stdout.
pub struct StdioGate;

impl Gate for StdioGate {
    fn wait(&self, what: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{what}")?;
        out.flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(())
    }
}

/// Run a plan in this process.
pub fn run(plan: &Plan, gate: &dyn Gate) -> Result<HostRun, String> {
    let env = Arc::new(Env::new(plan)?);
    let mut rng = Rng::new(0);
    let mut nobuf = Buffers {
        pagemap: Vec::new(),
        maps: Vec::new(),
    };
    for s in &plan.shared {
        step(&env, &mut nobuf, s, &mut rng)?;
    }
    let n = plan.threads.len();
    let ready = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let done = Arc::new(Barrier::new(n + 1));
    let exit = Arc::new(Barrier::new(n + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let first_err: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::new();
    for t in plan.threads.iter().cloned() {
        let (env, ready, go, done, exit, stop, first_err) = (
            env.clone(),
            ready.clone(),
            go.clone(),
            done.clone(),
            exit.clone(),
            stop.clone(),
            first_err.clone(),
        );
        let h = std::thread::Builder::new()
            .name(t.name.chars().take(15).collect())
            .spawn(move || {
                let mut rng = Rng::new(t.seed);
                let mut buf = Buffers::for_thread(&t);
                let mut res = ThreadResult {
                    name: t.name.clone(),
                    ..ThreadResult::default()
                };
                let fail = |e: String| {
                    first_err
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert(format!("thread {}: {e}", t.name));
                    stop.store(true, Ordering::Relaxed);
                };
                let mut ok = true;
                for s in &t.setup {
                    if let Err(e) = step(&env, &mut buf, s, &mut rng) {
                        fail(e);
                        ok = false;
                        break;
                    }
                }
                prefault_stack();
                ready.wait();
                go.wait();

                'outer: loop {
                    if !ok
                        || t.iterations.is_some_and(|n| res.iterations >= n)
                        || stop.load(Ordering::Relaxed)
                    {
                        break;
                    }
                    for s in &t.body {
                        res.ops.count(s);
                        match step(&env, &mut buf, s, &mut rng) {
                            Ok(true) => {}
                            Ok(false) => res.ops.errors += 1,
                            Err(e) => {
                                fail(e);
                                break 'outer;
                            }
                        }
                    }
                    res.iterations += 1;
                }
                done.wait();
                exit.wait();
                res
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(h);
    }
    // The main thread's waiting loop below, run once before the loops so
    // that its code is faulted in now.
    std::thread::sleep(Duration::from_millis(1));
    let _ = process_cpu_ns();
    ready.wait();
    let gate_res = gate.wait("ready");
    if gate_res.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let (start, cpu0) = (Instant::now(), process_cpu_ns());
    go.wait();
    if !plan.is_counted() {
        let deadline = start + plan.duration;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
        }
        stop.store(true, Ordering::Relaxed);
    }
    done.wait();
    let (elapsed, cpu) = (start.elapsed(), process_cpu_ns() - cpu0);
    let gate_res2 = gate.wait("done");
    exit.wait();
    let threads: Vec<ThreadResult> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    // What the setup steps mapped and the loops left mapped.
    let (lo, hi) = plan.window;
    // SAFETY: the plan's window holds only the plan's regions.
    unsafe { libc::munmap(lo as *mut _, (hi - lo) as usize) };
    gate_res.map_err(|e| format!("gate: {e}"))?;
    gate_res2.map_err(|e| format!("gate: {e}"))?;
    let error = first_err
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    Ok(HostRun {
        workload: plan.name.clone(),
        pid: std::process::id(),
        elapsed_ns: elapsed.as_nanos() as u64,
        cpu_ns: cpu,
        threads,
        error,
    })
}

#[cfg(test)]
mod tests {
    use mm_core::workload::{Spec, presets};

    use super::*;

    #[test]
    fn every_preset_runs_on_the_host() {
        for name in presets::NAMES {
            let (_, plan) = Spec::load(name).unwrap();
            let n = plan.threads.len();
            let plan = plan.with_iterations(&vec![2; n]);
            let r = run(&plan, &NoGate).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.error, None, "{name}");
            assert!(r.threads.iter().all(|t| t.iterations == 2), "{name}: {r:?}");
            // Loops leave their regions as they found them.
            assert_eq!(r.ops().mmap, r.ops().munmap, "{name}");
        }
    }
}
