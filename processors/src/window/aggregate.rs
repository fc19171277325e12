//! Aggregate functions of `window_aggregate`: `count()`, `sum(.x)`, `min(.x)`, `max(.x)`,
//! `avg(.x)`, `first(.x)`, `last(.x)`, `count_distinct(.x)`, `p50(.x)`, `p90(.x)`, `p95(.x)`,
//! `p99(.x)`. The argument is a VRL expression evaluated on each record.

use std::collections::BTreeSet;

use flow_core::expr::{CompileError, Expr, ExprKind};
use flow_core::record::Value;
use serde::{Deserialize, Serialize};
use tdigest::TDigest;
use vrl::compiler::prelude::NotNan;

/// Which function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Func {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    First,
    Last,
    CountDistinct,
    Percentile(f64),
}

const FUNCS: &[(&str, Func)] = &[
    ("count", Func::Count),
    ("sum", Func::Sum),
    ("min", Func::Min),
    ("max", Func::Max),
    ("avg", Func::Avg),
    ("first", Func::First),
    ("last", Func::Last),
    ("count_distinct", Func::CountDistinct),
    ("p50", Func::Percentile(0.50)),
    ("p90", Func::Percentile(0.90)),
    ("p95", Func::Percentile(0.95)),
    ("p99", Func::Percentile(0.99)),
];

/// A parsed aggregate: `name(argument)`.
#[derive(Clone, Debug)]
pub struct AggSpec {
    pub func: Func,
    pub arg: Option<Expr>,
}

/// Why an aggregate did not parse.
#[derive(Debug, thiserror::Error)]
pub enum AggError {
    #[error("expected `function(expression)`, like `avg(.temperature)` or `count()`")]
    Shape,
    #[error("unknown aggregate function `{0}`")]
    Unknown(String, Option<String>),
    #[error("`{0}` takes an expression, like `{0}(.field)`")]
    MissingArg(String),
    #[error("{0}")]
    Expr(CompileError, usize),
}

impl AggSpec {
    /// Parse `name(argument)`. Only the outer call is split here; the argument is VRL.
    pub fn parse(text: &str) -> Result<Self, AggError> {
        let text = text.trim();
        let (name, rest) = text.split_once('(').ok_or(AggError::Shape)?;
        let arg = rest.strip_suffix(')').ok_or(AggError::Shape)?.trim();
        let name = name.trim();
        let func = FUNCS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let help = flow_core::spec::did_you_mean(name, FUNCS.iter().map(|(n, _)| *n));
                AggError::Unknown(name.to_owned(), help)
            })?;
        let arg = match (func, arg.is_empty()) {
            (Func::Count, true) => None,
            (_, true) => return Err(AggError::MissingArg(name.to_owned())),
            (_, false) => {
                let offset = text.len() - rest.len();
                let e =
                    Expr::compile(arg, ExprKind::Value).map_err(|e| AggError::Expr(e, offset))?;
                Some(e)
            }
        };
        Ok(Self { func, arg })
    }

    /// Whether [`Acc::add`] takes `v`: checked for every aggregate before any changes, so a
    /// record with one bad argument is counted nowhere (not by `count()` before it).
    pub fn check(&self, v: &Value) -> Result<(), TypeError> {
        let func = match self.func {
            Func::Sum => "sum",
            Func::Min => "min",
            Func::Max => "max",
            Func::Avg => "avg",
            Func::Percentile(_) => "a percentile",
            Func::Count | Func::First | Func::Last | Func::CountDistinct => return Ok(()),
        };
        if matches!(v, Value::Null) || Num::of(v).is_some() {
            return Ok(());
        }
        Err(TypeError {
            func,
            got: v.kind_str().to_owned(),
        })
    }

    /// A fresh accumulator.
    pub fn start(&self) -> Acc {
        match self.func {
            Func::Count => Acc::Count(0),
            Func::Sum => Acc::Sum(Num::None),
            Func::Min => Acc::Min(Num::None),
            Func::Max => Acc::Max(Num::None),
            Func::Avg => Acc::Avg { sum: 0.0, n: 0 },
            Func::First => Acc::First(None),
            Func::Last => Acc::Last(None),
            Func::CountDistinct => Acc::Distinct(BTreeSet::new()),
            Func::Percentile(q) => Acc::Quantile {
                q,
                digest: Box::new(TDigest::new_with_size(100)),
                buffer: Box::default(),
            },
        }
    }
}

/// A running number that stays an integer while every input is one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Num {
    None,
    Int(i64),
    Float(f64),
}

