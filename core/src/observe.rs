//! What a running flow shows the outside: the wire types of the control API (`flow run --api`)
//! and how they are made from the runtime's live counters.
//!
//! They live here, in `flow-core`, not beside the HTTP server, so that a client (the designer,
//! `flow top`) reads them with serde alone, without an HTTP server in its build; the designer
//! depends on `flow-core` anyway for the flow model. Every type is `Serialize` and
//! `Deserialize`, and the server sends exactly these.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::processor::Kind;
use crate::runtime::Reporter;
pub use crate::runtime::edge::EdgeInfo;
use crate::runtime::edge::EdgeSnapshot;
use crate::runtime::metrics::{NodeSnapshot, NodeState};
use crate::spec::FlowSpec;

/// `GET /api/v1/flow`: the graph, enough for a client to draw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// The flow's name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The `flow` version running it.
    pub version: String,
    /// Its processors, in file order.
    pub nodes: Vec<NodeInfo>,
    /// Its connections, in file order (`id` is the index).
    pub edges: Vec<EdgeInfo>,
}

/// A processor in [`FlowInfo`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name in the flow.
    pub name: String,
    /// Its `type:`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its shape.
    pub kind: Kind,
    /// Its output ports, `failure` first.
    pub ports: Vec<String>,
    /// Its config as written (after `${VAR}` interpolation), with secret values replaced by
    /// [`REDACTED`].
    pub config: serde_json::Value,
}

/// What replaces a secret value in [`NodeInfo::config`].
pub const REDACTED: &str = "<redacted>";

/// The schema keyword that marks a config field secret: JSON Schema's `writeOnly` ("may be
/// set, never read back"). A config struct marks a field with
/// `#[schemars(extend("writeOnly" = true))]`; every processor's config is redacted by the
/// same walk over its schema ([`redact`]).
pub const SECRET_KEYWORD: &str = "writeOnly";

impl FlowInfo {
    /// The graph of `flow`; each config redacted and typed with its processor type's schema
    /// (`schema_of(type)`, see [`present`]).
    pub fn new(flow: &FlowSpec, schema_of: &dyn Fn(&str) -> Option<serde_json::Value>) -> Self {
        FlowInfo {
            name: flow.name.clone(),
            description: flow.description.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            nodes: flow
                .nodes
                .iter()
                .map(|n| {
                    let mut config = n.settings.clone();
                    match schema_of(&n.type_name) {
                        Some(schema) => present(&mut config, &schema),
                        // No schema to say what is secret: show nothing.
                        None => config = serde_json::Value::String(REDACTED.into()),
                    }
                    NodeInfo {
                        name: n.name.clone(),
                        type_name: n.type_name.clone(),
                        kind: n.kind,
                        ports: n.outputs.clone(),
                        config,
                    }
                })
                .collect(),
            edges: flow
                .edges
                .iter()
                .enumerate()
                .map(|(id, _)| EdgeInfo::of(flow, id))
                .collect(),
        }
    }
}

/// Replace every value of `config` that `schema` marks secret ([`SECRET_KEYWORD`]) by
/// [`REDACTED`], following `$ref`s, `allOf`/`anyOf`/`oneOf`, nested objects, maps
/// (`additionalProperties`) and arrays. A secret object or array is redacted whole.
pub fn redact(config: &mut serde_json::Value, schema: &serde_json::Value) {
    walk(config, schema, &mut |value, schemas| {
        if is_secret(schemas) {
            *value = serde_json::Value::String(REDACTED.into());
            return false;
        }
        true
    });
}

/// [`redact`], and give each scalar the JSON type its schema says: a flow file's scalars are
/// read as text (`count: 100` is `"100"`), but a client wants `100` where the field is an
/// integer. A value that does not parse as its type stays text.
pub fn present(config: &mut serde_json::Value, schema: &serde_json::Value) {
    walk(config, schema, &mut |value, schemas| {
        if is_secret(schemas) {
            *value = serde_json::Value::String(REDACTED.into());
            return false;
        }
        if let serde_json::Value::String(text) = value
            && let Some(typed) = typed_scalar(text, schemas)
        {
            *value = typed;
        }
        true
    });
}

