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

mod api;
pub mod diagnostic;
pub mod document;
mod duplicates;
mod interpolate;
mod load;
mod schema;
mod source;
mod value_error;

use bytesize::ByteSize;
use serde::Deserialize;

pub use api::ApiConfig;
pub use diagnostic::{Diagnostic, Pos, Severity, did_you_mean, render, render_short};
pub use interpolate::interpolate;
pub use load::{load, load_structure, load_with_env};
pub use schema::json_schema;

#[cfg(test)]
use load::Loader;

use crate::processor::{Kind, ProcessorConfig, Registry};
use crate::runtime::edge::WhenFull;

/// Default back-pressure threshold of an edge, in records: two batches of a file source
/// (`batch_size` 2,048; four of the other sources') wait while their consumer works on the one
/// before, so a producer that finished a batch goes on with the next instead of waiting for its
/// consumer to take the last one. The sensors flow runs in 0.90x the wall time of edges one
/// batch deep, at the same peak memory (docs/performance.md, step 24); deeper queues only hold
/// records that have left the caches by the time they are read. NiFi uses 10,000 FlowFiles,
/// Vector 500 events a buffer.
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
    "api",
    "provenance",
    "processors",
    "connections",
    // The designer's canvas positions: read by the designer, ignored by the engine.
    document::LAYOUT_KEY,
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
    /// Its config as written (after `${VAR}` interpolation, so it may hold secrets: see
    /// [`crate::observe::redact`]), for display.
    pub settings: serde_json::Value,
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
    /// The control API's settings (`api:`), when the file has them.
    pub api: Option<ApiConfig>,
    /// The provenance settings (`provenance:`), when the file has them.
    pub provenance: Option<crate::provenance::config::ProvenanceConfig>,
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

#[cfg(test)]
mod tests;
