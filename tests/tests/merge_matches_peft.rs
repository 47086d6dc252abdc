//! Every PEFT adapter fixture, merged by emogate into every export of its
//! base model (legacy and dynamo exporters, folded and unfolded), must
//! reproduce PEFT's `merge_and_unload()` logits when run by tract.

use emogate_infer::backend::{Backend, tract::TractBackend};
use emogate_models::merge::{MergeOptions, merge_to_file};
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_tests::{Expected, max_abs_diff};

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
    assert!(
        checked >= 20,
        "only {checked} model/adapter pairs were checked"
    );
}
