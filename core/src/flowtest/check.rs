//! Checking what came out against what a test expects, and saying what differs so that a
//! person can read it: a line diff of the records (one JSON record per line, `-` expected,
//! `+` actual) with, under each record that changed, the fields that differ.

use std::fmt::Write as _;

use serde_json::Value as J;
use similar::{Algorithm, DiffOp};

use super::file::Expectation;
use crate::record::{Attributes, Value};

/// A record that reached a checked port.
#[derive(Clone, Debug)]
pub(crate) struct Captured {
    /// Its structured view (the content as a string when it is not JSON).
    pub value: Value,
    /// The same, as canonical JSON (see [`canonical`]).
    pub json: J,
    /// Its attributes.
    pub attributes: Attributes,
}

/// Show at most this many offending records per problem.
const SHOW: usize = 10;

/// What is wrong with `got` for `e`; empty when it meets every expectation.
pub(crate) fn check(e: &Expectation, got: &[Captured]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(n) = e.count
        && n != got.len()
    {
        problems.push(count_problem(&e.at, n, got));
    }
    if let Some(expected) = &e.records {
        let expected: Vec<J> = expected.iter().map(canonical).collect();
        let actual: Vec<&J> = got.iter().map(|c| &c.json).collect();
        let problem = if e.ordered {
            ordered(&e.at, &expected, &actual)
        } else {
            unordered(&e.at, &expected, &actual)
        };
        problems.extend(problem);
    }
    if !e.conditions.is_empty() {
        problems.extend(conditions(e, got));
    }
    if !e.attributes.is_empty() {
        problems.extend(attributes(e, got));
    }
    problems
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "record" } else { "records" }
}

fn count_problem(at: &str, n: usize, got: &[Captured]) -> String {
    let mut s = if n == 0 {
        format!("`{at}`: expected no records, got {}:", got.len())
    } else if got.is_empty() {
        format!("`{at}`: expected {n} {}, got none", plural(n))
    } else {
        format!("`{at}`: expected {n} {}, got {}:", plural(n), got.len())
    };
    for c in got.iter().take(SHOW) {
        let _ = write!(s, "\n  {}", line(&c.json));
    }
    if got.len() > SHOW {
        let _ = write!(s, "\n  ... and {} more", got.len() - SHOW);
    }
    s
}

fn ordered(at: &str, expected: &[J], actual: &[&J]) -> Option<String> {
    if expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, a)| e == *a) {
        return None;
    }
    let old: Vec<String> = expected.iter().map(line).collect();
    let new: Vec<String> = actual.iter().map(|a| line(a)).collect();
    let mut s = format!(
        "`{at}`: the records differ (expected {}, got {}; - expected, + actual):",
        expected.len(),
        actual.len()
    );
    for op in similar::capture_diff_slices(Algorithm::Myers, &old, &new) {
        match op {
            DiffOp::Equal { old_index, len, .. } => {
                let lines = &old[old_index..old_index + len];
                if len > 4 {
                    let _ = write!(s, "\n    {}", lines[0]);
                    let _ = write!(s, "\n    ... {} equal records", len - 2);
                    let _ = write!(s, "\n    {}", lines[len - 1]);
                } else {
                    for l in lines {
                        let _ = write!(s, "\n    {l}");
                    }
                }
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => {
                for l in &old[old_index..old_index + old_len] {
                    let _ = write!(s, "\n  - {l}");
                }
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                for l in &new[new_index..new_index + new_len] {
                    let _ = write!(s, "\n  + {l}");
                }
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let pairs = old_len.min(new_len);
                for i in 0..pairs {
                    let _ = write!(s, "\n  - {}", old[old_index + i]);
                    let _ = write!(s, "\n  + {}", new[new_index + i]);
                    for d in field_diffs(&expected[old_index + i], actual[new_index + i]) {
                        let _ = write!(s, "\n      {d}");
                    }
                }
                for l in &old[old_index + pairs..old_index + old_len] {
                    let _ = write!(s, "\n  - {l}");
                }
                for l in &new[new_index + pairs..new_index + new_len] {
                    let _ = write!(s, "\n  + {l}");
                }
            }
        }
    }
    Some(s)
}

fn unordered(at: &str, expected: &[J], actual: &[&J]) -> Option<String> {
    let mut unmatched: Vec<Option<&J>> = actual.iter().map(|a| Some(*a)).collect();
    let mut missing = Vec::new();
    for e in expected {
        match unmatched.iter().position(|a| a.is_some_and(|a| a == e)) {
            Some(i) => unmatched[i] = None,
            None => missing.push(e),
        }
    }
    let mut extra: Vec<&J> = unmatched.into_iter().flatten().collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    let mut s = format!(
        "`{at}`: the records differ, in any order (expected {}, got {}; - missing, + unexpected):",
        expected.len(),
        actual.len()
    );
    for e in missing {
        let _ = write!(s, "\n  - {}", line(e));
        // The most alike unexpected record, to show the fields that differ.
        if let Some((i, _)) = extra
            .iter()
            .enumerate()
            .map(|(i, a)| (i, likeness(e, a)))
            .filter(|(_, l)| *l > 0)
            .max_by_key(|(_, l)| *l)
        {
            let a = extra.remove(i);
            let _ = write!(s, "\n  + {}", line(a));
            for d in field_diffs(e, a) {
                let _ = write!(s, "\n      {d}");
            }
        }
    }
    for a in extra {
        let _ = write!(s, "\n  + {}", line(a));
    }
    Some(s)
}

