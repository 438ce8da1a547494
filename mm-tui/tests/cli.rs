//! Bad input gets a one-line error naming the problem, before the terminal
//! is touched. No root needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mm-tui");

fn fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run mm-tui");
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_gets_one_line_errors() {
    let (code, err) = fails(&["--workload", "no-such-preset"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("mm-tui: --workload no-such-preset: no workload `no-such-preset`"),
        "{err}"
    );
    assert!(
        err.contains("fault-vs-munmap"),
        "the presets are listed: {err}"
    );

    let spec = std::env::temp_dir().join(format!("mm-tui-cli-{}.toml", std::process::id()));
    std::fs::write(
        &spec,
        "name = \"x\"\n[[thread]]\nname = \"t\"\nops = [{ op = \"fault\", region = \"r\" }]\n",
    )
    .unwrap();
    let (code, err) = fails(&["--workload", spec.to_str().unwrap()]);
    let _ = std::fs::remove_file(&spec);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(".toml:4: no region `r`"),
        "the file and line are named: {err}"
    );

    let (code, err) = fails(&["--pid", "4194304"]);
    assert_eq!(
        (code, err.trim()),
        (1, "mm-tui: --pid 4194304: no such process")
    );

    let (code, err) = fails(&["--refresh", "10ms"]);
    assert_eq!(code, 2);
    assert!(err.contains("`10ms` is too short: at least 100ms"), "{err}");
    let (_, err) = fails(&["--refresh", "soon"]);
    assert!(err.contains("`soon`"), "{err}");
    let (_, err) = fails(&["--strategy", "fast"]);
    assert!(
        err.contains("unknown fault strategy \"fast\" (classic, speculative or per-vma)"),
        "{err}"
    );
    let (_, err) = fails(&["--pid", "1", "--", "true"]);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn help_explains_the_dashboard() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "fault-vs-munmap",
        "CAP_BPF",
        "--workload",
        "--pid",
        "--strategy",
        "--refresh",
        "Keys:",
        "sudo mm-tui",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
    assert!(!text.contains("host-runner"), "the internal flag is hidden");
}
