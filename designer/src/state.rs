//! The designer's state and every operation on it, with no window: the document being
//! edited, its file, undo and redo, the selection, and what is derived from the text (the
//! graph the canvas draws and the validation findings). The views read it and call these
//! operations; tests drive it directly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flow_core::processor::Registry;
use flow_core::spec::document::{
    EdgeSettingsEdit, EditError, FlowDocument, Outline, Value, valid_name,
};
use marked_yaml::Node as YamlNode;

use crate::Env;
use crate::graph::FlowGraph;
use crate::validation::Validation;

/// The text of a new flow.
pub const NEW_FLOW: &str = "name: untitled\ndescription: a new flow\n";

/// How many steps undo keeps.
const UNDO_DEPTH: usize = 500;

/// What is selected: processors, or one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Selected processors, by name.
    pub nodes: BTreeSet<String>,
    /// The selected connection (its index in `connections:`).
    pub edge: Option<usize>,
}

impl Selection {
    /// The one selected processor, if exactly one is.
    pub fn single(&self) -> Option<&str> {
        match self.nodes.len() {
            1 => self.nodes.iter().next().map(String::as_str),
            _ => None,
        }
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.edge.is_none()
    }
}

/// A message for the status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Something happened.
    Info(String),
    /// Something was refused or failed.
    Error(String),
}

#[derive(Clone, Debug)]
struct Snapshot {
    text: String,
    selection: Selection,
}

/// The file on disk as the designer last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DiskStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl DiskStamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: m.modified().ok(),
            len: m.len(),
        })
    }
}

/// The designer's state.
pub struct Designer {
    registry: Registry,
    env: Env,
    doc: FlowDocument,
    path: Option<PathBuf>,
    saved: String,
    disk: Option<DiskStamp>,
    /// A change on disk the user declined to reload: not offered again for the same state.
    ignored_disk: Option<DiskStamp>,
    undo: Vec<Snapshot>,
    redo: Vec<Snapshot>,
    coalesce: Option<String>,
    graph: FlowGraph,
    validation: Validation,
    revision: u64,
    generation: u64,
    /// What is selected.
    pub selection: Selection,
    /// The last message for the status line.
    pub notice: Option<Notice>,
    clipboard: Option<String>,
    recent: Vec<PathBuf>,
}

impl Designer {
    /// A designer on a new, empty flow.
    pub fn new(registry: Registry, env: Env) -> Self {
        let doc = FlowDocument::new(NEW_FLOW);
        let mut d = Self {
            graph: FlowGraph::default(),
            validation: Validation::default(),
            registry,
            env,
            saved: doc.text().to_owned(),
            doc,
            path: None,
            disk: None,
            ignored_disk: None,
            undo: Vec::new(),
            redo: Vec::new(),
            coalesce: None,
            revision: 0,
            generation: 0,
            selection: Selection::default(),
            notice: None,
            clipboard: None,
            recent: Vec::new(),
        };
        d.refresh();
        d
    }

    /// The processor registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The document.
    pub fn document(&self) -> &FlowDocument {
        &self.doc
    }

    /// What the document contains.
    pub fn outline(&self) -> &Outline {
        self.doc.outline()
    }

    /// The graph the canvas draws.
    pub fn graph(&self) -> &FlowGraph {
        &self.graph
    }

    /// The validation findings.
    pub fn validation(&self) -> &Validation {
        &self.validation
    }

    /// Bumped on every change of the text: views rebuild what they derive from it.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Bumped when another flow is loaded (open, new): views start over.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The file, once opened or saved.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether there are changes not saved.
    pub fn is_dirty(&self) -> bool {
        self.doc.text() != self.saved
    }

    /// Recently opened files, the latest first.
    pub fn recent(&self) -> &[PathBuf] {
        &self.recent
    }

    /// Replace the recent files (from the app's saved settings).
    pub fn set_recent(&mut self, recent: Vec<PathBuf>) {
        self.recent = recent;
    }

