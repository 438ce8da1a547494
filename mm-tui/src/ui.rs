//! Drawing the dashboard from an [`App`]: a pure function of the state, so
//! that render tests can draw it on ratatui's `TestBackend`.
//!
//! Layout (80x24 at least): two header lines, the tabs, the view, and a
//! footer with the keys. The compare view gives HOST and ENGINE one column
//! each with the same rows; their histograms share one x axis, so a bar in
//! the same place means the same durations on both sides.

use mm_core::stats::{FaultKind, LockModeStats, bucket_bounds};
use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{
        Bar, BarChart, BarGroup, Block, Clear, Paragraph, Row, Sparkline, Table, TableState, Tabs,
        Wrap,
    },
};

use crate::{
    app::{App, Column, KEYS, Mode, SidePane, View},
    model::{HistMode, SideModel, bound, common_range, kind_short, ns, ns_short, si},
};

/// Smallest terminal the dashboard draws in.
pub const MIN_WIDTH: u16 = 80;
/// Smallest terminal height.
pub const MIN_HEIGHT: u16 = 24;

const LABEL: usize = 14;

/// The bucket ranges the wait and hold charts draw (shared by the columns).
type Ranges = (Option<(usize, usize)>, Option<(usize, usize)>);

/// The lock mode(s) the charts draw, and their statistics.
type Lock<'a> = (HistMode, &'a LockModeStats);
const VALUE: usize = 9;

/// Draw everything.
pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(f, area);
        return;
    }
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, header, app);
    f.render_widget(
        Tabs::new(View::TITLES)
            .select(app.view.index())
            .highlight_style(Style::new().bold().reversed())
            .divider("│"),
        tabs,
    );
    match app.view {
        View::Compare => draw_compare(f, body, app),
        View::Processes => draw_processes(f, body, app),
        View::Detail => draw_detail(f, body, app),
    }
    draw_footer(f, footer, app);
    match app.mode {
        Mode::Help => draw_help(f, area),
        Mode::Picker(sel) => draw_picker(f, area, app, sel),
        Mode::Normal | Mode::Filter => {}
    }
}

fn too_small(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from(format!(
            "Terminal too small: {}x{}.",
            area.width, area.height
        )),
        Line::from(format!("mm-tui needs {MIN_WIDTH}x{MIN_HEIGHT} at least.")),
        Line::from("Enlarge it, or press q to quit."),
    ];
    let h = (text.len() as u16).min(area.height);
    let y = area.y + area.height.saturating_sub(h) / 2;
    f.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        Rect::new(area.x, y, area.width, h),
    );
}

