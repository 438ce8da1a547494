//! Executing an [`Op`] on the engine, the counterpart of the host runner.

use std::collections::BTreeMap;

use crate::{
    errno::Errno,
    fault::AccessError,
    file::{File, FileRef},
    mm::Mm,
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

impl Mm {
    /// Execute one op on this address space.
    pub fn apply(&mut self, op: &Op, files: &mut Files) -> Outcome {
        match *op {
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
            Op::Mremap { .. } | Op::ClearRefs { .. } => Outcome::Err(Errno::EINVAL),
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
