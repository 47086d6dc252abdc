//! The engine core against fixtures recorded from PyTorch/ONNX Runtime:
//! the reference model with its embedded manifest, adapter hot-swap, a
//! third-party model run from a sidecar manifest, and load-time errors.

use emogate_infer::Tensor;
use emogate_infer::affect::{AffectError, AffectModel, BackendChoice, ModelSpec};
use emogate_tests::{
    fixtures, json_floats as floats, json_shape as shape, max_abs_diff, reference_expected,
    reference_inputs, repo_root as root,
};
use serde_json::Value;

fn reference_spec() -> ModelSpec {
    ModelSpec {
        path: root().join("models/reference/base/emogate-base.onnx"),
        adapters: vec![
            (
                "affect-gate".into(),
                root().join("models/reference/adapters/affect-gate"),
            ),
            (
                "affect-all".into(),
                root().join("models/reference/adapters/affect-all"),
            ),
        ],
        ..ModelSpec::default()
    }
}

fn assert_outputs(outputs: &[Tensor], expected: &Value, what: &str) {
    let probs = floats(&expected["probabilities"]);
    let va = floats(&expected["valence_arousal"]);
    let d1 = max_abs_diff(outputs[0].as_f32().unwrap(), &probs);
    let d2 = max_abs_diff(outputs[1].as_f32().unwrap(), &va);
    assert!(
        d1 <= 1e-4 && d2 <= 1e-4,
        "{what}: probabilities diff {d1}, valence/arousal diff {d2}"
    );
}

#[test]
fn reference_model_matches_torch_with_its_embedded_manifest() {
    let e = reference_expected();
    let mut model = AffectModel::load(&reference_spec()).unwrap();
    assert_eq!(model.manifest().name, "emogate-ref");
    assert_eq!(model.backend_name(), "tract");
    let outputs = model.run(&reference_inputs(&e)).unwrap();
    assert_outputs(&outputs, &e["base"], "base");
}

#[test]
fn adapters_hot_swap_to_peft_merged_outputs_and_back() {
    let e = reference_expected();
    let inputs = reference_inputs(&e);
    let mut model = AffectModel::load(&ModelSpec {
        active: Some("affect-gate".into()),
        ..reference_spec()
    })
    .unwrap();
    assert_eq!(model.active(), Some("affect-gate"));
    assert_outputs(
        &model.run(&inputs).unwrap(),
        &e["adapters"]["affect-gate"]["merged"],
        "affect-gate",
    );
    model.switch(Some("affect-all")).unwrap();
    assert_outputs(
        &model.run(&inputs).unwrap(),
        &e["adapters"]["affect-all"]["merged"],
        "affect-all",
    );
    model.switch(None).unwrap();
    assert_outputs(&model.run(&inputs).unwrap(), &e["base"], "base again");
    let err = model.switch(Some("grumpy")).unwrap_err().to_string();
    assert!(
        err.contains("`grumpy`") && err.contains("affect-all, affect-gate"),
        "{err}"
    );
    // The failed switch left the running backend in place.
    assert_outputs(
        &model.run(&inputs).unwrap(),
        &e["base"],
        "after a failed switch",
    );
}

#[test]
fn third_party_model_runs_from_a_sidecar_manifest() {
    let dir = fixtures().join("engine/fer64");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let spec = ModelSpec {
        path: dir.join("model.onnx"),
        manifest: Some(dir.join("manifest.json")),
        ..ModelSpec::default()
    };
    let mut model = AffectModel::load(&spec).unwrap();
    let input = Tensor::f32(shape(&expected["input_shape"]), floats(&expected["input"]));
    let out = model.run(&[input]).unwrap();
    let diff = max_abs_diff(out[0].as_f32().unwrap(), &floats(&expected["output"]));
    assert!(diff <= 1e-4, "fer64 diff {diff}");

    // Without the sidecar it has no manifest, and says how to give one.
    let err = AffectModel::load(&ModelSpec {
        manifest: None,
        ..spec
    })
    .err()
    .unwrap();
    assert!(matches!(err, AffectError::NoManifest { .. }));
    assert!(err.to_string().contains("--manifest"), "{err}");
}

#[test]
fn manifest_that_does_not_fit_the_model_is_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let fer = fixtures().join("engine/fer64");
    let text = std::fs::read_to_string(fer.join("manifest.json")).unwrap();
    let cases = [
        (
            text.replace("\"height\": 64", "\"height\": 48"),
            vec!["axis 1", "48", "64"],
        ),
        (
            text.replace("\"name\": \"input\"", "\"name\": \"image\""),
            vec![
                "`image`",
                "graph input `input`",
                "not described by the manifest",
            ],
        ),
        (text.replace("\"NHWC\"", "\"NCHW\""), vec!["axis", "input"]),
    ];
    for (i, (manifest, needles)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("m{i}.json"));
        std::fs::write(&path, manifest).unwrap();
        let err = AffectModel::load(&ModelSpec {
            path: fer.join("model.onnx"),
            manifest: Some(path),
            backend: BackendChoice::default(),
            ..ModelSpec::default()
        })
        .err()
        .expect("mismatch must fail")
        .to_string();
        assert!(err.contains("model.onnx"), "{err}");
        for n in needles {
            assert!(err.contains(n), "case {i}: `{n}` missing from: {err}");
        }
    }
}

#[test]
fn switching_while_running_loses_and_repeats_no_window() {
    // Windows keep flowing on the serving thread while another thread
    // prepares the next adapter; the swap happens between two windows.
    let e = reference_expected();
    let inputs = reference_inputs(&e);
    let mut model = AffectModel::load(&ModelSpec {
        active: Some("affect-gate".into()),
        ..reference_spec()
    })
    .unwrap();
    let gate = floats(&e["adapters"]["affect-gate"]["merged"]["probabilities"]);
    let all_linear = floats(&e["adapters"]["affect-all"]["merged"]["probabilities"]);
    let mut served = Vec::new();
    let preparer = model.preparer();
    let prepared = std::thread::scope(|scope| {
        let builder = scope.spawn(move || preparer.prepare(Some("affect-all")).unwrap());
        // Serve windows on this thread until the new backend is ready.
        while !builder.is_finished() {
            served.push(model.run(&inputs).unwrap()[0].as_f32().unwrap().to_vec());
        }
        builder.join().unwrap()
    });
    for out in &served {
        assert!(
            max_abs_diff(out, &gate) <= 1e-4,
            "a window before the swap ran on the wrong weights"
        );
    }
    let before = served.len();
    served.push(model.run(&inputs).unwrap()[0].as_f32().unwrap().to_vec());
    model.install(Some("affect-all".into()), prepared).unwrap();
    for _ in 0..3 {
        served.push(model.run(&inputs).unwrap()[0].as_f32().unwrap().to_vec());
    }
    assert_eq!(
        served.len(),
        before + 4,
        "every window produced exactly one output"
    );
    assert!(
        max_abs_diff(&served[before], &gate) <= 1e-4,
        "the last window before the swap used gate"
    );
    for out in &served[before + 1..] {
        assert!(
            max_abs_diff(out, &all_linear) <= 1e-4,
            "windows after the swap use all_linear"
        );
    }
    assert_eq!(model.active(), Some("affect-all"));
}
