//! The designer's window: a menu and tool bar, the palette on the left, the canvas in the
//! middle, the inspector on the right, problems at the bottom; files, shortcuts, the prompt
//! for unsaved changes and the offer to reload a file changed on disk.

use std::path::{Path, PathBuf};

use egui::{Color32, Key, KeyboardShortcut, Modifiers, RichText, Ui};
use egui_file_dialog::FileDialog;

use crate::state::{Designer, Notice};
use crate::theme;
use crate::views::{Canvas, Inspector, LiveView, Palette, Problems};

/// What to do once unsaved changes are dealt with.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Then {
    New,
    Open(PathBuf),
    Browse,
    Quit,
}

/// Why the file dialog is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialog {
    Open,
    SaveAs,
}

/// The designer application.
pub struct DesignerApp {
    /// The state being edited.
    pub designer: Designer,
    /// The canvas.
    pub canvas: Canvas,
    /// The palette.
    pub palette: Palette,
    /// The inspector.
    pub inspector: Inspector,
    /// The problems list.
    pub problems: Problems,
    /// Running and watching the flow.
    pub live: LiveView,
    find: Option<String>,
    find_focus: bool,
    file_dialog: FileDialog,
    dialog: Option<Dialog>,
    after_save: Option<Then>,
    unsaved_prompt: Option<Then>,
    /// Set once the user agreed to close: the next close request goes through.
    closing: bool,
    last_disk_check: f64,
    disk_changed: bool,
    /// The window title last set.
    title: Option<String>,
    /// `FLOW_DESIGNER_TRACE_FRAMES` is set: each frame says on stderr why it was drawn.
    trace_frames: bool,
    /// How long the frame before took (eframe's measure: the egui pass, tessellation and
    /// the GL calls, not the wait in swap_buffers), for the trace.
    last_frame_secs: Option<f32>,
    /// The window is cleared to the panels' colour before each frame (eframe does it, see
    /// `clear_color`), so the panels are drawn without a background of their own. A host that
    /// does not clear (the tests' renderer) gets the background painted.
    cleared: bool,
}

impl DesignerApp {
    /// The app around `designer`.
    pub fn new(designer: Designer) -> Self {
        Self {
            designer,
            canvas: Canvas::new(),
            palette: Palette::default(),
            inspector: Inspector::default(),
            problems: Problems::default(),
            live: LiveView::default(),
            find: None,
            find_focus: false,
            file_dialog: FileDialog::new()
                .add_file_filter_extensions("flow files", vec!["yaml", "yml"])
                .default_file_filter("flow files")
                .add_save_extension("YAML", "yaml")
                .default_save_extension("YAML"),
            dialog: None,
            after_save: None,
            unsaved_prompt: None,
            closing: false,
            last_disk_check: 0.0,
            disk_changed: false,
            title: None,
            trace_frames: std::env::var_os("FLOW_DESIGNER_TRACE_FRAMES").is_some(),
            last_frame_secs: None,
            cleared: false,
        }
    }

    /// Whether a prompt about unsaved changes is showing.
    pub fn prompting(&self) -> bool {
        self.unsaved_prompt.is_some()
    }

    /// Open `path`, asking first if there are unsaved changes.
    pub fn open(&mut self, path: &Path) {
        self.then(Then::Open(path.to_owned()));
    }

    /// Do `next` now, or ask about unsaved changes first.
    fn then(&mut self, next: Then) {
        if self.designer.is_dirty() {
            self.unsaved_prompt = Some(next);
        } else {
            self.proceed(next);
        }
    }

    fn proceed(&mut self, next: Then) {
        match next {
            Then::New => {
                self.designer.new_flow();
                self.canvas.fit();
            }
            Then::Open(path) => {
                if let Err(e) = self.designer.open(&path) {
                    self.designer.notice = Some(Notice::Error(e));
                }
                self.canvas.fit();
            }
            Then::Browse => {
                self.dialog = Some(Dialog::Open);
                self.file_dialog.pick_file();
            }
            Then::Quit => self.closing = true,
        }
    }

    fn save(&mut self) -> bool {
        if self.designer.path().is_some() {
            match self.designer.save() {
                Ok(()) => true,
                Err(e) => {
                    self.designer.notice = Some(Notice::Error(e));
                    false
                }
            }
        } else {
            self.save_as();
            false
        }
    }

    fn save_as(&mut self) {
        self.dialog = Some(Dialog::SaveAs);
        self.file_dialog.save_file();
    }

