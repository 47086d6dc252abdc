//! The streaming pipeline: sources → windows → model → events → sinks.
//!
//! Threads, and why each exists:
//! * one supervisor per source (`emogate_device::supervise`): capture
//!   never waits on anything downstream, and a failing device is reopened
//!   without touching the other modality;
//! * the scheduler (the caller's thread): every hop it takes the last
//!   `window_s` of audio and the newest frame, aligned by capture time, and
//!   applies the missing/stale policy;
//! * inference: preprocessing, the forward pass, post-processing. It takes
//!   windows from a one-slot hand-off: when it is slower than the hop, the
//!   newest window wins and the others are counted as dropped;
//! * sinks: behind a bounded queue, so a slow disk or client costs events
//!   (counted) and never inference time.
//!
//! Pacing: live devices and `--pace realtime` run on the real clock; replay
//! "as fast as possible" runs on a [`VirtualClock`] that the scheduler
//! advances one hop at a time, producing exactly the windows a real-time
//! run would, as fast as the model allows, and dropping none.
//!
//! Never silently stuck: a window that fails is published as a
//! `model_error` (a non-finite output is counted), and the run ends with
//! [`PipelineError::ModelFailing`] after `max_consecutive_errors` failing
//! windows in a row. The scheduler watches the inference thread: one
//! window taking longer than the stall limit ends the run with
//! [`PipelineError::Stalled`], on the real clock and in replay alike.
//!
//! Adapters switch while the run goes on: [`Pipeline::switcher`] hands out
//! the [`Switcher`] the control channel calls; a fourth thread prepares
//! the new backend and inference installs it between two windows.
//!
//! Files: this one wires the threads together ([`Pipeline`]); `scheduler`
//! cuts the windows, `audio_window` keeps the rolling audio, `handoff` is
//! the one-slot hand-off, `inference` runs the model, [`switch`] prepares
//! and hands over adapters, `sinks` delivers, and [`status`] holds what
//! `/status` shows.

mod audio_window;
pub mod faces;
mod handoff;
mod inference;
mod scheduler;
mod sinks;
pub mod status;
pub mod switch;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use emogate_device::clock::{RealClock, VirtualClock};
use emogate_device::source::{AudioSource, ClockHandle, VideoSource};
use emogate_device::supervise::{Backoff, Supervised, VideoFeed, spawn_audio, spawn_video};
use emogate_media::{Frame, Nanos, StopFlag};
use emogate_models::manifest::{AudioFeatures, InputSpec, Manifest};

use crate::event::{EventBuilder, Message, Window};
use crate::post::{PostConfig, PostError};
use crate::sink::{Sink, StatusHandle};
use audio_window::AudioWindow;
use emogate_infer::Featurizer;
use emogate_infer::affect::{AffectError, AffectModel};
use emogate_infer::face::FaceDetector;
use emogate_infer::pre::PreError;
use emogate_infer::vad::VoiceDetector;
use faces::FaceStage;
pub use faces::{FaceSelect, FaceSettings};
use handoff::Handoff;
use inference::Inference;
use scheduler::Scheduler;
pub use status::PipelineStatus;
use status::RunInfo;
pub use switch::Switcher;

/// Errors that stop a run. Each names the setting or source at fault.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] AffectError),
    #[error(transparent)]
    Pre(#[from] PreError),
    #[error(transparent)]
    Post(#[from] PostError),
    /// A source can never work as configured (retrying will not help).
    #[error("{modality} source {name}: {error}")]
    Source {
        modality: &'static str,
        name: String,
        error: String,
    },
    #[error("starting a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// `windows` windows in a row failed (the last at `stage`).
    #[error(
        "{windows} windows in a row failed (--max-consecutive-errors); the last in {stage}: {error}"
    )]
    ModelFailing {
        windows: u32,
        stage: &'static str,
        error: String,
    },
    /// The inference thread spent longer than the stall limit on one window.
    #[error(
        "inference stalled: one window has been running for {busy_ms:.0} ms (--stall-ms {limit_ms:.0})"
    )]
    Stalled { busy_ms: f64, limit_ms: f64 },
    /// The inference thread ended unexpectedly (it panicked).
    #[error("the inference thread ended unexpectedly: {0}")]
    InferenceEnded(String),
}

