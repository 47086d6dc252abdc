//! Inference backends: a [`Runtime`] loads an ONNX model (the base, or the
//! base with an adapter merged in memory) into a [`Backend`], which runs it
//! on tensors. Callers never know which runtime is underneath: how a model
//! reaches tract (an in-memory graph) or ONNX Runtime (a file plus
//! initializer overrides) is each runtime's business.

#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;

use std::path::PathBuf;

use emogate_models::merge::MergePlan;
use emogate_models::onnx::OnnxModel;
use emogate_models::onnx::proto::ModelProto;

use crate::Tensor;

/// Errors of any backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{}: cannot load model: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("{model}: input {index}: {message}")]
    Input {
        model: String,
        index: usize,
        message: String,
    },
    #[error("{model}: inference failed: {message}")]
    Run { model: String, message: String },
    #[error("{field}: {message}")]
    Config { field: String, message: String },
}

/// A loaded model that can be run.
pub trait Backend: Send {
    /// `tract` or `ort`, for logs and `/status`.
    fn name(&self) -> &'static str;
    /// The execution providers actually in use, best first (what a
    /// session got, not what was asked for), for logs and `/status`.
    fn providers(&self) -> Vec<&'static str> {
        vec!["cpu"]
    }
    /// Runs the model on inputs given in the model's input order.
    ///
    /// # Errors
    /// [`BackendError::Input`] for a tensor of the wrong type or shape,
    /// [`BackendError::Run`] when the runtime fails.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;

    /// How many items one [`Backend::run`] may take along the leading
    /// (batch) axis of a model whose inputs have a free one: ONNX Runtime
    /// any number (`usize::MAX`); tract 1, the batch it planned for.
    fn max_batch(&self) -> usize {
        1
    }

    /// The kernels the runtime chose, where it says (tract); for
    /// `emogate info --verbose`.
    fn kernels(&self) -> Option<tract::KernelReport> {
        None
    }

    /// Sets the values of the model's last `values.len()` inputs: every
    /// later [`Backend::run`] feeds them after the caller's inputs. This is
    /// how an adapter slot graph ([`emogate_models::slots`]) switches
    /// adapters: the values are converted once here, not on every run.
    ///
    /// # Errors
    /// [`BackendError::Input`] for a value the runtime cannot take.
    fn bind(&mut self, values: &[Tensor]) -> Result<(), BackendError>;
}

/// A runtime that turns ONNX models into [`Backend`]s: tract
/// ([`tract::TractRuntime`]) or ONNX Runtime (`ort::OrtRuntime`, feature
/// `ort`). One value serves many loads, from any thread: an adapter switch
/// loads the next backend while the current one keeps serving.
pub trait Runtime: Send + Sync {
    /// `tract` or `ort`, for logs and `/status`.
    fn name(&self) -> &'static str;

    /// Loads `model` with `merged`'s weights in place of the initializers it
    /// adapts (`None`: the model as it is). `model` is never modified.
    ///
    /// `inputs` gives the element type and shape of each graph input, in
    /// graph order, so a runtime can bind symbolic dimensions.
    ///
    /// # Errors
    /// [`BackendError::Load`] naming the model file and the runtime's
    /// reason; [`BackendError::Config`] for options the runtime refuses.
    fn load(
        &self,
        model: &OnnxModel,
        merged: Option<&MergePlan<'_>>,
        inputs: &[InputFact],
    ) -> Result<Box<dyn Backend>, BackendError>;

    /// Loads `graph`, an edited form of `model`'s graph (an adapter slot
    /// graph) whose external tensors are still `model`'s side files.
    /// `model` is never modified; `inputs` as in [`Runtime::load`], for
    /// every input of `graph`.
    ///
    /// # Errors
    /// As [`Runtime::load`].
    fn load_graph(
        &self,
        model: &OnnxModel,
        graph: &ModelProto,
        inputs: &[InputFact],
    ) -> Result<Box<dyn Backend>, BackendError>;
}

/// Element type and shape of one graph input.
#[derive(Debug, Clone, PartialEq)]
pub enum InputFact {
    F32(Vec<usize>),
    I64(Vec<usize>),
}
