//! Templates over a record, shared by the sinks that name things after their records
//! (`influxdb_sink` measurements, `s3_sink` object keys).
//!
//! `{name}` is the record's field `name` (`{a.b}` a nested one) or, when there is no such
//! field, its attribute `name`. Where the sink allows it, `{yyyy}`, `{MM}`, `{dd}`, `{HH}`,
//! `{mm}` and `{ss}` are the parts of the record's event time (UTC), and `{uuid}` a fresh
//! random id (one per object).

use chrono::{DateTime, Datelike, Timelike, Utc};
use flow_core::record::{FieldValue, FieldsRef, Record, Value};

/// A parsed template: literal text and placeholders.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Field(String),
    Time(TimePart),
    Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum TimePart {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

/// Which placeholders besides fields a template may use.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Placeholders {
    /// Fields and attributes only.
    Fields,
    /// Fields, attributes, event-time parts and `{uuid}`.
    FieldsTimeUuid,
}

/// What a rendered `{uuid}` is replaced with until the object is opened.
pub(crate) const UUID_MARK: &str = "{uuid}";

impl Template {
    /// Parse `template`; an error says what is wrong with it.
    pub fn parse(template: &str, allowed: Placeholders) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let (text, after) = rest.split_at(open);
            if text.contains('}') {
                return Err(format!("`{template}`: unmatched `}}`"));
            }
            if !text.is_empty() {
                parts.push(Part::Text(text.to_owned()));
            }
            let close = after
                .find('}')
                .ok_or_else(|| format!("`{template}`: unclosed `{{`"))?;
            let name = &after[1..close];
            if name.is_empty() || name.contains('{') {
                return Err(format!("`{template}`: empty or nested `{{}}`"));
            }
            let special = match name {
                "yyyy" => Some(Part::Time(TimePart::Year)),
                "MM" => Some(Part::Time(TimePart::Month)),
                "dd" => Some(Part::Time(TimePart::Day)),
                "HH" => Some(Part::Time(TimePart::Hour)),
                "mm" => Some(Part::Time(TimePart::Minute)),
                "ss" => Some(Part::Time(TimePart::Second)),
                "uuid" => Some(Part::Uuid),
                _ => None,
            };
            match (special, allowed) {
                (Some(p), Placeholders::FieldsTimeUuid) => parts.push(p),
                (Some(_), Placeholders::Fields) => {
                    return Err(format!(
                        "`{template}`: `{{{name}}}` is not available here (only fields and attributes)"
                    ));
                }
                (None, _) => parts.push(Part::Field(name.to_owned())),
            }
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{template}`: unmatched `}}`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The template's text when it has no placeholders (the same for every record).
    pub fn constant(&self) -> Option<String> {
        match &self.parts[..] {
            [] => Some(String::new()),
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }

    /// Whether a placeholder may read a record field.
    pub fn has_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The fields (or attributes) its placeholders name.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Whether the template has a `{uuid}`.
    pub fn has_uuid(&self) -> bool {
        self.parts.contains(&Part::Uuid)
    }

    /// The template with every field replaced by `x` and the time parts by the epoch (checks).
    pub fn sample(&self) -> String {
        self.render_with(0, |_| Ok("x".to_owned()))
            .unwrap_or_default()
    }

    /// Render for a record whose event time is `time_ms`; `{uuid}` is left as [`UUID_MARK`].
    /// `check` vets (and may rewrite) each field value.
    pub fn render(
        &self,
        record: &mut Record,
        time_ms: i64,
        check: impl Fn(String) -> Result<String, String>,
    ) -> Result<String, String> {
        // Parse the JSON view once, if a placeholder may need it (content that is not JSON has
        // attributes only).
        if self.has_fields() {
            let _ = record.value();
        }
        let value = record.parsed_value();
        let attributes = record.attributes();
        self.render_with(time_ms, |name| {
            field_or_attribute(value.and_then(|v| lookup(v, name)), attributes, name)
                .and_then(|v| check(v).map_err(|e| format!("`{{{name}}}`: {e}")))
        })
    }

    /// [`Template::render`] from the top-level fields a source indexed (see
    /// [`flow_core::record::JsonView::Fields`]), for a template whose placeholders all name
    /// top-level fields: the same text, without the record's structured view. `None` when a
    /// placeholder names a nested object or array (the view says what to make of it).
    pub fn render_indexed(
        &self,
        fields: FieldsRef<'_>,
        attributes: &flow_core::record::Attributes,
        time_ms: i64,
    ) -> Option<Result<String, String>> {
        let mut nested = false;
        let out = self.render_with(time_ms, |name| match fields.get(name) {
            FieldValue::Nested => {
                nested = true;
                Err(String::new())
            }
            FieldValue::Missing => field_or_attribute(None, attributes, name),
            FieldValue::Value(v) => field_or_attribute(Some(&v), attributes, name),
        });
        (!nested).then_some(out)
    }

    fn render_with(
        &self,
        time_ms: i64,
        mut field: impl FnMut(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        let time = || {
            DateTime::<Utc>::from_timestamp_millis(time_ms)
                .ok_or_else(|| format!("event time {time_ms} is out of range"))
        };
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(name) => out.push_str(&field(name)?),
                Part::Uuid => out.push_str(UUID_MARK),
                Part::Time(t) => {
                    let d = time()?;
                    let s = match t {
                        TimePart::Year => format!("{:04}", d.year()),
                        TimePart::Month => format!("{:02}", d.month()),
                        TimePart::Day => format!("{:02}", d.day()),
                        TimePart::Hour => format!("{:02}", d.hour()),
                        TimePart::Minute => format!("{:02}", d.minute()),
                        TimePart::Second => format!("{:02}", d.second()),
                    };
                    out.push_str(&s);
                }
            }
        }
        Ok(out)
    }
}

/// The field at a dotted `path` of `v`.
pub(crate) fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = v;
    for key in path.split('.') {
        v = v.as_object()?.get(key)?;
    }
    Some(v)
}

/// A scalar as text: strings as they are, numbers and booleans as JSON writes them.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Bytes(_) | Value::String(_) => v.to_str_lossy().map(|s| s.into_owned()),
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => Some(v.to_string()),
        _ => None,
    }
}

/// The record's field `name` (`found`, when it has one), else its attribute `name`, as text.
fn field_or_attribute(
    found: Option<&Value>,
    attributes: &flow_core::record::Attributes,
    name: &str,
) -> Result<String, String> {
    if let Some(v) = found {
        return scalar_text(v).ok_or_else(|| {
            format!(
                "`{{{name}}}`: the field is not a string, number or boolean ({})",
                v.kind_str()
            )
        });
    }
    attributes
        .get(name)
        .cloned()
        .ok_or_else(|| format!("`{{{name}}}`: the record has no field or attribute `{name}`"))
}

/// A numeric or textual time as epoch milliseconds: a number in `unit`, an RFC 3339 string or a
/// timestamp. A time that is not a date chrono can represent (about ±262,000 years), or whose
/// conversion to milliseconds would overflow, is an error, never clamped or wrapped.
pub(crate) fn time_ms(v: &Value, unit: crate::window::TimeUnit) -> Result<i64, String> {
    use crate::window::TimeUnit;
    let out_of_range = |shown: &dyn std::fmt::Display| {
        format!(
            "time `{shown}` is out of range: as epoch {}, it is not a date between the years \
             {} and {}",
            match unit {
                TimeUnit::Ms => "milliseconds",
                TimeUnit::S => "seconds",
            },
            DateTime::<Utc>::MIN_UTC.year(),
            DateTime::<Utc>::MAX_UTC.year()
        )
    };
    let ms = match v {
        Value::Integer(i) => match unit {
            TimeUnit::Ms => Some(*i),
            TimeUnit::S => i.checked_mul(1000),
        }
        .ok_or_else(|| out_of_range(i))?,
        Value::Float(f) => {
            let f = f.into_inner();
            if !f.is_finite() {
                return Err(format!("time `{f}` is not a finite number"));
            }
            let ms = match unit {
                TimeUnit::Ms => f,
                TimeUnit::S => f * 1000.0,
            };
            // `as` would saturate silently. `i64::MIN` is exactly -2^63 as a float, and 2^63 is
            // the first float past `i64::MAX`.
            let limit = -(i64::MIN as f64);
            if !(-limit..limit).contains(&ms) {
                return Err(out_of_range(&format!("{f:?}")));
            }
            ms as i64
        }
        Value::Timestamp(t) => t.timestamp_millis(),
        Value::Bytes(_) | Value::String(_) => {
            let s = v.to_str_lossy().unwrap_or_default();
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("time `{s}` is not RFC 3339: {e}"))?
        }
        other => {
            return Err(format!(
                "time is a {}, not a number or a string",
                other.kind_str()
            ));
        }
    };
    // The range chrono can represent, as constants: no date is built per record.
    const MIN_MS: i64 = DateTime::<Utc>::MIN_UTC.timestamp_millis();
    const MAX_MS: i64 = DateTime::<Utc>::MAX_UTC.timestamp_millis();
    if !(MIN_MS..=MAX_MS).contains(&ms) {
        return Err(out_of_range(&value_text(v)));
    }
    Ok(ms)
}

/// A number as written (for messages).
fn value_text(v: &Value) -> String {
    match v {
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => format!("{:?}", f.into_inner()),
        other => other.to_string(),
    }
}

/// The current time in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A random (version 4) UUID.
pub(crate) fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rec;

    #[test]
    fn fields_attributes_time_parts_and_uuid() {
        let t = Template::parse(
            "{device}/dt={yyyy}-{MM}-{dd}/hour={HH}/{m.k}-{src}-part-{uuid}.jsonl",
            Placeholders::FieldsTimeUuid,
        )
        .expect("parses");
        assert!(t.has_uuid());
        let mut r = rec(r#"{"device":"car-1","m":{"k":7}}"#);
        r.set_attribute("src", "a");
        // 2024-11-22T18:26:40.123Z
        let key = t.render(&mut r, 1_732_300_000_123, Ok).expect("renders");
        assert_eq!(key, "car-1/dt=2024-11-22/hour=18/7-a-part-{uuid}.jsonl");
        let mut r = rec(r#"{"x":1}"#);
        let err = t.render(&mut r, 0, Ok).expect_err("missing");
        assert!(err.contains("no field or attribute `device`"), "{err}");
        let mut r = rec(r#"{"device":{"a":1}}"#);
        assert!(t.render(&mut r, 0, Ok).is_err());
        assert!(Template::parse("{yyyy}", Placeholders::Fields).is_err());
        assert!(Template::parse("a{", Placeholders::Fields).is_err());
        assert!(Template::parse("a}", Placeholders::Fields).is_err());
        assert!(Template::parse("{}", Placeholders::Fields).is_err());
        let t = Template::parse("engine", Placeholders::Fields).expect("ok");
        assert_eq!(t.sample(), "engine");
    }

    #[test]
    fn uuids_are_v4_and_differ() {
        let (a, b) = (uuid_v4(), uuid_v4());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
