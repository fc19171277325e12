use std::str::FromStr;

use super::*;

const DEMO: &str = include_str!("../../../../flows/demo.yaml");

/// Lines removed from `a` and added in `b`, by a longest-common-subsequence diff.
pub(crate) fn line_diff(a: &str, b: &str) -> (Vec<String>, Vec<String>) {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            added.push(b[j].to_owned());
            j += 1;
        } else {
            removed.push(a[i].to_owned());
            i += 1;
        }
    }
    (removed, added)
}

fn diff(a: &FlowDocument, before: &str) -> (Vec<String>, Vec<String>) {
    line_diff(before, a.text())
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_example_flow_prints_back_byte_for_byte() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../flows");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("flows/") {
        let path = entry.expect("entry").path();
        // Flows, not their `flow test` files (`*.test.yaml`).
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        // The editor's tree prints the text it parsed exactly: edits start from the file as is.
        let tree = yaml_edit::Document::from_str(&text).expect("yaml-edit parses");
        assert_eq!(tree.to_string(), text, "{}", path.display());
        let doc = FlowDocument::new(text.clone());
        assert!(doc.outline().error.is_none(), "{}", path.display());
        assert!(!doc.outline().processors.is_empty(), "{}", path.display());
        // A layout that changes nothing changes no byte.
        let mut same = doc.clone();
        same.set_layout(&[]).expect("no-op");
        assert_eq!(same.text(), text);
        seen += 1;
    }
    assert!(seen >= 9, "only {seen} flows");
}

#[test]
fn the_outline_reads_processors_connections_and_forms() {
    let text = "\
name: t
defaults: { max_records: 100 }
processors:
  gen:   { type: generate, count: '${COUNT:-5}' }
  # the filter
  valid: { type: filter, condition: '.a > 1' }
  out:
    type: stdout
connections:
  - gen -> valid          # default port
  - { from: valid.unmatched, to: out, max_bytes: 1MiB }
  - 42
layout:
  gen: [10, 20.5]
  bogus: nope
";
    let doc = FlowDocument::new(text);
    let o = doc.outline();
    assert_eq!(o.name.as_deref(), Some("t"));
    let names: Vec<_> = o.processors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["gen", "valid", "out"]);
    assert_eq!(o.processors[0].type_name.as_deref(), Some("generate"));
    // `${VAR}`s are kept as written.
    assert_eq!(
        o.processors[0]
            .get(&["count"])
            .and_then(|n| n.as_scalar())
            .map(|s| s.as_str()),
        Some("${COUNT:-5}")
    );
    assert_eq!(o.defaults, [("max_records".to_owned(), "100".to_owned())]);
    let c0 = o.connections[0].as_ref().expect("c0");
    assert_eq!(
        (c0.from.as_str(), c0.port.as_deref(), c0.to.as_str()),
        ("gen", None, "valid")
    );
    assert_eq!(c0.form, ConnectionForm::Short);
    let c1 = o.connections[1].as_ref().expect("c1");
    assert_eq!(c1.label(), "valid.unmatched -> out");
    assert_eq!(c1.form, ConnectionForm::Mapping);
    assert_eq!(c1.max_bytes.as_deref(), Some("1MiB"));
    assert!(o.connections[2].is_none());
    assert_eq!(o.position("gen"), Some([10.0, 20.5]));
    assert_eq!(o.position("bogus"), None);
    // Diagnostics find their processor and field by position.
    assert_eq!(
        o.processor_at(Loc {
            line: 6,
            column: 30
        }),
        Some((1, Some("condition")))
    );
    assert_eq!(
        o.processor_at(Loc {
            line: 8,
            column: 11
        }),
        Some((2, Some("type")))
    );
    assert_eq!(
        o.processor_at(Loc {
            line: 10,
            column: 5
        }),
        None
    );
    assert_eq!(
        o.connection_at(Loc {
            line: 11,
            column: 5
        }),
        Some(1)
    );
    assert_eq!(
        o.connection_at(Loc {
            line: 14,
            column: 3
        }),
        None
    );
}

#[test]
fn an_empty_file_is_an_empty_flow() {
    let mut doc = FlowDocument::new("");
    assert!(doc.outline().error.is_none());
    doc.add_processor("a", "stdin", &[]).expect("add");
    doc.add_processor("b", "stdout", &[]).expect("add");
    doc.add_connection("a", None, "b").expect("connect");
    assert_eq!(
        doc.text(),
        "processors:\n  a:\n    type: stdin\n  b:\n    type: stdout\nconnections:\n- a -> b\n"
    );
}

