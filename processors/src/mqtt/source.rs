//! `mqtt_source`: subscribe to an MQTT broker; acknowledge each message only once the flow has
//! finished with it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use bytesize::ByteSize;
use flow_core::ack::{AckTracker, Acks, Finished, InOrderCommit};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, PortId, Processor,
    ProcessorConfig, ProcessorError, Source, SourceContext,
};
use flow_core::record::{JsonView, Record, Value};
use flow_core::runtime::metrics::LagUnit;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Client, Connection, Message, MqttError, MqttEvent, Protocol, TlsConfig, TopicTemplate, Use,
    check_topic,
};

/// Subscribe to topics on an MQTT broker (3.1.1 or 5) and emit one record per message.
///
/// Messages are acknowledged to the broker (PUBACK for QoS 1, PUBREC then PUBCOMP for QoS 2)
/// only once their record is finished downstream (written by a sink, filtered out, or reported
/// as failed), and in the order they arrived, as MQTT requires. With a persistent session
/// (`clean_session: false`, the default, and a stable `client_id`) the broker keeps what was not
/// acknowledged while the flow is down or slow, and sends it again: at-least-once delivery
/// (a message it resends after a lost connection while the flow still holds the first copy is
/// not emitted twice; duplicates come only from acks lost with the connection or the process). At
/// most `max_inflight` messages are in the flow at once; beyond that the source stops reading
/// and the broker holds the backlog. Records carry attributes `mqtt.topic`, `mqtt.qos` and
/// `mqtt.retain`. A payload that is not JSON (with `format: json`), or larger than
/// `max_record_size` (only its first 1 KiB is kept), goes to `failure`. Lost
/// connections are retried with capped exponential backoff (one log line per burst of
/// attempts); refused credentials stop the flow with an error.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// The broker: `mqtt://host:port` (default port 1883) or `mqtts://host:port` for TLS
    /// (default port 8883).
    pub url: String,
    /// The protocol version: `v311` (MQTT 3.1.1) or `v5`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The client id. The broker keeps a persistent session per client id, so keep it stable
    /// across restarts, and give each process of a shared subscription its own. Default:
    /// `flow-<processor name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Start a new session on every connection (the broker forgets what was not delivered).
    /// `false` keeps a persistent session (MQTT 5: one that never expires).
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
    /// Topic filters to subscribe to; `+` and `#` wildcards allowed, and
    /// `$share/<group>/<filter>` for a shared subscription (several processes split the
    /// messages).
    pub topics: Vec<String>,
    /// The subscription's quality of service: 0 (at most once), 1 (at least once) or 2
    /// (exactly once between broker and flow).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// How a payload becomes a record: `json` (checked; not JSON goes to `failure`) or `raw`
    /// (the bytes as they are).
    #[serde(default)]
    pub format: PayloadFormat,
    /// Fields taken from the topic by a template such as `sensors/{device}/telemetry`: each
    /// `{name}` level is added to the JSON object as a string field `name` (`+` matches any
    /// level, a final `#` the rest). A topic that does not match gets no fields.
    #[serde(default)]
    pub topic_fields: Option<String>,
    /// At most this many messages in the flow and not yet acknowledged; then the source stops
    /// reading (the broker keeps the rest). Also the receive maximum announced to an MQTT 5
    /// broker.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// At most this many messages per batch (messages that are already there are batched;
    /// a lone message is not held back).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The largest payload taken as a record, like `1MiB` (at most 16 MiB, the largest packet
    /// the client reads); a larger one goes to `failure` with its first 1 KiB.
    #[serde(default = "crate::record_size::default_max_record_size")]
    #[schemars(with = "String")]
    pub max_record_size: ByteSize,
}

/// How a payload becomes a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON document; a payload that is not valid JSON goes to `failure`.
    #[default]
    Json,
    /// The payload's bytes as they are (its structured view is the byte string).
    Raw,
}

pub(crate) fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

pub(crate) fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

pub(crate) fn default_qos() -> u8 {
    1
}

fn default_max_inflight() -> u16 {
    1000
}

fn default_batch_size() -> usize {
    500
}

