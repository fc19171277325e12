//! Expressions: VRL, the Vector Remap Language (<https://vrl.dev>).
//!
//! Filter conditions, route predicates, keys and `remap` programs are VRL programs, compiled once
//! when the flow is validated or built, never per record. A program sees the record's structured
//! view as `.` and its attributes as metadata: `%"mqtt.topic"`.
//!
//! We picked VRL over CEL because it was built for exactly this (reading, testing and rewriting
//! events), has a large, documented standard library and compile-time type checking, and its
//! build cost measured here was small (the whole workspace, VRL included, builds cold in under
//! two minutes on two cores).

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use vrl::compiler::state::RuntimeState;
use vrl::compiler::{
    CompileConfig, Context, Function, Program, Target, TargetValueRef, TimeZone,
    compile_with_external, state::ExternalEnv,
};
use vrl::diagnostic::{DiagnosticList, Severity};
use vrl::parser::ast::Opcode;
use vrl::path::{OwnedTargetPath, PathPrefix};
use vrl::value::{Secrets, Value};

use crate::record::{Attributes, FieldValue, FieldsRef, Scalar};

/// One problem found while compiling a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprDiagnostic {
    /// What is wrong.
    pub message: String,
    /// Byte range in the program's source the problem points at, if known.
    pub span: Option<(usize, usize)>,
    /// Explanations and hints from the compiler.
    pub notes: Vec<String>,
}

impl std::fmt::Display for ExprDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// Compiling a program failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct CompileError(pub Vec<ExprDiagnostic>);

/// Running a program on a record failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// The program raised an error (a failed function call, a type mismatch at run time).
    #[error("{0}")]
    Failed(String),
    /// The program called `abort`.
    #[error("aborted{}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Aborted(Option<String>),
    /// A condition returned something other than a boolean.
    #[error("expected a boolean, got {0}")]
    NotBoolean(String),
}

fn functions() -> &'static [Box<dyn Function>] {
    static FNS: OnceLock<Vec<Box<dyn Function>>> = OnceLock::new();
    FNS.get_or_init(vrl::stdlib::all)
}

/// VRL's diagnostics in full: the message, what the primary label says and the token it
/// points at (`call to undefined function `foo``), then the other labels (`did you mean
/// `floor`?`) and the notes as explanations.
fn diagnostics(list: DiagnosticList, source: &str) -> Vec<ExprDiagnostic> {
    list.into_iter()
        .filter(|d| matches!(d.severity, Severity::Error | Severity::Bug))
        .map(|d| {
            let primary = d.labels.iter().find(|l| l.primary).or(d.labels.first());
            let mut message = d.message.clone();
            if let Some(l) = primary {
                if !l.message.is_empty() && !message.contains(&l.message) {
                    message = format!("{message}: {}", l.message);
                }
                // Name the token pointed at when it is one word (a function, a variable).
                let token = source.get(l.span.start()..l.span.end()).unwrap_or_default();
                if !token.is_empty()
                    && token.len() <= 64
                    && token.chars().all(|c| c.is_alphanumeric() || c == '_')
                    && !message.contains(&format!("`{token}`"))
                {
                    message = format!("{message} `{token}`");
                }
            }
            let labels = d
                .labels
                .iter()
                // A syntax error's list of every token the grammar allows is noise.
                .filter(|l| {
                    !l.primary && !l.message.is_empty() && !l.message.starts_with("expected one of")
                })
                .map(|l| backticks(&l.message));
            let notes = d.notes.iter().map(|n| {
                let n = n.to_string();
                n.strip_prefix("hint: ").map(str::to_owned).unwrap_or(n)
            });
            ExprDiagnostic {
                message,
                span: primary.map(|l| (l.span.start(), l.span.end())),
                notes: labels.chain(notes).collect(),
            }
        })
        .collect()
}

/// VRL quotes names with `"`; flow's messages use backticks: `did you mean "floor"?`.
fn backticks(label: &str) -> String {
    match label
        .strip_prefix("did you mean \"")
        .and_then(|r| r.strip_suffix("\"?"))
    {
        Some(name) => format!("did you mean `{name}`?"),
        None => label.to_owned(),
    }
}

/// Error code VRL gives an expression whose runtime error is not handled.
const UNHANDLED_ERROR: usize = 100;
const WRAP_HEAD: &str = "__flow_value, __flow_error = {\n";
const WRAP_TAIL: &str = "\n}\nif __flow_error != null { abort (string(__flow_error) ?? \"expression failed\") }\n__flow_value";

fn compile_vrl(source: &str) -> Result<Program, DiagnosticList> {
    compile_with_external(
        source,
        functions(),
        &ExternalEnv::default(),
        CompileConfig::default(),
    )
    .map(|r| r.program)
}

fn only_unhandled_errors(list: &DiagnosticList) -> bool {
    let mut errors = list
        .iter()
        .filter(|d| matches!(d.severity, Severity::Error | Severity::Bug))
        .peekable();
    errors.peek().is_some() && errors.all(|d| d.code == UNHANDLED_ERROR)
}

