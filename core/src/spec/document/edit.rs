//! Edits of a [`FlowDocument`], through `yaml-edit`'s lossless syntax tree.
//!
//! Every edit parses the current text, changes the tree, prints it, reads the result back with
//! marked-yaml and checks that it holds the change. Anything else (a YAML error, a panic in
//! the editor, a value that would read back differently) refuses the edit and leaves the
//! document as it was.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;

use marked_yaml::Node;
use yaml_edit::{Mapping, MappingBuilder, Sequence, SequenceBuilder};

use super::outline::{ConnectionForm, ConnectionOutline, Outline};
use super::{FlowDocument, LAYOUT_KEY};

/// A value to write into a flow file.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string, quoted only if YAML needs it.
    Str(String),
    /// An integer.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A list (written `[a, b]` when it holds only scalars).
    List(Vec<Value>),
    /// A mapping, in this order.
    Map(Vec<(String, Value)>),
}

impl Value {
    /// Whether `node` (as marked-yaml read it) holds this value.
    pub fn matches(&self, node: &Node) -> bool {
        match (self, node) {
            (Value::Str(s), Node::Scalar(n)) => n.as_str() == s,
            (Value::Int(i), Node::Scalar(n)) => n.as_str().parse::<i64>().ok() == Some(*i),
            (Value::Float(f), Node::Scalar(n)) => n.as_str().parse::<f64>().ok() == Some(*f),
            (Value::Bool(b), Node::Scalar(n)) => n.as_str().parse::<bool>().ok() == Some(*b),
            (Value::List(items), Node::Sequence(s)) => {
                items.len() == s.len() && items.iter().zip(s.iter()).all(|(v, n)| v.matches(n))
            }
            (Value::Map(pairs), Node::Mapping(m)) => {
                pairs.len() == m.len()
                    && pairs
                        .iter()
                        .all(|(k, v)| m.get_node(k).is_some_and(|n| v.matches(n)))
            }
            _ => false,
        }
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, Value::List(_) | Value::Map(_))
    }
}

/// Back-pressure settings of a connection as they should be written; `None` leaves a setting
/// out (the edge then takes it from `defaults:`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgeSettingsEdit {
    /// `max_records`.
    pub max_records: Option<String>,
    /// `max_bytes`.
    pub max_bytes: Option<String>,
    /// `when_full`.
    pub when_full: Option<String>,
}

impl EdgeSettingsEdit {
    fn pairs(&self) -> [(&'static str, Option<Value>); 3] {
        [
            (
                "max_records",
                self.max_records.as_deref().map(number_or_string),
            ),
            ("max_bytes", self.max_bytes.as_deref().map(number_or_string)),
            ("when_full", self.when_full.clone().map(Value::Str)),
        ]
    }

    fn is_empty(&self) -> bool {
        self.max_records.is_none() && self.max_bytes.is_none() && self.when_full.is_none()
    }
}

/// `42` as a number, anything else as a string.
fn number_or_string(text: &str) -> Value {
    text.trim()
        .parse::<i64>()
        .map_or_else(|_| Value::Str(text.to_owned()), Value::Int)
}

/// Why an edit was refused. The document is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    /// The text is not a YAML mapping; fix it by hand first.
    #[error("the file cannot be edited until its YAML is fixed: {0}")]
    Unparsable(String),
    /// No processor has this name.
    #[error("there is no processor `{0}`")]
    NoProcessor(String),
    /// The name is taken.
    #[error("a processor named `{0}` already exists")]
    Exists(String),
    /// The name has characters a processor name cannot have.
    #[error("`{0}` is not a valid processor name: use letters, digits, `_` and `-`")]
    BadName(String),
    /// No connection has this index.
    #[error("there is no connection #{0}")]
    NoConnection(usize),
    /// A value on the path is not a mapping.
    #[error("`{0}` is not a mapping")]
    NotAMapping(String),
    /// The editor could not make the change (a bug in it, or YAML it does not handle).
    #[error("the edit could not be made: {0}")]
    Failed(String),
}

