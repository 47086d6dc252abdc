//! The `ros2:` sink: a DDS participant and a ROS 2 node (`ros2-client`)
//! on a thread of their own.
//!
//! [`Ros2Sink::publish`] hands a copy of the message over a bounded queue
//! ([`QUEUE`]) without waiting and counts what a full queue refuses, so DDS
//! (discovery bursts, a slow reliable reader) never holds up the sink
//! thread the other outputs share. Writers are reliable with a keep-last
//! history and fail rather than wait when their window is full: a stuck
//! subscriber costs it samples, counted as `ros2_write_failed`.
//!
//! Control (`[ros2] control = true`): requests arrive as JSON in
//! `std_msgs/String` on `/emogate/control` and replies go out on
//! `/emogate/control/reply`, answered on a third thread because a switch
//! takes as long as preparing the adapter. A topic pair rather than a ROS
//! service: no standard `srv` type carries a string both ways, so a
//! service would need an `emogate_msgs` package built on every ROS system
//! that calls it, while `ros2 topic pub /emogate/control std_msgs/msg/String
//! '{data: "{\"cmd\":\"status\"}"}'` works anywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use ros2_client::dds::rustdds::DomainParticipantBuilder;
use ros2_client::qos::{Durability, History, WhenFull};
use ros2_client::{
    Context, MessageTypeName, Name, Node, NodeName, NodeOptions, Publisher, QosProfile,
    Subscription,
};

use std::collections::BTreeMap;

use super::msgs::{self, DiagnosticArray, Expression, IdsList};
use super::{
    CONTROL_REPLY_TOPIC, CONTROL_TOPIC, DIAGNOSTICS_TOPIC, EVENTS_TOPIC, HISTORY_DEPTH,
    TRACKED_FACES_TOPIC, expression_topic,
};
use crate::event::Message;
use crate::sink::{ControlHandle, OpenContext, Sink, SinkError, StatusHandle};

/// Messages waiting for the ROS 2 thread, at most.
const QUEUE: usize = 256;
/// Diagnostics period.
const DIAGNOSTICS_EVERY: Duration = Duration::from_secs(1);

/// The QoS of every writer: reliable, volatile, keep-last
/// [`HISTORY_DEPTH`]; a full send window fails the write at once.
fn qos() -> QosProfile {
    QosProfile::publisher_default()
        .reliability_reliable(WhenFull::Fail)
        .durability(Durability::Volatile)
        .history(History::KeepLast {
            depth: HISTORY_DEPTH,
        })
}

#[derive(Default)]
struct Counters {
    /// Refused by the full queue.
    queue_dropped: AtomicU64,
    /// Writes DDS refused (full send window, serialization).
    write_failed: AtomicU64,
}

