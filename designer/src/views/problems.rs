//! The problems list: every finding of `flow validate` about the flow, in file order.
//! Clicking one selects what it is about and shows it on the canvas.

use egui::{RichText, Ui};

use crate::state::Designer;
use crate::theme;

/// The problems view.
#[derive(Default)]
pub struct Problems {
    /// A processor to show on the canvas, asked for by a click.
    pub focus: Option<String>,
}

impl Problems {
    /// Draw the list.
    pub fn ui(&mut self, ui: &mut Ui, designer: &mut Designer) {
        let v = designer.validation();
        ui.horizontal(|ui| {
            ui.label(RichText::new("Problems").strong());
            if v.problems.is_empty() {
                ui.label(
                    RichText::new("✔ none: `flow validate` accepts this flow").color(
                        theme::kind_color(Some(flow_core::processor::Kind::Source), false),
                    ),
                );
            } else {
                if v.errors() > 0 {
                    ui.label(RichText::new(format!("✖ {}", v.errors())).color(theme::ERROR));
                }
                if v.warnings() > 0 {
                    ui.label(RichText::new(format!("⚠ {}", v.warnings())).color(theme::WARNING));
                }
            }
        });
        let mut clicked = None;
        // Only the rows in view are laid out (a large flow has hundreds of warnings, all laid
        // out on every frame before).
        let row_height = ui.spacing().interact_size.y;
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .show_rows(ui, row_height, v.problems.len(), |ui, range| {
                for (i, p) in v
                    .problems
                    .iter()
                    .enumerate()
                    .skip(range.start)
                    .take(range.len())
                {
                    let (icon, color) = if p.is_error() {
                        ("✖", theme::ERROR)
                    } else {
                        ("⚠", theme::WARNING)
                    };
                    let place = match (&p.node, p.edge) {
                        (Some(n), _) => n.clone(),
                        (None, Some(e)) => designer
                            .graph()
                            .edge(e)
                            .map(|e| designer.graph().edge_label(e))
                            .unwrap_or_default(),
                        _ => String::new(),
                    };
                    let text = format!(
                        "{icon} {}:{}  {}{}",
                        p.line,
                        p.column,
                        p.message,
                        p.help
                            .as_ref()
                            .map(|h| format!("  ({h})"))
                            .unwrap_or_default()
                    );
                    ui.horizontal(|ui| {
                        let r = ui.add(
                            egui::Label::new(RichText::new(text).color(color).size(12.5))
                                .sense(egui::Sense::click())
                                .truncate(),
                        );
                        if !place.is_empty() {
                            ui.label(RichText::new(place).size(11.0).color(theme::WEAK));
                        }
                        if r.on_hover_cursor(egui::CursorIcon::PointingHand).clicked() {
                            clicked = Some(i);
                        }
                    });
                }
            });
        if let Some(i) = clicked {
            let p = designer.validation().problems[i].clone();
            if let Some(n) = &p.node {
                designer.select_node(n, false);
                self.focus = Some(n.clone());
            } else if let Some(e) = p.edge {
                designer.select_edge(e);
                if let Some(edge) = designer.graph().edge(e) {
                    self.focus = Some(designer.graph().nodes[edge.from].name.clone());
                }
            }
        }
    }
}