/// What a program is for; decides the checks made at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExprKind {
    /// Must be able to return a boolean (filters, routes).
    Condition,
    /// Returns any value (keys, event times).
    Value,
    /// Rewrites the record in place (`remap`); its result value is ignored.
    Program,
}

/// A compiled VRL program. Cheap to clone.
#[derive(Clone)]
pub struct Expr {
    /// The program that runs and reports errors. For a condition with a `fast` form it is
    /// compiled on first use (a record on which the fast form fails): validating a flow then
    /// compiles each fallible condition twice, not three times.
    program: Arc<OnceLock<Result<Program, String>>>,
    source: Arc<str>,
    kind: ExprKind,
    /// For wrapped conditions: the same condition with errors turned into `null` and no local
    /// variables, cheaper to run. Only when it does not give a boolean is the full program run,
    /// to report the error.
    fast: Option<Arc<Program>>,
    /// Set when the program is nothing but a field path (`.device`, `%"mqtt.topic"`): read it
    /// directly, with VRL's own path semantics, instead of running the interpreter.
    path: Option<Arc<OwnedTargetPath>>,
    /// Set when a condition is comparisons of fields and literals (`.temperature > 95`,
    /// `.status != "error" && .rpm >= 3000`): evaluated natively, with VRL's own value
    /// operations, falling back to the interpreter where VRL would fail (to report it).
    native: Option<Arc<Native>>,
}

/// A condition that reduces to comparisons of fields and literals, joined by `&&` and `||`.
/// Each step is the one VRL's interpreter takes (`Value::get` for a field, `eq_lossy` for
/// `==` and `!=`, `try_gt` and the others for orderings, `&&` and `||` short-circuiting), so
/// the result is the interpreter's; `None` where the interpreter would fail (a type error),
/// so that the interpreter runs and reports the error. A property test checks the equality.
#[derive(Debug)]
enum Native {
    Compare(Operand, Opcode, Operand),
    And(Box<Native>, Box<Native>),
    Or(Box<Native>, Box<Native>),
}

/// One side of a native comparison.
#[derive(Debug)]
enum Operand {
    /// A field of the record (`.temperature`): null when missing, as in VRL.
    Field(vrl::path::OwnedValuePath),
    /// A literal, as VRL evaluates it.
    Literal(Value),
}

static NULL: Value = Value::Null;

/// What a native condition or a field path reads a record's fields from: its structured view,
/// or the top-level fields its source indexed in the content ([`FieldsRef`]), which answer
/// for one-segment paths (`.temperature`) to fields that are not objects or arrays, and
/// decline (`None`) the rest, read from the view instead.
trait ReadFields {
    fn field(&self, path: &vrl::path::OwnedValuePath) -> Option<Cow<'_, Value>>;

    /// The field as a [`Scalar`], without making a `Value` (`Other`: read it with
    /// [`ReadFields::field`]).
    fn scalar(&self, path: &vrl::path::OwnedValuePath) -> Scalar<'_>;
}

impl ReadFields for Value {
    fn field(&self, path: &vrl::path::OwnedValuePath) -> Option<Cow<'_, Value>> {
        Some(Cow::Borrowed(self.get(path).unwrap_or(&NULL)))
    }

    fn scalar(&self, path: &vrl::path::OwnedValuePath) -> Scalar<'_> {
        self.get(path).map_or(Scalar::Other, scalar_of)
    }
}

impl ReadFields for FieldsRef<'_> {
    fn field(&self, path: &vrl::path::OwnedValuePath) -> Option<Cow<'_, Value>> {
        match self.get(top_level(path)?) {
            FieldValue::Missing => Some(Cow::Borrowed(&NULL)),
            FieldValue::Value(v) => Some(Cow::Owned(v)),
            FieldValue::Nested => None,
        }
    }

    fn scalar(&self, path: &vrl::path::OwnedValuePath) -> Scalar<'_> {
        top_level(path).map_or(Scalar::Other, |name| self.get_scalar(name))
    }
}

/// A value as a [`Scalar`]: numbers and strings; `Other` for the rest.
fn scalar_of(v: &Value) -> Scalar<'_> {
    match v {
        Value::Integer(i) => Scalar::Int(*i),
        Value::Float(x) => Scalar::Float(x.into_inner()),
        Value::Bytes(b) => Scalar::Str(b),
        Value::String(s) => Scalar::Str(s.as_bytes()),
        _ => Scalar::Other,
    }
}

