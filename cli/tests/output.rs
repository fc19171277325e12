//! What the `flow` binary prints, when the reader of its output goes away, and when
//! `flow validate` is given files that cannot be read.

use std::process::{Output, Stdio};

use crate::common::{flow, repo, text};

/// Run `flow args` with a stdout whose reader is already gone, as after `flow schema | head`
/// once `head` has exited: every write gets EPIPE, deterministically.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    flow()
        .args(args)
        .env("OUT_DIR", "out")
        .stdin(Stdio::null())
        .stdout(writer)
        .output()
        .expect("flow runs")
}

/// Every command that prints to stdout stops quietly, with exit code 0, when its reader is
/// gone: no panic (exit 101), no message.
#[test]
fn commands_that_print_end_quietly_when_stdout_is_closed() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "processors:\n  a: { type: generate, cuont: 3 }\n").expect("write");
    let bad = bad.to_str().expect("utf-8 path");
    let docs = dir.path().join("docs");
    let docs = docs.to_str().expect("utf-8 path");
    for args in [
        &["processors"][..],
        &["schema"],
        &["graph", "flows/demo.yaml"],
        &["graph", "--format", "mermaid", "flows/demo.yaml"],
        &["docs", docs],
        &["test", "flows/demo.test.yaml"],
    ] {
        let out = with_closed_stdout(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "flow {args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "flow {args:?}");
    }
    // `validate` still says whether the files are valid: the findings it could not print
    // make no panic, and the exit code stays 1 for an invalid file, 0 for valid ones.
    let out = with_closed_stdout(&["validate", "--format", "json", bad, "flows/demo.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let out = with_closed_stdout(&["validate", "--format", "json", "flows/demo.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn validate_checks_every_file_even_after_one_that_cannot_be_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "processors:\n  a: { type: generate, cuont: 3 }\n").expect("write");
    let missing = dir.path().join("missing.yaml");
    let good = repo().join("flows/demo.yaml");

    let out = flow()
        .arg("validate")
        .args([&missing, &bad, &good])
        .output()
        .expect("flow runs");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: error: cannot read: No such file or directory",
            missing.display()
        )),
        "{err}"
    );
    assert!(err.contains("unknown key `cuont`"), "{err}");
    assert!(err.contains("flows/demo.yaml: ok"), "{err}");

    // The same in JSON: one object per finding, the unreadable file included.
    let out = flow()
        .args(["validate", "--format", "json"])
        .args([&missing, &good])
        .output()
        .expect("flow runs");
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["file"], missing.display().to_string());
    assert_eq!(lines[0]["severity"], "error");
    assert!(
        lines[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cannot read: ")),
        "{lines:?}"
    );
}
