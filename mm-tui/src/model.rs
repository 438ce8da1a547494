//! What one column of the dashboard knows: the cumulative counters a side
//! (the host probe, the engine, or one host process) reported at each
//! refresh, turned into per-second rates with a short history for the
//! sparklines. Both sides go through the same code, so their rows are the
//! same figures in the same units (`mm_core::stats`).

use std::collections::VecDeque;

use mm_core::stats::{Drops, FaultKind, LockMode, LockModeStats, Log2Histogram, ProcessStats};

/// Samples kept for the sparklines (two minutes at the default refresh).
pub const HISTORY: usize = 120;

/// Rates over the last refresh interval, per second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// mmap_lock read acquisitions.
    pub read: f64,
    /// mmap_lock write acquisitions.
    pub write: f64,
    /// Faults by kind (user and kernel mode together), in
    /// [`FaultKind::index`] order.
    pub faults: [f64; 6],
    /// User faults served under a per-VMA lock, without mmap_lock.
    pub served: f64,
    /// User faults that fell back to mmap_lock.
    pub fallbacks: f64,
    /// Share of the interval's acquisitions that were contended (0..=1).
    pub contended: f64,
}

impl Rates {
    /// All faults.
    pub fn faults_total(&self) -> f64 {
        self.faults.iter().sum()
    }
}

/// Which histograms the panels draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistMode {
    /// Read and write together.
    #[default]
    Both,
    /// Read mode only.
    Read,
    /// Write mode only.
    Write,
}

impl HistMode {
    /// The next mode (the `m` key).
    pub const fn next(self) -> Self {
        match self {
            Self::Both => Self::Read,
            Self::Read => Self::Write,
            Self::Write => Self::Both,
        }
    }

    /// "read+write", "read" or "write".
    pub const fn name(self) -> &'static str {
        match self {
            Self::Both => "read+write",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// Write-lock holds of one syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRow {
    /// Syscall name (or "fault", "other").
    pub name: String,
    /// Write acquisitions.
    pub count: u64,
    /// p99 of the holds, ns.
    pub p99: u64,
    /// Longest hold, ns.
    pub max: u64,
}

/// One side's figures over time.
#[derive(Clone, Debug, Default)]
pub struct SideModel {
    /// Totals since the start (or the last reset).
    pub cum: ProcessStats,
    /// Losses since the start (host only).
    pub drops: Drops,
    /// When `cum` was read; `None` until a reading is a baseline for rates.
    read_at: Option<u64>,
    /// Rates of the last interval, once there have been two samples.
    pub rates: Option<Rates>,
    /// Read acquisitions per second, oldest first.
    pub read_hist: VecDeque<u64>,
    /// Write acquisitions per second.
    pub write_hist: VecDeque<u64>,
    /// Faults per second.
    pub fault_hist: VecDeque<u64>,
    /// Fallbacks to mmap_lock per second.
    pub fallback_hist: VecDeque<u64>,
}

fn push(h: &mut VecDeque<u64>, v: f64) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(v.round() as u64);
}

impl SideModel {
    /// Take a new reading: `cum` are the totals since the start, `now_ns`
    /// a monotonic time. The first reading only sets the baseline.
    pub fn update(&mut self, now_ns: u64, cum: ProcessStats, drops: Drops) {
        if let Some(then) = self.read_at {
            let secs = now_ns.saturating_sub(then) as f64 / 1e9;
            if secs > 0.0 {
                let d = cum.since(&self.cum);
                let per = |n: u64| n as f64 / secs;
                let (u, k) = (d.faults.user.to_array(), d.faults.kernel.to_array());
                let r = Rates {
                    read: per(d.mmap_lock.read.acquisitions),
                    write: per(d.mmap_lock.write.acquisitions),
                    faults: std::array::from_fn(|i| per(u[i] + k[i])),
                    served: per(d.faults.served_without_mmap_lock()),
                    fallbacks: per(d.faults.mmap_lock_fallbacks),
                    contended: d.mmap_lock.contended_share(),
                };
                push(&mut self.read_hist, r.read);
                push(&mut self.write_hist, r.write);
                push(&mut self.fault_hist, r.faults_total());
                push(&mut self.fallback_hist, r.fallbacks);
                self.rates = Some(r);
            }
        }
        self.read_at = Some(now_ns);
        self.cum = cum;
        self.drops = drops;
    }

    /// Forget the previous reading, so that the next one sets a new
    /// baseline instead of averaging over a pause.
    pub fn resync(&mut self) {
        self.read_at = None;
    }

