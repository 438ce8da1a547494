//! The mm-probe command line, end to end: bad input (one-line errors, no
//! root needed), and, with root, exit codes, JSON reports against the
//! documented schema, the Prometheus endpoint, attach, doctor and events.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{BIN, Gated, live};
use serde_json::Value;

fn mm_probe(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run mm-probe")
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A failed run with exactly one line on stderr, which contains every needle.
fn assert_one_line_error(o: &Output, code: i32, needles: &[&str]) {
    let lines = stderr_lines(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "expected one line, got {lines:?}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {:?}", lines[0]);
    }
    assert!(lines[0].starts_with("mm-probe: error: "), "{:?}", lines[0]);
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-probe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

// ---- bad input: no privileges needed -------------------------------------

#[test]
fn unknown_flag_is_a_one_line_error() {
    let o = mm_probe(&["attach", "--frobnicate"]);
    assert_one_line_error(&o, 2, &["'--frobnicate'", "--help"]);
}

#[test]
fn bad_durations_are_one_line_errors() {
    let o = mm_probe(&["attach", "--interval", "0s"]);
    assert_one_line_error(&o, 2, &["--interval", "greater than zero"]);
    let o = mm_probe(&["attach", "--duration", "soon"]);
    assert_one_line_error(&o, 2, &["`soon`", "500ms"]);
    let o = mm_probe(&["workload", "touch", "--pages", "many"]);
    assert_one_line_error(&o, 2, &["many"]);
}

#[test]
fn unknown_pid_is_a_one_line_error() {
    let pid = (1_000_000..4_000_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let o = mm_probe(&["attach", "--pid", &pid.to_string()]);
    assert_one_line_error(&o, 1, &[&format!("no process with pid {pid}"), "ps -p"]);
}

#[test]
fn a_thread_id_is_refused_with_the_fix() {
    // This test binary has threads; find one that is not the main thread.
    let me = std::process::id();
    let handle = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2)));
    let tid = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&t| t != me)
        .expect("a second thread");
    let o = mm_probe(&["attach", "--pid", &tid.to_string()]);
    assert_one_line_error(&o, 1, &["is a thread", "tgid"]);
    handle.join().unwrap();
}

#[test]
fn missing_cgroup_is_a_one_line_error() {
    let o = mm_probe(&["attach", "--cgroup", "/no/such/cgroup-mm-probe"]);
    assert_one_line_error(&o, 1, &["--cgroup", "no/such/cgroup-mm-probe"]);
}

#[test]
fn unprivileged_run_names_the_missing_capabilities_and_the_fix() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let o = if root {
        // Drop to an unprivileged user with no capabilities at all.
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                BIN,
                "attach",
            ])
            .current_dir("/")
            .output()
            .expect("setpriv (util-linux)")
    } else {
        mm_probe(&["attach"])
    };
    assert_one_line_error(&o, 1, &["CAP_BPF", "CAP_PERFMON", "sudo"]);
}

