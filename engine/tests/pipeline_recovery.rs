//! A camera that disappears mid-run: the pipeline reports it, retries with
//! backoff, keeps serving audio meanwhile, and recovers when it returns.
//! And a stop in the middle of a hop ends the run without one more window.
//!
//! The "camera" is the real file replay source behind a wrapper that fails
//! the way a USB camera does (a stream error, then a refused reopen), so
//! the supervisor, the pipeline and the sinks are all the real ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emogate_device::file_source::{VideoFile, WavFile};
use emogate_device::source::{CaptureError, ClockHandle, VideoSource, VideoStream};
use emogate_device::supervise::Backoff;
use emogate_engine::event::Message;
use emogate_engine::pipeline::{MissingPolicy, Pacing, Pipeline, PipelineConfig};
use emogate_engine::sink::{Sink, SinkError};
use emogate_infer::affect::{AffectModel, BackendChoice, ModelSpec};
use emogate_media::{Frame, StopFlag};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fails its first stream after `frames_before_unplug` frames, refuses
/// the next `refused_opens` opens, then works.
struct Unplugged {
    inner: VideoFile,
    opens: u32,
    frames_before_unplug: u32,
    refused_opens: u32,
}

struct CountingStream {
    inner: Box<dyn VideoStream>,
    left: Option<u32>,
}

impl VideoStream for CountingStream {
    fn next_frame(&mut self, stop: &StopFlag) -> Result<Option<Frame>, CaptureError> {
        if let Some(left) = self.left.as_mut() {
            if *left == 0 {
                return Err(CaptureError::Stream {
                    source_name: "cam".into(),
                    message: "device removed (ENODEV)".into(),
                });
            }
            *left -= 1;
        }
        self.inner.next_frame(stop)
    }
}

impl VideoSource for Unplugged {
    fn name(&self) -> String {
        "cam".into()
    }

    fn open(&mut self, clock: ClockHandle) -> Result<Box<dyn VideoStream>, CaptureError> {
        self.opens += 1;
        if self.opens > 1 && self.opens <= 1 + self.refused_opens {
            return Err(CaptureError::Open {
                source_name: "cam".into(),
                message: "No such device".into(),
            });
        }
        Ok(Box::new(CountingStream {
            inner: self.inner.open(clock)?,
            left: (self.opens == 1).then_some(self.frames_before_unplug),
        }))
    }
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Message>>>);

