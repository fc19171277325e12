//! The flow as the canvas draws it: processors with their kind, ports and position, and the
//! connections between ports. Derived from the document (what is written) and the registry
//! (what each type is); rebuilt after every change, never edited directly.

use std::collections::HashMap;

use flow_core::processor::{FAILURE, Kind, Registry};
use flow_core::spec::document::{ConnectionForm, FlowDocument};
use marked_yaml::Node as YamlNode;
use marked_yaml::types::MarkedScalarNode;

use crate::Env;
use crate::layout;

/// A processor on the canvas.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Its `type:` as written.
    pub type_name: Option<String>,
    /// Its shape, when the type is known.
    pub kind: Option<Kind>,
    /// Whether it runs plugin code (the palette's "plugins").
    pub plugin: bool,
    /// Output ports in display order: the declared ones (default first), ports that
    /// connections name but the config does not declare, then `failure`.
    pub ports: Vec<String>,
    /// How many of `ports` the config declares (the rest, but `failure`, are unknown).
    pub declared: usize,
    /// Its position on the canvas.
    pub pos: [f32; 2],
    /// Whether `pos` comes from `layout:` (otherwise it was laid out automatically).
    pub placed: bool,
}

impl Node {
    /// Whether records can come into it (everything but sources; unknown types too).
    pub fn has_input(&self) -> bool {
        self.kind != Some(Kind::Source)
    }

    /// The index of the port `a -> b` uses when no port is named.
    pub fn default_port(&self) -> Option<usize> {
        (self.declared > 0).then_some(0)
    }

    /// The index of `port`.
    pub fn port(&self, port: &str) -> Option<usize> {
        self.ports.iter().position(|p| p == port)
    }
}

/// A connection on the canvas.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// Its index in `connections:`.
    pub index: usize,
    /// The producing node.
    pub from: usize,
    /// The port index on the producing node.
    pub port: usize,
    /// The receiving node.
    pub to: usize,
    /// How it is written.
    pub form: ConnectionForm,
    /// Whether it sets its own back-pressure settings.
    pub custom: bool,
}

/// The flow as the canvas draws it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowGraph {
    /// The processors, in file order.
    pub nodes: Vec<Node>,
    /// The connections that name existing processors, in file order.
    pub edges: Vec<Edge>,
}

impl FlowGraph {
    /// Derive the graph of `doc`.
    pub fn build(doc: &FlowDocument, registry: &Registry, env: &Env) -> Self {
        let outline = doc.outline();
        let mut nodes: Vec<Node> = outline
            .processors
            .iter()
            .map(|p| {
                let def = p.type_name.as_deref().and_then(|t| registry.get(t));
                let mut ports: Vec<String> = def
                    .and_then(|def| {
                        let mut config = p.mapping()?.clone();
                        config.retain(|k, _| k.as_str() != "type");
                        let mut node = YamlNode::Mapping(config);
                        resolve(&mut node, env);
                        (def.parse)(&node).ok().map(|c| c.outputs())
                    })
                    .unwrap_or_default();
                ports.retain(|p| p != FAILURE);
                Node {
                    name: p.name.clone(),
                    type_name: p.type_name.clone(),
                    kind: def.map(|d| d.kind),
                    plugin: def.is_some_and(|d| d.plugin),
                    declared: ports.len(),
                    ports,
                    pos: outline.position(&p.name).unwrap_or_default(),
                    placed: outline.position(&p.name).is_some(),
                }
            })
            .collect();
        let index: HashMap<&str, usize> = outline
            .processors
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        // Ports that connections name but the config does not declare (a config that does
        // not parse yet, a typo) still get a pin, so the edge is drawn and its error shown.
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for c in outline.connections.iter().flatten() {
            if let (Some(&from), Some(port)) = (index.get(c.from.as_str()), &c.port)
                && port != FAILURE
                && !nodes[from].ports.contains(port)
                && !wanted.iter().any(|(n, p)| *n == from && p == port)
            {
                wanted.push((from, port.clone()));
            }
        }
        for (n, port) in wanted {
            nodes[n].ports.push(port);
        }
        for n in &mut nodes {
            n.ports.push(FAILURE.to_owned());
        }
        let mut edges = Vec::new();
        for (i, c) in outline.connections.iter().enumerate() {
            let Some(c) = c else { continue };
            let (Some(&from), Some(&to)) = (index.get(c.from.as_str()), index.get(c.to.as_str()))
            else {
                continue;
            };
            let port = match &c.port {
                Some(p) => nodes[from].port(p),
                None => nodes[from].default_port(),
            };
            let Some(port) = port else { continue };
            edges.push(Edge {
                index: i,
                from,
                port,
                to,
                form: c.form,
                custom: c.max_records.is_some() || c.max_bytes.is_some() || c.when_full.is_some(),
            });
        }
        let mut graph = Self { nodes, edges };
        graph.place_unplaced();
        graph
    }