fn clock(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn draw_header(f: &mut Frame, area: Rect, app: &App) {
    let sep = || Span::raw(" │ ").dark_gray();
    let badge = if app.paused {
        Span::raw(" PAUSED ").bold().black().on_yellow()
    } else {
        Span::raw(" mm-tui ").bold().reversed()
    };
    let mut first = vec![
        badge,
        Span::raw(format!(" kernel {}", app.kernel)),
        sep(),
        Span::raw(format!(
            "workload {}",
            app.workload.as_deref().unwrap_or("none")
        )),
        sep(),
        Span::raw(clock(app.now.saturating_sub(app.counting_since))),
    ];
    if let Some(c) = app.ui_cpu {
        first.push(sep());
        first.push(Span::raw(format!("ui {c:.1}% cpu")));
    }
    let mut second = vec![Span::raw(" engine "), Span::raw(app.strategy.name()).bold()];
    if let Some(at) = app.strategy_changed {
        let ago = app.now.saturating_sub(at);
        if ago.as_secs() < 30 {
            second.push(Span::raw(format!(" (restarted {} ago)", clock(ago))).yellow());
        }
    }
    second.push(sep());
    let p = &app.probe;
    if p.error.is_empty() {
        second.push(Span::raw(format!(
            "probe: {} tracepoints attached",
            p.attached
        )));
        if !p.unavailable.is_empty() {
            let names: Vec<&str> = p.unavailable.iter().map(|(m, _)| m.as_str()).collect();
            second.push(Span::raw(format!("; unavailable: {}", names.join(", "))).yellow());
        }
    } else {
        second.push(Span::raw("probe: not attached: ").red().bold());
        second.push(Span::raw(p.error.first().cloned().unwrap_or_default()).red());
    }
    f.render_widget(
        Paragraph::new(vec![Line::from(first), Line::from(second)]),
        area,
    );
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App) {
    let line = if app.mode == Mode::Filter {
        Line::from(vec![
            Span::raw(" filter: ").bold(),
            Span::raw(format!("{}█", app.filter)),
            Span::raw("   Enter keeps it, Esc clears it").dark_gray(),
        ])
    } else if let Some(msg) = app.current_status() {
        Line::from(Span::raw(format!(" {msg}")).yellow())
    } else {
        let mut spans = Vec::new();
        for (k, what) in [
            ("q", "quit"),
            ("p", "pause"),
            ("s", "strategy"),
            ("w", "workload"),
            ("Tab", "view"),
            ("/", "filter"),
            ("r", "reset"),
            ("?", "help"),
        ] {
            spans.push(Span::raw(format!(" {k}")).bold());
            spans.push(Span::raw(format!(" {what} ")).dark_gray());
        }
        Line::from(spans)
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_compare(f: &mut Frame, area: Rect, app: &App) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    // Both sides' histograms on one axis.
    let (hw, ew) = (
        app.host.model.lock(app.hist),
        app.engine.model.lock(app.hist),
    );
    let wait_range = common_range(&[&hw.wait, &ew.wait]);
    let hold_range = common_range(&[&hw.hold, &ew.hold]);
    for (pane, lock, rect, name) in [
        (&app.host, &hw, left, "HOST"),
        (&app.engine, &ew, right, "ENGINE"),
    ] {
        let title = if pane.title.is_empty() {
            format!(" {name} ")
        } else {
            format!(" {name} · {} ", pane.title)
        };
        let block = Block::bordered().title(Span::raw(title).bold());
        let inner = block.inner(rect);
        f.render_widget(block, rect);
        draw_pane(f, inner, pane, (app.hist, lock), (wait_range, hold_range));
    }
}

fn draw_pane(f: &mut Frame, area: Rect, pane: &SidePane, lock: Lock, ranges: Ranges) {
    if pane.model.rates.is_none() && !pane.message.is_empty() {
        let lines: Vec<Line> = pane
            .message
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if i == 0 {
                    Line::from(m.as_str()).bold()
                } else {
                    Line::from(m.as_str())
                }
            })
            .collect();
        f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
        return;
    }
    let msg_rows = pane.message.len().min(2) as u16;
    let [area, msg] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(msg_rows)]).areas(area);
    if msg_rows > 0 {
        let lines: Vec<Line> = pane
            .message
            .iter()
            .take(2)
            .map(|m| Line::from(m.as_str()).yellow())
            .collect();
        f.render_widget(Paragraph::new(lines), msg);
    }
    draw_figures(f, area, &pane.model, lock, ranges);
}

fn row(label: &str, value: String) -> Vec<Span<'static>> {
    vec![
        Span::raw(format!("{label:<LABEL$}")),
        Span::raw(format!("{value:>VALUE$}")).bold(),
    ]
}

/// Rows above the write holds.
const FIXED_ROWS: u16 = 8;

