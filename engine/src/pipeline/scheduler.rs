//! The scheduler: every hop it cuts a window (the newest frame and the
//! last audio window, aligned by capture time), applies the missing/stale
//! policy, and hands the window to inference. It also turns source reports
//! into `/status` states and source notices.
//!
//! It runs on the caller's thread of [`Pipeline::run`](super::Pipeline::run),
//! and watches the inference thread: it stops when that thread has ended
//! (its error is the run's) and fails with [`PipelineError::Stalled`] when
//! one window has been running for longer than the stall limit, so that
//! neither a live run nor a replay waits on it forever.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use emogate_device::clock::VirtualClock;
use emogate_device::source::ClockHandle;
use emogate_device::supervise::{Modality, SourceReport, VideoFeed};
use emogate_media::{Nanos, StopFlag};

use super::audio_window::AudioWindow;
use super::handoff::Handoff;
use super::{
    MediaNeeds, MissingPolicy, PipelineConfig, PipelineError, PipelineStatus, ReadyWindow, seconds,
};
use crate::event::{Header, Message, SourceNotice, Window};

/// The longest a window waits past its tick for the audio that ends at the
/// tick (see `Scheduler::await_audio`), at most a quarter of the hop.
const AUDIO_GRACE: Duration = Duration::from_millis(20);

fn nanos(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

/// The scheduler's view of the run: clocks, settings, shared state and
/// the channels it reads and feeds.
pub(super) struct Scheduler<'a> {
    pub(super) clock: &'a ClockHandle,
    /// Set when replaying as fast as possible: the scheduler moves time.
    pub(super) virtual_clock: Option<&'a VirtualClock>,
    /// Clock time at the start: `stamp_s` 0.
    pub(super) origin: Nanos,
    pub(super) config: &'a PipelineConfig,
    pub(super) needs: &'a MediaNeeds,
    pub(super) status: &'a PipelineStatus,
    pub(super) sink_tx: &'a SyncSender<Message>,
    pub(super) reports: &'a Receiver<SourceReport>,
    pub(super) feed: &'a VideoFeed,
    /// The rolling audio window, when the model takes audio.
    pub(super) audio: Option<&'a mut AudioWindow>,
    pub(super) ended: Ended,
}

/// Capture time of the last item of each source that ended.
#[derive(Debug, Default)]
pub(super) struct Ended {
    video: Option<Nanos>,
    audio: Option<Nanos>,
}

impl Scheduler<'_> {
    /// Builds a window every hop until `stop`, `max_windows`, every
    /// source has ended, or the inference thread has; returns early with
    /// the error of a source that can never work.
    ///
    /// # Errors
    /// [`PipelineError::Source`] for a source that failed for good;
    /// [`PipelineError::Pre`] when a reopened audio source has a rate no
    /// resampler handles; [`PipelineError::Stalled`] when inference is
    /// stuck on a window.
    pub(super) fn run(
        &mut self,
        handoff: &Handoff<ReadyWindow>,
        stop: &StopFlag,
    ) -> Result<(), PipelineError> {
        let first_end = self.needs.first_window_end(self.config.hop);
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
            if stop.is_raised() || self.inference_gone()? {
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
                    // A stop during the wait leaves tick `t` in the future:
                    // building its window now would repeat the previous
                    // window's media.
                    if stop.is_raised() {
                        return Ok(());
                    }
                    // A stalled scheduler (suspend, a debugger) skips the
                    // ticks it missed rather than bursting through them.
                    let now = self.clock.now();
                    if now > t + hop {
                        k = (now - first) / hop;
                        t = first + k * hop;
                    }
                    self.await_audio(t, stop);
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
            let frame = if self.needs.video {
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
            let mut audio_end = 0;
            let audio = match self.audio.as_deref() {
                Some(a) => match a.newest_at() {
                    Some(at) if a.is_full() && at + stale >= t => {
                        newest_at = newest_at.max(at);
                        audio_end = a.end_sample();
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
            let span_s = self.needs.window_s().max(self.config.hop.as_secs_f64());
            let end_s = seconds(end - self.origin);
            let window = ReadyWindow {
                frame,
                audio,
                audio_end,
                speech_ratio: None,
                span: Window {
                    start_s: (end_s - span_s).max(0.0),
                    end_s,
                },
                newest_at: end,
                built_at: Instant::now(),
                built_clock: self.clock.now(),
                missing,
            };
            match self.virtual_clock {
                Some(_) => {
                    // Replay waits for inference to take the window, but
                    // never past a stall or the thread's end (checked at the
                    // top of the loop).
                    handoff.put_wait(window, || {
                        stop.is_raised() || self.status.is_stalled() || self.status.liveness().ended
                    });
                }
                None => {
                    if handoff.put_latest(window) {
                        self.status.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Whether the inference thread has ended (then the run ends and its
    /// error, if any, is reported by the caller).
    ///
    /// # Errors
    /// [`PipelineError::Stalled`] when it has been on one window for
    /// longer than the stall limit.
    fn inference_gone(&self) -> Result<bool, PipelineError> {
        let live = self.status.liveness();
        let limit = self.config.stall_limit_for(live.windows_done);
        if let Some(busy) = live.busy_for.filter(|b| *b > limit) {
            return Err(PipelineError::Stalled {
                busy_ms: busy.as_secs_f64() * 1e3,
                limit_ms: limit.as_secs_f64() * 1e3,
            });
        }
        Ok(live.ended)
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
            let video_ready = !self.needs.video || self.feed.delivered() > 0;
            let now = self.clock.now();
            if (audio_ready && video_ready) || now >= give_up || stop.is_raised() {
                return Ok(now.max(earliest));
            }
            self.wait_real(now + 5_000_000, stop)?;
        }
    }

    /// Waits up to [`AUDIO_GRACE`] for the audio to reach tick `t`. The
    /// samples that end at `t` arrive a moment after it (a capture callback
    /// delivers a block after its last sample): cutting the window at `t`
    /// itself took the block before, up to a block older. The pipeline
    /// benchmark measured 5.2 ms p50 from the newest sample's capture to
    /// the window built, and a latency that depended on where the ticks
    /// fell between blocks: 2.7 to 7.9 ms p50 over three runs.
    fn await_audio(&mut self, t: Nanos, stop: &StopFlag) {
        let grace = AUDIO_GRACE.min(self.config.hop / 4);
        let deadline = t + nanos(grace);
        while let Some(audio) = self.audio.as_deref_mut() {
            audio.drain();
            let reached = audio.newest_at().is_some_and(|at| at >= t);
            if reached || stop.is_raised() || self.clock.now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_micros(250));
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
        super::sinks::offer(self.sink_tx, self.status, message);
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
                    Modality::Video => self.ended.video = Some(self.feed.newest_at()),
                    Modality::Audio => {
                        if let Some(a) = self.audio.as_deref_mut() {
                            a.drain();
                        }
                        self.ended.audio = Some(
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
        // Pipeline::new checked that each source the model takes is given.
        let (video, audio) = (self.needs.video, self.needs.audio.is_some());
        (video || audio) && ended(video, self.ended.video) && ended(audio, self.ended.audio)
    }
}
