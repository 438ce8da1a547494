//! `mm-probe record`'s core: ring-buffer records of one process turned into
//! an op trace (`mm_core::trace`), in time order.
//!
//! The ring buffer is shared by all CPUs, so records arrive roughly, not
//! exactly, in timestamp order. [`TraceSink`] holds them back for a short
//! window and writes those older than the window, sorted; a record that still
//! arrives after newer ones were written (a CPU stalled for longer than the
//! window) is written with the time of the last written one and counted.

use std::{collections::BTreeMap, io::Write};

use mm_core::{
    op::MapsEntry,
    trace::{self, Event, Header, Record, TraceWriter, USER_ADDR_LIMIT},
};
use mm_ebpf::{event_flags, event_kind};

use crate::records;

/// Records younger than this (by the recorder's clock) are held back for
/// sorting.
pub const SORT_WINDOW_NS: u64 = 50_000_000;

/// At most this many records are held back; beyond it the oldest are
/// written early (bounding memory if timestamps stop advancing).
pub const MAX_PENDING: usize = 1 << 20;

/// What the sink did with the records it was given, besides writing them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Records written to the trace.
    pub written: u64,
    /// Of those, records that arrived after newer ones had been written:
    /// written with the previous record's time.
    pub reordered: u64,
    /// Records older than the start of the recording (their effect is in
    /// the initial VMAs): not written.
    pub before_start: u64,
    /// Records of other processes, or of kinds a trace does not hold
    /// (mmap_lock events): not written.
    pub ignored: u64,
    /// Faults on addresses a trace cannot hold (a user access to a kernel
    /// address, which is a SIGSEGV): not written.
    pub unrepresentable: u64,
    /// Syscalls written as `raw` because their op form would not read back
    /// (an argument beyond the user address range).
    pub raw_fallbacks: u64,
}

/// Turns ring-buffer records of one process into trace records, sorted by
/// time, and writes them.
pub struct TraceSink<W: Write> {
    writer: TraceWriter<W>,
    tgid: u32,
    start_ns: u64,
    pending: BTreeMap<(u64, u64), (u32, Event)>,
    seq: u64,
    first_ns: Option<u64>,
    last_ns: u64,
    stats: SinkStats,
}

impl<W: Write> TraceSink<W> {
    /// Write the header and the initial VMAs. Records of process `tgid`
    /// only are kept, and only those at or after `start_ns`
    /// (CLOCK_MONOTONIC; 0 for all).
    pub fn new(
        out: W,
        header: &Header,
        initial_vmas: &[MapsEntry],
        tgid: u32,
        start_ns: u64,
    ) -> std::io::Result<Self> {
        let mut writer = TraceWriter::new(out, header)?;
        for v in initial_vmas {
            writer.initial_vma(v)?;
        }
        Ok(Self {
            writer,
            tgid,
            start_ns,
            pending: BTreeMap::new(),
            seq: 0,
            first_ns: None,
            last_ns: 0,
            stats: SinkStats::default(),
        })
    }

    /// Counts so far.
    pub const fn stats(&self) -> SinkStats {
        self.stats
    }

    /// Take one ring-buffer record (written later, by [`Self::flush_before`]
    /// or [`Self::finish`]).
    pub fn push(&mut self, rec: &records::Record) -> std::io::Result<()> {
        let h = rec.header();
        if h.tgid != self.tgid {
            self.stats.ignored += 1;
            return Ok(());
        }
        if h.ts_ns < self.start_ns {
            self.stats.before_start += 1;
            return Ok(());
        }
        let event = match to_trace_event(rec) {
            Converted::Event(e) => e,
            Converted::Raw(e) => {
                self.stats.raw_fallbacks += 1;
                e
            }
            Converted::Ignored => {
                self.stats.ignored += 1;
                return Ok(());
            }
            Converted::Unrepresentable => {
                self.stats.unrepresentable += 1;
                return Ok(());
            }
        };
        self.pending.insert((h.ts_ns, self.seq), (h.tid, event));
        self.seq += 1;
        if self.pending.len() > MAX_PENDING {
            // Write the older half now.
            let keep = self.pending.len() / 2;
            while self.pending.len() > keep {
                self.write_first()?;
            }
        }
        Ok(())
    }