/// The rows of one side; also used by the detail view.
fn draw_figures(
    f: &mut Frame,
    area: Rect,
    m: &SideModel,
    (hist, l): Lock,
    (wait_range, hold_range): Ranges,
) {
    let r = m.rates.clone().unwrap_or_default();
    let holds = m.write_holds();
    // Fixed rows, write-hold rows, then two histograms of 4 rows at least.
    let hold_rows = (holds.len().max(1) as u16)
        .min(3)
        .min(area.height.saturating_sub(FIXED_ROWS + 8));
    let hist_h = area.height.saturating_sub(FIXED_ROWS + hold_rows) / 2;
    let [rows, holds_area, wait_area, hold_area] = Layout::vertical([
        Constraint::Length(FIXED_ROWS),
        Constraint::Length(hold_rows),
        Constraint::Length(hist_h),
        Constraint::Length(hist_h),
    ])
    .areas(area);
    let lines = Layout::vertical([Constraint::Length(1); FIXED_ROWS as usize]).split(rows);
    let spark = |f: &mut Frame, line: Rect, data: &std::collections::VecDeque<u64>| {
        let x = (LABEL + VALUE + 1) as u16;
        if line.width > x + 2 {
            let rect = Rect::new(line.x + x, line.y, line.width - x, 1);
            let skip = data.len().saturating_sub(rect.width as usize);
            let d: Vec<u64> = data.iter().skip(skip).copied().collect();
            f.render_widget(Sparkline::default().data(d).cyan(), rect);
        }
    };
    let lock = &m.cum.mmap_lock;
    f.render_widget(Line::from(row("lock read/s", si(r.read))), lines[0]);
    spark(f, lines[0], &m.read_hist);
    f.render_widget(Line::from(row("lock write/s", si(r.write))), lines[1]);
    spark(f, lines[1], &m.write_hist);
    let mut cont = row("contended", format!("{:.1}%", r.contended * 100.0));
    cont.push(Span::raw(format!(" ({:.1}% all)", lock.contended_share() * 100.0)).dark_gray());
    f.render_widget(Line::from(cont), lines[2]);
    f.render_widget(Line::from(row("faults/s", si(r.faults_total()))), lines[3]);
    spark(f, lines[3], &m.fault_hist);
    let mut kinds = vec![Span::raw(format!("{:<LABEL$}", "  by kind"))];
    let nonzero: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|k| r.faults[k.index()] >= 0.5)
        .collect();
    if nonzero.is_empty() {
        kinds.push(Span::raw("none").dark_gray());
    }
    for k in nonzero {
        kinds.push(Span::raw(format!("{} ", kind_short(k))));
        kinds.push(Span::raw(format!("{} ", si(r.faults[k.index()]))).bold());
    }
    f.render_widget(Line::from(kinds), lines[4]);
    let user = r.served + r.fallbacks;
    let served = if user > 0.0 {
        format!("{:.1}%", r.served / user * 100.0)
    } else {
        "-".into()
    };
    let mut vma = row("per-VMA lock", served);
    vma.push(Span::raw(" served").dark_gray());
    f.render_widget(Line::from(vma), lines[5]);
    f.render_widget(Line::from(row("  fallbacks/s", si(r.fallbacks))), lines[6]);
    spark(f, lines[6], &m.fallback_hist);
    let mut drops = row("drops", si(m.lost() as f64));
    drops.push(Span::raw(" lost").dark_gray());
    if m.drops.unmatched_releases > 0 {
        drops.push(
            Span::raw(format!(
                ", {} unmatched",
                si(m.drops.unmatched_releases as f64)
            ))
            .dark_gray(),
        );
    }
    f.render_widget(Line::from(drops), lines[7]);

    let hl = Layout::vertical(vec![Constraint::Length(1); hold_rows as usize]).split(holds_area);
    if holds.is_empty() && hold_rows > 0 {
        f.render_widget(
            Line::from(vec![
                Span::raw(format!("{:<LABEL$}", "write holds")),
                Span::raw("none").dark_gray(),
            ]),
            hl[0],
        );
    }
    for (i, h) in holds.iter().take(hold_rows as usize).enumerate() {
        let label = if i == 0 { "write holds" } else { "" };
        let mut spans = vec![
            Span::raw(format!("{label:<LABEL$}")),
            Span::raw(format!("{:<8.8}", h.name)),
            Span::raw(format!("{:>6}", si(h.count as f64))).bold(),
            Span::raw(" p99 ").dark_gray(),
            Span::raw(format!("{:<5}", ns_short(h.p99))),
        ];
        if area.width >= 47 {
            spans.push(Span::raw(" max ").dark_gray());
            spans.push(Span::raw(ns_short(h.max)));
        }
        f.render_widget(Line::from(spans), hl[i]);
    }
    let tag = match hist {
        HistMode::Both => "",
        HistMode::Read => "(r)",
        HistMode::Write => "(w)",
    };
    draw_histogram(f, wait_area, &format!("wait{tag}"), &l.wait, wait_range);
    draw_histogram(f, hold_area, &format!("hold{tag}"), &l.hold, hold_range);
}

