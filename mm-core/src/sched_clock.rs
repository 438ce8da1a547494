//! sched_clock: the cheap nanosecond clock of the engine's lock
//! statistics, as the kernel's is for its lock and scheduler statistics
//! (arch/x86/kernel/tsc.c: `native_sched_clock()` reads the TSC and
//! scales it with `cyc2ns` (mult, shift)).
//!
//! Every mmap_lock acquisition and release reads the clock (for its hold
//! time), so its cost is on every fault of the classic strategy:
//! `clock_gettime` through the vDSO costs about 20 ns here and more under
//! load, `rdtsc` about 8 ns. The TSC is used where the host kernel itself
//! keeps time with it (clocksource `tsc`, which the kernel selects only
//! when the TSC is constant and synchronized across CPUs); its rate is
//! measured against `Instant` once per process (a 2 ms spin). Elsewhere,
//! the clock is `Instant`.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// A point in time: raw clock ticks (see [`ns_between`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// How ticks become nanoseconds: `ns = ticks * mult >> 32` on the TSC;
/// with `mult` 0 (no usable TSC), ticks are nanoseconds since `epoch`.
#[derive(Debug)]
struct Scale {
    mult: u64,
    epoch: Instant,
}

static SCALE: OnceLock<Scale> = OnceLock::new();

/// `Scale::mult` once the TSC is calibrated; 0 before, or without a TSC
/// (read on every clock read, so kept out of the `OnceLock`).
static TSC_MULT: AtomicU64 = AtomicU64::new(0);

/// How long the TSC's rate is measured.
const CALIBRATION: std::time::Duration = std::time::Duration::from_millis(2);

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions; every x86_64 CPU has it.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> u64 {
    0
}

/// Whether the host keeps time with the TSC (so it is stable and the same
/// on every CPU).
fn tsc_usable() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|s| s.trim() == "tsc")
}

/// Both clocks read at once: `Instant` between two TSC reads, the TSC
/// taken half-way, from the tries whose TSC reads were closest. A thread
/// preempted between two reads (tens of microseconds under load, where a
/// clean pair is a few tens of nanoseconds) would otherwise skew the
/// calibration by as much: 2.5% over 2 ms was seen in a loaded CI run.
fn both_clocks() -> (Instant, u64) {
    let mut best: Option<(u64, Instant, u64)> = None;
    for _ in 0..64 {
        let a = rdtsc();
        let i = Instant::now();
        let b = rdtsc();
        let width = b.saturating_sub(a);
        if best.is_none_or(|(w, ..)| width < w) {
            best = Some((width, i, a + width / 2));
        }
    }
    let (_, i, t) = best.expect("64 tries");
    (i, t)
}

fn calibrate() -> Scale {
    if !tsc_usable() {
        return Scale {
            mult: 0,
            epoch: Instant::now(),
        };
    }
    let (epoch, t0) = both_clocks();
    while epoch.elapsed() < CALIBRATION {
        std::hint::spin_loop();
    }
    let (end, t1) = both_clocks();
    let ns = end.duration_since(epoch).as_nanos();
    let ticks = t1.saturating_sub(t0);
    let mult = if ticks == 0 {
        0
    } else {
        u64::try_from((ns << 32) / u128::from(ticks)).unwrap_or(0)
    };
    Scale { mult, epoch }
}

fn scale() -> &'static Scale {
    SCALE.get_or_init(|| {
        let s = calibrate();
        TSC_MULT.store(s.mult, Ordering::Relaxed);
        s
    })
}

/// The TSC's `mult`, or 0 when the clock is `Instant`.
#[inline]
fn tsc_mult() -> u64 {
    match TSC_MULT.load(Ordering::Relaxed) {
        0 => scale().mult,
        m => m,
    }
}

/// Set the clock up now (the TSC's rate is measured on first use).
pub fn init() {
    scale();
}

/// Whether the clock is the TSC.
pub fn is_tsc() -> bool {
    tsc_mult() != 0
}

/// Now.
#[inline]
pub fn now() -> Stamp {
    if tsc_mult() != 0 {
        Stamp(rdtsc())
    } else {
        Stamp(u64::try_from(scale().epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Nanoseconds from `from` to `to` (0 if `to` is earlier).
#[inline]
pub fn ns_between(from: Stamp, to: Stamp) -> u64 {
    let d = to.0.saturating_sub(from.0);
    match tsc_mult() {
        0 => d,
        m => u64::try_from((u128::from(d) * u128::from(m)) >> 32).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Both clocks read at once: the read of `Instant` between two of
    /// ours that are closest, of a few tries (a preemption between two
    /// reads would otherwise add its length to one clock only).
    fn pair() -> (Instant, Stamp) {
        (0..16)
            .map(|_| {
                let a = now();
                let i = Instant::now();
                (ns_between(a, now()), i, a)
            })
            .min_by_key(|(width, ..)| *width)
            .map(|(_, i, a)| (i, a))
            .expect("16 tries")
    }

    #[test]
    fn measures_what_instant_measures() {
        init();
        for sleep in [1u64, 5, 20] {
            let (i0, s0) = pair();
            std::thread::sleep(Duration::from_millis(sleep));
            let (i1, s1) = pair();
            let (ns, want) = (ns_between(s0, s1), i1.duration_since(i0).as_nanos() as u64);
            // Within 2% and 50 µs of Instant.
            let tolerance = want / 50 + 50_000;
            assert!(
                ns.abs_diff(want) <= tolerance,
                "slept {sleep} ms: sched_clock {ns} ns, Instant {want} ns (tsc: {})",
                is_tsc()
            );
        }
    }

    #[test]
    fn moves_forward_and_an_earlier_end_gives_zero() {
        let mut last = now();
        for _ in 0..100_000 {
            let t = now();
            assert!(t >= last, "went back");
            last = t;
        }
        let earlier = now();
        std::thread::sleep(Duration::from_millis(1));
        let later = now();
        assert!(ns_between(earlier, later) >= 1_000_000);
        assert_eq!(ns_between(later, earlier), 0);
    }

    #[test]
    fn uses_the_tsc_where_the_host_does() {
        assert_eq!(is_tsc(), tsc_usable());
    }
}
