//! `http:ADDR` — Server-Sent Events at `/events`, JSON at `/status` and a
//! live dashboard at `/`.
//!
//! A small HTTP/1.1 server on std's [`TcpListener`]: one accept thread and
//! one thread per connection (at most [`HttpConfig::max_connections`]), no
//! async runtime. Every response is `Connection: close`.
//!
//! [`Sink::publish`] never blocks on the network: it serializes the message
//! once and offers the frame to every `/events` client through a bounded
//! per-client queue ([`HttpConfig::client_queue`]). When a client's queue is
//! full the frame is lost for that client and counted (`events_dropped`); a
//! client whose socket accepts nothing for [`HttpConfig::write_timeout`] is
//! disconnected and counted (`clients_dropped`).
//!
//! # Routes
//! * `GET /events` — `text/event-stream`. It opens with `retry: 2000`, then
//!   replays the backlog: the latest notice of every source, and the emotion
//!   events of the last [`HttpConfig::backlog_window`] (at most
//!   [`HttpConfig::backlog_len`]), so a dashboard fills its chart at once.
//!   Each message is one frame
//!   ```text
//!   id: <epoch>-<n>
//!   event: <type>
//!   data: <the message's JSON, as in jsonl:, "type" included>
//!
//!   ```
//!   where `<type>` is `emotion`, `source_error`, `source_opened` or
//!   `source_ended` and `<epoch>` identifies this sink instance. A client
//!   that reconnects with `Last-Event-ID` of the same epoch gets only the
//!   backlog after that id. `: keepalive` comments go out when nothing was
//!   sent for [`HttpConfig::keepalive`].
//! * `GET /status` — `application/json`: the status handle's object, with an
//!   `"http"` member holding this sink's numbers (see [`HttpStats`]). A
//!   handle that returns something other than an object is put under
//!   `"pipeline"`.
//! * `GET /` — the dashboard, one self-contained HTML page (inline CSS and
//!   JS; nothing is loaded from elsewhere, enforced by its
//!   `Content-Security-Policy`).
//!
//! `HEAD` is answered like `GET` without a body; other methods get `405`,
//! other paths `404`. A request head must arrive within
//! [`HttpConfig::read_timeout`] and fit in 8 KiB (`408`/`431` otherwise).
//!
//! There is no authentication: the default host is 127.0.0.1, and
//! `http:0.0.0.0:PORT` should sit behind a reverse proxy that adds it.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Sink, SinkError, StatusHandle};
use crate::event::Message;

/// The dashboard served at `/`.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The largest request head accepted.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How often the accept thread looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// Source notices kept for replay (one per source).
const MAX_SOURCES: usize = 32;

/// Tuning of the HTTP sink; [`HttpConfig::default`] suits a dashboard.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Frames queued per `/events` client before its events are dropped.
    pub client_queue: usize,
    /// Emotion events kept for replay, at most.
    pub backlog_len: usize,
    /// Emotion events kept for replay: this much pipeline time before the
    /// newest one.
    pub backlog_window: Duration,
    /// A `: keepalive` comment goes out after this long without a frame.
    pub keepalive: Duration,
    /// Time allowed for a request head to arrive.
    pub read_timeout: Duration,
    /// A client whose socket takes nothing for this long is disconnected.
    pub write_timeout: Duration,
    /// Connections served at once (`/events` clients included); more get
    /// `503`.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            client_queue: 256,
            backlog_len: 600,
            backlog_window: Duration::from_secs(60),
            keepalive: Duration::from_secs(15),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// This sink's numbers, as in `/status`'s `"http"` member.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HttpStats {
    /// The bound address.
    pub addr: String,
    /// `/events` clients connected now.
    pub clients: usize,
    /// `/events` clients ever connected.
    pub clients_total: u64,
    /// Clients disconnected because their socket took nothing for
    /// `write_timeout`.
    pub clients_dropped: u64,
    /// Messages published to the sink.
    pub events_published: u64,
    /// Frames written to clients (backlog replays included).
    pub events_sent: u64,
    /// Frames lost because a client's queue was full.
    pub events_dropped: u64,
    /// Emotion events held for replay.
    pub backlog: usize,
}

