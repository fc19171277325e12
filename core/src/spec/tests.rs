//! Loader tests with small in-file processor types: the cost of loading, and each kind of
//! finding.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::processor::{BuildContext, BuildError, ConfigError, Describe, Processor, ProcessorDef};

/// A source.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "only deserialized")]
struct SrcConfig {
    /// Records to make.
    #[serde(default)]
    count: Option<u64>,
}

impl ProcessorConfig for SrcConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Err(BuildError("not built in these tests".into()))
    }
}

impl Describe for SrcConfig {
    const TYPE: &'static str = "src";
    const KIND: Kind = Kind::Source;
}

/// A transform with values of every kind, and a `late` port that must not drop silently.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "only deserialized")]
struct PassConfig {
    /// At least 1.
    #[serde(default = "one")]
    limit: usize,
    /// A duration.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    wait: Option<Duration>,
    /// A size.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    size: Option<ByteSize>,
    /// An enum.
    #[serde(default)]
    mode: Option<WhenFull>,
    /// Must not be `bad`.
    #[serde(default)]
    label: String,
}

fn one() -> usize {
    1
}

impl ProcessorConfig for PassConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into(), "late".into()]
    }
    fn reported_outputs(&self) -> Vec<String> {
        vec!["late".into()]
    }
    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.limit == 0 {
            errors.push(ConfigError::new(&["limit"], "must be at least 1"));
        }
        if self.label == "bad" {
            errors.push(ConfigError::new(&["label"], "must not be `bad`"));
        }
        errors
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Err(BuildError("not built in these tests".into()))
    }
}

impl Describe for PassConfig {
    const TYPE: &'static str = "pass";
    const KIND: Kind = Kind::Transform;
}

/// A sink.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SinkConfig {}

impl ProcessorConfig for SinkConfig {
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Err(BuildError("not built in these tests".into()))
    }
}

impl Describe for SinkConfig {
    const TYPE: &'static str = "sink";
    const KIND: Kind = Kind::Sink;
}

fn registry() -> Registry {
    Registry::new(vec![
        ProcessorDef::of::<SrcConfig>(),
        ProcessorDef::of::<PassConfig>(),
        ProcessorDef::of::<SinkConfig>(),
    ])
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Load `text` and render every finding as `flow validate` shows them.
fn rendered(text: &str) -> String {
    let loaded = load(text, &no_env, &registry());
    render("flow.yaml", text, &loaded.diagnostics)
}

/// A chain `src -> p0 -> p1 ... -> sink` of `n` transforms, in a file that is not ASCII (so
/// positions need the character index), with one connection naming a processor that does not
/// exist and a cycle at the end, so every graph check runs.
fn chain(n: usize) -> String {
    let mut s = String::from("name: chaîne\ndescription: « température »\nprocessors:\n");
    s.push_str("  src: { type: src }\n");
    for i in 0..n {
        let _ = writeln!(s, "  p{i}: {{ type: pass, label: \"étape {i}\" }}");
    }
    s.push_str("  sink: { type: sink }\nconnections:\n  - src -> p0\n");
    for i in 1..n {
        let _ = writeln!(s, "  - p{}.out -> p{i}", i - 1);
        let _ = writeln!(s, "  - p{}.late -> sink", i - 1);
    }
    let _ = writeln!(s, "  - p{}.out -> sink\n  - p{}.late -> sink", n - 1, n - 1);
    let _ = writeln!(s, "  - p{}.out -> nowhere", n - 1);
    let _ = writeln!(s, "  - p{}.out -> p{}", n - 1, n - 3);
    s
}

/// Characters walked to compute positions while loading `text`.
fn position_work(text: &str) -> (u64, Loaded) {
    let mut l = Loader::new(text);
    let flow = l.load(&no_env, &registry());
    let steps = l.src.steps();
    let mut diagnostics = l.diags;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    (steps, Loaded { flow, diagnostics })
}

/// Loading was quadratic: every position walked the file from its start, every connection
/// searched the processors and the findings. The work of positions is now counted: it must
/// grow like the file (4x the processors, about 4x the work), where the old walk grew 16x.
/// Counting work, rather than timing, keeps the test exact on a busy machine.
#[test]
fn loading_work_grows_linearly_with_the_flow() {
    let (small, _) = position_work(&chain(500));
    let (large, loaded) = position_work(&chain(2_000));
    assert!(
        small > 0,
        "the file is not ASCII: positions walk characters"
    );
    let ratio = large as f64 / small as f64;
    assert!(
        ratio < 5.0,
        "4x the processors cost {ratio:.1}x the work ({small} -> {large} characters walked)"
    );
    // And the result is right: the unknown processor and the cycle are found, with positions.
    let errors: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.message.as_str(), d.line))
        .collect();
    // Lines: p{i} is on 5 + i, `p{i-1}.out -> p{i}` on 6 + n + 2i, `nowhere` on 8 + 3n.
    let n = 2_000;
    assert_eq!(
        errors,
        [
            (
                "connections form a cycle through p1997, p1998, p1999",
                6 + n + 2 * (n - 2)
            ),
            ("connection names unknown processor `nowhere`", 8 + 3 * n),
        ]
    );
}

