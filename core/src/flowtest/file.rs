//! Reading a test file: YAML (marked-yaml, as flow files) into [`TestFile`], every mistake
//! reported at once with its line and column, then each test checked against its flow.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node, Span};

use crate::expr::{Expr, ExprKind};
use crate::processor::{Kind, Registry};
use crate::record::Attributes;
use crate::spec::{self, Diagnostic, FlowSpec, Pos, did_you_mean};

/// Where the virtual clock starts when a test does not say: a fixed date, so that tests run
/// the same every time, later than test data is likely to be (a window's `max_future` rejects
/// records dated more than an hour after the clock), and aligned to every usual window size.
/// 2030-01-01T00:00:00Z.
pub const DEFAULT_CLOCK_START: i64 = 1_893_456_000_000;

/// The variable every test gets: a fresh, empty directory, removed after the test (for flows
/// that keep state in files, such as a window's `state:`).
pub const TEST_DIR_VAR: &str = "FLOW_TEST_DIR";

const TOP_KEYS: &[&str] = &["flow", "env", "tests"];
const TEST_KEYS: &[&str] = &["name", "env", "clock", "inputs", "outputs"];
const CLOCK_KEYS: &[&str] = &["start"];
const INJECT_KEYS: &[&str] = &[
    "at",
    "records",
    "lines",
    "file",
    "format",
    "attributes",
    "event_time",
];
const EXPECT_KEYS: &[&str] = &[
    "at",
    "records",
    "ordered",
    "count",
    "conditions",
    "attributes",
];
const STEP_KINDS: &str = "`at` (records in), `advance` (the clock) or `expect` (outputs so far)";

/// A test file that was read and checked, ready to run.
#[derive(Debug)]
pub struct TestFile {
    /// The test file.
    pub path: PathBuf,
    /// The flow it tests.
    pub flow_path: PathBuf,
    /// Its tests, in file order.
    pub tests: Vec<TestCase>,
}

/// One test.
#[derive(Debug)]
pub struct TestCase {
    /// Its name, unique in its file.
    pub name: String,
    /// Line of its name in the test file.
    pub line: usize,
    /// The flow, loaded with this test's environment.
    pub(crate) flow: FlowSpec,
    /// The directory behind `FLOW_TEST_DIR`, removed once the test ran (or when dropped).
    pub(crate) dir: tempfile::TempDir,
    /// Where the virtual clock starts, epoch ms.
    pub(crate) clock_start: i64,
    /// Inputs, clock steps and checks along the way, in order.
    pub(crate) steps: Vec<Step>,
    /// What is checked once the inputs ended and the flow drained.
    pub(crate) outputs: Vec<Expectation>,
}

/// A step of a test's `inputs`.
#[derive(Debug)]
pub(crate) enum Step {
    /// Records into a node.
    Inject(Inject),
    /// Move the virtual clock.
    Advance(Duration),
    /// Check what came out so far.
    Expect(Vec<Expectation>),
}

/// Records injected at a node.
#[derive(Debug)]
pub(crate) struct Inject {
    /// The node.
    pub node: String,
    /// The records, in order.
    pub records: Vec<InputRecord>,
}

/// How an input record's content is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContentKind {
    /// A JSON value from the test file (well-formed by construction).
    Json,
    /// A line of JSON as a source would read it: it may be malformed on purpose.
    JsonLine,
    /// A line of text: the record's value is the string.
    Text,
}

/// One record to inject.
#[derive(Clone, Debug)]
pub(crate) struct InputRecord {
    pub content: Bytes,
    pub kind: ContentKind,
    pub attributes: Attributes,
    pub event_time: Option<i64>,
}

/// What a port (or a replaced sink) must have received.
#[derive(Debug)]
pub(crate) struct Expectation {
    /// `node` or `node.port`, as written.
    pub at: String,
    /// Index of the node in the flow.
    pub node: usize,
    /// Index of the port, `None` for a sink (what reaches it).
    pub port: Option<usize>,
    /// Exactly these records (values), in order unless `ordered` is false.
    pub records: Option<Vec<serde_json::Value>>,
    /// Whether `records` must come in this order.
    pub ordered: bool,
    /// Exactly this many records.
    pub count: Option<usize>,
    /// Conditions every record must meet.
    pub conditions: Vec<Expr>,
    /// Attributes every record must have, with these values.
    pub attributes: Attributes,
}

