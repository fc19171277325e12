//! A config that does not deserialize, explained: which value, what was expected (an integer,
//! a duration like `10s`, a size like `64MiB`, one of an enum's values) and what was found.
//!
//! serde's messages are written for programs (`invalid digit found in string`, `invalid value:
//! string "10 parsecs", expected a duration`), and the scalar deserializer of marked-yaml knows
//! nothing of the value it failed on. With marked-yaml's `serde-path` feature every error
//! carries the path to its value; this module finds that value in the YAML and words the
//! error for a person.

use marked_yaml::{FromNodeError, Marker, Node};

use super::did_you_mean;

/// One step of the path to a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A mapping's key.
    Key(String),
    /// A list's index.
    Index(usize),
}

/// What went wrong, as far as the loader's recovery is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// A key the config does not have.
    UnknownKey(String),
    /// A required key is absent.
    MissingKey(String),
    /// A value of the wrong type or out of range.
    Value,
}

/// A deserialization error, located and explained.
#[derive(Debug)]
pub(crate) struct ValueError {
    /// From the config's root to the offending value (to the unknown key itself).
    pub path: Vec<Segment>,
    pub problem: Problem,
    /// "expected a duration like `10s`, `5m` or `1h 30m`, found `10 parsecs`".
    pub message: String,
    pub help: Option<String>,
    /// Where the value (or the unknown key) is, when known.
    pub marker: Option<Marker>,
}

impl ValueError {
    /// The path as written in messages: `window.hopping.size`, `columns[0]`.
    pub(crate) fn dotted(&self) -> String {
        dotted(&self.path)
    }
}

/// The keys of `path` down to its first index (a list's key for an item of it).
pub(crate) fn keys(path: &[Segment]) -> Vec<String> {
    path.iter()
        .map_while(|s| match s {
            Segment::Key(k) => Some(k.clone()),
            Segment::Index(_) => None,
        })
        .collect()
}

/// `a.b[0].c`
pub(crate) fn dotted(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Explain `e`, an error from deserializing `root`.
pub(crate) fn explain(e: &FromNodeError, root: &Node) -> ValueError {
    use marked_yaml::Error as E;
    let path = e.path().map(parse_path).unwrap_or_default();
    let node = find(root, &path);
    let found = node.map_or_else(|| "nothing".to_owned(), describe);
    let text = node
        .and_then(Node::as_scalar)
        .map(|s| s.as_str().to_owned());
    let mut help = None;
    let (problem, message) = match &**e {
        E::UnknownFieldError(field, expected, _) => {
            help = did_you_mean(field, expected.iter().copied()).or_else(|| {
                (!expected.is_empty()).then(|| format!("expected one of: {}", expected.join(", ")))
            });
            (
                Problem::UnknownKey(field.clone()),
                format!("unknown key `{field}`"),
            )
        }
        E::IntegerParseFailure(err, _) => {
            use std::num::IntErrorKind as K;
            let t = text.as_deref().unwrap_or_default();
            let message = match err.kind() {
                K::PosOverflow => format!("`{t}` is too large"),
                K::NegOverflow => format!("`{t}` is too small"),
                _ if t.starts_with('-') && t[1..].parse::<u64>().is_ok() => {
                    format!("expected an integer of 0 or more, found {found}")
                }
                _ => format!("expected an integer, found {found}"),
            };
            (Problem::Value, message)
        }
        E::FloatParseFailure(..) => (Problem::Value, format!("expected a number, found {found}")),
        E::NotBoolean(_) => (
            Problem::Value,
            format!("expected `true` or `false`, found {found}"),
        ),
        E::Other(msg, _) => {
            if let Some(field) = msg
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                (
                    Problem::MissingKey(field.to_owned()),
                    format!("missing key `{field}`"),
                )
            } else if let Some((variant, expected)) = unknown_variant(msg) {
                let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
                help = did_you_mean(variant, names.iter().copied());
                (
                    Problem::Value,
                    format!("expected {expected}, found `{variant}`"),
                )
            } else if let Some(expected) = msg
                .strip_prefix("invalid value: ")
                .or_else(|| msg.strip_prefix("invalid type: "))
                .and_then(|r| r.rsplit_once(", expected ").map(|(_, x)| x))
            {
                let (expected, detail) = expectation(expected, text.as_deref());
                help = detail;
                (
                    Problem::Value,
                    format!("expected {expected}, found {found}"),
                )
            } else {
                (Problem::Value, msg.clone())
            }
        }
    };
    ValueError {
        path,
        problem,
        message,
        help,
        marker: e.start_mark(),
    }
}

