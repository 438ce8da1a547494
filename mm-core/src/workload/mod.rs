//! Workload specs: the same work described once and run on the host
//! kernel (mm-probe's host runner) and on the engine ([`engine`]).
//!
//! A spec is a TOML file (docs/workloads.md): shared regions, and thread
//! groups, each running a loop of operations (fault streams over a region,
//! mmap/munmap, mprotect, madvise including guard regions, clear_refs,
//! pagemap scans, /proc/self/maps reads, fork) for a duration or a number
//! of iterations. The built-in presets are such files in the repository's
//! `workloads/` directory ([`presets`]).
//!
//! A spec compiles to a [`Plan`]: concrete addresses and one list of
//! [`Step`]s per thread. Every region gets its own fixed place in a window
//! of the address space (mapped with MAP_FIXED_NOREPLACE, a 2 MiB gap on
//! each side), so that the VMAs and their merges are the same on both
//! sides whatever else the host process has mapped. Random fault streams
//! draw from a per-thread generator seeded by the spec, so both sides touch
//! the same pages in the same order.

pub mod engine;
pub mod presets;

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::uapi::{madv, map, prot};

/// Where the regions go: 16 TiB, as the differential runner's window.
pub const WINDOW_BASE: u64 = 0x1000_0000_0000;
/// Gap and alignment between regions.
const REGION_ALIGN: u64 = 2 << 20;
const PAGE: u64 = 4096;
/// Largest region (so that a typo cannot reserve the address space).
const MAX_REGION: u64 = 64 << 30;
/// Most threads a spec may start.
pub const MAX_THREADS: u32 = 512;

/// A spec that cannot be used: names the file and line where there is one.
#[derive(Debug, Error)]
pub enum SpecError {
    /// Not valid TOML, or a field of the wrong type or name.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// File (or preset) name.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Not readable.
    #[error("{file}: {message}")]
    Io {
        /// File name.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// Neither a preset nor a file.
    #[error(
        "no workload `{0}`: not a preset ({list}) and no such file",
        list = presets::NAMES.join(", ")
    )]
    Unknown(String),
}

/// A size: bytes, or a string such as "64MiB", "4KiB", "2GiB".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom)?,
        };
        Ok(Self(v))
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, \"64KiB\", \"128MiB\")"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        u => return Err(format!("unknown unit `{u}` in `{s}` (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A duration such as "2s" or "500ms".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// "2s", "500ms", "1m", "250us".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. \"2s\", \"500ms\")"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" => n * 60.0,
        _ => return Err(format!("`{s}`: unit must be s, ms, us or m")),
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(format!("`{s}` must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Protection: "rw", "r", "none", "rwx"...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot(pub u64);

impl<'de> Deserialize<'de> for Prot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(Self(prot::NONE));
        }
        let mut p = 0;
        for c in s.chars() {
            p |= match c {
                'r' => prot::READ,
                'w' => prot::WRITE,
                'x' => prot::EXEC,
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "protection `{s}`: use letters r, w, x, or `none`"
                    )));
                }
            };
        }
        Ok(Self(p))
    }
}

impl Default for Prot {
    fn default() -> Self {
        Self(prot::READ | prot::WRITE)
    }
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AccessKind {
    /// Load a byte from each page.
    Read,
    /// Store a byte to each page.
    #[default]
    Write,
}

/// The order pages are touched in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// First to last.
    #[default]
    Sequential,
    /// Uniformly random pages (with repeats), from the thread's generator.
    Random,
}

/// madvise advice a spec may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Advice {
    /// MADV_DONTNEED.
    Dontneed,
    /// MADV_FREE.
    Free,
    /// MADV_COLD.
    Cold,
    /// MADV_PAGEOUT.
    Pageout,
    /// MADV_WILLNEED.
    Willneed,
    /// MADV_POPULATE_READ.
    PopulateRead,
    /// MADV_POPULATE_WRITE.
    PopulateWrite,
    /// MADV_GUARD_INSTALL.
    GuardInstall,
    /// MADV_GUARD_REMOVE.
    GuardRemove,
    /// MADV_NOHUGEPAGE (a flags change: mmap_lock for write).
    Nohugepage,
}

