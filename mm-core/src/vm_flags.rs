//! `vm_flags_t`: the per-VMA flag word, with the kernel's bit values
//! (include/linux/mm.h, 6.x, x86_64).

use std::fmt;

/// A VMA's flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct VmFlags(pub u64);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $val:expr;)*) => {
        impl VmFlags {
            $($(#[$doc])* pub const $name: Self = Self($val);)*
        }
        /// Every named flag, for Debug.
        const NAMES: &[(&str, u64)] = &[$((stringify!($name), $val)),*];
    };
}

flags! {
    /// No flags.
    NONE = 0;
    /// Readable.
    READ = 0x1;
    /// Writable.
    WRITE = 0x2;
    /// Executable.
    EXEC = 0x4;
    /// Shared mapping.
    SHARED = 0x8;
    /// May become readable (mprotect).
    MAYREAD = 0x10;
    /// May become writable.
    MAYWRITE = 0x20;
    /// May become executable.
    MAYEXEC = 0x40;
    /// May be shared.
    MAYSHARE = 0x80;
    /// Stack-like, grows down.
    GROWSDOWN = 0x100;
    /// userfaultfd missing-page tracking.
    UFFD_MISSING = 0x200;
    /// Raw PFN mapping.
    PFNMAP = 0x400;
    /// A guard region may have been installed in this VMA (VM_MAYBE_GUARD,
    /// 6.19 and 6.18.y; sticky: survives MADV_GUARD_REMOVE).
    MAYBE_GUARD = 0x800;
    /// userfaultfd write-protect tracking.
    UFFD_WP = 0x1000;
    /// mlocked.
    LOCKED = 0x2000;
    /// I/O memory.
    IO = 0x4000;
    /// Sequential read hint (MADV_SEQUENTIAL).
    SEQ_READ = 0x8000;
    /// Random read hint (MADV_RANDOM).
    RAND_READ = 0x1_0000;
    /// Not copied on fork (MADV_DONTFORK).
    DONTCOPY = 0x2_0000;
    /// Cannot be expanded by mremap.
    DONTEXPAND = 0x4_0000;
    /// mlock on fault only (MLOCK_ONFAULT).
    LOCKONFAULT = 0x8_0000;
    /// Accounted (committed memory).
    ACCOUNT = 0x10_0000;
    /// No swap reservation (MAP_NORESERVE).
    NORESERVE = 0x20_0000;
    /// hugetlbfs mapping.
    HUGETLB = 0x40_0000;
    /// Synchronous page faults (MAP_SYNC).
    SYNC = 0x80_0000;
    /// Arch-specific (x86: VM_PAT).
    ARCH_1 = 0x100_0000;
    /// Wiped on fork (MADV_WIPEONFORK).
    WIPEONFORK = 0x200_0000;
    /// Not in core dumps (MADV_DONTDUMP).
    DONTDUMP = 0x400_0000;
    /// Soft-dirty: the whole VMA counts as dirty (CONFIG_MEM_SOFT_DIRTY).
    SOFTDIRTY = 0x800_0000;
    /// Mixed PFN/page mapping.
    MIXEDMAP = 0x1000_0000;
    /// THP enabled (MADV_HUGEPAGE).
    HUGEPAGE = 0x2000_0000;
    /// THP disabled (MADV_NOHUGEPAGE).
    NOHUGEPAGE = 0x4000_0000;
    /// KSM candidate (MADV_MERGEABLE).
    MERGEABLE = 0x8000_0000;
    /// Protection key bit 0 (x86 PKU; the execute-only key is 1).
    PKEY_BIT0 = 0x1_0000_0000;
    /// Protection key bit 1.
    PKEY_BIT1 = 0x2_0000_0000;
    /// Protection key bit 2.
    PKEY_BIT2 = 0x4_0000_0000;
    /// Protection key bit 3.
    PKEY_BIT3 = 0x8_0000_0000;
}

impl VmFlags {
    /// Mappings that are never merged (VM_SPECIAL).
    pub const SPECIAL: Self =
        Self(Self::IO.0 | Self::DONTEXPAND.0 | Self::PFNMAP.0 | Self::MIXEDMAP.0);
    /// The locking flags (VM_LOCKED_MASK).
    pub const LOCKED_MASK: Self = Self(Self::LOCKED.0 | Self::LOCKONFAULT.0);
    /// The access bits.
    pub const ACCESS: Self = Self(Self::READ.0 | Self::WRITE.0 | Self::EXEC.0);
    /// The protection-key bits.
    pub const PKEY_BITS: Self = Self(0xf_0000_0000);