impl Num {
    fn of(v: &Value) -> Option<Num> {
        match v {
            Value::Integer(i) => Some(Num::Int(*i)),
            Value::Float(f) => Some(Num::Float(f.into_inner())),
            _ => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::None => 0.0,
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn combine(
        self,
        other: Num,
        int: fn(i64, i64) -> Option<i64>,
        float: fn(f64, f64) -> f64,
    ) -> Num {
        match (self, other) {
            (Num::None, x) | (x, Num::None) => x,
            (Num::Int(a), Num::Int(b)) => {
                int(a, b).map_or(Num::Float(float(a as f64, b as f64)), Num::Int)
            }
            (a, b) => Num::Float(float(a.as_f64(), b.as_f64())),
        }
    }

    fn value(self) -> Value {
        match self {
            Num::None => Value::Null,
            Num::Int(i) => Value::from(i),
            Num::Float(f) => float(f),
        }
    }
}

fn float(f: f64) -> Value {
    // NaN cannot be represented (and no input produces it); it becomes null.
    NotNan::new(f).map_or(Value::Null, Value::from)
}

/// The state of one aggregate in one window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Acc {
    Count(u64),
    Sum(Num),
    Min(Num),
    Max(Num),
    Avg {
        sum: f64,
        n: u64,
    },
    /// Boxed, as the quantile's parts: a window's accumulators sit inline in its state, as
    /// small as the common ones (a value is 40 bytes, a digest 64). Boxes serialize as what
    /// they hold: checkpoints are the same.
    First(Option<Box<Value>>),
    Last(Option<Box<Value>>),
    Distinct(BTreeSet<String>),
    Quantile {
        q: f64,
        digest: Box<TDigest>,
        buffer: Box<Vec<f64>>,
    },
}

// A window holds its accumulators inline: keep them small (with a million keys the open
// windows are hundreds of megabytes, and every record's window a cache miss; 48 bytes before).
const _: () = assert!(std::mem::size_of::<Acc>() <= 32);

/// The argument was not of a type the function takes.
#[derive(Debug, thiserror::Error)]
#[error("{func} needs a number, got {got}")]
pub struct TypeError {
    func: &'static str,
    got: String,
}

impl Acc {
    /// Add one record's argument (`Value::Null` for `count()`). Nulls (missing fields) are
    /// skipped, as in SQL.
    pub fn add(&mut self, v: &Value) -> Result<(), TypeError> {
        if matches!(v, Value::Null) && !matches!(self, Acc::Count(_)) {
            return Ok(());
        }
        // The error only when there is one: its text is an allocation (two per record, for
        // the sensors flow's `avg` and `max`, when it was made up front).
        let num = |func: &'static str| {
            Num::of(v).ok_or_else(|| TypeError {
                func,
                got: v.kind_str().to_owned(),
            })
        };
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Sum(s) => *s = s.combine(num("sum")?, i64::checked_add, |a, b| a + b),
            Acc::Min(m) => *m = m.combine(num("min")?, |a, b| Some(a.min(b)), f64::min),
            Acc::Max(m) => *m = m.combine(num("max")?, |a, b| Some(a.max(b)), f64::max),
            Acc::Avg { sum, n } => {
                *sum += num("avg")?.as_f64();
                *n += 1;
            }
            Acc::First(f) => {
                if f.is_none() {
                    *f = Some(Box::new(v.clone()));
                }
            }
            Acc::Last(l) => *l = Some(Box::new(v.clone())),
            Acc::Distinct(set) => {
                set.insert(
                    String::from_utf8_lossy(&flow_core::record::encode_json(v)).into_owned(),
                );
            }
            Acc::Quantile { digest, buffer, .. } => {
                buffer.push(num("a percentile")?.as_f64());
                if buffer.len() >= 512 {
                    let values = std::mem::take(&mut **buffer);
                    **digest = digest.merge_unsorted(values);
                }
            }
        }
        Ok(())
    }

    /// Fold another accumulator of the same function into this one (session windows merge).
    /// `other` is the later of the two for `first` and `last`.
    pub fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a), Acc::Sum(b)) => *a = a.combine(b, i64::checked_add, |x, y| x + y),
            (Acc::Min(a), Acc::Min(b)) => *a = a.combine(b, |x, y| Some(x.min(y)), f64::min),
            (Acc::Max(a), Acc::Max(b)) => *a = a.combine(b, |x, y| Some(x.max(y)), f64::max),
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Acc::First(a), Acc::First(b)) if a.is_none() => *a = b,
            (Acc::Last(a), Acc::Last(b)) if b.is_some() => *a = b,
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(b),
            (
                Acc::Quantile { digest, buffer, .. },
                Acc::Quantile {
                    digest: d2,
                    buffer: b2,
                    ..
                },
            ) => {
                buffer.extend(*b2);
                **digest = TDigest::merge_digests(vec![*std::mem::take(digest), *d2]);
            }
            // Same specs on both sides: other pairs do not occur.
            _ => {}
        }
    }

    /// The aggregate's value.
    pub fn finish(&mut self) -> Value {
        match self {
            Acc::Count(n) => Value::from(*n),
            Acc::Sum(s) | Acc::Min(s) | Acc::Max(s) => s.value(),
            Acc::Avg { sum, n } => {
                if *n == 0 {
                    Value::Null
                } else {
                    float(*sum / *n as f64)
                }
            }
            Acc::First(v) | Acc::Last(v) => v.as_deref().cloned().unwrap_or(Value::Null),
            Acc::Distinct(set) => Value::from(set.len() as u64),
            Acc::Quantile { q, digest, buffer } => {
                if !buffer.is_empty() {
                    let values = std::mem::take(&mut **buffer);
                    **digest = digest.merge_unsorted(values);
                }
                if digest.count() == 0.0 {
                    Value::Null
                } else {
                    float(digest.estimate_quantile(*q))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Boxing the large accumulators left checkpoints as they were: each encodes (CBOR, as
    /// the window's snapshot does) to the bytes of the unboxed accumulator of before, and
    /// reads back from them.
    #[test]
    fn boxed_accumulators_keep_the_checkpoint_format() {
        #[derive(Serialize)]
        enum Before {
            First(Option<Value>),
            Last(Option<Value>),
            Quantile {
                q: f64,
                digest: Box<TDigest>,
                buffer: Vec<f64>,
            },
        }
        fn cbor(v: &impl Serialize) -> Vec<u8> {
            let mut out = Vec::new();
            ciborium::into_writer(v, &mut out).expect("encodes");
            out
        }
        let v = Value::from("car-0001");
        let digest = TDigest::new_with_size(100).merge_unsorted(vec![1.0, 2.0, 3.0]);
        let pairs: [(Acc, Before); 4] = [
            (
                Acc::First(Some(Box::new(v.clone()))),
                Before::First(Some(v.clone())),
            ),
            (Acc::Last(None), Before::Last(None)),
            (
                Acc::Last(Some(Box::new(Value::from(7)))),
                Before::Last(Some(Value::from(7))),
            ),
            (
                Acc::Quantile {
                    q: 0.5,
                    digest: Box::new(digest.clone()),
                    buffer: Box::new(vec![4.0, 5.0]),
                },
                Before::Quantile {
                    q: 0.5,
                    digest: Box::new(digest),
                    buffer: vec![4.0, 5.0],
                },
            ),
        ];
        for (now, before) in pairs {
            let bytes = cbor(&before);
            assert_eq!(cbor(&now), bytes);
            let mut back: Acc = ciborium::from_reader(bytes.as_slice()).expect("reads");
            assert_eq!(back.finish(), now.clone().finish());
        }
    }

    fn run(spec: &str, inputs: &[&str]) -> Value {
        let s = AggSpec::parse(spec).expect("parses");
        let mut acc = s.start();
        for i in inputs {
            let v: Value = serde_json::from_str(i).expect("json");
            let arg = match &s.arg {
                Some(e) => e.eval(&v, &Default::default()).expect("eval"),
                None => Value::Null,
            };
            acc.add(&arg).expect("adds");
        }
        acc.finish()
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).expect("json")
    }

    #[test]
    fn every_function_against_hand_computed_results() {
        let xs = [
            r#"{"x":3}"#,
            r#"{"x":1}"#,
            r#"{"x":2}"#,
            r#"{"y":9}"#,
            r#"{"x":3}"#,
        ];
        assert_eq!(run("count()", &xs), json("5"));
        assert_eq!(run("sum(.x)", &xs), json("9"));
        assert_eq!(run("min(.x)", &xs), json("1"));
        assert_eq!(run("max(.x)", &xs), json("3"));
        assert_eq!(run("avg(.x)", &xs), json("2.25"));
        assert_eq!(run("first(.x)", &xs), json("3"));
        assert_eq!(run("last(.x)", &xs), json("3"));
        assert_eq!(run("count_distinct(.x)", &xs), json("3"));
        assert_eq!(run("max(.x * 2)", &[r#"{"x":3}"#, r#"{"x":1}"#]), json("6"));
        assert_eq!(run("sum(.f)", &[r#"{"f":1}"#, r#"{"f":0.5}"#]), json("1.5"));
    }

    #[test]
    fn percentiles_from_a_digest() {
        let xs: Vec<String> = (1..=1000).map(|i| format!(r#"{{"x":{i}}}"#)).collect();
        let xs: Vec<&str> = xs.iter().map(String::as_str).collect();
        for (f, want) in [("p50", 500.0), ("p95", 950.0), ("p99", 990.0)] {
            let got = run(&format!("{f}(.x)"), &xs);
            let Value::Float(got) = got else {
                panic!("{f}: {got:?}")
            };
            assert!((got.into_inner() - want).abs() <= 5.0, "{f}: {got}");
        }
    }

    #[test]
    fn bad_specs_are_errors() {
        assert!(matches!(AggSpec::parse("avg"), Err(AggError::Shape)));
        assert!(matches!(
            AggSpec::parse("avrg(.x)"),
            Err(AggError::Unknown(_, Some(_)))
        ));
        assert!(matches!(
            AggSpec::parse("avg()"),
            Err(AggError::MissingArg(_))
        ));
        assert!(matches!(
            AggSpec::parse("avg(.x +)"),
            Err(AggError::Expr(..))
        ));
        let s = AggSpec::parse("sum(.x)").expect("parses");
        assert!(s.start().add(&Value::from("nine")).is_err());
    }
}
