//! HTTP: `http_poll` (pull: poll a REST endpoint) and `http_server` (push: devices POST to the
//! flow).
//!
//! This module holds what both share: turning a body into records (a JSON document, the
//! elements of a JSON array, or JSON lines), JSON pointers, a bounded set of seen keys for
//! change detection, and the TLS setup of the client (rustls with the `ring` provider, given to
//! reqwest explicitly, as `mqtt/` does: the default provider pulls `aws-lc-sys`, a C build).

pub mod poll;
pub mod server;
#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use flow_core::record::{JsonView, Record, Value};
use serde_json::value::RawValue;

pub use poll::HttpPollConfig;
pub use server::HttpServerConfig;

/// A stable 64-bit hash (the same in every run: `DefaultHasher::new` has fixed keys).
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The most recent `max` keys (as hashes): memory stays bounded whatever the input; the oldest
/// key is forgotten first.
#[derive(Debug)]
pub(crate) struct BoundedSet {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    max: usize,
}

impl BoundedSet {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Remember `key`; `true` if it was not known.
    pub(crate) fn insert(&mut self, key: u64) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

/// The value a JSON pointer (RFC 6901: `/items/0/name`, `~1` for `/`, `~0` for `~`) points at;
/// `""` is the whole document.
pub(crate) fn json_pointer<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.is_empty() {
        return Some(value);
    }
    let rest = pointer.strip_prefix('/')?;
    let mut v = value;
    for token in rest.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        v = match v {
            Value::Object(m) => m.get(token.as_str())?,
            Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Check a JSON pointer's syntax.
pub(crate) fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "`{pointer}` is not a JSON pointer: start it with `/` (like `/items`), or leave it empty for the whole body"
        ))
    }
}

/// The first byte that is not JSON whitespace.
fn first_significant(body: &[u8]) -> Option<u8> {
    body.iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// How a pushed body is read, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyType {
    /// One JSON document: an object, or an array of objects.
    Json,
    /// JSON lines: one object per non-blank line.
    Lines,
    /// Either, told apart by the content (no `Content-Type`, or `text/plain`).
    Either,
}

/// The content types a pushed body may have, for the `415` answer.
pub(crate) const ACCEPTED_TYPES: &str = "application/json (an object or an array of objects), \
     application/x-ndjson or application/jsonl (one object per line), or text/plain (either), \
     in UTF-8";

impl BodyType {
    /// The body type a `Content-Type` says; `Err` with the reason for one not accepted. No
    /// `Content-Type` at all is read as [`BodyType::Either`].
    pub(crate) fn of(content_type: Option<&[u8]>) -> Result<Self, String> {
        let Some(raw) = content_type else {
            return Ok(Self::Either);
        };
        let text = String::from_utf8_lossy(raw);
        let Ok(m) = text.parse::<mime::Mime>() else {
            return Err(format!("`Content-Type: {text}` is not a media type"));
        };
        if let Some(charset) = m.get_param(mime::CHARSET)
            && charset != mime::UTF_8
        {
            return Err(format!(
                "charset {charset} is not accepted: send {ACCEPTED_TYPES}"
            ));
        }
        let subtype = m.subtype().as_str();
        let kind = match (m.type_(), subtype) {
            (mime::APPLICATION, "json") => Some(Self::Json),
            (mime::APPLICATION, _) if m.suffix() == Some(mime::JSON) => Some(Self::Json),
            (mime::APPLICATION, "x-ndjson" | "ndjson" | "jsonl" | "x-jsonlines" | "jsonlines") => {
                Some(Self::Lines)
            }
            (mime::TEXT, "plain") => Some(Self::Either),
            _ => None,
        };
        kind.ok_or_else(|| {
            format!(
                "`Content-Type: {}` is not accepted: send {ACCEPTED_TYPES}",
                m.essence_str()
            )
        })
    }
}

/// Why a pushed body was refused; nothing of it is ingested.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not what its type says, or a record that is not a JSON object (`400`).
    Malformed(String),
    /// A record over `max_record_size` (`413`).
    TooLarge(String),
}

impl Refused {
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        match self {
            Refused::Malformed(m) | Refused::TooLarge(m) => m,
        }
    }
}

