//! What a flow file contains, read with marked-yaml (the loader's parser) and without
//! resolving `${VAR}`s: the processors, connections, defaults and layout as written.

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoaderOptions, Node, Span};

use super::LAYOUT_KEY;

/// A position in the text: 1-based line and column (in characters), as in diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Loc {
    fn of(span: &Span) -> Self {
        span.start().map_or(Loc { line: 1, column: 1 }, |m| Loc {
            line: m.line(),
            column: m.column(),
        })
    }
}

/// How a connection is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionForm {
    /// `from.port -> to`.
    Short,
    /// `{ from: ..., to: ..., max_records: ... }`.
    Mapping,
}

/// A processor as written.
#[derive(Clone, Debug)]
pub struct ProcessorOutline {
    /// Its name (the key under `processors:`).
    pub name: String,
    /// Where its name is.
    pub at: Loc,
    /// Its `type:`, if it has one.
    pub type_name: Option<String>,
    /// Its value as written (a mapping with `type` and the config), `${VAR}`s unresolved.
    pub node: Node,
    /// Its keys (`type` included) and where each one is, in file order.
    pub fields: Vec<(String, Loc)>,
}

impl ProcessorOutline {
    /// The value at `path` inside the processor (`["routes", "hot"]`).
    pub fn get(&self, path: &[&str]) -> Option<&Node> {
        let mut node = &self.node;
        for key in path {
            node = node.as_mapping()?.get_node(key)?;
        }
        Some(node)
    }

    /// The processor's mapping, if it is one.
    pub fn mapping(&self) -> Option<&MarkedMappingNode> {
        self.node.as_mapping()
    }
}

/// A connection as written.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionOutline {
    /// The producing processor (text before `.port`).
    pub from: String,
    /// The port, when one is named.
    pub port: Option<String>,
    /// The receiving processor.
    pub to: String,
    /// How it is written.
    pub form: ConnectionForm,
    /// `max_records` as written.
    pub max_records: Option<String>,
    /// `max_bytes` as written.
    pub max_bytes: Option<String>,
    /// `when_full` as written.
    pub when_full: Option<String>,
    /// Where it is.
    pub at: Loc,
}

impl ConnectionOutline {
    /// `from.port -> to` (or `from -> to`).
    pub fn label(&self) -> String {
        match &self.port {
            Some(p) => format!("{}.{p} -> {}", self.from, self.to),
            None => format!("{} -> {}", self.from, self.to),
        }
    }

    fn read(item: &Node) -> Option<Self> {
        let at = Loc::of(item.span());
        match item {
            Node::Scalar(s) => {
                let (from, to) = s.as_str().split_once("->")?;
                let (from, port) = split_endpoint(from);
                Some(Self {
                    from,
                    port,
                    to: to.trim().to_owned(),
                    form: ConnectionForm::Short,
                    max_records: None,
                    max_bytes: None,
                    when_full: None,
                    at,
                })
            }
            Node::Mapping(m) => {
                let (from, port) = split_endpoint(m.get_scalar("from")?.as_str());
                let scalar = |k: &str| m.get_scalar(k).map(|s| s.as_str().to_owned());
                Some(Self {
                    from,
                    port,
                    to: m.get_scalar("to")?.as_str().trim().to_owned(),
                    form: ConnectionForm::Mapping,
                    max_records: scalar("max_records"),
                    max_bytes: scalar("max_bytes"),
                    when_full: scalar("when_full"),
                    at,
                })
            }
            Node::Sequence(_) => None,
        }
    }
}

fn split_endpoint(text: &str) -> (String, Option<String>) {
    match text.split_once('.') {
        Some((n, p)) => (n.trim().to_owned(), Some(p.trim().to_owned())),
        None => (text.trim().to_owned(), None),
    }
}

/// What a flow file contains. Empty, with [`Outline::error`] set, when the text is not a YAML
/// mapping.
#[derive(Clone, Debug, Default)]
pub struct Outline {
    /// Why the text could not be read, and where.
    pub error: Option<(Loc, String)>,
    /// The top-level keys and where they are, in file order.
    pub top: Vec<(String, Loc)>,
    /// `name:`.
    pub name: Option<String>,
    /// `description:`.
    pub description: Option<String>,
    /// The processors, in file order.
    pub processors: Vec<ProcessorOutline>,
    /// The connections, in file order; `None` for an item that is not a connection.
    pub connections: Vec<Option<ConnectionOutline>>,
    /// `defaults:` as written (`max_records`, `max_bytes`, `when_full`).
    pub defaults: Vec<(String, String)>,
    /// `layout:`, when the file has one: processor name and canvas position.
    pub layout: Option<Vec<(String, [f32; 2])>>,
}