/// `text` as the scalar type `schemas` declare, unless one of them accepts a string.
fn typed_scalar(text: &str, schemas: &[&serde_json::Value]) -> Option<serde_json::Value> {
    let mut types = Vec::new();
    for s in schemas {
        match s.get("type") {
            Some(serde_json::Value::String(t)) => types.push(t.as_str()),
            Some(serde_json::Value::Array(ts)) => {
                types.extend(ts.iter().filter_map(|t| t.as_str()))
            }
            _ => {}
        }
    }
    if types.contains(&"string") {
        return None;
    }
    let t = text.trim();
    if types.contains(&"integer") {
        if let Ok(i) = t.parse::<i64>() {
            return Some(i.into());
        }
        if let Ok(u) = t.parse::<u64>() {
            return Some(u.into());
        }
    }
    if types.contains(&"number")
        && let Ok(f) = t.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Some(serde_json::Value::Number(n));
    }
    if types.contains(&"boolean") {
        match t {
            "true" => return Some(true.into()),
            "false" => return Some(false.into()),
            _ => {}
        }
    }
    if types.contains(&"null") && matches!(t, "null" | "~" | "") {
        return Some(serde_json::Value::Null);
    }
    None
}

/// Visit `config` with the schemas that apply to each value (see [`redact`] for what is
/// followed); `visit` returns whether to go inside the value.
fn walk(
    config: &mut serde_json::Value,
    schema: &serde_json::Value,
    visit: &mut dyn FnMut(&mut serde_json::Value, &[&serde_json::Value]) -> bool,
) {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .cloned()
        .unwrap_or_default();
    walk_at(config, schema, &defs, 0, visit);
}

fn resolve<'a>(
    schema: &'a serde_json::Value,
    defs: &'a serde_json::Value,
) -> &'a serde_json::Value {
    match schema.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => r
            .rsplit('/')
            .next()
            .and_then(|name| defs.get(name))
            .unwrap_or(schema),
        None => schema,
    }
}

/// The schemas that apply to a value: this one and its `allOf`/`anyOf`/`oneOf` branches.
fn branches<'a>(
    schema: &'a serde_json::Value,
    defs: &'a serde_json::Value,
    depth: usize,
    out: &mut Vec<&'a serde_json::Value>,
) {
    if depth > 16 {
        return;
    }
    let s = resolve(schema, defs);
    out.push(s);
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = s.get(key).and_then(|l| l.as_array()) {
            for b in list {
                branches(b, defs, depth + 1, out);
            }
        }
    }
}

fn is_secret(schemas: &[&serde_json::Value]) -> bool {
    schemas
        .iter()
        .any(|s| s.get(SECRET_KEYWORD).and_then(|v| v.as_bool()) == Some(true))
}

fn walk_at(
    value: &mut serde_json::Value,
    schema: &serde_json::Value,
    defs: &serde_json::Value,
    depth: usize,
    visit: &mut dyn FnMut(&mut serde_json::Value, &[&serde_json::Value]) -> bool,
) {
    if depth > 32 {
        return;
    }
    let mut schemas = Vec::new();
    branches(schema, defs, 0, &mut schemas);
    if !visit(value, &schemas) {
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let mut sub: Vec<&serde_json::Value> = schemas
                    .iter()
                    .filter_map(|s| s.get("properties").and_then(|p| p.get(key)))
                    .collect();
                if sub.is_empty() {
                    sub = schemas
                        .iter()
                        .filter_map(|s| s.get("additionalProperties"))
                        .filter(|a| a.is_object())
                        .collect();
                }
                // One walk with every schema that applies, so a value is typed once.
                let all = serde_json::json!({ "allOf": sub });
                walk_at(v, &all, defs, depth + 1, visit);
            }
        }
        serde_json::Value::Array(items) => {
            let sub: Vec<&serde_json::Value> =
                schemas.iter().filter_map(|s| s.get("items")).collect();
            let all = serde_json::json!({ "allOf": sub });
            for item in items.iter_mut() {
                walk_at(item, &all, defs, depth + 1, visit);
            }
        }
        _ => {}
    }
}

/// Per-second rates over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRates {
    /// Records in per second.
    pub received: f64,
    /// Records out per second.
    pub sent: f64,
    /// Records dropped per second.
    pub dropped: f64,
    /// Records failed per second.
    pub failed: f64,
}

/// A node in [`Stats`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Its name.
    pub name: String,
    /// Its `type:`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its shape.
    pub kind: Kind,
    /// Its counters and state.
    #[serde(flatten)]
    pub counters: NodeSnapshot,
    /// Per-second rates over the last interval.
    pub rates: NodeRates,
}

/// Per-second rates of an edge over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeRates {
    /// Records queued per second.
    pub sent: f64,
    /// Records shed per second.
    pub dropped: f64,
}

/// An edge in [`Stats`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// Which edge it is.
    #[serde(flatten)]
    pub info: EdgeInfo,
    /// How full the queue is: the larger of records / `max_records` and bytes / `max_bytes`
    /// (1 or more: full, the producer waits).
    pub fill: f64,
    /// Its counters.
    #[serde(flatten)]
    pub counters: EdgeSnapshot,
    /// Per-second rates over the last interval.
    pub rates: EdgeRates,
}

