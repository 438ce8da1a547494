//! Executing [`Op`]s with real system calls in this process, and reading
//! back the state of a window of its address space from /proc/self/maps
//! and /proc/self/pagemap. Used by the `mm-host-runner` binary.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Write as _},
    os::{fd::FromRawFd as _, unix::fs::FileExt as _},
};

use serde::{Deserialize, Serialize};

use super::probe::{self, Probe};
use crate::{
    addr::PAGE_SIZE,
    errno::Errno,
    op::{MapsEntry, Op, Outcome, WindowState},
};

/// pagemap flag bits compared by the differential tests (55-63).
pub const PAGEMAP_FLAGS: u64 = 0xff80_0000_0000_0000;

/// Host features the differential tests depend on, detected at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// MADV_GUARD_INSTALL works (6.13+).
    pub guard_regions: bool,
    /// CONFIG_MEM_SOFT_DIRTY: new VMAs have VM_SOFTDIRTY (`sd`).
    pub soft_dirty: bool,
}

/// Executes ops inside `[base, base + pages * PAGE_SIZE)`.
pub struct HostRunner {
    base: u64,
    pages: u64,
    pagemap: File,
    files: BTreeMap<u32, i32>,
}

fn errno() -> Errno {
    let raw = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    Errno::from_raw(raw).unwrap_or(Errno::EINVAL)
}

fn syscall_result(r: libc::c_long) -> Result<u64, Errno> {
    if r == -1 { Err(errno()) } else { Ok(r as u64) }
}

impl HostRunner {
    /// A runner for the window; checks that the window is free and
    /// installs the fault handlers.
    pub fn new(base: u64, pages: u64) -> std::io::Result<Self> {
        let len = pages * PAGE_SIZE;
        // SAFETY: a fixed-noreplace probe mapping; unmapped right after.
        let p = unsafe {
            libc::mmap(
                base as *mut _,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED || p as u64 != base {
            return Err(std::io::Error::other(format!(
                "the window {base:#x}+{len:#x} is not free in the runner"
            )));
        }
        // SAFETY: unmapping what we just mapped.
        unsafe { libc::munmap(p, len as usize) };
        probe::install();
        Ok(Self {
            base,
            pages,
            pagemap: File::open("/proc/self/pagemap")?,
            files: BTreeMap::new(),
        })
    }

    /// Detect host features, using the window (left empty afterwards).
    pub fn features(&mut self) -> Features {
        let len = PAGE_SIZE as usize;
        // SAFETY: a scratch mapping in the (free) window, unmapped below.
        let p = unsafe {
            libc::mmap(
                self.base as *mut _,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        let guard_regions = p != libc::MAP_FAILED
            // SAFETY: madvise on our scratch mapping.
            && unsafe { libc::madvise(p, len, crate::uapi::madv::GUARD_INSTALL) } == 0;
        let soft_dirty = std::fs::read_to_string("/proc/self/smaps").is_ok_and(|s| {
            let head = format!("{:x}-", self.base);
            s.split("\n")
                .skip_while(|l| !l.starts_with(&head))
                .find(|l| l.starts_with("VmFlags:"))
                .is_some_and(|l| l.split_whitespace().any(|f| f == "sd"))
        });
        if p != libc::MAP_FAILED {
            // SAFETY: unmapping the scratch mapping.
            unsafe { libc::munmap(p, len) };
        }
        Features {
            guard_regions,
            soft_dirty,
        }
    }

    /// Execute one op.
    pub fn exec(&mut self, op: &Op) -> Outcome {
        // SAFETY: raw mm system calls with integer arguments; the harness
        // only passes addresses inside its own window for fixed mappings.
        unsafe {
            match *op {
                Op::Mmap {
                    addr,
                    len,
                    prot,
                    flags,
                    file,
                    offset,
                } => {
                    let fd = file
                        .and_then(|id| self.files.get(&id).copied())
                        .unwrap_or(-1);
                    Outcome::from_result(syscall_result(libc::syscall(
                        libc::SYS_mmap,
                        addr,
                        len,
                        prot,
                        flags,
                        fd as libc::c_long,
                        offset,
                    )))
                }
                Op::Munmap { addr, len } => {
                    Outcome::from_result(syscall_result(libc::syscall(libc::SYS_munmap, addr, len)))
                }
                Op::Mprotect { addr, len, prot } => Outcome::from_result(syscall_result(
                    libc::syscall(libc::SYS_mprotect, addr, len, prot),
                )),
                Op::Mremap {
                    old_addr,
                    old_len,
                    new_len,
                    flags,
                    new_addr,
                } => Outcome::from_result(syscall_result(libc::syscall(
                    libc::SYS_mremap,
                    old_addr,
                    old_len,
                    new_len,
                    flags,
                    new_addr,
                ))),
                Op::Madvise { addr, len, advice } => Outcome::from_result(syscall_result(
                    libc::syscall(libc::SYS_madvise, addr, len, advice as libc::c_long),
                )),
                Op::Mlock { addr, len, flags } => Outcome::from_result(syscall_result(
                    libc::syscall(libc::SYS_mlock2, addr, len, flags),
                )),
                Op::Munlock { addr, len } => Outcome::from_result(syscall_result(libc::syscall(
                    libc::SYS_munlock,
                    addr,
                    len,
                ))),
                Op::ClearRefs { kind } => {
                    let r = std::fs::OpenOptions::new()
                        .write(true)
                        .open("/proc/self/clear_refs")
                        .and_then(|mut f| f.write_all(format!("{kind}\n").as_bytes()));
                    match r {
                        Ok(()) => Outcome::Ok(0),
                        Err(e) => Outcome::Err(
                            e.raw_os_error()
                                .and_then(Errno::from_raw)
                                .unwrap_or(Errno::EINVAL),
                        ),
                    }
                }
                Op::CreateFile { id, size, fill } => {
                    let name = std::ffi::CString::new(format!("mmcore-file-{id}")).expect("no NUL");
                    let fd = libc::memfd_create(name.as_ptr(), 0);
                    if fd < 0 {
                        return Outcome::Err(errno());
                    }
                    let f = File::from_raw_fd(fd);
                    let ok = f.set_len(size).is_ok()
                        && (fill == 0 || f.write_all_at(&vec![fill; size as usize], 0).is_ok());
                    std::mem::forget(f); // keep the fd open for later mmaps
                    if !ok {
                        return Outcome::Err(errno());
                    }
                    self.files.insert(id, fd);
                    Outcome::Ok(0)
                }
                Op::Fork => {
                    let pid = libc::fork();
                    if pid < 0 {
                        return Outcome::Err(errno());
                    }
                    if pid > 0 {
                        // The parent keeps its address space alive until
                        // the child (the runner from now on) is done.
                        let mut status = 0;
                        libc::waitpid(pid, &mut status, 0);
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            1
                        };
                        libc::_exit(code);
                    }
                    // An open pagemap belongs to the parent's mm.
                    match File::open("/proc/self/pagemap") {
                        Ok(f) => {
                            self.pagemap = f;
                            Outcome::Ok(0)
                        }
                        Err(_) => libc::_exit(3),
                    }
                }
                Op::Read { addr } => probe_outcome(probe::read(addr)),
                Op::Write { addr, value } => probe_outcome(probe::write(addr, value)),
                Op::Exec { addr } => probe_outcome(probe::exec(addr)),
            }
        }
    }

    /// The window's VMAs (clipped to it) and pagemap flag bits.
    pub fn window(&self) -> std::io::Result<WindowState> {
        let end = self.base + self.pages * PAGE_SIZE;
        let mut text = String::new();
        File::open("/proc/self/maps")?.read_to_string(&mut text)?;
        let mut maps = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms), Some(offset)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Some((s, e)) = range.split_once('-') else {
                continue;
            };
            let (Ok(s), Ok(e), Ok(off)) = (
                u64::from_str_radix(s, 16),
                u64::from_str_radix(e, 16),
                u64::from_str_radix(offset, 16),
            ) else {
                continue;
            };
            if e <= self.base || s >= end {
                continue;
            }
            let mut entry = clip(s, e, perms, off, self.base, end);
            entry.name = name_column(line).to_owned();
            maps.push(entry);
        }
        let mut raw = vec![0u8; (self.pages * 8) as usize];
        self.pagemap
            .read_exact_at(&mut raw, (self.base / PAGE_SIZE) * 8)?;
        let pagemap = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) & PAGEMAP_FLAGS)
            .collect();
        Ok(WindowState { maps, pagemap })
    }
}

