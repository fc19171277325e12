//! The flow file: YAML into a typed, validated [`FlowSpec`].
//!
//! ```yaml
//! name: demo
//! defaults:                 # optional, for every edge
//!   max_records: 10000
//!   max_bytes: 64MiB
//!   when_full: block
//! processors:
//!   gen:   { type: generate, preset: sensors, count: 1000 }
//!   valid: { type: filter, condition: '.status != "error"' }
//!   out:   { type: stdout }
//! connections:
//!   - gen -> valid                  # default port of `gen`
//!   - valid.matched -> out          # a named port
//!   - { from: valid.unmatched, to: out, max_records: 100 }
//! ```
//!
//! Loading never stops at the first problem: every finding comes back at once, each with its
//! line and column. `${VAR}` and `${VAR:-default}` in values are replaced from the environment
//! before anything else (`$${` writes a literal `${`); an unset variable without a default is
//! an error.

pub mod diagnostic;
mod interpolate;

use std::collections::{BTreeMap, HashMap};

use bytesize::ByteSize;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node, Span};
use serde::Deserialize;

pub use diagnostic::{Diagnostic, Pos, Severity, did_you_mean, render, render_short};
pub use interpolate::interpolate;

use crate::processor::{ConfigError, FAILURE, Kind, ProcessorConfig, Registry};
use crate::runtime::edge::WhenFull;

/// Default back-pressure threshold of an edge, in records. NiFi uses 10,000 FlowFiles; a record
/// with its parsed view takes about a kilobyte, and 4,096 (four source batches) keeps the
/// sensors benchmark at full speed with a third less memory than 10,000.
pub const DEFAULT_MAX_RECORDS: usize = 4_096;
/// Default back-pressure threshold of an edge, in bytes.
pub const DEFAULT_MAX_BYTES: ByteSize = ByteSize::mib(64);

/// Back-pressure settings of an edge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EdgeSettings {
    /// Queue at most this many records.
    pub max_records: usize,
    /// Queue at most this many bytes.
    pub max_bytes: ByteSize,
    /// What a full queue does.
    pub when_full: WhenFull,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_MAX_RECORDS,
            max_bytes: DEFAULT_MAX_BYTES,
            when_full: WhenFull::Block,
        }
    }
}

/// Edge settings as written in the file: anything left out comes from `defaults`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeSettingsConfig {
    /// Back-pressure threshold in records (default 4096).
    pub max_records: Option<usize>,
    /// Back-pressure threshold in bytes, like `64MiB` (default 64MiB).
    #[schemars(with = "Option<String>")]
    pub max_bytes: Option<ByteSize>,
    /// What a full queue does: `block` (default; back-pressure) or `drop_newest`.
    pub when_full: Option<WhenFull>,
}

impl EdgeSettingsConfig {
    fn over(&self, base: &EdgeSettings) -> EdgeSettings {
        EdgeSettings {
            max_records: self.max_records.unwrap_or(base.max_records),
            max_bytes: self.max_bytes.unwrap_or(base.max_bytes),
            when_full: self.when_full.unwrap_or(base.when_full),
        }
    }
}

const EDGE_KEYS: &[&str] = &["max_records", "max_bytes", "when_full"];
const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "defaults",
    "processors",
    "connections",
    // The designer's canvas positions: read by the designer, ignored by the engine.
    crate::document::LAYOUT_KEY,
];

/// A processor of the flow.
#[derive(Debug)]
pub struct NodeSpec {
    /// Its name in the flow.
    pub name: String,
    /// Its `type:`.
    pub type_name: String,
    /// Its shape.
    pub kind: Kind,
    /// Its validated config.
    pub config: Box<dyn ProcessorConfig>,
    /// Its output ports: `failure` first, then the declared ones.
    pub outputs: Vec<String>,
    /// Where it is defined.
    pub pos: Pos,
}

/// A connection of the flow.
#[derive(Clone, Debug)]
pub struct EdgeSpec {
    /// Index of the producing node.
    pub from: usize,
    /// Index of the port on the producing node.
    pub port: usize,
    /// Index of the consuming node.
    pub to: usize,
    /// Back-pressure settings.
    pub settings: EdgeSettings,
    /// Where it is defined.
    pub pos: Pos,
}

