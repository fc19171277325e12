//! `http_server` request bodies: the `Content-Type` and the body become records (or a refusal).
//! Input: a byte picking the `Content-Type` (none, one of the accepted ones, or the text up to
//! the first newline) and the view, two bytes of `max_record_size`, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&[u8]>; 6] = [
    None,
    Some(b"application/json"),
    Some(b"application/x-ndjson"),
    Some(b"text/plain; charset=utf-8"),
    Some(b"application/vnd.api+json"),
    Some(b"application/jsonl"),
];

fuzz_target!(|data: &[u8]| {
    let [mode, hi, lo, rest @ ..] = data else {
        return;
    };
    let max_record = usize::from(u16::from_be_bytes([*hi, *lo]));
    let eager = mode & 0x80 != 0;
    let (content_type, body) = match usize::from(mode & 0x7f) {
        i if i < TYPES.len() => (TYPES[i], rest),
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (Some(rest), &b""[..]),
        },
    };
    flow_processors::fuzzing::http_body(content_type, body, max_record, eager);
});
