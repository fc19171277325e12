//! MQTT: `mqtt_source` and `mqtt_sink`, over `rumqttc` (MQTT 3.1.1 and 5).
//!
//! This module holds what both share: the connection settings (broker URL, client id, session,
//! credentials, TLS, keep-alive, reconnect backoff), the TLS setup, and the task that drives the
//! client's event loop. That task owns the `rumqttc` event loop, polls it all the time (so
//! keep-alives and acks go out), reconnects with capped exponential backoff, logs one line per
//! burst of failed attempts, and hands what matters to the processor as [`MqttEvent`]s. A broker
//! that refuses the credentials is fatal: retrying would not fix it.
//!
//! TLS uses rustls with the `ring` provider, installed explicitly: `rumqttc`'s default TLS
//! feature pulls `aws-lc-rs`, whose C build costs ~45 s of CI time on two cores for nothing we
//! need.

pub mod sink;
pub mod source;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use flow_core::processor::ConfigError;

pub use sink::MqttSinkConfig;
pub use source::MqttSourceConfig;

/// Largest packet accepted or sent.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// The MQTT protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

/// TLS settings (for `mqtts://` URLs).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificates that sign the broker's certificate. Absent: the
    /// system's trusted roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM file with the client certificate (chain), for brokers that require client
    /// authentication. Needs `key`.
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM file with the client certificate's private key.
    #[serde(default)]
    pub key: Option<String>,
}

/// Where a broker is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    /// `mqtt://host[:port]` (also `tcp://`), or `mqtts://host[:port]` (also `ssl://`) for TLS.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not a URL like mqtt://host:1883"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!(
                    "unsupported scheme `{other}`: use mqtt:// or mqtts://"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "`{url}`: give only host and port (credentials go in `username`/`password`)"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port number"))?;
                (h, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// The connection settings both processors take (kept in one place, built from their configs).
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub url: String,
    pub protocol: Protocol,
    pub client_id: String,
    pub clean_session: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    pub tls: Option<TlsConfig>,
    pub reconnect_max: Duration,
}

impl Connection {
    /// Check the settings without I/O.
    pub fn validate(&self, errors: &mut Vec<ConfigError>) {
        match BrokerUrl::parse(&self.url) {
            Ok(u) => {
                if !u.tls && self.tls.is_some() {
                    errors.push(ConfigError::new(
                        &["tls"],
                        "TLS settings need an mqtts:// URL",
                    ));
                }
            }
            Err(e) => errors.push(ConfigError::new(&["url"], e)),
        }
        if self.client_id.is_empty() {
            errors.push(ConfigError::new(&["client_id"], "the client id is empty"));
        }
        if self.password.is_some() && self.username.is_none() {
            errors.push(ConfigError::new(
                &["password"],
                "a password needs a username",
            ));
        }
        if self.protocol == Protocol::V5 && self.keep_alive < Duration::from_secs(5) {
            // rumqttc's MQTT 5 client panics below 5 s (0s included) when it is built.
            errors.push(ConfigError::new(
                &["keep_alive"],
                "with MQTT 5, must be at least 5s (it cannot be turned off)",
            ));
        } else if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            errors.push(ConfigError::new(
                &["keep_alive"],
                "must be at least 1s (or 0s to turn keep-alive off)",
            ));
        }
        if self.reconnect_max.is_zero() {
            errors.push(ConfigError::new(&["reconnect_max"], "must be more than 0s"));
        }
        if let Some(t) = &self.tls
            && t.cert.is_some() != t.key.is_some()
        {
            errors.push(ConfigError::new(
                &["tls"],
                "`cert` and `key` go together: give both or neither",
            ));
        }
    }
}

/// Errors of the MQTT processors.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The connection settings are unusable (a bad URL, an unreadable certificate). Fatal.
    #[error("{0}")]
    Config(String),
    /// The broker refused the credentials or the client id. Fatal: retrying will not help.
    #[error("the MQTT broker at {url} refused the connection: {reason}")]
    Refused {
        /// The broker.
        url: String,
        /// Why.
        reason: String,
    },
    /// The broker refused a subscription. Fatal.
    #[error("the MQTT broker refused the subscription to `{0}`")]
    SubscriptionRefused(String),
    /// The client's request queue is gone (the event loop stopped). Fatal.
    #[error("the MQTT client stopped")]
    ClientGone,
}

/// A message received from the broker.
#[derive(Clone, Debug)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub pkid: u16,
    /// The broker says it may have sent this message before (the DUP flag of a resend).
    pub dup: bool,
}

