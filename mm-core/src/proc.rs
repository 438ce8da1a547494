//! Introspection: /proc/PID/maps, the Size/Rss/Anonymous/VmFlags subset of
//! /proc/PID/smaps, and /proc/PID/pagemap entries, formatted exactly as
//! fs/proc/task_mmu.c (6.18) does: show_map_vma(), show_smap(),
//! show_smap_vma_flags(), pte_to_pagemap_entry(), pagemap_pte_hole().

use std::fmt::Write as _;

use crate::{
    addr::{PAGE_SHIFT, PAGE_SIZE},
    mm::Mm,
    op::{MapsEntry, WindowState},
    pgtable::{Marker, Pte},
    vm_flags::VmFlags,
    vma::{Vma, VmaName},
};

/// pagemap bits (fs/proc/task_mmu.c).
pub mod pm {
    /// PFN (with CAP_SYS_ADMIN) or swap type/offset.
    pub const PFRAME_MASK: u64 = (1 << 55) - 1;
    /// Soft-dirty.
    pub const SOFT_DIRTY: u64 = 1 << 55;
    /// Page mapped exactly once.
    pub const MMAP_EXCLUSIVE: u64 = 1 << 56;
    /// userfaultfd write-protected.
    pub const UFFD_WP: u64 = 1 << 57;
    /// Guard region marker.
    pub const GUARD_REGION: u64 = 1 << 58;
    /// File page or shared anonymous page.
    pub const FILE: u64 = 1 << 61;
    /// Swapped, or another non-present entry (markers included).
    pub const SWAP: u64 = 1 << 62;
    /// Present.
    pub const PRESENT: u64 = 1 << 63;
    /// The flag bits (55-63).
    pub const FLAGS: u64 = !PFRAME_MASK;
}

/// Width of the maps header before the name column (64-bit).
const NAME_COLUMN: usize = 72;

/// The name maps prints for a VMA (get_vma_name), if any, given the brk
/// area `[start_brk, brk)`.
fn vma_name(v: &Vma, start_brk: u64, brk: u64) -> Option<String> {
    if let Some(f) = &v.file {
        return Some(f.path().replace('\n', "\\012"));
    }
    // vma_is_initial_heap: strict overlap with [start_brk, brk).
    if v.start < brk && v.end > start_brk {
        return Some("[heap]".into());
    }
    match &v.name {
        Some(VmaName::Stack) => Some("[stack]".into()),
        Some(VmaName::Anon(n)) => Some(format!("[anon:{n}]")),
        None => None,
    }
}

/// One line of /proc/PID/maps, with its newline (show_map_vma), given the
/// brk area `[start_brk, brk)`.
pub fn maps_line(v: &Vma, start_brk: u64, brk: u64) -> String {
    let (pgoff, (major, minor), inode) = match &v.file {
        Some(f) => (v.pgoff << PAGE_SHIFT, f.dev(), f.inode()),
        None => (0, (0, 0), 0),
    };
    let perms = v.flags.perms();
    let mut line = format!(
        "{:08x}-{:08x} {} {:08x} {:02x}:{:02x} {} ",
        v.start,
        v.end,
        std::str::from_utf8(&perms).expect("ascii"),
        pgoff,
        major,
        minor,
        inode
    );
    if let Some(name) = vma_name(v, start_brk, brk) {
        while line.len() < NAME_COLUMN {
            line.push(' ');
        }
        line.push(' ');
        line.push_str(&name);
    }
    line.push('\n');
    line
}

impl Mm {
    /// The name maps prints for a VMA (get_vma_name), if any.
    fn vma_name(&self, v: &Vma) -> Option<String> {
        vma_name(v, self.start_brk, self.brk)
    }

    /// One line of /proc/PID/maps, with its newline.
    pub fn maps_line(&self, v: &Vma) -> String {
        maps_line(v, self.start_brk, self.brk)
    }

    /// /proc/PID/maps.
    pub fn maps(&self) -> String {
        self.vmas.iter().map(|v| self.maps_line(v)).collect()
    }

