//! # emogate-tools
//!
//! Offline tooling around [`emogate_models`]. A brief overview:
//!
//! * `emogate-convert` (binary) — the converter CLI: `merge` (PEFT LoRA into
//!   ONNX weights), `quantize` (fp16, int8 QDQ, int8 dynamic), `verify`
//!   (how far a converted model's outputs moved, on tract and ONNX Runtime)
//!   and `manifest set|show`.
//! * [`verify`] — input generation (manifest-driven or from shapes, seeded),
//!   running both models, error metrics; [`npz`] reads `.npz` inputs;
//!   [`calibrate`] collects layer-input statistics for GPTQ rounding.
//! * [`synth`] — writes synthetic models and adapters of real shapes
//!   (e.g. a Qwen2.5-0.5B-shaped decoder) for benchmarks.
//! * [`cli`] — what the binaries share: logging set-up, progress bars that
//!   show on a terminal and stay quiet in pipes, atomic report files.

pub mod calibrate;
pub mod cli;
pub mod error;
pub mod npz;
pub mod rng;
pub mod synth;
pub mod verify;

pub use error::{Error, Result};
