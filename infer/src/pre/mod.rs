//! Preprocessing: turning what a device captured into the tensor values a
//! model was trained on.
//!
//! * [`resample`] — band-limited rate conversion to the model's rate.
//! * [`mel`] — log-mel features bit-for-bit close to librosa.
//! * [`mel_stream`] — the same features for a sliding window, computing
//!   only the frames each hop adds.
//! * [`video`] — pixel-format conversion, crop, resize, normalize, layout.
//!
//! Each stage owns its scratch memory, so the steady-state path of a
//! pipeline allocates nothing per window or per frame.

pub mod mel;
pub mod mel_stream;
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
    /// A frame whose bytes do not fit its size and layout.
    #[error(transparent)]
    Frame(#[from] emogate_media::FrameError),
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

/// Test fixtures: a WAV file as interleaved f32 samples in -1..1.
#[cfg(test)]
pub(crate) fn read_wav_fixture(path: &std::path::Path) -> (u32, u16, Vec<f32>) {
    let mut reader = hound::WavReader::open(path).expect("readable WAV fixture");
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| s.expect("sample"))
            .collect(),
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.expect("sample") as f32 / scale)
                .collect()
        }
    };
    (spec.sample_rate, spec.channels, samples)
}
