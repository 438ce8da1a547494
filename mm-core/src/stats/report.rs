//! The report envelope: one interval (or the final summary) of per-process
//! statistics, from the host probe or from the engine. Its JSON form is
//! documented in docs/json-report.md and checked against
//! docs/report-schema.json.

use serde::{Deserialize, Serialize};

use super::process::ProcessStats;

/// Value of [`Report::schema`].
pub const SCHEMA_NAME: &str = "mm-probe.report";
/// Value of [`Report::version`]; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Whether a report covers one interval or the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Activity during the last interval.
    Interval,
    /// Totals since the start; the last report of a run.
    Final,
}

/// Who measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The live host kernel, through the eBPF probe.
    Host,
    /// The mm-core reference engine.
    Engine,
}

/// A metric that could not be collected, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// The metric (e.g. "contended").
    pub metric: String,
    /// Why, and how to get it.
    pub reason: String,
}

/// Events that were not counted or could not be attributed. Every field is
/// always present, zero included, so that a silent loss is impossible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Per-event records lost because the ring buffer was full.
    pub events_dropped: u64,
    /// Events of a new process not aggregated: the process table was full.
    pub stats_full: u64,
    /// Per-context updates lost: the context table was full.
    pub contexts_full: u64,
    /// Releases whose acquisition was not seen (held since before attach).
    pub unmatched_releases: u64,
    /// Remote acquisitions whose mm owner could not be resolved.
    pub unknown_owner: u64,
}

impl Drops {
    /// Events that were lost from the aggregates (not just unattributed).
    pub const fn aggregate_losses(&self) -> u64 {
        self.stats_full + self.contexts_full
    }

    /// The difference from an earlier reading.
    pub const fn since(&self, e: &Self) -> Self {
        Self {
            events_dropped: self.events_dropped.saturating_sub(e.events_dropped),
            stats_full: self.stats_full.saturating_sub(e.stats_full),
            contexts_full: self.contexts_full.saturating_sub(e.contexts_full),
            unmatched_releases: self.unmatched_releases.saturating_sub(e.unmatched_releases),
            unknown_owner: self.unknown_owner.saturating_sub(e.unknown_owner),
        }
    }
}

/// One report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA_NAME`].
    pub schema: String,
    /// Always [`SCHEMA_VERSION`] for this layout.
    pub version: u32,
    /// Interval or final.
    pub kind: ReportKind,
    /// Host or engine.
    pub source: Source,
    /// Wall-clock time of the snapshot, ms since the Unix epoch.
    pub timestamp_unix_ms: u64,
    /// Time since the start of measurement.
    pub elapsed_ns: u64,
    /// Time this report covers (equal to `elapsed_ns` for a final report).
    pub interval_ns: u64,
    /// Kernel release (`uname -r`) for the host; engine version otherwise.
    pub kernel: String,
    /// Metrics that could not be collected.
    pub unavailable: Vec<Unavailable>,
    /// Losses, over the same span as the report.
    pub drops: Drops,
    /// Processes with activity in the span, busiest first.
    pub processes: Vec<ProcessStats>,
}

impl Report {
    /// A report with the schema fields filled in.
    pub fn new(kind: ReportKind, source: Source, kernel: impl Into<String>) -> Self {
        Self {
            schema: SCHEMA_NAME.into(),
            version: SCHEMA_VERSION,
            kind,
            source,
            timestamp_unix_ms: 0,
            elapsed_ns: 0,
            interval_ns: 0,
            kernel: kernel.into(),
            unavailable: Vec::new(),
            drops: Drops::default(),
            processes: Vec::new(),
        }
    }

    /// The process with this pid.
    pub fn process(&self, pid: u32) -> Option<&ProcessStats> {
        self.processes.iter().find(|p| p.pid == pid)
    }
}
