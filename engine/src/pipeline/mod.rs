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
//!   windows from a one-slot [`handoff`]: when it is slower than the hop,
//!   the newest window wins and the others are counted as dropped;
//! * sinks: behind a bounded queue, so a slow disk or client costs events
//!   (counted) and never inference time.
//!
//! Pacing: live devices and `--pace realtime` run on the real clock; replay
//! "as fast as possible" runs on a [`VirtualClock`] that the scheduler
//! advances one hop at a time, producing exactly the windows a real-time
//! run would, as fast as the model allows, and dropping none.

mod audio_window;
mod handoff;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use emogate_device::clock::{RealClock, VirtualClock};
use emogate_device::source::{AudioSource, ClockHandle, VideoSource};
use emogate_device::supervise::{
    Backoff, Modality, SourceReport, Supervised, VideoFeed, spawn_audio, spawn_video,
};
use emogate_media::{Frame, Nanos, StopFlag};

use crate::event::{Event, EventBuilder, Header, Latency, Message, SourceNotice, Window};
use crate::post::{PostConfig, PostError};
use crate::sink::{Sink, StatusHandle};
use audio_window::AudioWindow;
use emogate_infer::Featurizer;
use emogate_infer::affect::{AffectError, AffectModel};
use emogate_infer::pre::PreError;
use handoff::Handoff;
pub use status::PipelineStatus;
use status::RunInfo;

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

/// A window on its way to inference.
struct Job {
    frame: Option<Arc<Frame>>,
    audio: Option<Vec<f32>>,
    window: Window,
    /// Capture time of the newest sample used.
    newest_at: Nanos,
    built_at: Instant,
    missing: Vec<&'static str>,
}

/// A configured pipeline, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    model: AffectModel,
    video: Option<Box<dyn VideoSource>>,
    audio: Option<Box<dyn AudioSource>>,
    pacing: Pacing,
    config: PipelineConfig,
    status: Arc<PipelineStatus>,
}