/// A serialized message, shared by every client's queue.
#[derive(Debug)]
struct Frame {
    seq: u64,
    text: String,
}

struct Client {
    id: u64,
    queue: SyncSender<Arc<Frame>>,
    /// To unblock the client's writer on shutdown.
    stream: TcpStream,
}

#[derive(Default)]
struct Fanout {
    clients: Vec<Client>,
    /// Emotion events: (stamp_s, frame), oldest first.
    emotions: VecDeque<(f64, Arc<Frame>)>,
    /// The latest notice per `modality/source`.
    sources: BTreeMap<String, Arc<Frame>>,
}

struct Shared {
    addr: SocketAddr,
    epoch: String,
    config: HttpConfig,
    status: StatusHandle,
    fanout: Mutex<Fanout>,
    shutdown: AtomicBool,
    connections: AtomicUsize,
    next_client: AtomicU64,
    clients_dropped: AtomicU64,
    events_published: AtomicU64,
    events_sent: AtomicU64,
    events_dropped: AtomicU64,
}

impl Shared {
    fn fanout(&self) -> MutexGuard<'_, Fanout> {
        self.fanout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> HttpStats {
        let fanout = self.fanout();
        HttpStats {
            addr: self.addr.to_string(),
            clients: fanout.clients.len(),
            clients_total: self.next_client.load(Ordering::Relaxed),
            clients_dropped: self.clients_dropped.load(Ordering::Relaxed),
            events_published: self.events_published.load(Ordering::Relaxed),
            events_sent: self.events_sent.load(Ordering::Relaxed),
            events_dropped: self.events_dropped.load(Ordering::Relaxed),
            backlog: fanout.emotions.len(),
        }
    }
}

/// Serves events over HTTP (see the module docs).
pub struct HttpSink {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    seq: u64,
}

impl HttpSink {
    /// Binds `addr` (port 0 picks a free port; see [`HttpSink::local_addr`])
    /// with the default [`HttpConfig`].
    ///
    /// # Errors
    /// [`SinkError::Io`] naming `http:ADDR` when `addr` cannot be bound.
    pub fn bind(addr: SocketAddr, status: StatusHandle) -> Result<Self, SinkError> {
        Self::bind_with(addr, status, HttpConfig::default())
    }

