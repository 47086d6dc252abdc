//! # emogate-device
//!
//! Capture: where frames and samples come from, and when. A brief overview
//! of the principal types:
//!
//! * [`clock::CaptureClock`] — one monotonic clock that stamps every frame
//!   and audio chunk, so the engine can align modalities by capture time.
//! * [`ring::audio_ring`] — the preallocated, lock-free single-producer /
//!   single-consumer ring an audio callback writes into. The callback side
//!   ([`ring::AudioProducer`]) never allocates, locks or blocks: when the
//!   consumer falls behind it drops the newest samples and counts them.
//! * [`replay::VideoReplay`] — video from a still image, a folder of frames
//!   or a Y4M clip, with per-frame timestamps.

pub mod clock;
pub mod replay;
pub mod ring;