    /// Forget everything (counters were reset at the source).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The statistics of the mode(s) `m` draws.
    pub fn lock(&self, m: HistMode) -> LockModeStats {
        let l = &self.cum.mmap_lock;
        match m {
            HistMode::Read => l.read.clone(),
            HistMode::Write => l.write.clone(),
            HistMode::Both => {
                let mut s = l.read.clone();
                s.merge(&l.write);
                s
            }
        }
    }

    /// Write holds by syscall, most acquisitions first.
    pub fn write_holds(&self) -> Vec<HoldRow> {
        let mut rows: Vec<HoldRow> = Vec::new();
        for c in self
            .cum
            .contexts
            .iter()
            .filter(|c| c.mode == LockMode::Write)
        {
            let name = c.context.name();
            match rows.iter_mut().find(|r| r.name == name) {
                Some(r) => {
                    // Local and remote rows of one syscall: one row.
                    r.count += c.acquisitions;
                    r.p99 = r.p99.max(c.hold.quantile(0.99).unwrap_or(0));
                    r.max = r.max.max(c.hold.max());
                }
                None => rows.push(HoldRow {
                    name: name.to_string(),
                    count: c.acquisitions,
                    p99: c.hold.quantile(0.99).unwrap_or(0),
                    max: c.hold.max(),
                }),
            }
        }
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
        rows
    }

    /// Events lost or unattributed since the start.
    pub fn lost(&self) -> u64 {
        self.drops.aggregate_losses() + self.drops.events_dropped
    }
}

/// The bucket range `[lo, hi]` that covers every non-empty bucket of
/// `hists`, so that side-by-side charts share their x axis; `None` when
/// all are empty.
pub fn common_range(hists: &[&Log2Histogram]) -> Option<(usize, usize)> {
    let mut range: Option<(usize, usize)> = None;
    for h in hists {
        for (i, &n) in h.buckets().iter().enumerate() {
            if n > 0 {
                range = Some(match range {
                    None => (i, i),
                    Some((lo, hi)) => (lo.min(i), hi.max(i)),
                });
            }
        }
    }
    range
}

/// Short names of the fault kinds, for narrow columns.
pub const fn kind_short(k: FaultKind) -> &'static str {
    match k {
        FaultKind::ReadNotPresent => "read",
        FaultKind::ReadProtection => "read-prot",
        FaultKind::WriteNotPresent => "write",
        FaultKind::WriteProtection => "write-prot",
        FaultKind::ExecNotPresent => "exec",
        FaultKind::ExecProtection => "exec-prot",
    }
}

/// A count or rate for people: "950", "12.3k", "1.25M", "3.10G".
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a < 1e3 {
        format!("{v:.0}")
    } else if a < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else if a < 1e9 {
        format!("{:.2}M", v / 1e6)
    } else {
        format!("{:.2}G", v / 1e9)
    }
}