/// A validated flow.
#[derive(Debug)]
pub struct FlowSpec {
    /// The flow's name (the file name when not given).
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// Its processors, in file order.
    pub nodes: Vec<NodeSpec>,
    /// Its connections, in file order.
    pub edges: Vec<EdgeSpec>,
}

impl FlowSpec {
    /// The flow as a petgraph graph: node weights index `nodes`, edge weights index `edges`.
    pub fn graph(&self) -> petgraph::graph::DiGraph<usize, usize> {
        let mut g = petgraph::graph::DiGraph::new();
        let ids: Vec<_> = (0..self.nodes.len()).map(|i| g.add_node(i)).collect();
        for (i, e) in self.edges.iter().enumerate() {
            g.add_edge(ids[e.from], ids[e.to], i);
        }
        g
    }

    /// `node.port` for an edge, for messages and graphs.
    pub fn edge_label(&self, e: &EdgeSpec) -> String {
        let n = &self.nodes[e.from];
        format!(
            "{}.{} -> {}",
            n.name, n.outputs[e.port], self.nodes[e.to].name
        )
    }
}

/// The outcome of loading a flow file: the flow if it has no errors, and every finding.
#[derive(Debug)]
pub struct Loaded {
    /// The flow, when there are no errors.
    pub flow: Option<FlowSpec>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Load a flow from text. `env` answers `${VAR}` lookups. Pure: no I/O.
pub fn load(text: &str, env: &dyn Fn(&str) -> Option<String>, registry: &Registry) -> Loaded {
    let mut l = Loader {
        text,
        diags: Vec::new(),
    };
    let flow = l.load(env, registry);
    let mut diagnostics = l.diags;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let flow = if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        None
    } else {
        flow
    };
    Loaded { flow, diagnostics }
}

/// Load a flow with the process environment.
pub fn load_with_env(text: &str, registry: &Registry) -> Loaded {
    load(text, &|k| std::env::var(k).ok(), registry)
}

struct Loader<'a> {
    text: &'a str,
    diags: Vec<Diagnostic>,
}

