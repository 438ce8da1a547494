//! Files that can be mapped: regular files with a small in-memory page
//! cache, and shmem objects backing shared anonymous mappings
//! (mm/filemap.c, mm/shmem.c, include/linux/fs.h).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    addr::{PAGE_SHIFT, PAGE_SIZE},
    page::{Page, PageRef},
};

/// What kind of file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file (a named path on a block device).
    Regular,
    /// The shmem object of a MAP_SHARED|MAP_ANONYMOUS mapping, shown as
    /// `/dev/zero (deleted)` in /proc/PID/maps.
    SharedAnon,
    /// A memfd (shmem), shown as `/memfd:NAME (deleted)`.
    Memfd,
}

/// An open file.
#[derive(Debug)]
pub struct File {
    id: u64,
    kind: FileKind,
    path: String,
    dev: (u32, u32),
    inode: u64,
    size: AtomicU64,
    writable: bool,
    cache: Mutex<BTreeMap<u64, PageRef>>,
}

/// A shared reference to a file (`struct file *`).
pub type FileRef = Arc<File>;

static NEXT_FILE: AtomicU64 = AtomicU64::new(1);
static NEXT_SHMEM_INODE: AtomicU64 = AtomicU64::new(1000);

impl File {
    /// A regular file of `size` bytes at `path`; `writable` tells whether it
    /// was opened for writing (a shared writable mapping needs it).
    pub fn regular(path: impl Into<String>, size: u64, writable: bool) -> FileRef {
        let id = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        Arc::new(Self {
            id,
            kind: FileKind::Regular,
            path: path.into(),
            dev: (0xfd, 0),
            inode: 100_000 + id,
            size: AtomicU64::new(size),
            writable,
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    /// The shmem object behind a shared anonymous mapping of `size` bytes.
    pub fn shared_anon(size: u64) -> FileRef {
        Arc::new(Self {
            id: NEXT_FILE.fetch_add(1, Ordering::Relaxed),
            kind: FileKind::SharedAnon,
            path: "/dev/zero (deleted)".into(),
            dev: (0, 1),
            inode: NEXT_SHMEM_INODE.fetch_add(1, Ordering::Relaxed),
            size: AtomicU64::new(size),
            writable: true,
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    /// A memfd named `name` of `size` bytes (memfd_create + ftruncate).
    pub fn memfd(name: &str, size: u64) -> FileRef {
        Arc::new(Self {
            id: NEXT_FILE.fetch_add(1, Ordering::Relaxed),
            kind: FileKind::Memfd,
            path: format!("/memfd:{name} (deleted)"),
            dev: (0, 1),
            inode: NEXT_SHMEM_INODE.fetch_add(1, Ordering::Relaxed),
            size: AtomicU64::new(size),
            writable: true,
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    /// Whether the file lives in shmem (tmpfs semantics: no write-notify,
    /// pages allocated on read faults).
    pub fn is_shmem(&self) -> bool {
        matches!(self.kind, FileKind::SharedAnon | FileKind::Memfd)
    }

    /// Identity.
    pub const fn id(&self) -> u64 {
        self.id
    }

    /// Kind.
    pub const fn kind(&self) -> &FileKind {
        &self.kind
    }

    /// Path as /proc/PID/maps shows it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// (major, minor) of the device.
    pub const fn dev(&self) -> (u32, u32) {
        self.dev
    }

    /// Inode number.
    pub const fn inode(&self) -> u64 {
        self.inode
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Whether the file was opened for writing.
    pub const fn writable(&self) -> bool {
        self.writable
    }

    /// Whether page `index` lies within the file (a fault beyond the end of
    /// a file mapping raises SIGBUS in the kernel).
    pub fn has_page(&self, index: u64) -> bool {
        index < self.size().div_ceil(PAGE_SIZE)
    }

    /// The page-cache page at `index`, read in (zero-filled) if absent.
    pub fn page(&self, index: u64) -> PageRef {
        let mut cache = self.cache.lock().expect("page cache lock");
        cache
            .entry(index)
            .or_insert_with(|| Page::new_file(self.id, index))
            .clone()
    }

    /// The cached page at `index`, if any.
    pub fn cached(&self, index: u64) -> Option<PageRef> {
        self.cache
            .lock()
            .expect("page cache lock")
            .get(&index)
            .cloned()
    }

    /// Drop the page at `index` from the page cache (hole punch): its
    /// contents read as zero afterwards.
    pub fn punch(&self, index: u64) {
        self.cache.lock().expect("page cache lock").remove(&index);
    }

    /// Write bytes through the file (pwrite), for tests and setup.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let pos = offset + i as u64;
            self.page(pos >> PAGE_SHIFT)
                .write(pos & (PAGE_SIZE - 1), *b);
        }
        let end = offset + bytes.len() as u64;
        self.size.fetch_max(end, Ordering::Relaxed);
    }

    /// Read a byte through the file (pread); 0 past the end.
    pub fn read_at(&self, offset: u64) -> u8 {
        self.cached(offset >> PAGE_SHIFT)
            .map_or(0, |p| p.read(offset & (PAGE_SIZE - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_cache_is_shared_and_sized() {
        let f = File::regular("/data/f", 3 * PAGE_SIZE + 1, true);
        assert!(f.has_page(3) && !f.has_page(4));
        let a = f.page(1);
        let b = f.page(1);
        assert_eq!(a.pfn(), b.pfn());
        f.write_at(PAGE_SIZE + 5, &[9, 8]);
        assert_eq!(a.read(5), 9);
        assert_eq!(f.read_at(PAGE_SIZE + 6), 8);
        let s = File::shared_anon(PAGE_SIZE);
        assert_eq!(s.path(), "/dev/zero (deleted)");
        assert_ne!(s.id(), f.id());
    }
}
