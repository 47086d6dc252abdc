//! Preprocessing: turning what a device captured into the tensor values a
//! model was trained on.
//!
//! * [`audio`] — sample-format conversion, downmixing, a WAV reader.
//! * [`resample`] — band-limited rate conversion to the model's rate.
//! * [`mel`] — log-mel features bit-for-bit close to librosa.
//! * [`video`] — pixel-format conversion, crop, resize, normalize, layout.
//!
//! Each stage owns its scratch memory, so the steady-state path of a
//! pipeline allocates nothing per window or per frame.

pub mod audio;
pub mod mel;
pub mod resample;
pub mod video;

use std::path::PathBuf;

/// Errors of preprocessing. Each names the value that was wrong and what
/// was expected, so a misconfigured manifest or device is found at once.
#[derive(Debug, thiserror::Error)]
pub enum PreError {
    /// A parameter or input is out of range.
    #[error("{what} is {got}; expected {expected}")]
    Invalid {
        what: &'static str,
        got: String,
        expected: String,
    },
    /// A caller-provided buffer has the wrong length.
    #[error("{what} holds {got} values; expected {expected}")]
    BufferSize {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A WAV file is malformed or uses an encoding this reader does not decode.
    #[error("{}: {message}", path.display())]
    Wav { path: PathBuf, message: String },
}

impl PreError {
    /// Shorthand for [`PreError::Invalid`].
    pub(crate) fn invalid(
        what: &'static str,
        got: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        PreError::Invalid {
            what,
            got: got.to_string(),
            expected: expected.into(),
        }
    }

    /// Checks a caller-provided buffer length.
    pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), Self> {
        if got == expected {
            Ok(())
        } else {
            Err(PreError::BufferSize {
                what,
                got,
                expected,
            })
        }
    }
}
