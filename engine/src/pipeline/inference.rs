//! The inference thread: each [`ReadyWindow`] through the featurizer, the
//! model and post-processing into one published emotion event.
//!
//! A window that fails does not stop the thread: an error in any stage is
//! published as a `model_error` message, a non-finite output is counted
//! and not published, and only `max_consecutive_errors` failing windows in
//! a row end the run ([`PipelineError::ModelFailing`]), so that a
//! supervisor (systemd) restarts a model that is broken for good. Between
//! windows it installs an adapter the [`Switcher`] has prepared.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use emogate_device::source::ClockHandle;
use emogate_infer::affect::AffectModel;
use emogate_infer::{Featurizer, Tensor};

use super::faces::{ChosenFace, FaceStage};
use super::handoff::Handoff;
use super::switch::Switcher;
use super::{MissingPolicy, PipelineError, PipelineStatus, ReadyWindow, SpeechGate, seconds};
use crate::event::{
    AdapterChange, Event, EventBuilder, Header, Latency, Message, ModelError, Stage,
};
use crate::post::PostConfig;

/// Everything a forward pass needs, owned by the inference thread.
pub(super) struct Inference {
    pub(super) model: AffectModel,
    pub(super) featurizer: Featurizer,
    /// Smoothing and change detection: state carried from window to window.
    pub(super) events: EventBuilder,
    /// Counters and recent latencies, shared with `/status`.
    pub(super) status: Arc<PipelineStatus>,
    pub(super) sink_tx: SyncSender<Message>,
    pub(super) clock: ClockHandle,
    /// `header.frame_id` of the events.
    pub(super) frame_id: String,
    /// Added to every forward pass (a test aid).
    pub(super) extra_delay: Duration,
    /// The next event's `seq`.
    pub(super) seq: u64,
    /// Installs adapters prepared off this thread.
    pub(super) switcher: Switcher,
    /// Failing windows in a row that end the run.
    pub(super) max_consecutive_errors: u32,
    /// Set for models that take face crops.
    pub(super) faces: Option<FaceStage>,
    /// Voice activity, when the run has it.
    pub(super) speech: Option<SpeechGate>,
    /// Smoothing and change detection per face track, made from `post`.
    pub(super) face_events: HashMap<String, EventBuilder>,
    pub(super) post: PostConfig,
    /// For windows without a face.
    pub(super) missing: MissingPolicy,
}

/// The timings of one window, for the event's `latency_ms`.
struct Timings {
    t0: Instant,
    t1: Instant,
    t2: Instant,
    detect: Option<Duration>,
}

/// Why a window produced no event.
enum Failure {
    Error {
        stage: Stage,
        error: String,
    },
    /// The named output held NaN or an infinity.
    NonFinite {
        output: String,
    },
}

/// Marks the inference thread as ended however it returns (a panic
/// included), so the scheduler stops feeding it.
struct EndGuard(Arc<PipelineStatus>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.inference_ended();
    }
}

