//! The JSON record check (`Record::parse_json`, lazy) against the view (`Record::json` eager,
//! `Record::value`, `Record::view`): the check accepts exactly what the view can be built from,
//! and the view re-encodes to JSON that reads back the same. The indexed fields
//! (`JsonView::Fields`) accept the same and read what the view holds.
#![no_main]

use bytes::Bytes;
use flow_core::record::{FieldValue, JsonView, Record, Value, encode_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let content = Bytes::copy_from_slice(data);
    let lazy = Record::parse_json(content.clone());
    let indexed = Record::json(content.clone(), JsonView::Fields);
    let eager = Record::json(content, JsonView::Eager);
    assert_eq!(
        indexed.as_ref().err().map(|(_, e)| e.to_string()),
        eager.as_ref().err().map(|(_, e)| e.to_string()),
        "the index and the view accept the same"
    );
    if let (Ok(indexed), Ok(eager)) = (&indexed, &eager)
        && let Some(Value::Object(view)) = eager.parsed_value()
    {
        let fields = indexed.fields().expect("an object is indexed");
        for (k, v) in view {
            let want = match v {
                Value::Object(_) | Value::Array(_) => FieldValue::Nested,
                v => FieldValue::Value(v.clone()),
            };
            assert_eq!(fields.get(k.as_str()), want, "field {k}");
        }
    }
    match (lazy, eager) {
        (Ok(mut lazy), Ok(mut eager)) => {
            let v = lazy
                .value()
                .expect("checked JSON has a structured view")
                .clone();
            let (e, _) = eager.view().expect("an eager record has its view");
            assert_eq!(&v, e, "the lazy and the eager view agree");
            let back: Value =
                serde_json::from_slice(&encode_json(&v)).expect("the view re-encodes as JSON");
            assert_eq!(back, v, "the view re-encodes to itself");
        }
        (Err(_), Err(_)) => {}
        (lazy, eager) => panic!(
            "the check and the view disagree: check {:?}, view {:?}",
            lazy.err().map(|(_, e)| e.to_string()),
            eager.err().map(|(_, e)| e.to_string())
        ),
    }
});