/// `GET /api/v1/stats` and each event of `GET /api/v1/stats/stream`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The flow's name.
    pub flow: String,
    /// Seconds since the flow started.
    pub uptime_seconds: f64,
    /// The interval the rates are computed over, in seconds (0 for the first snapshot).
    pub interval_seconds: f64,
    /// Whether every node has ended (the last snapshot of a stream says so).
    pub finished: bool,
    /// Per node, in file order.
    pub nodes: Vec<NodeStats>,
    /// Per edge, in file order.
    pub edges: Vec<EdgeStats>,
}

impl Stats {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeStats> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Takes [`Stats`] snapshots, each with rates since the previous one.
pub struct Sampler {
    flow: String,
    reporter: Reporter,
    last: Option<(Instant, Stats)>,
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        now.saturating_sub(before) as f64 / secs
    }
}

impl Sampler {
    /// A sampler of the flow `reporter` reports on.
    pub fn new(flow: impl Into<String>, reporter: Reporter) -> Self {
        Self {
            flow: flow.into(),
            reporter,
            last: None,
        }
    }

    /// The counters now, with rates since the previous call.
    pub fn sample(&mut self) -> Stats {
        let now = Instant::now();
        let stats = self.sample_since(self.last.as_ref().map(|(t, s)| (*t, s)));
        self.last = Some((now, stats.clone()));
        stats
    }

    /// The counters now, with rates since `prev` (a snapshot taken then), if given.
    pub fn sample_since(&self, prev: Option<(Instant, &Stats)>) -> Stats {
        let now = Instant::now();
        let secs = prev.map_or(0.0, |(t, _)| now.duration_since(t).as_secs_f64());
        let prev = prev.map(|(_, s)| s);
        let nodes: Vec<NodeStats> = self
            .reporter
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let c = n.metrics.snapshot();
                let p = prev.and_then(|p| p.nodes.get(i)).map(|p| &p.counters);
                let before = |f: fn(&NodeSnapshot) -> u64| p.map_or(f(&c), f);
                NodeStats {
                    name: n.name.clone(),
                    type_name: n.type_name.clone(),
                    kind: n.kind,
                    rates: NodeRates {
                        received: rate(c.received, before(|s| s.received), secs),
                        sent: rate(c.sent, before(|s| s.sent), secs),
                        dropped: rate(c.dropped, before(|s| s.dropped), secs),
                        failed: rate(c.failed, before(|s| s.failed), secs),
                    },
                    counters: c,
                }
            })
            .collect();
        let edges: Vec<EdgeStats> = self
            .reporter
            .edges()
            .iter()
            .map(|e| {
                let c = e.stats.snapshot();
                let p = prev
                    .and_then(|p| p.edges.get(e.info.id))
                    .map(|p| p.counters);
                let p = p.unwrap_or(c);
                let fill = (c.records as f64 / e.info.max_records.max(1) as f64)
                    .max(c.bytes as f64 / e.info.max_bytes.max(1) as f64);
                EdgeStats {
                    info: e.info.clone(),
                    fill,
                    rates: EdgeRates {
                        sent: rate(c.sent, p.sent, secs),
                        dropped: rate(c.dropped, p.dropped, secs),
                    },
                    counters: c,
                }
            })
            .collect();
        let finished = nodes
            .iter()
            .all(|n| matches!(n.counters.state, NodeState::Finished | NodeState::Failed));
        Stats {
            flow: self.flow.clone(),
            uptime_seconds: self.reporter.elapsed().as_secs_f64(),
            interval_seconds: secs,
            finished,
            nodes,
            edges,
        }
    }
}

/// One source in [`Readiness`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReadiness {
    /// The source's name.
    pub name: String,
    /// Its state.
    pub state: NodeState,
    /// Whether it says it is connected (sources with a server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Whether it is ready: running and, if it has a server, connected to it; or finished
    /// reading a bounded input.
    pub ready: bool,
}

/// `GET /ready`: whether every source has started (and connected, where it has a server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Every source is ready and no node failed.
    pub ready: bool,
    /// Per source.
    pub sources: Vec<SourceReadiness>,
}

impl Readiness {
    /// The readiness of the flow `reporter` reports on.
    pub fn of(reporter: &Reporter) -> Self {
        let failed = reporter
            .nodes()
            .iter()
            .any(|n| n.metrics.state() == NodeState::Failed);
        let sources: Vec<SourceReadiness> = reporter
            .nodes()
            .iter()
            .filter(|n| n.kind == Kind::Source)
            .map(|n| {
                let s = n.metrics.snapshot();
                let ready = match s.state {
                    NodeState::Running => s.connected != Some(false),
                    NodeState::Finished => true,
                    NodeState::Starting | NodeState::Failed => false,
                };
                SourceReadiness {
                    name: n.name.clone(),
                    state: s.state,
                    connected: s.connected,
                    ready,
                }
            })
            .collect();
        Readiness {
            ready: !failed && sources.iter().all(|s| s.ready),
            sources,
        }
    }
}

