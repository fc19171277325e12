//! The recent warnings and errors of a run (`GET /api/v1/events`, NiFi's bulletins): a
//! `tracing` layer keeps every WARN and ERROR event in a bounded ring, with the processor it
//! names (the `node` field processors log with).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flow_core::observe::{Event, Events, Level};
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// A bounded ring of the most recent events.
#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<Event>,
    next_seq: u64,
    dropped: u64,
}

impl EventLog {
    /// A ring keeping the last `capacity` events.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Ring::default()),
        })
    }

    fn push(
        &self,
        level: Level,
        node: Option<String>,
        message: String,
        fields: BTreeMap<String, String>,
    ) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut ring = self.inner.lock();
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
            ring.dropped += 1;
        }
        ring.events.push_back(Event {
            seq,
            time_ms,
            level,
            node,
            message,
            fields,
        });
    }

    /// The events kept, oldest first: those about `node` when given, after `since` (a `seq`)
    /// when given, at `min_level` or worse.
    pub fn recent(&self, node: Option<&str>, since: Option<u64>, min_level: Level) -> Events {
        let ring = self.inner.lock();
        Events {
            dropped: ring.dropped,
            events: ring
                .events
                .iter()
                .filter(|e| node.is_none_or(|n| e.node.as_deref() == Some(n)))
                .filter(|e| since.is_none_or(|s| e.seq > s))
                .filter(|e| e.level >= min_level)
                .cloned()
                .collect(),
        }
    }
}

/// The `tracing` layer that fills an [`EventLog`] (add it with a WARN filter).
pub struct EventLayer(pub Arc<EventLog>);

#[derive(Default)]
struct Fields {
    message: String,
    node: Option<String>,
    other: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "node" => self.node = Some(value.to_owned()),
            name => {
                self.other.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            _ => return,
        };
        let mut f = Fields::default();
        event.record(&mut f);
        self.0.push(level, f.node, f.message, f.other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn warnings_and_errors_are_kept_with_their_node_in_a_bounded_ring() {
        let log = EventLog::new(2);
        let subscriber = tracing_subscriber::registry().with(EventLayer(log.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(node = "a", "not kept");
            tracing::warn!(node = "a", error = %"boom", "first");
            tracing::warn!("second, about no node");
            tracing::error!(node = "b", "third");
        });
        let all = log.recent(None, None, Level::Warn);
        assert_eq!(all.dropped, 1);
        let got: Vec<_> = all
            .events
            .iter()
            .map(|e| (e.seq, e.level, e.node.clone(), e.message.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Level::Warn, None, "second, about no node".to_owned()),
                (2, Level::Error, Some("b".to_owned()), "third".to_owned()),
            ]
        );
        assert_eq!(log.recent(Some("b"), None, Level::Warn).events.len(), 1);
        assert_eq!(log.recent(None, Some(1), Level::Warn).events.len(), 1);
        assert_eq!(log.recent(None, None, Level::Error).events.len(), 1);
    }
}