/// Whether `name` can name a processor.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl FlowDocument {
    /// Run `f` on the syntax tree of `base` and accept the printed result if `check` holds.
    fn apply(
        &mut self,
        base: &str,
        f: impl FnOnce(&yaml_edit::Document) -> Result<(), EditError>,
        check: impl FnOnce(&Outline) -> bool,
    ) -> Result<(), EditError> {
        if let Some((at, e)) = &self.outline.error {
            return Err(EditError::Unparsable(format!(
                "line {}, column {}: {e}",
                at.line, at.column
            )));
        }
        let text = catch_unwind(AssertUnwindSafe(|| {
            // An empty file is an empty flow: start its mapping.
            let doc = if base.trim().is_empty() {
                yaml_edit::Document::new_mapping()
            } else {
                yaml_edit::Document::from_str(base)
                    .map_err(|e| EditError::Unparsable(e.to_string()))?
            };
            f(&doc)?;
            Ok(doc.to_string())
        }))
        .map_err(|_| EditError::Failed("the YAML editor stopped on this file".into()))??;
        let outline = Outline::read(&text);
        if let Some((at, e)) = &outline.error {
            return Err(EditError::Failed(format!(
                "the result would not be valid YAML (line {}: {e})",
                at.line
            )));
        }
        if !check(&outline) {
            return Err(EditError::Failed(
                "the result does not read back as intended".into(),
            ));
        }
        self.text = text;
        self.outline = outline;
        Ok(())
    }

    fn require(&self, name: &str) -> Result<(), EditError> {
        match self.outline.processor(name) {
            Some(_) => Ok(()),
            None => Err(EditError::NoProcessor(name.to_owned())),
        }
    }

    /// Add a processor at the end of `processors:` (created if missing).
    pub fn add_processor(
        &mut self,
        name: &str,
        type_name: &str,
        fields: &[(String, Value)],
    ) -> Result<(), EditError> {
        if !valid_name(name) {
            return Err(EditError::BadName(name.to_owned()));
        }
        if self.outline.processor(name).is_some() {
            return Err(EditError::Exists(name.to_owned()));
        }
        let mut pairs = vec![("type".to_owned(), Value::Str(type_name.to_owned()))];
        pairs.extend(fields.iter().cloned());
        let value = Value::Map(pairs);
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let top = top(doc)?;
                match top.get_mapping("processors") {
                    Some(procs) => set_value(&procs, name, &value),
                    None => {
                        let procs = MappingBuilder::new();
                        let procs = add_pair(procs, name, &value);
                        top.set("processors", as_mapping(procs)?);
                    }
                }
                Ok(())
            },
            |o| o.processor(name).is_some_and(|p| value.matches(&p.node)),
        )
    }

    /// Remove a processor, the comment lines right above it, its connections and its layout.
    pub fn remove_processor(&mut self, name: &str) -> Result<(), EditError> {
        self.require(name)?;
        let base = self.without_comment_above(name);
        let doomed: Vec<usize> = self
            .outline
            .connections
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.from == name || c.to == name))
            .map(|(i, _)| i)
            .collect();
        let remaining = self.outline.connections.len() - doomed.len();
        self.apply(
            &base,
            |doc| {
                let top = top(doc)?;
                let procs = processors(&top)?;
                procs.remove(name);
                if let Some(conns) = top.get_sequence("connections") {
                    for &i in doomed.iter().rev() {
                        conns.remove(i);
                    }
                }
                if let Some(layout) = top.get_mapping(LAYOUT_KEY) {
                    layout.remove(name);
                }
                Ok(())
            },
            |o| {
                o.processor(name).is_none()
                    && o.connections.len() == remaining
                    && o.position(name).is_none()
            },
        )
    }

    /// The text without the comment lines directly above processor `name` (same indentation,
    /// no blank line between): they describe it, and go with it.
    fn without_comment_above(&self, name: &str) -> String {
        let Some(p) = self.outline.processor(name) else {
            return self.text.clone();
        };
        let lines: Vec<&str> = self.text.split_inclusive('\n').collect();
        let key_line = p.at.line - 1;
        let indent = p.at.column - 1;
        let mut first = key_line;
        while first > 0 {
            let l = lines[first - 1];
            let trimmed = l.trim_start_matches(' ');
            if l.len() - trimmed.len() == indent && trimmed.starts_with('#') {
                first -= 1;
            } else {
                break;
            }
        }
        let mut out = String::with_capacity(self.text.len());
        for (i, l) in lines.iter().enumerate() {
            if !(first..key_line).contains(&i) {
                out.push_str(l);
            }
        }
        out
    }

    /// Rename a processor, in `processors:`, in its connections and in `layout:`.
    pub fn rename_processor(&mut self, old: &str, new: &str) -> Result<(), EditError> {
        if old == new {
            return Ok(());
        }
        self.require(old)?;
        if !valid_name(new) {
            return Err(EditError::BadName(new.to_owned()));
        }
        if self.outline.processor(new).is_some() {
            return Err(EditError::Exists(new.to_owned()));
        }
        let renamed: Vec<(usize, ConnectionOutline)> = self
            .outline
            .connections
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                (c.from == old || c.to == old).then(|| {
                    let mut c = c.clone();
                    if c.from == old {
                        c.from = new.to_owned();
                    }
                    if c.to == old {
                        c.to = new.to_owned();
                    }
                    (i, c)
                })
            })
            .collect();
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let top = top(doc)?;
                let procs = processors(&top)?;
                procs.rename_key(old, new);
                if let Some(layout) = top.get_mapping(LAYOUT_KEY) {
                    layout.rename_key(old, new);
                }
                if let Some(conns) = top.get_sequence("connections") {
                    for (i, c) in &renamed {
                        write_endpoints(&conns, *i, c)?;
                    }
                }
                Ok(())
            },
            |o| {
                o.processor(new).is_some()
                    && o.processor(old).is_none()
                    && renamed.iter().all(|(i, c)| {
                        o.connections
                            .get(*i)
                            .and_then(Option::as_ref)
                            .is_some_and(|r| r.from == c.from && r.to == c.to && r.port == c.port)
                    })
            },
        )
    }

    /// Set (or with `None`, remove) the value at `path` inside processor `name`
    /// (`["condition"]`, `["routes", "hot"]`). Missing mappings on the way are created.
    pub fn set_field(
        &mut self,
        name: &str,
        path: &[&str],
        value: Option<Value>,
    ) -> Result<(), EditError> {
        self.require(name)?;
        let Some((last, parents)) = path.split_last() else {
            return Err(EditError::Failed("an empty path".into()));
        };
        let base = self.text.clone();
        let expected = value.clone();
        self.apply(
            &base,
            |doc| {
                let mut map = processor(doc, name)?;
                for (depth, key) in parents.iter().enumerate() {
                    match map.get_mapping(*key) {
                        Some(m) => map = m,
                        None if map.get(*key).is_some() => {
                            return Err(EditError::NotAMapping(parents[..=depth].join(".")));
                        }
                        None => {
                            let Some(v) = value else { return Ok(()) };
                            // Build the rest of the path as one nested value.
                            let mut nested = v;
                            for k in path[depth + 1..].iter().rev() {
                                nested = Value::Map(vec![((*k).to_owned(), nested)]);
                            }
                            set_value(&map, key, &nested);
                            return Ok(());
                        }
                    }
                }
                match &value {
                    Some(v) => set_value(&map, last, v),
                    None => {
                        map.remove(*last);
                    }
                }
                Ok(())
            },
            |o| {
                let node = o.processor(name).and_then(|p| p.get(path));
                match (&expected, node) {
                    (Some(v), Some(n)) => v.matches(n),
                    (None, n) => n.is_none(),
                    (Some(_), None) => false,
                }
            },
        )
    }

    /// Rename key `old` of the mapping at `path` inside processor `name` (a route, an
    /// aggregate), keeping its place and value.
    pub fn rename_field(
        &mut self,
        name: &str,
        path: &[&str],
        old: &str,
        new: &str,
    ) -> Result<(), EditError> {
        self.require(name)?;
        if old == new {
            return Ok(());
        }
        let map_path: Vec<&str> = path.to_vec();
        let exists = |o: &Outline, key: &str| {
            let mut p = map_path.clone();
            p.push(key);
            o.processor(name).and_then(|p_| p_.get(&p)).is_some()
        };
        if !exists(&self.outline, old) {
            return Err(EditError::Failed(format!("there is no `{old}`")));
        }
        if new.is_empty() || exists(&self.outline, new) {
            return Err(EditError::Failed(format!("`{new}` is taken or empty")));
        }
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let mut map = processor(doc, name)?;
                for key in path {
                    map = map
                        .get_mapping(*key)
                        .ok_or_else(|| EditError::NotAMapping((*key).to_owned()))?;
                }
                map.rename_key(old, new);
                Ok(())
            },
            |o| exists(o, new) && !exists(o, old),
        )
    }

    /// Set (or remove) a top-level scalar such as `name` or `description`.
    pub fn set_top(&mut self, key: &str, value: Option<&str>) -> Result<(), EditError> {
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let top = top(doc)?;
                match value {
                    Some(v) => set_value(&top, key, &Value::Str(v.to_owned())),
                    None => {
                        top.remove(key);
                    }
                }
                Ok(())
            },
            |o| match key {
                "name" => o.name.as_deref() == value,
                "description" => o.description.as_deref() == value,
                _ => true,
            },
        )
    }

    /// Set `defaults:` (the settings of every edge); all `None` removes the section.
    pub fn set_defaults(&mut self, settings: &EdgeSettingsEdit) -> Result<(), EditError> {
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let top = top(doc)?;
                match top.get_mapping("defaults") {
                    Some(m) => {
                        for (k, v) in settings.pairs() {
                            match v {
                                Some(v) => set_value(&m, k, &v),
                                None => {
                                    m.remove(k);
                                }
                            }
                        }
                        if settings.is_empty() {
                            top.remove("defaults");
                        }
                    }
                    None if settings.is_empty() => {}
                    None => {
                        let pairs = settings
                            .pairs()
                            .into_iter()
                            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                            .collect();
                        insert_before_processors(&top, "defaults", &Value::Map(pairs))?;
                    }
                }
                Ok(())
            },
            |o| {
                let get = |k: &str| {
                    o.defaults
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                };
                get("max_records") == settings.max_records
                    && get("max_bytes") == settings.max_bytes
                    && get("when_full") == settings.when_full
            },
        )
    }

    /// Append a connection `from[.port] -> to`.
    pub fn add_connection(
        &mut self,
        from: &str,
        port: Option<&str>,
        to: &str,
    ) -> Result<(), EditError> {
        let c = ConnectionOutline {
            from: from.to_owned(),
            port: port.map(str::to_owned),
            to: to.to_owned(),
            form: ConnectionForm::Short,
            max_records: None,
            max_bytes: None,
            when_full: None,
            at: Default::default(),
        };
        let text = c.label();
        let before = self.outline.connections.len();
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let top = top(doc)?;
                match top.get_sequence("connections") {
                    Some(seq) => seq.push(text.as_str()),
                    None => {
                        let seq = SequenceBuilder::new().item(text.as_str()).build_document();
                        let seq = seq
                            .as_sequence()
                            .ok_or_else(|| EditError::Failed("a list".into()))?;
                        top.set("connections", seq);
                    }
                }
                Ok(())
            },
            |o| {
                o.connections.len() == before + 1
                    && o.connections
                        .last()
                        .and_then(Option::as_ref)
                        .is_some_and(|r| r.from == c.from && r.port == c.port && r.to == c.to)
            },
        )
    }

    /// Remove connection `index` (in file order).
    pub fn remove_connection(&mut self, index: usize) -> Result<(), EditError> {
        let before = self.outline.connections.len();
        if index >= before {
            return Err(EditError::NoConnection(index));
        }
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let seq = top(doc)?
                    .get_sequence("connections")
                    .ok_or(EditError::NoConnection(index))?;
                seq.remove(index);
                Ok(())
            },
            |o| o.connections.len() == before - 1,
        )
    }

    /// Set the back-pressure settings of connection `index`. A connection written
    /// `a -> b` becomes a mapping when it gets a setting; a mapping stays a mapping.
    pub fn set_connection_settings(
        &mut self,
        index: usize,
        settings: &EdgeSettingsEdit,
    ) -> Result<(), EditError> {
        let Some(Some(c)) = self.outline.connections.get(index).cloned() else {
            return Err(EditError::NoConnection(index));
        };
        if c.form == ConnectionForm::Short && settings.is_empty() {
            return Ok(());
        }
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let seq = top(doc)?
                    .get_sequence("connections")
                    .ok_or(EditError::NoConnection(index))?;
                match c.form {
                    ConnectionForm::Short => {
                        // One line stays one line: `a -> b  # note` becomes
                        // `{ from: a, to: b, max_records: 100 }  # note`.
                        let from = match &c.port {
                            Some(p) => format!("{}.{p}", c.from),
                            None => c.from.clone(),
                        };
                        let m = Mapping::new_flow();
                        m.set("from", from.as_str());
                        m.set("to", c.to.as_str());
                        for (k, v) in settings.pairs() {
                            if let Some(v) = v {
                                set_value(&m, k, &v);
                            }
                        }
                        seq.set(index, m);
                    }
                    ConnectionForm::Mapping => {
                        let m = seq
                            .get(index)
                            .and_then(|n| n.as_mapping().cloned())
                            .ok_or(EditError::NoConnection(index))?;
                        // Additions first: a flow mapping keeps its spacing that way.
                        for (k, v) in settings.pairs() {
                            if let Some(v) = v {
                                set_value(&m, k, &v);
                            }
                        }
                        for (k, v) in settings.pairs() {
                            if v.is_none() {
                                m.remove(k);
                            }
                        }
                    }
                }
                Ok(())
            },
            |o| {
                o.connections
                    .get(index)
                    .and_then(Option::as_ref)
                    .is_some_and(|r| {
                        r.from == c.from
                            && r.port == c.port
                            && r.to == c.to
                            && r.max_records == settings.max_records
                            && r.max_bytes == settings.max_bytes
                            && r.when_full == settings.when_full
                    })
            },
        )
    }

    /// Write canvas positions into `layout:` (created at the end of the file if missing),
    /// rounded to whole units. Entries already at that position are not touched.
    pub fn set_layout(&mut self, positions: &[(String, [f32; 2])]) -> Result<(), EditError> {
        let rounded: Vec<(String, [i64; 2])> = positions
            .iter()
            .map(|(n, p)| (n.clone(), [p[0].round() as i64, p[1].round() as i64]))
            .collect();
        let changed: Vec<&(String, [i64; 2])> = rounded
            .iter()
            .filter(|(n, p)| self.outline.position(n) != Some([p[0] as f32, p[1] as f32]))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let base = self.text.clone();
        self.apply(
            &base,
            |doc| {
                let top = top(doc)?;
                let layout = match top.get_mapping(LAYOUT_KEY) {
                    Some(m) => m,
                    None => {
                        top.set(LAYOUT_KEY, Mapping::new());
                        top.get_mapping(LAYOUT_KEY)
                            .ok_or_else(|| EditError::NotAMapping(LAYOUT_KEY.into()))?
                    }
                };
                for (name, [x, y]) in &changed {
                    let pos = Sequence::new_flow();
                    pos.push(*x);
                    pos.push(*y);
                    layout.set(name.as_str(), pos);
                }
                Ok(())
            },
            |o| {
                rounded
                    .iter()
                    .all(|(n, p)| o.position(n) == Some([p[0] as f32, p[1] as f32]))
            },
        )
    }
}

