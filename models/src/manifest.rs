//! The model manifest: how a model describes what it expects and returns,
//! so a device feeds it exactly what it saw in training.
//!
//! A manifest travels inside the ONNX file, as JSON in `metadata_props`
//! under [`MANIFEST_KEY`], or beside it as a sidecar file (for third-party
//! models). Schema `emogate.manifest/1`:
//!
//! ```json
//! {"schema": "emogate.manifest/1", "name": "fer-example",
//!  "labels": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
//!  "inputs": [
//!    {"name": "face", "modality": "video", "layout": "NHWC", "color": "gray",
//!     "height": 64, "width": 64, "mean": [0.5], "std": [0.5], "frames": 1},
//!    {"name": "audio", "modality": "audio", "sample_rate": 16000, "window_s": 2.0, "layout": "NCT",
//!     "features": {"type": "log_mel", "n_fft": 400, "hop_length": 160, "n_mels": 64,
//!                  "fmin": 0.0, "fmax": 8000.0, "mel_scale": "slaney", "log": "ln", "log_offset": 1e-6}}],
//!  "outputs": [{"name": "predictions", "kind": "probabilities"}]}
//! ```
//!
//! [`Manifest::check_against`] compares it with the graph's real inputs and
//! outputs, so a mismatch fails at load, naming the input and the dimension.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::onnx::OnnxModel;
use crate::onnx::proto::{ModelProto, StringStringEntryProto, type_proto};

/// Where a manifest is kept inside an ONNX file.
pub const MANIFEST_KEY: &str = "emogate.manifest";
/// The schema this crate reads and writes.
pub const SCHEMA: &str = "emogate.manifest/1";

/// A model's description of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub labels: Vec<String>,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    /// Default pipeline hop, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_ms: Option<f64>,
}

/// One model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "modality", rename_all = "lowercase")]
pub enum InputSpec {
    Video(VideoInput),
    Audio(AudioInput),
}

/// Tensor layout of a video input (with a time axis after N when `frames > 1`):
/// `[1, C, H, W]` or `[1, H, W, C]`, `[1, T, …]` for clips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VideoLayout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Channel order of a video input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
    /// One channel, `0.299 R + 0.587 G + 0.114 B` (BT.601 luma).
    Gray,
}

impl ColorOrder {
    /// Channels in the tensor: 1 for gray, 3 otherwise.
    pub fn channels(self) -> usize {
        match self {
            ColorOrder::Gray => 1,
            _ => 3,
        }
    }
}

/// A face/scene crop fed as pixels normalized `(p/255 − mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoInput {
    pub name: String,
    pub layout: VideoLayout,
    pub color: ColorOrder,
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    #[serde(default = "one")]
    pub frames: usize,
    /// What part of the frame the model sees: the whole frame (the
    /// default), or each detected face.
    #[serde(default, skip_serializing_if = "Crop::is_frame")]
    pub crop: Crop,
}

fn one() -> usize {
    1
}

/// What a video input is cut from: `"frame"` or `{"face": {…}}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Crop {
    /// The whole frame, resized to the input.
    #[default]
    Frame,
    /// One crop per detected face, as the model was trained on them.
    Face(FaceCrop),
}

impl Crop {
    pub fn is_frame(&self) -> bool {
        matches!(self, Crop::Frame)
    }

    /// The face crop settings, if the input takes face crops.
    pub fn face(&self) -> Option<&FaceCrop> {
        match self {
            Crop::Face(f) => Some(f),
            Crop::Frame => None,
        }
    }
}

/// The largest margin accepted: twice the box on each side.
pub const MAX_FACE_MARGIN: f32 = 2.0;

/// How a face box becomes the model's crop: the box grows by `margin`
/// times its size on each side, is made square (the longer side) when
/// `square`, and is turned so the eyes are level when `align` is `eyes`;
/// then it is resized to the input like a whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceCrop {
    /// Fraction of the box's width (height) added left and right (above
    /// and below), 0 to [`MAX_FACE_MARGIN`].
    #[serde(default)]
    pub margin: f32,
    #[serde(default = "yes")]
    pub square: bool,
    #[serde(default)]
    pub align: FaceAlign,
}

