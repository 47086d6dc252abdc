//! # emogate-engine
//!
//! The runtime side of emogate: media in, emotions out. A brief overview
//! of the principal types:
//!
//! * [`model::AffectModel`] — an ONNX affect model with its manifest, a
//!   backend, and the gate_proj adapters it can switch between at run time
//!   ([`model::Preparer`] builds the next one on another thread).
//! * [`backend::Backend`] — one planned model that runs on tensors:
//!   [`backend::tract::TractBackend`] (pure Rust, the default) and, with the
//!   `ort` feature, `backend::ort::OrtBackend` (ONNX Runtime: TensorRT, CUDA, CPU).
//! * [`pre`] — preprocessing exactly as in training: video crop, resize,
//!   normalize, layout; audio downmix, resample, librosa-equal log-mel.
//! * [`post`] — output kinds, smoothing, confidence floor, change hysteresis.
//! * [`features::Featurizer`] — every model input from the newest frame and
//!   the last `window_s` of audio.
//! * [`pipeline::Pipeline`] — sources → windows → model → events → sinks,
//!   on its own threads, with bounded latency and memory, real-time or
//!   replayed as fast as possible.
//! * [`event::Message`] — what is published: emotion events (fields of
//!   `hri_msgs/Expression` plus a capture `header.stamp`) and source notices.
//! * [`sink::Sink`] — where messages go: JSON lines, UDP datagrams, HTTP
//!   (Server-Sent Events, `/status`, a live dashboard).

pub mod backend;
pub mod config;
pub mod event;
pub mod features;
pub mod model;
pub mod pipeline;
pub mod post;
pub mod pre;
pub mod sink;