/// The level of an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Something went wrong and was handled (a retry, a record sent to `failure`).
    Warn,
    /// Something failed.
    Error,
}

/// A warning or an error the flow logged (`GET /api/v1/events`; NiFi's bulletins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event: ask for `since` the last one seen.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// How bad.
    pub level: Level,
    /// The processor it is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What happened.
    pub message: String,
    /// The log event's other fields (`error`, `url`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// `GET /api/v1/events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Events {
    /// Events dropped from the ring since the start (it keeps the most recent).
    pub dropped: u64,
    /// The events, oldest first.
    pub events: Vec<Event>,
}

/// One line (NDJSON) or event (SSE) of `GET /api/v1/tap`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TapMessage {
    /// A copy of a record that left the port.
    Record(TappedRecord),
    /// The client read too slowly: this many copies were lost since the previous message.
    Lost {
        /// How many.
        lost: u64,
    },
}

/// A tapped record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TappedRecord {
    /// The processor it left.
    pub node: String,
    /// The port it left by.
    pub port: String,
    /// Its id (hexadecimal).
    pub id: String,
    /// The ids of the records it was made from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// Its event time, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<i64>,
    /// Its attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Its content: the JSON value when it is JSON, otherwise a string (lossy UTF-8).
    pub content: serde_json::Value,
}

impl TappedRecord {
    /// A tapped copy, as sent to clients.
    pub fn new(node: &str, port: &str, mut r: crate::record::Record) -> Self {
        let content = match r.value() {
            Ok(v) => serde_json::to_value(v).unwrap_or_default(),
            Err(_) => serde_json::Value::String(String::from_utf8_lossy(r.content()).into_owned()),
        };
        TappedRecord {
            node: node.to_owned(),
            port: port.to_owned(),
            id: r.id().to_string(),
            parents: r.parents().iter().map(ToString::to_string).collect(),
            event_time: r.event_time(),
            attributes: r.take_attributes(),
            content,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_through_refs_maps_and_branches() {
        let schema = json!({
            "type": "object",
            "properties": {
                "url": { "type": "string" },
                "password": { "type": ["string", "null"], "writeOnly": true },
                "conn": { "$ref": "#/$defs/Conn" },
                "headers": { "type": "object", "additionalProperties": { "type": "string" }, "writeOnly": true },
                "list": { "type": "array", "items": { "$ref": "#/$defs/Conn" } },
                "either": { "anyOf": [{ "$ref": "#/$defs/Conn" }, { "type": "null" }] }
            },
            "$defs": {
                "Conn": {
                    "type": "object",
                    "properties": { "host": { "type": "string" }, "token": { "type": "string", "writeOnly": true } }
                }
            }
        });
        let mut config = json!({
            "url": "mqtt://h", "password": "p", "conn": { "host": "h", "token": "t" },
            "headers": { "Authorization": "Bearer x" },
            "list": [{ "host": "a", "token": "t1" }],
            "either": { "host": "b", "token": "t2" },
            "unknown": "kept"
        });
        redact(&mut config, &schema);
        assert_eq!(
            config,
            json!({
                "url": "mqtt://h", "password": REDACTED, "conn": { "host": "h", "token": REDACTED },
                "headers": REDACTED,
                "list": [{ "host": "a", "token": REDACTED }],
                "either": { "host": "b", "token": REDACTED },
                "unknown": "kept"
            })
        );
    }

    #[test]
    fn present_types_scalars_by_their_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "count": { "type": "integer" },
                "limit": { "type": ["integer", "null"] },
                "ratio": { "type": "number" },
                "on": { "type": "boolean" },
                "name": { "type": "string" },
                "either": { "anyOf": [{ "type": "integer" }, { "type": "string" }] },
                "token": { "type": "integer", "writeOnly": true },
                "ports": { "type": "array", "items": { "type": "integer" } },
                "by": { "type": "object", "additionalProperties": { "type": "number" } }
            }
        });
        let mut config = json!({
            "count": "100", "limit": "~", "ratio": "0.5", "on": "true", "name": "123",
            "either": "7", "token": "42", "ports": ["1", "x"], "by": { "a": "1.5" },
            "unknown": "3"
        });
        present(&mut config, &schema);
        assert_eq!(
            config,
            json!({
                "count": 100, "limit": null, "ratio": 0.5, "on": true, "name": "123",
                "either": "7", "token": REDACTED, "ports": [1, "x"], "by": { "a": 1.5 },
                "unknown": "3"
            })
        );
    }
}
