//! ONNX Runtime backend (feature `ort`; needs ORT_DYLIB_PATH). CI runs it
//! against the newest onnxruntime wheel and against 1.19, the oldest
//! version emogate accepts (Jetson builds lag PyPI).
#![cfg(feature = "ort")]

use std::path::Path;

use emogate_infer::Tensor;
use emogate_infer::affect::{AffectModel, BackendChoice, ModelSpec};
use emogate_infer::backend::ort::{OrtBackend, OrtOptions, OrtRuntime, Provider};
use emogate_infer::backend::tract::TractRuntime;
use emogate_infer::backend::{Backend, InputFact, Runtime};
use emogate_models::merge::MergePlan;
use emogate_models::onnx::{FloatType, OnnxModel, SaveOptions, is_external};
use emogate_models::peft::Adapter;
use emogate_tests::{
    Expected, fixtures, fp16_reference, json_floats as floats, json_shape as shape, max_abs_diff,
    reference_expected, reference_inputs, repo_root as root, shared_weight,
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
    for active in [None, Some("affect-gate"), Some("affect-all")] {
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

fn cpu_options() -> OrtOptions {
    OrtOptions {
        providers: vec![Provider::Cpu],
        ..OrtOptions::default()
    }
}

/// What one model/adapter pair gives on ONNX Runtime, merged both ways.
struct Merged {
    /// `OrtRuntime::load` (the engine's path: prepared in memory).
    prepared: Vec<Tensor>,
    /// The offline merge's file (`MergePlan::write_to_file`, what
    /// `emogate-convert merge` writes), loaded by ONNX Runtime.
    offline: Vec<Tensor>,
    /// The base model, unmerged.
    base: Vec<Tensor>,
    changes_graph: bool,
    /// Element type of each merged weight.
    dtypes: Vec<FloatType>,
    /// Whether each merged tensor is stored in the base model's side file,
    /// which decides how `OrtRuntime` hands it over: replacing side-file
    /// tensors, or (inline tensors, changed graphs) a model in memory.
    in_side_file: Vec<bool>,
    /// The merged tensors' initializer names, in `in_side_file`'s order.
    names: Vec<String>,
}

fn merge_both_ways(model: &Path, adapter: &Path, inputs: &[Tensor]) -> Merged {
    let label = format!("{} + {}", model.display(), adapter.display());
    let base = OnnxModel::load(model).unwrap_or_else(|e| panic!("{label}: {e}"));
    let adapter = Adapter::load(adapter).unwrap_or_else(|e| panic!("{label}: {e}"));
    let plan = MergePlan::new(&base, &adapter).unwrap_or_else(|e| panic!("{label}: {e}"));
    let runtime = OrtRuntime {
        options: cpu_options(),
    };
    let prepared = runtime
        .load(&base, Some(&plan), &[])
        .unwrap_or_else(|e| panic!("{label}: prepare: {e}"))
        .run(inputs)
        .unwrap_or_else(|e| panic!("{label}: prepared run: {e}"));
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("merged.onnx");
    plan.write_to_file(&out, &SaveOptions::default())
        .unwrap_or_else(|e| panic!("{label}: offline merge: {e}"));
    let offline = OrtBackend::load(&out, Vec::new(), &cpu_options())
        .unwrap_or_else(|e| panic!("{label}: offline load: {e}"))
        .run(inputs)
        .unwrap_or_else(|e| panic!("{label}: offline run: {e}"));
    let base_outputs = runtime
        .load(&base, None, &[])
        .unwrap_or_else(|e| panic!("{label}: base: {e}"))
        .run(inputs)
        .unwrap_or_else(|e| panic!("{label}: base run: {e}"));
    let mut dtypes = Vec::new();
    let mut in_side_file = Vec::new();
    let mut names = Vec::new();
    for item in plan.updates() {
        let (updates, report) = item.unwrap_or_else(|e| panic!("{label}: {e}"));
        dtypes.push(report.dtype);
        for update in updates {
            names.push(update.name.clone());
            in_side_file.push(
                base.graph()
                    .initializer
                    .iter()
                    .any(|t| t.name() == update.name && is_external(t)),
            );
        }
    }
    Merged {
        prepared,
        offline,
        base: base_outputs,
        changes_graph: plan.changes_graph(),
        dtypes,
        in_side_file,
        names,
    }
}

/// The reference adapters replace the heads (`modules_to_save`) as well as
/// LoRA-merging linear weights: every LoRA-merged weight is in the base's
/// side file; only head tensors small enough for the exporter (or the fp16
/// conversion) to keep inline (the biases, the f16 va_head weight) are not,
/// so both hand-over paths are exercised.
fn assert_reference_side_file(name: &str, m: &Merged) {
    let inline: Vec<&str> = m
        .names
        .iter()
        .zip(&m.in_side_file)
        .filter(|(_, external)| !**external)
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        inline
            .iter()
            .all(|n| n.starts_with("emotion_head.") || n.starts_with("va_head.")),
        "{name}: merged weights outside the side file: {inline:?}"
    );
    assert!(
        inline.len() < m.names.len() && m.names.len() > 4,
        "{name}: {:?}",
        m.names
    );
}

/// Largest difference over every output of two runs.
fn outputs_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    assert_eq!(a.len(), b.len(), "output count");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.shape, y.shape);
            max_abs_diff(x.as_f32().unwrap(), y.as_f32().unwrap())
        })
        .fold(0.0, f32::max)
}

