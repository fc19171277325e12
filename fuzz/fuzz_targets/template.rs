//! Templates (`influxdb_sink` measurements, `s3_sink` keys): parse and render over a record.
//! Input: a flags byte (bit 0: time parts and `{uuid}` allowed; bit 1: an event time out of
//! chrono's range), the template up to the first newline, then the record's content.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (template, record) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let Ok(template) = std::str::from_utf8(template) else {
        return;
    };
    let time_ms = if flags & 2 != 0 {
        i64::MAX - i64::from(flags)
    } else {
        1_732_300_000_123
    };
    let attributes = [("source".to_owned(), "fuzz".to_owned())];
    flow_processors::fuzzing::template(template, flags & 1 != 0, record, &attributes, time_ms);
});
