//! Microphones through cpal.
//!
//! On Linux cpal talks to ALSA directly. PulseAudio and PipeWire desktops
//! are reached through ALSA's `pulse` / `pipewire` plugin devices (they
//! show up in [`crate::list::list_devices`] as `mic:pulse`, `mic:pipewire`),
//! so a robot without a sound server and a desktop with one use the same
//! code path.
//!
//! cpal delivers audio on its own real-time thread, in whatever sample
//! format, rate and channel count the device runs at. The data callback
//! ([`MicCallback::on_data`]) mixes to mono `f32` into a scratch buffer
//! allocated before the stream starts and pushes into the lock-free
//! [`AudioProducer`], so it never allocates, locks or blocks. Errors come
//! on cpal's error callback, which may allocate: it forwards them over a
//! channel to [`AudioStream::wait`], which turns a vanished device into
//! [`CaptureError::Stream`] so the supervisor reopens it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    Data, ErrorKind, FromSample, I24, InputCallbackInfo, SampleFormat, SizedSample,
    SupportedBufferSize, SupportedStreamConfig, U24,
};

use crate::device_match;
use crate::ring::AudioProducer;
use crate::source::{AudioSource, AudioStream, CaptureError, ClockHandle};
use emogate_media::Nanos;
use emogate_media::StopFlag;

/// The name that selects the host's default input device.
pub const DEFAULT_DEVICE: &str = "default";

/// How often [`AudioStream::wait`] looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// A stream that has delivered nothing for this long counts as failed: a
/// USB microphone can stop delivering without cpal reporting an error.
const STALL: Duration = Duration::from_secs(5);

/// Frames the scratch buffer holds when the device does not say how large
/// its periods are. Larger callbacks are processed in pieces, so this only
/// trades a few extra ring pushes against memory.
const DEFAULT_SCRATCH_FRAMES: usize = 8192;
/// Upper bound on the scratch buffer: some plugins (ALSA `null`) report
/// buffer ranges of millions of frames.
const MAX_SCRATCH_FRAMES: usize = 65_536;

/// A microphone chosen by name, opened with cpal's default host.
#[derive(Debug, Clone)]
pub struct MicSource {
    wanted: String,
    sample_rate: Option<u32>,
    opened_rate: Option<u32>,
}

impl MicSource {
    /// A microphone whose cpal id, name or description equals or contains
    /// `name` (an exact match wins, then the first containing it, in
    /// cpal's order); [`DEFAULT_DEVICE`] is the host's default input.
    pub fn new(name: &str) -> Self {
        MicSource {
            wanted: name.to_string(),
            sample_rate: None,
            opened_rate: None,
        }
    }

    /// Asks for a sample rate. If the device cannot run at it, its default
    /// rate is used (logged): the pipeline resamples anyway, and a robot
    /// should rather hear at 44.1 kHz than not at all.
    pub fn with_sample_rate(mut self, rate: Option<u32>) -> Self {
        self.sample_rate = rate;
        self
    }
}

impl AudioSource for MicSource {
    fn name(&self) -> String {
        format!("mic:{}", self.wanted)
    }

    /// The rate of the last successful open (a device keeps its rate
    /// across reopens); `None` before the first.
    fn sample_rate_hint(&self) -> Option<u32> {
        self.opened_rate
    }