/// The top-level mapping.
fn top(doc: &yaml_edit::Document) -> Result<Mapping, EditError> {
    doc.as_mapping()
        .ok_or_else(|| EditError::Unparsable("a flow file is a mapping".into()))
}

/// The `processors:` mapping of the file's top mapping.
fn processors(top: &Mapping) -> Result<Mapping, EditError> {
    top.get_mapping("processors")
        .ok_or_else(|| EditError::NotAMapping("processors".into()))
}

/// The config mapping of processor `name`.
fn processor(doc: &yaml_edit::Document, name: &str) -> Result<Mapping, EditError> {
    processors(&top(doc)?)?
        .get_mapping(name)
        .ok_or_else(|| EditError::NotAMapping(name.to_owned()))
}

fn as_mapping(b: MappingBuilder) -> Result<Mapping, EditError> {
    b.build_document()
        .as_mapping()
        .ok_or_else(|| EditError::Failed("a mapping".into()))
}

/// Put `key: value` in `map`: replaced in place if present, appended if not.
fn set_value(map: &Mapping, key: &str, value: &Value) {
    match value {
        Value::Str(s) => map.set(key, s.as_str()),
        Value::Int(i) => map.set(key, *i),
        Value::Float(f) => map.set(key, *f),
        Value::Bool(b) => map.set(key, *b),
        Value::List(items) => map.set(key, to_sequence(items)),
        Value::Map(pairs) => {
            if let Ok(m) = as_mapping(add_pairs(MappingBuilder::new(), pairs)) {
                map.set(key, m);
            }
        }
    }
}

