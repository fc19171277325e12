//! The largest record a source takes: `max_record_size`, one setting with one default for every
//! source (`file`, `stdin`, `mqtt_source`, `kafka_source`, `http_poll`, `http_server`).
//!
//! A record over the limit is not made: the source sends a record holding only the first
//! [`KEPT`] bytes of its content to `failure`, with an `error.message` that says how large it
//! was (`http_server`, which can tell its client, answers `413` instead). Line input does not
//! even hold such a line in memory: it skips to its end (see [`crate::lines`]).

use bytes::Bytes;
use bytesize::ByteSize;
use flow_core::processor::ConfigError;
use flow_core::record::{Record, RecordId};

/// The default `max_record_size`: 1 MiB, as Kafka's default largest message.
pub(crate) fn default_max_record_size() -> ByteSize {
    ByteSize::mib(1)
}

/// How much of an oversized record's content the failed record keeps.
pub(crate) const KEPT: usize = 1024;

/// Check a configured `max_record_size` (at least 1 byte, at most `most`).
pub(crate) fn validate(max: ByteSize, most: Option<ByteSize>, errors: &mut Vec<ConfigError>) {
    if max.as_u64() == 0 {
        errors.push(ConfigError::new(
            &["max_record_size"],
            "must be more than 0 bytes",
        ));
    } else if let Some(most) = most
        && max > most
    {
        errors.push(ConfigError::new(
            &["max_record_size"],
            format!("is too large: at most {}", most),
        ));
    }
}

/// The limit in bytes.
pub(crate) fn bytes(max: ByteSize) -> usize {
    usize::try_from(max.as_u64()).unwrap_or(usize::MAX)
}

/// Why a record of `size` bytes was refused (`what` names it: "the line", "the payload").
pub(crate) fn message(what: &str, size: u64, max: ByteSize) -> String {
    format!(
        "{what} is {size} bytes, over max_record_size ({}); only its first {KEPT} bytes are kept",
        max
    )
}

/// The record that goes to `failure` in place of one of `size` bytes whose content starts with
/// `start` (only [`KEPT`] bytes of it are kept), and why.
pub(crate) fn oversized(start: &[u8], size: u64, max: ByteSize, what: &str) -> (Record, String) {
    oversized_numbered(None, start, size, max, what)
}

/// [`oversized`], the record numbered `id` when given (see [`Record::from_bytes_numbered`]).
pub(crate) fn oversized_numbered(
    id: Option<RecordId>,
    start: &[u8],
    size: u64,
    max: ByteSize,
    what: &str,
) -> (Record, String) {
    let kept = Bytes::copy_from_slice(&start[..start.len().min(KEPT)]);
    let record = match id {
        Some(id) => Record::from_bytes_numbered(id, kept),
        None => Record::from_bytes(kept),
    };
    (record, message(what, size, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_record_keeps_only_its_start() {
        let content = vec![b'x'; 5000];
        let (mut r, msg) = oversized(&content, 5000, ByteSize::kib(4), "the line");
        assert_eq!(r.content().len(), KEPT);
        assert_eq!(
            msg,
            "the line is 5000 bytes, over max_record_size (4.0 KiB); only its first 1024 bytes \
             are kept"
        );
        let mut errors = Vec::new();
        validate(ByteSize::b(0), None, &mut errors);
        validate(ByteSize::mib(20), Some(ByteSize::mib(16)), &mut errors);
        validate(ByteSize::mib(1), Some(ByteSize::mib(16)), &mut errors);
        let got: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            got,
            [
                "must be more than 0 bytes",
                "is too large: at most 16.0 MiB"
            ]
        );
    }
}
