//! Running and watching a flow: Run (the open file, as a `flow run` child) and Attach (to a
//! running flow's API) in the tool bar, the `${VAR}`s a file needs asked once and remembered
//! per file, the live panel (nodes, edges with their fill, bulletins, the child's log, the
//! summary once it ended), the tap of a clicked edge and the lineage of a tapped record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use egui::{Color32, RichText, Ui};
use flow_core::observe::{FlowInfo, Level, TappedRecord};
use flow_core::provenance::query::Lineage;

use crate::graph::FlowGraph;
use crate::live::{Snapshot, fill_color, rate};
use crate::session::{LineageState, ReplayState, Session, Status, needed_variables};
use crate::state::{Designer, Notice};
use crate::theme;
use crate::views::Canvas;

/// The live panel's tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Per node: state, rates, counters.
    Nodes,
    /// Per edge: queue and fill.
    Edges,
    /// Warnings and errors.
    Bulletins,
    /// The child's output.
    Log,
    /// Per-node totals once the flow ended.
    Summary,
}

/// The run/attach dialogs, the live panel and the tap and lineage windows.
pub struct LiveView {
    /// The flow run or attached to.
    pub session: Option<Session>,
    /// The `flow` binary Run starts ([`crate::session::flow_bin`] by default).
    pub flow_bin: Option<PathBuf>,
    /// The `${VAR}` values given per file (kept while the designer runs; never written to
    /// disk, as they may be secrets).
    pub variables: HashMap<PathBuf, BTreeMap<String, String>>,
    /// The tab shown.
    pub tab: Tab,
    /// The tap's text filter.
    pub filter: String,
    ask: Option<(PathBuf, BTreeMap<String, String>)>,
    attach: Option<(String, String)>,
    seq: Option<u64>,
    seen_edge: Option<usize>,
    tapped: Option<String>,
    /// The record whose lineage is shown.
    chosen: Option<String>,
    /// The running flow differs from the open file.
    pub differs: Option<String>,
    shown_running: bool,
}

impl Default for LiveView {
    fn default() -> Self {
        Self {
            session: None,
            flow_bin: crate::session::flow_bin(),
            variables: HashMap::new(),
            tab: Tab::Edges,
            filter: String::new(),
            ask: None,
            attach: None,
            seq: None,
            seen_edge: None,
            tapped: None,
            chosen: None,
            differs: None,
            shown_running: false,
        }
    }
}

impl LiveView {
    /// Whether a session (running or ended) is shown.
    pub fn active(&self) -> bool {
        self.session.is_some()
    }