    /// As [`HttpSink::bind`], with `config`.
    ///
    /// # Errors
    /// As [`HttpSink::bind`].
    pub fn bind_with(
        addr: SocketAddr,
        status: StatusHandle,
        config: HttpConfig,
    ) -> Result<Self, SinkError> {
        let target = format!("http:{addr}");
        let listener = TcpListener::bind(addr).map_err(|e| SinkError::io(&target, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| SinkError::io(&target, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| SinkError::io(&target, e))?;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        let shared = Arc::new(Shared {
            addr: local,
            epoch: format!("{epoch:x}"),
            config,
            status,
            fanout: Mutex::new(Fanout::default()),
            shutdown: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            next_client: AtomicU64::new(0),
            clients_dropped: AtomicU64::new(0),
            events_published: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(|e| SinkError::io(&target, e))?
        };
        tracing::info!(addr = %local, "dashboard at http://{local}/ (events at /events, status at /status)");
        Ok(HttpSink {
            shared,
            accept: Some(accept),
            seq: 0,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// This sink's numbers now.
    pub fn stats(&self) -> HttpStats {
        self.shared.stats()
    }

    /// Stops accepting, closes every client and waits for the accept
    /// thread. Dropping the sink does the same.
    pub fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let clients = std::mem::take(&mut self.shared.fanout().clients);
        for client in clients {
            // Unblocks a writer stuck on a full socket; dropping the queue
            // ends an idle one.
            let _ = client.stream.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take()
            && accept.join().is_err()
        {
            tracing::warn!(addr = %self.shared.addr, "http accept thread panicked");
        }
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn message_type(message: &Message) -> &'static str {
    match message {
        Message::Emotion(_) => "emotion",
        Message::SourceError(_) => "source_error",
        Message::SourceOpened(_) => "source_opened",
        Message::SourceEnded(_) => "source_ended",
    }
}

impl Sink for HttpSink {
    fn name(&self) -> String {
        format!("http:{}", self.shared.addr)
    }

    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        self.seq += 1;
        let shared = &self.shared;
        shared.events_published.fetch_add(1, Ordering::Relaxed);
        let frame = Arc::new(Frame {
            seq: self.seq,
            text: format!(
                "id: {}-{}\nevent: {}\ndata: {}\n\n",
                shared.epoch,
                self.seq,
                message_type(message),
                message.to_json()
            ),
        });
        let mut fanout = shared.fanout();
        match message {
            Message::Emotion(event) => {
                let emotions = &mut fanout.emotions;
                // A pipeline clock that went back is a new run: start over.
                if emotions
                    .back()
                    .is_some_and(|(newest, _)| event.stamp_s < newest - 1.0)
                {
                    emotions.clear();
                }
                emotions.push_back((event.stamp_s, Arc::clone(&frame)));
                let oldest = event.stamp_s - shared.config.backlog_window.as_secs_f64();
                while emotions.len() > shared.config.backlog_len
                    || emotions.front().is_some_and(|(t, _)| *t < oldest)
                {
                    emotions.pop_front();
                }
            }
            Message::SourceError(n) | Message::SourceOpened(n) | Message::SourceEnded(n) => {
                let key = format!("{}/{}", n.modality, n.source);
                if fanout.sources.len() < MAX_SOURCES || fanout.sources.contains_key(&key) {
                    fanout.sources.insert(key, Arc::clone(&frame));
                }
            }
        }
        let mut dropped = 0u64;
        fanout
            .clients
            .retain(|client| match client.queue.try_send(Arc::clone(&frame)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        drop(fanout);
        if dropped > 0 {
            let before = shared.events_dropped.fetch_add(dropped, Ordering::Relaxed);
            // Log the first loss and then every 1000th, not each one.
            if before == 0 || (before + dropped) / 1000 != before / 1000 {
                tracing::warn!(
                    addr = %shared.addr,
                    dropped = before + dropped,
                    "http clients not keeping up: events dropped"
                );
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // Frames are handed to the client threads as they are published.
        Ok(())
    }
}

/// One of [`HttpConfig::max_connections`], held by a connection thread.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let (refusals, queue) = mpsc::sync_channel::<TcpStream>(16);
    let refuser = std::thread::Builder::new()
        .name("http-refuse".into())
        .spawn(move || {
            for mut stream in queue {
                refuse(&mut stream);
            }
        });
    if let Err(e) = &refuser {
        tracing::warn!(error = %e, "http: cannot start the refusal thread; excess connections are closed");
    }
    while !shared.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if shared.connections.fetch_add(1, Ordering::SeqCst)
                    >= shared.config.max_connections
                {
                    shared.connections.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(%peer, "http: too many connections, refusing");
                    // Answered one at a time by the refusal thread; beyond
                    // its queue, just closed.
                    let _ = refusals.try_send(stream);
                    continue;
                }
                // Gives the slot back however the thread ends (or if it
                // never starts).
                let slot = Slot(Arc::clone(shared));
                let spawned =
                    std::thread::Builder::new()
                        .name("http-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(stream, &slot.0) {
                                tracing::debug!(%peer, error = %e, "http connection ended");
                            }
                        });
                if let Err(e) = spawned {
                    tracing::warn!(%peer, error = %e, "http: cannot start a connection thread");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(addr = %shared.addr, error = %e, "http accept failed");
                std::thread::sleep(ACCEPT_POLL * 4);
            }
        }
    }
}

/// Answers `503` to a connection over [`HttpConfig::max_connections`],
/// spending at most a few seconds on it.
fn refuse(stream: &mut TcpStream) {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .is_err()
    {
        return;
    }
    // Read the head first (briefly), or closing with it unread would reset
    // the connection before the client sees the answer.
    let _ = read_head(stream, Duration::from_secs(1));
    if respond(
        stream,
        false,
        "503 Service Unavailable",
        "text/plain; charset=utf-8",
        &[("Retry-After", "2")],
        b"too many connections\n",
    )
    .is_ok()
    {
        linger(stream);
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    last_event_id: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The peer closed before sending a whole head.
    Closed,
    TooLarge,
    TimedOut,
    Malformed,
}

/// Reads a request head (up to the blank line), at most
/// [`MAX_REQUEST_HEAD`] bytes, within `timeout` in all.
fn read_head(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + timeout;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Closed)?;
        match stream.read(&mut buf) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => {
                let scan_from = head.len().saturating_sub(3);
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = find_head_end(&head[scan_from..]) {
                    head.truncate(scan_from + end);
                    return Ok(head);
                }
                if head.len() > MAX_REQUEST_HEAD {
                    return Err(HeadError::TooLarge);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::TimedOut);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// The offset just past `\r\n\r\n` (or `\n\n`).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        if bytes[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if bytes[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.lines();
    let mut parts = lines.next().unwrap_or_default().split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed);
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let mut last_event_id = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("last-event-id")
        {
            last_event_id = Some(value.trim().to_string());
        }
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        last_event_id,
    })
}

fn respond(
    stream: &mut TcpStream,
    head_only: bool,
    status: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Nothing but this page's own inline code and its own origin.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn serve(stream: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut stream = stream;
    let result = route(&mut stream, shared);
    if result.is_ok() {
        linger(&mut stream);
    }
    result
}

/// Closes gracefully: a close with unread request bytes (an oversized
/// head, a body) would reset the connection and could destroy the response
/// before the client reads it.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    // At most 64 KiB and 1 s in all, however the peer trickles.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn route(stream: &mut TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_write_timeout(Some(shared.config.write_timeout))?;
    let _ = stream.set_nodelay(true);
    let text = "text/plain; charset=utf-8";
    let request = match read_head(stream, shared.config.read_timeout).and_then(|h| parse_head(&h)) {
        Ok(request) => request,
        Err(HeadError::Closed) => return Ok(()),
        Err(HeadError::TimedOut) => {
            return respond(
                stream,
                false,
                "408 Request Timeout",
                text,
                &[],
                b"request timeout\n",
            );
        }
        Err(HeadError::TooLarge) => {
            return respond(
                stream,
                false,
                "431 Request Header Fields Too Large",
                text,
                &[],
                b"request head too large\n",
            );
        }
        Err(HeadError::Malformed) => {
            return respond(
                stream,
                false,
                "400 Bad Request",
                text,
                &[],
                b"bad request\n",
            );
        }
    };
    tracing::debug!(method = %request.method, path = %request.path, peer = ?stream.peer_addr().ok(), "http request");
    let head_only = match request.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return respond(
                stream,
                false,
                "405 Method Not Allowed",
                text,
                &[("Allow", "GET, HEAD")],
                b"method not allowed\n",
            );
        }
    };
    match request.path.as_str() {
        "/" | "/index.html" => respond(
            stream,
            head_only,
            "200 OK",
            "text/html; charset=utf-8",
            &[
                ("Content-Security-Policy", DASHBOARD_CSP),
                ("Referrer-Policy", "no-referrer"),
            ],
            DASHBOARD_HTML.as_bytes(),
        ),
        "/status" => match status_json(shared) {
            Ok(body) => respond(
                stream,
                head_only,
                "200 OK",
                "application/json",
                &[],
                body.as_bytes(),
            ),
            Err(body) => respond(
                stream,
                head_only,
                "500 Internal Server Error",
                "application/json",
                &[],
                body.as_bytes(),
            ),
        },
        "/events" => events(stream, shared, head_only, request.last_event_id.as_deref()),
        _ => respond(
            stream,
            head_only,
            "404 Not Found",
            text,
            &[],
            b"not found\n",
        ),
    }
}

