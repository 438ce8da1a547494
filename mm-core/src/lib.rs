//! mm-core: a reference model of the Linux memory-management subsystem, and
//! the statistics schema in which both the live host probe (mm-probe) and the
//! engine report, so that the two can be compared like for like.
//!
//! Modules are named after the kernel concept they model and name the kernel
//! source they follow.

pub mod stats;