    /// Write every held record older than `limit_ns` (CLOCK_MONOTONIC).
    /// Called with "now minus [`SORT_WINDOW_NS`]".
    pub fn flush_before(&mut self, limit_ns: u64) -> std::io::Result<()> {
        while self
            .pending
            .first_key_value()
            .is_some_and(|((ts, _), _)| *ts < limit_ns)
        {
            self.write_first()?;
        }
        Ok(())
    }

    fn write_first(&mut self) -> std::io::Result<()> {
        let Some(((ts, _), (tid, event))) = self.pending.pop_first() else {
            return Ok(());
        };
        let ts = if self.first_ns.is_some() && ts < self.last_ns {
            self.stats.reordered += 1;
            self.last_ns
        } else {
            ts
        };
        let first = *self.first_ns.get_or_insert(ts);
        self.last_ns = ts;
        self.stats.written += 1;
        self.writer.record(&Record {
            t_ns: ts - first,
            tid,
            event,
        })
    }

    /// Write what is held, then the closing line with `drops`.
    pub fn finish(mut self, drops: u64) -> std::io::Result<(W, SinkStats)> {
        while !self.pending.is_empty() {
            self.write_first()?;
        }
        let stats = self.stats;
        Ok((self.writer.finish(drops)?, stats))
    }
}

/// A ring-buffer record as a trace event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Converted {
    /// The event.
    Event(Event),
    /// A syscall written as [`Event::Raw`] because its op form would not
    /// read back.
    Raw(Event),
    /// Not something a trace holds (an mmap_lock event).
    Ignored,
    /// A fault on an address a trace cannot hold.
    Unrepresentable,
}

/// Convert one decoded record.
pub fn to_trace_event(rec: &records::Record) -> Converted {
    match rec {
        records::Record::Event(e) if e.kind == event_kind::FAULT => {
            if e.a >= USER_ADDR_LIMIT {
                return Converted::Unrepresentable;
            }
            Converted::Event(Event::Fault {
                addr: e.a,
                code: e.b,
                user: e.flags & event_flags::USER != 0,
            })
        }
        records::Record::Event(_) => Converted::Ignored,
        records::Record::Syscall(s) => {
            let nr = i64::from(s.nr);
            let mut args = s.args;
            // mremap's fifth argument is only read with MREMAP_FIXED; glibc
            // passes 0 otherwise, but a raw syscall may leave anything in r8.
            if nr == trace::nr::MREMAP && args[3] & mm_core::uapi::mremap::FIXED == 0 {
                args[4] = 0;
            }
            let dur_ns = s.ts_ns.saturating_sub(s.enter_ns);
            let event = trace::syscall_event(nr, args, s.ret, dur_ns);
            if let Event::Syscall { op, .. } = &event {
                if !reads_back(op) {
                    return Converted::Raw(Event::Raw {
                        nr,
                        args: s.args,
                        ret: s.ret,
                        dur_ns,
                    });
                }
            }
            Converted::Event(event)
        }
    }
}

/// Whether the trace parser will accept `op` as written (it refuses
/// addresses and lengths beyond the user address range).
fn reads_back(op: &mm_core::op::Op) -> bool {
    let text = trace::format_op(op);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.split_first() {
        Some((name, args)) => trace::parse_op(name, args).is_ok_and(|back| back == *op),
        None => false,
    }
}

/// One line of /proc/PID/maps, or `None` if it does not look like one.
pub fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let name = fields.next().unwrap_or("").trim();
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_owned(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        name: name.to_owned(),
    })
}

