//! The third-party facial-expression model (models/fer/fer-mini-xception.onnx,
//! the `fer` package's mini-Xception converted by models/fer/make_fer.py)
//! against its original runtime: tests/fixtures/fer/reference.json holds
//! Keras's probabilities (TensorFlow 2.21 running fer's .hdf5) on 64×64 gray
//! crops stored beside it as PNG, among them the exact crops fer itself fed
//! its model on the astronaut and two-faces photographs. emogate loads the
//! ONNX with the shipped sidecar manifest and must reproduce them within
//! 1e-4 on tract and, with the `ort` feature, on ONNX Runtime. On ONNX
//! Runtime several crops in one forward pass (the pipeline's batch of
//! faces) must give each crop what it gets alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use emogate_device::clip::{Clip, ClipReader};
use emogate_infer::Tensor;
use emogate_infer::affect::{AffectModel, BackendChoice, ModelSpec};
use emogate_media::PixelLayout;
use emogate_tests::repo_root as root;
use serde_json::Value;

/// Largest absolute difference allowed from Keras's probabilities.
const TOLERANCE: f32 = 1e-4;

fn reference() -> Value {
    let path = root().join("tests/fixtures/fer/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference.json")).unwrap()
}

/// The shipped sidecar manifest, checked: it asks for square face crops
/// without alignment, as fer cuts them. This test feeds crops directly.
fn shipped_manifest(_dir: &Path) -> PathBuf {
    let shipped = root().join("models/fer/fer-mini-xception.json");
    let manifest = emogate_models::manifest::Manifest::from_file(&shipped).expect("it parses");
    let emogate_models::manifest::InputSpec::Video(video) = &manifest.inputs[0] else {
        panic!("one video input")
    };
    let crop = video
        .crop
        .face()
        .expect("the shipped manifest asks for face crops");
    assert_eq!(
        crop.align,
        emogate_models::manifest::FaceAlign::None,
        "fer aligns nothing"
    );
    assert!(crop.square, "fer crops squares");
    shipped
}

fn load(backend: BackendChoice, manifest: PathBuf) -> AffectModel {
    AffectModel::load(&ModelSpec {
        path: root().join("models/fer/fer-mini-xception.onnx"),
        manifest: Some(manifest),
        backend,
        ..ModelSpec::default()
    })
    .expect("the shipped model loads with its manifest")
}

/// A 64×64 gray PNG as the model's input, normalized as the manifest says:
/// `(p/255 − 0.5) / 0.5`, which is fer's `(p/255 − 0.5) · 2` exactly in f32.
fn crop_input(file: &str) -> Tensor {
    let path = root().join("tests/fixtures/fer").join(file);
    let clip = Clip::open(&path, 1.0).expect("readable PNG");
    let frame = ClipReader::new(Arc::new(clip))
        .and_then(|mut r| r.frame(0))
        .expect("decodes")
        .expect("one frame");
    assert_eq!(
        (frame.width, frame.height, frame.layout),
        (64, 64, PixelLayout::Gray8),
        "{file}"
    );
    let values = frame
        .data
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.5) / 0.5)
        .collect();
    Tensor::f32(vec![1, 64, 64, 1], values)
}

/// Runs every reference crop; returns how many and the largest difference
/// from Keras.
fn check_against_keras(model: &mut AffectModel) -> (usize, f32) {
    let reference = reference();
    let labels: Vec<&str> = reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        model.manifest().labels,
        labels,
        "the manifest's labels are fer's, in its order"
    );
    let crops = reference["crops"].as_object().expect("crops");
    let mut worst = 0f32;
    for (name, crop) in crops {
        let out = model
            .run(&[crop_input(crop["file"].as_str().unwrap())])
            .unwrap();
        let got = out[0].as_f32().unwrap();
        let want: Vec<f32> = crop["keras"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), 7, "{name}");
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= TOLERANCE,
            "{name}: {got:?} vs Keras {want:?} (differ by {diff})"
        );
        worst = worst.max(diff);
        let top = got
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| labels[i])
            .unwrap();
        assert_eq!(top, crop["top"].as_str().unwrap(), "{name}");
    }
    // The smiling astronaut, as fer cropped her and as a face-crop pipeline would.
    for name in [
        "fer-astronaut-0",
        "fer-two-faces-0",
        "engine-style-astronaut",
    ] {
        assert_eq!(crops[name]["top"], "happy", "{name}");
    }
    (crops.len(), worst)
}

#[test]
fn tract_matches_keras_on_the_reference_crops() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(BackendChoice::default(), shipped_manifest(dir.path()));
    assert_eq!(model.backend_name(), "tract");
    // tract runs faces one after another (`AffectModel::max_batch` says why).
    assert_eq!(model.max_batch(), 1);
    let (crops, worst) = check_against_keras(&mut model);
    assert_eq!(crops, 7);
    eprintln!("tract: {crops} crops, at most {worst:.2e} from Keras");
}

#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_matches_keras_on_the_reference_crops() {
    use emogate_infer::backend::ort::OrtOptions;
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(
        BackendChoice::Ort(OrtOptions::default()),
        shipped_manifest(dir.path()),
    );
    assert_eq!(model.backend_name(), "ort");
    let (crops, worst) = check_against_keras(&mut model);
    assert_eq!(crops, 7);
    eprintln!("ort: {crops} crops, at most {worst:.2e} from Keras");
}

/// Largest absolute difference allowed between a crop's probabilities in a
/// batch and alone (other kernels, the same arithmetic up to summation order).
#[cfg(feature = "ort")]
const BATCH_TOLERANCE: f32 = 1e-5;

/// Runs every reference crop alone, then in batches of several sizes, and
/// checks that each crop gets what it got alone.
#[cfg(feature = "ort")]
fn check_batches(model: &mut AffectModel) {
    assert_eq!(
        model.max_batch(),
        emogate_infer::affect::MAX_BATCH,
        "a face model with a free batch axis takes batches on {}",
        model.backend_name()
    );
    let reference = reference();
    let crops: Vec<Tensor> = reference["crops"]
        .as_object()
        .expect("crops")
        .values()
        .map(|c| crop_input(c["file"].as_str().unwrap()))
        .collect();
    let alone: Vec<Vec<f32>> = crops
        .iter()
        .map(|c| {
            model.run(std::slice::from_ref(c)).unwrap()[0]
                .as_f32()
                .unwrap()
                .to_vec()
        })
        .collect();
    for n in [2, 7, 3] {
        let values: Vec<f32> = crops[..n]
            .iter()
            .flat_map(|c| c.as_f32().unwrap().iter().copied())
            .collect();
        let out = model
            .run(&[Tensor::f32(vec![n, 64, 64, 1], values)])
            .unwrap_or_else(|e| panic!("a batch of {n}: {e}"));
        let got = out[0].as_f32().unwrap();
        assert_eq!(got.len(), n * 7, "a batch of {n}: 7 probabilities a crop");
        for (i, (row, want)) in got.chunks(7).zip(&alone).enumerate() {
            let diff = row
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= BATCH_TOLERANCE,
                "crop {i} in a batch of {n}: {row:?}, alone {want:?}"
            );
        }
    }
    // After the batches, a single crop gets the same again.
    let again = model.run(std::slice::from_ref(&crops[0])).unwrap();
    assert_eq!(again[0].as_f32().unwrap(), &alone[0][..]);
}

#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_runs_a_batch_of_crops_as_each_alone() {
    use emogate_infer::backend::ort::OrtOptions;
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(
        BackendChoice::Ort(OrtOptions::default()),
        shipped_manifest(dir.path()),
    );
    check_batches(&mut model);
}
