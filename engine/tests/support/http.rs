//! A raw HTTP/1.1 client and Server-Sent Events reader for tests.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A whole response (the server closes the connection after each).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits a response head from its body.
fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("response head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Sends `raw` as is and reads the response to the end.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(raw).expect("send request");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read response");
    parse_response(&out)
}

pub fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    raw_request(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

/// One SSE frame (or comment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl SseFrame {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// An open `/events` stream.
pub struct SseClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl SseClient {
    /// Connects and reads the response head.
    pub fn connect(addr: SocketAddr, last_event_id: Option<&str>) -> SseClient {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let extra = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        )
        .expect("send request");
        let mut client = SseClient {
            stream,
            buf: Vec::new(),
            status: 0,
            headers: Vec::new(),
        };
        let head = client
            .read_until(b"\r\n\r\n", Duration::from_secs(10))
            .expect("a response head");
        let response = parse_response(&head);
        client.status = response.status;
        client.headers = response.headers;
        client
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads through the next `delimiter`; `None` on timeout or EOF.
    fn read_until(&mut self, delimiter: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .buf
                .windows(delimiter.len())
                .position(|w| w == delimiter)
            {
                let rest = self.buf.split_off(i + delimiter.len());
                return Some(std::mem::replace(&mut self.buf, rest));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok()?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// The next frame (blank-line terminated), parsed as the SSE spec says.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<SseFrame> {
        let raw = self.read_until(b"\n\n", timeout)?;
        let text = String::from_utf8(raw).expect("SSE is UTF-8");
        let mut frame = SseFrame::default();
        let mut data = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix(':') {
                frame.comments.push(comment.trim().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => frame.id = Some(value.to_string()),
                "event" => frame.event = Some(value.to_string()),
                "data" => data.push(value.to_string()),
                "retry" => frame.retry = value.parse().ok(),
                other => panic!("unknown SSE field {other:?} in {text:?}"),
            }
        }
        frame.data = data.join("\n");
        Some(frame)
    }

    /// The next frame that carries a message (skipping `retry` and
    /// comments).
    pub fn next_message(&mut self, timeout: Duration) -> Option<SseFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.next_frame(deadline.saturating_duration_since(Instant::now()))?;
            if frame.event.is_some() || !frame.data.is_empty() {
                return Some(frame);
            }
        }
    }

    /// True when the server closed the stream within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.stream.set_read_timeout(Some(left)).is_err() {
                return true;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// Waits until `cond` holds, polling; false after `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}
