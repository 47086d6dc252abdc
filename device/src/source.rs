//! The source abstraction every capture backend implements.
//!
//! The shape follows cpal's Host → Device → Stream: a *source* is a
//! description of where media comes from (a camera index, a GStreamer
//! pipeline, a file) and can be opened any number of times; each
//! [`VideoSource::open`] / [`AudioSource::open`] gives a *stream*. When a
//! stream fails (a USB camera unplugged, an ALSA device gone) the
//! [`crate::supervise`] thread reports it and opens the source again with
//! backoff, so a source must hold no live handles between opens.
//!
//! Video is pulled ([`VideoStream::next_frame`] blocks), because every
//! camera API here (V4L2, GStreamer appsink, file replay) is pull-shaped
//! and frames are large: the pipeline only ever wants the newest few.
//! Audio is pushed into a preallocated lock-free ring by the stream
//! itself, because cpal delivers it on a real-time callback that must
//! never block.

use std::time::Duration;

use emogate_media::{Frame, Nanos, StopFlag};

use crate::ring::AudioProducer;

/// Errors of capture. Each names the source (device name, pipeline or
/// file) so a log line alone tells which one failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source could not be opened (no such device, busy, permission).
    #[error("{source_name}: cannot open: {message}")]
    Open {
        source_name: String,
        message: String,
    },
    /// An open stream failed (device unplugged, pipeline error).
    #[error("{source_name}: stream failed: {message}")]
    Stream {
        source_name: String,
        message: String,
    },
    /// The source's settings cannot work (e.g. a format no converter
    /// handles); retrying will not help.
    #[error("{source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    /// A cargo feature this source needs was not compiled in.
    #[error(
        "{source_name}: this build has no {feature} support (rebuild with --features {feature})"
    )]
    NotBuilt {
        source_name: String,
        feature: &'static str,
    },
}

impl CaptureError {
    /// Whether reopening the source may help (false for configuration
    /// errors, which fail the same way every time).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CaptureError::Open { .. } | CaptureError::Stream { .. }
        )
    }
}

/// Where video frames come from. Opened again after each failure.
pub trait VideoSource: Send {
    /// A short human name for logs and `/status` (e.g. `v4l:0`, `file:face.y4m`).
    fn name(&self) -> String;

    /// Opens a stream of frames stamped on `clock`.
    ///
    /// # Errors
    /// * [`CaptureError::Open`] when the device or file is unavailable now
    ///   (no such device, busy, no permission, unplugged): the supervisor
    ///   retries with backoff.
    /// * [`CaptureError::Config`] when the source can never work as set (a
    ///   live device on a virtual clock, a format nothing here converts):
    ///   reported once, not retried.
    /// * [`CaptureError::NotBuilt`] when its backend's cargo feature is not
    ///   compiled in.
    fn open(&mut self, clock: ClockHandle) -> Result<Box<dyn VideoStream>, CaptureError>;
}

/// An open video stream.
pub trait VideoStream {
    /// Blocks until the next frame. `Ok(None)` is the end of a finite
    /// source (a replayed file without `--loop`), or `stop` was raised
    /// while waiting (a stream that waits long must poll it).
    ///
    /// # Errors
    /// * [`CaptureError::Stream`] when the device went away or the
    ///   pipeline or file failed mid-stream: the supervisor reopens the
    ///   source with backoff.
    /// * [`CaptureError::Config`] when the stream met something reopening
    ///   cannot fix (a file whose contents broke since it was opened).
    fn next_frame(&mut self, stop: &StopFlag) -> Result<Option<Frame>, CaptureError>;
}

/// Where audio comes from. Opened again after each failure.
pub trait AudioSource: Send {
    /// A short human name for logs and `/status` (e.g. `mic:default`).
    fn name(&self) -> String;

    /// Starts capture into `ring` as mono `f32` at the returned stream's
    /// [`AudioStream::sample_rate`], each push stamped with the capture
    /// time of its newest sample on `clock`. The ring is fresh for every
    /// open; the consumer side goes to the pipeline.
    ///
    /// # Errors
    /// * [`CaptureError::Open`] when the device or file is unavailable now
    ///   (no such device, busy, unplugged): the supervisor retries with
    ///   backoff.
    /// * [`CaptureError::Config`] when the source can never work as set (a
    ///   live device on a virtual clock, a sample format nothing here
    ///   converts): reported once, not retried.
    /// * [`CaptureError::NotBuilt`] when its backend's cargo feature is not
    ///   compiled in.
    fn open(
        &mut self,
        clock: ClockHandle,
        ring: AudioProducer,
    ) -> Result<Box<dyn AudioStream>, CaptureError>;

    /// The sample rate [`open`](Self::open) will deliver, if known before
    /// opening (lets the pipeline size its ring). `None` = ask the stream.
    fn sample_rate_hint(&self) -> Option<u32> {
        None
    }
}

/// An open audio stream. Not `Send`: cpal streams must stay on the thread
/// that made them, so the supervisor opens and waits on one thread.
pub trait AudioStream {
    /// The rate of the mono samples going into the ring.
    fn sample_rate(&self) -> u32;

    /// Blocks until the stream ends (`Ok`: a finite replay finished) or
    /// fails (`Err`), or until `stop` is raised (returns `Ok`).
    ///
    /// # Errors
    /// * [`CaptureError::Stream`] when the device went away or the
    ///   pipeline failed mid-stream: the supervisor reopens the source with
    ///   backoff.
    /// * [`CaptureError::Config`] when the stream met something reopening
    ///   cannot fix.
    fn wait(&mut self, stop: &StopFlag) -> Result<(), CaptureError>;
}

/// The clock sources stamp with and pace against. Live capture uses the
/// real monotonic [`crate::clock::CaptureClock`]; replay "as fast as
/// possible" uses a virtual clock the pipeline advances one hop at a time,
/// so the same replay code is either paced or flat out.
pub trait Clock: Send + Sync {
    /// Now, in nanoseconds since the clock's origin.
    fn now(&self) -> Nanos;

    /// Blocks until `now() >= t`, or until `stop` is raised or `timeout`
    /// passes; returns whether `t` was reached.
    fn wait_until(&self, t: Nanos, stop: &StopFlag, timeout: Duration) -> bool;

    /// Whether this clock follows real time (live devices need one).
    fn is_real_time(&self) -> bool;

    /// A thread that paces itself on this clock starts doing so (a
    /// [`crate::clock::VirtualClock`] then waits for it before each window).
    fn enter(&self) {}

    /// The thread stops pacing on this clock.
    fn leave(&self) {}
}

/// A shared clock.
pub type ClockHandle = std::sync::Arc<dyn Clock>;
