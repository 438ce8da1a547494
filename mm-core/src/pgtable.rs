//! Page tables: one entry per virtual page, grouped in page-table pages of
//! 512 entries (the PTE level; the upper levels are implicit in the key).
//! Follows include/linux/pgtable.h and the PTE walks of mm/memory.c.
//!
//! An entry is empty, present (mapping a frame, with its write, dirty, young
//! and soft-dirty bits), or a marker (a guard region's PTE marker,
//! mm/madvise.c). Every change goes through [`PageTables::set`], which keeps
//! each frame's mapcount and the RSS counters right.
//!
//! Page-table pages are the unit of the split PTE lock (issue 4); here they
//! are only the unit of allocation: a page-table page exists while any of
//! its entries is non-empty, or until it is freed with its range.

use std::collections::BTreeMap;

use crate::{
    addr::PTRS_PER_PTE,
    page::{PageKind, PageRef},
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

static NONE_PTE: Pte = Pte::None;

/// One page-table page: 512 entries.
#[derive(Clone, Debug)]
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

/// The page tables of one address space.
#[derive(Debug, Default)]
pub struct PageTables {
    tables: BTreeMap<u64, PteTable>,
    rss: Rss,
}

fn split(vpn: u64) -> (u64, usize) {
    (vpn / PTRS_PER_PTE, (vpn % PTRS_PER_PTE) as usize)
}

/// exit_mmap(): tearing down the tables unmaps every page they map, so
/// that a page shared with another address space (after fork) becomes
/// exclusive to the survivor.
impl Drop for PageTables {
    fn drop(&mut self) {
        for table in self.tables.values() {
            for e in &table.entries {
                if let Pte::Present(p) = e {
                    p.page.unmap();
                }
            }
        }
    }
}

impl PageTables {
    /// Empty page tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for virtual page `vpn`.
    pub fn get(&self, vpn: u64) -> &Pte {
        let (t, i) = split(vpn);
        self.tables.get(&t).map_or(&NONE_PTE, |t| &t.entries[i])
    }

    fn account(&mut self, page: &PageRef, shmem: bool, delta: i64) {
        let counter = match page.kind() {
            PageKind::Zero => return,
            PageKind::Anon => &mut self.rss.anon,
            PageKind::File { .. } if shmem => &mut self.rss.shmem,
            PageKind::File { .. } => &mut self.rss.file,
        };
        *counter = counter.wrapping_add_signed(delta);
    }

    /// Replace the entry for `vpn`; returns the old one. `shmem` tells
    /// whether file pages here belong to shmem (for RSS accounting).
    pub fn set(&mut self, vpn: u64, pte: Pte, shmem: bool) -> Pte {
        let (t, i) = split(vpn);
        if pte.is_none() && !self.tables.contains_key(&t) {
            return Pte::None;
        }
        if let Pte::Present(p) = &pte {
            p.page.map();
            self.account(&p.page.clone(), shmem, 1);
        }
        let table = self.tables.entry(t).or_insert_with(PteTable::new);
        let new_none = pte.is_none();
        let old = std::mem::replace(&mut table.entries[i], pte);
        match (old.is_none(), new_none) {
            (true, false) => table.used += 1,
            (false, true) => table.used -= 1,
            _ => {}
        }
        if let Pte::Present(p) = &old {
            p.page.unmap();
            self.account(&p.page.clone(), shmem, -1);
        }
        old
    }

    /// Clear the entry for `vpn`; returns it.
    pub fn take(&mut self, vpn: u64, shmem: bool) -> Pte {
        self.set(vpn, Pte::None, shmem)
    }

    /// Change the bits of a present entry in place (no mapping change).
    pub fn update(&mut self, vpn: u64, f: impl FnOnce(&mut PresentPte)) {
        let (t, i) = split(vpn);
        if let Some(Pte::Present(p)) = self.tables.get_mut(&t).map(|t| &mut t.entries[i]) {
            f(p);
        }
    }

    /// The non-empty entries in `[start_vpn, end_vpn)`, in order.
    pub fn range(&self, start_vpn: u64, end_vpn: u64) -> impl Iterator<Item = (u64, &Pte)> {
        let (first, _) = split(start_vpn);
        // An empty range selects no table.
        let tables = if start_vpn < end_vpn {
            first..split(end_vpn - 1).0 + 1
        } else {
            first..first
        };
        self.tables
            .range(tables)
            .flat_map(|(t, table)| {
                let base = t * PTRS_PER_PTE;
                table
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.is_none())
                    .map(move |(i, e)| (base + i as u64, e))
            })
            .filter(move |(v, _)| *v >= start_vpn && *v < end_vpn)
    }

    /// The virtual pages in `[start_vpn, end_vpn)` with non-empty entries.
    pub fn occupied(&self, start_vpn: u64, end_vpn: u64) -> Vec<u64> {
        self.range(start_vpn, end_vpn).map(|(v, _)| v).collect()
    }

    /// Free the page-table pages wholly inside `[start_vpn, end_vpn)` that
    /// hold nothing (free_pgtables after an unmap).
    pub fn free_empty(&mut self, start_vpn: u64, end_vpn: u64) {
        let first = start_vpn.div_ceil(PTRS_PER_PTE);
        let last = end_vpn / PTRS_PER_PTE;
        if first >= last {
            return;
        }
        let empty: Vec<u64> = self
            .tables
            .range(first..last)
            .filter(|(_, t)| t.used == 0)
            .map(|(k, _)| *k)
            .collect();
        for k in empty {
            self.tables.remove(&k);
        }
    }

    /// Number of page-table pages allocated.
    pub fn table_pages(&self) -> usize {
        self.tables.len()
    }

    /// Resident set by type.
    pub const fn rss(&self) -> Rss {
        self.rss
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
        let mut pt = PageTables::new();
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
        let mut pt = PageTables::new();
        pt.set(1, present(&Page::zero()), false);
        assert_eq!(pt.rss(), Rss::default());
        let f = Page::new_file(1, 0);
        pt.set(2, present(&f), true);
        assert_eq!(pt.rss().shmem, 1);
    }
}
