//! `flow top [URL]`: a running flow's processors and queues, live, in the terminal (like
//! `vector top`): per processor, records in and out per second and failures; per edge, the
//! queue's fill as a bar coloured green, yellow or red, like NiFi's connections. It polls
//! `/api/v1/stats`, so it survives the flow restarting. `--once` prints one snapshot as a
//! plain table, for scripts.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flow_core::observe::{NodeStats, Stats};
use flow_core::runtime::metrics::NodeState;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

use crate::client::Client;
use crate::progress::human;

#[derive(clap::Args)]
pub struct Args {
    /// The flow's API (default http://127.0.0.1:9420).
    url: Option<String>,
    /// Print one snapshot as a plain table and exit.
    #[arg(long)]
    once: bool,
    /// How often to refresh, like `1s` or `500ms`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// The API's token.
    #[arg(long, env = "FLOW_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let client = Client::new(args.url.as_deref(), args.token)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    if args.once {
        let stats: Stats = runtime.block_on(client.get_json("/api/v1/stats"))?;
        crate::print_out(&table(&stats))?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let mut terminal = ratatui::init();
    let result = interactive(
        &mut terminal,
        &runtime,
        &client,
        args.interval.max(Duration::from_millis(100)),
    );
    ratatui::restore();
    result?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn rate(x: f64) -> String {
    human(x.round() as u64)
}

/// The width of a text column whose cells are `lens` long, at least its 4-letter heading.
pub fn column_width(lens: impl Iterator<Item = usize>) -> usize {
    lens.max().unwrap_or(0).max(4)
}

/// One snapshot as a plain table (`--once`).
pub fn table(s: &Stats) -> String {
    let mut out = String::new();
    let state = if s.finished { "finished" } else { "running" };
    let _ = writeln!(
        out,
        "flow {}  {}  uptime {:.0}s",
        s.flow, state, s.uptime_seconds
    );
    let w = column_width(s.nodes.iter().map(|n| n.name.len()));
    let tw = column_width(s.nodes.iter().map(|n| n.type_name.len()));
    let _ = writeln!(
        out,
        "\n{:w$}  {:tw$}  {:8}  {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "NODE", "TYPE", "STATE", "IN/S", "OUT/S", "IN", "OUT", "DROPPED", "FAILED"
    );
    for n in &s.nodes {
        let c = &n.counters;
        let _ = writeln!(
            out,
            "{:w$}  {:tw$}  {:8}  {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
            n.name,
            n.type_name,
            c.state.as_str(),
            rate(n.rates.received),
            rate(n.rates.sent),
            c.received,
            c.sent,
            c.dropped,
            c.failed
        );
        if let Some(e) = &c.error {
            let _ = writeln!(out, "{:w$}  error: {e}", "");
        }
    }
    let ew = column_width(s.edges.iter().map(|e| e.info.label().len()));
    let _ = writeln!(
        out,
        "\n{:ew$}  {:>15} {:>5} {:>10} {:>9} {:>9}",
        "EDGE", "QUEUED", "FILL", "SENT", "SENT/S", "DROPPED"
    );
    for e in &s.edges {
        let _ = writeln!(
            out,
            "{:ew$}  {:>15} {:>4.0}% {:>10} {:>9} {:>9}",
            e.info.label(),
            format!("{}/{}", e.counters.records, e.info.max_records),
            e.fill * 100.0,
            e.counters.sent,
            rate(e.rates.sent),
            e.counters.dropped
        );
    }
    out
}

/// How the node table is sorted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SortBy {
    File,
    Name,
    In,
    Out,
    Failed,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::File => SortBy::Name,
            SortBy::Name => SortBy::In,
            SortBy::In => SortBy::Out,
            SortBy::Out => SortBy::Failed,
            SortBy::Failed => SortBy::File,
        }
    }

    fn label(self) -> &'static str {
        match self {
            SortBy::File => "file order",
            SortBy::Name => "name",
            SortBy::In => "in/s",
            SortBy::Out => "out/s",
            SortBy::Failed => "failed",
        }
    }

    fn sort(self, nodes: &mut [&NodeStats]) {
        let desc = |a: f64, b: f64| b.total_cmp(&a);
        match self {
            SortBy::File => {}
            SortBy::Name => nodes.sort_by(|a, b| a.name.cmp(&b.name)),
            SortBy::In => nodes.sort_by(|a, b| desc(a.rates.received, b.rates.received)),
            SortBy::Out => nodes.sort_by(|a, b| desc(a.rates.sent, b.rates.sent)),
            SortBy::Failed => nodes.sort_by_key(|n| std::cmp::Reverse(n.counters.failed)),
        }
    }
}