impl MqttSourceConfig {
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

impl Describe for MqttSourceConfig {
    const TYPE: &'static str = "mqtt_source";
    const KIND: Kind = Kind::Source;
}

impl ProcessorConfig for MqttSourceConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        self.connection("node").validate(&mut errors);
        if self.topics.is_empty() {
            errors.push(ConfigError::new(
                &["topics"],
                "give at least one topic filter",
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(e) = check_topic(t, true) {
                errors.push(ConfigError::new(&["topics", &i.to_string()], e));
            }
        }
        if self.qos > 2 {
            errors.push(ConfigError::new(&["qos"], "must be 0, 1 or 2"));
        }
        if let Some(t) = &self.topic_fields
            && let Err(e) = TopicTemplate::parse(t)
        {
            errors.push(ConfigError::new(&["topic_fields"], e));
        }
        if self.max_inflight == 0 {
            errors.push(ConfigError::new(&["max_inflight"], "must be at least 1"));
        }
        if self.batch_size == 0 {
            errors.push(ConfigError::new(&["batch_size"], "must be at least 1"));
        }
        crate::record_size::validate(
            self.max_record_size,
            Some(ByteSize::b(super::MAX_PACKET as u64)),
            &mut errors,
        );
        errors
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        let template = self
            .topic_fields
            .as_deref()
            .map(TopicTemplate::parse)
            .transpose()
            .map_err(BuildError)?;
        Ok(Processor::Source(Box::new(MqttSource {
            conn: self.connection(&ctx.name),
            cfg: self.clone(),
            // Fields taken from the topic are written into the view.
            json_view: if template.is_some() {
                JsonView::Eager
            } else {
                ctx.json_view()
            },
            template,
        })))
    }
}

struct MqttSource {
    conn: Connection,
    cfg: MqttSourceConfig,
    template: Option<TopicTemplate>,
    json_view: JsonView,
}

/// A message's acknowledgement: its QoS, packet id, and its number among the messages taken
/// (to tell it from a later message with the same packet id).
#[derive(Clone, Copy, Debug)]
struct PendingAck {
    qos: u8,
    pkid: u16,
    number: u64,
}

/// A message taken and not acknowledged yet.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// Its number among the messages taken.
    number: u64,
    /// The connection its ack is valid on.
    generation: u64,
    /// The flow finished it while its connection was gone: acknowledge the resent copy.
    finished: bool,
}

/// Batches emitted and not yet acknowledged to the broker, in order.
struct Acker {
    client: Client,
    tracker: AckTracker,
    commit: InOrderCommit<u64>,
    /// Per emitted batch (by sequence number, in order): its messages' acks.
    batches: VecDeque<(u64, Vec<PendingAck>)>,
    /// Acks due, in order, that the client's request queue could not take yet.
    due: VecDeque<PendingAck>,
    /// Messages in the flow, not finished.
    in_flow: usize,
    generation: u64,
    acked: u64,
    /// Per packet id, the QoS 1/2 message taken and not yet acknowledged. When the broker
    /// resends such a message after a reconnect (same packet id, DUP set), the copy is not
    /// emitted again: the first copy's ack goes to the new connection instead (at once if the
    /// flow already finished it). So a lost connection or a broker restart costs no duplicates
    /// for what the flow still holds.
    held: HashMap<u16, Held>,
    /// Resent copies not emitted because the first copy was still in the flow.
    resent_held: u64,
}

impl Acker {
    /// A batch finished: queue the acks of every batch up to the committed one, in order.
    fn finished(&mut self, f: Finished) -> Result<(), MqttError> {
        if !f.committable() {
            // Abandoned downstream: never acknowledged, so the broker sends it again (to the
            // next session); nothing after it is acknowledged either.
            return Ok(());
        }
        if let Some(upto) = self.commit.finish(f.seq, f.seq) {
            while let Some((seq, _)) = self.batches.front() {
                if *seq > upto {
                    break;
                }
                let Some((_, acks)) = self.batches.pop_front() else {
                    break;
                };
                self.in_flow -= acks.len();
                self.due.extend(acks);
            }
        }
        self.send_due()
    }

    /// Hand due acks to the client, in order, as far as its queue takes them. An ack whose
    /// message came on an earlier connection and was not resent on this one is skipped: the
    /// broker sends that message again, and that copy is acknowledged instead.
    fn send_due(&mut self) -> Result<(), MqttError> {
        while let Some(a) = self.due.front().copied() {
            if a.qos > 0
                && let Some(h) = self.held.get_mut(&a.pkid)
                && h.number == a.number
            {
                if h.generation == self.generation {
                    if !self.client.try_ack(a.qos, a.pkid)? {
                        return Ok(());
                    }
                    self.acked += 1;
                    self.held.remove(&a.pkid);
                } else {
                    // Its connection is gone: wait for the broker to resend it.
                    h.finished = true;
                }
            }
            // Otherwise the packet id went to a later message (a new session): not ours.
            self.due.pop_front();
        }
        Ok(())
    }

