//! Op traces: a versioned, line-oriented record of a process's mm system
//! calls and page faults, written by `mm-probe record` and replayed on the
//! engine by `mm-probe replay`. The format is documented in
//! docs/trace-format.md; in short:
//!
//! ```text
//! mm-trace 1
//! header pid=4242 comm=demo kernel=6.18.44 source=mm-probe-record
//! vma 7f3a5c000000-7f3a5c021000 rw-p 00000000 [heap]
//! 0 4242 mmap addr=0 len=0x10000 prot=READ|WRITE flags=PRIVATE|ANONYMOUS fd=-1 off=0 = 0x7f3a5c200000 dur=2100
//! 5310 4242 fault addr=0x7f3a5c200000 code=0x6 user
//! 9800 4242 madvise addr=0x7f3a5c204000 len=0x2000 advice=GUARD_INSTALL = 0 dur=1800
//! 11200 4242 munmap addr=0x7f3a5c20c000 len=0x4000 = -EINVAL dur=400
//! end records=4 drops=0
//! ```
//!
//! A trace is parsed whole before anything uses it: a malformed line, an
//! unknown op or an impossible address is an error naming the line.

use std::{
    fmt::Write as _,
    io::{BufRead, Write},
};

use thiserror::Error;

use crate::{
    errno::Errno,
    op::{MapsEntry, Op, Outcome},
    uapi::{madv, map, mlock, mremap, prot},
};

/// The format version this module writes and reads.
pub const VERSION: u32 = 1;

/// The first word of every trace.
pub const MAGIC: &str = "mm-trace";

/// The highest user address on x86_64 with 5-level paging (57 bits);
/// addresses at or above it are impossible in a user trace.
pub const USER_ADDR_LIMIT: u64 = 1 << 56;

/// Who and what was recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Process id of the recorded process.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Kernel release of the recording machine.
    pub kernel: String,
    /// What wrote the trace (one word, e.g. `mm-probe-record`).
    pub source: String,
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An mm system call with an [`Op`] form. For `mmap`, the op's
    /// `file` holds the file descriptor (None for fd -1).
    Syscall {
        /// The call.
        op: Op,
        /// [`Outcome::Ok`] or [`Outcome::Err`].
        result: Outcome,
        /// Time from entry to exit.
        dur_ns: u64,
    },
    /// A page fault on a user address.
    Fault {
        /// Faulting address.
        addr: u64,
        /// x86 page-fault error code (bit 0 P, 1 W, 2 U, 4 I).
        code: u64,
        /// Raised in user mode (else a kernel access to user memory).
        user: bool,
    },
    /// An mm system call with no [`Op`] form (brk, mlockall, clone...),
    /// kept for the record; replay reports and skips it.
    Raw {
        /// x86_64 syscall number.
        nr: i64,
        /// Its six argument registers.
        args: [u64; 6],
        /// Its return value.
        ret: i64,
        /// Time from entry to exit.
        dur_ns: u64,
    },
}

/// One line of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Nanoseconds since the first record (non-decreasing).
    pub t_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// What happened.
    pub event: Event,
}

/// A whole trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Who was recorded.
    pub header: Header,
    /// The address space when recording began (from /proc/PID/maps).
    pub initial_vmas: Vec<MapsEntry>,
    /// The records, in time order.
    pub records: Vec<Record>,
    /// Events the recorder lost (its ring buffer was full).
    pub drops: u64,
}

/// A trace that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TraceError {
    /// A line is wrong.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading failed.
    #[error("{0}")]
    Io(String),
}

impl TraceError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        Self::Line {
            line,
            message: message.into(),
        }
    }
}

// ---- x86_64 system call numbers -------------------------------------------

/// x86_64 numbers of the mm system calls a trace records.
pub mod nr {
    #![allow(missing_docs)]
    pub const MMAP: i64 = 9;
    pub const MPROTECT: i64 = 10;
    pub const MUNMAP: i64 = 11;
    pub const BRK: i64 = 12;
    pub const MREMAP: i64 = 25;
    pub const MADVISE: i64 = 28;
    pub const CLONE: i64 = 56;
    pub const FORK: i64 = 57;
    pub const VFORK: i64 = 58;
    pub const MLOCK: i64 = 149;
    pub const MUNLOCK: i64 = 150;
    pub const MLOCKALL: i64 = 151;
    pub const MUNLOCKALL: i64 = 152;
    pub const MLOCK2: i64 = 325;
    pub const CLONE3: i64 = 435;
    pub const PROCESS_MADVISE: i64 = 440;
}

/// A return value as an outcome; None for an errno the engine does not
/// know.
fn result_of(ret: i64) -> Option<Outcome> {
    if (-4095..0).contains(&ret) {
        Errno::from_raw(-ret as i32).map(Outcome::Err)
    } else {
        Some(Outcome::Ok(ret as u64))
    }
}

/// An x86_64 system call (number, argument registers, return value) as a
/// trace event: its [`Op`] form where there is one, else [`Event::Raw`].
pub fn syscall_event(nr: i64, args: [u64; 6], ret: i64, dur_ns: u64) -> Event {
    let [a0, a1, a2, a3, a4, a5] = args;
    let op = match nr {
        nr::MMAP => Some(Op::Mmap {
            addr: a0,
            len: a1,
            prot: a2,
            flags: a3,
            file: (a4 as i32 >= 0).then_some(a4 as u32),
            offset: a5,
        }),
        nr::MUNMAP => Some(Op::Munmap { addr: a0, len: a1 }),
        nr::MPROTECT => Some(Op::Mprotect {
            addr: a0,
            len: a1,
            prot: a2,
        }),
        nr::MREMAP => Some(Op::Mremap {
            old_addr: a0,
            old_len: a1,
            new_len: a2,
            flags: a3,
            // r8 is whatever the caller left there without MREMAP_FIXED.
            new_addr: if a3 & mremap::FIXED != 0 { a4 } else { 0 },
        }),
        nr::MADVISE => Some(Op::Madvise {
            addr: a0,
            len: a1,
            advice: a2 as i32,
        }),
        nr::MLOCK => Some(Op::Mlock {
            addr: a0,
            len: a1,
            flags: 0,
        }),
        nr::MLOCK2 => Some(Op::Mlock {
            addr: a0,
            len: a1,
            flags: a2,
        }),
        nr::MUNLOCK => Some(Op::Munlock { addr: a0, len: a1 }),
        _ => None,
    };
    match (op, result_of(ret)) {
        (Some(op), Some(result)) => Event::Syscall { op, result, dur_ns },
        _ => Event::Raw {
            nr,
            args,
            ret,
            dur_ns,
        },
    }
}

