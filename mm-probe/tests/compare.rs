//! `mm-probe compare` on every preset: the workload runs on the host under
//! the probe and on the engine (per-VMA locks), and the gated rows (faults,
//! faults that fell back to mmap_lock, mmap_lock write acquisitions, read
//! acquisitions by faults) agree within 2%. Needs root; under CI=true a
//! skip fails.

mod common;

use std::process::Command;

use common::{BIN, live};
use serde_json::Value;

fn compare(workload: &str, extra: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(["compare", "--workload", workload, "--duration", "300ms"])
        .args(["--format", "json", "--check"])
        .args(extra)
        .output()
        .expect("run mm-probe compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{workload}: no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "{workload}: disagreement:\n{}",
        rows_text(&v)
    );
    v
}

fn rows_text(v: &Value) -> String {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["name"], r["host"], r["engine"], r["agrees"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn row(v: &Value, name: &str) -> (f64, f64, Option<bool>) {
    let r = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}"));
    (
        r["host"].as_f64().unwrap(),
        r["engine"][0].as_f64().unwrap(),
        r["agrees"].as_bool(),
    )
}

#[test]
fn every_preset_agrees_with_the_host() {
    let Some(_g) = live() else { return };
    for w in mm_core::workload::presets::NAMES {
        let v = compare(w, &[]);
        assert_eq!(v["agreement"], true, "{w}");
        // Both sides did the same work, and it was real work.
        let (hc, ec, _) = row(&v, "operations (calls)");
        assert_eq!(hc, ec, "{w}: the engine must repeat the host's iterations");
        assert!(hc > 0.0, "{w} made no calls");
        let (hf, ef, ok) = row(&v, "faults");
        assert_eq!(ok, Some(true), "{w}");
        let (hw, _, ok) = row(&v, "mmap_lock write acquisitions");
        assert_eq!(ok, Some(true), "{w}");
        assert!(hf + hw > 0.0, "{w}: nothing measured on the host");
        assert!(
            (hf - ef).abs() <= 4.0 + 0.02 * hf.max(ef),
            "{w}: {hf} vs {ef}"
        );
        for gated in ["faults via mmap_lock (fallbacks)", "  of which by faults"] {
            assert_eq!(row(&v, gated).2, Some(true), "{w}: {gated}");
        }
    }
}

#[test]
fn page_fault1_counts_match_the_plan() {
    let Some(_g) = live() else { return };
    let v = compare("page-fault1", &["--strategy", "all"]);
    // 16 MiB per iteration: 4096 write faults, one mmap and one munmap.
    let (touches, _, _) = row(&v, "page touches");
    let (calls, _, _) = row(&v, "operations (calls)");
    assert_eq!(touches, calls / 2.0 * 4096.0);
    let (hw, ew, _) = row(&v, "mmap_lock write acquisitions");
    assert_eq!((hw, ew), (calls, calls));
    // Three engine columns: per-vma first, then classic, where every fault
    // takes mmap_lock.
    let r = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "faults via mmap_lock (fallbacks)")
        .unwrap();
    let e: Vec<f64> = r["engine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 3);
    assert_eq!(e[0], calls / 2.0, "per-VMA: one fallback per fresh VMA");
    assert_eq!(e[1], touches, "classic: every fault");
}

#[test]
fn bad_workloads_get_one_line_errors() {
    let dir = std::env::temp_dir().join(format!("mm-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "name = \"bad\"\n[[thread]]\nname = \"t\"\nops = [\n  { op = \"fault\", region = \"nowhere\" },\n]\n",
    )
    .unwrap();
    for args in [
        vec!["workload", "run", f.to_str().unwrap()],
        vec!["compare", "--workload", f.to_str().unwrap()],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{}:5: no region `nowhere`", f.display())),
            "{err}"
        );
    }
    let out = Command::new(BIN)
        .args(["compare", "--workload", "no-such-preset"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no workload `no-such-preset`"), "{err}");
    assert!(err.contains("page-fault1"), "{err}");
}