    /// Whether stats arrive (each one repaints the window).
    pub fn streaming(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.shared().status == Some(Status::Live))
    }

    /// Run the open file: save it first if changed, ask for the `${VAR}`s it needs unless
    /// given before.
    pub fn run(&mut self, designer: &mut Designer, ctx: &egui::Context) {
        let Some(path) = designer.path().map(std::path::Path::to_path_buf) else {
            designer.notice = Some(Notice::Error("save the flow before running it".into()));
            return;
        };
        if designer.is_dirty()
            && let Err(e) = designer.save()
        {
            designer.notice = Some(Notice::Error(e));
            return;
        }
        let needed = needed_variables(designer.document().text(), designer.registry());
        let known = self.variables.get(&path).cloned().unwrap_or_default();
        if needed.iter().all(|v| known.contains_key(v)) {
            self.start(designer, &path, ctx);
        } else {
            let values = needed
                .into_iter()
                .map(|v| {
                    let value = known.get(&v).cloned().unwrap_or_default();
                    (v, value)
                })
                .collect();
            self.ask = Some((path, values));
        }
    }

    fn start(&mut self, designer: &mut Designer, path: &std::path::Path, ctx: &egui::Context) {
        let Some(bin) = self.flow_bin.clone() else {
            designer.notice = Some(Notice::Error(
                "no `flow` binary: put it next to the designer or on PATH, or set FLOW_BIN".into(),
            ));
            return;
        };
        let env: Vec<(String, String)> = self
            .variables
            .get(path)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        self.close();
        match Session::run(&bin, path, &env, ctx) {
            Ok(s) => {
                self.session = Some(s);
                self.tab = Tab::Edges;
                designer.notice = Some(Notice::Info(format!("running {}", path.display())));
            }
            Err(e) => designer.notice = Some(Notice::Error(e)),
        }
    }

    /// Attach to the flow whose API is at `url`.
    pub fn attach(&mut self, url: &str, token: Option<String>, ctx: &egui::Context) {
        self.close();
        self.session = Some(Session::attach(url, token, ctx));
        self.tab = Tab::Edges;
    }

    /// Stop: SIGTERM, then SIGKILL; detach from an attached flow.
    pub fn stop(&mut self) {
        if let Some(s) = &mut self.session {
            if s.attached() {
                self.close();
            } else {
                s.stop();
            }
        }
    }

    /// Forget the session (a child still running is stopped).
    pub fn close(&mut self) {
        self.session = None;
        self.seq = None;
        self.tapped = None;
        self.chosen = None;
        self.differs = None;
        self.shown_running = false;
    }

    /// Each frame, before drawing: the canvas's live figures from the latest stats, the
    /// running graph when it differs from the open file, a tap for a newly clicked edge.
    pub fn update(&mut self, canvas: &mut Canvas, designer: &mut Designer) {
        let Some(session) = &self.session else {
            canvas.live = None;
            return;
        };
        let seq = session.shared().seq;
        if self.seq != Some(seq) {
            self.seq = Some(seq);
            let s = session.shared();
            let events: Vec<_> = s.events.iter().cloned().collect();
            canvas.live = s
                .stats
                .as_ref()
                .map(|st| Box::new(Snapshot::new(st, &events)) as Box<dyn crate::live::LiveStats>);
            // The running flow (every processor's config) is copied only when it may be
            // shown: once, attached, on new stats (it was copied on every frame).
            let flow = (!self.shown_running && session.attached())
                .then(|| s.flow.clone())
                .flatten();
            drop(s);
            if let Some(f) = flow
                && !same_graph(&f, designer.graph())
            {
                self.differs = Some(f.name.clone());
                if !designer.is_dirty() {
                    designer.load_text(flow_yaml(&f), None);
                    canvas.fit();
                    self.shown_running = true;
                }
            }
        }
        // A click on an edge taps it.
        let edge = designer.selection.edge;
        if edge != self.seen_edge {
            self.seen_edge = edge;
            if let Some(e) = edge.and_then(|i| designer.graph().edge(i)) {
                let g = designer.graph();
                let (node, port) = (
                    g.nodes[e.from].name.clone(),
                    g.nodes[e.from].ports[e.port].clone(),
                );
                self.tapped = Some(g.edge_label(e));
                self.chosen = None;
                session.tap(&node, &port);
            }
        }
    }

    /// The tool bar's part: Run, Attach, Stop and the status.
    pub fn toolbar(&mut self, ui: &mut Ui, designer: &mut Designer) {
        let running = self.session.as_ref().is_some_and(|s| s.running());
        let attached = self.session.as_ref().is_some_and(Session::attached);
        if ui
            .add_enabled(!running, egui::Button::new("▶ Run"))
            .on_hover_text("Run this flow (`flow run FILE --api`) and watch it live")
            .clicked()
        {
            let ctx = ui.ctx().clone();
            self.run(designer, &ctx);
        }
        if ui
            .add_enabled(!running, egui::Button::new("Attach…"))
            .on_hover_text("Watch a flow already running, by its API's URL")
            .clicked()
        {
            self.attach = Some(("http://127.0.0.1:9420".into(), String::new()));
        }
        let stop = self.session.as_ref().map(|s| {
            if attached {
                ("Detach", "Stop watching (the flow keeps running)")
            } else if s.stops() == 0 {
                (
                    "■ Stop",
                    "Stop the flow gracefully (SIGTERM): sources stop, queues drain, sinks flush",
                )
            } else {
                ("■ Kill", "Kill the flow now (SIGKILL)")
            }
        });
        if let Some((label, hover)) = stop
            && ui
                .add_enabled(running || attached, egui::Button::new(label))
                .on_hover_text(hover)
                .clicked()
        {
            self.stop();
        }
        if let Some(s) = &self.session {
            let sh = s.shared();
            let (text, color) = match (&sh.exit, &sh.status) {
                (Some(e), _) => (format!("flow {e}"), theme::WEAK),
                (None, Some(Status::Starting)) => ("starting…".to_owned(), theme::WEAK),
                (None, Some(Status::Connecting)) => ("connecting…".to_owned(), theme::WEAK),
                (None, Some(Status::Live)) if s.stops() > 0 => {
                    ("stopping…".to_owned(), theme::WARNING)
                }
                (None, Some(Status::Live)) => (
                    format!("▶ live · {}", sh.url.as_deref().unwrap_or("")),
                    Color32::from_rgb(0x3f, 0xb9, 0x86),
                ),
                (None, Some(Status::Finished)) => ("finished".to_owned(), theme::WEAK),
                (None, Some(Status::Unreachable(e))) => (format!("✖ {e}"), theme::ERROR),
                (None, None) => (String::new(), theme::WEAK),
            };
            ui.label(RichText::new(text).size(12.0).color(color));
        }
    }

    /// The dialogs: the variables a run needs, the URL to attach to.
    pub fn dialogs(&mut self, ctx: &egui::Context, designer: &mut Designer) {
        if let Some((path, values)) = &mut self.ask {
            let mut answer = None;
            egui::Modal::new(egui::Id::new("run-variables")).show(ctx, |ui| {
                ui.set_width(420.0);
                ui.label(
                    RichText::new("Variables to run this flow")
                        .strong()
                        .size(16.0),
                );
                ui.label(
                    RichText::new("Asked once per file; kept until the designer closes.")
                        .color(theme::WEAK)
                        .size(12.0),
                );
                ui.add_space(6.0);
                egui::Grid::new("run-variables-grid")
                    .num_columns(2)
                    .show(ui, |ui| {
                        for (k, v) in values.iter_mut() {
                            let l = ui.label(RichText::new(k.as_str()).monospace()).id;
                            ui.add(egui::TextEdit::singleline(v).desired_width(260.0))
                                .labelled_by(l);
                            ui.end_row();
                        }
                    });
                ui.add_space(8.0);
                ui.horizontal(|ui| {
                    if ui.button("Run with these").clicked() {
                        answer = Some(true);
                    }
                    if ui.button("Cancel").clicked() {
                        answer = Some(false);
                    }
                });
            });
            match answer {
                Some(true) => {
                    let path = path.clone();
                    self.variables
                        .entry(path.clone())
                        .or_default()
                        .extend(values.clone());
                    self.ask = None;
                    self.start(designer, &path, ctx);
                }
                Some(false) => self.ask = None,
                None => {}
            }
        }
        if let Some((url, token)) = &mut self.attach {
            let mut answer = None;
            egui::Modal::new(egui::Id::new("attach")).show(ctx, |ui| {
                ui.set_width(420.0);
                ui.label(
                    RichText::new("Attach to a running flow")
                        .strong()
                        .size(16.0),
                );
                ui.add_space(6.0);
                egui::Grid::new("attach-grid")
                    .num_columns(2)
                    .show(ui, |ui| {
                        let l = ui.label("API URL").id;
                        ui.add(egui::TextEdit::singleline(url).desired_width(260.0))
                            .labelled_by(l);
                        ui.end_row();
                        let l = ui.label("Token").id;
                        ui.add(
                            egui::TextEdit::singleline(token)
                                .password(true)
                                .hint_text("if the API needs one")
                                .desired_width(260.0),
                        )
                        .labelled_by(l);
                        ui.end_row();
                    });
                ui.add_space(8.0);
                ui.horizontal(|ui| {
                    if ui.button("Attach").clicked() {
                        answer = Some(true);
                    }
                    if ui.button("Cancel").clicked() {
                        answer = Some(false);
                    }
                });
            });
            match answer {
                Some(true) => {
                    let (url, token) = (url.clone(), token.clone());
                    self.attach = None;
                    self.attach(&url, Some(token), ctx);
                }
                Some(false) => self.attach = None,
                None => {}
            }
        }
        self.tap_window(ctx);
        self.lineage_window(ctx);
    }

    /// The live panel: nodes, edges, bulletins, log, summary.
    pub fn panel(&mut self, ui: &mut Ui) {
        let Some(session) = &self.session else {
            return;
        };
        let s = session.shared();
        ui.horizontal(|ui| {
            if let Some(d) = &self.differs {
                ui.label(
                    RichText::new(format!(
                        "⚠ attached to flow `{d}`, which differs from the open file: {}",
                        if self.shown_running {
                            "showing the running graph"
                        } else {
                            "save or undo your changes to see the running graph"
                        }
                    ))
                    .color(theme::WARNING),
                );
                ui.separator();
            }
            let bulletins = s.events.len();
            for (tab, name) in [
                (Tab::Nodes, "Nodes".to_owned()),
                (Tab::Edges, "Edges".to_owned()),
                (Tab::Bulletins, format!("Bulletins ({bulletins})")),
                (Tab::Log, "Log".to_owned()),
                (Tab::Summary, "Summary".to_owned()),
            ] {
                if ui.selectable_label(self.tab == tab, name).clicked() {
                    self.tab = tab;
                }
            }
        });
        ui.separator();
        // The tables lay out only the rows in view: a flow of 500 nodes has as many rows,
        // and each frame would lay them all out.
        let rows = match (self.tab, &s.stats) {
            (Tab::Nodes, Some(st)) => Some(st.nodes.len()),
            (Tab::Edges, Some(st)) => Some(st.edges.len()),
            _ => None,
        };
        if let Some(rows) = rows {
            let row_height = ui.text_style_height(&egui::TextStyle::Body);
            let tab = self.tab;
            egui::ScrollArea::both()
                .auto_shrink([false, false])
                .show_rows(ui, row_height, rows + 1, |ui, range| {
                    if tab == Tab::Nodes {
                        nodes_table(ui, &s, range);
                    } else {
                        edges_table(ui, &s, range);
                    }
                });
            return;
        }
        egui::ScrollArea::both()
            .auto_shrink([false, false])
            .show(ui, |ui| match self.tab {
                Tab::Nodes => nodes_table(ui, &s, 0..usize::MAX),
                Tab::Edges => edges_table(ui, &s, 0..usize::MAX),
                Tab::Bulletins => {
                    if s.events.is_empty() {
                        ui.label(RichText::new("no warnings nor errors").color(theme::WEAK));
                    }
                    for e in s.events.iter().rev() {
                        let (icon, color) = match e.level {
                            Level::Error => ("✖", theme::ERROR),
                            Level::Warn => ("⚠", theme::WARNING),
                        };
                        let fields: Vec<String> =
                            e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        ui.label(
                            RichText::new(format!(
                                "{icon} {} {}: {} {}",
                                clock(e.time_ms),
                                e.node.as_deref().unwrap_or("flow"),
                                e.message,
                                fields.join(" ")
                            ))
                            .color(color),
                        );
                    }
                }
                Tab::Log => {
                    for l in &s.log {
                        ui.label(RichText::new(l).monospace().size(11.0));
                    }
                }
                Tab::Summary => summary(ui, &s),
            });
    }

    fn tap_window(&mut self, ctx: &egui::Context) {
        let Some(session) = &self.session else { return };
        let Some(edge) = self.tapped.clone() else {
            return;
        };
        let mut open = true;
        let mut copy = None;
        let mut chosen = None;
        egui::Window::new(format!("Tap · {edge}"))
            .id(egui::Id::new("tap-window"))
            .open(&mut open)
            .default_size([520.0, 360.0])
            .default_pos(ctx.content_rect().right_bottom() - egui::vec2(900.0, 560.0))
            .show(ctx, |ui| {
                let mut s = session.shared();
                let Some(tap) = &mut s.tap else {
                    ui.label("no tap");
                    return;
                };
                ui.horizontal(|ui| {
                    let pause = if tap.paused { "Resume" } else { "Pause" };
                    if ui.button(pause).clicked() {
                        tap.paused = !tap.paused;
                    }
                    let l = ui.label("Filter").id;
                    ui.add(
                        egui::TextEdit::singleline(&mut self.filter)
                            .hint_text("text in the record")
                            .desired_width(160.0),
                    )
                    .labelled_by(l);
                    if ui.button("Copy as JSON").clicked() {
                        let lines: Vec<String> = tap
                            .records
                            .iter()
                            .filter(|r| matches(r, &self.filter))
                            .filter_map(|r| serde_json::to_string(r).ok())
                            .collect();
                        copy = Some(lines.join("\n"));
                    }
                });
                let shown: Vec<&TappedRecord> = tap
                    .records
                    .iter()
                    .filter(|r| matches(r, &self.filter))
                    .collect();
                let mut status = format!("{} of {} records", shown.len(), tap.records.len());
                if tap.lost > 0 {
                    status.push_str(&format!(" · {} lost", tap.lost));
                }
                if tap.skipped > 0 {
                    status.push_str(&format!(" · {} skipped while paused", tap.skipped));
                }
                if !tap.open {
                    status.push_str(" · tap closed");
                }
                if let Some(e) = &tap.error {
                    status.push_str(&format!(" · {e}"));
                }
                ui.label(RichText::new(status).size(12.0).color(theme::WEAK));
                ui.separator();
                // Only the rows in view are laid out (and exist for a click or a screen
                // reader): all 500 each frame made a frame slow, and the rows scrolled out
                // of view still had widgets, which a click (kittest's too) cannot reach.
                let row_height = ui.spacing().interact_size.y;
                egui::ScrollArea::vertical()
                    .auto_shrink([false, false])
                    .stick_to_bottom(true)
                    .show_rows(ui, row_height, shown.len(), |ui, range| {
                        for r in shown.get(range).unwrap_or_default() {
                            let text = format!(
                                "{}  {}",
                                r.id,
                                serde_json::to_string(&r.content).unwrap_or_default()
                            );
                            let selected = self.chosen.as_deref() == Some(r.id.as_str());
                            if ui
                                .add(
                                    egui::Button::selectable(
                                        selected,
                                        RichText::new(text).monospace().size(11.0),
                                    )
                                    .truncate(),
                                )
                                .on_hover_text("Show its lineage")
                                .clicked()
                            {
                                chosen = Some(r.id.clone());
                            }
                        }
                    });
            });
        if let Some(text) = copy {
            ctx.copy_text(text);
        }
        if let Some(id) = chosen {
            session.lineage(&id);
            self.chosen = Some(id);
        }
        if !open {
            session.untap();
            self.tapped = None;
            self.chosen = None;
        }
    }

    fn lineage_window(&mut self, ctx: &egui::Context) {
        let Some(session) = &self.session else { return };
        let Some(id) = self.chosen.clone() else {
            return;
        };
        let mut open = true;
        let mut replay = false;
        egui::Window::new(format!("Lineage · {id}"))
            .id(egui::Id::new("lineage-window"))
            .open(&mut open)
            .default_size([520.0, 320.0])
            .default_pos(ctx.content_rect().right_bottom() - egui::vec2(560.0, 420.0))
            .show(ctx, |ui| {
                let s = session.shared();
                // Replay: the flow runs with its API, and content of the record (or of a
                // descendant) was kept.
                if let Some(LineageState::Found(l)) = &s.lineage
                    && kept_content(l)
                {
                    ui.horizontal(|ui| {
                        replay = ui
                            .button("Replay")
                            .on_hover_text(
                                "re-inject the kept content into the running flow, where \
                                 the record entered (a new record, linked to this one)",
                            )
                            .clicked();
                        match &s.replay {
                            Some(ReplayState::Sending(r)) if *r == id => {
                                ui.label("replaying…");
                            }
                            Some(ReplayState::Done(r, said)) if *r == id => {
                                ui.label(RichText::new(said).color(theme::WEAK));
                            }
                            Some(ReplayState::Failed(r, why)) if *r == id => {
                                ui.label(RichText::new(why).color(theme::WARNING));
                            }
                            _ => {}
                        }
                    });
                }
                egui::ScrollArea::vertical()
                    .auto_shrink([false, false])
                    .show(ui, |ui| match &s.lineage {
                        Some(LineageState::Loading(_)) | None => {
                            ui.label("asking provenance…");
                        }
                        Some(LineageState::Unavailable(_, why)) => {
                            ui.label(RichText::new(why).color(theme::WARNING));
                        }
                        Some(LineageState::Found(l)) => lineage_tree(ui, l, 0),
                    });
            });
        if replay {
            session.replay(&id);
        }
        if !open {
            self.chosen = None;
        }
    }
}