/// Green below half full, yellow below 80 %, red above (NiFi's back-pressure colours).
fn fill_color(fill: f64) -> Color {
    if fill < 0.5 {
        Color::Green
    } else if fill < 0.8 {
        Color::Yellow
    } else {
        Color::Red
    }
}

fn bar(fill: f64, width: usize) -> String {
    let full = ((fill.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

fn interactive(
    terminal: &mut ratatui::DefaultTerminal,
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut sort = SortBy::File;
    let mut stats: Option<Stats> = None;
    let mut problem: Option<String> = None;
    let mut next_poll = Instant::now();
    loop {
        if Instant::now() >= next_poll {
            let fetched = runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(3),
                    client.get_json::<Stats>("/api/v1/stats"),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer from {}", client.base())))
            });
            match fetched {
                Ok(s) => {
                    stats = Some(s);
                    problem = None;
                }
                // Keep the last snapshot on screen and retry: the flow may be restarting.
                // "retrying" first: a narrow terminal cuts the end of the line.
                Err(e) => problem = Some(format!("retrying: {e:#}")),
            }
            next_poll = Instant::now() + interval;
        }
        terminal.draw(|f| draw(f, stats.as_ref(), problem.as_deref(), sort, client.base()))?;
        let wait = next_poll.saturating_duration_since(Instant::now());
        if event::poll(wait)?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                KeyCode::Char('s') => sort = sort.next(),
                _ => {}
            }
        }
    }
}

fn draw(
    f: &mut ratatui::Frame,
    stats: Option<&Stats>,
    problem: Option<&str>,
    sort: SortBy,
    url: &str,
) {
    let [head, nodes_area, edges_area, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(55),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let title = match stats {
        Some(s) => format!(
            "flow top  {}  {}  uptime {:.0}s  {url}",
            s.flow,
            if s.finished { "finished" } else { "running" },
            s.uptime_seconds
        ),
        None => format!("flow top  {url}"),
    };
    let mut head_line = vec![Span::styled(
        title,
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if let Some(p) = problem {
        head_line.push(Span::styled(format!("  {p}"), Style::new().fg(Color::Red)));
    }
    f.render_widget(Paragraph::new(Line::from(head_line)), head);
    f.render_widget(
        Paragraph::new(format!("q quit   s sort (by {})", sort.label()))
            .style(Style::new().add_modifier(Modifier::DIM)),
        foot,
    );
    let Some(s) = stats else {
        return;
    };

    let mut nodes: Vec<&NodeStats> = s.nodes.iter().collect();
    sort.sort(&mut nodes);
    let header = Row::new([
        "NODE", "TYPE", "STATE", "IN/S", "OUT/S", "IN", "OUT", "DROPPED", "FAILED",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = nodes.iter().map(|n| {
        let c = &n.counters;
        let state_style = match c.state {
            NodeState::Failed => Style::new().fg(Color::Red),
            NodeState::Running => Style::new().fg(Color::Green),
            _ => Style::new(),
        };
        let failed_style = if c.failed > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        Row::new(vec![
            Cell::from(n.name.clone()),
            Cell::from(n.type_name.clone()),
            Cell::from(c.state.as_str()).style(state_style),
            Cell::from(rate(n.rates.received)),
            Cell::from(rate(n.rates.sent)),
            Cell::from(human(c.received)),
            Cell::from(human(c.sent)),
            Cell::from(human(c.dropped)),
            Cell::from(human(c.failed)).style(failed_style),
        ])
    });
    let widths = [
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" processors ")),
        nodes_area,
    );

    let header = Row::new(["EDGE", "QUEUE", "FILL", "QUEUED", "SENT/S", "DROPPED"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = s.edges.iter().map(|e| {
        Row::new(vec![
            Cell::from(e.info.label()),
            Cell::from(bar(e.fill, 20)).style(Style::new().fg(fill_color(e.fill))),
            Cell::from(format!("{:.0}%", e.fill * 100.0)),
            Cell::from(format!(
                "{}/{}",
                human(e.counters.records),
                human(e.info.max_records as u64)
            )),
            Cell::from(rate(e.rates.sent)),
            Cell::from(human(e.counters.dropped)),
        ])
    });
    let widths = [
        Constraint::Fill(3),
        Constraint::Length(21),
        Constraint::Length(5),
        Constraint::Length(15),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" edges ")),
        edges_area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_colours_and_bars() {
        assert_eq!(fill_color(0.1), Color::Green);
        assert_eq!(fill_color(0.6), Color::Yellow);
        assert_eq!(fill_color(0.95), Color::Red);
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(bar(2.0, 2), "██");
    }
}
