//! The host backend: the same [`crate::op::Op`]s executed with real system
//! calls on the running kernel, in a separate runner process confined to a
//! reserved window of its address space, for differential testing against
//! the engine.

pub mod client;
pub mod probe;
pub mod runner;

/// Default window: far from where the allocator and the loader map
/// anything (16 TiB).
pub const DEFAULT_WINDOW: u64 = 0x1000_0000_0000;
