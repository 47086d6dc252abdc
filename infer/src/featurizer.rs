//! Model inputs from media: every manifest input built from the newest
//! video frame and the last `window_s` seconds of audio, exactly as in
//! training (crop, resize, normalize, layout; log-mel or waveform).

use emogate_media::Frame;
use emogate_models::manifest::{
    AudioFeatures, AudioInput, AudioLayout, FaceCrop, InputSpec, Manifest,
};

use crate::Tensor;
use crate::face::Face;
use crate::face::crop::render_face;
use crate::pre::PreError;
use crate::pre::mel::MelConfig;
use crate::pre::mel_stream::{MelStream, MelStreamStats};
use crate::pre::video::{VideoPre, VideoSpec};

/// One model input's preprocessing.
enum InputPre {
    Video {
        pre: VideoPre,
        /// Set when the model takes face crops.
        face: Option<FaceCrop>,
    },
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
                InputSpec::Video(v) => InputPre::Video {
                    pre: VideoPre::new(VideoSpec::from_manifest(v))?,
                    face: v.crop.face().copied(),
                },
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
            InputPre::Video { .. } => None,
        })
    }

    /// How the video input is cut from each face, when the model takes
    /// face crops (`"crop": {"face": …}`).
    pub fn face_crop(&self) -> Option<&FaceCrop> {
        self.inputs.iter().find_map(|i| match i {
            InputPre::Video { face, .. } => face.as_ref(),
            InputPre::Audio { .. } => None,
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
        self.inputs
            .iter()
            .any(|i| matches!(i, InputPre::Video { .. }))
    }

    /// Builds the inputs for a batch of faces in `frame`, in manifest
    /// order: the video input holds one crop per face along the batch axis
    /// (`faces.len()` in place of the leading 1), cut as the manifest's
    /// `crop` says (the whole frame when it says `"frame"`); the audio
    /// input is computed once and repeated for each face.
    ///
    /// # Errors
    /// [`PreError`] for a frame or window of the wrong size, a crop the
    /// preprocessor refuses, or an empty `faces`.
    pub fn build_faces(
        &mut self,
        frame: &Frame,
        faces: &[Face],
        audio: Option<&[f32]>,
    ) -> Result<Vec<Tensor>, PreError> {
        if faces.is_empty() {
            return Err(PreError::invalid("faces in a batch", 0, "at least 1"));
        }
        let n = faces.len();
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for i in 0..self.inputs.len() {
            let shape = self.shapes[i].clone();
            let len: usize = shape.iter().product();
            let mut batch_shape = shape.clone();
            batch_shape[0] = n;
            let mut out = vec![0f32; len * n];
            match &mut self.inputs[i] {
                InputPre::Video { pre, face } => {
                    for (f, block) in faces.iter().zip(out.chunks_exact_mut(len)) {
                        match face {
                            Some(crop) => render_face(pre, frame, f, crop, block)?,
                            None => pre.process(frame, None, block)?,
                        }
                    }
                }
                InputPre::Audio { .. } => {
                    if let Some(samples) = audio {
                        self.audio_into(i, samples, &mut out[..len])?;
                        let (first, rest) = out.split_at_mut(len);
                        for block in rest.chunks_exact_mut(len) {
                            block.copy_from_slice(first);
                        }
                    }
                }
            }
            tensors.push(Tensor::f32(batch_shape, out));
        }
        Ok(tensors)
    }

    /// Input `i`'s audio features for `samples` into `out` (its length).
    fn audio_into(&mut self, i: usize, samples: &[f32], out: &mut [f32]) -> Result<(), PreError> {
        let shape = &self.shapes[i];
        let len = out.len();
        let InputPre::Audio { spec, mel } = &mut self.inputs[i] else {
            return Ok(());
        };
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
                    out.copy_from_slice(&features);
                }
            }
            None => {
                let n = samples.len().min(len);
                out[len - n..].copy_from_slice(&samples[samples.len() - n..]);
            }
        }
        Ok(())
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
        for i in 0..self.inputs.len() {
            let shape = self.shapes[i].clone();
            let len = shape.iter().product();
            let mut out = vec![0f32; len];
            match &mut self.inputs[i] {
                InputPre::Video { pre, .. } => {
                    if let Some(frame) = frame {
                        pre.process(frame, None, &mut out)?;
                    }
                }
                InputPre::Audio { .. } => {
                    if let Some(samples) = audio {
                        self.audio_into(i, samples, &mut out)?;
                    }
                }
            }
            tensors.push(Tensor::f32(shape, out));
        }
        Ok(tensors)
    }
}
