//! Page frames: anonymous pages, page-cache pages of files, and the shared
//! zero page (mm/memory.c, include/linux/mm_types.h `struct page`/`folio`).
//!
//! A frame is shared by every PTE that maps it (after fork, or a file page
//! mapped by several VMAs), so it lives behind an `Arc` and counts its
//! mappings (`mapcount`, which pagemap's "exclusively mapped" bit reads).
//!
//! Contents are sparse: only bytes written are stored, so touching a byte of
//! each page of a large region costs a few bytes per page, while a test can
//! still write a value anywhere and read it back, through fork and
//! copy-on-write.

use std::sync::{
    Arc, Mutex, OnceLock,
    atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
};

use crate::addr::PAGE_SIZE;

/// What a frame holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// The shared zero page (ZERO_PAGE): read-only, mapped for reads of
    /// never-written anonymous memory.
    Zero,
    /// An anonymous page.
    Anon,
    /// A page of a file's page cache (shmem included).
    File {
        /// The file's identity.
        file: u64,
        /// Page index in the file.
        index: u64,
    },
}

/// Sparse page contents: (offset, byte) pairs, sorted by offset; absent
/// bytes are zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Content(Vec<(u16, u8)>);

impl Content {
    /// The byte at `off`.
    pub fn get(&self, off: u16) -> u8 {
        match self.0.binary_search_by_key(&off, |&(o, _)| o) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Set the byte at `off`.
    pub fn set(&mut self, off: u16, v: u8) {
        match self.0.binary_search_by_key(&off, |&(o, _)| o) {
            Ok(i) if v == 0 => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = v,
            Err(_) if v == 0 => {}
            Err(i) => self.0.insert(i, (off, v)),
        }
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_empty()
    }
}

static NEXT_PFN: AtomicU64 = AtomicU64::new(1);

/// Frame numbers are handed to each thread in batches, as the page
/// allocator's per-CPU lists do, so that allocating threads do not share
/// a counter's cache line.
fn next_pfn() -> u64 {
    const BATCH: u64 = 1024;
    thread_local! {
        static RANGE: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    RANGE.with(|r| {
        let (mut next, mut end) = r.get();
        if next == end {
            next = NEXT_PFN.fetch_add(BATCH, Ordering::Relaxed);
            end = next + BATCH;
        }
        r.set((next + 1, end));
        next
    })
}

/// Frames kept per thread for reuse (see [`Page::release`]).
const FREE_MAX: usize = 8192;

thread_local! {
    static FREE: std::cell::RefCell<Vec<PageRef>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A page frame.
///
/// Laid out with what mapping and unmapping touch first (the mapcount,
/// the flags and the kind, right after the reference counts of the `Arc`
/// holding it), so that zapping or populating a page touches one cache
/// line of it rather than two.
#[derive(Debug)]
#[repr(C)]
pub struct Page {
    mapcount: AtomicU32,
    anon_exclusive: AtomicBool,
    /// Whether `content` has a non-zero byte (changed under its lock): a
    /// read of an all-zero page, or a store of zero to it, needs no lock.
    nonzero: AtomicBool,
    kind: PageKind,
    /// Set anew when a freed frame is reused (see [`Page::new_anon`]).
    pfn: AtomicU64,
    content: Mutex<Content>,
}

/// A shared reference to a frame.
pub type PageRef = Arc<Page>;

/// Whether `page` is the frame's only reference (so no other thread can
/// reach the frame through another).
fn is_unique(page: &PageRef) -> bool {
    Arc::strong_count(page) == 1 && Arc::weak_count(page) == 0
}

impl Page {
    fn new(kind: PageKind, content: Content) -> PageRef {
        Arc::new(Self {
            pfn: AtomicU64::new(next_pfn()),
            kind,
            nonzero: AtomicBool::new(!content.is_zero()),
            content: Mutex::new(content),
            mapcount: AtomicU32::new(0),
            anon_exclusive: AtomicBool::new(false),
        })
    }

    /// The shared zero page.
    pub fn zero() -> PageRef {
        static ZERO: OnceLock<PageRef> = OnceLock::new();
        Arc::clone(ZERO.get_or_init(|| Self::new(PageKind::Zero, Content::default())))
    }

    /// A fresh zero-filled anonymous page, exclusive to its first mapper.
    pub fn new_anon() -> PageRef {
        if let Some(p) = FREE.with(|f| f.borrow_mut().pop()) {
            // An anonymous frame that had no other reference when it was
            // released, and has been on this thread's list since: nothing
            // else can see it, so plain stores reset it (no atomic
            // read-modify-write, which would cost more than the rest).
            debug_assert!(is_unique(&p) && p.kind == PageKind::Anon);
            p.pfn.store(next_pfn(), Ordering::Relaxed);
            if p.nonzero.load(Ordering::Relaxed) {
                p.clear();
            }
            p.mapcount.store(0, Ordering::Relaxed);
            p.anon_exclusive.store(true, Ordering::Relaxed);
            return p;
        }
        let p = Self::new(PageKind::Anon, Content::default());
        p.anon_exclusive.store(true, Ordering::Relaxed);
        p
    }

    /// Give back a frame that nothing maps any more (a zap's): if this was
    /// its last reference and it is anonymous, its memory is kept on this
    /// thread's free list for the next [`Self::new_anon`], as freed frames
    /// go to the page allocator's per-CPU lists.
    pub fn release(page: PageRef) {
        if page.kind == PageKind::Anon && is_unique(&page) {
            FREE.with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < FREE_MAX {
                    f.push(page);
                }
            });
        }
    }

    /// An anonymous copy of `src` (copy-on-write).
    pub fn copy_of(src: &Page) -> PageRef {
        let p = Self::new(PageKind::Anon, src.content());
        p.anon_exclusive.store(true, Ordering::Relaxed);
        p
    }

    /// A page-cache page of file `file` at `index`.
    pub fn new_file(file: u64, index: u64) -> PageRef {
        Self::new(PageKind::File { file, index }, Content::default())
    }

    /// A frame number, unique for the life of the process.
    pub fn pfn(&self) -> u64 {
        self.pfn.load(Ordering::Relaxed)
    }

    /// What the frame holds.
    pub const fn kind(&self) -> &PageKind {
        &self.kind
    }

    /// Whether this is the zero page.
    pub fn is_zero_page(&self) -> bool {
        self.kind == PageKind::Zero
    }

    /// Whether this is an anonymous page.
    pub fn is_anon(&self) -> bool {
        self.kind == PageKind::Anon
    }

    /// A copy of the contents.
    pub fn content(&self) -> Content {
        self.content.lock().expect("page lock").clone()
    }

    /// The byte at `off` (< PAGE_SIZE).
    pub fn read(&self, off: u64) -> u8 {
        debug_assert!(off < PAGE_SIZE);
        if !self.nonzero.load(Ordering::Acquire) {
            return 0;
        }
        self.content.lock().expect("page lock").get(off as u16)
    }

    /// Store a byte. The caller has established that it may write (the zero
    /// page is never written).
    pub fn write(&self, off: u64, v: u8) {
        debug_assert!(off < PAGE_SIZE && !self.is_zero_page());
        if v == 0 && !self.nonzero.load(Ordering::Acquire) {
            return;
        }
        let mut c = self.content.lock().expect("page lock");
        c.set(off as u16, v);
        self.nonzero.store(!c.is_zero(), Ordering::Release);
    }

    /// Zero the whole page (a freshly truncated page-cache page).
    pub fn clear(&self) {
        let mut c = self.content.lock().expect("page lock");
        *c = Content::default();
        self.nonzero.store(false, Ordering::Release);
    }

    /// Number of PTEs mapping this frame.
    pub fn mapcount(&self) -> u32 {
        self.mapcount.load(Ordering::Relaxed)
    }

    /// One more PTE maps `page`. Where this reference is its only one,
    /// no other thread can change the count, and a plain store does.
    pub(crate) fn map(page: &PageRef) {
        if is_unique(page) {
            let n = page.mapcount.load(Ordering::Relaxed);
            page.mapcount.store(n + 1, Ordering::Relaxed);
        } else {
            page.mapcount.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One PTE fewer maps `page` (see [`Self::map`]).
    pub(crate) fn unmap(page: &PageRef) {
        if is_unique(page) {
            let n = page.mapcount.load(Ordering::Relaxed);
            page.mapcount.store(n - 1, Ordering::Relaxed);
        } else {
            page.mapcount.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// PageAnonExclusive: the page is known to be mapped by one process
    /// only, so a write fault may reuse it instead of copying.
    pub fn anon_exclusive(&self) -> bool {
        self.anon_exclusive.load(Ordering::Relaxed)
    }

    pub(crate) fn set_anon_exclusive(&self, v: bool) {
        self.anon_exclusive.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_content() {
        let mut c = Content::default();
        assert!(c.is_zero());
        c.set(10, 7);
        c.set(3, 1);
        c.set(4095, 9);
        assert_eq!((c.get(3), c.get(10), c.get(4095), c.get(0)), (1, 7, 9, 0));
        c.set(10, 0);
        assert_eq!(c.get(10), 0);
        assert_eq!(c.0.len(), 2);
    }

    /// A frame freed by its last holder is reused by this thread's next
    /// anonymous page, as a new frame: new number, no mappings, zeroed,
    /// exclusive.
    #[test]
    fn released_frames_come_back_as_new_pages() {
        let a = Page::new_anon();
        Page::map(&a);
        a.write(7, 9);
        a.set_anon_exclusive(false);
        let (ptr, pfn) = (Arc::as_ptr(&a), a.pfn());
        Page::unmap(&a);
        Page::release(a);
        let b = Page::new_anon();
        assert_eq!(Arc::as_ptr(&b), ptr, "the frame is reused");
        assert_ne!(b.pfn(), pfn);
        assert_eq!((b.mapcount(), b.read(7), b.anon_exclusive()), (0, 0, true));
        // A frame with another reference is not reused.
        let keep = b.clone();
        Page::release(b);
        assert_ne!(Arc::as_ptr(&Page::new_anon()), Arc::as_ptr(&keep));
        // Nor is a page-cache page (the next page would be it, still a
        // file page, had it been kept).
        Page::release(Page::new_file(1, 0));
        assert!(Page::new_anon().is_anon());
    }

    #[test]
    fn copy_on_write_copies_content() {
        let a = Page::new_anon();
        a.write(100, 42);
        let b = Page::copy_of(&a);
        b.write(100, 43);
        assert_eq!((a.read(100), b.read(100)), (42, 43));
        assert_ne!(a.pfn(), b.pfn());
        assert!(Page::zero().is_zero_page());
        assert_eq!(Page::zero().pfn(), Page::zero().pfn());
    }
}
