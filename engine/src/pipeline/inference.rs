//! The inference thread: each [`ReadyWindow`] through the featurizer, the
//! model and post-processing into one published emotion event.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use emogate_device::source::ClockHandle;
use emogate_infer::Featurizer;
use emogate_infer::affect::AffectModel;

use super::handoff::Handoff;
use super::{PipelineError, PipelineStatus, ReadyWindow, seconds};
use crate::event::{Event, EventBuilder, Header, Latency, Message};

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
}

impl Inference {
    /// Runs every window `handoff` yields until it is closed and empty.
    ///
    /// # Errors
    /// [`PipelineError`] when preprocessing, the model or post-processing
    /// fails; the run stops.
    pub(super) fn serve(mut self, handoff: &Handoff<ReadyWindow>) -> Result<(), PipelineError> {
        while let Some(window) = handoff.take() {
            self.infer(window)?;
        }
        Ok(())
    }

    /// One window: featurize, forward, post-process, publish.
    fn infer(&mut self, window: ReadyWindow) -> Result<(), PipelineError> {
        let t0 = Instant::now();
        let inputs = self
            .featurizer
            .build(window.frame.as_deref(), window.audio.as_deref())?;
        let t1 = Instant::now();
        let cpu0 = thread_cpu_ns();
        let outputs = self.model.run(&inputs)?;
        self.status
            .counters
            .model_cpu_ns
            .fetch_add(thread_cpu_ns().saturating_sub(cpu0), Ordering::Relaxed);
        if !self.extra_delay.is_zero() {
            std::thread::sleep(self.extra_delay);
        }
        let t2 = Instant::now();
        let estimate = self
            .events
            .estimate(&outputs, Duration::from_secs_f64(window.span.end_s))?;
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
                queue: ms(t0 - window.built_at),
                preprocess: ms(t1 - t0),
                inference: ms(t2 - t1),
                postprocess: ms(t3 - t2),
            },
            change: estimate.change,
            degraded: !window.missing.is_empty(),
            missing: window.missing,
            counters: self.status.counters(),
            adapter: self.model.active().map(str::to_string),
            backend: self.model.backend_name().to_string(),
        };
        self.seq += 1;
        self.status.record_event(capture_to_event);
        // The sink thread may lag (a slow disk); the event is counted as
        // lost rather than stalling the next forward pass.
        if let Err(TrySendError::Full(_)) = self.sink_tx.try_send(Message::Emotion(event)) {
            self.status
                .counters
                .sink_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
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
