//! # emogate-device
//!
//! Capture: where frames and samples come from, and when.
//!
//! ## How data moves
//!
//! ```text
//!  spec string ──spec::open_video/open_audio──▶ Box<dyn VideoSource / AudioSource>
//!                                                     │ (supervise: one thread each,
//!                                                     │  reopened with backoff)
//!  VideoSource::open ─▶ VideoStream::next_frame ─▶ VideoFeed (newest frames) ─▶ pipeline
//!  AudioSource::open ─▶ AudioStream pushes mono f32 ─▶ ring ─▶ AudioConsumer ─▶ pipeline
//!                       (cpal callback, GStreamer, WAV file)
//! ```
//!
//! Every frame and sample block is stamped on one [`source::Clock`]: the
//! real monotonic clock for live capture, a virtual one for replay as
//! fast as possible. Pixels and samples are the vocabulary of
//! `emogate_media` ([`emogate_media::Frame`], nanosecond stamps).
//!
//! ## Parts
//!
//! * [`source`] — the seams every backend implements:
//!   [`source::VideoSource`] / [`source::AudioSource`] (a place media
//!   comes from, opened any number of times) and the streams they open,
//!   [`source::VideoStream`] (pulled frame by frame) and
//!   [`source::AudioStream`] (pushing into a ring); [`source::CaptureError`]
//!   says whether retrying can help. It depends on no backend.
//! * [`spec`] — the one entry point the CLI uses: `v4l:0`, `v4l:NAME`,
//!   `gst:PIPELINE`, `mic:NAME`, `mic:default` or a file path become a
//!   source; a spec whose cargo feature is not built is
//!   [`source::CaptureError::NotBuilt`].
//! * [`supervise`] — one thread per source that opens it, reports
//!   failures as [`supervise::SourceReport`]s and reopens with backoff (one
//!   retry loop for both modalities); [`supervise::VideoFeed`] holds the
//!   newest frames, bounded.
//! * [`ring::audio_ring`] — the preallocated, lock-free single-producer /
//!   single-consumer ring audio is written into. The producer side never
//!   allocates, locks or blocks: when the consumer falls behind it drops
//!   the newest samples and counts them.
//! * [`clock::CaptureClock`] / [`clock::RealClock`] — the monotonic clock
//!   of live capture; [`clock::VirtualClock`] — the clock of replay "as
//!   fast as possible", advanced by the pipeline one window at a time.
//! * Live backends:
//!   - [`mic::MicSource`] — microphones through cpal. On Linux that is
//!     ALSA: no sound server needed on a robot, and PulseAudio or PipeWire
//!     desktops are reached through ALSA's `pulse`/`pipewire` devices. The
//!     data callback ([`mic::MicCallback`]) converts any sample format and
//!     channel count to mono `f32` without allocating, locking or blocking.
//!   - `camera::CameraSource` (feature `v4l`, on by default) — USB/UVC
//!     cameras through V4L2. YUYV/NV12/grey/RGB pass through, MJPEG is
//!     decoded.
//!   - `gst::GstVideoSource` / `gst::GstAudioSource` (feature
//!     `gstreamer`, off by default) — any pipeline ending in an appsink:
//!     a Jetson CSI camera reaches its ISP only through
//!     `nvarguscamerasrc`; also network streams and containers.
//! * Files:
//!   - [`clip`] opens video files (a still image, a folder of frames, a
//!     Y4M clip) and reads their frames on demand ([`clip::ClipReader`]:
//!     a Y4M clip is read frame by frame, not held in memory).
//!   - [`file_source::VideoFile`] and [`file_source::WavFile`] play a
//!     clip and WAV audio as sources, paced on the clock, optionally
//!     looped.
//!   - [`audio`] — sample-format conversion, downmix, and WAV reading
//!     (through `hound`).
//! * [`device_match`] — choosing a device by what the user typed (an
//!   index, or a fragment of its name); [`list::list_devices`] — cameras
//!   and microphones with the spec that selects each (`emogate devices`).
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
