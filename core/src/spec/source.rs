//! The flow file's text and positions in it: where a YAML marker is in bytes, and where an
//! offset inside a scalar's value is in the file.
//!
//! The YAML parser counts characters; diagnostics need byte ranges. Walking the text from its
//! start for every position made loading quadratic (a 2,000-processor flow took 12 s), so
//! [`Source`] keeps the byte offset of every [`STRIDE`]-th character and walks at most
//! `STRIDE - 1` characters per position (none for ASCII text, the common case).

use std::cell::Cell;

use marked_yaml::Marker;

use super::Pos;

/// Characters between two checkpoints of the character-to-byte index.
pub(crate) const STRIDE: usize = 64;

/// The UTF-8 byte-order mark some Windows editors write at the start of a file.
const BOM: char = '\u{feff}';

/// A flow file's text, indexed for positions.
pub(crate) struct Source<'a> {
    /// The whole file, byte-order mark included: diagnostic ranges index it.
    text: &'a str,
    /// Bytes of a leading byte-order mark (0 or 3); the YAML parser sees the text after it.
    bom: usize,
    /// Byte offset in `text` of every `STRIDE`-th character of the body; empty when the body
    /// is ASCII (a character is a byte).
    checkpoints: Vec<usize>,
    /// Characters walked to find byte offsets: the cost of positions, for tests.
    steps: Cell<u64>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let bom = if text.starts_with(BOM) {
            BOM.len_utf8()
        } else {
            0
        };
        let body = &text[bom..];
        let checkpoints = if body.is_ascii() {
            Vec::new()
        } else {
            body.char_indices()
                .step_by(STRIDE)
                .map(|(b, _)| bom + b)
                .collect()
        };
        Self {
            text,
            bom,
            checkpoints,
            steps: Cell::new(0),
        }
    }

    /// What the YAML parser reads: the file without its byte-order mark, so that the mark
    /// does not become part of the first key.
    pub(crate) fn body(&self) -> &'a str {
        &self.text[self.bom..]
    }

    /// Characters walked so far to turn character offsets into byte offsets.
    #[cfg(test)]
    pub(crate) fn steps(&self) -> u64 {
        self.steps.get()
    }

    /// The byte offset in the file of the body's `char_index`-th character (the end of the
    /// file past the last one).
    pub(crate) fn byte_of_char(&self, char_index: usize) -> usize {
        if self.checkpoints.is_empty() {
            return (self.bom + char_index).min(self.text.len());
        }
        let slot = (char_index / STRIDE).min(self.checkpoints.len() - 1);
        let from = self.checkpoints[slot];
        let walk = char_index - slot * STRIDE;
        self.steps.set(self.steps.get() + walk as u64);
        self.text[from..]
            .char_indices()
            .nth(walk)
            .map_or(self.text.len(), |(b, _)| from + b)
    }

    /// `len` bytes from a marker (widened to whole characters).
    pub(crate) fn pos(&self, marker: Option<&Marker>, len: usize) -> Pos {
        let Some(m) = marker else {
            return Pos::default();
        };
        let start = self.byte_of_char(m.character());
        Pos {
            line: m.line(),
            column: m.column(),
            range: start..self.char_end(start + len),
        }
    }

    /// `end`, moved forward to a character boundary and kept inside the file.
    fn char_end(&self, end: usize) -> usize {
        let mut end = end.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end += 1;
        }
        end
    }

    /// Narrow `at` (a scalar's position) to `len` bytes at byte `offset` inside its value
    /// `value`. A value on one line maps exactly (quoted ones start one character later); a
    /// value over several lines (block scalars `|` and `>`, folded plain or quoted scalars) is
    /// followed character by character through the file, since YAML only changes whitespace
    /// (indentation, folded line breaks) and quoting between the file and the value. When the
    /// value cannot be followed (escapes), `at` is kept.
    pub(crate) fn point_into(&self, at: Pos, value: &str, offset: usize, len: usize) -> Pos {
        let mut offset = offset.min(value.len());
        while !value.is_char_boundary(offset) {
            offset -= 1;
        }
        let src = self.text.get(at.range.start..).unwrap_or_default();
        let shift = if src.starts_with(value) {
            Some(0)
        } else if (src.starts_with('"') || src.starts_with('\''))
            && src.get(1..).is_some_and(|rest| rest.starts_with(value))
        {
            Some(1)
        } else {
            None
        };
        if let Some(shift) = shift
            && !value[..offset].contains('\n')
        {
            let start = at.range.start + shift + offset;
            return Pos {
                line: at.line,
                column: at.column + shift + value[..offset].chars().count(),
                range: start..self.char_end(start + len.max(1)),
            };
        }
        match self.follow(at.range.start, value, offset) {
            Some(start) => Pos {
                range: start..self.char_end(start + len.max(1)),
                ..self.line_column(&at, start)
            },
            None => at,
        }
    }

    /// The byte in the file where the value's byte `offset` is, for a scalar starting at
    /// byte `node`: each non-blank character of the value is the next one in the file.
    fn follow(&self, node: usize, value: &str, offset: usize) -> Option<usize> {
        /// Non-blank characters of the file skipped in a row (escapes, quotes doubled) before
        /// giving up.
        const MAX_SKIP: usize = 16;
        let head = self.text.get(node..)?;
        let start = match head.chars().next()? {
            // A block scalar's content starts on the line after its header (which may end
            // in a comment).
            '|' | '>' => node + head.find('\n')? + 1,
            '"' | '\'' => node + 1,
            _ => node,
        };
        let mut file = self.text[start..]
            .char_indices()
            .map(|(b, c)| (start + b, c));
        // Where the last matched character ends in the file.
        let mut after = start;
        for (i, c) in value.char_indices() {
            if c.is_whitespace() {
                if i >= offset {
                    // The offset is on blanks (or the end): just after the text before it.
                    return Some(after);
                }
                continue;
            }
            let mut skipped = 0;
            let found = loop {
                let (b, fc) = file.next()?;
                if fc == c {
                    break b;
                }
                if !fc.is_whitespace() {
                    skipped += 1;
                    if skipped > MAX_SKIP {
                        return None;
                    }
                }
            };
            if i >= offset {
                return Some(found);
            }
            after = found + c.len_utf8();
        }
        Some(after)
    }

    /// Line and column of byte `to`, counting from the known position `from` before it.
    fn line_column(&self, from: &Pos, to: usize) -> Pos {
        let between = self.text.get(from.range.start..to).unwrap_or_default();
        match between.rfind('\n') {
            Some(nl) => Pos {
                line: from.line + between.matches('\n').count(),
                column: between[nl + 1..].chars().count() + 1,
                range: to..to,
            },
            None => Pos {
                line: from.line,
                column: from.column + between.chars().count(),
                range: to..to,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(text: &str, byte: usize) -> Marker {
        let before = &text[..byte];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        Marker::new(0, before.chars().count(), line, column)
    }

    #[test]
    fn byte_offsets_of_characters_in_ascii_and_unicode_text() {
        let ascii = Source::new("abc\ndef");
        assert_eq!(ascii.byte_of_char(5), 5);
        assert_eq!(ascii.byte_of_char(99), 7);

        let text: String = (0..300)
            .map(|i| if i % 3 == 0 { 'é' } else { 'a' })
            .collect();
        let s = Source::new(&text);
        for (n, (b, _)) in text.char_indices().enumerate() {
            assert_eq!(s.byte_of_char(n), b, "char {n}");
        }
        assert_eq!(s.byte_of_char(300), text.len());
        // Each lookup walks less than a stride.
        assert!(s.steps() < 300 * STRIDE as u64);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_but_counted_in_ranges() {
        let text = "\u{feff}name: x\nprocessors: {}\n";
        let s = Source::new(text);
        assert_eq!(s.body(), "name: x\nprocessors: {}\n");
        // `processors` is the body's 8th character: byte 8 + 3 of the file.
        let p = s.pos(Some(&Marker::new(0, 8, 2, 1)), 10);
        assert_eq!(&text[p.range], "processors");
    }

    #[test]
    fn offsets_inside_block_scalars_point_at_their_line() {
        let text = "a:\n  source: |  # the program\n    .a = 1\n\n    .b = foo(.a)\nb: 1\n";
        let s = Source::new(text);
        let node = text.find('|').expect("block");
        let at = s.pos(Some(&marker(text, node)), 1);
        let value = ".a = 1\n\n.b = foo(.a)\n";
        let foo = value.find("foo").expect("foo");
        let p = s.point_into(at.clone(), value, foo, 3);
        assert_eq!((p.line, p.column), (5, 10));
        assert_eq!(&text[p.range], "foo");
        // The end of the program: just after its last character.
        let end = s.point_into(at, value, value.len(), 1);
        assert_eq!((end.line, end.column), (5, 17));
    }

    #[test]
    fn offsets_inside_folded_and_quoted_scalars() {
        let text = "k: >\n  .a == 1 &&\n  .b == 2\nq: \"x &&\n  bar(1)\"\n";
        let s = Source::new(text);
        let at = s.pos(Some(&marker(text, 3)), 1);
        let value = ".a == 1 && .b == 2\n";
        let p = s.point_into(at, value, value.find(".b").expect(".b"), 2);
        assert_eq!((p.line, p.column), (3, 3));
        assert_eq!(&text[p.range], ".b");

        let q = text.find('"').expect("quote");
        let at = s.pos(Some(&marker(text, q)), 1);
        let p = s.point_into(at, "x && bar(1)", 5, 3);
        assert_eq!((p.line, p.column), (5, 3));
        assert_eq!(&text[p.range], "bar");
    }

    #[test]
    fn values_that_cannot_be_followed_keep_the_scalar_position() {
        let text = "q: \"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\n  x\"\n";
        let s = Source::new(text);
        let at = s.pos(Some(&marker(text, 3)), 1);
        assert_eq!(s.point_into(at.clone(), "éééééé x", 13, 1), at);
        assert_eq!(s.point_into(at.clone(), "éééééé\nx", 13, 1), at);
    }
}
