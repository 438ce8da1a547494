//! Page tables: one entry per virtual page, grouped in page-table pages of
//! 512 entries (the PTE level; the upper levels are implicit in the key).
//! Follows include/linux/pgtable.h, the PTE walks of mm/memory.c and the
//! split page-table locks of include/linux/mm.h (`pte_offset_map_lock`,
//! `ptlock_ptr`, CONFIG_SPLIT_PTE_PTLOCKS).
//!
//! An entry is empty, present (mapping a frame, with its write, dirty, young
//! and soft-dirty bits), or a marker (a guard region's PTE marker,
//! mm/madvise.c). Every change goes through [`PageTables::set`] or
//! [`PteSlot::set`], which keep each frame's mapcount and the RSS counters
//! right.
//!
//! Locking, as in the kernel: every page-table page has its own lock (the
//! split PTE lock), taken for every read or change of its entries, so
//! faults on different 2 MiB ranges never contend and a fault served under
//! a per-VMA lock can run while a system call changes another VMA's
//! entries. The directory of page-table pages (the PMD level) is split in
//! shards, each a reader-writer lock taken for write only to allocate or
//! free a page-table page (the kernel's `pmd_lock`, one per PMD table), so
//! a thread allocating page tables in one place does not stall walkers
//! elsewhere. A walker keeps its shard read-locked while it holds a
//! page-table page's lock, so the page cannot be freed under it (the
//! kernel's `pte_offset_map_lock` rechecks `pmd_same` for the same reason).
//!
//! All methods take `&self`; the single-threaded engine uses the same code
//! (an uncontended lock costs tens of nanoseconds).

use std::{collections::BTreeMap, ops::ControlFlow};

use crate::{
    addr::PTRS_PER_PTE,
    page::{PageKind, PageRef},
    sync::{Arc, Mutex, MutexGuard, RwLock},
};

/// A PTE marker (`pte_marker` in include/linux/swapops.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A guard region page (PTE_MARKER_GUARD): any access raises SIGSEGV.
    Guard,
}

/// A present entry.
#[derive(Clone, Debug)]
pub struct PresentPte {
    /// The mapped frame.
    pub page: PageRef,
    /// Hardware write permission.
    pub write: bool,
    /// Written through this entry since it was made clean.
    pub dirty: bool,
    /// Accessed since last cleared (clear_refs types 1-3).
    pub young: bool,
    /// Soft-dirty (written since the last clear_refs 4).
    pub soft_dirty: bool,
}

/// One page-table entry.
#[derive(Clone, Debug, Default)]
pub enum Pte {
    /// pte_none: nothing mapped.
    #[default]
    None,
    /// A frame is mapped.
    Present(PresentPte),
    /// A marker.
    Marker(Marker),
}

impl Pte {
    /// pte_none().
    pub const fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    /// The present entry, if any.
    pub const fn present(&self) -> Option<&PresentPte> {
        match self {
            Self::Present(p) => Some(p),
            _ => None,
        }
    }

    /// Whether this is a guard marker.
    pub const fn is_guard(&self) -> bool {
        matches!(self, Self::Marker(Marker::Guard))
    }
}

/// One page-table page: 512 entries.
#[derive(Debug)]
struct PteTable {
    entries: Vec<Pte>,
    /// Non-empty entries.
    used: u16,
}

impl PteTable {
    fn new() -> Self {
        Self {
            entries: vec![Pte::None; PTRS_PER_PTE as usize],
            used: 0,
        }
    }
}

/// A page-table page and its split lock (`ptdesc->ptl`).
#[derive(Debug)]
struct PtePage {
    ptl: Mutex<PteTable>,
}

/// Resident pages by type (MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    /// Anonymous pages.
    pub anon: u64,
    /// Pages of regular files.
    pub file: u64,
    /// Pages of shmem (shared anonymous mappings).
    pub shmem: u64,
}

/// The RSS counters (`mm->rss_stat`, per-CPU counters in the kernel):
/// anonymous, file, shmem.
#[derive(Debug, Default)]
struct RssCounters(crate::percpu::PerCpuCounters<3>);

/// Changes to the RSS counters made under one PTE lock, added to the
/// counters when it is released (as the kernel batches them in
/// add_mm_rss_vec() after zap_pte_range).
#[derive(Default)]
struct RssDelta([i64; 3]);

impl RssDelta {
    fn account(&mut self, page: &PageRef, shmem: bool, delta: i64) {
        let i = match page.kind() {
            PageKind::Zero => return,
            PageKind::Anon => 0,
            PageKind::File { .. } if shmem => 2,
            PageKind::File { .. } => 1,
        };
        self.0[i] += delta;
    }