impl Loader<'_> {
    fn pos_of_marker(&self, m: Option<&marked_yaml::Marker>, len: usize) -> Pos {
        let Some(m) = m else {
            return Pos::default();
        };
        let start = self
            .text
            .char_indices()
            .nth(m.character())
            .map_or(self.text.len(), |(b, _)| b);
        let end = (start + len).min(self.text.len());
        Pos {
            line: m.line(),
            column: m.column(),
            range: start..end,
        }
    }

    fn pos(&self, span: &Span, len: usize) -> Pos {
        self.pos_of_marker(span.start(), len)
    }

    fn node_pos(&self, node: &Node) -> Pos {
        let len = match node {
            Node::Scalar(s) => s.as_str().len().max(1),
            _ => 1,
        };
        self.pos(node.span(), len)
    }

    fn key_pos(&self, key: &MarkedScalarNode) -> Pos {
        self.pos(key.span(), key.as_str().len().max(1))
    }

    fn error(&mut self, at: Pos, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(at, message));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    fn check_keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let help = did_you_mean(key.as_str(), allowed.iter().copied())
                    .unwrap_or_else(|| format!("expected one of: {}", allowed.join(", ")));
                let at = self.key_pos(key);
                self.error(at, format!("unknown key `{}` in {what}", key.as_str()))
                    .help = Some(help);
            }
        }
    }

    fn load(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        registry: &Registry,
    ) -> Option<FlowSpec> {
        let options = LoaderOptions::default().error_on_duplicate_keys(true);
        let mut root = match marked_yaml::parse_yaml_with_options(0, self.text, options) {
            Ok(n) => n,
            Err(e) => {
                self.yaml_error(&e);
                return None;
            }
        };
        self.interpolate(&mut root, env);
        let Some(top) = root.as_mapping() else {
            let at = self.node_pos(&root);
            self.error(
                at,
                "a flow file is a mapping with `processors` and `connections`",
            );
            return None;
        };
        self.check_keys(top, TOP_KEYS, "the flow");

        let name = top
            .get_scalar("name")
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        let description = top.get_scalar("description").map(|s| s.as_str().to_owned());
        let defaults = match top.get_node("defaults") {
            Some(n) => self.edge_settings(n).over(&EdgeSettings::default()),
            None => EdgeSettings::default(),
        };

        let mut nodes = Vec::new();
        match top.get_node("processors") {
            Some(Node::Mapping(m)) => {
                for (key, node) in m.iter() {
                    if let Some(n) = self.processor(key, node, registry) {
                        nodes.push(n);
                    }
                }
            }
            Some(other) => {
                let at = self.node_pos(other);
                self.error(at, "`processors` must be a mapping of names to processors");
            }
            None => {
                self.error(
                    Pos {
                        line: 1,
                        column: 1,
                        range: 0..0,
                    },
                    "missing `processors`",
                );
            }
        }
        if nodes.is_empty() && !self.diags.iter().any(|d| d.severity == Severity::Error) {
            self.error(
                Pos {
                    line: 1,
                    column: 1,
                    range: 0..0,
                },
                "the flow has no processors",
            );
        }

        let mut edges = Vec::new();
        match top.get_node("connections") {
            Some(Node::Sequence(seq)) => {
                for item in seq.iter() {
                    if let Some(e) = self.connection(item, &nodes, &defaults) {
                        edges.push(e);
                    }
                }
            }
            Some(other) => {
                let at = self.node_pos(other);
                self.error(at, "`connections` must be a list like `- a -> b`");
            }
            None => {}
        }
        let flow = FlowSpec {
            name,
            description,
            nodes,
            edges,
        };
        self.check_graph(&flow);
        Some(flow)
    }

    fn yaml_error(&mut self, e: &marked_yaml::LoadError) {
        use marked_yaml::LoadError as E;
        let (marker, message) = match e {
            E::TopLevelMustBeMapping(m) => (*m, "a flow file is a mapping".to_owned()),
            E::TopLevelMustBeSequence(m) => (*m, "expected a list".to_owned()),
            E::UnexpectedAnchor(m) => (*m, "YAML anchors and aliases are not supported".to_owned()),
            E::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_owned()),
            E::UnexpectedTag(m) => (*m, "YAML tags are not supported".to_owned()),
            E::ScanError(m, s) => (*m, format!("invalid YAML: {}", s.info())),
            E::DuplicateKey(d) => (
                d.key
                    .span()
                    .start()
                    .copied()
                    .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1)),
                format!("duplicate key `{}`", d.key.as_str()),
            ),
        };
        let at = self.pos_of_marker(Some(&marker), 1);
        self.error(at, message);
    }

    fn interpolate(&mut self, node: &mut Node, env: &dyn Fn(&str) -> Option<String>) {
        match node {
            Node::Scalar(s) => {
                if !s.as_str().contains('$') {
                    return;
                }
                match interpolate(s.as_str(), env) {
                    Ok(v) => {
                        let coerce = s.may_coerce();
                        let mut n = MarkedScalarNode::new(*s.span(), v);
                        n.set_coerce(coerce);
                        *s = n;
                    }
                    Err(errs) => {
                        let base = self.pos(s.span(), s.as_str().len());
                        for (offset, len, msg) in errs {
                            let at = self.point_into(base.clone(), s.as_str(), offset, len);
                            self.error(at, msg).help = Some(
                                "set it in the environment, or give a default: ${VAR:-default}"
                                    .into(),
                            );
                        }
                    }
                }
            }
            Node::Mapping(m) => {
                for (_, v) in m.iter_mut() {
                    self.interpolate(v, env);
                }
            }
            Node::Sequence(s) => {
                for v in s.iter_mut() {
                    self.interpolate(v, env);
                }
            }
        }
    }

    fn edge_settings(&mut self, node: &Node) -> EdgeSettingsConfig {
        if let Some(m) = node.as_mapping() {
            self.check_keys(m, EDGE_KEYS, "edge settings");
        }
        match marked_yaml::from_node::<EdgeSettingsConfig>(node) {
            Ok(c) => c,
            Err(e) => {
                if !matches!(&*e, marked_yaml::Error::UnknownFieldError(..)) {
                    self.serde_error(&e, node);
                }
                EdgeSettingsConfig::default()
            }
        }
    }

    fn serde_error(&mut self, e: &marked_yaml::FromNodeError, node: &Node) {
        let at = match e.start_mark() {
            Some(m) => self.pos_of_marker(Some(&m), 1),
            None => self.node_pos(node),
        };
        self.error(at, format!("invalid value: {e}"));
    }

    fn processor(
        &mut self,
        key: &MarkedScalarNode,
        node: &Node,
        registry: &Registry,
    ) -> Option<NodeSpec> {
        let name = key.as_str();
        let key_pos = self.key_pos(key);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(key_pos.clone(), format!("invalid processor name `{name}`"))
                .help = Some("use letters, digits, `_` and `-` (a `.` separates a port)".into());
        }
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(
                at,
                format!("processor `{name}` must be a mapping with a `type`"),
            );
            return None;
        };
        let Some(type_node) = map.get_scalar("type") else {
            self.error(key_pos, format!("processor `{name}` has no `type`"))
                .help = Some("run `flow processors` for the list of types".into());
            return None;
        };
        let type_name = type_node.as_str();
        let Some(def) = registry.get(type_name) else {
            let at = self.key_pos(type_node);
            let help = did_you_mean(type_name, registry.all().iter().map(|d| d.type_name))
                .unwrap_or_else(|| "run `flow processors` for the list of types".into());
            self.error(at, format!("unknown processor type `{type_name}`"))
                .help = Some(help);
            return None;
        };
        // The config is the mapping without `type`.
        let mut config_map = map.clone();
        config_map.retain(|k, _| k.as_str() != "type");
        let config_node = Node::Mapping(config_map.clone());

        let keys = def.keys();
        let before = self.diags.len();
        self.check_keys(
            &config_map,
            &keys.iter().map(String::as_str).collect::<Vec<_>>(),
            &format!("processor `{name}` ({type_name})"),
        );
        let unknown_keys = self.diags.len() > before;
        let config = match (def.parse)(&config_node) {
            Ok(c) => c,
            Err(e) => {
                if !(unknown_keys && matches!(&*e, marked_yaml::Error::UnknownFieldError(..))) {
                    let at = match e.start_mark() {
                        Some(m) => self.pos_of_marker(Some(&m), 1),
                        None => key_pos.clone(),
                    };
                    self.error(at, format!("processor `{name}` ({type_name}): {e}"));
                }
                return None;
            }
        };
        for err in config.validate() {
            self.config_error(name, &config_map, &key_pos, err);
        }
        let mut outputs = vec![FAILURE.to_owned()];
        outputs.extend(config.outputs());
        Some(NodeSpec {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            kind: def.kind,
            config,
            outputs,
            pos: key_pos,
        })
    }

    /// Place a `validate` finding on the value its path names.
    fn config_error(
        &mut self,
        name: &str,
        map: &MarkedMappingNode,
        fallback: &Pos,
        err: ConfigError,
    ) {
        let mut node: Option<&Node> = None;
        let mut current = Some(map);
        for key in &err.path {
            let next = current.and_then(|m| m.get_node(key));
            node = next.or(node);
            current = next.and_then(Node::as_mapping);
            if next.is_none() {
                break;
            }
        }
        let mut at = node.map_or_else(|| fallback.clone(), |n| self.node_pos(n));
        if let (Some(offset), Some(Node::Scalar(s))) = (err.offset, node) {
            at = self.point_into(at, s.as_str(), offset, 1);
        }
        let path = err.path.join(".");
        let message = if path.is_empty() {
            format!("processor `{name}`: {}", err.message)
        } else {
            format!("processor `{name}`, `{path}`: {}", err.message)
        };
        self.error(at, message).help = err.help;
    }

    /// Narrow `at` (a scalar's position) to `len` bytes at `offset` inside its value, when the
    /// value is on one line: plain scalars start at their text, quoted ones one character later.
    /// Otherwise (block scalars, escapes) keep pointing at the whole value.
    fn point_into(&self, at: Pos, value: &str, offset: usize, len: usize) -> Pos {
        if value.contains('\n') {
            return at;
        }
        let src = self.text.get(at.range.start..).unwrap_or_default();
        let shift = if src.starts_with(value) {
            0
        } else if (src.starts_with('"') || src.starts_with('\''))
            && src.get(1..).is_some_and(|rest| rest.starts_with(value))
        {
            1
        } else {
            return at;
        };
        let offset = offset.min(value.len());
        let start = at.range.start + shift + offset;
        Pos {
            line: at.line,
            column: at.column + shift + value[..offset].chars().count(),
            range: start..(start + len.max(1)).min(self.text.len()),
        }
    }

    fn endpoint(
        &mut self,
        text: &str,
        at: &Pos,
        nodes: &[NodeSpec],
    ) -> Option<(usize, Option<String>)> {
        let (node_name, port) = match text.split_once('.') {
            Some((n, p)) => (n.trim(), Some(p.trim().to_owned())),
            None => (text.trim(), None),
        };
        match nodes.iter().position(|n| n.name == node_name) {
            Some(i) => Some((i, port)),
            None => {
                // A processor that failed to load is already reported; don't pile on.
                if !self
                    .diags
                    .iter()
                    .any(|d| d.message.contains(&format!("`{node_name}`")))
                {
                    let help = did_you_mean(node_name, nodes.iter().map(|n| n.name.as_str()));
                    self.error(
                        at.clone(),
                        format!("connection names unknown processor `{node_name}`"),
                    )
                    .help = help;
                }
                None
            }
        }
    }

    fn connection(
        &mut self,
        item: &Node,
        nodes: &[NodeSpec],
        defaults: &EdgeSettings,
    ) -> Option<EdgeSpec> {
        let at = self.node_pos(item);
        let (from_text, to_text, settings) = match item {
            Node::Scalar(s) => {
                let Some((a, b)) = s.as_str().split_once("->") else {
                    self.error(at, format!("invalid connection `{}`", s.as_str()))
                        .help = Some("write `from -> to` or `from.port -> to`".into());
                    return None;
                };
                (a.trim().to_owned(), b.trim().to_owned(), defaults.clone())
            }
            Node::Mapping(m) => {
                let mut allowed = vec!["from", "to"];
                allowed.extend_from_slice(EDGE_KEYS);
                self.check_keys(m, &allowed, "a connection");
                let (Some(from), Some(to)) = (m.get_scalar("from"), m.get_scalar("to")) else {
                    self.error(at, "a connection needs `from` and `to`");
                    return None;
                };
                let mut rest = m.clone();
                rest.retain(|k, _| EDGE_KEYS.contains(&k.as_str()));
                let settings = self.edge_settings(&Node::Mapping(rest)).over(defaults);
                (from.as_str().to_owned(), to.as_str().to_owned(), settings)
            }
            Node::Sequence(_) => {
                self.error(
                    at,
                    "a connection is `from -> to` or a mapping with `from` and `to`",
                );
                return None;
            }
        };
        let from = self.endpoint(&from_text, &at, nodes);
        let to = self.endpoint(&to_text, &at, nodes);
        let ((from, port), (to, to_port)) = (from?, to?);
        if to_port.is_some() {
            self.error(at, format!("`{to_text}`: inputs have no ports"))
                .help = Some(format!("connect to `{}`", nodes[to].name));
            return None;
        }
        let src = &nodes[from];
        let port = match port {
            None => {
                if src.outputs.len() < 2 {
                    self.error(
                        at,
                        format!(
                            "`{}` ({}) has no output but `failure`",
                            src.name, src.type_name
                        ),
                    )
                    .help = Some(format!(
                        "connect `{}.failure` if you want its failed records",
                        src.name
                    ));
                    return None;
                }
                1
            }
            Some(p) => match src.outputs.iter().position(|o| *o == p) {
                Some(i) => i,
                None => {
                    let help = did_you_mean(&p, src.outputs.iter().map(String::as_str))
                        .unwrap_or_else(|| format!("its ports are: {}", src.outputs.join(", ")));
                    self.error(
                        at,
                        format!("`{}` ({}) has no port `{p}`", src.name, src.type_name),
                    )
                    .help = Some(help);
                    return None;
                }
            },
        };
        if nodes[to].kind == Kind::Source {
            self.error(
                at,
                format!("`{}` is a source: it takes no input", nodes[to].name),
            );
            return None;
        }
        Some(EdgeSpec {
            from,
            port,
            to,
            settings,
            pos: self.node_pos(item),
        })
    }

    fn check_graph(&mut self, flow: &FlowSpec) {
        let g = flow.graph();
        let mut seen = HashMap::new();
        for (i, e) in flow.edges.iter().enumerate() {
            if seen.insert((e.from, e.port, e.to), i).is_some() {
                self.diags.push(Diagnostic::warning(
                    e.pos.clone(),
                    format!(
                        "duplicate connection `{}`: records would be sent twice",
                        flow.edge_label(e)
                    ),
                ));
            }
        }
        for scc in petgraph::algo::tarjan_scc(&g) {
            let cyclic = scc.len() > 1 || g.contains_edge(scc[0], scc[0]);
            if !cyclic {
                continue;
            }
            let members: Vec<usize> = scc.iter().map(|n| g[*n]).collect();
            let mut names: Vec<&str> = members
                .iter()
                .map(|&i| flow.nodes[i].name.as_str())
                .collect();
            names.sort_unstable();
            let first_edge = flow
                .edges
                .iter()
                .find(|e| members.contains(&e.from) && members.contains(&e.to));
            let at = first_edge.map(|e| e.pos.clone()).unwrap_or_default();
            self.diags.push(
                Diagnostic::error(
                    at,
                    format!("connections form a cycle through {}", names.join(", ")),
                )
                .with_help("flows are acyclic: records may not come back to a processor they left"),
            );
        }
        let mut inputs: BTreeMap<usize, usize> = BTreeMap::new();
        let mut default_out: BTreeMap<usize, usize> = BTreeMap::new();
        for e in &flow.edges {
            *inputs.entry(e.to).or_default() += 1;
            if e.port == 1 {
                *default_out.entry(e.from).or_default() += 1;
            }
        }
        for (i, n) in flow.nodes.iter().enumerate() {
            if n.kind != Kind::Source && !inputs.contains_key(&i) {
                self.diags.push(Diagnostic::warning(
                    n.pos.clone(),
                    format!("`{}` has no input: it will never receive a record", n.name),
                ));
            }
            if n.kind != Kind::Sink && n.outputs.len() > 1 && !default_out.contains_key(&i) {
                let connected = flow.edges.iter().any(|e| e.from == i && e.port > 0);
                if !connected {
                    self.diags.push(Diagnostic::warning(
                        n.pos.clone(),
                        format!(
                            "`{}.{}` is not connected: its records are dropped",
                            n.name, n.outputs[1]
                        ),
                    ));
                }
            }
        }
    }
}

