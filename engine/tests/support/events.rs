//! Realistic messages, built with the engine's own event types.

use std::collections::BTreeMap;

use emogate_engine::event::{
    BoundingBox, Counters, Event, FaceNotice, FaceRef, FrameSize, Header, LabelChange, Latency,
    Message, SourceNotice, Stamp, Window,
};

/// The labels of the examples (as a 5-class FER head would have them).
pub const LABELS: [&str; 5] = ["neutral", "happy", "sad", "angry", "surprised"];

fn header(stamp_s: f64) -> Header {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = stamp_s; // the header carries wall time; stamp_s the pipeline's
    let unix = now.as_secs_f64();
    Header {
        stamp: Stamp {
            sec: unix.trunc() as i64,
            nanosec: (unix.fract() * 1e9) as u32,
        },
        frame_id: "emogate".into(),
    }
}

/// Valence and arousal typical of a label (circumplex model).
pub fn valence_arousal(label: &str) -> (f32, f32) {
    match label {
        "happy" => (0.7, 0.45),
        "sad" => (-0.6, -0.4),
        "angry" => (-0.65, 0.7),
        "surprised" => (0.2, 0.8),
        _ => (0.0, -0.1),
    }
}

/// Emotion event `seq` at `stamp_s` whose stable label is `label` with
/// probability `confidence`, the rest spread over the other labels.
pub fn emotion(seq: u64, stamp_s: f64, label: &str, confidence: f32) -> Message {
    emotion_with(seq, stamp_s, label, confidence, None)
}

/// As [`emotion`], marking a change of the stable label from `from`.
pub fn emotion_with(
    seq: u64,
    stamp_s: f64,
    label: &str,
    confidence: f32,
    from: Option<&str>,
) -> Message {
    let others = LABELS.iter().filter(|l| **l != label).count().max(1) as f32;
    let mut probs = BTreeMap::new();
    for (i, l) in LABELS.iter().enumerate() {
        let p = if *l == label {
            confidence
        } else {
            // Uneven, so the chart's lines do not sit on top of each other.
            let w = 1.0 + 0.35 * (i as f32 - 2.0);
            (1.0 - confidence) * w / others
        };
        probs.insert(l.to_string(), p);
    }
    let (valence, arousal) = valence_arousal(label);
    let wobble = ((seq as f32) * 0.7).sin() * 0.05;
    Message::Emotion(Box::new(Event {
        seq,
        header: header(stamp_s),
        stamp_s,
        expression: Some(label.to_string()),
        confidence: Some(confidence),
        probs,
        valence: Some(valence + wobble),
        arousal: Some(arousal - wobble),
        window: Window {
            start_s: (stamp_s - 2.0).max(0.0),
            end_s: stamp_s,
        },
        latency_ms: Latency {
            capture_to_event: 38.0 + (seq % 7) as f64,
            window_wait: 5.0,
            queue: 1.5,
            preprocess: 6.0,
            inference: 24.0 + (seq % 5) as f64,
            postprocess: 0.3,
            detect: None,
        },
        change: from.map(|f| LabelChange {
            from: Some(f.to_string()),
            to: Some(label.to_string()),
        }),
        degraded: false,
        missing: vec![],
        counters: Counters {
            windows: seq,
            dropped: seq / 40,
            degraded: 0,
            skipped: 0,
            audio_overruns: 0,
            nonfinite: 0,
            model_errors: 0,
        },
        adapter: Some("affect-gate".into()),
        backend: "tract".into(),
        face: None,
        speech_ratio: None,
    }))
}

/// Face `id` at `bbox` (`[left, top, width, height]` in source pixels)
/// in a `frame` of `(width, height)`, detected with `score`.
pub fn face(id: &str, bbox: [f32; 4], frame: (u32, u32), score: f32) -> FaceRef {
    FaceRef {
        id: id.to_string(),
        bbox: BoundingBox::from_ltwh(bbox),
        score,
        frame: FrameSize {
            width: frame.0,
            height: frame.1,
        },
    }
}

/// As [`emotion`], about `face`, with the window's `speech_ratio`: what a
/// face-crop model publishes for each tracked face in each window.
pub fn face_emotion(
    seq: u64,
    stamp_s: f64,
    face: &FaceRef,
    label: &str,
    confidence: f32,
    speech_ratio: Option<f32>,
) -> Message {
    let Message::Emotion(mut event) = emotion(seq, stamp_s, label, confidence) else {
        unreachable!("emotion() builds an emotion event")
    };
    event.face = Some(face.clone());
    event.speech_ratio = speech_ratio;
    Message::Emotion(event)
}

fn face_notice(stamp_s: f64, face: &FaceRef, last_seen_s: f64) -> FaceNotice {
    FaceNotice {
        header: header(stamp_s),
        stamp_s,
        id: face.id.clone(),
        bbox: face.bbox,
        score: face.score,
        frame: face.frame,
        last_seen_s,
    }
}

/// `face` started a track at `stamp_s`.
pub fn face_appeared(stamp_s: f64, face: &FaceRef) -> Message {
    Message::FaceAppeared(face_notice(stamp_s, face, stamp_s))
}

/// `face`'s track ended at `stamp_s`; it was last seen at `last_seen_s`
/// where `face` places it.
pub fn face_lost(stamp_s: f64, face: &FaceRef, last_seen_s: f64) -> Message {
    Message::FaceLost(face_notice(stamp_s, face, last_seen_s))
}

fn notice(stamp_s: f64, modality: &'static str, source: &str) -> SourceNotice {
    SourceNotice {
        header: header(stamp_s),
        stamp_s,
        modality,
        source: source.to_string(),
        error: None,
        retry_in_ms: None,
    }
}

pub fn source_opened(stamp_s: f64, modality: &'static str, source: &str) -> Message {
    Message::SourceOpened(notice(stamp_s, modality, source))
}

pub fn source_error(
    stamp_s: f64,
    modality: &'static str,
    source: &str,
    error: &str,
    retry_in_ms: Option<u64>,
) -> Message {
    Message::SourceError(SourceNotice {
        error: Some(error.to_string()),
        retry_in_ms,
        ..notice(stamp_s, modality, source)
    })
}

pub fn source_ended(stamp_s: f64, modality: &'static str, source: &str) -> Message {
    Message::SourceEnded(notice(stamp_s, modality, source))
}

/// A scripted minute of emotions: label runs of a few seconds each, at
/// `hop_s`, with confidences that rise after each change.
pub fn script(n: u64, hop_s: f64) -> Vec<Message> {
    let order = [
        "neutral",
        "happy",
        "sad",
        "surprised",
        "neutral",
        "angry",
        "happy",
        "neutral",
        "sad",
    ];
    let run = 16u64; // windows per label
    let mut previous: Option<&str> = None;
    (0..n)
        .map(|i| {
            let label = order[((i / run) as usize) % order.len()];
            let k = (i % run) as f32 / run as f32;
            let confidence = 0.48 + 0.4 * k.sqrt();
            let from = previous.filter(|p| *p != label);
            previous = Some(label);
            emotion_with(i + 1, (i + 1) as f64 * hop_s, label, confidence, from)
        })
        .collect()
}