impl Advice {
    /// The MADV_* value.
    pub const fn raw(self) -> i32 {
        match self {
            Self::Dontneed => madv::DONTNEED,
            Self::Free => madv::FREE,
            Self::Cold => madv::COLD,
            Self::Pageout => madv::PAGEOUT,
            Self::Willneed => madv::WILLNEED,
            Self::PopulateRead => madv::POPULATE_READ,
            Self::PopulateWrite => madv::POPULATE_WRITE,
            Self::GuardInstall => madv::GUARD_INSTALL,
            Self::GuardRemove => madv::GUARD_REMOVE,
            Self::Nohugepage => madv::NOHUGEPAGE,
        }
    }
}

/// A region shared by all threads, mapped before the measured part.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Name the ops use.
    pub name: String,
    /// Size.
    pub size: Size,
    /// Protection.
    #[serde(default)]
    pub prot: Prot,
    /// Backed by a file (a memfd on the host) instead of anonymous memory.
    #[serde(default)]
    pub file: bool,
    /// MAP_SHARED instead of MAP_PRIVATE.
    #[serde(default)]
    pub shared: bool,
    /// MAP_POPULATE.
    #[serde(default)]
    pub populate: bool,
}

/// One operation of a thread's loop.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OpSpec {
    /// Map the thread's own region `region` (each thread has its own).
    Mmap {
        /// Region name (thread-local).
        region: String,
        /// Size.
        size: Size,
        /// Protection.
        #[serde(default)]
        prot: Prot,
        /// File-backed (a memfd per thread on the host).
        #[serde(default)]
        file: bool,
        /// MAP_SHARED.
        #[serde(default)]
        shared: bool,
        /// MAP_POPULATE.
        #[serde(default)]
        populate: bool,
    },
    /// Unmap a thread-local region.
    Munmap {
        /// Region name.
        region: String,
    },
    /// Touch pages of a region.
    Fault {
        /// Region name.
        region: String,
        /// Read or write.
        #[serde(default)]
        access: AccessKind,
        /// Order.
        #[serde(default)]
        pattern: Pattern,
        /// First page.
        #[serde(default)]
        offset: u64,
        /// Pages the stream ranges over (default: from `offset` to the
        /// end).
        pages: Option<u64>,
        /// Touches (default: one per page of the range).
        count: Option<u64>,
    },
    /// mprotect pages of a thread-local region.
    Mprotect {
        /// Region name.
        region: String,
        /// New protection.
        prot: Prot,
        /// First page.
        #[serde(default)]
        offset: u64,
        /// Pages (default: to the end).
        pages: Option<u64>,
    },
    /// madvise pages of a region.
    Madvise {
        /// Region name.
        region: String,
        /// Advice.
        advice: Advice,
        /// First page.
        #[serde(default)]
        offset: u64,
        /// Pages (default: to the end).
        pages: Option<u64>,
    },
    /// Write to /proc/self/clear_refs.
    ClearRefs {
        /// 1-5 (4: soft-dirty).
        #[serde(default = "default_clear_refs")]
        kind: u32,
    },
    /// Read the /proc/self/pagemap entries of a region.
    Pagemap {
        /// Region name.
        region: String,
    },
    /// Read /proc/self/maps whole.
    Maps,
    /// fork(); the child exits at once.
    Fork,
    /// Sleep (a periodic thread, such as a tracker, between rounds).
    Sleep {
        /// Microseconds.
        us: u64,
    },
}

const fn default_clear_refs() -> u32 {
    4
}

/// A group of identical threads.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadSpec {
    /// Name (in reports).
    pub name: String,
    /// How many threads run this loop.
    #[serde(default = "one")]
    pub count: u32,
    /// Iterations of the loop (default: the spec's, else until the
    /// duration ends).
    pub iterations: Option<u64>,
    /// Done once before the measured part ([`OpSpec`] tables, read one
    /// by one so that an error names the op's line).
    #[serde(default)]
    pub setup: Vec<toml::Spanned<toml::Value>>,
    /// The loop ([`OpSpec`] tables).
    pub ops: Vec<toml::Spanned<toml::Value>>,
}

