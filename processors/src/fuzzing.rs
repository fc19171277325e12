//! Entry points for the fuzz targets in `fuzz/` (built with the `fuzzing` feature only): thin
//! public wrappers over crate-private decoders, each checking what its caller relies on. A
//! broken guarantee panics, which the fuzzer reports as a crash.

use bytes::Bytes;
use flow_core::record::{JsonView, Record, Value};

use crate::http::{BodyRules, BodyType};
use crate::lines::{Decoded, Decoder, Format, is_blank, split_lines};
use crate::template::{Placeholders, Template};

fn view(eager: bool) -> JsonView {
    if eager {
        JsonView::Eager
    } else {
        JsonView::Lazy
    }
}

/// Decode `input` as the `file` and `stdin` sources do: split into lines, skip blank ones,
/// decode each. A JSON line accepted by the check must have a structured view.
pub fn decode_lines(format: Format, eager: bool, input: &[u8]) {
    let input = Bytes::copy_from_slice(input);
    let mut decoder = Decoder::new(format, view(eager));
    let mut taken = 0;
    for (line, n) in split_lines(&input) {
        taken += n;
        assert!(!line.contains(&b'\n'), "a line holds no newline");
        if is_blank(&line) {
            continue;
        }
        match decoder.decode(line) {
            Decoded::Record(mut r) => {
                let v = r.value().expect("a decoded record has a structured view");
                if format == Format::Csv {
                    assert!(matches!(v, Value::Object(_)), "a CSV row is an object");
                }
            }
            Decoded::Skip => assert_eq!(format, Format::Csv, "only the CSV header is skipped"),
            Decoded::Error(_, message) => assert!(!message.is_empty()),
        }
    }
    assert_eq!(taken, input.len() as u64, "the lines take the whole input");
}

/// Parse `template` (with or without time parts and `{uuid}`), and render it over a record
/// whose content is `record` (JSON or not) with `attributes`, at `time_ms`.
pub fn template(
    template: &str,
    all_placeholders: bool,
    record: &[u8],
    attributes: &[(String, String)],
    time_ms: i64,
) {
    let allowed = if all_placeholders {
        Placeholders::FieldsTimeUuid
    } else {
        Placeholders::Fields
    };
    let Ok(t) = Template::parse(template, allowed) else {
        return;
    };
    if let Some(constant) = t.constant() {
        assert_eq!(constant, template, "a constant template renders as itself");
    }
    let _ = t.sample();
    let mut r = Record::from_bytes(Bytes::copy_from_slice(record));
    for (k, v) in attributes {
        r.set_attribute(k.clone(), v.clone());
    }
    let _ = t.render(&mut r, time_ms, Ok);
    if let Ok(v) = serde_json::from_slice::<Value>(record) {
        for unit in [crate::window::TimeUnit::Ms, crate::window::TimeUnit::S] {
            let _ = crate::template::time_ms(&v, unit);
        }
    }
}

/// Write one line-protocol point and read it back with the independent reference reader: a
/// point that is written must read back exactly (tags without an empty key or value, sorted
/// by key, as the writer sorts them); one that is refused leaves the output as it was.
pub fn influx_round_trip(
    measurement: &str,
    tags: &[(String, String)],
    fields: &[(String, InfluxField)],
    timestamp: Option<i64>,
) {
    use crate::influxdb::line::{FieldValue, reference, write_point};
    let fields: Vec<(String, FieldValue)> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                InfluxField::Float(f) => FieldValue::Float(*f),
                InfluxField::Integer(i) => FieldValue::Integer(*i),
                InfluxField::Boolean(b) => FieldValue::Boolean(*b),
                InfluxField::String(s) => FieldValue::String(s.clone()),
            };
            (k.clone(), v)
        })
        .collect();
    let mut out = String::from("kept");
    if write_point(&mut out, measurement, tags, &fields, timestamp).is_err() {
        assert_eq!(out, "kept", "a refused point writes nothing");
        return;
    }
    let line = &out["kept".len()..];
    assert_eq!(
        line.matches('\n').count(),
        1,
        "one point, one line: {line:?}"
    );
    let p = reference::parse(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let mut expected: Vec<(String, String)> = tags
        .iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .cloned()
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(p.measurement, measurement, "{line:?}");
    assert_eq!(p.tags, expected, "{line:?}");
    assert_eq!(p.fields, fields, "{line:?}");
    assert_eq!(p.timestamp, timestamp, "{line:?}");
}

/// A line-protocol field value (public, for the fuzz target to build).
#[derive(Clone, Debug)]
pub enum InfluxField {
    /// A float.
    Float(f64),
    /// An integer.
    Integer(i64),
    /// A boolean.
    Boolean(bool),
    /// A string.
    String(String),
}

/// Encode a record (its content `record`, JSON or not) as `influxdb_sink` does, with
/// measurement `{m}` and tags `t` and `u`: a line that is written must read back.
pub fn influx_encode(record: &[u8]) {
    if let Ok(line) = crate::influxdb::encode_for_fuzzing(record) {
        assert_eq!(
            line.matches('\n').count(),
            1,
            "one record, one line: {line:?}"
        );
        crate::influxdb::line::reference::parse(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
}

/// Read a pushed `http_server` body as the server does, `content_type` as its `Content-Type`
/// header: every record it accepts is a JSON object no larger than `max_record`.
pub fn http_body(content_type: Option<&[u8]>, body: &[u8], max_record: usize, eager: bool) {
    let Ok(kind) = BodyType::of(content_type) else {
        return;
    };
    let rules = BodyRules {
        kind,
        max_record,
        max_record_size: bytesize::ByteSize::b(max_record as u64),
        view: view(eager),
    };
    if let Ok(records) = rules.parse(&Bytes::copy_from_slice(body)) {
        // An empty array is an empty batch, accepted as such (nothing to do); any other
        // accepted body has records.
        let empty_array = matches!(
            serde_json::from_slice::<serde_json::Value>(body),
            Ok(serde_json::Value::Array(a)) if a.is_empty()
        );
        assert!(
            empty_array || !records.is_empty(),
            "an accepted body has records"
        );
        for mut r in records {
            assert!(r.content().len() <= max_record, "a record over max_record");
            let v = r.value().expect("an accepted record has a structured view");
            assert!(
                matches!(v, Value::Object(_)),
                "an accepted record is an object"
            );
        }
    }
}
