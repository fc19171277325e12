//! `flow test` from the command line: exit codes, the report, `--filter`, and `--format junit`
//! read back by an independent JUnit parser (junit-parser).

use std::io::Cursor;
use std::process::Output;

use crate::common::{flow, text};

fn flow_test(args: &[&str]) -> Output {
    flow().arg("test").args(args).output().expect("flow runs")
}

const READINGS: &str = "tests/fixtures/flowtest/readings.test.yaml";
const INVALID: &str = "tests/fixtures/flowtest/invalid.test.yaml";

#[test]
fn the_example_flows_pass_their_tests() {
    let out = flow_test(&["flows/"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for f in [
        "demo",
        "sensors",
        "sensors-to-influx",
        "sensors-to-s3",
        "mqtt-to-kafka",
    ] {
        assert!(
            stdout.contains(&format!("flows/{f}.test.yaml (flow flows/{f}.yaml)\n")),
            "{stdout}"
        );
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{stdout}");
}

#[test]
fn a_failing_test_exits_1_and_says_what_differs() {
    let out = flow_test(&[READINGS]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  ok    passes: count\n"), "{stdout}");
    assert!(stdout.contains("  FAIL  fails: count\n"), "{stdout}");
    assert!(
        stdout.contains(".level: expected \"ok\", got \"hot\""),
        "the field that differs: {stdout}"
    );
    assert!(stdout.ends_with("\n8 passed, 7 failed\n"), "{stdout}");
}

#[test]
fn filter_runs_only_the_tests_it_names() {
    let out = flow_test(&["--filter", "passes:", READINGS]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("fails:"), "{stdout}");
    assert!(stdout.ends_with("\n8 passed, 0 failed\n"), "{stdout}");
}

#[test]
fn a_flow_file_stands_for_the_tests_beside_it() {
    let out = flow_test(&["flows/demo.yaml"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("flows/demo.test.yaml (flow flows/demo.yaml)\n"),
        "{stdout}"
    );
}

#[test]
fn an_invalid_test_file_is_reported_like_validate_and_exits_1() {
    let out = flow_test(&[INVALID]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("┌─ tests/fixtures/flowtest/invalid.test.yaml:7:13"),
        "{stderr}"
    );
    assert!(stderr.contains("help: did you mean `in`?"), "{stderr}");
    assert!(
        text(&out.stdout).contains("invalid.test.yaml: invalid, not run"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = flow_test(&["no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no/such/dir: no such file or directory"));
    let out = flow_test(&["flows/demo.test.yaml", "--format", "tap"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn junit_output_is_read_back_by_a_junit_parser() {
    let out = flow_test(&["--format", "junit", READINGS, INVALID]);
    assert_eq!(out.status.code(), Some(1));
    let xml = text(&out.stdout);
    let report = junit_parser::from_reader(Cursor::new(xml.as_bytes()))
        .unwrap_or_else(|e| panic!("not JUnit XML: {e}\n{xml}"));
    assert_eq!(report.suites.len(), 2, "{xml}");

    let readings = &report.suites[0];
    assert_eq!(readings.name, READINGS);
    assert_eq!(readings.cases.len(), 15);
    assert_eq!(readings.tests, 15);
    assert_eq!(readings.failures, 7);
    for case in &readings.cases {
        assert_eq!(case.classname.as_deref(), Some(READINGS));
        assert_eq!(case.name, format!("{READINGS}::{}", case.original_name));
        if case.original_name.starts_with("passes:") {
            assert!(case.status.is_success(), "{}", case.name);
        } else {
            assert!(case.status.is_failure(), "{}", case.name);
        }
    }
    let count = readings
        .cases
        .iter()
        .find(|c| c.original_name == "fails: count")
        .expect("fails: count");
    let failure = count.status.failure_as_ref();
    assert_eq!(failure.message, "`out`: expected 2 records, got 1:");
    // junit-parser 1.7 skips entity references in text (quick-xml hands them over as events of
    // their own), so the record's quotes are gone there: check its pieces, and the escaping in
    // the XML itself.
    let pieces: Vec<&str> = failure.text.lines().map(str::trim).collect();
    assert_eq!(pieces.first(), Some(&"`out`: expected 2 records, got 1:"));
    for piece in ["device", "d1", "level", "hot", ":97}"] {
        assert!(pieces.contains(&piece), "{piece} in {pieces:?}");
    }
    assert!(
        xml.contains("{&quot;device&quot;:&quot;d1&quot;,&quot;level&quot;:&quot;hot&quot;"),
        "{xml}"
    );

    let invalid = &report.suites[1];
    assert_eq!(invalid.name, INVALID);
    assert_eq!(invalid.errors, 1);
    let error = invalid.cases[0].status.error_as_ref();
    assert_eq!(error.message, "invalid test file");
    assert!(
        error
            .text
            .contains("invalid.test.yaml:7:13: error: the flow has no node `inn`"),
        "{}",
        error.text
    );
}
