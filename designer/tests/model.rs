//! The document model under random edits: every file in `flows/`, random sequences of the
//! edits the designer makes. Each edit changes only the lines it is about, and the result
//! still reads back and loads.

use std::collections::BTreeSet;
use std::path::PathBuf;

use flow_core::spec::document::{EdgeSettingsEdit, FlowDocument, Value};
use flow_core::spec::{self, Severity};
use proptest::prelude::*;

fn flows() -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../flows");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("flows/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        // Flows, not their `flow test` files (`*.test.yaml`).
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".yaml") && !name.ends_with(".test.yaml")
        })
        .map(|p| {
            let t = std::fs::read_to_string(&p).expect("read");
            (p, t)
        })
        .collect();
    out.sort();
    out
}

/// Removed line numbers of `a` (0-based) and the positions in `a` before which lines were
/// inserted, by a longest-common-subsequence diff.
fn diff(a: &str, b: &str) -> (Vec<usize>, Vec<usize>) {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
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
    let (mut removed, mut inserted) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            inserted.push(i);
            j += 1;
        } else {
            removed.push(i);
            i += 1;
        }
    }
    (removed, inserted)
}

#[derive(Clone, Debug)]
enum Op {
    SetField {
        node: usize,
        key: usize,
        value: String,
    },
    SetNumber {
        node: usize,
        value: i64,
    },
    AddProcessor {
        type_name: &'static str,
    },
    RemoveProcessor(usize),
    Rename {
        node: usize,
        suffix: u8,
    },
    AddConnection {
        from: usize,
        to: usize,
    },
    RemoveConnection(usize),
    EdgeSettings {
        edge: usize,
        records: u32,
        drop: bool,
    },
    Move {
        node: usize,
        x: i16,
        y: i16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let value = "[a-zA-Z0-9 .,:#{}'\"$_/*&!|>-]{0,16}";
    prop_oneof![
        (0..8usize, 0..6usize, value).prop_map(|(node, key, value)| Op::SetField {
            node,
            key,
            value
        }),
        (0..8usize, -5i64..100_000).prop_map(|(node, value)| Op::SetNumber { node, value }),
        prop::sample::select(vec!["filter", "stdout", "remap", "route", "file_sink"])
            .prop_map(|type_name| Op::AddProcessor { type_name }),
        (0..8usize).prop_map(Op::RemoveProcessor),
        (0..8usize, any::<u8>()).prop_map(|(node, suffix)| Op::Rename { node, suffix }),
        (0..8usize, 0..8usize).prop_map(|(from, to)| Op::AddConnection { from, to }),
        (0..8usize).prop_map(Op::RemoveConnection),
        (0..8usize, 1..100_000u32, any::<bool>()).prop_map(|(edge, records, drop)| {
            Op::EdgeSettings {
                edge,
                records,
                drop,
            }
        }),
        (0..8usize, any::<i16>(), any::<i16>()).prop_map(|(node, x, y)| Op::Move { node, x, y }),
    ]
}

/// The lines (0-based) of `doc` that `op` may touch, and where it may insert.
fn allowed(doc: &FlowDocument, op: &Op) -> Option<BTreeSet<usize>> {
    let o = doc.outline();
    let lines = doc.text().lines().count();
    let top_end = |key: &str| -> usize {
        let i = o.top.iter().position(|(k, _)| k == key);
        i.and_then(|i| o.top.get(i + 1))
            .map_or(lines, |(_, l)| l.line - 1)
    };
    let proc_block = |i: usize| -> std::ops::Range<usize> {
        let start = o.processors[i].at.line - 1;
        let end = o
            .processors
            .get(i + 1)
            .map_or_else(|| top_end("processors"), |p| p.at.line - 1);
        start..end + 1
    };
    let conn_block = |i: usize| -> std::ops::Range<usize> {
        let start = o.connections[i].as_ref().map_or(0, |c| c.at.line - 1);
        let end = o
            .connections
            .get(i + 1)
            .and_then(Option::as_ref)
            .map_or_else(|| top_end("connections"), |c| c.at.line - 1);
        start..end + 1
    };
    let layout = || -> BTreeSet<usize> {
        match o.top.iter().find(|(k, _)| k == "layout") {
            Some((_, l)) => (l.line - 1..=top_end("layout")).collect(),
            None => BTreeSet::from([lines]),
        }
    };
    let pick = |n: usize| (!o.processors.is_empty()).then(|| n % o.processors.len());
    // The `connections:` line itself changes only to `connections: []`, when the last one goes.
    let connections_key = o
        .top
        .iter()
        .find(|(k, _)| k == "connections")
        .map(|(_, l)| l.line - 1);
    let processors_key = o
        .top
        .iter()
        .find(|(k, _)| k == "processors")
        .map(|(_, l)| l.line - 1);
    let mut set = BTreeSet::new();
    match op {
        Op::SetField { node, .. } | Op::SetNumber { node, .. } => {
            set.extend(proc_block(pick(*node)?))
        }
        Op::AddProcessor { .. } => {
            set.extend(0..=lines);
        }
        Op::RemoveProcessor(n) => {
            let n = pick(*n)?;
            let name = &o.processors[n].name;
            let block = proc_block(n);
            // and the comment lines right above it
            let text: Vec<&str> = doc.text().lines().collect();
            let mut first = block.start;
            while first > 0 && text[first - 1].trim_start().starts_with('#') {
                first -= 1;
            }
            set.extend(first..block.end);
            for (i, c) in o.connections.iter().enumerate() {
                if c.as_ref().is_some_and(|c| &c.from == name || &c.to == name) {
                    set.extend(conn_block(i));
                }
            }
            set.extend(connections_key);
            set.extend(processors_key);
            set.extend(layout());
        }
        Op::Rename { node, .. } => {
            let n = pick(*node)?;
            let name = &o.processors[n].name;
            set.insert(o.processors[n].at.line - 1);
            for (i, c) in o.connections.iter().enumerate() {
                if c.as_ref().is_some_and(|c| &c.from == name || &c.to == name) {
                    set.extend(conn_block(i));
                }
            }
            set.extend(layout());
        }
        Op::AddConnection { .. } => {
            let end = top_end("connections");
            set.extend(end.saturating_sub(1)..=end.max(lines));
            set.insert(lines);
        }
        Op::RemoveConnection(i) | Op::EdgeSettings { edge: i, .. } => {
            if o.connections.is_empty() {
                return None;
            }
            set.extend(conn_block(i % o.connections.len()));
            set.extend(connections_key);
        }
        Op::Move { .. } => set.extend(layout()),
    }
    Some(set)
}

/// Apply `op`; `Ok(false)` when it was refused as it should be (a taken name, a connection
/// that names nothing...).
fn apply(doc: &mut FlowDocument, op: &Op) -> Result<bool, String> {
    let o = doc.outline().clone();
    let name = |n: usize| {
        o.processors
            .get(n % o.processors.len().max(1))
            .map(|p| p.name.clone())
    };
    let result = match op {
        Op::SetField { node, key, value } => {
            let Some(n) = name(*node) else {
                return Ok(false);
            };
            let p = o.processor(&n).expect("exists");
            let keys: Vec<String> = p
                .fields
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "type")
                .chain(["extra_key".to_owned()])
                .collect();
            let key = &keys[key % keys.len()];
            doc.set_field(&n, &[key], Some(Value::Str(value.clone())))
        }
        Op::SetNumber { node, value } => {
            let Some(n) = name(*node) else {
                return Ok(false);
            };
            doc.set_field(&n, &["count"], Some(Value::Int(*value)))
        }
        Op::AddProcessor { type_name } => {
            let fields = match *type_name {
                "filter" => vec![("condition".to_owned(), Value::Str(".a > 1".into()))],
                "file_sink" => vec![("path".to_owned(), Value::Str("out/x.jsonl".into()))],
                _ => vec![],
            };
            let mut i = 1;
            while o.processor(&format!("{type_name}_{i}")).is_some() {
                i += 1;
            }
            doc.add_processor(&format!("{type_name}_{i}"), type_name, &fields)
        }
        Op::RemoveProcessor(n) => {
            let Some(n) = name(*n) else { return Ok(false) };
            doc.remove_processor(&n)
        }
        Op::Rename { node, suffix } => {
            let Some(n) = name(*node) else {
                return Ok(false);
            };
            let new = format!("{n}_{suffix}");
            if o.processor(&new).is_some() {
                return Ok(false);
            }
            doc.rename_processor(&n, &new)
        }
        Op::AddConnection { from, to } => {
            let (Some(a), Some(b)) = (name(*from), name(*to)) else {
                return Ok(false);
            };
            doc.add_connection(&a, Some("failure"), &b)
        }
        Op::RemoveConnection(i) => {
            if o.connections.is_empty() {
                return Ok(false);
            }
            doc.remove_connection(i % o.connections.len())
        }
        Op::EdgeSettings {
            edge,
            records,
            drop,
        } => {
            if o.connections.is_empty() {
                return Ok(false);
            }
            let i = edge % o.connections.len();
            if o.connections[i].is_none() {
                return Ok(false);
            }
            doc.set_connection_settings(
                i,
                &EdgeSettingsEdit {
                    max_records: Some(records.to_string()),
                    max_bytes: None,
                    when_full: drop.then(|| "drop_newest".into()),
                },
            )
        }
        Op::Move { node, x, y } => {
            let Some(n) = name(*node) else {
                return Ok(false);
            };
            doc.set_layout(&[(n, [f32::from(*x), f32::from(*y)])])
        }
    };
    result.map(|()| true).map_err(|e| format!("{op:?}: {e}"))
}