    /// Opens the device and starts capture.
    ///
    /// # Errors
    /// * [`CaptureError::Config`] if `clock` is not real-time (a live
    ///   device cannot be replayed faster), or the device offers only
    ///   sample formats that have no PCM conversion (DSD), or refuses the
    ///   configuration it advertised;
    /// * [`CaptureError::Open`] if no input device matches the name (the
    ///   message lists the available ones), the default input is missing,
    ///   or the device is busy, gone or not permitted.
    fn open(
        &mut self,
        clock: ClockHandle,
        ring: AudioProducer,
    ) -> Result<Box<dyn AudioStream>, CaptureError> {
        let name = self.name();
        if !clock.is_real_time() {
            return Err(CaptureError::Config {
                source_name: name,
                message: "a live microphone needs the real-time clock".into(),
            });
        }
        let host = cpal::default_host();
        let device = find_input(&host, &self.wanted, &name)?;
        let config = choose_config(&device, self.sample_rate, &name)?;
        let format = config.sample_format();
        let rate = config.sample_rate();
        let channels = config.channels();
        let scratch_frames = scratch_frames(config.buffer_size());
        let mut callback = MicCallback::new(format, channels, rate, scratch_frames, ring, clock);
        let health = callback.health();
        let (errors_tx, errors) = channel();
        let stream = device
            .build_input_stream_raw(
                config.config(),
                format,
                move |data: &Data, info: &InputCallbackInfo| callback.on_data(data, info),
                move |error: cpal::Error| {
                    // The receiver is gone only after the stream was dropped.
                    let _ = errors_tx.send(error);
                },
                Some(Duration::from_secs(2)),
            )
            .map_err(|e| cpal_error(&name, "cannot start capture", &e))?;
        stream
            .play()
            .map_err(|e| cpal_error(&name, "cannot start capture", &e))?;
        tracing::info!(
            source = %name,
            device = %device_id(&device),
            format = %format,
            rate,
            channels,
            scratch_frames,
            "microphone open"
        );
        self.opened_rate = Some(rate);
        Ok(Box::new(MicStream {
            _stream: stream,
            name,
            rate,
            errors,
            health,
        }))
    }
}

/// cpal's id of a device (ALSA: the PCM name, e.g. `hw:CARD=C920,DEV=0`),
/// which is what `mic:` specs should use because it is stable.
pub(crate) fn device_id(device: &cpal::Device) -> String {
    match device.id() {
        Ok(id) => id.id().to_string(),
        Err(_) => device.to_string(),
    }
}

/// Everything a user might call a device by: id, name, driver, the
/// description's extra lines.
pub(crate) fn device_labels(device: &cpal::Device) -> Vec<String> {
    let mut labels = vec![device_id(device)];
    if let Ok(desc) = device.description() {
        labels.push(desc.name().to_string());
        labels.extend(desc.driver().map(str::to_string));
        labels.extend(desc.extended().map(str::to_string));
    }
    labels
}

