//! mm-core: a reference model of the Linux memory-management subsystem, and
//! the statistics schema in which both the live host probe (mm-probe) and the
//! engine report, so that the two can be compared like for like.
//!
//! Modules are named after the kernel concept they model and name the kernel
//! source they follow.

pub mod addr;
pub mod apply;
pub mod brk;
pub mod clear_refs;
pub mod cpus;
pub mod errno;
pub mod fault;
pub mod file;
pub mod fork;
pub mod gap_index;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod host;
pub mod lockdep;
pub mod madvise;
pub mod mlock;
pub mod mm;
pub mod mmap;
pub mod mmap_lock;
pub mod mprotect;
pub mod mpx;
pub mod mremap;
pub mod munmap;
pub mod op;
pub mod page;
pub mod percpu;
pub mod pgtable;
pub mod proc;
pub mod replay;
pub mod sched_clock;
pub mod shared_mm;
pub mod stats;
pub mod sync;
pub mod trace;
pub mod uapi;
pub mod vm_flags;
pub mod vma;
pub mod vma_lock;
pub mod vma_merge;
pub mod workload;

pub use errno::{Errno, KResult};
pub use mm::{Mm, MmConfig};