/// Rotation of a face crop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaceAlign {
    /// The box as detected, upright in the frame.
    #[default]
    None,
    /// Turned about the box centre so the line between the eyes is level.
    Eyes,
}

/// Tensor layout of an audio input: `NCT` is `[1, channels or mels, time]`,
/// `NTC` is `[1, time, channels or mels]`, `NT` is `[1, samples]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AudioLayout {
    #[serde(rename = "NCT")]
    Nct,
    #[serde(rename = "NTC")]
    Ntc,
    #[serde(rename = "NT")]
    Nt,
}

/// The highest audio `sample_rate` a manifest may give (Hz).
pub const MAX_SAMPLE_RATE: u32 = 384_000;
/// The longest audio `window_s` a manifest may give (seconds).
pub const MAX_WINDOW_S: f64 = 600.0;

/// The last `window_s` seconds of mono audio at `sample_rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioInput {
    pub name: String,
    pub sample_rate: u32,
    pub window_s: f64,
    pub layout: AudioLayout,
    pub features: AudioFeatures,
}

/// What the model sees of the audio window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AudioFeatures {
    /// Raw samples in [-1, 1].
    Waveform,
    /// librosa-style log-mel spectrogram.
    LogMel(LogMel),
}

/// Log-mel parameters, with librosa's defaults for the optional ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogMel {
    pub n_fft: usize,
    pub hop_length: usize,
    pub n_mels: usize,
    pub fmin: f32,
    pub fmax: f32,
    pub mel_scale: MelScale,
    pub log: LogKind,
    #[serde(default = "default_log_offset")]
    pub log_offset: f32,
    #[serde(default = "yes")]
    pub center: bool,
    #[serde(default)]
    pub pad_mode: PadMode,
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default = "default_power")]
    pub power: f32,
    #[serde(default)]
    pub norm: MelNorm,
}

fn default_log_offset() -> f32 {
    1e-6
}
fn yes() -> bool {
    true
}
fn default_window() -> String {
    "hann".into()
}
fn default_power() -> f32 {
    2.0
}

/// Hz ↔ mel mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelScale {
    /// Slaney's Auditory Toolbox: linear below 1 kHz, logarithmic above
    /// (librosa's default, `htk=False`).
    Slaney,
    /// `2595·log10(1 + f/700)` (`htk=True`, torchaudio's default).
    Htk,
}

/// The logarithm applied to mel energies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    Ln,
    Log10,
    /// Mel power as is.
    None,
}

/// How the signal is extended by `n_fft/2` at each end when centring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros (librosa ≥ 0.10's default).
    #[default]
    Constant,
    /// numpy `reflect`: mirrored about the edge sample, which is not repeated.
    Reflect,
}

/// Mel filter normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelNorm {
    /// Each triangle has unit area in Hz (librosa's `norm='slaney'`).
    #[default]
    Slaney,
    /// Triangles peak at 1.
    None,
}

impl LogMel {
    /// STFT frames in a window of `samples` samples.
    pub fn frames(&self, samples: usize) -> usize {
        if self.center {
            1 + samples / self.hop_length
        } else {
            1 + samples.saturating_sub(self.n_fft) / self.hop_length
        }
    }
}

impl AudioInput {
    /// Samples in one window.
    pub fn window_samples(&self) -> usize {
        (self.window_s * self.sample_rate as f64).round() as usize
    }
}

/// One model output and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
}

/// How to read a model output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Softmax is applied.
    Logits,
    /// Used as is, renormalized if the sum is off by more than 1e-3.
    Probabilities,
    /// Sigmoid is applied per label.
    MultilabelLogits,
    /// Two values, valence and arousal, smoothed but not labelled.
    ValenceArousal,
}