/// A log2 histogram as a bar chart over the bucket range `range`, with a
/// title line (p50, p99, max) and an axis line under the bars.
fn draw_histogram(
    f: &mut Frame,
    area: Rect,
    title: &str,
    h: &mm_core::stats::Log2Histogram,
    range: Option<(usize, usize)>,
) {
    if area.height == 0 {
        return;
    }
    let q = |p: f64| h.quantile(p).map_or_else(|| "-".into(), ns_short);
    let head = Line::from(vec![
        Span::raw(title.to_string()).underlined(),
        Span::raw(" p50 ").dark_gray(),
        Span::raw(q(0.5)).bold(),
        Span::raw(" p99 ").dark_gray(),
        Span::raw(q(0.99)).bold(),
        Span::raw(" max ").dark_gray(),
        Span::raw(if h.is_empty() {
            "-".into()
        } else {
            ns_short(h.max())
        })
        .bold(),
    ]);
    f.render_widget(head, Rect::new(area.x, area.y, area.width, 1));
    let Some((lo, hi)) = range else {
        if area.height > 1 {
            f.render_widget(
                Line::from("  no samples").dark_gray(),
                Rect::new(area.x, area.y + 1, area.width, 1),
            );
        }
        return;
    };
    if area.height < 3 || area.width < 4 {
        return;
    }
    let bars_h = area.height - 2;
    let w = area.width as usize;
    let n = hi - lo + 1;
    // Several buckets per bar when there are more buckets than columns.
    let per = n.div_ceil(w);
    let nbars = n.div_ceil(per);
    let gap = usize::from(nbars * 2 <= w);
    let bw = ((w + gap) / nbars).saturating_sub(gap).max(1);
    let counts: Vec<u64> = (0..nbars)
        .map(|b| {
            let from = lo + b * per;
            (from..(from + per).min(hi + 1))
                .map(|i| h.buckets()[i])
                .sum()
        })
        .collect();
    let bars: Vec<Bar> = counts
        .iter()
        .map(|&c| Bar::new(c).text_value(String::new()))
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let used = (nbars * (bw + gap)).saturating_sub(gap);
    f.render_widget(
        BarChart::default()
            .data(BarGroup::new(bars))
            .bar_width(bw as u16)
            .bar_gap(gap as u16)
            .max(max)
            .bar_style(Style::new().fg(Color::Green)),
        Rect::new(area.x, area.y + 1, (used as u16).min(area.width), bars_h),
    );
    f.render_widget(
        Line::from(axis(lo, hi, per, bw + gap, used.max(16).min(w))).dark_gray(),
        Rect::new(area.x, area.y + area.height - 1, area.width, 1),
    );
}

/// The axis under a histogram of buckets `lo..=hi`, `per` buckets a bar,
/// `step` columns a bar: the range's ends, and 1µs, 1ms and 1s where they
/// fall and fit.
fn axis(lo: usize, hi: usize, per: usize, step: usize, width: usize) -> String {
    let mut line = vec![' '; width];
    let mut taken = vec![false; width];
    let mut put = |at: usize, text: &str| {
        let len = text.chars().count();
        let at = at.min(width.saturating_sub(len));
        let (from, to) = (at.saturating_sub(1), (at + len + 1).min(width));
        if at + len > width || taken[from..to].iter().any(|t| *t) {
            return;
        }
        for (i, c) in text.chars().enumerate() {
            line[at + i] = c;
            taken[at + i] = true;
        }
    };
    put(0, &bound(bucket_bounds(lo).0));
    let right = bound(bucket_bounds(hi).1.saturating_add(1));
    put(width.saturating_sub(right.chars().count()), &right);
    // 2^10 ns is about 1µs, 2^20 about 1ms, 2^30 about 1s.
    for (bucket, label) in [(10, "1µs"), (20, "1ms"), (30, "1s")] {
        if bucket > lo && bucket <= hi {
            put((bucket - lo) / per * step, label);
        }
    }
    line.into_iter().collect()
}

