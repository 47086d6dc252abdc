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
//! * [`offline::Featurizer`], [`offline::EventBuilder`], [`offline::run_offline`]
//!   — windows from recordings and the published [`offline::Event`].

pub mod backend;
pub mod event;
pub mod model;
pub mod offline;
pub mod post;
pub mod pre;
pub mod sink;