impl Manifest {
    /// Parses a manifest; `source` names where it came from in errors.
    ///
    /// # Errors
    /// [`Error::Field`] naming the input or field that is wrong. Inputs of a
    /// modality other than video or audio (text tokens, precomputed
    /// features) are reported, never guessed.
    pub fn from_json(text: &str, source: &Path) -> Result<Self> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| Error::field(source, "manifest JSON", e.to_string()))?;
        let schema = raw.get("schema").and_then(Value::as_str).unwrap_or("");
        if schema != SCHEMA {
            return Err(Error::field(
                source,
                "manifest.schema",
                format!("is `{schema}`; expected `{SCHEMA}`"),
            ));
        }
        for (i, input) in raw
            .get("inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = input.get("name").and_then(Value::as_str).unwrap_or("?");
            match input.get("modality").and_then(Value::as_str) {
                Some("video" | "audio") => {}
                Some(other) => {
                    return Err(Error::field(
                        source,
                        format!("manifest.inputs[{i}] (`{name}`).modality"),
                        format!(
                            "is `{other}`; emogate feeds `video` and `audio` inputs only. Inputs such as text tokens \
                             or precomputed features must be bound by the caller, not guessed"
                        ),
                    ));
                }
                None => {
                    return Err(Error::field(
                        source,
                        format!("manifest.inputs[{i}] (`{name}`).modality"),
                        "is missing; expected `video` or `audio`",
                    ));
                }
            }
            // Read alone first, so a mistake names the input and the field
            // (inside the tagged input, serde's message names neither).
            if let Some(crop) = input.get("crop") {
                serde_json::from_value::<Crop>(crop.clone()).map_err(|e| {
                    Error::field(
                        source,
                        format!("manifest.inputs[{i}] (`{name}`).crop"),
                        format!(
                            "{e}; expected \"frame\" or {{\"face\": {{\"margin\": M, \"square\": true|false, \"align\": \"eyes\"|\"none\"}}}}"
                        ),
                    )
                })?;
            }
        }
        let manifest: Manifest = serde_json::from_value(raw)
            .map_err(|e| Error::field(source, "manifest", e.to_string()))?;
        manifest.check(source)?;
        Ok(manifest)
    }

    /// Reads a sidecar manifest file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// The manifest embedded in a model, if any.
    pub fn from_model(model: &OnnxModel) -> Result<Option<Self>> {
        model
            .proto
            .metadata_props
            .iter()
            .find(|p| p.key() == MANIFEST_KEY)
            .map(|p| Self::from_json(p.value(), model.path()))
            .transpose()
    }

    /// Stores this manifest in a model's `metadata_props`, replacing any.
    pub fn embed(&self, proto: &mut ModelProto) {
        proto.metadata_props.retain(|p| p.key() != MANIFEST_KEY);
        proto.metadata_props.push(StringStringEntryProto {
            key: Some(MANIFEST_KEY.into()),
            value: Some(serde_json::to_string(self).expect("a manifest always serializes")),
        });
    }

    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name() == name)
    }

    /// Checks the manifest on its own: labels, normalization lengths, sizes.
    fn check(&self, source: &Path) -> Result<()> {
        let field = |what: String, msg: String| Err(Error::field(source, what, msg));
        if self.labels.is_empty() {
            return field(
                "manifest.labels".into(),
                "is empty; expected one name per class".into(),
            );
        }
        if self.inputs.is_empty() {
            return field(
                "manifest.inputs".into(),
                "is empty; expected at least one video or audio input".into(),
            );
        }
        for input in &self.inputs {
            match input {
                InputSpec::Video(v) => {
                    let c = v.color.channels();
                    for (what, values) in [("mean", &v.mean), ("std", &v.std)] {
                        if values.len() != 1 && values.len() != c {
                            return field(
                                format!("manifest input `{}`.{what}", v.name),
                                format!(
                                    "has {} values; expected 1 or {c} (one per {:?} channel)",
                                    values.len(),
                                    v.color
                                ),
                            );
                        }
                    }
                    if v.std.contains(&0.0) {
                        return field(
                            format!("manifest input `{}`.std", v.name),
                            "contains 0".into(),
                        );
                    }
                    if v.height == 0 || v.width == 0 || v.frames == 0 {
                        return field(
                            format!("manifest input `{}`", v.name),
                            "height, width and frames must be positive".into(),
                        );
                    }
                    if let Crop::Face(face) = v.crop {
                        // Written so NaN fails too.
                        if !(face.margin >= 0.0 && face.margin <= MAX_FACE_MARGIN) {
                            return field(
                                format!("manifest input `{}`.crop.face.margin", v.name),
                                format!(
                                    "is {}; expected a fraction of the box from 0 to {MAX_FACE_MARGIN}",
                                    face.margin
                                ),
                            );
                        }
                        if v.frames > 1 {
                            return field(
                                format!("manifest input `{}`.crop", v.name),
                                format!(
                                    "face crops are fed one frame at a time; this input takes clips of {} frames (use \"crop\": \"frame\" or frames 1)",
                                    v.frames
                                ),
                            );
                        }
                    }
                }
                InputSpec::Audio(a) => {
                    // Bounded so a window always fits a buffer and a
                    // Duration: no model listens to more than minutes.
                    let rate_ok = (1..=MAX_SAMPLE_RATE).contains(&a.sample_rate);
                    // Written so NaN fails too.
                    let window_ok = a.window_s > 0.0 && a.window_s <= MAX_WINDOW_S;
                    if !(rate_ok && window_ok) {
                        return field(
                            format!("manifest input `{}`", a.name),
                            format!(
                                "sample_rate {} and window_s {} must be in 1..={MAX_SAMPLE_RATE} Hz and (0, {MAX_WINDOW_S}] s",
                                a.sample_rate, a.window_s
                            ),
                        );
                    }
                    if let AudioFeatures::LogMel(m) = &a.features {
                        if m.n_fft == 0 || m.hop_length == 0 || m.n_mels == 0 {
                            return field(
                                format!("manifest input `{}`.features", a.name),
                                "n_fft, hop_length and n_mels must be positive".into(),
                            );
                        }
                        if m.fmax > a.sample_rate as f32 / 2.0 || m.fmin >= m.fmax {
                            return field(
                                format!("manifest input `{}`.features.fmax", a.name),
                                format!(
                                    "{} must be above fmin {} and at most sample_rate/2 = {}",
                                    m.fmax,
                                    m.fmin,
                                    a.sample_rate / 2
                                ),
                            );
                        }
                        if m.window != "hann" {
                            return field(
                                format!("manifest input `{}`.features.window", a.name),
                                format!("is `{}`; expected `hann`", m.window),
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The tensor shape this manifest feeds to input `spec`.
    pub fn input_shape(spec: &InputSpec) -> Vec<usize> {
        match spec {
            InputSpec::Video(v) => {
                let c = v.color.channels();
                let mut shape = vec![1];
                if v.frames > 1 {
                    shape.push(v.frames);
                }
                match v.layout {
                    VideoLayout::Nchw => shape.extend([c, v.height, v.width]),
                    VideoLayout::Nhwc => shape.extend([v.height, v.width, c]),
                }
                shape
            }
            InputSpec::Audio(a) => {
                let samples = a.window_samples();
                let (channels, time) = match &a.features {
                    AudioFeatures::Waveform => (1, samples),
                    AudioFeatures::LogMel(m) => (m.n_mels, m.frames(samples)),
                };
                match a.layout {
                    AudioLayout::Nct => vec![1, channels, time],
                    AudioLayout::Ntc => vec![1, time, channels],
                    AudioLayout::Nt => vec![1, time],
                }
            }
        }
    }

    /// Compares the manifest with the graph's inputs and outputs.
    ///
    /// # Errors
    /// [`Error::Field`] naming the first mismatch: an input or output the
    /// graph lacks, a graph input the manifest does not feed, a rank or a
    /// fixed dimension that differs, an output too small for the labels.
    pub fn check_against(&self, model: &OnnxModel) -> Result<()> {
        let graph = model.graph();
        let graph_inputs: Vec<_> = crate::onnx::runtime_inputs(graph).collect();
        let mismatch = |what: String, msg: String| Err(Error::field(model.path(), what, msg));
        for gi in &graph_inputs {
            if self.input(gi.name()).is_none() {
                return mismatch(
                    format!("graph input `{}`", gi.name()),
                    format!(
                        "is not described by the manifest (which feeds {})",
                        self.inputs
                            .iter()
                            .map(|i| format!("`{}`", i.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        for spec in &self.inputs {
            let Some(gi) = graph_inputs.iter().find(|g| g.name() == spec.name()) else {
                return mismatch(
                    format!("manifest input `{}`", spec.name()),
                    format!(
                        "is not an input of the graph (it has {})",
                        graph_inputs
                            .iter()
                            .map(|g| format!("`{}`", g.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            };
            let dims = value_dims(gi);
            let want = Self::input_shape(spec);
            if let Some(dims) = dims {
                if dims.len() != want.len() {
                    return mismatch(
                        format!("manifest input `{}`", spec.name()),
                        format!(
                            "describes a rank-{} tensor {want:?} but the graph's is rank {} {dims:?}",
                            want.len(),
                            dims.len()
                        ),
                    );
                }
                for (axis, (d, w)) in dims.iter().zip(&want).enumerate() {
                    if let Some(d) = d
                        && *d != *w as i64
                    {
                        return mismatch(
                            format!("manifest input `{}` axis {axis}", spec.name()),
                            format!(
                                "is {w} by the manifest ({want:?}) but {d} in the graph ({dims:?})"
                            ),
                        );
                    }
                }
            }
        }
        for out in &self.outputs {
            let Some(go) = graph.output.iter().find(|o| o.name() == out.name) else {
                return mismatch(
                    format!("manifest output `{}`", out.name),
                    format!(
                        "is not an output of the graph (it has {})",
                        graph
                            .output
                            .iter()
                            .map(|o| format!("`{}`", o.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            };
            let last = value_dims(go).and_then(|d| d.last().copied().flatten());
            let want = match out.kind {
                OutputKind::ValenceArousal => 2,
                _ => self.labels.len() as i64,
            };
            if let Some(last) = last
                && last != want
            {
                return mismatch(
                    format!("manifest output `{}`", out.name),
                    format!(
                        "of kind {:?} needs {want} values but the graph's last dimension is {last}",
                        out.kind
                    ),
                );
            }
        }
        Ok(())
    }
}

impl InputSpec {
    pub fn name(&self) -> &str {
        match self {
            InputSpec::Video(v) => &v.name,
            InputSpec::Audio(a) => &a.name,
        }
    }
}

/// A graph value's dims (`None` for symbolic ones), if its type is a tensor with a shape.
pub fn value_dims(value: &crate::onnx::proto::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use crate::onnx::proto::tensor_shape_proto::dimension::Value as Dim;
    let Some(type_proto::Value::TensorType(t)) = value.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Dim::DimValue(v)) => Some(*v),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "schema": "emogate.manifest/1",
      "name": "fer-example",
      "labels": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
      "inputs": [
        {"name": "face", "modality": "video", "layout": "NHWC", "color": "gray",
         "height": 64, "width": 64, "mean": [0.5], "std": [0.5], "frames": 1},
        {"name": "audio", "modality": "audio", "sample_rate": 16000, "window_s": 2.0, "layout": "NCT",
         "features": {"type": "log_mel", "n_fft": 400, "hop_length": 160, "n_mels": 64,
                      "fmin": 0.0, "fmax": 8000.0, "mel_scale": "slaney", "log": "ln", "log_offset": 1e-6}}
      ],
      "outputs": [{"name": "predictions", "kind": "probabilities"}]
    }"#;

    #[test]
    fn accepts_the_documented_form() {
        let m = Manifest::from_json(EXAMPLE, Path::new("m.json")).unwrap();
        assert_eq!(m.labels.len(), 7);
        assert_eq!(Manifest::input_shape(&m.inputs[0]), vec![1, 64, 64, 1]);
        assert_eq!(Manifest::input_shape(&m.inputs[1]), vec![1, 64, 201]);
        // Round trip through the embedded form.
        let again =
            Manifest::from_json(&serde_json::to_string(&m).unwrap(), Path::new("x")).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn reads_face_crops_and_defaults_to_the_whole_frame() {
        let m = Manifest::from_json(EXAMPLE, Path::new("m.json")).unwrap();
        let InputSpec::Video(v) = &m.inputs[0] else {
            panic!("video first")
        };
        assert_eq!(v.crop, Crop::Frame);
        // The default is not written, so embedded manifests stay as they were.
        assert!(!serde_json::to_string(&m).unwrap().contains("crop"));
        let text = EXAMPLE.replace(
            r#""frames": 1}"#,
            r#""frames": 1, "crop": {"face": {"margin": 0.25, "align": "eyes"}}}"#,
        );
        let m = Manifest::from_json(&text, Path::new("m.json")).unwrap();
        let InputSpec::Video(v) = &m.inputs[0] else {
            panic!("video first")
        };
        let expected = FaceCrop {
            margin: 0.25,
            square: true,
            align: FaceAlign::Eyes,
        };
        assert_eq!(v.crop, Crop::Face(expected));
        let again =
            Manifest::from_json(&serde_json::to_string(&m).unwrap(), Path::new("x")).unwrap();
        assert_eq!(again, m);
        let framed = EXAMPLE.replace(r#""frames": 1}"#, r#""frames": 1, "crop": "frame"}"#);
        assert!(Manifest::from_json(&framed, Path::new("m.json")).is_ok());
    }

    #[test]
    fn names_the_input_and_field_of_a_bad_face_crop() {
        for (crop, expect) in [
            (
                r#"{"face": {"margin": 0.1, "scale": 2}}"#,
                "unknown field `scale`",
            ),
            (r#"{"face": {"align": "nose"}}"#, "unknown variant `nose`"),
            (r#""faces""#, "unknown variant `faces`"),
            (r#"{"face": {"margin": -0.5}}"#, "crop.face.margin"),
            (r#"{"face": {"margin": 7}}"#, "crop.face.margin"),
        ] {
            let text = EXAMPLE.replace(
                r#""frames": 1}"#,
                &format!(r#""frames": 1, "crop": {crop}}}"#),
            );
            let e = Manifest::from_json(&text, Path::new("m.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("m.json")
                    && e.contains("`face`")
                    && e.contains("crop")
                    && e.contains(expect),
                "{crop}: {e}"
            );
        }
        let clip = EXAMPLE.replace(r#""frames": 1}"#, r#""frames": 4, "crop": {"face": {}}}"#);
        let e = Manifest::from_json(&clip, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("one frame at a time") && e.contains("4 frames"),
            "{e}"
        );
    }

    #[test]
    fn names_an_unsupported_modality() {
        let text = EXAMPLE.replace(r#""modality": "audio""#, r#""modality": "text""#);
        let e = Manifest::from_json(&text, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.json")
                && e.contains("`audio`")
                && e.contains("modality")
                && e.contains("`text`"),
            "{e}"
        );
    }

    #[test]
    fn rejects_audio_windows_out_of_range() {
        for (from, to) in [
            (r#""window_s": 2.0"#, r#""window_s": 0.0"#),
            (r#""window_s": 2.0"#, r#""window_s": -1.0"#),
            (r#""window_s": 2.0"#, r#""window_s": 1e300"#),
            (r#""sample_rate": 16000"#, r#""sample_rate": 0"#),
            (r#""sample_rate": 16000"#, r#""sample_rate": 4000000000"#),
        ] {
            let text = EXAMPLE.replace(from, to);
            let e = Manifest::from_json(&text, Path::new("m.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("m.json") && e.contains("`audio`") && e.contains("window_s"),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn rejects_bad_normalization_and_schema() {
        let text = EXAMPLE.replace(r#""mean": [0.5]"#, r#""mean": [0.5, 0.5]"#);
        let e = Manifest::from_json(&text, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mean") && e.contains("expected 1 or 1"), "{e}");
        let text = EXAMPLE.replace("emogate.manifest/1", "emogate.manifest/9");
        let e = Manifest::from_json(&text, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest.schema") && e.contains("emogate.manifest/9"),
            "{e}"
        );
    }
}
