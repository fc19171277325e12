//! The canvas: the flow drawn with `egui-snarl`, nodes coloured by kind with their real
//! ports, wires between ports. Dragging moves nodes (written to `layout:` when the drag
//! ends), dragging from an output to a node connects, right-click on a wire selects it,
//! Shift+drag selects several nodes, scroll and Ctrl+scroll pan and zoom.
//!
//! The canvas owns no flow: it mirrors [`Designer::graph`] into a `Snarl` after each change
//! and turns what the user does into [`Designer`] operations.

use std::collections::{HashMap, HashSet};

use egui::emath::TSTransform;
use egui::{
    Align, Color32, CornerRadius, Frame, Id, LayerId, Layout, Margin, Pos2, Rect, RichText, Shadow,
    Stroke, Ui, Vec2, pos2, vec2,
};
use egui_snarl::ui::{
    AnyPins, BackgroundPattern, NodeLayout, NodeLayoutKind, PinInfo, PinPlacement, PinWireInfo,
    SelectionStyle, SnarlPin, SnarlStyle, SnarlViewer, SnarlWidget, WireStyle,
};
use egui_snarl::{InPin, InPinId, NodeId, OutPin, OutPinId, Snarl};
use flow_core::processor::Kind;
use flow_core::runtime::metrics::NodeState;
use flow_core::spec::Severity;

use crate::live::{LiveStats, count, fill_color, rate};
use crate::state::{Designer, Notice};
use crate::theme;

/// The id of the canvas widget (its selection and view live in egui's memory under it).
pub const CANVAS_ID: &str = "flow-canvas";

/// Below this zoom a node's text would be under 5 px high: nodes are drawn without it, in the
/// same size (so nothing moves when zooming across it), which is most of a large flow's frame
/// at its fit (a 500-node flow fits at 0.1). Nodes out of view are drawn without text too.
const TEXT_MIN_SCALE: f32 = 0.45;

/// Below this zoom a node's rounded corners, its shadow and its round pins are under 2 px:
/// they are drawn plain (square corners, no shadow, square pins), in the same places and
/// colours. A software renderer (Mesa's llvmpipe, on a desktop without a GPU) pays for every
/// triangle: at a 500-node flow's fit, round pins were half of a frame's 40,000.
const PLAIN_MIN_SCALE: f32 = 0.25;

/// The background grid's spacing at zoom `scale`: 24 points, doubled until its lines are at
/// least 12 pixels apart. A 500-node flow fits at 10 %, where a 24-point grid was a line every
/// 2.4 pixels: some 1,000 lines to draw on each frame, which cost more than the flow.
fn grid_spacing(scale: f32) -> f32 {
    let mut spacing = 24.0;
    while spacing * scale < 12.0 && spacing < 24.0 * 64.0 {
        spacing *= 2.0;
    }
    spacing
}

/// The height of a line of text of `size` points: what a label of it takes.
fn line_height(ui: &Ui, size: f32) -> f32 {
    ui.ctx()
        .fonts_mut(|f| f.row_height(&egui::FontId::proportional(size)))
}

/// The room a line of text of `size` would take, `width` wide, without laying it out; with a
/// colour, a bar where its text would be (a warning seen at any zoom).
fn text_room(ui: &mut Ui, width: f32, size: f32, mark: Option<Color32>) {
    let (rect, _) =
        ui.allocate_exact_size(vec2(width, line_height(ui, size)), egui::Sense::hover());
    if let Some(color) = mark {
        ui.painter()
            .rect_filled(rect.shrink2(vec2(0.0, rect.height() * 0.3)), 2.0, color);
    }
}

/// An edge's fill bar: the track, and over it the fill from the left (at least `min` wide),
/// green / yellow / red by fill ratio.
fn fill_bar(painter: &egui::Painter, track: Rect, radius: f32, fill: f32, min: f32) {
    painter.rect_filled(track, radius, Color32::from_rgb(0x3a, 0x3f, 0x4a));
    if fill > 0.0 {
        let bar = Rect::from_min_size(
            track.min,
            vec2((track.width() * fill).max(min), track.height()),
        );
        painter.rect_filled(bar, radius, fill_color(fill));
    }
}

/// A port's pin: egui-snarl's circle, or below [`PLAIN_MIN_SCALE`] a square of its colour
/// without an outline (two triangles; a circle with its outline is a dozen).
enum CanvasPin {
    Round(PinInfo),
    Square { fill: Color32, wire: Color32 },
}

impl CanvasPin {
    fn new(plain: bool, fill: Color32, wire: Color32) -> Self {
        if plain {
            Self::Square { fill, wire }
        } else {
            Self::Round(
                PinInfo::circle()
                    .with_fill(fill)
                    .with_stroke(Stroke::new(1.5, theme::NODE_FILL))
                    .with_wire_color(wire),
            )
        }
    }
}

impl SnarlPin for CanvasPin {
    fn draw(
        self,
        snarl_style: &SnarlStyle,
        style: &egui::Style,
        rect: Rect,
        painter: &egui::Painter,
    ) -> PinWireInfo {
        match self {
            Self::Round(info) => info.draw(snarl_style, style, rect, painter),
            Self::Square { fill, wire } => {
                // The circle's area: a side of 0.89 of its diameter.
                let side = rect.width().min(rect.height()) * 0.89;
                let mut mesh = egui::Mesh::default();
                mesh.add_colored_rect(
                    Rect::from_center_size(rect.center(), Vec2::splat(side)),
                    fill,
                );
                painter.add(mesh);
                PinWireInfo {
                    color: wire,
                    style: snarl_style.wire_style.unwrap_or(WireStyle::Bezier5),
                }
            }
        }
    }
}

/// A node as the snarl holds it: the processor's name and its index in the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanvasNode {
    /// The processor's name.
    pub name: String,
    /// Its index in [`crate::graph::FlowGraph::nodes`].
    pub index: usize,
}

