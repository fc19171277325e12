//! Snapshot tests of `flow validate` messages: every error at once, with file:line:column and a
//! suggestion.

use std::collections::HashMap;

use flow_tests::{load, repo};

fn check(name: &str) -> String {
    let path = repo().join("tests/fixtures/invalid").join(name);
    let env: HashMap<String, String> = [("OUT_DIR".to_owned(), "out".to_owned())].into();
    let (text, loaded) = load(&path, &env);
    assert!(loaded.has_errors(), "{name} should be invalid");
    assert!(loaded.flow.is_none());
    flow_core::spec::render(name, &text, &loaded.diagnostics)
}

#[test]
fn unknown_keys_and_types_with_suggestions() {
    insta::assert_snapshot!(check("keys.yaml"));
}

#[test]
fn graph_errors_dangling_edges_unknown_ports_and_cycles() {
    insta::assert_snapshot!(check("graph.yaml"));
}

#[test]
fn expression_errors_point_into_the_expression() {
    insta::assert_snapshot!(check("expressions.yaml"));
}

#[test]
fn unset_variables() {
    insta::assert_snapshot!(check("env.yaml"));
}

#[test]
fn yaml_syntax_errors() {
    insta::assert_snapshot!(check("syntax.yaml"));
}

#[test]
fn wrong_values_point_at_themselves_and_hide_nothing() {
    insta::assert_snapshot!(check("values.yaml"));
}

#[test]
fn every_duplicate_key() {
    insta::assert_snapshot!(check("duplicates.yaml"));
}

#[test]
fn expression_errors_inside_block_scalars_point_at_their_line() {
    insta::assert_snapshot!(check("blocks.yaml"));
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let out = check("bom.yaml");
    assert!(!out.contains("unknown key `\u{feff}name`"), "{out}");
    insta::assert_snapshot!(out);
}
