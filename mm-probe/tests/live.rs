//! Live tests: the real eBPF programs on the running kernel, against child
//! processes with a known mm footprint. They need root (or CAP_BPF and
//! CAP_PERFMON); elsewhere they skip with the reason, and under CI=true a
//! skip fails.

mod common;

use common::{Gated, live};
use mm_core::stats::{LockContext, LockMode, ProcessStats};
use mm_probe::{
    convert,
    probe::{Probe, ProbeOptions},
};

fn probe_for(pid: u32) -> Probe {
    Probe::load(&ProbeOptions {
        pids: Some(vec![pid]),
        ..Default::default()
    })
    .expect("load the probe")
}

fn stats_of(probe: &Probe, pid: u32) -> ProcessStats {
    let snap = probe.snapshot().expect("read the maps");
    let raw = snap
        .processes
        .get(&pid)
        .unwrap_or_else(|| panic!("no stats for pid {pid}; have {:?}", snap.processes.keys()));
    convert::process_stats(raw, "test".into(), snap.taken_ns)
}

fn context<'a>(
    p: &'a ProcessStats,
    name: &str,
    mode: LockMode,
) -> Option<&'a mm_core::stats::ContextStats> {
    p.contexts
        .iter()
        .find(|c| c.context.name() == name && c.mode == mode && !c.remote)
}

#[test]
fn touching_fresh_pages_yields_one_write_fault_each_and_untraced_processes_count_nothing() {
    let Some(_guard) = live() else { return };
    const N: u64 = 3000;
    let mut traced = Gated::start(&["touch", "--pages", "3000"]);
    let mut other = Gated::start(&["touch", "--pages", "3000"]);
    let probe = probe_for(traced.pid());
    let (traced_pid, other_pid) = (traced.pid(), other.pid());
    traced.go();
    other.go();
    let done = traced.wait();
    other.wait();
    assert_eq!(done.pages_touched, N);

    let p = stats_of(&probe, traced_pid);
    let writes = p.faults.user.write_not_present;
    assert!(
        (N..=N + 16).contains(&writes),
        "{writes} write-not-present faults for {N} touched pages"
    );
    // Fresh anonymous memory is served under the per-VMA lock except the
    // first fault of the VMA, which falls back to prepare its anon_vma.
    assert!(
        p.faults.served_without_mmap_lock() >= N - 16,
        "only {} of {N} faults avoided mmap_lock",
        p.faults.served_without_mmap_lock()
    );
    let snap = probe.snapshot().unwrap();
    assert!(
        !snap.processes.contains_key(&other_pid),
        "a process outside the filter was counted"
    );
    assert_eq!(
        snap.counters.iter().sum::<u64>(),
        0,
        "drops: {:?}",
        snap.counters
    );
}

#[test]
fn mmap_munmap_pairs_are_write_acquisitions_attributed_to_mmap_and_munmap() {
    let Some(_guard) = live() else { return };
    const K: u64 = 250;
    let mut w = Gated::start(&["mmap-munmap", "--pairs", "250", "--pages", "4"]);
    let probe = probe_for(w.pid());
    let pid = w.pid();
    w.go();
    let done = w.wait();
    assert_eq!((done.mmaps, done.munmaps), (K, K));

    let p = stats_of(&probe, pid);
    assert!(
        p.mmap_lock.write.acquisitions >= 2 * K,
        "{} write acquisitions for {K} mmap+munmap pairs",
        p.mmap_lock.write.acquisitions
    );
    let mmap = context(&p, "mmap", LockMode::Write).expect("mmap write context");
    let munmap = context(&p, "munmap", LockMode::Write).expect("munmap write context");
    assert!(
        (K..=K + 4).contains(&mmap.acquisitions),
        "mmap: {}",
        mmap.acquisitions
    );
    assert!(
        (K..=K + 4).contains(&munmap.acquisitions),
        "munmap: {}",
        munmap.acquisitions
    );
    assert_eq!(
        mmap.hold.count(),
        mmap.acquisitions,
        "every mmap hold measured"
    );
    // munmap write-locks, then downgrades to read for the zap (since 4.20).
    assert!(
        p.mmap_lock.downgrades >= K,
        "downgrades {}",
        p.mmap_lock.downgrades
    );
    assert!(matches!(mmap.context, LockContext::Syscall { nr: 9, .. }));
}