/// `defaults:` goes before `processors:`, where the docs show it.
fn insert_before_processors(top: &Mapping, key: &str, value: &Value) -> Result<(), EditError> {
    let Value::Map(pairs) = value else {
        return Err(EditError::Failed("a mapping".into()));
    };
    let m = as_mapping(add_pairs(MappingBuilder::new(), pairs))?;
    if top.contains_key("processors") {
        top.insert_before("processors", key, m);
    } else {
        top.set(key, m);
    }
    Ok(())
}

fn to_sequence(items: &[Value]) -> Sequence {
    if items.iter().all(Value::is_scalar) {
        let seq = Sequence::new_flow();
        for v in items {
            match v {
                Value::Str(s) => seq.push(s.as_str()),
                Value::Int(i) => seq.push(*i),
                Value::Float(f) => seq.push(*f),
                Value::Bool(b) => seq.push(*b),
                Value::List(_) | Value::Map(_) => {}
            }
        }
        return seq;
    }
    let mut b = SequenceBuilder::new();
    for v in items {
        b = match v {
            Value::Str(s) => b.item(s.as_str()),
            Value::Int(i) => b.item(*i),
            Value::Float(f) => b.item(*f),
            Value::Bool(x) => b.item(*x),
            Value::List(inner) => b.item(to_sequence(inner)),
            Value::Map(pairs) => b.insert_mapping(add_pairs(MappingBuilder::new(), pairs)),
        };
    }
    b.build_document()
        .as_sequence()
        .unwrap_or_else(Sequence::new_flow)
}

