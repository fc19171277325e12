//! Validation as you type: the flow's text through [`flow_core::spec::load`], the very code
//! behind `flow validate`, so the designer and the command line report the same findings.
//! Each finding is then placed on what it is about (a processor and one of its fields, or a
//! connection) by its position in the text.

use flow_core::processor::Registry;
use flow_core::spec::document::{FlowDocument, Loc};
use flow_core::spec::{self, Severity};

use crate::Env;

/// One finding, placed.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong (as `flow validate` says it).
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The processor it is about.
    pub node: Option<String>,
    /// The processor's top-level key it is about (`condition`, `routes`).
    pub field: Option<String>,
    /// The connection it is about (its index in `connections:`).
    pub edge: Option<usize>,
}

impl Problem {
    /// Whether it is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Every finding about a flow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validation {
    /// The findings, in file order.
    pub problems: Vec<Problem>,
}

impl Validation {
    /// Validate `doc` with `env` for `${VAR}`s.
    pub fn run(doc: &FlowDocument, registry: &Registry, env: &Env) -> Self {
        // Unset `${VAR}`s are warnings here: the designer edits the structure, and a flow
        // opens before its environment exists (`flow run` still requires them).
        let loaded = spec::load_structure(doc.text(), &|k| env(k), registry);
        let outline = doc.outline();
        let problems = loaded
            .diagnostics
            .into_iter()
            .map(|d| {
                let at = Loc {
                    line: d.line,
                    column: d.column,
                };
                let placed = (d.line > 0).then(|| outline.processor_at(at)).flatten();
                let edge = (d.line > 0).then(|| outline.connection_at(at)).flatten();
                Problem {
                    severity: d.severity,
                    message: d.message,
                    help: d.help,
                    line: d.line,
                    column: d.column,
                    node: placed.map(|(i, _)| outline.processors[i].name.clone()),
                    field: placed.and_then(|(_, f)| f.map(str::to_owned)),
                    edge,
                }
            })
            .collect();
        Self { problems }
    }

    /// How many errors.
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
    }

    /// How many warnings.
    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }

    /// The findings about processor `name`.
    pub fn for_node<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Problem> + 'a {
        self.problems
            .iter()
            .filter(move |p| p.node.as_deref() == Some(name))
    }

    /// The findings about `field` of processor `name`.
    pub fn for_field<'a>(
        &'a self,
        name: &'a str,
        field: &'a str,
    ) -> impl Iterator<Item = &'a Problem> + 'a {
        self.for_node(name)
            .filter(move |p| p.field.as_deref() == Some(field))
    }

    /// The findings about connection `index`.
    pub fn for_edge(&self, index: usize) -> impl Iterator<Item = &Problem> + '_ {
        self.problems.iter().filter(move |p| p.edge == Some(index))
    }

    /// The worst severity among the findings about processor `name`.
    pub fn node_severity(&self, name: &str) -> Option<Severity> {
        self.for_node(name).map(|p| p.severity).min()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn validate(text: &str) -> Validation {
        let doc = FlowDocument::new(text);
        let env: Env = Arc::new(|_: &str| None);
        Validation::run(&doc, &flow_processors::builtin(), &env)
    }

    /// The processor whose block holds 1-based `line`, read off the text: the last
    /// `  name:` line under `processors:` at or before it, while still in that section.
    fn owner(text: &str, line: usize) -> Option<String> {
        let mut inside = false;
        let mut current = None;
        for (i, l) in text.lines().enumerate().take(line) {
            if !l.starts_with(' ') && !l.starts_with('#') && !l.trim().is_empty() {
                inside = l.starts_with("processors:");
                current = None;
            } else if inside
                && l.starts_with("  ")
                && !l.starts_with("   ")
                && !l[2..].starts_with('#')
            {
                current = l.trim().split(':').next().map(str::to_owned);
            }
            if i + 1 == line {
                return if inside { current } else { None };
            }
        }
        None
    }

    #[test]
    fn each_finding_is_on_the_processor_whose_config_holds_its_line() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../flows/sensors.yaml"
        ))
        .expect("read");
        let v = validate(&text);
        let placed: Vec<(usize, Option<&str>)> = v
            .problems
            .iter()
            .map(|p| (p.line, p.node.as_deref()))
            .collect();
        // INPUT and OUT_DIR are unset: each `${VAR}` is reported where it is written.
        assert_eq!(
            placed,
            [
                (16, Some("events")),
                (18, Some("events")),
                (36, Some("per_device")),
                (40, Some("alerts")),
                (43, Some("windows")),
                (46, Some("late")),
            ]
        );

        // Every example flow, findings on processors and connections alike.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../flows");
        for entry in std::fs::read_dir(dir).expect("flows/") {
            let path = entry.expect("entry").path();
            let name = path.to_string_lossy().into_owned();
            if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for p in validate(&text).problems {
                if p.line > 0 {
                    assert_eq!(p.node, owner(&text, p.line), "{name}: {p:?}");
                }
            }
        }
    }
}