/// What the event-loop task reports.
#[derive(Debug)]
pub(crate) enum MqttEvent {
    /// Connected (again).
    Connected { session_present: bool },
    /// The connection was lost; the task is reconnecting.
    Disconnected,
    /// A message arrived.
    Publish(Message),
    /// An outgoing publish left, with its packet id (0 for QoS 0).
    Sent(u16),
    /// The broker confirmed an outgoing publish (PUBACK for QoS 1, PUBCOMP for QoS 2).
    Confirmed(u16),
    /// Subscription results, one per filter in the order subscribed: `false` when refused.
    SubAck(Vec<bool>),
    /// The connection cannot be made to work; the task stopped.
    Fatal(MqttError),
}

/// A client of either protocol version.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Client {
    /// Acknowledge a received message (PUBACK for QoS 1, PUBREC for QoS 2; rumqttc answers the
    /// broker's PUBREL with PUBCOMP). Never waits: `false` when the request queue is full.
    pub fn try_ack(&self, qos: u8, pkid: u16) -> Result<bool, MqttError> {
        if qos == 0 {
            return Ok(true);
        }
        let r = match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos4(qos), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| match e {
                    rumqttc::ClientError::TryRequest(_) => None,
                    _ => Some(MqttError::ClientGone),
                })
            }
            Client::V5(c) => {
                let mut p =
                    rumqttc::v5::mqttbytes::v5::Publish::new("", qos5(qos), Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| match e {
                    rumqttc::v5::ClientError::TryRequest(_) => None,
                    _ => Some(MqttError::ClientGone),
                })
            }
        };
        match r {
            Ok(()) => Ok(true),
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    /// Subscribe to `filters` at `qos`.
    pub async fn subscribe(&self, filters: &[String], qos: u8) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos4(qos))),
                )
                .await
                .map_err(|_| MqttError::ClientGone),
            Client::V5(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), qos5(qos))),
                )
                .await
                .map_err(|_| MqttError::ClientGone),
        }
    }

    /// Ask for a clean disconnect.
    pub async fn disconnect(&self) {
        // The event loop may already be gone; then there is nothing to disconnect.
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|_| ()),
            Client::V5(c) => c.disconnect().await.map_err(|_| ()),
        };
    }
}

/// How a processor uses the connection.
pub(crate) struct Use {
    /// Manual acks (the source).
    pub manual_acks: bool,
    /// Outgoing in-flight window (sink), or the receive maximum announced to an MQTT 5 broker
    /// (source).
    pub inflight: u16,
    /// Capacity of the client's request queue.
    pub requests: usize,
    /// Capacity of the event channel to the processor (the source's bound on buffered
    /// messages; when full, the event loop is not polled and TCP holds the rest back, while
    /// the event-loop task writes the keep-alive pings itself).
    pub events: usize,
}

