//! The flow file as a document that can be edited and written back byte for byte.
//!
//! A [`FlowDocument`] is the text of a flow file plus an [`Outline`] read from it: the
//! processors with their types and config, the connections in the form they were written
//! (`a.port -> b` or a mapping with edge settings), `defaults:` and the designer's `layout:`.
//! The designer reads the outline to draw the flow, validates the text with [`crate::spec::load`]
//! (the code behind `flow validate`, so errors match), and changes the flow with the edits
//! below. Each edit rewrites only the lines it touches: comments, key order, quoting, blank
//! lines, `${VAR}` references (never their values) and string-vs-mapping connection forms stay
//! as the author wrote them, and opening then saving an unchanged file gives the same bytes
//! (the text is kept, not regenerated).
//!
//! # Why `yaml-edit`, and not span edits on the text marked-yaml parsed
//!
//! Both were tried on every file in `flows/` (round trip, set a field, add, remove and rename a
//! processor, add, remove and reshape a connection, add `layout:`), on a file mixing flow and
//! block styles, comments, a block scalar and the three connection forms, and on 47 awkward
//! scalars (`a, b`, `{x}`, `- x`, `#x`, `null`, `yes`, `1e3`, `${A:-b}`, line breaks, control
//! characters...) written into both a flow and a block mapping.
//!
//! - [`yaml_edit`] (a lossless rowan syntax tree, like rust-analyzer's) passed all of it: every
//!   round trip byte-identical, every edit confined to its own lines, every written scalar
//!   quoted exactly when YAML needs it (so marked-yaml reads back the very string), flow
//!   mappings edited in flow style and block ones in block style.
//! - Span edits need the extent of each value in the text, and marked-yaml 0.8 does not give
//!   it: a scalar's span has a start but no end, a block scalar's span starts at its first
//!   content line (not at its `|`), a mapping's span starts after its first key. Filling
//!   that in means scanning quoted, plain and block scalars ourselves, and writing new values
//!   means deciding YAML quoting and indentation ourselves: a second, home-made YAML lexer and
//!   emitter, which is what `yaml-edit` already is, tested against the YAML test suite.
//!
//! So edits go through `yaml-edit`, and the outline is read with marked-yaml, the parser the
//! loader uses: what the designer shows is what the engine reads. Every edit is checked
//! before it is accepted: the new text must parse and must contain the change (a value
//! written is read back equal), or the edit is refused and the text is left as it was.
//!
//! # The `layout:` section
//!
//! The canvas positions live in one optional top-level section that the engine ignores, one
//! line per processor, so moving nodes makes small diffs and a hand-written file needs none:
//!
//! ```yaml
//! layout:
//!   readings: [40, 120]
//!   valid: [300, 120]
//! ```

mod edit;
mod outline;

pub use edit::{EdgeSettingsEdit, EditError, Value, valid_name};
pub use outline::{ConnectionForm, ConnectionOutline, Loc, Outline, ProcessorOutline};

/// The top-level key of the designer's canvas positions, which the engine ignores.
pub const LAYOUT_KEY: &str = "layout";

/// A flow file being edited: its exact text and what it contains.
#[derive(Clone, Debug)]
pub struct FlowDocument {
    text: String,
    outline: Outline,
}

impl FlowDocument {
    /// A document of `text`. Text that is not valid YAML still makes a document (its outline
    /// is empty and says why), so a broken file can be opened, shown and reloaded.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let outline = Outline::read(&text);
        Self { text, outline }
    }

    /// The text, exactly as it will be saved.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What the text contains.
    pub fn outline(&self) -> &Outline {
        &self.outline
    }

    /// Replace the whole text (a reload, an undo).
    pub fn set_text(&mut self, text: impl Into<String>) {
        *self = Self::new(text);
    }
}

#[cfg(test)]
mod tests;
