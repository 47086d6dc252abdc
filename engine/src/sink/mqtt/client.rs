//! The MQTT sink: an outbox the sink thread fills, and a connection
//! thread that owns the `rumqttc` client and drains it.
//!
//! Why a thread of its own: a broker that goes away must cost messages,
//! never time on the sink thread (which the other outputs share) or in
//! inference. [`MqttSink::publish`] only appends to a bounded outbox
//! (dropping and counting the oldest when full). The connection thread
//! moves messages from the outbox to `rumqttc` while connected, at most
//! [`INFLIGHT`] at a time, and tracks each until it is written (QoS 0) or
//! acknowledged (QoS 1). When the link breaks, what was not confirmed goes
//! back to the front of the outbox (clean sessions: `rumqttc` forgets it),
//! so every message is counted exactly once as delivered, dropped or
//! still queued: `published = delivered + dropped + queued`. Broken links
//! are retried with exponential backoff (0.5 s doubling to 30 s).
//!
//! While connected, the connection thread polls `rumqttc` every [`POLL`];
//! that bounds the latency this output adds. While connecting, it waits
//! for the attempt's outcome (at most [`CONNECT_TIMEOUT_S`]), so a clean
//! stop may wait that long when the broker is silent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    Client, ConnectReturnCode, Connection, ConnectionError, Event, LastWill, MqttOptions, Outgoing,
    Packet, QoS, RecvTimeoutError, TlsConfiguration, Transport,
};
use serde::Serialize;

use super::MqttSpec;
use crate::config::MqttConfig;
use crate::event::Message;
use crate::sink::{Sink, SinkError};

/// Messages handed to `rumqttc` and not yet confirmed, at most.
const INFLIGHT: usize = 32;
/// How often the connection thread looks for new messages.
const POLL: Duration = Duration::from_millis(10);
/// The first wait before reconnecting; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a CONNECT may go unanswered (TCP and TLS included).
const CONNECT_TIMEOUT_S: u64 = 5;
/// How long a clean stop waits for the outbox to drain.
const DRAIN_AT_STOP: Duration = Duration::from_secs(3);

/// Delivery counters, as the retained status reports them.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct MqttCounters {
    /// Messages handed to this output.
    pub published: u64,
    /// Written to the broker (QoS 0) or acknowledged by it (QoS 1).
    pub delivered: u64,
    /// Dropped from a full outbox (oldest first) while disconnected.
    pub dropped: u64,
    /// Waiting in the outbox or in flight.
    pub queued: u64,
    /// Successful connections after the first.
    pub reconnects: u64,
}

/// An MQTT topic message waiting or in flight.
struct Pending {
    payload: Vec<u8>,
    /// Set once `rumqttc` wrote it (QoS 1: its packet id, awaiting PUBACK).
    pkid: Option<u16>,
}

/// What the sink thread and the connection thread share.
#[derive(Default)]
struct Shared {
    outbox: VecDeque<Vec<u8>>,
    counters: MqttCounters,
    connected: bool,
    last_error: Option<String>,
}