// ---- symbolic values ----------------------------------------------------------

const PROT_BITS: &[(&str, u64)] = &[
    ("READ", prot::READ),
    ("WRITE", prot::WRITE),
    ("EXEC", prot::EXEC),
    ("SEM", prot::SEM),
    ("GROWSDOWN", prot::GROWSDOWN),
    ("GROWSUP", prot::GROWSUP),
];

const MAP_BITS: &[(&str, u64)] = &[
    ("SHARED_VALIDATE", map::SHARED_VALIDATE),
    ("SHARED", map::SHARED),
    ("PRIVATE", map::PRIVATE),
    ("FIXED", map::FIXED),
    ("ANONYMOUS", map::ANONYMOUS),
    ("32BIT", map::BIT32),
    ("GROWSDOWN", map::GROWSDOWN),
    ("DENYWRITE", map::DENYWRITE),
    ("EXECUTABLE", map::EXECUTABLE),
    ("LOCKED", map::LOCKED),
    ("NORESERVE", map::NORESERVE),
    ("POPULATE", map::POPULATE),
    ("NONBLOCK", map::NONBLOCK),
    ("STACK", map::STACK),
    ("HUGETLB", map::HUGETLB),
    ("SYNC", map::SYNC),
    ("FIXED_NOREPLACE", map::FIXED_NOREPLACE),
    ("UNINITIALIZED", map::UNINITIALIZED),
];

const MREMAP_BITS: &[(&str, u64)] = &[
    ("MAYMOVE", mremap::MAYMOVE),
    ("FIXED", mremap::FIXED),
    ("DONTUNMAP", mremap::DONTUNMAP),
];

const MLOCK_BITS: &[(&str, u64)] = &[("ONFAULT", mlock::ONFAULT)];

const ADVICE: &[(&str, i32)] = &[
    ("NORMAL", madv::NORMAL),
    ("RANDOM", madv::RANDOM),
    ("SEQUENTIAL", madv::SEQUENTIAL),
    ("WILLNEED", madv::WILLNEED),
    ("DONTNEED", madv::DONTNEED),
    ("FREE", madv::FREE),
    ("REMOVE", madv::REMOVE),
    ("DONTFORK", madv::DONTFORK),
    ("DOFORK", madv::DOFORK),
    ("MERGEABLE", madv::MERGEABLE),
    ("UNMERGEABLE", madv::UNMERGEABLE),
    ("HUGEPAGE", madv::HUGEPAGE),
    ("NOHUGEPAGE", madv::NOHUGEPAGE),
    ("DONTDUMP", madv::DONTDUMP),
    ("DODUMP", madv::DODUMP),
    ("WIPEONFORK", madv::WIPEONFORK),
    ("KEEPONFORK", madv::KEEPONFORK),
    ("COLD", madv::COLD),
    ("PAGEOUT", madv::PAGEOUT),
    ("POPULATE_READ", madv::POPULATE_READ),
    ("POPULATE_WRITE", madv::POPULATE_WRITE),
    ("DONTNEED_LOCKED", madv::DONTNEED_LOCKED),
    ("COLLAPSE", madv::COLLAPSE),
    ("GUARD_INSTALL", madv::GUARD_INSTALL),
    ("GUARD_REMOVE", madv::GUARD_REMOVE),
];

/// `READ|WRITE`, with unknown bits in hex; `0` for none. With
/// `SHARED_VALIDATE` first, the type bits are named as one.
fn fmt_bits(v: u64, table: &[(&str, u64)]) -> String {
    if v == 0 {
        return "0".into();
    }
    let mut rest = v;
    let mut out = String::new();
    for (name, bit) in table {
        if *bit != 0 && rest & bit == *bit {
            if !out.is_empty() {
                out.push('|');
            }
            out.push_str(name);
            rest &= !bit;
        }
    }
    if rest != 0 {
        if !out.is_empty() {
            out.push('|');
        }
        let _ = write!(out, "{rest:#x}");
    }
    out
}

fn parse_num(s: &str) -> Result<u64, String> {
    let r = if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("`{s}` is not a number"))
}

fn parse_signed(s: &str) -> Result<i64, String> {
    match s.strip_prefix('-') {
        Some(rest) => parse_num(rest).map(|v| (v as i64).wrapping_neg()),
        None => parse_num(s).map(|v| v as i64),
    }
}

fn parse_bits(s: &str, table: &[(&str, u64)]) -> Result<u64, String> {
    let mut v = 0;
    for part in s.split('|') {
        v |= match table.iter().find(|(n, _)| *n == part) {
            Some((_, bit)) => *bit,
            None => parse_num(part).map_err(|_| format!("unknown flag `{part}`"))?,
        };
    }
    Ok(v)
}

fn fmt_advice(a: i32) -> String {
    ADVICE
        .iter()
        .find(|(_, v)| *v == a)
        .map_or_else(|| a.to_string(), |(n, _)| (*n).to_string())
}

