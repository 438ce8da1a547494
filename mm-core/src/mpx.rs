//! Companion tables: per-mm tables allocated on demand for the data they
//! cover and freed when that data is unmapped, modelled on Intel MPX's
//! bounds tables (arch/x86/mm/mpx.c, Linux 3.19 to 5.5) and on the locking
//! design of seed 003 ("x86, mpx: cleanup unused bound tables").
//!
//! A bounds directory (BD) is a user mapping with one entry per
//! [`BT_COVER`] bytes of data; an entry is empty or names a bounds table
//! (BT), itself a user mapping of [`BT_PAGES`] pages. A bounds store to data
//! whose entry is empty allocates a table (the #BR handler). Reading and
//! writing BD entries are kernel accesses to user memory, so they may
//! page-fault, and a fault takes mmap_lock for read.
//!
//! Two designs:
//! - [`MpxDesign::Original`] (v9 of the series): munmap frees the tables of
//!   the data it unmapped at its end, still holding mmap_lock for write.
//!   Clearing a BD entry then faults under the write lock: the lock
//!   checker reports the deadlock. The series' workaround, faults
//!   disabled, instead leaks the table when the BD page is not present.
//! - [`MpxDesign::PrePostUnmap`] (tglx's reply): `bd_sem` serialises table
//!   creation and removal; munmap runs `mpx_pre_unmap` (take bd_sem for
//!   write, find the tables whose data goes away under mmap_lock for read,
//!   invalidate their BD entries, which may fault), the unmap itself, and
//!   `mpx_post_unmap` (unmap the tables, release bd_sem). Lock nesting is
//!   only ever bd_sem then mmap_lock, in the four combinations the seed
//!   lists, and never a fault under mmap_lock held for write.

use std::collections::BTreeMap;

use crate::{
    Errno, KResult,
    addr::PAGE_SIZE,
    fault::{Access, AccessError},
    lockdep::{LockClass, Mode},
    mmap_lock::{LockSite, MmapLock},
    op::{Op, Outcome},
    shared_mm::SharedMm,
    sync::{AtomicU64, Mutex, Ordering},
    uapi::{map, prot},
};

/// Data bytes one bounds table covers.
pub const BT_COVER: u64 = 1 << 20;
/// Pages of one bounds table.
pub const BT_PAGES: u64 = 4;
/// Entries of the bounds directory (one byte each here).
pub const BD_ENTRIES: u64 = 4 * PAGE_SIZE;

/// Which table-freeing design runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpxDesign {
    /// Free tables at the end of munmap under mmap_lock for write; with
    /// `pagefault_disable`, BD entries are cleared without faulting, and a
    /// table whose BD page is absent is not freed.
    Original {
        /// The series' workaround: no faults while clearing entries.
        pagefault_disable: bool,
    },
    /// bd_sem with pre-unmap and post-unmap steps (seed 003's design).
    PrePostUnmap,
}

/// Counters of the companion tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MpxStats {
    /// Tables allocated.
    pub allocated: u64,
    /// Tables freed.
    pub freed: u64,
    /// Tables whose data is gone but that could not be freed (the
    /// original design with faults disabled).
    pub leaked: u64,
    /// Allocations that lost the race to install their BD entry, and
    /// unmapped their table again.
    pub lost_races: u64,
}

/// MPX management of one address space.
#[derive(Debug)]
pub struct Mpx {
    design: MpxDesign,
    /// `mm->bd_sem`.
    bd_sem: MmapLock,
    /// Address of the bounds directory mapping.
    bd: u64,
    /// First data address the directory covers.
    data_base: u64,
    /// BD entry values (index -> table address), changed only by the
    /// equivalent of a cmpxchg on the entry.
    entries: Mutex<BTreeMap<u64, u64>>,
    allocated: AtomicU64,
    freed: AtomicU64,
    leaked: AtomicU64,
    lost_races: AtomicU64,
}