#[test]
fn munmap_of_populated_regions_holds_the_lock_while_faulters_wait() {
    let Some(_guard) = live() else { return };
    let mut w = Gated::start(&[
        "fault-vs-munmap",
        "--threads",
        "4",
        "--duration",
        "2s",
        "--region-mib",
        "32",
    ]);
    let probe = probe_for(w.pid());
    let pid = w.pid();
    w.go();
    let done = w.wait();
    assert!(done.munmaps > 10, "{done:?}");

    let p = stats_of(&probe, pid);
    let munmap = context(&p, "munmap", LockMode::Write).expect("munmap write holds");
    assert!(munmap.acquisitions >= done.munmaps, "{munmap:?}");
    assert!(munmap.hold.count() > 0 && munmap.hold.sum() > 0);
    let read = &p.mmap_lock.read;
    assert!(read.wait.count() > 0, "no read waits: {read:?}");
    assert!(
        read.contended > 0,
        "faulters never waited for the lock: {read:?}"
    );
    // The faulters' first touch of each fresh VMA falls back to mmap_lock.
    let fault = context(&p, "fault", LockMode::Read).expect("fault-context reads");
    assert!(fault.acquisitions > 0);
    assert!(p.faults.mmap_lock_fallbacks > 0);
    assert!(p.faults.mmap_lock_fallbacks <= p.faults.user.total());
}

#[test]
fn readers_of_another_process_mm_are_counted_as_remote_on_the_owner() {
    let Some(_guard) = live() else { return };
    let mut w = Gated::start(&["touch", "--pages", "16"]);
    let probe = probe_for(w.pid());
    let pid = w.pid();
    // smaps_rollup walks the target's VMAs under its mmap_lock (read).
    for _ in 0..20 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        assert!(text.contains("Rss:"));
    }
    let p = stats_of(&probe, pid);
    let remote: u64 = p
        .contexts
        .iter()
        .filter(|c| c.remote && c.mode == LockMode::Read)
        .map(|c| c.acquisitions)
        .sum();
    assert!(remote >= 20, "remote reads {remote}: {:?}", p.contexts);
    assert!(p.mmap_lock.read.remote >= 20);
    assert!(
        p.contexts
            .iter()
            .any(|c| c.remote && c.context.name() == "read"),
        "the remote reads are attributed to the reader's read(2): {:?}",
        p.contexts
    );
    w.go();
    w.wait();
}

/// Start a gated `touch` workload whose executable is reached through a
/// symlink named `name`, so that its comm is `name` (truncated to 15).
fn gated_with_comm(dir: &std::path::Path, name: &str, pages: &str) -> Gated {
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(common::BIN, &link).unwrap();
    Gated::start_program(link.to_str().unwrap(), &["touch", "--pages", pages])
}