/// How many top-level fields two records share with equal values.
fn likeness(a: &J, b: &J) -> usize {
    match (a, b) {
        (J::Object(a), J::Object(b)) => a.iter().filter(|(k, v)| b.get(*k) == Some(v)).count(),
        _ => 0,
    }
}

fn conditions(e: &Expectation, got: &[Captured]) -> Vec<String> {
    if got.is_empty() {
        return vec![format!(
            "`{}`: expected records that meet the conditions, got none",
            e.at
        )];
    }
    let mut failing = Vec::new();
    for (i, c) in got.iter().enumerate() {
        for cond in &e.conditions {
            let why = match cond.test(&c.value, &c.attributes) {
                Ok(true) => continue,
                Ok(false) => format!("does not meet `{}`", cond.source()),
                Err(err) => format!("`{}` failed: {err}", cond.source()),
            };
            failing.push(format!(
                "record {} of {} {why}:\n    {}",
                i + 1,
                got.len(),
                line(&c.json)
            ));
            break;
        }
    }
    if failing.is_empty() {
        return Vec::new();
    }
    let mut s = format!(
        "`{}`: {} of {} {} {} not meet the conditions:",
        e.at,
        failing.len(),
        got.len(),
        plural(got.len()),
        if failing.len() == 1 { "does" } else { "do" }
    );
    for f in failing.iter().take(SHOW) {
        let _ = write!(s, "\n  {f}");
    }
    if failing.len() > SHOW {
        let _ = write!(s, "\n  ... and {} more", failing.len() - SHOW);
    }
    vec![s]
}

fn attributes(e: &Expectation, got: &[Captured]) -> Vec<String> {
    if got.is_empty() {
        return vec![format!(
            "`{}`: expected records with the attributes, got none",
            e.at
        )];
    }
    let mut failing = Vec::new();
    for (i, c) in got.iter().enumerate() {
        for (k, want) in &e.attributes {
            let found = match c.attributes.get(k) {
                Some(v) if v == want => continue,
                Some(v) => format!("{v:?}"),
                None => "none".to_owned(),
            };
            failing.push(format!(
                "record {} of {}: attribute `{k}`: expected {want:?}, got {found}",
                i + 1,
                got.len()
            ));
        }
    }
    if failing.is_empty() {
        return Vec::new();
    }
    let mut s = format!("`{}`: attributes differ:", e.at);
    for f in failing.iter().take(SHOW) {
        let _ = write!(s, "\n  {f}");
    }
    if failing.len() > SHOW {
        let _ = write!(s, "\n  ... and {} more", failing.len() - SHOW);
    }
    vec![s]
}

/// One record on one line: compact JSON, keys sorted.
fn line(v: &J) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The form records are compared in: object keys sorted, and a float with an integer value
/// (`97.0`, an average) equal to that integer (`97`, as a test writes it).
pub(crate) fn canonical(v: &J) -> J {
    match v {
        J::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 =>
            {
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "an integral float under 2^53 is exactly that integer"
                )]
                J::from(f as i64)
            }
            _ => v.clone(),
        },
        J::Array(a) => J::Array(a.iter().map(canonical).collect()),
        J::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            J::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .collect(),
            )
        }
        _ => v.clone(),
    }
}

/// `.a.b[2]`: a path as VRL writes it.
fn push_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}.{key:?}")
    }
}

/// The fields in which `actual` differs from `expected`, one line each.
pub(crate) fn field_diffs(expected: &J, actual: &J) -> Vec<String> {
    let mut out = Vec::new();
    diff_into("", expected, actual, &mut out);
    out
}

fn diff_into(path: &str, e: &J, a: &J, out: &mut Vec<String>) {
    match (e, a) {
        (J::Object(em), J::Object(am)) => {
            let mut keys: Vec<&String> = em.keys().chain(am.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = push_key(path, k);
                match (em.get(k), am.get(k)) {
                    (Some(ev), Some(av)) => diff_into(&p, ev, av, out),
                    (Some(ev), None) => out.push(format!("{p}: missing (expected {})", line(ev))),
                    (None, Some(av)) => out.push(format!("{p}: not expected (got {})", line(av))),
                    (None, None) => {}
                }
            }
        }
        (J::Array(ea), J::Array(aa)) if ea.len() == aa.len() => {
            for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                diff_into(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        _ if e != a => {
            let p = if path.is_empty() { "." } else { path };
            out.push(format!("{p}: expected {}, got {}", line(e), line(a)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_equal_integers_and_keys_are_sorted() {
        assert_eq!(
            canonical(&json!({"b": 97.0, "a": [1.5, 2.0]})),
            json!({"a": [1.5, 2], "b": 97})
        );
        assert_eq!(
            line(&canonical(&json!({"b": 1, "a": 2}))),
            r#"{"a":2,"b":1}"#
        );
    }

    #[test]
    fn field_diffs_name_the_fields_that_differ() {
        let e = json!({"device": "d1", "t": 97, "tags": ["a", "b"], "gone": 1, "n": {"x": 1}});
        let a = json!({"device": "d1", "t": 96.5, "tags": ["a", "c"], "new": true, "n": {"x": 2}, "odd key": 1});
        assert_eq!(
            field_diffs(&e, &a),
            vec![
                ".gone: missing (expected 1)",
                ".n.x: expected 1, got 2",
                ".new: not expected (got true)",
                ".\"odd key\": not expected (got 1)",
                ".t: expected 97, got 96.5",
                r#".tags[1]: expected "b", got "c""#,
            ]
        );
        assert_eq!(
            field_diffs(&json!(1), &json!("1")),
            vec![r#".: expected 1, got "1""#]
        );
    }
}
