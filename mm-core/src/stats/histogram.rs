//! Log2 histograms of durations in nanoseconds.
//!
//! The bucket layout is the one the eBPF programs aggregate in the kernel
//! (`mm_ebpf::log2_bucket`), so a histogram read from the host and one built
//! by the engine have the same buckets: bucket 0 holds 0 and 1, bucket
//! `i >= 1` holds `[2^i, 2^(i+1))`. Sixty-four buckets cover all of `u64`.
//!
//! Percentiles are the inclusive upper bound of the bucket that holds the
//! requested rank, capped at the exact maximum: at most 2x above the true
//! value, never below it. The sum and the maximum are exact.

use serde::{Deserialize, Serialize};

/// Number of buckets.
pub const BUCKETS: usize = 64;

/// Index of the bucket that holds `v`.
#[inline]
pub const fn bucket_index(v: u64) -> usize {
    if v < 2 {
        0
    } else {
        (63 - v.leading_zeros()) as usize
    }
}

/// Inclusive bounds `(lo, hi)` of bucket `i` (`i < BUCKETS`).
#[inline]
pub const fn bucket_bounds(i: usize) -> (u64, u64) {
    if i == 0 {
        (0, 1)
    } else if i >= 63 {
        (1u64 << 63, u64::MAX)
    } else {
        (1u64 << i, (1u64 << (i + 1)) - 1)
    }
}

/// A log2 histogram of nanosecond values with exact count, sum and max.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Histogram {
    buckets: [u64; BUCKETS],
    sum: u64,
    max: u64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Log2Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum: 0,
            max: 0,
        }
    }

    /// A histogram from raw parts (as aggregated in the kernel).
    pub const fn from_parts(buckets: [u64; BUCKETS], sum: u64, max: u64) -> Self {
        Self { buckets, sum, max }
    }

    /// Record one value.
    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    /// Record `n` occurrences of `v`.
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.buckets[bucket_index(v)] += n;
        self.sum = self.sum.saturating_add(v.saturating_mul(n));
        self.max = self.max.max(v);
    }

    /// Bucket counts.
    pub const fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Sum of recorded values.
    pub const fn sum(&self) -> u64 {
        self.sum
    }

    /// Largest recorded value; 0 when empty.
    pub const fn max(&self) -> u64 {
        self.max
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|&b| b == 0)
    }

    /// Mean, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum as f64 / n as f64)
    }

    /// The value at quantile `q` (0.0..=1.0): the upper bound of the bucket
    /// holding the value of rank `ceil(q * count)` (at least 1), capped at
    /// the maximum. `None` when empty. `q` outside 0..=1 is clamped.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_bounds(i).1.min(self.max));
            }
        }
        Some(self.max)
    }

    /// Add another histogram's values into this one.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// The values recorded since `earlier` was taken from the same, only
    /// growing, histogram. The max of the difference is not known exactly:
    /// it is the upper bound of the highest bucket that grew, capped at the
    /// current max (exact when that bucket holds the current max).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut buckets = [0u64; BUCKETS];
        let mut top = None;
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
            if *b > 0 {
                top = Some(i);
            }
        }
        let max = top.map_or(0, |i| bucket_bounds(i).1.min(self.max));
        Self {
            buckets,
            sum: self.sum.saturating_sub(earlier.sum),
            max,
        }
    }

    /// Non-empty buckets as `(lo, hi, count)` with inclusive bounds.
    pub fn nonzero_buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, &n)| {
                let (lo, hi) = bucket_bounds(i);
                (lo, hi, n)
            })
    }
}

/// One bucket in the serialized form.
#[derive(Serialize, Deserialize)]
struct BucketRepr {
    lo_ns: u64,
    hi_ns: u64,
    count: u64,
}

/// The serialized form: exact count/sum/max, the usual percentiles for
/// readers that do not want to walk buckets, and the non-empty buckets.
#[derive(Serialize, Deserialize)]
struct HistogramRepr {
    count: u64,
    sum_ns: u64,
    max_ns: u64,
    #[serde(default)]
    p50_ns: Option<u64>,
    #[serde(default)]
    p90_ns: Option<u64>,
    #[serde(default)]
    p99_ns: Option<u64>,
    buckets: Vec<BucketRepr>,
}