/// What the user did on the canvas this frame.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Connect {
        from: usize,
        port: usize,
        to: usize,
    },
    SelectEdge(usize),
    SelectNode {
        name: String,
        add: bool,
    },
    Delete(String),
    Duplicate(String),
    Add {
        type_name: String,
        pos: Pos2,
        from: Option<(usize, usize)>,
    },
}

/// Where things were drawn this frame, in graph coordinates.
#[derive(Default)]
struct Drawn {
    nodes: HashMap<usize, Rect>,
    inputs: HashMap<usize, f32>,
    outputs: HashMap<(usize, usize), f32>,
}

/// The canvas view.
pub struct Canvas {
    snarl: Snarl<CanvasNode>,
    ids: Vec<NodeId>,
    generation: Option<u64>,
    revision: Option<u64>,
    fit: bool,
    /// The pending fit is the second one, with drawn sizes.
    fit_again: bool,
    focus: Option<String>,
    zoom: Option<f32>,
    to_global: TSTransform,
    rect: Rect,
    drawn: Drawn,
    snarl_selection: Vec<NodeId>,
    /// Live figures of a running flow, drawn over nodes and edges when set.
    pub live: Option<Box<dyn LiveStats>>,
}

impl Default for Canvas {
    fn default() -> Self {
        Self::new()
    }
}

impl Canvas {
    /// An empty canvas.
    pub fn new() -> Self {
        Self {
            snarl: Snarl::new(),
            ids: Vec::new(),
            generation: None,
            revision: None,
            fit: true,
            fit_again: false,
            focus: None,
            zoom: None,
            to_global: TSTransform::IDENTITY,
            rect: Rect::NOTHING,
            drawn: Drawn::default(),
            snarl_selection: Vec::new(),
            live: None,
        }
    }

    /// Fit the whole flow in the canvas on the next frame.
    pub fn fit(&mut self) {
        self.fit = true;
    }

    /// Centre the canvas on processor `name` on the next frame.
    pub fn focus(&mut self, name: &str) {
        self.focus = Some(name.to_owned());
    }

    /// Zoom in (`factor` > 1) or out around the centre.
    pub fn zoom_by(&mut self, factor: f32) {
        self.zoom = Some(self.zoom.unwrap_or(1.0) * factor);
    }

    /// Where the canvas is on the screen (between the side panels).
    pub fn rect(&self) -> Rect {
        self.rect
    }

    /// The current zoom level.
    pub fn scale(&self) -> f32 {
        self.to_global.scaling
    }

    /// The graph position at the centre of the canvas (where a double-clicked palette entry
    /// lands).
    pub fn center(&self) -> [f32; 2] {
        if !self.rect.is_finite() || !self.rect.is_positive() {
            return [0.0, 0.0];
        }
        let p = self.to_global.inverse() * self.rect.center();
        [p.x - 95.0, p.y - 40.0]
    }

