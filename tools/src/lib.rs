//! # emogate-tools
//!
//! Offline tooling around [`emogate_models`]. A brief overview:
//!
//! * `emogate-convert` (binary) — the converter CLI: `merge` (PEFT LoRA into
//!   ONNX weights) and `manifest set|show`.
//! * [`synth`] — writes synthetic models and adapters of real shapes
//!   (e.g. a Qwen2.5-0.5B-shaped decoder) for benchmarks.
//! * [`cli`] — what the binaries share: logging set-up, progress bars that
//!   show on a terminal and stay quiet in pipes, atomic report files.

pub mod cli;
pub mod synth;
