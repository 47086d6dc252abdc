//! Every PEFT adapter fixture, merged by emogate into every export of its
//! base model (legacy and dynamo exporters, folded and unfolded), must
//! reproduce PEFT's `merge_and_unload()` logits when run by tract.

use emogate_infer::backend::{Backend, tract::TractBackend};
use emogate_models::merge::{MergeOptions, merge_to_file};
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_tests::{Expected, max_abs_diff};

/// Model/adapter pairs in `tests/fixtures/merge`: llama's 4 adapters (plain,
/// rsLoRA, DoRA, `modules_to_save`) on its 3 exports (dynamo, legacy,
/// legacy unfolded) = 12, qwen2's 4 on 2 exports = 8, llama_bias's
/// `lora_bias` on 2 = 2, swiglu_gemm's 2 (plain, DoRA) on 1 = 2. A fixture
/// that goes missing (or a new one) changes this count and fails the test.
const PAIRS: usize = 24;

#[test]
fn merged_models_match_peft_logits() {
    let mut checked = 0;
    for expected in Expected::all() {
        let adapter = Adapter::load(expected.adapter()).expect("adapter loads");
        for dir in expected.model_dirs() {
            let label = format!("{}-{} on {}", expected.base, expected.kind, dir.display());
            let model = OnnxModel::load(dir.join("model.onnx")).expect("base loads");
            let out_dir = tempfile::tempdir().expect("tempdir");
            let out = out_dir.path().join("merged.onnx");
            let report = merge_to_file(
                &model,
                &adapter,
                &out,
                &MergeOptions::default(),
                &mut |_, _| {},
            )
            .unwrap_or_else(|e| panic!("{label}: merge failed: {e}"));
            assert_eq!(
                report.modules.len(),
                adapter.modules.len() + adapter.replacements.len(),
                "{label}"
            );

            let mut base = TractBackend::load(&dir.join("model.onnx")).expect("tract loads base");
            let base_out = base.run(&[expected.input_tensor()]).expect("base runs");
            let base_logits = base_out[0].as_f32().unwrap();
            assert!(
                max_abs_diff(base_logits, &expected.base_logits) < 1e-4,
                "{label}: base model disagrees with torch"
            );

            let mut merged = TractBackend::load(&out).unwrap_or_else(|e| panic!("{label}: {e}"));
            let outputs = merged.run(&[expected.input_tensor()]).expect("merged runs");
            let logits = outputs[0].as_f32().unwrap();
            assert_eq!(outputs[0].shape, expected.shape, "{label}");
            let diff = max_abs_diff(logits, &expected.merged_logits);
            assert!(diff <= 1e-4, "{label}: max |emogate - PEFT| = {diff}");
            // The adapter must actually have changed something.
            assert!(
                max_abs_diff(logits, &expected.base_logits) > 1e-2,
                "{label}: merge had no effect"
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked, PAIRS,
        "{checked} model/adapter pairs were checked, expected {PAIRS}"
    );
}