    fn flush(&self, to: &RssCounters) {
        for (i, d) in self.0.iter().enumerate() {
            if *d != 0 {
                // Two's complement: a stripe may go "negative"; the sum
                // is right.
                to.0.add(i, *d as u64);
            }
        }
    }
}

/// Shards of the page-table directory.
const DIR_SHARDS: usize = 64;

/// One shard of the directory: the page-table pages whose index is
/// congruent to the shard's number, on its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct DirShard(RwLock<BTreeMap<u64, Arc<PtePage>>>);

/// The page tables of one address space.
#[derive(Debug)]
pub struct PageTables {
    dir: Box<[DirShard]>,
    rss: RssCounters,
}

impl Default for PageTables {
    fn default() -> Self {
        Self {
            dir: (0..DIR_SHARDS).map(|_| DirShard::default()).collect(),
            rss: RssCounters::default(),
        }
    }
}

type Dir = BTreeMap<u64, Arc<PtePage>>;

fn read_dir(shard: &DirShard) -> crate::sync::RwLockReadGuard<'_, Dir> {
    shard
        .0
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_dir(shard: &DirShard) -> crate::sync::RwLockWriteGuard<'_, Dir> {
    shard
        .0
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn split(vpn: u64) -> (u64, usize) {
    (vpn / PTRS_PER_PTE, (vpn % PTRS_PER_PTE) as usize)
}

/// One entry, locked: its page-table page's lock is held while this
/// lives (the `pte_t *` and `spinlock_t *` of `pte_offset_map_lock`).
pub struct PteSlot<'a> {
    table: &'a mut PteTable,
    index: usize,
    rss: &'a mut RssDelta,
}

impl PteSlot<'_> {
    /// The entry.
    pub fn get(&self) -> &Pte {
        &self.table.entries[self.index]
    }

    /// Replace the entry; returns the old one. `shmem` tells whether file
    /// pages here belong to shmem (for RSS accounting).
    pub fn set(&mut self, pte: Pte, shmem: bool) -> Pte {
        if let Pte::Present(p) = &pte {
            p.page.map();
            self.rss.account(&p.page, shmem, 1);
        }
        let new_none = pte.is_none();
        let old = std::mem::replace(&mut self.table.entries[self.index], pte);
        match (old.is_none(), new_none) {
            (true, false) => self.table.used += 1,
            (false, true) => self.table.used -= 1,
            _ => {}
        }
        if let Pte::Present(p) = &old {
            p.page.unmap();
            self.rss.account(&p.page, shmem, -1);
        }
        old
    }

    /// Change the bits of a present entry in place (no mapping change).
    pub fn update(&mut self, f: impl FnOnce(&mut PresentPte)) {
        if let Pte::Present(p) = &mut self.table.entries[self.index] {
            f(p);
        }
    }
}

/// exit_mmap(): tearing down the tables unmaps every page they map, so
/// that a page shared with another address space (after fork) becomes
/// exclusive to the survivor.
impl Drop for PageTables {
    fn drop(&mut self) {
        for shard in self.dir.iter() {
            for page in read_dir(shard).values() {
                let Ok(table) = page.ptl.lock() else { continue };
                for e in &table.entries {
                    if let Pte::Present(p) = e {
                        p.page.unmap();
                    }
                }
            }
        }
    }
}