fn parse_advice(s: &str) -> Result<i32, String> {
    match ADVICE.iter().find(|(n, _)| *n == s) {
        Some((_, v)) => Ok(*v),
        None => parse_signed(s)
            .map(|v| v as i32)
            .map_err(|_| format!("unknown advice `{s}`")),
    }
}

fn fmt_result(r: &Outcome) -> String {
    match r {
        Outcome::Ok(v) if *v < 4096 => v.to_string(),
        Outcome::Ok(v) => format!("{v:#x}"),
        Outcome::Err(e) => format!("-{}", e.name()),
        Outcome::Value(v) => format!("value:{v}"),
        Outcome::Segv => "SIGSEGV".into(),
        Outcome::Bus => "SIGBUS".into(),
    }
}

fn parse_result(s: &str) -> Result<Outcome, String> {
    if let Some(name) = s.strip_prefix('-') {
        if let Some(e) = Errno::ALL.iter().find(|e| e.name() == name) {
            return Ok(Outcome::Err(*e));
        }
        let n = parse_num(name).map_err(|_| format!("unknown errno `{name}`"))?;
        return Errno::from_raw(n as i32)
            .map(Outcome::Err)
            .ok_or_else(|| format!("unknown errno {n}"));
    }
    parse_num(s).map(Outcome::Ok)
}

// ---- writing ------------------------------------------------------------------------

/// The text of one record (no newline).
pub fn format_record(r: &Record) -> String {
    let mut s = format!("{} {} ", r.t_ns, r.tid);
    match &r.event {
        Event::Fault { addr, code, user } => {
            let _ = write!(
                s,
                "fault addr={addr:#x} code={code:#x} {}",
                if *user { "user" } else { "kernel" }
            );
        }
        Event::Raw {
            nr,
            args,
            ret,
            dur_ns,
        } => {
            let a: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
            let _ = write!(s, "raw nr={nr} args={} = {ret} dur={dur_ns}", a.join(","));
        }
        Event::Syscall { op, result, dur_ns } => {
            s.push_str(&format_op(op));
            let _ = write!(s, " = {} dur={dur_ns}", fmt_result(result));
        }
    }
    s
}

/// An op in trace syntax: its name and `key=value` arguments.
pub fn format_op(op: &Op) -> String {
    match op {
        Op::Mmap {
            addr,
            len,
            prot,
            flags,
            file,
            offset,
        } => format!(
            "mmap addr={addr:#x} len={len:#x} prot={} flags={} fd={} off={offset:#x}",
            fmt_bits(*prot, PROT_BITS),
            fmt_bits(*flags, MAP_BITS),
            file.map_or(-1, i64::from)
        ),
        Op::Munmap { addr, len } => format!("munmap addr={addr:#x} len={len:#x}"),
        Op::Mprotect { addr, len, prot } => format!(
            "mprotect addr={addr:#x} len={len:#x} prot={}",
            fmt_bits(*prot, PROT_BITS)
        ),
        Op::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            new_addr,
        } => format!(
            "mremap addr={old_addr:#x} old_len={old_len:#x} new_len={new_len:#x} flags={} new_addr={new_addr:#x}",
            fmt_bits(*flags, MREMAP_BITS)
        ),
        Op::Madvise { addr, len, advice } => format!(
            "madvise addr={addr:#x} len={len:#x} advice={}",
            fmt_advice(*advice)
        ),
        Op::Mlock { addr, len, flags } => format!(
            "mlock addr={addr:#x} len={len:#x} flags={}",
            fmt_bits(*flags, MLOCK_BITS)
        ),
        Op::Munlock { addr, len } => format!("munlock addr={addr:#x} len={len:#x}"),
        Op::ClearRefs { kind } => format!("clear_refs kind={kind}"),
        Op::Fork => "fork".into(),
        Op::CreateFile { id, size, fill } => {
            format!("create_file id={id} size={size:#x} fill={fill}")
        }
        Op::Read { addr } => format!("read addr={addr:#x}"),
        Op::Write { addr, value } => format!("write addr={addr:#x} value={value}"),
        Op::Exec { addr } => format!("exec addr={addr:#x}"),
    }
}

/// Writes a trace line by line.
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    out: W,
    records: u64,
    started: bool,
}

impl<W: Write> TraceWriter<W> {
    /// Write the version and header lines.
    pub fn new(mut out: W, header: &Header) -> std::io::Result<Self> {
        writeln!(out, "{MAGIC} {VERSION}")?;
        writeln!(
            out,
            "header pid={} comm={} kernel={} source={}",
            header.pid,
            word(&header.comm),
            word(&header.kernel),
            word(&header.source)
        )?;
        Ok(Self {
            out,
            records: 0,
            started: false,
        })
    }

    /// One VMA of the address space when recording began; before any
    /// record.
    pub fn initial_vma(&mut self, e: &MapsEntry) -> std::io::Result<()> {
        if self.started {
            return Err(std::io::Error::other(
                "initial VMAs must come before the first record",
            ));
        }
        write!(
            self.out,
            "vma {:x}-{:x} {} {:08x}",
            e.start, e.end, e.perms, e.offset
        )?;
        if !e.name.is_empty() {
            write!(self.out, " {}", e.name)?;
        }
        writeln!(self.out)
    }

    /// One record.
    pub fn record(&mut self, r: &Record) -> std::io::Result<()> {
        self.started = true;
        self.records += 1;
        writeln!(self.out, "{}", format_record(r))
    }

