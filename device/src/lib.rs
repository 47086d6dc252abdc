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
//! * [`replay`] decodes video files (a still image, a folder of frames, a
//!   Y4M clip); [`playback::VideoFile`] and [`playback::WavFile`] play
//!   them and WAV audio as sources, paced on the clock, optionally looped.
//! * [`audio`] — sample-format conversion, downmix and a WAV reader.

pub mod audio;
#[cfg(feature = "v4l")]
pub mod camera;
pub mod clock;
#[cfg(feature = "gstreamer")]
pub mod gst;
pub mod list;
pub mod mic;
pub mod names;
#[cfg(any(feature = "v4l", feature = "gstreamer"))]
mod pixels;
pub mod playback;
pub mod replay;
pub mod ring;
pub mod source;
pub mod spec;
pub mod supervise;