#[test]
fn comm_filter_traces_only_matching_processes() {
    let Some(_guard) = live() else { return };
    let dir = std::env::temp_dir().join(format!("mm-probe-comm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut wanted = gated_with_comm(&dir, "mmprobe-wanted", "700");
    let mut other = gated_with_comm(&dir, "mmprobe-other", "700");
    let probe = Probe::load(&ProbeOptions {
        comm: Some("mmprobe-wanted".into()),
        ..Default::default()
    })
    .unwrap();
    let (w, o) = (wanted.pid(), other.pid());
    wanted.go();
    other.go();
    wanted.wait();
    other.wait();
    let p = stats_of(&probe, w);
    assert!(p.faults.user.write_not_present >= 700);
    let snap = probe.snapshot().unwrap();
    assert!(
        !snap.processes.contains_key(&o),
        "the other comm was traced"
    );
    assert!(
        snap.processes
            .values()
            .all(|r| r.comm.as_deref() == Some("mmprobe-wanted")),
        "{:?}",
        snap.processes.values().map(|r| &r.comm).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cgroup_filter_traces_only_processes_in_the_cgroup() {
    let Some(_guard) = live() else { return };
    let Some(root) = cgroup2_root() else {
        panic!("no cgroup v2 hierarchy mounted: cannot test --cgroup");
    };
    let cg = root.join(format!("mm-probe-test-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    let mut inside = Gated::start(&["touch", "--pages", "600"]);
    let mut outside = Gated::start(&["touch", "--pages", "600"]);
    std::fs::write(cg.join("cgroup.procs"), inside.pid().to_string()).unwrap();
    // Relative to the cgroup2 root, as a user would give it.
    let probe = Probe::load(&ProbeOptions {
        cgroup: Some(cg.strip_prefix(&root).unwrap().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let (i, o) = (inside.pid(), outside.pid());
    inside.go();
    outside.go();
    inside.wait();
    outside.wait();
    let p = stats_of(&probe, i);
    assert!(p.faults.user.write_not_present >= 600);
    let snap = probe.snapshot().unwrap();
    assert!(
        !snap.processes.contains_key(&o),
        "a process outside the cgroup was traced"
    );
    drop(probe);
    std::fs::remove_dir(&cg).unwrap();
}

fn cgroup2_root() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(Into::into))
            .flatten()
    })
}

#[test]
fn session_reports_intervals_totals_and_resets() {
    let Some(_guard) = live() else { return };
    let mut w = Gated::start(&["touch", "--pages", "800"]);
    let pid = w.pid();
    let mut session = mm_probe::session::Session::new(probe_for(pid));
    let quiet = session.tick().unwrap();
    assert!(
        quiet.interval.process(pid).is_none(),
        "nothing happened yet"
    );
    w.go();
    w.wait();
    let tick = session.tick().unwrap();
    let p = tick
        .interval
        .process(pid)
        .expect("the interval shows the touches");
    assert!((800..=816).contains(&p.faults.user.write_not_present));
    assert_eq!(tick.newly_exited, vec![pid]);
    assert!(p.exited);
    let total = tick.cumulative.process(pid).unwrap();
    assert_eq!(total.faults, p.faults, "first interval == totals");
    // Next tick: the exited process is read a last time and dropped from the
    // kernel maps; it stays in the totals, and intervals stop showing it.
    let tick = session.tick().unwrap();
    assert!(tick.interval.process(pid).is_none());
    assert_eq!(tick.cumulative.process(pid).unwrap().faults, total.faults);
    assert!(
        !session
            .probe()
            .snapshot()
            .unwrap()
            .processes
            .contains_key(&pid)
    );
    session.reset().unwrap();
    let tick = session.tick().unwrap();
    assert!(
        tick.cumulative.process(pid).is_none(),
        "reset forgets the totals"
    );
    assert_eq!(tick.cumulative.drops, mm_core::stats::Drops::default());
}

#[test]
fn syscall_records_carry_arguments_results_and_durations() {
    use mm_probe::records::{Record, decode};
    let Some(_guard) = live() else { return };
    const K: usize = 5;
    let mut w = Gated::start(&["mmap-munmap", "--pairs", "5", "--pages", "4"]);
    let pid = w.pid();
    let mut probe = Probe::load(&ProbeOptions {
        pids: Some(vec![pid]),
        syscall_events: true,
        ..Default::default()
    })
    .expect("load the probe");
    let mut rb = probe.take_events().expect("a ring buffer");
    w.go();
    let done = w.wait();
    assert_eq!((done.mmaps, done.munmaps), (K as u64, K as u64));
    let mut syscalls = Vec::new();
    while let Some(item) = rb.next() {
        match decode(&item).expect("a known record") {
            Record::Syscall(s) => syscalls.push(s),
            Record::Event(e) => panic!("only syscall records were asked for: {e:?}"),
        }
    }
    assert!(syscalls.iter().all(|s| s.tgid == pid && s.tid == pid));
    assert!(
        syscalls
            .iter()
            .all(|s| s.enter_ns > 0 && s.enter_ns <= s.ts_ns)
    );
    // The workload's own pairs: mmap(NULL, 16 KiB, RW, PRIVATE|ANON, -1, 0)
    // then munmap of the address it returned.
    let len = 4 * 4096u64;
    let mmaps: Vec<_> = syscalls
        .iter()
        .filter(|s| {
            s.nr == 9
                && s.args[..4] == [0, len, 3, 0x22]
                && s.args[4] as i32 == -1
                && s.args[5] == 0
        })
        .collect();
    assert_eq!(mmaps.len(), K, "{syscalls:#?}");
    for m in &mmaps {
        assert!(m.ret > 0 && (m.ret as u64).is_multiple_of(4096), "{m:?}");
        let unmaps = syscalls
            .iter()
            .filter(|s| s.nr == 11 && s.args[..2] == [m.ret as u64, len] && s.ts_ns > m.ts_ns)
            .count();
        assert!(unmaps >= 1, "no munmap of {:#x}: {syscalls:#?}", m.ret);
    }
    assert_eq!(
        probe.snapshot().unwrap().counters[0],
        0,
        "ring buffer drops"
    );
}