    /// A place near `want` (graph coordinates) where a new node overlaps none drawn.
    pub fn free_spot(&self, designer: &Designer, want: [f32; 2]) -> [f32; 2] {
        let taken: Vec<Rect> = designer
            .graph()
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                self.drawn.nodes.get(&i).copied().unwrap_or_else(|| {
                    let s = crate::layout::node_size(n);
                    Rect::from_min_size(pos2(n.pos[0], n.pos[1]), vec2(s[0], s[1]))
                })
            })
            .collect();
        let size = vec2(200.0, 110.0);
        let mut candidates: Vec<(f32, [f32; 2])> = Vec::new();
        for gx in -6i32..=6 {
            for gy in -8i32..=8 {
                let p = [want[0] + gx as f32 * 120.0, want[1] + gy as f32 * 70.0];
                let d = (gx * gx * 4 + gy * gy) as f32;
                candidates.push((d, p));
            }
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        candidates
            .into_iter()
            .map(|(_, p)| p)
            .find(|p| {
                let r = Rect::from_min_size(pos2(p[0], p[1]), size).expand(16.0);
                taken.iter().all(|t| !t.intersects(r))
            })
            .unwrap_or(want)
    }

    /// Where `screen` is on the canvas, in graph coordinates.
    pub fn to_graph(&self, screen: Pos2) -> Pos2 {
        self.to_global.inverse() * screen
    }

    /// Where the node `name` was drawn last, in screen coordinates.
    pub fn node_rect(&self, designer: &Designer, name: &str) -> Option<Rect> {
        let i = designer.graph().find(name)?;
        self.drawn.nodes.get(&i).map(|r| self.to_global * *r)
    }

    /// Where the output `port` of `name` and the input of nodes are drawn, in screen
    /// coordinates (tests drag between them).
    pub fn pin_pos(&self, designer: &Designer, name: &str, port: Option<&str>) -> Option<Pos2> {
        let i = designer.graph().find(name)?;
        let rect = self.drawn.nodes.get(&i)?;
        let p = match port {
            Some(port) => {
                let p = designer.graph().nodes[i].port(port)?;
                pos2(rect.right(), *self.drawn.outputs.get(&(i, p))?)
            }
            None => pos2(rect.left(), *self.drawn.inputs.get(&i)?),
        };
        Some(self.to_global * p)
    }

    fn sync(&mut self, designer: &Designer) {
        let graph = designer.graph();
        if self.generation != Some(designer.generation()) {
            self.generation = Some(designer.generation());
            self.snarl = Snarl::new();
            self.ids.clear();
            self.fit = true;
        }
        // Keep nodes whose name survived (so a selection stays), add and remove the rest.
        let mut by_name: HashMap<String, NodeId> = self
            .snarl
            .node_ids()
            .map(|(id, n)| (n.name.clone(), id))
            .collect();
        self.ids.clear();
        for (i, n) in graph.nodes.iter().enumerate() {
            let pos = pos2(n.pos[0], n.pos[1]);
            let value = CanvasNode {
                name: n.name.clone(),
                index: i,
            };
            let id = match by_name.remove(&n.name) {
                Some(id) => {
                    if let Some(info) = self.snarl.get_node_info_mut(id) {
                        info.pos = pos;
                        info.value = value;
                    }
                    id
                }
                None => self.snarl.insert_node(pos, value),
            };
            self.ids.push(id);
        }
        for (_, id) in by_name {
            self.snarl.remove_node(id);
        }
        self.drawn.nodes.retain(|i, _| *i < graph.nodes.len());
        self.revision = Some(designer.revision());
        self.sync_wires(designer);
    }

    /// Make the snarl's wires exactly the flow's connections (the snarl also changes them on
    /// its own, e.g. Ctrl+drag from a pin).
    fn sync_wires(&mut self, designer: &Designer) {
        let want: HashSet<(OutPinId, InPinId)> = designer
            .graph()
            .edges
            .iter()
            .filter(|e| designer.graph().nodes[e.to].has_input())
            .map(|e| {
                (
                    OutPinId {
                        node: self.ids[e.from],
                        output: e.port,
                    },
                    InPinId {
                        node: self.ids[e.to],
                        input: 0,
                    },
                )
            })
            .collect();
        let have: HashSet<(OutPinId, InPinId)> = self.snarl.wires().collect();
        if want != have {
            for (o, i) in have.difference(&want) {
                self.snarl.disconnect(*o, *i);
            }
            for (o, i) in want.difference(&have) {
                self.snarl.connect(*o, *i);
            }
        }
    }

    /// The canvas' style at zoom `scale`.
    fn style(scale: f32) -> SnarlStyle {
        SnarlStyle {
            node_layout: Some(NodeLayout {
                kind: NodeLayoutKind::Coil,
                min_pin_row_height: 18.0,
                equal_pin_row_heights: false,
            }),
            node_frame: Some(node_frame(
                Stroke::new(1.0, theme::NODE_STROKE),
                scale < PLAIN_MIN_SCALE,
            )),
            header_frame: Some(Frame::new()),
            header_drag_space: Some(Vec2::ZERO),
            collapsible: Some(false),
            pin_size: Some(10.0),
            pin_placement: Some(PinPlacement::Edge),
            wire_width: Some(2.0),
            wire_frame_size: Some(48.0),
            wire_style: Some(WireStyle::Bezier5),
            // No fill: the central panel under the canvas has the canvas' colour already, and
            // a second layer of the whole canvas is work for a software renderer every frame.
            bg_frame: Some(Frame::new()),
            bg_pattern: Some(BackgroundPattern::grid(
                Vec2::splat(grid_spacing(scale)),
                0.0,
            )),
            bg_pattern_stroke: Some(Stroke::new(1.0, theme::GRID)),
            min_scale: Some(0.1),
            max_scale: Some(2.0),
            centering: Some(false),
            select_style: Some(SelectionStyle {
                margin: Margin::ZERO,
                rounding: CornerRadius::ZERO,
                fill: Color32::TRANSPARENT,
                stroke: Stroke::NONE,
            }),
            select_fill: Some(theme::SELECTED.gamma_multiply(0.12)),
            select_stoke: Some(Stroke::new(1.0, theme::SELECTED)),
            ..SnarlStyle::new()
        }
    }

    /// Draw the canvas and apply what the user did to `designer`.
    pub fn ui(&mut self, ui: &mut Ui, designer: &mut Designer) {
        if self.revision != Some(designer.revision())
            || self.generation != Some(designer.generation())
        {
            self.sync(designer);
        } else {
            self.sync_wires(designer);
        }
        self.rect = ui.available_rect_before_wrap();
        // A fit before every node was drawn once uses estimated sizes: it is done again on
        // the next frame with the drawn ones. One that cannot be done yet (no canvas) waits.
        let fit = std::mem::take(&mut self.fit);
        if fit {
            let estimated =
                (0..designer.graph().nodes.len()).any(|i| !self.drawn.nodes.contains_key(&i));
            let ready = self.rect.is_positive() && self.rect.is_finite();
            if !ready || (estimated && !self.fit_again) {
                self.fit = true;
                self.fit_again = ready;
            } else {
                self.fit_again = false;
            }
        }
        let widget = SnarlWidget::new()
            .id(Id::new(CANVAS_ID))
            .style(Self::style(self.to_global.scaling));
        let pointer = ui.input(|i| i.pointer.latest_pos());
        let mut viewer = Viewer {
            designer,
            actions: Vec::new(),
            drawn: Drawn::default(),
            live: self.live.as_deref(),
            view: ViewRequest {
                fit,
                focus: self.focus.take(),
                zoom: self.zoom.take(),
                rect: self.rect,
                previous: &self.drawn,
            },
            to_global: self.to_global,
            pointer,
        };
        let response = widget.show(&mut self.snarl, &mut viewer, ui);
        let Viewer {
            mut actions,
            drawn,
            to_global,
            ..
        } = viewer;
        self.drawn = drawn;
        self.to_global = to_global;

        let ctx = ui.ctx().clone();
        let from_global = self.to_global.inverse();
        let graph_pointer = pointer.map(|p| from_global * p);
        let hovered_node = graph_pointer.and_then(|p| {
            self.drawn
                .nodes
                .iter()
                .filter(|(_, r)| r.contains(p))
                .map(|(i, _)| *i)
                .max()
        });

        // Selection: a click on a node selects it (Shift or Ctrl adds); a rectangle drawn
        // with Shift selects what it covers; a click on the background clears.
        let (clicked, modifiers) = ctx.input(|i| (i.pointer.primary_clicked(), i.modifiers));
        if clicked && response.contains_pointer() {
            if let Some(i) = hovered_node {
                actions.push(Action::SelectNode {
                    name: designer.graph().nodes[i].name.clone(),
                    add: modifiers.shift || modifiers.command,
                });
            } else if response.clicked() {
                designer.selection = Default::default();
            }
        }
        let snarl_selection = egui_snarl::ui::get_selected_nodes(Id::new(CANVAS_ID), &ctx);
        if snarl_selection != self.snarl_selection {
            self.snarl_selection = snarl_selection.clone();
            if snarl_selection.len() > 1 {
                designer.selection.edge = None;
                designer.selection.nodes = snarl_selection
                    .iter()
                    .filter_map(|id| self.snarl.get_node(*id).map(|n| n.name.clone()))
                    .collect();
            }
        }

        // Edge handles: a dot at the middle of each wire, a label when the edge has its own
        // settings or live figures; a click selects the edge.
        self.edge_handles(ui, designer, &mut actions, clicked, graph_pointer);

        // Nodes moved: once the drag is over, every position goes to `layout:`.
        let dragging = ctx.input(|i| i.pointer.any_down());
        if !dragging {
            let moved: Vec<(String, [f32; 2])> = self
                .snarl
                .nodes_pos_ids()
                .filter_map(|(_, pos, n)| {
                    let g = designer.graph().nodes.get(n.index)?;
                    let far = (g.pos[0] - pos.x).abs() > 0.5 || (g.pos[1] - pos.y).abs() > 0.5;
                    far.then(|| (n.name.clone(), [pos.x, pos.y]))
                })
                .collect();
            if !moved.is_empty() {
                designer.move_nodes(&moved);
            }
        }

        // A processor dragged from the palette and dropped here.
        if let Some(p) = pointer
            && self.rect.contains(p)
            && ctx.input(|i| i.pointer.any_released())
            && let Some(payload) =
                egui::DragAndDrop::take_payload::<crate::views::PaletteDrag>(&ctx)
        {
            let at = from_global * p;
            actions.push(Action::Add {
                type_name: payload.type_name.clone(),
                pos: at,
                from: None,
            });
        }

        if designer.graph().nodes.is_empty() {
            let painter = ui.painter_at(self.rect);
            painter.text(
                self.rect.center(),
                egui::Align2::CENTER_CENTER,
                "Drag a processor from the palette, or double-click one",
                egui::FontId::proportional(15.0),
                theme::WEAK,
            );
        }

        for a in actions {
            self.apply(a, designer);
        }
        // A fit waiting for the drawn sizes is done on the next frame: ask for it (nothing
        // else may: a watched flow's stats ask for exactly one frame each).
        if self.fit {
            ctx.request_repaint();
        }
    }

    fn apply(&mut self, action: Action, designer: &mut Designer) {
        match action {
            Action::Connect { from, port, to } => {
                designer.connect(from, port, to);
            }
            Action::SelectEdge(i) => designer.select_edge(i),
            Action::SelectNode { name, add } => {
                if add && designer.selection.nodes.contains(&name) {
                    designer.selection.nodes.remove(&name);
                } else {
                    designer.select_node(&name, add);
                }
            }
            Action::Delete(name) => {
                designer.select_node(&name, false);
                designer.delete_selection();
            }
            Action::Duplicate(name) => {
                designer.select_node(&name, false);
                if let Some(text) = designer.copy() {
                    designer.paste(Some(&text), None);
                }
            }
            Action::Add {
                type_name,
                pos,
                from,
            } => {
                if let Some(name) = designer.add_processor(&type_name, [pos.x, pos.y])
                    && let Some((from, port)) = from
                    && let Some(to) = designer.graph().find(&name)
                {
                    designer.connect(from, port, to);
                    designer.select_node(&name, false);
                }
            }
        }
    }

    fn edge_handles(
        &self,
        ui: &Ui,
        designer: &Designer,
        actions: &mut Vec<Action>,
        clicked: bool,
        pointer: Option<Pos2>,
    ) {
        let graph = designer.graph();
        let layer = LayerId::new(ui.layer_id().order, Id::new("flow-canvas-handles"));
        let snarl_layer = LayerId::new(ui.layer_id().order, Id::new(CANVAS_ID));
        ui.ctx().set_sublayer(snarl_layer, layer);
        ui.ctx().set_transform_layer(layer, self.to_global);
        let painter = ui
            .ctx()
            .layer_painter(layer)
            .with_clip_rect(self.to_global.inverse() * self.rect);
        let mut hit: Option<usize> = None;
        // The part of the graph in view (graph coordinates), with room for a handle's box.
        let view = if self.rect.is_positive() {
            (self.to_global.inverse() * self.rect).expand(80.0)
        } else {
            Rect::EVERYTHING
        };
        // The worst finding of each edge, in one pass over the findings (not one per edge).
        let mut problems: HashMap<usize, Severity> = HashMap::new();
        for p in &designer.validation().problems {
            if let Some(i) = p.edge {
                let worst = problems.entry(i).or_insert(p.severity);
                *worst = (*worst).min(p.severity);
            }
        }
        for e in &graph.edges {
            let (Some(a), Some(b), Some(ya), Some(yb)) = (
                self.drawn.nodes.get(&e.from),
                self.drawn.nodes.get(&e.to),
                self.drawn.outputs.get(&(e.from, e.port)),
                self.drawn.inputs.get(&e.to),
            ) else {
                continue;
            };
            let mid = pos2((a.right() + b.left()) / 2.0, (ya + yb) / 2.0);
            if !view.contains(mid) {
                // Out of view: no label, stats or text layout for it (every edge had them on
                // every frame; at a 500-node flow's fit, most are out of view).
                continue;
            }
            let selected = designer.selection.edge == Some(e.index);
            let problem = problems.get(&e.index).copied();
            let label = graph.edge_label(e);
            let stats = self.live.as_ref().and_then(|l| l.edge(&label));
            let settings = designer
                .outline()
                .connections
                .get(e.index)
                .and_then(Option::as_ref)
                .filter(|_| e.custom)
                .map(|c| {
                    let mut parts = Vec::new();
                    if let Some(r) = &c.max_records {
                        parts.push(format!("max {r}"));
                    }
                    if let Some(b) = &c.max_bytes {
                        parts.push(format!("max {b}"));
                    }
                    if let Some(w) = &c.when_full {
                        parts.push(w.replace('_', " "));
                    }
                    parts.join(" · ")
                });
            let color = match problem {
                Some(Severity::Error) => theme::ERROR,
                Some(Severity::Warning) => theme::WARNING,
                None if selected => theme::SELECTED,
                None => Color32::from_rgb(0x8a, 0x93, 0xa3),
            };
            let text = match (stats, settings) {
                // Two short lines: the gap between layers is narrow.
                (Some(s), _) => Some(format!(
                    "{}\n{}/{}",
                    rate(s.per_s),
                    count(s.queued),
                    count(s.max_records)
                )),
                (None, Some(s)) if !s.is_empty() => Some(s),
                _ => None,
            };
            let scale = self.to_global.scaling;
            let rect = match (&text, stats) {
                (_, Some(s)) if scale < TEXT_MIN_SCALE => {
                    // Text too small to read: only the fill bar, 28 x 6 pixels whatever the
                    // zoom, outlined in the edge's colour.
                    let track = Rect::from_center_size(mid, vec2(28.0, 6.0) / scale);
                    fill_bar(&painter, track, 3.0, s.fill(), 2.0 / scale);
                    painter.rect_stroke(
                        track,
                        3.0,
                        Stroke::new(1.0 / scale, color),
                        egui::StrokeKind::Outside,
                    );
                    track
                }
                (Some(t), _) => {
                    let galley = painter.layout_no_wrap(
                        t.clone(),
                        egui::FontId::proportional(11.0),
                        theme::TEXT,
                    );
                    // Live: room under the text for the fill bar.
                    let extra = if stats.is_some() { 12.0 } else { 6.0 };
                    let r = Rect::from_center_size(mid, galley.size() + vec2(12.0, extra));
                    painter.rect(
                        r,
                        CornerRadius::same(8),
                        Color32::from_rgb(0x23, 0x27, 0x2f),
                        Stroke::new(if selected { 2.0 } else { 1.0 }, color),
                        egui::StrokeKind::Inside,
                    );
                    let mut text_at = r.center() - galley.size() / 2.0;
                    if let Some(s) = stats {
                        let track = Rect::from_min_size(
                            pos2(r.left() + 6.0, r.bottom() - 7.0),
                            vec2(r.width() - 12.0, 4.0),
                        );
                        fill_bar(&painter, track, 2.0, s.fill(), 2.0);
                        text_at.y = r.top() + 3.0;
                    }
                    painter.galley(text_at, galley, theme::TEXT);
                    r
                }
                (None, _) => {
                    let radius = if selected { 6.0 } else { 4.0 };
                    painter.circle(mid, radius, theme::CANVAS, Stroke::new(2.0, color));
                    Rect::from_center_size(mid, Vec2::splat(16.0))
                }
            };
            if clicked && pointer.is_some_and(|p| rect.expand(2.0).contains(p)) {
                hit = Some(e.index);
            }
        }
        if let Some(i) = hit {
            actions.push(Action::SelectEdge(i));
        }
    }
}

