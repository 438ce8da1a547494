//! The dashboard's state and what each key does to it. Nothing here talks
//! to the probe or the engine: keys that need them return an [`Action`]
//! for the main loop, so that the whole key map can be tested alone.

use std::{collections::BTreeMap, time::Duration};

use mm_core::shared_mm::FaultStrategy;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::model::{HistMode, Rates, SideModel};

/// Every key binding, as the help overlay lists it.
pub const KEYS: &[(&str, &str)] = &[
    (
        "q, Esc",
        "quit (Esc first leaves a detail view or a filter)",
    ),
    ("Ctrl-C", "quit"),
    ("p", "pause or resume the display (measuring goes on)"),
    (
        "s",
        "next engine strategy; the engine restarts the workload",
    ),
    ("w", "choose the workload (host and engine restart it)"),
    (
        "Tab, Shift-Tab",
        "switch view: compare, processes, process detail",
    ),
    ("/", "filter the process list by name or pid"),
    ("↑ ↓, j k", "move in the process list"),
    (
        "← →, h l",
        "sort the process list by the previous or next column",
    ),
    ("o", "reverse the sort order"),
    ("Enter", "open the selected process's detail"),
    ("m", "histograms: read+write, read only, write only"),
    ("r", "reset every counter to zero"),
    ("?", "show or hide this help"),
];

/// What the main loop must do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave.
    Quit,
    /// Restart the engine under the next strategy.
    CycleStrategy,
    /// Run this workload (a preset name or a spec path) on both sides.
    Workload(String),
    /// Zero every counter.
    Reset,
    /// The display was paused or resumed.
    Pause(bool),
}

/// The screens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// HOST and ENGINE side by side.
    Compare,
    /// Every traced process.
    Processes,
    /// One process.
    Detail,
}

impl View {
    /// Tab titles, in Tab order.
    pub const TITLES: [&'static str; 3] = ["Compare", "Processes", "Detail"];

    /// Index in [`View::TITLES`].
    pub const fn index(self) -> usize {
        match self {
            Self::Compare => 0,
            Self::Processes => 1,
            Self::Detail => 2,
        }
    }
}

/// What keys go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The views' keys.
    Normal,
    /// The help overlay: any key closes it.
    Help,
    /// Typing a filter.
    Filter,
    /// Choosing a workload; the selected line.
    Picker(usize),
}

/// Columns of the process list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Process id.
    Pid,
    /// Command name.
    Comm,
    /// Total mmap_lock wait since the start.
    Wait,
    /// p99 of the waits.
    WaitP99,
    /// Read acquisitions per second.
    Read,
    /// Write acquisitions per second.
    Write,
    /// Contended share since the start.
    Contended,
    /// Faults per second.
    Faults,
    /// Fallbacks to mmap_lock per second.
    Fallbacks,
}

impl Column {
    /// In display order.
    pub const ALL: [Self; 9] = [
        Self::Pid,
        Self::Comm,
        Self::Wait,
        Self::WaitP99,
        Self::Read,
        Self::Write,
        Self::Contended,
        Self::Faults,
        Self::Fallbacks,
    ];

    /// Header text.
    pub const fn title(self) -> &'static str {
        match self {
            Self::Pid => "PID",
            Self::Comm => "COMMAND",
            Self::Wait => "WAIT",
            Self::WaitP99 => "WAIT p99",
            Self::Read => "READ/s",
            Self::Write => "WRITE/s",
            Self::Contended => "CONT%",
            Self::Faults => "FAULTS/s",
            Self::Fallbacks => "FALLBK/s",
        }
    }

    fn key(self, p: &ProcRow) -> f64 {
        let none = Rates::default();
        let r = p.model.rates.as_ref().unwrap_or(&none);
        let l = &p.model.cum.mmap_lock;
        match self {
            Self::Pid => f64::from(p.pid),
            Self::Comm => 0.0,
            Self::Wait => p.model.cum.total_wait_ns() as f64,
            Self::WaitP99 => {
                let mut w = l.read.wait.clone();
                w.merge(&l.write.wait);
                w.quantile(0.99).unwrap_or(0) as f64
            }
            Self::Read => r.read,
            Self::Write => r.write,
            Self::Contended => l.contended_share(),
            Self::Faults => r.faults_total(),
            Self::Fallbacks => r.fallbacks,
        }
    }
}

/// One process of the process view.
#[derive(Clone, Debug, Default)]
pub struct ProcRow {
    /// tgid.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Whether it has exited (its figures are final).
    pub exited: bool,
    /// Its figures.
    pub model: SideModel,
}