impl Inference {
    /// Runs every window `handoff` yields until it is closed and empty.
    ///
    /// # Errors
    /// [`PipelineError::ModelFailing`] after `max_consecutive_errors`
    /// failing windows in a row.
    pub(super) fn serve(mut self, handoff: &Handoff<ReadyWindow>) -> Result<(), PipelineError> {
        let _ended = EndGuard(Arc::clone(&self.status));
        let mut consecutive: u32 = 0;
        while let Some(window) = handoff.take() {
            self.install_prepared(window.newest_at, window.span.end_s);
            let span = window.span;
            let newest_at = window.newest_at;
            self.status.window_started();
            let result = self.infer(window);
            self.status.window_done();
            let failure = match result {
                Ok(()) => {
                    consecutive = 0;
                    self.status
                        .heartbeat
                        .consecutive_errors
                        .store(0, Ordering::Relaxed);
                    continue;
                }
                Err(failure) => failure,
            };
            consecutive += 1;
            self.status
                .heartbeat
                .consecutive_errors
                .store(consecutive, Ordering::Relaxed);
            let (stage, error) = match failure {
                Failure::NonFinite { output } => {
                    self.status
                        .counters
                        .nonfinite
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        output,
                        consecutive,
                        "non-finite model output: window not published"
                    );
                    (
                        Stage::Inference,
                        format!("output `{output}` holds NaN or an infinity"),
                    )
                }
                Failure::Error { stage, error } => {
                    self.status
                        .counters
                        .model_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stage = stage.as_str(), error, consecutive, "window failed");
                    self.publish(Message::ModelError(ModelError {
                        header: Header::at(newest_at, &self.frame_id),
                        stamp_s: span.end_s,
                        window: span,
                        stage,
                        error: error.clone(),
                        consecutive,
                        adapter: self.model.active().map(str::to_string),
                    }));
                    (stage, error)
                }
            };
            if consecutive >= self.max_consecutive_errors {
                return Err(PipelineError::ModelFailing {
                    windows: consecutive,
                    stage: stage.as_str(),
                    error,
                });
            }
        }
        Ok(())
    }

    /// Installs the backend the switcher prepared, if any, and announces
    /// it on every output.
    /// `newest_at` and `stamp_s` are those of the window about to run: the
    /// change is stamped with the first media the new adapter sees.
    fn install_prepared(&mut self, newest_at: emogate_media::Nanos, stamp_s: f64) {
        let Some(mut ready) = self.switcher.take_ready() else {
            return;
        };
        let target = ready.target();
        if let Some(prepared) = ready.take_prepared()
            && let Err(e) = self.model.install(target.clone(), prepared)
        {
            tracing::error!(adapter = ?target, error = %e, "installing the adapter failed; the current one keeps serving");
            self.switcher.install_failed(&ready, e.to_string());
            return;
        }
        let installed = self.switcher.installed(&ready, self.seq);
        self.status.set_adapter(target);
        tracing::info!(
            from = ?installed.from,
            to = ?installed.to,
            seq = installed.seq,
            prepare_ms = installed.prepare_ms,
            replanned = installed.replanned,
            "adapter switched"
        );
        self.publish(Message::AdapterChanged(AdapterChange {
            header: Header::at(newest_at, &self.frame_id),
            stamp_s,
            from: installed.from,
            to: installed.to,
            seq: installed.seq,
            prepare_ms: installed.prepare_ms,
            switch_ms: installed.switch_ms,
            replanned: installed.replanned,
        }));
    }

    fn publish(&self, message: Message) {
        super::sinks::offer(&self.sink_tx, &self.status, message);
    }

    /// One window: voice activity, featurize, forward, post-process,
    /// publish.
    fn infer(&mut self, mut window: ReadyWindow) -> Result<(), Failure> {
        if !self.listen(&mut window)? {
            return Ok(());
        }
        if self.faces.is_some() {
            return self.infer_faces(window);
        }
        let t0 = Instant::now();
        let inputs = self
            .featurizer
            .build(window.frame.as_deref(), window.audio.as_deref())
            .map_err(preprocess_failure)?;
        let t1 = Instant::now();
        let outputs = self.forward(&inputs)?;
        let t2 = Instant::now();
        self.publish_estimate(
            &window,
            &outputs,
            None,
            Timings {
                t0,
                t1,
                t2,
                detect: None,
            },
        )
    }

    /// One window of a face model: find and follow the faces, then run
    /// the model on the chosen ones (batched where the model allows) and
    /// publish an event per face. Without a face the video is missing:
    /// `--missing zero` runs the model on zeros (one event, no `face`),
    /// `skip` publishes nothing.
    fn infer_faces(&mut self, mut window: ReadyWindow) -> Result<(), Failure> {
        let t0 = Instant::now();
        let Some(stage) = self.faces.as_mut() else {
            return Ok(());
        };
        let found = stage
            .observe(
                window.frame.as_deref(),
                window.newest_at,
                window.span.end_s,
                &self.frame_id,
            )
            .map_err(|e| Failure::Error {
                stage: Stage::Preprocess,
                error: format!("face detection: {e}"),
            })?;
        for message in found.notices {
            self.publish(message);
        }
        for id in &found.lost {
            self.face_events.remove(id);
        }
        let detect = (!found.detect.is_zero()).then_some(found.detect);
        let frame = match (window.frame.clone(), found.chosen.is_empty()) {
            (Some(frame), false) => frame,
            _ => {
                // No face: the video modality is missing.
                let was_degraded = !window.missing.is_empty();
                if !window.missing.contains(&"video") {
                    window.missing.push("video");
                }
                let counters = &self.status.counters;
                if self.missing == MissingPolicy::Skip || window.audio.is_none() {
                    if was_degraded {
                        // Counted as degraded when the window was built, or
                        // by the voice activity gate.
                        counters.degraded.fetch_sub(1, Ordering::Relaxed);
                    }
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                if !was_degraded {
                    counters.degraded.fetch_add(1, Ordering::Relaxed);
                }
                let inputs = self
                    .featurizer
                    .build(None, window.audio.as_deref())
                    .map_err(preprocess_failure)?;
                let t1 = Instant::now();
                let outputs = self.forward(&inputs)?;
                let t2 = Instant::now();
                return self.publish_estimate(
                    &window,
                    &outputs,
                    None,
                    Timings { t0, t1, t2, detect },
                );
            }
        };
        let batch = self.model.max_batch().max(1);
        for group in found.chosen.chunks(batch) {
            let faces: Vec<_> = group.iter().map(|c| c.face).collect();
            let inputs = self
                .featurizer
                .build_faces(&frame, &faces, window.audio.as_deref())
                .map_err(preprocess_failure)?;
            let t1 = Instant::now();
            let outputs = self.forward(&inputs)?;
            let t2 = Instant::now();
            let per_face = split_batch(&outputs, group.len()).ok_or_else(|| Failure::Error {
                stage: Stage::Postprocess,
                error: format!(
                    "the model returned outputs that do not split into {} faces",
                    group.len()
                ),
            })?;
            for (chosen, outputs) in group.iter().zip(per_face) {
                self.publish_estimate(
                    &window,
                    &outputs,
                    Some(chosen),
                    Timings { t0, t1, t2, detect },
                )?;
            }
        }
        Ok(())
    }

    /// Runs the voice activity detector on the window's audio and records
    /// its speech ratio. Below `--require-speech` the audio is missing: the
    /// window is fed zeros for it (`--missing zero`, when it has video to
    /// run on) or skipped; returns whether it still runs.
    fn listen(&mut self, window: &mut ReadyWindow) -> Result<bool, Failure> {
        let (Some(gate), Some(audio)) = (self.speech.as_mut(), window.audio.as_deref()) else {
            return Ok(true);
        };
        let ratio = gate
            .detector
            .observe(window.audio_end, audio, gate.rate)
            .map_err(|e| Failure::Error {
                stage: Stage::Preprocess,
                error: format!("voice activity: {e}"),
            })?;
        window.speech_ratio = ratio;
        let quiet = matches!((gate.require, ratio), (Some(min), Some(r)) if r < min);
        if !quiet {
            return Ok(true);
        }
        let counters = &self.status.counters;
        let was_degraded = !window.missing.is_empty();
        window.audio = None;
        window.missing.push("audio");
        if self.missing == MissingPolicy::Skip || window.frame.is_none() {
            if was_degraded {
                // The scheduler counted the window as degraded.
                counters.degraded.fetch_sub(1, Ordering::Relaxed);
            }
            counters.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        if !was_degraded {
            counters.degraded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// The forward pass, with its CPU time counted; a non-finite output
    /// fails the window.
    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Failure> {
        let cpu0 = thread_cpu_ns();
        let outputs = self.model.run(inputs);
        self.status
            .counters
            .model_cpu_ns
            .fetch_add(thread_cpu_ns().saturating_sub(cpu0), Ordering::Relaxed);
        let outputs = outputs.map_err(|e| Failure::Error {
            stage: Stage::Inference,
            error: e.to_string(),
        })?;
        if let Some(i) = outputs.iter().position(|t| !is_finite(t)) {
            let output = self
                .model
                .manifest()
                .outputs
                .get(i)
                .map_or_else(|| format!("#{i}"), |o| o.name.clone());
            return Err(Failure::NonFinite { output });
        }
        if !self.extra_delay.is_zero() {
            std::thread::sleep(self.extra_delay);
        }
        Ok(outputs)
    }

    /// Post-processes one item's outputs (with the face's own smoothing
    /// state when `face` is set) and publishes the event.
    fn publish_estimate(
        &mut self,
        window: &ReadyWindow,
        outputs: &[Tensor],
        face: Option<&ChosenFace>,
        timings: Timings,
    ) -> Result<(), Failure> {
        let at = stream_time(window.span.end_s);
        let builder = match face {
            None => &mut self.events,
            Some(chosen) => match self.face_events.entry(chosen.id.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    EventBuilder::new(self.model.manifest(), self.post).map_err(|e| {
                        Failure::Error {
                            stage: Stage::Postprocess,
                            error: e.to_string(),
                        }
                    })?,
                ),
            },
        };
        let estimate = builder.estimate(outputs, at).map_err(|e| Failure::Error {
            stage: Stage::Postprocess,
            error: e.to_string(),
        })?;
        let Timings { t0, t1, t2, detect } = timings;
        let t3 = Instant::now();
        let capture_to_event = if self.clock.is_real_time() {
            seconds(self.clock.now().saturating_sub(window.newest_at)) * 1e3
        } else {
            // On a virtual clock capture time is media time; what a
            // consumer waits for is the processing itself.
            ms(window.built_at.elapsed())
        };
        let event = Event {
            seq: self.seq,
            header: Header::at(window.newest_at, &self.frame_id),
            stamp_s: window.span.end_s,
            expression: estimate.expression,
            confidence: estimate.confidence,
            probs: estimate.probs,
            valence: estimate.valence,
            arousal: estimate.arousal,
            window: window.span,
            latency_ms: Latency {
                capture_to_event,
                window_wait: if self.clock.is_real_time() {
                    seconds(window.built_clock.saturating_sub(window.newest_at)) * 1e3
                } else {
                    0.0
                },
                queue: ms(t0 - window.built_at),
                preprocess: ms(t1 - t0),
                inference: ms(t2 - t1),
                postprocess: ms(t3 - t2),
                detect: detect.map(ms),
            },
            change: estimate.change,
            degraded: !window.missing.is_empty(),
            missing: window.missing.clone(),
            counters: self.status.counters(),
            adapter: self.model.active().map(str::to_string),
            backend: self.model.backend_name().to_string(),
            face: face.map(ChosenFace::reference),
            speech_ratio: window.speech_ratio,
        };
        self.seq += 1;
        self.status.record_event(capture_to_event);
        self.publish(Message::Emotion(Box::new(event)));
        Ok(())
    }
}

fn preprocess_failure(e: emogate_infer::pre::PreError) -> Failure {
    Failure::Error {
        stage: Stage::Preprocess,
        error: e.to_string(),
    }
}

/// Each output cut along its batch axis into `n` items of shape
/// `[1, …]`; `None` when an output's length does not divide by `n`.
fn split_batch(outputs: &[Tensor], n: usize) -> Option<Vec<Vec<Tensor>>> {
    if n == 1 {
        return Some(vec![outputs.to_vec()]);
    }
    let mut items = vec![Vec::with_capacity(outputs.len()); n];
    for tensor in outputs {
        let values = tensor.as_f32()?;
        if values.len() % n != 0 || tensor.shape.first() != Some(&n) {
            return None;
        }
        let mut shape = tensor.shape.clone();
        shape[0] = 1;
        for (item, chunk) in items.iter_mut().zip(values.chunks_exact(values.len() / n)) {
            item.push(Tensor::f32(shape.clone(), chunk.to_vec()));
        }
    }
    Some(items)
}

/// No NaN or infinity among a tensor's values (integer outputs always pass).
fn is_finite(tensor: &Tensor) -> bool {
    tensor
        .as_f32()
        .is_none_or(|values| values.iter().all(|v| v.is_finite()))
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

/// A window's end on the pipeline clock as a `Duration`. The clock starts at
/// 0 and counts nanoseconds in a `u64`, so the value always fits; the
/// checked conversion keeps a corrupt timestamp from panicking the
/// inference thread.
fn stream_time(end_s: f64) -> Duration {
    Duration::try_from_secs_f64(end_s.max(0.0)).unwrap_or(Duration::MAX)
}