/// Whether a node kept content of the record or of a descendant (what a replay needs).
fn kept_content(l: &Lineage) -> bool {
    l.events
        .iter()
        .any(|s| s.kind == flow_core::provenance::EventKind::Content)
        || l.children.iter().any(kept_content)
}

/// Whether a tapped record shows under `filter` (case-insensitive text in its JSON).
fn matches(r: &TappedRecord, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let f = filter.to_lowercase();
    serde_json::to_string(r).is_ok_and(|t| t.to_lowercase().contains(&f))
}

fn lineage_tree(ui: &mut Ui, l: &Lineage, depth: usize) {
    egui::CollapsingHeader::new(RichText::new(format!("record {}", l.id)).monospace())
        .id_salt(("lineage", &l.id, depth))
        .default_open(true)
        .show(ui, |ui| {
            for step in &l.events {
                let at = match &step.port {
                    Some(p) => format!("{}.{p}", step.node),
                    None => step.node.clone(),
                };
                let mut text = format!("{}  {:?}  {at}", clock(step.time), step.kind);
                if let Some(o) = step.origin {
                    text.push_str(&format!("  (input #{o})"));
                }
                if let Some(d) = &step.detail {
                    text.push_str(&format!("  → {d}"));
                }
                ui.label(RichText::new(text).monospace().size(11.0));
            }
            for c in &l.children {
                lineage_tree(ui, c, depth + 1);
            }
        });
}