#[test]
fn help_explains_the_commands() {
    let o = mm_probe(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for s in [
        "attach",
        "run",
        "doctor",
        "workload",
        "per-VMA lock",
        "CAP_BPF",
    ] {
        assert!(text.contains(s), "--help lacks {s}");
    }
    let o = mm_probe(&["attach", "--help"]);
    let text = String::from_utf8_lossy(&o.stdout);
    for s in [
        "--pid",
        "--comm",
        "--cgroup",
        "--interval",
        "--duration",
        "--format",
        "--prometheus",
    ] {
        assert!(text.contains(s), "attach --help lacks {s}");
    }
}

// ---- with the probe ----------------------------------------------------------

#[test]
fn run_exits_with_the_commands_exit_code() {
    let Some(_g) = live() else { return };
    let o = mm_probe(&["run", "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", stderr_lines(&o));
    let o = mm_probe(&["run", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(128 + 15));
    let o = mm_probe(&["run", "--", "no-such-command-mm-probe"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr_lines(&o)
            .iter()
            .any(|l| l.contains("command not found"))
    );
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../../docs/report-schema.json"))
        .expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

fn assert_valid(v: &jsonschema::Validator, report: &Value) {
    let errors: Vec<String> = v
        .iter_errors(report)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "schema violations: {errors:#?}");
}

#[test]
fn json_reports_follow_the_documented_schema_and_follow_children() {
    let Some(_g) = live() else { return };
    let out = tmp("run.jsonl");
    let script = format!(
        "{BIN} workload touch --pages 700 >/dev/null && \
         {BIN} workload fault-vs-munmap --threads 2 --duration 1s --region-mib 8 >/dev/null"
    );
    let o = mm_probe(&[
        "run",
        "--format",
        "json",
        "--interval",
        "250ms",
        "--output",
        out.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let reports: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let v = validator();
    for r in &reports {
        assert_valid(&v, r);
    }
    let (last, intervals) = reports.split_last().unwrap();
    assert_eq!(last["kind"], "final");
    assert!(intervals.len() >= 2, "{} interval reports", intervals.len());
    assert!(intervals.iter().all(|r| r["kind"] == "interval"));
    // The grandchild (sh -> mm-probe workload touch) was followed.
    let touched = last["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["exited"] == true && p["comm"] == "mm-probe")
        .map(|p| p["faults"]["user"]["write_not_present"].as_u64().unwrap())
        .collect::<Vec<_>>();
    assert!(
        touched.iter().any(|&w| w >= 700),
        "no followed child with >= 700 write faults: {touched:?}"
    );
    // The contention child reported munmap write holds.
    assert!(text.contains("\"name\":\"munmap\""));
}

/// Structural checks of the text exposition format beyond what the parser
/// enforces: HELP/TYPE once per family before its samples, sample syntax,
/// and histogram invariants.
fn check_exposition(text: &str) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_samples = BTreeSet::new();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad type in {line}"
            );
            assert!(
                typed.insert(name.into(), kind.into()).is_none(),
                "TYPE twice: {name}"
            );
            assert!(!seen_samples.contains(name), "TYPE after samples: {name}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(typed.contains_key(family), "sample before TYPE: {line}");
        seen_samples.insert(family.to_owned());
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        if name.ends_with("_bucket") {
            let le_at = series.find("le=\"").unwrap() + 4;
            let le = &series[le_at..series[le_at..].find('"').unwrap() + le_at];
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            // name_bucket{labels,le="x"} -> name{labels}
            let key =
                format!("{}}}", &series[..series.find(",le=").unwrap()]).replacen("_bucket", "", 1);
            buckets.entry(key).or_default().push((le, value));
        } else if name.ends_with("_count") && typed.get(family).is_some_and(|k| k == "histogram") {
            counts.insert(series.replacen("_count", "", 1), value);
        }
    }
    assert!(!buckets.is_empty(), "no histograms");
    for (series, b) in &buckets {
        for w in b.windows(2) {
            assert!(
                w[0].0 < w[1].0 && w[0].1 <= w[1].1,
                "{series}: buckets not cumulative: {b:?}"
            );
        }
        let (le, total) = b.last().unwrap();
        assert!(le.is_infinite(), "{series}: last bucket is not +Inf");
        let count = counts
            .get(series)
            .unwrap_or_else(|| panic!("{series}: no _count"));
        assert_eq!(total, count, "{series}: +Inf bucket != _count");
    }
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

#[test]
fn prometheus_endpoint_serves_valid_exposition_text() {
    let Some(_g) = live() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut w = Gated::start(&["touch", "--pages", "500"]);
    let mut probe = Command::new(BIN)
        // System-wide: with --pid, attach would end when the workload exits.
        .args(["attach", "--interval", "200ms"])
        .args(["--duration", "20s", "--prometheus", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(probe.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("serving Prometheus") {
        line.clear();
    }
    assert!(line.contains(&addr), "{line}");
    let pid = w.pid();
    w.go();
    w.wait();
    std::thread::sleep(Duration::from_millis(600));
    let (head, body) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    check_exposition(&body);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("parses as Prometheus text");
    let faults: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "mm_probe_page_faults_total"
                && s.labels.get("pid") == Some(&pid.to_string())
                && s.labels.get("kind") == Some("write_not_present")
                && s.labels.get("origin") == Some("user")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(faults >= 500.0, "write faults of {pid}: {faults}\n{body}");
    let (head, _) = http_get(&addr, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(probe.id() as i32, libc::SIGINT) };
    assert!(probe.wait().unwrap().success());
}

#[test]
fn attach_reports_a_pid_that_exits_and_ends_cleanly() {
    let Some(_g) = live() else { return };
    let out = tmp("attach.jsonl");
    let mut w = Gated::start(&["touch", "--pages", "400"]);
    let pid = w.pid();
    let mut probe = Command::new(BIN)
        .args(["attach", "--pid", &pid.to_string(), "--interval", "200ms"])
        .args(["--format", "json", "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(probe.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("attached to"), "{line}");
    w.go();
    w.wait();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = probe.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "attach did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("every traced process has exited"), "{rest}");
    let text = std::fs::read_to_string(&out).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "final");
    let p = last["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("the traced process is in the summary");
    assert_eq!(p["exited"], true);
    assert!(p["faults"]["user"]["write_not_present"].as_u64().unwrap() >= 400);
}

#[test]
fn doctor_checks_everything_and_passes_here() {
    let Some(_g) = live() else { return };
    let o = mm_probe(&["doctor", "--format", "json"]);
    let checks: Vec<Value> = serde_json::from_slice(&o.stdout).expect("doctor JSON");
    assert!(o.status.success(), "{checks:#?}");
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in [
        "kernel",
        "privileges",
        "BTF",
        "tracefs",
        "tracepoint mmap_lock_start_locking",
        "tracepoint page_fault_user",
        "per-VMA locks",
        "load and attach",
    ] {
        assert!(names.contains(&n), "doctor lacks {n}: {names:?}");
    }
    let load = checks
        .iter()
        .find(|c| c["name"] == "load and attach")
        .unwrap();
    assert_eq!(load["status"], "ok", "{load}");
}

#[test]
fn events_file_has_one_record_per_fault() {
    let Some(_g) = live() else { return };
    let events = tmp("events.jsonl");
    let report = tmp("events-report.jsonl");
    let o = mm_probe(&[
        "run",
        "--format",
        "json",
        "--output",
        report.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--",
        BIN,
        "workload",
        "touch",
        "--pages",
        "300",
    ]);
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    let last: Value = serde_json::from_str(
        std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["drops"]["events_dropped"], 0);
    let p = &last["processes"][0];
    assert_eq!(p["drops"]["events_dropped"], 0);
    let pid = p["pid"].as_u64().unwrap();
    let write_faults = p["faults"]["user"]["write_not_present"].as_u64().unwrap();
    let text = std::fs::read_to_string(&events).unwrap();
    let recorded = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| {
            e["kind"] == "fault"
                && e["pid"] == pid
                && e["fault"] == "write_not_present"
                && e["user"] == true
        })
        .count() as u64;
    assert_eq!(recorded, write_faults, "event records vs aggregated count");
    assert!(recorded >= 300);
    assert!(text.contains("\"kind\":\"lock_release\""));
}

fn final_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "final");
    last
}

fn context_acquisitions(p: &Value, name: &str, mode: &str) -> u64 {
    p["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["mode"] == mode
                && (c["context"]["name"] == name || c["context"]["kind"] == name)
                && c["remote"] == false
        })
        .map(|c| c["acquisitions"].as_u64().unwrap())
        .sum()
}

#[test]
fn skipped_tracepoints_disable_only_what_they_feed_and_the_report_says_so() {
    let Some(_g) = live() else { return };
    let out = tmp("skip.jsonl");
    let o = mm_probe(&[
        "run",
        "--skip",
        "contention",
        "--skip",
        "syscalls",
        "--format",
        "json",
        "--output",
        out.to_str().unwrap(),
        "--",
        BIN,
        "workload",
        "mmap-munmap",
        "--pairs",
        "60",
    ]);
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    assert!(
        stderr_lines(&o)
            .iter()
            .any(|l| l.contains("unavailable: contended acquisitions")),
        "{:?}",
        stderr_lines(&o)
    );
    let last = final_report(&out);
    assert_valid(&validator(), &last);
    let metrics: Vec<&str> = last["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["metric"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        ["exact per-syscall attribution", "contended acquisitions"]
    );
    let p = &last["processes"][0];
    // Lock statistics and faults are still there; syscalls come from the
    // saved registers.
    assert!(p["mmap_lock"]["write"]["acquisitions"].as_u64().unwrap() >= 120);
    assert!(context_acquisitions(p, "mmap", "write") >= 60);
    assert!(context_acquisitions(p, "munmap", "write") >= 60);
    assert!(p["faults"]["mmap_lock_fallbacks"].as_u64().unwrap() > 0);
    assert_eq!(p["mmap_lock"]["write"]["contended"], 0);

    let o = mm_probe(&[
        "run",
        "--skip",
        "mmap-lock",
        "--format",
        "json",
        "--output",
        out.to_str().unwrap(),
        "--",
        BIN,
        "workload",
        "touch",
        "--pages",
        "200",
    ]);
    assert!(o.status.success());
    let last = final_report(&out);
    let p = &last["processes"][0];
    assert_eq!(p["mmap_lock"]["write"]["acquisitions"], 0);
    assert_eq!(p["mmap_lock"]["read"]["acquisitions"], 0);
    assert!(p["faults"]["user"]["write_not_present"].as_u64().unwrap() >= 200);
}

#[test]
fn every_event_is_either_written_or_counted_as_dropped() {
    let Some(_g) = live() else { return };
    let events = tmp("flood-events.jsonl");
    let report = tmp("flood-report.jsonl");
    // About a million faults a second: more than the writer keeps up with,
    // so the ring buffer may overflow; nothing may vanish silently.
    let o = mm_probe(&[
        "run",
        "--format",
        "json",
        "--output",
        report.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--",
        BIN,
        "workload",
        "fault-loop",
        "--threads",
        "2",
        "--duration",
        "1s",
        "--size-mib",
        "32",
    ]);
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    let last = final_report(&report);
    let written = std::fs::read_to_string(&events).unwrap().lines().count() as u64;
    let procs = last["processes"].as_array().unwrap();
    let n = |v: &Value| v.as_u64().unwrap();
    let mut expected = 0;
    let mut dropped = 0;
    for p in procs {
        let l = &p["mmap_lock"];
        expected += n(&p["faults"]["total"]);
        for mode in ["read", "write"] {
            // one record per hold that ended (release or downgrade) and per
            // failed acquisition
            expected += n(&l[mode]["hold"]["count"])
                + n(&l[mode]["trylock_failures"])
                + n(&l[mode]["lock_failures"]);
        }
        dropped += n(&p["drops"]["events_dropped"]);
    }
    assert_eq!(
        dropped,
        n(&last["drops"]["events_dropped"]),
        "per-process drops add up"
    );
    assert_eq!(
        written + dropped,
        expected,
        "{written} written + {dropped} dropped != {expected} events"
    );
    eprintln!("events: {written} written, {dropped} dropped");
}