/// The `/status` body; `Err` (still JSON) when the status handle panicked.
fn status_json(shared: &Shared) -> Result<String, String> {
    let http = serde_json::to_value(shared.stats()).unwrap_or(serde_json::Value::Null);
    let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (shared.status)()));
    let Ok(status) = status else {
        tracing::error!("the /status handle panicked");
        return Err(
            serde_json::json!({"error": "the status handle panicked", "http": http}).to_string(),
        );
    };
    let mut body = match status {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("pipeline".into(), other);
            map
        }
    };
    body.insert("http".into(), http);
    Ok(serde_json::Value::Object(body).to_string())
}

/// Which backlog frames a client reconnecting with `last_event_id` misses:
/// those after it when it is of this epoch, all otherwise.
fn replay_after(epoch: &str, last_event_id: Option<&str>) -> u64 {
    last_event_id
        .and_then(|id| id.split_once('-'))
        .filter(|(e, _)| *e == epoch)
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
     Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n";

fn events(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    head_only: bool,
    last_event_id: Option<&str>,
) -> io::Result<()> {
    if head_only {
        stream.write_all(SSE_HEAD.as_bytes())?;
        return stream.flush();
    }
    let after = replay_after(&shared.epoch, last_event_id);
    let (queue, frames) = mpsc::sync_channel(shared.config.client_queue.max(1));
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    // Snapshot the backlog and register under one lock, so that no message
    // is missed or sent twice.
    let backlog = {
        let mut fanout = shared.fanout();
        if shared.shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut backlog: Vec<Arc<Frame>> = fanout
            .sources
            .values()
            .chain(fanout.emotions.iter().map(|(_, f)| f))
            .filter(|f| f.seq > after)
            .cloned()
            .collect();
        backlog.sort_by_key(|f| f.seq);
        fanout.clients.push(Client {
            id,
            queue,
            stream: stream.try_clone()?,
        });
        backlog
    };
    tracing::info!(client = id, peer = ?stream.peer_addr().ok(), replay = backlog.len(), "http: events client connected");
    let result = stream_events(stream, shared, &backlog, &frames);
    shared.fanout().clients.retain(|c| c.id != id);
    match &result {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            shared.clients_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                client = id,
                "http: events client took nothing for the write timeout, dropped"
            );
        }
        _ => tracing::info!(client = id, "http: events client gone"),
    }
    let _ = stream.shutdown(Shutdown::Both);
    result
}

