//! `/status`: the pipeline's status document with this sink's numbers
//! ([`HttpStats`]) under `"http"`.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::Shared;

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

/// The sink's numbers now.
pub(super) fn stats(shared: &Shared) -> HttpStats {
    let fanout = shared.fanout();
    HttpStats {
        addr: shared.addr.to_string(),
        clients: fanout.clients(),
        clients_total: shared.next_client.load(Ordering::Relaxed),
        clients_dropped: shared.clients_dropped.load(Ordering::Relaxed),
        events_published: shared.events_published.load(Ordering::Relaxed),
        events_sent: shared.events_sent.load(Ordering::Relaxed),
        events_dropped: shared.events_dropped.load(Ordering::Relaxed),
        backlog: fanout.backlog(),
    }
}

/// The `/status` body; `Err` (still JSON) when the status handle panicked.
/// A handle that returns something other than an object is put under
/// `"pipeline"`, so the `"http"` member always has a place.
pub(super) fn status_json(shared: &Shared) -> Result<String, String> {
    let http = serde_json::to_value(stats(shared)).unwrap_or(serde_json::Value::Null);
    // The handle is the pipeline's code, run on a connection thread: a
    // panic there must cost this request, not the connection slot.
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