/// The pathname column of a maps line: what follows the fifth field
/// (the inode) and the padding.
pub fn name_column(line: &str) -> &str {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = rest.find(' ').map_or("", |i| &rest[i..]);
    }
    rest.trim_start()
}

/// A maps entry clipped to `[lo, hi)`, the offset advanced accordingly.
pub fn clip(start: u64, end: u64, perms: &str, offset: u64, lo: u64, hi: u64) -> MapsEntry {
    let s = start.max(lo);
    MapsEntry {
        start: s,
        end: end.min(hi),
        perms: perms.to_owned(),
        offset: offset + (s - start),
        name: String::new(),
    }
}

fn probe_outcome(p: Probe) -> Outcome {
    match p {
        Probe::Ok(v) => Outcome::Value(v),
        Probe::Segv => Outcome::Segv,
        Probe::Bus => Outcome::Bus,
    }
}

/// The runner's reply to one op.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    /// What the op returned.
    pub outcome: Outcome,
    /// The window afterwards.
    pub state: WindowState,
}

#[cfg(test)]
mod tests {
    use super::name_column;

    #[test]
    fn name_column_of_maps_lines() {
        let anon = "100000000000-100000001000 rw-p 00000000 00:00 0 ";
        assert_eq!(name_column(anon), "");
        let shm = "7f0000000000-7f0000002000 rw-s 00000000 00:01 4242                       /dev/zero (deleted)";
        assert_eq!(name_column(shm), "/dev/zero (deleted)");
        let heap =
            "555556000000-555556001000 rw-p 00000000 00:00 0                          [heap]";
        assert_eq!(name_column(heap), "[heap]");
    }
}
