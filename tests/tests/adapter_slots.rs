//! Adapter slots (`emogate_models::slots`): a slot graph fed an adapter's
//! factors computes what the adapter merged offline computes, on every
//! PEFT fixture and on the reference model, on tract (and ONNX Runtime
//! with the `ort` feature); adapters that cannot run in slots are named
//! and switched to by re-planning.

use std::path::{Path, PathBuf};

use emogate_infer::Tensor;
use emogate_infer::affect::{AffectModel, BackendChoice, ModelSpec, Switching, to_tensors};
use emogate_infer::backend::tract::TractRuntime;
use emogate_infer::backend::{Backend, InputFact, Runtime};
use emogate_models::merge::{MergeOptions, merge_to_file};
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_models::slots::SlotGraph;
use emogate_tests::{Expected, max_abs_diff, reference_expected, reference_inputs, repo_root};

/// Fixture pairs that fit slots: llama's plain, rsLoRA and
/// `modules_to_save` adapters on its 3 exports (9), qwen2's on 2 (6), and
/// swiglu_gemm's plain adapter on its Gemm export (1).
const FITTING_PAIRS: usize = 16;
/// DoRA (llama 3, qwen2 2, swiglu_gemm 1) and `lora_bias` (llama_bias 2).
const UNFIT_PAIRS: usize = 8;

/// The slot graph of `model` for `adapter`, loaded on `runtime` with the
/// fixture's input.
fn slot_backend(
    runtime: &dyn Runtime,
    model: &OnnxModel,
    slots: &SlotGraph,
    input: &Tensor,
) -> Box<dyn Backend> {
    let mut facts = vec![match &input.data {
        emogate_infer::TensorData::I64(_) => InputFact::I64(input.shape.clone()),
        emogate_infer::TensorData::F32(_) => InputFact::F32(input.shape.clone()),
    }];
    facts.extend(
        slots
            .inputs()
            .iter()
            .map(|i| InputFact::F32(i.dims.clone())),
    );
    runtime
        .load_graph(model, slots.proto(), &facts)
        .expect("the slot graph loads")
}

fn logits(backend: &mut dyn Backend, input: &Tensor) -> Vec<f32> {
    backend.run(std::slice::from_ref(input)).expect("runs")[0]
        .as_f32()
        .expect("f32 logits")
        .to_vec()
}

/// `adapter` merged into `model` by `emogate-convert merge`'s code, to a file.
fn merged_offline(model: &OnnxModel, adapter: &Adapter, dir: &Path) -> PathBuf {
    let out = dir.join("merged.onnx");
    merge_to_file(
        model,
        adapter,
        &out,
        &MergeOptions::default(),
        &mut |_, _| {},
    )
    .expect("offline merge");
    out
}

fn every_fixture_through_slots(runtime: &dyn Runtime) {
    let (mut fitting, mut unfit) = (0, 0);
    for expected in Expected::all() {
        let adapter = Adapter::load(expected.adapter()).expect("adapter loads");
        for dir in expected.model_dirs() {
            let label = format!("{}-{} on {}", expected.base, expected.kind, dir.display());
            let model = OnnxModel::load(dir.join("model.onnx")).expect("base loads");
            let slots = match SlotGraph::new(&model, &[&adapter]) {
                Ok(slots) => slots,
                Err(why) => {
                    let dora = adapter.modules.values().any(|m| m.magnitude.is_some());
                    let bias = adapter.modules.values().any(|m| m.bias.is_some());
                    assert!(dora || bias, "{label}: refused: {why}");
                    let named = if dora { "DoRA" } else { "lora_B bias" };
                    assert!(why.0.contains(named), "{label}: {why}");
                    assert!(why.0.contains(&expected.adapter().display().to_string()));
                    unfit += 1;
                    continue;
                }
            };
            assert_eq!(
                slots.slots().len(),
                adapter.modules.len() + adapter.replacements.len(),
                "{label}: one slot per adapted layer"
            );
            let input = expected.input_tensor();
            let mut backend = slot_backend(runtime, &model, &slots, &input);

            let base = slots.factors(&model, None).expect("base factors");
            backend.bind(&to_tensors(base)).expect("binds");
            let base_logits = logits(backend.as_mut(), &input);
            let mut plain = runtime.load(&model, None, &[]).expect("base loads");
            let plain_logits = logits(plain.as_mut(), &input);
            let diff = max_abs_diff(&base_logits, &plain_logits);
            assert!(diff <= 1e-5, "{label}: slots fed zeros vs base: {diff}");

            let factors = slots.factors(&model, Some(&adapter)).expect("factors");
            backend.bind(&to_tensors(factors)).expect("binds");
            let slot_logits = logits(backend.as_mut(), &input);
            let tmp = tempfile::tempdir().expect("tempdir");
            let merged_model = OnnxModel::load(merged_offline(&model, &adapter, tmp.path()))
                .expect("merged model loads");
            let mut merged = runtime
                .load(&merged_model, None, &[])
                .expect("merged loads");
            let merged_logits = logits(merged.as_mut(), &input);
            let diff = max_abs_diff(&slot_logits, &merged_logits);
            assert!(diff <= 1e-5, "{label}: slots vs offline merge: {diff}");
            let diff = max_abs_diff(&slot_logits, &expected.merged_logits);
            assert!(diff <= 1e-4, "{label}: slots vs PEFT: {diff}");
            assert!(
                max_abs_diff(&slot_logits, &expected.base_logits) > 1e-2,
                "{label}: the adapter changed nothing"
            );
            fitting += 1;
        }
    }
    assert_eq!(
        (fitting, unfit),
        (FITTING_PAIRS, UNFIT_PAIRS),
        "pairs run in slots and refused"
    );
}

