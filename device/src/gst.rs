//! Any GStreamer pipeline as a video or audio source.
//!
//! This is the way to cameras V4L2 cannot serve: a Jetson CSI camera gives
//! raw Bayer on V4L2 and needs the ISP, reached only through
//! `nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! appsink`; and
//! to network streams, files in any container, or a PulseAudio source.
//!
//! **The appsink rule.** The pipeline is parsed as written. If it has an
//! `appsink`, frames are taken from the one named `emogate`, else from the
//! first one. If it has none, a converter and an appsink are appended:
//! `! videoconvert ! video/x-raw,format=RGB ! appsink name=emogate` for
//! video, `! audioconvert ! audioresample ! audio/x-raw,format=F32LE,layout=interleaved
//! ! appsink name=emogate` for audio. An appsink without caps of its own
//! is restricted to the formats read here, so GStreamer negotiates one of
//! them: RGB, BGR, RGBx/RGBA/BGRx/BGRA (alpha dropped), GRAY8, I420, NV12
//! and YUY2 for video (YUV handed on without conversion; padded rows
//! repacked), F32LE and S16LE, any channel count, for audio (mixed to
//! mono).
//!
//! **Timing.** A live pipeline (a camera, a microphone) is pulled as fast
//! as it delivers; when the consumer falls behind, a video appsink keeps
//! the newest frames, while an audio one holds up to 64 buffers and never
//! drops (losses show as ring overruns, where they are counted). A non-live one (a file, a test source) is played at its
//! own rate on the pipeline clock (appsink `sync`), like file replay, so it
//! neither floods the audio ring nor skips frames. Items are stamped with
//! their capture time when the pipeline clock says how old they are (live
//! sources), else with the time they were pulled.
//!
//! Bus errors become [`CaptureError::Stream`] naming the element and the
//! pipeline; end of stream ends the source.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_audio as gst_audio;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use emogate_media::{Frame, Nanos, PixelLayout, StopFlag, YuvRange};

use crate::pixels;
use crate::ring::AudioProducer;
use crate::source::{
    AudioSource, AudioStream, CaptureError, ClockHandle, VideoSource, VideoStream,
};

/// What is appended to a video pipeline without an appsink.
pub const VIDEO_TAIL: &str = " ! videoconvert ! video/x-raw,format=RGB ! appsink name=emogate";
/// What is appended to an audio pipeline without an appsink.
pub const AUDIO_TAIL: &str = " ! audioconvert ! audioresample ! audio/x-raw,format=F32LE,layout=interleaved ! appsink name=emogate";

const VIDEO_CAPS: &str =
    "video/x-raw, format=(string){ RGB, BGR, RGBx, RGBA, BGRx, BGRA, GRAY8, I420, NV12, YUY2 }";
const AUDIO_CAPS: &str = "audio/x-raw, format=(string){ F32LE, S16LE }, layout=(string)interleaved";

/// How long one pull waits before the stop flag and the bus are checked.
const PULL: Duration = Duration::from_millis(50);
/// How long an audio pipeline may take to deliver its first buffer (which
/// fixes the sample rate the stream reports).
const FIRST_AUDIO: Duration = Duration::from_secs(5);
/// A live pipeline that delivers nothing this long has failed.
const STALL: Duration = Duration::from_secs(5);

/// A video source from a GStreamer pipeline (see the module docs).
#[derive(Debug, Clone)]
pub struct GstVideoSource {
    pipeline: String,
}

impl GstVideoSource {
    pub fn new(pipeline: &str) -> Self {
        GstVideoSource {
            pipeline: pipeline.trim().to_string(),
        }
    }
}

/// An audio source from a GStreamer pipeline (see the module docs).
#[derive(Debug, Clone)]
pub struct GstAudioSource {
    pipeline: String,
    opened_rate: Option<u32>,
}

impl GstAudioSource {
    pub fn new(pipeline: &str) -> Self {
        GstAudioSource {
            pipeline: pipeline.trim().to_string(),
            opened_rate: None,
        }
    }
}

