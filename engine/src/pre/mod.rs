//! Preprocessing: turning what a device captured into the tensor values a
//! model was trained on.
//!
//! * [`audio`] — sample-format conversion, downmixing, a WAV reader
//!   (re-exported from `emogate_device::audio`, where capture needs them).
//! * [`resample`] — band-limited rate conversion to the model's rate.
//! * [`mel`] — log-mel features bit-for-bit close to librosa.
//! * [`video`] — pixel-format conversion, crop, resize, normalize, layout.
//!
//! Each stage owns its scratch memory, so the steady-state path of a
//! pipeline allocates nothing per window or per frame.

pub use emogate_device::audio;
pub mod mel;
pub mod resample;
pub mod video;

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
    /// Audio decoding or conversion failed (a WAV file, a channel count).
    #[error(transparent)]
    Audio(#[from] emogate_device::audio::AudioError),
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