fn tls_config(tls: &TlsConfig) -> Result<rumqttc::TlsConfiguration, MqttError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: &str, path: &str, e: &dyn std::fmt::Display| {
        MqttError::Config(format!("TLS {what} `{path}`: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err("CA", path, &e))? {
                let cert = cert.map_err(|e| err("CA", path, &e))?;
                roots.add(cert).map_err(|e| err("CA", path, &e))?;
            }
        }
        None => roots = crate::http_client::native_roots(),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err("certificate", cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err("certificate", cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err("key", key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| err("certificate", cert, &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

/// Connect (lazily: the event-loop task makes the connection) and start the event-loop task.
/// Events go to the returned receiver; the task ends when the client is dropped or
/// disconnected, or on a fatal error (reported as [`MqttEvent::Fatal`]).
pub(crate) fn start(
    conn: &Connection,
    node: &str,
    usage: Use,
) -> Result<
    (
        Client,
        mpsc::Receiver<MqttEvent>,
        tokio::task::JoinHandle<()>,
    ),
    MqttError,
> {
    let url = BrokerUrl::parse(&conn.url).map_err(MqttError::Config)?;
    let transport = if url.tls {
        let tls = conn.tls.clone().unwrap_or_default();
        rumqttc::Transport::tls_with_config(tls_config(&tls)?)
    } else {
        rumqttc::Transport::tcp()
    };
    let (tx, rx) = mpsc::channel(usage.events.max(1));
    let (client, el) = match conn.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&conn.client_id, &url.host, url.port);
            o.set_transport(transport)
                .set_keep_alive(conn.keep_alive)
                .set_clean_session(conn.clean_session)
                .set_manual_acks(usage.manual_acks)
                .set_inflight(usage.inflight.max(1))
                .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                .set_request_channel_capacity(usage.requests);
            if let Some(user) = &conn.username {
                o.set_credentials(user, conn.password.clone().unwrap_or_default());
            }
            let (c, el) = rumqttc::AsyncClient::new(o, usage.requests);
            (Client::V4(c), EventLoop::V4(Box::new(el)))
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&conn.client_id, &url.host, url.port);
            o.set_transport(transport)
                .set_keep_alive(conn.keep_alive)
                .set_clean_start(conn.clean_session)
                .set_manual_acks(usage.manual_acks)
                .set_outgoing_inflight_upper_limit(usage.inflight.max(1))
                .set_max_packet_size(Some(MAX_PACKET as u32))
                .set_request_channel_capacity(usage.requests);
            if usage.manual_acks {
                o.set_receive_maximum(Some(usage.inflight.max(1)));
            }
            if !conn.clean_session {
                // MQTT 5 ends a session at disconnect unless it is given an expiry.
                o.set_session_expiry_interval(Some(u32::MAX));
            }
            if let Some(user) = &conn.username {
                o.set_credentials(user, conn.password.clone().unwrap_or_default());
            }
            let (c, el) = rumqttc::v5::AsyncClient::new(o, usage.requests);
            (Client::V5(c), EventLoop::V5(Box::new(el)))
        }
    };
    let driver = Driver {
        el,
        tx,
        url: url.to_string(),
        node: node.to_owned(),
        max_backoff: conn.reconnect_max,
        keep_alive: conn.keep_alive,
    };
    let handle = tokio::spawn(driver.run());
    Ok((client, rx, handle))
}

enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What one poll of the event loop gave.
enum Polled {
    Event(MqttEvent),
    Nothing,
    /// The client was dropped or asked to disconnect.
    Done,
    Retry(String),
    Fatal(MqttError),
}

fn refused(url: &str, code: &dyn std::fmt::Debug, fatal: bool) -> Polled {
    let reason = format!("{code:?}");
    if fatal {
        Polled::Fatal(MqttError::Refused {
            url: url.to_owned(),
            reason: match reason.as_str() {
                "BadUserNamePassword" => "bad username or password".into(),
                "NotAuthorized" => "not authorized (check username and password)".into(),
                _ => reason,
            },
        })
    } else {
        Polled::Retry(format!("connection refused: {reason}"))
    }
}

/// How long writing a PINGREQ may take before the connection counts as gone.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

impl EventLoop {
    /// Write a PINGREQ on the connection without polling the event loop (which would read
    /// messages too). The broker's PINGRESP is read with the next poll. Nothing to do while
    /// disconnected.
    async fn ping(&mut self) -> Result<(), String> {
        let write = async {
            match self {
                EventLoop::V4(el) => {
                    if let Some(n) = el.network.as_mut() {
                        n.write(rumqttc::Packet::PingReq)
                            .await
                            .map_err(|e| e.to_string())?;
                        n.flush().await.map_err(|e| e.to_string())?;
                    }
                }
                // rumqttc's MQTT 5 event loop keeps its connection to itself; there the
                // receive maximum bounds what the broker sends (see `Use::events`).
                EventLoop::V5(_) => return Err("not available with MQTT 5".to_owned()),
            }
            Ok(())
        };
        tokio::time::timeout(PING_TIMEOUT, write)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    async fn poll(&mut self, url: &str) -> Polled {
        match self {
            EventLoop::V4(el) => {
                use rumqttc::{
                    ConnectReturnCode as C, ConnectionError as E, Event, Outgoing, Packet,
                };
                match el.poll().await {
                    Ok(Event::Incoming(p)) => match p {
                        Packet::ConnAck(a) => Polled::Event(MqttEvent::Connected {
                            session_present: a.session_present,
                        }),
                        Packet::Publish(p) => Polled::Event(MqttEvent::Publish(Message {
                            topic: p.topic,
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                            pkid: p.pkid,
                            dup: p.dup,
                        })),
                        Packet::PubAck(a) => Polled::Event(MqttEvent::Confirmed(a.pkid)),
                        Packet::PubComp(a) => Polled::Event(MqttEvent::Confirmed(a.pkid)),
                        Packet::SubAck(a) => Polled::Event(MqttEvent::SubAck(
                            a.return_codes
                                .iter()
                                .map(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                                .collect(),
                        )),
                        _ => Polled::Nothing,
                    },
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        Polled::Event(MqttEvent::Sent(pkid))
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Done,
                    Ok(Event::Outgoing(_)) => Polled::Nothing,
                    Err(E::RequestsDone) => Polled::Done,
                    Err(E::ConnectionRefused(code)) => refused(
                        url,
                        &code,
                        matches!(
                            code,
                            C::BadUserNamePassword | C::NotAuthorized | C::BadClientId
                        ),
                    ),
                    Err(e) => Polled::Retry(e.to_string()),
                }
            }
            EventLoop::V5(el) => {
                use rumqttc::Outgoing;
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as C, Packet};
                use rumqttc::v5::{ConnectionError as E, Event};
                match el.poll().await {
                    Ok(Event::Incoming(p)) => match p {
                        Packet::ConnAck(a) => Polled::Event(MqttEvent::Connected {
                            session_present: a.session_present,
                        }),
                        Packet::Publish(p) => Polled::Event(MqttEvent::Publish(Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                            pkid: p.pkid,
                            dup: p.dup,
                        })),
                        Packet::PubAck(a) => Polled::Event(MqttEvent::Confirmed(a.pkid)),
                        Packet::PubComp(a) => Polled::Event(MqttEvent::Confirmed(a.pkid)),
                        Packet::SubAck(a) => Polled::Event(MqttEvent::SubAck(
                            a.return_codes
                                .iter()
                                .map(|c| {
                                    matches!(
                                        c,
                                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                                    )
                                })
                                .collect(),
                        )),
                        Packet::Disconnect(d) => {
                            Polled::Retry(format!("the broker disconnected: {:?}", d.reason_code))
                        }
                        _ => Polled::Nothing,
                    },
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        Polled::Event(MqttEvent::Sent(pkid))
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Done,
                    Ok(Event::Outgoing(_)) => Polled::Nothing,
                    Err(E::RequestsDone) => Polled::Done,
                    Err(E::ConnectionRefused(code)) => refused(
                        url,
                        &code,
                        matches!(
                            code,
                            C::BadUserNamePassword
                                | C::NotAuthorized
                                | C::BadAuthenticationMethod
                                | C::Banned
                                | C::ClientIdentifierNotValid
                        ),
                    ),
                    Err(e) => Polled::Retry(e.to_string()),
                }
            }
        }
    }
}

/// First reconnect delay; doubles up to the configured maximum.
const BACKOFF_START: Duration = Duration::from_millis(100);

struct Driver {
    el: EventLoop,
    tx: mpsc::Sender<MqttEvent>,
    url: String,
    node: String,
    max_backoff: Duration,
    keep_alive: Duration,
}

impl Driver {
    async fn run(mut self) {
        let mut connected = false;
        let mut failures: u64 = 0;
        let mut backoff = BACKOFF_START;
        loop {
            let event = match self.el.poll(&self.url).await {
                Polled::Event(e) => e,
                Polled::Nothing => continue,
                Polled::Done => return,
                Polled::Fatal(e) => {
                    // The processor reports the error; the task just stops.
                    let _ = self.tx.send(MqttEvent::Fatal(e)).await;
                    return;
                }
                Polled::Retry(error) => {
                    // Once per burst: the connection dropped, or the first attempt failed.
                    if connected || failures == 0 {
                        connected = false;
                        if self.tx.send(MqttEvent::Disconnected).await.is_err() {
                            return;
                        }
                    }
                    failures += 1;
                    if failures == 1 {
                        // One line per burst of attempts; the next one after a success.
                        tracing::warn!(
                            node = %self.node,
                            url = %self.url,
                            %error,
                            max_backoff = ?self.max_backoff,
                            "cannot reach the MQTT broker; retrying with backoff"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                    continue;
                }
            };
            if let MqttEvent::Connected { .. } = event {
                if failures > 0 {
                    tracing::info!(
                        node = %self.node,
                        url = %self.url,
                        attempts = failures,
                        "connected to the MQTT broker"
                    );
                }
                connected = true;
                failures = 0;
                backoff = BACKOFF_START;
            }
            if !self.forward(event).await {
                return;
            }
        }
    }

    /// Hand an event to the processor; `false` when it is gone. While the channel is full (the
    /// flow applies back-pressure) the event loop is not polled: a poll reads more messages from
    /// the broker, which would pile up here without bound (Mosquitto sent thousands beyond the
    /// window the source announces), while unpolled, TCP holds them back. But the client's
    /// keep-alive only goes out from a poll, and the broker closed the connection after 1.5
    /// keep-alives of back-pressure. So the PINGREQs are written here, twice per keep-alive, on
    /// the idle connection (its answers are read with the next poll). Nothing is read, taken
    /// or acknowledged meanwhile.
    async fn forward(&mut self, event: MqttEvent) -> bool {
        use tokio::sync::mpsc::error::TrySendError;
        let event = match self.tx.try_send(event) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(e)) => e,
        };
        let period = self.keep_alive / 2;
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut pinging = !period.is_zero();
        loop {
            tokio::select! {
                permit = self.tx.reserve() => {
                    return match permit {
                        Ok(p) => {
                            p.send(event);
                            true
                        }
                        Err(_) => false,
                    };
                }
                _ = pings.tick(), if pinging => {
                    if let Err(error) = self.el.ping().await {
                        // The connection is gone: the next poll reports it and reconnects.
                        tracing::debug!(node = %self.node, %error, "keep-alive not sent");
                        pinging = false;
                    } else {
                        tracing::trace!(node = %self.node, "keep-alive sent under back-pressure");
                    }
                }
            }
        }
    }
}

/// A template over topic levels, like `sensors/{device}/telemetry`: literal levels must match,
/// `+` matches any level, `{name}` captures a level as field `name`, and a final `#` matches
/// the rest.
#[derive(Clone, Debug)]
pub(crate) struct TopicTemplate {
    levels: Vec<Level>,
}

#[derive(Clone, Debug)]
enum Level {
    Literal(String),
    Any,
    Capture(String),
    Rest,
}

impl TopicTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let parts: Vec<&str> = template.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = if *part == "+" {
                Level::Any
            } else if *part == "#" {
                if i + 1 != parts.len() {
                    return Err("`#` may only be the last level".into());
                }
                Level::Rest
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(format!("`{part}` is not a valid `{{name}}` level"));
                }
                Level::Capture(name.to_owned())
            } else if part.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "level `{part}`: a `{{name}}` capture must be a whole level"
                ));
            } else {
                Level::Literal((*part).to_owned())
            };
            levels.push(level);
        }
        Ok(Self { levels })
    }

    /// The captured fields, or `None` when the topic does not match.
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut out = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(out),
                _ => {
                    let part = parts.next()?;
                    match level {
                        Level::Literal(l) if l != part => return None,
                        Level::Capture(name) => out.push((name.as_str(), part)),
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(out)
    }
}