#[test]
fn merge_fixtures_prepared_in_memory_match_the_offline_merge() {
    // These merges keep the graph (no fixture shares a weight). The
    // dynamo exports keep their weights in a side file: the merged ones
    // replace those tensors. The legacy exports are inline: the merged
    // model is handed over in memory. legacy_nofold reads each weight
    // through a Transpose, which ONNX Runtime constant-folds.
    let mut checked = 0;
    let mut replaced = 0;
    for expected in Expected::all() {
        for dir in expected.model_dirs() {
            let label = format!("{}-{} on {}", expected.base, expected.kind, dir.display());
            let m = merge_both_ways(
                &dir.join("model.onnx"),
                &expected.adapter(),
                &[expected.input_tensor()],
            );
            assert!(!m.changes_graph, "{label}");
            assert!(m.dtypes.iter().all(|t| *t == FloatType::F32), "{label}");
            let dynamo = dir.to_string_lossy().ends_with(".dynamo");
            assert!(
                m.in_side_file.iter().all(|e| *e == dynamo),
                "{label}: {:?}",
                m.in_side_file
            );
            replaced += usize::from(dynamo);
            let diff = outputs_diff(&m.prepared, &m.offline);
            assert!(diff <= 1e-5, "{label}: prepared vs offline merge: {diff}");
            let diff = max_abs_diff(m.prepared[0].as_f32().unwrap(), &expected.merged_logits);
            assert!(diff <= 1e-4, "{label}: prepared vs PEFT: {diff}");
            checked += 1;
        }
    }
    assert_eq!(checked, 24, "model/adapter pairs in tests/fixtures/merge");
    assert_eq!(replaced, 9, "pairs on a dynamo export");
}

#[test]
fn reference_adapters_prepared_in_memory_match_the_offline_merge() {
    let inputs = reference_inputs(&reference_expected());
    for name in ["affect-gate", "affect-all"] {
        let m = merge_both_ways(
            &root().join("models/reference/base/emogate-base.onnx"),
            &root().join("models/reference/adapters").join(name),
            &inputs,
        );
        assert!(!m.changes_graph, "{name}");
        assert_reference_side_file(name, &m);
        let diff = outputs_diff(&m.prepared, &m.offline);
        assert!(diff <= 1e-5, "{name}: prepared vs offline merge: {diff}");
        assert!(
            outputs_diff(&m.prepared, &m.base) > 1e-4,
            "{name}: no effect"
        );
    }
}

#[test]
fn fp16_model_gets_its_merged_weights_as_f16() {
    // ONNX Runtime refuses an override of another element type than the
    // initializer's, so this fails unless the f16 weights go in as f16.
    let dir = tempfile::tempdir().expect("tempdir");
    let model = fp16_reference(dir.path());
    let inputs = reference_inputs(&reference_expected());
    for name in ["affect-gate", "affect-all"] {
        let m = merge_both_ways(
            &model,
            &root().join("models/reference/adapters").join(name),
            &inputs,
        );
        assert!(!m.changes_graph, "{name}");
        assert!(
            !m.dtypes.is_empty() && m.dtypes.iter().all(|t| *t == FloatType::F16),
            "{name}: the fp16 model's gate_proj weights should be f16: {:?}",
            m.dtypes
        );
        assert_reference_side_file(name, &m);
        let diff = outputs_diff(&m.prepared, &m.offline);
        assert!(diff <= 1e-5, "{name}: prepared vs offline merge: {diff}");
        assert!(
            outputs_diff(&m.prepared, &m.base) > 1e-4,
            "{name}: no effect"
        );
    }
}

#[test]
fn merge_that_copies_a_shared_weight_loads_from_memory() {
    use shared_weight::{BATCH, IN};
    for external in [false, true] {
        let label = if external { "side file" } else { "inline" };
        let dir = tempfile::tempdir().expect("tempdir");
        let case = shared_weight::write(dir.path(), external);
        let inputs = [case.input.clone()];
        let m = merge_both_ways(&case.model, &case.adapter, &inputs);
        assert!(m.changes_graph, "{label}: the merge must copy W");
        // The copy is new, in no side file: the merged model goes in memory
        // (with weights.bin read into memory in the side-file case).
        assert_eq!(m.in_side_file, [false], "{label}");
        let diff = outputs_diff(&m.prepared, &m.offline);
        assert!(diff <= 1e-5, "{label}: prepared vs offline merge: {diff}");
        // Outputs gate, up, other: only gate_proj is adapted.
        let each = |a: &[Tensor], b: &[Tensor], i: usize| {
            max_abs_diff(a[i].as_f32().unwrap(), b[i].as_f32().unwrap())
        };
        assert!(
            each(&m.prepared, &m.base, 0) > 1e-2,
            "{label}: gate unchanged"
        );
        assert!(each(&m.prepared, &m.base, 1) <= 1e-6, "{label}: up changed");
        assert!(
            each(&m.prepared, &m.base, 2) <= 1e-6,
            "{label}: other changed"
        );

        let base = OnnxModel::load(&case.model).unwrap();
        let adapter = Adapter::load(&case.adapter).unwrap();
        let plan = MergePlan::new(&base, &adapter).unwrap();
        let tract = TractRuntime::default()
            .load(&base, Some(&plan), &[InputFact::F32(vec![BATCH, IN])])
            .unwrap_or_else(|e| panic!("{label}: tract: {e}"))
            .run(&inputs)
            .unwrap();
        let diff = outputs_diff(&m.prepared, &tract);
        assert!(diff <= 1e-5, "{label}: ort vs tract: {diff}");
    }
}