/// A file that could not be used: its findings, to render like `flow validate` does.
#[derive(Debug)]
pub struct Invalid {
    /// The file the findings are in (the test file or the flow it names).
    pub path: PathBuf,
    /// Its text, for rendering.
    pub text: String,
    /// What is wrong, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Invalid {
    fn io(path: &Path, what: String) -> Self {
        Self {
            path: path.to_owned(),
            text: String::new(),
            diagnostics: vec![Diagnostic::error(
                Pos {
                    line: 0,
                    column: 0,
                    range: 0..0,
                },
                what,
            )],
        }
    }

    /// With the offending lines and carets, as `flow validate` prints them.
    pub fn render(&self) -> String {
        spec::render(
            &self.path.display().to_string(),
            &self.text,
            &self.diagnostics,
        )
    }

    /// One line per finding: `file:line:column: error: message (help)`.
    pub fn render_short(&self) -> String {
        spec::render_short(&self.path.display().to_string(), &self.diagnostics)
    }
}

/// Read a test file and check every test against its flow. `env` is the process environment
/// (the last place a `${VAR}` is looked up). Pure but for reading the files and making each
/// test's directory.
pub fn load(
    path: &Path,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TestFile, Vec<Invalid>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Invalid::io(path, format!("cannot read the test file: {e}"))])?;
    let mut r = Reader {
        text: &text,
        dir: path.parent().unwrap_or(Path::new(".")),
        diags: Vec::new(),
    };
    let parsed = r.file(path);
    let mut invalid = Vec::new();
    let mut tests = Vec::new();
    let mut flow_path = PathBuf::new();
    if let Some(parsed) = parsed {
        flow_path = parsed.flow_path.clone();
        match std::fs::read_to_string(&parsed.flow_path) {
            Err(e) => {
                let at = parsed.flow_pos.clone();
                r.diags.push(Diagnostic::error(
                    at,
                    format!("cannot read the flow {}: {e}", parsed.flow_path.display()),
                ));
            }
            Ok(flow_text) => {
                // The flow's own errors, each with the tests whose environment shows it.
                let mut flow_diags: Vec<(Diagnostic, Vec<String>)> = Vec::new();
                let total = parsed.tests.len();
                for t in parsed.tests {
                    match r.prepare(t, &parsed.env, &flow_text, registry, env) {
                        Prepared::Ready(t) => tests.push(*t),
                        Prepared::FlowInvalid(name, diags) => {
                            for d in diags {
                                match flow_diags.iter_mut().find(|(seen, _)| *seen == d) {
                                    Some((_, names)) => names.push(name.clone()),
                                    None => flow_diags.push((d, vec![name.clone()])),
                                }
                            }
                        }
                        Prepared::Skipped => {}
                    }
                }
                let flow_diags: Vec<Diagnostic> = flow_diags
                    .into_iter()
                    .map(|(mut d, names)| {
                        if names.len() < total {
                            let names: Vec<String> =
                                names.iter().map(|n| format!("`{n}`")).collect();
                            d.message = format!("{} (in test {})", d.message, names.join(", "));
                        }
                        d
                    })
                    .collect();
                if !flow_diags.is_empty() {
                    invalid.push(Invalid {
                        path: parsed.flow_path.clone(),
                        text: flow_text,
                        diagnostics: flow_diags,
                    });
                }
            }
        }
    }
    if !r.diags.is_empty() {
        let mut diagnostics = r.diags;
        diagnostics.sort_by_key(|d| (d.line, d.column));
        invalid.insert(
            0,
            Invalid {
                path: path.to_owned(),
                text: text.clone(),
                diagnostics,
            },
        );
    }
    if invalid.is_empty() {
        Ok(TestFile {
            path: path.to_owned(),
            flow_path,
            tests,
        })
    } else {
        Err(invalid)
    }
}

/// A test as written, before its flow is loaded.
struct RawTest {
    name: String,
    name_pos: Pos,
    env: Vec<(String, String, Pos)>,
    clock_start: i64,
    steps: Vec<RawStep>,
    outputs: Vec<RawExpect>,
}

enum RawStep {
    Inject {
        at: String,
        at_pos: Pos,
        records: Vec<InputRecord>,
    },
    Advance(Duration),
    Expect(Vec<RawExpect>),
}

struct RawExpect {
    at: String,
    at_pos: Pos,
    records: Option<Vec<serde_json::Value>>,
    ordered: bool,
    count: Option<usize>,
    conditions: Vec<Expr>,
    attributes: Attributes,
}