/// `l op r` as VRL compares numbers (`==` and `!=` lossily, as floats; an ordering of two
/// integers as integers, of an integer and a float as floats) and strings (bytes), without
/// making values; `None` for every other pair, which VRL is asked.
fn compare_scalars(l: Scalar<'_>, op: vrl::parser::ast::Opcode, r: Scalar<'_>) -> Option<bool> {
    use std::cmp::Ordering;
    use vrl::parser::ast::Opcode as O;
    #[allow(clippy::cast_precision_loss, reason = "as VRL compares them")]
    let ordering = match (l, r) {
        (Scalar::Int(a), Scalar::Int(b)) if !matches!(op, O::Eq | O::Ne) => Some(a.cmp(&b)),
        (Scalar::Int(a), Scalar::Int(b)) => (a as f64).partial_cmp(&(b as f64)),
        (Scalar::Int(a), Scalar::Float(b)) => (a as f64).partial_cmp(&b),
        (Scalar::Float(a), Scalar::Int(b)) => a.partial_cmp(&(b as f64)),
        (Scalar::Float(a), Scalar::Float(b)) => a.partial_cmp(&b),
        (Scalar::Str(a), Scalar::Str(b)) if matches!(op, O::Eq | O::Ne) => {
            return Some(crate::record::eq_bytes(a, b) == (op == O::Eq));
        }
        (Scalar::Str(a), Scalar::Str(b)) => Some(a.cmp(b)),
        // A number is never equal to a string; ordering them fails in VRL.
        (Scalar::Int(_) | Scalar::Float(_), Scalar::Str(_))
        | (Scalar::Str(_), Scalar::Int(_) | Scalar::Float(_))
            if matches!(op, O::Eq | O::Ne) =>
        {
            return Some(op == O::Ne);
        }
        _ => return None,
    }?;
    Some(match op {
        O::Eq => ordering == Ordering::Equal,
        O::Ne => ordering != Ordering::Equal,
        O::Gt => ordering == Ordering::Greater,
        O::Ge => ordering != Ordering::Less,
        O::Lt => ordering == Ordering::Less,
        O::Le => ordering != Ordering::Greater,
        _ => return None,
    })
}

/// The field's name when `path` is one field of the record (`.temperature`).
fn top_level(path: &vrl::path::OwnedValuePath) -> Option<&str> {
    match path.segments.as_slice() {
        [vrl::path::OwnedSegment::Field(name)] => Some(name.as_str()),
        _ => None,
    }
}

impl Operand {
    fn get<'a, R: ReadFields>(&'a self, record: &'a R) -> Option<Cow<'a, Value>> {
        match self {
            Operand::Field(path) => record.field(path),
            Operand::Literal(v) => Some(Cow::Borrowed(v)),
        }
    }

    fn scalar<'a, R: ReadFields>(&'a self, record: &'a R) -> Scalar<'a> {
        match self {
            Operand::Field(path) => record.scalar(path),
            Operand::Literal(v) => scalar_of(v),
        }
    }

    fn top_level(&self) -> bool {
        match self {
            Operand::Field(path) => top_level(path).is_some(),
            Operand::Literal(_) => true,
        }
    }
}

impl Native {
    /// Recognise `source` (already compiled as a condition) as comparisons of fields and
    /// literals. Literals are evaluated by VRL itself (escapes, number forms).
    fn of(source: &str) -> Option<Native> {
        let program = vrl::parser::parse(source).ok()?;
        let [root] = program.0.as_slice() else {
            return None;
        };
        let vrl::parser::ast::RootExpr::Expr(expr) = root.inner() else {
            return None;
        };
        Self::expr(source, expr)
    }

    fn expr(source: &str, e: &vrl::parser::ast::Node<vrl::parser::ast::Expr>) -> Option<Native> {
        use vrl::parser::ast::{Container, Expr as E, Opcode as O};
        match e.inner() {
            E::Op(op) => {
                let vrl::parser::ast::Op(lhs, opcode, rhs) = op.inner();
                match opcode.inner() {
                    O::And => Some(Native::And(
                        Box::new(Self::expr(source, lhs)?),
                        Box::new(Self::expr(source, rhs)?),
                    )),
                    O::Or => Some(Native::Or(
                        Box::new(Self::expr(source, lhs)?),
                        Box::new(Self::expr(source, rhs)?),
                    )),
                    o @ (O::Eq | O::Ne | O::Gt | O::Ge | O::Lt | O::Le) => Some(Native::Compare(
                        Self::operand(source, lhs)?,
                        *o,
                        Self::operand(source, rhs)?,
                    )),
                    _ => None,
                }
            }
            E::Container(c) => match c.inner() {
                Container::Group(g) => Self::expr(source, &g.inner().0),
                _ => None,
            },
            _ => None,
        }
    }