const fn one() -> u32 {
    1
}

/// A workload spec (the TOML file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seed of the random fault streams.
    #[serde(default)]
    pub seed: u64,
    /// How long the loops run (default 2 s) unless iterations are given.
    pub duration: Option<Dur>,
    /// Iterations of every loop (overrides the duration).
    pub iterations: Option<u64>,
    /// Regions shared by all threads.
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionSpec>,
    /// Thread groups.
    #[serde(rename = "thread")]
    pub threads: Vec<ThreadSpec>,
}

/// The default duration of a spec without one.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2);

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Spec {
    /// Parse and check a spec; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<(Self, Plan), SpecError> {
        let spec: Self = toml::from_str(text).map_err(|e| SpecError::Parse {
            file: file.into(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let plan = Plan::compile(&spec).map_err(|(span, message)| SpecError::Parse {
            file: file.into(),
            line: span.map_or(1, |s| line_of(text, s)),
            message,
        })?;
        Ok((spec, plan))
    }

    /// A preset by name, or a file by path.
    pub fn load(name_or_path: &str) -> Result<(Self, Plan), SpecError> {
        if let Some(text) = presets::get(name_or_path) {
            return Self::parse(text, &format!("preset {name_or_path}"));
        }
        let p = Path::new(name_or_path);
        if !p.exists() {
            return Err(SpecError::Unknown(name_or_path.into()));
        }
        let text = std::fs::read_to_string(p).map_err(|e| SpecError::Io {
            file: name_or_path.into(),
            message: e.to_string(),
        })?;
        Self::parse(&text, name_or_path)
    }
}

// ---- plans ----------------------------------------------------------------------

/// A file the workload maps (a memfd on the host, a file on the engine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanFile {
    /// Id (the engine's [`crate::op::Op::CreateFile`] id).
    pub id: u32,
    /// Size.
    pub size: u64,
}

/// One concrete step of a thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// mmap at a fixed place (MAP_FIXED_NOREPLACE).
    Mmap {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
        /// PROT_*.
        prot: u64,
        /// MAP_*.
        flags: u64,
        /// File id.
        file: Option<u32>,
    },
    /// munmap.
    Munmap {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// mprotect.
    Mprotect {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
        /// PROT_*.
        prot: u64,
    },
    /// madvise.
    Madvise {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
        /// MADV_*.
        advice: i32,
    },
    /// Touch `count` pages of `[addr + first page, + span pages)`.
    Touch {
        /// First page's address.
        addr: u64,
        /// Pages the stream ranges over.
        span: u64,
        /// Pages touched.
        count: u64,
        /// Read or write.
        access: AccessKind,
        /// Random (else sequential).
        random: bool,
    },
    /// clear_refs.
    ClearRefs {
        /// Kind.
        kind: u32,
    },
    /// pagemap of a range.
    Pagemap {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// /proc/self/maps.
    Maps,
    /// fork.
    Fork,
    /// Sleep this long.
    Sleep {
        /// Microseconds.
        us: u64,
    },
}

/// Counts of what a thread did, by kind of step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpCounts {
    /// mmap calls.
    pub mmap: u64,
    /// munmap calls.
    pub munmap: u64,
    /// mprotect calls.
    pub mprotect: u64,
    /// madvise calls.
    pub madvise: u64,
    /// Page touches (not all of them fault).
    pub touches: u64,
    /// clear_refs writes.
    pub clear_refs: u64,
    /// pagemap reads.
    pub pagemap: u64,
    /// /proc/self/maps reads.
    pub maps: u64,
    /// forks.
    pub fork: u64,
    /// Calls that failed (e.g. guard install's EAGAIN).
    pub errors: u64,
}

impl OpCounts {
    /// Count one step (a touch counts its pages).
    pub fn count(&mut self, s: &Step) {
        match s {
            Step::Mmap { .. } => self.mmap += 1,
            Step::Munmap { .. } => self.munmap += 1,
            Step::Mprotect { .. } => self.mprotect += 1,
            Step::Madvise { .. } => self.madvise += 1,
            Step::Touch { count, .. } => self.touches += count,
            Step::ClearRefs { .. } => self.clear_refs += 1,
            Step::Pagemap { .. } => self.pagemap += 1,
            Step::Maps => self.maps += 1,
            Step::Fork => self.fork += 1,
            Step::Sleep { .. } => {}
        }
    }

    /// Sum.
    pub fn add(&mut self, o: &Self) {
        self.mmap += o.mmap;
        self.munmap += o.munmap;
        self.mprotect += o.mprotect;
        self.madvise += o.madvise;
        self.touches += o.touches;
        self.clear_refs += o.clear_refs;
        self.pagemap += o.pagemap;
        self.maps += o.maps;
        self.fork += o.fork;
        self.errors += o.errors;
    }

    /// System calls and /proc accesses (everything but touches).
    pub fn calls(&self) -> u64 {
        self.mmap
            + self.munmap
            + self.mprotect
            + self.madvise
            + self.clear_refs
            + self.pagemap
            + self.maps
            + self.fork
    }
}

/// One thread of a plan.
#[derive(Clone, Debug)]
pub struct PlanThread {
    /// Group name and index, e.g. `faulter.2`.
    pub name: String,
    /// Iterations (None: until the duration ends).
    pub iterations: Option<u64>,
    /// Before the measured part.
    pub setup: Vec<Step>,
    /// The loop.
    pub body: Vec<Step>,
    /// Seed of its random streams.
    pub seed: u64,
}

/// A compiled spec.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Spec name.
    pub name: String,
    /// Files to create first.
    pub files: Vec<PlanFile>,
    /// Shared regions, mapped first.
    pub shared: Vec<Step>,
    /// Threads.
    pub threads: Vec<PlanThread>,
    /// Duration of untimed loops.
    pub duration: Duration,
    /// The part of the address space the regions lie in (start, end).
    pub window: (u64, u64),
}

