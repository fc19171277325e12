//! The loader: flow file text into a validated [`FlowSpec`], every finding with its line and
//! column (see the module above for the file's shape). The spec's types stay in `mod.rs`; the
//! graph of a flow file being edited lives in `document/`; its JSON Schema in `schema.rs`.

use std::collections::{HashMap, HashSet};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node, Span};

use super::source::Source;
use super::value_error::{Problem, Segment, ValueError};
use super::*;
use crate::processor::{ConfigError, FAILURE};

/// Load a flow from text. `env` answers `${VAR}` lookups. Pure: no I/O.
pub fn load(text: &str, env: &dyn Fn(&str) -> Option<String>, registry: &Registry) -> Loaded {
    Loader::new(text).finish(env, registry)
}

impl Loader<'_> {
    fn finish(mut self, env: &dyn Fn(&str) -> Option<String>, registry: &Registry) -> Loaded {
        let l = &mut self;
        let flow = l.load(env, registry);
        let mut diagnostics = std::mem::take(&mut l.diags);
        diagnostics.sort_by_key(|d| (d.line, d.column));
        let flow = if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            None
        } else {
            flow
        };
        Loaded { flow, diagnostics }
    }
}

/// Load a flow with the process environment.
pub fn load_with_env(text: &str, registry: &Registry) -> Loaded {
    load(text, &|k| std::env::var(k).ok(), registry)
}

/// Load a flow to look at its structure (draw it, edit it): like [`load`], but an unset
/// `${VAR}` without a default is a warning and stays as written in the value, so a flow
/// opens and validates before its environment exists. `flow run` uses [`load`], which
/// requires every variable.
pub fn load_structure(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    registry: &Registry,
) -> Loaded {
    let mut l = Loader::new(text);
    l.keep_unset = true;
    l.finish(env, registry)
}

/// Unknown processor names get a "did you mean" for this many connections; beyond, comparing
/// each with every processor would make a file of wrong names quadratic.
const MAX_SUGGESTIONS: usize = 100;

/// Loading is linear in the size of the file: positions come from [`Source`]'s index,
/// processors are found by name in a map, the graph checks are single passes, and each
/// processor type's keys are read from its schema once.
pub(super) struct Loader<'a> {
    pub(super) src: Source<'a>,
    pub(super) diags: Vec<Diagnostic>,
    /// Each processor type's config keys, from its schema.
    keys: HashMap<&'static str, Vec<String>>,
    /// Processors of the file that did not load (already reported: connections to them are
    /// not reported again).
    failed: HashSet<String>,
    /// Ports (node, port) named by a connection that could not be made because of the other
    /// end: not reported as unconnected.
    mentioned_outputs: HashSet<(usize, usize)>,
    /// Nodes named as the target of such a connection.
    mentioned_inputs: HashSet<usize>,
    suggestions_left: usize,
    /// Unset `${VAR}`s are warnings and stay as written ([`load_structure`]).
    keep_unset: bool,
    /// Where the scalars holding an unset `${VAR}` start (character index): a type error in
    /// one of them is a consequence of the variable, already reported.
    unset_scalars: HashSet<usize>,
}

/// A config deserialized by [`Loader::deserialize`].
struct Parsed<T> {
    /// The value, if what remains of the config parses.
    value: Option<T>,
    /// The paths (keys) taken out because their values are wrong.
    removed: Vec<Vec<String>>,
    /// The paths whose values hold an unset `${VAR}` and were given a stand-in.
    stood_in: Vec<Vec<String>>,
}

/// Which node and port a connection's end names.
struct Endpoint {
    node: usize,
    port: Option<String>,
}

