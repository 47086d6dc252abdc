//! # emogate-tools
//!
//! Offline tooling around [`emogate_models`] (model files) and
//! [`emogate_infer`] (runtimes, preprocessing). Nothing here captures
//! media or serves anything: no engine, no devices.
//!
//! The parts, and how data moves through them:
//! * `emogate-convert` (binary) parses arguments into a job, hands it to
//!   the library, prints the report and sets the exit code.
//! * [`convert`] — `merge`, `quantize` and `manifest`: option checks,
//!   loading (errors say which file), the output folder, then the
//!   conversion in `emogate-models`, which writes the model and returns a
//!   report. `quantize --calibrate` first runs [`calibrate`], which feeds
//!   seeded inputs through tract and collects each linear layer's input
//!   statistics for GPTQ.
//! * [`verify`] — a reference and a candidate model: their runtime inputs,
//!   input sets (an `.npz` file read by [`npz`], or seeded from the
//!   manifest or the input shapes), both models run on tract and/or ONNX
//!   Runtime, per-output error metrics, and the thresholds' pass/fail.
//! * The gate_proj experiment's commands: [`analyze`] (where tuning moved
//!   the weights: ONNX or safetensors, or an adapter's factors), [`graft`]
//!   (`transfer` modules from a donor, `ablate` them, cut an adapter down)
//!   and [`eval`] (accuracy, UAR, F1, valence/arousal CCC with bootstrap
//!   intervals, on a labelled `.npz` or a `labels.csv` dataset featurized
//!   by the engine's featurizer). Modules resolve as merge resolves them.
//! * [`synth`] — synthetic models and adapters of real shapes (a
//!   Qwen2.5-0.5B-shaped decoder) for benchmarks and tests.
//! * Shared: [`atomic`] (every output is written to a temp file and
//!   renamed), [`rng`] (the seeded generator), [`cli`] (logging, progress
//!   bars, error chains for the binaries), [`Error`] (every error names the
//!   file, the field and what was expected).
//!
//! The benchmark harnesses (`emogate-bench-merge`, `emogate-bench-quantize`,
//! `emogate-bench-analyze`)
//! are binaries over the same library.

pub mod analyze;
pub mod atomic;
pub mod calibrate;
pub mod cli;
pub mod convert;
pub mod error;
pub mod eval;
pub mod graft;
pub mod npz;
pub mod rng;
pub mod synth;
pub mod verify;

pub use error::{Error, Result};
