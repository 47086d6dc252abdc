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
//!
//! The backlog a new client is replayed, in publishing order: the latest
//! notice of each source, the emotion events of the last `backlog_window`,
//! and the `face_appeared`/`face_lost` notices published since the oldest
//! of those events. The face notices are what keeps a face that was lost
//! from coming back: its emotion events are still in the backlog, and the
//! `face_lost` after them ends its row on the dashboard, as it did for the
//! clients that were connected then.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};

use super::{HttpConfig, Shared};
use crate::event::Message;

/// Source notices kept for replay (one per source).
const MAX_SOURCES: usize = 32;

/// Face notices kept for replay, at most (a crowd's worth of tracks
/// starting and ending within the backlog window).
const MAX_FACE_NOTICES: usize = 256;

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
    /// `face_appeared` and `face_lost` notices: (stamp_s, frame), oldest
    /// first, none published before an emotion event already forgotten.
    faces: VecDeque<(f64, Arc<Frame>)>,
    /// The `seq` of the newest emotion event dropped from the backlog.
    emotions_forgotten: u64,
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
    /// `backlog_window` (at most `backlog_len`), the face notices since the
    /// oldest of them, the latest notice of each source.
    fn remember(&mut self, message: &Message, frame: &Arc<Frame>, config: &HttpConfig) {
        let window = config.backlog_window.as_secs_f64();
        match message {
            Message::Emotion(event) => {
                let emotions = &mut self.emotions;
                // A pipeline clock that went back is a new run: start over.
                if emotions
                    .back()
                    .is_some_and(|(newest, _)| event.stamp_s < newest - 1.0)
                {
                    emotions.clear();
                    self.faces.clear();
                }
                emotions.push_back((event.stamp_s, Arc::clone(frame)));
                let oldest = event.stamp_s - window;
                while emotions.len() > config.backlog_len
                    || emotions.front().is_some_and(|(t, _)| *t < oldest)
                {
                    if let Some((_, gone)) = emotions.pop_front() {
                        self.emotions_forgotten = gone.seq;
                    }
                }
                self.trim_faces(event.stamp_s - window);
            }
            Message::FaceAppeared(n) | Message::FaceLost(n) => {
                if self
                    .faces
                    .back()
                    .is_some_and(|(newest, _)| n.stamp_s < newest - 1.0)
                {
                    self.faces.clear();
                }
                self.faces.push_back((n.stamp_s, Arc::clone(frame)));
                self.trim_faces(n.stamp_s - window);
            }
            Message::SourceError(n) | Message::SourceOpened(n) | Message::SourceEnded(n) => {
                let key = format!("{}/{}", n.modality, n.source);
                if self.sources.len() < MAX_SOURCES || self.sources.contains_key(&key) {
                    self.sources.insert(key, Arc::clone(frame));
                }
            }
            // Moments, not state: a late client reads the adapter and the
            // error counters from the events and `/status`.
            Message::AdapterChanged(_) | Message::ModelError(_) => {}
        }
    }

    /// Forgets face notices published before an emotion event already
    /// forgotten (a `face_lost` matters to a late client only after that
    /// face's events, and those went first), older than `oldest` on the
    /// pipeline clock, or past [`MAX_FACE_NOTICES`].
    fn trim_faces(&mut self, oldest: f64) {
        let forgotten = self.emotions_forgotten;
        while self
            .faces
            .front()
            .is_some_and(|(t, f)| *t < oldest || f.seq < forgotten)
            || self.faces.len() > MAX_FACE_NOTICES
        {
            self.faces.pop_front();
        }
    }

    /// The frames a client that has seen up to `after` is replayed, in
    /// publishing order.
    fn backlog_after(&self, after: u64) -> Vec<Arc<Frame>> {
        let mut backlog: Vec<Arc<Frame>> = self
            .sources
            .values()
            .chain(self.emotions.iter().map(|(_, f)| f))
            .chain(self.faces.iter().map(|(_, f)| f))
            .filter(|f| f.seq > after)
            .cloned()
            .collect();
        backlog.sort_by_key(|f| f.seq);
        backlog
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
    fanout.remember(message, &frame, &shared.config);
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
        let backlog = fanout.backlog_after(after);
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
    use crate::event::{
        BoundingBox, Counters, Event, FaceNotice, FaceRef, FrameSize, Header, Latency, Stamp,
        Window,
    };
    use std::time::Duration;

    fn header() -> Header {
        Header {
            stamp: Stamp { sec: 0, nanosec: 0 },
            frame_id: "test".into(),
        }
    }

    const FRAME: FrameSize = FrameSize {
        width: 640,
        height: 480,
    };
    const BOX: BoundingBox = BoundingBox {
        x: 10.0,
        y: 20.0,
        w: 100.0,
        h: 120.0,
    };

    fn emotion(stamp_s: f64, face: &str) -> Message {
        Message::Emotion(Box::new(Event {
            seq: 0,
            header: header(),
            stamp_s,
            expression: Some("happy".into()),
            confidence: Some(0.9),
            probs: Default::default(),
            valence: None,
            arousal: None,
            window: Window {
                start_s: stamp_s - 1.0,
                end_s: stamp_s,
            },
            latency_ms: Latency::default(),
            change: None,
            degraded: false,
            missing: vec![],
            counters: Counters::default(),
            adapter: None,
            backend: "tract".into(),
            face: Some(FaceRef {
                id: face.into(),
                bbox: BOX,
                score: 0.9,
                frame: FRAME,
            }),
            speech_ratio: None,
        }))
    }

    fn notice(stamp_s: f64, face: &str) -> FaceNotice {
        FaceNotice {
            header: header(),
            stamp_s,
            id: face.into(),
            bbox: BOX,
            score: 0.9,
            frame: FRAME,
            last_seen_s: stamp_s,
        }
    }

    /// Remembers `messages` as frames 1, 2, …; the replay as `kind id`.
    fn replay(config: &HttpConfig, messages: &[Message]) -> Vec<String> {
        let mut fanout = Fanout::default();
        for (i, m) in messages.iter().enumerate() {
            let who = match m {
                Message::Emotion(e) => e.face.as_ref().map(|f| f.id.clone()).unwrap_or_default(),
                Message::FaceAppeared(n) | Message::FaceLost(n) => n.id.clone(),
                _ => String::new(),
            };
            let frame = Arc::new(Frame {
                seq: i as u64 + 1,
                text: format!("{} {who}", m.kind()),
            });
            fanout.remember(m, &frame, config);
        }
        fanout
            .backlog_after(0)
            .iter()
            .map(|f| f.text.clone())
            .collect()
    }

    fn config(window_s: u64) -> HttpConfig {
        HttpConfig {
            backlog_window: Duration::from_secs(window_s),
            ..HttpConfig::default()
        }
    }

    #[test]
    fn a_lost_face_is_replayed_with_its_events_then_forgotten_with_them() {
        let mut messages = vec![
            Message::FaceAppeared(notice(0.0, "f1")),
            Message::FaceAppeared(notice(0.0, "f2")),
        ];
        for i in 1..=8 {
            messages.push(emotion(i as f64 * 0.25, "f1"));
            messages.push(emotion(i as f64 * 0.25, "f2"));
        }
        messages.push(Message::FaceLost(notice(2.1, "f2")));
        messages.push(emotion(2.25, "f1"));
        // Within the window: everything, in publishing order, the loss
        // after f2's last event.
        let all = replay(&config(10), &messages);
        assert_eq!(all.len(), messages.len());
        assert_eq!(all[0], "face_appeared f1");
        assert_eq!(all[all.len() - 2], "face_lost f2");
        assert_eq!(all[all.len() - 3], "emotion f2");

        // Once f2's events have left the window, its loss goes with them,
        // as do both appearances.
        for i in 10..=60 {
            messages.push(emotion(i as f64 * 0.25, "f1"));
        }
        let later = replay(&config(10), &messages);
        assert!(later.iter().all(|t| t == "emotion f1"), "{later:?}");
        assert_eq!(later.len(), 41, "10 s at 4 Hz, both ends included");
    }

    #[test]
    fn face_notices_without_events_are_bounded_by_the_window_and_the_cap() {
        let messages: Vec<Message> = (0..2 * MAX_FACE_NOTICES)
            .map(|i| Message::FaceAppeared(notice(i as f64 * 0.25, &format!("f{i}"))))
            .collect();
        let kept = replay(&config(1000), &messages);
        assert_eq!(kept.len(), MAX_FACE_NOTICES);
        assert_eq!(
            kept.last().map(String::as_str),
            Some(format!("face_appeared f{}", 2 * MAX_FACE_NOTICES - 1).as_str())
        );
        let kept = replay(&config(10), &messages);
        // 0.25 s apart: those within 10 s of the newest, both ends included.
        assert_eq!(kept.len(), 41, "{kept:?}");
    }

    #[test]
    fn replays_after_an_id_of_the_same_epoch_only() {
        assert_eq!(replay_after("ab", Some("ab-7")), 7);
        assert_eq!(replay_after("ab", Some("cd-7")), 0);
        assert_eq!(replay_after("ab", Some("garbage")), 0);
        assert_eq!(replay_after("ab", None), 0);
    }
}