    /// The protection key of a VMA.
    pub const fn pkey(self) -> u64 {
        (self.0 >> 32) & 0xf
    }

    /// With protection key `key`.
    #[must_use]
    pub const fn with_pkey(self, key: u64) -> Self {
        Self((self.0 & !Self::PKEY_BITS.0) | ((key & 0xf) << 32))
    }

    /// All bits of `other` are set.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Any bit of `other` is set.
    #[inline]
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// With the bits of `other` set.
    #[inline]
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// With the bits of `other` cleared.
    #[inline]
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// `calc_vm_prot_bits`: VM_READ/WRITE/EXEC from PROT_* bits.
    pub const fn from_prot(prot: u64) -> Self {
        Self(prot & 0x7)
    }

    /// The PROT_* bits of this VMA's access flags.
    pub const fn prot(self) -> u64 {
        self.0 & 0x7
    }

    /// The `rwxp`/`rwxs` permission string of /proc/PID/maps.
    pub fn perms(self) -> [u8; 4] {
        [
            if self.contains(Self::READ) {
                b'r'
            } else {
                b'-'
            },
            if self.contains(Self::WRITE) {
                b'w'
            } else {
                b'-'
            },
            if self.contains(Self::EXEC) {
                b'x'
            } else {
                b'-'
            },
            if self.contains(Self::MAYSHARE) {
                b's'
            } else {
                b'p'
            },
        ]
    }
}

/// smaps VmFlags mnemonics by bit (fs/proc/task_mmu.c show_smap_vma_flags),
/// for x86_64; bits without one print nothing.
pub const MNEMONICS: &[(u32, &str)] = &[
    (0, "rd"),
    (1, "wr"),
    (2, "ex"),
    (3, "sh"),
    (4, "mr"),
    (5, "mw"),
    (6, "me"),
    (7, "ms"),
    (8, "gd"),
    (9, "um"),
    (10, "pf"),
    (11, "gu"),
    (12, "uw"),
    (13, "lo"),
    (14, "io"),
    (15, "sr"),
    (16, "rr"),
    (17, "dc"),
    (18, "de"),
    (19, "lf"),
    (20, "ac"),
    (21, "nr"),
    (22, "ht"),
    (23, "sf"),
    (24, "ar"),
    (25, "wf"),
    (26, "dd"),
    (27, "sd"),
    (28, "mm"),
    (29, "hg"),
    (30, "nh"),
    (31, "mg"),
];

impl VmFlags {
    /// The smaps `VmFlags:` mnemonics of these flags, in bit order.
    pub fn mnemonics(self) -> Vec<&'static str> {
        MNEMONICS
            .iter()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, m)| *m)
            .collect()
    }
}

impl std::ops::BitOr for VmFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for VmFlags {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl std::ops::Not for VmFlags {
    type Output = Self;
    fn not(self) -> Self {
        Self(!self.0)
    }
}

impl fmt::Debug for VmFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut rest = self.0;
        for (name, bit) in NAMES {
            if *bit != 0 && self.0 & bit == *bit {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !bit;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{rest:#x}")?;
        } else if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms_and_debug() {
        let f = VmFlags::READ | VmFlags::WRITE | VmFlags::MAYREAD | VmFlags::MAYWRITE;
        assert_eq!(&f.perms(), b"rw-p");
        assert_eq!(&(f | VmFlags::MAYSHARE).perms(), b"rw-s");
        assert_eq!(&VmFlags::NONE.perms(), b"---p");
        assert_eq!(format!("{f:?}"), "READ|WRITE|MAYREAD|MAYWRITE");
        assert_eq!(format!("{:?}", VmFlags(1 << 62)), "0x4000000000000000");
        assert_eq!(VmFlags::from_prot(7), VmFlags::ACCESS);
        assert!(VmFlags::SPECIAL.contains(VmFlags::PFNMAP));
        assert_eq!(f.without(VmFlags::WRITE).prot(), 1);
        let f =
            f | VmFlags::MAYEXEC | VmFlags::ACCOUNT | VmFlags::MAYBE_GUARD | VmFlags::NOHUGEPAGE;
        assert_eq!(f.mnemonics().join(" "), "rd wr mr mw me gu ac nh");
    }
}