fn add_pair(b: MappingBuilder, key: &str, value: &Value) -> MappingBuilder {
    match value {
        Value::Str(s) => b.pair(key, s.as_str()),
        Value::Int(i) => b.pair(key, *i),
        Value::Float(f) => b.pair(key, *f),
        Value::Bool(x) => b.pair(key, *x),
        Value::List(items) => b.pair(key, to_sequence(items)),
        Value::Map(pairs) => b.insert_mapping(key, add_pairs(MappingBuilder::new(), pairs)),
    }
}

fn add_pairs(mut b: MappingBuilder, pairs: &[(String, Value)]) -> MappingBuilder {
    for (k, v) in pairs {
        b = add_pair(b, k, v);
    }
    b
}

/// Rewrite the endpoints of connection `i` to `c`'s, in the form it has.
fn write_endpoints(seq: &Sequence, i: usize, c: &ConnectionOutline) -> Result<(), EditError> {
    let item = seq.get(i).ok_or(EditError::NoConnection(i))?;
    let from = match &c.port {
        Some(p) => format!("{}.{p}", c.from),
        None => c.from.clone(),
    };
    match item.as_mapping() {
        Some(m) => {
            m.set("from", from.as_str());
            m.set("to", c.to.as_str());
        }
        None => {
            seq.set(i, c.label().as_str());
        }
    }
    Ok(())
}
