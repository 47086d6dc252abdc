//! Model inputs from media: every manifest input built from the newest
//! video frame and the last `window_s` seconds of audio, exactly as in
//! training (crop, resize, normalize, layout; log-mel or waveform).

use emogate_media::Frame;
use emogate_models::manifest::{AudioFeatures, AudioInput, AudioLayout, InputSpec, Manifest};

use crate::Tensor;
use crate::pre::PreError;
use crate::pre::mel::MelConfig;
use crate::pre::mel_stream::{MelStream, MelStreamStats};
use crate::pre::video::{VideoPre, VideoSpec};

/// One model input's preprocessing.
enum InputPre {
    Video(VideoPre),
    Audio {
        spec: AudioInput,
        /// Incremental: consecutive windows of a stream share most frames.
        mel: Option<MelStream>,
    },
}

/// Builds model inputs from the newest frame and the latest audio.
pub struct Featurizer {
    inputs: Vec<InputPre>,
    shapes: Vec<Vec<usize>>,
}

impl Featurizer {
    /// Prepares the preprocessing the manifest describes.
    ///
    /// # Errors
    /// [`PreError`] for parameters the preprocessors refuse.
    pub fn new(manifest: &Manifest) -> Result<Self, PreError> {
        let mut inputs = Vec::new();
        let mut shapes = Vec::new();
        for spec in &manifest.inputs {
            shapes.push(Manifest::input_shape(spec));
            inputs.push(match spec {
                InputSpec::Video(v) => InputPre::Video(VideoPre::new(VideoSpec::from_manifest(v))?),
                InputSpec::Audio(a) => InputPre::Audio {
                    mel: match &a.features {
                        AudioFeatures::LogMel(m) => {
                            Some(MelStream::new(MelConfig::from_manifest(m, a.sample_rate))?)
                        }
                        AudioFeatures::Waveform => None,
                    },
                    spec: a.clone(),
                },
            });
        }
        Ok(Featurizer { inputs, shapes })
    }

    /// The audio input, if the model has one (its rate and window).
    pub fn audio(&self) -> Option<&AudioInput> {
        self.inputs.iter().find_map(|i| match i {
            InputPre::Audio { spec, .. } => Some(spec),
            InputPre::Video(_) => None,
        })
    }

    /// The log-mel's work so far (frames computed and reused), if the
    /// model takes log-mel features.
    pub fn mel_stats(&self) -> Option<MelStreamStats> {
        self.inputs.iter().find_map(|i| match i {
            InputPre::Audio { mel: Some(mel), .. } => Some(mel.stats()),
            _ => None,
        })
    }

    /// Whether the model has a video input.
    pub fn wants_video(&self) -> bool {
        self.inputs.iter().any(|i| matches!(i, InputPre::Video(_)))
    }

    /// Builds the inputs, in manifest order. A missing modality is fed as
    /// zeros (the caller marks the event degraded).
    ///
    /// # Errors
    /// [`PreError`] for a frame or window of the wrong size.
    pub fn build(
        &mut self,
        frame: Option<&Frame>,
        audio: Option<&[f32]>,
    ) -> Result<Vec<Tensor>, PreError> {
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for (input, shape) in self.inputs.iter_mut().zip(&self.shapes) {
            let len = shape.iter().product();
            let mut out = vec![0f32; len];
            match input {
                InputPre::Video(pre) => {
                    if let Some(frame) = frame {
                        pre.process(frame, None, &mut out)?;
                    }
                }
                InputPre::Audio { spec, mel } => {
                    if let Some(samples) = audio {
                        match mel {
                            Some(mel) => {
                                let mut features = vec![0f32; len];
                                mel.compute_into(samples, &mut features)?;
                                // The spectrogram is [mels, frames]; NTC wants it transposed.
                                if spec.layout == AudioLayout::Ntc {
                                    let (mels, frames) = (shape[2], shape[1]);
                                    for m in 0..mels {
                                        for t in 0..frames {
                                            out[t * mels + m] = features[m * frames + t];
                                        }
                                    }
                                } else {
                                    out = features;
                                }
                            }
                            None => {
                                let n = samples.len().min(len);
                                out[len - n..].copy_from_slice(&samples[samples.len() - n..]);
                            }
                        }
                    }
                }
            }
            tensors.push(Tensor::f32(shape.clone(), out));
        }
        Ok(tensors)
    }
}