/// `mqtt://` / `mqtts://`.
pub struct MqttSink {
    name: String,
    shared: Arc<Mutex<Shared>>,
    capacity: usize,
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl MqttSink {
    /// Connects (in the background) to the broker `spec` names.
    ///
    /// Waits up to about [`CONNECT_TIMEOUT_S`] seconds for the first
    /// answer: a broker that refuses the credentials or a certificate that
    /// does not verify is an error now, at start, rather than a retry loop
    /// nobody sees; a broker that cannot be reached (or never answers) is
    /// logged and retried while messages queue, since a field kit may
    /// start offline.
    ///
    /// # Errors
    /// * [`SinkError::Spec`] for settings that do not fit (no CA file for
    ///   `mqtts://`, a password variable that is unset, a bad QoS);
    /// * [`SinkError::Connect`] when the broker refused the connection or
    ///   TLS failed.
    pub fn connect(name: &str, spec: &MqttSpec, config: &MqttConfig) -> Result<Self, SinkError> {
        let device = super::device_id(name, config.device_id.as_deref())?;
        let qos = match config.qos.unwrap_or(1) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            q => {
                return Err(SinkError::spec(
                    name,
                    format!("[mqtt] qos = {q}: expected 0 or 1"),
                ));
            }
        };
        let capacity = config.buffer.unwrap_or(10_000);
        if capacity == 0 {
            return Err(SinkError::spec(
                name,
                "[mqtt] buffer = 0: expected at least 1",
            ));
        }
        let password = password(name, config)?;
        let status_topic = spec.status_topic(&device);
        let mut options = MqttOptions::new(format!("emogate-{device}"), &spec.host, spec.port);
        options
            .set_keep_alive(Duration::from_secs(
                config.keep_alive_s.unwrap_or(30).max(5),
            ))
            .set_clean_session(true)
            .set_inflight(INFLIGHT as u16)
            .set_request_channel_capacity(INFLIGHT * 2 + 8)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_last_will(LastWill::new(
                &status_topic,
                status_json(&device, "offline", Some("connection lost"), None),
                QoS::AtLeastOnce,
                true,
            ));
        match (&spec.user, password) {
            (Some(user), Some(pw)) => {
                options.set_credentials(user, pw);
            }
            (Some(user), None) => {
                options.set_credentials(user, "");
            }
            (None, Some(_)) => {
                return Err(SinkError::spec(
                    name,
                    "a password is configured but the spec names no user: use mqtt://USER@HOST/…",
                ));
            }
            (None, None) => {}
        }
        if spec.tls {
            options.set_transport(Transport::Tls(tls_config(name, config)?));
        }
        let (client, mut connection) = Client::new(options, INFLIGHT * 2 + 8);
        let mut net = connection.eventloop.network_options();
        net.set_connection_timeout(CONNECT_TIMEOUT_S);
        connection.eventloop.set_network_options(net);

        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = mpsc::channel();
        let worker = Worker {
            name: name.to_string(),
            device: device.clone(),
            client,
            events_topic: spec.events_topic(&device),
            status_topic,
            qos,
            shared: Arc::clone(&shared),
            stop: Arc::clone(&stop),
            inflight: VecDeque::new(),
            first: Some(first_tx),
        };
        let worker = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || worker.run(&mut connection))
            .map_err(|e| SinkError::io(name, e))?;
        let sink = MqttSink {
            name: name.to_string(),
            shared,
            capacity,
            stop,
            worker: Some(worker),
        };
        match first_rx.recv_timeout(Duration::from_secs(CONNECT_TIMEOUT_S + 2)) {
            Ok(FirstOutcome::Connected) => {}
            Ok(FirstOutcome::Fatal(message)) => {
                return Err(SinkError::Connect {
                    target: name.to_string(),
                    message,
                });
            }
            Ok(FirstOutcome::Unreachable(e)) => tracing::warn!(
                output = name,
                error = %e,
                "broker unreachable; messages queue until it answers"
            ),
            Err(_) => tracing::warn!(
                output = name,
                "no answer from the broker yet; messages queue until it answers"
            ),
        }
        Ok(sink)
    }

    /// The counters now.
    pub fn counters(&self) -> MqttCounters {
        lock(&self.shared).counters
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink for MqttSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        let payload = message.to_json().into_bytes();
        let mut s = lock(&self.shared);
        s.counters.published += 1;
        if s.outbox.len() >= self.capacity {
            s.outbox.pop_front();
            s.counters.dropped += 1;
        }
        s.outbox.push_back(payload);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl Drop for MqttSink {
    /// A clean stop: drains the outbox (up to [`DRAIN_AT_STOP`]), replaces
    /// the retained status with `offline` and the final counters, and
    /// disconnects (so the broker does not publish the last will).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let c = self.counters();
        tracing::info!(
            output = self.name,
            published = c.published,
            delivered = c.delivered,
            dropped = c.dropped,
            undelivered = c.queued,
            "mqtt output closed"
        );
    }
}

/// The outcome of the first connection attempt, for [`MqttSink::connect`].
enum FirstOutcome {
    Connected,
    /// Retrying would not help: credentials refused, TLS failed.
    Fatal(String),
    /// Retried in the background.
    Unreachable(String),
}

