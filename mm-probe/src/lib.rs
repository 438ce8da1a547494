//! mm-probe: the live host side of the toolkit. Loads mm-ebpf's programs on
//! the mmap_lock, page-fault, syscall and scheduler tracepoints, reads their
//! in-kernel aggregates once per interval and turns them into
//! `mm_core::stats` values, reported as a table, JSON lines or Prometheus
//! metrics.

pub mod btf;
pub mod caps;
pub mod cli;
pub mod compare;
pub mod convert;
pub mod doctor;
pub mod probe;
pub mod procfs;
pub mod record;
pub mod records;
pub mod report;
pub mod session;
pub mod spawn;
pub mod spec_runner;
pub mod workload;
