//! ONNX Runtime backend (feature `ort`; needs ORT_DYLIB_PATH). CI runs it
//! against the newest onnxruntime wheel and against 1.19, the oldest
//! version emogate accepts (Jetson builds lag PyPI).
#![cfg(feature = "ort")]

use emogate_infer::Tensor;
use emogate_infer::affect::{AffectModel, BackendChoice, ModelSpec};
use emogate_infer::backend::ort::{OrtBackend, OrtOptions, Provider};
use emogate_tests::{
    fixtures, json_floats as floats, json_shape as shape, max_abs_diff, reference_expected,
    reference_inputs, repo_root as root,
};
use serde_json::Value;

fn ort_choice() -> BackendChoice {
    BackendChoice::Ort(OrtOptions {
        providers: vec![Provider::Cpu],
        ..OrtOptions::default()
    })
}

fn reference(backend: BackendChoice, active: Option<&str>) -> AffectModel {
    AffectModel::load(&ModelSpec {
        path: root().join("models/reference/emogate-ref.onnx"),
        adapters: vec![
            ("calm".into(), root().join("models/reference/adapters/calm")),
            (
                "excited".into(),
                root().join("models/reference/adapters/excited"),
            ),
        ],
        active: active.map(str::to_string),
        backend,
        ..ModelSpec::default()
    })
    .unwrap()
}

#[test]
fn tract_and_onnx_runtime_agree_on_every_model_and_adapter() {
    let e = reference_expected();
    let inputs = reference_inputs(&e);
    for active in [None, Some("calm"), Some("excited")] {
        let mut tract = reference(BackendChoice::default(), active);
        let mut ort = reference(ort_choice(), active);
        assert_eq!(ort.backend_name(), "ort");
        let a = tract.run(&inputs).unwrap();
        let b = ort.run(&inputs).unwrap();
        for (x, y) in a.iter().zip(&b) {
            let diff = max_abs_diff(x.as_f32().unwrap(), y.as_f32().unwrap());
            assert!(diff <= 1e-4, "{active:?}: tract vs ort differ by {diff}");
        }
        let expected = match active {
            None => &e["base"],
            Some(name) => &e["adapters"][name]["merged"],
        };
        let diff = max_abs_diff(b[0].as_f32().unwrap(), &floats(&expected["probabilities"]));
        assert!(diff <= 1e-4, "{active:?}: ort vs torch differ by {diff}");
    }
    // The legacy FER model from its sidecar manifest, on both.
    let dir = fixtures().join("engine/fer64");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let input = Tensor::f32(shape(&expected["input_shape"]), floats(&expected["input"]));
    let mut outs = Vec::new();
    for backend in [BackendChoice::default(), ort_choice()] {
        let mut m = AffectModel::load(&ModelSpec {
            path: dir.join("model.onnx"),
            manifest: Some(dir.join("manifest.json")),
            backend,
            ..ModelSpec::default()
        })
        .unwrap();
        outs.push(
            m.run(std::slice::from_ref(&input)).unwrap()[0]
                .as_f32()
                .unwrap()
                .to_vec(),
        );
    }
    assert!(max_abs_diff(&outs[0], &outs[1]) <= 1e-4);
}

#[test]
fn unavailable_provider_falls_back_loudly_or_fails_when_strict() {
    // The PyPI wheel is CPU-only: TensorRT and CUDA cannot register.
    let model = root().join("models/reference/emogate-ref.onnx");
    let lenient = OrtOptions {
        providers: vec![Provider::TensorRt, Provider::Cuda, Provider::Cpu],
        ..OrtOptions::default()
    };
    let backend = OrtBackend::load(&model, Vec::new(), &lenient).unwrap();
    assert_eq!(
        backend.providers,
        vec![Provider::Cpu],
        "only CPU can register from the CPU wheel"
    );
    let strict = OrtOptions {
        strict: true,
        ..lenient
    };
    let err = OrtBackend::load(&model, Vec::new(), &strict)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("--ep-strict") && err.contains("TensorRT"),
        "{err}"
    );
}
