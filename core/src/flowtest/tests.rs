//! The harness with small in-file processors: what the built-in ones cannot show (a processor
//! that loses records, one that cannot be built, a sink that would need a server).

use serde::Deserialize;

use super::*;
use crate::processor::{
    BuildContext, BuildError, Describe, Kind, Output, PortId, Processor, ProcessorConfig,
    ProcessorDef, Registry, Transform,
};
use crate::record::Record;

/// A source that cannot run here (it would need a server): the test replaces it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ServerSourceConfig {}

impl ProcessorConfig for ServerSourceConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Err(BuildError("no server here".into()))
    }
}

impl Describe for ServerSourceConfig {
    const TYPE: &'static str = "server_source";
    const KIND: Kind = Kind::Source;
}

/// A sink that cannot run here either.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ServerSinkConfig {}

impl ProcessorConfig for ServerSinkConfig {
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Err(BuildError("no server here".into()))
    }
}

impl Describe for ServerSinkConfig {
    const TYPE: &'static str = "server_sink";
    const KIND: Kind = Kind::Sink;
}

/// A transform that passes records on, or (`lose: true`) loses them without finishing them,
/// or (`broken: true`) cannot be built.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct StepConfig {
    #[serde(default)]
    lose: bool,
    #[serde(default)]
    broken: bool,
}

struct Step {
    lose: bool,
}

impl Transform for Step {
    fn process(&mut self, record: Record, out: &mut Output) {
        if self.lose {
            // A bug: neither pushed nor dropped on purpose.
            drop(record);
        } else {
            out.push(PortId::DEFAULT, record);
        }
    }
}

impl ProcessorConfig for StepConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        if self.broken {
            return Err(BuildError("broken on purpose".into()));
        }
        Ok(Processor::Transform(Box::new(Step { lose: self.lose })))
    }
}

impl Describe for StepConfig {
    const TYPE: &'static str = "step";
    const KIND: Kind = Kind::Transform;
}

fn registry() -> Registry {
    Registry::new(vec![
        ProcessorDef::of::<ServerSourceConfig>(),
        ProcessorDef::of::<ServerSinkConfig>(),
        ProcessorDef::of::<StepConfig>(),
    ])
}

/// Write a flow whose `step` has `step_config`, and a test file with `test`; run it.
fn run(step_config: &str, test: &str) -> Vec<TestResult> {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("f.yaml"),
        format!(
            "processors:\n  in: {{ type: server_source }}\n  step: {{ type: step{step_config} }}\n  \
             out: {{ type: server_sink }}\nconnections:\n  - in -> step\n  - step -> out\n"
        ),
    )
    .expect("flow");
    let path = dir.path().join("f.test.yaml");
    std::fs::write(&path, format!("tests:\n{test}")).expect("test file");
    let file = load(&path, &registry(), &|_| None).unwrap_or_else(|invalid| {
        panic!(
            "{}",
            invalid.iter().map(Invalid::render).collect::<String>()
        )
    });
    file.run(None, DEFAULT_TIMEOUT, |_| {})
}

const THROUGH: &str = "  - name: through
    inputs:
      - { at: in, records: [{ n: 1 }, { n: 2 }] }
    outputs:
      - { at: out, records: [{ n: 1 }, { n: 2 }] }
";

#[test]
fn sources_and_sinks_that_need_servers_are_replaced() {
    let results = run("", THROUGH);
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0].outcome,
        Outcome::Passed,
        "{}",
        render_result(&results[0])
    );
}

/// A test fails when records are abandoned, even if every expectation holds: a real source
/// would never commit them.
#[test]
fn records_a_processor_loses_fail_the_test() {
    let test = "  - name: lost
    inputs:
      - { at: in, records: [{ n: 1 }] }
      - { at: step, records: [{ n: 2 }] }
    outputs:
      - { at: out, count: 0 }
";
    let results = run(", lose: true", test);
    let Outcome::Failed(problems) = &results[0].outcome else {
        panic!("passed")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("1 batch(es) injected at `in` were abandoned"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("1 batch(es) injected at `step` were abandoned"),
        "{problems:?}"
    );
}

#[test]
fn a_transform_that_cannot_be_built_fails_the_test_with_why() {
    let results = run(", broken: true", THROUGH);
    assert_eq!(
        results[0].outcome,
        Outcome::Failed(vec![
            "the flow does not start: processor `step`: broken on purpose".into()
        ])
    );
}

#[test]
fn discover_finds_test_files_beside_flows_and_in_folders() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("sub/.hidden")).expect("dirs");
    for f in [
        "a.yaml",
        "a.test.yaml",
        "sub/b.test.yml",
        "sub/.hidden/c.test.yaml",
        "lone.yaml",
    ] {
        std::fs::write(d.join(f), "").expect("file");
    }
    let found = discover(&[d.to_owned(), d.join("a.yaml")]).expect("found");
    assert_eq!(found, vec![d.join("a.test.yaml"), d.join("sub/b.test.yml")]);
    assert!(matches!(
        discover(&[d.join("lone.yaml")]),
        Err(DiscoverError::NoTests(..))
    ));
    assert!(matches!(
        discover(&[d.join("nope")]),
        Err(DiscoverError::Missing(_))
    ));
}