/// "id (name)" for every input device, for error messages.
fn available_inputs(host: &cpal::Host) -> String {
    let list: Vec<String> = match host.input_devices() {
        Ok(devices) => devices
            .map(|d| {
                let id = device_id(&d);
                match d.description() {
                    Ok(desc) if desc.name() != id => format!("{id} ({})", desc.name()),
                    _ => id,
                }
            })
            .collect(),
        Err(e) => return format!("none (cannot list: {e})"),
    };
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn find_input(
    host: &cpal::Host,
    wanted: &str,
    source_name: &str,
) -> Result<cpal::Device, CaptureError> {
    let open_err = |message: String| CaptureError::Open {
        source_name: source_name.to_string(),
        message,
    };
    if wanted == DEFAULT_DEVICE {
        // ALSA's `default` PCM exists in the hint list even where it cannot
        // open (no card, no sound server): check it answers before using it.
        let reason = match host.default_input_device() {
            Some(device) => match device.default_input_config() {
                Ok(_) => return Ok(device),
                Err(e) => format!("the default input does not work ({e})"),
            },
            None => "the host has no default input device".to_string(),
        };
        return Err(open_err(format!(
            "{reason}; available inputs: {}; choose one with mic:NAME",
            available_inputs(host)
        )));
    }
    let mut devices: Vec<cpal::Device> = host
        .input_devices()
        .map_err(|e| open_err(format!("cannot list input devices: {e}")))?
        .collect();
    let labels: Vec<Vec<String>> = devices.iter().map(device_labels).collect();
    match device_match::pick(wanted, &labels) {
        Some(i) => Ok(devices.swap_remove(i)),
        None => Err(open_err(format!(
            "no input device matches \"{wanted}\"; available inputs: {}",
            available_inputs(host)
        ))),
    }
}

/// Whether the callback can convert `format` (everything PCM; DSD is a
/// 1-bit bitstream, not samples).
pub(crate) fn convertible(format: SampleFormat) -> bool {
    matches!(
        format,
        SampleFormat::I8
            | SampleFormat::I16
            | SampleFormat::I24
            | SampleFormat::I32
            | SampleFormat::I64
            | SampleFormat::U8
            | SampleFormat::U16
            | SampleFormat::U24
            | SampleFormat::U32
            | SampleFormat::U64
            | SampleFormat::F32
            | SampleFormat::F64
    )
}

fn choose_config(
    device: &cpal::Device,
    wanted_rate: Option<u32>,
    source_name: &str,
) -> Result<SupportedStreamConfig, CaptureError> {
    let supported = || -> Result<Vec<cpal::SupportedStreamConfigRange>, CaptureError> {
        Ok(device
            .supported_input_configs()
            .map_err(|e| cpal_error(source_name, "cannot query formats", &e))?
            .filter(|r| convertible(r.sample_format()))
            .collect())
    };
    if let Some(rate) = wanted_rate {
        let best = supported()?
            .into_iter()
            .filter(|r| r.contains_rate(rate))
            .max_by(|a, b| a.cmp_default_heuristics(b));
        match best {
            Some(range) => return Ok(range.with_sample_rate(rate)),
            None => tracing::warn!(
                source = source_name,
                rate,
                "the device cannot capture at the requested rate; using its default"
            ),
        }
    }
    if let Ok(config) = device.default_input_config()
        && convertible(config.sample_format())
    {
        return Ok(config);
    }
    supported()?
        .into_iter()
        .max_by(|a, b| a.cmp_default_heuristics(b))
        .map(|r| {
            r.try_with_standard_sample_rate()
                .unwrap_or_else(|| r.with_max_sample_rate())
        })
        .ok_or_else(|| CaptureError::Config {
            source_name: source_name.to_string(),
            message: "the device offers no PCM sample format".into(),
        })
}

fn scratch_frames(buffer: &SupportedBufferSize) -> usize {
    match buffer {
        SupportedBufferSize::Range { max, .. } => (*max as usize).clamp(1024, MAX_SCRATCH_FRAMES),
        SupportedBufferSize::Unknown => DEFAULT_SCRATCH_FRAMES,
    }
}

/// Maps a cpal error at open time: configuration problems will not go
/// away by retrying; a busy, missing or forbidden device might.
fn cpal_error(source_name: &str, what: &str, e: &cpal::Error) -> CaptureError {
    let message = format!("{what}: {e}");
    let source_name = source_name.to_string();
    match e.kind() {
        ErrorKind::UnsupportedConfig
        | ErrorKind::InvalidInput
        | ErrorKind::UnsupportedOperation => CaptureError::Config {
            source_name,
            message,
        },
        _ => CaptureError::Open {
            source_name,
            message,
        },
    }
}

/// What the callback tells the waiting thread.
#[derive(Debug, Default)]
pub struct CallbackHealth {
    callbacks: AtomicU64,
    frames: AtomicU64,
}

impl CallbackHealth {
    /// Data callbacks so far.
    pub fn callbacks(&self) -> u64 {
        self.callbacks.load(Ordering::Relaxed)
    }
    /// Frames (samples per channel) received so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

/// The state of cpal's data callback: everything it needs, allocated
/// before the stream starts.
///
/// Timestamps: each push is stamped with the capture time of its newest
/// sample, computed as `clock.now()` at the callback minus the latency
/// cpal reports (`callback − capture` of [`InputCallbackInfo`], i.e. how
/// long ago the buffer's first frame was captured) plus that frame's
/// offset in the buffer. The driver's own instants are on a
/// backend-specific origin, but their *difference* is a duration, so it
/// maps onto our clock without a second clock reading. The result is
/// capped at `now` and never goes backwards.
pub struct MicCallback {
    format: SampleFormat,
    channels: usize,
    frame_nanos: f64,
    scratch: Box<[f32]>,
    ring: AudioProducer,
    clock: ClockHandle,
    last_stamp: Nanos,
    health: Arc<CallbackHealth>,
}

impl MicCallback {
    /// A callback for interleaved `format` audio of `channels` channels at
    /// `sample_rate`, with scratch room for `scratch_frames` frames (more
    /// in one callback are processed in pieces). A zero channel count,
    /// rate or size is treated as 1.
    pub fn new(
        format: SampleFormat,
        channels: u16,
        sample_rate: u32,
        scratch_frames: usize,
        ring: AudioProducer,
        clock: ClockHandle,
    ) -> Self {
        MicCallback {
            format,
            channels: usize::from(channels.max(1)),
            frame_nanos: 1e9 / f64::from(sample_rate.max(1)),
            scratch: vec![0.0; scratch_frames.max(1)].into_boxed_slice(),
            ring,
            clock,
            last_stamp: 0,
            health: Arc::new(CallbackHealth::default()),
        }
    }

    /// Counters shared with the waiting thread.
    pub fn health(&self) -> Arc<CallbackHealth> {
        Arc::clone(&self.health)
    }

    /// The data callback: converts, downmixes and pushes one buffer.
    /// Never allocates, locks or blocks (see `tests/no_alloc.rs`).
    pub fn on_data(&mut self, data: &Data, info: &InputCallbackInfo) {
        let now = self.clock.now();
        let ts = info.timestamp();
        let latency = ts.callback.saturating_duration_since(ts.capture).as_nanos() as Nanos;
        let first_at = now.saturating_sub(latency);
        match self.format {
            SampleFormat::I8 => self.process(data.as_slice::<i8>(), first_at, now),
            SampleFormat::I16 => self.process(data.as_slice::<i16>(), first_at, now),
            SampleFormat::I24 => self.process(data.as_slice::<I24>(), first_at, now),
            SampleFormat::I32 => self.process(data.as_slice::<i32>(), first_at, now),
            SampleFormat::I64 => self.process(data.as_slice::<i64>(), first_at, now),
            SampleFormat::U8 => self.process(data.as_slice::<u8>(), first_at, now),
            SampleFormat::U16 => self.process(data.as_slice::<u16>(), first_at, now),
            SampleFormat::U24 => self.process(data.as_slice::<U24>(), first_at, now),
            SampleFormat::U32 => self.process(data.as_slice::<u32>(), first_at, now),
            SampleFormat::U64 => self.process(data.as_slice::<u64>(), first_at, now),
            SampleFormat::F32 => self.process(data.as_slice::<f32>(), first_at, now),
            SampleFormat::F64 => self.process(data.as_slice::<f64>(), first_at, now),
            // Rejected at open (`convertible`); nothing to convert.
            _ => {}
        }
        self.health.callbacks.fetch_add(1, Ordering::Relaxed);
    }

    fn process<T>(&mut self, input: Option<&[T]>, first_at: Nanos, now: Nanos)
    where
        T: SizedSample,
        f32: FromSample<T>,
    {
        // `None` means the buffer is not in the format the stream was built
        // with, which cpal guarantees against; there is nothing to decode.
        let Some(input) = input else { return };
        let channels = self.channels;
        let frames = input.len() / channels;
        let piece_frames = self.scratch.len();
        let scale = 1.0 / channels as f32;
        let mut done = 0usize;
        for piece in input[..frames * channels].chunks(piece_frames * channels) {
            let n = piece.len() / channels;
            for (out, frame) in self.scratch[..n]
                .iter_mut()
                .zip(piece.chunks_exact(channels))
            {
                let sum: f32 = frame.iter().map(|s| clean(f32::from_sample_(*s))).sum();
                *out = sum * scale;
            }
            done += n;
            let newest = first_at + ((done - 1) as f64 * self.frame_nanos) as Nanos;
            let stamp = newest.min(now).max(self.last_stamp);
            self.last_stamp = stamp;
            // Overruns (consumer behind) are counted by the ring.
            self.ring.push(&self.scratch[..n], stamp);
        }
        self.health
            .frames
            .fetch_add(frames as u64, Ordering::Relaxed);
    }
}

/// Float devices can overshoot or glitch to NaN; the models never saw
/// either, so clip and zero them.
fn clean(v: f32) -> f32 {
    if v.is_nan() { 0.0 } else { v.clamp(-1.0, 1.0) }
}

struct MicStream {
    // Dropping the cpal stream stops capture and joins its thread.
    _stream: cpal::Stream,
    name: String,
    rate: u32,
    errors: Receiver<cpal::Error>,
    health: Arc<CallbackHealth>,
}

impl AudioStream for MicStream {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Waits until `stop` (returns `Ok`) or a fatal stream error.
    ///
    /// # Errors
    /// [`CaptureError::Stream`] when cpal reports the device gone or the
    /// stream invalid, when its driver thread ends, or when no audio has
    /// arrived for 5 s. Over- and underruns (xruns), a rerouted default
    /// device and a refused real-time priority are logged, not fatal.
    fn wait(&mut self, stop: &StopFlag) -> Result<(), CaptureError> {
        watch(&self.errors, &self.health, stop, &self.name, STALL)
    }
}

/// The body of [`AudioStream::wait`] for a cpal stream: sorts what the
/// error callback sends into fatal (returned as [`CaptureError::Stream`])
/// and notices (logged), and fails a stream whose callback has not run for
/// `stall`.
fn watch(
    errors: &Receiver<cpal::Error>,
    health: &CallbackHealth,
    stop: &StopFlag,
    name: &str,
    stall: Duration,
) -> Result<(), CaptureError> {
    let fail = |message: String| CaptureError::Stream {
        source_name: name.to_string(),
        message,
    };
    let mut seen = health.callbacks();
    let mut progress_at = Instant::now();
    let mut xruns = 0u64;
    let mut xrun_logged_at: Option<Instant> = None;
    loop {
        if stop.is_raised() {
            return Ok(());
        }
        match errors.recv_timeout(POLL) {
            Ok(e) => match e.kind() {
                ErrorKind::Xrun => {
                    xruns += 1;
                    // An overloaded machine can xrun every period: log at
                    // most once a second.
                    if xrun_logged_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(
                            source = name,
                            xruns,
                            "audio xrun (samples lost in the driver)"
                        );
                        xrun_logged_at = Some(Instant::now());
                    }
                }
                ErrorKind::DeviceChanged | ErrorKind::RealtimeDenied => {
                    tracing::warn!(source = name, error = %e, "audio stream notice");
                }
                _ => return Err(fail(e.to_string())),
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(fail("the audio driver thread ended".into()));
            }
        }
        let calls = health.callbacks();
        if calls != seen {
            seen = calls;
            progress_at = Instant::now();
        } else if progress_at.elapsed() >= stall {
            return Err(fail(format!(
                "no audio for {:.1} s (device stalled)",
                stall.as_secs_f64()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_bounded_both_ways() {
        assert_eq!(
            scratch_frames(&SupportedBufferSize::Unknown),
            DEFAULT_SCRATCH_FRAMES
        );
        let tiny = SupportedBufferSize::Range { min: 16, max: 64 };
        assert_eq!(scratch_frames(&tiny), 1024);
        let huge = SupportedBufferSize::Range {
            min: 16,
            max: 4_194_304,
        };
        assert_eq!(scratch_frames(&huge), MAX_SCRATCH_FRAMES);
    }

    fn info(latency: Duration) -> InputCallbackInfo {
        let callback = cpal::StreamInstant::new(100, 0);
        let capture = callback.checked_sub(latency).expect("latency below 100 s");
        InputCallbackInfo::new(cpal::InputStreamTimestamp { callback, capture })
    }

    /// A cpal buffer over `samples`, as a host builds one.
    fn data<T: SizedSample>(samples: &mut [T]) -> Data {
        // SAFETY: the pointer and length describe `samples`, whose element
        // type is the format's, and it outlives the returned `Data` in
        // every use below.
        unsafe { Data::from_parts(samples.as_mut_ptr().cast(), samples.len(), T::FORMAT) }
    }

    #[test]
    fn converts_downmixes_and_stamps_in_scratch_sized_pieces() {
        let clock = Arc::new(crate::clock::VirtualClock::new());
        clock.advance(1_000_000_000);
        let (tx, mut rx) = crate::ring::audio_ring(64);
        // 1 kHz, stereo i16, 4-frame scratch, 10 frames: three pushes.
        let mut cb = MicCallback::new(SampleFormat::I16, 2, 1000, 4, tx, clock.clone());
        let mut input: Vec<i16> = (0..10)
            .flat_map(|i| [i16::MIN, if i % 2 == 0 { i16::MAX } else { 0 }])
            .collect();
        cb.on_data(&data(&mut input), &info(Duration::from_millis(20)));
        let mut out = [0f32; 16];
        assert_eq!(rx.pop_into(&mut out), 10);
        for (i, v) in out[..10].iter().enumerate() {
            let want = if i % 2 == 0 {
                (-1.0 + 32767.0 / 32768.0) / 2.0
            } else {
                -0.5
            };
            assert!((v - want).abs() < 1e-6, "frame {i}: {v} vs {want}");
        }
        // First frame captured 20 ms before the callback; the newest (10th)
        // 9 ms after it.
        assert_eq!(rx.progress(), (10, 1_000_000_000 - 20_000_000 + 9_000_000));
        assert_eq!(cb.health().frames(), 10);
        assert_eq!(cb.health().callbacks(), 1);
    }

    #[test]
    fn unsigned_and_float_formats_are_centred_and_clipped() {
        let clock = Arc::new(crate::clock::VirtualClock::new());
        let (tx, mut rx) = crate::ring::audio_ring(64);
        let mut cb = MicCallback::new(SampleFormat::U8, 1, 16_000, 64, tx, clock.clone());
        let mut input = [128u8, 0, 255];
        cb.on_data(&data(&mut input), &info(Duration::ZERO));
        let mut out = [0f32; 8];
        assert_eq!(rx.pop_into(&mut out), 3);
        assert_eq!(&out[..3], &[0.0, -1.0, 127.0 / 128.0]);

        let (tx, mut rx) = crate::ring::audio_ring(64);
        let mut cb = MicCallback::new(SampleFormat::F64, 1, 16_000, 64, tx, clock);
        let mut input = [0.25f64, 3.0, f64::NAN, -7.0];
        cb.on_data(&data(&mut input), &info(Duration::ZERO));
        assert_eq!(rx.pop_into(&mut out), 4);
        assert_eq!(&out[..4], &[0.25, 1.0, 0.0, -1.0]);
    }

    #[test]
    fn stamps_never_exceed_now_or_go_backwards() {
        let clock = Arc::new(crate::clock::VirtualClock::new());
        clock.advance(5_000_000_000);
        let (tx, rx) = crate::ring::audio_ring(1 << 12);
        let mut cb = MicCallback::new(SampleFormat::F32, 1, 1000, 1024, tx, clock.clone());
        // No reported latency: a 100-frame buffer would end 99 ms in the
        // future; it is capped at now.
        let mut input = [0f32; 100];
        cb.on_data(&data(&mut input), &info(Duration::ZERO));
        assert_eq!(rx.progress().1, 5_000_000_000);
        // A later callback reporting a larger latency must not go back.
        cb.on_data(&data(&mut input), &info(Duration::from_secs(1)));
        assert_eq!(rx.progress().1, 5_000_000_000);
    }

    #[test]
    fn a_vanished_device_fails_the_stream_while_xruns_do_not() {
        let (tx, rx) = channel();
        let health = CallbackHealth::default();
        let stop = StopFlag::new();
        tx.send(cpal::Error::new(ErrorKind::Xrun)).unwrap();
        tx.send(cpal::Error::new(ErrorKind::DeviceChanged)).unwrap();
        tx.send(cpal::Error::with_message(
            ErrorKind::DeviceNotAvailable,
            "Device disconnected",
        ))
        .unwrap();
        let err = watch(&rx, &health, &stop, "mic:usb", Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, CaptureError::Stream { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(
            err.to_string().starts_with("mic:usb: stream failed:"),
            "{err}"
        );
        assert!(err.to_string().contains("Device disconnected"), "{err}");
    }

    #[test]
    fn a_silent_or_ended_stream_fails_and_stop_returns_ok() {
        let (tx, rx) = channel::<cpal::Error>();
        let health = CallbackHealth::default();
        let stop = StopFlag::new();
        let started = Instant::now();
        let err = watch(&rx, &health, &stop, "mic:x", Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("no audio"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        stop.raise();
        assert!(watch(&rx, &health, &stop, "mic:x", Duration::from_millis(100)).is_ok());
        drop(tx);
        let err = watch(
            &rx,
            &health,
            &StopFlag::new(),
            "mic:x",
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(err.to_string().contains("driver thread ended"), "{err}");
    }

    #[test]
    fn dsd_is_not_convertible() {
        assert!(!convertible(SampleFormat::DsdU8));
        assert!(convertible(SampleFormat::I24));
    }
}