/// A duration in ns for people: "850ns", "12.3µs", "1.20ms", "2.50s".
pub fn ns(v: u64) -> String {
    match v {
        0..1_000 => format!("{v}ns"),
        1_000..1_000_000 => format!("{:.1}µs", v as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", v as f64 / 1e6),
        _ => format!("{:.2}s", v as f64 / 1e9),
    }
}

/// A duration in ns in at most five characters: "850ns", "9.9µs",
/// "128µs", "1.2ms", "14ms", "2.5s".
pub fn ns_short(v: u64) -> String {
    let f = v as f64;
    match v {
        0..1_000 => format!("{v}ns"),
        1_000..9_950 => format!("{:.1}µs", f / 1e3),
        9_950..999_500 => format!("{:.0}µs", f / 1e3),
        999_500..9_950_000 => format!("{:.1}ms", f / 1e6),
        9_950_000..999_500_000 => format!("{:.0}ms", f / 1e6),
        999_500_000..9_950_000_000 => format!("{:.1}s", f / 1e9),
        _ => format!("{:.0}s", f / 1e9),
    }
}

/// A bucket bound for an axis label: "256ns", "4µs", "1ms", "2s" (powers
/// of two, rounded to the unit).
pub fn bound(v: u64) -> String {
    match v {
        0..1_024 => format!("{v}ns"),
        1_024..1_048_576 => format!("{}µs", v / 1_000),
        1_048_576..1_073_741_824 => format!("{}ms", v / 1_000_000),
        _ => format!("{}s", v / 1_000_000_000),
    }
}

#[cfg(test)]
mod tests {
    use mm_core::stats::{ContextStats, LockContext};

    use super::*;

    fn stats(read: u64, write: u64, faults: u64, fallbacks: u64) -> ProcessStats {
        let mut p = ProcessStats::default();
        p.mmap_lock.read.acquisitions = read;
        p.mmap_lock.read.contended = read / 4;
        p.mmap_lock.write.acquisitions = write;
        p.faults.user.add(FaultKind::WriteNotPresent, faults);
        p.faults.mmap_lock_fallbacks = fallbacks;
        p
    }

    #[test]
    fn rates_are_per_second_over_the_interval() {
        let mut m = SideModel::default();
        m.update(1_000_000_000, stats(100, 10, 1_000, 10), Drops::default());
        assert_eq!(m.rates, None, "one reading is only a baseline");
        m.update(3_000_000_000, stats(500, 30, 5_000, 50), Drops::default());
        let r = m.rates.clone().unwrap();
        assert_eq!(r.read, 200.0);
        assert_eq!(r.write, 10.0);
        assert_eq!(r.faults[FaultKind::WriteNotPresent.index()], 2_000.0);
        assert_eq!(r.fallbacks, 20.0);
        assert_eq!(r.served, 1_980.0);
        // 100 of the 420 new acquisitions were contended
        assert!((r.contended - 100.0 / 420.0).abs() < 1e-12);
        assert_eq!(m.read_hist, [200]);
        assert_eq!(m.fault_hist, [2_000]);
        assert_eq!(m.cum.mmap_lock.read.acquisitions, 500);
    }

    #[test]
    fn resync_skips_the_pause() {
        let mut m = SideModel::default();
        m.update(0, stats(0, 0, 0, 0), Drops::default());
        m.update(1_000_000_000, stats(10, 0, 0, 0), Drops::default());
        m.resync();
        // 100 s of pause: no sample averages over it
        m.update(101_000_000_000, stats(1_010, 0, 0, 0), Drops::default());
        assert_eq!(m.read_hist, [10]);
        m.update(102_000_000_000, stats(1_030, 0, 0, 0), Drops::default());
        assert_eq!(m.read_hist, [10, 20]);
    }

    #[test]
    fn history_is_bounded() {
        let mut m = SideModel::default();
        for i in 0..=(HISTORY as u64 + 10) {
            m.update(i * 1_000_000_000, stats(i * 7, 0, 0, 0), Drops::default());
        }
        assert_eq!(m.read_hist.len(), HISTORY);
        assert!(m.read_hist.iter().all(|&v| v == 7));
    }

    #[test]
    fn write_holds_merge_local_and_remote_rows() {
        let mut m = SideModel::default();
        let mut p = ProcessStats::default();
        let c = |name: &str, remote: bool, n: u64, hold_ns: u64| {
            let mut hold = Log2Histogram::new();
            hold.record_n(hold_ns, n);
            ContextStats {
                context: LockContext::Syscall {
                    nr: 0,
                    name: name.into(),
                },
                mode: LockMode::Write,
                remote,
                acquisitions: n,
                contended: 0,
                wait: Log2Histogram::new(),
                hold,
            }
        };
        p.contexts = vec![
            c("mmap", false, 5, 1_000),
            c("munmap", false, 3, 100_000),
            c("munmap", true, 4, 2_000),
        ];
        m.update(0, p, Drops::default());
        let rows = m.write_holds();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].name.as_str(), rows[0].count), ("munmap", 7));
        assert_eq!(rows[0].max, 100_000);
        assert_eq!((rows[1].name.as_str(), rows[1].count), ("mmap", 5));
    }

    #[test]
    fn shared_axis() {
        let (mut a, mut b) = (Log2Histogram::new(), Log2Histogram::new());
        assert_eq!(common_range(&[&a, &b]), None);
        a.record(300); // bucket 8
        b.record(5_000); // bucket 12
        b.record(1_000); // bucket 9
        assert_eq!(common_range(&[&a, &b]), Some((8, 12)));
    }

    #[test]
    fn formats() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(1_250_000.0), "1.25M");
        assert_eq!(ns(850), "850ns");
        assert_eq!(ns(12_300), "12.3µs");
        assert_eq!(ns(1_200_000), "1.20ms");
        for (v, want) in [
            (850, "850ns"),
            (1_000, "1.0µs"),
            (9_949, "9.9µs"),
            (9_950, "10µs"),
            (127_600, "128µs"),
            (999_499, "999µs"),
            (999_500, "1.0ms"),
            (14_850_000, "15ms"),
            (2_500_000_000, "2.5s"),
            (120_000_000_000, "120s"),
        ] {
            assert_eq!(ns_short(v), want, "{v}");
        }
        assert_eq!(bound(256), "256ns");
        assert_eq!(bound(4_096), "4µs");
        assert_eq!(bound(1 << 20), "1ms");
    }
}
