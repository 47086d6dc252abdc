//! Adapter switch time on a Qwen2.5-0.5B-shaped model (about 2 GB of f32):
//! what `AffectModel::prepare` does — merge the adapter in memory and plan
//! a new tract backend — measured on the synthetic decoder. Ignored by
//! default (it writes 2 GB and needs several GB of memory); run with
//! `cargo test --release -p emogate-tests --test switch_time_large -- --ignored --nocapture`.

use std::time::Instant;

use emogate_infer::Tensor;
use emogate_infer::backend::tract::{TractBackend, TractOptions};
use emogate_infer::backend::{Backend, InputFact};
use emogate_models::merge::MergePlan;
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_tools::synth::{DecoderSpec, write_decoder, write_gate_proj_adapter};

#[test]
#[ignore = "writes a 2 GB model; run by hand and report"]
fn adapter_switch_time_on_a_half_billion_parameter_shape() {
    let dir = std::env::var_os("EMOGATE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("emogate-switch-bench"));
    let spec = DecoderSpec::qwen2_5_0_5b();
    let model_path = dir.join("base/model.onnx");
    if !model_path.exists() {
        write_decoder(&dir.join("base"), &spec, 7, &mut |_| {}).unwrap();
    }
    write_gate_proj_adapter(&dir.join("adapter"), &spec, 16, 32.0, 11).unwrap();
    let model = OnnxModel::load(&model_path).unwrap();
    let adapter = Adapter::load(dir.join("adapter")).unwrap();
    let options = TractOptions {
        inputs: Some(vec![InputFact::I64(vec![1, spec.seq_len])]),
        threads: 1,
        ..TractOptions::default()
    };
    let started = Instant::now();
    let mut base = TractBackend::load_with(&model_path, &options).unwrap();
    let load = started.elapsed();
    let input = Tensor::i64(vec![1, spec.seq_len], (0..spec.seq_len as i64).collect());
    let base_out = base.run(std::slice::from_ref(&input)).unwrap();

    let mut merges = Vec::new();
    let mut plans = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let plan = MergePlan::new(&model, &adapter).unwrap();
        let (proto, _, _) = plan.merged_proto().unwrap();
        let t1 = Instant::now();
        let mut merged = TractBackend::from_proto(&proto, model.dir(), &options).unwrap();
        let t2 = Instant::now();
        let out = merged.run(std::slice::from_ref(&input)).unwrap();
        assert_ne!(out[0], base_out[0], "the adapter changed nothing");
        merges.push((t1 - t0).as_secs_f64());
        plans.push((t2 - t1).as_secs_f64());
    }
    merges.sort_by(f64::total_cmp);
    plans.sort_by(f64::total_cmp);
    println!(
        "0.5B-shaped model: base load {:.2} s; switch = merge {:.2} s + plan {:.2} s (medians of 3)",
        load.as_secs_f64(),
        merges[1],
        plans[1]
    );
}
