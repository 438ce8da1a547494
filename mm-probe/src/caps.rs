//! Privilege checks: loading tracing eBPF programs needs CAP_BPF and
//! CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN (`kernel/bpf/syscall.c`,
//! `bpf_prog_load()` and `bpf_raw_tp_link_attach()`).

/// CAP_SYS_ADMIN.
pub const CAP_SYS_ADMIN: u32 = 21;
/// CAP_PERFMON.
pub const CAP_PERFMON: u32 = 38;
/// CAP_BPF.
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in
/// /proc/self/status), or 0 when it cannot be read.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The capabilities missing for loading and attaching the probe, by name;
/// empty when everything needed is there.
pub fn missing_for_probe(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// The one-line fix for missing capabilities.
pub const FIX: &str = "run it as root (sudo mm-probe ...), or grant the capabilities with \
                       `sudo setcap cap_bpf,cap_perfmon+ep $(command -v mm-probe)`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("nothing"), None);
    }

    #[test]
    fn what_is_missing() {
        assert!(missing_for_probe(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_for_probe((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_for_probe(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_for_probe(1 << CAP_BPF), vec!["CAP_PERFMON"]);
    }
}
