//! The HTTP/1.1 layer: accepting connections, reading and parsing request
//! heads, writing whole responses, closing gracefully. What a request gets
//! is decided in [`super::routes`].
//!
//! # Why not tiny_http
//! Issue #15 asked whether `tiny_http` (0.12.0, the newest release) could
//! replace this file. It was measured against the properties this sink
//! promises (a scratch program on this machine, loopback, release build):
//!
//! * **SSE latency.** A streamed (`Read`) body is sent with
//!   `chunked_transfer::Encoder::new` through `io::copy`, which holds
//!   8 KiB before writing a chunk and has no per-message flush: with one
//!   300-byte frame every 250 ms the first frame reached the client after
//!   6.8 s (28 frames). A dashboard needs each event at once.
//! * **Bounded memory.** No limit on a request head (its issue #56, open
//!   since 2015): a 64 MiB header line grew the process by 66 MiB. Here a
//!   head is at most [`MAX_REQUEST_HEAD`] (`431` beyond). An HTTP/1.0
//!   client (or `TE: identity`) makes it `read_to_end` a body of unknown
//!   length, which for an endless event stream never ends.
//! * **Slow clients.** It sets no socket timeouts and offers no way to:
//!   half a request head and then silence got no answer and kept a thread
//!   (here: `408` after [`HttpConfig::read_timeout`](super::HttpConfig)).
//!   A `/events` client that stops reading blocked its writer in `write`
//!   for as long as the test ran (20 s); nothing can time it out or count
//!   it (`clients_dropped`), and `HttpSink::shutdown` cannot close it
//!   because the socket is private to the library.
//! * **Connection count.** Each accepted connection gets a pool thread
//!   with no upper bound: 500 idle connections made 461 threads within a
//!   second. Here at most [`HttpConfig::max_connections`](super::HttpConfig)
//!   are served and the rest get `503` (`tests/http_sink.rs`,
//!   `a_crowd_of_idle_connections_is_capped_and_shed`: 500 idle
//!   connections hold 16 threads and are shed within the read timeout).
//! * It drops a `Connection` header set on a response, so a finished
//!   event stream leaves a keep-alive connection waiting for the next
//!   request instead of closing.
//!
//! Working around these would mean taking the raw socket back from it
//! (`Request::into_writer`) and keeping every limit here anyway, so the
//! crate would only split lines. We keep this small server: one accept
//! thread, one thread per connection up to the cap, every response
//! `Connection: close`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Shared, routes};

/// The largest request head accepted.
pub(super) const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How often the accept thread looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// One of [`HttpConfig::max_connections`](super::HttpConfig), held by a
/// connection thread.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts until the sink shuts down; `listener` is non-blocking so that
/// the shutdown flag is seen within [`ACCEPT_POLL`].
pub(super) fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
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

/// Answers `503` to a connection over
/// [`HttpConfig::max_connections`](super::HttpConfig), spending at most a
/// few seconds on it.
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

/// A parsed request head: what routing needs of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) last_event_id: Option<String>,
    /// `Content-Length`, when given and a number.
    pub(super) content_length: Option<usize>,
    /// A `Transfer-Encoding` was given (bodies must have a length here).
    pub(super) chunked: bool,
    pub(super) content_type: Option<String>,
    pub(super) origin: Option<String>,
    pub(super) host: Option<String>,
    /// The body, read for `POST` only (see [`read_body`]).
    pub(super) body: Option<Result<Vec<u8>, BodyError>>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// The peer closed before sending a whole head.
    Closed,
    TooLarge,
    TimedOut,
    Malformed,
}

/// Reads a request head (up to the blank line), at most
/// [`MAX_REQUEST_HEAD`] bytes, within `timeout` in all: a deadline for the
/// whole head, not per read, so a client trickling a byte at a time cannot
/// hold a connection slot for longer. Returns the head and the bytes read
/// past it (the start of a body).
fn read_head(stream: &mut TcpStream, timeout: Duration) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
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
                    let rest = head.split_off(scan_from + end);
                    return Ok((head, rest));
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
pub(super) fn find_head_end(bytes: &[u8]) -> Option<usize> {
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

pub(super) fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
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
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        ..Request::default()
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "last-event-id" => request.last_event_id = Some(value),
            "content-length" => {
                request.content_length = Some(value.parse().map_err(|_| HeadError::Malformed)?);
            }
            "transfer-encoding" => request.chunked = true,
            "content-type" => request.content_type = Some(value),
            "origin" => request.origin = Some(value),
            "host" => request.host = Some(value),
            _ => {}
        }
    }
    Ok(request)
}

/// Why a request body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BodyError {
    /// No `Content-Length` (or a `Transfer-Encoding`): `411`.
    NoLength,
    /// Over the limit: `413`.
    TooLarge,
    /// Not all of it within the read timeout, or the peer closed.
    Incomplete,
}

/// Reads the body of `request` (`Content-Length` bytes, at most `limit`),
/// starting with `start` (what came with the head), within `timeout`.
pub(super) fn read_body(
    stream: &mut TcpStream,
    request: &Request,
    start: Vec<u8>,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let length = match (request.content_length, request.chunked) {
        (Some(n), false) => n,
        _ => return Err(BodyError::NoLength),
    };
    if length > limit {
        return Err(BodyError::TooLarge);
    }
    let mut body = start;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while body.len() < length {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(BodyError::Incomplete);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(BodyError::Incomplete),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(BodyError::Incomplete),
        }
    }
    body.truncate(length);
    Ok(body)
}

/// Writes a whole response with `Content-Length` (the body left out for
/// `HEAD`) in one `write_all`.
pub(super) fn respond(
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

/// One connection: its head read within the read timeout, then routed.
fn serve(stream: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut stream = stream;
    let result = handle(&mut stream, shared);
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

/// Reads and parses the head, answering `408`/`431`/`400` itself; a
/// well-formed request goes to [`routes::route`].
fn handle(stream: &mut TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_write_timeout(Some(shared.config.write_timeout))?;
    let _ = stream.set_nodelay(true);
    let text = "text/plain; charset=utf-8";
    let head = read_head(stream, shared.config.read_timeout);
    let request = match head.and_then(|(h, rest)| Ok((parse_head(&h)?, rest))) {
        Ok((mut request, rest)) => {
            if request.method == "POST" {
                // Only `/control` takes a body; routing answers what a
                // missing or oversized one gets.
                request.body = Some(read_body(
                    stream,
                    &request,
                    rest,
                    crate::control::MAX_REQUEST_BYTES,
                    shared.config.read_timeout,
                ));
            }
            request
        }
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
    routes::route(stream, &request, shared)
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
                last_event_id: Some("ab-7".into()),
                host: Some("a".into()),
                ..Request::default()
            }
        );
        let r = parse_head(
            b"POST /control HTTP/1.1\r\nContent-Type: application/json\r\n\
              Content-Length: 17\r\nOrigin: http://a\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.content_length, Some(17));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.origin.as_deref(), Some("http://a"));
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(HeadError::Malformed)
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
}