/// How a pushed body becomes records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyRules {
    /// What its `Content-Type` said.
    pub kind: BodyType,
    /// The largest record, in bytes.
    pub max_record: usize,
    /// `max_record` as configured, for messages.
    pub max_record_size: bytesize::ByteSize,
    /// Whether the records' structured view is built now.
    pub view: JsonView,
}

/// What a JSON document is, by its first byte, when it is not an object.
fn not_an_object(content: &[u8]) -> Option<&'static str> {
    match first_significant(content)? {
        b'{' => None,
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b't' | b'f' => Some("a boolean"),
        b'n' => Some("null"),
        _ => Some("a number"),
    }
}

impl BodyRules {
    /// One record over `content` (a whole JSON document), or why not; `at` names it in
    /// messages ("line 3", "element 2", "the body").
    fn record(&self, content: Bytes, at: &str) -> Result<Record, Refused> {
        if content.len() > self.max_record {
            return Err(Refused::TooLarge(format!(
                "{at} is {} bytes, over max_record_size ({})",
                content.len(),
                self.max_record_size
            )));
        }
        let r = Record::json(content, self.view)
            .map_err(|(_, e)| Refused::Malformed(format!("{at}: {e}")))?;
        if let Some(what) = r.raw_content().and_then(|c| not_an_object(c)) {
            return Err(Refused::Malformed(format!(
                "{at}: a record must be a JSON object, not {what}"
            )));
        }
        Ok(r)
    }

    /// The records of a pushed body: with [`BodyType::Json`] a JSON object (one record) or an
    /// array of objects (one record per element), with [`BodyType::Lines`] one object per
    /// non-blank line, and with [`BodyType::Either`] whichever the body is. All or nothing: the
    /// first error is returned, naming its line or element, and no record is made. Records keep
    /// their exact bytes (array elements too).
    pub(crate) fn parse(&self, body: &Bytes) -> Result<Vec<Record>, Refused> {
        let first = first_significant(body)
            .ok_or_else(|| Refused::Malformed("the body is empty".into()))?;
        match self.kind {
            BodyType::Lines => self.parse_lines(body),
            BodyType::Json if first == b'[' => self.parse_array(body),
            BodyType::Json => match self.record(body.clone(), "the body") {
                Ok(r) => Ok(vec![r]),
                Err(Refused::Malformed(m)) if m.contains("trailing characters") => Err(
                    Refused::Malformed(format!("{m} (JSON lines go as application/x-ndjson)")),
                ),
                Err(e) => Err(e),
            },
            BodyType::Either if first == b'[' => self.parse_array(body),
            BodyType::Either => {
                // JSON lines, unless the first line is not a whole document: then one document
                // over several lines (pretty-printed JSON).
                let mut lines =
                    crate::lines::split_lines(body).filter(|(l, _)| !crate::lines::is_blank(l));
                let first_is_whole = lines
                    .next()
                    .is_some_and(|(l, _)| serde_json::from_slice::<&RawValue>(&l).is_ok());
                if first_is_whole {
                    self.parse_lines(body)
                } else {
                    Ok(vec![self.record(body.clone(), "the body")?])
                }
            }
        }
    }

    /// One record per non-blank line; the first bad line is the error.
    fn parse_lines(&self, body: &Bytes) -> Result<Vec<Record>, Refused> {
        let mut records = Vec::new();
        for (n, (line, _)) in crate::lines::split_lines(body).enumerate() {
            if crate::lines::is_blank(&line) {
                continue;
            }
            records.push(self.record(line, &format!("line {}", n + 1))?);
        }
        if records.is_empty() {
            return Err(Refused::Malformed("the body has no records".into()));
        }
        Ok(records)
    }

    /// One record per element of a JSON array, each over its own bytes in `body`.
    fn parse_array(&self, body: &Bytes) -> Result<Vec<Record>, Refused> {
        let elements: Vec<&RawValue> = serde_json::from_slice(body)
            .map_err(|e| Refused::Malformed(format!("content is not valid JSON: {e}")))?;
        let mut records = Vec::with_capacity(elements.len());
        for (i, raw) in elements.into_iter().enumerate() {
            let content = body.slice_ref(raw.get().as_bytes());
            records.push(self.record(content, &format!("element {}", i + 1))?);
        }
        Ok(records)
    }
}

/// A URL without its credentials and query (which may hold secrets), for logs.
pub(crate) fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

/// A URL without its credentials (the `http.url` attribute).
pub(crate) fn without_credentials(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}