struct RawFile {
    flow_path: PathBuf,
    flow_pos: Pos,
    env: Vec<(String, String, Pos)>,
    tests: Vec<RawTest>,
}

enum Prepared {
    Ready(Box<TestCase>),
    FlowInvalid(String, Vec<Diagnostic>),
    Skipped,
}

struct Reader<'a> {
    text: &'a str,
    dir: &'a Path,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn pos_of_marker(&self, m: Option<&marked_yaml::Marker>, len: usize) -> Pos {
        let Some(m) = m else {
            return Pos::default();
        };
        let start = self
            .text
            .char_indices()
            .nth(m.character())
            .map_or(self.text.len(), |(b, _)| b);
        Pos {
            line: m.line(),
            column: m.column(),
            range: start..(start + len).min(self.text.len()),
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

    fn scalar_pos(&self, s: &MarkedScalarNode) -> Pos {
        self.pos(s.span(), s.as_str().len().max(1))
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
                let at = self.scalar_pos(key);
                self.error(at, format!("unknown key `{}` in {what}", key.as_str()))
                    .help = Some(help);
            }
        }
    }

    fn yaml_error(&mut self, e: &marked_yaml::LoadError) {
        let (marker, message) = crate::spec::diagnostic::yaml_load_error(e, "a test file");
        let at = self.pos_of_marker(Some(&marker), 1);
        self.error(at, message);
    }

    /// A scalar, or an error saying what was expected.
    fn scalar<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedScalarNode> {
        match node {
            Node::Scalar(s) => Some(s),
            other => {
                let at = self.node_pos(other);
                self.error(at, format!("{what} must be a single value"));
                None
            }
        }
    }

    fn file(&mut self, path: &Path) -> Option<RawFile> {
        // Quoted scalars are strings: a record's `'97'` is not the number 97.
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        let root = match marked_yaml::parse_yaml_with_options(0, self.text, options) {
            Ok(n) => n,
            Err(e) => {
                self.yaml_error(&e);
                return None;
            }
        };
        let Some(top) = root.as_mapping() else {
            let at = self.node_pos(&root);
            self.error(at, "a test file is a mapping with `tests`");
            return None;
        };
        self.check_keys(top, TOP_KEYS, "the test file");
        let (flow_path, flow_pos) = match top.get_scalar("flow") {
            Some(s) => (self.dir.join(s.as_str()), self.scalar_pos(s)),
            None => (
                beside(path),
                Pos {
                    line: 1,
                    column: 1,
                    range: 0..0,
                },
            ),
        };
        if let Some(n @ (Node::Mapping(_) | Node::Sequence(_))) = top.get_node("flow") {
            let at = self.node_pos(n);
            self.error(
                at,
                "`flow` is the path of the flow file, relative to this file",
            );
        }
        let env = match top.get_node("env") {
            Some(n) => self.env(n),
            None => Vec::new(),
        };
        let mut tests = Vec::new();
        match top.get_node("tests") {
            Some(Node::Sequence(seq)) => {
                let mut names = HashSet::new();
                for item in seq.iter() {
                    if let Some(t) = self.test(item) {
                        if !names.insert(t.name.clone()) {
                            let at = t.name_pos.clone();
                            self.error(at, format!("two tests are named `{}`", t.name))
                                .help = Some("give every test its own name".into());
                        }
                        tests.push(t);
                    }
                }
                if seq.is_empty() {
                    let at = self.node_pos(top.get_node("tests")?);
                    self.error(at, "`tests` is empty");
                }
            }
            Some(other) => {
                let at = self.node_pos(other);
                self.error(at, "`tests` must be a list of tests (`- name: ...`)");
            }
            None => {
                self.error(
                    Pos {
                        line: 1,
                        column: 1,
                        range: 0..0,
                    },
                    "missing `tests`",
                );
            }
        }
        Some(RawFile {
            flow_path,
            flow_pos,
            env,
            tests,
        })
    }

    fn env(&mut self, node: &Node) -> Vec<(String, String, Pos)> {
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(at, "`env` must be a mapping of variable names to values");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in map.iter() {
            if let Some(s) = self.scalar(v, &format!("`{}`", k.as_str())) {
                out.push((
                    k.as_str().to_owned(),
                    s.as_str().to_owned(),
                    self.scalar_pos(s),
                ));
            }
        }
        out
    }

    fn test(&mut self, node: &Node) -> Option<RawTest> {
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(
                at,
                "a test is a mapping with `name`, `inputs` and `outputs`",
            );
            return None;
        };
        self.check_keys(map, TEST_KEYS, "a test");
        let Some(name) = map.get_scalar("name") else {
            let at = self.node_pos(node);
            self.error(at, "this test has no `name`");
            return None;
        };
        let name_pos = self.scalar_pos(name);
        let env = map.get_node("env").map(|n| self.env(n)).unwrap_or_default();
        let mut clock_start = DEFAULT_CLOCK_START;
        if let Some(clock) = map.get_node("clock") {
            match clock.as_mapping() {
                Some(c) => {
                    self.check_keys(c, CLOCK_KEYS, "`clock`");
                    if let Some(s) = c.get_node("start").and_then(|n| self.scalar(n, "`start`")) {
                        match time(s.as_str()) {
                            Some(t) => clock_start = t,
                            None => {
                                let at = self.scalar_pos(s);
                                self.error(at, format!("`{}` is not a time", s.as_str()))
                                    .help = Some(
                                    "write RFC 3339 in UTC (`2024-05-01T12:00:00Z`) or epoch \
                                     milliseconds"
                                        .into(),
                                );
                            }
                        }
                    }
                }
                None => {
                    let at = self.node_pos(clock);
                    self.error(
                        at,
                        "`clock` is a mapping, like `{ start: 2024-05-01T00:00:00Z }`",
                    );
                }
            }
        }
        let mut steps = Vec::new();
        match map.get_node("inputs") {
            Some(Node::Sequence(seq)) => {
                for item in seq.iter() {
                    if let Some(s) = self.step(item) {
                        steps.push(s);
                    }
                }
            }
            Some(other) => {
                let at = self.node_pos(other);
                self.error(at, format!("`inputs` must be a list of {STEP_KINDS}"));
            }
            None => {}
        }
        let outputs = match map.get_node("outputs") {
            Some(n) => self.expectations(n, "`outputs`"),
            None => Vec::new(),
        };
        let has_expect = steps.iter().any(|s| matches!(s, RawStep::Expect(_)));
        if outputs.is_empty() && !has_expect && map.get_node("outputs").is_none() {
            let at = name_pos.clone();
            self.error(at, format!("test `{}` expects nothing", name.as_str()))
                .help = Some(
                "add `outputs:` (records, count or conditions on a `node.port`, or `count: 0` \
                 for no output)"
                    .into(),
            );
        }
        Some(RawTest {
            name: name.as_str().to_owned(),
            name_pos,
            env,
            clock_start,
            steps,
            outputs,
        })
    }

    fn step(&mut self, node: &Node) -> Option<RawStep> {
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(at, format!("an input step is a mapping: {STEP_KINDS}"));
            return None;
        };
        if let Some(adv) = map.get_node("advance") {
            self.check_keys(map, &["advance"], "an `advance` step");
            let s = self.scalar(adv, "`advance`")?;
            return match humantime::parse_duration(s.as_str()) {
                Ok(d) => Some(RawStep::Advance(d)),
                Err(e) => {
                    let at = self.scalar_pos(s);
                    self.error(at, format!("`{}` is not a duration: {e}", s.as_str()))
                        .help = Some("like `10s`, `1m 30s` or `250ms`".into());
                    None
                }
            };
        }
        if let Some(exp) = map.get_node("expect") {
            self.check_keys(map, &["expect"], "an `expect` step");
            return Some(RawStep::Expect(self.expectations(exp, "`expect`")));
        }
        let Some(at_node) = map.get_node("at") else {
            let at = self.node_pos(node);
            self.error(at, format!("this step has none of {STEP_KINDS}"));
            return None;
        };
        self.check_keys(map, INJECT_KEYS, "an input");
        let at = self.scalar(at_node, "`at`")?;
        let attributes = match map.get_node("attributes") {
            Some(n) => self.attributes(n),
            None => Attributes::new(),
        };
        let event_time = match map.get_node("event_time") {
            Some(n) => {
                let s = self.scalar(n, "`event_time`")?;
                match time(s.as_str()) {
                    Some(t) => Some(t),
                    None => {
                        let at = self.scalar_pos(s);
                        self.error(at, format!("`{}` is not a time", s.as_str()))
                            .help = Some(
                            "write RFC 3339 in UTC (`2024-05-01T12:00:00Z`) or epoch milliseconds"
                                .into(),
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        let format = match map.get_scalar("format").map(|s| (s.as_str(), s)) {
            None | Some(("json", _)) => ContentKind::JsonLine,
            Some(("text", _)) => ContentKind::Text,
            Some((other, s)) => {
                let at = self.scalar_pos(s);
                self.error(at, format!("unknown format `{other}`")).help =
                    Some("`json` (JSON lines, the default) or `text`".into());
                ContentKind::JsonLine
            }
        };
        let given: Vec<&str> = ["records", "lines", "file"]
            .into_iter()
            .filter(|k| map.get_node(k).is_some())
            .collect();
        if given.len() != 1 {
            let at = self.scalar_pos(at);
            self.error(
                at,
                format!(
                    "an input has exactly one of `records`, `lines` or `file` ({})",
                    if given.is_empty() {
                        "none given".to_owned()
                    } else {
                        format!("{} given", given.join(", "))
                    }
                ),
            );
            return None;
        }
        if map.get_node("format").is_some() && given[0] == "records" {
            let at = self.node_pos(map.get_node("format")?);
            self.error(
                at,
                "`format` is for `lines` and `file`; `records` are values",
            );
        }
        let record = |content: Bytes, kind: ContentKind| InputRecord {
            content,
            kind,
            attributes: attributes.clone(),
            event_time,
        };
        let mut records = Vec::new();
        match given[0] {
            "records" => match map.get_node("records") {
                Some(Node::Sequence(seq)) => {
                    for item in seq.iter() {
                        if !matches!(item, Node::Mapping(_)) {
                            let at = self.node_pos(item);
                            self.error(at, "a record is a mapping of fields (a JSON object)")
                                .help = Some(
                                "write `{ device: d1, temperature: 97 }`; for raw content use \
                                 `lines:`"
                                    .into(),
                            );
                            continue;
                        }
                        let value = self.value(item);
                        let json = serde_json::to_vec(&value).unwrap_or_default();
                        records.push(record(Bytes::from(json), ContentKind::Json));
                    }
                }
                Some(other) => {
                    let at = self.node_pos(other);
                    self.error(at, "`records` must be a list of records");
                }
                None => {}
            },
            "lines" => {
                let s = self.scalar(map.get_node("lines")?, "`lines`")?;
                for line in s.as_str().lines().filter(|l| !l.trim().is_empty()) {
                    records.push(record(Bytes::copy_from_slice(line.as_bytes()), format));
                }
            }
            _ => {
                let s = self.scalar(map.get_node("file")?, "`file`")?;
                let path = self.dir.join(s.as_str());
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            records.push(record(Bytes::copy_from_slice(line.as_bytes()), format));
                        }
                    }
                    Err(e) => {
                        let at = self.scalar_pos(s);
                        self.error(at, format!("cannot read {}: {e}", path.display()));
                    }
                }
            }
        }
        Some(RawStep::Inject {
            at: at.as_str().to_owned(),
            at_pos: self.scalar_pos(at),
            records,
        })
    }

    fn attributes(&mut self, node: &Node) -> Attributes {
        let mut out = Attributes::new();
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(at, "`attributes` must be a mapping of names to strings");
            return out;
        };
        for (k, v) in map.iter() {
            if let Some(s) = self.scalar(v, &format!("attribute `{}`", k.as_str())) {
                out.insert(k.as_str().to_owned(), s.as_str().to_owned());
            }
        }
        out
    }

    fn expectations(&mut self, node: &Node, what: &str) -> Vec<RawExpect> {
        let Some(seq) = node.as_sequence() else {
            let at = self.node_pos(node);
            self.error(at, format!("{what} must be a list like `- at: node.port`"));
            return Vec::new();
        };
        seq.iter().filter_map(|n| self.expectation(n)).collect()
    }

    fn expectation(&mut self, node: &Node) -> Option<RawExpect> {
        let Some(map) = node.as_mapping() else {
            let at = self.node_pos(node);
            self.error(at, "an expected output is a mapping with `at`");
            return None;
        };
        let before = self.diags.len();
        self.check_keys(map, EXPECT_KEYS, "an expected output");
        let unknown_keys = self.diags.len() > before;
        let Some(at) = map.get_node("at") else {
            let at = self.node_pos(node);
            self.error(
                at,
                "this expected output has no `at` (a `node.port`, or a sink)",
            );
            return None;
        };
        let at = self.scalar(at, "`at`")?;
        let records = match map.get_node("records") {
            Some(Node::Sequence(seq)) => Some(seq.iter().map(|n| self.value(n)).collect()),
            Some(other) => {
                let at = self.node_pos(other);
                self.error(at, "`records` must be a list of records");
                None
            }
            None => None,
        };
        let ordered = match map.get_scalar("ordered") {
            Some(s) => match s.as_bool() {
                Some(b) => b,
                None => {
                    let at = self.scalar_pos(s);
                    self.error(at, "`ordered` is `true` or `false`");
                    true
                }
            },
            None => true,
        };
        if map.get_node("ordered").is_some() && records.is_none() {
            let at = self.node_pos(map.get_node("ordered")?);
            self.error(at, "`ordered` goes with `records`");
        }
        let count = match map.get_node("count") {
            Some(n) => {
                let s = self.scalar(n, "`count`")?;
                match s.as_str().parse::<usize>() {
                    Ok(c) => Some(c),
                    Err(_) => {
                        let at = self.scalar_pos(s);
                        self.error(
                            at,
                            format!("`count` is a number of records, not `{}`", s.as_str()),
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let mut conditions = Vec::new();
        match map.get_node("conditions") {
            Some(Node::Scalar(s)) => conditions.extend(self.condition(s)),
            Some(Node::Sequence(seq)) => {
                for n in seq.iter() {
                    if let Some(s) = self.scalar(n, "a condition") {
                        conditions.extend(self.condition(s));
                    }
                }
            }
            Some(other) => {
                let at = self.node_pos(other);
                self.error(at, "`conditions` is a VRL condition or a list of them");
            }
            None => {}
        }
        let attributes = match map.get_node("attributes") {
            Some(n) => self.attributes(n),
            None => Attributes::new(),
        };
        // (A misspelt key is reported already, with its correction.)
        if !unknown_keys
            && ["records", "count", "conditions", "attributes"]
                .iter()
                .all(|k| map.get_node(k).is_none())
        {
            let pos = self.scalar_pos(at);
            self.error(pos, format!("nothing is expected of `{}`", at.as_str()))
                .help = Some(
                "add `records`, `count` (`count: 0` for no output), `conditions` or `attributes`"
                    .into(),
            );
        }
        Some(RawExpect {
            at: at.as_str().to_owned(),
            at_pos: self.scalar_pos(at),
            records,
            ordered,
            count,
            conditions,
            attributes,
        })
    }

    fn condition(&mut self, s: &MarkedScalarNode) -> Option<Expr> {
        match Expr::compile(s.as_str(), ExprKind::Condition) {
            Ok(e) => Some(e),
            Err(err) => {
                let base = self.scalar_pos(s);
                for d in err.0 {
                    let at = match d.span {
                        Some((a, b)) => self.point_into(base.clone(), s.as_str(), a, b - a),
                        None => base.clone(),
                    };
                    self.error(at, format!("invalid condition: {}", d.message))
                        .help = d.notes.first().cloned();
                }
                None
            }
        }
    }

    /// Narrow `at` (a scalar's position) to `len` bytes at `offset` inside its value, when the
    /// value is on one line and written as it is (plain, or quoted without escapes).
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
        // Within the value: a problem at its very end points at its last character.
        let mut offset = offset.min(value.len().saturating_sub(1));
        while !value.is_char_boundary(offset) {
            offset -= 1;
        }
        let len = len.clamp(1, (value.len() - offset).max(1));
        let start = at.range.start + shift + offset;
        Pos {
            line: at.line,
            column: at.column + shift + value[..offset].chars().count(),
            range: start..(start + len).min(self.text.len()),
        }
    }

    /// A YAML value as JSON: plain scalars typed as YAML 1.2's core schema does (null,
    /// booleans, integers, floats, else strings); quoted scalars are strings.
    fn value(&mut self, node: &Node) -> serde_json::Value {
        use serde_json::Value as J;
        match node {
            Node::Scalar(s) => scalar_value(s),
            Node::Sequence(seq) => J::Array(seq.iter().map(|n| self.value(n)).collect()),
            Node::Mapping(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), self.value(v)))
                    .collect(),
            ),
        }
    }

    /// Load the flow with the test's environment and check what the test names in it.
    fn prepare(
        &mut self,
        t: RawTest,
        file_env: &[(String, String, Pos)],
        flow_text: &str,
        registry: &Registry,
        process_env: &dyn Fn(&str) -> Option<String>,
    ) -> Prepared {
        let dir = match tempfile::Builder::new().prefix("flow-test-").tempdir() {
            Ok(d) => d,
            Err(e) => {
                let at = t.name_pos.clone();
                self.error(at, format!("cannot make the test's directory: {e}"));
                return Prepared::Skipped;
            }
        };
        let dir_text = dir.path().display().to_string();
        // `${VAR}` in env values: FLOW_TEST_DIR and the process environment.
        let base = |k: &str| {
            if k == TEST_DIR_VAR {
                Some(dir_text.clone())
            } else {
                process_env(k)
            }
        };
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (k, v, pos) in file_env.iter().chain(&t.env) {
            match spec::interpolate(v, &base) {
                Ok(v) => {
                    env.insert(k.clone(), v);
                }
                Err(errs) => {
                    for (_, _, msg) in errs {
                        self.error(pos.clone(), format!("`{k}`: {msg}"));
                    }
                }
            }
        }
        let lookup = |k: &str| {
            if k == TEST_DIR_VAR {
                return Some(dir_text.clone());
            }
            env.get(k).cloned().or_else(|| process_env(k))
        };
        let loaded = spec::load(flow_text, &lookup, registry);
        let Some(flow) = loaded.flow else {
            let errors = loaded
                .diagnostics
                .into_iter()
                .filter(|d| d.severity == spec::Severity::Error)
                .collect();
            return Prepared::FlowInvalid(t.name, errors);
        };
        let before = self.diags.len();
        let mut steps = Vec::new();
        for s in t.steps {
            match s {
                RawStep::Advance(d) => steps.push(Step::Advance(d)),
                RawStep::Expect(list) => {
                    let list = list
                        .into_iter()
                        .filter_map(|e| self.resolve(e, &flow))
                        .collect();
                    steps.push(Step::Expect(list));
                }
                RawStep::Inject {
                    at,
                    at_pos: pos,
                    records,
                } => {
                    let name = at.as_str();
                    match flow.nodes.iter().find(|n| n.name == name) {
                        None => {
                            let help =
                                did_you_mean(name, flow.nodes.iter().map(|n| n.name.as_str()))
                                    .unwrap_or_else(|| known(&flow));
                            let msg = if name.contains('.') {
                                format!("inputs go into a node, not a port: `{name}`")
                            } else {
                                format!("the flow has no node `{name}`")
                            };
                            self.error(pos, msg).help = Some(help);
                        }
                        Some(n) if n.kind == Kind::Sink => {
                            self.error(pos, format!("`{name}` is a sink: the test replaces it"))
                                .help = Some(
                                "inject at a node before it; expect what reaches it with `at: \
                                 <sink>`"
                                    .into(),
                            );
                        }
                        Some(_) => steps.push(Step::Inject(Inject {
                            node: name.to_owned(),
                            records,
                        })),
                    }
                }
            }
        }
        let outputs = t
            .outputs
            .into_iter()
            .filter_map(|e| self.resolve(e, &flow))
            .collect();
        if self.diags.len() > before {
            return Prepared::Skipped;
        }
        Prepared::Ready(Box::new(TestCase {
            name: t.name,
            line: t.name_pos.line,
            flow,
            dir,
            clock_start: t.clock_start,
            steps,
            outputs,
        }))
    }

    /// Check an expectation's `at` against the flow.
    fn resolve(&mut self, e: RawExpect, flow: &FlowSpec) -> Option<Expectation> {
        let (name, port) = match e.at.split_once('.') {
            Some((n, p)) => (n, Some(p)),
            None => (e.at.as_str(), None),
        };
        let Some(node) = flow.nodes.iter().position(|n| n.name == name) else {
            let help = did_you_mean(name, flow.nodes.iter().map(|n| n.name.as_str()))
                .unwrap_or_else(|| known(flow));
            self.error(e.at_pos.clone(), format!("the flow has no node `{name}`"))
                .help = Some(help);
            return None;
        };
        let n = &flow.nodes[node];
        let port = match (n.kind, port) {
            (Kind::Sink, None) => None,
            (Kind::Sink, Some(p)) => {
                self.error(
                    e.at_pos.clone(),
                    format!("`{name}` is a sink, which the test replaces: it has no `{p}` output"),
                )
                .help = Some(format!("`at: {name}` checks the records that reach it"));
                return None;
            }
            // A node's default port: its first declared one.
            (_, None) => Some(1),
            (_, Some(p)) => match n.outputs.iter().position(|o| o == p) {
                Some(i) => Some(i),
                None => {
                    let help = did_you_mean(p, n.outputs.iter().map(String::as_str))
                        .unwrap_or_else(|| format!("its ports are: {}", n.outputs.join(", ")));
                    self.error(
                        e.at_pos.clone(),
                        format!("`{name}` ({}) has no port `{p}`", n.type_name),
                    )
                    .help = Some(help);
                    return None;
                }
            },
        };
        if port == Some(1) && n.outputs.len() < 2 {
            self.error(e.at_pos.clone(), format!("`{name}` has no output port"));
            return None;
        }
        Some(Expectation {
            at: e.at,
            node,
            port,
            records: e.records,
            ordered: e.ordered,
            count: e.count,
            conditions: e.conditions,
            attributes: e.attributes,
        })
    }
}