impl PipelineError {
    /// The process exit status for this error, so that a supervisor can
    /// tell a broken model (3) and a stuck one (4) from a bad setting (1).
    pub fn exit_code(&self) -> u8 {
        match self {
            PipelineError::ModelFailing { .. } => 3,
            PipelineError::Stalled { .. } | PipelineError::InferenceEnded(_) => 4,
            _ => 1,
        }
    }
}

/// What to do with a window whose modality is missing or stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingPolicy {
    /// Do not run the model; count the window as skipped.
    Skip,
    /// Feed the modality as zeros and mark the event `degraded`.
    Zero,
}

impl MissingPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingPolicy::Skip => "skip",
            MissingPolicy::Zero => "zero",
        }
    }
}

/// How time passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// The real clock: live devices, or replay at recorded speed.
    RealTime,
    /// Replay on a virtual clock, as fast as the model allows, no drops.
    AsFastAsPossible,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub hop: Duration,
    /// A modality whose newest item is older than this is missing.
    pub stale: Duration,
    pub missing: MissingPolicy,
    pub post: PostConfig,
    /// Stop after this many windows.
    pub max_windows: Option<u64>,
    /// `header.frame_id` of published messages.
    pub frame_id: String,
    pub backoff: Backoff,
    /// Added to every forward pass: a test aid to emulate a slow board.
    pub extra_inference_delay: Duration,
    /// One window running longer than this is a stall that ends the run;
    /// `None`: ten hops, at least 2 s.
    pub stall: Option<Duration>,
    /// Failing windows in a row that end the run (at least 1).
    pub max_consecutive_errors: u32,
}

/// The first window's stall limit when none is set: a first forward pass
/// can be far slower than the rest (lazy initialization, a TensorRT engine
/// built on first use, an emulated CPU), and is no sign of a hang.
pub const FIRST_WINDOW_STALL: Duration = Duration::from_secs(60);

impl PipelineConfig {
    /// The stall limit in force once a window has finished: as set, or ten
    /// hops and at least 2 s.
    pub fn stall_limit(&self) -> Duration {
        self.stall
            .unwrap_or_else(|| (self.hop * 10).max(Duration::from_secs(2)))
    }

