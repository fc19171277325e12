//! Drawing a flow: Graphviz DOT and Mermaid.

use std::fmt::Write;

use crate::processor::Kind;
use crate::spec::FlowSpec;

fn shape(kind: Kind) -> &'static str {
    match kind {
        Kind::Source => "invhouse",
        Kind::Transform => "box",
        Kind::Sink => "house",
    }
}

/// The flow as a Graphviz digraph: one node per processor (`name\ntype`), one edge per
/// connection labelled with its port.
pub fn to_dot(flow: &FlowSpec) -> String {
    let mut s = String::new();
    let title = if flow.name.is_empty() {
        "flow"
    } else {
        &flow.name
    };
    let _ = writeln!(s, "digraph {:?} {{", title);
    let _ = writeln!(s, "  rankdir=LR;\n  node [fontname=\"Helvetica\"];");
    for n in &flow.nodes {
        let _ = writeln!(
            s,
            "  {:?} [label={:?}, shape={}];",
            n.name,
            format!("{}\n{}", n.name, n.type_name),
            shape(n.kind)
        );
    }
    for e in &flow.edges {
        let from = &flow.nodes[e.from];
        let port = &from.outputs[e.port];
        let style = if e.port == 0 {
            ", style=dashed, color=red"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {:?} -> {:?} [label={:?}{style}];",
            from.name, flow.nodes[e.to].name, port
        );
    }
    s.push_str("}\n");
    s
}

/// The flow as a Mermaid flowchart.
pub fn to_mermaid(flow: &FlowSpec) -> String {
    let mut s = String::from("flowchart LR\n");
    let id = |i: usize| format!("n{i}");
    for (i, n) in flow.nodes.iter().enumerate() {
        let (open, close) = match n.kind {
            Kind::Source => ("([", "])"),
            Kind::Transform => ("[", "]"),
            Kind::Sink => ("[(", ")]"),
        };
        let _ = writeln!(
            s,
            "  {}{open}\"{}<br/><i>{}</i>\"{close}",
            id(i),
            n.name,
            n.type_name
        );
    }
    for e in &flow.edges {
        let port = &flow.nodes[e.from].outputs[e.port];
        let arrow = if e.port == 0 { "-.->" } else { "-->" };
        let _ = writeln!(s, "  {} {arrow}|{port}| {}", id(e.from), id(e.to));
    }
    s
}