/// Check a topic filter (wildcards allowed) or, with `wildcards` false, a topic name.
pub(crate) fn check_topic(topic: &str, wildcards: bool) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    let filter = topic
        .strip_prefix("$share/")
        .map(|rest| {
            rest.split_once('/')
                .filter(|(group, f)| !group.is_empty() && !f.is_empty())
                .map(|(_, f)| f)
                .ok_or_else(|| {
                    format!("`{topic}`: a shared subscription is $share/<group>/<filter>")
                })
        })
        .transpose()?
        .unwrap_or(topic);
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let wild = l.contains(['+', '#']);
        if wild && !wildcards {
            return Err(format!(
                "`{topic}`: wildcards are not allowed in a topic name"
            ));
        }
        if wild && *l != "+" && *l != "#" {
            return Err(format!("`{topic}`: `+` and `#` must fill a whole level"));
        }
        if *l == "#" && i + 1 != levels.len() {
            return Err(format!("`{topic}`: `#` may only be the last level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn urls() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1:1884").expect("ok");
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 1884, false));
        let u = BrokerUrl::parse("mqtts://broker.example").expect("ok");
        assert_eq!((u.port, u.tls), (8883, true));
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://u:p@x:1").is_err());
        assert!(BrokerUrl::parse("mqtt://x:notaport").is_err());
        assert!(BrokerUrl::parse("127.0.0.1:1883").is_err());
    }

    #[test]
    fn topic_templates() {
        let t = TopicTemplate::parse("sensors/{device}/telemetry").expect("ok");
        assert_eq!(
            t.captures("sensors/car-1/telemetry"),
            Some(vec![("device", "car-1")])
        );
        assert_eq!(t.captures("sensors/car-1/status"), None);
        assert_eq!(t.captures("sensors/car-1/telemetry/x"), None);
        let t = TopicTemplate::parse("+/{a}/#").expect("ok");
        assert_eq!(t.captures("x/1/y/z"), Some(vec![("a", "1")]));
        assert!(TopicTemplate::parse("a/b{c}").is_err());
        assert!(TopicTemplate::parse("#/a").is_err());
    }

    #[test]
    fn topic_filters() {
        assert!(check_topic("sensors/+/telemetry", true).is_ok());
        assert!(check_topic("$share/g/sensors/#", true).is_ok());
        assert!(check_topic("$share/g", true).is_err());
        assert!(check_topic("a/#/b", true).is_err());
        assert!(check_topic("a/b+", true).is_err());
        assert!(check_topic("a/+", false).is_err());
        assert!(check_topic("", true).is_err());
    }
}
