//! Output formats of a [`mm_core::stats::Report`]: a table for people, JSON
//! lines (docs/json-report.md, docs/report-schema.json), and Prometheus text.

pub mod prometheus;
pub mod table;

/// A duration in ns, for people: "850ns", "12.3us", "1.20ms", "2.50s".
pub fn format_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

/// One JSON line.
pub fn json_line(report: &mm_core::stats::Report) -> String {
    serde_json::to_string(report).expect("reports always serialize")
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_for_people() {
        use super::format_ns;
        assert_eq!(format_ns(0), "0ns");
        assert_eq!(format_ns(999), "999ns");
        assert_eq!(format_ns(12_345), "12.3us");
        assert_eq!(format_ns(1_200_000), "1.20ms");
        assert_eq!(format_ns(2_500_000_000), "2.50s");
        assert_eq!(format_ns(u64::MAX), "18446744073.71s");
    }
}