/// How the probe came up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeStatus {
    /// Tracepoints attached; 0 when the probe is not loaded.
    pub attached: usize,
    /// Metrics that are unavailable, with why.
    pub unavailable: Vec<(String, String)>,
    /// Why the probe is not loaded, and how to fix it (one line each).
    pub error: Vec<String>,
}

/// One column (HOST or ENGINE).
#[derive(Clone, Debug, Default)]
pub struct SidePane {
    /// Title, e.g. "HOST · pid 1234 mm-tui-host".
    pub title: String,
    /// Figures.
    pub model: SideModel,
    /// Shown instead of the figures when there are none (what is missing
    /// and how to fix it), or under them (a workload that ended).
    pub message: Vec<String>,
}

/// Everything the screen shows.
#[derive(Clone, Debug)]
pub struct App {
    /// Kernel release.
    pub kernel: String,
    /// Probe status.
    pub probe: ProbeStatus,
    /// The workload both sides run (preset name or file), if any.
    pub workload: Option<String>,
    /// What the host column follows, e.g. "workload (pid 1234)".
    pub target: String,
    /// Engine strategy.
    pub strategy: FaultStrategy,
    /// When the strategy last changed (dashboard time).
    pub strategy_changed: Option<Duration>,
    /// Dashboard time: since the start.
    pub now: Duration,
    /// Since the counters started (workload start or reset).
    pub counting_since: Duration,
    /// The HOST column.
    pub host: SidePane,
    /// The ENGINE column.
    pub engine: SidePane,
    /// Host processes by pid.
    pub procs: BTreeMap<u32, ProcRow>,
    /// Current screen.
    pub view: View,
    /// Where keys go.
    pub mode: Mode,
    /// Sort column of the process list.
    pub sort: Column,
    /// Largest first.
    pub sort_desc: bool,
    /// Process filter (name or pid substring).
    pub filter: String,
    /// Selected line of the process list.
    pub selected: usize,
    /// The process of the detail view.
    pub detail: Option<u32>,
    /// Display paused.
    pub paused: bool,
    /// Which lock mode the histograms draw.
    pub hist: HistMode,
    /// A message for the footer, with when it was set.
    pub status: Option<(String, Duration)>,
    /// The dashboard's own CPU use, percent of one core.
    pub ui_cpu: Option<f64>,
    /// Refresh interval.
    pub refresh: Duration,
    /// Workloads the picker offers.
    pub workloads: Vec<String>,
}

impl App {
    /// A dashboard with nothing measured yet.
    pub fn new(kernel: String, strategy: FaultStrategy, refresh: Duration) -> Self {
        Self {
            kernel,
            probe: ProbeStatus::default(),
            workload: None,
            target: String::new(),
            strategy,
            strategy_changed: None,
            now: Duration::ZERO,
            counting_since: Duration::ZERO,
            host: SidePane::default(),
            engine: SidePane::default(),
            procs: BTreeMap::new(),
            view: View::Compare,
            mode: Mode::Normal,
            sort: Column::Wait,
            sort_desc: true,
            filter: String::new(),
            selected: 0,
            detail: None,
            paused: false,
            hist: HistMode::Both,
            status: None,
            ui_cpu: None,
            refresh,
            workloads: mm_core::workload::presets::NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Show `msg` in the footer for a while.
    pub fn say(&mut self, msg: impl Into<String>) {
        self.status = Some((msg.into(), self.now));
    }

    /// The footer message, if it is recent (10 s).
    pub fn current_status(&self) -> Option<&str> {
        self.status
            .as_ref()
            .filter(|(_, at)| self.now.saturating_sub(*at) < Duration::from_secs(10))
            .map(|(m, _)| m.as_str())
    }

    /// The process list as shown: filtered, then sorted.
    pub fn visible_procs(&self) -> Vec<&ProcRow> {
        let f = self.filter.to_lowercase();
        let col = self.sort;
        // Each row's sort key once (a p99 merges two histograms).
        let mut rows: Vec<(f64, &ProcRow)> = self
            .procs
            .values()
            .filter(|p| {
                f.is_empty() || p.comm.to_lowercase().contains(&f) || p.pid.to_string().contains(&f)
            })
            .map(|p| (col.key(p), p))
            .collect();
        rows.sort_by(|(ka, a), (kb, b)| {
            let o = if col == Column::Comm {
                a.comm.cmp(&b.comm)
            } else {
                ka.total_cmp(kb)
            };
            let o = if self.sort_desc { o.reverse() } else { o };
            o.then(a.pid.cmp(&b.pid))
        });
        rows.into_iter().map(|(_, p)| p).collect()
    }

    fn move_selection(&mut self, down: bool) {
        let n = self.visible_procs().len();
        if n == 0 {
            self.selected = 0;
        } else if down {
            self.selected = (self.selected + 1).min(n - 1);
        } else {
            self.selected = self.selected.saturating_sub(1);
        }
    }

    fn sort_by(&mut self, right: bool) {
        let i = Column::ALL
            .iter()
            .position(|c| *c == self.sort)
            .unwrap_or(0);
        let n = Column::ALL.len();
        self.sort = Column::ALL[if right { (i + 1) % n } else { (i + n - 1) % n }];
        // Names read best A to Z; figures largest first.
        self.sort_desc = self.sort != Column::Comm;
    }

    fn next_view(&mut self, back: bool) {
        let mut views = vec![View::Compare, View::Processes];
        if self.detail.is_some() {
            views.push(View::Detail);
        }
        let i = views.iter().position(|v| *v == self.view).unwrap_or(0);
        let n = views.len();
        self.view = views[if back { (i + n - 1) % n } else { (i + 1) % n }];
    }

    /// Apply a key; returns what the main loop must do.
    pub fn on_key(&mut self, k: KeyEvent) -> Option<Action> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        match self.mode.clone() {
            Mode::Help => {
                self.mode = Mode::Normal;
                None
            }
            Mode::Filter => {
                match k.code {
                    KeyCode::Enter => self.mode = Mode::Normal,
                    KeyCode::Esc => {
                        self.filter.clear();
                        self.mode = Mode::Normal;
                    }
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) if self.filter.chars().count() < 32 => self.filter.push(c),
                    _ => {}
                }
                self.selected = 0;
                None
            }
            Mode::Picker(sel) => {
                let n = self.workloads.len();
                match k.code {
                    KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('w') => {
                        self.mode = Mode::Normal;
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        self.mode = Mode::Picker(sel.saturating_sub(1));
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        self.mode = Mode::Picker((sel + 1).min(n.saturating_sub(1)));
                    }
                    KeyCode::Enter => {
                        self.mode = Mode::Normal;
                        return self.workloads.get(sel).cloned().map(Action::Workload);
                    }
                    _ => {}
                }
                None
            }
            Mode::Normal => self.normal_key(k),
        }
    }

