//! Virtual memory areas and the tree that orders them (include/linux/mm_types.h
//! `struct vm_area_struct`, mm/vma.c; the kernel's maple tree becomes an
//! ordered map keyed by start address: lookups and updates in O(log n)).

use std::{
    collections::BTreeMap,
    ops::{Bound, Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{addr::PAGE_SIZE, file::FileRef, gap_index::GapIndex, vm_flags::VmFlags};

/// stack_guard_gap: the free space kept below a stack VMA (256 pages).
pub const STACK_GUARD_GAP: u64 = 256 * PAGE_SIZE;

static NEXT_ANON_VMA: AtomicU64 = AtomicU64::new(1);

/// An anon_vma: the reverse-map root shared by the VMAs whose anonymous
/// pages may be the same (mm/rmap.c). Only its identity matters here.
#[derive(Debug)]
pub struct AnonVma {
    id: u64,
}

/// A shared reference to an anon_vma.
pub type AnonVmaRef = Arc<AnonVma>;

impl AnonVma {
    /// A new anon_vma.
    pub fn new() -> AnonVmaRef {
        Arc::new(Self {
            id: NEXT_ANON_VMA.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Identity.
    pub const fn id(&self) -> u64 {
        self.id
    }
}

/// A name /proc/PID/maps prints for a VMA without a file (`[heap]` is not
/// one: it is derived from the brk range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmaName {
    /// `[stack]`.
    Stack,
    /// `[anon:NAME]` (prctl PR_SET_VMA_ANON_NAME).
    Anon(String),
}

/// A virtual memory area: `[start, end)` with uniform flags and backing.
#[derive(Clone, Debug)]
pub struct Vma {
    /// First address (page aligned).
    pub start: u64,
    /// One past the last address (page aligned).
    pub end: u64,
    /// Flags.
    pub flags: VmFlags,
    /// Offset in PAGE_SIZE units: into the file for file mappings; for
    /// anonymous ones, the page number of the address it was created at.
    pub pgoff: u64,
    /// Backing file, if any.
    pub file: Option<FileRef>,
    /// The anon_vma, once anonymous pages may exist.
    pub anon_vma: Option<AnonVmaRef>,
    /// vma_is_fork_child(): the VMA has an anon_vma and its anon_vma_chain
    /// is not singular (a child's VMA after fork also links to its parent's
    /// anon_vmas). Such VMAs neither merge with nor lend their anon_vma to
    /// neighbours without one.
    pub fork_child: bool,
    /// Name for anonymous VMAs.
    pub name: Option<VmaName>,
}

impl Vma {
    /// A new anonymous or file VMA.
    pub fn new(start: u64, end: u64, flags: VmFlags, pgoff: u64, file: Option<FileRef>) -> Self {
        Self {
            start,
            end,
            flags,
            pgoff,
            file,
            anon_vma: None,
            fork_child: false,
            name: None,
        }
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the VMA is empty (never true for a VMA in a tree).
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether `addr` lies inside.
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// vma_is_anonymous(): no file.
    pub const fn is_anonymous(&self) -> bool {
        self.file.is_none()
    }

    /// Whether the VMA maps shmem (shared anonymous memory or a memfd).
    pub fn is_shmem(&self) -> bool {
        self.file.as_ref().is_some_and(|f| f.is_shmem())
    }

    /// The file page index of `addr` (linear_page_index).
    pub const fn page_index(&self, addr: u64) -> u64 {
        ((addr - self.start) >> crate::addr::PAGE_SHIFT) + self.pgoff
    }
}

/// The ordered, non-overlapping set of VMAs of one address space, with an
/// index of the free gaps between them (the maple tree's gap tracking) so
/// that unmapped-area searches stay logarithmic.
#[derive(Clone, Debug, Default)]
pub struct VmaTree {
    map: BTreeMap<u64, Vma>,
    gaps: GapIndex,
    /// The address window every change since the last
    /// [`VmaTree::take_touched`] lies in: each changed, inserted or removed
    /// VMA has its old and new start inside. The concurrent engine
    /// republishes only this window after a system call.
    touched: Option<(u64, u64)>,
}

/// A VMA borrowed mutably from its tree; when dropped, the tree re-files
/// the VMA if its start moved and updates the gaps around it.
pub struct VmaMut<'a> {
    tree: &'a mut VmaTree,
    key: u64,
}

impl Deref for VmaMut<'_> {
    type Target = Vma;

    fn deref(&self) -> &Vma {
        &self.tree.map[&self.key]
    }
}

impl DerefMut for VmaMut<'_> {
    fn deref_mut(&mut self) -> &mut Vma {
        self.tree
            .map
            .get_mut(&self.key)
            .expect("borrowed VMA exists")
    }
}

impl Drop for VmaMut<'_> {
    fn drop(&mut self) {
        let start = self.tree.map[&self.key].start;
        if start != self.key {
            let v = self
                .tree
                .map
                .remove(&self.key)
                .expect("borrowed VMA exists");
            self.tree.gaps.remove(self.key);
            self.tree.map.insert(start, v);
            self.tree.refresh_after(self.key);
        }
        self.tree.refresh(start);
        self.tree.refresh_after(start);
        let end = self.tree.map[&start].end;
        self.tree.touch(self.key.min(start), end.max(self.key + 1));
    }
}

impl VmaTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of VMAs (mm->map_count).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// vma_lookup(): the VMA containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Vma> {
        self.map
            .range(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.contains(addr))
    }

    /// The VMA containing `addr`, mutably.
    pub fn lookup_mut(&mut self, addr: u64) -> Option<VmaMut<'_>> {
        let key = self.lookup(addr)?.start;
        Some(VmaMut { tree: self, key })
    }

    /// vm_start_gap(): where the free space a VMA needs below it begins.
    pub fn start_gap(v: &Vma) -> u64 {
        if v.flags.contains(VmFlags::GROWSDOWN) {
            v.start.saturating_sub(STACK_GUARD_GAP)
        } else {
            v.start
        }
    }

    /// The free space below the VMA at `key` (down to the previous VMA's
    /// end, or to 0).
    fn gap_below(&self, key: u64) -> Option<u64> {
        let v = self.map.get(&key)?;
        let prev_end = self.map.range(..key).next_back().map_or(0, |(_, p)| p.end);
        Some(Self::start_gap(v).saturating_sub(prev_end))
    }

    /// Recompute the gap of the VMA at `key` (if any).
    fn refresh(&mut self, key: u64) {
        if let Some(g) = self.gap_below(key) {
            self.gaps.set(key, g);
        }
    }

    /// Recompute the gap of the first VMA starting after `key`.
    fn refresh_after(&mut self, key: u64) {
        if let Some(next) = self
            .map
            .range((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map(|(k, _)| *k)
        {
            self.refresh(next);
        }
    }

    /// The highest VMA starting at or below `max_start` with at least
    /// `len` bytes free below it (mas_empty_area_rev).
    pub fn highest_gap_below(&self, max_start: u64, len: u64) -> Option<&Vma> {
        let key = self.gaps.rightmost(max_start, len)?;
        self.map.get(&key)
    }

    /// find_vma(): the first VMA that ends after `addr` (it may start
    /// after `addr`).
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        self.lookup(addr)
            .or_else(|| self.map.range(addr..).next().map(|(_, v)| v))
    }

    /// The VMA that ends at or before `addr` and is nearest to it
    /// (vma_prev relative to an address).
    pub fn prev_of(&self, addr: u64) -> Option<&Vma> {
        self.map
            .range(..addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end <= addr)
    }

    /// The VMA that starts at or after `addr` and is nearest to it.
    pub fn next_of(&self, addr: u64) -> Option<&Vma> {
        self.map.range(addr..).next().map(|(_, v)| v)
    }

    /// The VMA starting exactly at `start`.
    pub fn get(&self, start: u64) -> Option<&Vma> {
        self.map.get(&start)
    }

    /// The VMA starting exactly at `start`, mutably.
    pub fn get_mut(&mut self, start: u64) -> Option<VmaMut<'_>> {
        self.map.contains_key(&start).then_some(VmaMut {
            tree: self,
            key: start,
        })
    }

    /// VMAs that intersect `[start, end)`, in order.
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = &Vma> {
        let first = self.lookup(start).map_or(start, |v| v.start);
        self.map
            .range((Bound::Included(first), Bound::Excluded(end)))
            .map(|(_, v)| v)
    }

    /// Starts of the VMAs intersecting `[start, end)`.
    pub fn starts_in(&self, start: u64, end: u64) -> Vec<u64> {
        self.range(start, end).map(|v| v.start).collect()
    }

    /// All VMAs in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Vma> {
        self.map.values()
    }

    /// The VMAs starting below `addr`, highest first.
    pub fn rev_below(&self, addr: u64) -> impl Iterator<Item = &Vma> {
        self.map.range(..addr).rev().map(|(_, v)| v)
    }

    /// Whether `[start, end)` intersects no VMA.
    pub fn is_free(&self, start: u64, end: u64) -> bool {
        self.range(start, end).next().is_none()
    }

    /// Insert a VMA that overlaps nothing.
    pub fn insert(&mut self, vma: Vma) {
        debug_assert!(vma.start < vma.end, "empty VMA {vma:?}");
        debug_assert!(
            self.is_free(vma.start, vma.end),
            "overlap inserting {vma:?}"
        );
        let start = vma.start;
        self.touch(start, vma.end);
        self.map.insert(start, vma);
        self.refresh(start);
        self.refresh_after(start);
    }

    /// Remove and return the VMA starting at `start`.
    pub fn remove(&mut self, start: u64) -> Option<Vma> {
        let v = self.map.remove(&start)?;
        self.touch(v.start, v.end);
        self.gaps.remove(start);
        self.refresh_after(start);
        Some(v)
    }

    /// __split_vma(): split the VMA containing `addr` (strictly inside it)
    /// in two at `addr`; both halves share the anon_vma. Returns false if no
    /// VMA strictly contains `addr`.
    pub fn split(&mut self, addr: u64) -> bool {
        let Some(start) = self
            .lookup(addr)
            .filter(|v| v.start != addr)
            .map(|v| v.start)
        else {
            return false;
        };
        let lower = self.map.get_mut(&start).expect("found above");
        let whole = (lower.start, lower.end);
        let mut upper = lower.clone();
        upper.start = addr;
        upper.pgoff = lower.pgoff + ((addr - lower.start) >> crate::addr::PAGE_SHIFT);
        lower.end = addr;
        self.map.insert(addr, upper);
        self.refresh(addr);
        self.touch(whole.0, whole.1);
        true
    }

    fn touch(&mut self, start: u64, end: u64) {
        self.touched = Some(match self.touched {
            None => (start, end),
            Some((a, b)) => (a.min(start), b.max(end)),
        });
    }

    /// The window `[lo, hi)` of addresses changed since the last call
    /// (`None` if nothing changed), and start afresh.
    pub fn take_touched(&mut self) -> Option<(u64, u64)> {
        self.touched.take()
    }

    /// Check the tree's invariants: ordered, non-overlapping, page aligned,
    /// non-empty. Returns a description of the first violation.
    pub fn check(&self) -> Result<(), String> {
        let mut prev_end = 0;
        for (k, v) in &self.map {
            if *k != v.start {
                return Err(format!("key {k:#x} != start of {v:?}"));
            }
            if v.start >= v.end {
                return Err(format!("empty or inverted {v:?}"));
            }
            if !crate::addr::is_page_aligned(v.start) || !crate::addr::is_page_aligned(v.end) {
                return Err(format!("unaligned {v:?}"));
            }
            if v.start < prev_end {
                return Err(format!("overlap at {v:?}"));
            }
            let gap = Self::start_gap(v).saturating_sub(prev_end);
            if self.gaps.get(*k) != Some(gap) {
                return Err(format!(
                    "gap index has {:?} below {v:?}, not {gap:#x}",
                    self.gaps.get(*k)
                ));
            }
            prev_end = v.end;
        }
        if self.gaps.len() != self.map.len() {
            return Err(format!(
                "gap index has {} entries for {} VMAs",
                self.gaps.len(),
                self.map.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64) -> Vma {
        Vma::new(start, end, VmFlags::READ, start >> 12, None)
    }

    #[test]
    fn lookup_find_prev_next() {
        let mut t = VmaTree::new();
        t.insert(anon(0x1000, 0x3000));
        t.insert(anon(0x5000, 0x6000));
        assert_eq!(t.lookup(0x1000).unwrap().start, 0x1000);
        assert_eq!(t.lookup(0x2fff).unwrap().start, 0x1000);
        assert!(t.lookup(0x3000).is_none());
        assert_eq!(t.find(0x3000).unwrap().start, 0x5000);
        assert!(t.find(0x6000).is_none());
        assert_eq!(t.prev_of(0x5000).unwrap().start, 0x1000);
        assert_eq!(t.prev_of(0x2000).map(|v| v.start), None);
        assert_eq!(t.next_of(0x3000).unwrap().start, 0x5000);
        assert_eq!(t.starts_in(0x2000, 0x5001), vec![0x1000, 0x5000]);
        assert_eq!(t.starts_in(0x3000, 0x5000), Vec::<u64>::new());
        assert!(t.is_free(0x3000, 0x5000));
        assert!(!t.is_free(0x3000, 0x5001));
        t.check().unwrap();
    }

    #[test]
    fn split_keeps_offsets() {
        let mut t = VmaTree::new();
        t.insert(anon(0x1000, 0x5000));
        assert!(t.split(0x3000));
        assert!(!t.split(0x3000), "already a boundary");
        assert!(!t.split(0x9000), "nothing there");
        let (a, b) = (t.get(0x1000).unwrap(), t.get(0x3000).unwrap());
        assert_eq!((a.end, a.pgoff), (0x3000, 1));
        assert_eq!((b.end, b.pgoff), (0x5000, 3));
        assert_eq!(t.len(), 2);
        t.check().unwrap();
    }
}