impl<'a> Loader<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            src: Source::new(text),
            diags: Vec::new(),
            keys: HashMap::new(),
            failed: HashSet::new(),
            mentioned_outputs: HashSet::new(),
            mentioned_inputs: HashSet::new(),
            suggestions_left: MAX_SUGGESTIONS,
            keep_unset: false,
            unset_scalars: HashSet::new(),
        }
    }

    fn pos(&self, span: &Span, len: usize) -> Pos {
        self.src.pos(span.start(), len)
    }

    /// Where a node is: a one-line scalar's value without its quotes, the start of anything
    /// else.
    fn node_pos(&self, node: &Node) -> Pos {
        match node {
            Node::Scalar(s) if !s.as_str().contains('\n') => {
                let len = s.as_str().len().max(1);
                let at = self.pos(node.span(), len);
                self.src.point_into(at, s.as_str(), 0, len)
            }
            _ => self.pos(node.span(), 1),
        }
    }

    fn key_pos(&self, key: &MarkedScalarNode) -> Pos {
        self.pos(key.span(), key.as_str().len().max(1))
    }

    fn error(&mut self, at: Pos, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(at, message));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    /// Report the keys of `map` not in `allowed`; returns them.
    fn check_keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) -> Vec<String> {
        let mut unknown = Vec::new();
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let help = did_you_mean(key.as_str(), allowed.iter().copied())
                    .unwrap_or_else(|| format!("expected one of: {}", allowed.join(", ")));
                let at = self.key_pos(key);
                self.error(at, format!("unknown key `{}` in {what}", key.as_str()))
                    .help = Some(help);
                unknown.push(key.as_str().to_owned());
            }
        }
        unknown
    }

    /// Parse the file. Every duplicate key is reported, and loading goes on with the last
    /// value of each.
    fn parse(&mut self) -> Option<Node> {
        let strict = LoaderOptions::default().error_on_duplicate_keys(true);
        match marked_yaml::parse_yaml_with_options(0, self.src.body(), strict) {
            Ok(n) => return Some(n),
            Err(marked_yaml::LoadError::DuplicateKey(_)) => {}
            Err(e) => {
                self.yaml_error(&e);
                return None;
            }
        }
        for d in duplicates::duplicate_keys(self.src.body()) {
            let at = self.src.pos(Some(&d.at), d.key.len().max(1));
            self.error(at, format!("duplicate key `{}`", d.key)).help = Some(format!(
                "`{}` is first set on line {}, column {}",
                d.key,
                d.first.line(),
                d.first.column()
            ));
        }
        match marked_yaml::parse_yaml_with_options(0, self.src.body(), LoaderOptions::default()) {
            Ok(n) => Some(n),
            Err(e) => {
                self.yaml_error(&e);
                None
            }
        }
    }

    pub(super) fn load(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        registry: &Registry,
    ) -> Option<FlowSpec> {
        let mut root = self.parse()?;
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
            Some(n) => self
                .edge_settings(n, "defaults.")
                .over(&EdgeSettings::default()),
            None => EdgeSettings::default(),
        };

        let api = top.get_node("api").and_then(|n| self.api(n));
        let provenance = top.get_node("provenance").and_then(|n| self.provenance(n));

        let mut nodes = Vec::new();
        match top.get_node("processors") {
            Some(Node::Mapping(m)) => {
                for (key, node) in m.iter() {
                    match self.processor(key, node, registry) {
                        Some(n) => nodes.push(n),
                        None => {
                            self.failed.insert(key.as_str().to_owned());
                        }
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
        // `provenance.content` names processors.
        if let (Some(p), Some(pnode)) = (&provenance, top.get_node("provenance")) {
            for name in &p.content {
                if !nodes.iter().any(|n: &NodeSpec| &n.name == name) && !self.failed.contains(name)
                {
                    let at = pnode
                        .as_mapping()
                        .and_then(|m| m.get_node("content"))
                        .map_or_else(|| self.node_pos(pnode), |n| self.node_pos(n));
                    let help = did_you_mean(name, nodes.iter().map(|n| n.name.as_str()));
                    self.error(
                        at,
                        format!("`provenance.content` names unknown processor `{name}`"),
                    )
                    .help = help;
                }
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

        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut edges = Vec::new();
        match top.get_node("connections") {
            Some(Node::Sequence(seq)) => {
                for item in seq.iter() {
                    if let Some(e) = self.connection(item, &nodes, &index, &defaults) {
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
            api,
            provenance,
        };
        self.check_graph(&flow);
        Some(flow)
    }

    fn yaml_error(&mut self, e: &marked_yaml::LoadError) {
        let (marker, message) = super::diagnostic::yaml_load_error(e, "a flow file");
        let at = self.src.pos(Some(&marker), 1);
        self.error(at, message);
    }

    fn interpolate(&mut self, node: &mut Node, env: &dyn Fn(&str) -> Option<String>) {
        match node {
            Node::Scalar(s) => {
                if !s.as_str().contains('$') {
                    return;
                }
                let (v, errors, unset) = interpolate::expand(s.as_str(), env, self.keep_unset);
                let base = self.pos(s.span(), s.as_str().len());
                let written = s.as_str().to_owned();
                if !unset.is_empty()
                    && let Some(start) = s.span().start()
                {
                    self.unset_scalars.insert(start.character());
                }
                // The value, unless it is wrong (then it stays as written): with
                // `keep_unset`, its unset variables stay as written in it.
                if errors.is_empty() && (unset.is_empty() || self.keep_unset) {
                    let coerce = s.may_coerce();
                    let mut n = MarkedScalarNode::new(*s.span(), v);
                    n.set_coerce(coerce);
                    *s = n;
                }
                for (offset, len, msg) in errors {
                    let at = self.src.point_into(base.clone(), &written, offset, len);
                    self.error(at, msg);
                }
                for (offset, len, msg) in unset {
                    let at = self.src.point_into(base.clone(), &written, offset, len);
                    let help = "set it in the environment, or give a default: ${VAR:-default}";
                    if self.keep_unset {
                        self.diags.push(
                            Diagnostic::warning(at, format!("{msg}: needed to run the flow"))
                                .with_help(help),
                        );
                    } else {
                        self.error(at, msg).help = Some(help.into());
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

    /// Edge settings (`defaults`, or a connection's), every problem reported. Their keys are
    /// written `{prefix}{key}` in messages.
    fn edge_settings(&mut self, node: &Node, prefix: &str) -> EdgeSettingsConfig {
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(at, "`defaults` must be a mapping of edge settings")
                .help = Some(format!("its keys are: {}", EDGE_KEYS.join(", ")));
            return EdgeSettingsConfig::default();
        };
        let unknown = self.check_keys(map, EDGE_KEYS, "edge settings");
        let fallback = self.node_pos(node);
        self.deserialize(
            map,
            &unknown,
            |n| marked_yaml::from_node::<EdgeSettingsConfig>(n),
            &|path| format!("`{prefix}{path}`"),
            &fallback,
        )
        .value
        .unwrap_or_default()
    }

    /// The `api:` section, every problem reported.
    fn api(&mut self, node: &Node) -> Option<ApiConfig> {
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(at, "`api` must be a mapping").help =
                Some(format!("its keys are: {}", api::KEYS.join(", ")));
            return None;
        };
        let unknown = self.check_keys(map, api::KEYS, "`api`");
        let fallback = self.node_pos(node);
        self.deserialize(
            map,
            &unknown,
            |n| marked_yaml::from_node::<ApiConfig>(n),
            &|path| format!("`api.{path}`"),
            &fallback,
        )
        .value
    }

    fn provenance(&mut self, node: &Node) -> Option<crate::provenance::config::ProvenanceConfig> {
        use crate::provenance::config::{KEYS, ProvenanceConfig};
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(at, "`provenance` must be a mapping").help =
                Some(format!("its keys are: {}", KEYS.join(", ")));
            return None;
        };
        let unknown = self.check_keys(map, KEYS, "`provenance`");
        let fallback = self.node_pos(node);
        self.deserialize(
            map,
            &unknown,
            |n| marked_yaml::from_node::<ProvenanceConfig>(n),
            &|path| format!("`provenance.{path}`"),
            &fallback,
        )
        .value
    }

    /// Deserialize `map` without the `unknown` keys (already reported), reporting every
    /// problem: after an invalid value, the key that holds it is taken out (at its depth: a
    /// bad `window.tumbling` leaves the rest of `window`) and the rest parsed again, so one
    /// bad value does not hide the others. A key made missing that way is not reported, nor
    /// one a reported unknown key is a misspelling of; the mapping that misses it is taken
    /// out in turn. A value that is wrong because it holds an unset `${VAR}` (reported with
    /// the variable) is not reported: a stand-in of its type takes its place (see
    /// [`stand_in`]), or it is taken out. `context(path)` starts each message; `fallback` is
    /// where problems without a position point.
    fn deserialize<T>(
        &mut self,
        map: &MarkedMappingNode,
        unknown: &[String],
        parse: impl Fn(&Node) -> Result<T, marked_yaml::FromNodeError>,
        context: &dyn Fn(&str) -> String,
        fallback: &Pos,
    ) -> Parsed<T> {
        let mut map = map.clone();
        map.retain(|k, _| !unknown.iter().any(|u| u == k.as_str()));
        let mut removed: Vec<Vec<String>> = Vec::new();
        let mut stood_in: Vec<Vec<String>> = Vec::new();
        // Values given a stand-in (or found to have none) once.
        let mut tried: Vec<Vec<Segment>> = Vec::new();
        loop {
            let node = Node::Mapping(map.clone());
            let e = match parse(&node) {
                Ok(v) => {
                    return Parsed {
                        value: Some(v),
                        removed,
                        stood_in,
                    };
                }
                Err(e) => value_error::explain(&e, &node),
            };
            // A value of the wrong type because it holds an unset `${VAR}` (reported with
            // the variable): a stand-in of the right type takes its place, so the rest of
            // the config is checked and its ports are known.
            if e.problem == Problem::Value
                && self.holds_unset(&node, &e.path)
                && !tried.contains(&e.path)
            {
                tried.push(e.path.clone());
                if stand_in(&mut map, &e.path, &parse) {
                    stood_in.push(value_error::keys(&e.path));
                    continue;
                }
            }
            // The keys down to the value (a list's key for an item of it).
            let keys = value_error::keys(&e.path);
            let consequence = match &e.problem {
                Problem::MissingKey(k) => {
                    let mut full = keys.clone();
                    full.push(k.clone());
                    removed.contains(&full)
                        || stood_in.contains(&full)
                        || (keys.is_empty()
                            && unknown
                                .iter()
                                .any(|u| did_you_mean(u, [k.as_str()]).is_some()))
                }
                _ => false,
            };
            let consequence =
                consequence || (e.problem == Problem::Value && self.holds_unset(&node, &e.path));
            if !consequence {
                self.value_error(&node, &e, context, fallback);
            }
            if keys.is_empty() || !remove_path(&mut map, &keys) {
                return Parsed {
                    value: None,
                    removed,
                    stood_in,
                };
            }
            // A value left out for its unset variable is as good as a stand-in: the flow
            // cannot run anyway, and its structure is what is looked at.
            if e.problem == Problem::Value && self.holds_unset(&node, &e.path) {
                stood_in.push(keys);
            } else {
                removed.push(keys);
            }
        }
    }

    /// Whether the value at `path` is a scalar holding an unset `${VAR}`.
    fn holds_unset(&self, root: &Node, path: &[Segment]) -> bool {
        matches!(value_error::find(root, path), Some(Node::Scalar(s))
            if s.span().start().is_some_and(|m| self.unset_scalars.contains(&m.character())))
    }

    fn value_error(
        &mut self,
        root: &Node,
        e: &ValueError,
        context: &dyn Fn(&str) -> String,
        fallback: &Pos,
    ) {
        let at = match (&e.problem, value_error::find(root, &e.path)) {
            (Problem::MissingKey(_), _) if e.path.is_empty() => fallback.clone(),
            (Problem::UnknownKey(k), _) => e
                .marker
                .map_or_else(|| fallback.clone(), |m| self.src.pos(Some(&m), k.len())),
            (Problem::Value, Some(node)) if !e.path.is_empty() => self.node_pos(node),
            _ => e
                .marker
                .map_or_else(|| fallback.clone(), |m| self.src.pos(Some(&m), 1)),
        };
        let message = format!("{}: {}", context(&e.dotted()), e.message);
        self.error(at, message).help = e.help.clone();
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

        let keys = self
            .keys
            .entry(def.type_name)
            .or_insert_with(|| def.keys())
            .clone();
        let allowed: Vec<&str> = keys.iter().map(String::as_str).collect();
        let unknown = self.check_keys(
            &config_map,
            &allowed,
            &format!("processor `{name}` ({type_name})"),
        );
        let Parsed {
            value: config,
            removed,
            stood_in,
        } = self.deserialize(
            &config_map,
            &unknown,
            def.parse,
            &|path| {
                if path.is_empty() {
                    format!("processor `{name}` ({type_name})")
                } else {
                    format!("processor `{name}`, `{path}`")
                }
            },
            &key_pos,
        );
        let config = config?;
        for err in config.validate() {
            // About values taken out (already reported) or stood in for: their defaults and
            // stand-ins prove nothing.
            if removed
                .iter()
                .chain(&stood_in)
                .any(|r| r.starts_with(&err.path) || err.path.starts_with(r))
            {
                continue;
            }
            self.config_error(name, &config_map, &key_pos, err);
        }
        if !removed.is_empty() {
            // Its ports may depend on what could not be read.
            return None;
        }
        let mut outputs = vec![FAILURE.to_owned()];
        outputs.extend(config.outputs());
        let settings = marked_yaml::from_node::<serde_json::Value>(&Node::Mapping(config_map))
            .unwrap_or_default();
        Some(NodeSpec {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            kind: def.kind,
            config,
            settings,
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
            at = self.src.point_into(at, s.as_str(), offset, 1);
        }
        let path = err.path.join(".");
        let message = if path.is_empty() {
            format!("processor `{name}`: {}", err.message)
        } else {
            format!("processor `{name}`, `{path}`: {}", err.message)
        };
        self.error(at, message).help = err.help;
    }

    /// The node a connection's end names, or `None` (reported unless that processor is
    /// already reported as not loading).
    fn endpoint(
        &mut self,
        text: &str,
        at: &Pos,
        nodes: &[NodeSpec],
        index: &HashMap<&str, usize>,
    ) -> Option<Endpoint> {
        let (node_name, port) = match text.split_once('.') {
            Some((n, p)) => (n.trim(), Some(p.trim().to_owned())),
            None => (text.trim(), None),
        };
        if let Some(&node) = index.get(node_name) {
            return Some(Endpoint { node, port });
        }
        if !self.failed.contains(node_name) {
            let help = if self.suggestions_left > 0 {
                self.suggestions_left -= 1;
                did_you_mean(node_name, nodes.iter().map(|n| n.name.as_str()))
            } else {
                None
            };
            self.error(
                at.clone(),
                format!("connection names unknown processor `{node_name}`"),
            )
            .help = help;
        }
        None
    }

    fn connection(
        &mut self,
        item: &Node,
        nodes: &[NodeSpec],
        index: &HashMap<&str, usize>,
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
                let settings = self.edge_settings(&Node::Mapping(rest), "").over(defaults);
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
        let from = self.endpoint(&from_text, &at, nodes, index);
        let to = self.endpoint(&to_text, &at, nodes, index);
        let from = from.and_then(|f| self.output_port(f, &at, nodes));
        let (Some((from, port)), Some(to)) = (from, &to) else {
            // What was found is connected as far as the other checks are concerned.
            if let Some(f) = from {
                self.mentioned_outputs.insert(f);
            }
            if let Some(t) = to {
                self.mentioned_inputs.insert(t.node);
            }
            return None;
        };
        if to.port.is_some() {
            self.error(at, format!("`{to_text}`: inputs have no ports"))
                .help = Some(format!("connect to `{}`", nodes[to.node].name));
            return None;
        }
        if nodes[to.node].kind == Kind::Source {
            self.error(
                at,
                format!("`{}` is a source: it takes no input", nodes[to.node].name),
            );
            return None;
        }
        Some(EdgeSpec {
            from,
            port,
            to: to.node,
            settings,
            pos: at,
        })
    }

    /// The (node, port index) a connection's source names.
    fn output_port(
        &mut self,
        from: Endpoint,
        at: &Pos,
        nodes: &[NodeSpec],
    ) -> Option<(usize, usize)> {
        let src = &nodes[from.node];
        let port = match from.port {
            None => {
                if src.outputs.len() < 2 {
                    self.error(
                        at.clone(),
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
                        at.clone(),
                        format!("`{}` ({}) has no port `{p}`", src.name, src.type_name),
                    )
                    .help = Some(help);
                    return None;
                }
            },
        };
        Some((from.node, port))
    }

    fn check_graph(&mut self, flow: &FlowSpec) {
        let g = flow.graph();
        let mut seen = HashSet::new();
        for e in &flow.edges {
            if !seen.insert((e.from, e.port, e.to)) {
                self.diags.push(Diagnostic::warning(
                    e.pos.clone(),
                    format!(
                        "duplicate connection `{}`: records would be sent twice",
                        flow.edge_label(e)
                    ),
                ));
            }
        }
        self.check_cycles(flow, &g);

        let n = flow.nodes.len();
        let mut has_input = vec![false; n];
        let mut connected: HashSet<(usize, usize)> = self.mentioned_outputs.clone();
        for &i in &self.mentioned_inputs {
            has_input[i] = true;
        }
        for e in &flow.edges {
            has_input[e.to] = true;
            connected.insert((e.from, e.port));
        }
        for (i, node) in flow.nodes.iter().enumerate() {
            if node.kind != Kind::Source && !has_input[i] {
                self.diags.push(Diagnostic::warning(
                    node.pos.clone(),
                    format!(
                        "`{}` has no input: it will never receive a record",
                        node.name
                    ),
                ));
            }
            let any_output = (1..node.outputs.len()).any(|p| connected.contains(&(i, p)));
            if node.kind != Kind::Sink && node.outputs.len() > 1 && !any_output {
                self.diags.push(Diagnostic::warning(
                    node.pos.clone(),
                    format!(
                        "`{}.{}` is not connected: its records are dropped",
                        node.name, node.outputs[1]
                    ),
                ));
            }
            for port in node.config.reported_outputs() {
                let Some(p) = node.outputs.iter().position(|o| *o == port) else {
                    continue;
                };
                if !connected.contains(&(i, p)) {
                    self.diags.push(
                        Diagnostic::warning(
                            node.pos.clone(),
                            format!(
                                "`{}.{port}` is not connected: its records are counted as \
                                 failed and logged, then dropped",
                                node.name
                            ),
                        )
                        .with_help(format!(
                            "connect `{}.{port}` to keep them (a file_sink, for example)",
                            node.name
                        )),
                    );
                }
            }
        }
    }

    /// One error per cycle, at its first connection in the file.
    fn check_cycles(&mut self, flow: &FlowSpec, g: &petgraph::graph::DiGraph<usize, usize>) {
        // Kosaraju walks the graph with a stack of its own: tarjan_scc recurses once per node
        // and overflows the stack on a long chain.
        let sccs = petgraph::algo::kosaraju_scc(g);
        let mut component = vec![0; flow.nodes.len()];
        for (c, scc) in sccs.iter().enumerate() {
            for n in scc {
                component[g[*n]] = c;
            }
        }
        let cyclic: Vec<bool> = sccs
            .iter()
            .map(|scc| scc.len() > 1 || g.contains_edge(scc[0], scc[0]))
            .collect();
        let mut first_edge: Vec<Option<&EdgeSpec>> = vec![None; sccs.len()];
        for e in &flow.edges {
            let c = component[e.from];
            if cyclic[c] && component[e.to] == c && first_edge[c].is_none() {
                first_edge[c] = Some(e);
            }
        }
        for (c, scc) in sccs.iter().enumerate() {
            if !cyclic[c] {
                continue;
            }
            let mut names: Vec<&str> = scc
                .iter()
                .map(|&n| flow.nodes[g[n]].name.as_str())
                .collect();
            names.sort_unstable();
            let at = first_edge[c].map(|e| e.pos.clone()).unwrap_or_default();
            self.diags.push(
                Diagnostic::error(
                    at,
                    format!("connections form a cycle through {}", names.join(", ")),
                )
                .with_help("flows are acyclic: records may not come back to a processor they left"),
            );
        }
    }
}

/// Values tried, in order, in place of a scalar whose `${VAR}` is unset: a number, a
/// duration, a size, a boolean.
const STAND_INS: &[&str] = &["1", "1s", "1MiB", "true"];

/// Put the first of [`STAND_INS`] that `parse` accepts at `path` (a scalar) in `map`, or
/// the first value of an enum; false (and `map` unchanged) when none does.
fn stand_in<T>(
    map: &mut MarkedMappingNode,
    path: &[Segment],
    parse: &impl Fn(&Node) -> Result<T, marked_yaml::FromNodeError>,
) -> bool {
    let mut candidates: Vec<String> = STAND_INS.iter().map(|s| (*s).to_owned()).collect();
    let mut i = 0;
    while let Some(value) = candidates.get(i).cloned() {
        i += 1;
        let mut tried = map.clone();
        let Some(Node::Scalar(s)) = node_at_mut(&mut tried, path) else {
            return false;
        };
        *s = MarkedScalarNode::new(*s.span(), value);
        let node = Node::Mapping(tried.clone());
        let accepted = match parse(&node) {
            Ok(_) => true,
            Err(err) => {
                let explained = value_error::explain(&err, &node);
                if explained.path == path {
                    // An enum says what it takes: its first value is tried last.
                    if let Some(first) = value_error::variants(&err).into_iter().next()
                        && !candidates.contains(&first)
                    {
                        candidates.push(first);
                    }
                    false
                } else {
                    // Accepted here: what is wrong now is elsewhere.
                    true
                }
            }
        };
        if accepted {
            *map = tried;
            return true;
        }
    }
    false
}

/// The value at `path` in `map`.
fn node_at_mut<'m>(map: &'m mut MarkedMappingNode, path: &[Segment]) -> Option<&'m mut Node> {
    let (Segment::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut node = map.get_mut(first.as_str())?;
    for seg in rest {
        node = match (seg, node) {
            (Segment::Key(k), Node::Mapping(m)) => m.get_mut(k.as_str())?,
            (Segment::Index(i), Node::Sequence(s)) => s.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Take the value at `path` (keys from the root) out of `map`; false if it is not there.
fn remove_path(map: &mut MarkedMappingNode, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = map;
    for key in parents {
        match current.get_mut(key.as_str()).and_then(Node::as_mapping_mut) {
            Some(m) => current = m,
            None => return false,
        }
    }
    current.remove(last.as_str()).is_some()
}