    /// Copy the selection to the clipboard as flow YAML.
    fn copy(&mut self, ui: &Ui) {
        if let Some(text) = self.designer.copy() {
            ui.ctx().copy_text(text);
        }
    }

    /// The whole window for one frame.
    pub fn ui(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        if self.trace_frames {
            // Why this frame was drawn (`FLOW_DESIGNER_TRACE_FRAMES=1`): to find what wakes
            // an idle designer.
            let causes: Vec<String> = ctx.repaint_causes().iter().map(|c| c.to_string()).collect();
            // And how long the one before took (`bench/designer.sh` reads its percentiles).
            let took = self.last_frame_secs.map_or_else(String::new, |s| {
                format!(" (previous took {:.3} ms)", s * 1000.0)
            });
            eprintln!(
                "frame {} at {:.3}s{took}: {}",
                ctx.cumulative_frame_nr(),
                ctx.input(|i| i.time),
                causes.join(", ")
            );
        }
        ctx.set_visuals(theme::visuals());
        if !self.cleared {
            // On the background layer: the root `ui`'s painter is clipped inside its margin.
            ctx.layer_painter(egui::LayerId::background()).rect_filled(
                ctx.content_rect(),
                0.0,
                theme::PANEL_FILL,
            );
        }
        self.shortcuts(ui);
        self.watch_disk(&ctx);
        self.live.update(&mut self.canvas, &mut self.designer);

        // The panels draw no background: the window's is theirs. Every pixel of a background
        // is work for a software renderer (llvmpipe) on each frame.
        let panel = egui::Frame::side_top_panel(ui.style()).fill(Color32::TRANSPARENT);
        egui::Panel::top("menu").frame(panel).show(ui, |ui| {
            egui::MenuBar::new().ui(ui, |ui| self.menu(ui));
        });
        egui::Panel::top("toolbar")
            .frame(panel)
            .show(ui, |ui| self.toolbar(ui));
        egui::Panel::bottom("status")
            .frame(panel)
            .exact_size(24.0)
            .show(ui, |ui| self.status(ui));
        if self.live.active() {
            egui::Panel::bottom("live")
                .frame(panel)
                .resizable(true)
                .default_size(190.0)
                .min_size(80.0)
                .show(ui, |ui| self.live.panel(ui));
        }
        egui::Panel::bottom("problems")
            .frame(panel)
            .resizable(true)
            .default_size(92.0)
            .min_size(48.0)
            .show(ui, |ui| self.problems.ui(ui, &mut self.designer));
        egui::Panel::left("palette")
            .frame(panel)
            .resizable(true)
            .default_size(228.0)
            .min_size(180.0)
            .show(ui, |ui| self.palette.ui(ui, &self.designer));
        egui::Panel::right("inspector")
            .frame(panel)
            .resizable(true)
            .default_size(330.0)
            .min_size(240.0)
            .show(ui, |ui| self.inspector.ui(ui, &mut self.designer));
        egui::CentralPanel::default()
            .frame(egui::Frame::new().fill(theme::CANVAS))
            .show(ui, |ui| self.canvas.ui(ui, &mut self.designer));

        if let Some(t) = self.palette.chosen.take() {
            let at = self.canvas.free_spot(&self.designer, self.canvas.center());
            if let Some(name) = self.designer.add_processor(&t, at) {
                self.canvas.focus(&name);
            }
        }
        for focus in [self.problems.focus.take(), self.inspector.focus.take()]
            .into_iter()
            .flatten()
        {
            self.canvas.focus(&focus);
        }
        self.dialogs(&ctx);
        // Only when it changes: a viewport command asks for another frame, and one each frame
        // would repaint the window without end (a core busy for nothing).
        let title = self.designer.title();
        if self.title.as_deref() != Some(title.as_str()) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = Some(title);
        }
    }

    /// Ask before the window closes with unsaved changes.
    pub fn on_close_request(&mut self, ctx: &egui::Context) {
        if ctx.input(|i| i.viewport().close_requested()) && !self.closing {
            if self.designer.is_dirty() {
                ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
                self.unsaved_prompt = Some(Then::Quit);
            } else {
                self.closing = true;
            }
        }
        if self.closing {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    fn shortcuts(&mut self, ui: &mut Ui) {
        let shortcut = |ui: &mut Ui, m: Modifiers, k: Key| {
            ui.input_mut(|i| i.consume_shortcut(&KeyboardShortcut::new(m, k)))
        };
        let typing = ui.ctx().egui_wants_keyboard_input();
        if shortcut(ui, Modifiers::COMMAND, Key::S) {
            self.save();
        }
        if shortcut(ui, Modifiers::COMMAND | Modifiers::SHIFT, Key::S) {
            self.save_as();
        }
        if shortcut(ui, Modifiers::COMMAND, Key::O) {
            self.then(Then::Browse);
        }
        if shortcut(ui, Modifiers::COMMAND, Key::N) {
            self.then(Then::New);
        }
        if shortcut(ui, Modifiers::COMMAND, Key::F) {
            self.find = Some(self.find.take().unwrap_or_default());
            self.find_focus = true;
        }
        if typing {
            return;
        }
        if shortcut(ui, Modifiers::COMMAND | Modifiers::SHIFT, Key::Z)
            || shortcut(ui, Modifiers::COMMAND, Key::Y)
        {
            self.designer.redo();
        }
        if shortcut(ui, Modifiers::COMMAND, Key::Z) {
            self.designer.undo();
        }
        if shortcut(ui, Modifiers::NONE, Key::Delete)
            || shortcut(ui, Modifiers::NONE, Key::Backspace)
        {
            self.designer.delete_selection();
        }
        if shortcut(ui, Modifiers::NONE, Key::F) || shortcut(ui, Modifiers::COMMAND, Key::Num0) {
            self.canvas.fit();
        }
        if shortcut(ui, Modifiers::COMMAND, Key::A) {
            let names = self
                .designer
                .graph()
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .collect();
            self.designer.selection = crate::state::Selection {
                nodes: names,
                edge: None,
            };
        }
        if shortcut(ui, Modifiers::NONE, Key::Escape) {
            self.designer.selection = Default::default();
        }
        // Copy and paste arrive as events (the platform's clipboard shortcuts).
        let events = ui.input(|i| i.events.clone());
        for e in events {
            match e {
                egui::Event::Copy => self.copy(ui),
                egui::Event::Cut => {
                    self.copy(ui);
                    self.designer.delete_selection();
                }
                egui::Event::Paste(text) => {
                    let at = ui
                        .input(|i| i.pointer.latest_pos())
                        .map(|p| self.canvas.to_graph(p))
                        .map(|p| [p.x, p.y]);
                    self.designer.paste(Some(&text), at);
                }
                _ => {}
            }
        }
    }

    fn watch_disk(&mut self, ctx: &egui::Context) {
        let now = ctx.input(|i| i.time);
        if now - self.last_disk_check > 1.0 {
            self.last_disk_check = now;
            self.disk_changed = self.designer.changed_on_disk();
        }
        // While stats stream in, each one repaints (once a second): a timer of its own would
        // double the frames.
        if !self.live.streaming() {
            ctx.request_repaint_after(std::time::Duration::from_secs(1));
        }
    }

    fn menu(&mut self, ui: &mut Ui) {
        ui.menu_button("File", |ui| {
            if ui
                .add(egui::Button::new("New").shortcut_text("Ctrl+N"))
                .clicked()
            {
                self.then(Then::New);
                ui.close();
            }
            if ui
                .add(egui::Button::new("Open…").shortcut_text("Ctrl+O"))
                .clicked()
            {
                self.then(Then::Browse);
                ui.close();
            }
            ui.menu_button("Open recent", |ui| {
                let recent = self.designer.recent().to_vec();
                if recent.is_empty() {
                    ui.label(RichText::new("nothing yet").color(theme::WEAK));
                }
                for p in recent {
                    if ui.button(p.display().to_string()).clicked() {
                        self.then(Then::Open(p));
                        ui.close();
                    }
                }
            });
            ui.separator();
            if ui
                .add(egui::Button::new("Save").shortcut_text("Ctrl+S"))
                .clicked()
            {
                self.save();
                ui.close();
            }
            if ui
                .add(egui::Button::new("Save as…").shortcut_text("Ctrl+Shift+S"))
                .clicked()
            {
                self.save_as();
                ui.close();
            }
            if ui
                .add_enabled(
                    self.designer.path().is_some(),
                    egui::Button::new("Reload from disk"),
                )
                .clicked()
            {
                self.reload();
                ui.close();
            }
            ui.separator();
            if ui.button("Quit").clicked() {
                self.then(Then::Quit);
                ui.close();
            }
        });
        ui.menu_button("Edit", |ui| {
            if ui
                .add_enabled(
                    self.designer.can_undo(),
                    egui::Button::new("Undo").shortcut_text("Ctrl+Z"),
                )
                .clicked()
            {
                self.designer.undo();
                ui.close();
            }
            if ui
                .add_enabled(
                    self.designer.can_redo(),
                    egui::Button::new("Redo").shortcut_text("Ctrl+Shift+Z"),
                )
                .clicked()
            {
                self.designer.redo();
                ui.close();
            }
            ui.separator();
            let any = !self.designer.selection.nodes.is_empty();
            if ui
                .add_enabled(any, egui::Button::new("Copy").shortcut_text("Ctrl+C"))
                .clicked()
            {
                self.copy(ui);
                ui.close();
            }
            if ui
                .add(egui::Button::new("Paste").shortcut_text("Ctrl+V"))
                .clicked()
            {
                self.designer.paste(None, None);
                ui.close();
            }
            if ui
                .add_enabled(
                    !self.designer.selection.is_empty(),
                    egui::Button::new("Delete").shortcut_text("Del"),
                )
                .clicked()
            {
                self.designer.delete_selection();
                ui.close();
            }
            ui.separator();
            if ui
                .add(egui::Button::new("Find processor…").shortcut_text("Ctrl+F"))
                .clicked()
            {
                self.find = Some(String::new());
                self.find_focus = true;
                ui.close();
            }
        });
        ui.menu_button("View", |ui| {
            if ui
                .add(egui::Button::new("Fit to window").shortcut_text("F"))
                .clicked()
            {
                self.canvas.fit();
                ui.close();
            }
            if ui.button("Zoom in").clicked() {
                self.canvas.zoom_by(1.25);
                ui.close();
            }
            if ui.button("Zoom out").clicked() {
                self.canvas.zoom_by(0.8);
                ui.close();
            }
        });
    }

    fn reload(&mut self) {
        if let Err(e) = self.designer.reload() {
            self.designer.notice = Some(Notice::Error(e));
        }
        self.disk_changed = false;
    }

    fn toolbar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.add_space(2.0);
            match self.designer.path() {
                Some(p) => {
                    let name = p
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                    // The folder's name (the full path is on hover): short, and the same on
                    // every machine, so snapshot images do not depend on where the repo is.
                    let dir = p
                        .parent()
                        .and_then(|d| d.file_name())
                        .map_or_else(String::new, |d| format!("in {}", d.to_string_lossy()));
                    ui.label(RichText::new(name).strong())
                        .on_hover_text(p.display().to_string());
                    ui.label(RichText::new(dir).size(12.0).color(theme::WEAK));
                }
                None => {
                    ui.label(RichText::new("untitled").strong());
                    ui.label(RichText::new("not saved yet").size(12.0).color(theme::WEAK));
                }
            }
            if self.designer.is_dirty() {
                ui.label(RichText::new("● modified").color(theme::WARNING).size(12.0));
            }
            ui.separator();
            if ui
                .add_enabled(self.designer.can_undo(), egui::Button::new("Undo"))
                .clicked()
            {
                self.designer.undo();
            }
            if ui
                .add_enabled(self.designer.can_redo(), egui::Button::new("Redo"))
                .clicked()
            {
                self.designer.redo();
            }
            ui.separator();
            if ui
                .button("Fit")
                .on_hover_text("Fit the flow to the window (F)")
                .clicked()
            {
                self.canvas.fit();
            }
            if ui.button("−").on_hover_text("Zoom out").clicked() {
                self.canvas.zoom_by(0.8);
            }
            ui.label(
                RichText::new(format!("{:.0}%", self.canvas.scale() * 100.0))
                    .size(12.0)
                    .color(theme::WEAK),
            );
            if ui.button("+").on_hover_text("Zoom in").clicked() {
                self.canvas.zoom_by(1.25);
            }
            ui.separator();
            self.live.toolbar(ui, &mut self.designer);
            ui.separator();
            if let Some(query) = &mut self.find {
                let find_label = ui.label("Find").id;
                let r = ui
                    .add(
                        egui::TextEdit::singleline(query)
                            .hint_text("Find a processor (Enter: next)")
                            .desired_width(200.0),
                    )
                    .labelled_by(find_label);
                if std::mem::take(&mut self.find_focus) {
                    r.request_focus();
                }
                let matches = self.designer.find(query);
                if !query.is_empty() {
                    ui.label(
                        RichText::new(format!("{} found", matches.len()))
                            .size(12.0)
                            .color(theme::WEAK),
                    );
                }
                let next =
                    r.changed() || (r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)));
                if next && !matches.is_empty() && !query.is_empty() {
                    let current = self.designer.selection.single().map(str::to_owned);
                    let i = current
                        .and_then(|c| matches.iter().position(|m| *m == c))
                        .map_or(0, |i| {
                            if r.changed() {
                                i
                            } else {
                                (i + 1) % matches.len()
                            }
                        });
                    let name = matches[i].clone();
                    self.designer.select_node(&name, false);
                    self.canvas.focus(&name);
                    if !r.changed() {
                        r.request_focus();
                    }
                }
                if ui.small_button("×").clicked() || ui.input(|i| i.key_pressed(Key::Escape)) {
                    self.find = None;
                }
            }
        });
    }

    fn status(&mut self, ui: &mut Ui) {
        ui.horizontal_centered(|ui| {
            if self.disk_changed {
                ui.label(RichText::new("The file changed on disk.").color(theme::WARNING));
                if ui.button("Reload").clicked() {
                    self.reload();
                }
                if ui.button("Keep mine").clicked() {
                    self.designer.ignore_disk_change();
                    self.disk_changed = false;
                }
                ui.separator();
            }
            match &self.designer.notice {
                Some(Notice::Error(e)) => {
                    ui.label(RichText::new(format!("✖ {e}")).color(theme::ERROR));
                }
                Some(Notice::Info(i)) => {
                    ui.label(RichText::new(i).color(theme::WEAK));
                }
                None => {
                    ui.label(
                        RichText::new(
                            "Drag from an output to a node to connect · right-click a wire to select it · Shift+drag to select several · Del deletes",
                        )
                        .color(theme::WEAK)
                        .size(12.0),
                    );
                }
            }
        });
    }

    fn dialogs(&mut self, ctx: &egui::Context) {
        self.live.dialogs(ctx, &mut self.designer);
        self.file_dialog.update(ctx);
        if let Some(path) = self.file_dialog.take_picked() {
            match self.dialog.take() {
                Some(Dialog::Open) => self.proceed(Then::Open(path)),
                Some(Dialog::SaveAs) => match self.designer.save_as(&path) {
                    Ok(()) => {
                        if let Some(next) = self.after_save.take() {
                            self.proceed(next);
                        }
                    }
                    Err(e) => self.designer.notice = Some(Notice::Error(e)),
                },
                None => {}
            }
        }
        if let Some(next) = self.unsaved_prompt.clone() {
            let mut answer = None;
            egui::Modal::new(egui::Id::new("unsaved")).show(ctx, |ui| {
                ui.set_width(380.0);
                ui.label(RichText::new("Save changes?").strong().size(16.0));
                ui.add_space(4.0);
                ui.label(format!(
                    "{} has changes that are not saved.",
                    self.designer
                        .path()
                        .and_then(|p| p.file_name())
                        .map_or_else(
                            || "This new flow".to_owned(),
                            |n| format!("`{}`", n.to_string_lossy())
                        )
                ));
                ui.add_space(10.0);
                ui.horizontal(|ui| {
                    if ui.button("Save").clicked() {
                        answer = Some(0);
                    }
                    if ui.button("Don't save").clicked() {
                        answer = Some(1);
                    }
                    if ui.button("Cancel").clicked() {
                        answer = Some(2);
                    }
                });
            });
            match answer {
                Some(0) => {
                    self.unsaved_prompt = None;
                    if self.designer.path().is_some() {
                        if self.save() {
                            self.proceed(next);
                        }
                    } else {
                        self.after_save = Some(next);
                        self.save_as();
                    }
                }
                Some(1) => {
                    self.unsaved_prompt = None;
                    self.proceed(next);
                }
                Some(_) => self.unsaved_prompt = None,
                None => {}
            }
        }
    }
}

impl eframe::App for DesignerApp {
    fn clear_color(&self, _visuals: &egui::Visuals) -> [f32; 4] {
        theme::PANEL_FILL.to_normalized_gamma_f32()
    }

    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.on_close_request(ctx);
    }

    fn ui(&mut self, ui: &mut Ui, frame: &mut eframe::Frame) {
        self.last_frame_secs = frame.info().cpu_usage;
        self.cleared = true;
        DesignerApp::ui(self, ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, "recent", &self.designer.recent().to_vec());
    }
}