/// The VMAs of a process a trace can hold: all of /proc/PID/maps except
/// entries beyond the user address range (`[vsyscall]`).
pub fn read_maps(pid: u32) -> std::io::Result<Vec<MapsEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(text
        .lines()
        .filter_map(parse_maps_line)
        .filter(|e| e.end <= USER_ADDR_LIMIT)
        .collect())
}

#[cfg(test)]
mod tests {
    use mm_core::{
        errno::Errno,
        op::{Op, Outcome},
    };
    use mm_ebpf::{Event as RawEvent, SyscallEvent};

    use super::*;

    fn fault(ts: u64, tgid: u32, addr: u64) -> records::Record {
        records::Record::Event(RawEvent {
            ts_ns: ts,
            tgid,
            tid: tgid + 1,
            kind: event_kind::FAULT,
            flags: event_flags::USER,
            nr: 0,
            a: addr,
            b: 6,
        })
    }

    fn syscall(ts: u64, nr: i32, args: [u64; 6], ret: i64) -> records::Record {
        records::Record::Syscall(SyscallEvent {
            ts_ns: ts,
            tgid: 10,
            tid: 10,
            kind: event_kind::SYSCALL,
            flags: 0,
            nr,
            enter_ns: ts - 100,
            args,
            ret,
        })
    }

    fn header() -> Header {
        Header {
            pid: 10,
            comm: "demo".into(),
            kernel: "6.18".into(),
            source: "mm-probe-record".into(),
        }
    }

    #[test]
    fn syscalls_become_ops_with_results_and_durations() {
        let mmap = syscall(
            1_000,
            9,
            [0, 0x4000, 3, 0x22, u64::MAX, 0],
            0x7f00_0000_0000,
        );
        assert_eq!(
            to_trace_event(&mmap),
            Converted::Event(Event::Syscall {
                op: Op::Mmap {
                    addr: 0,
                    len: 0x4000,
                    prot: 3,
                    flags: 0x22,
                    file: None,
                    offset: 0
                },
                result: Outcome::Ok(0x7f00_0000_0000),
                dur_ns: 100,
            })
        );
        let failed = syscall(1_000, 10, [0x7f00_0000_8000, 0x4000, 1, 0, 0, 0], -12);
        assert_eq!(
            to_trace_event(&failed),
            Converted::Event(Event::Syscall {
                op: Op::Mprotect {
                    addr: 0x7f00_0000_8000,
                    len: 0x4000,
                    prot: 1
                },
                result: Outcome::Err(Errno::ENOMEM),
                dur_ns: 100,
            })
        );
        let clone = syscall(1_000, 56, [0x11, 0, 0, 0, 0, 0], 4243);
        assert!(matches!(
            to_trace_event(&clone),
            Converted::Event(Event::Raw {
                nr: 56,
                ret: 4243,
                ..
            })
        ));
    }

