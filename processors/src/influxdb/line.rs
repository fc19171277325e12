//! InfluxDB line protocol: `measurement,tag=v field=1i,other="s" 1732300000000`.
//!
//! Escaping follows the InfluxDB v2 reference ("Special characters"): in the measurement, commas
//! and spaces are escaped; in tag keys, tag values and field keys, commas, equals signs and
//! spaces; in string field values, double quotes and backslashes. A backslash is itself written
//! as `\\` everywhere, so a name ending in a backslash cannot swallow the separator after it
//! (InfluxDB and VictoriaMetrics read two backslashes as one). Line protocol has no escape for a
//! line break, so a name, tag or string containing one is refused rather than written wrong.
//! Unicode is written as is (UTF-8).

use std::fmt::Write as _;

/// A field value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FieldValue {
    /// A 64-bit float (finite).
    Float(f64),
    /// A signed 64-bit integer (`42i`).
    Integer(i64),
    /// A boolean.
    Boolean(bool),
    /// A string (`"..."`).
    String(String),
}

/// Why a point cannot be written.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum LineError {
    /// The measurement is empty.
    #[error("the measurement is empty")]
    EmptyMeasurement,
    /// A field key is empty.
    #[error("a field key is empty")]
    EmptyFieldKey,
    /// The point has no field.
    #[error("the point has no field (line protocol needs at least one)")]
    NoFields,
    /// A float is NaN or infinite.
    #[error("field `{0}` is not a finite number")]
    NotFinite(String),
    /// A measurement starting with `#`, which reads as a comment line.
    #[error("the measurement starts with `#`, which line protocol reads as a comment")]
    Comment,
    /// A line break, which line protocol cannot escape.
    #[error("{0} contains a line break, which line protocol cannot carry")]
    LineBreak(String),
}

/// A byte's class in a place of a line ([`classes`]): copied, escaped with a backslash, or a
/// line break, which line protocol cannot carry.
const COPY: u8 = 0;
const ESCAPE: u8 = 1;
const BREAK: u8 = 2;

/// The classes of bytes in a place where the (ASCII) characters in `special` are escaped: those
/// and a backslash take a backslash, a line break is refused.
const fn classes(special: &[u8]) -> [u8; 256] {
    let mut table = [COPY; 256];
    table[b'\n' as usize] = BREAK;
    table[b'\r' as usize] = BREAK;
    table[b'\\' as usize] = ESCAPE;
    let mut i = 0;
    while i < special.len() {
        table[special[i] as usize] = ESCAPE;
        i += 1;
    }
    table
}

/// A line break met by [`escape`].
struct Break;

/// Escape `s` onto `out` as `table` says (see [`classes`]), in one pass that also finds line
/// breaks: then an error, and `out` holds part of `s` (the point is dropped, which takes it
/// back). Text without any such byte, nearly all of it, is copied at once.
fn escape(out: &mut String, s: &str, table: &[u8; 256]) -> Result<(), Break> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|&b| table[usize::from(b)] != COPY) else {
        out.push_str(s);
        return Ok(());
    };
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        match table[usize::from(b)] {
            COPY => {}
            ESCAPE => {
                // `i` is a character boundary: every byte escaped is ASCII.
                out.push_str(&s[from..i]);
                out.push('\\');
                from = i;
            }
            _ => return Err(Break),
        }
    }
    out.push_str(&s[from..]);
    Ok(())
}

/// `f` (finite) as the shortest text that reads back as the same f64, never an exponent, as
/// Rust's `{}` writes it. ryu finds shortest digits without `core::fmt` (a third of the sink's
/// encoding went to `write!`); its text is used without an exponent (`71.0` written `71`),
/// `{}` where ryu writes one (below 1e-5, from 1e16). Where two texts are as short, ryu's last
/// digit may differ from `{}`'s (`-1538135742495362.2` for `.3`): both read back as `f`.
fn push_float(out: &mut String, f: f64) {
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(f);
    if text.contains('e') {
        let _ = write!(out, "{f}");
    } else {
        out.push_str(text.strip_suffix(".0").unwrap_or(text));
    }
}

const MEASUREMENT: &[u8; 256] = &classes(b", ");
const KEY: &[u8; 256] = &classes(b",= ");
const STRING: &[u8; 256] = &classes(b"\"");