fn stream_events(
    stream: &mut TcpStream,
    shared: &Shared,
    backlog: &[Arc<Frame>],
    frames: &Receiver<Arc<Frame>>,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(
        SSE_HEAD.len() + 16 + backlog.iter().map(|f| f.text.len()).sum::<usize>(),
    );
    out.extend_from_slice(SSE_HEAD.as_bytes());
    out.extend_from_slice(b"retry: 2000\n\n");
    for frame in backlog {
        out.extend_from_slice(frame.text.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()?;
    shared
        .events_sent
        .fetch_add(backlog.len() as u64, Ordering::Relaxed);
    loop {
        match frames.recv_timeout(shared.config.keepalive) {
            Ok(frame) => {
                // Write whatever else is queued in the same syscall.
                out.clear();
                out.extend_from_slice(frame.text.as_bytes());
                let mut n = 1u64;
                while let Ok(more) = frames.try_recv() {
                    out.extend_from_slice(more.text.as_bytes());
                    n += 1;
                }
                stream.write_all(&out)?;
                stream.flush()?;
                shared.events_sent.fetch_add(n, Ordering::Relaxed);
            }
            Err(RecvTimeoutError::Timeout) => {
                stream.write_all(b": keepalive\n\n")?;
                stream.flush()?;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        let r = parse_head(b"GET /events?x=1 HTTP/1.1\r\nHost: a\r\nlast-event-id: ab-7\r\n\r\n")
            .unwrap();
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/events".into(),
                last_event_id: Some("ab-7".into())
            }
        );
        assert_eq!(parse_head(b"GET /\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(
            parse_head(b"GET / SPDY/3\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            parse_head(b"\xff\xfe / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn replays_after_an_id_of_the_same_epoch_only() {
        assert_eq!(replay_after("ab", Some("ab-7")), 7);
        assert_eq!(replay_after("ab", Some("cd-7")), 0);
        assert_eq!(replay_after("ab", Some("garbage")), 0);
        assert_eq!(replay_after("ab", None), 0);
    }
}
