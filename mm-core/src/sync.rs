//! Synchronisation primitives of the concurrent engine.
//!
//! The locking protocols (mmap_lock, per-VMA locks, the type-stable VMA
//! pool, the speculative-fault sequence count, the companion-table lock)
//! are written against this module. Normally it is `std::sync`; with the
//! `loom` or `shuttle` feature it is that model checker's, so the same code
//! is what `tests/model_loom.rs` and `tests/model_shuttle.rs` explore.
//! Those runs enable the feature only for mm-core's own model tests (see
//! `cargo xtask test`); nothing else is built with it.

#[cfg(all(feature = "loom", feature = "shuttle"))]
compile_error!("the loom and shuttle features are exclusive: enable one model checker at a time");

#[cfg(feature = "loom")]
pub use loom::{
    hint,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence},
    },
    thread,
};

#[cfg(feature = "shuttle")]
pub use shuttle::{
    hint,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence},
    },
    thread,
};

#[cfg(not(any(feature = "loom", feature = "shuttle")))]
pub use std::{
    hint,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence},
    },
    thread,
};

/// Whether a model checker drives the threads (spin loops must then yield
/// to it instead of spinning).
pub const MODEL_CHECKING: bool = cfg!(any(feature = "loom", feature = "shuttle"));

/// A busy-wait step: `spin_loop` normally; a yield under a model checker,
/// which otherwise would explore the spin forever.
#[inline]
pub fn cpu_relax() {
    if MODEL_CHECKING {
        thread::yield_now();
    } else {
        hint::spin_loop();
    }
}
