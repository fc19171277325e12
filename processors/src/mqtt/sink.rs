//! `mqtt_sink`: publish records to an MQTT broker; a record is acknowledged once the broker
//! confirmed it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, Processor, ProcessorConfig,
    ProcessorError, Sink, SinkContext,
};
use flow_core::provenance::Runs;
use flow_core::record::Record;

use crate::template::{Placeholders, Template};
use schemars::JsonSchema;
use serde::Deserialize;

use super::source::{default_keep_alive, default_qos, default_reconnect_max};
use super::{Client, Connection, MqttError, MqttEvent, Protocol, TlsConfig, Use, check_topic};

/// Publish each record to an MQTT broker (3.1.1 or 5), on a topic made from the record.
///
/// The payload is the record's content (a record nobody modified keeps its exact bytes). The
/// topic is a template over the record's fields and attributes: in `devices/{device}/commands`,
/// `{device}` is the record's field `device` (a dotted path reaches nested fields) or, when
/// there is no such field, its attribute `device` (so `{mqtt.topic}` works). A record whose
/// topic cannot be made goes to `failure`. A record is acknowledged once the broker confirmed
/// it: PUBACK at QoS 1, PUBCOMP at QoS 2, or once sent at QoS 0. At most `max_inflight`
/// records wait for confirmation; then the sink stops taking input (back-pressure). A broker
/// that cannot be reached is retried with capped exponential backoff (nothing is acknowledged
/// meanwhile), and unconfirmed records are sent again; a refused login stops the flow. Asked
/// to stop while the broker is unreachable, the sink gives up: its unconfirmed records stay
/// unacknowledged, so their source reads them again on the next run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// The broker: `mqtt://host:port` (default port 1883) or `mqtts://host:port` for TLS
    /// (default port 8883).
    pub url: String,
    /// The protocol version: `v311` (MQTT 3.1.1) or `v5`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The client id. Default: `flow-<processor name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Start a new session on every connection. `false` keeps a persistent session, so
    /// publishes in flight survive a reconnection.
    #[serde(default)]
    pub clean_session: bool,
    /// The username, if the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password (use `${VAR}` to take it from the environment). Never logged.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub password: Option<String>,
    /// How often the connection is checked with a ping when idle; `0s` turns it off (MQTT
    /// 3.1.1 only: with MQTT 5, at least `5s`).
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keep_alive: Duration,
    /// The longest wait between reconnection attempts (the wait doubles from 100ms up to this).
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reconnect_max: Duration,
    /// TLS settings for `mqtts://` (CA and client certificate).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The topic, a template: `{name}` is the record's field `name` (`{a.b}` a nested one), or
    /// its attribute `name` when there is no such field.
    pub topic: String,
    /// Quality of service: 0 (at most once), 1 (at least once) or 2 (exactly once).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Ask the broker to retain the last message of each topic for new subscribers.
    #[serde(default)]
    pub retain: bool,
    /// At most this many records published and not yet confirmed by the broker. The default,
    /// 20, is Mosquitto's `max_inflight_messages`: with 100, Mosquitto 2.0.11 was seen to
    /// confirm (PUBCOMP) every QoS 2 message of an MQTT 3.1.1 client yet deliver only the first
    /// 21 of 30 to subscribers. Raise it only for a broker known to take more.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
}

fn default_max_inflight() -> u16 {
    20
}

impl MqttSinkConfig {
    fn connection(&self, node: &str) -> Connection {
        Connection {
            url: self.url.clone(),
            protocol: self.protocol,
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| format!("flow-{node}")),
            clean_session: self.clean_session,
            username: self.username.clone(),
            password: self.password.clone(),
            keep_alive: self.keep_alive,
            tls: self.tls.clone(),
            reconnect_max: self.reconnect_max,
        }
    }
}

impl Describe for MqttSinkConfig {
    const TYPE: &'static str = "mqtt_sink";
    const KIND: Kind = Kind::Sink;
}

impl ProcessorConfig for MqttSinkConfig {
    fn reads_values(&self) -> bool {
        topic_template(&self.topic).is_ok_and(|t| t.has_fields())
    }

    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        self.connection("node").validate(&mut errors);
        match topic_template(&self.topic) {
            Ok(t) => {
                if let Err(e) = check_topic(&t.sample(), false) {
                    errors.push(ConfigError::new(&["topic"], e));
                }
            }
            Err(e) => errors.push(ConfigError::new(&["topic"], e)),
        }
        if self.qos > 2 {
            errors.push(ConfigError::new(&["qos"], "must be 0, 1 or 2"));
        }
        if self.max_inflight == 0 {
            errors.push(ConfigError::new(&["max_inflight"], "must be at least 1"));
        }
        errors
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        let topic = topic_template(&self.topic).map_err(BuildError)?;
        Ok(Processor::Sink(Box::new(MqttSink {
            conn: self.connection(&ctx.name),
            cfg: self.clone(),
            topic,
        })))
    }
}

