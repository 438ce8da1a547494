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
//! entries.
//!
//! The upper levels (PGD, P4D, PUD, PMD) are a radix tree walked without
//! locks, as the hardware and the kernel's lockless walks do. Its nodes,
//! and the page-table page object at each PMD entry, are allocated once
//! and kept until the tables are dropped; allocating or freeing a
//! page-table page (`__pte_alloc`, `free_pgtables`) changes the object's
//! state under its own lock, and a walker that took the lock sees whether
//! the page is allocated. This stands for the kernel's freeing of
//! page-table pages after an RCU grace period (`pte_free_defer`) with
//! `pte_offset_map_lock` rechecking the PMD entry once it has the lock: a
//! walker never uses a page-table page that was freed under it, and never
//! waits for one being allocated or freed elsewhere. A freed page gives
//! its entries' memory back; only the small object stays.
//!
//! All methods take `&self`; the single-threaded engine uses the same code
//! (an uncontended lock costs tens of nanoseconds).

use std::{ops::ControlFlow, sync::OnceLock};

use crate::{
    addr::PTRS_PER_PTE,
    page::{Page, PageKind, PageRef},
    sync::{AtomicUsize, Mutex, MutexGuard, Ordering},
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

/// One page-table page: 512 entries, when allocated.
#[derive(Debug, Default)]
struct PteTable {
    /// The entries; empty while the page is not allocated.
    entries: Vec<Pte>,
    /// Non-empty entries.
    used: u16,
}

impl PteTable {
    /// Whether the page is allocated (the PMD entry points to it).
    fn allocated(&self) -> bool {
        !self.entries.is_empty()
    }

    /// `__pte_alloc()`: 512 empty entries.
    fn allocate(&mut self) {
        self.entries = vec![Pte::None; PTRS_PER_PTE as usize];
        self.used = 0;
    }

    /// `free_pte_range()`: give the entries' memory back.
    fn free(&mut self) {
        debug_assert_eq!(self.used, 0);
        self.entries = Vec::new();
    }
}

/// The page-table page at one PMD entry and its split lock
/// (`ptdesc->ptl`); see the module's documentation for its life.
#[derive(Debug)]
struct PtePage {
    ptl: Mutex<PteTable>,
    /// Per entry, whether it is present: written with the entry, under
    /// the lock, and read without it by the MMU's first look
    /// ([`PageTables::may_be_present`]), as the hardware walks the tables
    /// without the kernel's locks. Empty under a model checker (which
    /// does not see these atomics): the MMU then always takes the lock.
    present: Box<[std::sync::atomic::AtomicBool]>,
}

impl PtePage {
    /// Whether entry `index` may be present (see [`PtePage::present`]).
    fn may_be_present(&self, index: usize) -> bool {
        self.present
            .get(index)
            .is_none_or(|p| p.load(std::sync::atomic::Ordering::Acquire))
    }
}

impl Default for PtePage {
    fn default() -> Self {
        let n = if crate::sync::MODEL_CHECKING {
            0
        } else {
            PTRS_PER_PTE as usize
        };
        Self {
            ptl: Mutex::default(),
            present: (0..n)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        }
    }
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

/// Bits of a page-table page's number (a virtual page number without its
/// PTE-level bits): the levels above the PTE cover them all.
const TABLE_BITS: u32 = 64 - crate::addr::PAGE_SHIFT - PTRS_PER_PTE.trailing_zeros();
/// Bits resolved by each level below the top (512 entries, as on x86).
const LEVEL_BITS: u32 = 9;
/// Levels above the PTE level (PGD, P4D, PUD, PMD, and one more for the
/// addresses above 5-level paging's, which no mapping reaches).
const LEVELS: u32 = TABLE_BITS.div_ceil(LEVEL_BITS);
/// Entries of the top level.
const TOP_ENTRIES: usize = 1 << (TABLE_BITS - (LEVELS - 1) * LEVEL_BITS);

/// One node of the upper levels: entries pointing to the next level's
/// nodes, or (at the PMD level) to page-table pages. Set once, never
/// cleared while the tables live.
#[derive(Debug)]
enum Node {
    Dir(Box<[OnceLock<Node>]>),
    Pmd(Box<[OnceLock<PtePage>]>),
}

impl Node {
    /// An empty node at `level` (0: the top) with `n` entries.
    fn new(level: u32, n: usize) -> Self {
        if level + 1 == LEVELS {
            Self::Pmd((0..n).map(|_| OnceLock::new()).collect())
        } else {
            Self::Dir((0..n).map(|_| OnceLock::new()).collect())
        }
    }

    /// Call `f` on the page-table pages (their numbers and objects) under
    /// this node, which covers numbers from `base` with `shift` bits per
    /// entry, within `first..=last`, in order.
    fn for_each(
        &self,
        base: u64,
        shift: u32,
        first: u64,
        last: u64,
        f: &mut dyn FnMut(u64, &PtePage),
    ) {
        let span = 1u64 << shift;
        let lo = (first.saturating_sub(base) >> shift) as usize;
        match self {
            Self::Dir(entries) => {
                for (i, e) in entries.iter().enumerate().skip(lo) {
                    let b = base + i as u64 * span;
                    if b > last {
                        break;
                    }
                    if let Some(n) = e.get() {
                        n.for_each(b, shift - LEVEL_BITS, first, last, f);
                    }
                }
            }
            Self::Pmd(entries) => {
                for (i, e) in entries.iter().enumerate().skip(lo) {
                    let t = base + i as u64;
                    if t > last {
                        break;
                    }
                    if let Some(p) = e.get() {
                        f(t, p);
                    }
                }
            }
        }
    }
}

/// The page tables of one address space.
#[derive(Debug)]
pub struct PageTables {
    /// The top level of the upper levels' radix tree.
    top: Node,
    /// Page-table pages allocated.
    tables: AtomicUsize,
    rss: RssCounters,
}

impl Default for PageTables {
    fn default() -> Self {
        Self {
            top: Node::new(0, TOP_ENTRIES),
            tables: AtomicUsize::new(0),
            rss: RssCounters::default(),
        }
    }
}

fn split(vpn: u64) -> (u64, usize) {
    (vpn / PTRS_PER_PTE, (vpn % PTRS_PER_PTE) as usize)
}

/// One entry, locked: its page-table page's lock is held while this
/// lives (the `pte_t *` and `spinlock_t *` of `pte_offset_map_lock`).
pub struct PteSlot<'a> {
    table: &'a mut PteTable,
    /// The page's presence flags (see [`PtePage`]).
    present: &'a [std::sync::atomic::AtomicBool],
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
    ///
    /// Inlined, and a present entry rebuilt from its fields in place: the
    /// entry is then stored from its parts, where a copy built on the
    /// stack and moved as one 16-byte value waited for the narrower
    /// stores that built it (a failed store forward, which cost more than
    /// the rest: a zap went from 7.5 to 3.7 ns a page, a populate from
    /// 10.5 to 8.2).
    #[inline(always)]
    pub fn set(&mut self, pte: Pte, shmem: bool) -> Pte {
        if let Pte::Present(p) = &pte {
            Page::map(&p.page);
            self.rss.account(&p.page, shmem, 1);
        }
        let new_none = pte.is_none();
        let new_present = matches!(pte, Pte::Present(_));
        let e = &mut self.table.entries[self.index];
        let old = std::mem::take(e);
        if let Pte::Present(p) = pte {
            *e = Pte::Present(PresentPte {
                page: p.page,
                write: p.write,
                dirty: p.dirty,
                young: p.young,
                soft_dirty: p.soft_dirty,
            });
        } else {
            *e = pte;
        }
        if matches!(old, Pte::Present(_)) != new_present {
            if let Some(p) = self.present.get(self.index) {
                p.store(new_present, std::sync::atomic::Ordering::Release);
            }
        }
        match (old.is_none(), new_none) {
            (true, false) => self.table.used += 1,
            (false, true) => self.table.used -= 1,
            _ => {}
        }
        if let Pte::Present(p) = &old {
            Page::unmap(&p.page);
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
        self.top
            .for_each(0, (LEVELS - 1) * LEVEL_BITS, 0, u64::MAX, &mut |_, page| {
                let table = lock_table(page);
                for e in &table.entries {
                    if let Pte::Present(p) = e {
                        Page::unmap(&p.page);
                    }
                }
            });
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

    /// The page-table page object at PMD entry `t`, created if missing
    /// with `create` (the object only: the page is allocated under its
    /// lock).
    fn table(&self, t: u64, create: bool) -> Option<&PtePage> {
        let mut node = &self.top;
        let mut shift = (LEVELS - 1) * LEVEL_BITS;
        loop {
            let i = ((t >> shift) & ((1 << LEVEL_BITS) - 1)) as usize;
            match node {
                Node::Dir(entries) => {
                    let e = &entries[i];
                    shift -= LEVEL_BITS;
                    node = match e.get() {
                        Some(n) => n,
                        None if create => {
                            let level = LEVELS - 1 - shift / LEVEL_BITS;
                            e.get_or_init(|| Node::new(level, 1 << LEVEL_BITS))
                        }
                        None => return None,
                    };
                }
                Node::Pmd(entries) => {
                    let e = &entries[i];
                    return match e.get() {
                        Some(p) => Some(p),
                        None if create => Some(e.get_or_init(PtePage::default)),
                        None => None,
                    };
                }
            }
        }
    }

    /// Lock page-table page `t`: its lock held over its allocated entries,
    /// allocating it first with `alloc`; None if it is not allocated and
    /// `alloc` is false.
    fn lock(&self, t: u64, alloc: bool) -> Option<(MutexGuard<'_, PteTable>, &PtePage)> {
        let page = self.table(t, alloc)?;
        Some((self.lock_page(page, alloc)?, page))
    }

    /// Lock `page`, as [`Self::lock`] does page-table page `t`.
    fn lock_page<'a>(&self, page: &'a PtePage, alloc: bool) -> Option<MutexGuard<'a, PteTable>> {
        let mut table = lock_table(page);
        if !table.allocated() {
            if !alloc {
                return None;
            }
            table.allocate();
            self.tables.fetch_add(1, Ordering::Relaxed);
        }
        Some(table)
    }

    /// The MMU's first look at the entry for `vpn`, without its lock:
    /// false if it is certainly not present (the access faults), true if
    /// it may be (look again under the lock). An entry made present by
    /// another thread just now may still read as absent: a spurious
    /// fault, which the fault handler finds already handled, as on the
    /// hardware.
    pub fn may_be_present(&self, vpn: u64) -> bool {
        let (t, index) = split(vpn);
        self.table(t, false)
            .is_some_and(|page| page.may_be_present(index))
    }

    /// [`Self::with_pte`] without allocating, after the MMU's first look
    /// ([`Self::may_be_present`]) on the same walk of the upper levels:
    /// None, without taking the lock, where the entry is certainly not
    /// present.
    pub fn with_pte_if_present<R>(
        &self,
        vpn: u64,
        f: impl FnOnce(&mut PteSlot<'_>) -> R,
    ) -> Option<R> {
        let (t, index) = split(vpn);
        let page = self.table(t, false)?;
        if !page.may_be_present(index) {
            return None;
        }
        self.with_slot(page, index, false, f)
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
        self.with_slot(self.table(t, alloc)?, index, alloc, f)
    }

    /// [`Self::with_pte`] on entry `index` of `page`.
    fn with_slot<R>(
        &self,
        page: &PtePage,
        index: usize,
        alloc: bool,
        f: impl FnOnce(&mut PteSlot<'_>) -> R,
    ) -> Option<R> {
        let mut rss = RssDelta::default();
        let r = {
            let mut table = self.lock_page(page, alloc)?;
            let mut slot = PteSlot {
                table: &mut table,
                present: &page.present,
                index,
                rss: &mut rss,
            };
            f(&mut slot)
        };
        rss.flush(&self.rss);
        Some(r)
    }

    /// Run `f` on the locked page-table page `t` (the PMD entry's table),
    /// as [`Self::with_pte`] does for one entry.
    fn with_table<R>(
        &self,
        t: u64,
        alloc: bool,
        f: impl FnOnce(&mut PteTable, &[std::sync::atomic::AtomicBool]) -> R,
    ) -> Option<R> {
        let (mut table, page) = self.lock(t, alloc)?;
        Some(f(&mut table, &page.present))
    }

    /// Call `f` on the page-table page objects of PMD entries
    /// `first..=last` that exist, in order (allocated or not).
    fn for_each_table(&self, first: u64, last: u64, f: &mut dyn FnMut(u64, &PtePage)) {
        self.top
            .for_each(0, (LEVELS - 1) * LEVEL_BITS, first, last, f);
    }

    /// The page-table pages that may hold entries of tables
    /// `first..=last`: every index with `alloc` (they are allocated), else
    /// the allocated ones.
    fn tables(&self, first: u64, last: u64, alloc: bool) -> Vec<u64> {
        if alloc {
            return (first..=last).collect();
        }
        let mut ts: Vec<u64> = Vec::new();
        self.for_each_table(first, last, &mut |t, _| ts.push(t));
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
            let r = self.with_table(t, alloc, |table, present| {
                if !alloc && table.used == 0 {
                    return ControlFlow::Continue(());
                }
                for index in from as usize..to as usize {
                    let mut slot = PteSlot {
                        table: &mut *table,
                        present,
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
        let mut out = Vec::new();
        self.for_each_table(first, last, &mut |t, page| {
            let table = lock_table(page);
            if table.used == 0 {
                return;
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
        });
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
        self.for_each_table(first, last - 1, &mut |_, page| {
            let mut table = lock_table(page);
            if table.allocated() && table.used == 0 {
                table.free();
                self.tables.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }

    /// Number of page-table pages allocated.
    pub fn table_pages(&self) -> usize {
        self.tables.load(Ordering::Relaxed)
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

    /// The MMU's lockless first look says "absent" exactly where no
    /// present entry is: no table, an empty entry, a guard marker, an
    /// entry cleared again; and "maybe" for a present one, whichever way
    /// it was made (one entry, a walk over a range).
    #[test]
    fn may_be_present_follows_every_change_of_an_entry() {
        let pt = PageTables::new();
        let p = Page::new_anon();
        assert!(!pt.may_be_present(7), "no table yet");
        pt.set(7, present(&p), false);
        assert!(pt.may_be_present(7));
        assert!(!pt.may_be_present(8), "same table, empty entry");
        pt.set(8, Pte::Marker(Marker::Guard), false);
        assert!(!pt.may_be_present(8), "a marker is not present");
        pt.set(8, present(&p), false);
        assert!(pt.may_be_present(8), "marker replaced by a page");
        pt.update(7, |e| e.dirty = false);
        assert!(pt.may_be_present(7), "bits changed in place");
        assert!(pt.take(7, false).present().is_some());
        assert!(!pt.may_be_present(7));
        let _ = pt.walk(0, 600, true, |vpn, slot| {
            if vpn % 2 == 0 {
                slot.set(present(&p), false);
            }
            ControlFlow::Continue(())
        });
        assert_eq!(
            (0..600).filter(|&v| pt.may_be_present(v)).count(),
            300,
            "every even page up to 600, across two tables"
        );
        pt.clear_range(0, 600, false);
        assert!((0..600).all(|v| !pt.may_be_present(v)));
        assert_eq!(p.mapcount(), 0);
    }

    /// Page-table pages in different parts of the upper levels' tree
    /// (other PMD, PUD, PGD and top entries, up to the last virtual page
    /// number) are found in address order; freed ones hold nothing and
    /// come back empty when used again; only the allocated ones count.
    #[test]
    fn tables_across_the_tree_are_freed_and_allocated_again() {
        let pt = PageTables::new();
        let p = Page::new_anon();
        let last = u64::MAX >> crate::addr::PAGE_SHIFT;
        let vpns = [3, 512 + 7, 1 << 18, (1 << 27) + 5, 1 << 35, last];
        for &v in vpns.iter().rev() {
            pt.set(v, present(&p), false);
        }
        assert_eq!(pt.table_pages(), vpns.len());
        assert_eq!(p.mapcount(), vpns.len() as u32);
        assert_eq!(pt.occupied(0, last + 1), vpns.to_vec());
        assert_eq!(
            pt.occupied(4, 1 << 35),
            vec![512 + 7, 1 << 18, (1 << 27) + 5]
        );
        // Empty two tables and free what is empty below 2^20.
        pt.take(512 + 7, false);
        pt.take(1 << 18, false);
        pt.free_empty(0, 1 << 20);
        assert_eq!(pt.table_pages(), vpns.len() - 2);
        assert!(pt.get(512 + 7).is_none() && pt.get(1 << 18).is_none());
        let mut seen = Vec::new();
        let _ = pt.walk(0, 1 << 20, false, |v, slot| {
            if !slot.get().is_none() {
                seen.push(v);
            }
            ControlFlow::Continue(())
        });
        assert_eq!(seen, vec![3], "a freed table is skipped by walks");
        // A freed table is allocated again, empty, by the next store.
        pt.set((1 << 18) + 1, Pte::Marker(Marker::Guard), false);
        assert_eq!(pt.table_pages(), vpns.len() - 1);
        assert!(pt.get(1 << 18).is_none());
        assert!(pt.get((1 << 18) + 1).is_guard());
        // Freeing a table that still holds entries does nothing.
        pt.free_empty(0, last + 1);
        assert_eq!(pt.table_pages(), vpns.len() - 1);
        pt.clear_range(0, last + 1, false);
        pt.free_empty(0, last + 1);
        assert_eq!((pt.table_pages(), p.mapcount(), pt.rss().anon), (0, 0, 0));
    }

    /// A frame's mapcount stays exact whether or not other references to
    /// it exist (the plain-store path for a frame only its PTE holds).
    #[test]
    fn mapcount_is_exact_for_shared_and_unique_frames() {
        let pt = PageTables::new();
        let shared = Page::new_anon();
        pt.set(1, present(&shared), false);
        pt.set(2, present(&shared), false);
        assert_eq!(shared.mapcount(), 2);
        // Only the PTE holds this one.
        pt.set(3, present(&Page::new_anon()), false);
        let unique = pt.get(3).present().map(|p| p.page.clone()).unwrap();
        assert_eq!(unique.mapcount(), 1);
        drop(unique);
        // mremap-like: take the entry (the frame's only reference) and
        // put it elsewhere.
        let moved = pt.take(3, false);
        pt.set(700, moved, false);
        let unique = pt.get(700).present().map(|p| p.page.clone()).unwrap();
        assert_eq!(unique.mapcount(), 1);
        drop(unique);
        pt.take(1, false);
        assert_eq!(shared.mapcount(), 1);
        pt.clear_range(0, 1024, false);
        assert_eq!(shared.mapcount(), 0);
        assert_eq!(pt.rss().anon, 0);
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