fn env(_: &str) -> Option<String> {
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn random_edits_touch_only_their_lines_and_the_result_loads(
        file in 0..64usize,
        ops in prop::collection::vec(op(), 1..10),
    ) {
        let files = flows();
        let (path, text) = &files[file % files.len()];
        let registry = flow_processors::builtin();
        let mut doc = FlowDocument::new(text.clone());
        for op in &ops {
            let before = doc.text().to_owned();
            let allowed = allowed(&doc, op);
            let applied = apply(&mut doc, op).map_err(|e| TestCaseError::fail(format!("{}: {e}", path.display())))?;
            if !applied {
                prop_assert_eq!(doc.text(), before.as_str());
                continue;
            }
            let Some(allowed) = allowed else { continue };
            let (removed, inserted) = diff(&before, doc.text());
            for l in removed.iter().chain(&inserted) {
                prop_assert!(
                    allowed.contains(l),
                    "{}: {op:?} touched line {} outside {:?}\n--- before\n{before}\n--- after\n{}",
                    path.display(), l + 1, allowed.iter().map(|l| l + 1).collect::<Vec<_>>(), doc.text()
                );
            }
            // The result is YAML the loader reads: no syntax error, no duplicate key.
            let loaded = spec::load(doc.text(), &env, &registry);
            for d in &loaded.diagnostics {
                prop_assert!(
                    !(d.severity == Severity::Error
                        && (d.message.starts_with("invalid YAML") || d.message.starts_with("duplicate key"))),
                    "{}: {op:?}: {}\n{}", path.display(), d.message, doc.text()
                );
            }
            prop_assert!(doc.outline().error.is_none());
        }
    }

    #[test]
    fn valid_edits_keep_the_demo_valid(
        ops in prop::collection::vec((0..4u8, any::<u16>(), any::<i16>()), 1..8),
    ) {
        let text = include_str!("../../flows/demo.yaml");
        let registry = flow_processors::builtin();
        let mut doc = FlowDocument::new(text);
        let mut added = 0;
        for (kind, n, m) in ops {
            let names: Vec<String> = doc.outline().processors.iter().map(|p| p.name.clone()).collect();
            let pick = &names[n as usize % names.len()];
            match kind {
                0 => {
                    added += 1;
                    let name = format!("extra{added}");
                    doc.add_processor(&name, "filter", &[("condition".into(), Value::Str(format!(".temperature > {m}")))]).expect("add");
                    let o = doc.outline();
                    let find = |t: &str| o.processors.iter().find(|p| p.type_name.as_deref() == Some(t)).map(|p| p.name.clone()).expect("there");
                    let (valid, alerts) = (find("filter"), find("stdout"));
                    doc.add_connection(&valid, Some("matched"), &name).expect("in");
                    doc.add_connection(&name, None, &alerts).expect("out");
                }
                1 => {
                    let new = format!("{pick}_{n}");
                    if !names.contains(&new) {
                        doc.rename_processor(pick, &new).expect("rename");
                    }
                }
                2 => doc.set_layout(&[(pick.clone(), [f32::from(m), f32::from(m / 2)])]).expect("move"),
                _ => {
                    let count = doc.outline().connections.len();
                    doc.set_connection_settings(
                        n as usize % count,
                        &EdgeSettingsEdit { max_records: Some(format!("{}", 1 + u32::from(n))), max_bytes: Some("1MiB".into()), when_full: None },
                    ).expect("settings");
                }
            }
            let loaded = spec::load(doc.text(), &env, &registry);
            let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
            prop_assert!(errors.is_empty(), "{errors:?}\n{}", doc.text());
        }
    }
}
