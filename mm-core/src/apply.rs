//! Executing an [`Op`] on the engine, the counterpart of the host runner.

use std::collections::BTreeMap;

use crate::{
    errno::Errno,
    fault::AccessError,
    file::{File, FileRef},
    mm::{Mm, MmConfig},
    op::{Op, Outcome},
};

/// Files created by [`Op::CreateFile`], by id.
pub type Files = BTreeMap<u32, FileRef>;

fn access_outcome(r: Result<u8, AccessError>) -> Outcome {
    match r {
        Ok(v) => Outcome::Value(v),
        Err(AccessError::Segv(_)) => Outcome::Segv,
        Err(AccessError::Bus) => Outcome::Bus,
    }
}

/// A process executing ops: an address space and the files it opened.
/// [`Op::Fork`] continues in the child; the parent's address space is
/// kept (the parent waits for the child), so the pages they share stay
/// shared, as on the host runner.
#[derive(Debug, Default)]
pub struct Process {
    mm: Mm,
    files: Files,
    waiting: Vec<Mm>,
}

impl Process {
    /// A process with an empty address space.
    pub fn new(config: MmConfig) -> Self {
        Self {
            mm: Mm::new(config),
            files: Files::new(),
            waiting: Vec::new(),
        }
    }

    /// The current address space.
    pub const fn mm(&self) -> &Mm {
        &self.mm
    }

    /// The files created so far.
    pub const fn files(&self) -> &Files {
        &self.files
    }

    /// How many ancestors are waiting (forks so far).
    pub fn generation(&self) -> usize {
        self.waiting.len()
    }

    /// Execute one op.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        if let Op::Fork = op {
            let child = self.mm.fork();
            self.waiting.push(std::mem::replace(&mut self.mm, child));
            return Outcome::Ok(0);
        }
        self.mm.apply(op, &mut self.files)
    }
}

impl Mm {
    /// Execute one op on this address space. [`Op::Fork`] needs a
    /// [`Process`] to continue in; here it fails with EINVAL.
    pub fn apply(&mut self, op: &Op, files: &mut Files) -> Outcome {
        match *op {
            Op::Fork => Outcome::Err(Errno::EINVAL),
            Op::Mmap {
                addr,
                len,
                prot,
                flags,
                file,
                offset,
            } => {
                let f = file.and_then(|id| files.get(&id).cloned());
                Outcome::from_result(self.mmap(addr, len, prot, flags, f.as_ref(), offset))
            }
            Op::Munmap { addr, len } => Outcome::from_result(self.munmap(addr, len).map(|()| 0)),
            Op::Mprotect { addr, len, prot } => {
                Outcome::from_result(self.mprotect(addr, len, prot).map(|()| 0))
            }
            Op::Madvise { addr, len, advice } => {
                Outcome::from_result(self.madvise(addr, len, advice).map(|()| 0))
            }
            Op::Mlock { addr, len, flags } => {
                Outcome::from_result(self.mlock2(addr, len, flags).map(|()| 0))
            }
            Op::Munlock { addr, len } => Outcome::from_result(self.munlock(addr, len).map(|()| 0)),
            Op::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                new_addr,
            } => Outcome::from_result(self.mremap(old_addr, old_len, new_len, flags, new_addr)),
            Op::ClearRefs { kind } => Outcome::from_result(self.clear_refs(kind).map(|()| 0)),
            Op::CreateFile { id, size, fill } => {
                let f = File::memfd(&format!("mmcore-file-{id}"), size);
                if fill != 0 {
                    f.write_at(0, &vec![fill; size as usize]);
                }
                files.insert(id, f);
                Outcome::Ok(0)
            }
            Op::Read { addr } => access_outcome(self.read(addr)),
            Op::Write { addr, value } => access_outcome(self.write(addr, value).map(|()| 0)),
            Op::Exec { addr } => access_outcome(self.exec(addr).map(|_| 0)),
        }
    }
}