/// `HH:MM:SS.mmm` (UTC) of an epoch-millisecond time.
fn clock(ms: i64) -> String {
    let day = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

/// The nodes' figures: the rows of `rows` (row 0 is the header, row `i` node `i - 1`).
fn nodes_table(ui: &mut Ui, s: &crate::session::Shared, rows: std::ops::Range<usize>) {
    let Some(stats) = &s.stats else {
        ui.label(RichText::new("waiting for the first figures…").color(theme::WEAK));
        return;
    };
    egui::Grid::new("live-nodes")
        .striped(true)
        .num_columns(8)
        .show(ui, |ui| {
            if rows.contains(&0) {
                ui.label(RichText::new("node").strong());
                ui.label(RichText::new("state").strong());
                for (h, w) in [
                    ("in/s", RATE),
                    ("out/s", RATE),
                    ("in", COUNT),
                    ("out", COUNT),
                    ("dropped", COUNT),
                    ("failed", COUNT),
                ] {
                    figure(ui, RichText::new(h).strong(), w);
                }
                ui.end_row();
            }
            for n in in_view(&stats.nodes, &rows) {
                let c = &n.counters;
                ui.label(&n.name);
                let state = c.state.as_str();
                match &c.error {
                    Some(e) => ui.label(RichText::new(format!("{state}: {e}")).color(theme::ERROR)),
                    None => ui.label(state),
                };
                figure(ui, rate(n.rates.received), RATE);
                figure(ui, rate(n.rates.sent), RATE);
                figure(ui, c.received.to_string(), COUNT);
                figure(ui, c.sent.to_string(), COUNT);
                figure(ui, c.dropped.to_string(), COUNT);
                figure(ui, c.failed.to_string(), COUNT);
                ui.end_row();
            }
        });
}

/// The edges' figures: the rows of `rows` (row 0 is the header, row `i` edge `i - 1`).
fn edges_table(ui: &mut Ui, s: &crate::session::Shared, rows: std::ops::Range<usize>) {
    let Some(stats) = &s.stats else {
        ui.label(RichText::new("waiting for the first figures…").color(theme::WEAK));
        return;
    };
    egui::Grid::new("live-edges")
        .striped(true)
        .num_columns(5)
        .show(ui, |ui| {
            if rows.contains(&0) {
                ui.label(RichText::new("edge").strong());
                figure(ui, RichText::new("queued").strong(), QUEUED);
                ui.label(RichText::new("fill").strong());
                figure(ui, RichText::new("sent/s").strong(), RATE);
                figure(ui, RichText::new("sent").strong(), COUNT);
                ui.end_row();
            }
            for e in in_view(&stats.edges, &rows) {
                ui.label(e.info.label());
                figure(
                    ui,
                    format!("{}/{}", e.counters.records, e.info.max_records),
                    QUEUED,
                );
                let fill = e.fill.clamp(0.0, 1.0) as f32;
                ui.horizontal(|ui| {
                    let (rect, _) =
                        ui.allocate_exact_size(egui::vec2(110.0, 8.0), egui::Sense::hover());
                    let p = ui.painter();
                    p.rect_filled(rect, 3.0, Color32::from_rgb(0x3a, 0x3f, 0x4a));
                    if fill > 0.0 {
                        let w = (rect.width() * fill).max(3.0);
                        let bar = egui::Rect::from_min_size(rect.min, egui::vec2(w, rect.height()));
                        p.rect_filled(bar, 3.0, fill_color(fill));
                    }
                    figure(ui, format!("{:.0}%", e.fill * 100.0), PERCENT);
                });
                figure(ui, rate(e.rates.sent), RATE);
                figure(ui, e.counters.sent.to_string(), COUNT);
                ui.end_row();
            }
        });
}

/// Widths of the live tables' figures (they fit a rate like `123.4k/s`, a count of
/// 10,000,000,000, a queue of `100000/100000`, `100%`).
const RATE: f32 = 64.0;
const COUNT: f32 = 80.0;
const QUEUED: f32 = 96.0;
const PERCENT: f32 = 36.0;

/// A figure in a table cell of its own width at least, right-aligned: a figure that changes
/// leaves its column's width as it was. (A grid whose columns change width asks for a frame
/// more, to lay itself out again: with figures of changing widths, nearly two frames per
/// stats update instead of one.)
fn figure(ui: &mut Ui, text: impl Into<egui::WidgetText>, width: f32) {
    ui.allocate_ui_with_layout(
        egui::vec2(width, ui.spacing().interact_size.y),
        egui::Layout::right_to_left(egui::Align::Center),
        |ui| {
            ui.set_min_width(width);
            ui.label(text);
        },
    );
}

/// The items of table rows `rows`, whose row 0 is the header.
fn in_view<'a, T>(items: &'a [T], rows: &std::ops::Range<usize>) -> &'a [T] {
    let start = rows.start.saturating_sub(1).min(items.len());
    let end = rows.end.saturating_sub(1).clamp(start, items.len());
    &items[start..end]
}