fn mmap_anon(mm: &SharedMm, pages: u64) -> KResult<u64> {
    match mm.apply(&Op::Mmap {
        addr: 0,
        len: pages * PAGE_SIZE,
        prot: prot::READ | prot::WRITE,
        flags: map::PRIVATE | map::ANONYMOUS,
        file: None,
        offset: 0,
    }) {
        Outcome::Ok(a) => Ok(a),
        Outcome::Err(e) => Err(e),
        _ => Err(Errno::EINVAL),
    }
}

fn efault(_: AccessError) -> Errno {
    Errno::EFAULT
}

impl Mpx {
    /// prctl(PR_MPX_ENABLE_MANAGEMENT): under bd_sem for write, map the
    /// bounds directory (mmap_lock for write nests inside: the seed's
    /// scenario 4). Data in `[data_base, data_base + BD_ENTRIES *
    /// BT_COVER)` gets tables.
    pub fn enable(mm: &SharedMm, design: MpxDesign, data_base: u64) -> KResult<Self> {
        let bd_sem = MmapLock::new();
        let bd = {
            let _ld = mm.ld(
                LockClass::BdSem,
                Mode::Write,
                "prctl(PR_MPX_ENABLE_MANAGEMENT)",
            );
            let _g = bd_sem.write_lock(LockSite::Other);
            mmap_anon(mm, BD_ENTRIES / PAGE_SIZE)?
        };
        Ok(Self {
            design,
            bd_sem,
            bd,
            data_base,
            entries: Mutex::new(BTreeMap::new()),
            allocated: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            leaked: AtomicU64::new(0),
            lost_races: AtomicU64::new(0),
        })
    }

    /// The bounds directory's address.
    pub const fn directory(&self) -> u64 {
        self.bd
    }

    fn index(&self, addr: u64) -> KResult<u64> {
        let i = addr
            .checked_sub(self.data_base)
            .map(|o| o / BT_COVER)
            .filter(|i| *i < BD_ENTRIES)
            .ok_or(Errno::EINVAL)?;
        Ok(i)
    }

    fn entries(&self) -> crate::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The table covering `addr`, if any.
    pub fn table_of(&self, addr: u64) -> Option<u64> {
        let i = self.index(addr).ok()?;
        self.entries().get(&i).copied()
    }

    /// Every table and the index it serves.
    pub fn tables(&self) -> Vec<(u64, u64)> {
        self.entries().iter().map(|(i, t)| (*i, *t)).collect()
    }

    /// The counters.
    pub fn stats(&self) -> MpxStats {
        MpxStats {
            allocated: self.allocated.load(Ordering::Relaxed),
            freed: self.freed.load(Ordering::Relaxed),
            leaked: self.leaked.load(Ordering::Relaxed),
            lost_races: self.lost_races.load(Ordering::Relaxed),
        }
    }

    /// A bounds store for data at `addr`: read its BD entry (a kernel
    /// access that may fault: bd_sem read, then mmap_lock read, the seed's
    /// scenario 1); if empty, allocate a table (mmap_lock write inside
    /// bd_sem read, scenario 2) and install it with a cmpxchg on the entry
    /// (a write that may fault). Returns the table.
    pub fn bounds_store(&self, mm: &SharedMm, addr: u64) -> KResult<u64> {
        let i = self.index(addr)?;
        let _ld = mm.ld(LockClass::BdSem, Mode::Read, "bounds store (#BR)");
        let _g = self.bd_sem.read_lock(LockSite::Other);
        mm.access_kernel(self.bd + i, Access::Read, 0)
            .map_err(efault)?;
        if let Some(t) = self.table_of(addr) {
            return Ok(t);
        }
        let table = mmap_anon(mm, BT_PAGES)?;
        self.allocated.fetch_add(1, Ordering::Relaxed);
        let won = {
            let mut e = self.entries();
            match e.get(&i) {
                Some(_) => false,
                None => {
                    e.insert(i, table);
                    true
                }
            }
        };
        if !won {
            // Another thread's cmpxchg came first: drop ours.
            self.lost_races.fetch_add(1, Ordering::Relaxed);
            self.freed.fetch_add(1, Ordering::Relaxed);
            mm.munmap(table, BT_PAGES * PAGE_SIZE);
            return Ok(self.table_of(addr).expect("installed by the winner"));
        }
        mm.access_kernel(self.bd + i, Access::Write, 1)
            .map_err(efault)?;
        Ok(table)
    }