fn draw_processes(f: &mut Frame, area: Rect, app: &App) {
    let rows = app.visible_procs();
    let mut title = format!(" Processes: {} of {} ", rows.len(), app.procs.len());
    if !app.filter.is_empty() {
        title.push_str(&format!("matching \"{}\" ", app.filter));
    }
    if app.probe.attached == 0 {
        let block = Block::bordered().title(title);
        let inner = block.inner(area);
        f.render_widget(block, area);
        let mut lines = vec![Line::from("No host processes: the probe is not attached.").bold()];
        lines.extend(app.probe.error.iter().map(|e| Line::from(e.as_str())));
        f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
        return;
    }
    let header = Row::new(Column::ALL.map(|c| {
        let arrow = match (c == app.sort, app.sort_desc) {
            (false, _) => "",
            (true, true) => "▼",
            (true, false) => "▲",
        };
        format!("{}{arrow}", c.title())
    }))
    .style(Style::new().bold().reversed());
    let body: Vec<Row> = rows
        .iter()
        .map(|p| {
            let m = &p.model;
            let r = m.rates.clone().unwrap_or_default();
            let l = &m.cum.mmap_lock;
            let mut w = l.read.wait.clone();
            w.merge(&l.write.wait);
            let comm = if p.exited {
                format!("{} (exited)", p.comm)
            } else {
                p.comm.clone()
            };
            Row::new(vec![
                p.pid.to_string(),
                comm,
                ns(m.cum.total_wait_ns()),
                w.quantile(0.99).map_or_else(|| "-".into(), ns),
                si(r.read),
                si(r.write),
                format!("{:.1}", l.contended_share() * 100.0),
                si(r.faults_total()),
                si(r.fallbacks),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(8),
        Constraint::Min(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    let table = Table::new(body, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶");
    let mut state = TableState::default();
    if !rows.is_empty() {
        state.select(Some(app.selected.min(rows.len() - 1)));
    }
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_detail(f: &mut Frame, area: Rect, app: &App) {
    let Some(p) = app.detail.and_then(|pid| app.procs.get(&pid)) else {
        f.render_widget(
            Paragraph::new("No process chosen: select one in the process view and press Enter.")
                .block(Block::bordered()),
            area,
        );
        return;
    };
    let state = if p.exited { " (exited)" } else { "" };
    let mut block = Block::bordered()
        .title(Span::raw(format!(" pid {} · {}{state} ", p.pid, p.comm)).bold())
        .title_bottom(" Esc back ");
    if let Some(w) = &p.model.cum.write_holder {
        block = block.title_bottom(
            Span::raw(format!(
                " mmap_lock write-held now by tid {} in {} for {} ",
                w.tid,
                w.context.name(),
                ns(w.held_ns)
            ))
            .yellow(),
        );
    }
    let inner = block.inner(area);
    f.render_widget(block, area);
    let l = p.model.lock(app.hist);
    let ranges = (common_range(&[&l.wait]), common_range(&[&l.hold]));
    draw_figures(f, inner, &p.model, (app.hist, &l), ranges);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let (w, h) = (w.min(area.width), h.min(area.height));
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_help(f: &mut Frame, area: Rect) {
    let rect = centered(area, 78, KEYS.len() as u16 + 4);
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::raw(format!(" {k:<15}")).bold(),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(" any key closes this help").dark_gray());
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys ".bold())),
        rect,
    );
}

fn draw_picker(f: &mut Frame, area: Rect, app: &App, sel: usize) {
    let rect = centered(area, 40, app.workloads.len() as u16 + 4);
    let lines: Vec<Line> = app
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let cur = if Some(w) == app.workload.as_ref() {
                " (running)"
            } else {
                ""
            };
            let l = Line::from(format!(" {w}{cur}"));
            if i == sel { l.reversed() } else { l }
        })
        .collect();
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" Workload ".bold())
                .title_bottom(" ↑↓ choose · Enter run · Esc cancel "),
        ),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mm_core::{
        shared_mm::FaultStrategy,
        stats::{
            ContextStats, Drops, FaultKind, LockContext, LockMode, Log2Histogram, ProcessStats,
        },
    };
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::app::{ProbeStatus, ProcRow};

    /// The screen as lines of text.
    fn lines(b: &Buffer) -> Vec<String> {
        (0..b.area.height)
            .map(|y| {
                (0..b.area.width)
                    .map(|x| b[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    fn render(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        lines(t.backend().buffer())
    }

    /// Totals after `secs` seconds of a side doing `rate` of everything.
    fn stats(secs: u64, read_per_s: u64, fallback_per_s: u64, wait_ns: u64) -> ProcessStats {
        let mut p = ProcessStats::default();
        let l = &mut p.mmap_lock;
        l.read.acquisitions = read_per_s * secs;
        l.read.contended = read_per_s * secs / 10;
        l.write.acquisitions = 250 * secs;
        l.read.wait.record_n(wait_ns, read_per_s * secs / 10);
        l.read.hold.record_n(2_000, read_per_s * secs);
        l.write.hold.record_n(300_000, 250 * secs);
        p.faults.user.add(FaultKind::WriteNotPresent, 50_000 * secs);
        p.faults.user.add(FaultKind::ReadNotPresent, 1_000 * secs);
        p.faults.mmap_lock_fallbacks = fallback_per_s * secs;
        let mut hold = Log2Histogram::new();
        hold.record_n(300_000, 250 * secs);
        p.contexts = vec![ContextStats {
            context: LockContext::Syscall {
                nr: 11,
                name: "munmap".into(),
            },
            mode: LockMode::Write,
            remote: false,
            acquisitions: 250 * secs,
            contended: 0,
            wait: Log2Histogram::new(),
            hold,
        }];
        p
    }

    fn app() -> App {
        let mut a = App::new(
            "6.18.44".into(),
            FaultStrategy::PerVma,
            Duration::from_secs(1),
        );
        a.workload = Some("fault-vs-munmap".into());
        a.target = "the workload's host process (pid 4242)".into();
        a.probe = ProbeStatus {
            attached: 13,
            unavailable: Vec::new(),
            error: Vec::new(),
        };
        a.now = Duration::from_secs(75);
        a.host.title = "pid 4242 mm-tui-host".into();
        a.engine.title = "per-vma · fault-vs-munmap".into();
        let drops = Drops {
            events_dropped: 0,
            stats_full: 3,
            ..Drops::default()
        };
        a.host
            .model
            .update(1_000_000_000, stats(1, 2_000, 1_000, 40_000), drops);
        a.host
            .model
            .update(3_000_000_000, stats(3, 2_000, 1_000, 40_000), drops);
        a.engine
            .model
            .update(1_000_000_000, stats(1, 9_000, 250, 1_500), Drops::default());
        a.engine
            .model
            .update(3_000_000_000, stats(3, 9_000, 250, 1_500), Drops::default());
        a
    }

    fn find(screen: &[String], what: &str) -> Option<(usize, usize)> {
        screen
            .iter()
            .enumerate()
            .find_map(|(y, l)| l.find(what).map(|bx| (l[..bx].chars().count(), y)))
    }

    fn has(screen: &[String], what: &str) -> bool {
        find(screen, what).is_some()
    }

    #[test]
    fn compare_view_shows_both_columns_with_the_same_rows() {
        let s = render(&app(), 100, 34);
        let text = s.join("\n");
        assert!(has(&s, "kernel 6.18.44"), "{text}");
        assert!(has(&s, "workload fault-vs-munmap"), "{text}");
        assert!(has(&s, "engine per-vma"), "{text}");
        assert!(has(&s, "│ 1m15s"), "{text}");
        assert!(has(&s, "13 tracepoints attached"), "{text}");
        let (hx, _) = find(&s, "HOST · pid 4242 mm-tui-host").expect(&text);
        let (ex, _) = find(&s, "ENGINE · per-vma · fault-vs-munmap").expect(&text);
        assert!(hx < 50 && ex >= 50, "{text}");
        // Same rows on both sides, in the same order.
        for label in [
            "lock read/s",
            "lock write/s",
            "contended",
            "faults/s",
            "by kind",
            "per-VMA lock",
            "drops",
            "fallbacks/s",
            "write holds",
            "wait p50",
            "hold p50",
        ] {
            let rows: Vec<(usize, usize)> = s
                .iter()
                .enumerate()
                .flat_map(|(y, l)| {
                    l.match_indices(label)
                        .map(move |(bx, _)| (l[..bx].chars().count(), y))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(rows.len(), 2, "{label} twice:\n{text}");
            assert_eq!(rows[0].1, rows[1].1, "{label} on one line:\n{text}");
        }
        // The numbers: rates over the 2 s between the readings.
        let line = |label: &str| s[find(&s, label).unwrap().1].clone();
        let read = line("lock read/s");
        assert!(read.contains("2.0k") && read.contains("9.0k"), "{read}");
        assert!(line("lock write/s").matches("250").count() == 2);
        let faults = line("faults/s");
        assert_eq!(faults.matches("51.0k").count(), 2, "{faults}");
        let kinds = line("by kind");
        assert_eq!(kinds.matches("write 50.0k").count(), 2, "{kinds}");
        assert_eq!(kinds.matches("read 1.0k").count(), 2, "{kinds}");
        // 1,000 of 51,000 user faults fell back on the host, 250 on the engine.
        let vma = line("per-VMA lock");
        assert!(vma.contains("98.0%") && vma.contains("99.5%"), "{vma}");
        let fb = line("fallbacks/s");
        assert!(fb.contains("1.0k") && fb.contains("250"), "{fb}");
        // 200 of 2,250 acquisitions a second on the host, 900 of 9,250 on the engine.
        let cont = line("contended");
        assert!(cont.contains("8.9%") && cont.contains("9.7%"), "{cont}");
        let drops = line("drops");
        assert!(
            drops.contains("3 lost") && drops.contains("0 lost"),
            "{drops}"
        );
        let holds = line("write holds");
        assert_eq!(holds.matches("munmap").count(), 2, "{holds}");
        assert_eq!(holds.matches("p99 300µs").count(), 2, "{holds}");
        // Wait p99: 40 µs recorded on the host (bucket 32768..65535), 1.5 µs on the engine.
        let wait = line("wait p50");
        assert!(
            wait.contains("p99 40µs") && wait.contains("p99 1.5µs"),
            "{wait}"
        );
        // Bars under both wait titles, on a shared axis from 1µs to 64µs.
        let (_, wy) = find(&s, "wait p50").unwrap();
        let bars: Vec<&String> = s[wy + 1..wy + 4].iter().collect();
        let left_bars = bars.iter().any(|l| l.chars().take(50).any(|c| c == '█'));
        let right_bars = bars.iter().any(|l| l.chars().skip(50).any(|c| c == '█'));
        assert!(left_bars && right_bars, "{text}");
        let axis = s[(wy + 1..s.len())
            .find(|&y| s[y].contains("1µs"))
            .expect(&text)]
        .clone();
        assert_eq!(axis.matches("1µs").count(), 2, "{axis}");
        assert_eq!(axis.matches("65µs").count(), 2, "{axis}");
        // Sparklines next to the rates.
        assert!(read.chars().any(|c| "▁▂▃▄▅▆▇█".contains(c)), "{read}");
    }

    #[test]
    fn fits_the_smallest_terminal() {
        let s = render(&app(), 80, 24);
        let text = s.join("\n");
        for label in [
            "lock read/s",
            "faults/s",
            "per-VMA lock",
            "fallbacks/s",
            "write holds",
            "wait p50",
            "hold p50",
        ] {
            assert!(has(&s, label), "{label}:\n{text}");
        }
        assert!(has(&s, "q quit"), "{text}");
    }

    #[test]
    fn narrow_terminals_get_the_size_message() {
        for (w, h) in [(79, 24), (80, 23), (40, 10)] {
            let s = render(&app(), w, h);
            let text = s.join("\n");
            assert!(has(&s, "needs 80x24 at least"), "{w}x{h}:\n{text}");
            assert!(has(&s, &format!("too small: {w}x{h}")), "{w}x{h}:\n{text}");
            assert!(!has(&s, "HOST"), "{text}");
        }
    }

    #[test]
    fn help_overlay_lists_every_key() {
        let mut a = app();
        a.mode = Mode::Help;
        let s = render(&a, 80, 24);
        let text = s.join("\n");
        for (k, what) in KEYS {
            assert!(
                s.iter()
                    .any(|l| l.contains(what) && l.contains(&format!(" {k} "))),
                "{k} next to {what}:\n{text}"
            );
        }
    }

    #[test]
    fn host_column_explains_a_missing_probe() {
        let mut a = app();
        a.probe = ProbeStatus {
            attached: 0,
            unavailable: Vec::new(),
            error: vec!["needs CAP_BPF and CAP_PERFMON to load eBPF programs".into()],
        };
        a.host.model = SideModel::default();
        a.host.title.clear();
        a.host.message = vec![
            "The host is not measured.".into(),
            "needs CAP_BPF and CAP_PERFMON to load eBPF programs".into(),
            "Run it as root: sudo mm-tui".into(),
        ];
        let s = render(&a, 100, 30);
        let text = s.join("\n");
        assert!(has(&s, "probe: not attached: needs CAP_BPF"), "{text}");
        let (x, _) = find(&s, "The host is not measured.").expect(&text);
        assert!(x < 50);
        assert!(has(&s, "Run it as root: sudo mm-tui"), "{text}");
        // The engine column still shows its figures.
        let (_, y) = find(&s, "lock read/s").expect(&text);
        assert!(find(&s, "lock read/s").unwrap().0 >= 50, "{}", s[y]);
    }

    #[test]
    fn process_view_and_detail() {
        let mut a = app();
        for (pid, comm, wait) in [(100, "postgres", 900_000), (200, "java", 5_000)] {
            let mut model = SideModel::default();
            model.update(0, ProcessStats::default(), Drops::default());
            model.update(1_000_000_000, stats(1, 1_000, 10, wait), Drops::default());
            a.procs.insert(
                pid,
                ProcRow {
                    pid,
                    comm: comm.into(),
                    exited: pid == 200,
                    model,
                },
            );
        }
        a.view = View::Processes;
        let s = render(&a, 100, 30);
        let text = s.join("\n");
        assert!(has(&s, "Processes: 2 of 2"), "{text}");
        assert!(has(&s, "WAIT▼"), "{text}");
        let (_, py) = find(&s, "postgres").expect(&text);
        let (_, jy) = find(&s, "java (exited)").expect(&text);
        assert!(py < jy, "most wait first:\n{text}");
        assert!(s[py].contains("▶"), "first line selected:\n{text}");
        assert!(
            s[py].contains("90.00ms"),
            "total wait 100 x 900 µs:\n{text}"
        );

        a.filter = "jav".into();
        let s = render(&a, 100, 30);
        assert!(has(&s, "Processes: 1 of 2 matching \"jav\""));
        assert!(!has(&s, "postgres"));

        a.filter.clear();
        a.procs.get_mut(&100).unwrap().model.cum.write_holder = Some(mm_core::stats::WriteHolder {
            tid: 101,
            pid: 100,
            context: LockContext::Syscall {
                nr: 11,
                name: "munmap".into(),
            },
            held_ns: 2_500_000,
        });
        a.detail = Some(100);
        a.view = View::Detail;
        let s = render(&a, 100, 30);
        let text = s.join("\n");
        assert!(has(&s, "pid 100 · postgres"), "{text}");
        assert!(has(&s, "lock read/s"), "{text}");
        assert!(
            has(&s, "p99 900µs"),
            "a p99 is capped at the exact max:\n{text}"
        );
    }

    #[test]
    fn picker_and_pause() {
        let mut a = app();
        a.mode = Mode::Picker(2);
        a.paused = true;
        a.strategy_changed = Some(Duration::from_secs(72));
        let s = render(&a, 80, 24);
        let text = s.join("\n");
        assert!(has(&s, "PAUSED"), "{text}");
        assert!(has(&s, "(restarted 3s ago)"), "{text}");
        assert!(has(&s, "fault-vs-munmap (running)"), "{text}");
        for w in &a.workloads {
            assert!(has(&s, w), "{w}:\n{text}");
        }
    }
}