#[test]
fn a_large_flow_loads_with_exact_positions() {
    let n = 10_000;
    let mut text = chain(n);
    // No cycle and no unknown name this time.
    let keep = text.len()
        - text
            .lines()
            .rev()
            .take(2)
            .map(|l| l.len() + 1)
            .sum::<usize>();
    text.truncate(keep);
    let loaded = load(&text, &no_env, &registry());
    assert_eq!(loaded.diagnostics, []);
    let flow = loaded.flow.expect("valid");
    assert_eq!(flow.nodes.len(), n + 2);
    assert_eq!(flow.edges.len(), 2 * n + 1);
    let last = &flow.nodes[n];
    assert_eq!(last.name, format!("p{}", n - 1));
    assert_eq!((last.pos.line, last.pos.column), (n + 4, 3));
    assert_eq!(&text[last.pos.range.clone()], last.name);
    let edge = flow.edges.last().expect("edges");
    assert!(text[edge.pos.range.start..].starts_with(&format!("p{}.late -> sink", n - 1)));
}

#[test]
fn every_duplicate_key_is_reported_and_the_rest_still_checked() {
    insta::assert_snapshot!(rendered(
        "\
name: once
processors:
  src: { type: src, count: 1, count: 2 }
  a: { type: pass }
  a: { type: pass, limit: 0 }
  out: { type: sink }
connections:
  - src -> a
  - a -> out
  - a.late -> out
name: twice
name: thrice
"
    ));
}

#[test]
fn a_wrong_value_points_at_itself_and_hides_nothing() {
    insta::assert_snapshot!(rendered(
        "\
processors:
  src: { type: src, count: \"lots\" }
  p:
    type: pass
    limit: -1
    wait: 10 parsecs
    size: 12 quarks
    mode: drop_newst
    label: bad
    bogus: 1
  out: { type: sink }
connections:
  - src -> p
  - p -> out
  - p.late -> out
  - { from: p, to: out, when_full: wait, max_records: many }
"
    ));
}

#[test]
fn missing_keys_are_reported_unless_they_were_taken_out() {
    #[derive(Debug, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct NeedsConfig {
        /// Required.
        needed: u32,
        /// Required too.
        other: u32,
    }
    impl ProcessorConfig for NeedsConfig {
        fn outputs(&self) -> Vec<String> {
            Vec::new()
        }
        fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
            Err(BuildError("not built in these tests".into()))
        }
    }
    impl Describe for NeedsConfig {
        const TYPE: &'static str = "needs";
        const KIND: Kind = Kind::Sink;
    }
    let registry = Registry::new(vec![
        ProcessorDef::of::<SrcConfig>(),
        ProcessorDef::of::<NeedsConfig>(),
    ]);
    let text = "\
processors:
  src: { type: src }
  a: { type: needs, needed: x, other: 1 }
  b: { type: needs, other: 1 }