pub struct Ros2Sink {
    name: String,
    tx: Option<SyncSender<Message>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Ros2Sink {
    /// Starts the participant on `domain_id` and creates the writers.
    ///
    /// # Errors
    /// [`SinkError::Connect`] when DDS could not start (no usable
    /// interface, ports taken) or a writer could not be made.
    pub fn start(name: &str, domain_id: u16, context: &OpenContext) -> Result<Self, SinkError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| SinkError::Connect {
            target: name.to_string(),
            message: format!("{what}: {e}"),
        };
        let mut builder = DomainParticipantBuilder::new(domain_id);
        if let Some(interfaces) = &context.ros2.interfaces {
            builder = builder.with_only_networks(interfaces.clone());
        }
        let participant = builder
            .build()
            .map_err(|e| fail("starting the DDS participant", &e))?;
        let ros = Context::from_domain_participant(participant)
            .map_err(|e| fail("starting ROS 2 on the participant", &e))?;
        let node_name = context.ros2.node_name.as_deref().unwrap_or("emogate");
        let mut node = ros
            .new_node(
                NodeName::new("/", node_name)
                    .map_err(|e| fail(&format!("node name {node_name:?}"), &e))?,
                NodeOptions::new().enable_rosout(false),
            )
            .map_err(|e| fail("creating the node", &e))?;

        let expression = publisher::<Expression>(
            &mut node,
            &expression_topic(None),
            ("hri_msgs", "Expression"),
        )
        .map_err(|e| fail("the expression writer", &e))?;
        let events = publisher::<String>(&mut node, EVENTS_TOPIC, ("std_msgs", "String"))
            .map_err(|e| fail("the events writer", &e))?;
        let diagnostics = publisher::<DiagnosticArray>(
            &mut node,
            DIAGNOSTICS_TOPIC,
            ("diagnostic_msgs", "DiagnosticArray"),
        )
        .map_err(|e| fail("the diagnostics writer", &e))?;
        let control = match (&context.control, context.ros2.control.unwrap_or(false)) {
            (Some(handle), true) => Some(ControlEnd {
                requests: subscription(&mut node, CONTROL_TOPIC)
                    .map_err(|e| fail("the control reader", &e))?,
                replies: publisher::<String>(
                    &mut node,
                    CONTROL_REPLY_TOPIC,
                    ("std_msgs", "String"),
                )
                .map_err(|e| fail("the control reply writer", &e))?,
                handle: Arc::clone(handle),
            }),
            _ => None,
        };

        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut writers = Writers {
            tracked: publisher::<IdsList>(&mut node, TRACKED_FACES_TOPIC, ("hri_msgs", "IdsList"))
                .map_err(|e| fail("the tracked faces writer", &e))?,
            node,
            faces: BTreeMap::new(),
            expression,
            events,
            diagnostics,
            status: context.status.clone(),
            frame_id: context.frame_id.clone(),
            hardware_id: node_name.to_string(),
            counters: Arc::clone(&counters),
        };
        let worker_stop = Arc::clone(&stop);
        let worker = std::thread::Builder::new()
            .name("ros2".into())
            .spawn(move || {
                let control_thread = control.map(|c| {
                    let stop = Arc::clone(&worker_stop);
                    std::thread::Builder::new()
                        .name("ros2-control".into())
                        .spawn(move || c.serve(&stop))
                });
                writers.run(&rx);
                worker_stop.store(true, Ordering::Relaxed);
                if let Some(Ok(t)) = control_thread {
                    let _ = t.join();
                }
                // The participant (in `ros`) goes last: dropping it ends
                // the DDS threads.
                drop(ros);
            })
            .map_err(|e| SinkError::io(name, e))?;
        tracing::info!(
            output = name,
            domain_id,
            "ROS 2 participant up: /emogate/expression, /emogate/events, /diagnostics"
        );
        Ok(Ros2Sink {
            name: name.to_string(),
            tx: Some(tx),
            counters,
            stop,
            worker: Some(worker),
        })
    }
}

fn publisher<M: serde::Serialize>(
    node: &mut Node,
    topic: &str,
    (package, type_name): (&str, &str),
) -> Result<Publisher<M>, String> {
    let name = Name::parse(topic).map_err(|e| format!("topic {topic}: {e:?}"))?;
    let topic = node
        .create_topic(&name, MessageTypeName::new(package, type_name), &qos())
        .map_err(|e| format!("topic {topic}: {e:?}"))?;
    node.create_publisher::<M>(&topic, None)
        .map_err(|e| format!("{e:?}"))
}

fn subscription(node: &mut Node, topic: &str) -> Result<Subscription<String>, String> {
    let name = Name::parse(topic).map_err(|e| format!("topic {topic}: {e:?}"))?;
    let topic = node
        .create_topic(&name, MessageTypeName::new("std_msgs", "String"), &qos())
        .map_err(|e| format!("topic {topic}: {e:?}"))?;
    node.create_subscription::<String>(&topic, None)
        .map_err(|e| format!("{e:?}"))
}

