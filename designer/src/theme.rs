//! Colours and the look of the designer: one place, so the canvas, the palette and the
//! inspector agree (a kind has the same colour everywhere).

use egui::{Color32, CornerRadius, Stroke, Visuals};
use flow_core::processor::Kind;

/// Canvas background.
pub const CANVAS: Color32 = Color32::from_rgb(0x1b, 0x1e, 0x24);
/// Canvas grid lines.
pub const GRID: Color32 = Color32::from_rgb(0x26, 0x2a, 0x32);
/// A node's body.
pub const NODE_FILL: Color32 = Color32::from_rgb(0x2a, 0x2e, 0x37);
/// A node's outline.
pub const NODE_STROKE: Color32 = Color32::from_rgb(0x3c, 0x42, 0x4e);
/// Text on a node.
pub const TEXT: Color32 = Color32::from_rgb(0xe6, 0xe8, 0xec);
/// Quieter text (types, help).
pub const WEAK: Color32 = Color32::from_rgb(0x9a, 0xa1, 0xad);
/// Selection.
pub const SELECTED: Color32 = Color32::from_rgb(0x5c, 0xb8, 0xff);
/// Errors.
pub const ERROR: Color32 = Color32::from_rgb(0xf0, 0x5d, 0x5e);
/// Warnings.
pub const WARNING: Color32 = Color32::from_rgb(0xe8, 0xb3, 0x39);
/// The `failure` port and its edges.
pub const FAILURE: Color32 = Color32::from_rgb(0xd9, 0x6a, 0x6a);

/// The colour of a kind: sources green, transforms blue, sinks orange, plugins violet, an
/// unknown type grey.
pub fn kind_color(kind: Option<Kind>, plugin: bool) -> Color32 {
    if plugin {
        return Color32::from_rgb(0xa8, 0x7b, 0xe8);
    }
    match kind {
        Some(Kind::Source) => Color32::from_rgb(0x3f, 0xb9, 0x86),
        Some(Kind::Transform) => Color32::from_rgb(0x4a, 0x90, 0xe2),
        Some(Kind::Sink) => Color32::from_rgb(0xe8, 0x8a, 0x3c),
        None => Color32::from_rgb(0x80, 0x86, 0x90),
    }
}

/// The label of a kind.
pub fn kind_label(kind: Option<Kind>, plugin: bool) -> &'static str {
    if plugin {
        return "plugin";
    }
    match kind {
        Some(Kind::Source) => "source",
        Some(Kind::Transform) => "transform",
        Some(Kind::Sink) => "sink",
        None => "unknown type",
    }
}

/// The panels' background, which is also the colour the window is cleared to.
pub const PANEL_FILL: Color32 = Color32::from_rgb(0x22, 0x25, 0x2c);

/// The app's visuals: egui's dark theme, a little softer.
pub fn visuals() -> Visuals {
    let mut v = Visuals::dark();
    v.panel_fill = PANEL_FILL;
    v.window_fill = Color32::from_rgb(0x26, 0x29, 0x31);
    v.extreme_bg_color = Color32::from_rgb(0x17, 0x19, 0x1e);
    v.faint_bg_color = Color32::from_rgb(0x2a, 0x2d, 0x35);
    v.window_corner_radius = CornerRadius::same(6);
    v.selection.bg_fill = Color32::from_rgb(0x2d, 0x5f, 0x8f);
    v.selection.stroke = Stroke::new(1.0, SELECTED);
    v.widgets.noninteractive.bg_stroke = Stroke::new(1.0, Color32::from_rgb(0x33, 0x37, 0x40));
    v
}
