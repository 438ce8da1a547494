//! End to end: the dashboard in a real terminal (tmux), as a user runs it.
//!
//! The live test needs root (to load the probe) and tmux; elsewhere it
//! skips with the reason, and under CI=true a skip is a failure. The
//! unprivileged test runs the dashboard as `nobody` (via setpriv, so it
//! needs root too) and checks that the host column says what is missing
//! while the engine column runs.

use std::{
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_mm-tui");

static SERIAL: Mutex<()> = Mutex::new(());

fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the dashboard's end-to-end test cannot run: {why}; under CI=true a skip is a failure"
        );
    }
    eprintln!("SKIPPED dashboard end-to-end test: {why}");
}

fn can_run() -> bool {
    let missing = mm_probe::caps::missing_for_probe(mm_probe::caps::effective());
    if !missing.is_empty() {
        skip_or_fail(&format!("needs {} (run as root)", missing.join(" and ")));
        return false;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        skip_or_fail("needs tmux (cargo xtask test installs it)");
        return false;
    }
    true
}

/// A tmux server of its own with one 100x32 window running `shell`.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, shell: &str) -> Self {
        let socket = format!("mm-tui-e2e-{name}-{}", std::process::id());
        let t = Self { socket };
        let ok = t
            .cmd(&[
                "new-session",
                "-d",
                "-s",
                "e2e",
                "-x",
                "100",
                "-y",
                "32",
                shell,
            ])
            .status()
            .expect("run tmux")
            .success();
        assert!(ok, "tmux new-session failed");
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd(&["capture-pane", "-p", "-t", "e2e"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(
            self.cmd(&["send-keys", "-t", "e2e", keys])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Wait until `pred` holds for the screen; panic with the screen after
    /// `secs`.
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}

/// The figures of a compare-view row, one per column that has the row.
fn cells(screen: &str, label: &str) -> Vec<f64> {
    let Some(line) = screen.lines().find(|l| l.contains(label)) else {
        return Vec::new();
    };
    line.split('│')
        .filter(|cell| cell.contains(label))
        .filter_map(|cell| {
            let v = cell.split_once(label)?.1.split_whitespace().next()?;
            let (n, mult) = match v.chars().last()? {
                'k' => (&v[..v.len() - 1], 1e3),
                'M' => (&v[..v.len() - 1], 1e6),
                'G' => (&v[..v.len() - 1], 1e9),
                _ => (v, 1.0),
            };
            n.parse::<f64>().ok().map(|x| x * mult)
        })
        .collect()
}

/// The two figures of a compare-view row (HOST, ENGINE).
fn row_values(screen: &str, label: &str) -> Option<(f64, f64)> {
    let nums = cells(screen, label);
    (nums.len() == 2).then(|| (nums[0], nums[1]))
}

fn both_nonzero(screen: &str, label: &str) -> bool {
    row_values(screen, label).is_some_and(|(h, e)| h > 0.0 && e > 0.0)
}

fn pid_in_title(screen: &str) -> Option<u32> {
    let rest = screen.split_once("HOST · pid ")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
    }
}

#[test]
fn dashboard_shows_both_sides_cycles_the_strategy_and_quits_cleanly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let stty = std::env::temp_dir().join(format!("mm-tui-e2e-stty-{}", std::process::id()));
    let shell = format!(
        "{BIN} --workload fault-vs-munmap --refresh 500ms; echo MMTUI-EXIT=$?; stty -a > {}; sleep 60",
        stty.display()
    );
    let t = Tmux::start("live", &shell);

    // Both columns: the same workload, non-zero faults and lock counts.
    let s = t.wait_for("non-zero figures in both columns", 60, |s| {
        both_nonzero(s, "faults/s")
            && both_nonzero(s, "lock read/s")
            && both_nonzero(s, "lock write/s")
    });
    assert!(s.contains("workload fault-vs-munmap"), "{s}");
    assert!(
        s.contains("mm-tui-host"),
        "the host column follows the workload's process:\n{s}"
    );
    assert!(s.contains("ENGINE · per-vma · fault-vs-munmap"), "{s}");
    assert!(s.contains("engine per-vma"), "{s}");
    assert!(s.contains("tracepoints attached"), "{s}");
    let (h, e) = row_values(&s, "fallbacks/s").expect("a fallbacks row");
    assert!(
        h > 0.0 && e > 0.0,
        "fault-vs-munmap falls back on both sides:\n{s}"
    );
    let runner = pid_in_title(&s).expect("the host pid in the HOST title");
    assert!(!gone(runner), "the workload's host process runs");
    let cpu = s
        .split_once("│ ui ")
        .and_then(|(_, r)| r.split_once("% cpu"))
        .map(|(v, _)| v.to_string());
    eprintln!("dashboard's own cpu (header): {cpu:?}%");

    // s: the engine restarts the workload under the next strategy.
    t.keys("s");
    let s = t.wait_for("the strategy change", 20, |s| {
        s.contains("engine classic (restarted") && s.contains("ENGINE · classic · fault-vs-munmap")
    });
    assert!(
        s.contains("the engine restarted fault-vs-munmap under classic"),
        "{s}"
    );
    // ... and measures again: under classic every fault takes mmap_lock.
    t.wait_for("engine figures under classic", 20, |s| {
        row_values(s, "faults/s").is_some_and(|(_, e)| e > 0.0)
            && row_values(s, "lock read/s").is_some_and(|(_, e)| e > 0.0)
    });

    // The other views and the help overlay.
    t.keys("Tab");
    t.wait_for("the process view", 10, |s| {
        s.contains("COMMAND") && s.contains("mm-tui-host")
    });
    t.keys("?");
    t.wait_for("the help overlay", 10, |s| {
        s.contains("any key closes this help")
    });
    t.keys("Escape");
    t.wait_for("the help to close", 10, |s| {
        !s.contains("any key closes this help")
    });

    // q: the dashboard ends, the terminal is restored, the workload stops.
    t.keys("q");
    let s = t.wait_for("the dashboard to exit", 30, |s| s.contains("MMTUI-EXIT="));
    assert!(s.contains("MMTUI-EXIT=0"), "{s}");
    assert!(!s.contains("HOST ·"), "the alternate screen was left:\n{s}");
    t.wait_for("stty's output", 10, |_| stty.exists());
    std::thread::sleep(Duration::from_millis(300));
    let modes = std::fs::read_to_string(&stty).unwrap();
    let _ = std::fs::remove_file(&stty);
    let words: Vec<&str> = modes.split_whitespace().collect();
    for m in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(words.contains(&m), "raw mode left `-{m}`: {modes}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(runner) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gone(runner),
        "the workload's host process {runner} was not stopped"
    );
}