impl Sink for Ros2Sink {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(message.clone())
        {
            self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl Drop for Ros2Sink {
    /// Lets the ROS 2 thread write what is queued, then ends it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        self.stop.store(true, Ordering::Relaxed);
        tracing::info!(
            output = self.name,
            queue_dropped = self.counters.queue_dropped.load(Ordering::Relaxed),
            write_failed = self.counters.write_failed.load(Ordering::Relaxed),
            "ros2 output closed"
        );
    }
}

/// The ROS 2 thread's writers.
struct Writers {
    /// Kept alive as long as its writers (and, once events carry face
    /// ids, for creating per-face writers).
    /// Per-face writers are made on this node as faces appear.
    node: Node,
    /// `/humans/faces/<id>/expression`, per tracked face.
    faces: BTreeMap<String, Publisher<Expression>>,
    /// `/humans/faces/tracked`: the ids, on every appearance and loss.
    tracked: Publisher<IdsList>,
    expression: Publisher<Expression>,
    events: Publisher<String>,
    diagnostics: Publisher<DiagnosticArray>,
    status: StatusHandle,
    frame_id: String,
    hardware_id: String,
    counters: Arc<Counters>,
}

impl Writers {
    fn run(&mut self, rx: &mpsc::Receiver<Message>) {
        let mut next_diagnostics = Instant::now();
        loop {
            if Instant::now() >= next_diagnostics {
                self.publish_diagnostics();
                // Also once a second, for a subscriber that came late.
                if !self.faces.is_empty() {
                    let now = emogate_device::clock::CaptureClock::global().now();
                    let header = crate::event::Header::at(now, &self.frame_id);
                    if !self.publish_tracked(&header) {
                        self.counters.write_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next_diagnostics = Instant::now() + DIAGNOSTICS_EVERY;
            }
            let wait = next_diagnostics.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(message) => self.publish(&message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // The final counters, for whoever listens at the end of a run.
        self.publish_diagnostics();
    }

    fn publish(&mut self, message: &Message) {
        let mut ok = true;
        match message {
            Message::Emotion(event) => {
                let expression = Expression::from_event(event);
                ok &= match &event.face {
                    None => self.expression.publish(expression).is_ok(),
                    Some(face) => match self.face_writer(&face.id) {
                        Some(writer) => writer.publish(expression).is_ok(),
                        None => false,
                    },
                };
            }
            Message::FaceAppeared(notice) => {
                ok &= self.face_writer(&notice.id).is_some();
                ok &= self.publish_tracked(&notice.header);
            }
            Message::FaceLost(notice) => {
                // Dropping the writer retires the topic from discovery.
                self.faces.remove(&notice.id);
                ok &= self.publish_tracked(&notice.header);
            }
            _ => {}
        }
        ok &= self.events.publish(message.to_json()).is_ok();
        if !ok {
            self.counters.write_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The writer of face `id`'s expressions, made on first use.
    fn face_writer(&mut self, id: &str) -> Option<&Publisher<Expression>> {
        if !self.faces.contains_key(id) {
            let topic = expression_topic(Some(id));
            match publisher::<Expression>(&mut self.node, &topic, ("hri_msgs", "Expression")) {
                Ok(writer) => {
                    self.faces.insert(id.to_string(), writer);
                }
                Err(error) => {
                    tracing::warn!(topic, error, "ros2: no writer for the face");
                    return None;
                }
            }
        }
        self.faces.get(id)
    }

    /// Publishes the tracked ids on `/humans/faces/tracked`.
    fn publish_tracked(&self, header: &crate::event::Header) -> bool {
        let list = IdsList {
            header: msgs::Header::from_event(header),
            ids: self.faces.keys().cloned().collect(),
        };
        self.tracked.publish(list).is_ok()
    }

    fn publish_diagnostics(&self) {
        let status = (self.status)();
        let extra = [
            (
                "ros2_queue_dropped",
                self.counters
                    .queue_dropped
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "ros2_write_failed",
                self.counters
                    .write_failed
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
        ];
        let array = msgs::diagnostics(&status, &self.frame_id, &self.hardware_id, &extra);
        if self.diagnostics.publish(array).is_err() {
            self.counters.write_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `/emogate/control` → [`ControlHandle`] → `/emogate/control/reply`.
struct ControlEnd {
    requests: Subscription<String>,
    replies: Publisher<String>,
    handle: ControlHandle,
}

impl ControlEnd {
    fn serve(self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match self.requests.take() {
                Ok(Some((request, _))) => {
                    let reply = (self.handle)(request.as_bytes());
                    if let Err(e) = self.replies.publish(reply.to_string()) {
                        tracing::warn!(error = ?e, "ros2 control reply not sent");
                    }
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    tracing::warn!(error = ?e, "ros2 control request unreadable");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}
