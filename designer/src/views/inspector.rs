//! The inspector: a form for what is selected. A processor gets its name, its type's
//! description, one field per config key from the JSON Schema (help from the doc comments,
//! the field's validation errors under it) and its outputs; a connection gets its
//! back-pressure settings; nothing selected gets the flow's name, description and
//! `defaults:`. Every change is an edit of the document, validated as you type.

use std::collections::HashMap;

use egui::{Align, Color32, Id, Layout, RichText, TextEdit, Ui};
use flow_core::spec::document::{EdgeSettingsEdit, Value};
use flow_core::spec::{DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS};
use marked_yaml::Node as YamlNode;

use crate::form::{self, Field, FieldKind, TextKind};
use crate::state::{Designer, yaml_to_value};
use crate::theme;
use crate::validation::Problem;

/// An edit the form asks for.
#[derive(Clone, Debug, PartialEq)]
enum Change {
    Field(Vec<String>, Option<Value>),
    RenameKey(Vec<String>, String, String),
    Rename(String),
    Edge(usize, EdgeSettingsEdit),
    Defaults(EdgeSettingsEdit),
    Top(&'static str, Option<String>),
    DeleteSelection,
    Select(String),
    SelectEdge(usize),
    Connect { from: usize, port: usize, to: usize },
}

/// The inspector view.
#[derive(Default)]
pub struct Inspector {
    /// Text being typed in a focused field, by widget id: shown instead of the document's
    /// value until focus leaves, so typing is never disturbed by how the value is written.
    buffers: HashMap<Id, String>,
    /// Secrets shown in clear.
    revealed: HashMap<Id, bool>,
    /// A processor to select, asked for by the inspector (an output's target).
    pub focus: Option<String>,
}

struct Ctx<'a> {
    designer: &'a Designer,
    node: &'a str,
    changes: Vec<Change>,
}

impl Inspector {
    /// Draw the inspector for the current selection.
    pub fn ui(&mut self, ui: &mut Ui, designer: &mut Designer) {
        let changes = egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .show(ui, |ui| {
                ui.add_space(6.0);
                let sel = designer.selection.clone();
                if let Some(edge) = sel.edge {
                    self.edge_ui(ui, designer, edge)
                } else if let Some(name) = sel.single() {
                    self.node_ui(ui, designer, name)
                } else if sel.nodes.len() > 1 {
                    let mut changes = Vec::new();
                    ui.label(
                        RichText::new(format!("{} processors selected", sel.nodes.len())).strong(),
                    );
                    ui.label(
                        RichText::new(sel.nodes.iter().cloned().collect::<Vec<_>>().join(", "))
                            .color(theme::WEAK),
                    );
                    ui.add_space(8.0);
                    if ui.button("Delete them").clicked() {
                        changes.push(Change::DeleteSelection);
                    }
                    changes
                } else {
                    self.flow_ui(ui, designer)
                }
            })
            .inner;
        let typing = ui.ctx().memory(|m| m.focused()).is_some();
        if !typing {
            // Focus left the fields: the next keystrokes are a new undo step.
            self.buffers.clear();
            designer.end_typing();
        }
        for c in changes {
            apply(designer, c, &mut self.focus);
        }
    }

    /// A single-line (or code) text field bound to a value: returns the new text when the
    /// user changed it.
    #[allow(clippy::too_many_arguments)]
    fn text(
        &mut self,
        ui: &mut Ui,
        id: Id,
        current: &str,
        kind: TextKind,
        hint: Option<&str>,
        multiline: bool,
        labelled_by: Option<Id>,
    ) -> Option<String> {
        let focused = ui.memory(|m| m.has_focus(id));
        let mut text = match self.buffers.get(&id) {
            Some(b) if focused => b.clone(),
            _ => current.to_owned(),
        };
        let secret = kind == TextKind::Secret;
        let reference = text.trim_start().starts_with("${");
        let revealed = *self.revealed.get(&id).unwrap_or(&false);
        let response = ui
            .horizontal(|ui| {
                let width = ui.available_width() - if secret { 28.0 } else { 0.0 };
                let mut edit = if multiline {
                    TextEdit::multiline(&mut text).desired_rows(4).code_editor()
                } else {
                    let e = TextEdit::singleline(&mut text);
                    if matches!(kind, TextKind::Expression) {
                        e.code_editor()
                    } else {
                        e
                    }
                };
                edit = edit.id(id).desired_width(width.max(60.0));
                if let Some(h) = hint.or(kind.hint()) {
                    edit = edit.hint_text(RichText::new(h).color(theme::WEAK.gamma_multiply(0.7)));
                }
                if secret && !reference && !revealed {
                    edit = edit.password(true);
                }
                let mut r = ui.add(edit);
                if let Some(l) = labelled_by {
                    r = r.labelled_by(l);
                }
                if secret
                    && ui
                        .small_button(if revealed { "hide" } else { "show" })
                        .clicked()
                {
                    self.revealed.insert(id, !revealed);
                }
                r
            })
            .inner;
        if response.changed() {
            self.buffers.insert(id, text.clone());
            return Some(text);
        }
        None
    }