impl Outline {
    /// Read `text`.
    pub fn read(text: &str) -> Self {
        if text.trim().is_empty() {
            return Self::default();
        }
        // Duplicate keys are the loader's to report; here the last one wins, so a file with
        // one still opens.
        let root = match marked_yaml::parse_yaml_with_options(0, text, LoaderOptions::default()) {
            Ok(n) => n,
            Err(e) => return Self::unreadable(&e),
        };
        let Some(top) = root.as_mapping() else {
            return Self {
                error: Some((
                    Loc::of(root.span()),
                    "a flow file is a mapping with `processors` and `connections`".into(),
                )),
                ..Self::default()
            };
        };
        let mut out = Self {
            top: top
                .keys()
                .map(|k| (k.as_str().to_owned(), Loc::of(k.span())))
                .collect(),
            name: top.get_scalar("name").map(|s| s.as_str().to_owned()),
            description: top.get_scalar("description").map(|s| s.as_str().to_owned()),
            ..Self::default()
        };
        if let Some(procs) = top.get_mapping("processors") {
            for (key, node) in procs.iter() {
                let (type_name, fields) = match node.as_mapping() {
                    Some(m) => (
                        m.get_scalar("type").map(|s| s.as_str().to_owned()),
                        m.keys()
                            .map(|k| (k.as_str().to_owned(), Loc::of(k.span())))
                            .collect(),
                    ),
                    None => (None, Vec::new()),
                };
                out.processors.push(ProcessorOutline {
                    name: key.as_str().to_owned(),
                    at: Loc::of(key.span()),
                    type_name,
                    node: node.clone(),
                    fields,
                });
            }
        }
        if let Some(conns) = top.get_sequence("connections") {
            out.connections = conns.iter().map(ConnectionOutline::read).collect();
        }
        if let Some(defaults) = top.get_mapping("defaults") {
            out.defaults = defaults
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.as_str().to_owned(), v.as_scalar()?.as_str().to_owned()))
                })
                .collect();
        }
        if let Some(layout) = top.get_node(LAYOUT_KEY) {
            let mut positions = Vec::new();
            if let Some(m) = layout.as_mapping() {
                for (k, v) in m.iter() {
                    if let Some(p) = read_position(v) {
                        positions.push((k.as_str().to_owned(), p));
                    }
                }
            }
            out.layout = Some(positions);
        }
        out
    }

    fn unreadable(e: &marked_yaml::LoadError) -> Self {
        use marked_yaml::LoadError as E;
        let (marker, message) = match e {
            E::TopLevelMustBeMapping(m) => (Some(*m), "a flow file is a mapping".to_owned()),
            E::TopLevelMustBeSequence(m) => (Some(*m), "expected a list".to_owned()),
            E::UnexpectedAnchor(m) => (
                Some(*m),
                "YAML anchors and aliases are not supported".to_owned(),
            ),
            E::MappingKeyMustBeScalar(m) => {
                (Some(*m), "mapping keys must be plain strings".to_owned())
            }
            E::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".to_owned()),
            E::ScanError(m, s) => (Some(*m), format!("invalid YAML: {}", s.info())),
            E::DuplicateKey(d) => (
                d.key.span().start().copied(),
                format!("duplicate key `{}`", d.key.as_str()),
            ),
        };
        let at = marker.map_or(Loc { line: 1, column: 1 }, |m| Loc {
            line: m.line(),
            column: m.column(),
        });
        Self {
            error: Some((at, message)),
            ..Self::default()
        }
    }

    /// The processor named `name`.
    pub fn processor(&self, name: &str) -> Option<&ProcessorOutline> {
        self.processors.iter().find(|p| p.name == name)
    }

    /// The canvas position of `name` in `layout:`.
    pub fn position(&self, name: &str) -> Option<[f32; 2]> {
        self.layout
            .as_ref()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
    }

    /// Where the processors end: the next top-level key after `processors`, if any.
    fn processors_end(&self) -> Option<Loc> {
        let i = self.top.iter().position(|(k, _)| k == "processors")?;
        self.top.get(i + 1).map(|(_, l)| *l)
    }

    /// Which processor, and which of its top-level keys, the text at `at` belongs to (to put a
    /// diagnostic on a node and a field).
    pub fn processor_at(&self, at: Loc) -> Option<(usize, Option<&str>)> {
        if self.processors_end().is_some_and(|end| at >= end) {
            return None;
        }
        let i = self.processors.iter().rposition(|p| p.at <= at)?;
        let p = &self.processors[i];
        let field = p
            .fields
            .iter()
            .rev()
            .find(|(_, l)| *l <= at)
            .map(|(k, _)| k.as_str());
        Some((i, field))
    }

    /// Which connection the text at `at` belongs to.
    pub fn connection_at(&self, at: Loc) -> Option<usize> {
        let start = self.top.iter().position(|(k, _)| k == "connections")?;
        if at < self.top[start].1 {
            return None;
        }
        if self.top.get(start + 1).is_some_and(|(_, l)| at >= *l) {
            return None;
        }
        self.connections
            .iter()
            .rposition(|c| c.as_ref().is_some_and(|c| c.at <= at))
    }
}

fn read_position(node: &Node) -> Option<[f32; 2]> {
    let seq = node.as_sequence()?;
    if seq.len() != 2 {
        return None;
    }
    let x = seq.get_scalar(0)?.as_str().trim().parse::<f32>().ok()?;
    let y = seq.get_scalar(1)?.as_str().trim().parse::<f32>().ok()?;
    (x.is_finite() && y.is_finite()).then_some([x, y])
}
