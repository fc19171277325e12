//! `flow test` itself (flow_core::flowtest): a passing and a failing test of each kind of
//! expectation, with the failing output pinned by a snapshot; windows driven by the virtual
//! clock; test-file mistakes reported with their positions; and the tests of every example
//! flow passing.

use std::path::{Path, PathBuf};

use flow_core::flowtest::{self, DEFAULT_TIMEOUT, Invalid, Outcome, TestResult};
use flow_tests::{example_flows, repo};

/// Fixtures relative to this crate's folder (where cargo runs its tests), so that the paths
/// in the output are the same everywhere.
fn fixture(name: &str) -> PathBuf {
    Path::new("fixtures/flowtest").join(name)
}

/// Nothing from the process environment: the tests are hermetic.
fn no_env(_: &str) -> Option<String> {
    None
}

fn load(path: &Path) -> Result<flowtest::TestFile, Vec<Invalid>> {
    flowtest::load(path, &flow_processors::builtin(), &no_env)
}

fn run(path: &Path, filter: Option<&str>) -> Vec<TestResult> {
    let file = load(path).unwrap_or_else(|invalid| {
        panic!(
            "{}",
            invalid.iter().map(Invalid::render).collect::<String>()
        )
    });
    file.run(filter, DEFAULT_TIMEOUT, |_| {})
}

const KINDS: &[&str] = &[
    "exact records, in order",
    "exact records, in any order",
    "conditions",
    "count",
    "no output",
    "attributes",
    "processing-time windows follow the virtual clock",
];

#[test]
fn each_kind_of_expectation_passes_and_fails_as_it_should() {
    let results = run(&fixture("readings.test.yaml"), None);
    for kind in KINDS {
        for verdict in ["passes", "fails"] {
            let name = format!("{verdict}: {kind}");
            assert!(
                results.iter().any(|r| r.name == name),
                "no test `{name}` in the fixture"
            );
        }
    }
    let mut failing = String::new();
    for r in &results {
        let should_pass = r.name.starts_with("passes:");
        assert!(should_pass || r.name.starts_with("fails:"), "{}", r.name);
        assert_eq!(r.passed(), should_pass, "{}", flowtest::render_result(r));
        if !should_pass {
            failing.push_str(&flowtest::render_result(r));
        }
    }
    insta::assert_snapshot!("failing_tests", failing);
}

/// The virtual clock: processing-time windows fire when the test advances the clock past
/// their end (not a millisecond before), and an idle timeout closes a quiet window after
/// exactly its duration; nothing waits in real time.
#[test]
fn windows_follow_the_virtual_clock() {
    let started = std::time::Instant::now();
    let results = run(&fixture("readings.test.yaml"), Some("clock"));
    let idle = run(&fixture("readings.test.yaml"), Some("idle timeout"));
    assert_eq!(results.len(), 2);
    assert_eq!(idle.len(), 1);
    let pass = results
        .iter()
        .chain(&idle)
        .filter(|r| r.name.starts_with("passes:"));
    for r in pass {
        assert!(r.passed(), "{}", flowtest::render_result(r));
    }
    let fail = results
        .iter()
        .find(|r| r.name.starts_with("fails:"))
        .expect("the failing one");
    let Outcome::Failed(problems) = &fail.outcome else {
        panic!("it passed")
    };
    assert_eq!(
        problems[0], "at step 3 (`expect`): `windows`: expected 1 record, got none",
        "9999 ms into a 10 s window, it is still open"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "40 s of virtual time, and no real wait"
    );
}

#[test]
fn each_test_has_its_own_environment() {
    let results = run(&fixture("threshold.test.yaml"), None);
    assert_eq!(results.len(), 2);
    for r in &results {
        assert!(r.passed(), "{}", flowtest::render_result(r));
    }
}

/// Records injected at different nodes, step after step, reach a node they all feed in the
/// order of the steps: each step settles before the next.
#[test]
fn steps_at_different_nodes_keep_their_order() {
    for _ in 0..10 {
        let results = run(&fixture("merge.test.yaml"), None);
        assert!(
            results[0].passed(),
            "{}",
            flowtest::render_result(&results[0])
        );
    }
}

fn rendered(invalid: &[Invalid]) -> String {
    let mut s = String::new();
    for i in invalid {
        s.push_str(&i.render_short());
    }
    s.push('\n');
    for i in invalid {
        s.push_str(&i.render());
    }
    s
}

#[test]
fn test_file_mistakes_are_reported_with_their_positions() {
    let invalid = load(&fixture("invalid.test.yaml")).expect_err("invalid");
    let text = rendered(&invalid);
    assert!(
        text.contains("fixtures/flowtest/invalid.test.yaml:7:13: error: the flow has no node `inn` (did you mean `in`?)"),
        "{text}"
    );
    insta::assert_snapshot!("invalid_test_file", text);
}

#[test]
fn the_flows_own_errors_say_which_test_showed_them() {
    let invalid = load(&fixture("threshold-unset.test.yaml")).expect_err("invalid");
    assert_eq!(invalid.len(), 1, "the flow file only");
    assert!(invalid[0].path.ends_with("threshold.yaml"));
    insta::assert_snapshot!("flow_errors_in_a_test", rendered(&invalid));
}

#[test]
fn a_test_file_without_a_flow_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("lonely.test.yaml");
    std::fs::write(
        &path,
        "tests:\n  - name: t\n    outputs: [{ at: out, count: 0 }]\n",
    )
    .expect("write");
    let invalid = load(&path).expect_err("no lonely.yaml");
    let text = invalid[0].render_short();
    assert!(
        text.contains("lonely.test.yaml:1:1: error: cannot read the flow"),
        "{text}"
    );
    assert!(text.contains("lonely.yaml"), "{text}");
}

/// Every example flow has a `NAME.test.yaml` beside it, and its tests pass (what `flow test
/// flows/` runs in scripts/test.sh).
#[test]
fn every_example_flow_has_tests_that_pass() {
    let flows = example_flows();
    let tests = flowtest::discover(&[repo().join("flows")]).expect("discover");
    for f in &flows {
        let beside = f.with_extension("test.yaml");
        assert!(
            tests.contains(&beside),
            "{} has no tests ({} is missing)",
            f.display(),
            beside.display()
        );
    }
    assert_eq!(tests.len(), flows.len());
    let mut ran = 0;
    let mut skipped = 0;
    for t in tests {
        // Plugin flows name their modules relative to the repository root, where
        // scripts/test.sh runs `flow test flows/` after building the plugins.
        let plugin = t
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("plugin-"));
        if plugin {
            skipped += 1;
            continue;
        }
        for r in run(&t, None) {
            assert!(
                r.passed(),
                "{}: {}",
                t.display(),
                flowtest::render_result(&r)
            );
            ran += 1;
        }
    }
    assert!(
        ran >= 2 * (flows.len() - skipped),
        "{ran} tests for {} flows",
        flows.len()
    );
}

/// The README's example is a working test of flows/mqtt-to-kafka.yaml.
#[test]
fn the_readme_example_passes() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = readme
        .find("```yaml\n# flows/mqtt-to-kafka.test.yaml\n")
        .expect("the example in the README");
    let body = &readme[start + "```yaml\n".len()..];
    let body = &body[..body.find("```").expect("its end")];
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("readme.test.yaml");
    let flow = repo().join("flows/mqtt-to-kafka.yaml");
    std::fs::write(&path, format!("flow: {}\n{body}", flow.display())).expect("write");
    let results = run(&path, None);
    assert_eq!(results.len(), 1);
    assert!(
        results[0].passed(),
        "{}",
        flowtest::render_result(&results[0])
    );
}