    fn flow_ui(&mut self, ui: &mut Ui, designer: &Designer) -> Vec<Change> {
        let mut changes = Vec::new();
        let o = designer.outline();
        heading(ui, "Flow", None);
        ui.label(RichText::new("Nothing selected: the flow's own settings.").color(theme::WEAK));
        ui.add_space(8.0);
        let label_id = label(
            ui,
            "name",
            None,
            false,
            "The flow's name (the file name when not given).",
        );
        if let Some(t) = self.text(
            ui,
            Id::new("flow.name"),
            o.name.as_deref().unwrap_or(""),
            TextKind::Plain,
            None,
            false,
            Some(label_id),
        ) {
            changes.push(Change::Top("name", (!t.is_empty()).then_some(t)));
        }
        ui.add_space(6.0);
        let label_id = label(ui, "description", None, false, "What the flow does.");
        if let Some(t) = self.text(
            ui,
            Id::new("flow.description"),
            o.description.as_deref().unwrap_or(""),
            TextKind::Plain,
            None,
            false,
            Some(label_id),
        ) {
            changes.push(Change::Top("description", (!t.is_empty()).then_some(t)));
        }
        ui.add_space(12.0);
        section(ui, "Defaults for every connection");
        let get = |k: &str| {
            o.defaults
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let current = EdgeSettingsEdit {
            max_records: get("max_records"),
            max_bytes: get("max_bytes"),
            when_full: get("when_full"),
        };
        if let Some(s) = self.settings_ui(ui, "defaults", &current, None) {
            changes.push(Change::Defaults(s));
        }
        ui.add_space(12.0);
        section(ui, "Summary");
        let g = designer.graph();
        ui.label(format!(
            "{} processors, {} connections",
            g.nodes.len(),
            g.edges.len()
        ));
        let v = designer.validation();
        if v.problems.is_empty() {
            ui.label(RichText::new("✔ valid").color(theme::kind_color(
                Some(flow_core::processor::Kind::Source),
                false,
            )));
        } else {
            ui.label(
                RichText::new(counted(v.errors(), v.warnings())).color(if v.errors() > 0 {
                    theme::ERROR
                } else {
                    theme::WARNING
                }),
            );
        }
        changes
    }

    /// `max_records`, `max_bytes`, `when_full`: the new settings if one changed.
    fn settings_ui(
        &mut self,
        ui: &mut Ui,
        id: &str,
        current: &EdgeSettingsEdit,
        inherited: Option<&EdgeSettingsEdit>,
    ) -> Option<EdgeSettingsEdit> {
        let mut out = None;
        let from = if inherited.is_some() {
            "from defaults"
        } else {
            "built in"
        };
        let inherited_records = inherited
            .and_then(|d| d.max_records.clone())
            .unwrap_or_else(|| DEFAULT_MAX_RECORDS.to_string());
        let inherited_bytes = inherited
            .and_then(|d| d.max_bytes.clone())
            .unwrap_or_else(|| DEFAULT_MAX_BYTES.to_string().replace(' ', ""));
        let inherited_full = inherited
            .and_then(|d| d.when_full.clone())
            .unwrap_or_else(|| "block".into());
        let label_id = label(
            ui,
            "max_records",
            None,
            false,
            "Back-pressure threshold in records: a full queue stops its producer.",
        );
        let hint = format!("{inherited_records} ({from})");
        if let Some(t) = self.text(
            ui,
            Id::new((id, "max_records")),
            current.max_records.as_deref().unwrap_or(""),
            TextKind::Plain,
            Some(&hint),
            false,
            Some(label_id),
        ) {
            out = Some(EdgeSettingsEdit {
                max_records: (!t.trim().is_empty()).then_some(t),
                ..current.clone()
            });
        }
        ui.add_space(6.0);
        let label_id = label(
            ui,
            "max_bytes",
            Some("size"),
            false,
            "Back-pressure threshold in bytes, like `64MiB`.",
        );
        let hint = format!("{inherited_bytes} ({from})");
        if let Some(t) = self.text(
            ui,
            Id::new((id, "max_bytes")),
            current.max_bytes.as_deref().unwrap_or(""),
            TextKind::Size,
            Some(&hint),
            false,
            Some(label_id),
        ) {
            out = Some(EdgeSettingsEdit {
                max_bytes: (!t.trim().is_empty()).then_some(t),
                ..out.unwrap_or_else(|| current.clone())
            });
        }
        ui.add_space(6.0);
        label(
            ui,
            "when_full",
            None,
            false,
            "What a full queue does: `block` (back-pressure) or `drop_newest` (drop and count).",
        );
        let shown = current
            .when_full
            .clone()
            .unwrap_or_else(|| format!("{inherited_full} ({from})"));
        egui::ComboBox::from_id_salt((id, "when_full"))
            .selected_text(shown)
            .width(ui.available_width())
            .show_ui(ui, |ui| {
                let mut pick = |ui: &mut Ui, value: Option<&str>, text: String| {
                    if ui
                        .selectable_label(current.when_full.as_deref() == value, text)
                        .clicked()
                    {
                        out = Some(EdgeSettingsEdit {
                            when_full: value.map(str::to_owned),
                            ..out.clone().unwrap_or_else(|| current.clone())
                        });
                    }
                };
                pick(ui, None, format!("{inherited_full} ({from})"));
                pick(ui, Some("block"), "block".into());
                pick(ui, Some("drop_newest"), "drop_newest".into());
            });
        out
    }

    fn edge_ui(&mut self, ui: &mut Ui, designer: &Designer, index: usize) -> Vec<Change> {
        let mut changes = Vec::new();
        let g = designer.graph();
        let Some(e) = g.edge(index) else {
            return changes;
        };
        let Some(Some(c)) = designer.outline().connections.get(index) else {
            return changes;
        };
        heading(ui, "Connection", None);
        let label_text = g.edge_label(e);
        ui.label(
            RichText::new(&label_text)
                .monospace()
                .size(14.0)
                .color(theme::TEXT),
        );
        ui.label(RichText::new(format!("line {} of the file", c.at.line)).color(theme::WEAK));
        ui.horizontal(|ui| {
            if ui.link(&g.nodes[e.from].name).clicked() {
                changes.push(Change::Select(g.nodes[e.from].name.clone()));
            }
            ui.label("to");
            if ui.link(&g.nodes[e.to].name).clicked() {
                changes.push(Change::Select(g.nodes[e.to].name.clone()));
            }
        });
        ui.add_space(8.0);
        problems_ui(ui, designer.validation().for_edge(index));
        section(ui, "Back-pressure");
        let current = EdgeSettingsEdit {
            max_records: c.max_records.clone(),
            max_bytes: c.max_bytes.clone(),
            when_full: c.when_full.clone(),
        };
        let o = designer.outline();
        let get = |k: &str| {
            o.defaults
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let defaults = EdgeSettingsEdit {
            max_records: get("max_records"),
            max_bytes: get("max_bytes"),
            when_full: get("when_full"),
        };
        if let Some(s) = self.settings_ui(
            ui,
            &format!("edge{index}"),
            &current,
            (!o.defaults.is_empty()).then_some(&defaults),
        ) {
            changes.push(Change::Edge(index, s));
        }
        ui.add_space(14.0);
        if ui
            .button(RichText::new("Delete connection").color(theme::ERROR))
            .clicked()
        {
            changes.push(Change::DeleteSelection);
        }
        changes
    }

    fn node_ui(&mut self, ui: &mut Ui, designer: &Designer, name: &str) -> Vec<Change> {
        let mut cx = Ctx {
            designer,
            node: name,
            changes: Vec::new(),
        };
        let g = designer.graph();
        let Some(i) = g.find(name) else {
            return cx.changes;
        };
        let n = &g.nodes[i];
        let def = n
            .type_name
            .as_deref()
            .and_then(|t| designer.registry().get(t));
        heading(
            ui,
            n.type_name.as_deref().unwrap_or("processor"),
            Some((
                theme::kind_label(n.kind, n.plugin),
                theme::kind_color(n.kind, n.plugin),
            )),
        );
        if let Some(d) = def {
            let docs = form::docs(d);
            ui.add(egui::Label::new(RichText::new(&docs.summary).color(theme::WEAK)).wrap());
            let description = &docs.description;
            let rest = description
                .split_once("\n\n")
                .map(|(_, r)| r.trim())
                .unwrap_or_default();
            if !rest.is_empty() {
                egui::CollapsingHeader::new(RichText::new("More about it").size(12.0))
                    .id_salt("about")
                    .show(ui, |ui| {
                        ui.add(
                            egui::Label::new(
                                RichText::new(rest.replace('\n', " "))
                                    .size(12.0)
                                    .color(theme::WEAK),
                            )
                            .wrap(),
                        );
                    });
            }
        } else {
            ui.label(
                RichText::new("unknown processor type: run `flow processors` for the list")
                    .color(theme::ERROR),
            );
        }
        ui.add_space(8.0);
        let label_id = label(
            ui,
            "name",
            None,
            true,
            "The processor's name in the flow: letters, digits, `_` and `-`.",
        );
        let id = Id::new(("node-name", name));
        let mut text = self
            .buffers
            .get(&id)
            .filter(|_| ui.memory(|m| m.has_focus(id)))
            .cloned()
            .unwrap_or_else(|| name.to_owned());
        let r = ui
            .add(
                TextEdit::singleline(&mut text)
                    .id(id)
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(label_id);
        if r.changed() {
            self.buffers.insert(id, text.clone());
        }
        if r.lost_focus() && text != name {
            cx.changes.push(Change::Rename(text.clone()));
        }
        if !flow_core::spec::document::valid_name(&text) {
            ui.label(
                RichText::new("letters, digits, `_` and `-` only")
                    .color(theme::ERROR)
                    .size(12.0),
            );
        }
        // Problems not tied to a field.
        problems_ui(
            ui,
            designer
                .validation()
                .for_node(name)
                .filter(|p| p.field.is_none() || p.field.as_deref() == Some("type")),
        );
        ui.add_space(8.0);
        if let Some(def) = def {
            let docs = form::docs(def);
            let fields = &docs.fields;
            let outline = designer.outline().processor(name);
            let (required, optional): (Vec<&Field>, Vec<&Field>) =
                fields.iter().partition(|f| f.required);
            if !required.is_empty() {
                section(ui, "Settings");
                for f in required {
                    let current = outline.and_then(|p| p.get(&[f.key.as_str()]));
                    self.field_ui(ui, &mut cx, std::slice::from_ref(&f.key), f, current);
                }
            }
            if !optional.is_empty() {
                let set = optional
                    .iter()
                    .filter(|f| outline.and_then(|p| p.get(&[f.key.as_str()])).is_some())
                    .count();
                let header = format!("Options ({set} of {} set)", optional.len());
                egui::CollapsingHeader::new(RichText::new(header).strong())
                    .id_salt(("options", def.type_name))
                    .default_open(true)
                    .show(ui, |ui| {
                        for f in optional {
                            let current = outline.and_then(|p| p.get(&[f.key.as_str()]));
                            self.field_ui(ui, &mut cx, std::slice::from_ref(&f.key), f, current);
                        }
                    });
            }
        }
        ui.add_space(10.0);
        section(ui, "Outputs");
        outputs_ui(ui, &mut cx, i);
        ui.add_space(14.0);
        if ui
            .button(RichText::new("Delete processor").color(theme::ERROR))
            .clicked()
        {
            cx.changes.push(Change::DeleteSelection);
        }
        cx.changes
    }

    fn field_ui(
        &mut self,
        ui: &mut Ui,
        cx: &mut Ctx<'_>,
        path: &[String],
        field: &Field,
        current: Option<&YamlNode>,
    ) {
        let key = path.last().map_or("", String::as_str);
        let id = Id::new(("field", cx.node, path));
        let badge = match &field.kind {
            FieldKind::Text(k) => k.badge(),
            FieldKind::Integer => Some("integer"),
            FieldKind::Number => Some("number"),
            FieldKind::List(_) => Some("list"),
            FieldKind::Map(_) => Some("map"),
            _ => None,
        };
        ui.push_id(id, |ui| {
            ui.add_space(4.0);
            let label_id = label(ui, key, badge, field.required, &field.help);
            let scalar = current
                .and_then(YamlNode::as_scalar)
                .map(|s| s.as_str().to_owned());
            let hint = field.default.as_ref().map(|d| format!("{d} (default)"));
            match &field.kind {
                FieldKind::Text(kind) => {
                    let multiline = *kind == TextKind::Program
                        || scalar.as_deref().is_some_and(|s| s.contains('\n'));
                    if let Some(t) = self.text(
                        ui,
                        id,
                        scalar.as_deref().unwrap_or(""),
                        *kind,
                        hint.as_deref(),
                        multiline,
                        Some(label_id),
                    ) {
                        let value = if t.is_empty() && !field.required {
                            None
                        } else {
                            Some(Value::Str(t))
                        };
                        cx.changes.push(Change::Field(path.to_vec(), value));
                    }
                }
                FieldKind::Integer | FieldKind::Number => {
                    if let Some(t) = self.text(
                        ui,
                        id,
                        scalar.as_deref().unwrap_or(""),
                        TextKind::Plain,
                        hint.as_deref(),
                        false,
                        Some(label_id),
                    ) {
                        let v = t.trim();
                        let value = if v.is_empty() && !field.required {
                            None
                        } else if let Ok(i) = v.parse::<i64>() {
                            Some(Value::Int(i))
                        } else if let Ok(f) = v.parse::<f64>()
                            && field.kind == FieldKind::Number
                            && f.is_finite()
                        {
                            Some(Value::Float(f))
                        } else {
                            Some(Value::Str(t))
                        };
                        cx.changes.push(Change::Field(path.to_vec(), value));
                    }
                }
                FieldKind::Bool => {
                    let default = field.default.as_deref() == Some("true");
                    let mut on = scalar.as_deref().map_or(default, |s| s == "true");
                    ui.horizontal(|ui| {
                        let text = if scalar.is_some() {
                            key.to_owned()
                        } else {
                            format!("{key} (default)")
                        };
                        if ui.checkbox(&mut on, text).changed() {
                            cx.changes
                                .push(Change::Field(path.to_vec(), Some(Value::Bool(on))));
                        }
                        if scalar.is_some() && !field.required && ui.small_button("reset").clicked()
                        {
                            cx.changes.push(Change::Field(path.to_vec(), None));
                        }
                    });
                }
                FieldKind::Choice(choices) => {
                    let shown = scalar.clone().unwrap_or_else(|| match &field.default {
                        Some(d) => format!("{d} (default)"),
                        None => "(not set)".into(),
                    });
                    egui::ComboBox::from_id_salt(id)
                        .selected_text(shown)
                        .width(ui.available_width())
                        .show_ui(ui, |ui| {
                            if !field.required
                                && ui.selectable_label(scalar.is_none(), "(default)").clicked()
                            {
                                cx.changes.push(Change::Field(path.to_vec(), None));
                            }
                            for (value, help) in choices {
                                let r =
                                    ui.selectable_label(scalar.as_deref() == Some(value), value);
                                let r = if help.is_empty() {
                                    r
                                } else {
                                    r.on_hover_text(help)
                                };
                                if r.clicked() {
                                    cx.changes.push(Change::Field(
                                        path.to_vec(),
                                        Some(Value::Str(value.clone())),
                                    ));
                                }
                            }
                        });
                }
                FieldKind::List(item) => self.list_ui(ui, cx, path, item, current),
                FieldKind::Map(value) => self.map_ui(ui, cx, path, field, value, current),
                FieldKind::Object(fields) => {
                    egui::Frame::new()
                        .inner_margin(egui::Margin {
                            left: 10,
                            right: 0,
                            top: 0,
                            bottom: 0,
                        })
                        .show(ui, |ui| {
                            for f in fields {
                                let mut p = path.to_vec();
                                p.push(f.key.clone());
                                let cur = current
                                    .and_then(YamlNode::as_mapping)
                                    .and_then(|m| m.get_node(&f.key));
                                self.field_ui(ui, cx, &p, f, cur);
                            }
                        });
                }
                FieldKind::Variants(shapes) => {
                    let chosen = current
                        .and_then(YamlNode::as_mapping)
                        .and_then(|m| m.keys().next().map(|k| k.as_str().to_owned()));
                    egui::ComboBox::from_id_salt(id)
                        .selected_text(chosen.clone().unwrap_or_else(|| "(choose)".into()))
                        .width(ui.available_width())
                        .show_ui(ui, |ui| {
                            for (name, help, kind) in shapes {
                                let r = ui.selectable_label(chosen.as_deref() == Some(name), name);
                                let r = if help.is_empty() {
                                    r
                                } else {
                                    r.on_hover_text(help)
                                };
                                if r.clicked() && chosen.as_deref() != Some(name) {
                                    let inner = match kind {
                                        FieldKind::Object(fields) => Value::Map(
                                            fields
                                                .iter()
                                                .filter(|f| f.required)
                                                .map(|f| (f.key.clone(), Value::Str(String::new())))
                                                .collect(),
                                        ),
                                        _ => Value::Str(String::new()),
                                    };
                                    cx.changes.push(Change::Field(
                                        path.to_vec(),
                                        Some(Value::Map(vec![(name.clone(), inner)])),
                                    ));
                                }
                            }
                        });
                    if let Some(chosen) = chosen
                        && let Some((_, help, kind)) = shapes.iter().find(|(n, _, _)| *n == chosen)
                    {
                        let mut p = path.to_vec();
                        p.push(chosen.clone());
                        let cur = current
                            .and_then(YamlNode::as_mapping)
                            .and_then(|m| m.get_node(&chosen));
                        let inner = Field {
                            key: chosen.clone(),
                            help: help.clone(),
                            required: true,
                            default: None,
                            kind: kind.clone(),
                        };
                        egui::Frame::new()
                            .inner_margin(egui::Margin {
                                left: 10,
                                right: 0,
                                top: 0,
                                bottom: 0,
                            })
                            .show(ui, |ui| self.field_ui(ui, cx, &p, &inner, cur));
                    }
                }
                FieldKind::Other => {
                    let text =
                        current.map_or_else(String::new, |n| format!("{:?}", yaml_to_value(n)));
                    ui.label(
                        RichText::new(if text.is_empty() {
                            "edit this one in the YAML file".to_owned()
                        } else {
                            text
                        })
                        .monospace()
                        .color(theme::WEAK),
                    );
                }
            }
            if path.len() == 1 {
                problems_ui(ui, cx.designer.validation().for_field(cx.node, key));
            }
        });
    }

    fn list_ui(
        &mut self,
        ui: &mut Ui,
        cx: &mut Ctx<'_>,
        path: &[String],
        item: &FieldKind,
        current: Option<&YamlNode>,
    ) {
        let items: Vec<String> = current
            .and_then(YamlNode::as_sequence)
            .map(|s| {
                s.iter()
                    .map(|n| {
                        n.as_scalar()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let kind = match item {
            FieldKind::Text(k) => *k,
            _ => TextKind::Plain,
        };
        let to_value = |items: Vec<String>| {
            Some(Value::List(
                items
                    .into_iter()
                    .map(|t| match (item, t.parse::<i64>()) {
                        (FieldKind::Integer, Ok(i)) => Value::Int(i),
                        _ => Value::Str(t),
                    })
                    .collect(),
            ))
        };
        for (i, it) in items.iter().enumerate() {
            ui.horizontal(|ui| {
                let id = Id::new(("list", cx.node, path, i));
                let remove = ui.small_button("×").on_hover_text("remove");
                if let Some(t) = self.text(ui, id, it, kind, None, false, None) {
                    let mut next = items.clone();
                    next[i] = t;
                    cx.changes
                        .push(Change::Field(path.to_vec(), to_value(next)));
                }
                if remove.clicked() {
                    let mut next = items.clone();
                    next.remove(i);
                    cx.changes.push(Change::Field(
                        path.to_vec(),
                        if next.is_empty() {
                            None
                        } else {
                            to_value(next)
                        },
                    ));
                }
            });
        }
        if ui.small_button("+ add").clicked() {
            let mut next = items.clone();
            next.push(String::new());
            cx.changes
                .push(Change::Field(path.to_vec(), to_value(next)));
        }
    }

    fn map_ui(
        &mut self,
        ui: &mut Ui,
        cx: &mut Ctx<'_>,
        path: &[String],
        field: &Field,
        value: &FieldKind,
        current: Option<&YamlNode>,
    ) {
        let entries: Vec<(String, String)> = current
            .and_then(YamlNode::as_mapping)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            v.as_scalar()
                                .map(|s| s.as_str().to_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let kind = match value {
            FieldKind::Text(k) => *k,
            _ => TextKind::Plain,
        };
        for (k, v) in &entries {
            ui.horizontal(|ui| {
                let key_id = Id::new(("map-key", cx.node, path, k));
                let remove = ui.small_button("×").on_hover_text("remove");
                let focused = ui.memory(|m| m.has_focus(key_id));
                let mut key = match self.buffers.get(&key_id) {
                    Some(b) if focused => b.clone(),
                    _ => k.clone(),
                };
                let r = ui.add(
                    TextEdit::singleline(&mut key)
                        .id(key_id)
                        .desired_width(90.0)
                        .font(egui::TextStyle::Monospace),
                );
                if r.changed() {
                    self.buffers.insert(key_id, key.clone());
                }
                if r.lost_focus() && key != *k && !key.is_empty() {
                    cx.changes
                        .push(Change::RenameKey(path.to_vec(), k.clone(), key.clone()));
                }
                let id = Id::new(("map-value", cx.node, path, k));
                if let Some(t) = self.text(ui, id, v, kind, None, false, None) {
                    let mut p = path.to_vec();
                    p.push(k.clone());
                    let value = match value {
                        FieldKind::Integer => {
                            t.parse::<i64>().map_or(Value::Str(t.clone()), Value::Int)
                        }
                        _ => Value::Str(t),
                    };
                    cx.changes.push(Change::Field(p, Some(value)));
                }
                if remove.clicked() {
                    let mut p = path.to_vec();
                    p.push(k.clone());
                    if entries.len() == 1 {
                        p.pop();
                    }
                    cx.changes.push(Change::Field(p, None));
                }
            });
        }
        let noun = if path.last().is_some_and(|k| k == "routes") {
            "route"
        } else {
            "entry"
        };
        if ui.small_button(format!("+ add {noun}")).clicked() {
            let taken: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            let key = (1..)
                .map(|i| format!("{noun}_{i}"))
                .find(|k| !taken.contains(&k.as_str()))
                .unwrap_or_else(|| noun.to_owned());
            let mut p = path.to_vec();
            p.push(key);
            let _ = field;
            cx.changes
                .push(Change::Field(p, Some(Value::Str(String::new()))));
        }
    }
}

/// The outputs of node `i`: each port with where it goes, and a way to connect it.
fn outputs_ui(ui: &mut Ui, cx: &mut Ctx<'_>, i: usize) {
    let g = cx.designer.graph();
    let n = &g.nodes[i];
    egui::Grid::new(("outputs", &n.name))
        .num_columns(2)
        .spacing([8.0, 4.0])
        .show(ui, |ui| {
            for (p, port) in n.ports.iter().enumerate() {
                let failure = port == flow_core::processor::FAILURE;
                ui.label(RichText::new(port).monospace().color(if failure {
                    theme::FAILURE
                } else {
                    theme::TEXT
                }));
                ui.horizontal_wrapped(|ui| {
                    for e in g.edges.iter().filter(|e| e.from == i && e.port == p) {
                        let to = &g.nodes[e.to].name;
                        if ui
                            .link(to)
                            .on_hover_text("select this connection")
                            .clicked()
                        {
                            cx.changes.push(Change::SelectEdge(e.index));
                        }
                    }
                    let targets: Vec<usize> = (0..g.nodes.len())
                        .filter(|&t| g.refuse_connection(i, p, t).is_none())
                        .collect();
                    if !targets.is_empty() {
                        egui::ComboBox::from_id_salt(("connect", &n.name, p))
                            .selected_text("connect…")
                            .width(90.0)
                            .show_ui(ui, |ui| {
                                for t in targets {
                                    if ui.selectable_label(false, &g.nodes[t].name).clicked() {
                                        cx.changes.push(Change::Connect {
                                            from: i,
                                            port: p,
                                            to: t,
                                        });
                                    }
                                }
                            });
                    }
                });
                ui.end_row();
            }
        });
}

fn apply(designer: &mut Designer, change: Change, focus: &mut Option<String>) {
    let Some(node) = designer.selection.single().map(str::to_owned) else {
        match change {
            Change::Edge(i, s) => {
                designer.set_edge_settings(i, &s);
            }
            Change::Defaults(s) => {
                designer.set_defaults(&s);
            }
            Change::Top(k, v) => {
                designer.set_top(k, v.as_deref());
            }
            Change::DeleteSelection => designer.delete_selection(),
            Change::Select(n) => {
                designer.select_node(&n, false);
                *focus = Some(n);
            }
            Change::SelectEdge(i) => designer.select_edge(i),
            _ => {}
        }
        return;
    };
    match change {
        Change::Field(path, value) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            designer.set_field(&node, &path, value);
        }
        Change::RenameKey(path, old, new) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            designer.edit(None, |doc| doc.rename_field(&node, &path, &old, &new));
        }
        Change::Rename(new) => {
            designer.rename(&node, &new);
        }
        Change::Connect { from, port, to } => {
            designer.connect(from, port, to);
        }
        Change::DeleteSelection => designer.delete_selection(),
        Change::Select(n) => {
            designer.select_node(&n, false);
            *focus = Some(n);
        }
        Change::SelectEdge(i) => designer.select_edge(i),
        Change::Edge(i, s) => {
            designer.set_edge_settings(i, &s);
        }
        Change::Defaults(s) => {
            designer.set_defaults(&s);
        }
        Change::Top(k, v) => {
            designer.set_top(k, v.as_deref());
        }
    }
}

fn heading(ui: &mut Ui, title: &str, chip: Option<(&str, Color32)>) {
    ui.horizontal(|ui| {
        ui.label(RichText::new(title).strong().size(17.0).color(theme::TEXT));
        if let Some((text, color)) = chip {
            ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
                egui::Frame::new()
                    .fill(color.gamma_multiply(0.25))
                    .stroke(egui::Stroke::new(1.0, color))
                    .corner_radius(8)
                    .inner_margin(egui::Margin::symmetric(8, 1))
                    .show(ui, |ui| {
                        ui.label(RichText::new(text).size(11.0).color(color));
                    });
            });
        }
    });
}

fn section(ui: &mut Ui, title: &str) {
    ui.add_space(4.0);
    ui.label(RichText::new(title).strong().size(13.0));
    ui.separator();
}

/// A field's label: key, a badge for its syntax, a star when required, and its doc comment
/// (first sentence below, all of it on hover).
fn label(ui: &mut Ui, key: &str, badge: Option<&str>, required: bool, help: &str) -> Id {
    let id = ui
        .horizontal(|ui| {
            let r = ui.label(RichText::new(key).monospace().color(theme::TEXT));
            let id = r.id;
            if required {
                ui.label(RichText::new("*").color(theme::ERROR));
            }
            if let Some(b) = badge {
                ui.label(RichText::new(b).size(10.0).color(theme::SELECTED));
            }
            if !help.is_empty() {
                r.on_hover_text(help);
            }
            id
        })
        .inner;
    let first = help
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace('\n', " ");
    if !first.is_empty() {
        ui.add(egui::Label::new(RichText::new(first).size(11.0).color(theme::WEAK)).wrap());
    }
    id
}

fn problems_ui<'a>(ui: &mut Ui, problems: impl Iterator<Item = &'a Problem>) {
    for p in problems {
        let color = if p.is_error() {
            theme::ERROR
        } else {
            theme::WARNING
        };
        let mut msg = p.message.clone();
        if let Some(i) = msg.find("`: ") {
            if msg.starts_with("processor `") {
                msg = msg[i + 3..].to_owned();
            }
        } else if let Some(rest) = msg.strip_prefix("processor `")
            && let Some((_, after)) = rest.split_once("`: ")
        {
            msg = after.to_owned();
        }
        ui.add(
            egui::Label::new(
                RichText::new(format!("{} {msg}", if p.is_error() { "✖" } else { "⚠" }))
                    .size(12.0)
                    .color(color),
            )
            .wrap(),
        );
        if let Some(h) = &p.help {
            ui.add(
                egui::Label::new(
                    RichText::new(format!("  {h}"))
                        .size(11.0)
                        .color(theme::WEAK),
                )
                .wrap(),
            );
        }
    }
}

/// "1 error, 2 warnings".
fn counted(errors: usize, warnings: usize) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}
