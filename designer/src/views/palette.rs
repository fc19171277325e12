//! The palette: every processor type of the registry, grouped (sources, transforms, sinks,
//! plugins), with a search box and each one's one-line description. Drag one onto the
//! canvas, or double-click it to add it in the middle of the canvas.

use egui::{Color32, CornerRadius, Frame, Margin, RichText, Sense, Stroke, Ui, vec2};
use flow_core::processor::{Kind, ProcessorDef, Registry};

use crate::state::Designer;
use crate::theme;

/// What is dragged from the palette to the canvas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaletteDrag {
    /// The processor type.
    pub type_name: String,
}

/// The registry by group, in palette order; empty groups are left out.
pub fn groups(registry: &Registry) -> Vec<(&'static str, Vec<&ProcessorDef>)> {
    let mut out: Vec<(&'static str, Vec<&ProcessorDef>)> = vec![
        ("Sources", Vec::new()),
        ("Transforms", Vec::new()),
        ("Sinks", Vec::new()),
        ("Plugins", Vec::new()),
    ];
    for d in registry.all() {
        let i = match (d.plugin, d.kind) {
            (true, _) => 3,
            (false, Kind::Source) => 0,
            (false, Kind::Transform) => 1,
            (false, Kind::Sink) => 2,
        };
        out[i].1.push(d);
    }
    out.retain(|(_, defs)| !defs.is_empty());
    out
}

/// The palette view.
#[derive(Default)]
pub struct Palette {
    /// The search text.
    pub search: String,
    /// A type chosen by double-click, for the app to add.
    pub chosen: Option<String>,
}

impl Palette {
    /// Draw the palette.
    pub fn ui(&mut self, ui: &mut Ui, designer: &Designer) {
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            ui.label(RichText::new("Processors").strong().size(15.0));
        });
        ui.add_space(4.0);
        let search = ui.add(
            egui::TextEdit::singleline(&mut self.search)
                .hint_text("Search processors")
                .desired_width(f32::INFINITY),
        );
        // Enter adds the first match.
        let enter = search.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        ui.add_space(6.0);
        let query = self.search.to_lowercase();
        if enter && !query.is_empty() {
            self.chosen = groups(designer.registry())
                .into_iter()
                .flat_map(|(_, defs)| defs)
                .find(|d| {
                    d.type_name.contains(&query)
                        || crate::form::docs(d).summary.to_lowercase().contains(&query)
                })
                .map(|d| d.type_name.to_owned());
        }
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .show(ui, |ui| {
                for (group, defs) in groups(designer.registry()) {
                    let defs: Vec<(&ProcessorDef, String)> = defs
                        .into_iter()
                        .map(|d| (d, crate::form::docs(d).summary.clone()))
                        .filter(|(d, s)| {
                            query.is_empty()
                                || d.type_name.contains(&query)
                                || s.to_lowercase().contains(&query)
                        })
                        .collect();
                    if defs.is_empty() {
                        continue;
                    }
                    ui.add_space(4.0);
                    ui.label(
                        RichText::new(group.to_uppercase())
                            .size(11.0)
                            .color(theme::WEAK),
                    );
                    ui.add_space(2.0);
                    for (d, summary) in defs {
                        self.item(ui, d, &summary);
                    }
                }
            });
    }

    fn item(&mut self, ui: &mut Ui, d: &ProcessorDef, summary: &str) {
        let color = theme::kind_color(Some(d.kind), d.plugin);
        let id = ui.id().with(("palette", d.type_name));
        let payload = PaletteDrag {
            type_name: d.type_name.to_owned(),
        };
        let response = ui
            .dnd_drag_source(id, payload, |ui| {
                Frame::new()
                    .fill(Color32::from_rgb(0x2a, 0x2e, 0x37))
                    .stroke(Stroke::new(1.0, Color32::from_rgb(0x34, 0x39, 0x44)))
                    .corner_radius(CornerRadius::same(5))
                    .inner_margin(Margin::symmetric(8, 5))
                    .show(ui, |ui| {
                        ui.set_width(ui.available_width());
                        ui.horizontal(|ui| {
                            let (r, _) = ui.allocate_exact_size(vec2(4.0, 30.0), Sense::hover());
                            ui.painter().rect_filled(r, 2.0, color);
                            ui.vertical(|ui| {
                                ui.spacing_mut().item_spacing.y = 1.0;
                                ui.label(
                                    RichText::new(d.type_name)
                                        .monospace()
                                        .size(13.0)
                                        .color(theme::TEXT),
                                );
                                ui.add(
                                    egui::Label::new(
                                        RichText::new(summary).size(11.0).color(theme::WEAK),
                                    )
                                    .truncate(),
                                );
                            });
                        });
                    });
            })
            .response;
        // Clicks on top of the drag source (egui picks the click and the drag target
        // separately): a double-click adds the processor.
        let clicks = ui
            .interact(response.rect, id.with("click"), Sense::click())
            .on_hover_text(summary);
        if clicks.double_clicked() {
            self.chosen = Some(d.type_name.to_owned());
        }
        ui.add_space(3.0);
    }
}