    /// Write the closing line (the record count and the drops) and return
    /// the output.
    pub fn finish(mut self, drops: u64) -> std::io::Result<W> {
        writeln!(self.out, "end records={} drops={drops}", self.records)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A header value as one word (spaces would split it).
fn word(s: &str) -> String {
    let w: String = s
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if w.is_empty() { "-".into() } else { w }
}

// ---- reading ---------------------------------------------------------------------

/// `key=value` arguments of a line, consumed in order.
struct Args<'a> {
    words: std::slice::Iter<'a, &'a str>,
}

impl<'a> Args<'a> {
    fn get(&mut self, key: &str) -> Result<&'a str, String> {
        let w = self
            .words
            .next()
            .ok_or_else(|| format!("missing `{key}=`"))?;
        match w.split_once('=') {
            Some((k, v)) if k == key => Ok(v),
            _ => Err(format!("expected `{key}=`, found `{w}`")),
        }
    }

    fn num(&mut self, key: &str) -> Result<u64, String> {
        parse_num(self.get(key)?).map_err(|e| format!("{key}: {e}"))
    }

    /// A system call's address argument: any value (the kernel answers a
    /// wild one with an error, which the trace records).
    fn addr(&mut self, key: &str) -> Result<u64, String> {
        self.num(key)
    }

    fn len(&mut self, key: &str) -> Result<u64, String> {
        self.num(key)
    }

    /// An address the process touched: must be a user address.
    fn user_addr(&mut self, key: &str) -> Result<u64, String> {
        let v = self.num(key)?;
        if v >= USER_ADDR_LIMIT {
            return Err(format!(
                "{key}={v:#x} is not a user address (at or above {USER_ADDR_LIMIT:#x})"
            ));
        }
        Ok(v)
    }

    fn bits(&mut self, key: &str, table: &[(&str, u64)]) -> Result<u64, String> {
        parse_bits(self.get(key)?, table).map_err(|e| format!("{key}: {e}"))
    }

    fn end(&mut self) -> Result<(), String> {
        match self.words.next() {
            None => Ok(()),
            Some(w) => Err(format!("unexpected `{w}`")),
        }
    }
}

/// Parse an op from its name and arguments (the inverse of [`format_op`]).
pub fn parse_op(name: &str, args: &[&str]) -> Result<Op, String> {
    let mut a = Args { words: args.iter() };
    let op = match name {
        "mmap" => {
            let addr = a.addr("addr")?;
            let len = a.len("len")?;
            let prot = a.bits("prot", PROT_BITS)?;
            let flags = a.bits("flags", MAP_BITS)?;
            let fd = parse_signed(a.get("fd")?).map_err(|e| format!("fd: {e}"))?;
            let offset = a.num("off")?;
            Op::Mmap {
                addr,
                len,
                prot,
                flags,
                file: (fd >= 0).then_some(fd as u32),
                offset,
            }
        }
        "munmap" => Op::Munmap {
            addr: a.addr("addr")?,
            len: a.len("len")?,
        },
        "mprotect" => Op::Mprotect {
            addr: a.addr("addr")?,
            len: a.len("len")?,
            prot: a.bits("prot", PROT_BITS)?,
        },
        "mremap" => Op::Mremap {
            old_addr: a.addr("addr")?,
            old_len: a.len("old_len")?,
            new_len: a.len("new_len")?,
            flags: a.bits("flags", MREMAP_BITS)?,
            new_addr: a.addr("new_addr")?,
        },
        "madvise" => Op::Madvise {
            addr: a.addr("addr")?,
            len: a.len("len")?,
            advice: parse_advice(a.get("advice")?)?,
        },
        "mlock" => Op::Mlock {
            addr: a.addr("addr")?,
            len: a.len("len")?,
            flags: a.bits("flags", MLOCK_BITS)?,
        },
        "munlock" => Op::Munlock {
            addr: a.addr("addr")?,
            len: a.len("len")?,
        },
        "clear_refs" => Op::ClearRefs {
            kind: a.num("kind")? as u32,
        },
        "fork" => Op::Fork,
        "read" => Op::Read {
            addr: a.addr("addr")?,
        },
        "write" => Op::Write {
            addr: a.addr("addr")?,
            value: a.num("value")? as u8,
        },
        "exec" => Op::Exec {
            addr: a.addr("addr")?,
        },
        other => return Err(format!("unknown op `{other}`")),
    };
    a.end()?;
    Ok(op)
}

fn parse_record(words: &[&str]) -> Result<Record, String> {
    let [t, tid, name, rest @ ..] = words else {
        return Err("expected `TIME TID OP ARGS...`".into());
    };
    let t_ns = parse_num(t).map_err(|e| format!("time: {e}"))?;
    let tid = parse_num(tid)
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("`{tid}` is not a thread id"))?;
    let event = if *name == "fault" {
        let mut a = Args { words: rest.iter() };
        let addr = a.user_addr("addr")?;
        let code = a.num("code")?;
        let user = match a.words.next() {
            Some(&"user") => true,
            Some(&"kernel") => false,
            Some(w) => return Err(format!("expected `user` or `kernel`, found `{w}`")),
            None => return Err("missing `user` or `kernel`".into()),
        };
        a.end()?;
        Event::Fault { addr, code, user }
    } else {
        let eq = rest
            .iter()
            .position(|w| *w == "=")
            .ok_or_else(|| format!("`{name}` has no result (`= VALUE`)"))?;
        let (args, tail) = rest.split_at(eq);
        let (result, dur) = match tail {
            [_, r] => (*r, None),
            [_, r, d] => (*r, Some(*d)),
            _ => return Err("expected `= RESULT [dur=NS]`".into()),
        };
        let dur_ns = match dur {
            None => 0,
            Some(d) => parse_num(
                d.strip_prefix("dur=")
                    .ok_or_else(|| format!("expected `dur=`, found `{d}`"))?,
            )
            .map_err(|e| format!("dur: {e}"))?,
        };
        if *name == "raw" {
            let mut a = Args { words: args.iter() };
            let nr = parse_signed(a.get("nr")?)?;
            let mut regs = [0u64; 6];
            let list: Vec<&str> = a.get("args")?.split(',').collect();
            if list.len() != 6 {
                return Err(format!("args: expected 6 values, found {}", list.len()));
            }
            for (r, s) in regs.iter_mut().zip(list) {
                *r = parse_num(s).map_err(|e| format!("args: {e}"))?;
            }
            a.end()?;
            Event::Raw {
                nr,
                args: regs,
                ret: parse_signed(result)?,
                dur_ns,
            }
        } else {
            let op = parse_op(name, args)?;
            if op.is_access() || matches!(op, Op::CreateFile { .. }) {
                return Err(format!("`{name}` is not a system call"));
            }
            Event::Syscall {
                op,
                result: parse_result(result)?,
                dur_ns,
            }
        }
    };
    Ok(Record { t_ns, tid, event })
}

