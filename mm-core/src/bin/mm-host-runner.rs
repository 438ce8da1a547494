//! mm-host-runner: executes mm operations (JSON lines on stdin) with real
//! system calls inside a reserved window of its own address space and
//! replies with the outcome and the window's maps and pagemap bits (JSON
//! lines on stdout). Started by mm-core's differential tests.
//!
//! Usage: mm-host-runner --base 0x100000000000 --pages 64

use std::io::{BufRead as _, Write as _};

use mm_core::{
    host::runner::{HostRunner, Reply},
    op::Op,
};

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    let v = args.get(i + 1)?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(base), Some(pages)) = (arg(&args, "--base"), arg(&args, "--pages")) else {
        println!("{{\"error\":\"usage: mm-host-runner --base ADDR --pages N\"}}");
        std::process::exit(2);
    };
    let mut runner = match HostRunner::new(base, pages) {
        Ok(r) => r,
        Err(e) => {
            println!("{}", serde_json::json!({ "error": e.to_string() }));
            std::process::exit(1);
        }
    };
    let features = runner.features();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "{}", serde_json::json!({ "features": features }));
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let op: Op = match serde_json::from_str(&line) {
            Ok(op) => op,
            Err(e) => {
                let _ = writeln!(out, "{}", serde_json::json!({ "error": e.to_string() }));
                break;
            }
        };
        let outcome = runner.exec(&op);
        let state = match runner.window() {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out, "{}", serde_json::json!({ "error": e.to_string() }));
                break;
            }
        };
        let reply = Reply { outcome, state };
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(&reply).expect("serializable")
        );
        let _ = out.flush();
    }
}