fn summary(ui: &mut Ui, s: &crate::session::Shared) {
    if let Some(e) = &s.exit {
        ui.label(format!("flow {e}"));
    }
    match (&s.report, &s.stats) {
        (Some(r), _) => {
            egui::Grid::new("summary").striped(true).show(ui, |ui| {
                for h in ["node", "in", "out", "dropped", "failed"] {
                    ui.label(RichText::new(h).strong());
                }
                ui.end_row();
                for n in &r.nodes {
                    let c = &n.counters;
                    ui.label(&n.name);
                    ui.label(c.received.to_string());
                    ui.label(c.sent.to_string());
                    ui.label(c.dropped.to_string());
                    ui.label(c.failed.to_string());
                    ui.end_row();
                }
            });
            ui.label(format!("in {:.2}s", r.elapsed_secs));
            for e in &r.errors {
                ui.label(RichText::new(format!("✖ {e}")).color(theme::ERROR));
            }
        }
        (None, Some(st)) if st.finished => {
            ui.label("the flow has ended; its last figures:");
            nodes_table(ui, s, 0..usize::MAX);
        }
        _ => {
            ui.label(RichText::new("the summary shows once the flow has ended").color(theme::WEAK));
        }
    }
}

/// Whether the running flow (`/api/v1/flow`) has the open file's processors (name and type)
/// and connections.
pub fn same_graph(info: &FlowInfo, graph: &FlowGraph) -> bool {
    let running: BTreeSet<(String, String)> = info
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.type_name.clone()))
        .collect();
    let open: BTreeSet<(String, String)> = graph
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.type_name.clone().unwrap_or_default()))
        .collect();
    let running_edges: BTreeSet<String> = info.edges.iter().map(|e| e.label()).collect();
    let open_edges: BTreeSet<String> = graph.edges.iter().map(|e| graph.edge_label(e)).collect();
    running == open && running_edges == open_edges
}

