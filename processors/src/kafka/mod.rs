//! Kafka: `kafka_source` and `kafka_sink`, over librdkafka (`rdkafka`, the bundled build).
//!
//! This module holds what both share: the client configuration (brokers, a `properties:` map
//! passed to librdkafka as it is, for SASL, SSL and tuning) and the client context that turns
//! librdkafka's logs and errors into `tracing` lines: one warning per burst of errors (a broker
//! that is down is retried by librdkafka itself, every `reconnect.backoff.ms` up to
//! `reconnect.backoff.max.ms`), and one line when it is reachable again.
//!
//! Why librdkafka rather than a pure-Rust client: it is the reference implementation of the
//! idempotent producer, consumer groups (eager and cooperative rebalancing) and every SASL
//! mechanism, and the bundled build needs no cmake (about 1.5 minutes of cold build). Debian's
//! librdkafka is too old for some brokers, so it is not linked dynamically.

pub mod sink;
pub mod source;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

use flow_core::processor::ConfigError;

pub use sink::KafkaSinkConfig;
pub use source::KafkaSourceConfig;

/// Errors of the Kafka processors.
#[derive(Debug, thiserror::Error)]
pub enum KafkaProcessorError {
    /// librdkafka refused the configuration (an unknown property, a bad value). Fatal.
    #[error("Kafka client configuration: {0}")]
    Config(String),
    /// A fatal client error (authentication, a fenced idempotent producer, ...).
    #[error("Kafka: {0}")]
    Fatal(String),
}

/// Settings flow sets itself and a `properties:` map may not override (they carry its
/// delivery guarantees).
const OWNED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// Check the brokers list and the pass-through properties.
pub(crate) fn validate_common(
    brokers: &str,
    properties: &IndexMap<String, String>,
    errors: &mut Vec<ConfigError>,
) {
    if brokers.trim().is_empty() {
        errors.push(ConfigError::new(
            &["brokers"],
            "give at least one broker, like 127.0.0.1:9092",
        ));
    }
    for key in properties.keys() {
        if OWNED.contains(&key.as_str()) {
            errors.push(ConfigError::new(
                &["properties", key],
                format!("`{key}` is set by flow (use the processor's own option)"),
            ));
        }
    }
}

/// A librdkafka configuration: flow's defaults, then the user's properties, then the settings
/// flow owns.
pub(crate) fn client_config(
    brokers: &str,
    defaults: &[(&str, String)],
    properties: &IndexMap<String, String>,
    owned: &[(&str, String)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", brokers);
    for (k, v) in owned {
        c.set(*k, v);
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// The client context: librdkafka's logs and errors as `tracing` lines, one warning per burst.
/// Clones share the burst.
#[derive(Clone)]
pub(crate) struct FlowContext {
    pub node: String,
    pub brokers: String,
    burst: Arc<Mutex<Burst>>,
}

#[derive(Default)]
struct Burst {
    /// When the current burst of errors started (`None`: no errors lately).
    since: Option<Instant>,
    last: Option<Instant>,
    count: u64,
}

/// Errors this far apart start a new burst (and a new log line).
const BURST_GAP: Duration = Duration::from_secs(30);

impl FlowContext {
    pub fn new(node: &str, brokers: &str) -> Self {
        Self {
            node: node.to_owned(),
            brokers: brokers.to_owned(),
            burst: Arc::new(Mutex::new(Burst::default())),
        }
    }

    /// Whether an error should be logged now: the first of a burst.
    fn first_of_burst(&self) -> bool {
        let Ok(mut b) = self.burst.lock() else {
            return true;
        };
        let now = Instant::now();
        let new = b.last.is_none_or(|l| now.duration_since(l) > BURST_GAP);
        b.last = Some(now);
        b.count += 1;
        if new {
            b.since = Some(now);
            b.count = 1;
        }
        new
    }

    /// The broker answered: end the burst, saying so if there was one.
    pub fn reachable(&self) {
        let Ok(mut b) = self.burst.lock() else {
            return;
        };
        if b.since.take().is_some() {
            tracing::info!(
                node = %self.node,
                brokers = %self.brokers,
                errors = b.count,
                "reached the Kafka brokers"
            );
        }
        b.last = None;
        b.count = 0;
    }
}

impl ClientContext for FlowContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::debug!(node = %self.node, facility = fac, "librdkafka: {message}")
            }
            _ => tracing::trace!(node = %self.node, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.first_of_burst() {
            tracing::warn!(
                node = %self.node,
                brokers = %self.brokers,
                error = %error,
                "Kafka: {reason}; librdkafka retries with backoff"
            );
        } else {
            tracing::debug!(node = %self.node, error = %error, "Kafka: {reason}");
        }
    }
}

/// A comma-separated list of brokers (the form librdkafka takes), from a string or a list.
#[derive(Clone, Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Brokers {
    /// `host:port,host:port`.
    One(String),
    /// `[host:port, host:port]`.
    Many(Vec<String>),
}

impl Brokers {
    pub fn joined(&self) -> String {
        match self {
            Brokers::One(s) => s.clone(),
            Brokers::Many(v) => v.join(","),
        }
    }
}

/// Create `topic` when the cluster does not have it (brokers that do not create topics on
/// first use would otherwise leave every produce to it waiting until its timeout).
pub(crate) async fn ensure_topic(
    brokers: &str,
    properties: &IndexMap<String, String>,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaProcessorError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &[], properties, &[])
        .create()
        .map_err(|e| KafkaProcessorError::Config(e.to_string()))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| KafkaProcessorError::Fatal(format!("creating topic `{topic}`: {e}")))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "created the Kafka topic"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            // Not allowed to, say: the topic may exist anyway; if not, sends fail and say so.
            Err((_, code)) => {
                tracing::warn!(topic, error = %code, "could not create the Kafka topic")
            }
        }
    }
    // Creating a topic is asynchronous in Kafka: the brokers list it a little later (seconds
    // for tansu on object storage, under load), and records sent before are refused with
    // "unknown topic or partition". Wait, within bounds, until every partition has a leader.
    let name = topic.to_owned();
    let ready = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + TOPIC_READY_WAIT;
        loop {
            let listed = admin
                .inner()
                .fetch_metadata(Some(&name), Duration::from_secs(5))
                .is_ok_and(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                });
            if listed || std::time::Instant::now() >= deadline {
                return listed;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap_or(false);
    if !ready {
        tracing::warn!(
            topic,
            "the brokers do not list the Kafka topic with a leader for every partition after \
             {TOPIC_READY_WAIT:?}; sending anyway (records wait until they do)"
        );
    }
    Ok(())
}

/// How long [`ensure_topic`] waits for the brokers to list a topic.
const TOPIC_READY_WAIT: Duration = Duration::from_secs(30);
