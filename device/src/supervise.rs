//! Supervision: one thread per source that opens it, keeps it running,
//! reports what happens, and reopens it with backoff after a failure.
//!
//! A robot runs for days; USB cameras get knocked out and ALSA devices
//! vanish on suspend. So a failure is an event, not an exit: the
//! supervisor sends a [`SourceReport`], waits (200 ms doubling to 5 s),
//! and tries again, while the other modality carries on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ring::{AudioConsumer, audio_ring};
use crate::source::{
    AudioSource, AudioStream, CaptureError, ClockHandle, VideoSource, VideoStream,
};
use emogate_media::Nanos;
use emogate_media::{Frame, StopFlag};

/// Which modality a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    Video,
    Audio,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Video => "video",
            Modality::Audio => "audio",
        }
    }
}

/// What a supervisor tells the pipeline.
#[derive(Debug)]
pub enum SourceReport {
    /// A video source (re)opened.
    VideoOpened { name: String },
    /// An audio source (re)opened: read its samples from `consumer`
    /// (mono `f32` at `sample_rate`) from now on.
    AudioOpened {
        name: String,
        consumer: AudioConsumer,
        sample_rate: u32,
    },
    /// A source failed; it is retried after `retry_in` (or never, for a
    /// configuration error: `retry_in` is `None`).
    Failed {
        modality: Modality,
        name: String,
        error: String,
        retry_in: Option<Duration>,
    },
    /// A finite source (replay without loop) reached its end.
    Ended { modality: Modality, name: String },
}

/// Retry delays: `initial`, doubling up to `max`. A stream that ran for
/// `reset_after` counts as healthy and starts the sequence over.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// The newest frames of a video source, shared between its supervisor
/// (writer) and the pipeline (reader). Bounded: it keeps `capacity`
/// frames and drops the oldest, so a stalled pipeline cannot grow it.
#[derive(Debug)]
pub struct VideoFeed {
    frames: Mutex<VecDeque<Arc<Frame>>>,
    capacity: usize,
    newest_at: AtomicU64,
    delivered: AtomicU64,
}

