//! Every duplicate key of a YAML document, found in the parser's event stream.
//!
//! marked-yaml stops at the first duplicate key (or, allowed to go on, keeps the last value
//! and forgets the others), so a second pass over yaml-rust2's events, the parser marked-yaml
//! itself uses, finds them all with their positions. It only runs when marked-yaml reported
//! one.

use std::collections::HashMap;

use marked_yaml::Marker;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker as YamlMarker;

/// A key written twice in the same mapping.
#[derive(Debug)]
pub(crate) struct Duplicate {
    /// The key.
    pub key: String,
    /// Where it is repeated.
    pub at: Marker,
    /// Where it was first written.
    pub first: Marker,
}

/// Every key written more than once in its mapping, in file order. Stops at a syntax error
/// (reported by the loader).
pub(crate) fn duplicate_keys(body: &str) -> Vec<Duplicate> {
    let mut finder = Finder::default();
    let mut parser = Parser::new(body.chars());
    // A syntax error ends the stream; what was found before it stands.
    let _ = parser.load(&mut finder, false);
    finder.found
}

enum Frame {
    /// A mapping: the keys seen, and whether the next node is a key.
    Mapping {
        keys: HashMap<String, Marker>,
        want_key: bool,
    },
    Sequence,
}

#[derive(Default)]
struct Finder {
    stack: Vec<Frame>,
    found: Vec<Duplicate>,
}

fn marker(m: YamlMarker) -> Marker {
    // As marked-yaml converts them: 1-based columns.
    Marker::new(0, m.index(), m.line(), m.col() + 1)
}

impl Finder {
    /// A whole node (a value, or a key that is not a scalar) ended in the current container.
    fn node_done(&mut self) {
        if let Some(Frame::Mapping { want_key, .. }) = self.stack.last_mut() {
            *want_key = !*want_key;
        }
    }
}

impl MarkedEventReceiver for Finder {
    fn on_event(&mut self, ev: Event, mark: YamlMarker) {
        match ev {
            Event::MappingStart(..) => self.stack.push(Frame::Mapping {
                keys: HashMap::new(),
                want_key: true,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Sequence),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.node_done();
            }
            Event::Scalar(value, ..) => {
                if let Some(Frame::Mapping {
                    keys,
                    want_key: true,
                }) = self.stack.last_mut()
                {
                    let at = marker(mark);
                    if let Some(first) = keys.get(&value) {
                        self.found.push(Duplicate {
                            key: value,
                            at,
                            first: *first,
                        });
                    } else {
                        keys.insert(value, at);
                    }
                }
                self.node_done();
            }
            Event::Alias(_) => self.node_done(),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(yaml: &str) -> Vec<(String, usize, usize, usize)> {
        duplicate_keys(yaml)
            .into_iter()
            .map(|d| (d.key, d.at.line(), d.at.column(), d.first.line()))
            .collect()
    }

    #[test]
    fn every_duplicate_at_every_depth() {
        let yaml = "\
a: 1
b:
  x: 1
  y: [1, {x: 2, x: 3}]
  x: 2
a: 2
c: { k: 1, k: 2 }
d:
  - x: 1
  - x: 2
";
        assert_eq!(
            found(yaml),
            [
                ("x".into(), 4, 17, 4),
                ("x".into(), 5, 3, 3),
                ("a".into(), 6, 1, 1),
                ("k".into(), 7, 12, 7),
            ]
        );
    }

    #[test]
    fn keys_are_compared_by_value_and_values_are_not_keys() {
        assert_eq!(found("a: b\n'a': c\nb: a\n").len(), 1);
        assert!(found("a: a\nb: {a: a}\n").is_empty());
    }

    #[test]
    fn a_syntax_error_keeps_what_was_found_before_it() {
        assert_eq!(found("a: 1\na: 2\nb: [\n").len(), 1);
    }
}