/// A node's frame; `plain` (below [`PLAIN_MIN_SCALE`]): square corners and no shadow.
fn node_frame(stroke: Stroke, plain: bool) -> Frame {
    let frame = Frame::new()
        .fill(theme::NODE_FILL)
        .stroke(stroke)
        .inner_margin(Margin::symmetric(0, 0));
    if plain {
        return frame;
    }
    frame.corner_radius(CornerRadius::same(7)).shadow(Shadow {
        offset: [0, 3],
        blur: 10,
        spread: 0,
        color: Color32::from_black_alpha(90),
    })
}

struct ViewRequest<'a> {
    fit: bool,
    focus: Option<String>,
    zoom: Option<f32>,
    rect: Rect,
    previous: &'a Drawn,
}

struct Viewer<'a> {
    designer: &'a Designer,
    actions: Vec<Action>,
    drawn: Drawn,
    live: Option<&'a dyn LiveStats>,
    view: ViewRequest<'a>,
    to_global: TSTransform,
    pointer: Option<Pos2>,
}

impl Viewer<'_> {
    fn node(&self, n: &CanvasNode) -> Option<&crate::graph::Node> {
        self.designer.graph().nodes.get(n.index)
    }

    /// Whether node `index` is drawn with its text: readable at this zoom, and in view (where
    /// it was drawn last frame; a node not drawn yet is drawn whole).
    fn detailed(&self, index: usize, ui: &Ui) -> bool {
        self.to_global.scaling >= TEXT_MIN_SCALE
            && self
                .view
                .previous
                .nodes
                .get(&index)
                .is_none_or(|r| ui.clip_rect().intersects(r.expand(8.0)))
    }

    /// Whether corners, shadows and pins are drawn plain at this zoom ([`PLAIN_MIN_SCALE`]).
    fn plain(&self) -> bool {
        self.to_global.scaling < PLAIN_MIN_SCALE
    }

    /// The bounding box of every node, in graph coordinates.
    fn bounds(&self, snarl: &Snarl<CanvasNode>) -> Rect {
        let mut bb = Rect::NOTHING;
        for (pos, n) in snarl.nodes_pos() {
            let r = self
                .view
                .previous
                .nodes
                .get(&n.index)
                .copied()
                .unwrap_or_else(|| {
                    let size = self.node(n).map_or([190.0, 80.0], crate::layout::node_size);
                    Rect::from_min_size(pos, vec2(size[0], size[1]))
                });
            bb = bb.union(r);
        }
        bb
    }
}