/// One point written onto a buffer as it is read: [`PointWriter::new`] with the measurement,
/// then [`PointWriter::tag`]s (sorted by key, as InfluxDB recommends: it sorts them anyway, and
/// sorted is faster), then [`PointWriter::field`]s, then [`PointWriter::finish`] with the
/// timestamp. Dropped unfinished (an error on the way), it takes back what it wrote: the
/// buffer is left as it was.
pub(crate) struct PointWriter<'a> {
    out: &'a mut String,
    start: usize,
    fields: usize,
    finished: bool,
}

impl<'a> PointWriter<'a> {
    /// Start a point of `measurement` at the end of `out`.
    pub(crate) fn new(out: &'a mut String, measurement: &str) -> Result<Self, LineError> {
        if measurement.is_empty() {
            return Err(LineError::EmptyMeasurement);
        }
        let start = out.len();
        if escape(out, measurement, MEASUREMENT).is_err() {
            out.truncate(start);
            return Err(LineError::LineBreak("the measurement".to_owned()));
        }
        if measurement.starts_with('#') {
            out.truncate(start);
            return Err(LineError::Comment);
        }
        Ok(Self {
            out,
            start,
            fields: 0,
            finished: false,
        })
    }

    /// A tag (before any field). One with an empty key or value is left out (InfluxDB refuses
    /// them).
    pub(crate) fn tag(&mut self, key: &str, value: &str) -> Result<(), LineError> {
        debug_assert_eq!(self.fields, 0, "tags come before fields");
        let what = || format!("tag `{key}`");
        if key.is_empty() || value.is_empty() {
            let breaks = |s: &str| s.bytes().any(|b| KEY[usize::from(b)] == BREAK);
            if breaks(key) || breaks(value) {
                return Err(LineError::LineBreak(what()));
            }
            return Ok(());
        }
        self.out.push(',');
        escape(self.out, key, KEY).map_err(|Break| LineError::LineBreak(what()))?;
        self.out.push('=');
        escape(self.out, value, KEY).map_err(|Break| LineError::LineBreak(what()))
    }

    /// A field.
    pub(crate) fn field(&mut self, key: &str, value: &FieldValue) -> Result<(), LineError> {
        match value {
            FieldValue::String(s) => self.string_field(key, s),
            FieldValue::Float(f) => {
                self.key(key)?;
                if !f.is_finite() {
                    return Err(LineError::NotFinite(key.to_owned()));
                }
                push_float(self.out, *f);
                Ok(())
            }
            FieldValue::Integer(n) => {
                self.key(key)?;
                self.out.push_str(itoa::Buffer::new().format(*n));
                self.out.push('i');
                Ok(())
            }
            FieldValue::Boolean(b) => {
                self.key(key)?;
                self.out.push_str(if *b { "true" } else { "false" });
                Ok(())
            }
        }
    }

    /// A string field (as [`FieldValue::String`], without owning the text).
    pub(crate) fn string_field(&mut self, key: &str, value: &str) -> Result<(), LineError> {
        self.key(key)?;
        self.out.push('"');
        escape(self.out, value, STRING)
            .map_err(|Break| LineError::LineBreak(format!("field `{key}`")))?;
        self.out.push('"');
        Ok(())
    }

    /// The separator and a field key, checked: not empty, no line break.
    fn key(&mut self, key: &str) -> Result<(), LineError> {
        if key.is_empty() {
            return Err(LineError::EmptyFieldKey);
        }
        self.out.push(if self.fields == 0 { ' ' } else { ',' });
        self.fields += 1;
        escape(self.out, key, KEY)
            .map_err(|Break| LineError::LineBreak(format!("field key `{key}`")))?;
        self.out.push('=');
        Ok(())
    }

    /// End the line, with its timestamp; an error if it has no field.
    pub(crate) fn finish(mut self, timestamp: Option<i64>) -> Result<(), LineError> {
        if self.fields == 0 {
            return Err(LineError::NoFields);
        }
        if let Some(ts) = timestamp {
            self.out.push(' ');
            self.out.push_str(itoa::Buffer::new().format(ts));
        }
        self.out.push('\n');
        self.finished = true;
        Ok(())
    }
}

impl Drop for PointWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

