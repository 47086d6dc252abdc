//! Shared helpers for the cross-crate integration tests: where the
//! committed fixtures are and how to read the expected outputs that
//! `tools/fixtures/make_merge_fixtures.py` recorded from PyTorch/PEFT.

pub mod faulty_models;

use std::path::{Path, PathBuf};

use emogate_infer::Tensor;
use emogate_models::onnx::{OnnxModel, SaveOptions};
use emogate_models::quantize::{Mode, fp16::Fp16Options, quantize_to_file};
use serde::Deserialize;

pub mod shared_weight;

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// One `expected/<base>-<kind>.json` file: PEFT's logits for an adapter.
#[derive(Debug, Deserialize)]
pub struct Expected {
    pub base: String,
    pub kind: String,
    pub adapter_dir: String,
    pub input: serde_json::Value,
    pub input_dtype: String,
    pub shape: Vec<usize>,
    pub base_logits: Vec<f32>,
    pub merged_logits: Vec<f32>,
}

impl Expected {
    /// Reads every expected-output file of the merge fixtures.
    pub fn all() -> Vec<Expected> {
        let dir = fixtures().join("merge/expected");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixtures/merge/expected")
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                serde_json::from_slice(&std::fs::read(f).expect("read")).expect("expected JSON")
            })
            .collect()
    }

    /// The model input as a backend tensor.
    pub fn input_tensor(&self) -> Tensor {
        let rows: Vec<Vec<serde_json::Value>> =
            serde_json::from_value(self.input.clone()).expect("2-D input");
        let shape = vec![rows.len(), rows[0].len()];
        let flat = rows.into_iter().flatten();
        if self.input_dtype == "int64" {
            Tensor::i64(shape, flat.map(|v| v.as_i64().expect("int")).collect())
        } else {
            Tensor::f32(
                shape,
                flat.map(|v| v.as_f64().expect("float") as f32).collect(),
            )
        }
    }

    /// Every exported model directory of this fixture's base model.
    pub fn model_dirs(&self) -> Vec<PathBuf> {
        let root = fixtures().join("merge");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .expect("fixtures/merge")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once('.'))
                    .is_some_and(|(base, _)| base == self.base)
            })
            .collect();
        dirs.sort();
        dirs
    }

    pub fn adapter(&self) -> PathBuf {
        fixtures().join("merge").join(&self.adapter_dir)
    }
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// A JSON array of numbers as `f32`.
pub fn json_floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// A JSON array of dimensions.
pub fn json_shape(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_u64().expect("a dimension") as usize)
        .collect()
}

/// `tests/fixtures/engine/reference_expected.json`.
pub fn reference_expected() -> serde_json::Value {
    let path = fixtures().join("engine/reference_expected.json");
    serde_json::from_slice(&std::fs::read(path).expect("reference_expected.json")).expect("JSON")
}

/// The recorded face and audio tensors of the reference fixture, in manifest order.
pub fn reference_inputs(e: &serde_json::Value) -> Vec<Tensor> {
    vec![
        Tensor::f32(json_shape(&e["face_shape"]), json_floats(&e["face"])),
        Tensor::f32(json_shape(&e["audio_shape"]), json_floats(&e["audio"])),
    ]
}

/// The reference experiment's base model (the model the bundled adapters
/// belong to) converted to fp16 (f32 inputs and outputs, Casts inside),
/// written to `dir/emogate-base-fp16.onnx` with its side file: its
/// gate_proj weights, which the bundled adapters change, are f16.
pub fn fp16_reference(dir: &Path) -> PathBuf {
    let base = OnnxModel::load(repo_root().join("models/reference/base/emogate-base.onnx"))
        .expect("base model loads");
    let out = dir.join("emogate-base-fp16.onnx");
    quantize_to_file(
        &base,
        &Mode::Fp16(Fp16Options::default()),
        &out,
        &SaveOptions::default(),
    )
    .expect("fp16 conversion");
    out
}