    /// A message arrived on the current connection. `false` when it is a resent copy of one
    /// taken on an earlier connection and not acknowledged: it is not emitted again; the first
    /// copy's ack now goes to this connection (at once when the flow already finished it).
    fn take(&mut self, m: &Message, number: u64) -> bool {
        if m.qos == 0 {
            return true;
        }
        if m.dup
            && let Some(h) = self.held.get_mut(&m.pkid)
            && h.generation < self.generation
        {
            h.generation = self.generation;
            if h.finished {
                h.finished = false;
                self.due.push_back(PendingAck {
                    qos: m.qos,
                    pkid: m.pkid,
                    number: h.number,
                });
            }
            self.resent_held += 1;
            return false;
        }
        self.held.insert(
            m.pkid,
            Held {
                number,
                generation: self.generation,
                finished: false,
            },
        );
        true
    }

    /// The connection is gone: acks can no longer go out on it.
    fn disconnected(&mut self) {
        self.generation += 1;
    }

    /// Connected (again). Without a session the broker resends nothing: forget what was held.
    fn connected(&mut self, session_present: bool) {
        self.generation += 1;
        if !session_present {
            self.held.clear();
        }
    }
}

/// How many requests (acks, mostly) the client's queue holds.
const ACK_QUEUE: usize = 64;
/// Events besides messages that the channel from the event loop holds (connection changes,
/// subscription acks).
const EVENT_SLACK: usize = 64;
/// How long to wait before trying again to queue acks the client could not take.
const ACK_RETRY: Duration = Duration::from_millis(5);
/// How long a graceful stop waits for the last acks and the disconnect to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl MqttSource {
    /// The record for a message, or the record and why it goes to `failure`.
    #[allow(
        clippy::result_large_err,
        reason = "the record is handed back on the rare error path"
    )]
    fn record(&self, m: &Message) -> Result<Record, (Record, String)> {
        if m.payload.len() > crate::record_size::bytes(self.cfg.max_record_size) {
            let (r, e) = crate::record_size::oversized(
                &m.payload,
                m.payload.len() as u64,
                self.cfg.max_record_size,
                "the payload",
            );
            return Err((with_attributes(r, m), e));
        }
        let mut r = match self.cfg.format {
            PayloadFormat::Json => match Record::json(m.payload.clone(), self.json_view) {
                Ok(r) => r,
                Err((r, e)) => return Err((with_attributes(r, m), format!("payload: {e}"))),
            },
            PayloadFormat::Raw => Record::from_text(m.payload.clone()),
        };
        if let Some(t) = &self.template
            && let Some(fields) = t.captures(&m.topic)
            && !fields.is_empty()
            && matches!(r.value(), Ok(Value::Object(_)))
            && let Ok(Value::Object(o)) = r.value_mut()
        {
            for (name, value) in fields {
                o.insert(name.into(), Value::from(value));
            }
        }
        Ok(with_attributes(r, m))
    }
}

fn with_attributes(mut r: Record, m: &Message) -> Record {
    r.set_attribute("mqtt.topic", m.topic.clone());
    r.set_attribute("mqtt.qos", m.qos.to_string());
    r.set_attribute("mqtt.retain", m.retain.to_string());
    r
}