fn init(source_name: &str) -> Result<(), CaptureError> {
    // Idempotent and cheap after the first success; a failure (no plugin
    // registry) is reported on every open.
    gst::init().map_err(|e| CaptureError::Open {
        source_name: source_name.to_string(),
        message: format!("cannot initialise GStreamer: {e}"),
    })
}

/// A running pipeline and its appsink; stopped (state NULL) on drop.
struct Running {
    name: String,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    live: bool,
    last_stamp: Nanos,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn parse(description: &str, source_name: &str) -> Result<gst::Element, CaptureError> {
    gst::parse::launch(description).map_err(|e| CaptureError::Config {
        source_name: source_name.to_string(),
        message: format!("cannot parse the pipeline \"{description}\": {e}"),
    })
}

/// The appsink frames come from: the one named `emogate`, else the first.
fn find_sink(pipeline: &gst::Pipeline) -> Option<gst_app::AppSink> {
    if let Some(sink) = pipeline
        .by_name("emogate")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
    {
        return Some(sink);
    }
    pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .find_map(|e| e.downcast::<gst_app::AppSink>().ok())
}

/// Parses `description`, appending `tail` when it has no appsink, and
/// prepares the sink. Returns the pipeline description actually used.
fn build(
    description: &str,
    tail: &str,
    caps: &str,
    max_buffers: u32,
    source_name: &str,
) -> Result<(gst::Pipeline, gst_app::AppSink, String), CaptureError> {
    let mut used = description.to_string();
    // A pipeline ending in caps (`... ! video/x-raw,width=640`) does not
    // parse on its own, and a lone element (`videotestsrc`) parses as
    // itself rather than as a pipeline: both get the tail. If the tail does
    // not help, the error quoted is the one of the pipeline as written.
    let element = match parse(&used, source_name) {
        Ok(e)
            if e.downcast_ref::<gst::Pipeline>()
                .is_some_and(|p| find_sink(p).is_some()) =>
        {
            e
        }
        first => {
            used = format!("{description}{tail}");
            match (parse(&used, source_name), first) {
                (Ok(e), _) => e,
                (Err(_), Err(first_error)) => return Err(first_error),
                (Err(e), Ok(_)) => return Err(e),
            }
        }
    };
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| CaptureError::Config {
            source_name: source_name.to_string(),
            message: format!("\"{used}\" is not a pipeline"),
        })?;
    let sink = find_sink(&pipeline).ok_or_else(|| CaptureError::Config {
        source_name: source_name.to_string(),
        message: format!("\"{used}\" has no appsink"),
    })?;
    if sink.caps().is_none() {
        let caps: gst::Caps = caps.parse().map_err(|e| CaptureError::Config {
            source_name: source_name.to_string(),
            message: format!("internal caps \"{caps}\": {e}"),
        })?;
        sink.set_caps(Some(&caps));
    }
    sink.set_max_buffers(max_buffers);
    // Non-live pipelines play at their own rate (see the module docs);
    // switched off below for live ones.
    sink.set_sync(true);
    Ok((pipeline, sink, used))
}

/// The first error (`Err`, naming the element) or end of stream (`Ok`)
/// waiting on the bus.
fn bus_problem(pipeline: &gst::Pipeline) -> Option<Result<(), String>> {
    let bus = pipeline.bus()?;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
        match msg.view() {
            gst::MessageView::Eos(_) => return Some(Ok(())),
            gst::MessageView::Error(err) => {
                let element = msg
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_else(|| "the pipeline".into());
                let debug = err.debug().map(|d| format!(" ({d})")).unwrap_or_default();
                return Some(Err(format!("{element}: {}{debug}", err.error())));
            }
            _ => {}
        }
    }
    None
}

