//! `flow test PATH...`: run the unit tests of flows (see `flow_core::flowtest` and
//! docs/testing.md) and say, per test, whether it passed and, if not, what differs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use flow_core::flowtest::{self, Outcome, TestResult};
use flow_core::processor::Registry;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// How `flow test` reports.
#[derive(Clone, Copy, ValueEnum)]
pub enum TestFormat {
    /// Pass/fail per test and a readable diff of what differs.
    Pretty,
    /// JUnit XML on standard output, for CI systems (the pretty report goes nowhere).
    Junit,
}

/// Exit code when a test failed or a test file is invalid.
const FAILED: u8 = 1;

/// What one test file came to.
enum FileRun {
    Ran {
        path: PathBuf,
        results: Vec<TestResult>,
    },
    Invalid {
        path: PathBuf,
        short: String,
    },
}

/// Run every test under `paths`.
pub fn run(
    paths: &[PathBuf],
    format: TestFormat,
    filter: Option<&str>,
    timeout: Duration,
    registry: &Registry,
) -> anyhow::Result<ExitCode> {
    let files = flowtest::discover(paths)?;
    if files.is_empty() {
        anyhow::bail!(
            "no test files (*.test.yaml) in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let pretty = matches!(format, TestFormat::Pretty);
    let env = |k: &str| std::env::var(k).ok();
    let mut runs = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for path in files {
        match flowtest::load(&path, registry, &env) {
            Err(invalid) => {
                // Like `flow validate`: every finding, with the offending line.
                let mut short = String::new();
                for i in &invalid {
                    eprint!("{}", i.render());
                    short.push_str(&i.render_short());
                }
                if pretty {
                    writeln!(stdout, "{}: invalid, not run", path.display())?;
                }
                runs.push(FileRun::Invalid { path, short });
            }
            Ok(file) => {
                if pretty {
                    writeln!(
                        stdout,
                        "{} (flow {})",
                        file.path.display(),
                        file.flow_path.display()
                    )?;
                }
                let results = file.run(filter, timeout, |r| {
                    if pretty {
                        // A closed stdout (`| head`) must not stop the tests.
                        let _ = write!(stdout, "{}", flowtest::render_result(r));
                        let _ = stdout.flush();
                    }
                });
                runs.push(FileRun::Ran { path, results });
            }
        }
    }
    let (mut passed, mut failed, mut invalid) = (0, 0, 0);
    for r in &runs {
        match r {
            FileRun::Ran { results, .. } => {
                passed += results.iter().filter(|r| r.passed()).count();
                failed += results.iter().filter(|r| !r.passed()).count();
            }
            FileRun::Invalid { .. } => invalid += 1,
        }
    }
    match format {
        TestFormat::Pretty => {
            if invalid > 0 {
                writeln!(
                    stdout,
                    "\n{invalid} test file(s) could not be used: their errors are above"
                )?;
            }
            if passed + failed == 0 && filter.is_some() {
                writeln!(stdout, "no test matched the filter")?;
            }
            writeln!(stdout, "\n{passed} passed, {failed} failed")?;
        }
        TestFormat::Junit => writeln!(stdout, "{}", junit(&runs)?)?,
    }
    Ok(if failed > 0 || invalid > 0 {
        ExitCode::from(FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// One `<testsuite>` per test file, one `<testcase>` per test; an invalid test file is a suite
/// with one errored case carrying its findings.
fn junit(runs: &[FileRun]) -> anyhow::Result<String> {
    let mut report = Report::new("flow test");
    let mut total = Duration::ZERO;
    for run in runs {
        match run {
            FileRun::Ran { path, results } => {
                let mut suite = TestSuite::new(name(path));
                let mut time = Duration::ZERO;
                for r in results {
                    let status = match &r.outcome {
                        Outcome::Passed => TestCaseStatus::success(),
                        Outcome::Failed(problems) => {
                            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                            let first = problems
                                .first()
                                .and_then(|p| p.lines().next())
                                .unwrap_or("failed");
                            s.set_message(first);
                            s.set_type("flow test");
                            s.set_description(problems.join("\n"));
                            s
                        }
                    };
                    let mut case = TestCase::new(r.name.as_str(), status);
                    case.set_classname(name(path));
                    case.set_time(r.duration);
                    time += r.duration;
                    suite.add_test_case(case);
                }
                suite.set_time(time);
                total += time;
                report.add_test_suite(suite);
            }
            FileRun::Invalid { path, short } => {
                let mut suite = TestSuite::new(name(path));
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status.set_message("invalid test file");
                status.set_type("invalid test file");
                status.set_description(short.as_str());
                let mut case = TestCase::new(name(path), status);
                case.set_classname(name(path));
                suite.add_test_case(case);
                report.add_test_suite(suite);
            }
        }
    }
    report.set_time(total);
    Ok(report.to_string()?)
}

fn name(path: &Path) -> String {
    path.display().to_string()
}
