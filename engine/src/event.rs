//! What the engine publishes: [`Message`]s, serialized as one JSON object
//! each (a JSONL line, a UDP datagram, a Server-Sent Event).
//!
//! Emotion events map one to one onto ROS 4 HRI's `hri_msgs/Expression`:
//! `expression` → `expression`, `valence`, `arousal`, `confidence`, and
//! `header.stamp` is the capture time of the newest sample in the window
//! (the existing ROS emotion node leaves it out, so consumers cannot align
//! emotions with speech or gaze). The `ros2:` output (`sink::ros2`) copies
//! these fields into `hri_msgs/Expression`.

use std::collections::BTreeMap;

use emogate_device::clock::CaptureClock;
use emogate_media::Nanos;
use emogate_models::manifest::{Manifest, OutputKind};
use serde::Serialize;

use crate::post::{PostConfig, PostError, Postprocessor};
use emogate_infer::Tensor;

/// `std_msgs/Header`: the capture time as Unix time, and a frame id.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Header {
    pub stamp: Stamp,
    pub frame_id: String,
}

/// `builtin_interfaces/Time`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Stamp {
    pub sec: i64,
    pub nanosec: u32,
}

impl Header {
    /// The header for an item captured at `t` on the monotonic capture
    /// clock; wall time is applied once, here, at the output.
    pub fn at(t: Nanos, frame_id: &str) -> Self {
        let unix = CaptureClock::global().to_unix_nanos(t);
        Header {
            stamp: Stamp {
                sec: (unix / 1_000_000_000) as i64,
                nanosec: (unix % 1_000_000_000) as u32,
            },
            frame_id: frame_id.to_string(),
        }
    }
}

/// Time spent per stage, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// From the capture of the newest sample in the window to the event
    /// handed to the sinks: what a consumer experiences.
    pub capture_to_event: f64,
    /// From the capture of the newest sample to the window being built:
    /// the wait for the scheduler's tick (up to a hop) and for the capture
    /// thread to hand the sample over. 0 on a virtual clock (`--pace fast`),
    /// where capture time is media time.
    pub window_wait: f64,
    /// From the window being built to inference starting (time in the
    /// hand-off slot).
    pub queue: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub postprocess: f64,
    /// Face detection in this window (part of `preprocess`); absent for
    /// whole-frame models and windows where the tracker predicted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect: Option<f64>,
}

/// The window an event describes, in seconds on the pipeline clock
/// (since the run started).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Window {
    pub start_s: f64,
    pub end_s: f64,
}

/// Pipeline health, cumulative since start.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Windows built.
    pub windows: u64,
    /// Windows replaced in the hand-off slot before inference took them
    /// (inference slower than the hop: latest wins).
    pub dropped: u64,
    /// Windows run with a missing or stale modality fed as zeros.
    pub degraded: u64,
    /// Windows not run because a modality was missing (policy `skip`).
    pub skipped: u64,
    /// Audio samples lost because the capture ring was full.
    pub audio_overruns: u64,
    /// Windows whose model output held NaN or an infinity: not published.
    pub nonfinite: u64,
    /// Windows that failed in preprocessing, inference or post-processing
    /// (each published as a `model_error` message).
    pub model_errors: u64,
}

/// One emotion estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub header: Header,
    /// Capture time of the newest sample in the window, seconds on the
    /// pipeline clock (monotonic, unlike `header.stamp`).
    pub stamp_s: f64,
    /// Stable label (smoothed, with hysteresis): `hri_msgs/Expression.expression`.
    /// `null` while below the confidence floor.
    pub expression: Option<String>,
    pub confidence: Option<f32>,
    /// Smoothed probability per label.
    pub probs: BTreeMap<String, f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valence: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arousal: Option<f32>,
    pub window: Window,
    pub latency_ms: Latency,
    /// Set when the stable label changed in this window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<LabelChange>,
    /// A modality was missing or stale and fed as zeros.
    pub degraded: bool,
    /// Which modalities were missing (`"video"`, `"audio"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<&'static str>,
    pub counters: Counters,
    pub adapter: Option<String>,
    pub backend: String,
    /// The face this event is about, when the model takes face crops
    /// (`"crop": {"face": …}` in its manifest); absent for whole-frame
    /// models and for windows without a face.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face: Option<FaceRef>,
    /// Share of the window's audio in which the voice activity detector
    /// heard speech (0–1); absent when the run has no VAD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech_ratio: Option<f32>,
}