struct Worker {
    name: String,
    device: String,
    client: Client,
    events_topic: String,
    status_topic: String,
    qos: QoS,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// Handed to `rumqttc`, oldest first; `None` payloads are status
    /// messages (not counted).
    inflight: VecDeque<(Option<Pending>, QoS)>,
    first: Option<mpsc::Sender<FirstOutcome>>,
}

impl Worker {
    fn run(mut self, connection: &mut Connection) {
        let mut backoff = MIN_BACKOFF;
        let mut connected_once = false;
        let mut stopping_since: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) && stopping_since.is_none() {
                stopping_since = Some(Instant::now());
            }
            if let Some(since) = stopping_since {
                let connected = lock(&self.shared).connected;
                let drained = lock(&self.shared).outbox.is_empty() && self.inflight.is_empty();
                if !connected || drained || since.elapsed() > DRAIN_AT_STOP {
                    if connected {
                        self.say_goodbye(connection);
                    }
                    return;
                }
            }
            // Connecting runs to its end (answer, error or the CONNECT
            // timeout): a poll cut short would abort the attempt.
            let polled = if lock(&self.shared).connected {
                connection.recv_timeout(POLL)
            } else {
                connection
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)
            };
            match polled {
                Ok(Ok(event)) => {
                    if let Event::Incoming(Packet::ConnAck(_)) = event {
                        backoff = MIN_BACKOFF;
                        let reconnects = {
                            let mut s = lock(&self.shared);
                            s.connected = true;
                            s.last_error = None;
                            if connected_once {
                                s.counters.reconnects += 1;
                            }
                            s.counters.reconnects
                        };
                        connected_once = true;
                        tracing::info!(output = self.name, reconnects, "connected to the broker");
                        if let Some(first) = self.first.take() {
                            let _ = first.send(FirstOutcome::Connected);
                        }
                        self.send_status("online", None);
                    } else {
                        self.track(&event);
                    }
                }
                Ok(Err(e)) => {
                    self.disconnected();
                    let fatal = is_fatal(&e);
                    let message = describe(&e);
                    if let Some(first) = self.first.take() {
                        let outcome = if fatal {
                            FirstOutcome::Fatal(message.clone())
                        } else {
                            FirstOutcome::Unreachable(message.clone())
                        };
                        let _ = first.send(outcome);
                        if fatal {
                            return;
                        }
                    }
                    tracing::warn!(
                        output = self.name,
                        error = message,
                        retry_in_ms = backoff.as_millis() as u64,
                        "broker connection failed"
                    );
                    lock(&self.shared).last_error = Some(message);
                    if stopping_since.is_some() {
                        return;
                    }
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                // Nothing happened within POLL.
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.pump();
        }
    }

    /// Moves messages from the outbox to `rumqttc` while connected and
    /// fewer than [`INFLIGHT`] are unconfirmed.
    fn pump(&mut self) {
        let mut s = lock(&self.shared);
        while s.connected && self.inflight.len() < INFLIGHT {
            let Some(payload) = s.outbox.pop_front() else {
                break;
            };
            match self
                .client
                .try_publish(&self.events_topic, self.qos, false, payload.clone())
            {
                Ok(()) => self.inflight.push_back((
                    Some(Pending {
                        payload,
                        pkid: None,
                    }),
                    self.qos,
                )),
                Err(_) => {
                    // The request channel is full: try again next poll.
                    s.outbox.push_front(payload);
                    break;
                }
            }
        }
        s.counters.queued = (s.outbox.len() + self.inflight_messages()) as u64;
    }

    fn inflight_messages(&self) -> usize {
        self.inflight.iter().filter(|(p, _)| p.is_some()).count()
    }

    /// Confirms in-flight messages from `rumqttc`'s events: a QoS 0
    /// message when written, a QoS 1 message when its PUBACK arrives.
    fn track(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // Requests are written in the order they were made.
                let Some(i) = self
                    .inflight
                    .iter()
                    .position(|(p, _)| p.as_ref().is_none_or(|p| p.pkid.is_none()))
                else {
                    return;
                };
                let (entry, qos) = &mut self.inflight[i];
                match (entry.as_mut(), *qos) {
                    (Some(p), QoS::AtLeastOnce) => p.pkid = Some(*pkid),
                    (Some(_), _) => {
                        self.inflight.remove(i);
                        lock(&self.shared).counters.delivered += 1;
                    }
                    // Status messages are not counted or retried.
                    (None, _) => {
                        self.inflight.remove(i);
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(i) = self
                    .inflight
                    .iter()
                    .position(|(p, _)| p.as_ref().is_some_and(|p| p.pkid == Some(ack.pkid)))
                {
                    self.inflight.remove(i);
                    lock(&self.shared).counters.delivered += 1;
                }
            }
            _ => {}
        }
    }

    /// The link broke: unconfirmed messages go back to the front of the
    /// outbox, in order (sent again after reconnecting: at least once).
    fn disconnected(&mut self) {
        let mut s = lock(&self.shared);
        s.connected = false;
        while let Some((entry, _)) = self.inflight.pop_back() {
            if let Some(p) = entry {
                s.outbox.push_front(p.payload);
            }
        }
        s.counters.queued = s.outbox.len() as u64;
    }

    /// Publishes the retained status (QoS 1). Not counted as a message.
    fn send_status(&mut self, state: &str, reason: Option<&str>) {
        let counters = lock(&self.shared).counters;
        let payload = status_json(&self.device, state, reason, Some(counters));
        if self
            .client
            .try_publish(&self.status_topic, QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            self.inflight.push_back((None, QoS::AtLeastOnce));
        }
    }

    /// The clean stop: `offline` status with the final counters, then
    /// DISCONNECT, waiting briefly for both to go out.
    fn say_goodbye(&mut self, connection: &mut Connection) {
        {
            let mut s = lock(&self.shared);
            s.counters.queued = (s.outbox.len() + self.inflight_messages()) as u64;
        }
        self.send_status("offline", Some("stopped"));
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match connection.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                Ok(Ok(event)) => self.track(&event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL.max(Duration::from_millis(50)));
        }
    }
}

