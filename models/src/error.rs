//! The one error type of this crate. Every variant names the file it is about
//! and, where there is one, the field inside it, so a user can find the fault
//! without a debugger.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading, editing or writing a model or
/// an adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read or a write.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ONNX `ModelProto` (often: a truncated download).
    #[error("{}: not a valid ONNX model ({source}); is the file truncated or not ONNX?", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    /// A field holds a value we cannot use; `field` says where, `message`
    /// says what was expected.
    #[error("{}: {field}: {message}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// Adapter modules that do not resolve to exactly one weight of the graph.
    #[error("{}: {}", model.display(), describe_unresolved(unmatched, ambiguous))]
    Unresolved {
        model: PathBuf,
        unmatched: Vec<String>,
        ambiguous: Vec<(String, Vec<String>)>,
    },
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
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
}

fn describe_unresolved(unmatched: &[String], ambiguous: &[(String, Vec<String>)]) -> String {
    let mut parts = Vec::new();
    if !unmatched.is_empty() {
        parts.push(format!(
            "adapter modules not found in the graph: {}",
            unmatched.join(", ")
        ));
    }
    for (module, candidates) in ambiguous {
        parts.push(format!(
            "adapter module `{module}` is ambiguous: it matches {}",
            candidates.join(", ")
        ));
    }
    parts.join("; ")
}
