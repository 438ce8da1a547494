//! The statistics schema shared by the host probe and the engine: per-process
//! mmap_lock acquisitions, waits and holds per mode and per context (syscall),
//! page faults by kind, per-VMA lock fallbacks, and the report envelope.
//!
//! Same metric names, same histogram buckets (log2 of nanoseconds), same
//! units on both sides: that is what makes "host vs engine" a comparison.

mod histogram;
mod process;
mod report;

pub use histogram::{BUCKETS, Log2Histogram, bucket_bounds, bucket_index};
pub use process::{
    ContextStats, FaultCounts, FaultKind, FaultStats, LockContext, LockMode, LockModeStats,
    MmapLockStats, ProcessDrops, ProcessStats, WriteHolder,
};
pub use report::{Drops, Report, ReportKind, SCHEMA_NAME, SCHEMA_VERSION, Source, Unavailable};