    fn operand(
        source: &str,
        e: &vrl::parser::ast::Node<vrl::parser::ast::Expr>,
    ) -> Option<Operand> {
        use vrl::parser::ast::{Expr as E, QueryTarget};
        match e.inner() {
            E::Query(q) => match q.inner().target.inner() {
                QueryTarget::External(PathPrefix::Event) => {
                    Some(Operand::Field(q.inner().path.inner().clone()))
                }
                _ => None,
            },
            E::Literal(_) => {
                let span = e.span();
                let text = source.get(span.start()..span.end())?;
                let program = compile_vrl(text).ok()?;
                // A template string reads the record: not a constant.
                if !program.info().target_queries.is_empty() {
                    return None;
                }
                let empty = Value::Object(Default::default());
                let mut target = ReadOnly {
                    value: &NULL,
                    metadata: &empty,
                };
                match run_program(&program, &mut target).ok()? {
                    v @ (Value::Bytes(_)
                    | Value::String(_)
                    | Value::Integer(_)
                    | Value::Float(_)
                    | Value::Boolean(_)
                    | Value::Null) => Some(Operand::Literal(v)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Whether every field it reads is one top-level field (see [`ReadFields`]).
    fn top_level(&self) -> bool {
        match self {
            Native::And(a, b) | Native::Or(a, b) => a.top_level() && b.top_level(),
            Native::Compare(l, _, r) => l.top_level() && r.top_level(),
        }
    }

    /// The condition's value on `value`, or `None` where VRL would fail (or `value` cannot
    /// read a field: see [`ReadFields`]).
    fn test<R: ReadFields>(&self, value: &R) -> Option<bool> {
        use vrl::compiler::value::VrlValueArithmetic as _;
        use vrl::parser::ast::Opcode as O;
        match self {
            Native::And(a, b) => match a.test(value)? {
                false => Some(false),
                true => b.test(value),
            },
            Native::Or(a, b) => match a.test(value)? {
                true => Some(true),
                false => b.test(value),
            },
            Native::Compare(lhs, op, rhs) => {
                // Numbers and plain strings, read in place (most conditions).
                if let Some(b) = compare_scalars(lhs.scalar(value), *op, rhs.scalar(value)) {
                    return Some(b);
                }
                let (l, r) = (lhs.get(value)?, rhs.get(value)?);
                let ordered = match op {
                    O::Eq => return Some(l.eq_lossy(&r)),
                    O::Ne => return Some(!l.eq_lossy(&r)),
                    O::Gt => l.into_owned().try_gt(r.into_owned()),
                    O::Ge => l.into_owned().try_ge(r.into_owned()),
                    O::Lt => l.into_owned().try_lt(r.into_owned()),
                    O::Le => l.into_owned().try_le(r.into_owned()),
                    _ => return None,
                };
                match ordered {
                    Ok(Value::Boolean(b)) => Some(b),
                    _ => None,
                }
            }
        }
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// `source` with its run-time errors handled: the error becomes an `abort` with its message.
fn compile_wrapped(source: &str) -> Result<Program, CompileError> {
    let wrapped = format!("{WRAP_HEAD}{source}{WRAP_TAIL}");
    compile_vrl(&wrapped).map_err(|d| {
        let mut diags = diagnostics(d, &wrapped);
        for diag in &mut diags {
            diag.span = diag.span.map(|(a, b)| {
                let a = a.saturating_sub(WRAP_HEAD.len()).min(source.len());
                let b = b.saturating_sub(WRAP_HEAD.len()).clamp(a, source.len());
                (a, b)
            });
        }
        CompileError(diags)
    })
}

impl Expr {
    /// Compile `source` for the given use.
    pub fn compile(source: &str, kind: ExprKind) -> Result<Self, CompileError> {
        let mut fast = None;
        let program = match compile_vrl(source) {
            Ok(p) => Some(p),
            // VRL refuses expressions that may fail at run time unless the program handles the
            // error (`.temperature > 95` when `.temperature` might not be a number). For
            // conditions and values we handle it for the user: the error becomes the record's
            // failure (it goes to the `failure` port with the message), which is what a flow
            // author expects. `remap` programs keep VRL's rules, as in Vector.
            Err(d) if kind != ExprKind::Program && only_unhandled_errors(&d) => {
                if kind == ExprKind::Condition {
                    fast = compile_vrl(&format!("{{\n{source}\n}} ?? null"))
                        .ok()
                        .map(Arc::new);
                }
                // The fast form compiled: the wrapped one differs only in how it handles the
                // same errors, and is compiled when first needed.
                match fast {
                    Some(_) => None,
                    None => Some(compile_wrapped(source)?),
                }
            }
            // Conditions and values handle their run-time errors (above): with other errors,
            // VRL's complaint that they do not is noise.
            Err(d) if kind != ExprKind::Program => {
                let d: Vec<_> = d
                    .into_iter()
                    .filter(|d| d.code != UNHANDLED_ERROR)
                    .collect();
                return Err(CompileError(diagnostics(d.into(), source)));
            }
            Err(d) => return Err(CompileError(diagnostics(d, source))),
        };
        // Without the full program, the fast form `{ condition } ?? null` has the condition's
        // type (or null).
        let typed = program.as_ref().or(fast.as_deref());
        if kind == ExprKind::Condition
            && let Some(ty) = typed.map(|p| p.final_type_info().result)
            && !ty.kind().contains_boolean()
        {
            return Err(CompileError(vec![ExprDiagnostic {
                message: format!(
                    "a condition must return a boolean, this returns {}",
                    ty.kind()
                ),
                span: Some((0, source.len())),
                notes: vec!["compare a field, for example `.status == \"error\"`".into()],
            }]));
        }
        // Conditions and values only read the record: an assignment in one would change a
        // copy that is thrown away, silently. Say so where the program is written.
        if kind != ExprKind::Program
            && let Some(target) = typed.and_then(|p| p.info().target_assignments.first())
        {
            let what = match kind {
                ExprKind::Condition => "a condition",
                _ => "an expression here",
            };
            return Err(CompileError(vec![ExprDiagnostic {
                message: format!(
                    "{what} only reads the record, but this assigns to `{target}`: the change would be lost"
                ),
                span: Some((0, source.len())),
                notes: vec!["change records in a `remap` processor placed before this one".into()],
            }]));
        }
        let path = match kind {
            ExprKind::Value => vrl::path::parse_target_path(source.trim())
                .ok()
                .map(Arc::new),
            _ => None,
        };
        let native = match kind {
            ExprKind::Condition => Native::of(source).map(Arc::new),
            _ => None,
        };
        let cell = OnceLock::new();
        if let Some(p) = program {
            let _ = cell.set(Ok(p));
        }
        Ok(Self {
            program: Arc::new(cell),
            source: source.into(),
            kind,
            fast,
            path,
            native,
        })
    }

    /// The program's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the program was compiled for.
    pub fn kind(&self) -> ExprKind {
        self.kind
    }

    /// Run the program on a value without changing it; returns the program's result.
    pub fn eval(&self, value: &Value, attributes: &Attributes) -> Result<Value, EvalError> {
        if let Some(path) = &self.path {
            let found = match path.prefix {
                PathPrefix::Event => value.get(&path.path).cloned(),
                PathPrefix::Metadata => attributes_value(attributes).get(&path.path).cloned(),
            };
            return Ok(found.unwrap_or(Value::Null));
        }
        let metadata = attributes_value(attributes);
        let mut target = ReadOnly {
            value,
            metadata: &metadata,
        };
        self.run(&mut target)
    }

    /// Whether this reads nothing but top-level fields of the record (a native condition of
    /// them, or one field path), so that [`Expr::test_fields`] and [`Expr::eval_fields`]
    /// answer for it on indexed records (see [`crate::record::JsonView::Fields`]).
    pub fn reads_only_top_level_fields(&self) -> bool {
        match (&self.native, &self.path) {
            (Some(n), _) => n.top_level(),
            (None, Some(p)) => p.prefix == PathPrefix::Event && top_level(&p.path).is_some(),
            (None, None) => false,
        }
    }

    /// A condition on a record's indexed top-level fields, without its structured view: the
    /// result [`Expr::test`] gives, or `None` where only the view can tell (a nested field, a
    /// condition that is not native, a comparison VRL would fail: [`Expr::test`] on the view
    /// then says what happens).
    pub fn test_fields(&self, fields: FieldsRef<'_>) -> Option<bool> {
        self.native.as_ref()?.test(&fields)
    }

    /// A field path's value on a record's indexed top-level fields: the value [`Expr::eval`]
    /// gives, or `None` where only the structured view can tell.
    pub fn eval_fields(&self, fields: FieldsRef<'_>) -> Option<Value> {
        let mut v = Value::Null;
        self.eval_fields_into(fields, &mut v).then_some(v)
    }

    /// [`Expr::eval_fields`] written into `out` (`false`, `out` untouched: only the structured
    /// view can tell).
    ///
    /// The value is made where it goes: returned through `FieldValue`, `Cow` and `Option`, a
    /// `Value` was copied on the stack three times and once more into the caller's list, in
    /// moves that stalled the window's loop (a store read back at another width is not
    /// forwarded: the load waits for the store to reach the cache).
    pub fn eval_fields_into(&self, fields: FieldsRef<'_>, out: &mut Value) -> bool {
        self.event_path()
            .and_then(top_level)
            .is_some_and(|name| fields.get_into(name, out))
    }

    /// The path when the program is a path into the record's value (`.temperature`).
    fn event_path(&self) -> Option<&vrl::path::OwnedValuePath> {
        self.path
            .as_ref()
            .filter(|p| p.prefix == PathPrefix::Event)
            .map(|p| &p.path)
    }

    /// A field path's value on a record's indexed top-level fields as a [`Scalar`], without
    /// making a `Value`: numbers, and strings without escapes as their bytes; `Other` for
    /// the rest (read it with [`Expr::eval_fields`]).
    pub fn scalar_fields<'a>(&self, fields: FieldsRef<'a>) -> Scalar<'a> {
        self.event_path()
            .and_then(top_level)
            .map_or(Scalar::Other, |name| fields.get_scalar(name))
    }

    /// Run a condition: the result must be a boolean.
    pub fn test(&self, value: &Value, attributes: &Attributes) -> Result<bool, EvalError> {
        if let Some(b) = self.native.as_ref().and_then(|n| n.test(value)) {
            return Ok(b);
        }
        if let Some(fast) = &self.fast {
            let metadata = attributes_value(attributes);
            let mut target = ReadOnly {
                value,
                metadata: &metadata,
            };
            if let Ok(Value::Boolean(b)) = run_program(fast, &mut target) {
                return Ok(b);
            }
        }
        match self.eval(value, attributes)? {
            Value::Boolean(b) => Ok(b),
            other => Err(EvalError::NotBoolean(other.kind_str().to_owned())),
        }
    }

    /// Run the program allowing it to rewrite the value and the attributes (`remap`).
    pub fn run_mut(&self, value: &mut Value, attributes: &mut Attributes) -> Result<(), EvalError> {
        let mut metadata = attributes_value(attributes);
        let mut secrets = Secrets::default();
        let mut target = TargetValueRef {
            value,
            metadata: &mut metadata,
            secrets: &mut secrets,
        };
        self.run(&mut target)?;
        if let Value::Object(map) = metadata {
            attributes.clear();
            for (k, v) in map {
                let v = match v {
                    Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                    Value::Null => continue,
                    other => other.to_string_lossy().into_owned(),
                };
                attributes.insert(k.into(), v);
            }
        } else {
            attributes.clear();
        }
        Ok(())
    }

    fn run(&self, target: &mut dyn Target) -> Result<Value, EvalError> {
        let program = self
            .program
            .get_or_init(|| compile_wrapped(&self.source).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| EvalError::Failed(format!("the expression does not compile: {e}")))?;
        run_program(program, target).map_err(|e| match e {
            vrl::compiler::ExpressionError::Abort { message, .. } => match self.kind {
                // The wrapper's abort carries the expression's own error.
                ExprKind::Condition | ExprKind::Value => {
                    EvalError::Failed(message.unwrap_or_else(|| "expression failed".to_owned()))
                }
                ExprKind::Program => EvalError::Aborted(message),
            },
            other => EvalError::Failed(other.to_string()),
        })
    }
}

fn run_program(
    program: &Program,
    target: &mut dyn Target,
) -> Result<Value, vrl::compiler::ExpressionError> {
    {
        thread_local! {
            // Reused so a program's local variables don't allocate a map per record.
            static STATE: std::cell::RefCell<RuntimeState> = std::cell::RefCell::new(RuntimeState::default());
        }
        static TZ: OnceLock<TimeZone> = OnceLock::new();
        let tz = TZ.get_or_init(TimeZone::default);
        STATE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut state) => {
                let mut ctx = Context::new(target, &mut state, tz);
                let r = program.resolve(&mut ctx);
                state.clear();
                r
            }
            // Re-entered on this thread (not expected): use a fresh state.
            Err(_) => {
                let mut state = RuntimeState::default();
                let mut ctx = Context::new(target, &mut state, tz);
                program.resolve(&mut ctx)
            }
        })
    }
}

fn attributes_value(attributes: &Attributes) -> Value {
    if attributes.is_empty() {
        return Value::Object(Default::default());
    }
    Value::Object(
        attributes
            .iter()
            .map(|(k, v)| (k.as_str().into(), Value::from(v.as_str())))
            .collect(),
    )
}

/// A target that can be read but not written: conditions and keys see the record without the
/// cost of copying it.
#[derive(Debug)]
struct ReadOnly<'a> {
    value: &'a Value,
    metadata: &'a Value,
}

const READ_ONLY: &str = "this expression cannot change the record; use a `remap` processor";

impl Target for ReadOnly<'_> {
    fn target_insert(&mut self, _: &OwnedTargetPath, _: Value) -> Result<(), String> {
        Err(READ_ONLY.into())
    }

