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

/// The records of a pushed body: a JSON object (one record), a JSON array (one record per
/// element) or JSON lines (one record per non-empty line). All or nothing: the first error is
/// returned, with its line, and no record is made. Records keep their exact bytes (array
/// elements too); `view` says whether their structured view is built now.
pub(crate) fn parse_body(body: &Bytes, view: JsonView) -> Result<Vec<Record>, String> {
    match first_significant(body) {
        None => Err("the body is empty".into()),
        Some(b'[') => parse_array(body, view),
        Some(_) => {
            // JSON lines, unless the first line is not a whole document: then one document
            // over several lines (pretty-printed JSON).
            let mut lines = crate::lines::split_lines(body).filter(|(l, _)| !blank(l));
            let first_is_whole = lines
                .next()
                .is_some_and(|(l, _)| serde_json::from_slice::<&RawValue>(&l).is_ok());
            if first_is_whole {
                parse_lines(body, view)
            } else {
                let r = Record::json(body.clone(), view).map_err(|(_, e)| e.to_string())?;
                Ok(vec![r])
            }
        }
    }
}

fn blank(line: &[u8]) -> bool {
    first_significant(line).is_none()
}

/// One record per non-empty line; the first malformed line is the error.
pub(crate) fn parse_lines(body: &Bytes, view: JsonView) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    for (n, (line, _)) in crate::lines::split_lines(body).enumerate() {
        if blank(&line) {
            continue;
        }
        match Record::json(line, view) {
            Ok(r) => records.push(r),
            Err((_, e)) => return Err(format!("line {}: {e}", n + 1)),
        }
    }
    if records.is_empty() {
        return Err("the body has no records".into());
    }
    Ok(records)
}

/// One record per element of a JSON array, each over its own bytes in `body`.
fn parse_array(body: &Bytes, view: JsonView) -> Result<Vec<Record>, String> {
    let elements: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| format!("content is not valid JSON: {e}"))?;
    let mut records = Vec::with_capacity(elements.len());
    for raw in elements {
        let content = body.slice_ref(raw.get().as_bytes());
        records.push(Record::json(content, view).map_err(|(_, e)| e.to_string())?);
    }
    Ok(records)
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