    /// Resident and anonymous bytes of a VMA, as smaps counts them (the
    /// zero page and markers count for nothing).
    fn vma_rss(&self, v: &Vma) -> (u64, u64) {
        let mut rss = 0;
        let mut anon = 0;
        for (_, pte) in self.pt.range(v.start / PAGE_SIZE, v.end / PAGE_SIZE) {
            if let Some(p) = pte.present() {
                if p.page.is_zero_page() {
                    continue;
                }
                rss += PAGE_SIZE;
                if p.page.is_anon() {
                    anon += PAGE_SIZE;
                }
            }
        }
        (rss, anon)
    }

    /// /proc/PID/smaps, restricted to the Size, KernelPageSize,
    /// MMUPageSize, Rss, Anonymous and VmFlags lines.
    pub fn smaps(&self) -> String {
        let mut out = String::new();
        for v in self.vmas.iter() {
            out.push_str(&self.maps_line(v));
            let (rss, anon) = self.vma_rss(v);
            let kb = |label: &str, bytes: u64, out: &mut String| {
                let _ = writeln!(out, "{label}{:>8} kB", bytes >> 10);
            };
            kb("Size:           ", v.len(), &mut out);
            kb("KernelPageSize: ", PAGE_SIZE, &mut out);
            kb("MMUPageSize:    ", PAGE_SIZE, &mut out);
            kb("Rss:            ", rss, &mut out);
            kb("Anonymous:      ", anon, &mut out);
            out.push_str("VmFlags: ");
            for m in v.flags.mnemonics() {
                out.push_str(m);
                out.push(' ');
            }
            out.push('\n');
        }
        out
    }

    /// The pagemap entry of the page at `addr` (pfn bits as the engine
    /// numbers frames; a reader without CAP_SYS_ADMIN sees only the flags).
    pub fn pagemap(&self, addr: u64) -> u64 {
        let Some(v) = self.vmas.lookup(addr) else {
            return 0; // pagemap_pte_hole outside any VMA
        };
        let mut e = match self.pt.get(addr / PAGE_SIZE) {
            Pte::None => 0,
            Pte::Present(p) => {
                let mut e = pm::PRESENT | (p.page.pfn() & pm::PFRAME_MASK);
                // _PAGE_SOFT_DIRTY is 0 without CONFIG_MEM_SOFT_DIRTY.
                if p.soft_dirty && self.config.soft_dirty {
                    e |= pm::SOFT_DIRTY;
                }
                // vm_normal_page() is NULL for the zero page: no FILE, no
                // EXCLUSIVE.
                if !p.page.is_zero_page() {
                    if !p.page.is_anon() {
                        e |= pm::FILE;
                    }
                    if p.page.mapcount() <= 1 {
                        e |= pm::MMAP_EXCLUSIVE;
                    }
                }
                e
            }
            // SWP_PTE_MARKER (31) | PTE_MARKER_GUARD (4) << 5
            Pte::Marker(Marker::Guard) => pm::SWAP | pm::GUARD_REGION | 0x9f,
        };
        if v.flags.contains(VmFlags::SOFTDIRTY) {
            e |= pm::SOFT_DIRTY;
        }
        e
    }

    /// The state of `[base, base + pages * PAGE_SIZE)` as the differential
    /// tests compare it: VMAs clipped to the window with maps' offset
    /// column, and pagemap flag bits.
    pub fn window(&self, base: u64, pages: u64) -> WindowState {
        let end = base + pages * PAGE_SIZE;
        let maps = self
            .vmas
            .range(base, end)
            .map(|v| {
                let off = if v.file.is_some() {
                    v.pgoff << PAGE_SHIFT
                } else {
                    0
                };
                let s = v.start.max(base);
                MapsEntry {
                    start: s,
                    end: v.end.min(end),
                    perms: String::from_utf8(v.flags.perms().to_vec()).expect("ascii"),
                    offset: off + (s - v.start),
                    name: self.vma_name(v).unwrap_or_default(),
                }
            })
            .collect();
        let pagemap = (0..pages)
            .map(|i| self.pagemap(base + i * PAGE_SIZE) & pm::FLAGS)
            .collect();
        WindowState { maps, pagemap }
    }
}