/// A box in source-frame pixels (may reach past the frame's edges).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BoundingBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl BoundingBox {
    /// From `[left, top, width, height]`.
    pub fn from_ltwh(b: [f32; 4]) -> Self {
        BoundingBox {
            x: b[0],
            y: b[1],
            w: b[2],
            h: b[3],
        }
    }
}

/// The size of the source frame, so a consumer can place boxes without
/// the image (no image ever leaves the device).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
}

/// Which tracked face an event describes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaceRef {
    /// Short and stable for the track's life, never reused in a run, as
    /// ROS4HRI names faces (`/humans/faces/<id>`).
    pub id: String,
    pub bbox: BoundingBox,
    /// The detector's confidence of the latest detection, 0–1.
    pub score: f32,
    /// The frame the box is in.
    pub frame: FrameSize,
}

/// A face track started (`face_appeared`) or ended (`face_lost`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaceNotice {
    pub header: Header,
    pub stamp_s: f64,
    pub id: String,
    /// Where the face was first seen (appeared) or last seen (lost).
    pub bbox: BoundingBox,
    pub score: f32,
    pub frame: FrameSize,
    /// Seconds on the pipeline clock when the face was last detected.
    pub last_seen_s: f64,
}

/// A confirmed change of the stable label (`null` = unknown).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LabelChange {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A capture source changed state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceNotice {
    pub header: Header,
    pub stamp_s: f64,
    /// `"video"` or `"audio"`.
    pub modality: &'static str,
    /// The source's name (`v4l:0`, `gst:…`, `file:…`).
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a failed source is tried again; absent when it will not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// The active adapter changed (`null` is the base model).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdapterChange {
    pub header: Header,
    pub stamp_s: f64,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `seq` of the first emotion event the new adapter produces.
    pub seq: u64,
    /// Time to make the switch ready off the inference thread: compute
    /// the adapter slot factors, or merge and plan a new backend.
    pub prepare_ms: f64,
    /// From the request to the new adapter serving: preparing, plus the
    /// wait for the window in progress to finish.
    pub switch_ms: f64,
    /// Whether the switch planned a new backend (`false`: it bound new
    /// slot factors to the running one).
    pub replanned: bool,
}

/// Where in the model path a window failed.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Media → tensors (the featurizer).
    Preprocess,
    /// The forward pass.
    Inference,
    /// Tensors → emotion (output kinds, smoothing).
    Postprocess,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Postprocess => "postprocess",
        }
    }
}

/// A window failed: no emotion event for it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelError {
    pub header: Header,
    pub stamp_s: f64,
    /// The window that failed.
    pub window: Window,
    pub stage: Stage,
    pub error: String,
    /// Failing windows in a row, this one included; the run stops at
    /// `--max-consecutive-errors`.
    pub consecutive: u32,
    pub adapter: Option<String>,
}

/// Everything a sink receives.
// The emotion event is boxed: the sinks' queue is a bounded channel whose
// slots are all allocated and touched up front, each the size of the
// largest variant. Unboxed (456 bytes), its 1024 slots kept 475 KB
// resident for the whole run; one allocation per window costs nothing
// beside that.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Emotion(Box<Event>),
    /// A source failed (and whether it will be retried).
    SourceError(SourceNotice),
    /// A source (re)opened.
    SourceOpened(SourceNotice),
    /// A finite source (a replayed file) ended.
    SourceEnded(SourceNotice),
    /// The active adapter changed.
    AdapterChanged(AdapterChange),
    /// A window failed in the model path.
    ModelError(ModelError),
    /// A face was detected that no track followed: a new id.
    FaceAppeared(FaceNotice),
    /// A tracked face was unseen for longer than `--track-timeout-ms`.
    FaceLost(FaceNotice),
}

impl Message {
    /// The `type` tag, as serialized (also the SSE event name).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Emotion(_) => "emotion",
            Message::SourceError(_) => "source_error",
            Message::SourceOpened(_) => "source_opened",
            Message::SourceEnded(_) => "source_ended",
            Message::AdapterChanged(_) => "adapter_changed",
            Message::ModelError(_) => "model_error",
            Message::FaceAppeared(_) => "face_appeared",
            Message::FaceLost(_) => "face_lost",
        }
    }
}

impl Message {
    /// One line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"))
    }
}

