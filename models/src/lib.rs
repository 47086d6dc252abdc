//! # emogate-models
//!
//! Model artifacts, with no runtime dependencies: what `emogate-convert`
//! and the engine read, edit and write.
//!
//! A brief overview of the principal types:
//!
//! * [`onnx::OnnxModel`] — an ONNX model file decoded, with its external
//!   data (side files) checked and readable one tensor at a time;
//!   [`onnx::save_model`] writes an edited model back atomically.
//! * [`manifest::Manifest`] — how a model describes its inputs (video,
//!   audio features) and outputs, embedded in the ONNX file or as a sidecar.
//! * [`peft::Adapter`] — a Hugging Face PEFT LoRA adapter folder
//!   (`adapter_config.json` + `adapter_model.safetensors`).
//! * [`merge::MergePlan`] — an adapter resolved against a graph: which
//!   initializer each module adapts, in which orientation, and the merged
//!   values; [`merge::merge_to_file`] streams them into a new model.
//! * [`quantize::quantize_to_file`] — fp16 conversion that keeps
//!   normalization and Softmax in f32, int8 weight-only QDQ (per-channel,
//!   symmetric, TensorRT's form, optionally GPTQ-rounded) and ONNX Runtime's
//!   dynamic int8 form, chosen by module path like the merge.
//! * [`Error`] — every failure names the file, the field and what was expected.

pub mod error;
pub mod manifest;
pub mod merge;
pub mod onnx;
pub mod peft;
pub mod quantize;

pub use error::{Error, Result};
