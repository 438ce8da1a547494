//! `mm-probe record`, end to end: the real eBPF programs record a child with
//! a known sequence of mm calls and faults, and the trace file is read back
//! with mm-core's parser. Live tests need root (they skip elsewhere, and
//! fail under CI=true); the argument checks do not.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use common::{BIN, Gated, live};
use mm_core::{
    errno::Errno,
    op::{Op, Outcome},
    replay::{ReplayOptions, replay},
    shared_mm::FaultStrategy,
    trace::{self, Event, Trace},
};
use mm_probe::workload::RecordDemo;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-probe-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_trace(path: &std::path::Path) -> Trace {
    let f = std::fs::File::open(path).expect("the trace file exists");
    trace::parse(BufReader::new(f)).unwrap_or_else(|e| {
        panic!(
            "unreadable trace: {e}\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        )
    })
}

/// The event with its duration zeroed, to compare with what the child did.
fn without_duration(e: &Event) -> Event {
    match e.clone() {
        Event::Syscall { op, result, .. } => Event::Syscall {
            op,
            result,
            dur_ns: 0,
        },
        Event::Raw { nr, args, ret, .. } => Event::Raw {
            nr,
            args,
            ret,
            dur_ns: 0,
        },
        other => other,
    }
}

#[test]
fn record_demo_is_recorded_with_exact_arguments_results_and_faults() {
    let Some(_g) = live() else { return };
    let out = tmp("demo.trace");
    let o = Command::new(BIN)
        .args(["record", "--out", out.to_str().unwrap(), "--", BIN])
        .args(["workload", "record-demo"])
        .output()
        .expect("run mm-probe record");
    assert!(o.status.success(), "{}", stderr_of(&o));
    let line = String::from_utf8_lossy(&o.stdout);
    let demo: RecordDemo = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("bad record-demo output {line:?}: {e}"));
    let t = read_trace(&out);

    assert_eq!(t.header.pid, demo.pid);
    assert_eq!(t.header.source, "mm-probe-record");
    assert_eq!(t.drops, 0);
    assert!(
        demo.ops
            .iter()
            .all(|op| op.result != -i64::from(libc::ENOSYS))
    );
    // The initial VMAs are the freshly exec'd image: the binary, the stack,
    // and nothing of the region the workload maps later.
    let exe = std::fs::canonicalize(BIN).unwrap();
    assert!(
        t.initial_vmas
            .iter()
            .any(|v| v.name == exe.to_str().unwrap() && v.perms.contains('x')),
        "{:#?}",
        t.initial_vmas
    );
    assert!(t.initial_vmas.iter().any(|v| v.name == "[stack]"));
    let (lo, hi) = (demo.region, demo.region + demo.len);
    assert!(
        t.initial_vmas.iter().all(|v| v.end <= lo || v.start >= hi),
        "the region existed before the exec?"
    );
    assert!(t.records.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
    assert!(t.records.iter().all(|r| r.tid == demo.tid), "one thread");

    // Every call the child made, with exactly its arguments and result, in
    // its order.
    let mut at = 0;
    let mut positions = Vec::new();
    for op in &demo.ops {
        let want = trace::syscall_event(op.nr, op.args, op.result, 0);
        let found = t.records[at..]
            .iter()
            .position(|r| without_duration(&r.event) == want)
            .unwrap_or_else(|| {
                panic!(
                    "{} {:?} = {} is not in the trace after record {at}:\n{:#?}",
                    op.name, op.args, op.result, t.records
                )
            });
        at += found;
        positions.push(at);
        at += 1;
    }
    let Event::Syscall { op, result, .. } = &t.records[positions[0]].event else {
        unreachable!()
    };
    assert!(matches!(
        op,
        Op::Mmap {
            file: None,
            len: 0x10000,
            ..
        }
    ));
    assert_eq!(*result, Outcome::Ok(demo.region));
    let Event::Syscall { result, .. } = &t.records[positions[4]].event else {
        unreachable!()
    };
    assert_eq!(*result, Outcome::Err(Errno::ENOMEM), "the failing mprotect");
    let region_mmaps = t
        .records
        .iter()
        .filter(|r| {
            matches!(&r.event, Event::Syscall { op: Op::Mmap { .. }, result: Outcome::Ok(a), .. } if *a == demo.region)
        })
        .count();
    assert_eq!(region_mmaps, 1);

    // Exactly the 8 first writes to the region: user-mode, write, not
    // present, in address order, between the mmap and the mprotect.
    let faults: Vec<(usize, u64, u64, bool)> = t
        .records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.event {
            Event::Fault { addr, code, user } if (lo..hi).contains(&addr) => {
                Some((i, addr, code, user))
            }
            _ => None,
        })
        .collect();
    let addrs: Vec<u64> = faults.iter().map(|f| f.1).collect();
    assert_eq!(addrs, demo.touched, "{faults:x?}");
    for &(i, addr, code, user) in &faults {
        assert!(user, "{addr:#x}");
        assert_eq!(code & 0x7, 0x6, "{addr:#x}: error code {code:#x}");
        assert!(
            positions[0] < i && i < positions[1],
            "fault record {i} out of place"
        );
    }

    // Replayed on the engine under each strategy: every call of the child
    // gives what the child observed, the faults fault, and the final maps
    // of its region are the child's.
    for strategy in FaultStrategy::ALL {
        let r = replay(
            &t,
            ReplayOptions {
                strategy,
                speed: None,
            },
        );
        for (op, &pos) in demo.ops.iter().zip(&positions) {
            let c = r
                .calls
                .iter()
                .find(|c| c.record == pos)
                .expect("every call replayed");
            let want = match op.result {
                v if v < 0 => Outcome::Err(Errno::from_raw(-v as i32).unwrap()),
                v => Outcome::Ok(v as u64),
            };
            assert_eq!(c.replayed, want, "{strategy:?}: {} {:?}", op.name, op.args);
        }
        assert_eq!(
            r.segv,
            0,
            "{strategy:?}: {:x?}\n{:#?}",
            r.segv_first,
            r.segv_first
                .iter()
                .map(|(i, _)| &t.records[*i])
                .collect::<Vec<_>>()
        );
        let region_faults = r.stats.process.faults.user.write_not_present;
        assert!(region_faults >= 8, "{strategy:?}: {region_faults}");
        let engine_maps: Vec<String> = r
            .maps
            .lines()
            .filter(|l| {
                let (s, e) = l.split(' ').next().unwrap().split_once('-').unwrap();
                let (s, e) = (
                    u64::from_str_radix(s, 16).unwrap(),
                    u64::from_str_radix(e, 16).unwrap(),
                );
                s < hi && e > lo
            })
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        let child_maps: Vec<String> = demo
            .maps
            .iter()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(engine_maps, child_maps, "{strategy:?}");
    }
    // The command line replays it too, and prints the maps.
    let o = Command::new(BIN)
        .args(["replay", out.to_str().unwrap(), "--speed", "max", "--maps"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr_of(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for l in &demo.maps {
        let range = l.split_whitespace().next().unwrap();
        assert!(text.contains(range), "{range} missing from:\n{text}");
    }
    assert!(
        text.contains("per-vma") && text.contains("classic"),
        "{text}"
    );
    // And as JSON: one report per strategy, every call as the child saw
    // it, the final maps.
    let o = Command::new(BIN)
        .args(["replay", out.to_str().unwrap(), "--speed", "max"])
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr_of(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    let t = read_trace(&out);
    assert_eq!(v["pid"], t.header.pid);
    assert_eq!(v["comm"], t.header.comm.as_str());
    assert_eq!(v["drops"], t.drops);
    assert_eq!(v["trace"], out.to_str().unwrap());
    assert!(
        v["read_ns"].as_u64().is_some_and(|n| n > 0),
        "{}",
        v["read_ns"]
    );
    let replays = v["replays"].as_array().expect("replays");
    let names: Vec<&str> = replays
        .iter()
        .map(|r| r["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["per-vma", "classic", "speculative"]);
    for r in replays {
        assert_eq!(r["records"], t.records.len() as u64);
        assert_eq!(r["segv"], 0);
        let calls = r["calls"].as_array().expect("calls");
        assert!(!calls.is_empty());
        for c in calls {
            assert_eq!(c["recorded"], c["replayed"], "{c}");
        }
        let maps = r["maps"].as_str().expect("maps");
        for l in &demo.maps {
            let range = l.split_whitespace().next().unwrap();
            assert!(maps.contains(range), "{range} missing from:\n{maps}");
        }
    }
}

#[test]
fn record_exits_with_the_commands_code_and_writes_a_complete_trace() {
    let Some(_g) = live() else { return };
    let out = tmp("exit.trace");
    let o = Command::new(BIN)
        .args(["record", "--out", out.to_str().unwrap(), "--"])
        .args(["sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr_of(&o));
    let t = read_trace(&out);
    assert_eq!(t.header.comm, "sh");
    assert!(!t.initial_vmas.is_empty());
    // The shell maps its libraries: the dynamic loader's mmaps are there.
    assert!(
        t.records.iter().any(|r| matches!(
            &r.event,
            Event::Syscall {
                op: Op::Mmap { .. },
                ..
            }
        )),
        "{:#?}",
        t.records
    );

    // --duration stops recording and ends a command that is still running.
    let out = tmp("duration.trace");
    let o = Command::new(BIN)
        .args([
            "record",
            "--duration",
            "300ms",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--", "sleep", "30"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        stderr_of(&o)
    );
    assert_eq!(read_trace(&out).header.comm, "sleep");
}

#[test]
fn record_pid_records_a_running_process_until_it_exits() {
    let Some(_g) = live() else { return };
    const N: u64 = 500;
    let mut w = Gated::start(&["touch", "--pages", "500"]);
    let pid = w.pid();
    let out = tmp("pid.trace");
    let mut rec = Command::new(BIN)
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(rec.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("recording pid") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "mm-probe ended early"
        );
    }
    w.go();
    let done = w.wait();
    assert_eq!(done.pages_touched, N);
    let status = rec.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    let t = read_trace(&out);
    assert_eq!(t.header.pid, pid);
    assert_eq!(t.drops, 0);
    // The touched region was mapped before recording began (it may have
    // merged with a neighbour): the workload unmaps it at the end, and its N
    // first writes are records inside one of the initial VMAs.
    let len = N * 4096;
    let unmapped = t
        .records
        .iter()
        .find_map(|r| match &r.event {
            Event::Syscall {
                op: Op::Munmap { addr, len: l },
                result: Outcome::Ok(0),
                ..
            } if *l == len => Some(*addr),
            _ => None,
        })
        .expect("the workload's munmap");
    let vma = t
        .initial_vmas
        .iter()
        .find(|v| v.start <= unmapped && unmapped + len <= v.end)
        .unwrap_or_else(|| panic!("{unmapped:#x} is in no initial VMA: {:#?}", t.initial_vmas));
    assert_eq!((vma.perms.as_str(), vma.name.as_str()), ("rw-p", ""));
    let faults = t
        .records
        .iter()
        .filter(|r| {
            matches!(r.event, Event::Fault { addr, code, user: true }
                if (unmapped..unmapped + len).contains(&addr) && code & 0x7 == 0x6)
        })
        .count() as u64;
    assert_eq!(faults, N);
}

#[test]
fn record_needs_exactly_one_target() {
    for args in [
        &["record", "--out", "/tmp/x.trace"][..],
        &[
            "record",
            "--pid",
            "1",
            "--out",
            "/tmp/x.trace",
            "--",
            "true",
        ][..],
    ] {
        let o = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
        let err = stderr_of(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("mm-probe: error: "), "{err}");
    }
    let o = Command::new(BIN)
        .args(["record", "--pid", "1"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "--out is required: {}",
        stderr_of(&o)
    );
}