    /// Give the nodes that have no position in `layout:` one: a layered layout of the whole
    /// flow when none has a position, otherwise a spot next to the placed ones.
    fn place_unplaced(&mut self) {
        if self.nodes.iter().all(|n| n.placed) {
            return;
        }
        let sizes: Vec<[f32; 2]> = self.nodes.iter().map(layout::node_size).collect();
        let links: Vec<(usize, usize, usize)> =
            self.edges.iter().map(|e| (e.from, e.port, e.to)).collect();
        let auto = layout::layered(&sizes, &links);
        if self.nodes.iter().all(|n| !n.placed) {
            for (n, p) in self.nodes.iter_mut().zip(auto) {
                n.pos = p;
            }
            return;
        }
        // Below everything placed, keeping the automatic layout's arrangement.
        let bottom = self
            .nodes
            .iter()
            .zip(&sizes)
            .filter(|(n, _)| n.placed)
            .map(|(n, s)| n.pos[1] + s[1])
            .fold(f32::MIN, f32::max);
        let left = self
            .nodes
            .iter()
            .filter(|n| n.placed)
            .map(|n| n.pos[0])
            .fold(f32::MAX, f32::min);
        let top = self
            .nodes
            .iter()
            .zip(&auto)
            .filter(|(n, _)| !n.placed)
            .map(|(_, p)| p[1])
            .fold(f32::MAX, f32::min);
        for (n, p) in self.nodes.iter_mut().zip(auto) {
            if !n.placed {
                n.pos = [left + p[0], bottom + layout::GAP_Y + (p[1] - top)];
            }
        }
    }

    /// The node named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The edge written at `connections[index]`.
    pub fn edge(&self, index: usize) -> Option<&Edge> {
        self.edges.iter().find(|e| e.index == index)
    }

    /// `from.port -> to` for an edge.
    pub fn edge_label(&self, e: &Edge) -> String {
        format!(
            "{}.{} -> {}",
            self.nodes[e.from].name, self.nodes[e.from].ports[e.port], self.nodes[e.to].name
        )
    }

    /// Why connecting `from.port` to `to` is not allowed, if it is not: the engine's rules
    /// (sources take no input, no cycles), and no second copy of an edge.
    pub fn refuse_connection(&self, from: usize, port: usize, to: usize) -> Option<String> {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        if !b.has_input() {
            return Some(format!("`{}` is a source: it takes no input", b.name));
        }
        if from == to {
            return Some(format!(
                "`{}` cannot feed itself: flows are acyclic",
                a.name
            ));
        }
        if self
            .edges
            .iter()
            .any(|e| e.from == from && e.port == port && e.to == to)
        {
            return Some(format!(
                "`{}.{}` is already connected to `{}`",
                a.name, a.ports[port], b.name
            ));
        }
        if let Some(path) = self.path(to, from) {
            let names: Vec<&str> = path.iter().map(|&i| self.nodes[i].name.as_str()).collect();
            return Some(format!(
                "that would make a cycle: {} -> {}",
                names.join(" -> "),
                b.name
            ));
        }
        None
    }