/// How a source wants its appsink to behave.
struct SinkPolicy {
    caps: &'static str,
    tail: &'static str,
    max_buffers: u32,
    /// Whether a live pipeline may drop the oldest buffers when the
    /// consumer is behind: yes for video (only the newest frames matter),
    /// no for audio (a gap must show up as ring overruns, not vanish).
    drop_when_live: bool,
}

const VIDEO: SinkPolicy = SinkPolicy {
    caps: VIDEO_CAPS,
    tail: VIDEO_TAIL,
    max_buffers: 4,
    drop_when_live: true,
};

const AUDIO: SinkPolicy = SinkPolicy {
    caps: AUDIO_CAPS,
    tail: AUDIO_TAIL,
    // Our loop only copies into the ring; this is slack for scheduling.
    max_buffers: 64,
    drop_when_live: false,
};

fn start(
    description: &str,
    policy: &SinkPolicy,
    source_name: &str,
) -> Result<Running, CaptureError> {
    init(source_name)?;
    let (pipeline, sink, used) = build(
        description,
        policy.tail,
        policy.caps,
        policy.max_buffers,
        source_name,
    )?;
    let mut running = Running {
        name: source_name.to_string(),
        pipeline,
        sink,
        live: false,
        last_stamp: 0,
    };
    match running.pipeline.set_state(gst::State::Playing) {
        Ok(gst::StateChangeSuccess::NoPreroll) => running.live = true,
        Ok(_) => {}
        Err(_) => {
            // The reason is on the bus.
            let why = match bus_problem(&running.pipeline) {
                Some(Err(e)) => e,
                _ => "the pipeline refused to start".into(),
            };
            return Err(CaptureError::Open {
                source_name: source_name.to_string(),
                message: format!("cannot start \"{used}\": {why}"),
            });
        }
    }
    if running.live {
        // Live: take buffers as they come.
        running.sink.set_sync(false);
        running.sink.set_drop(policy.drop_when_live);
    }
    tracing::info!(source = source_name, pipeline = %used, live = running.live, "GStreamer pipeline playing");
    Ok(running)
}

impl Running {
    /// The capture time of a buffer whose newest content has running time
    /// `end`: `now` minus its age on the pipeline clock, when that age is
    /// plausible (live sources); else `now`. Never goes backwards.
    fn stamp(&mut self, clock: &ClockHandle, end: Option<gst::ClockTime>) -> Nanos {
        let now = clock.now();
        let age = (|| {
            if !self.live {
                return None;
            }
            let running_now = self
                .pipeline
                .clock()?
                .time()
                .checked_sub(self.pipeline.base_time()?)?;
            let age = running_now.checked_sub(end?)?;
            (age < gst::ClockTime::from_seconds(2)).then_some(age.nseconds())
        })();
        let t = age
            .map_or(now, |a| now.saturating_sub(a))
            .max(self.last_stamp);
        self.last_stamp = t;
        t
    }

    /// One pull of up to [`PULL`]: a sample, the end, or nothing yet.
    fn pull_once(&mut self) -> Result<Pulled, CaptureError> {
        let timeout = gst::ClockTime::from_mseconds(PULL.as_millis() as u64);
        if let Some(sample) = self.sink.try_pull_sample(timeout) {
            return Ok(Pulled::Sample(sample));
        }
        match bus_problem(&self.pipeline) {
            Some(Ok(())) => return Ok(Pulled::Ended),
            Some(Err(message)) => {
                return Err(CaptureError::Stream {
                    source_name: self.name.clone(),
                    message,
                });
            }
            None => {}
        }
        Ok(if self.sink.is_eos() {
            Pulled::Ended
        } else {
            Pulled::Nothing
        })
    }