    fn normal_key(&mut self, k: KeyEvent) -> Option<Action> {
        match k.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Esc => {
                if self.view == View::Detail {
                    self.view = View::Processes;
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                } else {
                    return Some(Action::Quit);
                }
            }
            KeyCode::Char('p') => {
                self.paused = !self.paused;
                return Some(Action::Pause(self.paused));
            }
            KeyCode::Char('s') => return Some(Action::CycleStrategy),
            KeyCode::Char('w') => {
                let cur = self
                    .workload
                    .as_ref()
                    .and_then(|w| self.workloads.iter().position(|x| x == w));
                self.mode = Mode::Picker(cur.unwrap_or(0));
            }
            KeyCode::Tab => self.next_view(false),
            KeyCode::BackTab => self.next_view(true),
            KeyCode::Char('/') => {
                self.view = View::Processes;
                self.mode = Mode::Filter;
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(false),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(true),
            KeyCode::Left | KeyCode::Char('h') => self.sort_by(false),
            KeyCode::Right | KeyCode::Char('l') => self.sort_by(true),
            KeyCode::Char('o') => self.sort_desc = !self.sort_desc,
            KeyCode::Enter if self.view == View::Processes => {
                if let Some(p) = self.visible_procs().get(self.selected) {
                    self.detail = Some(p.pid);
                    self.view = View::Detail;
                }
            }
            KeyCode::Char('m') => {
                self.hist = self.hist.next();
                self.say(format!("histograms: {}", self.hist.name()));
            }
            KeyCode::Char('r') => return Some(Action::Reset),
            KeyCode::Char('?') => self.mode = Mode::Help,
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use mm_core::stats::ProcessStats;

    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn app_with_procs() -> App {
        let mut a = App::new("6.18".into(), FaultStrategy::PerVma, Duration::from_secs(1));
        for (pid, comm, wait, faults) in [
            (10, "postgres", 500, 7),
            (20, "java", 900, 1),
            (30, "bash", 0, 50),
        ] {
            let mut s = ProcessStats::default();
            s.mmap_lock.read.wait.record_n(wait, 1);
            s.faults
                .user
                .add(mm_core::stats::FaultKind::ReadNotPresent, faults);
            let mut model = SideModel::default();
            model.update(0, ProcessStats::default(), Default::default());
            model.update(1_000_000_000, s, Default::default());
            a.procs.insert(
                pid,
                ProcRow {
                    pid,
                    comm: comm.into(),
                    exited: false,
                    model,
                },
            );
        }
        a
    }

    fn pids(a: &App) -> Vec<u32> {
        a.visible_procs().iter().map(|p| p.pid).collect()
    }

    #[test]
    fn quit_keys() {
        let mut a = app_with_procs();
        assert_eq!(a.on_key(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert_eq!(a.on_key(key(KeyCode::Esc)), Some(Action::Quit));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        a.mode = Mode::Filter;
        assert_eq!(a.on_key(ctrl_c), Some(Action::Quit));
    }

    #[test]
    fn sorting_and_filtering() {
        let mut a = app_with_procs();
        assert_eq!(pids(&a), [20, 10, 30], "by total wait, largest first");
        a.on_key(key(KeyCode::Right));
        assert_eq!(a.sort, Column::WaitP99);
        for _ in 0..4 {
            a.on_key(key(KeyCode::Right));
        }
        assert_eq!(a.sort, Column::Faults);
        assert_eq!(pids(&a), [30, 10, 20]);
        a.on_key(key(KeyCode::Char('o')));
        assert_eq!(pids(&a), [20, 10, 30]);
        // Left from Pid wraps to the last column.
        a.sort = Column::Pid;
        a.on_key(key(KeyCode::Left));
        assert_eq!(a.sort, Column::Fallbacks);
        a.sort = Column::Pid;
        a.on_key(key(KeyCode::Right));
        assert_eq!((a.sort, a.sort_desc), (Column::Comm, false));
        assert_eq!(pids(&a), [30, 20, 10], "names A to Z");

        a.on_key(key(KeyCode::Char('/')));
        assert_eq!((a.mode.clone(), a.view), (Mode::Filter, View::Processes));
        for c in "JA".chars() {
            a.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(pids(&a), [20], "case-insensitive name match");
        a.on_key(key(KeyCode::Backspace));
        a.on_key(key(KeyCode::Backspace));
        a.on_key(key(KeyCode::Char('3')));
        assert_eq!(pids(&a), [30], "pid match");
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.mode, Mode::Normal);
        assert_eq!(a.filter, "3");
        // Esc clears the filter before it quits.
        assert_eq!(a.on_key(key(KeyCode::Esc)), None);
        assert_eq!(pids(&a).len(), 3);
    }

    #[test]
    fn selection_and_detail() {
        let mut a = app_with_procs();
        a.on_key(key(KeyCode::Tab));
        assert_eq!(a.view, View::Processes);
        a.on_key(key(KeyCode::Char('j')));
        a.on_key(key(KeyCode::Down));
        a.on_key(key(KeyCode::Down));
        assert_eq!(a.selected, 2, "stops at the last line");
        a.on_key(key(KeyCode::Up));
        a.on_key(key(KeyCode::Enter));
        assert_eq!((a.view, a.detail), (View::Detail, Some(10)));
        a.on_key(key(KeyCode::Tab));
        assert_eq!(a.view, View::Compare, "Tab cycles through the detail too");
        a.on_key(key(KeyCode::BackTab));
        assert_eq!(a.view, View::Detail);
        a.on_key(key(KeyCode::Esc));
        assert_eq!(a.view, View::Processes);
    }

    #[test]
    fn actions() {
        let mut a = app_with_procs();
        assert_eq!(
            a.on_key(key(KeyCode::Char('s'))),
            Some(Action::CycleStrategy)
        );
        assert_eq!(a.on_key(key(KeyCode::Char('r'))), Some(Action::Reset));
        assert_eq!(a.on_key(key(KeyCode::Char('p'))), Some(Action::Pause(true)));
        assert_eq!(
            a.on_key(key(KeyCode::Char('p'))),
            Some(Action::Pause(false))
        );
        assert_eq!(a.on_key(key(KeyCode::Char('m'))), None);
        assert_eq!(a.hist, HistMode::Read);

        a.workload = Some("guard-storm".into());
        a.on_key(key(KeyCode::Char('w')));
        let at = a.workloads.iter().position(|w| w == "guard-storm").unwrap();
        assert_eq!(
            a.mode,
            Mode::Picker(at),
            "the picker opens on the current workload"
        );
        a.on_key(key(KeyCode::Down));
        assert_eq!(
            a.on_key(key(KeyCode::Enter)),
            Some(Action::Workload(a.workloads[at + 1].clone()))
        );
        a.on_key(key(KeyCode::Char('w')));
        assert_eq!(a.on_key(key(KeyCode::Esc)), None);
        assert_eq!(a.mode, Mode::Normal);

        a.on_key(key(KeyCode::Char('?')));
        assert_eq!(a.mode, Mode::Help);
        assert_eq!(
            a.on_key(key(KeyCode::Char('q'))),
            None,
            "a key closes the help"
        );
        assert_eq!(a.mode, Mode::Normal);
    }
}
