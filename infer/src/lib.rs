//! # emogate-infer
//!
//! Media in, model outputs out: everything between a captured frame or a
//! window of samples and the numbers an affect model returns. A brief
//! overview, in the order data moves through it:
//!
//! * [`Featurizer`] — every model input the manifest describes, built from
//!   the newest [`emogate_media::Frame`] and the last `window_s` seconds of
//!   audio, exactly as in training. It drives [`pre`]: video crop, resize,
//!   normalize and layout ([`pre::video`]); band-limited resampling
//!   ([`pre::resample`]); librosa-equal log-mel ([`pre::mel`]).
//! * [`AffectModel`] — an ONNX affect model with its manifest and the
//!   gate_proj adapters it can switch between: adapters are merged in
//!   memory with the converter's own merge code and the next backend is
//!   built ([`Preparer`], any thread) while the current one keeps serving.
//! * [`face::FaceDetector`] — faces in a frame (BlazeFace, on the same
//!   runtimes), for models trained on face crops.
//! * [`vad::VoiceDetector`] — voice activity (Silero VAD, same runtimes):
//!   the share of an audio window's 32 ms chunks that are speech, streamed
//!   so overlapping windows run each sample once.
//! * [`backend::Runtime`] → [`backend::Backend`] — a runtime loads a model
//!   (the base, or the base with merged weights) into a backend that runs
//!   [`Tensor`]s: [`backend::tract`] (pure Rust, the embedded default) and,
//!   with the `ort` feature, `backend::ort` (ONNX Runtime: TensorRT, CUDA,
//!   CPU). How each runtime takes a model is behind the trait.
//!
//! The crate reads model files through `emogate-models` and frames through
//! `emogate-media`; it knows nothing of capture devices, pipelines or
//! outputs, so the offline converter (`emogate-convert verify`) uses the
//! same preprocessing and backends without linking any of them.

pub mod affect;
pub mod backend;
pub mod face;
pub mod featurizer;
pub mod pre;
mod tensor;
pub mod vad;

pub use affect::{
    AffectError, AffectModel, BackendChoice, ModelSpec, Preparer, parse_adapter_spec,
};
pub use featurizer::Featurizer;
pub use tensor::{Tensor, TensorData};