/// A flow file for the running graph: its processors with their config as the API shows it
/// (secrets redacted), its connections with their thresholds. Values are JSON (YAML's flow
/// style); a literal `${` is escaped.
pub fn flow_yaml(info: &FlowInfo) -> String {
    use std::fmt::Write as _;
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = format!("name: {}\n", q(&info.name));
    if let Some(d) = &info.description {
        let _ = writeln!(out, "description: {}", q(d));
    }
    out.push_str("processors:\n");
    for n in &info.nodes {
        let mut body = serde_json::Map::new();
        body.insert(
            "type".into(),
            serde_json::Value::String(n.type_name.clone()),
        );
        if let serde_json::Value::Object(c) = &n.config {
            for (k, v) in c {
                body.insert(k.clone(), v.clone());
            }
        }
        let body = serde_json::to_string(&body).unwrap_or_default();
        let _ = writeln!(out, "  {}: {}", q(&n.name), body.replace("${", "$${"));
    }
    out.push_str("connections:\n");
    for e in &info.edges {
        let mut c = serde_json::Map::new();
        c.insert("from".into(), format!("{}.{}", e.from, e.port).into());
        c.insert("to".into(), e.to.clone().into());
        if e.max_records != flow_core::spec::DEFAULT_MAX_RECORDS {
            c.insert("max_records".into(), e.max_records.into());
        }
        if let Ok(w) = serde_json::to_value(e.when_full)
            && w != "block"
        {
            c.insert("when_full".into(), w);
        }
        let _ = writeln!(out, "  - {}", serde_json::to_string(&c).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(1_732_300_001_510), "18:26:41.510");
    }
}