impl SnarlViewer<CanvasNode> for Viewer<'_> {
    fn title(&mut self, node: &CanvasNode) -> String {
        node.name.clone()
    }

    fn current_transform(&mut self, to_global: &mut TSTransform, snarl: &mut Snarl<CanvasNode>) {
        let rect = self.view.rect;
        if rect.is_positive() && rect.is_finite() {
            if self.view.fit {
                let bb = self.bounds(snarl);
                if bb.is_positive() && bb.is_finite() {
                    let bb = bb.expand(40.0);
                    let scale = (rect.width() / bb.width())
                        .min(rect.height() / bb.height())
                        .clamp(0.1, 1.0);
                    *to_global = TSTransform::new(
                        rect.center().to_vec2() - bb.center().to_vec2() * scale,
                        scale,
                    );
                } else {
                    *to_global = TSTransform::new(rect.min.to_vec2() + vec2(40.0, 40.0), 1.0);
                }
            }
            if let Some(name) = &self.view.focus
                && let Some(i) = self.designer.graph().find(name)
            {
                let pos = snarl
                    .nodes_pos()
                    .find(|(_, n)| n.index == i)
                    .map(|(p, _)| p);
                if let Some(p) = pos {
                    let r = self
                        .view
                        .previous
                        .nodes
                        .get(&i)
                        .copied()
                        .unwrap_or_else(|| Rect::from_min_size(p, vec2(190.0, 80.0)));
                    let scale = to_global.scaling.max(0.6);
                    *to_global = TSTransform::new(
                        rect.center().to_vec2() - r.center().to_vec2() * scale,
                        scale,
                    );
                }
            }
            if let Some(factor) = self.view.zoom {
                let scale = (to_global.scaling * factor).clamp(0.1, 2.0);
                let center = to_global.inverse() * rect.center();
                *to_global =
                    TSTransform::new(rect.center().to_vec2() - center.to_vec2() * scale, scale);
            }
        }
        self.to_global = *to_global;
    }

    fn node_frame(
        &mut self,
        default: Frame,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        snarl: &Snarl<CanvasNode>,
    ) -> Frame {
        let Some(n) = snarl.get_node(node) else {
            return default;
        };
        let selected = self.designer.selection.nodes.contains(&n.name);
        let live = self.live.and_then(|l| l.node(&n.name));
        let stroke = if selected {
            Stroke::new(2.5, theme::SELECTED)
        } else if let Some(s) = &live {
            match s.state {
                NodeState::Failed => Stroke::new(2.0, theme::ERROR),
                NodeState::Finished => Stroke::new(1.0, theme::WEAK),
                _ if s.bulletin.is_some() => Stroke::new(1.5, theme::WARNING),
                _ => Stroke::new(1.5, Color32::from_rgb(0x3f, 0xb9, 0x86)),
            }
        } else {
            match self.designer.validation().node_severity(&n.name) {
                Some(Severity::Error) => Stroke::new(1.5, theme::ERROR),
                Some(Severity::Warning) => Stroke::new(1.5, theme::WARNING),
                None => Stroke::new(1.0, theme::NODE_STROKE),
            }
        };
        node_frame(stroke, self.plain())
    }

    fn header_frame(
        &mut self,
        _default: Frame,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        snarl: &Snarl<CanvasNode>,
    ) -> Frame {
        let color = snarl
            .get_node(node)
            .and_then(|n| self.node(n))
            .map_or(theme::kind_color(None, false), |n| {
                theme::kind_color(n.kind, n.plugin)
            });
        let round = if self.plain() { 0 } else { 7 };
        Frame::new()
            .fill(color.gamma_multiply(0.85))
            .corner_radius(CornerRadius {
                nw: round,
                ne: round,
                sw: 0,
                se: 0,
            })
            .inner_margin(Margin {
                left: 10,
                right: 10,
                top: 5,
                bottom: 5,
            })
    }

    fn show_header(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<CanvasNode>,
    ) {
        let Some(n) = snarl.get_node(node).and_then(|n| self.node(n)) else {
            return;
        };
        ui.set_width(crate::layout::CONTENT_WIDTH);
        if !self.detailed(snarl[node].index, ui) {
            let h = line_height(ui, 14.0) + line_height(ui, 11.0);
            ui.allocate_space(vec2(crate::layout::CONTENT_WIDTH, h));
            return;
        }
        ui.vertical(|ui| {
            ui.spacing_mut().item_spacing.y = 0.0;
            // Cut to the node's width, like its footer (see `layout::node_size`).
            ui.add(
                egui::Label::new(
                    RichText::new(&n.name)
                        .strong()
                        .size(14.0)
                        .color(Color32::WHITE),
                )
                .truncate(),
            );
            let t = n.type_name.as_deref().unwrap_or("no type");
            ui.add(
                egui::Label::new(
                    RichText::new(format!("{t} · {}", theme::kind_label(n.kind, n.plugin)))
                        .size(11.0)
                        .color(Color32::from_white_alpha(200)),
                )
                .truncate(),
            );
        });
    }

    fn inputs(&mut self, node: &CanvasNode) -> usize {
        self.node(node).map_or(0, |n| usize::from(n.has_input()))
    }

    fn outputs(&mut self, node: &CanvasNode) -> usize {
        self.node(node).map_or(0, |n| n.ports.len())
    }

    #[allow(refining_impl_trait)]
    fn show_input(&mut self, pin: &InPin, ui: &mut Ui, snarl: &mut Snarl<CanvasNode>) -> CanvasPin {
        let index = snarl[pin.id.node].index;
        self.drawn.inputs.insert(index, ui.max_rect().center().y);
        ui.add_space(12.0);
        if self.detailed(index, ui) {
            ui.label(RichText::new("in").size(11.0).color(theme::WEAK));
        } else {
            text_room(ui, 10.0, 11.0, None);
        }
        CanvasPin::new(
            self.plain(),
            Color32::from_rgb(0xc8, 0xcd, 0xd6),
            Color32::from_rgb(0x8a, 0x93, 0xa3),
        )
    }

    #[allow(refining_impl_trait)]
    fn show_output(
        &mut self,
        pin: &OutPin,
        ui: &mut Ui,
        snarl: &mut Snarl<CanvasNode>,
    ) -> CanvasPin {
        let index = snarl[pin.id.node].index;
        self.drawn
            .outputs
            .insert((index, pin.id.output), ui.max_rect().center().y);
        let Some(n) = self.designer.graph().nodes.get(index) else {
            return CanvasPin::Round(PinInfo::circle());
        };
        let port = n.ports.get(pin.id.output).map_or("?", String::as_str);
        let failure = port == flow_core::processor::FAILURE;
        let unknown = !failure && pin.id.output >= n.declared;
        let color = if failure {
            theme::FAILURE
        } else if unknown {
            theme::WARNING
        } else {
            theme::kind_color(n.kind, n.plugin)
        };
        let detailed = self.detailed(index, ui);
        ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
            ui.add_space(12.0);
            if !detailed {
                text_room(ui, 10.0, 12.0, None);
                return;
            }
            let mut text = RichText::new(port).size(12.0);
            text = if failure {
                text.color(theme::FAILURE.gamma_multiply(0.9))
            } else if unknown {
                text.color(theme::WARNING).italics()
            } else {
                text.color(theme::TEXT)
            };
            ui.label(text);
        });
        let wire = if failure {
            theme::FAILURE
        } else {
            Color32::from_rgb(0x9a, 0xa3, 0xb3)
        };
        CanvasPin::new(self.plain(), color, wire)
    }

    fn has_footer(&mut self, node: &CanvasNode) -> bool {
        // Live figures first: no scan of the findings for every node of a watched flow.
        self.live.is_some_and(|l| l.node(&node.name).is_some())
            || self
                .designer
                .validation()
                .for_node(&node.name)
                .next()
                .is_some()
    }

    fn show_footer(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<CanvasNode>,
    ) {
        let name = snarl[node].name.clone();
        let detailed = self.detailed(snarl[node].index, ui);
        Frame::new()
            .inner_margin(Margin {
                left: 10,
                right: 10,
                top: 2,
                bottom: 6,
            })
            .show(ui, |ui| {
                // One line each, cut to the node's width: a finding never makes a node
                // larger than the automatic layout leaves room for (see `layout::node_size`).
                ui.set_width(crate::layout::FOOTER_WIDTH);
                ui.spacing_mut().item_spacing.y = 0.0;
                // Out of view or too small to read: the room of the same lines, and a bar
                // where a failure or finding is.
                let w = crate::layout::FOOTER_WIDTH;
                if let Some(s) = self.live.and_then(|l| l.node(&name)) {
                    // The error it failed with, else its latest bulletin, on a second line.
                    // Formatted only where it is drawn: this runs for every node on each frame.
                    let line = match (&s.error, &s.bulletin) {
                        (Some(e), _) => Some((theme::ERROR, '✖', e.as_str())),
                        (None, Some((level, m))) => Some(match level {
                            flow_core::observe::Level::Error => (theme::ERROR, '✖', m.as_str()),
                            flow_core::observe::Level::Warn => (theme::WARNING, '⚠', m.as_str()),
                        }),
                        _ => None,
                    };
                    if !detailed {
                        text_room(ui, w, 11.0, (s.errors > 0).then_some(theme::WARNING));
                        if let Some((color, ..)) = line {
                            text_room(ui, w, 11.0, Some(color));
                        }
                        return;
                    }
                    let state = match s.state {
                        NodeState::Starting => "starting",
                        NodeState::Running => "▶",
                        NodeState::Finished => "✔",
                        NodeState::Failed => "✖",
                    };
                    ui.add(
                        egui::Label::new(
                            RichText::new(format!(
                                "{state} in {} · out {}{}",
                                rate(s.received_per_s),
                                rate(s.sent_per_s),
                                if s.errors > 0 {
                                    format!(" · {} failed", count(s.errors))
                                } else {
                                    String::new()
                                }
                            ))
                            .size(11.0)
                            .color(if s.errors > 0 {
                                theme::WARNING
                            } else {
                                theme::WEAK
                            }),
                        )
                        .truncate(),
                    );
                    if let Some((color, icon, text)) = line {
                        ui.add(
                            egui::Label::new(
                                RichText::new(format!("{icon} {text}"))
                                    .size(11.0)
                                    .color(color),
                            )
                            .truncate(),
                        );
                    }
                    return;
                }
                let problems: Vec<_> = self.designer.validation().for_node(&name).collect();
                if let Some(first) = problems.first() {
                    let color = if first.is_error() {
                        theme::ERROR
                    } else {
                        theme::WARNING
                    };
                    if !detailed {
                        text_room(ui, w, 11.0, Some(color));
                        return;
                    }
                    let mut text = first.message.clone();
                    // The node says which processor; a variable's name says what it is.
                    if let Some(rest) = text.strip_prefix(&format!("processor `{name}`")) {
                        text = rest.trim_start_matches([',', ':', ' ']).to_owned();
                    }
                    if let Some(rest) = text.strip_prefix("environment variable ") {
                        text = rest.to_owned();
                    }
                    let icon = if first.is_error() { "✖" } else { "⚠" };
                    let message = egui::Label::new(
                        RichText::new(format!("{icon} {text}"))
                            .size(11.0)
                            .color(color),
                    )
                    .truncate()
                    .show_tooltip_when_elided(false);
                    if problems.len() > 1 {
                        // The count stays in view, the message is cut before it.
                        let more = RichText::new(format!("+{}", problems.len() - 1))
                            .size(11.0)
                            .color(theme::WEAK);
                        ui.horizontal(|ui| {
                            ui.spacing_mut().item_spacing.x = 4.0;
                            let w = ui.available_width() - 24.0;
                            ui.scope(|ui| {
                                ui.set_max_width(w);
                                ui.add(message);
                            });
                            ui.label(more);
                        });
                    } else {
                        ui.add(message);
                    }
                }
            });
    }

    fn final_node_rect(
        &mut self,
        node: NodeId,
        rect: Rect,
        _ui: &mut Ui,
        snarl: &mut Snarl<CanvasNode>,
    ) {
        self.drawn.nodes.insert(snarl[node].index, rect);
    }

    fn has_on_hover_popup(&mut self, _node: &CanvasNode) -> bool {
        true
    }

    fn show_on_hover_popup(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<CanvasNode>,
    ) {
        let Some(n) = self.node(&snarl[node]) else {
            return;
        };
        ui.set_max_width(320.0);
        let summary = n
            .type_name
            .as_deref()
            .and_then(|t| self.designer.registry().get(t))
            .map(|d| crate::form::docs(d).summary.clone());
        ui.label(RichText::new(&n.name).strong());
        if let Some(s) = summary {
            ui.label(s);
        }
        for p in self.designer.validation().for_node(&n.name) {
            let color = if p.is_error() {
                theme::ERROR
            } else {
                theme::WARNING
            };
            ui.label(RichText::new(format!("line {}: {}", p.line, p.message)).color(color));
        }
    }

    fn has_graph_menu(&mut self, _pos: Pos2, _snarl: &mut Snarl<CanvasNode>) -> bool {
        true
    }

    fn show_graph_menu(&mut self, pos: Pos2, ui: &mut Ui, _snarl: &mut Snarl<CanvasNode>) {
        ui.label(RichText::new("Add a processor").strong());
        if let Some(type_name) = type_menu(ui, self.designer, |_| true) {
            self.actions.push(Action::Add {
                type_name,
                pos,
                from: None,
            });
        }
    }

    fn has_dropped_wire_menu(&mut self, src: AnyPins, snarl: &mut Snarl<CanvasNode>) -> bool {
        // Dropped on a node (not on its pin): connect to it.
        let AnyPins::Out(pins) = src else {
            return false;
        };
        let p = self.pointer.map(|p| self.to_global.inverse() * p);
        let target = p.and_then(|p| {
            self.drawn
                .nodes
                .iter()
                .chain(self.view.previous.nodes.iter())
                .find(|(_, r)| r.contains(p))
                .map(|(i, _)| *i)
        });
        match target {
            Some(to) => {
                for pin in pins {
                    let from = snarl[pin.node].index;
                    self.actions.push(Action::Connect {
                        from,
                        port: pin.output,
                        to,
                    });
                }
                false
            }
            None => pins.len() == 1,
        }
    }

    fn show_dropped_wire_menu(
        &mut self,
        pos: Pos2,
        ui: &mut Ui,
        src: AnyPins,
        snarl: &mut Snarl<CanvasNode>,
    ) {
        let AnyPins::Out([pin]) = src else {
            return;
        };
        let from = snarl[pin.node].index;
        ui.label(RichText::new("Add and connect").strong());
        if let Some(type_name) = type_menu(ui, self.designer, |k| k != Kind::Source) {
            self.actions.push(Action::Add {
                type_name,
                pos,
                from: Some((from, pin.output)),
            });
        }
    }

    fn has_node_menu(&mut self, _node: &CanvasNode) -> bool {
        true
    }

    fn show_node_menu(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<CanvasNode>,
    ) {
        let name = snarl[node].name.clone();
        ui.label(RichText::new(&name).strong());
        if ui.button("Duplicate").clicked() {
            self.actions.push(Action::Duplicate(name.clone()));
            ui.close();
        }
        if ui.button("Delete").clicked() {
            self.actions.push(Action::Delete(name));
            ui.close();
        }
    }

    fn connect(&mut self, from: &OutPin, to: &InPin, snarl: &mut Snarl<CanvasNode>) {
        self.actions.push(Action::Connect {
            from: snarl[from.id.node].index,
            port: from.id.output,
            to: snarl[to.id.node].index,
        });
    }

    fn disconnect(&mut self, from: &OutPin, to: &InPin, snarl: &mut Snarl<CanvasNode>) {
        // Right-click on a wire selects its connection; Delete removes it.
        let (a, port, b) = (
            snarl[from.id.node].index,
            from.id.output,
            snarl[to.id.node].index,
        );
        if let Some(e) = self
            .designer
            .graph()
            .edges
            .iter()
            .find(|e| e.from == a && e.port == port && e.to == b)
        {
            self.actions.push(Action::SelectEdge(e.index));
        }
    }

    fn drop_outputs(&mut self, _pin: &OutPin, _snarl: &mut Snarl<CanvasNode>) {}

    fn drop_inputs(&mut self, _pin: &InPin, _snarl: &mut Snarl<CanvasNode>) {}
}