    #[test]
    fn unreadable_forms_fall_back_or_are_dropped() {
        // munmap of a kernel address: a valid (failing) call, kept in its op
        // form (the parser accepts any argument value of a call).
        let bad = syscall(1_000, 11, [0xffff_8880_0000_0000, 0x1000, 0, 0, 0, 0], -22);
        assert!(matches!(
            to_trace_event(&bad),
            Converted::Event(Event::Syscall {
                op: Op::Munmap {
                    addr: 0xffff_8880_0000_0000,
                    len: 0x1000
                },
                result: Outcome::Err(Errno::EINVAL),
                ..
            })
        ));
        // mremap without MREMAP_FIXED: whatever r8 held is not the op's.
        let mremap = syscall(
            1_000,
            25,
            [
                0x7f00_0000_0000,
                0x1000,
                0x2000,
                1,
                0xffff_ffff_dead_beef,
                0,
            ],
            0x7f00_0001_0000,
        );
        match to_trace_event(&mremap) {
            Converted::Event(Event::Syscall {
                op: Op::Mremap { new_addr, .. },
                ..
            }) => assert_eq!(new_addr, 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            to_trace_event(&fault(1, 10, 0xffff_ffff_ffff_f000)),
            Converted::Unrepresentable
        );
        let mut lock = fault(1, 10, 0);
        if let records::Record::Event(e) = &mut lock {
            e.kind = event_kind::LOCK_RELEASE;
        }
        assert_eq!(to_trace_event(&lock), Converted::Ignored);
    }

    #[test]
    fn records_are_sorted_within_the_window_and_relative_to_the_first() {
        let vma = MapsEntry {
            start: 0x5555_0000_0000,
            end: 0x5555_0000_1000,
            perms: "r--p".into(),
            offset: 0,
            name: "/bin/demo".into(),
        };
        let mut sink =
            TraceSink::new(Vec::new(), &header(), std::slice::from_ref(&vma), 10, 500).unwrap();
        sink.push(&fault(400, 10, 0x1000)).unwrap(); // before the start
        sink.push(&fault(2_000, 10, 0x3000)).unwrap();
        sink.push(&fault(1_000, 10, 0x2000)).unwrap(); // another CPU, earlier
        sink.push(&fault(1_500, 99, 0x9000)).unwrap(); // another process
        sink.push(&syscall(1_800, 11, [0x2000, 0x1000, 0, 0, 0, 0], 0))
            .unwrap();
        sink.flush_before(1_900).unwrap();
        assert_eq!(sink.stats().written, 2);
        // Arrives after a newer record was written: clamped.
        sink.push(&fault(1_700, 10, 0x4000)).unwrap();
        sink.push(&fault(3_000, 10, 0x5000)).unwrap();
        let (out, stats) = sink.finish(7).unwrap();
        assert_eq!(
            stats,
            SinkStats {
                written: 5,
                reordered: 1,
                before_start: 1,
                ignored: 1,
                unrepresentable: 0,
                raw_fallbacks: 0,
            }
        );
        let t = trace::parse(&out[..]).unwrap();
        assert_eq!(t.header, header());
        assert_eq!(t.initial_vmas, vec![vma]);
        assert_eq!(t.drops, 7);
        let times: Vec<u64> = t.records.iter().map(|r| r.t_ns).collect();
        assert_eq!(times, [0, 800, 800, 1_000, 2_000]);
        let addrs: Vec<u64> = t
            .records
            .iter()
            .map(|r| match &r.event {
                Event::Fault { addr, .. } => *addr,
                Event::Syscall {
                    op: Op::Munmap { .. },
                    ..
                } => 0,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(addrs, [0x2000, 0, 0x4000, 0x3000, 0x5000]);
        assert!(t.records.iter().all(|r| r.tid == 11 || r.tid == 10));
    }

    #[test]
    fn maps_lines_parse_and_vsyscall_is_left_out() {
        let e = parse_maps_line(
            "7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0                          [heap]",
        )
        .unwrap();
        assert_eq!(
            (e.start, e.end, e.perms.as_str(), e.offset, e.name.as_str()),
            (0x7f1c_2a00_0000, 0x7f1c_2a02_1000, "rw-p", 0, "[heap]")
        );
        let e = parse_maps_line(
            "55d0c0a00000-55d0c0a02000 r--p 00002000 fe:00 247857                     /usr/bin/my prog (deleted)",
        )
        .unwrap();
        assert_eq!(
            (e.offset, e.name.as_str()),
            (0x2000, "/usr/bin/my prog (deleted)")
        );
        let anon = parse_maps_line("7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.name, "");
        assert!(parse_maps_line("garbage").is_none());
        let own = read_maps(std::process::id()).unwrap();
        assert!(!own.is_empty());
        assert!(
            own.iter()
                .all(|e| e.end <= USER_ADDR_LIMIT && e.start < e.end)
        );
        assert!(own.iter().all(|e| e.name != "[vsyscall]"));
    }
}
