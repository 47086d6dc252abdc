//! Turning recorded media into model windows and events, without threads:
//! what `emogate run --video FILE --audio FILE` does, and the reference
//! the streaming pipeline is checked against.
//!
//! * [`Featurizer`] builds every manifest input from the newest video frame
//!   and the last `window_s` seconds of audio, exactly as in training
//!   (crop, resize, normalize, layout; resample, log-mel).
//! * [`EventBuilder`] applies the manifest's output kinds, smoothing and
//!   change detection, and produces the published [`Event`].
//! * [`run_offline`] walks a recording hop by hop and hands events to a sink.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use emogate_device::replay::{PixelLayout, VideoFrame, VideoReplay};
use emogate_models::manifest::{
    AudioFeatures, AudioInput, AudioLayout, InputSpec, Manifest, OutputKind,
};
use serde::Serialize;

use crate::backend::Tensor;
use crate::model::{AffectModel, EngineError};
use crate::post::{PostConfig, Postprocessor};
use crate::pre::PreError;
use crate::pre::audio::read_wav;
use crate::pre::mel::{MelConfig, MelSpec};
use crate::pre::resample::resample;
use crate::pre::video::{Frame, PixelFormat, VideoPre, VideoSpec};

/// Errors while turning media into windows.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Pre(#[from] PreError),
    #[error(transparent)]
    Replay(#[from] emogate_device::replay::ReplayError),
    #[error(transparent)]
    Post(#[from] crate::post::PostError),
    #[error("{0}")]
    Config(String),
    #[error("writing events: {0}")]
    Sink(#[from] std::io::Error),
}

/// One model input's preprocessing.
enum InputPre {
    Video(VideoPre),
    Audio {
        spec: AudioInput,
        mel: Option<MelSpec>,
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
                            Some(MelSpec::new(MelConfig::from_manifest(m, a.sample_rate))?)
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
        frame: Option<&VideoFrame>,
        audio: Option<&[f32]>,
    ) -> Result<Vec<Tensor>, PreError> {
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for (input, shape) in self.inputs.iter_mut().zip(&self.shapes) {
            let len = shape.iter().product();
            let mut out = vec![0f32; len];
            match input {
                InputPre::Video(pre) => {
                    if let Some(frame) = frame {
                        pre.process(&to_frame(frame)?, None, &mut out)?;
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

/// A replayed frame as the preprocessor's [`Frame`].
fn to_frame(f: &VideoFrame) -> Result<Frame<'_>, PreError> {
    let format = match f.layout {
        PixelLayout::Gray8 => PixelFormat::Gray8,
        PixelLayout::Rgb8 => PixelFormat::Rgb8,
        PixelLayout::Bgr8 => PixelFormat::Bgr8,
        PixelLayout::Yuv420p => PixelFormat::Yuv420p,
        PixelLayout::Yuyv => PixelFormat::Yuyv,
        PixelLayout::Nv12 => PixelFormat::Nv12,
    };
    Frame::new(f.width, f.height, format, f.data.as_slice())
}

/// Time spent per stage of one window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
}

/// The window an event describes, in seconds on the capture clock.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub start_s: f64,
    pub end_s: f64,
}

/// One published emotion estimate. Field names map onto ROS 4 HRI's
/// `hri_msgs/Expression`: `top` → expression, `valence`, `arousal`,
/// `confidence`; `stamp_s` is the `header.stamp` capture time.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// Stable (smoothed, hysteresis) label; `null` while below the confidence floor.
    pub top: Option<String>,
    pub confidence: Option<f32>,
    /// Smoothed probability per label.
    pub probs: BTreeMap<String, f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valence: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arousal: Option<f32>,
    /// Capture time of the newest sample in the window.
    pub stamp_s: f64,
    pub window: Window,
    pub latency: Latency,
    /// Set when the stable label changed in this window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<LabelChange>,
    /// A modality was missing and fed as zeros.
    pub degraded: bool,
    pub adapter: Option<String>,
    pub backend: &'static str,
}

/// A confirmed change of the stable label (`null` = unknown).
#[derive(Debug, Clone, Serialize)]
pub struct LabelChange {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Applies output kinds, smoothing and change detection.
pub struct EventBuilder {
    outputs: Vec<(OutputKind, Option<Postprocessor>)>,
    seq: u64,
}

impl EventBuilder {
    pub fn new(manifest: &Manifest, config: PostConfig) -> Result<Self, crate::post::PostError> {
        let outputs = manifest
            .outputs
            .iter()
            .map(|o| {
                let post = match o.kind {
                    OutputKind::ValenceArousal => None,
                    kind => Some(Postprocessor::new(manifest.labels.clone(), kind, config)?),
                };
                Ok((o.kind, post))
            })
            .collect::<Result<_, crate::post::PostError>>()?;
        Ok(EventBuilder { outputs, seq: 0 })
    }

    /// Turns model outputs (manifest order) into an event.
    pub fn event(
        &mut self,
        outputs: &[Tensor],
        at: Duration,
        window: Window,
        latency: Latency,
    ) -> Result<Event, crate::post::PostError> {
        let mut event = Event {
            seq: self.seq,
            top: None,
            confidence: None,
            probs: BTreeMap::new(),
            valence: None,
            arousal: None,
            stamp_s: window.end_s,
            window,
            latency,
            change: None,
            degraded: false,
            adapter: None,
            backend: "",
        };
        self.seq += 1;
        for ((kind, post), tensor) in self.outputs.iter_mut().zip(outputs) {
            let values = tensor.as_f32().unwrap_or(&[]);
            match (kind, post) {
                (OutputKind::ValenceArousal, _) => {
                    event.valence = values.first().copied();
                    event.arousal = values.get(1).copied();
                }
                (_, Some(post)) => {
                    let labels = post.labels().to_vec();
                    let update = post.process(values, at)?;
                    event.top = update.label.map(str::to_string);
                    event.confidence = update.confidence;
                    event.probs = labels
                        .iter()
                        .cloned()
                        .zip(update.scores.iter().copied())
                        .collect();
                    if let Some(change) = update.change {
                        event.change = Some(LabelChange {
                            from: change.from.map(|i| labels[i].clone()),
                            to: change.to.map(|i| labels[i].clone()),
                        });
                    }
                }
                (_, None) => {}
            }
        }
        Ok(event)
    }
}

/// Options of [`run_offline`].
#[derive(Debug, Clone)]
pub struct OfflineOptions {
    pub hop: Duration,
    pub max_windows: Option<u64>,
    /// Frame rate for a folder of frames.
    pub dir_fps: f64,
    pub post: PostConfig,
}

/// Replays `video` and/or `audio` through `model`, one window per hop,
/// giving each event to `sink`. Returns the number of windows.
///
/// # Errors
/// [`RunError`] naming the file or setting at fault.
pub fn run_offline(
    model: &mut AffectModel,
    video: Option<&Path>,
    audio: Option<&Path>,
    options: &OfflineOptions,
    sink: &mut dyn FnMut(&Event) -> Result<(), std::io::Error>,
) -> Result<u64, RunError> {
    let manifest = model.manifest().clone();
    let mut featurizer = Featurizer::new(&manifest)?;
    let video = video
        .map(|p| VideoReplay::open(p, options.dir_fps))
        .transpose()?;
    let audio_spec = featurizer.audio().cloned();
    if audio_spec.is_none() && audio.is_some() {
        return Err(RunError::Config(
            "--audio given, but the model has no audio input".into(),
        ));
    }
    if !featurizer.wants_video() && video.is_some() {
        return Err(RunError::Config(
            "--video given, but the model has no video input".into(),
        ));
    }
    if video.is_none() && audio.is_none() {
        return Err(RunError::Config(
            "nothing to replay: give --video and/or --audio".into(),
        ));
    }
    let samples = match (&audio_spec, audio) {
        (Some(spec), Some(path)) => {
            let wav = read_wav(path).map_err(PreError::from)?;
            let mono = wav.to_mono();
            Some(if wav.sample_rate == spec.sample_rate {
                mono
            } else {
                resample(&mono, wav.sample_rate, spec.sample_rate)?
            })
        }
        _ => None,
    };
    let window = audio_spec.as_ref().map(|a| a.window_samples()).unwrap_or(0);
    let rate = audio_spec.as_ref().map(|a| a.sample_rate).unwrap_or(1) as f64;
    let window_s = window as f64 / rate;
    // The first window ends when a full audio window exists.
    let first_end = if samples.is_some() { window_s } else { 0.0 };
    let end_of_media = match (&samples, video.as_ref().and_then(|v| v.duration())) {
        (Some(s), _) => s.len() as f64 / rate,
        (None, Some(d)) => d.as_secs_f64(),
        (None, None) => f64::INFINITY,
    };
    if samples.as_ref().is_some_and(|s| s.len() < window) {
        return Err(RunError::Config(format!(
            "{}: the recording is {:.2} s, shorter than the model's {window_s:.2} s window",
            audio.map(|p| p.display().to_string()).unwrap_or_default(),
            end_of_media
        )));
    }
    let mut events = EventBuilder::new(&manifest, options.post)?;
    let mut n = 0u64;
    loop {
        if options.max_windows.is_some_and(|m| n >= m) {
            break;
        }
        let end_s = first_end + n as f64 * options.hop.as_secs_f64();
        if end_s > end_of_media + 1e-9
            || (end_of_media.is_infinite() && options.max_windows.is_none() && n > 0)
        {
            break;
        }
        let t0 = Instant::now();
        let at = Duration::from_secs_f64(end_s);
        let frame = video.as_ref().and_then(|v| {
            v.frame_at(at.saturating_sub(Duration::from_nanos(1)), false)
                .or_else(|| v.frame_at(at, false))
        });
        let audio_window = samples.as_ref().map(|s| {
            let end = ((end_s * rate).round() as usize).min(s.len());
            &s[end - window..end]
        });
        let degraded = (featurizer.wants_video() && frame.is_none())
            || (audio_spec.is_some() && audio_window.is_none());
        let inputs = featurizer.build(frame, audio_window)?;
        let t1 = Instant::now();
        let outputs = model.run(&inputs)?;
        let t2 = Instant::now();
        let mut latency = Latency {
            preprocess_ms: ms(t1 - t0),
            inference_ms: ms(t2 - t1),
            postprocess_ms: 0.0,
        };
        let mut event = events.event(
            &outputs,
            at,
            Window {
                start_s: (end_s - window_s).max(0.0),
                end_s,
            },
            latency,
        )?;
        latency.postprocess_ms = ms(t2.elapsed());
        event.latency = latency;
        event.degraded = degraded;
        event.adapter = model.active().map(str::to_string);
        event.backend = model.backend_name();
        sink(&event)?;
        n += 1;
    }
    Ok(n)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