    /// A path of nodes from `a` to `b`, if there is one.
    fn path(&self, a: usize, b: usize) -> Option<Vec<usize>> {
        let mut prev: Vec<Option<usize>> = vec![None; self.nodes.len()];
        let mut seen = vec![false; self.nodes.len()];
        let mut queue = std::collections::VecDeque::from([a]);
        seen[a] = true;
        while let Some(n) = queue.pop_front() {
            if n == b {
                let mut path = vec![b];
                let mut at = b;
                while let Some(p) = prev[at] {
                    path.push(p);
                    at = p;
                }
                path.reverse();
                return Some(path);
            }
            for e in self.edges.iter().filter(|e| e.from == n) {
                if !seen[e.to] {
                    seen[e.to] = true;
                    prev[e.to] = Some(n);
                    queue.push_back(e.to);
                }
            }
        }
        None
    }
}

/// Replace `${VAR}`s as the loader does; a variable that is not set stays as written, so a
/// flow opens and draws without its environment.
pub fn resolve(node: &mut YamlNode, env: &Env) {
    match node {
        YamlNode::Scalar(s) => {
            if !s.as_str().contains('$') {
                return;
            }
            if let Ok(v) = flow_core::spec::interpolate(s.as_str(), &|k| env(k)) {
                let coerce = s.may_coerce();
                let mut n = MarkedScalarNode::new(*s.span(), v);
                n.set_coerce(coerce);
                *s = n;
            }
        }
        YamlNode::Mapping(m) => {
            for (_, v) in m.iter_mut() {
                resolve(v, env);
            }
        }
        YamlNode::Sequence(s) => {
            for v in s.iter_mut() {
                resolve(v, env);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(text: &str) -> FlowGraph {
        let env: Env = std::sync::Arc::new(|_: &str| None);
        FlowGraph::build(&FlowDocument::new(text), &flow_processors::builtin(), &env)
    }

    #[test]
    fn ports_come_from_the_config() {
        let g = graph(include_str!("../../flows/demo.yaml"));
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["readings", "valid", "triage", "label", "alerts", "archive"]
        );
        assert_eq!(g.nodes[1].ports, ["matched", "unmatched", "failure"]);
        assert_eq!(g.nodes[2].ports, ["hot", "cold", "unmatched", "failure"]);
        assert_eq!(g.nodes[4].ports, ["failure"]);
        assert_eq!(g.nodes[0].kind, Some(Kind::Source));
        assert!(!g.nodes[0].has_input());
        let labels: Vec<String> = g.edges.iter().map(|e| g.edge_label(e)).collect();
        assert_eq!(
            labels,
            [
                "readings.out -> valid",
                "valid.matched -> triage",
                "valid.matched -> archive",
                "triage.hot -> label",
                "label.out -> alerts"
            ]
        );
        // No layout in the file: every node was laid out, sources left of their consumers.
        assert!(g.nodes.iter().all(|n| !n.placed));
        assert!(g.nodes[0].pos[0] < g.nodes[1].pos[0]);
        assert!(g.nodes[1].pos[0] < g.nodes[2].pos[0]);
    }

    #[test]
    fn unknown_ports_still_get_a_pin() {
        let g = graph(
            "processors:\n  r: { type: route, routes: {} }\n  o: { type: stdout }\nconnections:\n  - r.hot -> o\n",
        );
        assert_eq!(g.nodes[0].declared, 1);
        assert_eq!(g.nodes[0].ports, ["unmatched", "hot", "failure"]);
        assert_eq!(g.edges.len(), 1);
    }

    #[test]
    fn connections_that_break_the_rules_are_refused_with_the_reason() {
        let g = graph(include_str!("../../flows/demo.yaml"));
        let (readings, valid, triage, label) = (0, 1, 2, 3);
        assert_eq!(
            g.refuse_connection(valid, 0, readings).as_deref(),
            Some("`readings` is a source: it takes no input")
        );
        assert_eq!(
            g.refuse_connection(label, 0, valid).as_deref(),
            Some("that would make a cycle: valid -> triage -> label -> valid")
        );
        assert_eq!(
            g.refuse_connection(valid, 0, triage).as_deref(),
            Some("`valid.matched` is already connected to `triage`")
        );
        assert!(g.refuse_connection(valid, 1, label).is_none());
    }
}