    fn target_get(&self, path: &OwnedTargetPath) -> Result<Option<&Value>, String> {
        Ok(match path.prefix {
            PathPrefix::Event => self.value.get(&path.path),
            PathPrefix::Metadata => self.metadata.get(&path.path),
        })
    }

    fn target_get_mut(&mut self, _: &OwnedTargetPath) -> Result<Option<&mut Value>, String> {
        Err(READ_ONLY.into())
    }

    fn target_remove(&mut self, _: &OwnedTargetPath, _: bool) -> Result<Option<Value>, String> {
        Err(READ_ONLY.into())
    }
}

impl vrl::compiler::SecretTarget for ReadOnly<'_> {
    fn get_secret(&self, _: &str) -> Option<&str> {
        None
    }
    fn insert_secret(&mut self, _: &str, _: &str) {}
    fn remove_secret(&mut self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).expect("test json")
    }

    #[test]
    fn conditions_read_fields_and_attributes() {
        let e = Expr::compile(
            r#".status != "error" && .temperature > 95"#,
            ExprKind::Condition,
        )
        .expect("compiles");
        let attrs = Attributes::new();
        assert!(
            e.test(&json(r#"{"status":"ok","temperature":96.5}"#), &attrs)
                .expect("ok")
        );
        assert!(
            !e.test(&json(r#"{"status":"ok","temperature":95}"#), &attrs)
                .expect("ok")
        );
        let a = Expr::compile(r#"%"mqtt.topic" == "x""#, ExprKind::Condition).expect("compiles");
        let mut attrs = Attributes::new();
        attrs.insert("mqtt.topic".into(), "x".into());
        assert!(a.test(&json("{}"), &attrs).expect("ok"));
    }

    /// A field path read from a record's indexed fields is what the interpreter reads from
    /// its view, for every kind of value (written in place into a slot that held another);
    /// objects, arrays, nested paths and programs are left to the view.
    #[test]
    fn indexed_field_reads_equal_the_interpreters() {
        use crate::record::{JsonView, Record};
        let raw = r#"{"i":-3,"f":2.5,"big":18446744073709551615,"s":"car-1","esc":"a\"b",
            "t":true,"n":null,"o":{"a":1},"l":[1]}"#;
        let r = Record::json(bytes::Bytes::from(raw), JsonView::Fields).expect("valid");
        let fields = r.fields().expect("indexed");
        let view = json(raw);
        let attrs = Attributes::new();
        for path in [".i", ".f", ".big", ".s", ".esc", ".t", ".n", ".missing"] {
            let e = Expr::compile(path, ExprKind::Value).expect("compiles");
            let want = e.eval(&view, &attrs).expect("evaluates");
            assert_eq!(e.eval_fields(fields), Some(want.clone()), "{path}");
            let mut slot = Value::from("something else");
            assert!(e.eval_fields_into(fields, &mut slot), "{path}");
            assert_eq!(slot, want, "{path}");
        }
        for path in [".o", ".l", ".o.a", "upcase(string!(.s))"] {
            let e = Expr::compile(path, ExprKind::Value).expect("compiles");
            let mut slot = Value::from(7);
            assert!(!e.eval_fields_into(fields, &mut slot), "{path}");
            assert_eq!(slot, Value::from(7), "{path}: untouched");
            assert_eq!(e.eval_fields(fields), None, "{path}");
        }
    }

    #[test]
    fn compile_errors_point_into_the_source() {
        let err = Expr::compile(".a ==", ExprKind::Condition).expect_err("syntax error");
        assert!(err.0[0].span.is_some(), "{err:?}");
        let err = Expr::compile("nope(.a)", ExprKind::Value).expect_err("unknown function");
        assert!(err.to_string().contains("undefined function"), "{err}");
        let err = Expr::compile(".a > 1 &&", ExprKind::Condition).expect_err("syntax");
        let (start, _) = err.0[0].span.expect("span");
        assert!(start <= ".a > 1 &&".len(), "{err:?}");
        let err = Expr::compile(r#""text""#, ExprKind::Condition).expect_err("not boolean");
        assert!(err.to_string().contains("boolean"), "{err}");
    }

    #[test]
    fn conditions_and_values_that_assign_to_the_record_are_refused() {
        for (source, kind) in [
            (".seen = true; .temperature > 95", ExprKind::Condition),
            (r#"%flag = "x"; true"#, ExprKind::Condition),
            (
                ".device = upcase(string!(.device)); .device",
                ExprKind::Value,
            ),
        ] {
            let err = Expr::compile(source, kind).expect_err(source);
            let text = err.to_string();
            assert!(text.contains("only reads the record"), "{text}");
            assert!(text.contains("remap"), "{text}");
        }
        // Local variables are not the record: allowed.
        Expr::compile("t = .temperature; t > 95", ExprKind::Condition).expect("a local");
        Expr::compile(".x = 1", ExprKind::Program).expect("remap may assign");
    }

    #[test]
    fn runtime_errors_are_errors_not_panics() {
        let e = Expr::compile(".temperature > 95", ExprKind::Condition).expect("compiles");
        assert!(e.fast.is_some(), "a wrapped condition has a fast variant");
        let err = e.test(&json(r#"{"temperature":"hot"}"#), &Attributes::new());
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("expected")),
            "{err:?}"
        );
        assert_eq!(
            e.test(&json(r#"{"temperature":96}"#), &Attributes::new()),
            Ok(true)
        );
    }

    #[test]
    fn remap_rewrites_value_and_attributes() {
        let e = Expr::compile(
            r#".f = to_int!(.c) * 9 / 5 + 32; del(.c); %unit = "F""#,
            ExprKind::Program,
        )
        .expect("compiles");
        let mut v = json(r#"{"c":100}"#);
        let mut attrs = Attributes::new();
        e.run_mut(&mut v, &mut attrs).expect("runs");
        assert_eq!(v, json(r#"{"f":212.0}"#));
        assert_eq!(attrs.get("unit").map(String::as_str), Some("F"));
    }

    #[test]
    fn plain_paths_read_like_vrl() {
        let attrs = Attributes::from([("mqtt.topic".to_owned(), "t".to_owned())]);
        let v = json(r#"{"a":{"b":[1,2]},"s":"x"}"#);
        for (src, want) in [
            (".a.b[1]", "2"),
            (".s", r#""x""#),
            (".nope", "null"),
            (r#"%"mqtt.topic""#, r#""t""#),
        ] {
            let e = Expr::compile(src, ExprKind::Value).expect("compiles");
            assert!(e.path.is_some(), "{src} takes the fast path");
            assert_eq!(e.eval(&v, &attrs).expect("ok"), json(want), "{src}");
        }
        let e = Expr::compile(".a.b[1] + 1", ExprKind::Value).expect("compiles");
        assert!(e.path.is_none());
        assert_eq!(e.eval(&v, &attrs).expect("ok"), json("3"));
    }

    /// The native form of comparisons gives what the interpreter gives, on every kind of
    /// value: the same boolean, or no answer where the interpreter fails (then the
    /// interpreter runs and reports the error).
    mod native {
        use super::*;
        use proptest::prelude::*;

        fn field() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (90i64..100).prop_map(Value::from),
                any::<f64>()
                    .prop_filter("not NaN", |f| !f.is_nan())
                    .prop_map(Value::from_f64_or_zero),
                (90.0f64..100.0).prop_map(Value::from_f64_or_zero),
                prop_oneof![Just("error"), Just("ok"), Just(""), Just("é"), Just("95")]
                    .prop_map(Value::from),
                Just(json(r#"{"x":1}"#)),
                Just(json("[1,2]")),
            ]
        }

        fn operand() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                Just(".temperature"),
                Just(".status"),
                Just(".missing"),
                Just(".a.b"),
                Just("95"),
                Just("95.0"),
                Just("95.5"),
                Just("-3"),
                Just("9007199254740993"),
                Just(r#""error""#),
                Just(r#""ok""#),
                Just(r#""""#),
                Just("true"),
                Just("false"),
                Just("null"),
            ]
        }

        fn comparison() -> impl Strategy<Value = String> {
            let op = prop_oneof![
                Just("=="),
                Just("!="),
                Just(">"),
                Just(">="),
                Just("<"),
                Just("<=")
            ];
            (operand(), op, operand()).prop_map(|(a, o, b)| format!("{a} {o} {b}"))
        }

        fn condition() -> impl Strategy<Value = String> {
            prop_oneof![
                comparison(),
                (comparison(), comparison()).prop_map(|(a, b)| format!("{a} && {b}")),
                (comparison(), comparison()).prop_map(|(a, b)| format!("{a} || {b}")),
                (comparison(), comparison(), comparison())
                    .prop_map(|(a, b, c)| format!("({a} || {b}) && {c}")),
            ]
        }

        fn record() -> impl Strategy<Value = Value> {
            (
                proptest::option::of(field()),
                proptest::option::of(field()),
                proptest::option::of(field()),
            )
                .prop_map(|(t, s, b)| {
                    let mut o = vrl::value::ObjectMap::new();
                    if let Some(t) = t {
                        o.insert("temperature".into(), t);
                    }
                    if let Some(s) = s {
                        o.insert("status".into(), s);
                    }
                    if let Some(b) = b {
                        let mut a = vrl::value::ObjectMap::new();
                        a.insert("b".into(), b);
                        o.insert("a".into(), Value::Object(a));
                    }
                    Value::Object(o)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn equals_the_interpreter(source in condition(), v in record()) {
                // Some generated conditions do not compile (VRL refuses comparisons it
                // knows fail): nothing to compare then.
                let Ok(e) = Expr::compile(&source, ExprKind::Condition) else {
                    return Ok(());
                };
                let native = e.native.clone().expect("recognised as native");
                let mut interpreted = e.clone();
                interpreted.native = None;
                let attrs = Attributes::new();
                let want = interpreted.test(&v, &attrs);
                // The same record as a source reads it with its top-level fields indexed:
                // where they answer, they answer as the interpreter does.
                let content = bytes::Bytes::from(crate::record::encode_json(&v));
                let Ok(indexed) =
                    crate::record::Record::json(content, crate::record::JsonView::Fields)
                else {
                    panic!("{v} does not read back");
                };
                if let Some(b) = indexed.fields().and_then(|f| e.test_fields(f)) {
                    prop_assert!(
                        matches!(&want, Ok(w) if *w == b),
                        "fields: {} on {}: {} where the interpreter says {:?}", source, v, b, want
                    );
                }
                match native.test(&v) {
                    Some(b) => prop_assert_eq!(want, Ok(b), "{} on {}", source, v),
                    None => prop_assert!(want.is_err(), "{} on {}: {:?}", source, v, want),
                }
            }
        }

        #[test]
        fn only_comparisons_of_fields_and_literals_are_native() {
            for (src, native) in [
                (".temperature > 95", true),
                (r#".status != "error""#, true),
                (r#"(.a == 1 || .b != "x") && .c <= 2.5"#, true),
                (".a == .b", true),
                ("!(.a == 1)", false),
                (".a + 1 > 2", false),
                (r#"%"mqtt.topic" == "x""#, false),
                ("t = .temperature; t > 95", false),
                ("exists(.a)", false),
            ] {
                let e = Expr::compile(src, ExprKind::Condition).expect(src);
                assert_eq!(e.native.is_some(), native, "{src}");
            }
        }
    }

    /// That a condition or a value leaves the record as it was is guaranteed by the types:
    /// `test` and `eval` take `&Value` and `&Attributes`. Assignments to the record are refused
    /// when compiling (above); what is checked here is that a removal, which VRL does not count
    /// as an assignment, changes nothing the rest of the program reads either: the program runs
    /// on the record itself, read-only, and VRL drops the target's refusal of the write.
    #[test]
    fn conditions_cannot_change_the_record() {
        let attrs = Attributes::from([("a".to_owned(), "1".to_owned())]);
        let v = json(r#"{"x":0}"#);
        for src in ["del(.x)\n.x == 0", "del(%a)\n%a == \"1\""] {
            let e = Expr::compile(src, ExprKind::Condition).expect("compiles");
            assert_eq!(e.test(&v, &attrs), Ok(true), "{src}");
            let e = Expr::compile(src, ExprKind::Value).expect("compiles");
            assert_eq!(e.eval(&v, &attrs), Ok(Value::Boolean(true)), "{src}");
        }
    }
}