    /// The stall limit for the next window after `windows_done` finished
    /// ones: [`PipelineConfig::stall_limit`], except that the first window
    /// gets at least [`FIRST_WINDOW_STALL`] unless a limit was set.
    pub fn stall_limit_for(&self, windows_done: u64) -> Duration {
        match self.stall {
            None if windows_done == 0 => self.stall_limit().max(FIRST_WINDOW_STALL),
            _ => self.stall_limit(),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            hop: Duration::from_millis(250),
            stale: Duration::from_secs(1),
            missing: MissingPolicy::Zero,
            post: PostConfig::default(),
            max_windows: None,
            frame_id: "emogate".into(),
            backoff: Backoff::default(),
            extra_inference_delay: Duration::ZERO,
            stall: None,
            max_consecutive_errors: 10,
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub counters: crate::event::Counters,
    /// Emotion events published.
    pub events: u64,
    /// Messages the sink queue could not take.
    pub sink_dropped: u64,
}

/// A window ready for inference: the media the scheduler cut at one hop,
/// handed to the inference thread.
struct ReadyWindow {
    /// The newest frame, unless video is missing or stale.
    frame: Option<Arc<Frame>>,
    /// The last audio window at the model's rate, unless missing or stale.
    audio: Option<Vec<f32>>,
    /// One past its last sample, counted over the run
    /// (`AudioWindow::end_sample`).
    audio_end: u64,
    /// Share of the window's audio the voice activity detector heard as
    /// speech (set by the inference thread).
    speech_ratio: Option<f32>,
    /// The media time the window covers, as events report it.
    span: Window,
    /// Capture time of the newest sample used.
    newest_at: Nanos,
    built_at: Instant,
    /// The same moment on the pipeline clock.
    built_clock: Nanos,
    /// Modalities fed as zeros (the event is then `degraded`).
    missing: Vec<&'static str>,
}

/// What the model takes from the sources, read once from its manifest, so
/// that the scheduler, the capture ring and `/status` agree.
#[derive(Debug, Clone)]
struct MediaNeeds {
    audio: Option<AudioNeed>,
    /// Whether the model has a video input.
    video: bool,
    /// Frames the video feed keeps: the longest clip input, plus slack.
    frames_kept: usize,
}

/// The model's audio window.
#[derive(Debug, Clone, Copy)]
struct AudioNeed {
    sample_rate: u32,
    /// Samples in one window.
    samples: usize,
    /// The window's length, `samples / sample_rate`: computed here and
    /// nowhere else.
    seconds: f64,
    /// The same as a [`Duration`].
    length: Duration,
    /// Windows end on a multiple of this many samples (the log-mel hop,
    /// so the featurizer can reuse frames; 1 for waveform models).
    align: usize,
}

impl MediaNeeds {
    /// # Errors
    /// [`PipelineError::Config`] for an audio window no [`Duration`] holds.
    fn of(featurizer: &Featurizer, manifest: &Manifest) -> Result<Self, PipelineError> {
        let audio = featurizer
            .audio()
            .map(|a| {
                let samples = a.window_samples();
                let seconds = samples as f64 / f64::from(a.sample_rate);
                // The manifest is user input: `from_secs_f64` would panic.
                let length = Duration::try_from_secs_f64(seconds).map_err(|_| {
                    PipelineError::Config(format!(
                        "the manifest's audio window is {seconds:?} s \
                         ({samples} samples at {} Hz): expected a finite length",
                        a.sample_rate
                    ))
                })?;
                let align = match &a.features {
                    AudioFeatures::LogMel(m) => m.hop_length,
                    AudioFeatures::Waveform => 1,
                };
                Ok::<_, PipelineError>(AudioNeed {
                    sample_rate: a.sample_rate,
                    samples,
                    seconds,
                    length,
                    align,
                })
            })
            .transpose()?;
        let frames_kept = manifest
            .inputs
            .iter()
            .filter_map(|i| match i {
                InputSpec::Video(v) => Some(v.frames),
                _ => None,
            })
            .max()
            .unwrap_or(1)
            + 8;
        Ok(MediaNeeds {
            audio,
            video: featurizer.wants_video(),
            frames_kept,
        })
    }

    /// The audio window in seconds; 0 when the model takes no audio.
    fn window_s(&self) -> f64 {
        self.audio.map_or(0.0, |a| a.seconds)
    }

    /// How far after the start the first window ends: once a whole audio
    /// window can have been captured, or one hop without audio.
    fn first_window_end(&self, hop: Duration) -> Duration {
        self.audio.map_or(hop, |a| a.length)
    }

    /// Seconds of audio the capture ring holds: the window plus room for a
    /// few hops of the scheduler falling behind, at least 2 s.
    fn ring_seconds(&self, hop: Duration) -> f64 {
        (self.audio.map_or(1.0, |a| a.seconds) + 4.0 * hop.as_secs_f64()).max(2.0)
    }
}

/// Waits for the inference thread to end after the hand-off closed, as
/// long as it is not stuck: one window running past the stall limit turns
/// the end of the run into [`PipelineError::Stalled`].
fn wait_for_inference<T>(
    inference: &std::thread::JoinHandle<T>,
    status: &PipelineStatus,
    config: &PipelineConfig,
) -> Result<(), PipelineError> {
    while !inference.is_finished() {
        let live = status.liveness();
        let limit = config.stall_limit_for(live.windows_done);
        if let Some(busy) = live.busy_for.filter(|b| *b > limit) {
            return Err(PipelineError::Stalled {
                busy_ms: busy.as_secs_f64() * 1e3,
                limit_ms: limit.as_secs_f64() * 1e3,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn seconds(t: Nanos) -> f64 {
    t as f64 / 1e9
}

/// A configured pipeline, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    model: AffectModel,
    /// Built once here and moved to the inference thread by `run`.
    featurizer: Featurizer,
    events: EventBuilder,
    needs: MediaNeeds,
    video: Option<Box<dyn VideoSource>>,
    audio: Option<Box<dyn AudioSource>>,
    pacing: Pacing,
    config: PipelineConfig,
    status: Arc<PipelineStatus>,
    switcher: Switcher,
    /// The face stage, for models that take face crops.
    faces: Option<FaceStage>,
    /// Voice activity on the audio window, for models with audio.
    speech: Option<SpeechGate>,
}

/// The voice activity detector and what the run asks of it.
pub(crate) struct SpeechGate {
    pub(crate) detector: VoiceDetector,
    /// Windows whose speech ratio is below this have their audio treated
    /// as missing (`--require-speech`).
    pub(crate) require: Option<f32>,
    /// The model's audio rate (what the windows hold).
    pub(crate) rate: u32,
}

impl Pipeline {
    /// Checks that the sources fit the model's inputs and prepares
    /// preprocessing and post-processing.
    ///
    /// # Errors
    /// [`PipelineError::Config`] naming the missing or surplus source, or a
    /// zero hop; [`PipelineError::Pre`] / [`PipelineError::Post`] for
    /// manifest or post-processing settings their stages refuse.
    pub fn new(
        model: AffectModel,
        video: Option<Box<dyn VideoSource>>,
        audio: Option<Box<dyn AudioSource>>,
        pacing: Pacing,
        config: PipelineConfig,
    ) -> Result<Self, PipelineError> {
        let manifest = model.manifest();
        let featurizer = Featurizer::new(manifest)?;
        let needs = MediaNeeds::of(&featurizer, manifest)?;
        match (&video, needs.video) {
            (Some(v), false) => {
                return Err(PipelineError::Config(format!(
                    "video source {} given, but the model has no video input",
                    v.name()
                )));
            }
            (None, true) => {
                return Err(PipelineError::Config(
                    "the model has a video input: give a video source (--video)".into(),
                ));
            }
            _ => {}
        }
        match (&audio, needs.audio.is_some()) {
            (Some(a), false) => {
                return Err(PipelineError::Config(format!(
                    "audio source {} given, but the model has no audio input",
                    a.name()
                )));
            }
            (None, true) => {
                return Err(PipelineError::Config(
                    "the model has an audio input: give an audio source (--audio)".into(),
                ));
            }
            _ => {}
        }
        if config.hop.is_zero() {
            return Err(PipelineError::Config(
                "hop is 0 ms; expected a positive hop".into(),
            ));
        }
        if config.max_consecutive_errors == 0 {
            return Err(PipelineError::Config(
                "--max-consecutive-errors 0: expected at least 1".into(),
            ));
        }
        let events = EventBuilder::new(manifest, config.post)?;
        let status = Arc::new(PipelineStatus::new(
            RunInfo {
                model: model.path().display().to_string(),
                backend: model.backend_name().to_string(),
                ep: model.providers(),
                pacing: match pacing {
                    Pacing::RealTime => "realtime",
                    Pacing::AsFastAsPossible => "fast",
                },
                hop_ms: config.hop.as_secs_f64() * 1e3,
                window_s: needs.window_s(),
                stale_ms: config.stale.as_secs_f64() * 1e3,
                missing_policy: config.missing.as_str(),
                labels: manifest.labels.clone(),
                stall_ms: config.stall_limit().as_secs_f64() * 1e3,
                first_window_stall_ms: config.stall_limit_for(0).as_secs_f64() * 1e3,
                max_consecutive_errors: config.max_consecutive_errors,
            },
            model.active().map(str::to_string),
            model.adapter_names(),
        ));
        let switcher = Switcher::new(model.preparer(), model.active().map(str::to_string));
        Ok(Pipeline {
            model,
            featurizer,
            events,
            needs,
            video,
            audio,
            pacing,
            config,
            status,
            switcher,
            faces: None,
            speech: None,
        })
    }

    /// Adds voice activity: `detector` runs on each audio window, every
    /// event carries the window's `speech_ratio`, and with `require` set,
    /// windows below it have their audio treated as missing (the missing
    /// policy applies).
    ///
    /// # Errors
    /// [`PipelineError::Config`] when the model has no audio input, or
    /// `require` is not a number from 0 to 1.
    pub fn with_speech(
        mut self,
        detector: VoiceDetector,
        require: Option<f32>,
    ) -> Result<Self, PipelineError> {
        let Some(audio) = self.needs.audio else {
            return Err(PipelineError::Config(
                "voice activity options given, but the model has no audio input".into(),
            ));
        };
        if let Some(r) = require.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(PipelineError::Config(format!(
                "--require-speech {r}: expected a share of the window from 0 to 1"
            )));
        }
        self.speech = Some(SpeechGate {
            detector,
            require,
            rate: audio.sample_rate,
        });
        Ok(self)
    }

    /// Whether the model has an audio input (then [`Pipeline::with_speech`]
    /// can add voice activity).
    pub fn wants_audio(&self) -> bool {
        self.needs.audio.is_some()
    }

    /// Whether the model takes face crops (`"crop": {"face": …}`): then
    /// [`Pipeline::with_faces`] must give it a face detector.
    pub fn wants_faces(&self) -> bool {
        self.featurizer.face_crop().is_some()
    }

    /// Adds the face stage: `detector` finds faces in each window's frame
    /// and the model runs on the crops of the faces `settings` choose.
    ///
    /// # Errors
    /// [`PipelineError::Config`] when the model takes whole frames, or
    /// `detect_every` is 0.
    pub fn with_faces(
        mut self,
        detector: FaceDetector,
        settings: FaceSettings,
    ) -> Result<Self, PipelineError> {
        if !self.wants_faces() {
            return Err(PipelineError::Config(
                "face options given, but the model's video input takes the whole frame \
                 (its manifest has no \"crop\": {\"face\": …})"
                    .into(),
            ));
        }
        if settings.detect_every == 0 {
            return Err(PipelineError::Config(
                "--detect-every 0: expected a positive number of frames".into(),
            ));
        }
        self.faces = Some(FaceStage::new(detector, settings));
        Ok(self)
    }

    /// Switches adapters while the run goes on (the control channel's
    /// handle); valid before and during [`Pipeline::run`].
    pub fn switcher(&self) -> Switcher {
        self.switcher.clone()
    }

    /// The `/status` document source for an `http:` sink.
    pub fn status_handle(&self) -> StatusHandle {
        let status = Arc::clone(&self.status);
        let switcher = self.switcher.clone();
        Arc::new(move || {
            let mut doc = status.to_json();
            if let Some(fields) = doc.as_object_mut() {
                fields.insert("switch_pending".into(), switcher.pending_json());
            }
            doc
        })
    }

    /// Live state of the run.
    pub fn status(&self) -> Arc<PipelineStatus> {
        Arc::clone(&self.status)
    }

    /// Runs until the sources end, `max_windows` is reached, or `stop` is
    /// raised; then flushes every sink.
    ///
    /// # Errors
    /// [`PipelineError`] when a source can never work as configured, a
    /// thread cannot start, the model failed `max_consecutive_errors`
    /// windows in a row ([`PipelineError::ModelFailing`]) or inference
    /// stalled ([`PipelineError::Stalled`]; the stuck thread is left
    /// behind, for the process to end).
    pub fn run(self, sinks: Vec<Box<dyn Sink>>, stop: StopFlag) -> Result<Summary, PipelineError> {
        let Pipeline {
            model,
            featurizer,
            events,
            needs,
            video,
            audio,
            pacing,
            config,
            status,
            switcher,
            faces,
            speech,
        } = self;
        if featurizer.face_crop().is_some() && faces.is_none() {
            return Err(PipelineError::Config(
                "the model takes face crops (\"crop\": {\"face\": …} in its manifest): \
                 give it a face detector (--face-detector)"
                    .into(),
            ));
        }
        let virtual_clock = Arc::new(VirtualClock::new());
        let clock: ClockHandle = match pacing {
            Pacing::RealTime => Arc::new(RealClock),
            Pacing::AsFastAsPossible => Arc::clone(&virtual_clock) as ClockHandle,
        };

        let (sink_tx, sink_rx) = std::sync::mpsc::sync_channel::<Message>(1024);
        // Raised at the end: a stalled inference thread keeps its sender
        // forever, so the sink thread cannot wait for the channel to close.
        let sinks_finish = StopFlag::new();
        let sink_thread = {
            let finish = sinks_finish.clone();
            std::thread::Builder::new().name("sinks".into()).spawn({
                let status = Arc::clone(&status);
                move || sinks::run_sinks(sinks, sink_rx, &finish, &status)
            })?
        };
        let preparer_thread = switcher.spawn_preparer()?;

        let handoff = Arc::new(Handoff::<ReadyWindow>::new());
        let inference = {
            let inference = Inference {
                model,
                featurizer,
                events,
                status: Arc::clone(&status),
                sink_tx: sink_tx.clone(),
                clock: Arc::clone(&clock),
                frame_id: config.frame_id.clone(),
                extra_delay: config.extra_inference_delay,
                seq: 0,
                switcher: switcher.clone(),
                max_consecutive_errors: config.max_consecutive_errors,
                faces,
                speech,
                face_events: Default::default(),
                post: config.post,
                missing: config.missing,
            };
            let handoff = Arc::clone(&handoff);
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || inference.serve(&handoff))?
        };

        let origin = clock.now();
        let (report_tx, report_rx) = std::sync::mpsc::channel();
        let feed = Arc::new(VideoFeed::new(needs.frames_kept));
        let capture_stop = StopFlag::new();
        let mut supervisors: Vec<Supervised> = Vec::new();
        let mut audio_window = needs
            .audio
            .map(|a| AudioWindow::new(a.sample_rate, a.samples, a.align));
        if let Some(source) = video {
            status.update_source("video", &source.name(), |_| {});
            supervisors.push(spawn_video(
                source,
                Arc::clone(&feed),
                Arc::clone(&clock),
                report_tx.clone(),
                capture_stop.clone(),
                config.backoff,
            )?);
        }
        if let Some(source) = audio {
            status.update_source("audio", &source.name(), |_| {});
            supervisors.push(spawn_audio(
                source,
                needs.ring_seconds(config.hop),
                Arc::clone(&clock),
                report_tx.clone(),
                capture_stop.clone(),
                config.backoff,
            )?);
        }
        drop(report_tx);

        let mut scheduler = Scheduler {
            clock: &clock,
            virtual_clock: (pacing == Pacing::AsFastAsPossible).then_some(&*virtual_clock),
            origin,
            config: &config,
            needs: &needs,
            status: &status,
            sink_tx: &sink_tx,
            reports: &report_rx,
            feed: &feed,
            audio: audio_window.as_mut(),
            ended: Default::default(),
        };
        let outcome = scheduler.run(&handoff, &stop);

        // Shut down in data-flow order: capture, then inference (which
        // finishes the window it holds), then sinks (which flush).
        capture_stop.raise();
        for s in supervisors {
            s.join();
        }
        handoff.close();
        // The inference thread finishes the window it holds, unless it is
        // stuck in the model: then joining would hang this thread too (a
        // SIGTERM would never be honoured), so wait only while it is within
        // the stall limit.
        let outcome = match outcome {
            Ok(()) => wait_for_inference(&inference, &status, &config),
            stalled => stalled,
        };
        let inference_result = match &outcome {
            Err(PipelineError::Stalled { .. }) => {
                // Report, and leave the stuck thread for the process to end.
                let error = outcome
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::error!(%error, "inference stalled");
                let now = clock.now();
                let stamp_s = seconds(now.saturating_sub(origin));
                let _ = sink_tx.try_send(Message::ModelError(crate::event::ModelError {
                    header: crate::event::Header::at(now, &config.frame_id),
                    stamp_s,
                    window: crate::event::Window {
                        start_s: stamp_s,
                        end_s: stamp_s,
                    },
                    stage: crate::event::Stage::Inference,
                    error,
                    consecutive: status.heartbeat.consecutive_errors.load(Ordering::Relaxed) + 1,
                    adapter: status.adapter(),
                }));
                Ok(())
            }
            _ => inference.join().unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(PipelineError::InferenceEnded(what))
            }),
        };
        switcher.close("the pipeline stopped");
        let _ = preparer_thread.join();
        drop(sink_tx);
        sinks_finish.raise();
        let _ = sink_thread.join();
        outcome?;
        inference_result?;
        Ok(Summary {
            counters: status.counters(),
            events: status.counters.events.load(Ordering::Relaxed),
            sink_dropped: status.counters.sink_dropped.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_window_gets_a_warm_up_allowance_unless_a_limit_is_set() {
        let mut config = PipelineConfig {
            hop: Duration::from_millis(100),
            ..PipelineConfig::default()
        };
        assert_eq!(config.stall_limit(), Duration::from_secs(2));
        assert_eq!(config.stall_limit_for(0), FIRST_WINDOW_STALL);
        assert_eq!(config.stall_limit_for(1), Duration::from_secs(2));
        config.hop = Duration::from_millis(500);
        assert_eq!(config.stall_limit_for(3), Duration::from_secs(5));
        config.stall = Some(Duration::from_millis(1500));
        assert_eq!(config.stall_limit_for(0), Duration::from_millis(1500));
        assert_eq!(config.stall_limit_for(9), Duration::from_millis(1500));
    }
}
