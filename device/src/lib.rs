//! # emogate-device
//!
//! Capture: where frames and samples come from, and when. A brief overview
//! of the principal types:
//!
//! * [`source::VideoSource`] / [`source::AudioSource`] — a place media
//!   comes from (a camera, a microphone, a GStreamer pipeline, a file),
//!   opened into a [`source::VideoStream`] (pulled frame by frame) or an
//!   [`source::AudioStream`] (pushing into a ring). Every item is stamped
//!   on one [`source::Clock`].
//! * [`spec::open_video`] / [`spec::open_audio`] — the one entry point the
//!   CLI uses: `v4l:0`, `v4l:NAME`, `gst:PIPELINE`, `mic:NAME`,
//!   `mic:default` or a file path become a source; a spec whose cargo
//!   feature is not built is [`source::CaptureError::NotBuilt`].
//! * [`list::list_devices`] — cameras and microphones with the spec that
//!   selects each, and notes instead of errors (for `emogate devices`).
//! * [`mic::MicSource`] — microphones through cpal. On Linux that is ALSA:
//!   it needs no sound server on a robot, and PulseAudio or PipeWire
//!   desktops are reached through ALSA's `pulse`/`pipewire` plugin
//!   devices. The data callback ([`mic::MicCallback`]) converts any sample
//!   format and channel count to mono `f32` without allocating, locking or
//!   blocking.
//! * `camera::CameraSource` (feature `v4l`, on by default) — USB/UVC
//!   cameras through V4L2: simple, no daemon, on every Linux board.
//!   YUYV/NV12/grey/RGB pass through, MJPEG is decoded.
//! * `gst::GstVideoSource` / `gst::GstAudioSource` (feature `gstreamer`,
//!   off by default) — any pipeline ending in an appsink. Needed where V4L2
//!   is not enough: a Jetson CSI camera gives raw Bayer on V4L2 and reaches
//!   the ISP only through `nvarguscamerasrc`; also network streams and
//!   containers.
//! * [`clock::CaptureClock`] / [`clock::RealClock`] — the monotonic clock
//!   of live capture; [`clock::VirtualClock`] — the clock of replay "as
//!   fast as possible", advanced by the pipeline one window at a time.
//! * [`ring::audio_ring`] — the preallocated, lock-free single-producer /
//!   single-consumer ring an audio callback writes into. The callback side
//!   ([`ring::AudioProducer`]) never allocates, locks or blocks: when the
//!   consumer falls behind it drops the newest samples and counts them.
//! * [`supervise`] — one thread per source that opens it, reports
//!   failures as [`supervise::SourceReport`]s and reopens with backoff;
//!   [`supervise::VideoFeed`] holds the newest frames, bounded.
//! * [`clip`] decodes video files (a still image, a folder of frames, a
//!   Y4M clip); [`file_source::VideoFile`] and [`file_source::WavFile`]
//!   play them and WAV audio as sources, paced on the clock, optionally
//!   looped.
//! * [`audio`] — sample-format conversion, downmix and a WAV reader.
//!
//! Build needs: `libasound2-dev` and `pkg-config` (cpal), `libclang-dev`
//! (feature `v4l`: bindgen), `libgstreamer1.0-dev` and
//! `libgstreamer-plugins-base1.0-dev` (feature `gstreamer`).

pub mod audio;
#[cfg(feature = "v4l")]
pub mod camera;
pub mod clip;
pub mod clock;
pub mod device_match;
pub mod file_source;
#[cfg(feature = "gstreamer")]
pub mod gst;
pub mod list;
#[cfg(feature = "mic")]
pub mod mic;
#[cfg(any(feature = "v4l", feature = "gstreamer"))]
mod pixels;
pub mod ring;
pub mod source;
pub mod spec;
pub mod supervise;
