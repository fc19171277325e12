//! Validation messages with file, line, column and a suggestion, rendered like rustc's.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Config};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The flow cannot run.
    Error,
    /// The flow runs, but probably not as meant.
    Warning,
}

/// One finding about a flow file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Byte range in the file.
    #[serde(skip)]
    pub range: std::ops::Range<usize>,
    /// What to do about it ("did you mean `topics`?"); one suggestion or explanation a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at a position.
    pub fn error(at: Pos, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            line: at.line,
            column: at.column,
            range: at.range,
            help: None,
        }
    }

    /// A warning at a position.
    pub fn warning(at: Pos, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(at, message)
        }
    }

    /// Add a suggestion.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Add a suggestion if there is one.
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

/// A position in a flow file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Byte range.
    pub range: std::ops::Range<usize>,
}

/// "did you mean `x`?" for the closest candidate, if it is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Render findings as text: `file:line:column: error: message`, the line, a caret and the help
/// (one note per line of it).
pub fn render(file_name: &str, source: &str, diagnostics: &[Diagnostic]) -> String {
    // Ranges count a byte-order mark; the rendered columns must not.
    let bom = if source.starts_with('\u{feff}') { 3 } else { 0 };
    let source = &source[bom..];
    let file = SimpleFile::new(file_name, source);
    let config = Config::default();
    let mut out = term::termcolor::NoColor::new(Vec::new());
    for d in diagnostics {
        let mut cs = match d.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        }
        .with_message(&d.message);
        if d.line > 0 {
            let start = d.range.start.saturating_sub(bom).min(source.len());
            let mut end = d.range.end.saturating_sub(bom).clamp(start, source.len());
            // One line at most (a label over a line break spans two lines), and at least one
            // character when there is one on the line.
            if let Some(nl) = source.get(start..end).and_then(|t| t.find('\n')) {
                end = start + nl;
            }
            if end == start {
                end = source
                    .get(start..)
                    .and_then(|t| t.chars().next())
                    .filter(|c| *c != '\n')
                    .map_or(start, |c| start + c.len_utf8());
            }
            let range = start..end;
            cs = cs.with_labels(vec![Label::primary((), range)]);
        }
        if let Some(h) = &d.help {
            cs = cs.with_notes(h.lines().map(|l| format!("help: {l}")).collect());
        }
        if term::emit(&mut out, &config, &file, &cs).is_err() {
            // The range did not fit the file: fall back to the short form.
            let line = format!("{file_name}:{}:{}: {}\n", d.line, d.column, d.message);
            out.get_mut().extend_from_slice(line.as_bytes());
        }
    }
    String::from_utf8_lossy(&out.into_inner()).into_owned()
}

/// One line per finding: `file:line:column: error: message (help)`.
pub fn render_short(file_name: &str, diagnostics: &[Diagnostic]) -> String {
    let mut s = String::new();
    for d in diagnostics {
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        s.push_str(&format!(
            "{file_name}:{}:{}: {sev}: {}",
            d.line, d.column, d.message
        ));
        if let Some(h) = &d.help {
            s.push_str(&format!(" ({})", h.replace('\n', "; ")));
        }
        s.push('\n');
    }
    s
}

/// Where a YAML load error of `file` ("a flow file", "a test file") is, and what to say of it.
pub fn yaml_load_error(e: &marked_yaml::LoadError, file: &str) -> (marked_yaml::Marker, String) {
    use marked_yaml::LoadError as E;
    match e {
        E::TopLevelMustBeMapping(m) => (*m, format!("{file} is a mapping")),
        E::TopLevelMustBeSequence(m) => (*m, "expected a list".to_owned()),
        E::UnexpectedAnchor(m) => (*m, "YAML anchors and aliases are not supported".to_owned()),
        E::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_owned()),
        E::UnexpectedTag(m) => (*m, "YAML tags are not supported".to_owned()),
        E::ScanError(m, s) => (*m, format!("invalid YAML: {}", s.info())),
        E::DuplicateKey(d) => (
            d.key
                .span()
                .start()
                .copied()
                .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1)),
            format!("duplicate key `{}`", d.key.as_str()),
        ),
    }
}