fn lock_table(page: &PtePage) -> MutexGuard<'_, PteTable> {
    // A panic while a PTE lock is held leaves the entries consistent
    // (every change is one assignment), so poisoning is ignored.
    page.ptl
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PageTables {
    /// Empty page tables.
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, t: u64) -> &DirShard {
        &self.dir[(t % DIR_SHARDS as u64) as usize]
    }

    /// pte_offset_map_lock(): run `f` on the entry for `vpn` with its
    /// page-table page locked. With `alloc`, a missing page-table page is
    /// allocated; without, `None` is returned when there is none (the
    /// entry is then empty).
    pub fn with_pte<R>(
        &self,
        vpn: u64,
        alloc: bool,
        f: impl FnOnce(&mut PteSlot<'_>) -> R,
    ) -> Option<R> {
        let (t, index) = split(vpn);
        let shard = self.shard(t);
        loop {
            {
                // The shard stays read-locked while the page-table page
                // is locked, so the page cannot be freed under us
                // (free_empty takes the shard for write first).
                let dir = read_dir(shard);
                if let Some(page) = dir.get(&t) {
                    let mut rss = RssDelta::default();
                    let r = {
                        let mut table = lock_table(page);
                        let mut slot = PteSlot {
                            table: &mut table,
                            index,
                            rss: &mut rss,
                        };
                        f(&mut slot)
                    };
                    rss.flush(&self.rss);
                    return Some(r);
                }
            }
            if !alloc {
                return None;
            }
            // __pte_alloc: allocate under the PMD-level lock, unless
            // another walker did it first; then walk again.
            write_dir(shard).entry(t).or_insert_with(|| {
                Arc::new(PtePage {
                    ptl: Mutex::new(PteTable::new()),
                })
            });
        }
    }

    /// Run `f` on the locked page-table page `t` (the PMD entry's table),
    /// as [`Self::with_pte`] does for one entry.
    fn with_table<R>(&self, t: u64, alloc: bool, f: impl FnOnce(&mut PteTable) -> R) -> Option<R> {
        let shard = self.shard(t);
        loop {
            {
                let dir = read_dir(shard);
                if let Some(page) = dir.get(&t) {
                    return Some(f(&mut lock_table(page)));
                }
            }
            if !alloc {
                return None;
            }
            write_dir(shard).entry(t).or_insert_with(|| {
                Arc::new(PtePage {
                    ptl: Mutex::new(PteTable::new()),
                })
            });
        }
    }

    /// The page-table pages that may hold entries of tables
    /// `first..=last`: every index with `alloc` (they are allocated), else
    /// the allocated ones.
    fn tables(&self, first: u64, last: u64, alloc: bool) -> Vec<u64> {
        if alloc || last - first < DIR_SHARDS as u64 {
            return (first..=last).collect();
        }
        let mut ts: Vec<u64> = Vec::new();
        for shard in self.dir.iter() {
            ts.extend(read_dir(shard).range(first..=last).map(|(t, _)| *t));
        }
        ts.sort_unstable();
        ts
    }

    /// Walk the entries of `[start_vpn, end_vpn)` in order, one
    /// page-table page at a time with its lock held across its entries (a
    /// `pte_offset_map_lock` / `pte_unmap_unlock` per table, as
    /// zap_pte_range and the GUP walk do), calling `f` on each entry until
    /// it breaks. With `alloc`, missing page-table pages are allocated;
    /// without, their (empty) entries are skipped, as are tables holding
    /// nothing.
    pub fn walk(
        &self,
        start_vpn: u64,
        end_vpn: u64,
        alloc: bool,
        mut f: impl FnMut(u64, &mut PteSlot<'_>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if start_vpn >= end_vpn {
            return ControlFlow::Continue(());
        }
        let (first, last) = (split(start_vpn).0, split(end_vpn - 1).0);
        for t in self.tables(first, last, alloc) {
            let base = t * PTRS_PER_PTE;
            let from = start_vpn.max(base) - base;
            let to = end_vpn.min(base + PTRS_PER_PTE) - base;
            let mut rss = RssDelta::default();
            let r = self.with_table(t, alloc, |table| {
                if !alloc && table.used == 0 {
                    return ControlFlow::Continue(());
                }
                for index in from as usize..to as usize {
                    let mut slot = PteSlot {
                        table: &mut *table,
                        index,
                        rss: &mut rss,
                    };
                    f(base + index as u64, &mut slot)?;
                }
                ControlFlow::Continue(())
            });
            rss.flush(&self.rss);
            if let Some(ControlFlow::Break(())) = r {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Clear every non-empty entry of `[start_vpn, end_vpn)` (markers
    /// too), a page-table page at a time (zap_pte_range). `shmem` tells
    /// whether file pages here belong to shmem (for RSS accounting).
    pub fn clear_range(&self, start_vpn: u64, end_vpn: u64, shmem: bool) {
        let _ = self.walk(start_vpn, end_vpn, false, |_, slot| {
            if !slot.get().is_none() {
                if let Pte::Present(p) = slot.set(Pte::None, shmem) {
                    crate::page::Page::release(p.page);
                }
            }
            ControlFlow::Continue(())
        });
    }

    /// The entry for `vpn` (a copy, read under its lock).
    pub fn get(&self, vpn: u64) -> Pte {
        self.with_pte(vpn, false, |s| s.get().clone())
            .unwrap_or(Pte::None)
    }

    /// Replace the entry for `vpn`; returns the old one. `shmem` tells
    /// whether file pages here belong to shmem (for RSS accounting).
    pub fn set(&self, vpn: u64, pte: Pte, shmem: bool) -> Pte {
        let alloc = !pte.is_none();
        self.with_pte(vpn, alloc, |s| s.set(pte, shmem))
            .unwrap_or(Pte::None)
    }

    /// Clear the entry for `vpn`; returns it.
    pub fn take(&self, vpn: u64, shmem: bool) -> Pte {
        self.set(vpn, Pte::None, shmem)
    }

    /// Change the bits of a present entry in place (no mapping change).
    pub fn update(&self, vpn: u64, f: impl FnOnce(&mut PresentPte)) {
        self.with_pte(vpn, false, |s| s.update(f));
    }

    /// The non-empty entries in `[start_vpn, end_vpn)`, in order (copies,
    /// each page-table page read under its lock).
    pub fn range(&self, start_vpn: u64, end_vpn: u64) -> Vec<(u64, Pte)> {
        if start_vpn >= end_vpn {
            return Vec::new();
        }
        let first = split(start_vpn).0;
        let last = split(end_vpn - 1).0;
        let mut pages: Vec<(u64, Arc<PtePage>)> = Vec::new();
        if last - first < DIR_SHARDS as u64 {
            for t in first..=last {
                if let Some(p) = read_dir(self.shard(t)).get(&t) {
                    pages.push((t, Arc::clone(p)));
                }
            }
        } else {
            for shard in self.dir.iter() {
                pages.extend(
                    read_dir(shard)
                        .range(first..=last)
                        .map(|(t, p)| (*t, Arc::clone(p))),
                );
            }
            pages.sort_unstable_by_key(|(t, _)| *t);
        }
        let mut out = Vec::new();
        for (t, page) in pages {
            let table = lock_table(&page);
            if table.used == 0 {
                continue;
            }
            let base = t * PTRS_PER_PTE;
            out.extend(
                table
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.is_none())
                    .map(|(i, e)| (base + i as u64, e.clone()))
                    .filter(|(v, _)| *v >= start_vpn && *v < end_vpn),
            );
        }
        out
    }

    /// The virtual pages in `[start_vpn, end_vpn)` with non-empty entries.
    pub fn occupied(&self, start_vpn: u64, end_vpn: u64) -> Vec<u64> {
        self.range(start_vpn, end_vpn)
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    /// Free the page-table pages wholly inside `[start_vpn, end_vpn)` that
    /// hold nothing (free_pgtables after an unmap).
    pub fn free_empty(&self, start_vpn: u64, end_vpn: u64) {
        let first = start_vpn.div_ceil(PTRS_PER_PTE);
        let last = end_vpn / PTRS_PER_PTE;
        if first >= last {
            return;
        }
        let shards: Vec<&DirShard> = if last - first < DIR_SHARDS as u64 {
            (first..last).map(|t| self.shard(t)).collect()
        } else {
            self.dir.iter().collect()
        };
        for shard in shards {
            let mut dir = write_dir(shard);
            let keys: Vec<u64> = dir.range(first..last).map(|(k, _)| *k).collect();
            for k in keys {
                // `range` may still read a removed page it found before;
                // it is empty, so it yields nothing.
                if lock_table(&dir[&k]).used == 0 {
                    dir.remove(&k);
                }
            }
        }
    }

    /// Number of page-table pages allocated.
    pub fn table_pages(&self) -> usize {
        self.dir.iter().map(|s| read_dir(s).len()).sum()
    }

    /// Resident set by type.
    pub fn rss(&self) -> Rss {
        Rss {
            anon: self.rss.0.sum(0),
            file: self.rss.0.sum(1),
            shmem: self.rss.0.sum(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::Page;

    fn present(page: &PageRef) -> Pte {
        Pte::Present(PresentPte {
            page: page.clone(),
            write: true,
            dirty: true,
            young: true,
            soft_dirty: false,
        })
    }

    #[test]
    fn set_take_and_accounting() {
        let pt = PageTables::new();
        let p = Page::new_anon();
        assert!(pt.get(5).is_none());
        pt.set(5, present(&p), false);
        pt.set(1000, Pte::Marker(Marker::Guard), false);
        assert_eq!(p.mapcount(), 1);
        assert_eq!(pt.rss().anon, 1);
        assert_eq!(pt.table_pages(), 2);
        assert_eq!(pt.occupied(0, 2000), vec![5, 1000]);
        assert_eq!(pt.occupied(6, 1000), Vec::<u64>::new());
        pt.update(5, |e| e.write = false);
        assert!(!pt.get(5).present().unwrap().write);
        let old = pt.take(5, false);
        assert!(old.present().is_some());
        assert_eq!(p.mapcount(), 0);
        assert_eq!(pt.rss().anon, 0);
        pt.free_empty(0, 512);
        assert_eq!(pt.table_pages(), 1, "the table holding the marker stays");
        assert!(pt.get(1000).is_guard());
        // setting None where no table exists allocates nothing
        pt.set(5000, Pte::None, false);
        assert_eq!(pt.table_pages(), 1);
    }

    #[test]
    fn zero_page_is_not_resident() {
        let pt = PageTables::new();
        pt.set(1, present(&Page::zero()), false);
        assert_eq!(pt.rss(), Rss::default());
        let f = Page::new_file(1, 0);
        pt.set(2, present(&f), true);
        assert_eq!(pt.rss().shmem, 1);
    }
}