#[test]
fn unreadable_text_still_opens_and_refuses_edits() {
    let mut doc = FlowDocument::new("processors: [unclosed\n");
    let (at, msg) = doc.outline().error.clone().expect("an error");
    assert!(msg.contains("invalid YAML"), "{msg}");
    assert_eq!(at.line, 2);
    assert!(matches!(
        doc.add_connection("a", None, "b"),
        Err(EditError::Unparsable(_))
    ));
    assert_eq!(doc.text(), "processors: [unclosed\n");
}

#[test]
fn set_field_changes_one_line_and_keeps_the_rest() {
    let mut doc = FlowDocument::new(DEMO);
    doc.set_field(
        "valid",
        &["condition"],
        Some(Value::Str(".temperature > 0 && .ok".into())),
    )
    .expect("set");
    assert_eq!(
        diff(&doc, DEMO),
        (
            strs(&["    condition: .status != \"error\""]),
            strs(&["    condition: '.temperature > 0 && .ok'"])
        )
    );
    // A value that needs quotes gets them, and reads back as written.
    doc.set_field("valid", &["condition"], Some(Value::Str("#x: {a}".into())))
        .expect("set");
    assert!(
        doc.text().contains("    condition: '#x: {a}'\n"),
        "{}",
        doc.text()
    );
    // A nested value, created on the way; a number stays a number.
    doc.set_field(
        "triage",
        &["routes", "warm"],
        Some(Value::Str(".temperature > 80".into())),
    )
    .expect("nested");
    assert_eq!(
        diff(&doc, DEMO).1.last().map(String::as_str),
        Some("      warm: .temperature > 80")
    );
    doc.set_field("archive", &["append"], Some(Value::Bool(true)))
        .expect("bool");
    assert!(doc.text().contains("    append: true\n"));
    doc.set_field("archive", &["append"], None).expect("remove");
    assert!(!doc.text().contains("append"));
    // `${VAR}` written as text stays a reference.
    doc.set_field(
        "readings",
        &["count"],
        Some(Value::Str("${COUNT:-10}".into())),
    )
    .expect("var");
    assert!(doc.text().contains("    count: ${COUNT:-10}\n"));
    assert!(matches!(
        doc.set_field("nope", &["x"], None),
        Err(EditError::NoProcessor(_))
    ));
    assert!(matches!(
        doc.set_field("valid", &["condition", "x"], Some(Value::Int(1))),
        Err(EditError::NotAMapping(_))
    ));
}

#[test]
fn add_remove_rename_processors() {
    let mut doc = FlowDocument::new(DEMO);
    doc.add_processor(
        "hot",
        "filter",
        &[("condition".into(), Value::Str(".temperature > 99".into()))],
    )
    .expect("add");
    assert_eq!(
        diff(&doc, DEMO),
        (
            vec![],
            strs(&[
                "  hot:",
                "    type: filter",
                "    condition: .temperature > 99"
            ])
        )
    );
    assert_eq!(
        doc.add_processor("hot", "filter", &[]),
        Err(EditError::Exists("hot".into()))
    );
    assert_eq!(
        doc.add_processor("a b", "filter", &[]),
        Err(EditError::BadName("a b".into()))
    );

    let mut doc = FlowDocument::new(DEMO);
    doc.rename_processor("valid", "checked").expect("rename");
    assert_eq!(
        diff(&doc, DEMO),
        (
            strs(&[
                "  valid:",
                "  - readings -> valid",
                "  - valid.matched -> triage",
                "  - valid.matched -> archive"
            ]),
            strs(&[
                "  checked:",
                "  - readings -> checked",
                "  - checked.matched -> triage",
                "  - checked.matched -> archive"
            ])
        )
    );

    let mut doc = FlowDocument::new(DEMO);
    doc.remove_processor("label").expect("remove");
    let (removed, added) = diff(&doc, DEMO);
    assert_eq!(
        removed,
        strs(&[
            "  label:",
            "    type: remap",
            "    source: |",
            "      .alert = \"engine hot\"",
            "      .rpm_k = round(to_float!(.rpm) / 1000, precision: 1)",
            "  - triage.hot -> label",
            "  - label -> alerts"
        ])
    );
    assert!(added.is_empty());
}