connections:
  - src -> a
  - src -> b
";
    let loaded = load(text, &no_env, &registry);
    let messages: Vec<_> = loaded
        .diagnostics
        .iter()
        .map(|d| (d.message.as_str(), d.line, d.column))
        .collect();
    assert_eq!(
        messages,
        [
            (
                "processor `a`, `needed`: expected an integer, found `x`",
                3,
                29
            ),
            ("processor `b` (needs): missing key `needed`", 4, 3),
        ]
    );
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_key() {
    let text = "\u{feff}processors:\n  src: { type: src, cuont: 1 }\n  out: { type: sink }\nconnections:\n  - src -> out\n";
    let loaded = load(text, &no_env, &registry());
    assert_eq!(loaded.diagnostics.len(), 1, "{:?}", loaded.diagnostics);
    let d = &loaded.diagnostics[0];
    assert_eq!((d.line, d.column), (2, 21));
    assert_eq!(&text[d.range.clone()], "cuont");
    insta::assert_snapshot!(render("flow.yaml", text, &loaded.diagnostics));

    let clean = "\u{feff}processors:\n  src: { type: src }\n  out: { type: sink }\nconnections:\n  - src -> out\n";
    let loaded = load(clean, &no_env, &registry());
    assert_eq!(loaded.diagnostics, []);
    let src = &loaded.flow.expect("valid").nodes[0];
    assert_eq!(&clean[src.pos.range.clone()], "src");
}

#[test]
fn an_unconnected_reported_port_is_a_warning() {
    let text = "\
processors:
  src: { type: src }
  p: { type: pass }
  out: { type: sink }
connections:
  - src -> p
  - p -> out
";
    let loaded = load(text, &no_env, &registry());
    assert!(loaded.flow.is_some());
    insta::assert_snapshot!(render("flow.yaml", text, &loaded.diagnostics));
}

#[test]
fn connections_to_a_processor_that_did_not_load_add_no_noise() {
    let text = "\
processors:
  src: { type: src }
  p: { type: pass, limit: x }
  out: { type: sink }
connections:
  - src -> p
  - p -> out
  - p.late -> out
";
    let loaded = load(text, &no_env, &registry());
    let messages: Vec<_> = loaded
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        messages,
        ["processor `p`, `limit`: expected an integer, found `x`"]
    );
}

#[test]
fn the_api_section_is_read_and_checked() {
    let env = |k: &str| (k == "TOKEN").then(|| "s3cret".to_owned());
    let ok = load(
        "api: { listen: \"127.0.0.1:0\", token: \"${TOKEN}\" }\nprocessors:\n  src: { type: src }\n",
        &env,
        &registry(),
    );
    assert!(!ok.has_errors(), "{:?}", ok.diagnostics);
    assert_eq!(
        ok.flow.and_then(|f| f.api),
        Some(ApiConfig {
            listen: Some("127.0.0.1:0".into()),
            token: Some("s3cret".into()),
        })
    );

    let text = "api:\n  lisen: 0.0.0.0:1\n  token: [1]\nprocessors:\n  src: { type: src }\n";
    let out = rendered(text);
    assert!(out.contains("unknown key `lisen`"), "{out}");
    assert!(out.contains("did you mean `listen`"), "{out}");
    assert!(out.contains("`api.token`"), "{out}");
    assert!(out.contains("flow.yaml:3:"), "{out}");
}