/// `unknown variant `x`, expected ...` as (`x`, `...`).
/// The values an enum takes, when `e` says a value is none of them.
pub(crate) fn variants(e: &FromNodeError) -> Vec<String> {
    match &**e {
        marked_yaml::Error::Other(msg, _) => unknown_variant(msg)
            .map(|(_, expected)| {
                expected
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn unknown_variant(msg: &str) -> Option<(&str, &str)> {
    let rest = msg.strip_prefix("unknown variant `")?;
    let (variant, rest) = rest.split_once('`')?;
    let expected = rest.strip_prefix(", expected ")?;
    Some((variant, expected))
}

/// serde's name for what a type expects, as a flow author reads it, and why the text is not
/// that (for the types with their own syntax).
fn expectation(expected: &str, text: Option<&str>) -> (String, Option<String>) {
    match expected {
        // humantime-serde
        "a duration" => (
            "a duration like `10s`, `5m` or `1h 30m`".into(),
            text.and_then(|t| humantime::parse_duration(t).err())
                .map(|e| e.to_string()),
        ),
        // bytesize
        "parsable string" | "an integer or string" => {
            ("a size like `64MiB`, `512KiB` or `1GB`".into(), None)
        }
        "a boolean" => ("`true` or `false`".into(), None),
        "a sequence" => ("a list".into(), None),
        "a map" => ("a mapping".into(), None),
        "f32" | "f64" => ("a number".into(), None),
        x if x.starts_with("struct ") => ("a mapping".into(), None),
        x if x.len() > 1
            && (x.starts_with('u') || x.starts_with('i'))
            && (x[1..].parse::<u8>().is_ok() || &x[1..] == "size") =>
        {
            ("an integer".into(), None)
        }
        other => (other.to_owned(), None),
    }
}

/// What a node is, for "found ...".
fn describe(node: &Node) -> String {
    match node {
        Node::Scalar(s) if s.as_str().is_empty() => "nothing".into(),
        Node::Scalar(s) => {
            let t = s.as_str();
            match t.char_indices().nth(40) {
                Some((cut, _)) => format!("`{}...`", &t[..cut]),
                None => format!("`{t}`"),
            }
        }
        Node::Mapping(_) => "a mapping".into(),
        Node::Sequence(_) => "a list".into(),
    }
}

/// `a.b[0].c` (marked-yaml's rendering of serde_path_to_error's path) as segments.
fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_owned()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some((index, after)) = r.split_once(']') else {
                break;
            };
            match index.parse() {
                Ok(i) => out.push(Segment::Index(i)),
                Err(_) => break,
            }
            rest = after;
        }
    }
    out
}

/// The node at `path` under `root`, or the deepest one reached.
pub(crate) fn find<'n>(root: &'n Node, path: &[Segment]) -> Option<&'n Node> {
    let mut node = root;
    for seg in path {
        let next = match (seg, node) {
            (Segment::Key(k), Node::Mapping(m)) => m.get_node(k),
            (Segment::Index(i), Node::Sequence(s)) => s.get(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return None,
        }
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytesize::ByteSize;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Config {
        #[serde(default)]
        batch_size: Option<usize>,
        #[serde(default, with = "humantime_serde")]
        max_age: Option<std::time::Duration>,
        #[serde(default)]
        max_bytes: Option<ByteSize>,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        nested: Option<Nested>,
        #[serde(default)]
        list: Vec<u8>,
        #[serde(default)]
        flag: bool,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Block,
        DropNewest,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Nested {
        size: u32,
    }

    fn explained(yaml: &str) -> ValueError {
        let node = marked_yaml::parse_yaml(0, yaml).expect("yaml");
        let e = marked_yaml::from_node::<Config>(&node).expect_err("invalid");
        explain(&e, &node)
    }

    #[test]
    fn says_what_was_expected_and_what_was_found_where() {
        let e = explained("batch_size: \"lots\"\n");
        assert_eq!(e.message, "expected an integer, found `lots`");
        assert_eq!(e.path, [Segment::Key("batch_size".into())]);
        assert_eq!(e.marker.map(|m| m.column()), Some(13));

        let e = explained("flag: true\nmax_age: 10 parsecs\n");
        assert_eq!(
            e.message,
            "expected a duration like `10s`, `5m` or `1h 30m`, found `10 parsecs`"
        );
        assert!(e.help.expect("help").contains("parsecs"));
        assert_eq!(e.marker.map(|m| (m.line(), m.column())), Some((2, 10)));

        let e = explained("max_bytes: 12 quarks\n");
        assert_eq!(
            e.message,
            "expected a size like `64MiB`, `512KiB` or `1GB`, found `12 quarks`"
        );

        let e = explained("mode: drop_newst\n");
        assert_eq!(
            e.message,
            "expected `block` or `drop_newest`, found `drop_newst`"
        );
        assert_eq!(e.help.as_deref(), Some("did you mean `drop_newest`?"));
        assert_eq!(e.marker.map(|m| m.column()), Some(7));

        assert_eq!(
            explained("batch_size: -3\n").message,
            "expected an integer of 0 or more, found `-3`"
        );
        assert_eq!(explained("list: [1, 300]\n").message, "`300` is too large");
        assert_eq!(
            explained("flag: maybe\n").message,
            "expected `true` or `false`, found `maybe`"
        );
    }

    #[test]
    fn nested_paths_unknown_and_missing_keys() {
        let e = explained("nested: { size: x }\n");
        assert_eq!(e.dotted(), "nested.size");
        assert_eq!(e.marker.map(|m| m.column()), Some(17));

        let e = explained("nested: { sise: 1 }\n");
        assert_eq!(e.problem, Problem::UnknownKey("sise".into()));
        assert_eq!(e.help.as_deref(), Some("did you mean `size`?"));

        let e = explained("nested: {}\n");
        assert_eq!(e.problem, Problem::MissingKey("size".into()));
        assert_eq!(e.dotted(), "nested");

        let e = explained("list: [1, x]\n");
        assert_eq!(e.dotted(), "list[1]");
    }
}
