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
//!   replays the backlog: the latest notice of every source, the emotion
//!   events of the last [`HttpConfig::backlog_window`] (at most
//!   [`HttpConfig::backlog_len`]) and the face notices since the oldest of
//!   them, in publishing order, so a dashboard fills its chart at once and
//!   shows only the faces still tracked.
//!   Each message is one frame
//!   ```text
//!   id: <epoch>-<n>
//!   event: <type>
//!   data: <the message's JSON, as in jsonl:, "type" included>
//!
//!   ```
//!   where `<type>` is `emotion`, `source_error`, `source_opened`,
//!   `source_ended`, `adapter_changed`, `model_error`, `face_appeared` or
//!   `face_lost` and `<epoch>`
//!   identifies this sink instance. A client that reconnects with
//!   `Last-Event-ID` of the same epoch gets only the backlog after that id. `: keepalive` comments go out when nothing was
//!   sent for [`HttpConfig::keepalive`].
//! * `GET /status` — `application/json`: the status handle's object, with an
//!   `"http"` member holding this sink's numbers (see [`HttpStats`]). A
//!   handle that returns something other than an object is put under
//!   `"pipeline"`.
//! * `GET /` — the dashboard, one self-contained HTML page (inline CSS and
//!   JS; nothing is loaded from elsewhere, enforced by its
//!   `Content-Security-Policy`). With events that carry a `face` it shows
//!   a row per tracked face and a schematic of the frame with their boxes,
//!   drawn from the coordinates (no image is sent).
//! * `POST /control` — only with `emogate run --control http`
//!   ([`HttpSink::serve_control`]): a control request as an
//!   `application/json` body of at most 64 KiB, answered with its JSON
//!   reply (see [`crate::control`]). Without it, `404`.
//!
//! `HEAD` is answered like `GET` without a body; other methods get `405`,
//! other paths `404`. A request head must arrive within
//! [`HttpConfig::read_timeout`] and fit in 8 KiB (`408`/`431` otherwise).
//!
//! There is no authentication: the default host is 127.0.0.1, and
//! `http:0.0.0.0:PORT` should sit behind a reverse proxy that adds it.
//!
//! # Parts
//! * `server` — HTTP/1.1: accepting, the connection cap, reading and
//!   parsing request heads, writing responses (and why it is not
//!   `tiny_http`);
//! * `routes` — which answer a request gets;
//! * `sse` — the fan-out to `/events` clients, the replay backlog, each
//!   client's writer;
//! * `status` — the `/status` document and [`HttpStats`].

mod routes;
mod server;
mod sse;
mod status;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{ControlHandle, Sink, SinkError, StatusHandle};
use crate::event::Message;
pub use status::HttpStats;

/// The dashboard served at `/`.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

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

/// What the sink, the accept thread and every connection thread share.
struct Shared {
    addr: SocketAddr,
    /// Identifies this sink instance in event ids, so that a
    /// `Last-Event-ID` from another run replays everything.
    epoch: String,
    config: HttpConfig,
    status: StatusHandle,
    /// Set by [`HttpSink::serve_control`]: answers `POST /control`.
    control: OnceLock<ControlHandle>,
    fanout: Mutex<sse::Fanout>,
    shutdown: AtomicBool,
    connections: AtomicUsize,
    next_client: AtomicU64,
    clients_dropped: AtomicU64,
    events_published: AtomicU64,
    events_sent: AtomicU64,
    events_dropped: AtomicU64,
}

impl Shared {
    /// The fan-out state. A thread that panicked while holding the lock
    /// leaves at worst a backlog a frame off, so the sink goes on rather
    /// than failing every later publish.
    fn fanout(&self) -> MutexGuard<'_, sse::Fanout> {
        self.fanout.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// As [`HttpSink::bind`]; also when the accept thread cannot start.
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
            control: OnceLock::new(),
            fanout: Mutex::new(sse::Fanout::default()),
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
                .spawn(move || server::accept_loop(&listener, &shared))
                .map_err(|e| SinkError::io(&target, e))?
        };
        tracing::info!(addr = %local, "dashboard at http://{local}/ (events at /events, status at /status)");
        Ok(HttpSink {
            shared,
            accept: Some(accept),
            seq: 0,
        })
    }

    /// Serves `POST /control` with `handle` from now on (once; a second
    /// call is ignored). The sink itself still only receives: the route
    /// hands requests to the control channel's handler.
    pub fn serve_control(&self, handle: ControlHandle) {
        let _ = self.shared.control.set(handle);
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// This sink's numbers now.
    pub fn stats(&self) -> HttpStats {
        status::stats(&self.shared)
    }

    /// Stops accepting, closes every client and waits for the accept
    /// thread. Dropping the sink does the same.
    pub fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.fanout().close_all();
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

impl Sink for HttpSink {
    fn name(&self) -> String {
        format!("http:{}", self.shared.addr)
    }

    /// Never fails and never blocks on the network: a client that cannot
    /// keep up loses frames (counted in [`HttpStats::events_dropped`]).
    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        self.seq += 1;
        sse::publish(&self.shared, self.seq, message);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // Frames are handed to the client threads as they are published.
        Ok(())
    }
}

/// A request head as the server reads it (see [`parse_request_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHead {
    pub method: String,
    /// The target without its query or fragment.
    pub path: String,
    pub content_length: Option<usize>,
    /// The SSE backlog position a reconnecting client resumes after: the
    /// number in its `Last-Event-ID` when that names `epoch`, else 0.
    pub resume_after: u64,
    /// Bytes past the head (the start of a body).
    pub rest: usize,
}

/// Parses the bytes a client sent the way the server does (the head up to
/// its blank line, at most the server's head limit; the request line; the
/// headers routing reads; the `Last-Event-ID` resume point for a run of
/// `epoch`), without a socket. The server's own path goes through the same
/// functions; this entry point exists for the fuzz targets (`tests/fuzz`).
///
/// # Errors
/// Why the server would refuse the head: `"incomplete"` (no blank line yet),
/// `"too large"` (`431`) or `"malformed"` (`400`).
pub fn parse_request_head(bytes: &[u8], epoch: &str) -> Result<ParsedHead, &'static str> {
    let Some(end) = server::find_head_end(bytes) else {
        return Err(if bytes.len() > server::MAX_REQUEST_HEAD {
            "too large"
        } else {
            "incomplete"
        });
    };
    if end > server::MAX_REQUEST_HEAD + 4 {
        return Err("too large");
    }
    let request = server::parse_head(&bytes[..end]).map_err(|_| "malformed")?;
    Ok(ParsedHead {
        resume_after: sse::replay_after(epoch, request.last_event_id.as_deref()),
        method: request.method,
        path: request.path,
        content_length: request.content_length,
        rest: bytes.len() - end,
    })
}
