//! # emogate-models
//!
//! Model artifacts, with no runtime dependencies: what `emogate-convert`
//! and the engine read, edit and write.
//!
//! The parts, from the file up:
//!
//! * [`onnx`] — [`onnx::OnnxModel`], an ONNX model file decoded, with its
//!   external data (side files) checked and readable one tensor at a time;
//!   [`onnx::save_model`] writes an edited model back atomically.
//! * The graph layer, in [`onnx`]: [`onnx::GraphIndex`] (initializers by
//!   name, each value's producer and consumers, the inputs a caller feeds),
//!   [`onnx::NodeExt`] (a node's attributes by name and type),
//!   [`onnx::NameAllocator`] (the one rule for fresh names) and
//!   [`onnx::linear`] ([`onnx::linear::LinearIndex`]: every `MatMul`/`Gemm`
//!   weight, its layout, and the module paths exporters give it).
//! * [`onnx::params`] ([`onnx::params::ParamIndex`]) — every trained tensor
//!   (linear weights and biases, norms, embeddings, heads) by the module that
//!   owns it, paired across models by the resolver merge uses;
//!   [`surgery`] copies chosen modules' tensors from a donor bit for bit
//!   (`transfer`, `ablate --mode revert`).
//! * [`checkpoint::Checkpoint`] — a Hugging Face safetensors checkpoint
//!   (single or sharded), memory-mapped and read one tensor at a time.
//! * [`manifest::Manifest`] — how a model describes its inputs (video,
//!   audio features) and outputs, embedded in the ONNX file or as a sidecar.
//! * [`peft::Adapter`] — a Hugging Face PEFT LoRA adapter folder
//!   (`adapter_config.json` + `adapter_model.safetensors`).
//! * [`merge::MergePlan`] — an adapter resolved against a graph: which
//!   initializer each module adapts, in which orientation, and the merged
//!   values; [`merge::merge_to_file`] streams them into a new model.
//! * [`slots::SlotGraph`] — the same adapters as graph inputs instead: a
//!   low-rank branch on each adapted layer, so a runtime plans the model
//!   once and an adapter switch only changes the values it is fed.
//! * [`quantize::quantize_to_file`] — fp16 conversion that keeps
//!   normalization and Softmax in f32, int8 weight-only QDQ (per-channel,
//!   symmetric, TensorRT's form, optionally GPTQ-rounded) and ONNX Runtime's
//!   dynamic int8 form, chosen by module path like the merge.
//! * [`staging`] — the temp files outputs are written to and renamed from,
//!   and the removal of those a killed run left behind.
//! * [`Error`] — every failure names the file, the field and what was expected.
//!
//! How data moves: a file becomes an [`onnx::OnnxModel`]; a pass indexes its
//! graph once ([`onnx::GraphIndex`], then [`onnx::linear::LinearIndex`]),
//! decides what to change (a merge resolves adapter modules to linear
//! layers, a quantization selects layers by module path), edits a clone of
//! the proto with names from one [`onnx::NameAllocator`], and hands the
//! edited proto plus the changed tensors to [`onnx::save_model`], which
//! writes the new file and its side file atomically. A merge streams: it
//! holds only the tensors of the modules in flight; quantization rewrites
//! most weights, so it reads them all into memory first.

pub mod checkpoint;
pub mod error;
pub mod manifest;
pub mod merge;
pub mod onnx;
pub mod peft;
pub mod quantize;
pub mod slots;
pub mod staging;
pub mod surgery;

pub use error::{Error, Result};