/// Refused credentials and TLS failures: retrying cannot fix them.
fn is_fatal(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::ConnectionRefused(_) | ConnectionError::Tls(_)
    )
}

/// A one-line account of a connection failure, in the user's terms.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::NotAuthorized => {
                    "not authorized (wrong password, or the user may not connect)"
                }
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not supported",
                ConnectReturnCode::Success => "refused",
            };
            format!("the broker refused the connection: {why}")
        }
        ConnectionError::NetworkTimeout => format!(
            "no answer to CONNECT within {CONNECT_TIMEOUT_S} s (is this an MQTT broker? \
             mqtts:// against a plain port, or the reverse?)"
        ),
        ConnectionError::Tls(e) => format!("TLS: {e}"),
        e => e.to_string(),
    }
}

fn status_json(
    device: &str,
    state: &str,
    reason: Option<&str>,
    counters: Option<MqttCounters>,
) -> Vec<u8> {
    let unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut doc = serde_json::json!({
        "device_id": device,
        "state": state,
        "unix_s": unix_s,
    });
    if let Some(obj) = doc.as_object_mut() {
        if let Some(r) = reason {
            obj.insert("reason".into(), r.into());
        }
        if let Some(c) = counters
            && let Ok(v) = serde_json::to_value(c)
        {
            obj.insert("counters".into(), v);
        }
    }
    doc.to_string().into_bytes()
}

fn password(name: &str, config: &MqttConfig) -> Result<Option<String>, SinkError> {
    match (&config.password, &config.password_env) {
        (Some(_), Some(_)) => Err(SinkError::spec(
            name,
            "[mqtt] has both password and password_env: keep one",
        )),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(SinkError::spec(
                name,
                format!("[mqtt] password_env = {var:?}, but that environment variable is not set"),
            )),
        },
        (None, None) => Ok(None),
    }
}

/// rustls with the `ring` provider, trusting the CAs in `[mqtt] ca_file`.
fn tls_config(name: &str, config: &MqttConfig) -> Result<TlsConfiguration, SinkError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = config.ca_file.as_ref().ok_or_else(|| {
        SinkError::spec(
            name,
            "mqtts:// needs [mqtt] ca_file: the PEM file of the CA that signed the broker's certificate",
        )
    })?;
    let bad = |message: String| {
        SinkError::spec(
            name,
            format!("[mqtt] ca_file {}: {message}", path.display()),
        )
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate refused ({e})")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(client)))
}