/// A menu of processor types by group; the chosen type.
fn type_menu(ui: &mut Ui, designer: &Designer, keep: impl Fn(Kind) -> bool) -> Option<String> {
    let mut chosen = None;
    for (group, defs) in crate::views::palette::groups(designer.registry()) {
        let defs: Vec<_> = defs.into_iter().filter(|d| keep(d.kind)).collect();
        if defs.is_empty() {
            continue;
        }
        ui.menu_button(group, |ui| {
            for d in defs {
                if ui
                    .button(d.type_name)
                    .on_hover_text(&crate::form::docs(d).summary)
                    .clicked()
                {
                    chosen = Some(d.type_name.to_owned());
                    ui.close();
                }
            }
        });
    }
    chosen
}

/// Say on the status line why something was refused.
pub fn refuse(designer: &mut Designer, why: impl Into<String>) {
    designer.notice = Some(Notice::Error(why.into()));
}

#[cfg(test)]
mod tests {
    use super::grid_spacing;

    #[test]
    fn the_grid_keeps_its_lines_at_least_12_pixels_apart() {
        assert_eq!(grid_spacing(1.0), 24.0);
        assert_eq!(grid_spacing(0.5), 24.0);
        assert_eq!(grid_spacing(0.4), 48.0);
        assert_eq!(grid_spacing(0.1), 192.0);
        for scale in [0.1_f32, 0.13, 0.2, 0.33, 0.5, 0.7, 1.0, 2.0] {
            let px = grid_spacing(scale) * scale;
            assert!((12.0..24.0).contains(&px) || scale >= 0.5, "{scale}: {px}");
        }
    }
}
