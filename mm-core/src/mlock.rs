//! mlock(2), mlock2(2) and munlock(2) (mm/mlock.c: do_mlock,
//! apply_vma_lock_flags, mlock_fixup; mm/gup.c __mm_populate). The engine
//! runs as root: RLIMIT_MEMLOCK never applies.
//!
//! The lock flags are applied VMA by VMA up to the first hole (which
//! fails with ENOMEM and leaves the flags set), then the range is
//! populated; a populate failure is reported as mlock reports it (EFAULT
//! becomes ENOMEM, ENOMEM becomes EAGAIN).

use crate::{
    addr::{PAGE_MASK, page_align_wrapping},
    errno::{Errno, KResult},
    mm::Mm,
    uapi::mlock,
    vm_flags::VmFlags,
};

/// VM_DROPPABLE.
const VM_DROPPABLE: VmFlags = VmFlags(1 << 40);

/// PAGE_ALIGN(len + offset_in_page(start)) with the kernel's wraparound,
/// and the page-aligned start.
fn lock_range(start: u64, len: u64) -> (u64, u64) {
    (
        start & PAGE_MASK,
        page_align_wrapping(len.wrapping_add(start & !PAGE_MASK)),
    )
}

impl Mm {
    /// mlock(addr, len).
    pub fn mlock(&mut self, start: u64, len: u64) -> KResult<()> {
        self.mlock2(start, len, 0)
    }

    /// mlock2(addr, len, flags).
    pub fn mlock2(&mut self, start: u64, len: u64, flags: u64) -> KResult<()> {
        if flags & !mlock::ONFAULT != 0 {
            return Err(Errno::EINVAL);
        }
        let (start, len) = lock_range(start, len);
        let lock = if flags & mlock::ONFAULT != 0 {
            VmFlags::LOCKED | VmFlags::LOCKONFAULT
        } else {
            VmFlags::LOCKED
        };
        self.apply_vma_lock_flags(start, len, lock)?;
        let end = start.wrapping_add(len);
        if end == start {
            return Ok(());
        }
        self.populate(start, end, false).map_err(|e| match e {
            Errno::EFAULT => Errno::ENOMEM,
            Errno::ENOMEM => Errno::EAGAIN,
            other => other,
        })
    }

    /// munlock(addr, len).
    pub fn munlock(&mut self, start: u64, len: u64) -> KResult<()> {
        let (start, len) = lock_range(start, len);
        self.apply_vma_lock_flags(start, len, VmFlags::NONE)
    }

    /// apply_vma_lock_flags().
    fn apply_vma_lock_flags(&mut self, start: u64, len: u64, lock: VmFlags) -> KResult<()> {
        let end = start.wrapping_add(len);
        if end < start {
            return Err(Errno::EINVAL);
        }
        if end == start {
            return Ok(());
        }
        let Some(first) = self.vmas.lookup(start) else {
            return Err(Errno::ENOMEM);
        };
        let mut tmp = first.start;
        let mut nstart = start;
        while tmp < end {
            let Some(v) = self.vmas.find(tmp).filter(|v| v.start < end) else {
                break;
            };
            if v.start != tmp {
                return Err(Errno::ENOMEM);
            }
            let seg_end = v.end.min(end);
            let newflags = v.flags.without(VmFlags::LOCKED_MASK) | lock;
            tmp = self.mlock_fixup(nstart, seg_end, newflags)?;
            nstart = tmp;
        }
        if tmp < end {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// mlock_fixup(): returns the end of the VMA now covering the range.
    fn mlock_fixup(&mut self, start: u64, end: u64, newflags: VmFlags) -> KResult<u64> {
        let v = self.vmas.lookup(start).expect("caller found it").clone();
        if newflags == v.flags
            || v.flags
                .intersects(VmFlags::SPECIAL | VmFlags::HUGETLB | VM_DROPPABLE)
        {
            return Ok(v.end);
        }
        let target = self.modify_flags(start, end, newflags)?;
        Ok(self.vmas.get(target).expect("covers the range").end)
    }
}

#[cfg(test)]
mod tests {
    use super::lock_range;

    #[test]
    fn lock_ranges_round_and_wrap() {
        assert_eq!(lock_range(0x1001, 0x1000), (0x1000, 0x2000));
        assert_eq!(lock_range(0x1000, 0), (0x1000, 0));
        // mlock(addr, -1): the length wraps to 0, a no-op
        assert_eq!(lock_range(0x1000, u64::MAX), (0x1000, 0));
        assert_eq!(
            lock_range(0x1000, u64::MAX - 0xfff),
            (0x1000, u64::MAX - 0xfff)
        );
    }
}
