//! Addresses and the x86_64 address-space layout the engine models
//! (arch/x86/include/asm/page_64_types.h, mm/util.c).

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// Base page size.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the in-page offset bits.
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// Top of the user address space with 4-level paging (TASK_SIZE_MAX).
pub const TASK_SIZE: u64 = (1 << 47) - PAGE_SIZE;
/// Lowest address user mappings may use (vm.mmap_min_addr default).
pub const MMAP_MIN_ADDR: u64 = 65536;
/// Entries per page-table page (PTRS_PER_PTE).
pub const PTRS_PER_PTE: u64 = 512;

/// Whether `addr` is page aligned.
#[inline]
pub const fn is_page_aligned(addr: u64) -> bool {
    addr & !PAGE_MASK == 0
}

/// PAGE_ALIGN: round up to a page boundary; `None` on overflow.
#[inline]
pub const fn page_align(len: u64) -> Option<u64> {
    match len.checked_add(PAGE_SIZE - 1) {
        Some(v) => Some(v & PAGE_MASK),
        None => None,
    }
}

/// PAGE_ALIGN with the kernel's unsigned wraparound (a length near
/// `u64::MAX` becomes 0), for the syscalls that check the result rather
/// than the overflow.
#[inline]
pub const fn page_align_wrapping(len: u64) -> u64 {
    len.wrapping_add(PAGE_SIZE - 1) & PAGE_MASK
}

/// Round down to a page boundary.
#[inline]
pub const fn page_down(addr: u64) -> u64 {
    addr & PAGE_MASK
}

/// Virtual page number of an address.
#[inline]
pub const fn vpn(addr: u64) -> u64 {
    addr >> PAGE_SHIFT
}

/// Number of pages in `[start, end)` (both page aligned).
#[inline]
pub const fn pages(start: u64, end: u64) -> u64 {
    (end - start) >> PAGE_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert!(is_page_aligned(0));
        assert!(is_page_aligned(0x1000));
        assert!(!is_page_aligned(0x1001));
        assert_eq!(page_align(1), Some(0x1000));
        assert_eq!(page_align(0x1000), Some(0x1000));
        assert_eq!(page_align(0), Some(0));
        assert_eq!(page_align(u64::MAX), None);
        assert_eq!(
            page_align(u64::MAX - PAGE_SIZE + 1),
            Some(u64::MAX - PAGE_SIZE + 1)
        );
        assert_eq!(page_down(0x1fff), 0x1000);
        assert_eq!(vpn(0x5000), 5);
        assert_eq!(pages(0x1000, 0x4000), 3);
        assert_eq!(TASK_SIZE, 0x7fff_ffff_f000);
    }
}
