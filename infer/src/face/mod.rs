//! Faces in camera frames. A brief overview:
//!
//! * [`FaceDetector`] — an ONNX face detector on the same runtimes as the
//!   affect model (tract, or ONNX Runtime with the `ort` feature): the frame
//!   is letterboxed onto a black square and resized to the detector's input
//!   by [`crate::pre::video`] (so a 10000×10000 photo and a 1×1 one take
//!   the same path, in bounded memory), the model runs, and
//!   [`blazeface`] decodes anchors, boxes and keypoints and merges
//!   overlapping boxes.
//! * [`Face`] — a detection in frame pixels: box, score, six keypoints.
//! * [`crop`] — the crop a model was trained on, from a face: margin,
//!   square, eyes levelled.
//! * [`track::Tracker`] — stable ids across frames (overlap matching with a
//!   constant-velocity motion model), appearances and losses.
//!
//! The detector shipped in `models/face/` is MediaPipe's BlazeFace
//! short-range (Apache-2.0), converted by `models/face/make_blazeface.py`,
//! which also records what the original runtime (LiteRT) detects on real
//! photographs; the engine matches it to a pixel (tests/tests/face_detector.rs).

pub mod blazeface;
pub mod crop;
pub mod track;

use std::path::{Path, PathBuf};

use emogate_media::Frame;
use emogate_models::manifest::{ColorOrder, VideoLayout, value_dims};
use emogate_models::onnx::{OnnxModel, runtime_inputs};

use crate::affect::BackendChoice;
use crate::backend::{Backend, BackendError, InputFact};
use crate::pre::PreError;
use crate::pre::video::{Rect, VideoPre, VideoSpec};
use crate::{Tensor, TensorData};

use blazeface::{INPUT_SIDE, KEYPOINTS, REGRESSORS, RawFace};

/// Errors of loading and running a face detector.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error(transparent)]
    Model(#[from] emogate_models::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Pre(#[from] PreError),
    /// The file is an ONNX model, but not one this detector can decode.
    #[error("{}: not a BlazeFace short-range detector: {what}", path.display())]
    NotADetector { path: PathBuf, what: String },
    #[error("face detector option `{field}` = {value}: expected {expected}")]
    Option {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// A face in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// Left, top, width, height; may reach past the frame's edges.
    pub bbox: [f32; 4],
    /// The detector's confidence, 0–1.
    pub score: f32,
    /// `(x, y)` of the eyes (the person's right eye first, as MediaPipe
    /// orders them), nose tip, mouth centre and the two ear tragions.
    pub keypoints: [[f32; 2]; KEYPOINTS],
}

/// How detections are filtered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorOptions {
    /// Faces scoring at or below this are dropped (MediaPipe: 0.5).
    pub min_score: f32,
    /// Boxes overlapping a better one by more IoU than this are merged
    /// into it (MediaPipe: 0.3).
    pub nms_iou: f32,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            min_score: 0.5,
            nms_iou: 0.3,
        }
    }
}

/// A loaded face detector with its scratch buffers; one per thread.
pub struct FaceDetector {
    path: PathBuf,
    backend: Box<dyn Backend>,
    pre: VideoPre,
    input: Vec<f32>,
    anchors: Vec<[f32; 2]>,
    /// Output positions of the regressors and the scores.
    outputs: (usize, usize),
    options: DetectorOptions,
}

impl std::fmt::Debug for FaceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceDetector")
            .field("path", &self.path)
            .field("backend", &self.backend.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl FaceDetector {
    /// Loads the detector at `path` on `backend`.
    ///
    /// # Errors
    /// [`FaceError::Model`] for a file that is not a readable ONNX model;
    /// [`FaceError::NotADetector`] naming the input or output whose shape
    /// does not fit (one input `[1, 3, 128, 128]`; outputs `[1, 896, 16]`
    /// and `[1, 896, 1]`); [`FaceError::Option`] for a threshold outside
    /// 0–1; [`FaceError::Backend`] when the runtime refuses the model.
    pub fn load(
        path: &Path,
        backend: &BackendChoice,
        options: DetectorOptions,
    ) -> Result<Self, FaceError> {
        for (field, value) in [
            ("min_score", options.min_score),
            ("nms_iou", options.nms_iou),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaceError::Option {
                    field,
                    value: value.to_string(),
                    expected: "a number from 0 to 1",
                });
            }
        }
        let onnx = OnnxModel::load(path)?;
        let anchors = blazeface::short_range_anchors();
        let outputs =
            check_graph(&onnx, anchors.len()).map_err(|what| FaceError::NotADetector {
                path: path.to_path_buf(),
                what,
            })?;
        let side = INPUT_SIDE;
        let runtime = backend.runtime();
        let backend = runtime.load(&onnx, None, &[InputFact::F32(vec![1, 3, side, side])])?;
        let pre = VideoPre::new(VideoSpec {
            height: side,
            width: side,
            color: ColorOrder::Rgb,
            layout: VideoLayout::Nchw,
            mean: vec![0.5],
            std: vec![0.5],
            frames: 1,
        })?;
        Ok(FaceDetector {
            path: path.to_path_buf(),
            backend,
            input: vec![0.0; pre.output_len()],
            pre,
            anchors,
            outputs,
            options,
        })
    }

    /// `tract` or `ort`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The faces in `frame`, best first.
    ///
    /// # Errors
    /// [`FaceError::Pre`] for a malformed frame; [`FaceError::Backend`] when
    /// inference fails; [`FaceError::NotADetector`] when the model returns
    /// outputs of other sizes than it declared.
    pub fn detect(&mut self, frame: &Frame) -> Result<Vec<Face>, FaceError> {
        let square = letterbox(frame.width, frame.height)?;
        self.pre.process_padded(frame, square, &mut self.input)?;
        let side = INPUT_SIDE;
        let input = Tensor::f32(vec![1, 3, side, side], std::mem::take(&mut self.input));
        let result = self.backend.run(std::slice::from_ref(&input));
        self.input = match input.data {
            TensorData::F32(v) => v,
            TensorData::I64(_) => unreachable!("built as f32 above"),
        };
        let outputs = result?;
        let n = self.anchors.len();
        let take = |i: usize, len: usize, what: &str| -> Result<&[f32], FaceError> {
            outputs
                .get(i)
                .and_then(Tensor::as_f32)
                .filter(|v| v.len() == len)
                .ok_or_else(|| FaceError::NotADetector {
                    path: self.path.clone(),
                    what: format!("output {i} ({what}) is not {len} f32 values at run time"),
                })
        };
        let regressors = take(self.outputs.0, n * REGRESSORS, "regressors")?;
        let scores = take(self.outputs.1, n, "scores")?;
        let raw = blazeface::decode(regressors, scores, &self.anchors, self.options.min_score);
        let faces = blazeface::weighted_nms(raw, self.options.nms_iou);
        Ok(faces.iter().map(|f| to_frame(f, square)).collect())
    }
}