    /// The indices whose covered data has no mapping left once
    /// `[start, end)` is unmapped, and their tables (looked up with the
    /// VMA tree stable: mmap_lock held by the caller or `with_mm`).
    fn emptied(&self, m: &crate::Mm, start: u64, end: u64) -> Vec<(u64, u64)> {
        let entries = self.entries();
        let companions: Vec<(u64, u64)> = entries
            .values()
            .map(|t| (*t, *t + BT_PAGES * PAGE_SIZE))
            .chain([(self.bd, self.bd + BD_ENTRIES)])
            .collect();
        let is_companion = |s: u64| companions.iter().any(|(a, b)| *a <= s && s < *b);
        entries
            .iter()
            .filter(|(i, _)| {
                let lo = self.data_base + *i * BT_COVER;
                let hi = lo + BT_COVER;
                if end <= lo || start >= hi {
                    return false;
                }
                // Data left in the covered range outside [start, end)?
                !m.vmas().range(lo, hi).any(|v| {
                    !is_companion(v.start) && (v.start.max(lo) < start || v.end.min(hi) > end)
                })
            })
            .map(|(i, t)| (*i, *t))
            .collect()
    }

    /// munmap(addr, len) of data, with the tables of data that goes away
    /// freed by the configured design.
    pub fn munmap(&self, mm: &SharedMm, addr: u64, len: u64) -> Outcome {
        match self.design {
            MpxDesign::PrePostUnmap => self.munmap_pre_post(mm, addr, len),
            MpxDesign::Original { pagefault_disable } => {
                self.munmap_original(mm, addr, len, pagefault_disable)
            }
        }
    }

    fn munmap_pre_post(&self, mm: &SharedMm, addr: u64, len: u64) -> Outcome {
        let end = addr.saturating_add(len);
        // mpx_pre_unmap(): bd_sem for write keeps tables from being
        // created or removed meanwhile.
        let _ld = mm.ld(LockClass::BdSem, Mode::Write, "mpx_pre_unmap");
        let _g = self.bd_sem.write_lock(LockSite::Other);
        let doomed = mm.with_mm(LockSite::Munmap, |m| self.emptied(m, addr, end));
        for (i, _) in &doomed {
            // Invalidate the entry: may fault (mmap_lock read under bd_sem
            // write, scenario 3).
            if let Err(e) = mm.access_kernel(self.bd + i, Access::Write, 0) {
                return Outcome::Err(efault(e));
            }
            self.entries().remove(i);
        }
        // The unmap itself: mmap_lock write under bd_sem write (4).
        let out = mm.munmap(addr, len);
        // mpx_post_unmap(): unmap the tables marked for removal.
        for (_, t) in doomed {
            mm.munmap(t, BT_PAGES * PAGE_SIZE);
            self.freed.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn munmap_original(&self, mm: &SharedMm, addr: u64, len: u64, nofault: bool) -> Outcome {
        let end = addr.saturating_add(len);
        mm.write_locked(LockSite::Munmap, |m| {
            if let Err(e) = m.munmap(addr, len) {
                return Outcome::Err(e);
            }
            // "At the end of unmap with mmap_sem write held": clear the BD
            // entries of the data just unmapped and unmap their tables.
            for (i, t) in self.emptied(m, addr, end) {
                let cleared = if nofault {
                    mm.access_nofault(self.bd + i, Access::Write, 0)
                } else {
                    mm.access_kernel(self.bd + i, Access::Write, 0)
                };
                if cleared.is_err() {
                    // Faults disabled and the BD page not present: the
                    // table stays, with nothing left to use it.
                    self.leaked.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.entries().remove(&i);
                if m.munmap(t, BT_PAGES * PAGE_SIZE).is_ok() {
                    self.freed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Ok(0)
        })
    }
}