fn known(flow: &FlowSpec) -> String {
    let names: Vec<&str> = flow.nodes.iter().map(|n| n.name.as_str()).collect();
    format!("its nodes are: {}", names.join(", "))
}

/// `NAME.test.yaml` tests `NAME.yaml` beside it.
fn beside(test_file: &Path) -> PathBuf {
    let name = test_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let flow = name
        .strip_suffix(".test.yaml")
        .map(|s| format!("{s}.yaml"))
        .or_else(|| name.strip_suffix(".test.yml").map(|s| format!("{s}.yml")))
        .unwrap_or(name);
    test_file.with_file_name(flow)
}

/// Epoch milliseconds, or RFC 3339 in UTC.
fn time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Some(ms);
    }
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

fn scalar_value(s: &MarkedScalarNode) -> serde_json::Value {
    use serde_json::Value as J;
    let text = s.as_str();
    if !s.may_coerce() {
        return J::String(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return J::Null,
        "true" | "True" | "TRUE" => return J::Bool(true),
        "false" | "False" | "FALSE" => return J::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return J::from(i);
    }
    if let Ok(u) = text.parse::<u64>() {
        return J::from(u);
    }
    let numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
        && text.chars().any(|c| c.is_ascii_digit());
    if numeric
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return J::Number(n);
    }
    J::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(yaml: &str) -> serde_json::Value {
        let options = LoaderOptions::default().prevent_coercion(true);
        let node =
            marked_yaml::parse_yaml_with_options(0, format!("v: {yaml}"), options).expect("yaml");
        let mut r = Reader {
            text: "",
            dir: Path::new("."),
            diags: Vec::new(),
        };
        node.as_mapping()
            .and_then(|m| m.get_node("v"))
            .map(|n| r.value(n))
            .expect("v")
    }

    #[test]
    fn yaml_values_are_typed_like_yaml_core() {
        assert_eq!(typed("97"), serde_json::json!(97));
        assert_eq!(typed("-3"), serde_json::json!(-3));
        assert_eq!(typed("96.5"), serde_json::json!(96.5));
        assert_eq!(typed("1e3"), serde_json::json!(1000.0));
        assert_eq!(typed("true"), serde_json::json!(true));
        assert_eq!(typed("~"), serde_json::Value::Null);
        assert_eq!(typed("'97'"), serde_json::json!("97"));
        assert_eq!(typed("inf"), serde_json::json!("inf"));
        assert_eq!(typed("d1"), serde_json::json!("d1"));
        assert_eq!(
            typed(r#"{"a": [1, "x", null], b: {c: 2.0}}"#),
            serde_json::json!({"a": [1, "x", null], "b": {"c": 2.0}})
        );
    }

    #[test]
    fn times_are_epoch_ms_or_rfc3339() {
        assert_eq!(time("1000"), Some(1000));
        assert_eq!(time("2030-01-01T00:00:00Z"), Some(DEFAULT_CLOCK_START));
        assert_eq!(time("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(time("yesterday"), None);
    }

    #[test]
    fn a_test_file_tests_the_flow_beside_it() {
        assert_eq!(
            beside(Path::new("flows/sensors.test.yaml")),
            Path::new("flows/sensors.yaml")
        );
        assert_eq!(beside(Path::new("a/b.test.yml")), Path::new("a/b.yml"));
    }
}