#[test]
fn removing_a_processor_takes_its_comment_and_layout_along() {
    let text = "\
processors:
  a: { type: stdin }
  # b: the one that prints
  # (two lines)
  b: { type: stdout }   # trailing

  # c
  c: { type: stdout }
connections:
  - a -> b      # first
  - a -> c
layout:
  a: [0, 0]
  b: [200, 0]
";
    let mut doc = FlowDocument::new(text);
    doc.remove_processor("b").expect("remove");
    assert_eq!(
        doc.text(),
        "\
processors:
  a: { type: stdin }

  # c
  c: { type: stdout }
connections:
  - a -> c
layout:
  a: [0, 0]
"
    );
}

#[test]
fn connections_keep_their_form() {
    let text = "\
processors:
  a: { type: stdin }
  b: { type: stdout }
connections:
  - a -> b      # the only one
  - { from: a.failure, to: b, max_records: 5 }
";
    let mut doc = FlowDocument::new(text);
    doc.add_connection("a", Some("out"), "b").expect("add");
    assert_eq!(diff(&doc, text), (vec![], strs(&["  - a.out -> b"])));
    // Settings turn the short form into a mapping, on its own lines.
    doc.set_connection_settings(
        0,
        &EdgeSettingsEdit {
            max_records: Some("100".into()),
            when_full: Some("drop_newest".into()),
            ..Default::default()
        },
    )
    .expect("settings");
    let c = doc.outline().connections[0].clone().expect("c0");
    assert_eq!(c.form, ConnectionForm::Mapping);
    assert_eq!(
        (c.max_records.as_deref(), c.when_full.as_deref()),
        (Some("100"), Some("drop_newest"))
    );
    // A flow mapping stays a flow mapping on its line.
    doc.set_connection_settings(
        1,
        &EdgeSettingsEdit {
            max_bytes: Some("1MiB".into()),
            ..Default::default()
        },
    )
    .expect("settings");
    assert!(
        doc.text()
            .contains("  - { from: a.failure, to: b, max_bytes: 1MiB }\n"),
        "{}",
        doc.text()
    );
    doc.remove_connection(2).expect("remove");
    assert!(!doc.text().contains("a.out"));
    assert_eq!(doc.remove_connection(9), Err(EditError::NoConnection(9)));
}

#[test]
fn layout_goes_in_one_section_at_the_end() {
    let mut doc = FlowDocument::new(DEMO);
    assert!(doc.outline().layout.is_none());
    doc.set_layout(&[
        ("readings".into(), [10.4, 20.6]),
        ("valid".into(), [300.0, 20.0]),
    ])
    .expect("layout");
    let (removed, added) = diff(&doc, DEMO);
    assert!(removed.is_empty());
    assert_eq!(
        added,
        strs(&["layout:", "  readings: [10, 21]", "  valid: [300, 20]"])
    );
    assert!(doc.text().starts_with(DEMO));
    // Moving one node rewrites its line only.
    let before = doc.text().to_owned();
    doc.set_layout(&[
        ("readings".into(), [10.0, 21.0]),
        ("valid".into(), [310.0, 20.0]),
    ])
    .expect("move");
    assert_eq!(
        line_diff(&before, doc.text()),
        (strs(&["  valid: [300, 20]"]), strs(&["  valid: [310, 20]"]))
    );
}

#[test]
fn defaults_and_top_level_fields() {
    let mut doc = FlowDocument::new(DEMO);
    doc.set_defaults(&EdgeSettingsEdit {
        max_records: Some("10000".into()),
        ..Default::default()
    })
    .expect("defaults");
    let (removed, added) = diff(&doc, DEMO);
    assert!(removed.is_empty());
    assert_eq!(added, strs(&["defaults:", "  max_records: 10000"]));
    let at = doc.text().find("defaults:").expect("defaults");
    assert!(at < doc.text().find("processors:").expect("processors"));
    doc.set_defaults(&EdgeSettingsEdit::default())
        .expect("clear");
    assert_eq!(doc.text(), DEMO);
    doc.set_top("description", Some("a demo"))
        .expect("description");
    assert_eq!(
        diff(&doc, DEMO),
        (
            strs(&[
                "description: generate -> filter -> route -> stdout and a file, no server needed"
            ]),
            strs(&["description: a demo"])
        )
    );
}