/// Append one point as a line (with its trailing `\n`) to `out`, its tags sorted by key. Tags
/// with an empty key or value are left out (InfluxDB refuses them). On error `out` is left as
/// it was. (The sink writes with [`PointWriter`] as it reads; this is its reference use, for
/// the tests and fuzz targets.)
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn write_point(
    out: &mut String,
    measurement: &str,
    tags: &[(String, String)],
    fields: &[(String, FieldValue)],
    timestamp: Option<i64>,
) -> Result<(), LineError> {
    let mut p = PointWriter::new(out, measurement)?;
    if fields.is_empty() {
        return Err(LineError::NoFields);
    }
    if tags.is_sorted_by(|a, b| a.0 <= b.0) {
        for (k, v) in tags {
            p.tag(k, v)?;
        }
    } else {
        let mut sorted: Vec<&(String, String)> = tags.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in sorted {
            p.tag(k, v)?;
        }
    }
    for (k, v) in fields {
        p.field(k, v)?;
    }
    p.finish(timestamp)
}

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod reference {
    //! A small line-protocol reader written from the InfluxDB reference, independent of the
    //! writer above, for the round-trip property tests.

    use super::FieldValue;

    /// One parsed line.
    #[derive(Debug, PartialEq)]
    pub struct Point {
        pub measurement: String,
        pub tags: Vec<(String, String)>,
        pub fields: Vec<(String, FieldValue)>,
        pub timestamp: Option<i64>,
    }

    /// Read up to an unescaped character of `stops`, unescaping `\x` to `x`.
    fn token(s: &[char], i: &mut usize, stops: &[char]) -> String {
        let mut out = String::new();
        while *i < s.len() && !stops.contains(&s[*i]) {
            if s[*i] == '\\' && *i + 1 < s.len() {
                *i += 1;
            }
            out.push(s[*i]);
            *i += 1;
        }
        out
    }

    pub fn parse(line: &str) -> Result<Point, String> {
        let s: Vec<char> = line.trim_end_matches('\n').chars().collect();
        let mut i = 0;
        let measurement = token(&s, &mut i, &[',', ' ']);
        let mut tags = Vec::new();
        while i < s.len() && s[i] == ',' {
            i += 1;
            let k = token(&s, &mut i, &['=']);
            i += 1;
            let v = token(&s, &mut i, &[',', ' ']);
            tags.push((k, v));
        }
        if i >= s.len() || s[i] != ' ' {
            return Err(format!("no fields at {i}"));
        }
        let mut fields = Vec::new();
        loop {
            i += 1;
            let k = token(&s, &mut i, &['=']);
            i += 1;
            let v = if s.get(i) == Some(&'"') {
                i += 1;
                let mut out = String::new();
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    out.push(s[i]);
                    i += 1;
                }
                i += 1;
                FieldValue::String(out)
            } else {
                let raw = token(&s, &mut i, &[',', ' ']);
                if let Some(n) = raw.strip_suffix('i') {
                    FieldValue::Integer(n.parse().map_err(|e| format!("{raw}: {e}"))?)
                } else if raw == "true" || raw == "false" {
                    FieldValue::Boolean(raw == "true")
                } else {
                    FieldValue::Float(raw.parse().map_err(|e| format!("{raw}: {e}"))?)
                }
            };
            fields.push((k, v));
            if i >= s.len() || s[i] != ',' {
                break;
            }
        }
        let timestamp = if i < s.len() && s[i] == ' ' {
            let rest: String = s[i + 1..].iter().collect();
            Some(rest.parse().map_err(|e| format!("{rest}: {e}"))?)
        } else {
            None
        };
        Ok(Point {
            measurement,
            tags,
            fields,
            timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::reference::{Point, parse};
    use super::*;
    use proptest::prelude::*;

    fn line(
        m: &str,
        tags: &[(String, String)],
        fields: &[(String, FieldValue)],
        ts: Option<i64>,
    ) -> Result<String, LineError> {
        let mut s = String::new();
        write_point(&mut s, m, tags, fields, ts).map(|()| s)
    }

    #[test]
    fn escapes_exactly_as_the_reference_says() {
        let tags = vec![
            ("tag key".to_owned(), "a,b=c d".to_owned()),
            ("t".to_owned(), String::new()),
            ("b\\".to_owned(), "v\\".to_owned()),
        ];
        let fields = vec![
            (
                "f=1".to_owned(),
                FieldValue::String("say \"hi\" \\o/ é".into()),
            ),
            ("n".to_owned(), FieldValue::Integer(-42)),
            ("x".to_owned(), FieldValue::Float(71.0)),
            ("ok".to_owned(), FieldValue::Boolean(true)),
        ];
        let l = line(
            "my meas,ure=ment\\",
            &tags,
            &fields,
            Some(1_732_300_000_000),
        )
        .expect("ok");
        assert_eq!(
            l,
            "my\\ meas\\,ure=ment\\\\,b\\\\=v\\\\,tag\\ key=a\\,b\\=c\\ d \
             f\\=1=\"say \\\"hi\\\" \\\\o/ é\",n=-42i,x=71,ok=true 1732300000000\n"
        );
    }

    #[test]
    fn refuses_what_cannot_be_written() {
        let f = vec![("v".to_owned(), FieldValue::Float(1.0))];
        assert_eq!(line("", &[], &f, None), Err(LineError::EmptyMeasurement));
        assert_eq!(line("m", &[], &[], None), Err(LineError::NoFields));
        let nan = vec![("v".to_owned(), FieldValue::Float(f64::NAN))];
        assert!(matches!(
            line("m", &[], &nan, None),
            Err(LineError::NotFinite(_))
        ));
        assert!(matches!(
            line("a\nb", &[], &f, None),
            Err(LineError::LineBreak(_))
        ));
        let s = vec![("v".to_owned(), FieldValue::String("a\r\nb".into()))];
        assert!(matches!(
            line("m", &[], &s, None),
            Err(LineError::LineBreak(_))
        ));
    }

    /// Text with the characters line protocol treats specially, and unicode.
    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just(' '),
                Just(','),
                Just('='),
                Just('"'),
                Just('\\'),
                Just('é'),
                Just('😀'),
                Just('\u{200b}'),
                proptest::char::range('a', 'z'),
                any::<char>().prop_filter("no line breaks", |c| *c != '\n' && *c != '\r'),
            ],
            1..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn field_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<i64>().prop_map(FieldValue::Integer),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(FieldValue::Float),
            any::<bool>().prop_map(FieldValue::Boolean),
            text().prop_map(FieldValue::String),
            Just(FieldValue::String(String::new())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the names, tags and values, the reference reader gets back exactly what was
        /// written (tags sorted by key, as the writer sorts them).
        #[test]
        fn round_trips(
            m in text(),
            tags in proptest::collection::btree_map(text(), text(), 0..4),
            fields in proptest::collection::btree_map(text(), field_value(), 1..4),
            ts in proptest::option::of(any::<i64>()),
        ) {
            prop_assume!(!m.starts_with('#'));
            let tags: Vec<(String, String)> = tags.into_iter().collect();
            let fields: Vec<(String, FieldValue)> = fields.into_iter().collect();
            let l = line(&m, &tags, &fields, ts).expect("writable");
            prop_assert_eq!(l.matches('\n').count(), 1);
            let p = parse(&l).map_err(|e| TestCaseError::fail(format!("{e}: {l:?}")))?;
            prop_assert_eq!(p, Point { measurement: m, tags, fields, timestamp: ts });
        }

        /// Whatever its bits, a float is written as text that reads back as itself, as short
        /// as `{}`'s, without an exponent.
        #[test]
        fn floats_read_back_as_themselves_as_short_as_display_writes_them(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            prop_assume!(f.is_finite());
            same_as_display(f).map_err(TestCaseError::fail)?;
        }
    }

    /// [`push_float`]'s text for `f` reads back as `f` (its sign too), is as long as `{}`'s,
    /// and has no exponent.
    fn same_as_display(f: f64) -> Result<(), String> {
        let mut out = String::new();
        push_float(&mut out, f);
        let display = format!("{f}");
        let back: f64 = out.parse().map_err(|e| format!("{out:?}: {e}"))?;
        if back.to_bits() != f.to_bits() || out.len() != display.len() || out.contains('e') {
            return Err(format!("{out:?} for {f:e}, `{{}}` writes {display:?}"));
        }
        Ok(())
    }

    /// The same at the edges: zero and its sign, whole numbers, where ryu turns to exponents
    /// (1e-5, 1e16), the smallest and largest floats, the sensors' readings (exactly as `{}`
    /// writes them), and one whose last digit ryu chooses differently.
    #[test]
    fn floats_at_the_edges_read_back_as_themselves() {
        let edges = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            71.0,
            72.3,
            0.1,
            1e-5,
            9.99e-6,
            1e-6,
            1e15,
            9_999_999_999_999_998.0,
            1e16,
            1.5e16,
            1e21,
            123_456_789.125,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            f64::from_bits(14_057_383_380_365_928_969),
        ];
        for f in edges {
            same_as_display(f).unwrap_or_else(|e| panic!("{e}"));
        }
        for f in [0.0, -0.0, 71.0, 72.3, 66.0, 101.25, 1e-5, 1e15] {
            let mut out = String::new();
            push_float(&mut out, f);
            assert_eq!(out, format!("{f}"));
        }
    }
}
