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
use crate::source::{AudioSource, CaptureError, ClockHandle, VideoSource};
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

/// Runs `source` on its own thread, pushing frames into `feed`.
pub fn spawn_video(
    mut source: Box<dyn VideoSource>,
    feed: Arc<VideoFeed>,
    clock: ClockHandle,
    reports: Sender<SourceReport>,
    stop: StopFlag,
    backoff: Backoff,
) -> std::io::Result<Supervised> {
    let name = source.name();
    let thread_name = name.clone();
    // Joined before the thread starts, so a virtual clock never settles
    // without it.
    let guard = ClockGuard::new(&clock);
    let handle = std::thread::Builder::new()
        .name(format!("video:{}", short(&name)))
        .spawn(move || {
            let _guard = guard;
            let mut retry = Retry::new(backoff);
            while !stop.is_raised() {
                let started = Instant::now();
                let result = source.open(Arc::clone(&clock)).and_then(|mut stream| {
                    let _ = reports.send(SourceReport::VideoOpened {
                        name: thread_name.clone(),
                    });
                    loop {
                        if stop.is_raised() {
                            return Ok(false);
                        }
                        match stream.next_frame(&stop)? {
                            Some(frame) => feed.push(frame),
                            None => return Ok(!stop.is_raised()),
                        }
                    }
                });
                match result {
                    Ok(true) => {
                        let _ = reports.send(SourceReport::Ended {
                            modality: Modality::Video,
                            name: thread_name.clone(),
                        });
                        return;
                    }
                    Ok(false) => return,
                    Err(e) => {
                        if !report_failure(
                            &reports,
                            Modality::Video,
                            &thread_name,
                            &e,
                            &stop,
                            || retry.delay(started.elapsed()),
                        ) {
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

/// Runs `source` on its own thread. Each (re)open gets a fresh ring of
/// `ring_seconds` of audio whose consumer is sent in
/// [`SourceReport::AudioOpened`].
pub fn spawn_audio(
    mut source: Box<dyn AudioSource>,
    ring_seconds: f64,
    clock: ClockHandle,
    reports: Sender<SourceReport>,
    stop: StopFlag,
    backoff: Backoff,
) -> std::io::Result<Supervised> {
    let name = source.name();
    let thread_name = name.clone();
    let guard = ClockGuard::new(&clock);
    let handle = std::thread::Builder::new()
        .name(format!("audio:{}", short(&name)))
        .spawn(move || {
            let _guard = guard;
            let mut retry = Retry::new(backoff);
            while !stop.is_raised() {
                let started = Instant::now();
                // Size for the highest rate a device is likely to pick when
                // the source cannot say in advance.
                let rate = source.sample_rate_hint().unwrap_or(192_000);
                let capacity = ((ring_seconds * rate as f64).ceil() as usize).max(1024);
                let (producer, consumer) = audio_ring(capacity);
                let result = source
                    .open(Arc::clone(&clock), producer)
                    .and_then(|mut stream| {
                        let _ = reports.send(SourceReport::AudioOpened {
                            name: thread_name.clone(),
                            consumer,
                            sample_rate: stream.sample_rate(),
                        });
                        stream.wait(&stop)
                    });
                match result {
                    Ok(()) => {
                        if !stop.is_raised() {
                            let _ = reports.send(SourceReport::Ended {
                                modality: Modality::Audio,
                                name: thread_name.clone(),
                            });
                        }
                        return;
                    }
                    Err(e) => {
                        if !report_failure(
                            &reports,
                            Modality::Audio,
                            &thread_name,
                            &e,
                            &stop,
                            || retry.delay(started.elapsed()),
                        ) {
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