    /// The next sample; `Ok(None)` at end of stream or when stopped.
    fn pull(&mut self, stop: &StopFlag) -> Result<Option<gst::Sample>, CaptureError> {
        let waiting_since = Instant::now();
        loop {
            if stop.is_raised() {
                return Ok(None);
            }
            match self.pull_once()? {
                Pulled::Sample(s) => return Ok(Some(s)),
                Pulled::Ended => return Ok(None),
                // A paused non-live pipeline (a file source waiting on a
                // network share) is slow, not broken; a silent live one is.
                Pulled::Nothing if self.live && waiting_since.elapsed() >= STALL => {
                    return Err(CaptureError::Stream {
                        source_name: self.name.clone(),
                        message: format!("no data for {} s", STALL.as_secs()),
                    });
                }
                Pulled::Nothing => {}
            }
        }
    }
}

enum Pulled {
    Sample(gst::Sample),
    Ended,
    Nothing,
}

/// Running time of the end of a buffer (its newest content).
fn buffer_end(buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
    let pts = buffer.pts()?;
    Some(pts + buffer.duration().unwrap_or(gst::ClockTime::ZERO))
}

impl VideoSource for GstVideoSource {
    fn name(&self) -> String {
        format!("gst:{}", self.pipeline)
    }

    /// Parses and starts the pipeline.
    ///
    /// # Errors
    /// * [`CaptureError::Config`] if the pipeline does not parse (an
    ///   unknown element, a syntax error: the message quotes GStreamer),
    ///   or `clock` is not real-time;
    /// * [`CaptureError::Open`] if GStreamer cannot initialise or the
    ///   pipeline fails to start (a missing device or file; the message
    ///   names the failing element).
    fn open(&mut self, clock: ClockHandle) -> Result<Box<dyn VideoStream>, CaptureError> {
        let name = self.name();
        real_time(&clock, &name)?;
        let running = start(&self.pipeline, &VIDEO, &name)?;
        Ok(Box::new(GstVideoStream { running, clock }))
    }
}

fn real_time(clock: &ClockHandle, name: &str) -> Result<(), CaptureError> {
    if clock.is_real_time() {
        Ok(())
    } else {
        Err(CaptureError::Config {
            source_name: name.to_string(),
            message: "GStreamer pipelines run on the real-time clock; replay files with a file path instead".into(),
        })
    }
}

struct GstVideoStream {
    running: Running,
    clock: ClockHandle,
}

impl VideoStream for GstVideoStream {
    /// The next frame; `Ok(None)` at end of stream or when stopped.
    ///
    /// # Errors
    /// [`CaptureError::Stream`] on a pipeline error (naming the element),
    /// a live pipeline silent for 5 s, or a buffer that does not match its
    /// caps.
    fn next_frame(&mut self, stop: &StopFlag) -> Result<Option<Frame>, CaptureError> {
        let Some(sample) = self.running.pull(stop)? else {
            return Ok(None);
        };
        let name = self.running.name.clone();
        let fail = |message: String| CaptureError::Stream {
            source_name: name.clone(),
            message,
        };
        let buffer = sample
            .buffer()
            .ok_or_else(|| fail("a sample without a buffer".into()))?;
        let caps = sample
            .caps()
            .ok_or_else(|| fail("a sample without caps".into()))?;
        let info =
            gst_video::VideoInfo::from_caps(caps).map_err(|e| fail(format!("caps {caps}: {e}")))?;
        let captured_at = self.running.stamp(&self.clock, buffer_end(buffer));
        video_frame(buffer, &info, captured_at)
            .map(Some)
            .map_err(fail)
    }
}

