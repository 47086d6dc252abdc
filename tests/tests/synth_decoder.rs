//! The synthetic decoder the merge benchmark uses must be a real model:
//! tract runs it, a gate_proj adapter resolves against its legacy-style
//! names, and the merge changes its output.

use emogate_infer::Tensor;
use emogate_infer::backend::{Backend, tract::TractBackend};
use emogate_models::merge::{MergeOptions, merge_to_file};
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_tests::max_abs_diff;
use emogate_tools::synth::{DecoderSpec, write_decoder, write_gate_proj_adapter};

#[test]
fn tiny_synthetic_decoder_runs_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DecoderSpec::tiny();
    let path = write_decoder(&dir.path().join("base"), &spec, 1, &mut |_| {}).unwrap();
    write_gate_proj_adapter(&dir.path().join("adapter"), &spec, 4, 8.0, 2).unwrap();

    let model = OnnxModel::load(&path).unwrap();
    let weights: usize = model
        .graph()
        .initializer
        .iter()
        .filter(|t| !t.name().starts_with("const."))
        .map(|t| t.dims.iter().product::<i64>() as usize)
        .sum();
    assert_eq!(weights, spec.parameters(), "parameter count formula");

    let ids: Vec<i64> = (0..spec.seq_len as i64)
        .map(|i| (i * 7) % spec.vocab as i64)
        .collect();
    let input = Tensor::i64(vec![1, spec.seq_len], ids);
    let base = TractBackend::load(&path)
        .unwrap()
        .run(std::slice::from_ref(&input))
        .unwrap();
    assert_eq!(base[0].shape, vec![1, spec.seq_len, spec.labels]);
    let base_logits = base[0].as_f32().unwrap();
    assert!(base_logits.iter().all(|v| v.is_finite()));

    let adapter = Adapter::load(dir.path().join("adapter")).unwrap();
    let out = dir.path().join("merged.onnx");
    let report = merge_to_file(
        &model,
        &adapter,
        &out,
        &MergeOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.modules.len(), spec.layers);
    let merged = TractBackend::load(&out).unwrap().run(&[input]).unwrap();
    let merged_logits = merged[0].as_f32().unwrap();
    assert!(merged_logits.iter().all(|v| v.is_finite()));
    assert!(
        max_abs_diff(base_logits, merged_logits) > 1e-4,
        "the adapter changed nothing"
    );
}
