//! CPUs for the engine's threads: at most as many threads run engine
//! operations at once as the machine has CPUs, and a thread hands its CPU
//! to another only between operations, as a kernel switches tasks only at
//! its scheduling points (kernel/sched/core.c: a task in a page fault or
//! an mm system call is not preempted while it holds mmap_lock or a VMA
//! lock; it runs to the end, or sleeps on a lock whose holder runs).
//!
//! Why: the engine's threads are user threads, which the host preempts
//! anywhere. With more engine threads than CPUs, a thread preempted while
//! holding the engine's mmap_lock for read keeps every writer, and behind
//! it every reader, waiting for its next time slice: a lock convoy the
//! modelled program does not have. (A classic replay of fault-vs-munmap,
//! 4 threads on 2 CPUs, took 0.37 s or 1.2 s from one run to the next,
//! the slow runs with seven times the futex calls.)
//!
//! A thread takes a CPU ([`Cpus::enter`]), checks at each operation
//! boundary whether its time slice is over while others wait
//! ([`OnCpu::tick`]), gives the CPU up while it waits for another thread
//! ([`OnCpu::off_cpu`]), and gives it back when it is done (drop). CPUs
//! are handed over first come, first served.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::Thread,
    time::{Duration, Instant},
};

/// How long a thread keeps its CPU while others wait for one: the
/// kernel's minimum time slice (`sysctl_sched_base_slice`, 0.75 ms).
pub const SLICE: Duration = Duration::from_micros(750);

/// A flag on its own cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The CPUs of `threads` engine threads, numbered from 0.
pub struct Cpus {
    /// Free CPUs and the threads waiting for one.
    state: Mutex<State>,
    /// Threads waiting for a CPU (read without the mutex at every tick).
    queued: AtomicUsize,
    /// Per thread: a CPU was handed to it.
    granted: Vec<Padded<AtomicBool>>,
    /// Per thread: its handle, for waking it.
    handles: Vec<OnceLock<Thread>>,
}

struct State {
    /// CPUs free.
    free: usize,
    /// Threads waiting for one, first come, first served.
    queue: VecDeque<usize>,
}

impl Cpus {
    /// `cpus` CPUs (at least one) for `threads` threads.
    pub fn new(cpus: usize, threads: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: cpus.max(1),
                queue: VecDeque::with_capacity(threads),
            }),
            queued: AtomicUsize::new(0),
            granted: (0..threads).map(|_| Padded::default()).collect(),
            handles: (0..threads).map(|_| OnceLock::new()).collect(),
        }
    }

    /// As many CPUs as this process may use (`available_parallelism`).
    pub fn of_this_machine(threads: usize) -> Self {
        Self::new(
            std::thread::available_parallelism().map_or(1, usize::from),
            threads,
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Thread `me`'s handle, once it has entered.
    pub fn handle(&self, me: usize) -> Option<&Thread> {
        self.handles[me].get()
    }

    /// The calling thread becomes thread `me` and takes a CPU, which it
    /// gives back when the returned [`OnCpu`] is dropped.
    pub fn enter(&self, me: usize) -> OnCpu<'_> {
        let _ = self.handles[me].set(std::thread::current());
        self.acquire(me);
        OnCpu {
            cpus: self,
            me,
            since: Instant::now(),
        }
    }

    /// Take a CPU as thread `me` (which has entered), waiting in turn.
    fn acquire(&self, me: usize) {
        {
            let mut s = self.lock();
            if s.free > 0 && s.queue.is_empty() {
                s.free -= 1;
                return;
            }
            s.queue.push_back(me);
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        while !self.granted[me].0.swap(false, Ordering::Acquire) {
            std::thread::park();
        }
    }

    /// Give a CPU back: to the first thread waiting, if any.
    fn release(&self) {
        let mut s = self.lock();
        match s.queue.pop_front() {
            Some(t) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.granted[t].0.store(true, Ordering::Release);
                if let Some(h) = self.handles[t].get() {
                    h.unpark();
                }
            }
            None => s.free += 1,
        }
    }
}

/// A thread's hold of a CPU of [`Cpus`]; given back on drop.
pub struct OnCpu<'a> {
    cpus: &'a Cpus,
    me: usize,
    /// When the current time slice began.
    since: Instant,
}

impl OnCpu<'_> {
    /// At an operation boundary: if the time slice is over and others
    /// wait for a CPU, give the CPU to the first of them and wait for a
    /// turn (a new slice then begins).
    pub fn tick(&mut self) {
        if self.cpus.queued.load(Ordering::Relaxed) == 0 {
            return;
        }
        if self.since.elapsed() >= SLICE {
            self.off_cpu(|| ());
        }
    }

    /// Run `wait` (a wait for another thread) without the CPU, then take
    /// one again (a new slice then begins).
    pub fn off_cpu<R>(&mut self, wait: impl FnOnce() -> R) -> R {
        self.cpus.release();
        let r = wait();
        self.cpus.acquire(self.me);
        self.since = Instant::now();
        r
    }
}

impl Drop for OnCpu<'_> {
    fn drop(&mut self) {
        self.cpus.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spin (sleeping a little) until `f` holds; panics after 10 s.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "timeout: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn as_many_threads_run_at_once_as_there_are_cpus() {
        const THREADS: usize = 5;
        let cpus = Cpus::new(2, THREADS);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for me in 0..THREADS {
                let (cpus, inside, most, done) = (&cpus, &inside, &most, &done);
                s.spawn(move || {
                    let mut cpu = cpus.enter(me);
                    for round in 0..200 {
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        if round == 0 && me < 2 {
                            // The first two in stay until both are in.
                            eventually("two threads in", || most.load(Ordering::SeqCst) == 2);
                        }
                        std::hint::spin_loop();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        cpu.off_cpu(std::hint::spin_loop);
                    }
                    drop(cpu);
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(done.load(Ordering::SeqCst), THREADS);
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(cpus.lock().free, 2);
        assert_eq!(cpus.queued.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_time_slice_ends_only_while_others_wait_and_hands_the_cpu_over_in_turn() {
        let cpus = Cpus::new(1, 3);
        let order = Mutex::new(Vec::new());
        let mut cpu = cpus.enter(0);
        // Alone: a slice that is over does not give the CPU away.
        cpu.since -= SLICE;
        cpu.tick();
        assert_eq!(cpus.lock().free, 0);
        std::thread::scope(|s| {
            for me in 1..3 {
                let (cpus, order) = (&cpus, &order);
                s.spawn(move || {
                    let _cpu = cpus.enter(me);
                    order.lock().unwrap().push(me);
                });
                eventually("queued", || cpus.queued.load(Ordering::SeqCst) == me);
            }
            // A slice not over yet keeps the CPU.
            cpu.since = Instant::now();
            cpu.tick();
            assert!(order.lock().unwrap().is_empty());
            // Over: the CPU goes to the threads waiting, first come first
            // served, and this one waits its turn behind them.
            cpu.since -= SLICE;
            cpu.tick();
            order.lock().unwrap().push(0);
            drop(cpu);
        });
        assert_eq!(*order.lock().unwrap(), [1, 2, 0]);
        assert_eq!(cpus.lock().free, 1);
    }
}
