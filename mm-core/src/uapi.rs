//! User-visible constants of the mm system calls, with Linux x86_64 values
//! (include/uapi/asm-generic/mman-common.h, mman.h, linux/mman.h).

/// mmap/mprotect protection bits.
pub mod prot {
    /// PROT_NONE.
    pub const NONE: u64 = 0;
    /// PROT_READ.
    pub const READ: u64 = 0x1;
    /// PROT_WRITE.
    pub const WRITE: u64 = 0x2;
    /// PROT_EXEC.
    pub const EXEC: u64 = 0x4;
    /// PROT_SEM (accepted, no effect on x86).
    pub const SEM: u64 = 0x8;
    /// PROT_GROWSDOWN (mprotect only).
    pub const GROWSDOWN: u64 = 0x0100_0000;
    /// PROT_GROWSUP (mprotect only).
    pub const GROWSUP: u64 = 0x0200_0000;
}

/// mmap flags.
pub mod map {
    /// MAP_SHARED.
    pub const SHARED: u64 = 0x01;
    /// MAP_PRIVATE.
    pub const PRIVATE: u64 = 0x02;
    /// MAP_SHARED_VALIDATE.
    pub const SHARED_VALIDATE: u64 = 0x03;
    /// Mask of the mapping type.
    pub const TYPE: u64 = 0x0f;
    /// MAP_FIXED.
    pub const FIXED: u64 = 0x10;
    /// MAP_ANONYMOUS.
    pub const ANONYMOUS: u64 = 0x20;
    /// MAP_32BIT (x86).
    pub const BIT32: u64 = 0x40;
    /// MAP_GROWSDOWN.
    pub const GROWSDOWN: u64 = 0x0100;
    /// MAP_DENYWRITE (ignored).
    pub const DENYWRITE: u64 = 0x0800;
    /// MAP_EXECUTABLE (ignored).
    pub const EXECUTABLE: u64 = 0x1000;
    /// MAP_LOCKED.
    pub const LOCKED: u64 = 0x2000;
    /// MAP_NORESERVE.
    pub const NORESERVE: u64 = 0x4000;
    /// MAP_POPULATE.
    pub const POPULATE: u64 = 0x8000;
    /// MAP_NONBLOCK.
    pub const NONBLOCK: u64 = 0x1_0000;
    /// MAP_STACK.
    pub const STACK: u64 = 0x2_0000;
    /// MAP_HUGETLB.
    pub const HUGETLB: u64 = 0x4_0000;
    /// MAP_SYNC.
    pub const SYNC: u64 = 0x8_0000;
    /// MAP_FIXED_NOREPLACE.
    pub const FIXED_NOREPLACE: u64 = 0x10_0000;
    /// MAP_UNINITIALIZED.
    pub const UNINITIALIZED: u64 = 0x400_0000;
}

/// madvise advice values.
pub mod madv {
    /// MADV_NORMAL.
    pub const NORMAL: i32 = 0;
    /// MADV_RANDOM.
    pub const RANDOM: i32 = 1;
    /// MADV_SEQUENTIAL.
    pub const SEQUENTIAL: i32 = 2;
    /// MADV_WILLNEED.
    pub const WILLNEED: i32 = 3;
    /// MADV_DONTNEED.
    pub const DONTNEED: i32 = 4;
    /// MADV_FREE.
    pub const FREE: i32 = 8;
    /// MADV_REMOVE.
    pub const REMOVE: i32 = 9;
    /// MADV_DONTFORK.
    pub const DONTFORK: i32 = 10;
    /// MADV_DOFORK.
    pub const DOFORK: i32 = 11;
    /// MADV_MERGEABLE.
    pub const MERGEABLE: i32 = 12;
    /// MADV_UNMERGEABLE.
    pub const UNMERGEABLE: i32 = 13;
    /// MADV_HUGEPAGE.
    pub const HUGEPAGE: i32 = 14;
    /// MADV_NOHUGEPAGE.
    pub const NOHUGEPAGE: i32 = 15;
    /// MADV_DONTDUMP.
    pub const DONTDUMP: i32 = 16;
    /// MADV_DODUMP.
    pub const DODUMP: i32 = 17;
    /// MADV_WIPEONFORK.
    pub const WIPEONFORK: i32 = 18;
    /// MADV_KEEPONFORK.
    pub const KEEPONFORK: i32 = 19;
    /// MADV_COLD.
    pub const COLD: i32 = 20;
    /// MADV_PAGEOUT.
    pub const PAGEOUT: i32 = 21;
    /// MADV_POPULATE_READ.
    pub const POPULATE_READ: i32 = 22;
    /// MADV_POPULATE_WRITE.
    pub const POPULATE_WRITE: i32 = 23;
    /// MADV_DONTNEED_LOCKED.
    pub const DONTNEED_LOCKED: i32 = 24;
    /// MADV_COLLAPSE.
    pub const COLLAPSE: i32 = 25;
    /// MADV_GUARD_INSTALL (6.13+).
    pub const GUARD_INSTALL: i32 = 102;
    /// MADV_GUARD_REMOVE (6.13+).
    pub const GUARD_REMOVE: i32 = 103;
}

/// mremap flags.
pub mod mremap {
    /// MREMAP_MAYMOVE.
    pub const MAYMOVE: u64 = 1;
    /// MREMAP_FIXED.
    pub const FIXED: u64 = 2;
    /// MREMAP_DONTUNMAP.
    pub const DONTUNMAP: u64 = 4;
}

/// mlock2 flags.
pub mod mlock {
    /// MLOCK_ONFAULT.
    pub const ONFAULT: u64 = 1;
}

/// /proc/PID/clear_refs types (fs/proc/task_mmu.c).
pub mod clear_refs {
    /// Clear young bits of all pages.
    pub const ALL: u32 = 1;
    /// Of anonymous pages.
    pub const ANON: u32 = 2;
    /// Of file-mapped pages.
    pub const MAPPED: u32 = 3;
    /// Clear soft-dirty bits.
    pub const SOFT_DIRTY: u32 = 4;
    /// Reset the peak RSS.
    pub const MM_HIWATER_RSS: u32 = 5;
}
