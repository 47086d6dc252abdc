//! The one error type of this crate. Every variant names the file (or the
//! option) it is about, the field inside it where there is one, and what
//! was expected.
//!
//! A variant that wraps another error repeats that error's text in its own
//! message, so `{error}` alone is complete, and also keeps it as the
//! [`source`](std::error::Error::source); [`crate::cli::describe`] prints
//! such a chain without saying anything twice.

use std::path::{Path, PathBuf};

use emogate_infer::backend::BackendError;
use emogate_infer::pre::PreError;

use crate::npz::NpzError;

/// Everything that can go wrong in the converter's library side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read or a write.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done: `reading`, `writing`, `creating`.
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value inside a file that is not what was expected.
    #[error("{}: {field}: {message}", path.display())]
    Field {
        path: PathBuf,
        /// Where in the file: `graph input \`x\``, `array \`ids\``.
        field: String,
        /// What it is, and what was expected.
        message: String,
    },
    /// Options that do not go together, or a value out of range.
    #[error("{0}")]
    Usage(String),
    /// A step on a model or adapter file failed in `emogate-models`; its
    /// message names the file and the field.
    #[error("{what}: {source}")]
    Model {
        /// The step, naming the file: `loading the reference a.onnx`.
        what: String,
        #[source]
        source: emogate_models::Error,
    },
    /// A runtime could not load or run a model.
    #[error("{what}: {source}")]
    Backend {
        /// The step, naming the file and the runtime.
        what: String,
        #[source]
        source: BackendError,
    },
    /// The manifest's preprocessing refused its parameters or an input.
    #[error("{what}: {source}")]
    Features {
        what: String,
        #[source]
        source: PreError,
    },
    /// An `.npz` file that cannot be read.
    #[error("{}: not a readable .npz file: {source}", path.display())]
    Npz {
        path: PathBuf,
        #[source]
        source: NpzError,
    },
    /// A model input that cannot be fed as the graph wants it.
    #[error("input `{input}`: {message}")]
    Input { input: String, message: String },
    /// A model output that does not compare (missing, of another type or
    /// shape than the reference's).
    #[error("output `{output}`: {message}")]
    Output { output: String, message: String },
    /// A report that could not be serialized.
    #[error("serializing the report for {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn field(
        path: impl AsRef<Path>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Field {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    pub(crate) fn model(what: impl Into<String>, source: emogate_models::Error) -> Self {
        Error::Model {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn input(input: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Input {
            input: input.into(),
            message: message.into(),
        }
    }

    pub(crate) fn output(output: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Output {
            output: output.into(),
            message: message.into(),
        }
    }
}