impl VideoFeed {
    pub fn new(capacity: usize) -> Self {
        VideoFeed {
            frames: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
            capacity: capacity.max(1),
            newest_at: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Frame>>> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a frame, dropping the oldest beyond capacity.
    pub fn push(&self, frame: Frame) {
        let at = frame.captured_at;
        let mut q = self.lock();
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(Arc::new(frame));
        drop(q);
        self.newest_at.store(at, Ordering::Release);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Up to `n` newest frames captured at or before `t`, oldest first.
    pub fn latest(&self, t: Nanos, n: usize) -> Vec<Arc<Frame>> {
        let q = self.lock();
        let mut out: Vec<Arc<Frame>> = q
            .iter()
            .rev()
            .filter(|f| f.captured_at <= t)
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Capture time of the newest frame (0 before the first).
    pub fn newest_at(&self) -> Nanos {
        self.newest_at.load(Ordering::Acquire)
    }

    /// Frames delivered since start.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// A running supervisor thread.
pub struct Supervised {
    pub name: String,
    handle: Option<JoinHandle<()>>,
}

impl Supervised {
    /// Waits for the thread (after raising the stop flag).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Keeps `clock`'s participant count right on every exit path.
struct ClockGuard(ClockHandle);
impl ClockGuard {
    fn new(clock: &ClockHandle) -> Self {
        clock.enter();
        ClockGuard(Arc::clone(clock))
    }
}
impl Drop for ClockGuard {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Sleeps for the backoff delay (on the real clock: a retry delay is
/// about devices, not media time), watching `stop`.
fn nap(delay: Duration, stop: &StopFlag) {
    let end = Instant::now() + delay;
    while !stop.is_raised() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}

struct Retry {
    backoff: Backoff,
    next: Duration,
}

impl Retry {
    fn new(backoff: Backoff) -> Self {
        Retry {
            backoff,
            next: backoff.initial,
        }
    }
    /// The delay before the next attempt; `ran` is how long the last
    /// stream lasted (a long healthy run resets the sequence).
    fn delay(&mut self, ran: Duration) -> Duration {
        if ran >= self.backoff.reset_after {
            self.next = self.backoff.initial;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.backoff.max);
        d
    }
}

/// One modality's side of supervision: what is opened and how an open
/// stream is pumped. [`supervise`] holds the one retry loop both
/// modalities share, so backoff, reports, the stop flag and clock
/// participation behave the same for video and audio.
trait Pump: Send + 'static {
    /// Not `Send`: an audio stream must stay on the thread that opened it.
    type Stream;

    fn modality(&self) -> Modality;

    /// Opens the source, returning the stream and the report that
    /// announces it (sent before pumping starts).
    fn open(
        &mut self,
        clock: &ClockHandle,
        name: &str,
    ) -> Result<(Self::Stream, SourceReport), CaptureError>;

    /// Runs an open stream until it ends or `stop` is raised (`Ok`), or
    /// it fails.
    fn pump(&mut self, stream: Self::Stream, stop: &StopFlag) -> Result<(), CaptureError>;
}

/// Video: each frame goes into the shared feed.
struct VideoPump {
    source: Box<dyn VideoSource>,
    feed: Arc<VideoFeed>,
}

impl Pump for VideoPump {
    type Stream = Box<dyn VideoStream>;

    fn modality(&self) -> Modality {
        Modality::Video
    }

    fn open(
        &mut self,
        clock: &ClockHandle,
        name: &str,
    ) -> Result<(Self::Stream, SourceReport), CaptureError> {
        let stream = self.source.open(Arc::clone(clock))?;
        let report = SourceReport::VideoOpened {
            name: name.to_string(),
        };
        Ok((stream, report))
    }

    fn pump(&mut self, mut stream: Self::Stream, stop: &StopFlag) -> Result<(), CaptureError> {
        while !stop.is_raised() {
            match stream.next_frame(stop)? {
                Some(frame) => self.feed.push(frame),
                None => break,
            }
        }
        Ok(())
    }
}

/// Audio: the stream pushes into a ring of its own; the pump only waits.
struct AudioPump {
    source: Box<dyn AudioSource>,
    ring_seconds: f64,
}

impl Pump for AudioPump {
    type Stream = Box<dyn AudioStream>;

    fn modality(&self) -> Modality {
        Modality::Audio
    }

    fn open(
        &mut self,
        clock: &ClockHandle,
        name: &str,
    ) -> Result<(Self::Stream, SourceReport), CaptureError> {
        // Size for the highest rate a device is likely to pick when the
        // source cannot say in advance.
        let rate = self.source.sample_rate_hint().unwrap_or(192_000);
        let capacity = ((self.ring_seconds * rate as f64).ceil() as usize).max(1024);
        // A fresh ring per open: samples of a failed stream never mix with
        // the next one's, and the pipeline learns of the switch through
        // the consumer in the report.
        let (producer, consumer) = audio_ring(capacity);
        let stream = self.source.open(Arc::clone(clock), producer)?;
        let report = SourceReport::AudioOpened {
            name: name.to_string(),
            consumer,
            sample_rate: stream.sample_rate(),
        };
        Ok((stream, report))
    }

    fn pump(&mut self, mut stream: Self::Stream, stop: &StopFlag) -> Result<(), CaptureError> {
        stream.wait(stop)
    }
}

/// Runs `source` on its own thread, pushing frames into `feed`.
pub fn spawn_video(
    source: Box<dyn VideoSource>,
    feed: Arc<VideoFeed>,
    clock: ClockHandle,
    reports: Sender<SourceReport>,
    stop: StopFlag,
    backoff: Backoff,
) -> std::io::Result<Supervised> {
    let name = source.name();
    supervise(
        VideoPump { source, feed },
        name,
        clock,
        reports,
        stop,
        backoff,
    )
}

/// Runs `source` on its own thread. Each (re)open gets a fresh ring of
/// `ring_seconds` of audio whose consumer is sent in
/// [`SourceReport::AudioOpened`].
pub fn spawn_audio(
    source: Box<dyn AudioSource>,
    ring_seconds: f64,
    clock: ClockHandle,
    reports: Sender<SourceReport>,
    stop: StopFlag,
    backoff: Backoff,
) -> std::io::Result<Supervised> {
    let name = source.name();
    supervise(
        AudioPump {
            source,
            ring_seconds,
        },
        name,
        clock,
        reports,
        stop,
        backoff,
    )
}

/// The supervise loop: on its own thread, open, report, pump; after a
/// retryable failure report it, wait the backoff delay and open again;
/// after a configuration failure, the end of a finite source or `stop`,
/// return.
fn supervise<P: Pump>(
    mut pump: P,
    name: String,
    clock: ClockHandle,
    reports: Sender<SourceReport>,
    stop: StopFlag,
    backoff: Backoff,
) -> std::io::Result<Supervised> {
    let modality = pump.modality();
    let thread_name = name.clone();
    // Joined before the thread starts, so a virtual clock never settles
    // without it.
    let guard = ClockGuard::new(&clock);
    let handle = std::thread::Builder::new()
        .name(format!("{}:{}", modality.as_str(), short(&name)))
        .spawn(move || {
            let _guard = guard;
            let mut retry = Retry::new(backoff);
            while !stop.is_raised() {
                let started = Instant::now();
                let result = pump
                    .open(&clock, &thread_name)
                    .and_then(|(stream, opened)| {
                        let _ = reports.send(opened);
                        pump.pump(stream, &stop)
                    });
                match result {
                    Ok(()) => {
                        // A stream that returns without `stop` ran out: a
                        // finite source (a file without --loop) ended.
                        if !stop.is_raised() {
                            let _ = reports.send(SourceReport::Ended {
                                modality,
                                name: thread_name.clone(),
                            });
                        }
                        return;
                    }
                    Err(e) => {
                        if !report_failure(&reports, modality, &thread_name, &e, &stop, || {
                            retry.delay(started.elapsed())
                        }) {
                            return;
                        }
                    }
                }
            }
        })?;
    Ok(Supervised {
        name,
        handle: Some(handle),
    })
}

/// Reports a failure; for a retryable one sleeps the backoff delay
/// (watching `stop`) and returns true (try again), else returns false.
fn report_failure(
    reports: &Sender<SourceReport>,
    modality: Modality,
    name: &str,
    error: &CaptureError,
    stop: &StopFlag,
    delay: impl FnOnce() -> Duration,
) -> bool {
    let retry_in = error.is_retryable().then(delay);
    tracing::warn!(source = name, error = %error, retry_in_ms = retry_in.map(|d| d.as_millis() as u64), "capture failed");
    let _ = reports.send(SourceReport::Failed {
        modality,
        name: name.to_string(),
        error: error.to_string(),
        retry_in,
    });
    match retry_in {
        Some(d) => {
            nap(d, stop);
            true
        }
        None => false,
    }
}

fn short(name: &str) -> String {
    name.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, channel};

    use super::*;
    use crate::clock::{RealClock, VirtualClock};
    use crate::ring::AudioProducer;
    use emogate_media::PixelLayout;

    const FAST: Backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(4),
        reset_after: Duration::from_secs(10),
    };

    /// Fails its first `failures` opens (as `Open`, or `Config` when
    /// `config`), then gives `frames` frames and ends.
    struct Flaky {
        failures: u32,
        config: bool,
        frames: u32,
    }

    struct Frames(u32);

    impl VideoStream for Frames {
        fn next_frame(&mut self, _stop: &StopFlag) -> Result<Option<Frame>, CaptureError> {
            if self.0 == 0 {
                return Ok(None);
            }
            self.0 -= 1;
            Ok(Some(
                Frame::new(1, 1, PixelLayout::Gray8, vec![0], 0).expect("1x1"),
            ))
        }
    }

    impl VideoSource for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn open(&mut self, _clock: ClockHandle) -> Result<Box<dyn VideoStream>, CaptureError> {
            if self.failures > 0 {
                self.failures -= 1;
                let (source_name, message) = ("flaky".to_string(), "gone".to_string());
                return Err(if self.config {
                    CaptureError::Config {
                        source_name,
                        message,
                    }
                } else {
                    CaptureError::Open {
                        source_name,
                        message,
                    }
                });
            }
            Ok(Box::new(Frames(self.frames)))
        }
    }

    fn drain(rx: &Receiver<SourceReport>) -> Vec<SourceReport> {
        rx.iter().collect()
    }

    #[test]
    fn video_failures_are_reported_retried_with_backoff_then_the_end() {
        let (tx, rx) = channel();
        let feed = Arc::new(VideoFeed::new(8));
        let source = Flaky {
            failures: 3,
            config: false,
            frames: 2,
        };
        let sup = spawn_video(
            Box::new(source),
            Arc::clone(&feed),
            Arc::new(RealClock),
            tx,
            StopFlag::new(),
            FAST,
        )
        .expect("thread");
        sup.join();
        let reports = drain(&rx);
        let delays: Vec<Option<Duration>> = reports
            .iter()
            .filter_map(|r| match r {
                SourceReport::Failed {
                    modality: Modality::Video,
                    retry_in,
                    ..
                } => Some(*retry_in),
                _ => None,
            })
            .collect();
        let ms = Duration::from_millis;
        assert_eq!(delays, [Some(ms(1)), Some(ms(2)), Some(ms(4))]);
        assert!(matches!(&reports[3], SourceReport::VideoOpened { name } if name == "flaky"));
        assert!(matches!(
            &reports[4],
            SourceReport::Ended {
                modality: Modality::Video,
                ..
            }
        ));
        assert_eq!(reports.len(), 5);
        assert_eq!(feed.delivered(), 2);
    }

    #[test]
    fn a_configuration_error_is_reported_once_and_not_retried() {
        let (tx, rx) = channel();
        let source = Flaky {
            failures: 1,
            config: true,
            frames: 2,
        };
        spawn_video(
            Box::new(source),
            Arc::new(VideoFeed::new(1)),
            Arc::new(RealClock),
            tx,
            StopFlag::new(),
            FAST,
        )
        .expect("thread")
        .join();
        let reports = drain(&rx);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(matches!(
            &reports[0],
            SourceReport::Failed { retry_in: None, error, .. } if error.contains("gone")
        ));
    }

    /// Returns at once (a finite source that ended), or waits for `stop`
    /// when `live`.
    struct Tone {
        live: bool,
    }

    struct ToneStream {
        live: bool,
    }

    impl AudioStream for ToneStream {
        fn sample_rate(&self) -> u32 {
            8_000
        }
        fn wait(&mut self, stop: &StopFlag) -> Result<(), CaptureError> {
            while self.live && !stop.is_raised() {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
    }

    impl AudioSource for Tone {
        fn name(&self) -> String {
            "tone".into()
        }
        fn open(
            &mut self,
            _clock: ClockHandle,
            _ring: AudioProducer,
        ) -> Result<Box<dyn AudioStream>, CaptureError> {
            Ok(Box::new(ToneStream { live: self.live }))
        }
        fn sample_rate_hint(&self) -> Option<u32> {
            Some(8_000)
        }
    }

    #[test]
    fn audio_reports_its_ring_and_a_stopped_stream_does_not_end() {
        let (tx, rx) = channel();
        let clock: ClockHandle = Arc::new(VirtualClock::new());
        spawn_audio(
            Box::new(Tone { live: false }),
            1.0,
            Arc::clone(&clock),
            tx,
            StopFlag::new(),
            FAST,
        )
        .expect("thread")
        .join();
        let reports = drain(&rx);
        assert!(matches!(
            &reports[0],
            SourceReport::AudioOpened {
                sample_rate: 8_000,
                ..
            }
        ));
        assert!(matches!(
            &reports[1],
            SourceReport::Ended {
                modality: Modality::Audio,
                ..
            }
        ));

        let (tx, rx) = channel();
        let stop = StopFlag::new();
        let virtual_clock = Arc::new(VirtualClock::new());
        let clock: ClockHandle = virtual_clock.clone();
        let sup = spawn_audio(
            Box::new(Tone { live: true }),
            1.0,
            clock,
            tx,
            stop.clone(),
            FAST,
        )
        .expect("thread");
        // The supervisor paces on the clock from before its thread starts
        // until it returns.
        assert_eq!(virtual_clock.participants(), 1);
        let opened = rx.recv().expect("opened");
        assert!(matches!(opened, SourceReport::AudioOpened { .. }));
        stop.raise();
        sup.join();
        assert_eq!(virtual_clock.participants(), 0);
        let reports = drain(&rx);
        assert!(reports.is_empty(), "no Ended after stop: {reports:?}");
    }
}