/// The MQTT topic for a record: the shared template, each placeholder one whole topic level.
fn topic_template(t: &str) -> Result<Template, String> {
    Template::parse(t, Placeholders::Fields)
}

fn render_topic(t: &Template, record: &mut Record) -> Result<String, String> {
    t.render(record, 0, |value| {
        if value.is_empty() || value.contains(['+', '#', '/', '\0']) {
            Err(format!("`{value}` cannot be a topic level"))
        } else {
            Ok(value)
        }
    })
    .map_err(|e| format!("topic {e}"))
}

struct MqttSink {
    conn: Connection,
    cfg: MqttSinkConfig,
    topic: Template,
}

/// A record on its way to the broker.
struct Outgoing {
    seq: u64,
    /// Held until the broker confirmed it, then finished.
    record: Record,
    topic: String,
    payload: Bytes,
}

/// A record the broker took (or, at QoS 0, the client sent): finished now, or with
/// provenance on, once its SEND is recorded.
fn finish(o: Outgoing, provenance: bool, confirmed: &mut Vec<Outgoing>) {
    if provenance {
        confirmed.push(o);
    } else {
        o.record.finish();
    }
}

/// Record the SEND of confirmed records (an event per run of one topic), then finish them.
async fn record_sends(ctx: &SinkContext, confirmed: Vec<Outgoing>) {
    let mut confirmed = confirmed.into_iter().peekable();
    while let Some(first) = confirmed.next() {
        let topic = first.topic;
        let mut record = first.record;
        let mut ids = vec![record.id().0];
        let mut acks = record.take_acks();
        while let Some(mut o) = confirmed.next_if(|o| o.topic == topic) {
            ids.push(o.record.id().0);
            acks.merge(o.record.take_acks());
        }
        ctx.input
            .finish_sent_ids(Runs::from_ids(ids), acks, Some(topic), None)
            .await;
    }
}