impl Serialize for Log2Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HistogramRepr {
            count: self.count(),
            sum_ns: self.sum,
            max_ns: self.max,
            p50_ns: self.quantile(0.5),
            p90_ns: self.quantile(0.9),
            p99_ns: self.quantile(0.99),
            buckets: self
                .nonzero_buckets()
                .map(|(lo, hi, count)| BucketRepr {
                    lo_ns: lo,
                    hi_ns: hi,
                    count,
                })
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Log2Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = HistogramRepr::deserialize(d)?;
        let mut buckets = [0u64; BUCKETS];
        for b in &repr.buckets {
            let i = bucket_index(b.lo_ns);
            if bucket_bounds(i) != (b.lo_ns, b.hi_ns) {
                return Err(serde::de::Error::custom(format_args!(
                    "bucket [{}, {}] is not a log2 bucket",
                    b.lo_ns, b.hi_ns
                )));
            }
            buckets[i] += b.count;
        }
        let h = Self::from_parts(buckets, repr.sum_ns, repr.max_ns);
        if h.count() != repr.count {
            return Err(serde::de::Error::custom(format_args!(
                "count {} does not match the buckets' total {}",
                repr.count,
                h.count()
            )));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bucket_layout() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 0);
        assert_eq!(bucket_index(2), 1);
        assert_eq!(bucket_index(3), 1);
        assert_eq!(bucket_index(4), 2);
        assert_eq!(bucket_index(1023), 9);
        assert_eq!(bucket_index(1024), 10);
        assert_eq!(bucket_index(u64::MAX), 63);
        assert_eq!(bucket_bounds(0), (0, 1));
        assert_eq!(bucket_bounds(1), (2, 3));
        assert_eq!(bucket_bounds(10), (1024, 2047));
        assert_eq!(bucket_bounds(63), (1 << 63, u64::MAX));
    }

    #[test]
    fn quantiles_of_one_to_hundred() {
        let mut h = Log2Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum(), 5050);
        assert_eq!(h.max(), 100);
        // rank 50 -> value 50 in [32, 63]
        assert_eq!(h.quantile(0.5), Some(63));
        // rank 99 -> value 99 in [64, 127], capped at max 100
        assert_eq!(h.quantile(0.99), Some(100));
        // rank 1 -> value 1 in bucket 0
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.quantile(1.0), Some(100));
        // rank 31 -> value 31 in [16, 31]
        assert_eq!(h.quantile(0.31), Some(31));
        // rank 32 -> value 32 in [32, 63]
        assert_eq!(h.quantile(0.32), Some(63));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Log2Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.mean(), None);
        assert!(h.is_empty());
    }

    #[test]
    fn out_of_range_quantiles_clamp() {
        let mut h = Log2Histogram::new();
        h.record(1000);
        h.record(5);
        assert_eq!(h.quantile(-3.0), Some(7));
        assert_eq!(h.quantile(7.0), Some(1000));
        assert_eq!(h.quantile(f64::NAN), Some(1000));
    }

    #[test]
    fn since_subtracts_and_bounds_the_max() {
        let mut a = Log2Histogram::new();
        a.record(10);
        a.record(5000);
        let earlier = a.clone();
        a.record(20);
        a.record(21);
        let d = a.since(&earlier);
        assert_eq!(d.count(), 2);
        assert_eq!(d.sum(), 41);
        // highest grown bucket is [16, 31]; the all-time max 5000 is above it
        assert_eq!(d.max(), 31);
        let none = a.since(&a);
        assert!(none.is_empty());
        assert_eq!(none.max(), 0);
    }

    #[test]
    fn json_round_trip() {
        let mut h = Log2Histogram::new();
        for v in [0, 1, 2, 900, 1_000_000] {
            h.record(v);
        }
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["count"], 5);
        assert_eq!(json["sum_ns"], 1_000_903);
        assert_eq!(json["max_ns"], 1_000_000);
        assert_eq!(json["buckets"][0]["lo_ns"], 0);
        assert_eq!(json["buckets"][0]["hi_ns"], 1);
        assert_eq!(json["buckets"][0]["count"], 2);
        assert_eq!(json["buckets"].as_array().unwrap().len(), 4);
        let back: Log2Histogram = serde_json::from_value(json).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn json_rejects_bad_buckets() {
        let bad =
            r#"{"count":1,"sum_ns":5,"max_ns":5,"buckets":[{"lo_ns":4,"hi_ns":9,"count":1}]}"#;
        let e = serde_json::from_str::<Log2Histogram>(bad).unwrap_err();
        assert!(e.to_string().contains("not a log2 bucket"), "{e}");
        let bad =
            r#"{"count":2,"sum_ns":5,"max_ns":5,"buckets":[{"lo_ns":4,"hi_ns":7,"count":1}]}"#;
        let e = serde_json::from_str::<Log2Histogram>(bad).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    proptest! {
        #[test]
        fn quantile_is_an_upper_bound_within_2x(mut values in prop::collection::vec(0u64..1u64 << 40, 1..200), q in 0.0f64..=1.0) {
            let mut h = Log2Histogram::new();
            for &v in &values { h.record(v); }
            values.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = values[rank - 1];
            let got = h.quantile(q).unwrap();
            prop_assert!(got >= exact, "got {got} < exact {exact}");
            prop_assert!(got <= exact.saturating_mul(2).max(1), "got {got} > 2x exact {exact}");
            prop_assert!(got <= *values.last().unwrap());
        }

        #[test]
        fn merge_equals_recording_both(a in prop::collection::vec(any::<u32>(), 0..50), b in prop::collection::vec(any::<u32>(), 0..50)) {
            let mut ha = Log2Histogram::new();
            let mut hb = Log2Histogram::new();
            let mut hab = Log2Histogram::new();
            for &v in &a { ha.record(v.into()); hab.record(v.into()); }
            for &v in &b { hb.record(v.into()); hab.record(v.into()); }
            ha.merge(&hb);
            prop_assert_eq!(ha, hab);
        }
    }
}