#[async_trait]
impl Source for MqttSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        let SourceContext {
            name,
            mut out,
            shutdown,
            metrics,
        } = ctx;
        let max_inflight = usize::from(self.cfg.max_inflight);
        let batch_size = self.cfg.batch_size.min(max_inflight);
        let (client, mut events, driver) = super::start(
            &self.conn,
            &name,
            Use {
                manual_acks: true,
                inflight: self.cfg.max_inflight,
                // Small: acks wait in `due` (ours) rather than in the client's queue, which
                // drops its acks when the connection is lost; ours are kept and sent for the
                // broker's resend instead (see `Acker::held`).
                requests: ACK_QUEUE,
                // Room for the messages the broker may send unacknowledged beside those in the
                // flow (an MQTT 5 broker should keep to the receive maximum, `max_inflight`).
                // When it is full the event loop is not polled, so TCP holds the rest back;
                // with MQTT 3.1.1 the event-loop task then writes the keep-alive pings itself.
                // Mosquitto 2 sent thousands more than that to a session with a backlog, with
                // 3.1.1 and with 5: with MQTT 5 (whose connection rumqttc keeps to itself) no
                // ping goes out then, and a stall of 1.5 keep-alives drops the connection
                // (twice the room filled up just the same).
                events: max_inflight + EVENT_SLACK,
            },
        )
        .map_err(ProcessorError::other)?;
        let mut a = Acker {
            client: client.clone(),
            tracker: AckTracker::named(name.clone()).counting(metrics.acks()),
            commit: InOrderCommit::new(),
            batches: VecDeque::new(),
            due: VecDeque::new(),
            in_flow: 0,
            generation: 0,
            acked: 0,
            held: HashMap::new(),
            resent_held: 0,
        };
        let mut seq = 0u64;
        let mut number = 0u64;
        let mut first_connect = true;
        let mut pending = Output::new(name.clone(), out.port_count());
        let mut batch_acks: Vec<PendingAck> = Vec::new();
        metrics.set_status("connected", serde_json::json!(false));
        metrics.set_connected(false);
        // Messages taken from the broker and not acknowledged to it yet: held by this source.
        let held = |a: &Acker| metrics.set_lag(LagUnit::Messages, None, a.in_flow as u64);
        let result: Result<(), ProcessorError> = 'run: loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(f) = a.tracker.next(), if a.tracker.outstanding() > 0 => {
                    if let Err(e) = a.finished(f) {
                        break Err(ProcessorError::other(e));
                    }
                    metrics.set_status("acked", serde_json::json!(a.acked));
                    held(&a);
                    continue;
                }
                _ = tokio::time::sleep(ACK_RETRY), if !a.due.is_empty() => {
                    if let Err(e) = a.send_due() {
                        break Err(ProcessorError::other(e));
                    }
                    continue;
                }
                e = events.recv(), if a.in_flow < max_inflight => e,
            };
            // Under a steady stream the retry timer never fires: hand over waiting acks here.
            if !a.due.is_empty()
                && let Err(e) = a.send_due()
            {
                break Err(ProcessorError::other(e));
            }
            // Take what is already there, up to a batch, without waiting.
            let mut next = event;
            loop {
                let Some(event) = next.take() else {
                    if batch_acks.is_empty() {
                        // The event loop ended without a fatal error: the client is gone.
                        break 'run Err(ProcessorError::other(MqttError::ClientGone));
                    }
                    break;
                };
                match event {
                    MqttEvent::Publish(m) => {
                        number += 1;
                        if !a.take(&m, number) {
                            metrics.set_status("resent_held", serde_json::json!(a.resent_held));
                        } else {
                            batch_acks.push(PendingAck {
                                qos: m.qos,
                                pkid: m.pkid,
                                number,
                            });
                            match self.record(&m) {
                                Ok(r) => pending.push(PortId::DEFAULT, r),
                                Err((r, msg)) => pending.fail(r, &msg),
                            }
                        }
                    }
                    MqttEvent::Connected { session_present } => {
                        a.connected(session_present);
                        metrics.set_status("connected", serde_json::json!(true));
                        metrics.set_connected(true);
                        if (first_connect || !session_present)
                            && let Err(e) = client.subscribe(&self.cfg.topics, self.cfg.qos).await
                        {
                            break 'run Err(ProcessorError::other(e));
                        }
                        first_connect = false;
                        // Acks due from the previous connection are void now.
                        if let Err(e) = a.send_due() {
                            break 'run Err(ProcessorError::other(e));
                        }
                    }
                    MqttEvent::Disconnected => {
                        a.disconnected();
                        metrics.set_status("connected", serde_json::json!(false));
                        metrics.set_connected(false);
                    }
                    MqttEvent::SubAck(codes) => {
                        if let Some(i) = codes.iter().position(|ok| !ok) {
                            let topic = self.cfg.topics.get(i).cloned().unwrap_or_default();
                            break 'run Err(ProcessorError::other(MqttError::SubscriptionRefused(
                                topic,
                            )));
                        }
                        tracing::info!(node = %name, topics = ?self.cfg.topics, "subscribed");
                        metrics.set_status("subscribed", serde_json::json!(true));
                    }
                    MqttEvent::Fatal(e) => break 'run Err(ProcessorError::other(e)),
                    MqttEvent::Sent(_) | MqttEvent::Confirmed(_) => {}
                }
                if batch_acks.len() >= batch_size || a.in_flow + batch_acks.len() >= max_inflight {
                    break;
                }
                match events.try_recv() {
                    Ok(e) => next = Some(e),
                    Err(_) => break,
                }
            }
            if batch_acks.is_empty() {
                continue;
            }
            // One token per batch, in every record of it.
            let token = a.tracker.token(seq);
            let n = batch_acks.len();
            a.in_flow += n;
            a.batches.push_back((seq, std::mem::take(&mut batch_acks)));
            seq += 1;
            let mut batch = Output::new(name.clone(), out.port_count());
            for (port, records) in pending.drain() {
                for r in records {
                    batch.push(port, r.with_acks(Acks::one(token.clone())));
                }
            }
            drop(token);
            metrics.add_received(n as u64);
            held(&a);
            // Waits while the flow is full: back-pressure.
            if let Err(e) = out.flush(&mut batch).await {
                break Err(ProcessorError::other(e));
            }
        };
        // Let the flow drain, then acknowledge what it finished.
        drop(out);
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        let mut events_open = true;
        while a.tracker.outstanding() > 0 || !a.due.is_empty() {
            tokio::select! {
                Some(f) = a.tracker.next(), if a.tracker.outstanding() > 0 => {
                    if a.finished(f).is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep(ACK_RETRY), if !a.due.is_empty() => {
                    if a.send_due().is_err() {
                        break;
                    }
                }
                // Keep the event loop moving so acks go out; new messages are not taken (the
                // broker sends them again to the next session).
                e = events.recv(), if events_open => match e {
                    Some(MqttEvent::Connected { session_present }) => {
                        a.connected(session_present)
                    }
                    Some(MqttEvent::Disconnected) => a.disconnected(),
                    Some(_) => {}
                    None => events_open = false,
                },
                _ = tokio::time::sleep_until(deadline), if a.tracker.outstanding() == 0 => break,
            }
        }
        metrics.set_status("acked", serde_json::json!(a.acked));
        drop(a);
        // Disconnect, and drain events until the event loop has sent the last acks and the
        // disconnect and ended.
        let close = async {
            client.disconnect().await;
            drop(client);
        };
        let drain = async { while events.recv().await.is_some() {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { tokio::join!(close, drain) }).await;
        driver.abort();
        result
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn acker() -> (Acker, rumqttc::EventLoop) {
        let (c, el) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "h", 1), 16);
        let a = Acker {
            client: Client::V4(c),
            tracker: AckTracker::new(),
            commit: InOrderCommit::new(),
            batches: VecDeque::new(),
            due: VecDeque::new(),
            in_flow: 0,
            generation: 1,
            acked: 0,
            held: HashMap::new(),
            resent_held: 0,
        };
        (a, el)
    }

    fn msg(pkid: u16, dup: bool) -> Message {
        Message {
            topic: "t".into(),
            payload: bytes::Bytes::new(),
            qos: 1,
            retain: false,
            pkid,
            dup,
        }
    }

    fn due(a: &mut Acker, pkid: u16, number: u64) {
        a.due.push_back(PendingAck {
            qos: 1,
            pkid,
            number,
        });
        a.send_due().expect("queued");
    }

    /// A message resent after a reconnect while its first copy is in the flow is not emitted
    /// again; the first copy's ack goes out on the new connection, whether the flow finished it
    /// before or after the resend.
    #[test]
    fn resent_copies_of_held_messages_are_not_emitted_again() {
        let (mut a, _el) = acker();
        assert!(a.take(&msg(1, false), 1));
        assert!(a.take(&msg(2, false), 2));
        a.disconnected();
        // Finished while the connection is gone: no ack can go out yet.
        due(&mut a, 1, 1);
        assert_eq!(a.acked, 0);
        a.connected(true);
        assert!(!a.take(&msg(1, true), 3), "finished: acked, not emitted");
        a.send_due().expect("queued");
        assert_eq!(a.acked, 1);
        assert!(!a.take(&msg(2, true), 4), "still in the flow: not emitted");
        due(&mut a, 2, 2);
        assert_eq!(a.acked, 2);
        assert!(a.held.is_empty());
        assert_eq!(a.resent_held, 2);
        // Resent again after its ack went out: a new message (the broker lost the ack).
        assert!(a.take(&msg(2, true), 5));
    }

    /// Without a session the broker resends nothing, and a packet id may name a new message:
    /// the old one's ack is not sent for it.
    #[test]
    fn a_new_session_forgets_what_was_held() {
        let (mut a, _el) = acker();
        assert!(a.take(&msg(7, false), 1));
        a.disconnected();
        a.connected(false);
        assert!(a.take(&msg(7, false), 2));
        due(&mut a, 7, 1);
        assert_eq!(a.acked, 0, "the old message's ack is not the new one's");
        due(&mut a, 7, 2);
        assert_eq!(a.acked, 1);
    }
}