#[test]
fn unset_variables_are_warnings_for_the_structure_and_errors_to_run() {
    let text = "processors:\n  src: { type: src, count: \"${N:-3}\" }\n  p: { type: pass, label: \"${WHO}/x\" }\n  out: { type: sink }\nconnections:\n  - src -> p\n  - p -> out\n  - p.late -> out\n";
    let strict = load(text, &no_env, &registry());
    assert!(strict.flow.is_none());
    let errors: Vec<_> = strict.diagnostics.iter().map(|d| &d.message).collect();
    assert_eq!(errors, ["environment variable `WHO` is not set"]);

    let structure = load_structure(text, &no_env, &registry());
    let flow = structure.flow.expect("the structure loads");
    assert_eq!(flow.nodes.len(), 3);
    let found: Vec<_> = structure
        .diagnostics
        .iter()
        .map(|d| (d.severity, d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [(
            Severity::Warning,
            3,
            28,
            "environment variable `WHO` is not set: needed to run the flow"
        )]
    );
}

#[test]
fn an_unset_variable_in_a_typed_field_is_no_type_error_for_the_structure() {
    let text = "defaults:\n  max_records: ${R}\nprocessors:\n  src:\n    type: src\n    count: ${N}\n  p:\n    type: pass\n    limit: ${L}\n    wait: ${W}\n    size: ${S}\n    mode: ${M}\n  out:\n    type: sink\nconnections:\n  - src -> p\n  - from: p\n    to: out\n    max_bytes: ${B}\n  - p.late -> out\n";
    let vars = [
        ("R", 2),
        ("N", 6),
        ("L", 9),
        ("W", 10),
        ("S", 11),
        ("M", 12),
        ("B", 19),
    ];
    let findings = |loaded: &Loaded| -> Vec<(Severity, usize, String)> {
        loaded
            .diagnostics
            .iter()
            .map(|d| (d.severity, d.line, d.message.clone()))
            .collect()
    };

    // The structure: one warning per variable, no type error, every node and edge there.
    let structure = load_structure(text, &no_env, &registry());
    assert_eq!(
        findings(&structure),
        vars.iter()
            .map(|(v, line)| (
                Severity::Warning,
                *line,
                format!("environment variable `{v}` is not set: needed to run the flow")
            ))
            .collect::<Vec<_>>()
    );
    let flow = structure.flow.expect("the structure loads");
    assert_eq!(flow.nodes.len(), 3);
    let labels: Vec<String> = flow.edges.iter().map(|e| flow.edge_label(e)).collect();
    assert_eq!(flow.edges.len(), 3, "{labels:?}");
    assert_eq!(flow.nodes[1].outputs, ["failure", "out", "late"]);

    // To run, every variable is required: one error each, and no type error besides.
    let strict = load(text, &no_env, &registry());
    assert!(strict.flow.is_none());
    assert_eq!(
        findings(&strict),
        vars.iter()
            .map(|(v, line)| (
                Severity::Error,
                *line,
                format!("environment variable `{v}` is not set")
            ))
            .collect::<Vec<_>>()
    );

    // Set, their values are checked as usual.
    let typed = load(text, &|_| Some("x".to_owned()), &registry());
    let typed = findings(&typed);
    for key in [
        "limit`",
        "wait`",
        "size`",
        "mode`",
        "count`",
        "max_records`",
        "max_bytes`",
    ] {
        assert!(
            typed
                .iter()
                .any(|(s, _, m)| *s == Severity::Error && m.contains(key)),
            "{key}: {typed:?}"
        );
    }
}

#[test]
fn provenance_content_names_processors_of_the_flow() {
    let ok = load(
        "provenance: { content: [src], secret_attributes: [auth] }\nprocessors:\n  src: { type: src }\n",
        &no_env,
        &registry(),
    );
    assert!(!ok.has_errors(), "{:?}", ok.diagnostics);
    let p = ok.flow.and_then(|f| f.provenance).expect("provenance");
    assert_eq!(
        (p.content, p.secret_attributes),
        (vec!["src".to_owned()], vec!["auth".to_owned()])
    );

    let text = "provenance:\n  content: [scr]\nprocessors:\n  src: { type: src }\n";
    let out = rendered(text);
    assert!(
        out.contains("`provenance.content` names unknown processor `scr`"),
        "{out}"
    );
    assert!(out.contains("flow.yaml:2:"), "{out}");
}