#[test]
fn without_privileges_the_host_column_says_what_is_missing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip_or_fail("needs setpriv (util-linux) to drop privileges");
        return;
    }
    // The binary must be reachable by `nobody`.
    let readable = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--version",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !readable {
        eprintln!("SKIPPED: `nobody` cannot run {BIN} (a private target directory)");
        return;
    }
    let shell = format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
         {BIN} --refresh 500ms; echo MMTUI-EXIT=$?; sleep 60"
    );
    let t = Tmux::start("unpriv", &shell);
    // Without host figures the rows are in the engine column only.
    let s = t.wait_for("the engine's figures", 60, |s| {
        cells(s, "faults/s").len() == 1
            && cells(s, "faults/s")[0] > 0.0
            && cells(s, "lock read/s")[0] > 0.0
    });
    assert!(
        s.contains("probe: not attached: needs CAP_BPF and CAP_PERFMON"),
        "{s}"
    );
    assert!(s.contains("The host is not measured."), "{s}");
    assert!(s.contains("sudo mm-tui"), "the fix is shown:\n{s}");
    assert!(s.contains("ENGINE · per-vma · fault-vs-munmap"), "{s}");
    t.keys("q");
    let s = t.wait_for("the dashboard to exit", 30, |s| s.contains("MMTUI-EXIT="));
    assert!(s.contains("MMTUI-EXIT=0"), "{s}");
}

#[test]
fn a_command_is_followed_with_its_children_and_its_output_goes_to_the_log() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let log = std::env::temp_dir().join(format!("mm-tui-e2e-cmd-{}.log", std::process::id()));
    // Each `sort` is a child of the shell: its faults count in the HOST column.
    let script = "echo to-the-log; end=$(($(date +%s)+4)); \
                  while [ $(date +%s) -lt $end ]; do head -c 4000000 /dev/zero | sort > /dev/null; done";
    let shell = format!(
        "{BIN} --refresh 500ms --log {} -- sh -c '{script}'; echo MMTUI-EXIT=$?; sleep 60",
        log.display()
    );
    let t = Tmux::start("cmd", &shell);
    // The engine runs nothing, so the HOST column is the only one with rows.
    let s = t.wait_for("the children's faults in the HOST column", 30, |s| {
        cells(s, "faults/s").first().is_some_and(|&f| f > 0.0)
    });
    assert!(s.contains("and children"), "{s}");
    assert!(s.contains("The engine runs no workload"), "{s}");
    assert!(s.contains("workload none"), "{s}");
    let s = t.wait_for("the command's end", 30, |s| {
        s.contains("the command ended (exit code 0)")
    });
    assert!(!s.contains("MMTUI-EXIT"), "the dashboard stays open:\n{s}");
    t.keys("Tab");
    t.wait_for("the sort processes in the process view", 10, |s| {
        s.contains("sort (exited)")
    });
    t.keys("q");
    let s = t.wait_for("the dashboard to exit", 30, |s| s.contains("MMTUI-EXIT="));
    assert!(s.contains("MMTUI-EXIT=0"), "{s}");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        out, "to-the-log\n",
        "the command's output is in the log, not on the screen"
    );
}
