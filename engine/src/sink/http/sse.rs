//! Server-Sent Events: the fan-out of published messages to `/events`
//! clients, the replay backlog, and each client's writer.
//!
//! [`publish`] runs on the sink thread and never touches a socket: it
//! serializes a message once and offers the frame to each client's bounded
//! queue (`try_send`, so a full queue costs that client the frame, not the
//! pipeline time). Each client's connection thread drains its own queue
//! into its socket under the write timeout, so one stalled client blocks
//! only its own thread, and memory is at most `client_queue` frames per
//! client plus the backlog.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};

use super::Shared;
use crate::event::Message;

/// Source notices kept for replay (one per source).
const MAX_SOURCES: usize = 32;

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

/// The connected clients and what a new one is replayed.
#[derive(Default)]
pub(super) struct Fanout {
    clients: Vec<Client>,
    /// Emotion events: (stamp_s, frame), oldest first.
    emotions: VecDeque<(f64, Arc<Frame>)>,
    /// The latest notice per `modality/source`.
    sources: BTreeMap<String, Arc<Frame>>,
}

impl Fanout {
    /// `/events` clients connected now.
    pub(super) fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Emotion events held for replay.
    pub(super) fn backlog(&self) -> usize {
        self.emotions.len()
    }

    /// Shuts every client's socket: a writer stuck on a full socket is
    /// unblocked, and dropping its queue ends an idle one.
    pub(super) fn close_all(&mut self) {
        for client in std::mem::take(&mut self.clients) {
            let _ = client.stream.shutdown(Shutdown::Both);
        }
    }

    /// Keeps `frame` for replay: emotion events of the last
    /// `backlog_window` (at most `backlog_len`), the latest notice of each
    /// source.
    fn remember(&mut self, message: &Message, frame: &Arc<Frame>, shared: &Shared) {
        match message {
            Message::Emotion(event) => {
                let emotions = &mut self.emotions;
                // A pipeline clock that went back is a new run: start over.
                if emotions
                    .back()
                    .is_some_and(|(newest, _)| event.stamp_s < newest - 1.0)
                {
                    emotions.clear();
                }
                emotions.push_back((event.stamp_s, Arc::clone(frame)));
                let oldest = event.stamp_s - shared.config.backlog_window.as_secs_f64();
                while emotions.len() > shared.config.backlog_len
                    || emotions.front().is_some_and(|(t, _)| *t < oldest)
                {
                    emotions.pop_front();
                }
            }
            Message::SourceError(n) | Message::SourceOpened(n) | Message::SourceEnded(n) => {
                let key = format!("{}/{}", n.modality, n.source);
                if self.sources.len() < MAX_SOURCES || self.sources.contains_key(&key) {
                    self.sources.insert(key, Arc::clone(frame));
                }
            }
            // Moments, not state: a late client reads the adapter and the
            // error counters from the events and `/status`.
            Message::AdapterChanged(_)
            | Message::ModelError(_)
            | Message::FaceAppeared(_)
            | Message::FaceLost(_) => {}
        }
    }

    /// Offers `frame` to every client without waiting; returns how many
    /// queues were full. Clients whose writer has gone are forgotten.
    fn offer(&mut self, frame: &Arc<Frame>) -> u64 {
        let mut dropped = 0u64;
        self.clients
            .retain(|client| match client.queue.try_send(Arc::clone(frame)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        dropped
    }
}

/// Publishes `message` as frame `seq`: kept for replay and offered to every
/// client. Never blocks on a socket.
pub(super) fn publish(shared: &Shared, seq: u64, message: &Message) {
    shared.events_published.fetch_add(1, Ordering::Relaxed);
    let frame = Arc::new(Frame {
        seq,
        text: format!(
            "id: {}-{}\nevent: {}\ndata: {}\n\n",
            shared.epoch,
            seq,
            message.kind(),
            message.to_json()
        ),
    });
    let mut fanout = shared.fanout();
    fanout.remember(message, &frame, shared);
    let dropped = fanout.offer(&frame);
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
}

/// Which backlog frames a client reconnecting with `last_event_id` misses:
/// those after it when it is of this epoch, all otherwise.
pub(super) fn replay_after(epoch: &str, last_event_id: Option<&str>) -> u64 {
    last_event_id
        .and_then(|id| id.split_once('-'))
        .filter(|(e, _)| *e == epoch)
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
     Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n";

/// `GET /events`: registers a client, replays the backlog after
/// `last_event_id`, then streams until the client goes, stalls past the
/// write timeout, or the sink shuts down.
pub(super) fn serve(
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
    fn replays_after_an_id_of_the_same_epoch_only() {
        assert_eq!(replay_after("ab", Some("ab-7")), 7);
        assert_eq!(replay_after("ab", Some("cd-7")), 0);
        assert_eq!(replay_after("ab", Some("garbage")), 0);
        assert_eq!(replay_after("ab", None), 0);
    }
}
