//! The built-in workloads: the TOML files of the repository's `workloads/`
//! directory, compiled in.

/// Preset names, in the order `--help` lists them.
pub const NAMES: [&str; 10] = [
    "page-fault1",
    "page-fault2",
    "page-fault3",
    "mmap1",
    "mmap2",
    "fault-vs-munmap",
    "fault-vs-mprotect",
    "guard-storm",
    "softdirty-tracker",
    "maps-reader",
];

const TEXTS: [&str; 10] = [
    include_str!("../../../workloads/page-fault1.toml"),
    include_str!("../../../workloads/page-fault2.toml"),
    include_str!("../../../workloads/page-fault3.toml"),
    include_str!("../../../workloads/mmap1.toml"),
    include_str!("../../../workloads/mmap2.toml"),
    include_str!("../../../workloads/fault-vs-munmap.toml"),
    include_str!("../../../workloads/fault-vs-mprotect.toml"),
    include_str!("../../../workloads/guard-storm.toml"),
    include_str!("../../../workloads/softdirty-tracker.toml"),
    include_str!("../../../workloads/maps-reader.toml"),
];

/// The TOML text of a preset.
pub fn get(name: &str) -> Option<&'static str> {
    NAMES.iter().position(|n| *n == name).map(|i| TEXTS[i])
}
