//! Helpers for the end-to-end tests: find the repository, load and run a flow file in-process
//! with a given environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flow_core::runtime::{CancellationToken, RunReport};
use flow_core::spec::{self, Loaded};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every example flow in `flows/`, sorted (their tests, `*.test.yaml`, are not flows).
pub fn example_flows() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("flows"))
        .expect("flows/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !flow_core::flowtest::is_test_file(p))
        .collect();
    files.sort();
    files
}

/// Load a flow file with exactly these environment variables (nothing from the process).
pub fn load(path: &Path, env: &HashMap<String, String>) -> (String, Loaded) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let loaded = spec::load(&text, &|k| env.get(k).cloned(), &flow_processors::builtin());
    (text, loaded)
}

/// Run a flow file to completion with these environment variables.
pub async fn run(path: &Path, env: &[(&str, &str)]) -> RunReport {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (text, loaded) = load(path, &env);
    let Some(flow) = loaded.flow else {
        panic!(
            "{} is invalid:\n{}",
            path.display(),
            spec::render(&path.display().to_string(), &text, &loaded.diagnostics)
        );
    };
    let running = flow_core::runtime::start(&flow, CancellationToken::new())
        .unwrap_or_else(|e| panic!("{} does not start: {e}", path.display()));
    let report = running.wait().await;
    assert!(
        report.errors.is_empty(),
        "{}: {:?}",
        path.display(),
        report.errors
    );
    report
}

/// The counters of node `name` in a report.
pub fn node<'a>(
    report: &'a RunReport,
    name: &str,
) -> &'a flow_core::runtime::metrics::NodeSnapshot {
    &report
        .nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node `{name}` in the report"))
        .counters
}