/// The JSON Schema of a flow file, built from every processor's config schema.
pub fn json_schema(registry: &Registry) -> serde_json::Value {
    let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let edge = g.subschema_for::<EdgeSettingsConfig>();
    let mut variants = Vec::new();
    for def in registry.all() {
        let mut schema = (def.schema)(&mut g).to_value();
        if let Some(obj) = schema.as_object_mut() {
            let props = obj
                .entry("properties")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert(
                    "type".into(),
                    serde_json::json!({ "const": def.type_name, "description": def.summary() }),
                );
            }
            let req = obj
                .entry("required")
                .or_insert_with(|| serde_json::json!([]));
            if let Some(r) = req.as_array_mut() {
                r.push(serde_json::json!("type"));
            }
            obj.insert("title".into(), serde_json::json!(def.type_name));
        }
        variants.push(schema);
    }
    let defs = g.take_definitions(true);
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "flow file",
        "description": "A flow: processors connected by named ports.",
        "type": "object",
        "additionalProperties": false,
        "required": ["processors"],
        "properties": {
            "name": { "type": "string", "description": "The flow's name." },
            "description": { "type": "string", "description": "What the flow does." },
            "defaults": { "$ref": "#/$defs/EdgeSettingsConfig", "description": "Back-pressure settings for every edge." },
            "processors": {
                "type": "object",
                "description": "Processors by name.",
                "propertyNames": { "pattern": "^[A-Za-z0-9_-]+$" },
                "additionalProperties": { "oneOf": variants }
            },
            "layout": {
                "type": "object",
                "description": "Canvas positions of the processors, written by flow-designer; the engine ignores it.",
                "additionalProperties": { "type": "array", "items": { "type": "number" }, "minItems": 2, "maxItems": 2 }
            },
            "connections": {
                "type": "array",
                "description": "Edges: `from -> to`, `from.port -> to`, or a mapping with edge settings.",
                "items": {
                    "oneOf": [
                        { "type": "string", "pattern": "^\\s*[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)?\\s*->\\s*[A-Za-z0-9_-]+\\s*$" },
                        {
                            "allOf": [edge],
                            "type": "object",
                            "required": ["from", "to"],
                            "properties": {
                                "from": { "type": "string", "description": "`processor` or `processor.port`." },
                                "to": { "type": "string", "description": "The receiving processor." }
                            }
                        }
                    ]
                }
            }
        },
        "$defs": defs,
    })
}