/// The square, centred on the frame, that the detector sees: offsets
/// `floor((side - width) / 2)`, `floor((side - height) / 2)`.
///
/// # Errors
/// [`PreError::Invalid`] for a side over `i32::MAX`.
pub fn letterbox(width: usize, height: usize) -> Result<Rect, PreError> {
    let side = width.max(height);
    let side32 = u32::try_from(side)
        .ok()
        .filter(|s| i32::try_from(*s).is_ok())
        .ok_or_else(|| {
            PreError::invalid(
                "frame size",
                format!("{width}x{height}"),
                "at most 2^31 - 1 pixels a side",
            )
        })?;
    Ok(Rect {
        x: -(((side - width) / 2) as i32),
        y: -(((side - height) / 2) as i32),
        width: side32,
        height: side32,
    })
}

fn to_frame(f: &RawFace, square: Rect) -> Face {
    let s = square.width as f32;
    let px = |p: [f32; 2]| [p[0] * s + square.x as f32, p[1] * s + square.y as f32];
    let [x0, y0] = px(f.points[0]);
    let [x1, y1] = px(f.points[1]);
    let mut keypoints = [[0f32; 2]; KEYPOINTS];
    for (k, p) in keypoints.iter_mut().zip(&f.points[2..]) {
        *k = px(*p);
    }
    Face {
        bbox: [x0, y0, x1 - x0, y1 - y0],
        score: f.score,
        keypoints,
    }
}

/// The positions of the regressors and scores among the graph's outputs,
/// or what does not fit.
fn check_graph(onnx: &OnnxModel, anchors: usize) -> Result<(usize, usize), String> {
    let graph = onnx.graph();
    let inputs: Vec<_> = runtime_inputs(graph).collect();
    let side = INPUT_SIDE as i64;
    let want_input = [Some(1), Some(3), Some(side), Some(side)];
    match inputs.as_slice() {
        [input] => {
            let dims = value_dims(input).unwrap_or_default();
            let fits = dims.len() == 4
                && dims
                    .iter()
                    .zip(want_input)
                    .all(|(d, w)| d.is_none() || *d == w);
            if !fits {
                return Err(format!(
                    "input `{}` has shape {}, expected [1, 3, 128, 128] (RGB, NCHW)",
                    input.name(),
                    show(&dims)
                ));
            }
        }
        _ => {
            return Err(format!(
                "{} inputs ({}), expected one image input [1, 3, 128, 128]",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if graph.output.len() != 2 {
        return Err(format!(
            "{} outputs, expected 2: regressors [1, {anchors}, 16] and scores [1, {anchors}, 1]",
            graph.output.len()
        ));
    }
    let mut found = (None, None);
    for (i, output) in graph.output.iter().enumerate() {
        let dims = value_dims(output).unwrap_or_default();
        let fixed = |k: usize| dims.get(k).copied().flatten();
        let anchors_ok = dims.len() == 3 && fixed(1).is_none_or(|n| n == anchors as i64);
        match fixed(2) {
            Some(16) if anchors_ok => found.0 = Some(i),
            Some(1) if anchors_ok => found.1 = Some(i),
            _ => {
                return Err(format!(
                    "output `{}` has shape {}, expected [1, {anchors}, 16] (regressors) or [1, {anchors}, 1] (scores)",
                    output.name(),
                    show(&dims)
                ));
            }
        }
    }
    match found {
        (Some(r), Some(s)) => Ok((r, s)),
        _ => Err(format!(
            "outputs {} and {}: expected one of [1, {anchors}, 16] and one of [1, {anchors}, 1]",
            graph.output[0].name(),
            graph.output[1].name()
        )),
    }
}

fn show(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}