/// Copies a mapped video buffer into a tightly packed [`Frame`], honouring
/// the per-plane strides GStreamer reports (from the caps or the buffer's
/// video meta).
pub fn video_frame(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    captured_at: Nanos,
) -> Result<Frame, String> {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .map_err(|e| format!("cannot map the buffer: {e}"))?;
    let width = info.width() as usize;
    let height = info.height() as usize;
    let stride = |p: usize| -> Result<usize, String> {
        frame
            .plane_stride()
            .get(p)
            .and_then(|s| usize::try_from(*s).ok())
            .ok_or_else(|| format!("plane {p} has no usable stride"))
    };
    let plane = |p: u32| frame.plane_data(p).map_err(|e| format!("plane {p}: {e}"));
    use gst_video::VideoFormat as F;
    let (layout, data) = match info.format() {
        F::Rgbx | F::Rgba | F::Bgrx | F::Bgra => {
            let layout = if matches!(info.format(), F::Rgbx | F::Rgba) {
                PixelLayout::Rgb8
            } else {
                PixelLayout::Bgr8
            };
            (
                layout,
                pixels::strip_alpha(plane(0)?, width, height, stride(0)?, 0)?,
            )
        }
        format => {
            let layout = match format {
                F::Rgb => PixelLayout::Rgb8,
                F::Bgr => PixelLayout::Bgr8,
                F::Gray8 => PixelLayout::Gray8,
                F::I420 => PixelLayout::Yuv420p,
                F::Nv12 => PixelLayout::Nv12,
                F::Yuy2 => PixelLayout::Yuyv,
                other => return Err(format!("unsupported video format {other:?}")),
            };
            let tight = pixels::planes(layout, width, height, None);
            let mut data = Vec::with_capacity(tight.iter().map(|p| p.row_bytes * p.rows).sum());
            for (i, p) in tight.iter().enumerate() {
                let plane_bytes = plane(i as u32)?;
                let one = pixels::Plane {
                    offset: 0,
                    stride: stride(i)?,
                    ..*p
                };
                data.extend(pixels::pack(plane_bytes, &[one])?);
            }
            (layout, data)
        }
    };
    let range = match info.colorimetry().range() {
        gst_video::VideoColorRange::Range0_255 => YuvRange::Full,
        _ => YuvRange::Limited,
    };
    Frame::new(width, height, layout, data, captured_at)
        .map(|f| f.with_range(range))
        .map_err(|e| e.to_string())
}

impl AudioSource for GstAudioSource {
    fn name(&self) -> String {
        format!("gst:{}", self.pipeline)
    }

    /// The rate of the last successful open; `None` before the first.
    fn sample_rate_hint(&self) -> Option<u32> {
        self.opened_rate
    }

    /// Parses and starts the pipeline, and waits for its first buffer
    /// (which fixes the rate) up to 5 s.
    ///
    /// # Errors
    /// As [`GstVideoSource`]'s `open`, and [`CaptureError::Open`] if no
    /// audio arrives within 5 s or the pipeline ends before any.
    fn open(
        &mut self,
        clock: ClockHandle,
        ring: AudioProducer,
    ) -> Result<Box<dyn AudioStream>, CaptureError> {
        let name = self.name();
        real_time(&clock, &name)?;
        let mut running = start(&self.pipeline, &AUDIO, &name)?;
        let deadline = Instant::now() + FIRST_AUDIO;
        let first = loop {
            match running.pull_once()? {
                Pulled::Sample(sample) => break sample,
                Pulled::Ended => {
                    return Err(CaptureError::Open {
                        source_name: name,
                        message: "the pipeline ended before delivering audio".into(),
                    });
                }
                Pulled::Nothing if Instant::now() >= deadline => {
                    return Err(CaptureError::Open {
                        source_name: name,
                        message: format!("no audio within {} s", FIRST_AUDIO.as_secs()),
                    });
                }
                Pulled::Nothing => {}
            }
        };
        let caps = first.caps().ok_or_else(|| CaptureError::Open {
            source_name: name.clone(),
            message: "the first sample has no caps".into(),
        })?;
        let info = gst_audio::AudioInfo::from_caps(caps).map_err(|e| CaptureError::Config {
            source_name: name.clone(),
            message: format!("caps {caps}: {e}"),
        })?;
        let rate = info.rate();
        self.opened_rate = Some(rate);
        let stream = GstAudioStream {
            running,
            clock,
            ring,
            rate,
            mono: Vec::new(),
            pending: Some(first),
        };
        // Validate the first buffer's format now rather than in `wait`.
        stream.check_format(&info)?;
        Ok(Box::new(stream))
    }
}