/// How long to wait before offering a publish again to a full request queue.
const RETRY: Duration = Duration::from_millis(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// Offer a publish without waiting: `false` when the request queue is full.
    fn try_publish(&self, o: &Outgoing, qos: u8, retain: bool) -> Result<bool, MqttError> {
        let r = match self {
            Client::V4(c) => c
                .try_publish(
                    o.topic.clone(),
                    super::qos4(qos),
                    retain,
                    o.payload.to_vec(),
                )
                .map_err(|e| matches!(e, rumqttc::ClientError::TryRequest(_))),
            Client::V5(c) => c
                .try_publish(o.topic.clone(), super::qos5(qos), retain, o.payload.clone())
                .map_err(|e| matches!(e, rumqttc::v5::ClientError::TryRequest(_))),
        };
        match r {
            Ok(()) => Ok(true),
            Err(true) => Ok(false),
            Err(false) => Err(MqttError::ClientGone),
        }
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn run(self: Box<Self>, mut ctx: SinkContext) -> Result<(), ProcessorError> {
        let max_inflight = usize::from(self.cfg.max_inflight);
        let (qos, retain) = (self.cfg.qos, self.cfg.retain);
        let (client, mut events, _driver) = super::start(
            &self.conn,
            &ctx.name,
            Use {
                manual_acks: false,
                inflight: self.cfg.max_inflight,
                requests: max_inflight + 16,
                events: max_inflight * 2 + 64,
            },
        )
        .map_err(ProcessorError::other)?;
        // Handed to the client, waiting for their packet id (in order).
        let mut unassigned: VecDeque<Outgoing> = VecDeque::new();
        // Sent, waiting for the broker's confirmation.
        let mut awaiting: HashMap<u16, Outgoing> = HashMap::new();
        // Not handed to the client yet.
        let mut to_send: VecDeque<Outgoing> = VecDeque::new();
        let mut seq = 0u64;
        let mut input_done = false;
        let mut first_connect = true;
        // The broker could not be reached since the last connection (or ever).
        let mut unreachable = false;
        let mut failures = Output::new(ctx.name.clone(), ctx.failures.port_count().max(1));
        // With provenance on, confirmed records wait here to have their SEND recorded, a
        // burst at a time, before they are finished.
        let provenance = ctx.input.records_provenance();
        let mut confirmed: Vec<Outgoing> = Vec::new();
        loop {
            let inflight = unassigned.len() + awaiting.len();
            let end = input_done && inflight == 0 && to_send.is_empty();
            if !confirmed.is_empty() && (end || events.is_empty() || confirmed.len() >= 1024) {
                record_sends(&ctx, std::mem::take(&mut confirmed)).await;
            }
            if end {
                break;
            }
            tokio::select! {
                biased;
                e = events.recv() => match e {
                    Some(MqttEvent::Sent(pkid)) => {
                        if qos == 0 {
                            if let Some(o) = unassigned.pop_front() {
                                finish(o, provenance, &mut confirmed);
                                ctx.metrics.add_sent(1);
                            }
                        } else if !awaiting.contains_key(&pkid)
                            && let Some(o) = unassigned.pop_front()
                        {
                            // A packet id already waiting is a resend after a reconnection.
                            awaiting.insert(pkid, o);
                        }
                    }
                    Some(MqttEvent::Confirmed(pkid)) => {
                        if let Some(o) = awaiting.remove(&pkid) {
                            finish(o, provenance, &mut confirmed);
                            ctx.metrics.add_sent(1);
                        }
                    }
                    Some(MqttEvent::Connected { session_present }) => {
                        unreachable = false;
                        ctx.metrics.set_status("connected", serde_json::json!(true));
                        ctx.metrics.set_connected(true);
                        if !first_connect && !session_present && qos > 0 {
                            // The broker lost the session, and the client its unsent queue:
                            // send every unconfirmed record again, in order.
                            let mut lost: Vec<Outgoing> = awaiting.drain().map(|(_, o)| o).collect();
                            lost.extend(unassigned.drain(..));
                            lost.sort_by_key(|o| o.seq);
                            for o in lost.into_iter().rev() {
                                to_send.push_front(o);
                            }
                        }
                        first_connect = false;
                    }
                    Some(MqttEvent::Disconnected) => {
                        unreachable = true;
                        ctx.metrics.set_status("connected", serde_json::json!(false));
                        ctx.metrics.set_connected(false);
                    }
                    Some(MqttEvent::Fatal(e)) => return Err(ProcessorError::other(e)),
                    Some(MqttEvent::Publish(_) | MqttEvent::SubAck(_)) => {}
                    None => return Err(ProcessorError::other(MqttError::ClientGone)),
                },
                batch = ctx.input.next(), if !input_done && to_send.is_empty() && inflight < max_inflight => {
                    let Some(batch) = batch else {
                        input_done = true;
                        continue;
                    };
                    for mut record in batch {
                        match render_topic(&self.topic, &mut record) {
                            Ok(topic) => {
                                let payload = record.content().clone();
                                to_send.push_back(Outgoing { seq, record, topic, payload });
                                seq += 1;
                            }
                            Err(msg) => failures.fail(record, &msg),
                        }
                    }
                    ctx.failures.flush(&mut failures).await.map_err(ProcessorError::other)?;
                }
                _ = tokio::time::sleep(RETRY), if !to_send.is_empty() && inflight < max_inflight => {}
                () = ctx.shutdown.cancelled(), if unreachable && (inflight > 0 || !to_send.is_empty()) => {
                    return Err(ProcessorError::Stopped(format!(
                        "asked to stop while the MQTT broker at {} could not be reached: {} \
                         records not confirmed stay unacknowledged and are read again on the \
                         next run",
                        self.cfg.url,
                        inflight + to_send.len()
                    )));
                }
            }
            // Hand records to the client while the window has room and its queue takes them.
            while unassigned.len() + awaiting.len() < max_inflight
                && let Some(o) = to_send.front()
            {
                if !client
                    .try_publish(o, qos, retain)
                    .map_err(ProcessorError::other)?
                {
                    break;
                }
                if let Some(o) = to_send.pop_front() {
                    unassigned.push_back(o);
                }
            }
        }
        let close = async {
            client.disconnect().await;
            drop(client);
        };
        let drain = async { while events.recv().await.is_some() {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { tokio::join!(close, drain) }).await;
        Ok(())
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::testing::rec;

    #[test]
    fn topic_templates_use_fields_then_attributes() {
        let t = topic_template("devices/{device}/{cmd.kind}/{mqtt.qos}").expect("ok");
        let mut r = rec(r#"{"device":"car-1","cmd":{"kind":"stop"}}"#);
        r.set_attribute("mqtt.qos", "1");
        assert_eq!(
            render_topic(&t, &mut r).expect("topic"),
            "devices/car-1/stop/1"
        );
        let mut r = rec(r#"{"device":"a/b"}"#);
        let err = render_topic(&t, &mut r).expect_err("a level with /");
        assert!(err.contains("cannot be a topic level"), "{err}");
        let mut r = rec(r#"{"x":1}"#);
        let err = render_topic(&t, &mut r).expect_err("missing");
        assert!(err.contains("no field or attribute `device`"), "{err}");
        assert!(topic_template("a/{b").is_err());
        assert!(topic_template("a/}b").is_err());
        assert!(topic_template("a/{}").is_err());
    }
}