fn parse_vma(words: &[&str]) -> Result<MapsEntry, String> {
    let [range, perms, offset, name @ ..] = words else {
        return Err("expected `vma START-END PERMS OFFSET [NAME]`".into());
    };
    let (s, e) = range
        .split_once('-')
        .ok_or_else(|| format!("`{range}` is not START-END"))?;
    let hex =
        |v: &str| u64::from_str_radix(v, 16).map_err(|_| format!("`{v}` is not a hex address"));
    let (start, end) = (hex(s)?, hex(e)?);
    if start >= end
        || end > USER_ADDR_LIMIT
        || !start.is_multiple_of(4096)
        || !end.is_multiple_of(4096)
    {
        return Err(format!("`{range}` is not a page-aligned user range"));
    }
    let p = perms.as_bytes();
    if p.len() != 4
        || !matches!(p[0], b'r' | b'-')
        || !matches!(p[1], b'w' | b'-')
        || !matches!(p[2], b'x' | b'-')
        || !matches!(p[3], b'p' | b's')
    {
        return Err(format!("`{perms}` is not a permission string like rw-p"));
    }
    Ok(MapsEntry {
        start,
        end,
        perms: (*perms).to_string(),
        offset: hex(offset)?,
        name: name.join(" "),
    })
}

/// A number as [`parse_num`] reads it, for the plain forms only (decimal
/// digits, or `0x` and hex digits, without overflow); None for anything
/// else, which the general parser then reads (and reports).
fn fast_num(s: &[u8]) -> Option<u64> {
    if let Some(h) = s.strip_prefix(b"0x") {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        let mut v = 0u64;
        for &b in h {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return None,
            };
            v = (v << 4) | u64::from(d);
        }
        Some(v)
    } else {
        if s.is_empty() {
            return None;
        }
        let mut v = 0u64;
        for &b in s {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        Some(v)
    }
}

/// A well-formed fault line (`T TID fault addr=A code=C user|kernel`,
/// single spaces, plain numbers, a user address), read without
/// allocating; None for any other line, which [`parse_record`] reads.
/// Faults are nearly every line of a large trace.
fn fast_fault(line: &[u8]) -> Option<Record> {
    let mut w = line.split(|&b| b == b' ');
    let t_ns = fast_num(w.next()?)?;
    let tid = u32::try_from(fast_num(w.next()?)?).ok()?;
    if w.next()? != b"fault" {
        return None;
    }
    let addr = fast_num(w.next()?.strip_prefix(b"addr=")?)?;
    if addr >= USER_ADDR_LIMIT {
        return None;
    }
    let code = fast_num(w.next()?.strip_prefix(b"code=")?)?;
    let user = match w.next()? {
        b"user" => true,
        b"kernel" => false,
        _ => return None,
    };
    if w.next().is_some() {
        return None;
    }
    Some(Record {
        t_ns,
        tid,
        event: Event::Fault { addr, code, user },
    })
}

/// One record line (trimmed, not empty).
fn record_line(line: &str) -> Result<Record, String> {
    if let Some(r) = fast_fault(line.as_bytes()) {
        return Ok(r);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    parse_record(&words)
}

/// Lines of a buffer as `BufRead::lines` splits them: on `\n`, without a
/// `\r` before it; no line after a final `\n`.
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// A line as text, or the error `BufRead::lines` gives for it.
fn line_text(bytes: &[u8], line_no: usize) -> Result<&str, TraceError> {
    std::str::from_utf8(bytes).map_err(|_| {
        TraceError::Io(format!(
            "line {line_no}: {}",
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8"
            )
        ))
    })
}

/// The `end` line's words: (records it counts, drops).
fn parse_end(words: &[&str]) -> Result<(Option<u64>, Option<u64>), String> {
    let (mut records, mut drops) = (None, None);
    for w in words {
        match w.split_once('=') {
            Some(("records", v)) => records = Some(parse_num(v)?),
            Some(("drops", v)) => drops = Some(parse_num(v)?),
            _ => return Err(format!("unexpected `{w}`")),
        }
    }
    Ok((records, drops))
}

/// What a part of a trace's body (after its first record) holds. Line
/// numbers in it are relative to the part's first line (0-based).
#[derive(Default)]
struct Part {
    /// Lines in the part.
    lines: usize,
    records: Vec<Record>,
    /// The line of the first record.
    first_record: Option<usize>,
    /// The first line with text or unreadable (a line there is an error
    /// after an earlier part's `end`).
    first_text: Option<usize>,
    /// The first error in the part, at that line.
    error: Option<(usize, TraceError)>,
    /// The `end` line: its line, the records before it in the part, the
    /// count it gives, the drops it gives.
    end: Option<(usize, usize, Option<u64>, Option<u64>)>,
}