#[test]
fn slots_reproduce_the_offline_merge_of_every_fixture_on_tract() {
    every_fixture_through_slots(&TractRuntime { threads: 1 });
}

#[cfg(feature = "ort")]
fn ort_choice() -> BackendChoice {
    use emogate_infer::backend::ort::{OrtOptions, Provider};
    BackendChoice::Ort(OrtOptions {
        providers: vec![Provider::Cpu],
        ..OrtOptions::default()
    })
}

#[cfg(feature = "ort")]
#[test]
fn slots_reproduce_the_offline_merge_of_every_fixture_on_onnx_runtime() {
    every_fixture_through_slots(ort_choice().runtime().as_ref());
}

fn reference_base() -> PathBuf {
    repo_root().join("models/reference/base/emogate-base.onnx")
}

fn adapter_dir(name: &str) -> PathBuf {
    repo_root().join("models/reference/adapters").join(name)
}

fn reference(backend: BackendChoice, adapters: &[&str], switching: Switching) -> AffectModel {
    AffectModel::load(&ModelSpec {
        path: reference_base(),
        adapters: adapters
            .iter()
            .map(|a| (a.to_string(), adapter_dir(a)))
            .collect(),
        switching,
        backend,
        ..ModelSpec::default()
    })
    .expect("the reference model loads")
}

/// Every switch binds factors (no re-plan) and gives, for every output,
/// what the adapter merged offline gives.
fn reference_switches(backend: BackendChoice) {
    let e = reference_expected();
    let inputs = reference_inputs(&e);
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = OnnxModel::load(reference_base()).expect("base");
    let mut model = reference(
        backend.clone(),
        &["affect-gate", "affect-all"],
        Switching::Slots,
    );
    assert!(model.switches_by_slots());
    for target in [
        Some("affect-gate"),
        Some("affect-all"),
        None,
        Some("affect-all"),
        Some("affect-gate"),
    ] {
        let prepared = model.prepare(target).expect("prepares");
        assert!(
            !prepared.replanned(),
            "{target:?}: a slot switch re-planned"
        );
        model
            .install(target.map(str::to_string), prepared)
            .expect("installs");
        let got = model.run(&inputs).expect("runs");
        let offline = match target {
            Some(name) => {
                let adapter = Adapter::load(adapter_dir(name)).expect("adapter");
                let dir = tmp.path().join(name);
                std::fs::create_dir_all(&dir).expect("dir");
                merged_offline(&base, &adapter, &dir)
            }
            None => reference_base(),
        };
        let mut merged = AffectModel::load(&ModelSpec {
            path: offline,
            manifest: None,
            backend: backend.clone(),
            ..ModelSpec::default()
        })
        .expect("the offline merge loads");
        let want = merged.run(&inputs).expect("runs");
        for (g, w) in got.iter().zip(&want) {
            let diff = max_abs_diff(g.as_f32().unwrap(), w.as_f32().unwrap());
            assert!(diff <= 1e-5, "{target:?}: slots vs offline merge: {diff}");
        }
        if let Some(name) = target {
            let peft = emogate_tests::json_floats(&e["adapters"][name]["merged"]["probabilities"]);
            let diff = max_abs_diff(got[0].as_f32().unwrap(), &peft);
            assert!(diff <= 1e-4, "{name}: slots vs PyTorch/PEFT: {diff}");
        }
    }
}

#[test]
fn the_reference_model_switches_by_slots_on_tract() {
    reference_switches(BackendChoice::default());
}

#[cfg(feature = "ort")]
#[test]
fn the_reference_model_switches_by_slots_on_onnx_runtime() {
    reference_switches(ort_choice());
}

/// An adapter added while running that needs a layer the slots were not
/// made for is switched to by re-planning, and so is every switch after
/// it; outputs stay right throughout.
#[test]
fn an_adapter_outside_the_slots_switches_by_replanning_from_then_on() {
    let e = reference_expected();
    let inputs = reference_inputs(&e);
    let mut model = reference(BackendChoice::default(), &["affect-gate"], Switching::Slots);
    assert!(model.switches_by_slots());
    let preparer = model.preparer();
    // affect-all adapts every linear layer; the slots cover gate_proj and
    // the heads only.
    let all = preparer
        .load_adapter(&adapter_dir("affect-all"))
        .expect("affect-all loads");
    preparer.insert_adapter("affect-all", all);
    let expect =
        |name: &str| emogate_tests::json_floats(&e["adapters"][name]["merged"]["probabilities"]);
    let steps = [
        ("affect-gate", false, true),
        ("affect-all", true, false),
        ("affect-gate", true, false),
    ];
    for (name, replans, slotted_after) in steps {
        let prepared = model.prepare(Some(name)).expect("prepares");
        assert_eq!(prepared.replanned(), replans, "switch to {name}");
        model
            .install(Some(name.to_string()), prepared)
            .expect("installs");
        assert_eq!(model.switches_by_slots(), slotted_after, "after {name}");
        let got = model.run(&inputs).expect("runs");
        let diff = max_abs_diff(got[0].as_f32().unwrap(), &expect(name));
        assert!(diff <= 1e-4, "{name}: vs PyTorch/PEFT: {diff}");
    }
}

/// `Switching::Replan` never builds slots; DoRA adapters make the model
/// fall back to re-planning at load.
#[test]
fn replan_is_chosen_on_request() {
    let model = reference(
        BackendChoice::default(),
        &["affect-gate", "affect-all"],
        Switching::Replan,
    );
    assert!(!model.switches_by_slots());
    let prepared = model.prepare(Some("affect-all")).expect("prepares");
    assert!(prepared.replanned());
}