/// A thread-local region's place and current state, for checking.
#[derive(Clone, Debug)]
struct Slot {
    addr: u64,
    len: u64,
    mapped: bool,
    /// Per page: protection, and whether it is a guard.
    prot: Vec<(u64, bool)>,
}

type CompileError = (Option<usize>, String);

/// The per-thread random generator (xorshift64*), identical on both sides.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (never zero).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Next value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Page addresses a touch visits, in order (calling `f` for each).
pub fn touch_pages(step: &Step, rng: &mut Rng, mut f: impl FnMut(u64)) {
    if let Step::Touch {
        addr,
        span,
        count,
        random,
        ..
    } = *step
    {
        for i in 0..count {
            let p = if random { rng.below(span) } else { i % span };
            f(addr + p * PAGE);
        }
    }
}

impl Plan {
    fn compile(spec: &Spec) -> Result<Self, CompileError> {
        let no = |m: String| (None, m);
        if spec.threads.is_empty() {
            return Err(no("a spec needs at least one [[thread]]".into()));
        }
        let total: u64 = spec.threads.iter().map(|t| u64::from(t.count)).sum();
        if total == 0 || total > u64::from(MAX_THREADS) {
            return Err(no(format!(
                "{total} threads: a spec runs 1 to {MAX_THREADS}"
            )));
        }
        let mut cursor = WINDOW_BASE;
        let mut place = |len: u64| {
            let a = cursor;
            cursor += len.div_ceil(REGION_ALIGN) * REGION_ALIGN + REGION_ALIGN;
            a
        };
        let mut files = Vec::new();
        let mut shared = Vec::new();
        let mut shared_regions: BTreeMap<&str, (u64, u64, bool)> = BTreeMap::new();
        for r in &spec.regions {
            let len = check_size(r.size.0).map_err(|m| no(format!("region `{}`: {m}", r.name)))?;
            if shared_regions.contains_key(r.name.as_str()) {
                return Err(no(format!("region `{}` is defined twice", r.name)));
            }
            let addr = place(len);
            let file = r.file.then(|| {
                let id = files.len() as u32;
                files.push(PlanFile { id, size: len });
                id
            });
            shared.push(mmap_step(addr, len, r.prot.0, r.shared, r.populate, file));
            shared_regions.insert(&r.name, (addr, len, r.prot.0 & prot::WRITE != 0));
        }
        let mut threads = Vec::new();
        for (gi, g) in spec.threads.iter().enumerate() {
            if g.ops.is_empty() {
                return Err(no(format!("thread `{}` has no ops", g.name)));
            }
            let op_specs = |v: &[toml::Spanned<toml::Value>]| {
                v.iter()
                    .map(|op| {
                        let at = op.span().start;
                        op.get_ref()
                            .clone()
                            .try_into::<OpSpec>()
                            .map(|o| (at, o))
                            .map_err(|e| (Some(at), e.message().trim().to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let g_setup = op_specs(&g.setup)?;
            let g_ops = op_specs(&g.ops)?;
            for k in 0..g.count {
                // Thread-local regions: size = the largest mmap of the name.
                let mut sizes: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
                for (at, op) in g_setup.iter().chain(&g_ops) {
                    if let OpSpec::Mmap {
                        region, size, file, ..
                    } = op
                    {
                        if shared_regions.contains_key(region.as_str()) {
                            return Err((
                                Some(*at),
                                format!(
                                    "`{region}` is a shared region; only thread-local regions are mapped by ops"
                                ),
                            ));
                        }
                        let len = check_size(size.0).map_err(|m| (Some(*at), m))?;
                        let e = sizes.entry(region).or_insert((0, false));
                        e.0 = e.0.max(len);
                        e.1 |= *file;
                    }
                }
                let mut slots: BTreeMap<&str, Slot> = BTreeMap::new();
                let mut slot_files: BTreeMap<&str, u32> = BTreeMap::new();
                for (name, (len, file)) in &sizes {
                    slots.insert(
                        name,
                        Slot {
                            addr: place(*len),
                            len: *len,
                            mapped: false,
                            prot: Vec::new(),
                        },
                    );
                    if *file {
                        let id = files.len() as u32;
                        files.push(PlanFile { id, size: *len });
                        slot_files.insert(name, id);
                    }
                }
                let mut cx = Cx {
                    shared: &shared_regions,
                    slots,
                    files: &slot_files,
                };
                let setup = g_setup
                    .iter()
                    .map(|op| cx.step(op))
                    .collect::<Result<Vec<_>, _>>()?;
                // Check the loop twice: its end state must suit its start.
                let body = g_ops
                    .iter()
                    .map(|op| cx.step(op))
                    .collect::<Result<Vec<_>, _>>()?;
                for op in &g_ops {
                    cx.step(op).map_err(|(s, m)| {
                        (s, format!("{m} (in the loop's second iteration: the loop must leave its regions as it found them)"))
                    })?;
                }
                threads.push(PlanThread {
                    name: if g.count == 1 {
                        g.name.clone()
                    } else {
                        format!("{}.{k}", g.name)
                    },
                    iterations: g.iterations.or(spec.iterations),
                    setup,
                    body,
                    seed: spec
                        .seed
                        .wrapping_add((gi as u64) << 32 | u64::from(k))
                        .wrapping_add(1),
                });
            }
        }
        Ok(Self {
            name: spec.name.clone(),
            files,
            shared,
            threads,
            duration: spec.duration.map_or(DEFAULT_DURATION, |d| d.0),
            window: (WINDOW_BASE, cursor),
        })
    }

    /// Use these iteration counts, one per thread (to repeat on one side
    /// exactly what the other side did).
    pub fn with_iterations(mut self, iterations: &[u64]) -> Self {
        for (t, n) in self.threads.iter_mut().zip(iterations) {
            t.iterations = Some(*n);
        }
        self
    }

    /// Run for this long (loops without an iteration count).
    pub fn with_duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    /// Whether every thread has an iteration count (the duration is not
    /// used).
    pub fn is_counted(&self) -> bool {
        self.threads.iter().all(|t| t.iterations.is_some())
    }
}

fn check_size(len: u64) -> Result<u64, String> {
    if len == 0 || !len.is_multiple_of(PAGE) {
        return Err(format!("size {len} must be a positive multiple of 4096"));
    }
    if len > MAX_REGION {
        return Err(format!("size {len} is larger than {MAX_REGION} (64 GiB)"));
    }
    Ok(len)
}

fn mmap_step(addr: u64, len: u64, p: u64, shared: bool, populate: bool, file: Option<u32>) -> Step {
    let mut flags = if shared { map::SHARED } else { map::PRIVATE } | map::FIXED_NOREPLACE;
    if file.is_none() {
        flags |= map::ANONYMOUS;
    }
    if populate {
        flags |= map::POPULATE;
    }
    Step::Mmap {
        addr,
        len,
        prot: p,
        flags,
        file,
    }
}

struct Cx<'a> {
    shared: &'a BTreeMap<&'a str, (u64, u64, bool)>,
    slots: BTreeMap<&'a str, Slot>,
    files: &'a BTreeMap<&'a str, u32>,
}

impl Cx<'_> {
    /// Resolve a region to (addr, pages, local slot?).
    fn range(
        &mut self,
        region: &str,
        offset: u64,
        pages: Option<u64>,
    ) -> Result<(u64, u64, bool), String> {
        let (addr, len, local) = if let Some(s) = self.slots.get(region) {
            if !s.mapped {
                return Err(format!("region `{region}` is not mapped here"));
            }
            (s.addr, s.len, true)
        } else if let Some((a, l, _)) = self.shared.get(region) {
            (*a, *l, false)
        } else {
            return Err(format!(
                "no region `{region}` (define it with [[region]] or map it with an mmap op)"
            ));
        };
        let total = len / PAGE;
        let n = pages.unwrap_or(total.saturating_sub(offset));
        if offset >= total || n == 0 || offset + n > total {
            return Err(format!(
                "pages {offset}..{} are outside region `{region}` ({total} pages)",
                offset + n
            ));
        }
        Ok((addr + offset * PAGE, n, local))
    }

    fn step(&mut self, (at, op): &(usize, OpSpec)) -> Result<Step, CompileError> {
        self.step_inner(op).map_err(|m| (Some(*at), m))
    }

    fn step_inner(&mut self, op: &OpSpec) -> Result<Step, String> {
        Ok(match op {
            OpSpec::Mmap {
                region,
                size,
                prot: p,
                shared,
                populate,
                ..
            } => {
                let file = self.files.get(region.as_str()).copied();
                let s = self
                    .slots
                    .get_mut(region.as_str())
                    .ok_or_else(|| format!("no region `{region}`"))?;
                if s.mapped {
                    return Err(format!(
                        "region `{region}` is already mapped (unmap it first)"
                    ));
                }
                s.mapped = true;
                s.prot = vec![(p.0, false); (size.0 / PAGE) as usize];
                mmap_step(s.addr, size.0, p.0, *shared, *populate, file)
            }
            OpSpec::Munmap { region } => {
                let s = self
                    .slots
                    .get_mut(region.as_str())
                    .filter(|s| s.mapped)
                    .ok_or_else(|| format!("`{region}` is not a mapped thread-local region"))?;
                s.mapped = false;
                Step::Munmap {
                    addr: s.addr,
                    len: s.prot.len() as u64 * PAGE,
                }
            }
            OpSpec::Fault {
                region,
                access,
                pattern,
                offset,
                pages,
                count,
            } => {
                let (addr, n, local) = self.range(region, *offset, *pages)?;
                let need = match access {
                    AccessKind::Read => prot::READ,
                    AccessKind::Write => prot::WRITE,
                };
                let ok = if local {
                    let s = &self.slots[region.as_str()];
                    let first = ((addr - s.addr) / PAGE) as usize;
                    s.prot[first..first + n as usize]
                        .iter()
                        .all(|(p, guard)| p & need != 0 && !guard)
                } else {
                    let (_, _, writable) = self.shared[region.as_str()];
                    access == &AccessKind::Read || writable
                };
                if !ok {
                    return Err(format!(
                        "a {} fault on `{region}` would raise SIGSEGV (protection or guard pages)",
                        if need == prot::READ { "read" } else { "write" }
                    ));
                }
                Step::Touch {
                    addr,
                    span: n,
                    count: count.unwrap_or(n),
                    access: *access,
                    random: *pattern == Pattern::Random,
                }
            }
            OpSpec::Mprotect {
                region,
                prot: p,
                offset,
                pages,
            } => {
                let (addr, n, local) = self.range(region, *offset, *pages)?;
                if !local {
                    return Err(format!(
                        "mprotect of shared region `{region}`: other threads may be touching it; use a thread-local region"
                    ));
                }
                let s = self.slots.get_mut(region.as_str()).expect("local");
                let first = ((addr - s.addr) / PAGE) as usize;
                for e in &mut s.prot[first..first + n as usize] {
                    e.0 = p.0;
                }
                Step::Mprotect {
                    addr,
                    len: n * PAGE,
                    prot: p.0,
                }
            }
            OpSpec::Madvise {
                region,
                advice,
                offset,
                pages,
            } => {
                let (addr, n, local) = self.range(region, *offset, *pages)?;
                let guard = match advice {
                    Advice::GuardInstall => Some(true),
                    Advice::GuardRemove => Some(false),
                    _ => None,
                };
                if let Some(g) = guard {
                    if !local {
                        return Err(format!(
                            "guard pages in shared region `{region}`: other threads may be touching it; use a thread-local region"
                        ));
                    }
                    let s = self.slots.get_mut(region.as_str()).expect("local");
                    let first = ((addr - s.addr) / PAGE) as usize;
                    for e in &mut s.prot[first..first + n as usize] {
                        e.1 = g;
                    }
                }
                Step::Madvise {
                    addr,
                    len: n * PAGE,
                    advice: advice.raw(),
                }
            }
            OpSpec::ClearRefs { kind } => {
                if !(1..=5).contains(kind) {
                    return Err(format!("clear_refs kind {kind} (1 to 5)"));
                }
                Step::ClearRefs { kind: *kind }
            }
            OpSpec::Pagemap { region } => {
                let (addr, n, _) = self.range(region, 0, None)?;
                Step::Pagemap {
                    addr,
                    len: n * PAGE,
                }
            }
            OpSpec::Maps => Step::Maps,
            OpSpec::Fork => Step::Fork,
            OpSpec::Sleep { us } => {
                if *us == 0 || *us > 10_000_000 {
                    return Err(format!("sleep of {us} us (1 to 10000000)"));
                }
                Step::Sleep { us: *us }
            }
        })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mmap { addr, len, .. } => write!(f, "mmap {addr:#x}+{len:#x}"),
            Self::Munmap { addr, len } => write!(f, "munmap {addr:#x}+{len:#x}"),
            Self::Mprotect { addr, len, prot } => write!(f, "mprotect {addr:#x}+{len:#x} {prot}"),
            Self::Madvise { addr, len, advice } => {
                write!(f, "madvise {addr:#x}+{len:#x} {advice}")
            }
            Self::Touch { addr, count, .. } => write!(f, "touch {count} pages at {addr:#x}"),
            Self::ClearRefs { kind } => write!(f, "clear_refs {kind}"),
            Self::Pagemap { addr, len } => write!(f, "pagemap {addr:#x}+{len:#x}"),
            Self::Maps => write!(f, "maps"),
            Self::Fork => write!(f, "fork"),
            Self::Sleep { us } => write!(f, "sleep {us}us"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Spec::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn every_preset_compiles() {
        for name in presets::NAMES {
            let (spec, plan) = Spec::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&spec.name, name);
            assert!(!spec.description.is_empty(), "{name} has no description");
            assert!(!plan.threads.is_empty());
        }
    }

    #[test]
    fn regions_get_separate_places() {
        let (_, plan) = Spec::parse(
            r#"
name = "x"
[[region]]
name = "shared"
size = "1MiB"
[[thread]]
name = "w"
count = 2
ops = [
  { op = "mmap", region = "r", size = "64KiB" },
  { op = "fault", region = "r" },
  { op = "fault", region = "shared", access = "read", pattern = "random", count = 10 },
  { op = "munmap", region = "r" },
]
"#,
            "x",
        )
        .unwrap();
        let Step::Mmap { addr: s, len, .. } = plan.shared[0] else {
            panic!()
        };
        assert_eq!((s, len), (WINDOW_BASE, 1 << 20));
        let a: Vec<u64> = plan
            .threads
            .iter()
            .map(|t| match t.body[0] {
                Step::Mmap { addr, .. } => addr,
                _ => panic!(),
            })
            .collect();
        assert_eq!(a, [WINDOW_BASE + (4 << 20), WINDOW_BASE + (8 << 20)]);
        assert_eq!(plan.threads[1].name, "w.1");
        assert_eq!(
            plan.threads[0].body[2],
            Step::Touch {
                addr: WINDOW_BASE,
                span: 256,
                count: 10,
                access: AccessKind::Read,
                random: true
            }
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let base = "name = \"x\"\n[[thread]]\nname = \"w\"\nops = [\n";
        let e = err(&format!(
            "{base}  {{ op = \"fault\", region = \"nope\" }},\n]\n"
        ));
        assert!(e.starts_with("t.toml:5: no region `nope`"), "{e}");
        let e = err(&format!(
            "{base}  {{ op = \"mmap\", region = \"r\", size = \"12QB\" }},\n]\n"
        ));
        assert!(
            e.starts_with("t.toml:5:") && e.contains("unknown unit"),
            "{e}"
        );
        let e = err(&format!("{base}  {{ op = \"explode\" }},\n]\n"));
        assert!(e.starts_with("t.toml:5:") && e.contains("explode"), "{e}");
        let e = err(&format!(
            "{base}  {{ op = \"mmap\", region = \"r\", size = 8192 }},\n  {{ op = \"mprotect\", region = \"r\", prot = \"r\" }},\n  {{ op = \"fault\", region = \"r\" }},\n]\n"
        ));
        assert!(e.starts_with("t.toml:7:") && e.contains("SIGSEGV"), "{e}");
        let e = err(&format!(
            "{base}  {{ op = \"mmap\", region = \"r\", size = 8192 }},\n]\n"
        ));
        assert!(
            e.starts_with("t.toml:5:") && e.contains("already mapped"),
            "{e}"
        );
        let e = err("name = \"x\"\nduration = \"fast\"\n[[thread]]\nname = \"w\"\nops = []\n");
        assert!(
            e.starts_with("t.toml:2:") && e.contains("not a duration"),
            "{e}"
        );
        let e = err("name = \"x\"\n[[thread]]\nname = \"w\"\nops = []\n");
        assert!(e.contains("has no ops"), "{e}");
        let e = err("name = \"x\"\nbogus = 1\n[[thread]]\nname = \"w\"\nops = []\n");
        assert!(e.starts_with("t.toml:2:") && e.contains("bogus"), "{e}");
        let e = err(
            "name = \"x\"\n[[thread]]\nname = \"w\"\ncount = 100000\nops = [{ op = \"maps\" }]\n",
        );
        assert!(e.contains("threads: a spec runs 1 to"), "{e}");
    }

    #[test]
    fn random_streams_are_reproducible() {
        let step = Step::Touch {
            addr: 0,
            span: 100,
            count: 50,
            access: AccessKind::Write,
            random: true,
        };
        let run = |seed| {
            let mut v = Vec::new();
            touch_pages(&step, &mut Rng::new(seed), |a| v.push(a));
            v
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).iter().all(|a| *a < 100 * PAGE && a % PAGE == 0));
    }
}