struct GstAudioStream {
    running: Running,
    clock: ClockHandle,
    ring: AudioProducer,
    rate: u32,
    /// Reused between buffers; this thread is ours, not a driver's.
    mono: Vec<f32>,
    pending: Option<gst::Sample>,
}

impl GstAudioStream {
    fn check_format(&self, info: &gst_audio::AudioInfo) -> Result<(), CaptureError> {
        use gst_audio::AudioFormat as A;
        if matches!(info.format(), A::F32le | A::S16le) && info.channels() > 0 {
            Ok(())
        } else {
            Err(CaptureError::Config {
                source_name: self.running.name.clone(),
                message: format!(
                    "audio format {:?} with {} channels; expected F32LE or S16LE",
                    info.format(),
                    info.channels()
                ),
            })
        }
    }

    fn deliver(&mut self, sample: &gst::Sample) -> Result<(), CaptureError> {
        let name = &self.running.name;
        let fail = |message: String| CaptureError::Stream {
            source_name: name.clone(),
            message,
        };
        let buffer = sample
            .buffer()
            .ok_or_else(|| fail("a sample without a buffer".into()))?;
        let caps = sample
            .caps()
            .ok_or_else(|| fail("a sample without caps".into()))?;
        let info =
            gst_audio::AudioInfo::from_caps(caps).map_err(|e| fail(format!("caps {caps}: {e}")))?;
        if info.rate() != self.rate {
            return Err(fail(format!(
                "the rate changed from {} to {} Hz mid-stream",
                self.rate,
                info.rate()
            )));
        }
        let map = buffer
            .map_readable()
            .map_err(|e| fail(format!("cannot map the buffer: {e}")))?;
        self.mono.clear();
        interleaved_to_mono(
            &map,
            info.format(),
            info.channels() as usize,
            &mut self.mono,
        )
        .map_err(fail)?;
        let end = buffer_end(buffer);
        let at = self.running.stamp(&self.clock, end);
        // Like a sound card: what does not fit is dropped and counted.
        self.ring.push(&self.mono, at);
        Ok(())
    }
}

/// Mixes interleaved little-endian F32LE or S16LE bytes to mono `f32`,
/// appending to `out`. `Err` for other formats or a partial frame.
pub fn interleaved_to_mono(
    bytes: &[u8],
    format: gst_audio::AudioFormat,
    channels: usize,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    use gst_audio::AudioFormat as A;
    if channels == 0 {
        return Err("0 channels".into());
    }
    let width = match format {
        A::F32le => 4,
        A::S16le => 2,
        other => return Err(format!("unsupported audio format {other:?}")),
    };
    let frame_bytes = width * channels;
    if !bytes.len().is_multiple_of(frame_bytes) {
        return Err(format!(
            "{} bytes is not a whole number of {channels}-channel frames",
            bytes.len()
        ));
    }
    let scale = 1.0 / channels as f32;
    for frame in bytes.chunks_exact(frame_bytes) {
        let sum: f32 = frame
            .chunks_exact(width)
            .map(|b| match format {
                A::S16le => f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0,
                _ => {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if v.is_nan() { 0.0 } else { v.clamp(-1.0, 1.0) }
                }
            })
            .sum();
        out.push(sum * scale);
    }
    Ok(())
}

impl AudioStream for GstAudioStream {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Pulls buffers into the ring until end of stream (`Ok`), `stop`
    /// (`Ok`) or an error.
    ///
    /// # Errors
    /// [`CaptureError::Stream`] on a pipeline error (naming the element),
    /// a live pipeline silent for 5 s, or a rate change mid-stream.
    fn wait(&mut self, stop: &StopFlag) -> Result<(), CaptureError> {
        if let Some(first) = self.pending.take() {
            self.deliver(&first)?;
        }
        while let Some(sample) = self.running.pull(stop)? {
            self.deliver(&sample)?;
        }
        Ok(())
    }
}
