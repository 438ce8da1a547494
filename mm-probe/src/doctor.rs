//! `mm-probe doctor`: what this machine allows, check by check, each with
//! the fix when it fails.

use serde::Serialize;

use crate::{
    btf::Btf,
    caps,
    probe::{Probe, ProbeOptions},
    procfs,
};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with less: some metrics are missing or degraded.
    Warn,
    /// mm-probe cannot work until this is fixed.
    Fail,
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it went.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when nothing is needed).
    pub fix: String,
}

fn check(name: impl Into<String>, status: Status, detail: impl Into<String>, fix: &str) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// The tracepoints and what each one feeds.
pub const TRACEPOINTS: &[(&str, &str)] = &[
    ("mmap_lock_start_locking", "mmap_lock waits"),
    (
        "mmap_lock_acquire_returned",
        "mmap_lock acquisitions, trylocks, downgrades",
    ),
    ("mmap_lock_released", "mmap_lock hold times"),
    ("page_fault_user", "user faults, per-VMA lock fallbacks"),
    ("page_fault_kernel", "kernel-mode faults on user addresses"),
    ("contention_begin", "contended share"),
    ("sys_enter", "per-syscall attribution"),
    ("sys_exit", "per-syscall attribution"),
    ("sched_process_fork", "following children (mm-probe run)"),
    ("sched_process_exec", "comm updates at exec"),
    ("sched_process_exit", "exit detection"),
];

fn kernel_version() -> Option<(u32, u32)> {
    let r = procfs::kernel_release();
    let mut it = r.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn mounted(fstype: &str) -> Option<String> {
    std::fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&fstype)).then(|| f[1].to_owned())
        })
}

/// Run every check. With `try_load`, also load and attach the probe (needs
/// privileges) and report what attached.
pub fn run(try_load: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let release = procfs::kernel_release();
    out.push(match kernel_version() {
        Some(v) if v >= (6, 4) => check("kernel", Status::Ok, release, ""),
        Some(v) if v >= (5, 8) => check(
            "kernel",
            Status::Warn,
            format!(
                "{release}: before 6.4 there are no per-VMA locks, every fault takes mmap_lock"
            ),
            "",
        ),
        _ => check(
            "kernel",
            Status::Fail,
            format!("{release}: mm-probe needs Linux 5.8 or later (ring buffer, CAP_BPF)"),
            "run on a newer kernel",
        ),
    });

    let eff = caps::effective();
    let missing = caps::missing_for_probe(eff);
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    out.push(if missing.is_empty() {
        let who = if euid == 0 { "root" } else { "capabilities" };
        check(
            "privileges",
            Status::Ok,
            format!("{who}: CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"),
            "",
        )
    } else {
        check(
            "privileges",
            Status::Fail,
            format!("missing {}", missing.join(" and ")),
            caps::FIX,
        )
    });

    match std::fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(s) if s.contains("[confidentiality]") => out.push(check(
            "lockdown",
            Status::Fail,
            "kernel lockdown is in confidentiality mode: eBPF cannot read kernel memory",
            "boot without lockdown=confidentiality",
        )),
        Ok(s) => {
            let mode = s
                .split_whitespace()
                .find(|w| w.starts_with('['))
                .unwrap_or("[none]")
                .to_owned();
            out.push(check("lockdown", Status::Ok, mode, ""));
        }
        Err(_) => out.push(check("lockdown", Status::Ok, "not configured", "")),
    }

    let btf = Btf::from_sys_fs();
    match &btf {
        Ok(b) => {
            let needed = [
                ("task_struct", "mm"),
                ("task_struct", "tgid"),
                ("task_struct", "pid"),
                ("mm_struct", "owner"),
                ("mm_struct", "mmap_lock"),
            ];
            let absent: Vec<String> = needed
                .iter()
                .filter(|(s, m)| b.member_offset(s, m).is_none())
                .map(|(s, m)| format!("{s}.{m}"))
                .collect();
            out.push(if absent.is_empty() {
                check(
                    "BTF",
                    Status::Ok,
                    "/sys/kernel/btf/vmlinux has the fields mm-probe reads",
                    "",
                )
            } else {
                check(
                    "BTF",
                    Status::Warn,
                    format!("missing {}", absent.join(", ")),
                    "remote attribution or contention may be unavailable",
                )
            });
        }
        Err(e) => out.push(check(
            "BTF",
            Status::Fail,
            e.to_string(),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )),
    }

    match mounted("tracefs") {
        Some(at) => out.push(check("tracefs", Status::Ok, format!("mounted at {at}"), "")),
        None => {
            let mountable = std::fs::read_to_string("/proc/filesystems")
                .is_ok_and(|s| s.lines().any(|l| l.trim_end().ends_with("tracefs")));
            out.push(check(
                "tracefs",
                Status::Ok,
                if mountable {
                    "not mounted but mountable; mm-probe does not need it (raw tracepoints attach by name)"
                } else {
                    "not available; mm-probe does not need it (raw tracepoints attach by name)"
                },
                if mountable {
                    "for other tools: mount -t tracefs nodev /sys/kernel/tracing"
                } else {
                    ""
                },
            ));
        }
    }

    if let Ok(b) = &btf {
        for (tp, feeds) in TRACEPOINTS {
            out.push(match b.tracepoint_args(tp) {
                Some(_) => check(
                    format!("tracepoint {tp}"),
                    Status::Ok,
                    format!("present ({feeds})"),
                    "",
                ),
                None => check(
                    format!("tracepoint {tp}"),
                    Status::Warn,
                    format!("absent: no {feeds}"),
                    "a newer kernel has it",
                ),
            });
        }
        let per_vma = b.member_offset("vm_area_struct", "vm_refcnt").is_some()
            || b.member_offset("vm_area_struct", "vm_lock_seq").is_some();
        out.push(if per_vma {
            check(
                "per-VMA locks",
                Status::Ok,
                "CONFIG_PER_VMA_LOCK=y: faults can be served without mmap_lock",
                "",
            )
        } else {
            check(
                "per-VMA locks",
                Status::Warn,
                "not in this kernel: every fault takes mmap_lock for read",
                "",
            )
        });
    }

    if try_load {
        if !missing.is_empty() {
            out.push(check(
                "load and attach",
                Status::Fail,
                "skipped: not privileged",
                caps::FIX,
            ));
        } else {
            match Probe::load(&ProbeOptions {
                pids: Some(Vec::new()),
                ..Default::default()
            }) {
                Ok(p) => {
                    let status = if p.unavailable().is_empty() {
                        Status::Ok
                    } else {
                        Status::Warn
                    };
                    let mut detail = format!("{} programs attached", p.attached().len());
                    for u in p.unavailable() {
                        detail.push_str(&format!("; {}: {}", u.metric, u.reason));
                    }
                    out.push(check("load and attach", status, detail, ""));
                }
                Err(e) => out.push(check("load and attach", Status::Fail, e.to_string(), "")),
            }
        }
    }
    out
}

/// Render checks as a table.
pub fn render(checks: &[Check]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(vec!["check", "status", "detail", "fix"]);
    for c in checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        t.add_row(vec![
            c.name.as_str(),
            status,
            c.detail.as_str(),
            c.fix.as_str(),
        ]);
    }
    t.to_string()
}
