//! Inference backends. A [`Backend`] runs one ONNX model on named input
//! tensors; the pipeline never knows which runtime is underneath.

#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;

use std::path::PathBuf;

/// Values of one tensor, in the element types affect models use.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense row-major tensor passed to or returned by a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Tensor {
            shape,
            data: TensorData::F32(values),
        }
    }

    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        Tensor {
            shape,
            data: TensorData::I64(values),
        }
    }

    /// The values as `f32`, if that is the element type.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }
}

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
}