/// The model-derived part of an event: labels, probabilities, valence and
/// arousal, change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimate {
    pub expression: Option<String>,
    pub confidence: Option<f32>,
    pub probs: BTreeMap<String, f32>,
    pub valence: Option<f32>,
    pub arousal: Option<f32>,
    pub change: Option<LabelChange>,
}

/// Applies the manifest's output kinds, smoothing and change detection.
pub struct EventBuilder {
    outputs: Vec<(OutputKind, Option<Postprocessor>)>,
}

impl EventBuilder {
    /// # Errors
    /// [`PostError`] for settings the post-processors refuse.
    pub fn new(manifest: &Manifest, config: PostConfig) -> Result<Self, PostError> {
        let outputs = manifest
            .outputs
            .iter()
            .map(|o| {
                let post = match o.kind {
                    OutputKind::ValenceArousal => None,
                    kind => Some(Postprocessor::new(manifest.labels.clone(), kind, config)?),
                };
                Ok((o.kind, post))
            })
            .collect::<Result<_, PostError>>()?;
        Ok(EventBuilder { outputs })
    }

    /// Turns model outputs (manifest order) at time `at` into an estimate.
    ///
    /// # Errors
    /// [`PostError`] when an output has the wrong length.
    pub fn estimate(
        &mut self,
        outputs: &[Tensor],
        at: std::time::Duration,
    ) -> Result<Estimate, PostError> {
        let mut est = Estimate::default();
        for ((kind, post), tensor) in self.outputs.iter_mut().zip(outputs) {
            let values = tensor.as_f32().unwrap_or(&[]);
            match (kind, post) {
                (OutputKind::ValenceArousal, _) => {
                    est.valence = values.first().copied();
                    est.arousal = values.get(1).copied();
                }
                (_, Some(post)) => {
                    let labels = post.labels().to_vec();
                    let update = post.process(values, at)?;
                    est.expression = update.label.map(str::to_string);
                    est.confidence = update.confidence;
                    est.probs = labels
                        .iter()
                        .cloned()
                        .zip(update.scores.iter().copied())
                        .collect();
                    if let Some(change) = update.change {
                        est.change = Some(LabelChange {
                            from: change.from.map(|i| labels[i].clone()),
                            to: change.to.map(|i| labels[i].clone()),
                        });
                    }
                }
                (_, None) => {}
            }
        }
        Ok(est)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sinks' bounded queue allocates and touches all its slots up front,
    /// each the size of a `Message` (see the comment on `Message`).
    #[test]
    fn a_message_stays_small_enough_for_the_sink_queue() {
        let size = std::mem::size_of::<Message>();
        assert!(
            size <= 160,
            "Message is {size} bytes: box the variant that grew (1024 queue slots of it stay resident)"
        );
    }

    #[test]
    fn emotion_serializes_with_type_tag_and_ros_header() {
        let event = Event {
            seq: 3,
            header: Header {
                stamp: Stamp {
                    sec: 1_700_000_000,
                    nanosec: 250_000_000,
                },
                frame_id: "emogate".into(),
            },
            stamp_s: 2.25,
            expression: Some("happy".into()),
            confidence: Some(0.75),
            probs: [("happy".to_string(), 0.75f32), ("sad".to_string(), 0.25)]
                .into_iter()
                .collect(),
            valence: Some(0.5),
            arousal: None,
            window: Window {
                start_s: 0.25,
                end_s: 2.25,
            },
            latency_ms: Latency::default(),
            change: None,
            degraded: false,
            missing: vec![],
            counters: Counters::default(),
            adapter: None,
            backend: "tract".into(),
            face: None,
            speech_ratio: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&Message::Emotion(Box::new(event)).to_json()).unwrap();
        assert_eq!(v["type"], "emotion");
        assert_eq!(v["header"]["stamp"]["sec"], 1_700_000_000);
        assert_eq!(v["header"]["stamp"]["nanosec"], 250_000_000);
        assert_eq!(v["expression"], "happy");
        assert_eq!(v["valence"], 0.5);
        assert!(v.get("arousal").is_none());
        assert!(v.get("missing").is_none());
        assert_eq!(v["counters"]["dropped"], 0);
    }

    #[test]
    fn header_maps_capture_time_to_unix_time() {
        let clock = CaptureClock::global();
        let h = Header::at(clock.now(), "cam");
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((h.stamp.sec - unix).abs() <= 1);
        assert_eq!(h.frame_id, "cam");
    }
}
