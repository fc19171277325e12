//! `flow test`: unit tests for flows, with records injected at a node, expectations on ports
//! and a virtual clock; no servers needed. `docs/testing.md` documents the format for users.
//!
//! ```yaml
//! # flows/sensors.test.yaml tests flows/sensors.yaml (or say `flow: other.yaml`)
//! env: { INPUT: unused, OUT_DIR: "${FLOW_TEST_DIR}" }
//! tests:
//!   - name: hot engines are alerted, errors dropped
//!     clock: { start: 2024-05-01T00:00:00Z }   # where processing time starts
//!     inputs:
//!       - at: events                            # a source (replaced) or a transform
//!         attributes: { mqtt.topic: sensors/d1 }
//!         records:
//!           - { device: d1, ts: 1000, temperature: 97, status: ok }
//!       - advance: 30s                          # the clock: timers fire on the way
//!       - expect:                               # what came out so far
//!           - { at: per_device, count: 0 }
//!     outputs:                                  # once the input ended and the flow drained
//!       - at: alerts                            # a sink: what reaches it
//!         records: [{ device: d1, ts: 1000, temperature: 97, status: ok }]
//!       - at: valid.unmatched
//!         count: 0
//!       - at: per_device
//!         conditions: ['.count > 0']
//! ```
//!
//! How it runs, and why this way, is in the docs of `flowtest/harness.rs`: the real runtime
//! and the real transforms, with sources and sinks swapped for test doubles, on a paused tokio
//! runtime whose clock (and so the flow's [`crate::clock::Clock`]) moves only when the test
//! says.

mod check;
mod file;
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use file::{DEFAULT_CLOCK_START, Invalid, TEST_DIR_VAR, TestCase, TestFile, load};
pub use harness::Outcome;

/// How long one test may take in real time before it is reported as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One test's result.
#[derive(Clone, Debug)]
pub struct TestResult {
    /// The test's name.
    pub name: String,
    /// Line of its name in the test file.
    pub line: usize,
    /// How it went.
    pub outcome: Outcome,
    /// Real time it took.
    pub duration: Duration,
}

impl TestResult {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

impl TestFile {
    /// Run the tests whose name contains `filter` (all without one), one after the other,
    /// calling `done` with each result as it comes.
    pub fn run(
        self,
        filter: Option<&str>,
        timeout: Duration,
        mut done: impl FnMut(&TestResult),
    ) -> Vec<TestResult> {
        let mut results = Vec::new();
        for case in self.tests {
            if filter.is_some_and(|f| !case.name.contains(f)) {
                continue;
            }
            let name = case.name.clone();
            let line = case.line;
            let started = Instant::now();
            let outcome = harness::run(case, timeout);
            let result = TestResult {
                name,
                line,
                outcome,
                duration: started.elapsed(),
            };
            done(&result);
            results.push(result);
        }
        results
    }

    /// The names of its tests, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.tests.iter().map(|t| t.name.as_str()).collect()
    }
}

/// Finding test files failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A path that is not there.
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    /// A flow file without a test file beside it.
    #[error("{0}: no tests for this flow (expected {1} beside it)")]
    NoTests(PathBuf, PathBuf),
    /// A folder that could not be listed.
    #[error("cannot list {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Whether `path` is named like a test file (`*.test.yaml`, `*.test.yml`).
pub fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
}

/// The test files that `paths` name: a test file itself; the test file beside a flow file
/// (`NAME.yaml` → `NAME.test.yaml`); every test file under a folder, recursively (hidden
/// folders and `target` skipped). Sorted within each folder, without duplicates.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DiscoverError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if !p.exists() {
            return Err(DiscoverError::Missing(p.clone()));
        } else if is_test_file(p) {
            out.push(p.clone());
        } else {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
            let ext = p.extension().map(|s| s.to_string_lossy().into_owned());
            let beside = p.with_file_name(format!(
                "{}.test.{}",
                stem.unwrap_or_default(),
                ext.unwrap_or_else(|| "yaml".into())
            ));
            if !beside.is_file() {
                return Err(DiscoverError::NoTests(p.clone(), beside));
            }
            out.push(beside);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DiscoverError> {
    let io = |e| DiscoverError::Io(dir.to_owned(), e);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            if !name.starts_with('.') && name != "target" {
                walk(&p, out)?;
            }
        } else if is_test_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// A result as `flow test` prints it: `ok    name`, or `FAIL  name` and what differs.
pub fn render_result(r: &TestResult) -> String {
    match &r.outcome {
        Outcome::Passed => format!("  ok    {}\n", r.name),
        Outcome::Failed(problems) => {
            let mut s = format!("  FAIL  {}\n", r.name);
            for p in problems {
                for (i, line) in p.lines().enumerate() {
                    let indent = if i == 0 { "        " } else { "          " };
                    s.push_str(indent);
                    s.push_str(line);
                    s.push('\n');
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests;