/// Read a part of the body (after the first record: every `vma` line
/// there is misplaced), its records following `seed`'s.
fn parse_part(bytes: &[u8], mut seed: Vec<Record>) -> Part {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    seed.reserve(lines);
    let mut last_t = seed.last().map(|r| r.t_ns);
    let mut part = Part {
        records: seed,
        ..Part::default()
    };
    for (i, raw) in (Lines { rest: bytes }).enumerate() {
        part.lines = i + 1;
        if part.error.is_some() {
            continue;
        }
        let err = |m: String| Some((i, TraceError::at(i, m)));
        let line = match line_text(raw, i) {
            Ok(l) => l.trim(),
            Err(e) => {
                part.first_text.get_or_insert(i);
                part.error = Some((i, e));
                continue;
            }
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        part.first_text.get_or_insert(i);
        if part.end.is_some() {
            part.error = err("text after the `end` line".into());
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        match first {
            "vma" => part.error = err("`vma` lines must come before the first record".into()),
            "end" => {
                let words: Vec<&str> = line.split_whitespace().skip(1).collect();
                match parse_end(&words) {
                    Ok((n, d)) => part.end = Some((i, part.records.len(), n, d)),
                    Err(m) => part.error = err(m),
                }
            }
            _ => match record_line(line) {
                Ok(r) => {
                    if let Some(prev) = last_t {
                        if r.t_ns < prev {
                            part.error = err(format!(
                                "time {} goes back (previous record: {prev})",
                                r.t_ns
                            ));
                            continue;
                        }
                    } else {
                        part.first_record = Some(i);
                    }
                    last_t = Some(r.t_ns);
                    part.records.push(r);
                }
                Err(m) => part.error = err(m),
            },
        }
    }
    part
}

/// Read a whole trace. Any error names its line.
pub fn parse(mut input: impl BufRead) -> Result<Trace, TraceError> {
    let mut bytes = Vec::new();
    if let Err(e) = input.read_to_end(&mut bytes) {
        let line_no = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(TraceError::Io(format!("line {line_no}: {e}")));
    }
    parse_bytes(&bytes)
}

/// Read a whole trace from its text. Any error names its line. A large
/// body is read in parts on several threads; the result, and the error
/// for a bad trace, are those of reading it line by line.
pub fn parse_bytes(bytes: &[u8]) -> Result<Trace, TraceError> {
    // As many parts as there are CPUs, at least 4 MiB each.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    parse_parts(bytes, threads.min(bytes.len() / (4 << 20)).max(1))
}

/// [`parse_bytes`] with the body in `parts_n` parts.
fn parse_parts(bytes: &[u8], parts_n: usize) -> Result<Trace, TraceError> {
    let mut trace = Trace::default();
    let mut state = 0; // 0: magic, 1: header, 2: body, 3: after `end`
    let mut line_no = 0;
    let mut lines = Lines { rest: bytes };
    // The head, line by line, up to the first record.
    while trace.records.is_empty() {
        let Some(raw) = lines.next() else { break };
        line_no += 1;
        let line = line_text(raw, line_no)?.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let err = |m: String| TraceError::at(line_no, m);
        match state {
            0 => {
                if words.first() != Some(&MAGIC) {
                    return Err(err(format!(
                        "not an mm trace: expected `{MAGIC} {VERSION}`"
                    )));
                }
                let v = words.get(1).and_then(|v| v.parse::<u32>().ok());
                if v != Some(VERSION) || words.len() != 2 {
                    return Err(err(format!(
                        "unsupported trace version `{}` (this build reads version {VERSION})",
                        words[1..].join(" ")
                    )));
                }
                state = 1;
            }
            1 => {
                if words.first() != Some(&"header") {
                    return Err(err("expected the `header` line".into()));
                }
                for w in &words[1..] {
                    let (k, v) = w
                        .split_once('=')
                        .ok_or_else(|| err(format!("`{w}` is not KEY=VALUE")))?;
                    match k {
                        "pid" => {
                            trace.header.pid = v
                                .parse()
                                .map_err(|_| err(format!("pid `{v}` is not a number")))?;
                        }
                        "comm" => trace.header.comm = v.into(),
                        "kernel" => trace.header.kernel = v.into(),
                        "source" => trace.header.source = v.into(),
                        // Unknown keys are for later minor additions.
                        _ => {}
                    }
                }
                state = 2;
            }
            2 => match words[0] {
                "vma" => {
                    trace
                        .initial_vmas
                        .push(parse_vma(&words[1..]).map_err(err)?);
                }
                "end" => {
                    let (n, d) = parse_end(&words[1..]).map_err(err)?;
                    if let Some(d) = d {
                        trace.drops = d;
                    }
                    if let Some(n) = n {
                        if n != 0 {
                            return Err(err(format!("`end` says {n} records but the trace has 0")));
                        }
                    }
                    state = 3;
                    break;
                }
                _ => trace.records.push(record_line(line).map_err(err)?),
            },
            _ => unreachable!("the head stops at `end`"),
        }
    }
    if state == 3 {
        // Only blank lines and comments may follow.
        for raw in lines {
            line_no += 1;
            let line = line_text(raw, line_no)?.trim();
            if !(line.is_empty() || line.starts_with('#')) {
                return Err(TraceError::at(line_no, "text after the `end` line"));
            }
        }
        return Ok(trace);
    }
    if trace.records.is_empty() {
        return Err(match state {
            0 => TraceError::at(line_no.max(1), "empty trace"),
            1 => TraceError::at(line_no, "the trace has no `header` line"),
            _ => TraceError::at(
                line_no,
                "the trace ends without its `end` line (truncated? the recorder writes it when it stops)",
            ),
        });
    }
    // The body: in parts, one thread each, cut at line ends.
    let body = lines.rest;
    let mut cuts = vec![0];
    for k in 1..parts_n {
        let at = (body.len() * k / parts_n).max(*cuts.last().expect("non-empty"));
        let end = body[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| at + i + 1);
        cuts.push(end);
    }
    cuts.push(body.len());
    // The first part carries on from the head's records.
    let mut seed = Some(std::mem::take(&mut trace.records));
    let parts: Vec<Part> = if parts_n == 1 {
        vec![parse_part(body, seed.take().unwrap_or_default())]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = cuts
                .windows(2)
                .map(|w| {
                    let b = &body[w[0]..w[1]];
                    let seed = seed.take().unwrap_or_default();
                    s.spawn(move || parse_part(b, seed))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a trace parser thread panicked"))
                .collect()
        })
    };
    // Stitch, in line order, checking what crosses parts.
    let mut last_t = 0;
    let mut ended = false;
    for part in parts {
        let base = line_no;
        let renumber = |e: TraceError| match e {
            TraceError::Line { line, message } => TraceError::Line {
                line: base + line + 1,
                message,
            },
            TraceError::Io(m) => match m.split_once(": ") {
                Some((l, rest)) => {
                    let n: usize = l.trim_start_matches("line ").parse().unwrap_or(0);
                    TraceError::Io(format!("line {}: {rest}", base + n + 1))
                }
                None => TraceError::Io(m),
            },
        };
        if ended {
            if let Some(i) = part.first_text {
                return Err(match part.error {
                    Some((l, e @ TraceError::Io(_))) if l == i => renumber(e),
                    _ => TraceError::at(base + i + 1, "text after the `end` line"),
                });
            }
        }
        if let (Some(i), Some(first)) = (part.first_record, part.records.first()) {
            if first.t_ns < last_t && part.error.as_ref().is_none_or(|(l, _)| *l > i) {
                return Err(TraceError::at(
                    base + i + 1,
                    format!("time {} goes back (previous record: {last_t})", first.t_ns),
                ));
            }
        }
        if let Some((l, before, n, d)) = part.end {
            if part.error.as_ref().is_none_or(|(e, _)| *e > l) {
                let have = trace.records.len() + before;
                if let Some(n) = n {
                    if n != have as u64 {
                        return Err(TraceError::at(
                            base + l + 1,
                            format!("`end` says {n} records but the trace has {have}"),
                        ));
                    }
                }
                if let Some(d) = d {
                    trace.drops = d;
                }
                ended = true;
            }
        }
        if let Some((_, e)) = part.error {
            return Err(renumber(e));
        }
        if let Some(r) = part.records.last() {
            last_t = r.t_ns;
        }
        if trace.records.is_empty() {
            trace.records = part.records;
        } else {
            trace.records.extend(part.records);
        }
        line_no += part.lines;
    }
    if !ended {
        return Err(TraceError::at(
            line_no,
            "the trace ends without its `end` line (truncated? the recorder writes it when it stops)",
        ));
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trace {
        Trace {
            header: Header {
                pid: 4242,
                comm: "demo prog".into(),
                kernel: "6.18.44".into(),
                source: "test".into(),
            },
            initial_vmas: vec![MapsEntry {
                start: 0x5555_0000_0000,
                end: 0x5555_0002_1000,
                perms: "rw-p".into(),
                offset: 0,
                name: "[heap]".into(),
            }],
            records: vec![
                Record {
                    t_ns: 0,
                    tid: 4242,
                    event: syscall_event(
                        nr::MMAP,
                        [0, 0x10000, 3, 0x22, u64::MAX, 0],
                        0x7f00_0000_0000,
                        2100,
                    ),
                },
                Record {
                    t_ns: 10,
                    tid: 4243,
                    event: Event::Fault {
                        addr: 0x7f00_0000_0000,
                        code: 6,
                        user: true,
                    },
                },
                Record {
                    t_ns: 20,
                    tid: 4242,
                    event: syscall_event(
                        nr::MADVISE,
                        [0x7f00_0000_4000, 0x2000, 102, 0, 0, 0],
                        0,
                        5,
                    ),
                },
                Record {
                    t_ns: 30,
                    tid: 4242,
                    event: syscall_event(
                        nr::MUNMAP,
                        [0x7f00_0000_0001, 0x1000, 0, 0, 0, 0],
                        -22,
                        5,
                    ),
                },
                Record {
                    t_ns: 30,
                    tid: 4242,
                    event: syscall_event(nr::MLOCKALL, [3, 0, 0, 0, 0, 0], 0, 7),
                },
                Record {
                    t_ns: 40,
                    tid: 4242,
                    event: syscall_event(
                        nr::MREMAP,
                        [0x7f00_0000_0000, 0x1000, 0x2000, 1 | 0x100, 0, 0],
                        0x7f00_0001_0000,
                        9,
                    ),
                },
            ],
            drops: 3,
        }
    }

    fn write(t: &Trace) -> String {
        let mut w = TraceWriter::new(Vec::new(), &t.header).unwrap();
        for v in &t.initial_vmas {
            w.initial_vma(v).unwrap();
        }
        for r in &t.records {
            w.record(r).unwrap();
        }
        String::from_utf8(w.finish(t.drops).unwrap()).unwrap()
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let text = write(&t);
        assert!(text.contains(
            "0 4242 mmap addr=0x0 len=0x10000 prot=READ|WRITE flags=PRIVATE|ANONYMOUS fd=-1 off=0x0 = 0x7f0000000000 dur=2100"
        ), "{text}");
        assert!(text.contains("madvise addr=0x7f0000004000 len=0x2000 advice=GUARD_INSTALL = 0"));
        assert!(text.contains("= -EINVAL dur=5"));
        assert!(text.contains("raw nr=151 args=0x3,0x0,0x0,0x0,0x0,0x0 = 0 dur=7"));
        assert!(text.contains("flags=MAYMOVE|0x100"));
        assert!(text.contains("header pid=4242 comm=demo_prog"));
        let mut back = parse(text.as_bytes()).unwrap();
        back.header.comm = t.header.comm.clone();
        assert_eq!(back, t);
    }

    fn err_line(text: &str) -> (usize, String) {
        match parse(text.as_bytes()).unwrap_err() {
            TraceError::Line { line, message } => (line, message),
            e => panic!("{e}"),
        }
    }

    /// `lines` joined, line `i` replaced by `l`.
    fn with_line(lines: &[&str], i: usize, l: &str) -> String {
        let mut v = lines.to_vec();
        v[i] = l;
        v.join("\n")
    }

    /// Every way of cutting the body gives what reading it line by line
    /// gives (one part), for good and bad traces.
    #[test]
    fn parts_read_as_one() {
        let good = write(&sample());
        let lines: Vec<&str> = good.lines().collect();
        let with = |i: usize, l: &str| with_line(&lines, i, l);
        let end = lines.len() - 1;
        let mut cases = vec![
            good.clone(),
            good.replace('\n', "\r\n"),
            format!("{good}\n\n# trailing comment\n"),
            format!("{good}5 1 munmap addr=0 len=0x1000 = 0\n"),
            format!("{good}\n\nvma 1000-2000 rw-p 0\n"),
            with(5, "1 1 munmap addr=0 len=0x1000 = 0"),
            with(4, "3 4243 fault addr=0x1000 code=0x6 user"),
            with(4, "30 4243 fault addr=0x1000 code=0x6 user"),
            with(5, "vma 1000-2000 rw-p 0"),
            with(6, "  10\t4243  fault addr=0x1000 code=6 kernel  "),
            with(6, "20 4243 fault addr=+0x1000 code=0x6 user"),
            with(6, "20 4243 fault addr=0x100000000000000 code=0x6 user"),
            with(6, "20 99999999999 fault addr=0x1000 code=0x6 user"),
            with(6, "20 1 fault addr=0x1000 code=0x6 user extra"),
            with(5, "end records=2 drops=0"),
            with(5, "end records=1 drops=0"),
            with(end, "end records=6 drops=x"),
            with(end, "end records=7"),
            with(end, ""),
            lines[..end].join("\n"),
        ];
        let mut bad_utf8 = good.clone().into_bytes();
        let at = bad_utf8.len() - 40;
        bad_utf8[at] = 0xff;
        for c in &mut cases {
            // Enough lines that every cut lands inside the body.
            let extra: String = (0..40)
                .map(|i| {
                    format!(
                        "{} 4243 fault addr={:#x} code=0x6 user\n",
                        40 + i,
                        0x1000 * i
                    )
                })
                .collect();
            if let Some(p) = c.find("end records=") {
                let n: usize = c[p + 12..]
                    .split(' ')
                    .next()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let tail =
                    c[p..].replacen(&format!("records={n}"), &format!("records={}", n + 40), 1);
                *c = format!("{}{extra}{tail}", &c[..p]);
            }
        }
        let mut inputs: Vec<Vec<u8>> = cases.into_iter().map(String::into_bytes).collect();
        inputs.push(bad_utf8);
        for input in &inputs {
            let one = parse_parts(input, 1);
            for k in 2..9 {
                assert_eq!(
                    parse_parts(input, k),
                    one,
                    "{k} parts of\n{}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        assert_eq!(
            parse_parts(inputs[0].as_slice(), 1).unwrap().records.len(),
            46
        );
        assert!(parse_parts(&inputs[3], 1).is_err());
    }

    #[test]
    fn errors_name_the_line() {
        let good = write(&sample());
        let lines: Vec<&str> = good.lines().collect();
        let with = |i: usize, l: &str| with_line(&lines, i, l);
        // Line 4 is the first record.
        let cases = [
            (with(3, "5 1 mmapp addr=0 = 0"), "unknown op `mmapp`"),
            (with(3, "5 1 munmap addr=0x1000 = 0"), "missing `len=`"),
            (
                with(3, "5 1 munmap addr=0x1000 len=0x1000"),
                "has no result",
            ),
            (
                with(3, "5 1 fault addr=0xffffffff81000000 code=0x6 user"),
                "not a user address",
            ),
            (
                with(3, "5 1 fault addr=0x1000 code=0x6"),
                "missing `user` or `kernel`",
            ),
            (
                with(3, "x 1 fault addr=0x1000 code=0x6 user"),
                "time: `x` is not a number",
            ),
            (
                with(3, "5 1 madvise addr=0 len=0x1000 advice=BOGUS = 0"),
                "unknown advice",
            ),
            (
                with(3, "5 1 munmap addr=0 len=0x1000 = -EWHAT"),
                "unknown errno",
            ),
            (with(3, "5 1 read addr=0x1000 = 0"), "not a system call"),
            (with(5, "1 1 munmap addr=0 len=0x1000 = 0"), "goes back"),
        ];
        for (text, want) in cases {
            let (line, msg) = err_line(&text);
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            assert!(line == 4 || line == 6, "line {line} for {want}");
        }
        let (line, msg) = err_line(&with(0, "mm-trace 2"));
        assert_eq!(line, 1);
        assert!(msg.contains("unsupported trace version"), "{msg}");
        let truncated: String = lines[..lines.len() - 1].join("\n");
        let (line, msg) = err_line(&truncated);
        assert_eq!(line, lines.len() - 1);
        assert!(msg.contains("without its `end` line"), "{msg}");
        let (_, msg) = err_line(&with(lines.len() - 1, "end records=2 drops=0"));
        assert!(msg.contains("says 2 records"), "{msg}");
        let (line, msg) = err_line(&with(2, "vma 1000-0 rw-p 0"));
        assert_eq!(line, 3);
        assert!(msg.contains("page-aligned"), "{msg}");
    }
}