impl Sink for Collect {
    fn name(&self) -> String {
        "collect".into()
    }
    fn publish(&mut self, message: &Message) -> Result<(), SinkError> {
        self.0.lock().unwrap().push(message.clone());
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[test]
fn a_camera_that_disappears_is_reported_retried_and_recovered() {
    let root = repo();
    let model = AffectModel::load(&ModelSpec {
        path: root.join("models/reference/emogate-ref.onnx"),
        manifest: None,
        backend: BackendChoice::Tract { threads: 1 },
        adapters: vec![],
        active: None,
        switching: Default::default(),
    })
    .unwrap();
    let video = Unplugged {
        inner: VideoFile::open(&root.join("tests/fixtures/sample/face.y4m"), 10.0, true).unwrap(),
        opens: 0,
        // 10 fps: unplugged 2.5 s in, during the first window.
        frames_before_unplug: 25,
        refused_opens: 2,
    };
    let audio = WavFile::open(&root.join("tests/fixtures/sample/voice.wav"), true).unwrap();
    let config = PipelineConfig {
        hop: Duration::from_millis(100),
        stale: Duration::from_millis(250),
        missing: MissingPolicy::Zero,
        max_windows: Some(30),
        backoff: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(10),
        },
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::new(
        model,
        Some(Box::new(video)),
        Some(Box::new(audio)),
        Pacing::RealTime,
        config,
    )
    .unwrap();
    let status = pipeline.status_handle();
    let sink = Collect::default();
    let summary = pipeline
        .run(vec![Box::new(sink.clone())], StopFlag::new())
        .unwrap();
    let messages = sink.0.lock().unwrap().clone();

    let errors: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::SourceError(n) => Some(n),
            _ => None,
        })
        .collect();
    // The unplug, then two refused reopens, each to be retried.
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0]
            .error
            .as_deref()
            .unwrap()
            .contains("device removed")
    );
    assert!(
        errors[1]
            .error
            .as_deref()
            .unwrap()
            .contains("No such device")
    );
    assert!(
        errors
            .iter()
            .all(|e| e.modality == "video" && e.retry_in_ms.is_some())
    );
    assert_eq!(
        errors
            .iter()
            .map(|e| e.retry_in_ms.unwrap())
            .collect::<Vec<_>>(),
        [200, 400, 400],
        "backoff doubles up to its cap"
    );
    let opened = messages
        .iter()
        .filter(|m| matches!(m, Message::SourceOpened(n) if n.modality == "video"))
        .count();
    assert_eq!(opened, 2, "the first open and the recovery");

    // Audio carried on: windows kept coming through the outage, marked
    // degraded while the video was stale, and clean again after recovery.
    let events: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Emotion(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len() as u64, summary.events);
    assert!(events.len() >= 25, "{} events", events.len());
    let degraded: Vec<bool> = events.iter().map(|e| e.degraded).collect();
    let first_bad = degraded.iter().position(|&d| d).expect("an outage window");
    let recovered = degraded[first_bad..]
        .iter()
        .position(|&d| !d)
        .expect("a window after recovery")
        + first_bad;
    assert!(
        recovered - first_bad >= 5,
        "outage of {} windows (about 1 s of retries at a 100 ms hop)",
        recovered - first_bad
    );
    assert!(degraded[recovered..].iter().all(|&d| !d), "{degraded:?}");
    assert!(events[first_bad].missing.contains(&"video"));
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(events.windows(2).all(|w| w[1].stamp_s > w[0].stamp_s));

    // /status tells the same story.
    let s = status();
    let cam = s["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "cam")
        .unwrap()
        .clone();
    assert_eq!(cam["state"], "running");
    assert_eq!(cam["failures"], 3);
    assert_eq!(cam["opens"], 2);
    assert_eq!(s["backend"], "tract");
    assert_eq!(s["ep"], serde_json::json!(["cpu"]));
    assert!(s["counters"]["degraded"].as_u64().unwrap() >= 5);
}

/// A stop raised in the middle of a hop ends the run at once: no window is
/// built for the tick still in the future (it used to be, repeating the
/// previous window's media: one more event per face).
#[test]
fn a_stop_mid_hop_builds_no_extra_window() {
    let root = repo();
    let model = AffectModel::load(&ModelSpec {
        path: root.join("models/reference/emogate-ref.onnx"),
        ..ModelSpec::default()
    })
    .unwrap();
    let video = VideoFile::open(&root.join("tests/fixtures/sample/face.y4m"), 10.0, true).unwrap();
    let audio = WavFile::open(&root.join("tests/fixtures/sample/voice.wav"), true).unwrap();
    let pipeline = Pipeline::new(
        model,
        Some(Box::new(video)),
        Some(Box::new(audio)),
        Pacing::RealTime,
        PipelineConfig {
            hop: Duration::from_millis(200),
            ..PipelineConfig::default()
        },
    )
    .unwrap();
    let sink = Collect::default();
    let stop = StopFlag::new();
    let raiser = {
        let stop = stop.clone();
        // The first window ends 2 s in; stop 50 ms into the fourth hop
        // after it.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2000 + 3 * 200 + 50));
            stop.raise();
        })
    };
    pipeline.run(vec![Box::new(sink.clone())], stop).unwrap();
    raiser.join().unwrap();
    let spans: Vec<(f64, f64)> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            Message::Emotion(e) => Some((e.window.start_s, e.window.end_s)),
            _ => None,
        })
        .collect();
    assert!(spans.len() >= 2, "{spans:?}");
    // Windows end a hop apart (each ends at its newest sample); a window
    // built for a tick still in the future ends about 50 ms after the one
    // before, or on the same sample.
    for pair in spans.windows(2) {
        assert!(
            pair[1].1 - pair[0].1 >= 0.1,
            "windows ending less than half a hop apart: {pair:?} in {spans:?}"
        );
    }
}