impl Pipeline {
    /// Checks that the sources fit the model's inputs.
    ///
    /// # Errors
    /// [`PipelineError::Config`] naming the missing or surplus source.
    pub fn new(
        model: AffectModel,
        video: Option<Box<dyn VideoSource>>,
        audio: Option<Box<dyn AudioSource>>,
        pacing: Pacing,
        config: PipelineConfig,
    ) -> Result<Self, PipelineError> {
        let manifest = model.manifest();
        let featurizer = Featurizer::new(manifest)?;
        let wants_audio = featurizer.audio().is_some();
        let wants_video = featurizer.wants_video();
        match (&video, wants_video) {
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
        match (&audio, wants_audio) {
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
        let window_s = featurizer
            .audio()
            .map(|a| a.window_samples() as f64 / f64::from(a.sample_rate))
            .unwrap_or(0.0);
        let status = Arc::new(PipelineStatus::new(RunInfo {
            model: model.path().display().to_string(),
            backend: model.backend_name().to_string(),
            ep: model.providers(),
            adapter: model.active().map(str::to_string),
            pacing: match pacing {
                Pacing::RealTime => "realtime",
                Pacing::AsFastAsPossible => "fast",
            },
            hop_ms: config.hop.as_secs_f64() * 1e3,
            window_s,
            stale_ms: config.stale.as_secs_f64() * 1e3,
            missing_policy: config.missing.as_str(),
            labels: manifest.labels.clone(),
        }));
        Ok(Pipeline {
            model,
            video,
            audio,
            pacing,
            config,
            status,
        })
    }

    /// The `/status` document source for an `http:` sink.
    pub fn status_handle(&self) -> StatusHandle {
        let status = Arc::clone(&self.status);
        Arc::new(move || status.to_json())
    }

    /// Live state of the run.
    pub fn status(&self) -> Arc<PipelineStatus> {
        Arc::clone(&self.status)
    }

    /// Runs until the sources end, `max_windows` is reached, or `stop` is
    /// raised; then flushes every sink.
    ///
    /// # Errors
    /// [`PipelineError`] when a source can never work as configured or the
    /// model fails.
    pub fn run(self, sinks: Vec<Box<dyn Sink>>, stop: StopFlag) -> Result<Summary, PipelineError> {
        let Pipeline {
            model,
            video,
            audio,
            pacing,
            config,
            status,
        } = self;
        let virtual_clock = Arc::new(VirtualClock::new());
        let clock: ClockHandle = match pacing {
            Pacing::RealTime => Arc::new(RealClock),
            Pacing::AsFastAsPossible => Arc::clone(&virtual_clock) as ClockHandle,
        };

        let (sink_tx, sink_rx) = std::sync::mpsc::sync_channel::<Message>(1024);
        let sink_thread = std::thread::Builder::new()
            .name("sinks".into())
            .spawn(move || run_sinks(sinks, sink_rx))?;

        let manifest = model.manifest().clone();
        let featurizer = Featurizer::new(&manifest)?;
        let audio_spec = featurizer.audio().cloned();
        let wants_video = featurizer.wants_video();
        let frames_kept = manifest
            .inputs
            .iter()
            .filter_map(|i| match i {
                emogate_models::manifest::InputSpec::Video(v) => Some(v.frames),
                _ => None,
            })
            .max()
            .unwrap_or(1)
            + 8;

        let handoff = Arc::new(Handoff::<Job>::new());
        let inference = {
            let handoff = Arc::clone(&handoff);
            let status = Arc::clone(&status);
            let sink_tx = sink_tx.clone();
            let clock = Arc::clone(&clock);
            let config = config.clone();
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || {
                    run_inference(
                        model, featurizer, &manifest, &handoff, &status, &sink_tx, &clock, &config,
                    )
                })?
        };

        let origin = clock.now();
        let (report_tx, report_rx) = std::sync::mpsc::channel();
        let feed = Arc::new(VideoFeed::new(frames_kept));
        let capture_stop = StopFlag::new();
        let mut supervisors: Vec<Supervised> = Vec::new();
        let mut audio_window = audio_spec
            .as_ref()
            .map(|a| AudioWindow::new(a.sample_rate, a.window_samples()));
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
            // Room for a few hops of the scheduler falling behind.
            let ring_seconds = (audio_spec.as_ref().map_or(1.0, |a| {
                a.window_samples() as f64 / f64::from(a.sample_rate)
            }) + 4.0 * config.hop.as_secs_f64())
            .max(2.0);
            supervisors.push(spawn_audio(
                source,
                ring_seconds,
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
            status: &status,
            sink_tx: &sink_tx,
            reports: &report_rx,
            feed: &feed,
            audio: audio_window.as_mut(),
            wants_video,
            video_end: None,
            audio_end: None,
            video_present: wants_video,
            audio_present: audio_spec.is_some(),
        };
        let first_end = audio_spec
            .as_ref()
            .map(|a| Duration::from_secs_f64(a.window_samples() as f64 / f64::from(a.sample_rate)))
            .unwrap_or(config.hop);
        let outcome = scheduler.run(first_end, &handoff, &stop);

        // Shut down in data-flow order: capture, then inference (which
        // finishes the window it holds), then sinks (which flush).
        capture_stop.raise();
        for s in supervisors {
            s.join();
        }
        handoff.close();
        let inference_result = inference.join().unwrap_or_else(|_| {
            Err(PipelineError::Config(
                "the inference thread panicked".into(),
            ))
        });
        drop(sink_tx);
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

struct Scheduler<'a> {
    clock: &'a ClockHandle,
    virtual_clock: Option<&'a VirtualClock>,
    origin: Nanos,
    config: &'a PipelineConfig,
    status: &'a PipelineStatus,
    sink_tx: &'a SyncSender<Message>,
    reports: &'a Receiver<SourceReport>,
    feed: &'a VideoFeed,
    audio: Option<&'a mut AudioWindow>,
    wants_video: bool,
    /// Capture time of the last item of a source that ended.
    video_end: Option<Nanos>,
    audio_end: Option<Nanos>,
    video_present: bool,
    audio_present: bool,
}

fn nanos(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

fn seconds(t: Nanos) -> f64 {
    t as f64 / 1e9
}

impl Scheduler<'_> {
    fn run(
        &mut self,
        first_end: Duration,
        handoff: &Handoff<Job>,
        stop: &StopFlag,
    ) -> Result<(), PipelineError> {
        let hop = nanos(self.config.hop);
        let first = match self.virtual_clock {
            Some(v) => {
                // Sources stamp from the clock's time when they open: let
                // them all open at the origin before time moves.
                v.settle(Duration::from_secs(30));
                self.origin + nanos(first_end)
            }
            None => self.warm_up(self.origin + nanos(first_end), stop)?,
        };
        let stale = nanos(self.config.stale);
        let mut k: u64 = 0;
        loop {
            if stop.is_raised() {
                return Ok(());
            }
            let built = self.status.counters.windows.load(Ordering::Relaxed)
                + self.status.counters.skipped.load(Ordering::Relaxed);
            if self.config.max_windows.is_some_and(|m| built >= m) {
                return Ok(());
            }
            let mut t = first + k * hop;
            match self.virtual_clock {
                Some(v) => {
                    v.advance(t);
                    if !v.settle(Duration::from_secs(30)) {
                        tracing::warn!(
                            "a replay source did not catch up with the virtual clock in 30 s"
                        );
                    }
                }
                None => {
                    self.wait_real(t, stop)?;
                    // A stalled scheduler (suspend, a debugger) skips the
                    // ticks it missed rather than bursting through them.
                    let now = self.clock.now();
                    if now > t + hop {
                        k = (now - first) / hop;
                        t = first + k * hop;
                    }
                }
            }
            self.handle_reports()?;
            if let Some(a) = self.audio.as_deref_mut() {
                a.drain();
                self.status
                    .counters
                    .audio_overruns
                    .store(a.overruns(), Ordering::Relaxed);
            }
            if self.all_ended_before(t) {
                return Ok(());
            }
            k += 1;

            let mut missing = Vec::new();
            let mut newest_at: Nanos = 0;
            let frame = if self.wants_video {
                let f = self.feed.latest(t, 1).pop();
                match f {
                    Some(f) if f.captured_at + stale >= t => {
                        newest_at = newest_at.max(f.captured_at);
                        Some(f)
                    }
                    _ => {
                        missing.push("video");
                        None
                    }
                }
            } else {
                None
            };
            let audio = match self.audio.as_deref() {
                Some(a) => match a.newest_at() {
                    Some(at) if a.is_full() && at + stale >= t => {
                        newest_at = newest_at.max(at);
                        let mut buf = Vec::new();
                        a.copy_into(&mut buf);
                        Some(buf)
                    }
                    _ => {
                        missing.push("audio");
                        None
                    }
                },
                None => None,
            };
            let nothing_left = frame.is_none() && audio.is_none();
            if !missing.is_empty() && (self.config.missing == MissingPolicy::Skip || nothing_left) {
                self.status.counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !missing.is_empty() {
                self.status
                    .counters
                    .degraded
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.status.counters.windows.fetch_add(1, Ordering::Relaxed);
            let end = newest_at.max(self.origin);
            let window_len = self.status.info.window_s.max(self.config.hop.as_secs_f64());
            let end_s = seconds(end - self.origin);
            let job = Job {
                frame,
                audio,
                window: Window {
                    start_s: (end_s - window_len).max(0.0),
                    end_s,
                },
                newest_at: end,
                built_at: Instant::now(),
                missing,
            };
            match self.virtual_clock {
                Some(_) => {
                    handoff.put_wait(job, || stop.is_raised());
                }
                None => {
                    if handoff.put_latest(job) {
                        self.status.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Live start-up: devices take a while to open, so the first window
    /// is built once every modality has data (a whole audio window, a
    /// frame) rather than at a fixed time, or at `earliest` plus the stale
    /// age if one never comes (then the missing policy applies). Returns
    /// the time of the first window.
    fn warm_up(&mut self, earliest: Nanos, stop: &StopFlag) -> Result<Nanos, PipelineError> {
        let give_up = earliest + nanos(self.config.stale);
        self.wait_real(earliest, stop)?;
        loop {
            self.handle_reports()?;
            if let Some(a) = self.audio.as_deref_mut() {
                a.drain();
            }
            let audio_ready = self.audio.as_deref().is_none_or(AudioWindow::is_full);
            let video_ready = !self.wants_video || self.feed.delivered() > 0;
            let now = self.clock.now();
            if (audio_ready && video_ready) || now >= give_up || stop.is_raised() {
                return Ok(now.max(earliest));
            }
            self.wait_real(now + 5_000_000, stop)?;
        }
    }

    /// Sleeps until the real clock reaches `t`, handling source reports
    /// as they come.
    fn wait_real(&mut self, t: Nanos, stop: &StopFlag) -> Result<(), PipelineError> {
        while self.clock.now() < t {
            if stop.is_raised() {
                return Ok(());
            }
            let left = Duration::from_nanos(t.saturating_sub(self.clock.now()));
            match self
                .reports
                .recv_timeout(left.min(Duration::from_millis(20)))
            {
                Ok(report) => self.on_report(report)?,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    if left > Duration::from_millis(20) {
                        continue;
                    }
                }
            }
        }
        Ok(())
    }

    fn handle_reports(&mut self) -> Result<(), PipelineError> {
        while let Ok(report) = self.reports.try_recv() {
            self.on_report(report)?;
        }
        Ok(())
    }

    fn notice(&self, modality: &'static str, name: &str) -> SourceNotice {
        let now = self.clock.now();
        SourceNotice {
            header: Header::at(now, &self.config.frame_id),
            stamp_s: seconds(now.saturating_sub(self.origin)),
            modality,
            source: name.to_string(),
            error: None,
            retry_in_ms: None,
        }
    }

    fn publish(&self, message: Message) {
        if let Err(TrySendError::Full(_)) = self.sink_tx.try_send(message) {
            self.status
                .counters
                .sink_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_report(&mut self, report: SourceReport) -> Result<(), PipelineError> {
        match report {
            SourceReport::VideoOpened { name } => {
                self.status.update_source("video", &name, |s| {
                    s.state = "running";
                    s.error = None;
                    s.retry_in_ms = None;
                    s.opens += 1;
                });
                self.publish(Message::SourceOpened(self.notice("video", &name)));
            }
            SourceReport::AudioOpened {
                name,
                consumer,
                sample_rate,
            } => {
                if let Some(a) = self.audio.as_deref_mut() {
                    a.attach(consumer, sample_rate)?;
                }
                self.status.update_source("audio", &name, |s| {
                    s.state = "running";
                    s.error = None;
                    s.retry_in_ms = None;
                    s.opens += 1;
                });
                self.publish(Message::SourceOpened(self.notice("audio", &name)));
            }
            SourceReport::Failed {
                modality,
                name,
                error,
                retry_in,
            } => {
                let m = modality.as_str();
                self.status.update_source(m, &name, |s| {
                    s.state = "failed";
                    s.error = Some(error.clone());
                    s.retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
                    s.failures += 1;
                });
                let mut notice = self.notice(m, &name);
                notice.error = Some(error.clone());
                notice.retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
                self.publish(Message::SourceError(notice));
                if retry_in.is_none() {
                    return Err(PipelineError::Source {
                        modality: m,
                        name,
                        error,
                    });
                }
            }
            SourceReport::Ended { modality, name } => {
                let m = modality.as_str();
                self.status.update_source(m, &name, |s| s.state = "ended");
                self.publish(Message::SourceEnded(self.notice(m, &name)));
                match modality {
                    Modality::Video => self.video_end = Some(self.feed.newest_at()),
                    Modality::Audio => {
                        if let Some(a) = self.audio.as_deref_mut() {
                            a.drain();
                        }
                        self.audio_end = Some(
                            self.audio
                                .as_deref()
                                .and_then(|a| a.newest_at())
                                .unwrap_or(self.origin),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Every source ended more than half a hop before `t` (the slack
    /// keeps the last window when a source ends a moment before the tick).
    fn all_ended_before(&self, t: Nanos) -> bool {
        let slack = nanos(self.config.hop) / 2;
        let ended =
            |present: bool, end: Option<Nanos>| !present || end.is_some_and(|e| e + slack < t);
        let any_present = self.video_present || self.audio_present;
        any_present
            && ended(self.video_present, self.video_end)
            && ended(self.audio_present, self.audio_end)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_inference(
    mut model: AffectModel,
    mut featurizer: Featurizer,
    manifest: &emogate_models::manifest::Manifest,
    handoff: &Handoff<Job>,
    status: &PipelineStatus,
    sink_tx: &SyncSender<Message>,
    clock: &ClockHandle,
    config: &PipelineConfig,
) -> Result<(), PipelineError> {
    let mut events = EventBuilder::new(manifest, config.post)?;
    let mut seq = 0u64;
    while let Some(job) = handoff.take() {
        let t0 = Instant::now();
        let inputs = featurizer.build(job.frame.as_deref(), job.audio.as_deref())?;
        let t1 = Instant::now();
        let cpu0 = thread_cpu_ns();
        let outputs = model.run(&inputs)?;
        status
            .counters
            .model_cpu_ns
            .fetch_add(thread_cpu_ns().saturating_sub(cpu0), Ordering::Relaxed);
        if !config.extra_inference_delay.is_zero() {
            std::thread::sleep(config.extra_inference_delay);
        }
        let t2 = Instant::now();
        let estimate = events.estimate(&outputs, Duration::from_secs_f64(job.window.end_s))?;
        let t3 = Instant::now();
        let capture_to_event = if clock.is_real_time() {
            seconds(clock.now().saturating_sub(job.newest_at)) * 1e3
        } else {
            // On a virtual clock capture time is media time; what a
            // consumer waits for is the processing itself.
            ms(job.built_at.elapsed())
        };
        let event = Event {
            seq,
            header: Header::at(job.newest_at, &config.frame_id),
            stamp_s: job.window.end_s,
            expression: estimate.expression,
            confidence: estimate.confidence,
            probs: estimate.probs,
            valence: estimate.valence,
            arousal: estimate.arousal,
            window: job.window,
            latency_ms: Latency {
                capture_to_event,
                queue: ms(t0 - job.built_at),
                preprocess: ms(t1 - t0),
                inference: ms(t2 - t1),
                postprocess: ms(t3 - t2),
            },
            change: estimate.change,
            degraded: !job.missing.is_empty(),
            missing: job.missing,
            counters: status.counters(),
            adapter: model.active().map(str::to_string),
            backend: model.backend_name().to_string(),
        };
        seq += 1;
        status.record_event(capture_to_event);
        if let Err(TrySendError::Full(_)) = sink_tx.try_send(Message::Emotion(event)) {
            status.counters.sink_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// CPU time of the calling thread (vDSO, no syscall on Linux).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Delivers messages to every sink; flushes every second and at the end.
fn run_sinks(mut sinks: Vec<Box<dyn Sink>>, rx: Receiver<Message>) {
    let mut last_flush = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(message) => {
                for sink in &mut sinks {
                    if let Err(e) = sink.publish(&message) {
                        tracing::warn!(sink = sink.name(), error = %e, "sink failed");
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            flush_all(&mut sinks);
            last_flush = Instant::now();
        }
    }
    flush_all(&mut sinks);
}

fn flush_all(sinks: &mut [Box<dyn Sink>]) {
    for sink in sinks {
        if let Err(e) = sink.flush() {
            tracing::warn!(sink = sink.name(), error = %e, "flushing failed");
        }
    }
}