    /// The window title: file name, `*` when modified.
    pub fn title(&self) -> String {
        let name = self.path.as_ref().and_then(|p| p.file_name()).map_or_else(
            || "untitled".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        format!(
            "{name}{} - flow designer",
            if self.is_dirty() { " *" } else { "" }
        )
    }

    fn refresh(&mut self) {
        self.graph = FlowGraph::build(&self.doc, &self.registry, &self.env);
        self.validation = Validation::run(&self.doc, &self.registry, &self.env);
        self.revision += 1;
        let outline = self.doc.outline();
        self.selection
            .nodes
            .retain(|n| outline.processor(n).is_some());
        if self
            .selection
            .edge
            .is_some_and(|i| self.graph.edge(i).is_none())
        {
            self.selection.edge = None;
        }
    }

    // ----- files -----

    /// Start a new flow (the caller has dealt with unsaved changes).
    pub fn new_flow(&mut self) {
        self.load_text(NEW_FLOW.to_owned(), None);
    }

    /// Open a file (the caller has dealt with unsaved changes).
    pub fn open(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        self.load_text(text, Some(path.to_owned()));
        self.remember(path);
        Ok(())
    }

    /// Show `text` as if opened from `path` (`None`: a new flow).
    pub fn load_text(&mut self, text: String, path: Option<PathBuf>) {
        self.disk = path.as_deref().and_then(DiskStamp::of);
        self.ignored_disk = None;
        self.saved = text.clone();
        self.doc = FlowDocument::new(text);
        self.path = path;
        self.undo.clear();
        self.redo.clear();
        self.coalesce = None;
        self.selection = Selection::default();
        self.notice = None;
        self.generation += 1;
        self.refresh();
        if let Some((at, e)) = &self.doc.outline().error {
            self.notice = Some(Notice::Error(format!(
                "line {}: {e}; fix it in a text editor, the designer reloads it",
                at.line
            )));
        }
    }

    fn remember(&mut self, path: &Path) {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        self.recent.retain(|p| *p != path);
        self.recent.insert(0, path);
        self.recent.truncate(10);
    }

    /// Save to the file it was opened from.
    pub fn save(&mut self) -> Result<(), String> {
        match self.path.clone() {
            Some(p) => self.save_as(&p),
            None => Err("choose where to save it first".into()),
        }
    }

    /// Save to `path`, which becomes the document's file.
    pub fn save_as(&mut self, path: &Path) -> Result<(), String> {
        // Write then rename, so a crash mid-save never leaves half a file.
        let tmp = path.with_extension("yaml.saving");
        std::fs::write(&tmp, self.doc.text())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot save {}: {e}", path.display())
            })?;
        self.saved = self.doc.text().to_owned();
        self.path = Some(path.to_owned());
        self.disk = DiskStamp::of(path);
        self.ignored_disk = None;
        self.remember(path);
        self.notice = Some(Notice::Info(format!("saved {}", path.display())));
        Ok(())
    }

    /// Whether the file changed on disk since it was opened or saved (and the change was not
    /// already declined).
    pub fn changed_on_disk(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let now = DiskStamp::of(path);
        now.is_some() && now != self.disk && now != self.ignored_disk
    }

    /// Read the file again, dropping changes made here (undo can bring them back).
    pub fn reload(&mut self) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.checkpoint(None);
        self.doc.set_text(text.clone());
        self.saved = text;
        self.disk = DiskStamp::of(&path);
        self.ignored_disk = None;
        self.refresh();
        self.notice = Some(Notice::Info(format!("reloaded {}", path.display())));
        Ok(())
    }

    /// Keep the current text though the file changed on disk.
    pub fn ignore_disk_change(&mut self) {
        self.ignored_disk = self.path.as_deref().and_then(DiskStamp::of);
    }

    // ----- edits, undo, redo -----

    fn checkpoint(&mut self, coalesce: Option<&str>) {
        if coalesce.is_some() && coalesce == self.coalesce.as_deref() {
            return;
        }
        self.coalesce = coalesce.map(str::to_owned);
        self.undo.push(Snapshot {
            text: self.doc.text().to_owned(),
            selection: self.selection.clone(),
        });
        if self.undo.len() > UNDO_DEPTH {
            self.undo.remove(0);
        }
        self.redo.clear();
    }

    /// Make an edit as one undo step. Edits with the same `coalesce` key in a row (typing in
    /// one field) make a single step. A refused edit changes nothing and says why.
    pub fn edit(
        &mut self,
        coalesce: Option<&str>,
        f: impl FnOnce(&mut FlowDocument) -> Result<(), EditError>,
    ) -> bool {
        let mut doc = self.doc.clone();
        match f(&mut doc) {
            Ok(()) if doc.text() == self.doc.text() => true,
            Ok(()) => {
                self.checkpoint(coalesce);
                self.doc = doc;
                self.refresh();
                true
            }
            Err(e) => {
                self.notice = Some(Notice::Error(e.to_string()));
                false
            }
        }
    }

    /// Whether there is something to undo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Whether there is something to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Undo the last edit.
    pub fn undo(&mut self) {
        if let Some(s) = self.undo.pop() {
            self.redo.push(Snapshot {
                text: self.doc.text().to_owned(),
                selection: self.selection.clone(),
            });
            self.restore(s);
        }
    }

    /// Redo the last undone edit.
    pub fn redo(&mut self) {
        if let Some(s) = self.redo.pop() {
            self.undo.push(Snapshot {
                text: self.doc.text().to_owned(),
                selection: self.selection.clone(),
            });
            self.restore(s);
        }
    }

    fn restore(&mut self, s: Snapshot) {
        self.doc.set_text(s.text);
        self.selection = s.selection;
        self.coalesce = None;
        self.refresh();
    }

    /// End the current run of coalesced edits (focus left a field).
    pub fn end_typing(&mut self) {
        self.coalesce = None;
    }

    // ----- operations -----

    /// A free name for a new processor of type `type_name`: `filter`, `filter_2`...
    pub fn free_name(&self, base: &str) -> String {
        let base: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = if valid_name(&base) {
            base
        } else {
            "processor".into()
        };
        let outline = self.doc.outline();
        if outline.processor(&base).is_none() {
            return base;
        }
        (2..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| outline.processor(n).is_none())
            .unwrap_or(base)
    }

    /// Positions of every node as drawn now, for `layout:`.
    fn positions(&self) -> Vec<(String, [f32; 2])> {
        self.graph
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.pos))
            .collect()
    }

    /// Add a processor of `type_name` at `pos` on the canvas, with its required fields left
    /// empty for the inspector; it becomes the selection. Returns its name.
    pub fn add_processor(&mut self, type_name: &str, pos: [f32; 2]) -> Option<String> {
        let name = self.free_name(type_name);
        let mut layout = self.positions();
        layout.push((name.clone(), pos));
        let ok = self.edit(None, |doc| {
            doc.add_processor(&name, type_name, &[])?;
            doc.set_layout(&layout)
        });
        ok.then(|| {
            self.selection = Selection {
                nodes: BTreeSet::from([name.clone()]),
                edge: None,
            };
            name
        })
    }

    /// Delete the selected processors (with their connections) or the selected connection.
    pub fn delete_selection(&mut self) {
        if let Some(edge) = self.selection.edge {
            self.disconnect(edge);
            return;
        }
        let names: Vec<String> = self.selection.nodes.iter().cloned().collect();
        if names.is_empty() {
            return;
        }
        if self.edit(None, |doc| {
            for n in &names {
                doc.remove_processor(n)?;
            }
            Ok(())
        }) {
            self.selection = Selection::default();
        }
    }

    /// Rename a processor (its connections and layout follow).
    pub fn rename(&mut self, old: &str, new: &str) -> bool {
        let ok = self.edit(None, |doc| doc.rename_processor(old, new));
        if ok && self.selection.nodes.remove(old) {
            self.selection.nodes.insert(new.to_owned());
        }
        ok
    }

    /// Set a config value of a processor; typing in one field is one undo step.
    pub fn set_field(&mut self, node: &str, path: &[&str], value: Option<Value>) -> bool {
        let key = format!("field\u{0}{node}\u{0}{}", path.join("\u{0}"));
        self.edit(Some(&key), |doc| doc.set_field(node, path, value))
    }

    /// Connect `from.port` to `to` (by node and port indices in the graph), unless the
    /// engine's rules forbid it: then nothing changes and the notice says why.
    pub fn connect(&mut self, from: usize, port: usize, to: usize) -> bool {
        if let Some(why) = self.graph.refuse_connection(from, port, to) {
            self.notice = Some(Notice::Error(format!("cannot connect: {why}")));
            return false;
        }
        let (a, b) = (&self.graph.nodes[from], &self.graph.nodes[to]);
        let port_name = a.ports[port].clone();
        // `a -> b` for a plain `out`, `a.matched -> b` when the port says something, as the
        // example flows write them.
        let port = (a.default_port() != Some(port) || port_name != "out").then_some(port_name);
        let (a, b) = (a.name.clone(), b.name.clone());
        self.edit(None, |doc| doc.add_connection(&a, port.as_deref(), &b))
    }

    /// Remove connection `index`.
    pub fn disconnect(&mut self, index: usize) -> bool {
        let ok = self.edit(None, |doc| doc.remove_connection(index));
        if ok {
            self.selection.edge = None;
        }
        ok
    }

    /// Set the back-pressure settings of connection `index`.
    pub fn set_edge_settings(&mut self, index: usize, settings: &EdgeSettingsEdit) -> bool {
        let key = format!("edge\u{0}{index}");
        self.edit(Some(&key), |doc| {
            doc.set_connection_settings(index, settings)
        })
    }

    /// Set the flow's `defaults:`.
    pub fn set_defaults(&mut self, settings: &EdgeSettingsEdit) -> bool {
        self.edit(Some("defaults"), |doc| doc.set_defaults(settings))
    }

    /// Set the flow's `name` or `description`.
    pub fn set_top(&mut self, key: &str, value: Option<&str>) -> bool {
        let coalesce = format!("top\u{0}{key}");
        self.edit(Some(&coalesce), |doc| doc.set_top(key, value))
    }

    /// Nodes were moved on the canvas: write where every node is now into `layout:` (all of
    /// them, so the automatic layout of the others stays as it was drawn).
    pub fn move_nodes(&mut self, moved: &[(String, [f32; 2])]) -> bool {
        let mut layout = self.positions();
        for (name, pos) in moved {
            if let Some(e) = layout.iter_mut().find(|(n, _)| n == name) {
                e.1 = *pos;
            }
        }
        self.edit(None, |doc| doc.set_layout(&layout))
    }

    /// Select one processor (or add it to the selection).
    pub fn select_node(&mut self, name: &str, add: bool) {
        if !add {
            self.selection.nodes.clear();
        }
        self.selection.edge = None;
        self.selection.nodes.insert(name.to_owned());
    }

    /// Select a connection.
    pub fn select_edge(&mut self, index: usize) {
        self.selection = Selection {
            nodes: BTreeSet::new(),
            edge: Some(index),
        };
    }

    /// Processors whose name or type contains `query` (case-insensitive).
    pub fn find(&self, query: &str) -> Vec<String> {
        let q = query.to_lowercase();
        self.graph
            .nodes
            .iter()
            .filter(|n| {
                n.name.to_lowercase().contains(&q)
                    || n.type_name.as_deref().is_some_and(|t| t.contains(&q))
            })
            .map(|n| n.name.clone())
            .collect()
    }

    // ----- copy and paste -----

    /// The selected processors and the connections between them, as flow YAML (what Ctrl+C
    /// puts on the clipboard).
    pub fn copy(&mut self) -> Option<String> {
        let names = &self.selection.nodes;
        if names.is_empty() {
            return None;
        }
        let mut snippet = FlowDocument::new("");
        let outline = self.doc.outline();
        for p in outline
            .processors
            .iter()
            .filter(|p| names.contains(&p.name))
        {
            let fields = match yaml_to_value(&p.node) {
                Value::Map(pairs) => pairs,
                _ => continue,
            };
            let (type_name, rest): (Vec<_>, Vec<_>) =
                fields.into_iter().partition(|(k, _)| k == "type");
            let type_name = match type_name.first() {
                Some((_, Value::Str(t))) => t.clone(),
                _ => continue,
            };
            snippet.add_processor(&p.name, &type_name, &rest).ok()?;
        }
        for c in outline.connections.iter().flatten() {
            if names.contains(&c.from) && names.contains(&c.to) {
                snippet
                    .add_connection(&c.from, c.port.as_deref(), &c.to)
                    .ok()?;
            }
        }
        let positions: Vec<(String, [f32; 2])> = self
            .graph
            .nodes
            .iter()
            .filter(|n| names.contains(&n.name))
            .map(|n| (n.name.clone(), n.pos))
            .collect();
        snippet.set_layout(&positions).ok()?;
        let text = snippet.text().to_owned();
        self.clipboard = Some(text.clone());
        Some(text)
    }

    /// Paste flow YAML (from [`Designer::copy`], or written by hand): its processors get
    /// free names, keep their connections among themselves and land at `at` (or next to
    /// where they were). `None` pastes the designer's own clipboard.
    pub fn paste(&mut self, text: Option<&str>, at: Option<[f32; 2]>) -> bool {
        let Some(text) = text.map(str::to_owned).or_else(|| self.clipboard.clone()) else {
            return false;
        };
        let snippet = FlowDocument::new(text);
        let o = snippet.outline();
        if o.error.is_some() || o.processors.is_empty() {
            self.notice = Some(Notice::Error(
                "nothing to paste: the clipboard holds no processors".into(),
            ));
            return false;
        }
        let mut renamed: Vec<(String, String)> = Vec::new();
        let mut taken: BTreeSet<String> = self
            .outline()
            .processors
            .iter()
            .map(|p| p.name.clone())
            .collect();
        for p in &o.processors {
            let mut name = p.name.clone();
            let mut i = 2;
            while taken.contains(&name) || !valid_name(&name) {
                name = format!("{}_{i}", p.name);
                i += 1;
            }
            taken.insert(name.clone());
            renamed.push((p.name.clone(), name));
        }
        let new_name = |old: &str| {
            renamed
                .iter()
                .find(|(o, _)| o == old)
                .map(|(_, n)| n.clone())
        };
        // Where they go: their own layout shifted to `at` (or by a step, so a copy does not
        // hide its original), or a column at `at`.
        let own: Vec<[f32; 2]> = o
            .processors
            .iter()
            .enumerate()
            .map(|(i, p)| o.position(&p.name).unwrap_or([0.0, i as f32 * 140.0]))
            .collect();
        let min = own.iter().fold([f32::MAX, f32::MAX], |m, p| {
            [m[0].min(p[0]), m[1].min(p[1])]
        });
        let origin = at.unwrap_or([min[0] + 40.0, min[1] + 40.0]);
        let mut layout = self.positions();
        for ((_, new), p) in renamed.iter().zip(&own) {
            layout.push((
                new.clone(),
                [origin[0] + p[0] - min[0], origin[1] + p[1] - min[1]],
            ));
        }
        let ok = self.edit(None, |doc| {
            for (p, (_, new)) in o.processors.iter().zip(&renamed) {
                let Value::Map(fields) = yaml_to_value(&p.node) else {
                    continue;
                };
                let (type_name, rest): (Vec<_>, Vec<_>) =
                    fields.into_iter().partition(|(k, _)| k == "type");
                let type_name = match type_name.first() {
                    Some((_, Value::Str(t))) => t.clone(),
                    _ => String::new(),
                };
                doc.add_processor(new, &type_name, &rest)?;
            }
            for c in o.connections.iter().flatten() {
                if let (Some(from), Some(to)) = (new_name(&c.from), new_name(&c.to)) {
                    doc.add_connection(&from, c.port.as_deref(), &to)?;
                }
            }
            doc.set_layout(&layout)
        });
        if ok {
            self.selection = Selection {
                nodes: renamed.into_iter().map(|(_, n)| n).collect(),
                edge: None,
            };
        }
        ok
    }
}

/// A value as marked-yaml read it, to write it again: plain scalars that read as numbers or
/// booleans stay so, quoted ones stay strings.
pub fn yaml_to_value(node: &YamlNode) -> Value {
    match node {
        YamlNode::Scalar(s) => {
            let text = s.as_str();
            if s.may_coerce() {
                if let Ok(i) = text.parse::<i64>() {
                    return Value::Int(i);
                }
                if text.contains('.')
                    && let Ok(f) = text.parse::<f64>()
                    && f.is_finite()
                {
                    return Value::Float(f);
                }
                if let Ok(b) = text.parse::<bool>() {
                    return Value::Bool(b);
                }
            }
            Value::Str(text.to_owned())
        }
        YamlNode::Sequence(s) => Value::List(s.iter().map(yaml_to_value).collect()),
        YamlNode::Mapping(m) => Value::Map(
            m.iter()
                .map(|(k, v)| (k.as_str().to_owned(), yaml_to_value(v)))
                .collect(),
        ),
    }
}
